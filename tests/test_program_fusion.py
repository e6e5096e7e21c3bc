"""Fused chains of the executor (weightpack/coreml/runtime/fusion.py): bit-identical to the ops
they replace, found only where the chain is exactly the pattern, and the fixtures' programs give
the same bits fused (predict) and op by op (predict with observe)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from program_oracle import manifest, package_path, program_inputs, reference
from weightpack._c import ffi, lib
from weightpack.coreml.runtime import Program
from weightpack.coreml.runtime.graph import Const, Graph, OpNode, Ref, TensorType, Var


def numpy_rmsnorm(x, w, eps_add, eps_rsqrt):
    """The unfused ops' numpy calls (ops_elementwise / ops_reduce), in order."""
    s = np.add.reduce(np.square(x), axis=(x.ndim - 1,), keepdims=True) / np.asarray(x.shape[-1], np.float32)
    return (x * (1.0 / np.sqrt((s + eps_add) + eps_rsqrt))) * w


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 700), st.integers(1, 3), st.integers(-4, 4), st.sampled_from([0.0, 1e-12, 1e-6, 1e-5]))
def test_rmsnorm_kernel_is_bit_identical_to_numpy(n, rows, exponent, eps):
    rng = np.random.default_rng(n * 7 + rows)
    x = (rng.standard_normal((rows, n)) * 10.0 ** rng.uniform(exponent - 2, exponent + 2, (rows, n))).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32)
    y = np.empty_like(x)
    status = lib.wp_rmsnorm_f32(ffi.from_buffer("float[]", x), x.size, rows, n, 1e-5, eps, ffi.from_buffer("float[]", w), n,
                                ffi.from_buffer("float[]", y, require_writable=True), y.size)  # fmt: skip
    assert status == 0
    expected = numpy_rmsnorm(x, w, np.float32(1e-5), np.float32(eps))
    assert y.tobytes() == expected.tobytes()


@pytest.mark.parametrize("n", [2048, 5632, 4097, 100_003])
def test_rmsnorm_kernel_is_bit_identical_on_long_rows(n):
    x = np.random.default_rng(n).standard_normal((2, n)).astype(np.float32)
    w = np.linspace(0.5, 1.5, n, dtype=np.float32)
    y = np.empty_like(x)
    assert lib.wp_rmsnorm_f32(ffi.from_buffer("float[]", x), x.size, 2, n, 1e-5, 0.0, ffi.from_buffer("float[]", w), n,
                              ffi.from_buffer("float[]", y, require_writable=True), y.size) == 0  # fmt: skip
    assert y.tobytes() == numpy_rmsnorm(x, w, np.float32(1e-5), np.float32(0.0)).tobytes()


def test_rmsnorm_kernel_refuses_inconsistent_sizes():
    x, w, y = np.ones((2, 8), np.float32), np.ones(8, np.float32), np.empty((2, 8), np.float32)
    args = (ffi.from_buffer("float[]", x), 16, 2, 8, 1e-5, 0.0, ffi.from_buffer("float[]", w))
    y_ptr = ffi.from_buffer("float[]", y, require_writable=True)
    assert lib.wp_rmsnorm_f32(*args, 7, y_ptr, 16) != 0
    assert lib.wp_rmsnorm_f32(*args, 8, y_ptr, 15) != 0
    assert lib.wp_rmsnorm_f32(ffi.from_buffer("float[]", x), 15, 2, 8, 1e-5, 0.0, ffi.from_buffer("float[]", w), 8, y_ptr, 16) != 0


