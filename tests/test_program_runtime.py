"""The program executor as a whole: policies agree, reports, refusals at load, input checks,
weight_ops / observe / set_weight, the shared scratch buffer, zero-copy weights."""
import mmap
import os
import shutil

import coremltools as ct
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from coremltools.converters.mil import Builder as mb

import weightpack as wp
from program_builders import mil_model, op_graph, run_op
from weightpack.coreml import Program
from weightpack.coreml.runtime.graph import Graph, OpNode, Ref, TensorType, Var
from weightpack.errors import FormatError, WeightpackError

RNG = np.random.default_rng(7)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning:coremltools")


class TinyDecoder(nn.Module):
    """RMSNorm, rotary halves, SiLU-gated MLP, tied-free head: the ops a LLaMA conversion emits."""

    def __init__(self, vocab=64, hidden=32, mlp=64):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, hidden)
        self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden, bias=False) for _ in range(4))
        self.gate, self.up, self.down = nn.Linear(hidden, mlp, bias=False), nn.Linear(hidden, mlp, bias=False), nn.Linear(mlp, hidden, bias=False)
        self.norm = nn.Parameter(torch.ones(hidden))
        self.head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, ids):
        x = self.embed(ids)
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.norm
        q, k, v = self.q(h), self.k(h), self.v(h)
        q = torch.cat([-q[..., 16:], q[..., :16]], -1) * 0.5 + q
        mask = torch.triu(torch.full((6, 6), float("-inf")), 1)
        a = torch.softmax(q @ k.transpose(-1, -2) / 32**0.5 + mask, -1) @ v
        x = x + self.o(a)
        x = x + self.down(F.silu(self.gate(x)) * self.up(x))
        return self.head(x)


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, stride=2, groups=2), nn.Conv2d(32, 8, 1)
        self.bn = nn.BatchNorm2d(16)

    def forward(self, x):
        x = F.relu(self.bn(self.c1(x)))
        x = F.hardswish(self.c2(x))
        return self.c3(x).mean((2, 3))


def convert(module, example, target=ct.target.iOS18, precision=ct.precision.FLOAT16):
    traced = torch.jit.trace(module.eval(), (torch.from_numpy(example),))
    return ct.convert(
        traced, inputs=[ct.TensorType(name="x", shape=example.shape, dtype=example.dtype)], convert_to="mlprogram",
        minimum_deployment_target=target, compute_precision=precision, skip_model_load=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def decoder():
    return convert(TinyDecoder(), np.arange(6, dtype=np.int32).reshape(1, 6))


@pytest.fixture(scope="module")
def cnn():
    return convert(TinyCNN(), RNG.standard_normal((1, 3, 12, 12)).astype(np.float32))


def compressed(mlmodel, kind):
    """The model with its weights compressed by weightpack's drop-in compressors."""
    import coremltools.optimize.coreml as cto

    config = {
        "lut4": cto.OpPalettizerConfig(nbits=4, weight_threshold=200),
        "glut4": cto.OpPalettizerConfig(nbits=4, granularity="per_grouped_channel", group_size=8, weight_threshold=200),
        "int8": cto.OpLinearQuantizerConfig(weight_threshold=200),
        "int4": cto.OpLinearQuantizerConfig(dtype="int4", granularity="per_block", block_size=16, weight_threshold=200),
        "sparse": cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=200),
    }[kind]
    fn = {"lut4": wp.coreml.palettize_weights, "glut4": wp.coreml.palettize_weights, "int8": wp.coreml.linear_quantize_weights,
          "int4": wp.coreml.linear_quantize_weights, "sparse": wp.coreml.prune_weights}[kind]  # fmt: skip
    return fn(mlmodel, cto.OptimizationConfig(global_config=config))


