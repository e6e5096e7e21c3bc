"""The numpy backend: the reference every other backend must match bit for bit.

Kernel contracts (every backend implements some of these under the same names):

- ``pack_bits(codes, nbits, out)``: uint8 codes (< 2**nbits) into the LSB-first stream ``out``;
- ``unpack_bits(packed, nbits, count, signed, out)``: the inverse (``out`` int8 when signed);
- ``decompress_<kind>(tensor, out)`` for kind in sparse, palettized, quantized,
  sparse_palettized, sparse_quantized: write Core ML's decoded values, cast to ``out.dtype``, into
  ``out`` (shape ``tensor.shape``). The arguments are validated by the caller.
"""
from __future__ import annotations

import numpy as np

from ..bits import NBitArray


def pack_bits(codes: np.ndarray, nbits: int, out: np.ndarray) -> None:
    if nbits == 8:
        out[:] = codes
        return
    bits = np.unpackbits(codes.reshape(-1, 1), axis=1, bitorder="little")[:, :nbits]
    out[:] = np.packbits(bits.reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray, nbits: int, count: int, signed: bool, out: np.ndarray) -> None:
    if nbits == 8:
        codes = packed
    else:
        bits = np.unpackbits(packed, bitorder="little")[: count * nbits].reshape(count, nbits)
        codes = np.packbits(bits, axis=1, bitorder="little").reshape(count)
    if signed:
        wide = codes.astype(np.int16)
        codes = np.where(wide >= 1 << (nbits - 1), wide - (1 << nbits), wide)
    out[:] = codes


def values(arr) -> np.ndarray:
    """A stored array's decoded values (NBitArrays are unpacked)."""
    return arr.values(backend="numpy") if isinstance(arr, NBitArray) else arr


def scatter(mask: NBitArray, nonzero: np.ndarray) -> np.ndarray:
    """Dense array of ``mask``'s shape: ``nonzero`` at set bits in row-major order, zero elsewhere."""
    dense = np.zeros(mask.shape, nonzero.dtype)
    dense[mask.values(backend="numpy").astype(bool)] = nonzero
    return dense


def group_ids(shape, group_shape) -> np.ndarray:
    """For each position p of ``shape``, the flat index of its block ``p // (shape / group_shape)``."""
    ids = np.zeros((1,) * len(shape), np.int64)
    for axis, (dim, groups) in enumerate(zip(shape, group_shape)):
        coord = np.arange(dim) // (dim // groups)
        ids = ids * groups + coord.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    return ids


def lut_to_dense(indices: np.ndarray, lut: np.ndarray, vector_axis) -> np.ndarray:
    """Look up every index in the LUT of its group; vectors expand along ``vector_axis``."""
    tables = lut.reshape(-1, lut.shape[-2], lut.shape[-1])
    looked_up = tables[group_ids(indices.shape, lut.shape[:-2]), indices]  # shape S + (V,)
    if vector_axis is None:
        return looked_up[..., 0]
    out_shape = list(indices.shape)
    out_shape[vector_axis] *= lut.shape[-1]
    return np.moveaxis(looked_up, -1, vector_axis + 1).reshape(out_shape)


def shift_scale(data: np.ndarray, scale: np.ndarray, offset) -> np.ndarray:
    """``scale * (data - offset)`` per block, every step rounded to the scale's dtype."""
    x = data.astype(scale.dtype)
    for axis, (dim, blocks) in enumerate(zip(data.shape, scale.shape)):
        if dim != blocks:
            scale = np.repeat(scale, dim // blocks, axis)
            if offset is not None:
                offset = np.repeat(offset, dim // blocks, axis)
    with np.errstate(over="ignore", invalid="ignore"):  # IEEE results (inf, and inf * 0 = NaN) are the definition (SPEC.md §5)
        if offset is not None:
            x = x - offset.astype(scale.dtype)
        return scale * x


def _store(out: np.ndarray, values: np.ndarray) -> None:
    """Cast into ``out`` (round to nearest even; overflow to +-inf is the defined result)."""
    with np.errstate(over="ignore"):
        out[...] = values


def decompress_sparse(t, out: np.ndarray) -> None:
    _store(out, scatter(t.mask, values(t.nonzero_data)))


def decompress_palettized(t, out: np.ndarray) -> None:
    _store(out, lut_to_dense(t.indices.values(backend="numpy"), t.lut, t.vector_axis))


def decompress_quantized(t, out: np.ndarray) -> None:
    offset = None if t.offset is None else values(t.offset)
    _store(out, shift_scale(t.data.values(backend="numpy"), t.scale, offset))


def expand_mask(mask: NBitArray, vector_axis, vector_size: int) -> np.ndarray:
    """The boolean mask, repeated ``vector_size`` times along ``vector_axis`` for vector LUTs."""
    dense = mask.values(backend="numpy").astype(bool)
    return dense if vector_axis is None else np.repeat(dense, vector_size, axis=vector_axis)


def decompress_sparse_palettized(t, out: np.ndarray) -> None:
    indices = scatter(t.indices_mask, t.indices_nonzero_data.values(backend="numpy"))
    dense = lut_to_dense(indices, t.lut, t.vector_axis)
    keep = expand_mask(t.indices_mask, t.vector_axis, t.vector_size)
    _store(out, np.where(keep, dense, np.zeros((), dense.dtype)))


def decompress_sparse_quantized(t, out: np.ndarray) -> None:
    offset = None if t.offset is None else values(t.offset)
    dense = shift_scale(scatter(t.data_mask, t.nonzero_data.values(backend="numpy")), t.scale, offset)
    keep = t.data_mask.values(backend="numpy").astype(bool)
    _store(out, np.where(keep, dense, np.zeros((), dense.dtype)))


def _matmul(t, x: np.ndarray, y: np.ndarray) -> None:
    """Reference product: decompress to float32, then x @ W.T (BLAS)."""
    w = np.empty(t.shape, np.float32)
    globals()[t._kernel](t, w)
    np.matmul(x, w.reshape(y.shape[1], -1).T, out=y)


matmul_sparse = matmul_palettized = matmul_quantized = _matmul
matmul_sparse_palettized = matmul_sparse_quantized = _matmul