def rmsnorm_graph(n=16, weight_as="weight", shared=False, dtype="fp32", axes=(-1,), two=2.0, eps_dtype=np.float32, residual=None):
    """x -> [x*x via pow] -> reduce_mean -> add eps -> rsqrt -> mul x -> mul w -> y (and x + y).
    ``residual``: x is the sum of inputs x0 + x1 (static shape (4, 3, n)), ``"read-between"``:
    and an op reads it before the norm."""
    t = TensorType((4 if residual else None, 3, n), dtype)
    scalar = TensorType((None, 1, n) if axes == (1,) else (None, 3, 1), dtype)
    w = (1 + 0.1 * np.arange(n)).astype(np.float16 if dtype == "fp16" else np.float32)
    inputs = [Var("x0", t), Var("x1", t)] if residual else [Var("x", t)]
    extra = ["between"] if residual == "read-between" else []
    g = Graph(inputs=inputs, outputs=["out"] + (["sq"] if shared else []) + extra, source="rmsnorm test")
    if residual:
        g.ops.append(OpNode("add", "pre", {"x": Ref("x0"), "y": Ref("x1")}, [Var("x", t)]))
    if residual == "read-between":
        g.ops.append(OpNode("relu", "between", {"x": Ref("x")}, [Var("between", t)]))
    if weight_as == "weight":
        g.constants["norm_w"], g.const_types["norm_w"] = w, TensorType((n,), dtype)
        g.weights.add("norm_w")
        w_binding = Ref("norm_w")
    else:
        w_binding = Const(w)
    g.ops += [
        OpNode("pow", "p", {"x": Ref("x"), "y": Const(np.array(two, np.float32))}, [Var("sq", t)]),
        OpNode("reduce_mean", "m", {"x": Ref("sq"), "axes": Const(np.array(axes, np.int32)), "keep_dims": Const(np.array(True))}, [Var("ms", scalar)]),
        OpNode("add", "a", {"x": Ref("ms"), "y": Const(np.array(1e-5, eps_dtype))}, [Var("var", scalar)]),
        OpNode("rsqrt", "r", {"x": Ref("var"), "epsilon": Const(np.array(1e-6, np.float32))}, [Var("inv", scalar)]),
        OpNode("mul", "mx", {"x": Ref("x"), "y": Ref("inv")}, [Var("normed", t)]),
        OpNode("mul", "mw", {"x": Ref("normed"), "y": w_binding}, [Var("y", t)]),
        OpNode("add", "residual", {"x": Ref("x"), "y": Ref("y")}, [Var("out", t)]),
    ]  # fmt: skip
    return g


def observed_and_fused(prog, feeds):
    fused = prog.predict(feeds)
    seen = []
    op_by_op = prog.predict(feeds, observe=lambda op, arrays: seen.append(op.name))
    return fused, op_by_op, seen


@pytest.mark.parametrize("weight_as", ["weight", "const"])
@pytest.mark.parametrize("policy", ["jit", "load"])
def test_rmsnorm_chain_is_fused_and_bit_identical(weight_as, policy):
    prog = Program(rmsnorm_graph(weight_as=weight_as), policy)
    assert [kind for kind, _ in prog.report.fused_chains] == ["rmsnorm"]
    assert prog.report.fused_chains[0][1] == ("p", "m", "a", "r", "mx", "mw")
    x = (np.random.default_rng(0).standard_normal((4, 3, 16)) * 3).astype(np.float32)
    fused, op_by_op, seen = observed_and_fused(prog, {"x": x})
    assert fused["out"].tobytes() == op_by_op["out"].tobytes()
    assert seen == (["mw"] if weight_as == "weight" else [])
    times = prog.predict({"x": x}) and prog.report.op_seconds
    assert times[("mul", "mw")] > 0 and times[("pow", "p")] == 0.0  # the chain's time on its last op


@pytest.mark.parametrize("weight_as", ["weight", "const"])
def test_the_residual_add_before_a_norm_runs_in_its_step_with_the_same_bits(weight_as):
    prog = Program(rmsnorm_graph(weight_as=weight_as, residual="add"), "jit")
    assert prog.report.fused_chains == [("rmsnorm", ("pre", "p", "m", "a", "r", "mx", "mw"))]
    rng = np.random.default_rng(1)
    feeds = {"x0": rng.standard_normal((4, 3, 16)).astype(np.float32), "x1": (rng.standard_normal((4, 3, 16)) * 5).astype(np.float32)}
    fused, op_by_op, _ = observed_and_fused(prog, feeds)
    assert fused["out"].tobytes() == op_by_op["out"].tobytes()
    x = feeds["x0"] + feeds["x1"]
    expected = x + numpy_rmsnorm(x, (1 + 0.1 * np.arange(16)).astype(np.float32), np.float32(1e-5), np.float32(1e-6))
    assert fused["out"].tobytes() == expected.tobytes()


def test_a_residual_add_read_before_the_norm_stays_its_own_step():
    prog = Program(rmsnorm_graph(residual="read-between"), "jit")
    assert prog.report.fused_chains == [("rmsnorm", ("p", "m", "a", "r", "mx", "mw"))]