def relative_error(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def assert_same_function(out, reference):
    """Within float32 summation differences: for fp16 outputs, each element within one binary16
    step of the reference (a float32 difference can flip the final rounding); else 2e-5 of the scale."""
    if reference.dtype == np.float16:
        step = np.spacing(np.abs(reference)).astype(np.float64)
        assert np.all(np.abs(out.astype(np.float64) - reference) <= step), np.max(np.abs(out.astype(np.float64) - reference) / step)
    else:
        assert relative_error(out, reference) < 2e-5


# ------------------------------------------------------------------------------ policies


@pytest.mark.parametrize("kind", ["lut4", "glut4", "int8", "int4", "sparse"])
def test_policies_agree_with_coremltools_decompression(decoder, cnn, kind):
    """jit, load and auto compute what the program whose weights coremltools decompressed computes."""
    import coremltools.optimize.coreml as cto

    ids = np.array([[3, 1, 4, 1, 5, 9]], np.int32)
    image = RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)
    for model, x in ((decoder, ids), (cnn, image)):
        small = compressed(model, kind)
        reference = Program.load(cto.decompress_weights(small), policy="load").predict({"x": x})
        name = next(iter(reference))
        for policy in ("load", "jit", "auto"):
            out = Program.load(small, policy=policy).predict({"x": x})[name]
            assert_same_function(out, reference[name])


def test_jit_runs_fused_products_rows_and_scratch(decoder, cnn):
    jit = Program.load(compressed(decoder, "lut4"), policy="jit")
    modes = {(op.role, op.mode) for op in jit.weight_ops()}
    assert ("linear", "fused") in modes and ("gather", "rows") in modes
    load = Program.load(compressed(decoder, "lut4"), policy="load")
    assert {op.mode for op in load.weight_ops()} == {"dense"} and load.report.scratch_bytes == 0
    assert jit.report.resident_weight_bytes < 0.5 * load.report.resident_weight_bytes
    conv = Program.load(compressed(cnn, "int8"), policy="jit")
    conv_ops = [op for op in conv.weight_ops() if op.role == "conv"]
    assert conv_ops and all(op.mode == "scratch" for op in conv_ops if not isinstance(op.weight, np.ndarray))


@pytest.mark.parametrize("nbits", [1, 2, 3, 4, 6, 8])
@pytest.mark.parametrize("luts", [1, 4, 12])
@pytest.mark.parametrize("lut_dtype", [np.float16, np.float32, np.int8])
def test_row_reader_decodes_the_rows_as_decompression_does(nbits, luts, lut_dtype):
    from weightpack.coreml.runtime.weights import row_reader, rows_supported

    rng = np.random.default_rng(nbits * 100 + luts)
    lut = rng.integers(-100, 100, (luts, 1, 1 << nbits, 1)) if lut_dtype == np.int8 else rng.standard_normal((luts, 1, 1 << nbits, 1))
    table = wp.PalettizedTensor(rng.integers(0, 1 << nbits, (12, 16)), lut.astype(lut_dtype))
    assert rows_supported(table)
    rows = np.array([0, 11, 5, 5, 7])
    out = row_reader(table)(rows)
    assert out.dtype == np.float32 and out.shape == (5, 16)
    np.testing.assert_array_equal(out, table.decompress(np.float32)[rows])


def test_gathered_rows_follow_set_weight(decoder):
    jit = Program.load(compressed(decoder, "glut4"), policy="jit")
    ids = {"x": np.array([[3, 1, 4, 1, 5, 9]], np.int32)}
    before = jit.predict(ids)
    [table] = [op for op in jit.weight_ops() if op.role == "gather"]
    assert table.mode == "rows"
    replaced = wp.palettize(RNG.standard_normal(table.weight.shape).astype(np.float32), 4, group_size=16, axis=0)
    jit.set_weight(table.weight_name, replaced)
    after = jit.predict(ids)
    load = Program.load(compressed(decoder, "glut4"), policy="load")
    load.set_weight(table.weight_name, replaced)
    name = next(iter(after))
    assert not np.array_equal(before[name], after[name])
    assert_same_function(after[name], load.predict(ids)[name])


