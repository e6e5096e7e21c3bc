"""The executor's ops, one by one, against coremltools' own value inference (its MIL definitions
are the specification), numpy and torch: results, defaults, dtype rules, load-time checks."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from program_builders import mil_model, mil_value, run_op
from weightpack.coreml import Program
from weightpack.errors import FormatError, WeightpackError

RNG = np.random.default_rng(0)


def randn(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def close(actual, expected, rtol=1e-6, atol=1e-6):
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------ elementwise

UNARY_DOMAINS = {
    "abs": (-3, 3), "acos": (-0.9, 0.9), "asin": (-0.9, 0.9), "atan": (-3, 3), "atanh": (-0.9, 0.9),
    "ceil": (-3, 3), "cos": (-3, 3), "cosh": (-3, 3), "erf": (-3, 3), "exp": (-3, 3), "exp2": (-3, 3),
    "floor": (-3, 3), "round": (-3, 3), "sign": (-3, 3), "sin": (-3, 3), "sinh": (-3, 3), "sqrt": (0.1, 4),
    "square": (-3, 3), "tan": (-1.2, 1.2), "tanh": (-3, 3), "relu": (-3, 3), "relu6": (-8, 8),
    "sigmoid": (-8, 8), "silu": (-8, 8), "softplus": (-30, 30), "softsign": (-3, 3),
    "inverse": (0.5, 3), "log": (0.1, 4), "rsqrt": (0.1, 4),
}  # fmt: skip


# the formulas of the definitions, in float64, for the ops coremltools has no value inference for
FORMULAS = {
    "silu": lambda x: x / (1 + np.exp(-x)), "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "softplus": lambda x: np.log1p(np.exp(x)), "softsign": lambda x: x / (1 + np.abs(x)),
    "relu6": lambda x: np.clip(x, 0, 6), "relu": lambda x: np.maximum(x, 0),
}  # fmt: skip


@pytest.mark.parametrize("op_type", sorted(UNARY_DOMAINS))
def test_unary_ops_match_coremltools(op_type):
    lo, hi = UNARY_DOMAINS[op_type]
    x = RNG.uniform(lo, hi, (3, 7)).astype(np.float32)
    x[0, :3] = [lo, 0.5 * (lo + hi), hi]
    expected = mil_value(op_type, x=x)
    if expected is None:
        expected = FORMULAS[op_type](x.astype(np.float64))
    (y,) = run_op(op_type, {"x": x}, outputs=[x])
    close(y, expected, rtol=2e-6, atol=1e-6)


def test_round_is_half_to_even_as_coremltools_defines():
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49], np.float32)
    (y,) = run_op("round", {"x": x}, outputs=[x])
    assert y.tolist() == [-2.0, -2.0, -0.0, 0.0, 2.0, 2.0, 0.0]


@pytest.mark.parametrize("op_type, default, at_zero", [("inverse", 1e-4, 1e4), ("log", 1e-45, math.log(np.float32(1e-45))), ("rsqrt", 1e-12, 1e6)])
def test_epsilon_defaults(op_type, default, at_zero):
    x = np.array([0.0, 1.0], np.float32)
    (y,) = run_op(op_type, {"x": x}, outputs=[x])
    close(y[:1], [at_zero], rtol=1e-5)
    (y,) = run_op(op_type, {"x": x}, {"epsilon": np.float32(1.0)}, outputs=[x])
    close(y, {"inverse": [1, 0.5], "log": [0, math.log(2)], "rsqrt": [1, 1 / math.sqrt(2)]}[op_type])


def test_a_default_is_taken_in_the_declared_dtype():
    """fp16's 1e-45 is 0: log(0) of an fp16 program is -inf, as Core ML computes it."""
    x = np.zeros(2, np.float16)
    (y,) = run_op("log", {"x": x}, outputs=[x])
    assert y.dtype == np.float16 and np.isneginf(y).all()


def test_int_unary_ops_keep_int32():
    x = np.array([-3, 0, 4], np.int32)
    for op_type, expected in (("abs", [3, 0, 4]), ("sign", [-1, 0, 1]), ("square", [9, 0, 16])):
        (y,) = run_op(op_type, {"x": x}, outputs=[x])
        assert y.dtype == np.int32 and y.tolist() == expected


def test_float_only_ops_refuse_integer_inputs_at_load():
    x = np.array([1, 2], np.int32)
    with pytest.raises(FormatError, match="allowed dtypes: fp16, fp32"):
        run_op("exp", {"x": x}, outputs=[x])


ACTIVATIONS = [
    ("leaky_relu", {"alpha": np.float32(0.1)}), ("elu", {"alpha": np.float32(0.7)}),
    ("thresholded_relu", {"alpha": np.float32(0.3)}), ("threshold", {"alpha": np.float32(0.3)}),
    ("clip", {"alpha": np.float32(-0.5), "beta": np.float32(0.7)}),
    ("sigmoid_hard", {"alpha": np.float32(0.2), "beta": np.float32(0.5)}),
    ("scaled_tanh", {"alpha": np.float32(1.5), "beta": np.float32(0.5)}),
    ("clamped_relu", {"alpha": np.float32(0.1), "beta": np.float32(1.5)}),
    ("linear_activation", {"alpha": np.float32(2.0), "beta": np.float32(-1.0)}),
]  # fmt: skip