def test_rmsnorm_chain_follows_set_weight():
    prog = Program(rmsnorm_graph(), "jit")
    x = np.random.default_rng(1).standard_normal((2, 3, 16)).astype(np.float32)
    before = prog.predict({"x": x})["out"]
    prog.set_weight("norm_w", np.full(16, 2.0, np.float32))
    fused, op_by_op, _ = observed_and_fused(prog, {"x": x})
    assert fused["out"].tobytes() == op_by_op["out"].tobytes()
    assert not np.array_equal(before, fused["out"])


@pytest.mark.parametrize(
    "variant",
    [dict(shared=True), dict(axes=(1,)), dict(two=3.0), dict(eps_dtype=np.int32)],
    ids=["intermediate-is-an-output", "other-axis", "pow-3", "integer-epsilon"],
)
def test_chains_that_differ_from_the_pattern_are_not_fused(variant):
    prog = Program(rmsnorm_graph(**variant), "jit")
    assert prog.report.fused_chains == []


def test_fp16_precision_does_not_fuse():
    assert Program(rmsnorm_graph(), "jit", compute_precision="fp16").report.fused_chains == []


def test_fused_chain_falls_back_to_the_ops_on_inputs_it_does_not_take():
    prog = Program(rmsnorm_graph(), "jit")  # x is (?, 3, 16): an empty batch goes op by op
    out = prog.predict({"x": np.zeros((0, 3, 16), np.float32)})["out"]
    assert out.shape == (0, 3, 16)


def test_fused_chain_keeps_the_callers_array_and_non_contiguous_inputs_work():
    prog = Program(rmsnorm_graph(), "jit")
    base = np.random.default_rng(2).standard_normal((2, 3, 32)).astype(np.float32)
    x = base[:, :, ::2]  # a strided view
    keep = x.copy()
    fused, op_by_op, _ = observed_and_fused(prog, {"x": x})
    assert fused["out"].tobytes() == op_by_op["out"].tobytes()
    assert np.array_equal(x, keep)


FIXTURES = sorted(name for name in manifest() if name.startswith("llama") or name in ("bert-iOS16-fp32", "bert-iOS18-fp16"))


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_programs_give_the_same_bits_fused_and_op_by_op(name):
    entry = manifest()[name]
    prog = Program.load(package_path(name), "jit")
    feeds = program_inputs(prog, reference(entry["reference"])["inputs"])
    fused, op_by_op, _ = observed_and_fused(prog, feeds)
    for key in fused:
        assert fused[key].tobytes() == op_by_op[key].tobytes(), key


def test_a_fixture_decoder_has_its_norms_fused():
    name = next(n for n in FIXTURES if n.startswith("llama") and "fp32" in n)
    prog = Program.load(package_path(name), "jit")
    assert any(kind == "rmsnorm" for kind, _ in prog.report.fused_chains)


def moves_graph(static=True, intermediate_output=False, reps=(2, 1, 1)):
    """x (3, 4, 5) -> transpose -> tile -> reshape -> relu (a chain of moves, then an op)."""
    dims = (3, 4, 5) if static else (None, 4, 5)
    tiled = (4 * reps[0], 3 * reps[1], 5 * reps[2]) if static else (None, None, 5)
    flat = (int(np.prod(tiled)),) if static else (None,)
    g = Graph(inputs=[Var("x", TensorType(dims, "fp32"))], outputs=["y"] + (["t"] if intermediate_output else []), source="moves test")
    g.ops += [
        OpNode("transpose", "tr", {"x": Ref("x"), "perm": Const(np.array([1, 0, 2], np.int32))}, [Var("t", TensorType(dims[1::-1] + (5,), "fp32"))]),
        OpNode("tile", "ti", {"x": Ref("t"), "reps": Const(np.array(reps, np.int32))}, [Var("u", TensorType(tiled, "fp32"))]),
        OpNode("reshape", "re", {"x": Ref("u"), "shape": Const(np.array([-1], np.int32))}, [Var("v", TensorType(flat, "fp32"))]),
        OpNode("relu", "act", {"x": Ref("v")}, [Var("y", TensorType(flat, "fp32"))]),
    ]  # fmt: skip
    return g


