"""Elementwise ops: unary math, binary arithmetic with broadcasting, comparisons, logical ops,
activations, ``cast``, ``clip``, ``select``, ``softmax`` (coremltools' iOS15-iOS17 definitions).

Every float value computes in float32 (see :mod:`weightpack.coreml.runtime`); integer ops keep
the declared integer type: a result numpy would widen (``real_div`` of int32, ``exp2`` of int32)
is cast back to it, truncating toward zero as coremltools' own value inference does.
"""
from __future__ import annotations

import math

import numpy as np

from .registry import op
from .shapes import broadcast, normalize_axis

FLOATS = ("fp16", "fp32")
NUMBERS = ("fp16", "fp32", "int32", "int8", "uint8", "int16", "uint16")
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


_SPECIAL = {}


def _special(name: str):
    """``math.erf`` / ``math.erfc`` as compiled ufuncs (numpy has neither): built on first use."""
    if name not in _SPECIAL:
        import numba

        fn = getattr(math, name)

        @numba.vectorize(["float32(float32)", "float64(float64)"], cache=True, nopython=True)
        def ufunc(v):
            return fn(v)

        _SPECIAL[name] = ufunc
    return _SPECIAL[name]


def erf(x):
    return _special("erf")(x)


def erfc(x):
    return _special("erfc")(x)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


UNARY = {
    "abs": np.abs, "acos": np.arccos, "asin": np.arcsin, "atan": np.arctan, "atanh": np.arctanh,
    "ceil": np.ceil, "cos": np.cos, "cosh": np.cosh, "erf": erf, "exp": np.exp, "exp2": np.exp2,
    "floor": np.floor, "round": np.round, "sign": np.sign, "sin": np.sin, "sinh": np.sinh,
    "sqrt": np.sqrt, "square": np.square, "tan": np.tan, "tanh": np.tanh, "identity": lambda x: x,
    "relu": lambda x: np.maximum(x, np.zeros((), x.dtype)), "relu6": lambda x: np.clip(x, 0, 6).astype(x.dtype, copy=False),
    "sigmoid": sigmoid, "silu": lambda x: x * sigmoid(x), "softplus": lambda x: np.logaddexp(np.zeros((), x.dtype), x),
    "softsign": lambda x: x / (1 + np.abs(x)),
}  # fmt: skip
# ops whose x may also be an integer tensor
INT_UNARY = ("abs", "sign", "square", "exp2", "identity")


@op(*UNARY)
def unary(b):
    x = b.operand("x")
    b.expect(x, NUMBERS + ("bool",) if b.type == "identity" else NUMBERS if b.type in INT_UNARY else FLOATS, "x")
    return b.emit(UNARY[b.type], [x], [(x.shape, x.type.dtype)])


@op("inverse", "log", "rsqrt")
def with_epsilon(b):
    """``1 / (x + eps)``, ``log(x + eps)``, ``1 / sqrt(x + eps)``; defaults 1e-4, 1e-45, 1e-12
    taken in x's declared dtype (0 for log in fp16)."""
    x = b.operand("x")
    b.expect(x, FLOATS, "x")
    eps = b.scalar("epsilon", x, {"inverse": 1e-4, "log": 1e-45, "rsqrt": 1e-12}[b.type])
    fn = {
        "inverse": lambda v: 1.0 / (v + eps),
        "log": lambda v: np.log(v + eps),
        "rsqrt": lambda v: 1.0 / np.sqrt(v + eps),
    }[b.type]
    return b.emit(fn, [x], [(x.shape, x.type.dtype)])


@op("logical_not")
def logical_not(b):
    x = b.operand("x")
    b.expect(x, ("bool",), "x")
    return b.emit(np.logical_not, [x], [(x.shape, "bool")])


def _alpha_beta(b, x, names):
    return [b.scalar(name, x) for name in names]


