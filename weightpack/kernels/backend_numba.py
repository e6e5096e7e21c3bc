"""The numba backend: the C backend's kernels as numba JIT code, bit for bit the numpy reference.

Python prepares flat contiguous buffers and a row plan (``plan.py``), as for the C backend; the
``@njit(nogil=True, cache=True)`` kernels take only arrays and plain integers. numba has no usable
float16, so fp16 travels as uint16 bit patterns converted by exact integer code (half to float
exactly, float to half round to nearest even, NaNs as numpy converts them), and Core ML's fp16
shift-scale rounds each step to fp16 that way.

Fused products split blocks of rows over threads with ``prange``; decompression splits rows
into chunks of 8192 columns, each starting at its own stream element (popcounts of the mask
before it). The threading layer is one that is safe to enter from several threads at once (TBB
or OpenMP, which numba ships); if only the workqueue layer exists, calls are serialized, since
it is not.

On CPUs with AVX-512 (VBMI), the kernels of csrc/*_avx512.c are written as LLVM IR through
numba intrinsics, each a whole loop (numba has no vector types): 64 codes of any width come to
one byte each (vpermb + vpmultishiftqb), sparse steps expand them under 64 mask bits
(vpexpandb), and tables are looked up in registers (vpermps / vpermi2ps on float32 tables,
vpermb / vpermi2b on binary16 byte planes); Core ML's shift-scale runs 16 lanes at a time with
vcvtps2ph rounding, which is the same correctly rounded conversion as the integer code. Dense
1/2/4-bit products meet phase-split activations as the C kernels do. Elements outside whole
steps, CPUs without AVX-512 and ``set_simd("scalar")`` (``WEIGHTPACK_SIMD=scalar``) use the
portable kernels (dense quantized rows there decode 16 weights at a time into lanes LLVM
vectorizes). Layouts without a fused kernel (vector LUTs, tables across several trailing axes)
are decompressed and multiplied, as in the C backend.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import threading

import llvmlite.binding
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ..bits import NBitArray
from . import backend_numpy
from ..errors import WeightpackError, describe
from .plan import matrix_plan, row_plan, row_starts

SIMD_LEVELS = ("scalar", "avx512")
ROW_BLOCK = 16  # rows per parallel work item
BATCH_TILE = 8  # activations per pass over a weight row in the portable kernels


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
# AVX-512 with byte permutes (VBMI) and byte/word expands (VBMI2), as the intrinsics below use
_AVX512_FEATURES = ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vbmi", "avx512vbmi2")
_HOST_AVX512 = all(llvmlite.binding.get_host_cpu_features().get(name, False) for name in _AVX512_FEATURES)
_simd = "scalar"


def set_simd(name: str | None = None) -> str:
    """Use SIMD level ``name`` ('scalar' or 'avx512'; None = the best this CPU has); returns the
    level in force (a level the CPU lacks falls back to 'scalar')."""
    global _simd
    if name is not None and name not in SIMD_LEVELS:
        raise WeightpackError(f"SIMD level {describe(name)} is unknown; allowed: {SIMD_LEVELS}")
    _simd = "avx512" if _HOST_AVX512 and name in (None, "avx512") else "scalar"
    return _simd


def simd_levels() -> tuple[str, ...]:
    """Every level this CPU can run, lowest first."""
    return SIMD_LEVELS if _HOST_AVX512 else SIMD_LEVELS[:1]


set_simd("scalar" if os.environ.get("WEIGHTPACK_SIMD") in ("scalar", "avx2") else None)  # no AVX2 path here

_jit = numba.njit(nogil=True, cache=True)
_parallel = numba.njit(nogil=True, cache=True, parallel=True)

# ---- bit patterns and fp16 ------------------------------------------------------------------


@intrinsic
def _f32_bits(typingctx, value):
    """The bits of a float32, as uint32."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, bits):
    """The float32 whose bits are ``bits`` (uint32)."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@_jit
def half_to_float(h):
    """IEEE binary16 bits -> float32, exact."""
    h = np.int64(h)
    sign = (h & 0x8000) << 16
    exponent = (h >> 10) & 0x1F
    mantissa = h & 0x3FF
    if exponent == 0:  # zero or subnormal: mantissa * 2**-24, exact in float32
        f = np.float32(mantissa) * np.float32(2.0**-24)
        return -f if sign else f
    bits = 0x7F800000 | (mantissa << 13) if exponent == 31 else ((exponent + 112) << 23) | (mantissa << 13)
    return _bits_f32(np.uint32(sign | bits))


@_jit
def float_to_half(f):
    """float32 -> IEEE binary16 bits, round to nearest even; NaNs as numpy converts them.
    Without branches, in 32-bit integers, so loops of it vectorize."""
    u32 = np.uint32
    bits = _f32_bits(f)
    a = u32(bits & u32(0x7FFFFFFF))
    normal = u32(u32(a - u32(0x38000000) + u32(0xFFF) + u32(u32(a >> u32(13)) & u32(1))) >> u32(13))  # rebias, round
    tiny = u32(_f32_bits(_bits_f32(a) + np.float32(0.5)) - u32(0x3F000000))  # below 2**-14: round at 2**-24
    nan = u32(u32(0x7C00) + u32(u32(a & u32(0x7FFFFF)) >> u32(13)))
    nan = u32(nan + u32(1)) if nan == u32(0x7C00) else nan
    big = nan if a > u32(0x7F800000) else u32(0x7C00)  # NaN, or infinity from 65520 up
    h = tiny if a < u32(0x38800000) else (normal if a < u32(0x47800000) else big)
    return u32(u32(u32(bits >> u32(16)) & u32(0x8000)) | h)


@_jit
def round_half(f):
    """``f`` rounded to the nearest binary16 value, as float32: ``half_to_float(float_to_half(f))``
    computed on the float32 bits without branches, in 32-bit integers, so loops of it vectorize."""
    u32 = np.uint32
    bits = _f32_bits(f)
    a = u32(bits & u32(0x7FFFFFFF))
    normal = u32(u32(a + u32(0xFFF) + u32(u32(a >> u32(13)) & u32(1))) & u32(0x7FFFE000))  # half to even at bit 13
    tiny = _f32_bits((_bits_f32(a) + np.float32(0.5)) - np.float32(0.5))  # to a multiple of 2**-24
    nan = u32(a & u32(0x7FFFE000))
    nan = u32(nan | u32(0x2000)) if nan == u32(0x7F800000) else nan  # as numpy narrows NaNs
    r = tiny if a < u32(0x38800000) else (normal if normal < u32(0x47800000) else u32(0x7F800000))
    return _bits_f32(u32(u32(bits ^ a) | (nan if a > u32(0x7F800000) else r)))


def _put(out, e, w):
    """Store float32 ``w`` at ``out[e]``: as fp16 bits when ``out`` is uint16."""


@overload(_put, inline="always")
def _put_overload(out, e, w):
    if out.dtype == types.uint16:
        def put_half(out, e, w):
            out[e] = float_to_half(w)
        return put_half

    def put_float(out, e, w):
        out[e] = w
    return put_float


def _value(values, k):
    """Element ``k`` of ``values`` as float32: fp16 bits (uint16) are converted."""


@overload(_value, inline="always")
def _value_overload(values, k):
    if values.dtype == types.uint16:
        return lambda values, k: half_to_float(values[k])
    return lambda values, k: np.float32(values[k])


# ---- bit streams ----------------------------------------------------------------------------


@_jit
def read_bits(stream, k, nbits):
    """Element ``k`` of an LSB-first ``nbits``-bit stream."""
    bit = k * nbits
    p = bit >> 3
    shift = bit & 7
    v = np.int64(stream[p])
    if shift + nbits > 8:
        v |= np.int64(stream[p + 1]) << 8
    return (v >> shift) & ((1 << nbits) - 1)


@_jit
def code_value(code, nbits, signed):
    """An n-bit code as a signed (two's complement) or unsigned integer."""
    return code - (1 << nbits) if signed and code >> (nbits - 1) else code


@_jit
def mask_bit(mask, e):
    return (np.int64(mask[e >> 3]) >> (e & 7)) & 1


@_jit
def _pack(codes, nbits, out):
    out[:] = 0
    low = (1 << nbits) - 1
    for i in range(codes.size):
        bit = i * nbits
        p = bit >> 3
        v = (np.int64(codes[i]) & low) << (bit & 7)
        out[p] |= v & 0xFF
        if v > 0xFF:
            out[p + 1] |= v >> 8


@_jit
def _unpack(packed, nbits, count, signed, out):
    for i in range(count):
        out[i] = code_value(read_bits(packed, i, nbits), nbits, signed)


def pack_bits(codes: np.ndarray, nbits: int, out: np.ndarray) -> None:
    """Pack uint8 codes (each < 2**nbits) into ``out`` (uint8, ceil(n*nbits/8) bytes)."""
    _pack(_readonly(np.ascontiguousarray(codes)), nbits, out)


def unpack_bits(packed: np.ndarray, nbits: int, count: int, signed: bool, out: np.ndarray) -> None:
    """Unpack ``count`` elements into ``out`` (uint8, or int8 sign-extended when ``signed``)."""
    _unpack(_readonly(np.ascontiguousarray(packed)), nbits, count, signed, out)


# ---- Core ML's arithmetic -------------------------------------------------------------------


@_jit
def _dequantize(q, sc, of, half_math, round_difference):
    """Core ML's shift-scale of integer q: ``sc * (q - of)`` (``of`` is 0 without offset), each
    step rounded to fp16 when ``half_math`` (``sc`` and ``of`` hold fp16 values as float32). The
    rounding of ``q - of`` may be skipped (``round_difference`` False) where it is exact: no
    offset or an integer one."""
    d = np.float32(q) - of
    if round_difference:
        d = round_half(d)
    return round_half(sc * d) if half_math else sc * d


@_jit
def _code_float(code, nbits, signed):
    """A 4- or 8-bit code (an unsigned integer) as float32, read as two's complement when
    ``signed``: shifted to the top of an int8, converted, scaled back (exact)."""
    if not signed:
        return np.float32(code)
    shift = 8 - nbits
    return np.float32(np.int8(np.int64(code) << shift)) * np.float32(1.0 / (1 << shift))


@_jit
def _quant_code(codes, k, nbits, signed):
    """Element ``k`` of a 4- or 8-bit stream of quantized codes, as float32."""
    if nbits == 8:
        return _code_float(codes[np.uint64(k)], 8, signed)  # unsigned: no negative-index fix-up
    return _code_float((np.int64(codes[np.uint64(k >> 1)]) >> ((k & 1) * 4)) & 15, 4, signed)


# ---- AVX-512 building blocks: LLVM IR emitted by small Python helpers ------------------------
#
# Intrinsics below are whole loops: numba has no vector types, so everything between loading
# codes and storing (or summing) results stays inside one intrinsic. They are compiled only when
# the CPU has AVX-512 (VBMI for byte permutes), through kernels that only that level calls.

_F32, _I64 = ir.FloatType(), ir.IntType(64)
_I1, _I8, _I16, _I32 = ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32)
_HALF = ir.HalfType()
_V16F, _V16I, _V16H = ir.VectorType(_F32, 16), ir.VectorType(_I32, 16), ir.VectorType(_HALF, 16)
_V64B, _V32W = ir.VectorType(_I8, 64), ir.VectorType(_I16, 32)


