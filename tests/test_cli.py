"""The ``weightpack`` command line: inspect, compress, and bad input (one line on stderr, exit 2, nothing written)."""
import io
import json
import os
import subprocess
import sys

import coremltools.optimize.coreml as cto
import pytest
from coremltools.proto import Model_pb2

import weightpack as wp
from coreml_models import CORRUPTIONS, THRESHOLD, copy_package, corrupt, linear_model
from weightpack import cli
from weightpack.coreml import load

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def dense18(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("models") / "dense18.mlpackage")
    linear_model("iOS18").save(path)
    return path


@pytest.fixture(scope="module")
def dense16(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("models") / "dense16.mlpackage")
    linear_model("iOS16").save(path)
    return path


@pytest.fixture(scope="module")
def palettized(tmp_path_factory):
    """A package compressed by coremltools itself: 3-bit LUTs per 16 output channels."""
    config = cto.OpPalettizerConfig(nbits=3, granularity="per_grouped_channel", group_size=16, weight_threshold=THRESHOLD)
    path = str(tmp_path_factory.mktemp("models") / "palettized.mlpackage")
    cto.palettize_weights(linear_model("iOS18"), cto.OptimizationConfig(global_config=config)).save(path)
    return path


def run(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_bad_input(capsys, argv, message, output=None):
    """Exit status 2, one line on stderr naming the problem, no traceback, nothing written at ``output``."""
    status, out, err = run(capsys, *argv)
    assert status == 2, (out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err
    if output is not None:
        assert not os.path.exists(output)
        assert [n for n in os.listdir(os.path.dirname(output)) if n.startswith(".")] == []  # no temporary package left


# ----------------------------------------------------------------------------------------- inspect


def test_inspect_table(capsys, palettized):
    status, out, err = run(capsys, "inspect", palettized)
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["BYTES", "RATIO", "SHAPE", "STORAGE", "NAME"]
    assert "palettized 3-bit, fp16 LUTs: 4 along axis 0 (blocks of 16)  l0_weight_0_to_fp16_palettized" in out
    assert "dense fp16" in out and lines[-1].endswith("total") and "6 weights, 24,832 parameters" in lines[-1]
    assert len(lines) == 8


def test_inspect_json(capsys, palettized):
    status, out, _ = run(capsys, "inspect", palettized, "--json")
    report = json.loads(out)
    rows = {r["name"]: r for r in report["weights"]}
    row = rows["l1_weight_0_to_fp16_palettized"]
    assert row["shape"] == [128, 64] and row["type"] == "PalettizedTensor" and row["dtype"] == "fp16"
    assert row["nbytes"] == 128 * 64 * 3 // 8 + 8 * 8 * 2  # uint3 indices + eight 8-entry fp16 LUTs
    assert row["ratio_to_fp16"] == round(row["nbytes"] / row["fp16_nbytes"], 4)
    assert report["totals"]["nbytes"] == sum(r["nbytes"] for r in report["weights"])
    assert report["totals"]["weights"] == 6


def test_python_dash_m_works_the_same(capsys, palettized):
    _, expected, _ = run(capsys, "inspect", palettized)
    result = subprocess.run([sys.executable, "-m", "weightpack", "inspect", palettized], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout == expected and result.stderr == ""
    bad = subprocess.run([sys.executable, "-m", "weightpack", "inspect", "nowhere.mlpackage"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr == "weightpack inspect: error: nowhere.mlpackage: no such file or directory\n"


def test_demo_is_still_a_command(capsys, monkeypatch):
    calls = []
    monkeypatch.setattr("weightpack.demo.main", lambda **kwargs: calls.append(kwargs))
    assert run(capsys, "demo", "--json", "--seed", "3")[0] == 0
    assert calls == [{"as_json": True, "seed": 3}]


# ----------------------------------------------------------------------------------------- compress


def test_compress_palettize(capsys, tmp_path, dense18):
    output = tmp_path / "out.mlpackage"
    status, out, err = run(capsys, "compress", dense18, output, "--palettize", "4", "--weight-threshold", THRESHOLD)
    assert status == 0 and err == "", err
    weights = load(output)
    original = load(dense18)
    assert weights["l0_weight_0_to_fp16_palettized"] == wp.palettize(original["l0_weight_0_to_fp16"], 4)
    assert "palettized 4-bit, fp16 LUT" in out and out.splitlines()[-1].endswith("total")


def test_compress_joint_prune_and_quantize(capsys, tmp_path, dense18):
    output = tmp_path / "out.mlpackage"
    status, _, err = run(capsys, "compress", dense18, output, "--prune", "0.5", "--quantize", "int4", "--block-size", "32",
                         "--weight-threshold", THRESHOLD)  # fmt: skip
    assert status == 0, err
    original = load(dense18)["l2_weight_0_to_fp16"]
    expected = wp.quantize(wp.prune(original, 0.5), "int4", granularity="per_block", block_size=32)
    assert load(output)["l2_weight_0_to_fp16_sparsified"] == expected


def test_compress_with_a_yaml_config(capsys, tmp_path, dense16):
    config = tmp_path / "config.yaml"
    config.write_text(
        "config_type: OpLinearQuantizerConfig\nglobal_config:\n  mode: linear\n  dtype: uint8\n  weight_threshold: 100\n"
        "op_name_configs:\n  l1_weight_0_to_fp16: null\n"
    )
    output = tmp_path / "out.mlpackage"
    status, _, err = run(capsys, "compress", dense16, output, "--config", config)
    assert status == 0, err
    weights = load(output)
    assert isinstance(weights["l0_weight_0_to_fp16_quantized"], wp.QuantizedTensor)
    assert weights["l0_weight_0_to_fp16_quantized"].data.dtype_name == "uint8"
    assert "l1_weight_0_to_fp16" in weights  # left dense by its op_name config


def test_compress_n_m_and_threshold(capsys, tmp_path, dense18):
    output = tmp_path / "out.mlpackage"
    assert run(capsys, "compress", dense18, output, "--prune", "0.5", "--n-m", "2:4", "--weight-threshold", THRESHOLD)[0] == 0
    original = load(dense18)["l0_weight_0_to_fp16"]
    assert load(output)["l0_weight_0_to_fp16_sparsified"] == wp.prune(original, n_m_ratio=(2, 4), dim=1)
    config = tmp_path / "threshold.yaml"
    config.write_text("config_type: OpThresholdPrunerConfig\nglobal_config:\n  threshold: 0.05\n  weight_threshold: 100\n")
    status, out, err = run(capsys, "compress", dense18, output, "--config", config)
    assert status == 0 and "sparse" in out
    assert "left l2_weight_0_to_fp16 uncompressed: its sparsity" in err  # below minimum_sparsity_percentile 0.5


def test_compress_to_a_newer_target(capsys, tmp_path, dense16):
    output = tmp_path / "out.mlpackage"
    argv = ["compress", dense16, output, "--palettize", "3", "--group-size", "16", "--weight-threshold", THRESHOLD]
    assert_bad_input(capsys, argv, "per_grouped_channel palettization needs target iOS18", output)
    assert run(capsys, *argv, "--target", "iOS18")[0] == 0
    assert load(output)["l0_weight_0_to_fp16_palettized"].group_shape == (4, 1)


def test_progress_bar_only_on_a_terminal(capsys, tmp_path, dense18, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli.main(["compress", dense18, str(tmp_path / "out.mlpackage"), "--prune", "0.5", "--weight-threshold", str(THRESHOLD)]) == 0
    bar = terminal.getvalue()
    assert "\r\033[Kprune     [" in bar and "] 6/6 l2_bias" in bar and bar.endswith("\r\033[K")
    monkeypatch.undo()
    assert run(capsys, "compress", dense18, tmp_path / "out2.mlpackage", "--prune", "0.5")[2] == ""  # not a terminal: no bar


def test_output_replaces_an_existing_package_atomically(capsys, tmp_path, dense18):
    output = tmp_path / "out.mlpackage"
    assert run(capsys, "compress", dense18, output, "--prune", "0.5", "--weight-threshold", THRESHOLD)[0] == 0
    assert run(capsys, "compress", dense18, output, "--quantize", "int8", "--weight-threshold", THRESHOLD)[0] == 0
    assert sorted(os.listdir(tmp_path)) == ["out.mlpackage"]
    assert isinstance(load(output)["l0_weight_0_to_fp16_quantized"], wp.QuantizedTensor)


def test_output_into_missing_folders_creates_them(capsys, tmp_path, dense18):
    """As coremltools' save does: ``compress IN new/sub/OUT`` makes new/sub."""
    output = tmp_path / "new" / "sub" / "out.mlpackage"
    assert run(capsys, "compress", dense18, output, "--quantize", "int8", "--weight-threshold", THRESHOLD)[0] == 0
    assert isinstance(load(output)["l0_weight_0_to_fp16_quantized"], wp.QuantizedTensor)
    assert os.listdir(tmp_path / "new" / "sub") == ["out.mlpackage"]


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "afile").write_text(""), "afile is a file"),
    (lambda d: os.mkdir(d / "out.mlpackage"), "is not an .mlpackage; refusing"),
    (lambda d: None, "must end with .mlpackage"),
])
def test_output_that_cannot_be_written_is_refused_before_any_work(capsys, tmp_path, dense18, monkeypatch, make, message):
    from weightpack.coreml import package

    make(tmp_path)
    output = tmp_path / ("afile/sub/out.mlpackage" if "afile" in message else "out.bin" if "end with" in message else "out.mlpackage")

    def no_work(*args, **kwargs):
        raise AssertionError("the input was read before the output was checked")

    monkeypatch.setattr(package, "read_weights", no_work)
    status, _, err = run(capsys, "compress", dense18, output, "--quantize", "int8")
    assert status == 2 and message in err and err.count("\n") == 1, err


# ----------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupted_weight_bin_exits_2(capsys, tmp_path, palettized, kind):
    path = copy_package(palettized, tmp_path / "bad.mlpackage")
    corrupt(path, kind)
    assert_bad_input(capsys, ["inspect", path], "weight")
    output = str(tmp_path / "out.mlpackage")
    assert_bad_input(capsys, ["compress", path, output, "--prune", "0.5"], "weight", output)


def test_not_an_ml_program(capsys, tmp_path, palettized):
    path = copy_package(palettized, tmp_path / "nn.mlpackage")
    spec = Model_pb2.Model(specificationVersion=4)
    spec.neuralNetwork.SetInParent()
    with open(os.path.join(path, "Data", "com.apple.CoreML", "model.mlmodel"), "wb") as file:
        file.write(spec.SerializeToString())
    assert_bad_input(capsys, ["inspect", path], "is not an ML program (it is a neuralNetwork)")
    output = str(tmp_path / "out.mlpackage")
    assert_bad_input(capsys, ["compress", path, output, "--palettize", "4"], "is not an ML program", output)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prune", "0.5", "--n-m", "1:4"], "--n-m 1:4 must have 0 < N <= M and N/M equal to --prune 0.5"),
        (["--prune", "0.5", "--n-m", "two:four"], "--n-m 'two:four' must be N:M"),
        (["--prune", "1.5"], "--prune 1.5 must be a fraction in [0, 1]"),
        (["--group-size", "16"], "--group-size needs --palettize"),
        (["--quantize", "int4"], "4-bit quantization needs target iOS18 or later; the model's target is iOS16"),
        (["--palettize", "3"], "3-bit palettization needs target iOS18"),
        (["--palettize", "4", "--quantize", "int8"], "joint_compression needs target iOS18"),
        (["--palettize", "4", "--target", "iOS15"], "invalid choice: 'iOS15'"),
        ([], "nothing to do"),
        (["--palettize", "5"], "argument --palettize: invalid choice: 5"),
        (["--weight-threshold", "-1", "--prune", "0.5"], "--weight-threshold -1 must be at least 0"),
    ],
)
def test_bad_options_exit_2(capsys, tmp_path, dense16, extra, message):
    output = str(tmp_path / "out.mlpackage")
    argv = ["compress", dense16, output, *extra]
    if "--weight-threshold" not in extra:
        argv += ["--weight-threshold", str(THRESHOLD)]
    assert_bad_input(capsys, argv, message, output)