def test_conv_scratch_is_one_buffer_shared_by_every_conv():
    w1 = wp.quantize(RNG.standard_normal((8, 3, 3, 3)).astype(np.float32), "int8")
    w2 = wp.quantize(RNG.standard_normal((16, 8, 3, 3)).astype(np.float32), "int8")
    graph = Graph(inputs=[Var("x", TensorType((1, 3, 9, 9), "fp32"))], outputs=["y"])
    graph.constants.update(w1=w1, w2=w2)
    graph.weights.update({"w1", "w2"})
    graph.ops += [
        OpNode("conv", "c1", {"x": Ref("x"), "weight": Ref("w1")}, [Var("h", TensorType((1, 8, 7, 7), "fp32"))]),
        OpNode("conv", "c2", {"x": Ref("h"), "weight": Ref("w2")}, [Var("y", TensorType((1, 16, 5, 5), "fp32"))]),
    ]
    jit, load = Program(graph, "jit"), Program(graph, "load")
    assert jit.report.scratch_bytes == w2.size * 4 and jit.report.layer_modes == ["scratch", "scratch"]
    x = RNG.standard_normal((1, 3, 9, 9)).astype(np.float32)
    np.testing.assert_allclose(jit.predict({"x": x})["y"], load.predict({"x": x})["y"], rtol=1e-5, atol=1e-5)


def test_report(decoder):
    prog = Program.load(compressed(decoder, "lut4"), policy="jit")
    assert prog.report.latency_seconds == 0 and prog.report.load_seconds > 0
    prog.predict({"x": np.zeros((1, 6), np.int32)})
    report = prog.report
    assert report.policy == "jit" and 0 < report.kernel_seconds < report.latency_seconds
    assert len(report.op_seconds) == len(prog.graph.ops) and all(t >= 0 for t in report.op_seconds.values())
    assert ("linear", prog.weight_ops()[-1].name) in report.op_seconds or any(k[0] == "linear" for k in report.op_seconds)
    assert sum(report.op_seconds.values()) <= report.latency_seconds
    assert report.last_latency_seconds == report.latency_seconds and report.overhead_seconds > 0


def test_jit_weights_stay_memory_mapped_from_the_package(tmp_path, decoder):
    path = str(tmp_path / "m.mlpackage")
    wp.coreml.save_model(compressed(decoder, "lut4"), path)
    prog = Program.load(path, policy="jit")

    def mapped(array):
        owner = array
        while owner is not None and not isinstance(owner, mmap.mmap):
            owner = owner.obj if isinstance(owner, memoryview) else getattr(owner, "base", None)
        return owner is not None

    fused = [op for op in prog.weight_ops() if op.mode == "fused"]
    assert fused and all(mapped(op.weight.indices.packed) for op in fused)
    out = prog.predict({"x": np.zeros((1, 6), np.int32)})
    assert np.isfinite(next(iter(out.values()))).all()


def test_fp16_outputs_come_back_as_float16():
    def build(x):
        return mb.relu(x=x)

    model = mil_model(build, [((2, 3), np.float16)], opset="iOS16")
    out = Program.load(model).predict({"x": np.array([[-1, 2, 3], [4, -5, 6]], np.float16)})
    (value,) = out.values()
    assert value.dtype == np.float16 and value.tolist() == [[0, 2, 3], [4, 0, 6]]


def test_an_ios15_program_runs():
    def build(x):
        return mb.reduce_mean(x=mb.mul(x=x, y=x), axes=[-1], keep_dims=True)

    model = mil_model(build, [((2, 4), np.float32)], opset="iOS15")
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    (value,) = Program.load(model).predict({"x": x}).values()
    np.testing.assert_allclose(value, (x * x).mean(-1, keepdims=True), rtol=1e-6)


# ------------------------------------------------------------------------------ refusals at load


def test_an_op_outside_the_covered_set_is_refused_with_its_location():
    graph = op_graph("lstm", {"x": np.zeros((1, 2), np.float32)}, outputs=[np.zeros((1, 2), np.float32)])
    with pytest.raises(WeightpackError, match="op 'the_op' \\(lstm\\): op type 'lstm' is not covered.*covered ops: abs, acos, add"):
        Program(graph)

    def build(x):
        return mb.random_uniform(shape=mb.shape(x=x), low=0.0, high=1.0, name="noise")

    model = mil_model(build, [((2, 3), np.float32)])
    with pytest.raises(WeightpackError, match="main/block/op 'noise' \\(random_uniform\\): op type 'random_uniform' is not covered"):
        Program.load(model)


