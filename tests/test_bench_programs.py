"""Smoke run of bench/bench_programs.py at tiny sizes: it runs and writes its JSON (no timing is checked)."""
import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_programs.py"


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_bench_programs_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_programs", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "p.json"
    argv = ["--layers", "1", "--hidden", "64", "--mlp", "128", "--heads", "4", "--kv-heads", "2", "--vocab", "96",
            "--seq", "8", "--rounds", "2", "--cache", str(tmp_path / "cache"), "--json", str(out)]  # fmt: skip
    result = module.main(argv)
    llama, bert = result["llama"], result["bert"]
    assert llama["resident_jit_vs_load"] < 1 and llama["torch_params_assigned"] == 3 + 9
    assert llama["max_rel_error_vs_torch"]["jit"] < 1e-2 and bert["max_rel_error_vs_torch"] < 1e-2
    assert json.loads(out.read_text())["llama"]["model"] == llama["model"]
    assert "per-token latency" in capsys.readouterr().out