@pytest.mark.parametrize(
    "text, message",
    [
        ("config_type: OpPalettizerConfig\nglobal_config:\n  nbits: 5\n", "not a coremltools OptimizationConfig"),
        ("global_config: [unbalanced\n", "not a coremltools OptimizationConfig"),
        ("config_type: OpPalettizerConfig\nglobal_config:\n  mode: unique\n", "more than 256 distinct values"),
        ("config_type: OpPalettizerConfig\nglobal_config:\n  nbits: 4\n  cluster_dim: 4\n", "vector palettization needs target iOS18"),
    ],
)
def test_bad_config_files_exit_2(capsys, tmp_path, dense16, text, message):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    output = str(tmp_path / "out.mlpackage")
    assert_bad_input(capsys, ["compress", dense16, output, "--config", config], message, output)
    assert_bad_input(capsys, ["compress", dense16, output, "--config", config, "--prune", "0.5"], "--config replaces", output)
    assert_bad_input(capsys, ["compress", dense16, output, "--config", tmp_path / "none.yaml"], "none.yaml: no such file", output)


def test_bad_paths_exit_2(capsys, tmp_path, dense18):
    assert_bad_input(capsys, ["inspect", tmp_path / "missing.mlpackage"], "missing.mlpackage: no such file or directory")
    (tmp_path / "file.mlpackage").write_text("not a package")
    assert_bad_input(capsys, ["inspect", tmp_path / "file.mlpackage"], "not an .mlpackage (no Manifest.json)")
    output = str(tmp_path / "out.mlpackage")
    assert_bad_input(capsys, ["compress", tmp_path / "missing.mlpackage", output, "--prune", "0.5"], "no such file", output)
    assert_bad_input(capsys, ["compress", dense18, tmp_path / "out.bin", "--prune", "0.5"], "must end with .mlpackage", str(tmp_path / "out.bin"))
    os.mkdir(tmp_path / "keep.mlpackage")
    assert_bad_input(capsys, ["compress", dense18, tmp_path / "keep.mlpackage", "--prune", "0.5"], "is not an .mlpackage; refusing")
    (tmp_path / "afile").write_text("")
    assert_bad_input(capsys, ["compress", dense18, tmp_path / "afile" / "sub" / "out.mlpackage", "--prune", "0.5"],
                     "afile is a file")  # fmt: skip
    assert_bad_input(capsys, ["inspect"], "the following arguments are required: MODEL.mlpackage")
    assert_bad_input(capsys, ["frobnicate"], "invalid choice: 'frobnicate'")