def _int64_args(context, builder, sig, args):
    """Arguments as (array structs, int64 values), in order."""
    out = []
    for ty, value in zip(sig.args, args):
        if isinstance(ty, types.Array):
            out.append(context.make_array(ty)(context, builder, value))
        else:
            out.append(context.cast(builder, value, ty, types.int64))
    return out


def _i64(value):
    return ir.Constant(_I64, value)


def _ptr(builder, array, index, vtype):
    """A pointer to ``vtype`` at element ``index`` of ``array``."""
    return builder.bitcast(builder.gep(array.data, [index]), vtype.as_pointer())


def _load(builder, array, index, vtype):
    """An unaligned load of ``vtype`` from element ``index`` of ``array``."""
    return builder.load(_ptr(builder, array, index, vtype), align=1)


def _store(builder, value, array, index):
    """An unaligned store of vector ``value`` at element ``index`` of ``array``."""
    builder.store(value, _ptr(builder, array, index, value.type), align=1)


def _splat(vtype, value):
    return ir.Constant(vtype, [value] * vtype.count)


def _splat_value(builder, value, count):
    """A vector of ``count`` copies of the runtime scalar ``value``."""
    vtype = ir.VectorType(value.type, count)
    one = builder.insert_element(ir.Constant(vtype, None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vtype, None), ir.Constant(ir.VectorType(_I32, count), [0] * count))


def _call(builder, name, ret, *args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, args)


def _lanes(builder, vector, first, count):
    """Lanes [first, first + count) of ``vector``."""
    idx = ir.Constant(ir.VectorType(_I32, count), list(range(first, first + count)))
    return builder.shuffle_vector(vector, ir.Constant(vector.type, None), idx)


def _bits_to_lanes(builder, bits, count):
    """The low ``count`` bits of integer ``bits`` as a vector of i1."""
    if bits.type.width != count:
        bits = builder.trunc(bits, ir.IntType(count))
    return builder.bitcast(bits, ir.VectorType(_I1, count))


def _first_lanes(builder, count, lanes):
    """A mask of ``lanes`` i1 whose first ``count`` (0 <= count <= lanes) are set."""
    ones = builder.sub(builder.shl(_i64(1), builder.and_(count, _i64(63))), _i64(1))
    bits = builder.select(builder.icmp_signed(">=", count, _i64(64)), _i64(-1), ones)
    return _bits_to_lanes(builder, bits, lanes)


def _type_suffix(vtype):
    elem = vtype.element
    name = "f32" if isinstance(elem, ir.FloatType) else "f16" if isinstance(elem, ir.HalfType) else f"i{elem.width}"
    return f"v{vtype.count}{name}"


def _masked_load(builder, ptr, vtype, lanes_mask):
    """The lanes of ``lanes_mask`` loaded from ``ptr`` (a pointer to ``vtype``), zero elsewhere;
    the other lanes' memory is never read."""
    return _call(builder, f"llvm.masked.load.{_type_suffix(vtype)}.p0", vtype, ptr, ir.Constant(_I32, 1),
                 lanes_mask, ir.Constant(vtype, None))


def _expand(builder, vector, lanes_mask):
    """Consecutive lanes of ``vector`` moved to the set lanes of ``lanes_mask``, zero elsewhere
    (vpexpandb/w/d, vexpandps)."""
    vtype = vector.type
    return _call(builder, f"llvm.x86.avx512.mask.expand.{_type_suffix(vtype)}", vtype, vector,
                 ir.Constant(vtype, None), lanes_mask)


def _popcount(builder, bits):
    return builder.zext(_call(builder, f"llvm.ctpop.i{bits.type.width}", bits.type, bits), _I64)


def _round_half(builder, v):
    """Each float32 lane rounded to binary16 and back (vcvtps2ph + vcvtph2ps, round to nearest even)."""
    return builder.fpext(builder.fptrunc(v, _V16H), _V16F)


def _fma(builder, a, b, c):
    return _call(builder, "llvm.fma.v16f32", _V16F, a, b, c)


def _sum_lanes(builder, vectors):
    """The float sum of every lane of ``vectors`` (added lane-wise first)."""
    total = vectors[0]
    for vec in vectors[1:]:
        total = builder.fadd(total, vec)
    result = ir.Constant(_F32, 0.0)
    for lane in range(16):
        result = builder.fadd(result, builder.extract_element(total, ir.Constant(_I32, lane)))
    return result


def _if_value(builder, cond, value, then):
    """``then(value)`` where the i1 ``cond`` holds, else ``value``: a branch, so the work is
    skipped (for loop-invariant flags the branch always goes the same way)."""
    return _choose(builder, cond, lambda: then(value), lambda: value)


def _choose(builder, cond, if_true, if_false):
    """``if_true()`` where the i1 ``cond`` holds, else ``if_false()``, on separate branches."""
    with builder.if_else(cond) as (then, otherwise):
        with then:
            a = if_true()
            block_a = builder.block
        with otherwise:
            b = if_false()
            block_b = builder.block
    phi = builder.phi(a.type)
    phi.add_incoming(a, block_a)
    phi.add_incoming(b, block_b)
    return phi


def _loop(builder, count, body, state):
    """Run ``state = body(index, state)`` ``count`` times (state: a list of IR values kept in
    stack slots, which LLVM promotes to registers); returns the final state."""
    slots = [cgutils.alloca_once_value(builder, value) for value in state]
    with cgutils.for_range(builder, count) as loop:
        new = body(loop.index, [builder.load(slot) for slot in slots])
        for slot, value in zip(slots, new):
            builder.store(value, slot)
    return [builder.load(slot) for slot in slots]


class _Codes:
    """Reads 64 consecutive n-bit codes (``nbits`` a runtime value, 1..8) one per byte: the
    n * 8 bytes behind them are spread one qword per 8 codes (vpermb) and each code is cut out
    at its bit offset (vpmultishiftqb), as csrc/avx512_common.h does."""

    def __init__(self, builder, codes, nbits):
        self.codes, self.nbits = codes, nbits
        n8 = builder.trunc(nbits, _I8)
        qwords = ir.Constant(_V64B, [q for q in range(8) for _ in range(8)])
        within = ir.Constant(_V64B, [i for _ in range(8) for i in range(8)])
        self.spread = builder.add(builder.mul(qwords, _splat_value(builder, n8, 64)), within)
        low = builder.trunc(builder.sub(builder.shl(_i64(1), nbits), _i64(1)), _I8)
        self.low = _splat_value(builder, low, 64)
        self.shifts = builder.mul(nbits, _i64(0x0706050403020100))

    def load(self, builder, k):
        """Codes k .. k + 63 (bytes past the stream's end read as zero codes)."""
        bit = builder.mul(k, self.nbits)
        byte, s = builder.ashr(bit, _i64(3)), builder.and_(bit, _i64(7))
        need = builder.ashr(builder.add(builder.add(s, builder.mul(self.nbits, _i64(64))), _i64(7)), _i64(3))
        have = builder.sub(self.codes.nitems, byte)
        count = builder.select(builder.icmp_signed("<", have, need), have, need)
        count = builder.select(builder.icmp_signed("<", count, _i64(0)), _i64(0), count)
        raw = _masked_load(builder, _ptr(builder, self.codes, byte, _V64B), _V64B, _first_lanes(builder, count, 64))
        spread = _call(builder, "llvm.x86.avx512.permvar.qi.512", _V64B, raw, self.spread)
        control = builder.add(builder.mul(s, _i64(0x0101010101010101)), self.shifts)
        control = builder.bitcast(_splat_value(builder, control, 8), _V64B)
        cut = _call(builder, "llvm.x86.avx512.pmultishift.qb.512", _V64B, control, spread)
        return builder.and_(cut, self.low)


def _mask_bits(builder, mask, e, width):
    """``width`` (16 or 64) mask bits from element ``e`` on (``e`` a multiple of 8)."""
    return builder.load(_ptr(builder, mask, builder.ashr(e, _i64(3)), ir.IntType(width)), align=1)


def _quarter_indices(builder, codes, q):
    """Codes 16q .. 16q + 15 of 64 byte codes as int32 lanes."""
    return builder.zext(_lanes(builder, codes, 16 * q, 16), _V16I)


def _keep16(builder, bits, q, w):
    """``w`` (16 float32 of quarter ``q`` of a step) zeroed where the mask bits are clear."""
    keep = _bits_to_lanes(builder, builder.lshr(bits, _i64(16 * q)), 16)
    return builder.select(keep, w, _splat(_V16F, 0.0))


class _FloatTable:
    """A float32 table of up to 64 entries (``tables[start:start + 64]``) in four registers,
    looked up 16 indices at a time: vpermps for <= 16 entries, two vpermi2ps and a blend for
    more (``wide``)."""

    def __init__(self, builder, tables, start):
        self.regs = [_load(builder, tables, builder.add(start, _i64(16 * i)), _V16F) for i in range(4)]

    def lookup(self, builder, idx, wide):
        if not wide:
            return _call(builder, "llvm.x86.avx512.permvar.sf.512", _V16F, self.regs[0], idx)
        r = self.regs
        low = _call(builder, "llvm.x86.avx512.vpermi2var.ps.512", _V16F, r[0], idx, r[1])
        high = _call(builder, "llvm.x86.avx512.vpermi2var.ps.512", _V16F, r[2], idx, r[3])
        upper = builder.icmp_unsigned("!=", builder.and_(idx, _splat(_V16I, 32)), _splat(_V16I, 0))
        return builder.select(upper, high, low)

    def weights(self, builder, codes64, is_wide, bits):
        """Four registers of 16 float32 for 64 byte codes (zero where the mask bits are clear);
        the i1 ``is_wide`` picks the lookup of more than 16 entries."""
        out = []
        for q in range(4):
            idx = _quarter_indices(builder, codes64, q)
            w = _choose(builder, is_wide, lambda: self.lookup(builder, idx, True),
                        lambda: self.lookup(builder, idx, False))
            out.append(_keep16(builder, bits, q, w))
        return out