@pytest.mark.parametrize("op_type, params", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activations_with_constants_match_coremltools(op_type, params):
    x = randn(2, 3, 5) * 2
    expected = mil_value(op_type, x=x, **params)
    (y,) = run_op(op_type, {"x": x}, params, outputs=[x])
    close(y, expected)


@pytest.mark.parametrize("mode", ["EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION"])
def test_gelu_modes(mode):
    x = randn(4, 9) * 3
    (y,) = run_op("gelu", {"x": x}, {"mode": mode}, outputs=[x])
    close(y, mil_value("gelu", x=x, mode=mode), rtol=1e-6, atol=2e-7)
    if mode != "SIGMOID_APPROXIMATION":
        approximate = "none" if mode == "EXACT" else "tanh"  # torch's float32 tail is off by ~2e-7 (ours: float64's)
        close(y, F.gelu(torch.from_numpy(x), approximate=approximate).numpy(), rtol=1e-6, atol=5e-7)


def test_gelu_default_mode_is_exact():
    x = randn(10)
    (y,) = run_op("gelu", {"x": x}, outputs=[x])
    close(y, F.gelu(torch.from_numpy(x)).numpy(), atol=2e-7)


@pytest.mark.parametrize("op_type", ["prelu", "softplus_parametric"])
def test_per_channel_activations(op_type):
    x = randn(2, 3, 4, 5)
    params = {"alpha": np.array([0.1, 0.2, 0.3], np.float32)}
    if op_type == "softplus_parametric":
        params["beta"] = np.array([1.0, 0.5, 2.0], np.float32)
    (y,) = run_op(op_type, {"x": x}, params, outputs=[x])
    close(y, mil_value(op_type, x=x, **params), rtol=1e-5)
    with pytest.raises(FormatError, match="one value per channel"):
        run_op(op_type, {"x": x}, {**params, "alpha": np.ones(4, np.float32)}, outputs=[x])


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax(axis):
    x = randn(3, 4, 5) * 10
    (y,) = run_op("softmax", {"x": x}, {"axis": np.int32(axis)}, outputs=[x])
    close(y, torch.softmax(torch.from_numpy(x), axis).numpy(), atol=1e-7)
    (y,) = run_op("softmax", {"x": x}, outputs=[x])  # default: the last axis
    close(y, torch.softmax(torch.from_numpy(x), -1).numpy(), atol=1e-7)


BINARY = ["add", "sub", "mul", "real_div", "floor_div", "mod", "pow", "maximum", "minimum"]
COMPARE = ["equal", "not_equal", "greater", "greater_equal", "less", "less_equal"]


@pytest.mark.parametrize("op_type", BINARY + COMPARE)
def test_binary_float_ops_broadcast_like_coremltools(op_type):
    x, y = RNG.uniform(0.5, 3, (2, 1, 4)).astype(np.float32), RNG.uniform(0.5, 3, (3, 1)).astype(np.float32)
    y[0, 0] = x[0, 0, 0]  # an equal pair
    expected = mil_value(op_type, x=x, y=y)
    (z,) = run_op(op_type, {"x": x, "y": y}, outputs=[np.asarray(expected)])
    assert z.dtype == (np.bool_ if op_type in COMPARE else np.float32)
    close(z, expected, rtol=2e-6)


@pytest.mark.parametrize(
    "op_type, expected",
    [("add", [9, -5, 2]), ("sub", [5, -9, -2]), ("mul", [14, -14, 0]), ("real_div", [3, -3, 0]),
     ("floor_div", [3, -4, 0]), ("mod", [1, 1, 0]), ("pow", [49, 49, 0]), ("maximum", [7, 2, 2]), ("minimum", [2, -7, 0])],
)  # fmt: skip
def test_int32_arithmetic_keeps_int32(op_type, expected):
    """int32 stays int32: real_div truncates toward zero, floor_div floors, mod takes y's sign."""
    x, y = np.array([7, -7, 0], np.int32), np.array([2, 2, 2], np.int32)
    (z,) = run_op(op_type, {"x": x, "y": y}, outputs=[x])
    assert z.dtype == np.int32 and z.tolist() == expected


@pytest.mark.parametrize("op_type, fn", [("logical_and", np.logical_and), ("logical_or", np.logical_or), ("logical_xor", np.logical_xor)])
def test_logical_ops(op_type, fn):
    x, y = np.array([[True, False]]), np.array([[True], [False]])
    (z,) = run_op(op_type, {"x": x, "y": y}, outputs=[fn(x, y)])
    assert z.tolist() == fn(x, y).tolist()
    (z,) = run_op("logical_not", {"x": x}, outputs=[x])
    assert z.tolist() == [[False, True]]
    with pytest.raises(FormatError, match="allowed dtypes: bool"):
        run_op(op_type, {"x": x.astype(np.int32), "y": y.astype(np.int32)}, outputs=[fn(x, y)])


def test_binary_op_with_a_constant_operand():
    x = randn(2, 3)
    (z,) = run_op("sub", {"y": x}, {"x": np.float32(1.0)}, outputs=[x])
    close(z, 1 - x)


def test_shapes_that_do_not_broadcast_are_refused_at_load():
    with pytest.raises(FormatError, match="do not broadcast"):
        run_op("add", {"x": randn(2, 3), "y": randn(4)}, outputs=[randn(2, 3)])


def test_a_wrong_declared_output_is_refused_at_load():
    with pytest.raises(FormatError, match="declared fp32\\[2, 4\\].*shape \\(2, 3\\)"):
        run_op("add", {"x": randn(2, 3), "y": randn(3)}, outputs=[randn(2, 4)])
    with pytest.raises(FormatError, match="produces bool"):
        run_op("less", {"x": randn(3), "y": randn(3)}, outputs=[randn(3)])


@given(
    hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=4),
    st.sampled_from(["add", "mul", "maximum", "greater"]),
)
def test_broadcasting_matches_numpy(shapes, op_type):
    (sx, sy), out = shapes
    x, y = randn(*sx), randn(*sy)
    fn = {"add": np.add, "mul": np.multiply, "maximum": np.maximum, "greater": np.greater}[op_type]
    expected = fn(x, y)
    (z,) = run_op(op_type, {"x": x, "y": y}, outputs=[np.asarray(expected)])
    assert z.shape == out
    np.testing.assert_array_equal(z, expected)


def test_select_broadcasts_and_keeps_the_dtype():
    cond = np.array([[True], [False]])
    a, b = np.arange(6, dtype=np.int32).reshape(2, 3), np.int32(-1)
    (z,) = run_op("select", {"cond": cond, "a": a}, {"b": np.array(b)}, outputs=[a])
    assert z.dtype == np.int32 and z.tolist() == [[0, 1, 2], [-1, -1, -1]]


@pytest.mark.parametrize(
    "x, dtype, expected",
    [
        (np.array([-2.7, 2.7, 0.0], np.float32), "int32", [-2, 2, 0]),
        (np.array([-2.7, 0.0, 3.0], np.float32), "bool", [True, False, True]),
        (np.array([1, 0, 5], np.int32), "fp32", [1.0, 0.0, 5.0]),
        (np.array([True, False]), "int32", [1, 0]),
        (np.array([300, -1], np.int32), "uint8", [44, 255]),
    ],
)
def test_cast(x, dtype, expected):
    np_dtype = {"int32": np.int32, "bool": np.bool_, "fp32": np.float32, "uint8": np.uint8}[dtype]
    (y,) = run_op("cast", {"x": x}, {"dtype": dtype}, outputs=[np.zeros(x.shape, np_dtype)])
    assert y.dtype == np_dtype and y.tolist() == expected


def test_cast_to_fp16_does_not_round_in_fp32_compute_mode():
    x = np.array([1 + 2**-20], np.float32)
    (y,) = run_op("cast", {"x": x}, {"dtype": "fp16"}, outputs=[np.zeros(1, np.float16)])
    assert y.dtype == np.float16  # the program output is fp16: rounded only there
    graph_out = run_op("add", {"x": x}, {"y": np.float32(0)}, outputs=[x])[0]
    assert graph_out[0] == np.float32(1 + 2**-20)


def test_cast_to_small_integers_needs_ios17():
    x = np.array([1, 2], np.int32)
    with pytest.raises(FormatError, match="allowed: int32, fp16, fp32, bool"):
        run_op("cast", {"x": x}, {"dtype": "uint8"}, outputs=[x.astype(np.uint8)], opset=16)


def test_clip_needs_alpha_below_beta_from_ios17():
    x = randn(3)
    with pytest.raises(FormatError, match="alpha 1.0 must be smaller than beta 0.0"):
        run_op("clip", {"x": x}, {"alpha": np.float32(1), "beta": np.float32(0)}, outputs=[x], opset=17)


# ------------------------------------------------------------------------------ shape ops