# ----------------------------------------------------------------------------------------- compress --calibrate


def _bert_npz(path, batches, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (batches * 2, 16)
    np.savez(path, input_ids=rng.integers(0, 64, shape).astype(np.int32), attention_mask=np.ones(shape, np.int32),
             token_type_ids=rng.integers(0, 2, shape).astype(np.int32))  # fmt: skip
    return str(path)


@pytest.fixture(scope="module")
def bert_calibration(tmp_path_factory):
    from program_oracle import package_path

    folder = tmp_path_factory.mktemp("calibrate")
    return package_path("bert-iOS18-fp16"), _bert_npz(folder / "x.npz", 12, 1), _bert_npz(folder / "y.npz", 6, 2)


def test_compress_calibrate_eval_end_to_end(capsys, tmp_path, bert_calibration):
    """The issue's "done when": --palettize 4 --calibrate x.npz --eval y.npz; the output loads in
    coremltools and its weights decode bit-exact to weightpack's calibrated encoder."""
    import coremltools as ct
    import numpy as np

    from weightpack.calibration import collect, gptq_palettize

    model, x, y = bert_calibration
    output = str(tmp_path / "small.mlpackage")
    status, out, err = run(capsys, "compress", model, output, "--palettize", "4", "--calibrate", x, "--eval", y, "--no-sequential")
    assert status == 0, err
    assert "gptq_palettize 4-bit, 384 rows" in err and "layers_0_q_weight_to_fp16" in err  # progress per layer
    rows = {tuple(line.split()[:2]): line.split() for line in out.splitlines() if line.startswith(("data-free", "result"))}
    assert set(rows) == {(m, o) for m in ("data-free", "result") for o in ("hidden", "pooled")}
    assert float(rows[("result", "pooled")][2]) > float(rows[("data-free", "pooled")][2])  # held-out SNR gain
    ct.models.MLModel(output, skip_model_load=True)
    stats = collect(model, x)["layers_1_up_weight_to_fp16"]
    w = load(model)["layers_1_up_weight_to_fp16"]
    assert load(output)["layers_1_up_weight_to_fp16_palettized"] == gptq_palettize(w, stats, 4)
    assert np.isfinite(float(rows[("result", "hidden")][2]))


@pytest.mark.parametrize(
    "flags, method",
    [
        (["--quantize", "int4", "--block-size", "16"], "gptq_quantize int4 per_block 16"),
        (["--prune", "0.5", "--n-m", "2:4"], "sparsegpt_prune 2:4"),
        (["--palettize", "3", "--group-size", "16", "--per-channel-scale"], "gptq_palettize 3-bit, one LUT per 16 rows + per-row scale"),
        (["--prune", "0.5", "--palettize", "4"], "sparsegpt_prune 50%"),
        (["--palettize", "4"], "9 passes over the calibration inputs (sequential, inputs corrected)"),
        (["--palettize", "4", "--no-correct-inputs"], "9 passes over the calibration inputs (sequential)"),
    ],
)
def test_compress_calibrate_every_kind(capsys, tmp_path, bert_calibration, flags, method):
    model, x, _ = bert_calibration
    output = str(tmp_path / "out.mlpackage")
    status, out, err = run(capsys, "compress", model, output, *flags, "--calibrate", x)
    assert status == 0, err
    assert method in err, err
    assert load(output)  # a readable package


def test_compress_bits_per_weight_plan(capsys, tmp_path, bert_calibration):
    model, x, y = bert_calibration
    output = str(tmp_path / "planned.mlpackage")
    status, out, err = run(capsys, "compress", model, output, "--bits-per-weight", "3", "--calibrate", x, "--sensitivity")
    assert status == 0, err
    assert "budget 3.000 bits/weight" in err and "measured relative output error" in err
    planned = [v for n, v in load(output).items() if n.endswith("_palettized")]
    assert len(planned) == 14 and sum(v.nbytes for v in planned) <= 3 * sum(v.size for v in planned) / 8


def test_compress_calibrate_bad_input_exit_2(capsys, tmp_path, bert_calibration):
    import numpy as np

    model, x, _ = bert_calibration
    output = str(tmp_path / "out.mlpackage")
    np.savez(tmp_path / "wrong.npz", input_ids=np.zeros((4, 16), np.int32))
    assert_bad_input(capsys, ["compress", model, output, "--palettize", "4", "--calibrate", tmp_path / "wrong.npz"], "lack 'attention_mask'", output)
    np.savez(tmp_path / "shape.npz", input_ids=np.zeros((3, 16), np.int32), attention_mask=np.zeros((3, 16), np.int32),
             token_type_ids=np.zeros((3, 16), np.int32))  # fmt: skip
    assert_bad_input(capsys, ["compress", model, output, "--palettize", "4", "--calibrate", tmp_path / "shape.npz"], "not a multiple", output)
    (tmp_path / "text.npz").write_text("no")
    assert_bad_input(capsys, ["compress", model, output, "--palettize", "4", "--eval", tmp_path / "text.npz"], "not an .npz archive", output)
    assert_bad_input(capsys, ["compress", model, output, "--size", "0.001", "--calibrate", x], "below the minimum reachable", output)
    assert_bad_input(capsys, ["compress", model, output, "--bits-per-weight", "3", "--quantize", "int8"], "plan a palettization", output)
    assert_bad_input(capsys, ["compress", model, output, "--palettize", "4", "--sensitivity"], "--sensitivity needs --calibrate", output)
    assert_bad_input(capsys, ["compress", model, output, "--palettize", "4", "--no-correct-inputs"], "--no-correct-inputs needs --calibrate", output)
    assert_bad_input(capsys, ["compress", model, output, "--palettize", "4", "--refit"], "--refit needs --calibrate", output)
    assert_bad_input(capsys, ["compress", model, output, "--prune", "0.5", "--no-prune-refit"], "--no-prune-refit needs --calibrate", output)
