"""``weightpack run`` and ``weightpack diff``: outputs, comparisons, and bad input (one line on
stderr, exit 2, nothing written)."""
import json
import os

import coremltools.optimize.coreml as cto
import numpy as np
import pytest

import weightpack as wp
from coreml_models import THRESHOLD, linear_model
from weightpack import cli
from weightpack.coreml import Program

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A dense fp16 package, a 2-bit palettized copy and the inputs they take."""
    folder = tmp_path_factory.mktemp("models")
    dense = linear_model("iOS18")
    paths = {"dense": str(folder / "dense.mlpackage"), "lut": str(folder / "lut.mlpackage")}
    wp.coreml.save_model(dense, paths["dense"])
    config = cto.OpPalettizerConfig(nbits=2, weight_threshold=THRESHOLD)
    wp.coreml.save_model(wp.coreml.palettize_weights(dense, cto.OptimizationConfig(global_config=config)), paths["lut"])
    paths["inputs"] = str(folder / "x.npz")
    np.savez(paths["inputs"], x=np.random.default_rng(0).standard_normal((1, 128)).astype(np.float32))
    return paths


def run(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_run_writes_the_outputs(models, tmp_path, capsys):
    out = tmp_path / "y.npz"
    status, text, err = run(capsys, "run", models["dense"], "--inputs", models["inputs"], "--out", out, "--policy", "load")
    assert status == 0 and err == ""
    prog = Program.load(models["dense"], policy="load")
    expected = prog.predict(dict(np.load(models["inputs"])))
    with np.load(out) as written:
        assert set(written.files) == set(expected)
        for name in expected:
            np.testing.assert_array_equal(written[name], expected[name])
    assert "policy load" in text and prog.outputs[0] in text and f"wrote {out}" in text
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []  # no temporary file left


def test_run_prints_a_summary_without_out(models, capsys):
    status, text, _ = run(capsys, "run", models["lut"], "--inputs", models["inputs"])
    assert status == 0 and "policy jit" in text and "(1, 64)" in text


def test_diff_of_a_model_with_itself_is_exact(models, capsys):
    status, text, _ = run(capsys, "diff", models["dense"], models["dense"], "--inputs", models["inputs"], "--json")
    assert status == 0
    (row,) = json.loads(text)["outputs"]
    assert row["snr_db"] is None and row["max_abs_error"] == 0 and row["cosine"] == pytest.approx(1) and row["top1_agreement"] == 1


def test_diff_measures_compression_error(models, capsys):
    status, text, _ = run(capsys, "diff", models["dense"], models["lut"], "--inputs", models["inputs"], "--json")
    assert status == 0
    report = json.loads(text)
    (row,) = report["outputs"]
    ref = Program.load(models["dense"]).predict(dict(np.load(models["inputs"])))[row["output"]].astype(np.float64)
    cand = Program.load(models["lut"]).predict(dict(np.load(models["inputs"])))[row["output"]].astype(np.float64)
    assert row["snr_db"] == pytest.approx(wp.snr_db(ref, cand))
    assert row["max_abs_error"] == pytest.approx(np.max(np.abs(ref - cand)))
    assert row["cosine"] == pytest.approx(np.sum(ref * cand) / np.linalg.norm(ref) / np.linalg.norm(cand))
    assert row["top1_agreement"] == float(np.argmax(ref) == np.argmax(cand))
    assert report["reference"] == models["dense"] and report["policy"] == "jit"
    status, table, _ = run(capsys, "diff", models["dense"], models["lut"], "--inputs", models["inputs"])
    assert status == 0 and "SNR dB" in table and f"{row['snr_db']:.2f}" in table


def assert_bad_input(capsys, argv, message):
    status, out, err = run(capsys, *argv)
    assert status == 2, (out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err


@pytest.fixture
def bad_inputs(tmp_path):
    paths = {}
    for name, arrays in {"missing": {"y": np.zeros((1, 128), np.float32)}, "shape": {"x": np.zeros((2, 128), np.float32)},
                         "dtype": {"x": np.zeros((1, 128), np.int32)}}.items():  # fmt: skip
        paths[name] = str(tmp_path / f"{name}.npz")
        np.savez(paths[name], **arrays)
    paths["npy"] = str(tmp_path / "x.npy")
    np.save(paths["npy"], np.zeros((1, 128), np.float32))
    paths["text"] = str(tmp_path / "x.txt")
    with open(paths["text"], "w") as file:
        file.write("not an archive\n")
    return paths


@pytest.mark.parametrize(
    "case, message",
    [("missing", "inputs lack 'x'"), ("shape", "input 'x' has shape (2, 128)"), ("dtype", "input 'x' has dtype int32"),
     ("npy", "an .npy array, not an .npz archive"), ("text", "not an .npz archive of named arrays")],
)  # fmt: skip
def test_bad_inputs_are_one_line_and_exit_2(models, bad_inputs, tmp_path, capsys, case, message):
    out = tmp_path / "y.npz"
    assert_bad_input(capsys, ["run", models["dense"], "--inputs", bad_inputs[case], "--out", out], message)
    assert not out.exists()
    assert_bad_input(capsys, ["diff", models["dense"], models["lut"], "--inputs", bad_inputs[case]], message)


def test_missing_files_and_bad_flags(models, capsys):
    assert_bad_input(capsys, ["run", "/nonexistent.mlpackage", "--inputs", models["inputs"]], "no such file or directory")
    assert_bad_input(capsys, ["run", models["dense"], "--inputs", "/nonexistent.npz"], "/nonexistent.npz: no such file")
    assert_bad_input(capsys, ["run", models["dense"], "--inputs", models["inputs"], "--policy", "eager"], "invalid choice: 'eager'")
    assert_bad_input(capsys, ["run", models["dense"]], "the following arguments are required: --inputs")