def test_control_flow_is_refused():
    def build(x):
        return mb.cond(pred=mb.greater(x=mb.reduce_sum(x=x), y=0.0), _true_fn=lambda: mb.relu(x=x), _false_fn=lambda: mb.sigmoid(x=x), name="branch")

    with pytest.raises(WeightpackError, match="'branch' \\(cond\\) \\(holds nested blocks\\): op type 'cond' is not covered"):
        Program.load(mil_model(build, [((3,), np.float32)]))


def test_stateful_programs_run():
    """Once refused at load; now the state is an input of its own (tests/test_program_state.py)."""
    from coremltools.converters.mil.mil import types

    @mb.program(input_specs=[mb.StateTensorSpec((2,), dtype=types.fp16), mb.TensorSpec((2,), dtype=types.fp16)], opset_version=ct.target.iOS18)
    def prog(state, x):
        return mb.add(x=mb.read_state(input=state), y=x)

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18, skip_model_load=True)
    program = Program.load(model)
    assert list(program.inputs) == ["x"] and list(program.states.values()) == [((2,), np.dtype(np.float16))]
    x = np.array([1.5, -2.0], np.float16)
    out = program.predict({"x": x}, state=program.make_state())
    np.testing.assert_array_equal(next(iter(out.values())), x)  # the state starts at zeros


def _edited(model, tmp_path, edit):
    """A package of ``model`` with its program edited by ``edit(block)``."""
    spec = model.get_spec()
    block = spec.mlProgram.functions["main"].block_specializations[spec.mlProgram.functions["main"].opset]
    edit(block)
    edited = ct.models.MLModel(spec, weights_dir=model.weights_dir, skip_model_load=True)
    path = str(tmp_path / "edited.mlpackage")
    wp.coreml.save_model(edited, path)
    return path


def _ops(block, op_type):
    return [op for op in block.operations if op.type == op_type]


def test_a_missing_variable_is_refused_naming_the_op(tmp_path, decoder):
    def edit(block):
        _ops(block, "linear")[0].inputs["x"].arguments[0].name = "nowhere"

    with pytest.raises(FormatError, match="\\(linear\\): parameter 'x' reads 'nowhere', which is neither an input nor the output of an earlier op"):
        Program.load(_edited(decoder, tmp_path, edit))


def test_inconsistent_shapes_are_refused_naming_the_op(tmp_path, decoder):
    def edit(block):
        _ops(block, "linear")[0].outputs[0].type.tensorType.dimensions[-1].constant.size = 31

    with pytest.raises(FormatError, match="\\(linear\\): output .* is declared fp16\\[1, 6, 31\\], but its inputs make shape \\(1, 6, 32\\)"):
        Program.load(_edited(decoder, tmp_path, edit))


def test_a_missing_weight_file_is_refused_naming_the_op(tmp_path, decoder):
    path = str(tmp_path / "m.mlpackage")
    wp.coreml.save_model(compressed(decoder, "lut4"), path)
    weights = os.path.join(path, "Data", "com.apple.CoreML", "weights")
    shutil.rmtree(weights)
    with pytest.raises(FormatError, match="op '.*' \\(constexpr_lut_to_dense\\).*weight file .* is missing"):
        Program.load(path)


def test_bad_arguments_to_load():
    graph = op_graph("relu", {"x": np.zeros(2, np.float32)}, outputs=[np.zeros(2, np.float32)])
    with pytest.raises(WeightpackError, match="policy='eager' is unknown"):
        Program(graph, "eager")
    with pytest.raises(WeightpackError, match="compute_precision='bf16' is unknown"):
        Program(graph, compute_precision="bf16")
    with pytest.raises(WeightpackError, match="no such file"):
        Program.load("/nonexistent.mlpackage")
    with pytest.raises(WeightpackError, match="has no function 'other'"):
        Program.load(mil_model(lambda x: mb.relu(x=x), [((2,), np.float32)]), function="other")


