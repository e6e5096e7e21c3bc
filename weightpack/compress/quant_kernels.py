"""Linear quantization kernels (numba) on a block-major view: ``x2[b]`` is block b's elements.

float16 data comes as its uint16 bits with a float64 value table; every quotient and error is
computed in float64, so results do not depend on how a compiler rounds float16.
"""
from __future__ import annotations

import numba
import numpy as np

from . import _threads
from ._jit import round_f16, value
from ._common import fp16_values


@numba.njit(nogil=True, cache=True)
def block_minmax(x2, table, b0, b1, lo, hi):
    for b in range(b0, b1):
        mn = np.inf
        mx = -np.inf
        for j in range(x2.shape[1]):
            v = value(x2[b, j], table)
            mn = min(mn, v)
            mx = max(mx, v)
        lo[b] = mn
        hi[b] = mx


@numba.njit(nogil=True, cache=True, inline="always")
def _q(v, scale, offset, qmin, qmax):
    q = np.rint(v / scale) + offset
    return min(max(q, qmin), qmax)


@numba.njit(nogil=True, cache=True)
def quantize_rows(x2, table, b0, b1, scale, offset, qmin, qmax, out2):
    """``out2[b, j] = clip(rint(x / scale[b]) + offset[b], qmin, qmax)`` (float64 quotient)."""
    for b in range(b0, b1):
        s = scale[b]
        z = offset[b]
        for j in range(x2.shape[1]):
            out2[b, j] = _q(value(x2[b, j], table), s, z, qmin, qmax)


@numba.njit(nogil=True, cache=True)
def block_error(x2, table, imp2, b, scale, offset, qmin, qmax):
    """sum imp * (x - scale * (q - offset))**2 over block b, q from (scale, offset)."""
    err = 0.0
    for j in range(x2.shape[1]):
        v = value(x2[b, j], table)
        q = _q(v, scale, offset, qmin, qmax)
        e = v - scale * (q - offset)
        w = np.float64(imp2[b, j]) if imp2.shape[0] > 0 else 1.0
        err += w * e * e
    return err


@numba.njit(nogil=True, cache=True)
def _lsq(x2, table, imp2, b, scale, offset, qmin, qmax, fit_offset):
    """Least-squares (scale, offset) for block b given the q of (scale, offset): fit
    x ~ s * (q - z), z fixed unless ``fit_offset``. Returns (s, z) (z real-valued)."""
    sw = 0.0
    sq = 0.0
    sx = 0.0
    sqq = 0.0
    sqx = 0.0
    for j in range(x2.shape[1]):
        v = value(x2[b, j], table)
        q = _q(v, scale, offset, qmin, qmax)
        w = np.float64(imp2[b, j]) if imp2.shape[0] > 0 else 1.0
        if fit_offset:
            sw += w
            sq += w * q
            sx += w * v
            sqq += w * q * q
            sqx += w * q * v
        else:
            d = q - offset
            sqq += w * d * d
            sqx += w * d * v
    if not fit_offset:
        return (sqx / sqq if sqq > 0.0 else scale), offset
    den = sw * sqq - sq * sq
    if not (den > 0.0 and sw > 0.0):
        return scale, offset
    a = (sw * sqx - sq * sx) / den  # x ~ a q + c
    c = (sx - a * sq) / sw
    if not a > 0.0:
        return scale, offset
    return a, -c / a


