"""The numba backend: the readable, portable second implementation, bit for bit the numpy reference.

Plain ``@njit(nogil=True, cache=True)`` kernels (``numba_decode``, ``numba_matmul``, built from
``numba_core``), compiled by LLVM for whatever CPU runs them: no intrinsics, no SIMD code of its
own (SIMD lives in the C backend). Python prepares flat contiguous buffers and a plan
(``plan.py``) as for the C backend; the kernels take only arrays and plain integers.

Decompression copies bit patterns (LUTs and values are converted to the output's dtype by numpy
first; Core ML's shift-scale is evaluated in integer-exact binary16 code where the scale is fp16)
and runs in parallel tasks over the flat elements. Fused products decode a tile of four weight
rows at a time and multiply it with every activation row (``prange`` over row groups). Layouts
without a fused kernel (vector LUTs, tables across several trailing axes) are decompressed and
multiplied, as in the C backend.

The threading layer is one that is safe to enter from several threads at once (TBB or OpenMP,
which numba ships); if only the workqueue layer exists, calls are serialized, since it is not.
``set_threads`` sets the threads of the calling thread's parallel kernels.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import threading

import numba
import numpy as np

from ..bits import NBitArray
from ..errors import WeightpackError, describe
from .numba_core import IDENTITY, decode_codes, float_to_half, half_to_float, round_half  # noqa: F401 (tests: fp16)
from .numba_decode import codes_decode, lut_vectors_decode, pack, sign_extend, sparse_decode, sparse_widen, task_starts
from .numba_matmul import matmul_rows
from .plan import matrix_plan, row_plan, row_starts


def _threading_layer() -> bool:
    """Ask numba for a thread-safe layer; return True when calls must be serialized instead."""
    if os.environ.get("NUMBA_THREADING_LAYER"):
        return os.environ["NUMBA_THREADING_LAYER"] == "workqueue"
    safe = [name for name in ("tbbpool", "omppool") if importlib.util.find_spec(f"numba.np.ufunc.{name}")]
    if safe:
        numba.config.THREADING_LAYER = "threadsafe"
    return not safe


_SERIALIZE = _threading_layer()
_LAUNCH_LOCK = threading.Lock() if _SERIALIZE else contextlib.nullcontext()


def set_threads(count: int | None = None) -> int:
    """Threads for the parallel kernels launched from the calling thread (numba's setting is
    per thread); None = every thread numba started (``NUMBA_NUM_THREADS``). Returns the count."""
    if count is None:
        count = numba.config.NUMBA_NUM_THREADS
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= numba.config.NUMBA_NUM_THREADS:
        raise WeightpackError(f"threads={describe(count)} must be an integer in [1, {numba.config.NUMBA_NUM_THREADS}]")
    numba.set_num_threads(count)
    return count


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view: numba types read-only and writable arrays apart, so kernel inputs are
    always passed read-only and each kernel compiles once per dtype."""
    view = a.view()
    view.flags.writeable = False
    return view


_NO_MASK = _readonly(np.zeros(0, np.uint8))
_NO_STARTS = _readonly(np.zeros(0, np.int64))
_NO_FLOATS = _readonly(np.zeros(0, np.float32))
_NO_HALVES = _readonly(np.zeros(0, np.uint16))
_F16_VALUES = _readonly(np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32))


def _bits(a: np.ndarray) -> np.ndarray:
    """A flat view of ``a`` as unsigned integers of its item size (kernels copy bit patterns)."""
    return a.reshape(-1).view(f"u{a.dtype.itemsize}")


def _converted(values: np.ndarray, dtype) -> np.ndarray:
    """``values`` cast to ``dtype`` as numpy casts (overflow to +-inf is the defined result)."""
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(values.astype(dtype, copy=False))


def _values(arr) -> np.ndarray:
    return arr.values(backend="numba") if isinstance(arr, NBitArray) else arr


def _mask(mask) -> np.ndarray:
    return _NO_MASK if mask is None else mask.packed


# ---- bit streams ----------------------------------------------------------------------------


def pack_bits(codes: np.ndarray, nbits: int, out: np.ndarray) -> None:
    """Pack uint8 codes (each < 2**nbits) into ``out`` (uint8, ceil(n*nbits/8) bytes)."""
    pack(_readonly(np.ascontiguousarray(codes).reshape(-1)), nbits, out)


