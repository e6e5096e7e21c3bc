"""Linear quantization: ``w ~ scale * (q - offset)`` with q int8/uint8/int4/uint4, per tensor, channel or block.

Rules (normative). For each block B of the weights, with ``[qmin, qmax]`` the range below and all
arithmetic in float64:

===========  ====================  ==================================
dtype        symmetric             asymmetric
===========  ====================  ==================================
int8         [-127, 127], no offset  [-128, 127]
uint8        [0, 254], offset 127    [0, 255]
int4         [-7, 7], no offset      [-8, 7]
uint4        [0, 14], offset 7       [0, 15]
===========  ====================  ==================================

- symmetric: ``R = max |w|`` over B, ``scale = 2 R / (qmax - qmin)`` (R / 127 for int8).
- asymmetric: ``lo = min(0, min B)``, ``hi = max(0, max B)``, ``scale = (hi - lo) / (qmax - qmin)``,
  ``offset = clip(round((qmin hi - qmax lo) / (hi - lo)), qmin, qmax)``.
- The scale is rounded once to the weights' dtype (the stored scale). If that gives 0 for a block
  that is not all zero, the dtype's smallest subnormal is stored instead. An all-zero block
  stores scale 1 and ``q = offset`` (0 for asymmetric), with no warning and no NaN.
- ``q = clip(round(w / stored_scale) + offset, qmin, qmax)``; ``round`` is half to even and acts on
  the float64 quotient, which for float16/float32 inputs decides every tie exactly.

The ranges, scale and offset formulas are coremltools' (``optimize/_utils.py``
``quantize_weight_by_dtype``). coremltools divides in the weights' dtype instead of float64, so
where ``w / scale`` rounded to float32 (or float16) lands on the other side of a half-integer
than the exact quotient, its q differs from weightpack's by one; weightpack rounds the exact
quotient. The symmetric scale is the same in both (one correctly rounded division); the
asymmetric scale and offset can differ in the last bit because coremltools rounds ``hi - lo``.

Blocks: ``per_tensor`` is one block; ``per_channel`` one block per slice along ``axis``;
``per_block`` with an integer ``block_size`` b is coremltools' layout: blocks of 1 along ``axis``
(the output channels), b along the input axis (1 when ``axis`` is 0, else 0) and the whole of
every other axis, so a [Cout, Cin, kh, kw] weight gets a [Cout, Cin / b, 1, 1] scale. A tuple
``block_size`` gives the block along every axis (0 = the whole axis).
"""
from __future__ import annotations

import numpy as np

from ..bits import NBitArray, value_range
from ..errors import WeightpackError, describe
from ..formats import QuantizedTensor, SparseQuantizedTensor, SparseTensor
from ..formats.base import parse_int_type
from ..formats.quantized import QUANT_TYPES
from ._common import check_axis, check_choice, float_weights, positive_int, sparse_values

MODES = ("symmetric", "asymmetric")
GRANULARITIES = ("per_tensor", "per_channel", "per_block")


def quantize(w, dtype="int8", *, mode="symmetric", granularity="per_channel", axis=0, block_size=None):
    """Quantize float weights to int8/uint8/int4/uint4 with a scale (and offset) per block.

    A SparseTensor input quantizes its nonzeros, with the blocks laid over its dense shape, into
    a SparseQuantizedTensor.

    >>> import numpy as np
    >>> w = np.array([[0.5, -1.0, 0.25], [2.0, 0.0, -0.5]], np.float32)
    >>> q = quantize(w, "int8")
    >>> q.data.values().tolist(), q.scale.ravel().tolist(), q.offset
    ([[64, -127, 32], [127, 0, -32]], [0.007874015718698502, 0.015748031437397003], None)
    >>> round(float(abs(q.decompress() - w).max()), 4)
    0.0039
    """
    qtype = _quant_type(dtype)
    nbits, signed = parse_int_type(qtype)
    check_choice(mode, "mode", MODES)
    check_choice(granularity, "granularity", GRANULARITIES)
    sparse = isinstance(w, SparseTensor)
    if sparse:
        sparse_values(w)
        dense = w.decompress()
    else:
        dense = float_weights(w)
    axis = check_axis(axis, dense.ndim)
    block = block_shape(dense.shape, granularity, axis, block_size)
    q, scale, offset = quantize_blocks(dense, block, nbits, signed, mode)
    if offset is not None:
        offset = offset.astype(q.dtype)
    if sparse:
        keep = w.mask.values().astype(bool)
        return SparseQuantizedTensor(w.mask, _packed(q[keep], nbits, signed), scale, offset)
    return QuantizedTensor(_packed(q, nbits, signed), scale, offset)


