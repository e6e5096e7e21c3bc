"""The C backend: kernels compiled from csrc/ and called through cffi (the GIL is released).

Python prepares flat contiguous buffers and a row plan (see ``plan.py``); the C code checks every
size again before it reads or writes.
"""
from __future__ import annotations

import os

import numpy as np

from .._c import buffer, check, ffi, lib, status as lib_status
from ..bits import NBitArray
from ..errors import WeightpackError, describe
from . import require_finite
from .plan import matrix_plan, row_plan, row_starts

_NULL = ffi.NULL


def _level_names() -> tuple[str, ...]:
    names, level = [], 0
    while (name := lib.wp_simd_level_name(level)) != _NULL:
        names.append(ffi.string(name).decode())
        level += 1
    return tuple(names)


SIMD_LEVELS = _level_names()  # this architecture's levels, lowest first
"""x86_64: scalar, avx2, avx512, avx512fp16; aarch64: scalar, neon, fp16, dotprod."""
THREADING = ffi.string(lib.wp_threading()).decode()
"""How the C kernels run threads: "pool" (weightpack's own) or "openmp" (chosen at build time)."""
COMPILER = ffi.string(lib.wp_compiler()).decode()
"""The compiler that built the C kernels, e.g. "gcc 12.2.0"."""


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def simd_levels() -> tuple[str, ...]:
    """Every level this CPU can run, lowest first (the tests run each of them)."""
    return SIMD_LEVELS[: lib.wp_cpu_simd_level() + 1]


def set_simd(name: str | None = None) -> str:
    """Use SIMD level ``name`` (one of :func:`simd_levels`; None = the best this CPU has).

    Returns the level in force. ``WEIGHTPACK_SIMD`` sets it when weightpack loads. A level this CPU
    lacks is refused (it would stop the process with an illegal instruction).
    """
    if name is None:
        return SIMD_LEVELS[lib.wp_set_simd_level(-1)]
    if name not in simd_levels():
        what = "is unknown" if name not in SIMD_LEVELS else "needs instructions this CPU lacks"
        raise WeightpackError(f"SIMD level {describe(name)} {what}; this CPU has {simd_levels()}")
    return SIMD_LEVELS[lib.wp_set_simd_level(SIMD_LEVELS.index(name))]


def fast_mode_runs() -> bool:
    """Whether fast mode (int8 activations, integer dot products) has kernels at the level in force."""
    return 0 <= lib.wp_fast_min_level() <= lib.wp_simd_level()


def fast_mode_uses_amx() -> bool:
    """Whether fast mode runs batches of 16 and more on AMX tiles (bf16) at the level in force:
    a CPU with AMX-BF16 at the avx512fp16 level, on Linux."""
    return bool(lib.wp_fast_amx_available())


def set_threads(count: int | None = None) -> int:
    """Threads for the C kernels (None = the CPUs this process may use); ``WEIGHTPACK_NUM_THREADS``
    sets it when weightpack loads. Returns the count in force."""
    if count is None:
        count = _cpu_count()
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise WeightpackError(f"threads={describe(count)} must be a positive integer")
    return lib.wp_set_threads(count)


def threads() -> int:
    """Threads the C kernels use now (see :func:`set_threads`)."""
    return lib.wp_threads()


def _configure_from_environment() -> None:
    set_simd(os.environ.get("WEIGHTPACK_SIMD") or None)
    threads = os.environ.get("WEIGHTPACK_NUM_THREADS")
    if threads is not None and not threads.isdigit():
        raise WeightpackError(f"WEIGHTPACK_NUM_THREADS={threads!r} must be a positive integer")
    set_threads(int(threads) if threads else None)
    spin = os.environ.get("WEIGHTPACK_SPIN_US")  # read by csrc/parallel.c: validated here
    if spin and not (spin.isdigit() and int(spin) <= 1_000_000):
        raise WeightpackError(f"WEIGHTPACK_SPIN_US={spin!r} must be a whole number of microseconds, 0 to 1000000")


_configure_from_environment()


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


def _lut_decode(t, indices: NBitArray, mask, plan, lut: np.ndarray, vector_axis, out: np.ndarray) -> None:
    table = _converted(lut, out.dtype)
    planes = None
    if out.dtype == np.float32 and lut.shape[-1] == 1:
        planes = t.derived("lut_half_planes", lambda: _half_planes(t.lut))
    mask_buf, mask_len = (_NULL, 0) if mask is None else (buffer(mask.packed), mask.packed.size)
    status = lib.wp_lut_decode(
        buffer(indices.packed), indices.packed.size, indices.nbits,
        mask_buf, mask_len,
        plan.rows, plan.cols, _int64(plan.row_table), plan.col_block,
        buffer(table),
        _NULL if planes is None else buffer(planes[0]), _NULL if planes is None else buffer(planes[1]),
        plan.n_tables, lut.shape[-2], lut.shape[-1], out.dtype.itemsize,
        _int64(plan.row_out), plan.col_stride, plan.v_stride,
        buffer(out, writable=True), out.size,
    )
    check(status, "lut_decode")