@op("clip", "threshold", "leaky_relu", "elu", "thresholded_relu", "sigmoid_hard", "scaled_tanh", "clamped_relu", "linear_activation")
def with_constants(b):
    x = b.operand("x")
    b.expect(x, NUMBERS if b.type == "threshold" else FLOATS, "x")
    if b.type == "clip":
        alpha, beta = _alpha_beta(b, x, ("alpha", "beta"))
        if b.opset >= 17 and not alpha < beta:
            b.fail(f"alpha {float(alpha)} must be smaller than beta {float(beta)}")
        fn = lambda v: np.minimum(np.maximum(v, alpha), beta)  # noqa: E731
    elif b.type == "threshold":
        (alpha,) = _alpha_beta(b, x, ("alpha",))
        fn = lambda v: np.maximum(v, alpha)  # noqa: E731
    elif b.type == "leaky_relu":
        (alpha,) = _alpha_beta(b, x, ("alpha",))
        fn = lambda v: np.where(v >= 0, v, alpha * v)  # noqa: E731
    elif b.type == "elu":
        (alpha,) = _alpha_beta(b, x, ("alpha",))
        fn = lambda v: np.where(v > 0, v, alpha * np.expm1(np.minimum(v, 0)))  # noqa: E731
    elif b.type == "thresholded_relu":
        (alpha,) = _alpha_beta(b, x, ("alpha",))
        fn = lambda v: np.where(v >= alpha, v, np.zeros((), v.dtype))  # noqa: E731
    elif b.type == "sigmoid_hard":
        alpha, beta = _alpha_beta(b, x, ("alpha", "beta"))
        fn = lambda v: np.minimum(np.maximum(alpha * v + beta, 0), 1).astype(v.dtype, copy=False)  # noqa: E731
    elif b.type == "scaled_tanh":
        alpha, beta = _alpha_beta(b, x, ("alpha", "beta"))
        fn = lambda v: alpha * np.tanh(beta * v)  # noqa: E731
    elif b.type == "clamped_relu":
        alpha, beta = _alpha_beta(b, x, ("alpha", "beta"))
        fn = lambda v: np.minimum(beta, np.where(v >= 0, v, alpha * v))  # noqa: E731
    else:  # linear_activation
        alpha, beta = _alpha_beta(b, x, ("alpha", "beta"))
        fn = lambda v: alpha * v + beta  # noqa: E731
    return b.emit(fn, [x], [(x.shape, x.type.dtype)])


@op("gelu")
def gelu(b):
    x = b.operand("x")
    b.expect(x, FLOATS, "x")
    mode = b.str_("mode", "EXACT", allowed=("EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION"))
    if mode == "EXACT":  # 0.5 x (1 + erf(x / sqrt 2)), as erfc: no cancellation for negative x
        inv_sqrt2 = np.float32(1 / math.sqrt(2.0))
        fn = lambda v: 0.5 * v * erfc(-v * inv_sqrt2)  # noqa: E731
    elif mode == "TANH_APPROXIMATION":
        c = np.float32(SQRT_2_OVER_PI)
        fn = lambda v: 0.5 * v * (1 + np.tanh(c * (v + 0.044715 * (v * v * v))))  # noqa: E731
    else:
        fn = lambda v: v * sigmoid(1.702 * v)  # noqa: E731
    return b.emit(fn, [x], [(x.shape, x.type.dtype)])


def _channel_vector(b, name, x):
    """A per-channel constant (axis 1) shaped to broadcast against x."""
    value = np.asarray(b.const(name), np.float32)
    if x.rank is None or x.rank < 3:
        b.fail(f"x must have rank 3 to 5 (batch, channels, ...), got {x.type}")
    if value.ndim != 1 or (x.shape[1] is not None and value.shape[0] != x.shape[1]):
        b.fail(f"parameter {name!r} must have one value per channel ({x.shape[1]}), got shape {value.shape}")
    return value.reshape((1, -1) + (1,) * (x.rank - 2))


@op("prelu", "softplus_parametric")
def per_channel(b):
    x = b.operand("x")
    b.expect(x, FLOATS, "x")
    alpha = _channel_vector(b, "alpha", x)
    if b.type == "prelu":
        fn = lambda v: np.where(v > 0, v, alpha * v)  # noqa: E731
    else:
        beta = _channel_vector(b, "beta", x)
        fn = lambda v: alpha * np.logaddexp(np.zeros((), v.dtype), beta * v)  # noqa: E731
    return b.emit(fn, [x], [(x.shape, x.type.dtype)])


@op("softmax")
def softmax(b):
    x = b.operand("x")
    b.expect(x, FLOATS, "x")
    axis = b.int_("axis", -1)
    if x.rank is not None:
        axis = b.infer(lambda: normalize_axis(axis, x.rank))

    def fn(v):
        e = np.exp(v - np.max(v, axis=axis, keepdims=True))
        e /= np.sum(e, axis=axis, keepdims=True)
        return e

    return b.emit(fn, [x], [(x.shape, x.type.dtype)])


ARITHMETIC = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.true_divide,
    "floor_div": np.floor_divide, "mod": np.mod, "pow": np.power, "maximum": np.maximum, "minimum": np.minimum,
}  # fmt: skip
COMPARISON = {
    "equal": np.equal, "not_equal": np.not_equal, "greater": np.greater, "greater_equal": np.greater_equal,
    "less": np.less, "less_equal": np.less_equal,
}  # fmt: skip
LOGICAL = {"logical_and": np.logical_and, "logical_or": np.logical_or, "logical_xor": np.logical_xor}


def promote(a: str, b: str) -> str:
    """MIL's promotion of two dtypes: a float with an integer is the float; else the wider."""
    if a == b:
        return a
    floats = [d for d in (a, b) if d in FLOATS]
    if len(floats) == 1:
        return floats[0]
    order = ("bool", "uint8", "int8", "uint16", "int16", "int32", "fp16", "fp32")
    return max(a, b, key=lambda d: order.index(d) if d in order else len(order))