def test_a_chain_of_moves_with_a_tile_is_one_gather_with_the_same_bits():
    prog = Program(moves_graph(), "jit")
    assert prog.report.fused_chains == [("moves", ("tr", "ti", "re"))]
    x = np.random.default_rng(3).standard_normal((3, 4, 5)).astype(np.float32)
    fused, op_by_op, _ = observed_and_fused(prog, {"x": x})
    assert fused["y"].tobytes() == op_by_op["y"].tobytes()
    expected = np.maximum(np.tile(x.transpose(1, 0, 2), (2, 1, 1)).reshape(-1), 0)
    assert fused["y"].tobytes() == expected.tobytes()


def test_moves_are_not_fused_on_a_dynamic_shape():
    assert Program(moves_graph(static=False), "jit").report.fused_chains == []


@pytest.mark.parametrize("variant", [dict(intermediate_output=True), dict(reps=(1, 1, 1))], ids=["intermediate-is-an-output", "tile-of-ones"])
def test_moves_chains_stop_at_a_shared_value_and_stay_exact(variant):
    prog = Program(moves_graph(**variant), "jit")
    ops = ("ti", "re") if variant.get("intermediate_output") else ("tr", "ti", "re")
    assert prog.report.fused_chains == [("moves", ops)]
    x = np.arange(60, dtype=np.float32).reshape(3, 4, 5) - 30
    fused, op_by_op, _ = observed_and_fused(prog, {"x": x})
    for key in fused:
        assert fused[key].tobytes() == op_by_op[key].tobytes()


def rotary_graph(with_cos=False, minus=-1.0, sin_shape=(1, 1, 8), rot_is_output=False):
    """q (1, 4, 2, 8) -> q * [cos] + concat(-q[..., 4:], q[..., :4]) * sin -> relu."""
    t, half = TensorType((1, 4, 2, 8), "fp32"), TensorType((1, 4, 2, 4), "fp32")
    rng = np.random.default_rng(5)
    sin = rng.standard_normal(sin_shape).astype(np.float16)
    g = Graph(inputs=[Var("q", t)], outputs=["y"] + (["rot"] if rot_is_output else []), source="rotary test")
    ints = lambda *v: Const(np.array(v, np.int32))  # noqa: E731
    masks = Const(np.array([True, True, True, False]))
    g.ops += [
        OpNode("slice_by_index", "hi", {"x": Ref("q"), "begin": ints(0, 0, 0, 4), "end": ints(0, 0, 0, 0), "begin_mask": Const(np.array([True, True, True, False])),
                                        "end_mask": Const(np.array([True, True, True, True]))}, [Var("q_hi", half)]),
        OpNode("mul", "neg", {"x": Ref("q_hi"), "y": Const(np.array(minus, np.float16))}, [Var("q_neg", half)]),
        OpNode("slice_by_index", "lo", {"x": Ref("q"), "begin": ints(0, 0, 0, 0), "end": ints(0, 0, 0, 4), "begin_mask": Const(np.array([True, True, True, True])),
                                        "end_mask": masks}, [Var("q_lo", half)]),
        OpNode("concat", "cat", {"values": (Ref("q_neg"), Ref("q_lo")), "axis": Const(np.array(-1, np.int32)), "interleave": Const(np.array(False))}, [Var("rot", t)]),
        OpNode("mul", "msin", {"x": Ref("rot"), "y": Const(sin)}, [Var("rs", t)]),
    ]  # fmt: skip
    base = "q"
    if with_cos:
        g.ops.append(OpNode("mul", "mcos", {"x": Ref("q"), "y": Const(rng.standard_normal((1, 1, 2, 8)).astype(np.float16))}, [Var("qc", t)]))
        base = "qc"
    g.ops += [OpNode("add", "sum", {"x": Ref(base), "y": Ref("rs")}, [Var("r", t)]), OpNode("relu", "act", {"x": Ref("r")}, [Var("y", t)])]
    return g


@pytest.mark.parametrize("with_cos", [False, True])
def test_rotary_embedding_is_fused_with_the_same_bits(with_cos):
    prog = Program(rotary_graph(with_cos=with_cos), "jit")
    expected_ops = ("hi", "neg", "lo", "cat", "msin") + (("mcos",) if with_cos else ()) + ("sum",)
    assert prog.report.fused_chains == [("rotary", expected_ops)]
    q = np.random.default_rng(6).standard_normal((1, 4, 2, 8)).astype(np.float32)
    fused, op_by_op, _ = observed_and_fused(prog, {"q": q})
    assert fused["y"].tobytes() == op_by_op["y"].tobytes()