def decompress_palettized(t, out: np.ndarray) -> None:
    plan = row_plan(t.indices.shape, t.group_shape, t.vector_axis, t.vector_size)
    _lut_decode(t, t.indices, None, plan, t.lut, t.vector_axis, out)


def decompress_sparse_palettized(t, out: np.ndarray) -> None:
    plan = row_plan(t.indices_mask.shape, t.lut.shape[:-2], t.vector_axis, t.vector_size)
    _lut_decode(t, t.indices_nonzero_data, t.indices_mask, plan, t.lut, t.vector_axis, out)


def decompress_sparse(t, out: np.ndarray) -> None:
    data = t.nonzero_data.values(backend="c") if isinstance(t.nonzero_data, NBitArray) else t.nonzero_data
    widen_half = data.dtype == np.float16 and out.dtype == np.float32  # converted inside the kernel
    values = data if widen_half else _converted(data, out.dtype)
    status = lib.wp_sparse_decode(
        buffer(t.mask.packed), t.mask.packed.size, out.size,
        buffer(values), values.size, values.dtype.itemsize, int(widen_half),
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


# ---- fused products -------------------------------------------------------------------------

def _matrix_plan(t, shape, groups):
    return t.derived("matrix_plan", lambda: matrix_plan(shape, groups))


def _row_starts(t, mask: NBitArray, plan):
    return t.derived("row_starts", lambda: row_starts(mask.packed, plan.rows, plan.cols))


def _decompressed_product(t):
    """Layouts without a fused kernel (vector LUTs, tables across several trailing axes):
    decompress with the C decoder, then multiply (the weight is materialized)."""
    decode = globals()[t._kernel]

    def run(x: np.ndarray, y: np.ndarray) -> None:
        require_finite(x)
        w = np.empty(t.shape, np.float32)
        decode(t, w)
        np.matmul(x, w.reshape(y.shape[1], -1).T, out=y)

    return run


def _runner(function, what: str, *weight_args):
    """run(x, y): ``function(*weight_args, x, x.size, batch, y, y.size)``, the weight's buffers
    prepared once (cffi pointers keep their arrays alive)."""
    from_buffer = ffi.from_buffer

    def run(x: np.ndarray, y: np.ndarray) -> None:
        status = function(*weight_args, from_buffer("float[]", x), x.size, x.shape[0],
                          from_buffer("float[]", y, require_writable=True), y.size)
        if status:
            check(status, what)

    return run


def _half_planes(lut: np.ndarray):
    """The LUT as binary16 low-byte and high-byte planes (tables x max(64, entries) bytes each),
    or None when some value is not exactly a binary16 (then the kernels use float32 tables)."""
    entries = lut.shape[-2]
    with np.errstate(over="ignore"):
        half = lut.reshape(-1, entries).astype(np.float16)
    if not np.array_equal(half.astype(lut.dtype), lut.reshape(-1, entries)):
        return None
    stride = max(64, entries)
    planes = np.zeros((2, half.shape[0], stride), np.uint8)
    bits = half.view(np.uint16)
    planes[0, :, :entries] = bits & 0xFF
    planes[1, :, :entries] = bits >> 8
    return planes


def _mask_args(t, mask, plan):
    if mask is None:
        return _NULL, 0, _NULL
    return buffer(mask.packed), mask.packed.size, _int64(_row_starts(t, mask, plan))


def _lut_product(t, codes: NBitArray, mask, groups):
    plan = _matrix_plan(t, codes.shape if mask is None else mask.shape, groups)
    if plan is None or t.vector_size != 1:
        return _decompressed_product(t)
    lut = t.derived("lut_f32", lambda: np.ascontiguousarray(t.lut.astype(np.float32).reshape(-1)))
    planes = t.derived("lut_half_planes", lambda: _half_planes(t.lut))
    return _runner(
        lib.wp_lut_matvec, "lut_matvec",
        buffer(codes.packed), codes.packed.size, codes.nbits,
        *_mask_args(t, mask, plan),
        plan.rows, plan.cols, _int64(plan.row_table), plan.col_block,
        buffer(lut, "float[]"),
        _NULL if planes is None else buffer(planes[0]), _NULL if planes is None else buffer(planes[1]),
        plan.n_tables,
    )


def _quant_product(t, codes: NBitArray, mask):
    plan = _matrix_plan(t, t.shape, t.scale.shape)
    if plan is None:
        return _decompressed_product(t)
    scale = np.ascontiguousarray(t.scale)
    offset = _NULL
    if t.offset is not None:
        def convert():
            values = t.offset.values(backend="c") if isinstance(t.offset, NBitArray) else t.offset
            return np.ascontiguousarray(values.astype(scale.dtype))

        offset = buffer(t.derived("offset_in_scale_dtype", convert))
    return _runner(
        lib.wp_quant_matvec, "quant_matvec",
        buffer(codes.packed), codes.packed.size, codes.nbits, int(codes.signed),
        *_mask_args(t, mask, plan),
        plan.rows, plan.cols, _int64(plan.row_table), plan.col_block,
        buffer(scale), offset, plan.n_tables, int(scale.dtype == np.float16),
    )


def _sparse_product(t):
    plan = _matrix_plan(t, t.shape, (1,) * len(t.shape))
    values = t.nonzero_data
    if isinstance(values, NBitArray) or values.dtype.kind != "f":
        values = t.derived("values_f32", lambda: t.nonzero_data.values(backend="c").astype(np.float32)
                           if isinstance(t.nonzero_data, NBitArray) else t.nonzero_data.astype(np.float32))
    return _runner(
        lib.wp_sparse_matvec, "sparse_matvec",
        buffer(t.mask.packed), t.mask.packed.size, _int64(_row_starts(t, t.mask, plan)),
        plan.rows, plan.cols, buffer(values), values.nbytes, int(values.dtype == np.float16),
    )


_EXACT_PRODUCTS = {
    "palettized": lambda t: _lut_product(t, t.indices, None, t.group_shape),
    "sparse_palettized": lambda t: _lut_product(t, t.indices_nonzero_data, t.indices_mask, t.lut.shape[:-2]),
    "quantized": lambda t: _quant_product(t, t.data, None),
    "sparse_quantized": lambda t: _quant_product(t, t.nonzero_data, t.data_mask),
    "sparse": _sparse_product,
}


# ---- fast mode: int8 activations, integer dot products ----------------------------------------

def _fast_tables_lut(lut: np.ndarray):
    """Each (scalar) LUT quantized to int8 per table, biased to unsigned bytes, 16 per table."""
    tables = lut.reshape(-1, lut.shape[-2]).astype(np.float64)
    amax = np.abs(tables).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 0.0)
    codes = np.rint(tables / np.where(scale > 0, scale, 1.0)[:, None]).astype(np.int16) + 128
    repeated = codes[:, np.arange(16) % tables.shape[1]].astype(np.uint8)
    return np.ascontiguousarray(repeated), scale.astype(np.float32), np.full(len(scale), 128.0, np.float32)