@pytest.mark.parametrize(
    "shape, target, opset, expected",
    [
        ((2, 3, 4), [4, -1], 18, (4, 6)),
        ((2, 3, 4), [0, 0, -1], 15, (2, 3, 4)),
        ((2, 3, 4), [0, -1], 15, None),  # iOS15: 0 needs len(shape) == rank
        ((2, 50), [1, 0, -1, 0], 17, (1, 1, 2, 50)),  # iOS17: 0 matches from the right, 1 beyond x
        ((6,), [-1, -1], 18, None),
    ],
)
def test_reshape(shape, target, opset, expected):
    x = randn(*shape)
    if expected is None:
        with pytest.raises(FormatError):
            run_op("reshape", {"x": x}, {"shape": np.array(target, np.int32)}, outputs=[x], opset=opset)
        return
    (y,) = run_op("reshape", {"x": x}, {"shape": np.array(target, np.int32)}, outputs=[np.zeros(expected, np.float32)], opset=opset)
    assert y.shape == expected and np.array_equal(y.reshape(-1), x.reshape(-1))


def test_reshape_by_a_computed_shape():
    x = randn(2, 6)
    (y,) = run_op("reshape", {"x": x, "shape": np.array([3, 4], np.int32)}, outputs=[np.zeros((3, 4), np.float32)])
    assert np.array_equal(y, x.reshape(3, 4))


@pytest.mark.parametrize(
    "op_type, params, shape",
    [
        ("transpose", {"perm": np.array([2, 0, 1], np.int32)}, (2, 3, 4)),
        ("transpose", {"perm": np.array([-1, 0, 1], np.int32)}, (2, 3, 4)),
        ("squeeze", {"axes": np.array([0, 2], np.int32)}, (1, 3, 1, 4)),
        ("squeeze", {"axes": np.array([1], np.int32)}, (1, 3, 4)),  # a non-1 axis is left (PyTorch's rule)
        ("squeeze", {}, (1, 3, 1, 4)),
        ("expand_dims", {"axes": np.array([0, -1], np.int32)}, (3, 4)),
        ("expand_dims", {"axes": np.array([1, 2], np.int32)}, (3, 4)),
        ("reverse", {"axes": np.array([0, -1], np.int32)}, (2, 3, 4)),
        ("reverse", {}, (2, 3)),
        ("tile", {"reps": np.array([2, 1, 3], np.int32)}, (2, 3, 4)),
        ("flatten2d", {"axis": np.int32(2)}, (2, 3, 4, 5)),
        ("flatten2d", {"axis": np.int32(-1)}, (2, 3, 4)),
        ("flatten2d", {}, (2, 3, 4)),
        ("band_part", {"lower": np.int32(1), "upper": np.int32(0)}, (2, 4, 5)),
        ("band_part", {"lower": np.int32(0)}, (4, 4)),
        ("band_part", {}, (3, 3)),
        ("cumsum", {"axis": np.int32(1), "exclusive": True, "reverse": True}, (2, 4)),
        ("cumsum", {"axis": np.int32(-1), "exclusive": True}, (2, 4)),
        ("cumsum", {}, (3, 2)),
        ("sliding_windows", {"axis": np.int32(1), "size": np.int32(3), "stride": np.int32(2)}, (2, 7, 3)),
    ],
)
def test_shape_ops_match_coremltools(op_type, params, shape):
    x = randn(*shape)
    expected = NUMPY_SHAPE_OPS.get((op_type, tuple(sorted(params)), shape), lambda x: None)(x)
    if expected is None:
        expected = mil_value(op_type, x=x, **params)
    (y,) = run_op(op_type, {"x": x}, params, outputs=[expected])
    np.testing.assert_allclose(y, expected, rtol=1e-6)


def _cumsum_reverse_exclusive(x):
    total = np.cumsum(x[:, ::-1], axis=1)[:, ::-1]
    return total - x


NUMPY_SHAPE_OPS = {  # cases coremltools' value inference does not compute (or computes wrongly)
    ("squeeze", ("axes",), (1, 3, 4)): lambda x: x,
    ("cumsum", ("axis", "exclusive", "reverse"), (2, 4)): _cumsum_reverse_exclusive,
    ("cumsum", ("axis", "exclusive"), (2, 4)): lambda x: np.cumsum(x, axis=-1) - x,
    ("sliding_windows", ("axis", "size", "stride"), (2, 7, 3)): lambda x: np.stack([x[:, i : i + 3] for i in (0, 2, 4)], axis=1),
}


SLICES = [
    dict(begin=[1, 0, 0], end=[2, 3, 4]),
    dict(begin=[0, 2, 1], end=[2, 0, 4], stride=[1, -1, 2]),
    dict(begin=[-1, 0, -3], end=[0, -1, 0], end_mask=[True, False, True]),
    dict(begin=[1, 1, 2], end=[0, 0, 0], begin_mask=[False, True, False], end_mask=[True, True, True], squeeze_mask=[True, False, False]),
    dict(begin=[0, -1, 0], end=[2, 0, 4], squeeze_mask=[False, True, False]),
]


@pytest.mark.parametrize("params", SLICES)
def test_slice_by_index(params):
    x = randn(2, 3, 4)
    consts = {k: np.array(v, np.int32 if k in ("begin", "end", "stride") else np.bool_) for k, v in params.items()}
    expected = mil_value("slice_by_index", x=x, **consts)
    (y,) = run_op("slice_by_index", {"x": x}, consts, outputs=[expected])
    np.testing.assert_array_equal(y, expected)
    dynamic = {k: v for k, v in consts.items() if k in ("begin", "end")}  # runtime begin / end
    static = {k: v for k, v in consts.items() if k not in dynamic}
    (y,) = run_op("slice_by_index", {"x": x, **dynamic}, static, outputs=[expected])
    np.testing.assert_array_equal(y, expected)


def test_slice_by_size_and_slice_update():
    x = randn(3, 5)
    consts = {"begin": np.array([1, 2], np.int32), "size": np.array([-1, 2], np.int32)}
    (y,) = run_op("slice_by_size", {"x": x}, consts, outputs=[x[1:, 2:4]])
    np.testing.assert_array_equal(y, x[1:, 2:4])
    update = randn(2, 2)
    (z,) = run_op("slice_update", {"x": x, "update": update}, {"begin": np.array([1, 2], np.int32), "end": np.array([3, 4], np.int32)}, outputs=[x])
    expected = x.copy()
    expected[1:3, 2:4] = update
    np.testing.assert_array_equal(z, expected)
    assert not np.array_equal(x[1:3, 2:4], update)  # the input array is left as it was


def test_concat_interleave_follows_the_documented_example():
    """coremltools' value inference ignores ``interleave``; its documentation defines it."""
    in1, in2 = np.array([[1, 2], [3, 4], [5, 6]], np.int32), np.array([[7, 8], [9, 10], [11, 12]], np.int32)
    (y,) = run_op("concat", {"values": [in1, in2]}, {"axis": np.int32(0), "interleave": True}, outputs=[np.zeros((6, 2), np.int32)])
    assert y.tolist() == [[1, 2], [7, 8], [3, 4], [9, 10], [5, 6], [11, 12]]


@pytest.mark.parametrize("interleave", [False])
def test_concat_and_stack(interleave):
    a, b = randn(2, 3), randn(2, 3)
    expected = mil_value("concat", values=(a, b), axis=np.int32(1), interleave=interleave)
    (y,) = run_op("concat", {"values": [a, b]}, {"axis": np.int32(1), "interleave": interleave}, outputs=[expected])
    np.testing.assert_array_equal(y, expected)
    (y,) = run_op("stack", {"values": [a, b]}, {"axis": np.int32(-1)}, outputs=[np.stack([a, b], -1)])
    np.testing.assert_array_equal(y, np.stack([a, b], -1))