@pytest.mark.parametrize("variant", [dict(minus=-2.0), dict(rot_is_output=True)], ids=["not-a-negation", "intermediate-is-an-output"])
def test_rotary_lookalikes_are_not_fused(variant):
    assert Program(rotary_graph(**variant), "jit").report.fused_chains == []


def test_rotary_with_position_tables_runs_the_numpy_path_with_the_same_bits():
    prog = Program(rotary_graph(with_cos=True, sin_shape=(1, 1, 2, 8)), "jit")  # one row per position: not a vector
    assert [kind for kind, _ in prog.report.fused_chains] == ["rotary"]
    q = np.random.default_rng(7).standard_normal((1, 4, 2, 8)).astype(np.float32)
    fused, op_by_op, _ = observed_and_fused(prog, {"q": q})
    assert fused["y"].tobytes() == op_by_op["y"].tobytes()


def test_rotary_kernel_is_bit_identical_to_numpy_including_nan_and_inf():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    x[0, :3] = [np.nan, np.inf, -np.inf]
    sin, cos = rng.standard_normal(64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    for c in (None, cos):
        y = np.empty_like(x)
        c_ptr = ffi.NULL if c is None else ffi.from_buffer("float[]", c)
        assert lib.wp_rotary_f32(ffi.from_buffer("float[]", x), x.size, 5, 64, ffi.from_buffer("float[]", sin), 64, c_ptr, 64,
                                 ffi.from_buffer("float[]", y, require_writable=True), y.size) == 0  # fmt: skip
        assert lib.wp_rotary_f32(ffi.from_buffer("float[]", x), x.size, 5, 64, ffi.from_buffer("float[]", sin), 63, c_ptr, 64,
                                 ffi.from_buffer("float[]", y, require_writable=True), y.size) != 0  # fmt: skip
        rotated = np.concatenate([x[:, 32:] * np.float32(-1), x[:, :32]], axis=-1) * sin
        expected = (x if c is None else x * c) + rotated
        assert y.tobytes() == expected.tobytes()


def silu_gate_graph(u_shape=(3, 8)):
    t = TensorType((3, 8), "fp32")
    g = Graph(inputs=[Var("g", t), Var("u", TensorType(u_shape, "fp32"))], outputs=["y"], source="silu gate test")
    g.ops += [
        OpNode("silu", "act", {"x": Ref("g")}, [Var("s", t)]),
        OpNode("relu", "other", {"x": Ref("u")}, [Var("ur", TensorType(u_shape, "fp32"))]),
        OpNode("mul", "gate", {"x": Ref("s"), "y": Ref("ur")}, [Var("y", t)]),
    ]
    return g


@pytest.mark.parametrize("u_shape", [(3, 8), (1, 8)], ids=["same-shape", "broadcast-goes-op-by-op"])
def test_silu_gate_is_fused_with_the_same_bits(u_shape):
    prog = Program(silu_gate_graph(u_shape), "jit")
    assert prog.report.fused_chains == [("silu_gate", ("act", "gate"))]
    rng = np.random.default_rng(9)
    feeds = {"g": (rng.standard_normal((3, 8)) * 30).astype(np.float32), "u": rng.standard_normal(u_shape).astype(np.float32)}
    feeds["g"][0, :2] = [np.inf, -np.inf]
    fused, op_by_op, _ = observed_and_fused(prog, feeds)
    assert fused["y"].tobytes() == op_by_op["y"].tobytes()


def test_gather_kernel_copies_through_the_map_and_refuses_an_index_out_of_range():
    x = np.arange(10, dtype=np.float32)
    index = np.array([9, 0, 3, 3], np.int64)
    y = np.empty(4, np.float32)
    args = (ffi.from_buffer("float[]", x), 10)
    assert lib.wp_gather_f32(*args, ffi.from_buffer("long long[]", index), 4, ffi.from_buffer("float[]", y, require_writable=True)) == 0
    assert y.tolist() == [9, 0, 3, 3]
    bad = np.array([0, 10], np.int64)
    assert lib.wp_gather_f32(*args, ffi.from_buffer("long long[]", bad), 2, ffi.from_buffer("float[]", y, require_writable=True)) != 0


def test_float16_outputs_are_numpys_cast_bit_for_bit():
    from weightpack.coreml.runtime.executor import _output_array
    from weightpack.kernels import backend_c

    rng = np.random.default_rng(11)
    bits = np.concatenate([rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32),
                           np.array([0x7F800001, 0xFF800001, 0x7FC00000, 0x7F801FFF, 0x7F800000, 0x33000000, 0x33000001,
                                     0x387FFFFF, 0x477FEFFF, 0x477FF000, 0x47800000, 0x80000000], np.uint32)])  # fmt: skip
    x = bits.view(np.float32).reshape(4, -1)
    try:
        for level in backend_c.simd_levels():
            backend_c.set_simd(level)
            with np.errstate(over="ignore"):
                assert _output_array(x, np.dtype(np.float16)).view(np.uint16).tobytes() == x.astype(np.float16).view(np.uint16).tobytes(), level
    finally:
        backend_c.set_simd(None)
    view = x[:, ::2]  # not contiguous: numpy's own cast
    with np.errstate(over="ignore"):
        assert _output_array(view, np.dtype(np.float16)).tobytes() == view.astype(np.float16).tobytes()


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 128, 129, 300, 4097])
def test_softmax_passes_around_numpys_exp_are_bit_identical(n):
    from weightpack.coreml.runtime.ops_attention import _softmax_last_axis

    rng = np.random.default_rng(n)
    x = (rng.standard_normal((4, n)) * 20).astype(np.float32)
    x[1, 0] = np.nan
    x[2, :] = -np.inf  # a fully masked row: NaN, as in PyTorch
    x[3, -1] = np.inf
    with np.errstate(all="ignore"):
        expected = np.exp(x - np.max(x, axis=-1, keepdims=True))
        expected /= np.sum(expected, axis=-1, keepdims=True)
        got = _softmax_last_axis(x.copy())
        fortran = np.asfortranarray(x)  # not C-contiguous: numpy's calls (which sum such rows in another order)
        expected_f = np.exp(fortran - np.max(fortran, axis=-1, keepdims=True))
        expected_f /= np.sum(expected_f, axis=-1, keepdims=True)
        got_f = _softmax_last_axis(fortran.copy(order="F"))
    assert got.tobytes() == expected.tobytes()
    assert np.ascontiguousarray(got_f).tobytes() == np.ascontiguousarray(expected_f).tobytes()