def unpack_bits(packed: np.ndarray, nbits: int, count: int, signed: bool, out: np.ndarray) -> None:
    """Unpack ``count`` elements into ``out`` (uint8, or int8 sign-extended when ``signed``)."""
    codes = out.view(np.uint8)
    if count:
        decode_codes(_readonly(np.ascontiguousarray(packed)), 0, count, nbits, IDENTITY, 0, codes, 0)
    if signed:
        sign_extend(codes, nbits)


# ---- decompression --------------------------------------------------------------------------


def _task_starts(t, mask, total: int) -> np.ndarray:
    """Where each decompression task starts in the stored elements (kept beside the tensor)."""
    if mask is None:
        return _NO_STARTS
    return t.derived("numba_task_starts", lambda: _readonly(task_starts(mask.packed, total)))


def _lut_decompress(t, indices: NBitArray, mask, shape, out: np.ndarray) -> None:
    plan = row_plan(shape, t.lut.shape[:-2], t.vector_axis, t.vector_size)
    luts = _readonly(_bits(_converted(t.lut, out.dtype)))
    starts = _task_starts(t, mask, plan.rows * plan.cols)
    with _LAUNCH_LOCK:
        if t.vector_size == 1:
            codes_decode(indices.packed, indices.nbits, False, _mask(mask), starts, plan.rows, plan.cols,
                         plan.row_table, plan.col_block, luts, _NO_FLOATS, _NO_FLOATS, False, False, _bits(out))
        else:
            lut_vectors_decode(indices.packed, indices.nbits, _mask(mask), starts, plan.rows, plan.cols, plan.row_table,
                               plan.col_block, luts, t.vector_size, plan.row_out, plan.col_stride, plan.v_stride,
                               _bits(out))


def decompress_palettized(t, out: np.ndarray) -> None:
    _lut_decompress(t, t.indices, None, t.indices.shape, out)


def decompress_sparse_palettized(t, out: np.ndarray) -> None:
    _lut_decompress(t, t.indices_nonzero_data, t.indices_mask, t.indices_mask.shape, out)


def decompress_sparse(t, out: np.ndarray) -> None:
    values, starts = _values(t.nonzero_data), _task_starts(t, t.mask, out.size)
    with _LAUNCH_LOCK:
        if values.dtype == np.float16 and out.dtype == np.float32:  # widened in the kernel
            sparse_widen(t.mask.packed, starts, _readonly(_bits(values)), _F16_VALUES, out.reshape(-1))
        else:
            sparse_decode(t.mask.packed, starts, _readonly(_bits(_converted(values, out.dtype))), _bits(out))


def _scale_offset(t):
    """Scale and offset as float32 (exact: fp16 widens, integer offsets go through the scale's
    dtype as numpy's reference converts them), kept beside the tensor."""
    def convert():
        scale = _readonly(np.ascontiguousarray(t.scale.astype(np.float32).reshape(-1)))
        if t.offset is None:
            return scale, _NO_FLOATS
        offset = _values(t.offset).astype(t.scale.dtype).astype(np.float32)
        return scale, _readonly(np.ascontiguousarray(offset.reshape(-1)))
    return t.derived("numba_scale_offset_f32", convert)


def _half_math(t) -> tuple[bool, bool]:
    """(fp16 arithmetic?, must ``q - offset`` be rounded?): the difference is exact without
    offset or with an integer one (at most 9 bits)."""
    half = t.scale.dtype == np.float16
    return half, half and t.offset is not None and not isinstance(t.offset, NBitArray)


def _shift_scale_decompress(t, data: NBitArray, mask, out: np.ndarray) -> None:
    plan = row_plan(t.shape, t.scale.shape)
    target = _bits(out) if out.dtype == np.float16 else out.reshape(-1)  # binary16 as bits, float32 as values
    no_luts = _NO_HALVES if out.dtype == np.float16 else _NO_FLOATS
    with _LAUNCH_LOCK:
        codes_decode(data.packed, data.nbits, data.signed, _mask(mask), _task_starts(t, mask, out.size), plan.rows,
                     plan.cols, plan.row_table, plan.col_block, no_luts, *_scale_offset(t), *_half_math(t), target)


def decompress_quantized(t, out: np.ndarray) -> None:
    _shift_scale_decompress(t, t.data, None, out)


