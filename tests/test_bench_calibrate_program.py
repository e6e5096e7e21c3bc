"""bench/bench_calibrate_program.py on a user's package and .npz inputs (--model): it runs the
rows asked for and writes them; inputs that do not fit are refused with exit status 2."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_calibrate_program.py"
BERT = Path(__file__).resolve().parent / "fixtures" / "programs" / "bert-iOS16-fp32.mlpackage"


def bench():
    spec = importlib.util.spec_from_file_location("bench_calibrate_program", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_a_users_model_and_inputs(tmp_path, capsys):
    module = bench()
    calibration, held_out = tmp_path / "x.npz", tmp_path / "y.npz"
    np.savez(calibration, **module.inputs("bert", 16, seed=1))
    np.savez(held_out, **module.inputs("bert", 8, seed=2))
    out = tmp_path / "r.json"
    module.main(["--model", str(BERT), "--calibrate", str(calibration), "--held-out", str(held_out), "--rows", "LUT 4-bit, per",
                 "--quick", "--json", str(out)])  # fmt: skip
    [model] = json.loads(out.read_text())["models"]
    [row] = model["rows"]
    assert model["model"] == BERT.name and row["compression"] == "LUT 4-bit, per 16 rows + scale"
    assert row["corrected_snr_db"] > row["data-free_snr_db"] > 10
    assert "held-out output SNR" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_inputs_that_do_not_fit_exit_2(tmp_path, capsys):
    module = bench()
    wrong = tmp_path / "w.npz"
    np.savez(wrong, input_ids=np.zeros((4, 16), np.int32))
    for argv in (["--model", str(BERT), "--calibrate", str(wrong), "--held-out", str(wrong)],
                 ["--model", str(BERT), "--calibrate", str(tmp_path / "none.npz"), "--held-out", str(wrong)]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            module.main(argv)
        assert exit_.value.code == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        module.main(["--model", str(BERT)])  # --calibrate and --held-out missing