# ------------------------------------------------------------------------------ inputs


@pytest.fixture(scope="module")
def two_inputs():
    def build(x, ids):
        return mb.add(x=x, y=mb.cast(x=ids, dtype="fp32"))

    return Program.load(mil_model(build, [((2, 3), np.float32), ((2, 3), np.int32)]))


def test_inputs_and_outputs_describe_the_program(two_inputs):
    assert two_inputs.inputs == {"x": ((2, 3), np.dtype(np.float32)), "ids": ((2, 3), np.dtype(np.int32))}
    assert len(two_inputs.outputs) == 1


@pytest.mark.parametrize(
    "feeds, message",
    [
        ({"x": np.zeros((2, 3), np.float32)}, "inputs lack 'ids'; the program takes x: fp32\\[2, 3\\], ids: int32\\[2, 3\\]"),
        ({"x": np.zeros((2, 3), np.float32), "ids": np.zeros((2, 3), np.int32), "z": 1}, "inputs 'z' are not inputs of the program"),
        ({"x": np.zeros((3, 2), np.float32), "ids": np.zeros((2, 3), np.int32)}, "input 'x' has shape \\(3, 2\\); the program takes fp32\\[2, 3\\]"),
        ({"x": np.zeros((2, 3), np.float32), "ids": np.zeros((2, 3), np.float32)}, "input 'ids' has dtype float32; the program takes int32\\[2, 3\\]"),
        ({"x": np.zeros((2, 3), np.int32), "ids": np.zeros((2, 3), np.int32)}, "input 'x' has dtype int32"),
        ({"x": np.zeros((2, 3), np.float32), "ids": np.full((2, 3), 2**40)}, "outside the int32 range"),
        ({"x": "zeros", "ids": np.zeros((2, 3), np.int32)}, "input 'x' must be a numpy array"),
        ([np.zeros((2, 3))], "inputs must be a dict"),
    ],
)
def test_bad_inputs_are_refused_before_anything_runs(two_inputs, feeds, message):
    with pytest.raises(WeightpackError, match=message):
        two_inputs.predict(feeds)


def test_inputs_of_another_width_or_kind_are_converted_and_never_modified(two_inputs):
    x = np.ones((2, 3), np.float64)
    ids = np.arange(6, dtype=np.int64).reshape(2, 3)
    before = (x.copy(), ids.copy())
    (value,) = two_inputs.predict({"x": x, "ids": ids}).values()
    assert value.dtype == np.float32 and value.tolist() == (1 + ids).tolist()
    assert np.array_equal(x, before[0]) and np.array_equal(ids, before[1])