class _Planes:
    """A table of up to 256 two-byte values (``words[start:start + 256]``) as low-byte and
    high-byte planes cut in registers, looked up 64 byte codes at a time: vpermb for <= 64
    entries, vpermi2b pairs and a blend for more."""

    INTERLEAVE = [[i // 2 + 64 * (i % 2) + 32 * h for i in range(64)] for h in range(2)]

    def __init__(self, builder, words, start):
        self.lo, self.hi = [], []
        for i in range(4):
            w = _load(builder, words, builder.add(start, _i64(64 * i)), ir.VectorType(_I16, 64))
            self.lo.append(builder.trunc(w, _V64B))
            self.hi.append(builder.trunc(builder.lshr(w, _splat(w.type, 8)), _V64B))

    @staticmethod
    def _plane(builder, regs, codes, wide):
        if not wide:
            return _call(builder, "llvm.x86.avx512.permvar.qi.512", _V64B, regs[0], codes)
        low = _call(builder, "llvm.x86.avx512.vpermi2var.qi.512", _V64B, regs[0], codes, regs[1])
        high = _call(builder, "llvm.x86.avx512.vpermi2var.qi.512", _V64B, regs[2], codes, regs[3])
        return builder.select(builder.icmp_signed("<", codes, _splat(_V64B, 0)), high, low)

    def lookup(self, builder, codes, wide, keep=None):
        """(low bytes, high bytes) of 64 codes' values; lanes outside ``keep`` (<64 x i1>) zero."""
        planes = [self._plane(builder, regs, codes, wide) for regs in (self.lo, self.hi)]
        if keep is not None:
            planes = [builder.select(keep, plane, _splat(_V64B, 0)) for plane in planes]
        return planes

    @classmethod
    def words(cls, builder, lo, hi):
        """Two registers of 32 two-byte values each, in order, from the planes."""
        order = [ir.Constant(ir.VectorType(_I32, 64), cls.INTERLEAVE[h]) for h in range(2)]
        return [builder.shuffle_vector(lo, hi, o) for o in order]

    @classmethod
    def floats(cls, builder, lo, hi):
        """Four registers of 16 float32 from binary16 planes (vcvtph2ps, exact)."""
        out = []
        for word in cls.words(builder, lo, hi):
            halves = builder.bitcast(word, ir.VectorType(_HALF, 32))
            out += [builder.fpext(_lanes(builder, halves, 16 * i, 16), _V16F) for i in range(2)]
        return out


def _shift_scale16(builder, q, sc, of, half_math, round_difference):
    """Core ML's shift-scale of 16 integer codes (int32 lanes) with broadcast scale and offset
    (float32 vectors; the offset zero without one): each step rounded to binary16 when the i1
    flags say so, as ``_dequantize``. ``half_math`` may instead be a Python bool, known when
    compiling: then no branch is emitted (``round_difference`` only matters with it)."""
    v = builder.fsub(builder.sitofp(q, _V16F), of)
    if half_math is False:
        return builder.fmul(sc, v)
    v = _if_value(builder, round_difference, v, lambda v: _round_half(builder, v))
    v = builder.fmul(sc, v)
    if half_math is True:
        return _round_half(builder, v)
    return _if_value(builder, half_math, v, lambda v: _round_half(builder, v))


def _signed_codes(builder, q, nbits, signed):
    """n-bit codes (int32 lanes) read as two's complement when the i1 ``signed`` holds."""
    top = _splat_value(builder, builder.trunc(builder.shl(_i64(1), builder.sub(nbits, _i64(1))), _I32), 16)
    return builder.select(_splat_value(builder, signed, 16), builder.sub(builder.xor(q, top), top), q)


def _truth(builder, value):
    return builder.icmp_signed("!=", value, _i64(0))


class _ShiftScale:
    """Core ML's shift-scale of 64 codes a step, the table (scale and offset) advancing every
    ``col_block`` columns (a multiple of 16, so each 16 lanes share one). ``half_math`` is a
    Python bool (a kernel per arithmetic), the other flags int64 IR values; ``offset`` holds
    zeros without an offset."""

    def __init__(self, nbits, signed, scale, offset, col_block, half_math, round_difference):
        self.nbits, self.signed, self.scale, self.offset, self.col_block = nbits, signed, scale, offset, col_block
        self.half_math, self.round_difference = half_math, round_difference

    def weights(self, builder, codes64, col, state, bits):
        """(four registers of 16 float32 for the step from column ``col``, zero where the mask
        bits are clear; the new state). ``state`` = [table of the last column seen, the column
        where the next table starts]."""
        t, block_end = state
        flags = [_truth(builder, self.signed), self.half_math, _truth(builder, self.round_difference)]
        out = []
        for q in range(4):
            first = builder.add(col, _i64(16 * q))
            advance = builder.zext(builder.icmp_signed(">=", first, block_end), _I64)
            t = builder.add(t, advance)
            block_end = builder.add(block_end, builder.mul(advance, self.col_block))
            sc = _splat_value(builder, builder.load(builder.gep(self.scale.data, [t])), 16)
            of = _splat_value(builder, builder.load(builder.gep(self.offset.data, [t])), 16)
            q32 = _signed_codes(builder, _quarter_indices(builder, codes64, q), self.nbits, flags[0])
            out.append(_keep16(builder, bits, q, _shift_scale16(builder, q32, sc, of, *flags[1:])))
        return out, [t, block_end]


# ---- decompression: AVX-512 steps of 64 elements ---------------------------------------------


def _step_mask(builder, masked, mask, e):
    """(the 64 mask bits at element ``e``, all ones where the i1 ``masked`` is false; how many
    stream elements they take)."""
    bits = _choose(builder, masked, lambda: _mask_bits(builder, mask, e, 64), lambda: _i64(-1))
    return bits, _popcount(builder, bits)


def _code_steps(builder, codes, nbits, mask, e, count, k, step, state=()):
    """Run ``state = step(at, bits, codes64, state)`` over ``count`` steps of 64 elements from
    element ``e`` (stream element ``k`` on): ``at`` is the step's first element past ``e``,
    ``bits`` its mask bits (all ones when dense), ``codes64`` its codes in element order (zero
    where the mask is clear). An empty ``mask`` means dense. Returns [the next stream element,
    *the final state]."""
    reader = _Codes(builder, codes, nbits)
    masked = builder.icmp_signed("!=", mask.nitems, _i64(0))

    def body(i, state):
        k, rest = state[0], state[1:]
        at = builder.mul(i, _i64(64))
        bits, taken = _step_mask(builder, masked, mask, builder.add(e, at))
        codes64 = _if_value(builder, masked, reader.load(builder, k),
                            lambda codes: _expand(builder, codes, _bits_to_lanes(builder, bits, 64)))
        return [builder.add(k, taken), *step(at, bits, codes64, rest)]

    return _loop(builder, count, body, [k, *state])


@intrinsic
def _lut_steps(typingctx, codes, nbits, mask, e, count, k, words, t, es, out, o):
    """``steps(codes, nbits, mask, e, steps, k, words, t, es, out, o) -> k``: decode ``steps`` x
    64 elements from element ``e`` (stream element ``k`` on; under the mask bits from ``e``
    unless ``mask`` is empty) into ``out`` (bytes) from element ``o``, as ``es``-byte values
    (1, 2, or 4 = float32 from binary16) of the table ``words[t:t + 256]`` (two-byte values);
    returns the next stream element."""
    sig = types.int64(codes, nbits, mask, e, count, k, words, t, es, out, o)

    def codegen(context, builder, sig, args):
        codes, nbits, mask, e, count, k, words, t, es, out, o = _int64_args(context, builder, sig, args)
        table = _Planes(builder, words, t)
        is_wide = builder.icmp_signed(">", nbits, _i64(6))

        def step(at, bits, codes64, state):
            oo = builder.add(o, at)
            keep = _bits_to_lanes(builder, bits, 64)
            both = _choose(builder, is_wide, lambda: _pack2(builder, table.lookup(builder, codes64, True, keep)),
                           lambda: _pack2(builder, table.lookup(builder, codes64, False, keep)))
            lo_v, hi_v = _lanes(builder, both, 0, 64), _lanes(builder, both, 64, 64)
            with builder.if_else(builder.icmp_signed("==", es, _i64(1))) as (one, more):
                with one:
                    _store(builder, lo_v, out, oo)
                with more:
                    words = _Planes.words(builder, lo_v, hi_v)
                    with builder.if_else(builder.icmp_signed("==", es, _i64(2))) as (two, four):
                        with two:
                            base = builder.mul(oo, _i64(2))
                            _store(builder, words[0], out, base)
                            _store(builder, words[1], out, builder.add(base, _i64(64)))
                        with four:
                            base = builder.mul(oo, _i64(4))
                            for q, w in enumerate(_Planes.floats(builder, lo_v, hi_v)):
                                _store(builder, w, out, builder.add(base, _i64(64 * q)))
            return state

        return _code_steps(builder, codes, nbits, mask, e, count, k, step)[0]

    return sig, codegen


def _pack2(builder, pair):
    """Two <64 x i8> as one <128 x i8> (to carry both through one phi)."""
    lo, hi = pair
    return builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(_I32, 128), list(range(128))))


@intrinsic
def _lut_f32_steps(typingctx, codes, nbits, mask, e, count, k, tables, t, out, o):
    """``steps(codes, nbits, mask, e, steps, k, tables, t, out, o) -> k``: as the plane steps,
    for float32 output from a float32 table of <= 64 entries at ``tables[t]``."""
    sig = types.int64(codes, nbits, mask, e, count, k, tables, t, out, o)

    def codegen(context, builder, sig, args):
        codes, nbits, mask, e, count, k, tables, t, out, o = _int64_args(context, builder, sig, args)
        table = _FloatTable(builder, tables, t)
        is_wide = builder.icmp_signed(">", nbits, _i64(4))

        def step(at, bits, codes64, state):
            base = builder.mul(builder.add(o, at), _i64(4))
            for q, w in enumerate(table.weights(builder, codes64, is_wide, bits)):
                _store(builder, w, out, builder.add(base, _i64(64 * q)))
            return state

        return _code_steps(builder, codes, nbits, mask, e, count, k, step)[0]

    return sig, codegen


def _make_quant_steps(half: bool):
    """Intrinsic ``steps(codes, nbits, signed, mask, e, steps, k, scale, offset, t, j, col_block,
    round_difference, out_half, out, o) -> k``: Core ML's shift-scale of ``steps`` x 64
    elements of a row, from column ``j`` (whose table is ``t``; the table advances every
    ``col_block`` columns, a multiple of 16), in binary16 arithmetic when ``half``, written as
    float32 or binary16 (``out_half``)."""

    @intrinsic
    def steps(typingctx, codes, nbits, signed, mask, e, count, k, scale, offset, t, j, col_block, round_difference,
              out_half, out, o):
        sig = types.int64(codes, nbits, signed, mask, e, count, k, scale, offset, t, j, col_block,
                          round_difference, out_half, out, o)

        def codegen(context, builder, sig, args):
            (codes, nbits, signed, mask, e, count, k, scale, offset, t, j, col_block,
             round_difference, out_half, out, o) = _int64_args(context, builder, sig, args)
            out_half = _truth(builder, out_half)
            block_end = builder.mul(builder.add(builder.sdiv(j, col_block), _i64(1)), col_block)
            arith = _ShiftScale(nbits, signed, scale, offset, col_block, half, round_difference)

            def step(at, bits, codes64, state):
                weights, state = arith.weights(builder, codes64, builder.add(j, at), state, bits)
                for q, w in enumerate(weights):
                    first = builder.add(o, builder.add(at, _i64(16 * q)))
                    with builder.if_else(out_half) as (to_half, to_single):
                        with to_half:
                            _store(builder, builder.bitcast(builder.fptrunc(w, _V16H), ir.VectorType(_I16, 16)),
                                   out, builder.mul(first, _i64(2)))
                        with to_single:
                            _store(builder, w, out, builder.mul(first, _i64(4)))
                return state

            return _code_steps(builder, codes, nbits, mask, e, count, k, step, [t, block_end])[0]

        return sig, codegen

    return steps


