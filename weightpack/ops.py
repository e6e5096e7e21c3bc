"""Products with compressed weights: ``matvec(W, x)`` and ``matmul(W, X)``.

The weight is never materialized by the compiled backends: each row is decoded in registers
right where it is multiplied (Core ML's just-in-time decompression, on a CPU). A weight of shape
``(out, ...)`` acts as the ``out x in`` matrix of its first axis against the rest flattened, as a
linear or convolution (im2col) layer uses it.

Exact mode: activations in float32, every weight decoded exactly as ``decompress()`` does,
float32 accumulation. Backends differ only in summation order, so every output is within the
classic forward error bound of a float32 dot product: ``|y - y_exact| <= error_bound(in) *
sum_j |w_j x_j| + in * UNDERFLOW``, with ``y_exact`` the exact product of the decoded weights
and the float32 activations (the second term covers products below float32's normal range).
"""
from __future__ import annotations

import numpy as np

from . import kernels
from .errors import WeightpackError, check_allocation, describe
from .formats.base import CompressedTensor

FLOAT32_MAX = float(np.finfo(np.float32).max)
UNIT_ROUNDOFF = 2.0**-24
UNDERFLOW = 2.0**-149  # spacing of float32 subnormals


def error_bound(in_features: int) -> float:
    """gamma_n = n*u / (1 - n*u): the relative bound of an n-term float32 dot product.

    >>> round(error_bound(4096) * 2**24, 3)
    4097.0
    """
    nu = in_features * UNIT_ROUNDOFF
    return nu / (1.0 - nu)


def matrix_shape(weight: CompressedTensor) -> tuple[int, int]:
    """(out, in): the tensor's first axis against the product of the others."""
    shape = weight.shape
    if len(shape) == 1:
        return 1, shape[0]
    cols = 1
    for size in shape[1:]:
        cols *= size
    return shape[0], cols


def _activations(x, cols: int, name: str, ndim: int) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype.kind != "f":
        raise WeightpackError(f"{name} has dtype {x.dtype}; it must be a float array (float32 is used)")
    if x.ndim != ndim or x.shape[-1] != cols:
        want = f"({cols},)" if ndim == 1 else f"(batch, {cols})"
        raise WeightpackError(f"{name} has shape {x.shape}; the weight needs {want}")
    if x.dtype != np.float32 or not (x.flags.c_contiguous and x.flags.aligned):
        check_allocation(x.size * 4, f"{name} of shape {x.shape} as float32")
        if not np.isfinite(x).all():
            raise WeightpackError(f"{name} contains NaN or infinity")
        if x.dtype.itemsize > 4 and x.size and np.abs(x).max() > FLOAT32_MAX:
            raise WeightpackError(
                f"{name} holds {x.dtype} values too large for float32 (|{name}| up to {float(np.abs(x).max()):.4g}, "
                f"float32's largest is {FLOAT32_MAX:.4g}); products are computed in float32: scale {name} down"
            )
        x = np.ascontiguousarray(x, np.float32)
    return x  # the C kernels refuse NaN and infinity in float32 activations themselves


MODES = ("exact", "fast")
FAST_RTOL = 1.5e-2


def matmul(weight: CompressedTensor, x, *, backend=None, mode: str = "exact") -> np.ndarray:
    """``x @ W.T`` for activations ``x`` of shape (batch, in): a linear layer; float32 (batch, out).

    ``mode="fast"`` (opt-in) quantizes the activations to int8 per block of 32 on the fly and
    multiplies with integer dot-product instructions (AVX-512 VNNI, aarch64 SDOT); LUTs are rounded to int8 per
    table, quantized weights are used as stored (scales unrounded). Its error against the float64
    product, relative to the output's norm, measures 0.5% (int8, int4) to 1% (heavy-tailed 4-bit
    LUTs) on random data and is tested below ``FAST_RTOL`` (twice that for 1- and 2-bit LUTs).
    Layouts it does not cover (6- and 8-bit LUTs, sparse weights, float offsets, columns not in
    whole 64-byte steps), backends other than ``c`` and CPUs without AVX-512 or the aarch64 dot
    product compute the exact product instead. Batches of 16 and more run on AMX tiles where the
    CPU has them (Intel Sapphire Rapids and newer, Linux): weights (the same int8-rounded LUTs and
    stored codes) and activations rounded to bfloat16, float32 accumulation, within the same
    bound. A ScaledLUTTensor runs its LUT's kernel when only the
    LUT is scaled, else it is decoded and multiplied with BLAS (float32, exact mode).

    >>> import numpy as np, weightpack as wp
    >>> w = wp.QuantizedTensor(np.array([[1, -1], [2, 0]], np.int8), np.array([[0.5], [0.25]], np.float32))
    >>> wp.matmul(w, np.array([[1.0, 2.0], [3.0, 4.0]])).tolist()
    [[-0.5, 0.5], [-0.5, 1.5]]
    """
    run, rows, cols = prepared_product(weight, backend, mode)
    x = _activations(x, cols, "x", 2)
    y = np.empty((x.shape[0], rows), np.float32)
    run(x, y)
    return y


def matvec(weight: CompressedTensor, x, *, backend=None, mode: str = "exact") -> np.ndarray:
    """``W @ x`` for a vector ``x`` of length in; float32 of length out.

    >>> import numpy as np, weightpack as wp
    >>> w = wp.SparseTensor(np.array([[1, 0], [1, 1]], bool), np.array([2, 3, 4], np.float16))
    >>> wp.matvec(w, np.array([1.0, 10.0])).tolist()
    [2.0, 43.0]
    """
    run, rows, cols = prepared_product(weight, backend, mode)
    x = _activations(x, cols, "x", 1)
    y = np.empty(rows, np.float32)
    run(x.reshape(1, cols), y.reshape(1, rows))
    return y


def prepared_product(weight, backend=None, mode: str = "exact"):
    """``(run, rows, cols)``: the weight's product function ``run(x, y)`` (``y = x @ W.T`` for
    float32 C-contiguous x of shape (batch, cols) and y of shape (batch, rows); prepared once per
    tensor, backend and mode) and its matrix shape. :func:`matmul` is this plus its checks of x;
    callers that validated x once (a program runtime) may call ``run`` directly."""
    if not isinstance(weight, CompressedTensor):
        raise WeightpackError(f"weight must be a weightpack compressed tensor, got {describe(weight)}")
    if mode not in MODES:
        raise WeightpackError(f"mode={describe(mode)} is unknown; allowed: {MODES}")
    if not weight._kernel:  # a chain of ops without its own kernel (ScaledLUTTensor)
        return (_chained_product(weight, backend, mode), *matrix_shape(weight))
    return (kernels.product(weight, backend, mode), *matrix_shape(weight))


def _chained_product(weight, backend, mode: str):
    """run(x, y) for a tensor without a kernel: its kernel tensor's product, else decode + BLAS."""
    fused = weight.kernel_tensor()
    if fused is not None:
        return kernels.product(fused, backend, mode)
    rows, cols = matrix_shape(weight)

    def decoded(x, y):
        kernels.require_finite(x)
        np.matmul(x, weight.decompress(np.float32, backend=backend).reshape(rows, cols).T, out=y)

    return decoded