def test_concat_of_a_constant_and_a_variable():
    a = randn(2, 3)
    const = np.ones((2, 1), np.float32)
    (y,) = run_op("concat", {"values": [a]}, {"axis": np.int32(1)}, outputs=[np.zeros((2, 3), np.float32)])
    np.testing.assert_array_equal(y, a)
    del const


def test_concat_refuses_mismatched_shapes():
    with pytest.raises(FormatError, match="differ outside axis"):
        run_op("concat", {"values": [randn(2, 3), randn(3, 3)]}, {"axis": np.int32(1)}, outputs=[randn(2, 6)])


@pytest.mark.parametrize("params", [{"num_splits": np.int32(3)}, {"split_sizes": np.array([1, 4, 1], np.int32)}])
def test_split(params):
    x = randn(2, 6)
    expected = mil_value("split", x=x, axis=np.int32(1), **params)
    outs = run_op("split", {"x": x}, {"axis": np.int32(1), **params}, outputs=expected)
    for y, e in zip(outs, expected):
        np.testing.assert_array_equal(y, e)
    with pytest.raises(FormatError, match="num_splits is 3 but the op has 2 outputs"):
        run_op("split", {"x": x}, {"axis": np.int32(1), "num_splits": np.int32(3)}, outputs=expected[:2])


def test_shape_fill_range_and_one_hot():
    x = randn(2, 3, 4)
    (s,) = run_op("shape", {"x": x}, outputs=[np.zeros(3, np.int32)])
    assert s.tolist() == [2, 3, 4] and s.dtype == np.int32
    (f,) = run_op("fill", {"shape": s}, {"value": np.float32(1.5)}, outputs=[np.zeros((2, 3, 4), np.float32)])
    assert f.shape == (2, 3, 4) and (f == 1.5).all()
    (f,) = run_op("fill", consts={"shape": np.array([2, 2], np.int32)}, outputs=[np.zeros((2, 2), np.float32)])
    assert (f == 0).all()  # default value 0.0
    (f,) = run_op("fill_like", {"ref_tensor": x}, {"value": np.int32(7)}, outputs=[np.zeros(x.shape, np.int32)])
    assert (f == 7).all() and f.dtype == np.int32
    (r,) = run_op("range_1d", consts={"start": np.float32(0.5), "end": np.float32(3), "step": np.float32(0.75)}, outputs=[np.zeros(4, np.float32)])
    close(r, [0.5, 1.25, 2.0, 2.75])
    (r,) = run_op("range_1d", {"end": np.int32(5)}, {"start": np.int32(0), "step": np.int32(2)}, outputs=[np.zeros(3, np.int32)])
    assert r.tolist() == [0, 2, 4]
    indices = np.array([[0, 2], [1, 3]], np.int32)
    consts = {"one_hot_vector_size": np.int32(4), "axis": np.int32(1), "on_value": np.float32(2), "off_value": np.float32(-1)}
    expected = np.where(np.arange(4).reshape(1, 4, 1) == indices[:, None, :], 2.0, -1.0).astype(np.float32)
    (h,) = run_op("one_hot", {"indices": indices}, consts, outputs=[expected])
    np.testing.assert_array_equal(h, expected)
    (h,) = run_op("one_hot", {"indices": indices}, {"one_hot_vector_size": np.int32(4)}, outputs=[np.zeros((2, 2, 4), np.int32)])
    assert h.dtype == np.int32 and h.sum() == 4  # defaults: last axis, int32 1 / 0


def test_range_with_a_zero_step_is_refused():
    with pytest.raises(FormatError, match="step is 0"):
        run_op("range_1d", consts={"start": np.int32(0), "end": np.int32(5), "step": np.int32(0)}, outputs=[np.zeros(1, np.int32)])
    with pytest.raises(WeightpackError, match="step is 0"):
        run_op("range_1d", {"step": np.int32(0)}, {"start": np.int32(0), "end": np.int32(5)}, outputs=[np.zeros(1, np.int32)])


@pytest.mark.parametrize("axis, batch_dims", [(0, 0), (1, 0), (-1, 0), (1, 1)])
def test_gather(axis, batch_dims):
    x = randn(2, 5, 3) if axis != 0 else randn(5, 2, 3)
    indices = np.array([[4, -1, 0], [1, 2, -5]], np.int32) if batch_dims else np.array([[4, -1], [0, 2]], np.int32)
    if axis in (-1,):
        indices = np.clip(indices, -3, 2)
    expected = mil_value("gather", opset="iOS16", x=x, indices=indices, axis=np.int32(axis), batch_dims=np.int32(batch_dims))
    (y,) = run_op("gather", {"x": x, "indices": indices}, {"axis": np.int32(axis), "batch_dims": np.int32(batch_dims)}, outputs=[expected])
    np.testing.assert_array_equal(y, expected)


def test_gather_out_of_range_is_a_clear_error():
    with pytest.raises(WeightpackError, match="index 5 is outside \\[-5, 5\\)"):
        run_op("gather", {"x": randn(5, 2), "indices": np.array([5], np.int32)}, outputs=[randn(1, 2)])