@intrinsic
def _sparse_steps(typingctx, mask, e, count, k, values, es, widen, out, o):
    """``steps(mask, e, steps, k, values, es, widen, out, o) -> k``: ``steps`` x 64 elements from
    element ``e``: the stored values (``es`` bytes each, from value ``k`` on) at the set mask
    bits, zero elsewhere, written to ``out`` (bytes) from element ``o``; binary16 values widen
    to float32 when ``widen`` (vcvtph2ps, exact)."""
    sig = types.int64(mask, e, count, k, values, es, widen, out, o)

    def codegen(context, builder, sig, args):
        mask, e, count, k, values, es, widen, out, o = _int64_args(context, builder, sig, args)
        widen = _truth(builder, widen)

        def part(k, bits, lanes, elem, store):
            """Expand ``lanes`` values of type ``elem`` under ``bits``; ``store(vector)``."""
            vtype = ir.VectorType(elem, lanes)
            take = _popcount(builder, bits)
            start = builder.mul(k, es)
            first = _first_lanes(builder, take, lanes)
            loaded = _masked_load(builder, _ptr(builder, values, start, vtype), vtype, first)
            store(_expand(builder, loaded, _bits_to_lanes(builder, bits, lanes)))
            return builder.add(k, take)

        def body(i, state):
            (k,) = state
            ee, oo = builder.add(e, builder.mul(i, _i64(64))), builder.add(o, builder.mul(i, _i64(64)))
            bits = _mask_bits(builder, mask, ee, 64)
            slot = cgutils.alloca_once_value(builder, k)
            with builder.if_else(builder.icmp_signed("==", es, _i64(1))) as (one, more):
                with one:
                    builder.store(part(k, bits, 64, _I8, lambda v: _store(builder, v, out, oo)), slot)
                with more:
                    with builder.if_else(builder.icmp_signed("==", es, _i64(2))) as (two, four):
                        with two:
                            kk = k
                            for h in range(2):
                                half_bits = builder.and_(builder.lshr(bits, _i64(32 * h)), _i64(0xFFFFFFFF))
                                first = builder.add(oo, _i64(32 * h))

                                def store_words(v, first=first):
                                    with builder.if_else(widen) as (wide, plain):
                                        with wide:
                                            halves = builder.bitcast(v, ir.VectorType(_HALF, 32))
                                            for g in range(2):
                                                w = builder.fpext(_lanes(builder, halves, 16 * g, 16), _V16F)
                                                at = builder.mul(builder.add(first, _i64(16 * g)), _i64(4))
                                                _store(builder, w, out, at)
                                        with plain:
                                            _store(builder, v, out, builder.mul(first, _i64(2)))

                                kk = part(kk, half_bits, 32, _I16, store_words)
                            builder.store(kk, slot)
                        with four:
                            kk = k
                            for q in range(4):
                                q_bits = builder.and_(builder.lshr(bits, _i64(16 * q)), _i64(0xFFFF))
                                first = builder.mul(builder.add(oo, _i64(16 * q)), _i64(4))
                                kk = part(kk, q_bits, 16, _I32, lambda v, first=first: _store(builder, v, out, first))
                            builder.store(kk, slot)
            return [builder.load(slot)]

        return _loop(builder, count, body, [k])[0]

    return sig, codegen




# ---- decompression: chunked runners ----------------------------------------------------------

DECODE_CHUNK = 8192  # columns of a row per parallel task (a multiple of 64)


@intrinsic
def _mask_word(typingctx, mask, byte):
    """Eight bytes of ``mask`` from ``byte`` on, as a little-endian uint64 (portable IR)."""
    sig = types.uint64(mask, byte)

    def codegen(context, builder, sig, args):
        mask, byte = _int64_args(context, builder, sig, args)
        return builder.load(_ptr(builder, mask, byte, _I64), align=1)

    return sig, codegen


@intrinsic
def _popcount64(typingctx, word):
    sig = types.int64(types.uint64)

    def codegen(context, builder, sig, args):
        return _popcount(builder, args[0])

    return sig, codegen


@_jit
def _set_bits(mask, e0, e1):
    """Set bits of ``mask`` in [e0, e1): a word at a time between the byte-aligned edges."""
    n, e = 0, e0
    while e < e1 and e & 7:
        n += mask_bit(mask, e)
        e += 1
    while e + 64 <= e1:
        n += _popcount64(_mask_word(mask, e >> 3))
        e += 64
    while e < e1:
        n += mask_bit(mask, e)
        e += 1
    return n


@_jit
def _chunk_starts(mask, rows, cols, chunk):
    """The first stream element of every task (rows x chunks of ``chunk`` columns), and the total:
    every element's with an empty ``mask``, else the set bits before the task's first element."""
    per_row = (cols + chunk - 1) // chunk
    starts = np.empty(rows * per_row + 1, np.int64)
    starts[0] = 0
    for task in range(rows * per_row):
        e = task // per_row * cols + task % per_row * chunk
        end = e + min(chunk, cols - task % per_row * chunk)
        starts[task + 1] = starts[task] + (_set_bits(mask, e, end) if mask.size else end - e)
    return starts


@_jit
def _lut_scalar(codes, nbits, mask, e, count, k, table, first, out, o):
    """Elements [e, e + count) of a scalar-LUT tensor one by one, into ``out[o:]``; returns the
    next stream element."""
    for i in range(count):
        if mask.size and not mask_bit(mask, e + i):
            out[o + i] = 0
        else:
            out[o + i] = table[first + read_bits(codes, k, nbits)]
            k += 1
    return k


@_parallel
def _lut_decode_avx512(codes, nbits, mask, rows, cols, row_table, col_block, words, tables, use_tables, es,
                       table, row_out, out, out_bytes):
    """A scalar-LUT tensor (rows start on whole mask bytes) in chunks of a row over threads: whole
    64-element steps inside one table through byte planes of ``words`` (or float32 ``tables`` of
    64 entries when ``use_tables``), the rest one by one from ``table``."""
    per_row = (cols + DECODE_CHUNK - 1) // DECODE_CHUNK
    starts = _chunk_starts(mask, rows, cols, DECODE_CHUNK)
    entries = 1 << nbits
    for task in prange(rows * per_row):
        r = task // per_row
        j = task % per_row * DECODE_CHUNK
        j1 = min(cols, j + DECODE_CHUNK)
        k = starts[task]
        while j < j1:
            block = j // col_block
            end = min(j1, (block + 1) * col_block)
            t = row_table[r] + block
            if mask.size and (r * cols + j) & 7:  # masked steps start on a mask byte
                lead = min(end - j, 8 - ((r * cols + j) & 7))
                k = _lut_scalar(codes, nbits, mask, r * cols + j, lead, k, table, t * entries, out, row_out[r] + j)
                j += lead
            e, o, steps = r * cols + j, row_out[r] + j, (end - j) >> 6
            if steps and use_tables:
                k = _lut_f32_steps(codes, nbits, mask, e, steps, k, tables, t * 64, out_bytes, o)
            elif steps:
                k = _lut_steps(codes, nbits, mask, e, steps, k, words, t * 256, es, out_bytes, o)
            j += steps * 64
            k = _lut_scalar(codes, nbits, mask, r * cols + j, end - j, k, table, t * entries, out, row_out[r] + j)
            j = end


@_jit
def _quant_scalar(codes, nbits, signed, mask, e, count, k, scale, offset, t0, j, col_block, half_math,
                  round_difference, out):
    """Elements [e, e + count) of a row of shift-scale codes one by one (column ``j`` first; the
    row's first table ``t0``); returns the next stream element."""
    for i in range(count):
        w = np.float32(0)
        if not mask.size or mask_bit(mask, e + i):
            t = t0 + (j + i) // col_block
            q = _quant_code(codes, k, nbits, signed)
            w = _dequantize(q, scale[t], offset[t], half_math, round_difference)
            k += 1
        _put(out, e + i, w)
    return k


_quant_steps, _quant_steps_half = _make_quant_steps(False), _make_quant_steps(True)


@_parallel
def _quant_decode_avx512(codes, nbits, signed, mask, rows, cols, row_table, col_block, scale, offset, half_math,
                         round_difference, out_half, out, out_bytes):
    """Core ML's shift-scale of every code (``col_block`` a multiple of 16; rows start on whole
    mask bytes) in chunks of a row over threads, 64 elements per step, the rest one by one."""
    per_row = (cols + DECODE_CHUNK - 1) // DECODE_CHUNK
    starts = _chunk_starts(mask, rows, cols, DECODE_CHUNK)
    for task in prange(rows * per_row):
        r = task // per_row
        j = task % per_row * DECODE_CHUNK
        j1 = min(cols, j + DECODE_CHUNK)
        k = starts[task]
        e, steps, t = r * cols + j, (j1 - j) >> 6, row_table[r] + j // col_block
        if steps and half_math:
            k = _quant_steps_half(codes, nbits, signed, mask, e, steps, k, scale, offset, t, j, col_block,
                                  round_difference, out_half, out_bytes, e)
        elif steps:
            k = _quant_steps(codes, nbits, signed, mask, e, steps, k, scale, offset, t, j, col_block,
                             round_difference, out_half, out_bytes, e)
        j += steps * 64
        _quant_scalar(codes, nbits, signed, mask, r * cols + j, j1 - j, k, scale, offset, row_table[r], j, col_block,
                      half_math, round_difference, out)