# ---------------------------------------------------------------------- small attention


def attention_reference(q, k, v, mask, group):
    """softmax(q k^T / sqrt(E) + mask) v in float64, key/value heads repeated ``group`` times."""
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    k, v = np.repeat(k, group, axis=-3), np.repeat(v, group, axis=-3)
    scores = (q / np.sqrt(q.shape[-1])) @ np.swapaxes(k, -1, -2)
    if mask is not None:
        scores = np.where(mask, scores, -np.inf) if mask.dtype == np.bool_ else scores + mask
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (scores / scores.sum(axis=-1, keepdims=True)) @ v


MASKS = ["none", "float-2d", "float-full", "float-heads-1", "bool-causal", "float-odd-broadcast"]


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 3), st.sampled_from([1, 2, 4]), st.integers(1, 4), st.integers(1, 9), st.integers(1, 70), st.integers(1, 33),
       st.sampled_from(MASKS), st.integers(0, 2**31))  # fmt: skip
def test_small_attention_matches_float64_attention(kv_heads, group, lq, lk, e, ev, mask_kind, seed):
    from weightpack.coreml.runtime.ops_attention import small_attention

    rng = np.random.default_rng(seed)
    heads = kv_heads * group
    q = rng.standard_normal((2, heads, lq, e)).astype(np.float32)
    k = rng.standard_normal((2, kv_heads, lk, e)).astype(np.float32)
    v = rng.standard_normal((2, kv_heads, lk, ev)).astype(np.float32)
    mask = {
        "none": None,
        "float-2d": rng.standard_normal((lq, lk)).astype(np.float32),
        "float-full": rng.standard_normal((2, heads, lq, lk)).astype(np.float32),
        "float-heads-1": rng.standard_normal((1, 1, lq, lk)).astype(np.float32),
        "bool-causal": np.tril(np.ones((lq, lk), bool), k=max(lk - lq, 0)),
        "float-odd-broadcast": rng.standard_normal((2, 1, 1, lk)).astype(np.float32),
    }[mask_kind]
    before = [a.copy() for a in (q, k, v) + (() if mask is None else (mask,))]
    y = small_attention(q, k, v, mask, np.float32(1 / np.sqrt(e)), group)
    assert y is not None and y.dtype == np.float32 and y.shape == (2, heads, lq, ev)
    expected = attention_reference(q, k, v, mask, group)
    # float32 rounding of the scores (|q||k|) and of the weighted sum (max |v|)
    tol = 8e-6 * (np.abs(q).max() * np.abs(k).max() * e * np.abs(v).max() + np.abs(v).max())
    assert np.nanmax(np.abs(y - expected)) <= tol
    for a, b in zip(before, (q, k, v) + (() if mask is None else (mask,))):
        assert a.tobytes() == b.tobytes()


