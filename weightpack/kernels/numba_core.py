"""Building blocks of the numba kernels: LSB-first code streams, mask bits, binary16 bit
arithmetic and Core ML's shift-scale, as plain numba functions.

There are no vector intrinsics anywhere in the numba backend: LLVM compiles these loops for the
CPU that runs them (x86 or aarch64). numba has no float16 arithmetic, so binary16 travels as its
uint16 bits, converted by exact integer code (float to half rounds to nearest even; NaNs are
narrowed as numpy narrows them).

Imported only by ``backend_numba`` (it imports numba).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

jit = numba.njit(nogil=True, cache=True)
parallel = numba.njit(nogil=True, cache=True, parallel=True)

u32 = np.uint32

# ---- binary16 bit arithmetic ----------------------------------------------------------------


@jit
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
    return u32(sign | bits).view(np.float32)


@jit
def float_to_half(f):
    """float32 -> IEEE binary16 bits, round to nearest even; NaNs as numpy converts them.
    Without branches, in 32-bit integers, so loops of it vectorize."""
    bits = np.float32(f).view(np.uint32)
    a = u32(bits & u32(0x7FFFFFFF))
    normal = u32(u32(a - u32(0x38000000) + u32(0xFFF) + u32(u32(a >> u32(13)) & u32(1))) >> u32(13))  # rebias, round
    tiny = u32(np.float32(a.view(np.float32) + np.float32(0.5)).view(np.uint32) - u32(0x3F000000))  # round at 2**-24
    nan = u32(u32(0x7C00) + u32(u32(a & u32(0x7FFFFF)) >> u32(13)))
    nan = u32(nan + u32(1)) if nan == u32(0x7C00) else nan
    big = nan if a > u32(0x7F800000) else u32(0x7C00)  # NaN, or infinity from 65520 up
    h = tiny if a < u32(0x38800000) else (normal if a < u32(0x47800000) else big)
    return u32(u32(u32(bits >> u32(16)) & u32(0x8000)) | h)


@jit
def round_half(f):
    """``f`` rounded to the nearest binary16 value, as float32: ``half_to_float(float_to_half(f))``
    computed on the float32 bits without branches."""
    bits = np.float32(f).view(np.uint32)
    a = u32(bits & u32(0x7FFFFFFF))
    normal = u32(u32(a + u32(0xFFF) + u32(u32(a >> u32(13)) & u32(1))) & u32(0x7FFFE000))  # half to even at bit 13
    tiny = np.float32((a.view(np.float32) + np.float32(0.5)) - np.float32(0.5)).view(np.uint32)  # multiple of 2**-24
    nan = u32(a & u32(0x7FFFE000))
    nan = u32(nan | u32(0x2000)) if nan == u32(0x7F800000) else nan  # as numpy narrows NaNs
    r = tiny if a < u32(0x38800000) else (normal if normal < u32(0x47800000) else u32(0x7F800000))
    return u32(u32(bits ^ a) | (nan if a > u32(0x7F800000) else r)).view(np.float32)


def as_stored(like, w):  # pragma: no cover - replaced by the overload inside numba
    """Float32 ``w`` as an element of array ``like``: binary16 bits for uint16, float32 bits for
    uint32, the value itself for float32."""
    raise NotImplementedError


@overload(as_stored, inline="always")
def _as_stored(like, w):
    if like.dtype == types.uint16:
        return lambda like, w: np.uint16(float_to_half(w))
    if like.dtype == types.uint32:
        return lambda like, w: np.float32(w).view(np.uint32)
    return lambda like, w: np.float32(w)


# ---- code streams and masks -----------------------------------------------------------------


@jit
def read_code(stream, k, nbits):
    """Element ``k`` of an LSB-first ``nbits``-bit stream (it may straddle two bytes)."""
    bit = k * nbits
    p = bit >> 3
    v = np.int64(stream[p])
    if (bit & 7) + nbits > 8:
        v |= np.int64(stream[p + 1]) << 8
    return (v >> (bit & 7)) & ((1 << nbits) - 1)


@jit
def decode_codes(stream, k, count, nbits, table, base, out, o):
    """``out[o + i] = table[base + code]`` for the codes of elements ``k .. k + count - 1`` of an
    LSB-first ``nbits``-bit stream (``IDENTITY`` as the table gives the codes themselves).

    Eight elements fill exactly ``nbits`` bytes, so from the first element that is a multiple of
    8 on, each group of eight is read as one little-endian word and split with shifts (1-, 2-
    and 4-bit codes a byte at a time); the elements before and after whole groups are read one by one.
    (Here and below, loops index views that start at 0: numba then skips its negative-index
    fix-up.)"""
    dst = out[o:o + count]
    tab = table[base:]
    i = 0
    while i < count and (k + i) & 7:
        dst[i] = tab[read_code(stream, k + i, nbits)]
        i += 1
    src = stream[((k + i) >> 3) * nbits:]
    if nbits == 8:
        for m in range(count - i):
            dst[i + m] = tab[src[m]]
        return
    if nbits == 4:  # element 2m in the low nibble of byte m
        rest = dst[i:]
        for m in range((count - i) >> 1):
            byte = src[m]
            rest[2 * m] = tab[byte & 15]
            rest[2 * m + 1] = tab[byte >> 4]
        src = src[(count - i) >> 1:]
        i += (count - i) & ~1
    elif nbits == 2:  # four elements per byte, the first in the lowest bits
        rest = dst[i:]
        for m in range((count - i) >> 2):
            byte = src[m]
            rest[4 * m] = tab[byte & 3]
            rest[4 * m + 1] = tab[(byte >> 2) & 3]
            rest[4 * m + 2] = tab[(byte >> 4) & 3]
            rest[4 * m + 3] = tab[byte >> 6]
        src = src[(count - i) >> 2:]
        i += (count - i) & ~3
    elif nbits == 1:  # eight elements per byte
        rest = dst[i:]
        for m in range((count - i) >> 3):
            byte = src[m]
            for b in range(8):
                rest[8 * m + b] = tab[(byte >> b) & 1]
        src = src[(count - i) >> 3:]
        i += (count - i) & ~7
    low = (1 << nbits) - 1
    while i + 8 <= count:
        word = 0
        for b in range(nbits):
            word |= np.int64(src[b]) << (8 * b)
        for m in range(8):
            dst[i + m] = tab[(word >> (m * nbits)) & low]
        src = src[nbits:]
        i += 8
    while i < count:
        dst[i] = tab[read_code(stream, k + i, nbits)]
        i += 1


IDENTITY = np.arange(256, dtype=np.uint8)
IDENTITY.flags.writeable = False
POPCOUNT = np.array([bin(b).count("1") for b in range(256)], np.uint8)
POPCOUNT.flags.writeable = False


@jit
def mask_bit(mask, e):
    """Bit ``e`` of a packed LSB-first mask (0 or 1)."""
    return (np.int64(mask[e >> 3]) >> (e & 7)) & 1


@jit
def count_set(mask, e, n):
    """How many of mask bits ``e .. e + n - 1`` are set (whole bytes through a table)."""
    end = e + n
    total = 0
    while e < end and e & 7:
        total += mask_bit(mask, e)
        e += 1
    for byte in mask[e >> 3:end >> 3]:
        total += POPCOUNT[byte]
    for i in range(max(e, end & ~7), end):
        total += mask_bit(mask, i)
    return total


def keep(value, bit):  # pragma: no cover - replaced by the overload inside numba
    """``value`` where ``bit`` is 1, else zero, without a branch (bits are masked)."""
    raise NotImplementedError


@overload(keep, inline="always")
def _keep(value, bit):
    if isinstance(value, types.Float):
        return lambda value, bit: np.uint32(np.float32(value).view(np.uint32) & np.uint32(-bit)).view(np.float32)
    return lambda value, bit: value & -bit


@jit
def expand(values, k, mask, e, n, out, o):
    """``out[o + i]`` = the next of ``values`` (from ``values[k]``) where mask bit ``e + i`` is
    set, else 0; returns the index of the next value. No branch per element: a value is read at
    every position (at a clear bit the next one, or the last past the end) and masked."""
    dst = out[o:o + n]
    if values.size == 0:
        dst[:] = 0
        return k
    last = values.size - 1
    for i in range(n):
        bit = mask_bit(mask, e + i)
        dst[i] = keep(values[min(k, last)], bit)
        k += bit
    return k


def as_float(values, k, f16):  # pragma: no cover - replaced by the overload inside numba
    """Element ``k`` of ``values`` as float32 (binary16 bits through the table ``f16``)."""
    raise NotImplementedError


@overload(as_float, inline="always")
def _as_float(values, k, f16):
    if values.dtype == types.uint16:
        return lambda values, k, f16: f16[values[k]]
    return lambda values, k, f16: np.float32(values[k])


@jit
def expand_floats(values, f16, k, mask, e, n, out, o):
    """:func:`expand` into float32 ``out``, binary16 ``values`` (as bits) widened through ``f16``
    (the float32 value of every binary16 pattern)."""
    dst = out[o:o + n]
    last = values.size - 1
    for i in range(n):
        bit = mask_bit(mask, e + i)
        dst[i] = keep(as_float(values, min(k, last), f16), bit)
        k += bit
    return k


# ---- Core ML's shift-scale ------------------------------------------------------------------


@jit
def code_value(code, nbits, signed):
    """An n-bit code as a signed (two's complement) or unsigned integer."""
    return code - (1 << nbits) if signed and code >> (nbits - 1) else code


@jit
def dequantize(q, sc, of, half_math, round_difference):
    """Core ML's shift-scale of integer q: ``sc * (q - of)`` (``of`` is 0 without offset), each
    step rounded to fp16 when ``half_math`` (``sc`` and ``of`` hold fp16 values as float32) as
    numpy's float16 arithmetic rounds it. The rounding of ``q - of`` may be skipped
    (``round_difference`` False) where it is exact: no offset or an integer one."""
    d = np.float32(q) - of
    if round_difference:
        d = round_half(d)
    return round_half(sc * d) if half_math else sc * d