def _fast_tables_quant(t):
    """Per-table scale and bias (2**(n-1) for signed codes, plus the integer offset); no biases
    without an offset (the kernel knows the codes' own)."""
    scale = np.ascontiguousarray(t.scale.reshape(-1), np.float32)
    if t.offset is None:
        return None, scale, None
    bias = np.full(t.scale.size, float(1 << (t.data.nbits - 1)) if t.data.signed else 0.0)
    bias = bias + t.offset.values(backend="c").reshape(-1).astype(np.float64)
    return None, scale, bias.astype(np.float32)


def _fast_runner(t, codes: NBitArray, plan, tables, exact):
    """run(x, y) in fast mode; the exact product where the kernel declines (CPU level in force,
    layout) at call time."""
    table_u8, table_scale, table_bias = tables
    args = (
        buffer(codes.packed), codes.packed.size, codes.nbits, int(codes.signed),
        plan.rows, plan.cols, _int64(plan.row_table), plan.col_block,
        _NULL if table_u8 is None else buffer(table_u8), buffer(table_scale, "float[]"),
        _NULL if table_bias is None else buffer(table_bias, "float[]"),
        plan.n_tables,
    )
    function, from_buffer, declined = lib.wp_fast_matvec, ffi.from_buffer, (lib_status.NOT_AVAILABLE, lib_status.ARG)

    def run(x: np.ndarray, y: np.ndarray) -> None:
        status = function(*args, from_buffer("float[]", x), x.size, x.shape[0],
                          from_buffer("float[]", y, require_writable=True), y.size)
        if status in declined:
            exact(x, y)
        elif status:
            check(status, "fast_matvec")

    return run


def _fast_product(t, exact):
    """Fast mode for LUTs of <= 16 scalar entries (LUT rounded to int8 per table) and 4/8-bit codes
    with integer (or no) offsets; None when the layout is not covered."""
    kind = t._kernel.removeprefix("decompress_")
    if kind == "palettized" and t.vector_size == 1 and t.nbits in (1, 2, 4):
        plan = _matrix_plan(t, t.indices.shape, t.group_shape)
        if plan is not None:
            return _fast_runner(t, t.indices, plan, t.derived("fast_lut_tables", lambda: _fast_tables_lut(t.lut)), exact)
    if kind == "quantized" and (t.offset is None or isinstance(t.offset, NBitArray)):
        plan = _matrix_plan(t, t.shape, t.scale.shape)
        if plan is not None:
            return _fast_runner(t, t.data, plan, t.derived("fast_quant_tables", lambda: _fast_tables_quant(t)), exact)
    return None


def prepare_matmul(t, mode: str = "exact"):
    """run(x, y): ``y = x @ W.T`` for float32 C-contiguous ``x`` (batch, in) and ``y`` (batch, out),
    with every buffer of the weight prepared once (callers keep it: see kernels.product)."""
    exact = _EXACT_PRODUCTS[t._kernel.removeprefix("decompress_")](t)
    if mode == "fast":
        return _fast_product(t, exact) or exact
    return exact


def _matmul(t, x: np.ndarray, y: np.ndarray) -> None:
    prepare_matmul(t)(x, y)


matmul_palettized = matmul_sparse_palettized = matmul_quantized = matmul_sparse_quantized = matmul_sparse = _matmul