def test_gather_along_axis_and_gather_nd():
    x = randn(3, 4)
    idx = np.array([[0, 3], [1, 1], [2, -1]], np.int32)
    (y,) = run_op("gather_along_axis", {"x": x, "indices": idx}, {"axis": np.int32(1)}, outputs=[idx.astype(np.float32)])
    np.testing.assert_array_equal(y, np.take_along_axis(x, idx % 4, axis=1))
    nd = np.array([[0, 1], [2, 3]], np.int32)
    (y,) = run_op("gather_nd", {"x": x, "indices": nd}, outputs=[np.zeros(2, np.float32)])
    np.testing.assert_array_equal(y, [x[0, 1], x[2, 3]])
    x3 = randn(2, 3, 4)
    nd = np.array([[[1], [0]], [[2], [2]]], np.int32)
    expected = np.stack([x3[0, [1, 0]], x3[1, [2, 2]]])
    (y,) = run_op("gather_nd", {"x": x3, "indices": nd}, {"batch_dims": np.int32(1)}, outputs=[expected])
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("mode", ["update", "add", "sub", "mul", "div", "max", "min"])
def test_scatter_modes(mode):
    data = RNG.uniform(1, 2, (3, 4)).astype(np.float32)
    updates = RNG.uniform(1, 2, (2, 4)).astype(np.float32)
    indices = np.array([2, 0], np.int32)
    fn = {"update": lambda a, b: b, "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "max": np.maximum, "min": np.minimum}[mode]
    expected = data.copy()
    expected[indices] = fn(data[indices], updates)
    (y,) = run_op("scatter", {"data": data, "indices": indices, "updates": updates}, {"mode": mode}, outputs=[data])
    close(y, expected)
    ax = np.array([[1, 0, 2, 1]], np.int32)
    upd = updates[:1]
    expected = data.copy()
    for j in range(4):
        expected[ax[0, j], j] = fn(data[ax[0, j], j], upd[0, j])
    (y,) = run_op("scatter_along_axis", {"data": data, "indices": ax, "updates": upd}, {"mode": mode, "axis": np.int32(0)}, outputs=[data])
    close(y, expected)
    nd = np.array([[0, 1], [2, 3]], np.int32)
    vals = np.array([5, 6], np.float32)
    expected = data.copy()
    expected[0, 1], expected[2, 3] = fn(data[0, 1], 5), fn(data[2, 3], 6)
    (y,) = run_op("scatter_nd", {"data": data, "indices": nd, "updates": vals}, {"mode": mode}, outputs=[data])
    close(y, expected)


def test_scatter_add_accumulates_repeated_indices_and_defaults_to_add():
    data = np.zeros((3, 2), np.float32)
    (y,) = run_op("scatter", {"data": data, "indices": np.array([1, 1], np.int32), "updates": np.ones((2, 2), np.float32)}, outputs=[data])
    assert y.tolist() == [[0, 0], [2, 2], [0, 0]]


def test_reverse_sequence_non_zero_and_reshape_like():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    lengths = np.array([2, 4, 0], np.int32)
    expected = np.stack([np.r_[x[0, 1::-1], x[0, 2:]], x[1, ::-1], x[2]])
    (y,) = run_op("reverse_sequence", {"x": x, "lengths": lengths}, {"seq_axis": np.int32(1), "batch_axis": np.int32(0)}, outputs=[x])
    np.testing.assert_array_equal(y, expected)
    (y,) = run_op("non_zero", {"x": np.array([[0, 1], [2, 0]], np.float32)}, outputs=[np.zeros((2, 2), np.int32)])
    assert y.tolist() == [[0, 1], [1, 0]]
    ref = randn(2, 3)
    (y,) = run_op("reshape_like", {"x": randn(6), "ref_tensors": [ref]}, {"begins": (np.int32(0),), "ends": (np.int32(2),), "end_masks": (False,)}, outputs=[ref], opset=16)
    assert y.shape == (2, 3)


# ------------------------------------------------------------------------------ products


@pytest.mark.parametrize("x_shape", [(6,), (4, 6), (2, 3, 6)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear(x_shape, with_bias):
    x, w, bias = randn(*x_shape), randn(5, 6), randn(5)
    expected = x @ w.T + (bias if with_bias else 0)
    consts = {"weight": w, **({"bias": bias} if with_bias else {})}
    (y,) = run_op("linear", {"x": x}, consts, outputs=[expected])
    close(y, expected, rtol=1e-5)


def test_linear_refuses_a_weight_of_the_wrong_width():
    with pytest.raises(FormatError, match="has 6 features; the weight fp32\\[5, 4\\] takes 4"):
        run_op("linear", {"x": randn(2, 6)}, {"weight": randn(5, 4)}, outputs=[randn(2, 5)])


@pytest.mark.parametrize(
    "xs, ys, tx, ty",
    [((4,), (4,), False, False), ((4,), (2, 4, 3), False, False), ((2, 3, 4), (4,), False, False),
     ((5, 1, 3, 4), (2, 4, 6), False, False), ((4, 3), (5, 4), True, True), ((2, 3, 4), (2, 5, 4), False, True)],
)  # fmt: skip
def test_matmul_broadcasting_and_transposes(xs, ys, tx, ty):
    x, y = randn(*xs), randn(*ys)
    expected = np.matmul(np.swapaxes(x, -1, -2) if tx and x.ndim > 1 else x, np.swapaxes(y, -1, -2) if ty and y.ndim > 1 else y)
    (z,) = run_op("matmul", {"x": x, "y": y}, {"transpose_x": tx, "transpose_y": ty}, outputs=[np.asarray(expected)])
    close(z, expected, rtol=1e-5)


@pytest.mark.parametrize("side, transpose", [("y", True), ("y", False), ("x", False), ("x", True)])
def test_matmul_with_a_constant_operand(side, transpose):
    var, const = (randn(2, 3, 4), randn(4, 4)) if side == "y" else (randn(2, 4, 3), randn(5, 4) if not transpose else randn(4, 5))
    args = {"x": var, "y": const} if side == "y" else {"x": const, "y": var}
    flags = {"transpose_x": side == "x" and transpose, "transpose_y": side == "y" and transpose}
    x, y = args["x"], args["y"]
    expected = np.matmul(np.swapaxes(x, -1, -2) if flags["transpose_x"] else x, np.swapaxes(y, -1, -2) if flags["transpose_y"] else y)
    (z,) = run_op("matmul", {side_var: args[side_var] for side_var in ("x", "y") if side_var != side}, {side: const, **flags}, outputs=[expected])
    close(z, expected, rtol=1e-5)


def test_einsum():
    a, b = randn(2, 3, 4, 5), randn(2, 5, 4, 6)
    expected = np.einsum("nchw,nwhu->nchu", a, b)
    (z,) = run_op("einsum", {"values": [a, b]}, {"equation": "nchw,nwhu->nchu"}, outputs=[expected])
    close(z, expected, rtol=1e-5)
    with pytest.raises(FormatError, match="must be explicit"):
        run_op("einsum", {"values": [a, b]}, {"equation": "nchw,nwhu"}, outputs=[expected])


# ------------------------------------------------------------------------------ conv, norms, pools


def torch_pad_same(x, kernel, strides, dilations, lower=False):
    pads = []
    for n, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
        total = max(0, (math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n)
        small = total // 2
        pads.append((total - small, small) if lower else (small, total - small))
    flat = [p for pair in reversed(pads) for p in pair]
    return F.pad(x, flat)


@pytest.mark.parametrize(
    "spatial, groups, strides, dilations, pad_type",
    [((9,), 1, (2,), (1,), "valid"), ((8, 7), 1, (1, 1), (1, 1), "custom"), ((8, 7), 2, (2, 1), (2, 1), "same"),
     ((9, 9), 4, (2, 2), (1, 1), "same_lower"), ((5, 6, 7), 1, (1, 2, 1), (1, 1, 2), "valid"), ((7, 7), 4, (1, 1), (1, 1), "custom")],
)  # fmt: skip
def test_conv_against_torch(spatial, groups, strides, dilations, pad_type):
    c_in, c_out = 4, 8 if groups != 4 else 4
    kernel = (3,) * len(spatial)
    x, w, bias = randn(2, c_in, *spatial), randn(c_out, c_in // groups, *kernel), randn(c_out)
    pad = np.array([1, 2] * len(spatial), np.int32)
    consts = {"weight": w, "bias": bias, "strides": np.array(strides, np.int32), "dilations": np.array(dilations, np.int32),
              "groups": np.int32(groups), "pad_type": pad_type, "pad": pad}  # fmt: skip
    tx = torch.from_numpy(x)
    if pad_type == "custom":
        tx = F.pad(tx, [p for i in reversed(range(len(spatial))) for p in (pad[2 * i], pad[2 * i + 1])])
    elif pad_type.startswith("same"):
        tx = torch_pad_same(tx, kernel, strides, dilations, lower=pad_type == "same_lower")
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(spatial)]
    expected = conv(tx, torch.from_numpy(w), torch.from_numpy(bias), stride=strides, dilation=dilations, groups=groups).numpy()
    for policy in ("load", "jit"):
        (y,) = run_op("conv", {"x": x}, consts, outputs=[expected], policy=policy)
        close(y, expected, rtol=1e-5, atol=1e-5)


def test_conv_defaults_and_checks():
    x, w = randn(1, 3, 6, 6), randn(2, 3, 1, 1)
    (y,) = run_op("conv", {"x": x}, {"weight": w}, outputs=[np.zeros((1, 2, 6, 6), np.float32)])
    close(y, np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x), rtol=1e-5, atol=1e-6)
    with pytest.raises(FormatError, match="does not fit the weight"):
        run_op("conv", {"x": x}, {"weight": randn(2, 2, 1, 1)}, outputs=[np.zeros((1, 2, 6, 6), np.float32)])


@pytest.mark.parametrize(
    "spatial, groups, strides, dilations, pad, output_padding",
    [((5, 4), 1, (2, 2), (1, 1), (1, 1), (1, 0)), ((6,), 2, (3,), (1,), (0,), (0,)), ((4, 4), 1, (1, 2), (2, 1), (2, 0), (0, 1))],
)  # fmt: skip
def test_conv_transpose_against_torch(spatial, groups, strides, dilations, pad, output_padding):
    x, w, bias = randn(2, 4, *spatial), randn(4, 6 // groups, *(3,) * len(spatial)), randn(6)
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d}[len(spatial)]
    expected = fn(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias), stride=strides, padding=pad,
                  output_padding=output_padding, groups=groups, dilation=dilations).numpy()  # fmt: skip
    consts = {"weight": w, "bias": bias, "strides": np.array(strides, np.int32), "dilations": np.array(dilations, np.int32),
              "groups": np.int32(groups), "pad_type": "custom", "pad": np.array([p for q in pad for p in (q, q)], np.int32),
              "output_shape": np.array(expected.shape, np.int32)}  # fmt: skip
    for policy in ("load", "jit"):
        (y,) = run_op("conv_transpose", {"x": x}, consts, outputs=[expected], policy=policy)
        close(y, expected, rtol=1e-5, atol=1e-5)


def test_conv_transpose_same_and_valid_sizes():
    x, w = randn(1, 2, 5, 5), randn(2, 3, 3, 3)
    for pad_type, size in (("same", 10), ("valid", 11)):
        (y,) = run_op("conv_transpose", {"x": x}, {"weight": w, "strides": np.array([2, 2], np.int32), "pad_type": pad_type}, outputs=[np.zeros((1, 3, size, size), np.float32)])
        full = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), stride=2).numpy()
        close(y, full[:, :, :size, :size] if pad_type == "valid" else full[:, :, 0:10, 0:10], rtol=1e-5, atol=1e-5)


