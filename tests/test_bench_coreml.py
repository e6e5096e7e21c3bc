"""Smoke runs of the Core ML benchmarks at tiny sizes: they run and write their JSON (no timing is checked)."""
import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench_module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_blob_smoke(tmp_path, capsys):
    result = bench_module("bench_blob").main(["--size", "64", "--repeats", "1", "--json", str(tmp_path / "b.json")])
    assert [r["operation"] for r in result["rows"]] == ["write", "write from values", "read", "read + unpack", "read + touch"]
    assert json.loads((tmp_path / "b.json").read_text())["parameters"] == 6 * 64 * 64
    assert "byte-identical" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_bench_dropin_smoke(tmp_path):
    out = tmp_path / "d.json"
    result = bench_module("bench_dropin").main(["--layers", "1", "--size", "64", "--configs", "int8", "prune75", "--json", str(out)])
    rows = {r["config"]: r for r in result["rows"]}
    assert rows["int8"]["weightpack_weight_bin_bytes"] == rows["int8"]["coremltools_weight_bin_bytes"]
    assert rows["prune75"]["weightpack_snr_db"] > 0 and json.loads(out.read_text())["size"] == 64