@op(*ARITHMETIC, *COMPARISON, *LOGICAL)
def binary(b):
    x, y = b.operand("x"), b.operand("y")
    allowed = ("bool",) if b.type in LOGICAL else NUMBERS
    b.expect(x, allowed, "x")
    b.expect(y, allowed, "y")
    shape = b.infer(lambda: broadcast(x.shape, y.shape))
    dtype = "bool" if b.type in COMPARISON or b.type in LOGICAL else promote(x.type.dtype, y.type.dtype)
    fn = ARITHMETIC.get(b.type) or COMPARISON.get(b.type) or LOGICAL[b.type]
    if b.type == "pow" and dtype not in FLOATS:
        fn = _integer_power
    return b.emit(fn, [x, y], [(shape, dtype)])


def _integer_power(x, y):
    """Integer powers (numpy refuses negative integer exponents): through float64, truncated."""
    return np.trunc(np.power(np.asarray(x, np.float64), y)).astype(np.result_type(x, y))


@op("select")
def select(b):
    cond, a, c = b.operand("cond"), b.operand("a"), b.operand("b")
    b.expect(cond, ("bool",), "cond")
    shape = b.infer(lambda: broadcast(cond.shape, a.shape, c.shape))
    return b.emit(np.where, [cond, a, c], [(shape, promote(a.type.dtype, c.type.dtype))])


CAST_TYPES = ("int8", "uint8", "int16", "uint16", "int32", "fp16", "fp32", "bool")


@op("cast")
def cast(b):
    x = b.operand("x")
    dtype = b.str_("dtype", allowed=CAST_TYPES if b.opset >= 17 else ("int32", "fp16", "fp32", "bool"))
    b.expect(x, CAST_TYPES, "x")
    from .registry import runtime_dtype

    target = runtime_dtype(dtype)
    if target.kind == "b":
        fn = lambda v: v != 0  # noqa: E731
    elif target.kind in "iu" and x.type.dtype in FLOATS:
        fn = lambda v: np.trunc(v).astype(target)  # noqa: E731
    else:
        fn = lambda v: v.astype(target)  # noqa: E731
    return b.emit(fn, [x], [(x.shape, dtype)])


def _affine_params(b, x):
    """(scale, zero point or None) of quantize / dequantize: scalars, or vectors along ``axis``."""
    scale = np.asarray(b.const("scale"))
    zero_point = b.const("zero_point", None)
    given = b.has("axis")
    if scale.ndim > 1 or (zero_point is not None and np.asarray(zero_point).ndim > 1):
        b.fail("scale and zero_point must be scalars or vectors")
    if scale.ndim == 1 or (zero_point is not None and np.asarray(zero_point).ndim == 1):
        if not given or x.rank is None:
            b.fail("a vector scale or zero_point needs axis")
        axis = b.infer(lambda: normalize_axis(b.int_("axis"), x.rank))
        shape = [1] * x.rank
        shape[axis] = -1
        for name, value in (("scale", scale), ("zero_point", zero_point)):
            if value is not None and np.asarray(value).ndim == 1 and x.shape[axis] is not None and np.asarray(value).size != x.shape[axis]:
                b.fail(f"{name} has {np.asarray(value).size} values; axis {axis} of the input has {x.shape[axis]}")
        scale = scale.reshape(shape) if scale.ndim == 1 else scale
        if zero_point is not None:
            zero_point = np.asarray(zero_point)
            zero_point = zero_point.reshape(shape) if zero_point.ndim == 1 else zero_point
    elif given:
        b.fail("axis must not be given for a scalar scale and zero_point")
    if np.any(scale == 0):
        b.fail("scale holds 0")
    return scale.astype(np.float32), None if zero_point is None else np.asarray(zero_point).astype(np.float32)


@op("quantize")
def quantize(b):
    """iOS17: ``clip(round(x / scale) + zero_point)`` to int8 / uint8 (round half to even)."""
    x = b.operand("input")
    b.expect(x, FLOATS, "input")
    dtype = b.str_("output_dtype", allowed=("int8", "uint8"))
    scale, zero_point = _affine_params(b, x)
    info = np.iinfo(np.int8 if dtype == "int8" else np.uint8)

    def run(v):
        q = np.round(v / scale)
        if zero_point is not None:
            q = q + zero_point
        return np.clip(q, info.min, info.max).astype(info.dtype)

    return b.emit(run, [x], [(x.shape, dtype)])


@op("dequantize")
def dequantize(b):
    """iOS17: ``scale * (x - zero_point)``, in the scale's dtype (float32 arithmetic)."""
    x = b.operand("input")
    b.expect(x, ("int8", "uint8"), "input")
    scale, zero_point = _affine_params(b, x)
    dtype = np.asarray(b.const("scale")).dtype
    out = "fp16" if dtype == np.float16 else "fp32"

    def run(v):
        w = v.astype(np.float32)
        return (w - zero_point if zero_point is not None else w) * scale

    return b.emit(run, [x], [(x.shape, out)])