def decompress_sparse_quantized(t, out: np.ndarray) -> None:
    _shift_scale_decompress(t, t.nonzero_data, t.data_mask, out)


# ---- fused products -------------------------------------------------------------------------


def _matrix_plan(t, shape, groups):
    return t.derived("matrix_plan", lambda: matrix_plan(shape, groups))


def _row_starts(t, mask, plan) -> np.ndarray:
    if mask is None:
        return _NO_STARTS
    return _readonly(t.derived("row_starts", lambda: row_starts(mask.packed, plan.rows, plan.cols)))  # shared with C


def _matmul_decompressed(t, x: np.ndarray, y: np.ndarray) -> None:
    """Layouts without a fused kernel (vector LUTs, tables across several trailing axes):
    decompress, then multiply (the weight is materialized), as the C backend does."""
    w = np.empty(t.shape, np.float32)
    globals()[t._kernel](t, w)
    np.matmul(x, w.reshape(y.shape[1], -1).T, out=y)


def _matmul(codes, mask, starts, plan, lut, scale, offset, half_math, round_difference, values, x, y) -> None:
    nbits, signed = (codes.nbits, codes.signed) if codes is not None else (1, False)
    with _LAUNCH_LOCK:
        matmul_rows(_NO_MASK if codes is None else codes.packed, nbits, signed, _mask(mask), starts, plan.rows,
                    plan.cols, plan.row_table, plan.col_block, lut, scale, offset, half_math, round_difference, values,
                    _F16_VALUES, x, y)


def _lut_matmul(t, codes: NBitArray, mask, shape, x: np.ndarray, y: np.ndarray) -> None:
    """The product with LUT weights; ``shape`` is the indices' (dense) shape."""
    plan = _matrix_plan(t, shape, t.lut.shape[:-2])
    if plan is None or t.vector_size != 1:
        return _matmul_decompressed(t, x, y)
    lut = t.derived("lut_f32", lambda: _readonly(np.ascontiguousarray(t.lut.astype(np.float32).reshape(-1))))
    _matmul(codes, mask, _row_starts(t, mask, plan), plan, lut, _NO_FLOATS, _NO_FLOATS, False, False, _NO_FLOATS, x, y)


def matmul_palettized(t, x: np.ndarray, y: np.ndarray) -> None:
    _lut_matmul(t, t.indices, None, t.indices.shape, x, y)


def matmul_sparse_palettized(t, x: np.ndarray, y: np.ndarray) -> None:
    _lut_matmul(t, t.indices_nonzero_data, t.indices_mask, t.indices_mask.shape, x, y)


def _quant_matmul(t, codes: NBitArray, mask, x: np.ndarray, y: np.ndarray) -> None:
    plan = _matrix_plan(t, t.shape, t.scale.shape)
    if plan is None:
        return _matmul_decompressed(t, x, y)
    _matmul(codes, mask, _row_starts(t, mask, plan), plan, _NO_FLOATS, *_scale_offset(t), *_half_math(t),
            _NO_FLOATS, x, y)


def matmul_quantized(t, x: np.ndarray, y: np.ndarray) -> None:
    _quant_matmul(t, t.data, None, x, y)


def matmul_sparse_quantized(t, x: np.ndarray, y: np.ndarray) -> None:
    _quant_matmul(t, t.nonzero_data, t.data_mask, x, y)


def _sparse_values(t) -> np.ndarray:
    """Float nonzeros as stored (fp16 as its bits); integer ones converted to float32 once."""
    values = t.nonzero_data
    if isinstance(values, NBitArray) or values.dtype.kind != "f":
        values = t.derived("values_f32", lambda: _values(t.nonzero_data).astype(np.float32))
    return _readonly(values.view(np.uint16) if values.dtype == np.float16 else values)


def matmul_sparse(t, x: np.ndarray, y: np.ndarray) -> None:
    plan = _matrix_plan(t, t.shape, (1,) * len(t.shape))
    if not t.mask.packed.any():  # no values (an empty array selects the codes path)
        y[...] = 0
        return
    _matmul(None, t.mask, _row_starts(t, t.mask, plan), plan, _NO_FLOATS, _NO_FLOATS, _NO_FLOATS, False, False,
            _sparse_values(t), x, y)