@numba.njit(nogil=True, cache=True)
def search_blocks(x2, table, imp2, b0, b1, scale, offset, lo, hi, qmin, qmax, symmetric, alphas, refits,
                  round_scale, smallest, out_scale, out_offset):
    """Per block: try every clip ratio in ``alphas`` (range shrunk to alpha * range), then ``refits``
    least-squares refits of scale (and offset when asymmetric); keep the least error (ties: the
    earlier candidate). ``round_scale`` is a table mapping a float64 scale to the stored dtype
    (see :func:`round_to`)."""
    for b in range(b0, b1):
        best_s = scale[b]
        best_z = offset[b]
        if not hi[b] > lo[b] and symmetric == 0:
            out_scale[b] = best_s
            out_offset[b] = best_z
            continue
        best = block_error(x2, table, imp2, b, best_s, best_z, qmin, qmax)
        for a in alphas:
            s, z = _params(lo[b] * a, hi[b] * a, qmin, qmax, symmetric, round_scale, smallest)
            if not s > 0.0:
                continue
            e = block_error(x2, table, imp2, b, s, z, qmin, qmax)
            if e < best:
                best, best_s, best_z = e, s, z
        s, z = best_s, best_z
        for _ in range(refits):
            s_new, z_new = _lsq(x2, table, imp2, b, s, z, qmin, qmax, symmetric == 0)
            s_new = _round_scale(s_new, round_scale, smallest)
            if symmetric == 0:
                z_new = min(max(np.rint(z_new), qmin), qmax)
            if not s_new > 0.0:
                break
            e = block_error(x2, table, imp2, b, s_new, z_new, qmin, qmax)
            if not e < best:
                break
            best, best_s, best_z = e, s_new, z_new
            s, z = s_new, z_new
        out_scale[b] = best_s
        out_offset[b] = best_z


@numba.njit(nogil=True, cache=True)
def _params(lo, hi, qmin, qmax, symmetric, round_scale, smallest):
    """(stored scale, offset) of the range [lo, hi], as :func:`.quantization.block_params`."""
    if symmetric != 0:
        span = 2.0 * max(-lo, hi)
        z = 0.0 if symmetric == 1 else np.floor(qmax / 2.0)
        return _round_scale(span / (qmax - qmin), round_scale, smallest), z
    lo = min(lo, 0.0)
    hi = max(hi, 0.0)
    span = hi - lo
    if not span > 0.0:
        return 1.0, 0.0
    z = min(max(np.rint((qmin * hi - qmax * lo) / span), qmin), qmax)
    return _round_scale(span / (qmax - qmin), round_scale, smallest), z


@numba.njit(nogil=True, cache=True)
def _round_scale(s, f16, smallest):
    """``s`` rounded to the stored dtype: float16 when ``f16`` (a flag) is set, else float32; a
    positive value that rounds to 0 becomes ``smallest``."""
    if f16:
        r = round_f16(s)
    else:
        r = np.float64(np.float32(s))
    if r == 0.0 and s > 0.0:
        return smallest
    return r


def table_of(x2: np.ndarray) -> np.ndarray:
    return fp16_values() if x2.dtype == np.uint16 else np.empty(0)


def minmax(x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    nb = x2.shape[0]
    lo, hi = np.empty(nb), np.empty(nb)
    table = table_of(x2)
    _threads.run(lambda s: block_minmax(x2, table, s[0], s[1], lo, hi), _threads.spans(nb))
    return lo, hi


def quantize(x2: np.ndarray, scale: np.ndarray, offset: np.ndarray, qmin: int, qmax: int, out_dtype) -> np.ndarray:
    out2 = np.empty(x2.shape, out_dtype)
    table = table_of(x2)
    _threads.run(lambda s: quantize_rows(x2, table, s[0], s[1], scale, offset, float(qmin), float(qmax), out2),
                 _threads.spans(x2.shape[0]))
    return out2


def search(x2, imp2, scale, offset, lo, hi, qmin, qmax, symmetric_kind, alphas, refits, f16, smallest):
    """Clip search and refits for every block; returns (scale, offset) float64 arrays."""
    nb = x2.shape[0]
    out_s, out_z = np.empty(nb), np.empty(nb)
    table = table_of(x2)
    _threads.run(
        lambda s: search_blocks(x2, table, imp2, s[0], s[1], scale, offset, lo, hi, float(qmin), float(qmax),
                                symmetric_kind, alphas, refits, f16, smallest, out_s, out_z),
        _threads.spans(nb),
    )
    return out_s, out_z
