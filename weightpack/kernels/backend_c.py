"""The C backend: kernels compiled from csrc/ and called through cffi (the GIL is released).

Python prepares flat contiguous buffers and a row plan (see ``plan.py``); the C code checks every
size again before it reads or writes.
"""
from __future__ import annotations

import numpy as np

from .._c import buffer, check, ffi, lib
from ..bits import NBitArray
from .plan import row_plan

_NULL = ffi.NULL


def pack_bits(codes: np.ndarray, nbits: int, out: np.ndarray) -> None:
    """Pack uint8 codes (each < 2**nbits) into ``out`` (uint8, ceil(n*nbits/8) bytes)."""
    status = lib.wp_pack_bits(buffer(codes), codes.size, nbits, buffer(out, writable=True), out.size)
    check(status, "pack_bits")


def unpack_bits(packed: np.ndarray, nbits: int, count: int, signed: bool, out: np.ndarray) -> None:
    """Unpack ``count`` elements into ``out`` (uint8, or int8 sign-extended when ``signed``)."""
    status = lib.wp_unpack_bits(
        buffer(packed), packed.size, count, nbits, int(signed), buffer(out, writable=True), out.size
    )
    check(status, "unpack_bits")


def _converted(values: np.ndarray, dtype) -> np.ndarray:
    """``values`` cast to ``dtype`` as numpy casts (overflow to +-inf is the defined result)."""
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(values.astype(dtype, copy=False))


def _int64(array: np.ndarray):
    return buffer(array, "long long[]")


def _lut_decode(indices: NBitArray, mask, plan, lut: np.ndarray, vector_axis, out: np.ndarray) -> None:
    table = _converted(lut, out.dtype)
    mask_buf, mask_len = (_NULL, 0) if mask is None else (buffer(mask.packed), mask.packed.size)
    status = lib.wp_lut_decode(
        buffer(indices.packed), indices.packed.size, indices.nbits,
        mask_buf, mask_len,
        plan.rows, plan.cols, _int64(plan.row_table), plan.col_block,
        buffer(table), plan.n_tables, lut.shape[-2], lut.shape[-1], out.dtype.itemsize,
        _int64(plan.row_out), plan.col_stride, plan.v_stride,
        buffer(out, writable=True), out.size,
    )
    check(status, "lut_decode")


def decompress_palettized(t, out: np.ndarray) -> None:
    plan = row_plan(t.indices.shape, t.group_shape, t.vector_axis, t.vector_size)
    _lut_decode(t.indices, None, plan, t.lut, t.vector_axis, out)


def decompress_sparse_palettized(t, out: np.ndarray) -> None:
    plan = row_plan(t.indices_mask.shape, t.lut.shape[:-2], t.vector_axis, t.vector_size)
    _lut_decode(t.indices_nonzero_data, t.indices_mask, plan, t.lut, t.vector_axis, out)


def decompress_sparse(t, out: np.ndarray) -> None:
    data = t.nonzero_data.values(backend="c") if isinstance(t.nonzero_data, NBitArray) else t.nonzero_data
    values = _converted(data, out.dtype)
    status = lib.wp_sparse_decode(
        buffer(t.mask.packed), t.mask.packed.size, out.size,
        buffer(values), values.size, out.dtype.itemsize,
        buffer(out, writable=True), out.size,
    )
    check(status, "sparse_decode")


def _shift_scale_decode(data: NBitArray, mask, shape, scale, offset, out: np.ndarray) -> None:
    plan = row_plan(shape, scale.shape)
    scale = np.ascontiguousarray(scale)
    if offset is not None:
        values = offset.values(backend="c") if isinstance(offset, NBitArray) else offset
        offset = np.ascontiguousarray(values.astype(scale.dtype))
    mask_buf, mask_len = (_NULL, 0) if mask is None else (buffer(mask.packed), mask.packed.size)
    status = lib.wp_shift_scale_decode(
        buffer(data.packed), data.packed.size, data.nbits, int(data.signed),
        mask_buf, mask_len,
        plan.rows, plan.cols, _int64(plan.row_table), plan.col_block,
        buffer(scale), _NULL if offset is None else buffer(offset), plan.n_tables,
        int(scale.dtype == np.float16),
        buffer(out, writable=True), out.size, int(out.dtype == np.float16),
    )
    check(status, "shift_scale_decode")


def decompress_quantized(t, out: np.ndarray) -> None:
    _shift_scale_decode(t.data, None, t.shape, t.scale, t.offset, out)


def decompress_sparse_quantized(t, out: np.ndarray) -> None:
    _shift_scale_decode(t.nonzero_data, t.data_mask, t.shape, t.scale, t.offset, out)
