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

Optional error minimisation (error = ``sum importance * (w - scale * (q - offset))**2`` per block,
float64, importance 1 by default; the pruned zeros of a SparseTensor weigh 0):

- ``clip_search=True``: the block's range ``[lo, hi]`` is also tried shrunk to ``alpha * [lo, hi]``
  for alpha = 0.98, 0.96, ..., 0.50 (scale and offset from the same formulas, rounded the same way);
  the least error wins, ties to the larger alpha.
- ``refit=True``: then up to 4 least-squares refits: the scale (and for asymmetric the offset,
  rounded and clipped to the range) that minimise the error for the current q, rounded to the
  scale dtype (float16 to nearest even); q is requantized; a refit that does not lower the error
  ends the search.

A PalettizedTensor (or SparsePalettizedTensor, or a ScaledLUTTensor with a float LUT) quantizes
its LUT instead, to int8 or uint8 with blocks laid over the LUT array ``[G.., 2**n, V]`` (e.g.
``granularity="per_tensor"``, or ``block_size=(1, .., 1, 2**n, V)`` for one scale per LUT); the
indices are kept; the result is a ScaledLUTTensor (Core ML: ``constexpr_blockwise_shift_scale`` on
the LUT, then the LUT op).

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
from ..formats import (
    PalettizedTensor,
    QuantizedTensor,
    SparsePalettizedTensor,
    SparseQuantizedTensor,
    SparseTensor,
)
from ..formats.base import parse_int_type
from ..formats.quantized import QUANT_TYPES
from ._common import (
    check_axis,
    check_bool,
    check_choice,
    dtype_name_of,
    float_weights,
    freeze,
    importance_array,
    positive_int,
    sparse_values,
)

MODES = ("symmetric", "asymmetric")
GRANULARITIES = ("per_tensor", "per_channel", "per_block")
CLIP_ALPHAS = 1.0 - 0.02 * np.arange(1, 26)  # 0.98 ... 0.50
REFITS = 4
REFERENCE_MAX = 1 << 16  # plain quantization of up to this many elements runs the numpy reference