def test_flexible_input_shapes():
    lin = nn.Linear(4, 3)
    traced = torch.jit.trace(lin.eval(), (torch.zeros(2, 4),))
    ranged = ct.convert(traced, inputs=[ct.TensorType(name="x", shape=(ct.RangeDim(1, 8), 4))], convert_to="mlprogram",
                        minimum_deployment_target=ct.target.iOS16, compute_precision=ct.precision.FLOAT32, skip_model_load=True)  # fmt: skip
    prog = Program.load(ranged)
    assert prog.inputs["x"][0] == (None, 4)
    for rows in (1, 5):
        x = RNG.standard_normal((rows, 4)).astype(np.float32)
        (value,) = prog.predict({"x": x}).values()
        np.testing.assert_allclose(value, lin(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(WeightpackError, match="dimensions in \\(1..8, 4..4\\)"):
        prog.predict({"x": np.zeros((9, 4), np.float32)})
    enumerated = ct.convert(traced, inputs=[ct.TensorType(name="x", shape=ct.EnumeratedShapes([(2, 4), (3, 4)]))], convert_to="mlprogram",
                            minimum_deployment_target=ct.target.iOS16, skip_model_load=True)  # fmt: skip
    prog = Program.load(enumerated)
    prog.predict({"x": np.zeros((3, 4), np.float32)})
    with pytest.raises(WeightpackError, match="one of \\[\\(2, 4\\), \\(3, 4\\)\\]"):
        prog.predict({"x": np.zeros((1, 4), np.float32)})


# ------------------------------------------------------------------------------ weights


def test_weight_ops_describe_each_use(decoder):
    ops = Program.load(compressed(decoder, "lut4"), policy="jit").weight_ops()
    linear = [op for op in ops if op.role == "linear"]
    assert len(linear) == 8 and all(op.param == "weight" and op.matrix_side for op in linear)
    gather = [op for op in ops if op.role == "gather"]
    assert len(gather) == 1 and gather[0].op_type == "gather" and gather[0].weight.shape == (64, 32)
    assert all(isinstance(op.weight, (np.ndarray, wp.CompressedTensor)) for op in ops)


@pytest.mark.parametrize(
    "side, transpose, var_shape, matrix_side",
    [("y", True, (2, 3, 5), True), ("y", False, (2, 3, 4), False), ("x", False, (2, 5, 3), True), ("x", True, (2, 4, 3), False)],
)
def test_matmul_constants_report_their_side_and_transpose(side, transpose, var_shape, matrix_side):
    w = wp.quantize(RNG.standard_normal((4, 5)).astype(np.float32), "int8")
    dense = w.decompress(np.float32)
    var = RNG.standard_normal(var_shape).astype(np.float32)
    other = "x" if side == "y" else "y"
    flags = {"transpose_x": side == "x" and transpose, "transpose_y": side == "y" and transpose}
    x, y = (var, dense) if side == "y" else (dense, var)
    expected = np.matmul(np.swapaxes(x, -1, -2) if flags["transpose_x"] else x, np.swapaxes(y, -1, -2) if flags["transpose_y"] else y)
    prog = Program(op_graph("matmul", {other: var}, flags, outputs=[expected], weights={side: w}), "jit")
    (op,) = prog.weight_ops()
    assert (op.role, op.param, op.transpose, op.matrix_side) == ("matmul", side, transpose, matrix_side)
    assert op.mode == ("fused" if matrix_side else "scratch")
    (out,) = prog.predict({other: var}).values()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_observe_sees_the_activations_entering_each_weight_op(decoder):
    prog = Program.load(compressed(decoder, "int8"), policy="jit")
    seen = []
    out = prog.predict({"x": np.array([[1, 2, 3, 4, 5, 6]], np.int32)}, observe=lambda op, arrays: seen.append((op, {k: v.copy() for k, v in arrays.items()})))
    linear = [(op, arrays) for op, arrays in seen if op.role == "linear"]
    assert [op.name for op, _ in linear] == [op.name for op in prog.weight_ops() if op.role == "linear"]
    head, arrays = linear[-1]
    logits = arrays["x"] @ head.weight.decompress(np.float32).T
    np.testing.assert_allclose(next(iter(out.values())), logits.astype(np.float16), rtol=2e-3, atol=2e-3)
    assert [op for op, _ in seen if op.role == "gather"][0].param == "x"
    np.testing.assert_array_equal(prog.predict({"x": np.array([[1, 2, 3, 4, 5, 6]], np.int32)})[prog.outputs[0]], out[prog.outputs[0]])


def test_set_weight_swaps_one_weight(decoder):
    import coremltools.optimize.coreml as cto

    for policy in ("jit", "load"):
        prog = Program.load(compressed(decoder, "int8"), policy=policy)
        ids = {"x": np.array([[0, 1, 2, 3, 4, 5]], np.int32)}
        before = prog.predict(ids)[prog.outputs[0]]
        target = [op for op in prog.weight_ops() if op.role == "linear"][2]
        replacement = wp.palettize(target.weight.decompress() * 3, nbits=4)  # fp16, as the model's
        prog.set_weight(target.weight_name, replacement)
        after = prog.predict(ids)[prog.outputs[0]]
        assert not np.allclose(before, after)
        again = [op for op in prog.weight_ops() if op.weight_name == target.weight_name][0]
        assert again.weight is replacement and again.mode == ("fused" if policy == "jit" else "dense")
        reference = Program.load(wp.coreml.replace_weights(cto.decompress_weights(compressed(decoder, "int8")), {target.weight_name: replacement.decompress()}), policy="load")
        np.testing.assert_allclose(after, reference.predict(ids)[reference.outputs[0]], rtol=2e-3, atol=2e-3)
    with pytest.raises(WeightpackError, match="no weight named 'nope'"):
        prog.set_weight("nope", replacement)
    with pytest.raises(WeightpackError, match="has shape \\(2, 2\\); weight .* has shape"):
        prog.set_weight(target.weight_name, np.zeros((2, 2), np.float32))
    with pytest.raises(WeightpackError, match="float16 or float32"):
        prog.set_weight(target.weight_name, np.zeros(target.weight.shape, np.int32))


def test_observe_and_set_weight_allow_sequential_calibration(decoder):
    """The pattern calibration follows: observe a layer's inputs, replace its weight, go on."""
    prog = Program.load(compressed(decoder, "int8"), policy="jit")
    ids = {"x": np.array([[5, 4, 3, 2, 1, 0]], np.int32)}
    for op in [op for op in prog.weight_ops() if op.role == "linear"][:2]:
        inputs = []
        prog.predict(ids, observe=lambda seen, arrays: inputs.append(arrays["x"].copy()) if seen.weight_name == op.weight_name else None)
        assert len(inputs) == 1 and inputs[0].shape[-1] == op.weight.shape[1]
        prog.set_weight(op.weight_name, wp.quantize(op.weight.decompress(np.float32), "int4", granularity="per_channel"))
    assert np.isfinite(prog.predict(ids)[prog.outputs[0]]).all()


def test_fp16_compute_mode_stays_close_to_fp32(decoder):
    ids = {"x": np.array([[2, 7, 1, 8, 2, 8]], np.int32)}
    wide = Program.load(decoder).predict(ids)
    narrow = Program.load(decoder, compute_precision="fp16").predict(ids)
    name = next(iter(wide))
    assert 0 < relative_error(narrow[name], wide[name]) < 2e-2


def test_layer_model_is_a_program(decoder):
    from weightpack.runtime import Linear, Model

    w = wp.palettize(RNG.standard_normal((4, 8)).astype(np.float32), nbits=4)
    model = Model([Linear(w, activation="relu")], policy="jit")
    assert isinstance(model.program, Program) and model.report is model.program.report
    assert [op.op_type for op in model.program.weight_ops()] == ["linear"]


def test_non_finite_activations_propagate_under_every_policy():
    w = wp.palettize(RNG.standard_normal((4, 8)).astype(np.float32), nbits=4)
    x = np.ones((2, 8), np.float32)
    x[0, 3] = np.nan
    programs = [Program(op_graph("linear", {"x": x}, outputs=[np.zeros((2, 4), np.float32)], weights={"weight": w}), policy, threads=1) for policy in ("jit", "load")]
    outs = [p.predict({"x": x}) for p in programs]  # a first call: through wp.matmul's checks
    outs += [p.predict({"x": x}) for p in programs for _ in range(2)]  # later calls: the prepared product
    for out in outs:
        (y,) = out.values()
        assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()


def test_a_failure_while_running_names_the_op():
    graph = op_graph("reshape", {"x": np.zeros(6, np.float32), "shape": np.array([4, 2], np.int32)}, outputs=[np.zeros((4, 2), np.float32)])
    with pytest.raises(WeightpackError, match="op 'the_op' \\(reshape\\): x of shape \\(6,\\) .* cannot take the shape \\(4, 2\\)"):
        Program(graph).predict({"x": np.zeros(6, np.float32), "shape": np.array([4, 2], np.int32)})


def test_observe_gets_read_only_arrays():
    w = wp.quantize(RNG.standard_normal((4, 8)).astype(np.float32), "int8")
    prog = Program(op_graph("linear", {"x": np.zeros((1, 8), np.float32)}, outputs=[np.zeros((1, 4), np.float32)], weights={"weight": w}))

    def tamper(op, arrays):
        arrays["x"][...] = 1

    with pytest.raises(ValueError, match="read-only"):  # the callback's own error, as it raised it
        prog.predict({"x": np.zeros((1, 8), np.float32)}, observe=tamper)