def quantize_blocks(w: np.ndarray, block: tuple[int, ...], nbits: int, signed: bool, mode: str):
    """(q int8/uint8 of w's shape, scale of w's dtype, offset float64 or None) for blocks ``block``."""
    qmin, qmax = value_range(nbits, signed)
    if mode == "symmetric":
        qmin += signed
        qmax -= not signed
    grid_shape = [n for d, b in zip(w.shape, block) for n in (d // b, b)]
    grid = w.astype(np.float64).reshape(grid_shape)
    inner = tuple(range(1, grid.ndim, 2))
    lo = grid.min(axis=inner, keepdims=True)
    hi = grid.max(axis=inner, keepdims=True)
    if mode == "symmetric":
        span = 2.0 * np.maximum(-lo, hi)
        offset = None if signed else np.full(span.shape, float(qmax // 2))
    else:
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
        span = hi - lo
        safe = np.where(span > 0, span, 1.0)
        offset = np.where(span > 0, np.clip(np.round((qmin * hi - qmax * lo) / safe), qmin, qmax), 0.0)
    stored = (span / (qmax - qmin)).astype(w.dtype)
    stored[(stored == 0) & (span > 0)] = np.finfo(w.dtype).smallest_subnormal
    stored[span == 0] = 1
    q = np.round(grid / stored.astype(np.float64))
    if offset is not None:
        q += offset
    q = np.clip(q, qmin, qmax).astype(np.int8 if signed else np.uint8).reshape(w.shape)
    scale_shape = grid.shape[::2]
    return q, stored.reshape(scale_shape), None if offset is None else offset.reshape(scale_shape)


def block_shape(shape, granularity: str, axis: int, block_size) -> tuple[int, ...]:
    """Elements per block along every axis."""
    if granularity != "per_block":
        if block_size is not None:
            raise WeightpackError(f"block_size={describe(block_size)} is only allowed with granularity='per_block'")
        if granularity == "per_tensor":
            return tuple(shape)
        return tuple(1 if a == axis else d for a, d in enumerate(shape))
    if block_size is None:
        raise WeightpackError("granularity='per_block' needs block_size: an integer, or a tuple with one entry per axis")
    if isinstance(block_size, (tuple, list)):
        if len(block_size) != len(shape):
            raise WeightpackError(
                f"block_size={describe(block_size)} must have one entry per axis ({len(shape)} for shape {tuple(shape)})"
            )
        sizes = [d if b == 0 else b for b, d in zip(block_size, shape)]
        for a, (b, d) in enumerate(zip(block_size, shape)):
            if isinstance(b, (bool, np.bool_)) or not isinstance(b, (int, np.integer)) or b < 0:
                raise WeightpackError(f"block_size[{a}]={describe(b)} must be a non-negative integer (0 = the whole axis)")
        block = tuple(int(b) for b in sizes)
    else:
        positive_int(block_size, "block_size")
        if len(shape) < 2:
            raise WeightpackError(
                f"an integer block_size needs a weight of rank >= 2, got shape {tuple(shape)}; pass a tuple instead"
            )
        in_axis = 1 if axis == 0 else 0
        block = tuple(1 if a == axis else int(block_size) if a == in_axis else d for a, d in enumerate(shape))
    for a, (b, d) in enumerate(zip(block, shape)):
        if d % b:
            raise WeightpackError(f"block_size {b} along axis {a} does not divide the dimension {d} (shape {tuple(shape)})")
    return block


def _quant_type(dtype) -> str:
    name = dtype
    if not isinstance(dtype, str):
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = None
    if name not in QUANT_TYPES:
        raise WeightpackError(f"dtype={describe(dtype)} is unknown; allowed: {', '.join(QUANT_TYPES)} (or np.int8, np.uint8)")
    return name


def _packed(q: np.ndarray, nbits: int, signed: bool):
    return q if nbits == 8 else NBitArray.from_values(q, nbits, signed=signed)