def test_small_attention_gives_nan_for_a_fully_masked_row_and_declines_what_it_does_not_cover():
    from weightpack.coreml.runtime.ops_attention import SMALL_ATTENTION, small_attention

    q, k, v = (np.ones((1, 2, 2, 4), np.float32) for _ in range(3))
    mask = np.array([[True, True], [False, False]])
    y = small_attention(q, k, v, mask, np.float32(0.5))
    assert np.isnan(y[:, :, 1]).all() and np.allclose(y[:, :, 0], 1.0)
    assert small_attention(q.astype(np.float64), k, v, None, 0.5) is None  # not float32
    assert small_attention(q, k[:, :1], v[:, :1], None, 0.5, group=1) is None  # heads do not match
    assert small_attention(q, k, v, mask.astype(np.int32), 0.5) is None  # a mask of another dtype
    big = int(np.sqrt(SMALL_ATTENTION)) + 1
    qb = np.ones((1, 1, big, 1), np.float32)
    assert small_attention(qb, qb, qb, None, 1.0) is None  # large: numpy's batched matmuls


def test_small_attention_kernel_refuses_inconsistent_sizes():
    q = np.ones(8, np.float32)
    out = np.empty(8, np.float32)
    buf = ffi.from_buffer
    args = (buf("float[]", q), 8, buf("float[]", q), 8, buf("float[]", q), 8)
    good = (2, 1, 1, 1, 4, 4, 1.0, 0, ffi.NULL, 0, 0, 0, 0, buf("float[]", out, require_writable=True), 8)
    assert lib.wp_sdpa_f32(*args, *good) == 0
    assert lib.wp_sdpa_f32(*args, 2, 3, *good[2:]) != 0  # heads not a multiple of the group
    assert lib.wp_sdpa_f32(*args, 4, *good[1:]) != 0  # q shorter than heads * lq * e
    mask = np.zeros(2, np.float32)  # too short for a stride of 1 over 2 heads x 2 keys
    assert lib.wp_sdpa_f32(*args, 2, 1, 1, 2, 2, 4, 1.0, 1, buf("float[]", mask), 2, 1, 0, 1, buf("float[]", out, require_writable=True), 8) != 0