def quantize(w, dtype="int8", *, mode="symmetric", granularity="per_channel", axis=0, block_size=None,
             clip_search=False, refit=False, importance=None):
    """Quantize float weights to int8/uint8/int4/uint4 with a scale (and offset) per block.

    A SparseTensor input quantizes its nonzeros, with the blocks laid over its dense shape, into
    a SparseQuantizedTensor; a palettized tensor quantizes its LUT (see the module docstring).
    ``clip_search`` and ``refit`` lower the error (weighted by ``importance``, the weights' shape or
    1 on some axes) per block.

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
    search = (check_bool(clip_search, "clip_search"), check_bool(refit, "refit"))
    if importance is not None and not any(search):
        raise WeightpackError("importance weighs the error of clip_search and refit; set one of them (or drop importance)")
    from .scaled import ScaledLUTTensor

    if isinstance(w, (PalettizedTensor, SparsePalettizedTensor, ScaledLUTTensor)):
        if importance is not None:
            raise WeightpackError("importance is not used when quantizing a LUT")
        return _quantize_lut(w, qtype, mode, granularity, axis, block_size, search)
    sparse = isinstance(w, SparseTensor)
    if sparse:
        sparse_values(w)
        dense = w.decompress()
    else:
        dense = float_weights(w)
    axis = check_axis(axis, dense.ndim)
    block = block_shape(dense.shape, granularity, axis, block_size)
    if importance is not None:
        importance = importance_array(importance, dense.shape)
    if sparse and any(search):  # the pruned zeros are not stored: they weigh nothing
        keep = w.mask.values().view(bool)
        importance = keep.astype(np.float32) if importance is None else importance * keep
    q, scale, offset = quantize_array(dense, block, nbits, signed, mode, search, importance)
    if offset is not None:
        offset = offset.astype(q.dtype)
    if sparse:
        keep = w.mask.values().view(bool)
        return SparseQuantizedTensor(w.mask, _packed(q[keep], nbits, signed), scale, offset)
    return QuantizedTensor(_packed(q, nbits, signed), scale, offset)


def quantize_array(w: np.ndarray, block, nbits: int, signed: bool, mode: str, search=(False, False), importance=None):
    """(q int8/uint8 of w's shape, stored scale, offset float64 or None): the reference for small
    inputs without search, else the compiled kernels on a block-major view."""
    if w.size <= REFERENCE_MAX and not any(search):
        return quantize_blocks(w, block, nbits, signed, mode)
    from . import quant_kernels as qk

    qmin, qmax = _range(nbits, signed, mode)
    x2, restore = _block_major(w.view(np.uint16) if w.dtype == np.float16 else w, block)
    lo, hi = qk.minmax(x2)
    stored, offset = block_params(lo, hi, qmin, qmax, signed, mode, w.dtype)
    scale64 = stored.astype(np.float64)
    zero64 = np.zeros(lo.shape) if offset is None else offset
    if any(search):
        imp2 = np.empty((0, 0), np.float32) if importance is None else _block_major(importance, block)[0]
        kind = 0 if mode == "asymmetric" else (1 if signed else 2)
        alphas = CLIP_ALPHAS if search[0] else CLIP_ALPHAS[:0]
        refits = REFITS if search[1] else 0
        smallest = float(np.finfo(w.dtype).smallest_subnormal)
        scale64, zero64 = qk.search(x2, imp2, scale64, zero64, lo, hi, qmin, qmax, kind, alphas, refits,
                                    w.dtype == np.float16, smallest)
        offset = None if offset is None else zero64
        stored = finite_scale(scale64.astype(w.dtype), lo, hi, qmin, qmax, offset)  # a refit may round up past the rule
        scale64 = stored.astype(np.float64)
    q2 = qk.quantize(x2, scale64, zero64, qmin, qmax, np.int8 if signed else np.uint8)
    grid_scale = restore(None)
    return restore(q2), stored.reshape(grid_scale), None if offset is None else offset.reshape(grid_scale)


def _block_major(a: np.ndarray, block):
    """(view [blocks, elements per block], restore): ``restore(x2)`` puts a block-major array back in
    ``a``'s layout (``restore(None)`` gives the scale's shape). Copies only when the blocks are not
    contiguous already."""
    shape = a.shape
    grid = [n for d, b in zip(shape, block) for n in (d // b, b)]
    order = [2 * i for i in range(len(shape))] + [2 * i + 1 for i in range(len(shape))]
    counts = [d // b for d, b in zip(shape, block)]
    x2 = np.ascontiguousarray(a.reshape(grid).transpose(order)).reshape(int(np.prod(counts)), -1)
    inverse = np.argsort(order)

    def restore(y2):
        if y2 is None:
            return tuple(counts)
        back = y2.reshape([grid[i] for i in order]).transpose(inverse)
        return np.ascontiguousarray(back).reshape(shape)

    return x2, restore


def _range(nbits: int, signed: bool, mode: str) -> tuple[int, int]:
    qmin, qmax = value_range(nbits, signed)
    if mode == "symmetric":
        qmin += signed
        qmax -= not signed
    return qmin, qmax


def block_params(lo, hi, qmin: int, qmax: int, signed: bool, mode: str, dtype):
    """(stored scale of ``dtype``, offset float64 or None) per block from its float64 min and max."""
    if mode == "symmetric":
        span = 2.0 * np.maximum(-lo, hi)
        offset = None if signed else np.full(span.shape, float(qmax // 2))
    else:
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
        span = hi - lo
        safe = np.where(span > 0, span, 1.0)
        offset = np.where(span > 0, np.clip(np.round((qmin * hi - qmax * lo) / safe), qmin, qmax), 0.0)
    stored = (span / (qmax - qmin)).astype(dtype)
    stored[(stored == 0) & (span > 0)] = np.finfo(dtype).smallest_subnormal
    stored[span == 0] = 1
    return finite_scale(stored, lo, hi, qmin, qmax, offset), offset


def finite_scale(stored: np.ndarray, lo, hi, qmin: int, qmax: int, offset=None) -> np.ndarray:
    """``stored`` with each block's scale lowered, one representable step at a time, until the
    block's extreme values ``lo`` and ``hi`` (float64) quantize to codes that decode to finite
    values, ``scale * (q - offset)`` rounded to the scale's dtype (in place; returned). Every other
    value of the block lies between them, so the whole block decodes finite. Only a scale within a
    rounding step of the dtype's largest value / qmax moves: fp16 weights holding 65504
    (65504 / 127 rounds up to 516, and 127 x 516 rounds to infinity in binary16).

    >>> finite_scale(np.array([516.0], np.float16), np.array([-65504.0]), np.array([65504.0]), -127, 127).tolist()
    [515.5]
    """
    dtype = stored.dtype
    zero = np.zeros(stored.shape) if offset is None else offset
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        def overflows():
            scale = stored.astype(np.float64)
            ends = [np.clip(np.round(end / scale) + zero, qmin, qmax) - zero for end in (lo, hi)]
            return ~(np.isfinite(stored * ends[0].astype(dtype)) & np.isfinite(stored * ends[1].astype(dtype)))

        bad = overflows()
        while bad.any():
            stored[bad] = np.nextafter(stored[bad], dtype.type(0))
            bad = overflows()
    return stored


def quantize_blocks(w: np.ndarray, block: tuple[int, ...], nbits: int, signed: bool, mode: str):
    """(q int8/uint8 of w's shape, scale of w's dtype, offset float64 or None) for blocks ``block``:
    the numpy reference (float64 throughout)."""
    qmin, qmax = _range(nbits, signed, mode)
    grid_shape = [n for d, b in zip(w.shape, block) for n in (d // b, b)]
    grid = w.astype(np.float64).reshape(grid_shape)
    inner = tuple(range(1, grid.ndim, 2))
    lo = grid.min(axis=inner, keepdims=True)
    hi = grid.max(axis=inner, keepdims=True)
    stored, offset = block_params(lo, hi, qmin, qmax, signed, mode, w.dtype)
    q = np.round(grid / stored.astype(np.float64))
    if offset is not None:
        q += offset
    q = np.clip(q, qmin, qmax).astype(np.int8 if signed else np.uint8).reshape(w.shape)
    scale_shape = grid.shape[::2]
    return q, stored.reshape(scale_shape), None if offset is None else offset.reshape(scale_shape)


def _quantize_lut(t, qtype: str, mode: str, granularity: str, axis, block_size, search):
    """Quantize the LUT of a palettized tensor to int8/uint8: a ScaledLUTTensor."""
    from .scaled import ScaledLUTTensor, with_lut

    base, scale = (t.palettized, t.scale) if isinstance(t, ScaledLUTTensor) else (t, None)
    if isinstance(t, ScaledLUTTensor) and t.lut_scale is not None:
        raise WeightpackError("w's LUT is already quantized (it has a lut_scale); quantize a float LUT")
    if qtype not in ("int8", "uint8"):
        raise WeightpackError(f"dtype={qtype!r}: a LUT can be quantized to int8 or uint8 (Core ML's integer LUTs)")
    if base.lut.dtype.kind != "f":
        raise WeightpackError(f"w has a {base.lut.dtype} LUT; only a float LUT can be quantized")
    lut = base.lut
    axis = check_axis(axis, lut.ndim)
    block = block_shape(lut.shape, granularity, axis, block_size)
    q, lut_scale, offset = quantize_array(lut, block, 8, qtype == "int8", mode, search)
    offset = None if offset is None else offset.astype(q.dtype)
    return ScaledLUTTensor(with_lut(base, q), lut_scale=lut_scale, lut_offset=offset, scale=scale)


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
    name = dtype_name_of(dtype)
    if name not in QUANT_TYPES:
        raise WeightpackError(f"dtype={describe(dtype)} is unknown; allowed: {', '.join(QUANT_TYPES)} (or np.int8, np.uint8)")
    return name


def _packed(q: np.ndarray, nbits: int, signed: bool) -> NBitArray:
    """q (int8/uint8, in range) as an NBitArray, packed without the general packer's checks."""
    if nbits == 8:
        return NBitArray(freeze(np.ascontiguousarray(q).reshape(-1).view(np.uint8)), 8, q.shape, signed=signed)
    from .packing import pack_codes

    codes = (q.view(np.uint8) & 0x0F) if signed else q
    return NBitArray(pack_codes(codes, nbits), nbits, q.shape, signed=signed)