def test_batch_and_instance_norm():
    x = randn(2, 3, 4, 5)
    mean, var, gamma, beta = randn(3), RNG.uniform(0.5, 2, 3).astype(np.float32), randn(3), randn(3)
    expected = F.batch_norm(*(torch.from_numpy(a) for a in (x, mean, var, gamma, beta)), eps=1e-3).numpy()
    (y,) = run_op("batch_norm", {"x": x}, {"mean": mean, "variance": var, "gamma": gamma, "beta": beta, "epsilon": np.float32(1e-3)}, outputs=[x])
    close(y, expected, rtol=1e-5, atol=1e-5)
    (y,) = run_op("batch_norm", {"x": x}, {"mean": mean, "variance": var}, outputs=[x])  # defaults: gamma 1, beta 0, eps 1e-5
    close(y, (x - mean.reshape(1, 3, 1, 1)) / np.sqrt(var.reshape(1, 3, 1, 1) + 1e-5), rtol=1e-5, atol=1e-5)
    expected = F.instance_norm(torch.from_numpy(x), weight=torch.from_numpy(gamma), bias=torch.from_numpy(beta)).numpy()
    (y,) = run_op("instance_norm", {"x": x}, {"gamma": gamma, "beta": beta}, outputs=[x])
    close(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axes", [None, [-1], [1, 2], [0, 2]])
def test_layer_norm(axes):
    x = randn(2, 3, 4) * 3 + 1
    shape = (2, 3, 4) if axes is None else tuple(x.shape[a] for a in axes)
    gamma, beta = randn(*shape), randn(*shape)
    consts = {"gamma": gamma, "beta": beta, "epsilon": np.float32(1e-4)}
    if axes is not None:
        consts["axes"] = np.array(axes, np.int32)
    norm_axes = tuple(range(3)) if axes is None else tuple(a % 3 for a in axes)
    full = tuple(x.shape[i] if i in norm_axes else 1 for i in range(3))
    mean = x.astype(np.float64).mean(norm_axes, keepdims=True)
    var = ((x - mean) ** 2).mean(norm_axes, keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-4) * gamma.reshape(full) + beta.reshape(full)
    (y,) = run_op("layer_norm", {"x": x}, consts, outputs=[x])
    close(y, expected, rtol=1e-5, atol=1e-5)
    if axes == [-1]:
        close(y, F.layer_norm(torch.from_numpy(x), (4,), torch.from_numpy(gamma), torch.from_numpy(beta), 1e-4).numpy(), rtol=1e-5, atol=1e-5)


def test_l2_norm_and_local_response_norm():
    x = randn(2, 3, 4, 5)
    (y,) = run_op("l2_norm", {"x": x}, outputs=[x])
    close(y, mil_value("l2_norm", x=x), rtol=1e-5)
    (y,) = run_op("local_response_norm", {"x": x}, {"size": np.int32(3), "alpha": np.float32(0.1), "beta": np.float32(0.6), "k": np.float32(2)}, outputs=[x])
    close(y, F.local_response_norm(torch.from_numpy(x), 3, alpha=0.1, beta=0.6, k=2).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("exclude", [False, True])
def test_pools_against_torch(ceil_mode, exclude):
    x = randn(2, 3, 9, 8)
    consts = {"kernel_sizes": np.array([3, 2], np.int32), "strides": np.array([2, 2], np.int32), "pad_type": "custom",
              "pad": np.array([1, 1, 1, 1], np.int32), "ceil_mode": ceil_mode}  # fmt: skip
    expected = F.avg_pool2d(torch.from_numpy(x), (3, 2), 2, 1, ceil_mode=ceil_mode, count_include_pad=not exclude).numpy()
    (y,) = run_op("avg_pool", {"x": x}, {**consts, "exclude_padding_from_average": exclude}, outputs=[expected])
    close(y, expected, rtol=1e-5, atol=1e-6)
    expected = F.max_pool2d(torch.from_numpy(x), (3, 2), 2, 1, ceil_mode=ceil_mode).numpy()
    (y,) = run_op("max_pool", {"x": x}, consts, outputs=[expected])
    close(y, expected)


def test_pool_same_padding_and_l2_pool():
    x = randn(1, 2, 7, 6)
    consts = {"kernel_sizes": np.array([3, 3], np.int32), "strides": np.array([2, 2], np.int32), "pad_type": "same"}
    padded = torch_pad_same(torch.from_numpy(x), (3, 3), (2, 2), (1, 1))
    (y,) = run_op("max_pool", {"x": x}, consts, outputs=[np.zeros((1, 2, 4, 3), np.float32)])
    close(y, F.max_pool2d(torch_pad_same(torch.from_numpy(x) + 100, (3, 3), (2, 2), (1, 1)), 3, 2).numpy() - 100, atol=1e-5)
    (y,) = run_op("l2_pool", {"x": x}, consts, outputs=[np.zeros((1, 2, 4, 3), np.float32)])
    close(y, np.sqrt(F.avg_pool2d(padded**2, 3, 2).numpy() * 9), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("align", [False, True])
def test_upsample_against_torch(align):
    x = randn(1, 2, 3, 4)
    (y,) = run_op("upsample_bilinear", {"x": x}, {"scale_factor_height": np.float32(2), "scale_factor_width": np.float32(3), "align_corners": align}, outputs=[np.zeros((1, 2, 6, 12), np.float32)])
    close(y, F.interpolate(torch.from_numpy(x), scale_factor=(2, 3), mode="bilinear", align_corners=align).numpy(), rtol=1e-5, atol=1e-6)
    (y,) = run_op("upsample_nearest_neighbor", {"x": x}, {"scale_factor_height": np.int32(2), "scale_factor_width": np.int32(3)}, outputs=[np.zeros((1, 2, 6, 12), np.float32)])
    close(y, F.interpolate(torch.from_numpy(x), scale_factor=(2, 3), mode="nearest").numpy())


def test_upsample_bilinear_defaults_to_align_corners():
    x = randn(1, 1, 2, 2)
    (y,) = run_op("upsample_bilinear", {"x": x}, {"scale_factor_height": np.float32(2), "scale_factor_width": np.float32(2)}, outputs=[np.zeros((1, 1, 4, 4), np.float32)])
    close(y, F.interpolate(torch.from_numpy(x), size=(4, 4), mode="bilinear", align_corners=True).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "mode, n_out, grid",
    [("UNALIGN_CORNERS", 5, [0, 0.1, 0.5, 0.9, 1]), ("ALIGN_CORNERS", 5, [0, 0.25, 0.5, 0.75, 1]), ("DEFAULT", 5, [0, 0.4, 0.8, 1, 1]),
     ("OFFSET_CORNERS", 5, [0.1, 0.3, 0.5, 0.7, 0.9]), ("DEFAULT", 6, [0, 1 / 3, 2 / 3, 1, 1, 1])],
)  # fmt: skip
def test_resize_bilinear_sampling_modes_follow_the_documented_grids(mode, n_out, grid):
    x = np.array([[[[0.0, 1.0]]]], np.float32)  # Xin = 2: the value at a grid point is the point
    (y,) = run_op("resize_bilinear", {"x": x}, {"target_size_height": np.int32(1), "target_size_width": np.int32(n_out), "sampling_mode": mode}, outputs=[np.zeros((1, 1, 1, n_out), np.float32)])
    close(y.reshape(-1), grid, atol=1e-6)


def test_resize_nearest_crop_and_pad():
    x = randn(1, 2, 4, 6)
    (y,) = run_op("resize_nearest_neighbor", {"x": x}, {"target_size_height": np.int32(2), "target_size_width": np.int32(3)}, outputs=[np.zeros((1, 2, 2, 3), np.float32)])
    np.testing.assert_array_equal(y, x[:, :, ::2, ::2])
    (y,) = run_op("crop", {"x": x}, {"crop_height": np.array([1, 0], np.int32), "crop_width": np.array([2, 1], np.int32)}, outputs=[x[:, :, 1:, 2:5]])
    np.testing.assert_array_equal(y, x[:, :, 1:, 2:5])
    for mode, torch_mode in (("constant", "constant"), ("reflect", "reflect"), ("replicate", "replicate")):
        consts = {"pad": np.array([1, 2, 3, 0], np.int32), "mode": mode}
        expected = F.pad(torch.from_numpy(x), (3, 0, 1, 2), mode=torch_mode).numpy()
        (y,) = run_op("pad", {"x": x}, consts, outputs=[expected])
        np.testing.assert_array_equal(y, expected)
    (y,) = run_op("pad", {"x": x}, {"pad": np.array([1, 1], np.int32), "constant_val": np.float32(9)}, outputs=[np.zeros((1, 2, 4, 8), np.float32)])
    assert (y[..., 0] == 9).all() and np.array_equal(y[..., 1:-1], x)
    with pytest.raises(FormatError, match="2 sizes per padded dimension"):
        run_op("pad", {"x": x}, {"pad": np.array([1, 1, 1], np.int32)}, outputs=[x])


def test_reflect_padding_beyond_the_input_is_a_clear_error():
    x = randn(1, 1, 2, 2)
    with pytest.raises(WeightpackError, match="reflect padding of 2 exceeds 1"):
        run_op("pad", {"x": x}, {"pad": np.array([2, 0], np.int32), "mode": "reflect"}, outputs=[np.zeros((1, 1, 2, 4), np.float32)])


def test_depth_and_space_rearrangements():
    x = randn(2, 8, 3, 4)
    (y,) = run_op("pixel_shuffle", {"x": x}, {"upscale_factor": np.int32(2)}, outputs=[np.zeros((2, 2, 6, 8), np.float32)])
    np.testing.assert_array_equal(y, F.pixel_shuffle(torch.from_numpy(x), 2).numpy())
    (z,) = run_op("pixel_unshuffle", {"x": y}, {"downscale_factor": np.int32(2)}, opset=16, outputs=[x])
    np.testing.assert_array_equal(z, x)
    (y,) = run_op("depth_to_space", {"x": x}, {"block_size": np.int32(2)}, outputs=[np.zeros((2, 2, 6, 8), np.float32)])
    assert y[0, 1, 0, 1] == x[0, 1 * 1 + 2 * 1 + 0, 0, 0] or y[0, 1, 0, 1] == x[0, 3, 0, 0]  # tf: channel (i*b + j)*C' + c
    (z,) = run_op("space_to_depth", {"x": y}, {"block_size": np.int32(2)}, outputs=[x])
    np.testing.assert_array_equal(z, x)
    consts = {"block_shape": np.array([2, 2], np.int32), "paddings": np.array([[1, 1], [0, 0]], np.int32)}
    (s,) = run_op("space_to_batch", {"x": randn(1, 2, 2, 4)}, consts, outputs=[np.zeros((4, 2, 2, 2), np.float32)])
    xb = randn(1, 2, 2, 4)
    (s,) = run_op("space_to_batch", {"x": xb}, consts, outputs=[np.zeros((4, 2, 2, 2), np.float32)])
    (back,) = run_op("batch_to_space", {"x": s}, {"block_shape": np.array([2, 2], np.int32), "crops": np.array([[1, 1], [0, 0]], np.int32)}, outputs=[xb])
    np.testing.assert_array_equal(back, xb)


# ------------------------------------------------------------------------------ reductions, ordering


REDUCTIONS = ["reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod", "reduce_l1_norm", "reduce_l2_norm",
              "reduce_sum_square", "reduce_log_sum", "reduce_log_sum_exp"]  # fmt: skip


@pytest.mark.parametrize("op_type", REDUCTIONS)
@pytest.mark.parametrize("axes, keep", [(None, False), ([1], True), ([0, -1], False)])
def test_reductions_match_coremltools(op_type, axes, keep):
    x = RNG.uniform(0.5, 1.5, (2, 3, 4)).astype(np.float32)
    params = {"keep_dims": keep} | ({} if axes is None else {"axes": np.array(axes, np.int32)})
    expected = np.asarray(mil_value(op_type, x=x, **params))
    (y,) = run_op(op_type, {"x": x}, params, outputs=[expected.astype(np.float32)])
    close(y, expected, rtol=2e-6)


def test_int_reduce_mean_truncates():
    (y,) = run_op("reduce_mean", {"x": np.array([[1, 2], [-1, -2]], np.int32)}, {"axes": np.array([1], np.int32)}, outputs=[np.zeros(2, np.int32)])
    assert y.tolist() == [1, -1] and y.dtype == np.int32


@pytest.mark.parametrize("op_type", ["reduce_argmax", "reduce_argmin"])
def test_arg_reductions(op_type):
    x = randn(3, 5)
    x[1, 1] = x[1, 3] = (x.max() + 1) if op_type == "reduce_argmax" else (x.min() - 1)  # a tie: the lower index
    expected = mil_value(op_type, x=x, axis=np.int32(1), keep_dims=True)
    (y,) = run_op(op_type, {"x": x}, {"axis": np.int32(1), "keep_dims": True}, outputs=[expected])
    np.testing.assert_array_equal(y, expected)
    assert y[1, 0] == 1
    (y,) = run_op(op_type, {"x": x}, outputs=[np.zeros(3, np.int32)])  # defaults: last axis, no keep_dims
    assert y.shape == (3,)


@pytest.mark.parametrize("ascending", [False, True])
def test_topk_and_argsort(ascending):
    x = randn(3, 6)
    values, indices = mil_value("topk", x=x, k=np.int32(3), axis=np.int32(-1), ascending=ascending)
    outs = run_op("topk", {"x": x}, {"k": np.int32(3), "ascending": ascending}, outputs=[values, indices])
    np.testing.assert_array_equal(outs[0], values)
    np.testing.assert_array_equal(outs[1], indices)
    (y,) = run_op("argsort", {"x": x}, {"axis": np.int32(0), "ascending": ascending}, outputs=[x.astype(np.int32)])
    np.testing.assert_array_equal(y, mil_value("argsort", x=x, axis=np.int32(0), ascending=ascending))
    (v,) = run_op("topk", {"x": x}, {"k": np.int32(2), "return_indices": False}, outputs=[values[:, :2]], opset=16)
    np.testing.assert_array_equal(v, np.sort(x, -1)[:, ::-1][:, :2])
    with pytest.raises(FormatError, match="k 7 must be in"):
        run_op("topk", {"x": x}, {"k": np.int32(7)}, outputs=[values, indices])


# ------------------------------------------------------------------------------ attention


@pytest.mark.parametrize("mask", [None, "float", "bool"])
def test_scaled_dot_product_attention_against_torch(mask):
    q, k, v = randn(2, 3, 5, 8), randn(2, 3, 7, 8), randn(2, 3, 7, 4)
    arrays = {"query": q, "key": k, "value": v}
    torch_mask = None
    if mask == "float":
        arrays["attn_mask"] = randn(5, 7)
        torch_mask = torch.from_numpy(arrays["attn_mask"])
    elif mask == "bool":
        arrays["attn_mask"] = np.tril(np.ones((5, 7), bool))
        torch_mask = torch.from_numpy(arrays["attn_mask"])
    expected = F.scaled_dot_product_attention(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), attn_mask=torch_mask).numpy()
    (y,) = run_op("scaled_dot_product_attention", arrays, outputs=[expected])
    close(y, expected, rtol=1e-5, atol=1e-6)


def test_attention_shapes_are_checked_at_load():
    with pytest.raises(FormatError, match="do not fit"):
        run_op("scaled_dot_product_attention", {"query": randn(1, 2, 8), "key": randn(1, 3, 4), "value": randn(1, 3, 4)}, outputs=[randn(1, 2, 4)])


# ------------------------------------------------------------------------------ through coremltools


def test_ops_built_by_coremltools_with_their_defaults_omitted():
    """coremltools writes only the parameters given: the executor applies each op's defaults."""
    from coremltools.converters.mil import Builder as mb

    def build(x):
        a = mb.softmax(x=x)
        b = mb.slice_by_index(x=a, begin=[0, 1], end=[2, 4])
        c = mb.gelu(x=b)
        d = mb.reduce_sum(x=c)
        e = mb.cumsum(x=b)
        return d, e, mb.squeeze(x=mb.expand_dims(x=b, axes=[0]))

    model = mil_model(build, [((2, 5), np.float32)], opset="iOS16")
    x = randn(2, 5)
    out = Program.load(model).predict({"x": x})
    a = torch.softmax(torch.from_numpy(x), -1).numpy()[0:2, 1:4]
    c = F.gelu(torch.from_numpy(a)).numpy()
    values = list(out.values())
    close(values[0], c.sum(), rtol=1e-5)
    close(values[1], np.cumsum(a, 0), rtol=1e-6)
    close(values[2], a)


def test_fp16_program_values_compute_in_fp32_and_round_in_fp16_mode():
    from coremltools.converters.mil import Builder as mb

    def build(x):
        return mb.mul(x=mb.add(x=x, y=np.float32(2048.0)), y=np.float32(0.5))

    model = mil_model(build, [((3,), np.float32)], precision="fp16", passes="default")
    x = np.array([0.25, 1.0, 3.0], np.float32)
    wide = Program.load(model).predict({"x": x})
    name = next(iter(wide))
    assert wide[name].tolist() == [1024.125, 1024.5, 1025.5]  # fp32 arithmetic on fp16 values
    rounded = Program.load(model, compute_precision="fp16").predict({"x": x})
    assert rounded[name].tolist() == [1024.0, 1024.0, 1026.0]  # the sum rounded to binary16 (spacing 2)


def test_quantize_and_dequantize():
    x = np.array([[-1.0, 0.25, 0.5, 1.7], [3.0, -3.0, 0.75, 0.0]], np.float32)
    consts = {"scale": np.array([0.5, 0.25], np.float32), "zero_point": np.array([3, -2], np.int8), "axis": np.int32(0), "output_dtype": "int8"}
    expected = mil_value("quantize", opset="iOS17", input=x, **consts)
    (q,) = run_op("quantize", {"input": x}, consts, outputs=[expected], opset=17)
    np.testing.assert_array_equal(q, expected)
    assert q.dtype == np.int8 and q[0, 2] == 4  # 0.5 / 0.5 + 3; half-to-even: 0.25 / 0.5 = 0.5 -> 0
    (d,) = run_op("dequantize", {"input": q}, {k: v for k, v in consts.items() if k != "output_dtype"}, outputs=[x], opset=17)
    close(d, (q.astype(np.float32) - consts["zero_point"].reshape(2, 1)) * consts["scale"].reshape(2, 1))
    with pytest.raises(FormatError, match="needs axis"):
        run_op("quantize", {"input": x}, {"scale": np.array([0.5, 0.25], np.float32), "output_dtype": "int8"}, outputs=[expected], opset=17)