def gqa_graph(heads=4, kv_heads=2, seq=3, embed=8, mask=None, repeat_axis=2, interleaved_v=False):
    """q (1, heads, seq, E); k (1, kv_heads, seq, E) and v (1, seq, kv_heads, E) -> transpose ->
    each head repeated heads / kv_heads times by expand_dims / tile / reshape (grouped-query
    attention as converters write it) -> scaled_dot_product_attention."""
    group = heads // kv_heads
    f = lambda *shape: TensorType(shape, "fp32")  # noqa: E731
    inputs = [Var("q", f(1, heads, seq, embed)), Var("k", f(1, kv_heads, seq, embed)), Var("v", f(1, seq, kv_heads, embed))]
    if mask == "input":
        inputs.append(Var("mask", TensorType((seq, seq), "bool")))
    g = Graph(inputs=inputs, outputs=["y"], source="gqa test")
    reps = [1, 1, 1, 1, 1]
    reps[repeat_axis] = group
    tiled = [1, kv_heads, 1, seq, embed]
    tiled[repeat_axis] *= group
    full = (1, heads, seq, embed) if repeat_axis == 2 else (1, kv_heads * group, seq, embed)
    g.ops.append(OpNode("transpose", "vt", {"x": Ref("v"), "perm": Const(np.array([0, 2, 1, 3], np.int32))}, [Var("v2", f(1, kv_heads, seq, embed))]))
    if interleaved_v:  # heads kv0, kv1, kv0, kv1: not groups of consecutive query heads
        g.ops.append(OpNode("tile", "vi", {"x": Ref("v2"), "reps": Const(np.array([1, group, 1, 1], np.int32))}, [Var("vh", f(*full))]))
    for name, source in (("k", "k"),) + (() if interleaved_v else (("v", "v2"),)):
        g.ops += [
            OpNode("expand_dims", f"{name}e", {"x": Ref(source), "axes": Const(np.array([2], np.int32))}, [Var(f"{name}5", f(1, kv_heads, 1, seq, embed))]),
            OpNode("tile", f"{name}t", {"x": Ref(f"{name}5"), "reps": Const(np.array(reps, np.int32))}, [Var(f"{name}r", f(*tiled))]),
            OpNode("reshape", f"{name}s", {"x": Ref(f"{name}r"), "shape": Const(np.array(full, np.int32))}, [Var(f"{name}h", f(*full))]),
        ]  # fmt: skip
    args = {"query": Ref("q"), "key": Ref("kh"), "value": Ref("vh")}
    if mask == "input":
        args["attn_mask"] = Ref("mask")
    elif mask == "const":
        args["attn_mask"] = Const(np.triu(np.full((seq, seq), -1e4, np.float32), 1))
    g.ops.append(OpNode("scaled_dot_product_attention", "sdpa", args, [Var("y", f(1, heads, seq, embed))]))
    return g


@pytest.mark.parametrize("mask", [None, "input", "const"])
@pytest.mark.parametrize("seq", [3, 200])  # a decoding-sized problem (one C call) and a large one (numpy)
def test_grouped_query_attention_is_one_step_with_the_same_bits(mask, seq):
    prog = Program(gqa_graph(seq=seq, mask=mask), "jit")
    assert [kind for kind, _ in prog.report.fused_chains] == ["attention"]
    rng = np.random.default_rng(seq)
    feeds = {"q": rng.standard_normal((1, 4, seq, 8)), "k": rng.standard_normal((1, 2, seq, 8)), "v": rng.standard_normal((1, seq, 2, 8))}
    feeds = {name: a.astype(np.float32) for name, a in feeds.items()}
    if mask == "input":
        feeds["mask"] = np.tril(np.ones((seq, seq), bool))
    copies = {name: a.copy() for name, a in feeds.items()}
    fused, op_by_op, _ = observed_and_fused(prog, feeds)
    assert fused["y"].tobytes() == op_by_op["y"].tobytes()
    m = {None: None, "input": feeds.get("mask"), "const": np.triu(np.full((seq, seq), -1e4, np.float32), 1)}[mask]
    expected = attention_reference(feeds["q"], feeds["k"], feeds["v"].transpose(0, 2, 1, 3), m, 2)
    assert np.abs(fused["y"] - expected).max() < 1e-5
    assert all(copies[name].tobytes() == feeds[name].tobytes() for name in feeds)


def test_key_value_repeats_that_are_not_head_groups_stay_moves_chains():
    prog = Program(gqa_graph(interleaved_v=True), "jit")
    assert sorted(kind for kind, _ in prog.report.fused_chains) == ["moves", "moves"]
    rng = np.random.default_rng(5)
    feeds = {"q": rng.standard_normal((1, 4, 3, 8)), "k": rng.standard_normal((1, 2, 3, 8)), "v": rng.standard_normal((1, 3, 2, 8))}
    feeds = {name: a.astype(np.float32) for name, a in feeds.items()}
    v = np.tile(feeds["v"].transpose(0, 2, 1, 3), (1, 2, 1, 1))
    expected = attention_reference(feeds["q"], np.repeat(feeds["k"], 2, axis=1), v, None, 1)
    assert np.abs(Program(gqa_graph(interleaved_v=True), "jit").predict(feeds)["y"] - expected).max() < 1e-5


def test_a_tile_of_whole_blocks_that_amounts_to_head_repeats_is_recognised():
    prog = Program(gqa_graph(repeat_axis=3), "jit")  # tile along the rows, reshaped into heads: the same map
    assert [kind for kind, _ in prog.report.fused_chains] == ["attention"]