@_parallel
def _sparse_decode_avx512(mask, count, values, value_bytes, es, widen, out, out_bytes):
    """``values`` in order at the set bits of ``mask``, zero elsewhere, in chunks over threads:
    64 elements per step by masked expands, the rest one by one (binary16 widened to float32
    when ``widen``; otherwise bits are copied)."""
    starts = _chunk_starts(mask, 1, count, DECODE_CHUNK)
    for task in prange((count + DECODE_CHUNK - 1) // DECODE_CHUNK):
        e = task * DECODE_CHUNK
        end = min(count, e + DECODE_CHUNK)
        steps = (end - e) >> 6
        k = _sparse_steps(mask, e, steps, starts[task], value_bytes, es, widen, out_bytes, e)
        for i in range(e + steps * 64, end):
            if mask_bit(mask, i):
                if widen:
                    out[i] = half_to_float(values[k])
                else:
                    out[i] = values[k]
                k += 1
            else:
                out[i] = 0


# ---- decompression --------------------------------------------------------------------------


@_jit
def _lut_decode(indices, nbits, mask, rows, cols, row_table, col_block, table, entries, vsize,
                row_out, col_stride, v_stride, out):
    """Look every index up in its block's table; element bits are copied (``table`` and ``out``
    share an unsigned dtype). With a nonempty ``mask``, indices are stored for set bits only."""
    k = 0
    for r in range(rows):
        for s in range(cols // col_block):
            first = (row_table[r] + s) * entries
            for j in range(s * col_block, (s + 1) * col_block):
                o = row_out[r] + j * col_stride
                if mask.size and not mask_bit(mask, r * cols + j):
                    for v in range(vsize):
                        out[o + v * v_stride] = 0
                    continue
                src = (first + read_bits(indices, k, nbits)) * vsize
                k += 1
                for v in range(vsize):
                    out[o + v * v_stride] = table[src + v]


@_jit
def _sparse_decode(mask, values, out):
    """``values`` in order at the set bits of ``mask``, zero elsewhere (bits copied)."""
    k = 0
    for e in range(out.size):
        if mask_bit(mask, e):
            out[e] = values[k]
            k += 1
        else:
            out[e] = 0


@_jit
def _dequantize_run(data, e0, count, nbits, signed, sc, of, half_math, round_difference, out):
    """``out[e] =`` the shift-scale of dense code e, for e in [e0, e0 + count): a loop per code
    width, which LLVM unswitches on the flags and vectorizes."""
    if nbits == 8:
        for e in range(e0, e0 + count):
            q = _quant_code(data, e, 8, signed)
            _put(out, np.uint64(e), _dequantize(q, sc, of, half_math, round_difference))
    else:
        for e in range(e0, e0 + count):
            q = _quant_code(data, e, 4, signed)
            _put(out, np.uint64(e), _dequantize(q, sc, of, half_math, round_difference))


@_jit
def _shift_scale_decode(data, nbits, signed, mask, rows, cols, row_table, col_block, scale, offset,
                        half_math, round_difference, out):
    """Core ML's shift-scale of every code, block by block; with a nonempty ``mask``, codes are
    stored for set bits only and the other elements are zero."""
    k = 0
    for r in range(rows):
        for s in range(cols // col_block):
            t = row_table[r] + s
            sc, of = scale[t], offset[t] if offset.size else np.float32(0)
            e0 = r * cols + s * col_block
            if not mask.size:
                _dequantize_run(data, e0, col_block, nbits, signed, sc, of, half_math, round_difference, out)
                continue
            for e in range(e0, e0 + col_block):
                w = np.float32(0)
                if mask_bit(mask, e):
                    w = _dequantize(_quant_code(data, k, nbits, signed), sc, of, half_math, round_difference)
                    k += 1
                _put(out, e, w)


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view: numba types read-only and writable arrays apart, so kernel inputs are
    always passed read-only and each kernel compiles once per dtype."""
    view = a.view()
    view.flags.writeable = False
    return view


_NO_MASK = _readonly(np.zeros(0, np.uint8))
_NO_TABLE = np.zeros(0, np.float32)
_NO_OFFSET = np.zeros(0, np.float32)


def _bits_view(a: np.ndarray) -> np.ndarray:
    """A flat view of ``a`` as unsigned integers of its item size (kernels copy bit patterns)."""
    return a.reshape(-1).view(f"u{a.dtype.itemsize}")


def _input_bits(a: np.ndarray) -> np.ndarray:
    return _readonly(_bits_view(a))


def _mask(mask) -> np.ndarray:
    return _NO_MASK if mask is None else mask.packed


def _values(arr) -> np.ndarray:
    return arr.values(backend="numba") if isinstance(arr, NBitArray) else arr


def _converted(values: np.ndarray, dtype) -> np.ndarray:
    """``values`` cast to ``dtype`` as numpy casts (overflow to +-inf is the defined result)."""
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(values.astype(dtype, copy=False))


def _byte_view(out: np.ndarray) -> np.ndarray:
    return out.reshape(-1).view(np.uint8)


def _lut_tables64(t) -> np.ndarray:
    """Every (scalar) LUT as float32, padded to 64 entries."""
    def pad():
        tables = _lut_f32(t).reshape(-1, t.lut.shape[-2])
        padded = np.zeros((tables.shape[0], 64), np.float32)
        padded[:, : tables.shape[1]] = tables
        return padded.reshape(-1)
    return t.derived("numba_lut64", pad)


def _table_words(values: np.ndarray) -> np.ndarray:
    """Tables (one per row of ``values``, 1- or 2-byte values) as their bits in 256 uint16 words each."""
    words = np.zeros((values.shape[0], 256), np.uint16)
    words[:, : values.shape[1]] = values.view(f"u{values.itemsize}")
    return _readonly(words.reshape(-1))


def _lut_words(t, dtype):
    """Every (scalar) LUT converted to ``dtype`` as 256 words of its bits, float32 as binary16
    (None when some value is not exactly a binary16)."""
    dtype = np.dtype(dtype)

    def build():
        values = _converted(t.lut.reshape(-1, t.lut.shape[-2]), dtype)
        if dtype == np.float32:
            half = values.astype(np.float16)
            if not np.array_equal(half.astype(np.float32).view(np.uint32), values.view(np.uint32)):
                return None
            values = half
        return _table_words(values)
    return t.derived(f"numba_words_{dtype.name}", build)


def _quant_words(t, data: NBitArray) -> np.ndarray:
    """For 8-bit codes with binary16 arithmetic: every block's 256 decoded values (computed by
    the numpy reference) as binary16 words, so the codes decode as an 8-bit LUT."""
    def build():
        blocks = t.scale.size
        codes = np.arange(256, dtype=np.uint8)
        codes = np.broadcast_to(codes.view(np.int8) if data.signed else codes, (blocks, 256))
        offset = None if t.offset is None else _values(t.offset).reshape(blocks, 1)
        with np.errstate(over="ignore"):
            return _table_words(backend_numpy.shift_scale(codes, t.scale.reshape(blocks, 1), offset))
    return t.derived("numba_quant_words", build)


def _quant_as_lut(t, data: NBitArray, plan) -> bool:
    """Whether 8-bit codes decode through a table of every code's value: binary16 arithmetic
    (two roundings per weight) over blocks long enough to repay 256 values (as the C backend)."""
    return data.nbits == 8 and t.scale.dtype == np.float16 and plan.col_block >= 1024


_NO_WORDS = _readonly(np.zeros(0, np.uint16))


def _lut_decompress(t, indices: NBitArray, mask, shape, out) -> None:
    lut, vector_size = t.lut, t.vector_size
    plan = row_plan(shape, lut.shape[:-2], t.vector_axis, vector_size)
    table = _input_bits(_converted(lut, out.dtype))
    if _simd == "avx512" and vector_size == 1 and (mask is None or plan.cols % 8 == 0):
        use_tables = out.dtype.itemsize == 4 and indices.nbits <= 6
        words = _NO_WORDS if use_tables else _lut_words(t, out.dtype)
        if words is not None:
            tables = _lut_tables64(t) if use_tables else _NO_TABLE
            with _LAUNCH_LOCK:
                _lut_decode_avx512(indices.packed, indices.nbits, _mask(mask), plan.rows, plan.cols, plan.row_table,
                                   plan.col_block, words, tables, use_tables, out.dtype.itemsize, table,
                                   plan.row_out, _bits_view(out), _byte_view(out))
            return
    _lut_decode(
        indices.packed, indices.nbits, _mask(mask), plan.rows, plan.cols, plan.row_table, plan.col_block,
        table, lut.shape[-2], vector_size, plan.row_out, plan.col_stride, plan.v_stride, _bits_view(out),
    )


def decompress_palettized(t, out: np.ndarray) -> None:
    _lut_decompress(t, t.indices, None, t.indices.shape, out)


def decompress_sparse_palettized(t, out: np.ndarray) -> None:
    _lut_decompress(t, t.indices_nonzero_data, t.indices_mask, t.indices_mask.shape, out)


def decompress_sparse(t, out: np.ndarray) -> None:
    data = _values(t.nonzero_data)
    if _simd == "avx512":
        widen = data.dtype == np.float16 and out.dtype == np.float32  # widened in the kernel
        values = data if widen else _converted(data, out.dtype)
        with _LAUNCH_LOCK:
            _sparse_decode_avx512(t.mask.packed, out.size, _input_bits(values), _readonly(_byte_view(values)),
                                  values.dtype.itemsize, widen, out.reshape(-1) if widen else _bits_view(out),
                                  _byte_view(out))
        return
    _sparse_decode(t.mask.packed, _input_bits(_converted(data, out.dtype)), _bits_view(out))


def _scale_offset(t):
    """Scale and offset as float32 (exact: fp16 widens, integer offsets go through the scale's
    dtype as numpy's reference converts them), kept beside the tensor."""
    def convert():
        scale = np.ascontiguousarray(t.scale.astype(np.float32).reshape(-1))
        if t.offset is None:
            return scale, _NO_OFFSET
        offset = _values(t.offset).astype(t.scale.dtype).astype(np.float32)
        return scale, np.ascontiguousarray(offset.reshape(-1))
    return t.derived("numba_scale_offset_f32", convert)


def _offsets(t) -> np.ndarray:
    """The offsets as float32, zeros without (the SIMD kernels always subtract one)."""
    scale, offset = _scale_offset(t)
    return offset if offset.size else t.derived("numba_zero_offset", lambda: np.zeros(scale.size, np.float32))


def _half_math(t) -> tuple[bool, bool]:
    """(fp16 arithmetic?, must ``q - offset`` be rounded?): the difference is exact without
    offset or with an integer one (at most 9 bits)."""
    half = t.scale.dtype == np.float16
    return half, half and t.offset is not None and not isinstance(t.offset, NBitArray)


def _shift_scale_decompress(t, data: NBitArray, mask, out: np.ndarray) -> None:
    plan = row_plan(t.shape, t.scale.shape)
    scale, offset = _scale_offset(t)
    target = out.reshape(-1).view(np.uint16) if out.dtype == np.float16 else out.reshape(-1)
    if _simd == "avx512" and out.dtype == np.float16 and _quant_as_lut(t, data, plan) and (
            mask is None or plan.cols % 8 == 0):
        words = _quant_words(t, data)
        with _LAUNCH_LOCK:
            _lut_decode_avx512(data.packed, 8, _mask(mask), plan.rows, plan.cols, plan.row_table, plan.col_block,
                               words, _NO_TABLE, False, 2, words, plan.row_out, target, _byte_view(out))
        return
    if _simd == "avx512" and plan.col_block % 16 == 0 and (mask is None or plan.cols % 8 == 0):
        with _LAUNCH_LOCK:
            _quant_decode_avx512(data.packed, data.nbits, data.signed, _mask(mask), plan.rows, plan.cols,
                                 plan.row_table, plan.col_block, scale, _offsets(t), *_half_math(t),
                                 out.dtype == np.float16, target, _byte_view(out))
        return
    _shift_scale_decode(
        data.packed, data.nbits, data.signed, _mask(mask), plan.rows, plan.cols, plan.row_table, plan.col_block,
        scale, offset, *_half_math(t), target,
    )


def decompress_quantized(t, out: np.ndarray) -> None:
    _shift_scale_decompress(t, t.data, None, out)


def decompress_sparse_quantized(t, out: np.ndarray) -> None:
    _shift_scale_decompress(t, t.nonzero_data, t.data_mask, out)


# ---- fused products: portable kernels ---------------------------------------------------------


@_parallel
def _matmul_rows(codes, nbits, signed, mask, row_start, rows, cols, row_table, col_block, lut, scale, offset,
                 half_math, round_difference, values, x, y):
    """``y = x @ W.T`` with W decoded a row at a time. Stored element k of W (in row-major order,
    set mask bits only when ``mask`` is nonempty; row r's start at ``row_start[r]``) is
    ``values[k]`` when ``values`` is nonempty (float32, or fp16 bits as uint16), else n-bit code
    k of ``codes`` looked up in ``lut`` (``lut[t * 2**nbits + code]``) when it is nonempty, else
    Core ML's shift-scale of the code; t is the element's table."""
    batch = x.shape[0]
    for block in prange((rows + ROW_BLOCK - 1) // ROW_BLOCK):
        acc = np.empty(BATCH_TILE, np.float32)
        for r in range(block * ROW_BLOCK, min(rows, (block + 1) * ROW_BLOCK)):
            for b0 in range(0, batch, BATCH_TILE):
                nb = min(BATCH_TILE, batch - b0)
                acc[:] = 0
                k = row_start[r] if mask.size else r * cols
                for j in range(cols):
                    if mask.size and not mask_bit(mask, r * cols + j):
                        continue
                    if values.size:
                        w = _value(values, k)
                    else:
                        t, code = row_table[r] + j // col_block, read_bits(codes, k, nbits)
                        if lut.size:
                            w = lut[(t << nbits) + code]
                        else:
                            of = offset[t] if offset.size else np.float32(0)
                            w = _dequantize(code_value(code, nbits, signed), scale[t], of, half_math, round_difference)
                    k += 1
                    for b in range(nb):
                        acc[b] += w * x[b0 + b, j]
                for b in range(nb):
                    y[b0 + b, r] = acc[b]


@intrinsic
def _stack_lanes(typingctx):
    """A pointer to 32 float32 on the stack: accumulators LLVM keeps in registers (heap arrays
    would be reloaded on every iteration, as they might alias the inputs)."""
    def codegen(context, builder, sig, args):
        return cgutils.alloca_once(builder, ir.FloatType(), size=32)
    return types.CPointer(types.float32)(), codegen


@_jit
def _dot8(codes, e0, x, x0, count, sc, of, signed, half_math, round_difference):
    """Sum of ``count`` dequantized 8-bit codes from ``codes[e0]`` times ``x[x0 ...]``, in 16
    independent lanes that LLVM vectorizes (it unswitches the loop on the invariant flags)."""
    lanes = numba.carray(_stack_lanes(), 16)
    lanes[:] = 0
    full = count // 16 * 16
    for j0 in range(0, full, 16):
        for lane in range(16):
            q = _code_float(codes[np.uint64(e0 + j0 + lane)], 8, signed)
            lanes[lane] += _dequantize(q, sc, of, half_math, round_difference) * x[np.uint64(x0 + j0 + lane)]
    total = np.float32(0)
    for lane in range(16):
        total += lanes[lane]
    for j in range(full, count):
        q = _code_float(codes[e0 + j], 8, signed)
        total += _dequantize(q, sc, of, half_math, round_difference) * x[x0 + j]
    return total


@_jit
def _dot4(codes, c0, xs, x0, x_stride, nbytes, sc, of, signed, half_math, round_difference):
    """Like ``_dot8`` for ``nbytes`` bytes of 4-bit codes; ``xs`` is split by phase (low nibbles
    meet ``xs[x0 + m]``, high ones ``xs[x0 + x_stride + m]``)."""
    lanes = numba.carray(_stack_lanes(), 32)
    lanes[:] = 0
    full = nbytes // 16 * 16
    for m0 in range(0, full, 16):
        for lane in range(16):
            byte = codes[np.uint64(c0 + m0 + lane)]
            m = np.uint64(x0 + m0 + lane)
            low, high = _code_float(byte & np.uint8(15), 4, signed), _code_float(byte >> np.uint8(4), 4, signed)
            lanes[lane] += _dequantize(low, sc, of, half_math, round_difference) * xs[m]
            lanes[16 + lane] += _dequantize(high, sc, of, half_math, round_difference) * xs[m + np.uint64(x_stride)]
    total = np.float32(0)
    for lane in range(32):
        total += lanes[lane]
    for m in range(full, nbytes):
        byte = codes[c0 + m]
        low, high = _code_float(byte & np.uint8(15), 4, signed), _code_float(byte >> np.uint8(4), 4, signed)
        total += _dequantize(low, sc, of, half_math, round_difference) * xs[x0 + m]
        total += _dequantize(high, sc, of, half_math, round_difference) * xs[x0 + x_stride + m]
    return total


@_parallel
def _quant_matmul_dense(codes, nbits, signed, rows, cols, row_table, col_block, scale, offset, half_math,
                        round_difference, xs, y):
    """``y = x @ W.T`` for dense 8-bit codes (``xs`` = x) or 4-bit codes (``xs`` split by phase as
    for the LUT kernel; ``col_block`` even)."""
    batch = y.shape[0]
    for block in prange((rows + ROW_BLOCK - 1) // ROW_BLOCK):
        for r in range(block * ROW_BLOCK, min(rows, (block + 1) * ROW_BLOCK)):
            for b in range(batch):
                total = np.float32(0)
                for s in range(cols // col_block):
                    t = row_table[r] + s
                    sc, of = scale[t], offset[t] if offset.size else np.float32(0)
                    if nbits == 8:
                        e0, x0 = r * cols + s * col_block, b * cols + s * col_block
                        total += _dot8(codes, e0, xs, x0, col_block, sc, of, signed, half_math, round_difference)
                    else:
                        c0, x0, n = (r * cols + s * col_block) // 2, b * cols + s * col_block // 2, col_block // 2
                        total += _dot4(codes, c0, xs, x0, cols // 2, n, sc, of, signed, half_math, round_difference)
                y[b, r] = total


# ---- fused products: AVX-512 row loops as LLVM IR ---------------------------------------------
#
# Each intrinsic walks a stretch of one weight row against ``tile`` activation rows (1, or 4 as
# the C kernels' batch tile: each weight decoded once meets four rows), keeping float32x16
# accumulators in registers (four per row for one row, else one per row), adds each row's total
# to ``sums[b]`` and returns the next stream element. Weights come from the decoding of
# decompression; lanes outside the mask are zero.

BATCH_TILE_SIMD = 4
_ZERO16 = ir.Constant(_V16F, None)


def _accumulators(tile: int) -> list:
    return [_ZERO16] * (4 if tile == 1 else tile)


def _accumulate(builder, accs, weights, x, start, stride, tile: int):
    """Accumulators plus ``weights[q] * x[start + b * stride + 16 q ...]`` (fused multiply-adds):
    for one row quarter q goes to ``accs[q]``, for a tile row b's four quarters to ``accs[b]``."""
    def xv(b, q):
        return _load(builder, x, builder.add(builder.add(start, builder.mul(stride, _i64(b))), _i64(16 * q)), _V16F)

    if tile == 1:
        return [_fma(builder, w, xv(0, q), acc) for q, (w, acc) in enumerate(zip(weights, accs))]
    out = []
    for b, acc in enumerate(accs):
        for q, w in enumerate(weights):
            acc = _fma(builder, w, xv(b, q), acc)
        out.append(acc)
    return out


def _add_sums(builder, sums, accs, tile: int):
    """``sums[a] +=`` the lanes of accumulator a (for one activation row, ``sums[0] +=`` all)."""
    for b, group in enumerate([accs] if tile == 1 else [[acc] for acc in accs]):
        ptr = builder.gep(sums.data, [_i64(b)])
        builder.store(builder.fadd(builder.load(ptr), _sum_lanes(builder, group)), ptr)


def _make_lut_dot(planes: bool, tile: int):
    """Intrinsic ``dot(codes, nbits, mask, e, steps, k, x, x0, x_stride, tables, words, t, sums)
    -> k``: ``steps`` x 64 weights from element ``e`` (stream element ``k`` on) times each of
    ``tile`` activation rows ``x[x0 + b * x_stride ...]``, the codes looked up in the float32
    table ``tables[t:t + 64]`` (<= 6 bits), or with ``planes`` in the binary16 table
    ``words[t:t + 256]`` through byte planes (8 bits). An empty ``mask`` means dense."""

    @intrinsic
    def dot(typingctx, codes, nbits, mask, e, count, k, x, x0, x_stride, tables, words, t, sums):
        sig = types.int64(codes, nbits, mask, e, count, k, x, x0, x_stride, tables, words, t, sums)

        def codegen(context, builder, sig, args):
            (codes, nbits, mask, e, count, k, x, x0, x_stride, tables, words, t,
             sums) = _int64_args(context, builder, sig, args)
            table = _Planes(builder, words, t) if planes else _FloatTable(builder, tables, t)
            is_wide = builder.icmp_signed(">", nbits, _i64(4))

            def step(at, bits, codes64, accs):
                if planes:
                    keep = _bits_to_lanes(builder, bits, 64)
                    weights = _Planes.floats(builder, *table.lookup(builder, codes64, True, keep))
                else:
                    weights = table.weights(builder, codes64, is_wide, bits)
                return _accumulate(builder, accs, weights, x, builder.add(x0, at), x_stride, tile)

            state = _code_steps(builder, codes, nbits, mask, e, count, k, step, _accumulators(tile))
            _add_sums(builder, sums, state[1:], tile)
            return state[0]

        return sig, codegen

    return dot


def _make_quant_dot(tile: int, half: bool):
    """Intrinsic ``dot(codes, nbits, signed, mask, e, steps, k, scale, offset, t, j, col_block,
    round_difference, x, x0, x_stride, sums) -> k``: as the LUT dot, the weights Core ML's
    shift-scale of the codes (columns from ``j``, whose table is ``t``), in binary16 arithmetic
    when ``half``."""

    @intrinsic
    def dot(typingctx, codes, nbits, signed, mask, e, count, k, scale, offset, t, j, col_block,
            round_difference, x, x0, x_stride, sums):
        sig = types.int64(codes, nbits, signed, mask, e, count, k, scale, offset, t, j, col_block,
                          round_difference, x, x0, x_stride, sums)

        def codegen(context, builder, sig, args):
            (codes, nbits, signed, mask, e, count, k, scale, offset, t, j, col_block,
             round_difference, x, x0, x_stride, sums) = _int64_args(context, builder, sig, args)
            arith = _ShiftScale(nbits, signed, scale, offset, col_block, half, round_difference)
            block_end = builder.mul(builder.add(builder.sdiv(j, col_block), _i64(1)), col_block)

            def step(at, bits, codes64, state):
                weights, tables = arith.weights(builder, codes64, builder.add(j, at), state[:2], bits)
                return [*tables, *_accumulate(builder, state[2:], weights, x, builder.add(x0, at), x_stride, tile)]

            state = _code_steps(builder, codes, nbits, mask, e, count, k, step,
                                [t, block_end, *_accumulators(tile)])
            _add_sums(builder, sums, state[3:], tile)
            return state[0]

        return sig, codegen

    return dot


def _make_phase_dot(nbits: int, tile: int):
    """Intrinsic ``dot(codes, c0, row_bytes, nrows, blocks, block_bytes, xs, x0, x_stride,
    b_stride, tables, row_table, r0, quant, scale, offset, signed, half_math, round_difference,
    sums)``: dense rows of ``nbits``-bit codes (1, 2 or 4), row r0 + i from byte
    ``c0 + i * row_bytes``, each ``blocks`` tables of ``block_bytes`` bytes (a multiple of 16),
    against ``tile`` activation rows split by phase (code p of byte m meets
    ``xs[x0 + b * b_stride + p * x_stride + m]``). A tile of four activation rows meets four
    weight rows (``nrows`` <= 4 of them real, as the C kernels' row tile: each activation load
    serves four rows), one activation row one weight row; ``sums[i * tile + b] +=`` the product
    of weight row i and activation row b. Table t is 16 floats ``tables[16 t ...]`` (a LUT
    repeated), or with ``quant`` the 16 values of Core ML's shift-scale of 4-bit codes; vpermps
    reads each index's low 4 bits."""
    per = 8 // nbits
    weight_rows = 1 if tile == 1 else tile

    @intrinsic
    def dot(typingctx, codes, c0, row_bytes, nrows, blocks, block_bytes, xs, x0, x_stride, b_stride, tables,
            row_table, r0, quant, scale, offset, signed, half_math, round_difference, sums):
        sig = types.none(codes, c0, row_bytes, nrows, blocks, block_bytes, xs, x0, x_stride, b_stride, tables,
                         row_table, r0, quant, scale, offset, signed, half_math, round_difference, sums)

        def codegen(context, builder, sig, args):
            (codes, c0, row_bytes, nrows, blocks, block_bytes, xs, x0, x_stride, b_stride, tables, row_table, r0,
             quant, scale, offset, signed, half_math, round_difference, sums) = _int64_args(context, builder, sig, args)
            quant, signed = _truth(builder, quant), _truth(builder, signed)
            half_math, round_difference = _truth(builder, half_math), _truth(builder, round_difference)
            iota = ir.Constant(_V16I, list(range(16)))
            last = builder.sub(nrows, _i64(1))
            rows = [builder.select(builder.icmp_signed("<", _i64(i), nrows), _i64(i), last) for i in range(weight_rows)]
            starts = [builder.add(c0, builder.mul(i, row_bytes)) for i in rows]
            first_tables = [builder.load(builder.gep(row_table.data, [builder.add(r0, i)])) for i in rows]

            def quant_table(t):
                sc = _splat_value(builder, builder.load(builder.gep(scale.data, [t])), 16)
                of = _splat_value(builder, builder.load(builder.gep(offset.data, [t])), 16)
                return _shift_scale16(builder, _signed_codes(builder, iota, _i64(4), signed), sc, of, half_math,
                                      round_difference)

            def block(s, accs):
                table = []
                for t0 in first_tables:
                    t = builder.add(t0, s)
                    table.append(_choose(builder, quant, lambda: quant_table(t),
                                         lambda: _load(builder, tables, builder.mul(t, _i64(16)), _V16F)))
                base = builder.mul(s, block_bytes)

                def chunk(m, accs):
                    at = builder.add(base, builder.mul(m, _i64(16)))
                    raw = [builder.zext(_load(builder, codes, builder.add(start, at), ir.VectorType(_I8, 16)), _V16I)
                           for start in starts]
                    accs = list(accs)
                    for p in range(per):
                        start = builder.add(builder.add(x0, builder.mul(x_stride, _i64(p))), at)
                        xv = [_load(builder, xs, builder.add(start, builder.mul(b_stride, _i64(b))), _V16F)
                              for b in range(tile)]
                        for i in range(weight_rows):
                            idx = builder.lshr(raw[i], _splat(_V16I, p * nbits)) if p else raw[i]
                            w = _call(builder, "llvm.x86.avx512.permvar.sf.512", _V16F, table[i], idx)
                            for b in range(tile):  # one row: an accumulator per phase; a tile: per row pair
                                a = p if tile == 1 else i * tile + b
                                accs[a] = _fma(builder, w, xv[b], accs[a])
                    return accs

                return _loop(builder, builder.ashr(block_bytes, _i64(4)), chunk, accs)

            accs = _loop(builder, blocks, block, [_ZERO16] * (per if tile == 1 else weight_rows * tile))
            _add_sums(builder, sums, accs, tile)
            return context.get_dummy_value()

        return sig, codegen

    return dot


def _make_values_dot(tile: int):
    """Intrinsic ``dot(mask, e, steps, k, values, x, x0, x_stride, sums) -> k``: ``steps`` x 64
    columns of a sparse row from element ``e``: the values from ``values[k]`` on (float32, or
    binary16 bits widened exactly by vcvtph2ps) expanded 16 at a time under their mask bits
    (vexpandps), times ``tile`` activation rows."""

    @intrinsic
    def dot(typingctx, mask, e, count, k, values, x, x0, x_stride, sums):
        half = values.dtype == types.uint16
        vtype = ir.VectorType(_I16 if half else _F32, 16)
        sig = types.int64(mask, e, count, k, values, x, x0, x_stride, sums)

        def codegen(context, builder, sig, args):
            mask, e, count, k, values, x, x0, x_stride, sums = _int64_args(context, builder, sig, args)

            def body(i, state):
                k, accs = state[0], state[1:]
                at = builder.mul(i, _i64(64))
                bits = _mask_bits(builder, mask, builder.add(e, at), 64)
                weights = []
                for q in range(4):
                    part = builder.and_(builder.lshr(bits, _i64(16 * q)), _i64(0xFFFF))
                    take = _popcount(builder, part)
                    w = _masked_load(builder, _ptr(builder, values, k, vtype), vtype, _first_lanes(builder, take, 16))
                    if half:
                        w = builder.fpext(builder.bitcast(w, _V16H), _V16F)
                    weights.append(_expand(builder, w, _bits_to_lanes(builder, part, 16)))
                    k = builder.add(k, take)
                return [k, *_accumulate(builder, accs, weights, x, builder.add(x0, at), x_stride, tile)]

            state = _loop(builder, count, body, [k, *_accumulators(tile)])
            _add_sums(builder, sums, state[1:], tile)
            return state[0]

        return sig, codegen

    return dot


_TILES = (1, BATCH_TILE_SIMD)  # numba calls intrinsics by global name: one name per variant
_lut_dot1, _lut_dot4 = (_make_lut_dot(False, tile) for tile in _TILES)
_planes_dot1, _planes_dot4 = (_make_lut_dot(True, tile) for tile in _TILES)
_quant_dot1, _quant_dot4 = (_make_quant_dot(tile, False) for tile in _TILES)
_quant_dot1_half, _quant_dot4_half = (_make_quant_dot(tile, True) for tile in _TILES)
_phase_dot1_1, _phase_dot1_4 = (_make_phase_dot(1, tile) for tile in _TILES)
_phase_dot2_1, _phase_dot2_4 = (_make_phase_dot(2, tile) for tile in _TILES)
_phase_dot4_1, _phase_dot4_4 = (_make_phase_dot(4, tile) for tile in _TILES)
_values_dot1, _values_dot4 = (_make_values_dot(tile) for tile in _TILES)


@_jit
def _lut_tail(codes, nbits, mask, e, count, k, lut, first, x, x0, x_stride, tile, sums):
    """``sums[b] +=`` ``count`` LUT weights from element ``e`` one by one times activation row
    ``x[x0 + b * x_stride ...]`` for b < ``tile``; returns the next stream element."""
    for i in range(count):
        if mask.size and not mask_bit(mask, e + i):
            continue
        w = _value(lut, first + read_bits(codes, k, nbits))
        for b in range(tile):
            sums[b] += w * x[x0 + b * x_stride + i]
        k += 1
    return k


@_jit
def _quant_tail(codes, nbits, signed, mask, e, count, k, scale, offset, t0, j, col_block, half_math,
                round_difference, x, x0, x_stride, tile, sums):
    """As ``_lut_tail`` for shift-scale codes (columns from ``j``; the row's first table ``t0``)."""
    for i in range(count):
        if mask.size and not mask_bit(mask, e + i):
            continue
        t = t0 + (j + i) // col_block
        w = _dequantize(_quant_code(codes, k, nbits, signed), scale[t], offset[t], half_math, round_difference)
        for b in range(tile):
            sums[b] += w * x[x0 + b * x_stride + i]
        k += 1
    return k


@_jit
def _values_tail(mask, e, count, k, values, x, x0, x_stride, tile, sums):
    """As ``_lut_tail`` for stored float values (fp16 as bits)."""
    for i in range(count):
        if not mask_bit(mask, e + i):
            continue
        w = _value(values, k)
        for b in range(tile):
            sums[b] += w * x[x0 + b * x_stride + i]
        k += 1
    return k


@_jit
def _tiles(batch):
    """How many activation-row tiles a batch makes: of four rows while they last, then of one."""
    return batch // BATCH_TILE_SIMD + batch % BATCH_TILE_SIMD


@_jit
def _tile(batch, i):
    """(first row, rows) of tile ``i`` of a batch."""
    full = batch // BATCH_TILE_SIMD
    return (i * BATCH_TILE_SIMD, BATCH_TILE_SIMD) if i < full else (full * BATCH_TILE_SIMD + i - full, 1)


@_jit
def _store_tile(sums, y, b0, tile, r, nrows=1):
    """``y[b0 + b, r + i] = sums[i * tile + b]`` for the tile's rows; the sums start again at zero."""
    for i in range(nrows):
        for b in range(tile):
            y[b0 + b, r + i] = sums[i * tile + b]
    sums[:] = 0


@_parallel
def _lut_rows_avx512(codes, nbits, mask, row_start, rows, cols, row_table, col_block, tables, words, planes, lut,
                     x, y):
    """``y = x @ W.T`` for LUT codes (``x`` flat): per table block, whole 64-steps through float32
    tables (<= 6 bits) or binary16 words (``planes``, 8 bits), the rest one by one from ``lut``
    (float32, or binary16 words). Masked rows and blocks start on whole mask bytes."""
    batch, entries, steps = y.shape[0], 1 << nbits, col_block >> 6
    for block in prange((rows + ROW_BLOCK - 1) // ROW_BLOCK):
        sums = np.zeros(BATCH_TILE_SIMD, np.float32)
        for r in range(block * ROW_BLOCK, min(rows, (block + 1) * ROW_BLOCK)):
            for i in range(_tiles(batch)):
                b0, tile = _tile(batch, i)
                k = row_start[r] if mask.size else r * cols
                for s in range(cols // col_block):
                    t, j = row_table[r] + s, s * col_block
                    e, x0 = r * cols + j, b0 * cols + j
                    if planes and tile > 1:
                        k = _planes_dot4(codes, nbits, mask, e, steps, k, x, x0, cols, tables, words, t * 256, sums)
                    elif planes:
                        k = _planes_dot1(codes, nbits, mask, e, steps, k, x, x0, cols, tables, words, t * 256, sums)
                    elif tile > 1:
                        k = _lut_dot4(codes, nbits, mask, e, steps, k, x, x0, cols, tables, words, t * 64, sums)
                    else:
                        k = _lut_dot1(codes, nbits, mask, e, steps, k, x, x0, cols, tables, words, t * 64, sums)
                    k = _lut_tail(codes, nbits, mask, e + steps * 64, col_block - steps * 64, k, lut, t * entries, x,
                                  x0 + steps * 64, cols, tile, sums)
                _store_tile(sums, y, b0, tile, r)


@_parallel
def _quant_rows_avx512(codes, nbits, signed, mask, row_start, rows, cols, row_table, col_block, scale, offset,
                       half_math, round_difference, x, y):
    """``y = x @ W.T`` for shift-scale codes (``x`` flat; ``col_block`` a multiple of 16; masked
    rows start on whole mask bytes): whole 64-steps of a row by Core ML's arithmetic 16 lanes at a
    time, the rest one by one."""
    batch, steps = y.shape[0], cols >> 6
    for block in prange((rows + ROW_BLOCK - 1) // ROW_BLOCK):
        sums = np.zeros(BATCH_TILE_SIMD, np.float32)
        for r in range(block * ROW_BLOCK, min(rows, (block + 1) * ROW_BLOCK)):
            for i in range(_tiles(batch)):
                b0, tile = _tile(batch, i)
                k = row_start[r] if mask.size else r * cols
                e, t, x0 = r * cols, row_table[r], b0 * cols
                args = (codes, nbits, signed, mask, e, steps, k, scale, offset, t, 0, col_block, round_difference,
                        x, x0, cols, sums)
                if half_math:
                    k = _quant_dot4_half(*args) if tile > 1 else _quant_dot1_half(*args)
                else:
                    k = _quant_dot4(*args) if tile > 1 else _quant_dot1(*args)
                _quant_tail(codes, nbits, signed, mask, e + steps * 64, cols - steps * 64, k, scale, offset, t,
                            steps * 64, col_block, half_math, round_difference, x, x0 + steps * 64, cols, tile, sums)
                _store_tile(sums, y, b0, tile, r)


@_parallel
def _phase_rows_avx512(codes, nbits, rows, cols, row_table, col_block, tables, quant, scale, offset, signed,
                       half_math, round_difference, xs, y):
    """``y = x @ W.T`` for dense 1-, 2- and 4-bit codes, ``xs`` holding each activation row split
    by phase (``xs[b * cols + p * (cols / per) + m] = x[b, m * per + p]``); ``col_block`` a
    multiple of 16 bytes of codes. Tables: 16 floats each, or (``quant``) 4-bit shift-scale.
    Tiles of four activation rows meet four weight rows at a time."""
    per = 8 // nbits
    batch, row_bytes, block_bytes = y.shape[0], cols // per, col_block // per
    for block in prange((rows + ROW_BLOCK - 1) // ROW_BLOCK):
        sums = np.zeros(BATCH_TILE_SIMD * BATCH_TILE_SIMD, np.float32)
        first, end = block * ROW_BLOCK, min(rows, (block + 1) * ROW_BLOCK)
        for i in range(_tiles(batch)):
            b0, tile = _tile(batch, i)
            for r in range(first, end, tile):
                nrows = min(tile, end - r)
                args = (codes, r * row_bytes, row_bytes, nrows, cols // col_block, block_bytes, xs, b0 * cols,
                        row_bytes, cols, tables, row_table, r, quant, scale, offset, signed, half_math,
                        round_difference, sums)
                if nbits == 4:
                    _phase_dot4_4(*args) if tile > 1 else _phase_dot4_1(*args)
                elif nbits == 2:
                    _phase_dot2_4(*args) if tile > 1 else _phase_dot2_1(*args)
                else:
                    _phase_dot1_4(*args) if tile > 1 else _phase_dot1_1(*args)
                _store_tile(sums, y, b0, tile, r, nrows)


@_parallel
def _sparse_rows_avx512(mask, row_start, rows, cols, values, x, y):
    """``y = x @ W.T`` for a sparse W whose rows start on a byte of the mask (``x`` flat)."""
    batch, steps = y.shape[0], cols >> 6
    for block in prange((rows + ROW_BLOCK - 1) // ROW_BLOCK):
        sums = np.zeros(BATCH_TILE_SIMD, np.float32)
        for r in range(block * ROW_BLOCK, min(rows, (block + 1) * ROW_BLOCK)):
            for i in range(_tiles(batch)):
                b0, tile = _tile(batch, i)
                e, x0 = r * cols, b0 * cols
                if tile > 1:
                    k = _values_dot4(mask, e, steps, row_start[r], values, x, x0, cols, sums)
                else:
                    k = _values_dot1(mask, e, steps, row_start[r], values, x, x0, cols, sums)
                _values_tail(mask, e + steps * 64, cols - steps * 64, k, values, x, x0 + steps * 64, cols, tile, sums)
                _store_tile(sums, y, b0, tile, r)


# ---- fused products: entry points ------------------------------------------------------------

_NO_STARTS = np.zeros(0, np.int64)
_NO_VALUES = _readonly(np.zeros(0, np.float32))


def _matrix_plan(t, shape, groups):
    return t.derived("matrix_plan", lambda: matrix_plan(shape, groups))


def _row_starts(t, mask, plan) -> np.ndarray:
    if mask is None:
        return _NO_STARTS
    return t.derived("row_starts", lambda: row_starts(mask.packed, plan.rows, plan.cols))


def _matmul_decompressed(t, x: np.ndarray, y: np.ndarray) -> None:
    """Layouts without a fused kernel (vector LUTs, tables across several trailing axes):
    decompress, then multiply (the weight is materialized), as the C backend does."""
    w = np.empty(t.shape, np.float32)
    globals()[t._kernel](t, w)
    np.matmul(x, w.reshape(y.shape[1], -1).T, out=y)


def _lut_f32(t) -> np.ndarray:
    return t.derived("lut_f32", lambda: np.ascontiguousarray(t.lut.astype(np.float32).reshape(-1)))


def _lut_tables16(t, nbits: int) -> np.ndarray:
    """Every LUT repeated to 16 floats (a 2**nbits-entry table read with 4-bit indices)."""
    def tile():
        tables = _lut_f32(t).reshape(-1, 1 << nbits)
        return np.ascontiguousarray(np.tile(tables, (1, 16 >> nbits)).reshape(-1))
    return t.derived("numba_lut16", tile)


def _phase_split(x: np.ndarray, per: int) -> np.ndarray:
    """Activations reordered so code p of every byte meets a contiguous run: row b becomes
    ``x[b, p::per]`` for p = 0 .. per-1, concatenated."""
    batch, cols = x.shape
    return np.ascontiguousarray(x.reshape(batch, cols // per, per).transpose(0, 2, 1)).reshape(-1)


def _lut_matmul(t, codes: NBitArray, mask, shape, x: np.ndarray, y: np.ndarray) -> None:
    """The product with LUT weights; ``shape`` is the indices' (dense) shape."""
    plan = _matrix_plan(t, shape, t.lut.shape[:-2])
    if plan is None or t.vector_size != 1:
        return _matmul_decompressed(t, x, y)
    nbits = codes.nbits
    with _LAUNCH_LOCK:
        if _simd == "avx512" and _lut_matmul_avx512(t, codes, mask, plan, x, y):
            return
        _matmul_rows(codes.packed, nbits, False, _mask(mask), _row_starts(t, mask, plan), plan.rows, plan.cols,
                     plan.row_table, plan.col_block, _lut_f32(t), _NO_TABLE, _NO_TABLE, False, False, _NO_VALUES, x, y)


def _lut_matmul_avx512(t, codes: NBitArray, mask, plan, x: np.ndarray, y: np.ndarray) -> bool:
    """The AVX-512 product with LUT weights where it covers the layout; False where not."""
    nbits = codes.nbits
    if mask is None and nbits in (1, 2, 4) and plan.col_block % (16 * (8 // nbits)) == 0:
        _phase_rows_avx512(codes.packed, nbits, plan.rows, plan.cols, plan.row_table, plan.col_block,
                           _lut_tables16(t, nbits), False, _NO_TABLE, _NO_TABLE, False, False, False,
                           _phase_split(x, 8 // nbits), y)
        return True
    if mask is not None and (plan.cols % 8 or plan.col_block % 8):  # steps start on whole mask bytes
        return False
    planes = nbits > 6
    words = _lut_words(t, np.float32) if planes else _NO_WORDS
    if words is None:  # 8-bit LUT values that are not binary16
        return False
    _lut_rows_avx512(codes.packed, nbits, _mask(mask), _row_starts(t, mask, plan), plan.rows, plan.cols,
                     plan.row_table, plan.col_block, _NO_TABLE if planes else _lut_tables64(t), words, planes,
                     _lut_f32(t), x.reshape(-1), y)
    return True


def matmul_palettized(t, x: np.ndarray, y: np.ndarray) -> None:
    _lut_matmul(t, t.indices, None, t.indices.shape, x, y)


def matmul_sparse_palettized(t, x: np.ndarray, y: np.ndarray) -> None:
    _lut_matmul(t, t.indices_nonzero_data, t.indices_mask, t.indices_mask.shape, x, y)


def _quant_matmul(t, codes: NBitArray, mask, x: np.ndarray, y: np.ndarray) -> None:
    plan = _matrix_plan(t, t.shape, t.scale.shape)
    if plan is None:
        return _matmul_decompressed(t, x, y)
    scale, offset = _scale_offset(t)
    half_math, round_difference = _half_math(t)
    with _LAUNCH_LOCK:
        if _simd == "avx512" and mask is None and codes.nbits == 4 and plan.col_block % 32 == 0:
            _phase_rows_avx512(codes.packed, 4, plan.rows, plan.cols, plan.row_table, plan.col_block, _NO_TABLE,
                               True, scale, _offsets(t), codes.signed, half_math, round_difference,
                               _phase_split(x, 2), y)
            return
        steps_fit = mask is None or (plan.cols % 8 == 0 and plan.col_block % 8 == 0)  # masks: whole bytes
        if _simd == "avx512" and steps_fit and _quant_as_lut(t, codes, plan):
            words = _quant_words(t, codes)
            _lut_rows_avx512(codes.packed, 8, _mask(mask), _row_starts(t, mask, plan), plan.rows, plan.cols,
                             plan.row_table, plan.col_block, _NO_TABLE, words, True, words, x.reshape(-1), y)
            return
        if _simd == "avx512" and plan.col_block % 16 == 0 and (mask is None or plan.cols % 8 == 0):
            _quant_rows_avx512(codes.packed, codes.nbits, codes.signed, _mask(mask), _row_starts(t, mask, plan),
                               plan.rows, plan.cols, plan.row_table, plan.col_block, scale, _offsets(t),
                               half_math, round_difference, x.reshape(-1), y)
            return
        if mask is None and (codes.nbits == 8 or plan.col_block % 2 == 0):
            xs = x.reshape(-1) if codes.nbits == 8 else _phase_split(x, 2)
            _quant_matmul_dense(codes.packed, codes.nbits, codes.signed, plan.rows, plan.cols, plan.row_table,
                                plan.col_block, scale, offset, half_math, round_difference, xs, y)
            return
        _matmul_rows(codes.packed, codes.nbits, codes.signed, _mask(mask), _row_starts(t, mask, plan),
                     plan.rows, plan.cols, plan.row_table, plan.col_block, _NO_TABLE, scale, offset,
                     half_math, round_difference, _NO_VALUES, x, y)


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
    starts, values = _row_starts(t, t.mask, plan), _sparse_values(t)
    with _LAUNCH_LOCK:
        if _simd == "avx512" and plan.cols % 8 == 0:
            _sparse_rows_avx512(t.mask.packed, starts, plan.rows, plan.cols, values, x.reshape(-1), y)
            return
        _matmul_rows(_NO_MASK, 1, False, t.mask.packed, starts, plan.rows, plan.cols, plan.row_table, plan.col_block,
                     _NO_TABLE, _NO_TABLE, _NO_TABLE, False, False, values, x, y)
