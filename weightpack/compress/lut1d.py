"""Scalar LUTs for many groups at once: fitting (k-means, uniform, unique) and nearest-entry indices.

The weights come as a 3-D view ``(outer, G, L)``: group g is ``x3[:, g, :]`` (for groups of
channels along an axis, ``outer`` is the product of the dimensions before it and
``L = group_size * inner``). Optional per-element weights of the objective are ``imp3`` (same view,
float32) times ``sw[o * inner + l % inner]`` (a factor per position across the group axis, e.g. a
per-input-channel scale squared); empty arrays mean 1.

k-means per group:

- float16 (``x3`` is the uint16 view of the bits): the histogram of the bit patterns (+0 and -0
  merged) gives the distinct values and their summed weights; the exact DP of :mod:`.kmeans` runs
  on them. Groups of at most ``SMALL`` elements sort their values instead (same distinct values,
  same result).
- float32: groups of at most ``SMALL`` elements are solved exactly on their sorted distinct values.
  Larger groups are binned (:func:`key32_bits`: the value scaled by a power of two so the largest
  magnitude is below 2**15, truncated to binary16 precision: 10 mantissa bits, multiples of 2**-24
  below 2**-14); the DP runs on the bins (each at its exact mean), which is exact when every bin
  holds one distinct value. Otherwise Lloyd passes over the raw values follow (only the elements
  of bins that straddle a decision boundary are looked at one by one) until moving the centroids
  gains less than ``LLOYD_GAIN`` of the error.

Everything here is deterministic: sums are taken in a fixed order whatever the thread count. The
loops run in C (csrc/encode_lut.c, compiled at install; bit for bit the numba kernels they
replaced); this module cuts the work into parallel tasks and combines their results.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from . import _threads
from ._common import fp16_order, fp16_values
from ._native import NULL, lib, ptr, run, scalar, wptr

SMALL = 8192  # groups up to this many elements are sorted instead of histogrammed (as in the C kernels)
LLOYD_PASSES = 12
LLOYD_GAIN = 1e-7  # Lloyd passes stop once moving the centroids gains less than this fraction of the error
NO_IMP = np.empty((0, 0, 0), np.float32)
NO_SW = np.empty(0)
NO_TABLE = np.empty(0)
NO_WEIGHT = -5  # what wp_enc_solve_bins32 returns when no bin has weight (WP_E_ARG)


@functools.cache
def key32_order() -> np.ndarray:
    """The bins of :func:`key32_bits` in increasing value order: as :func:`fp16_order`, with 0x8000
    (small negative values) right before 0."""
    order = fp16_order()
    zero = int(np.flatnonzero(order == 0)[0])
    out = np.concatenate((order[:zero], [0x8000], order[zero:])).astype(np.int32)
    out.flags.writeable = False
    return out


def _view(x3, imp3=NO_IMP, sw=NO_SW, inner=1):
    """The arguments every group kernel starts with: weights, importance, position factors, dims."""
    return (ptr(x3), ptr(imp3), ptr(sw), *x3.shape, inner)


def _codes(out3):
    return wptr(out3) if out3.size else NULL


def new_records(squares: bool) -> np.ndarray:
    """An empty float32 histogram of :func:`hist32` (2 columns, or 4 with squares)."""
    rec = np.zeros((65536, 4 if squares else 2))
    if squares:
        rec[:, 3] = np.nan
    return rec


def hist16(bits3, imp3, sw, inner, g, l0, l1, counts):
    """Add each element's weight to ``counts[its bit pattern]`` (float64 [65536])."""
    run(lib.wp_enc_hist16(*_view(bits3, imp3, sw, inner), g, l0, l1, wptr(counts)), "k-means histogram")


def hist32(x3, keys3, imp3, sw, inner, g, l0, l1, rec, skip_zero, squares):
    """Add every element to ``rec[its bin]`` (see :func:`new_records`): weight, weighted sum and, with
    ``squares``, weighted sum of squares and whether the bin holds one value."""
    x, imp, sw_, *dims = _view(x3, imp3, sw, inner)
    run(lib.wp_enc_hist32(x, ptr(keys3), imp, sw_, *dims, g, l0, l1, wptr(rec), skip_zero, squares), "k-means histogram")


def merge_records(rec, part):
    """Add the histogram ``part`` into ``rec`` (same layout as :func:`hist32`)."""
    run(lib.wp_enc_merge_records(wptr(rec), ptr(part), rec.shape[1] == 4), "k-means histogram")


def kmeans16_groups(bits3, imp3, sw, inner, k, g0, g1, values, order, cent_out, sse_out, skip_zero, curve, out3):
    """Optimal k-means of the float16 groups g0..g1-1: centroids (float64, ascending, unused entries
    repeat the largest) and the optimal SSE with 1..k clusters. With a non-empty ``out3`` also the
    indices for the float16-rounded centroids (the stored LUT), in the same pass."""
    run(lib.wp_enc_kmeans16_groups(*_view(bits3, imp3, sw, inner), k, g0, g1, ptr(values), ptr(order), order.size,
                                   wptr(cent_out), wptr(sse_out), skip_zero, curve, _codes(out3)), "k-means")


def kmeans32_groups(x3, keys3, imp3, sw, inner, k, g0, g1, delta, values, order, cent_out, sse_out, skip_zero, curve,
                    out3):
    """As :func:`kmeans16_groups` for float32 groups (binned DP + Lloyd when large; ``keys3``: the
    bins of :func:`keys32`). A non-empty ``out3`` gets the indices for the float32-rounded centroids."""
    x, imp, sw_, *dims = _view(x3, imp3, sw, inner)
    run(lib.wp_enc_kmeans32_groups(x, ptr(keys3), imp, sw_, *dims, k, g0, g1, delta, ptr(values), ptr(order),
                                   order.size, wptr(cent_out), wptr(sse_out), skip_zero, curve, _codes(out3)), "k-means")


def key32_bits(bits, lo, hi, delta, keys):
    """Bins of float32 values ``bits[lo:hi]`` (uint32 view) into ``keys[lo:hi]``: the value times
    2**delta truncated to binary16 precision, as a binary16-like pattern with the value's sign."""
    run(lib.wp_enc_key32_bits(ptr(bits), lo, hi, delta, wptr(keys)), "k-means bins")


class Fit(NamedTuple):
    """What :func:`kmeans` returns: centroids and SSE curves, and the float32 bins (for :func:`assign`)."""

    centroids: np.ndarray  # float64 [G, k]
    sse: np.ndarray  # float64 [G, k] (zeros unless the curve was asked for)
    keys3: np.ndarray | None = None  # uint16 bins of float32 elements, or None
    delta: int = 0
    codes3: np.ndarray | None = None  # uint8 indices for the centroids rounded to the weights' dtype, or None


def kmeans(x3: np.ndarray, imp3: np.ndarray, sw: np.ndarray, inner: int, k: int, skip_zero: bool = False,
           curve: bool = False, codes: bool = False) -> Fit:
    """(centroids float64 [G, k], optimal SSE per number of clusters [G, k]) for every group.

    The SSE curve is computed only with ``curve`` (zeros otherwise: the k-partition alone is found
    with less work). For float32 groups above ``SMALL`` elements it is the SSE of the optimal
    partition of the bins (exact when every bin holds one value). ``skip_zero`` leaves the value 0
    out of the fit (the pruned positions of a sparse tensor). With ``codes``, groups also get the
    indices for their centroids rounded to the weights' dtype in the same pass (``Fit.codes3``; not
    for one big group, which :func:`assign` indexes in parallel chunks)."""
    G = x3.shape[1]
    cent = np.empty((G, k))
    sse = np.empty((G, k))
    if x3.dtype == np.uint16:
        if G == 1 and x3.size > 4 * SMALL:
            return Fit(*_kmeans16_chunked(x3, imp3, sw, inner, k, skip_zero, curve))
        values, order = fp16_values(), fp16_order()
        out3 = np.empty(x3.shape if codes else (0, 0, 0), np.uint8)
        _threads.run(
            lambda s: kmeans16_groups(x3, imp3, sw, inner, k, s[0], s[1], values, order, cent, sse, skip_zero, curve, out3),
            _threads.spans(G),
        )
        return Fit(cent, sse, codes3=out3 if codes else None)
    delta = scale_delta(x3)
    keys3 = keys32(x3, delta) if x3.shape[0] * x3.shape[2] > SMALL else np.empty((0, 0, 0), np.uint16)
    if G == 1 and x3.size > 4 * SMALL:
        return Fit(*_kmeans32_chunked(x3, keys3, imp3, sw, inner, k, delta, skip_zero, curve), keys3, delta)
    values, order = fp16_values(), key32_order()
    out3 = np.empty(x3.shape if codes else (0, 0, 0), np.uint8)
    _threads.run(
        lambda s: kmeans32_groups(x3, keys3, imp3, sw, inner, k, s[0], s[1], delta, values, order, cent, sse, skip_zero,
                                  curve, out3),
        _threads.spans(G),
    )
    return Fit(cent, sse, keys3 if keys3.size else None, delta, out3 if codes else None)


def scale_delta(x3: np.ndarray) -> int:
    """15 - E where 2**E is above every magnitude in ``x3`` (float32), at most 112."""
    top = max(abs(float(x3.max())), abs(float(x3.min()))) if x3.size else 0.0
    return min(15 - int(np.frexp(top)[1]), 112) if top > 0 else 0


def _kmeans16_chunked(bits3, imp3, sw, inner, k, skip_zero, curve):
    parts = _threads.chunks(bits3.shape[2], size=_threads.HIST_CHUNK)
    hists = _threads.run(lambda span: _hist16_part(bits3, imp3, sw, inner, span), parts)
    counts = hists[0]
    for h in hists[1:]:
        counts += h
    live = counts.copy()
    if skip_zero:
        live[[0, 0x8000]] = 0
    if not (live > 0).any():
        if imp3.size or sw.size:  # every weight is zero: plain k-means
            return _kmeans16_chunked(bits3, NO_IMP, NO_SW, inner, k, skip_zero, curve)
        return np.zeros((1, k)), np.zeros((1, k))  # nothing but pruned zeros
    cent = np.empty((1, k))
    sse = np.empty((1, k))
    _solve_hist16(counts, fp16_order(), fp16_values(), k, cent, sse, skip_zero, curve)
    return cent, sse


def _hist16_part(bits3, imp3, sw, inner, span):
    counts = np.zeros(65536)
    hist16(bits3, imp3, sw, inner, 0, span[0], span[1], counts)
    return counts


def _solve_hist16(counts, order, values, k, cent_out, sse_out, skip_zero, curve):
    run(lib.wp_enc_solve_hist16(wptr(counts), ptr(order), order.size, ptr(values), k, wptr(cent_out), wptr(sse_out),
                                skip_zero, curve), "k-means")


def _kmeans32_chunked(x3, keys3, imp3, sw, inner, k, delta, skip_zero, curve):
    parts = _threads.chunks(x3.shape[2], size=_threads.HIST_CHUNK)

    def histogram(span):
        rec = new_records(curve)
        hist32(x3, keys3, imp3, sw, inner, 0, span[0], span[1], rec, skip_zero, curve)
        return rec

    hists = _threads.run(histogram, parts)
    rec = hists[0]
    for part in hists[1:]:
        merge_records(rec, part)
    cent, sse = np.empty((1, k)), np.empty((1, k))
    bkey, bvals = np.empty(65536, np.int32), np.empty((5, 65536))
    nb, q, pure, scale = scalar("long long"), scalar("long long"), scalar("int"), scalar("double")
    order = key32_order()
    status = lib.wp_enc_solve_bins32(wptr(rec), curve, ptr(order), order.size, delta, ptr(fp16_values()), k, curve,
                                     wptr(cent), wptr(sse), wptr(bkey), wptr(bvals), nb, q, pure, scale)
    if status == NO_WEIGHT:
        if imp3.size or sw.size:  # every weight is zero: plain k-means
            return _kmeans32_chunked(x3, keys3, NO_IMP, NO_SW, inner, k, delta, skip_zero, curve)
        return np.zeros((1, k)), np.zeros((1, k))  # nothing but pruned zeros
    run(status, "k-means")
    means = cent[0, : q[0]].copy()
    if not curve and not pure[0]:
        _lloyd_chunked(x3, keys3, imp3, sw, inner, means, bkey, bvals, nb[0], parts, skip_zero, scale[0])
    cent[0] = means[np.minimum(np.arange(k), means.size - 1)]
    return cent, sse


def _lloyd_chunked(x3, keys3, imp3, sw, inner, cent, bkey, bvals, nb, parts, skip_zero, scale):
    """Lloyd passes on the raw values of one big group, the straddling elements counted in parallel."""
    cls = np.empty(65536, np.int32)
    q = cent.size
    x, imp, sw_, *dims = _view(x3, imp3, sw, inner)
    for _ in range(LLOYD_PASSES):
        CW, CS1, mids = np.zeros(q), np.zeros(q), np.empty(max(q - 1, 1))
        run(lib.wp_enc_classify_bins(ptr(cent), q, ptr(bkey), ptr(bvals), nb, wptr(cls), wptr(CW), wptr(CS1), wptr(mids)),
            "k-means")

        def straddlers(span):
            part = np.zeros((2, q))
            run(lib.wp_enc_straddle_sums(x, ptr(keys3), imp, sw_, *dims, 0, span[0], span[1], ptr(cls), ptr(mids), q - 1,
                                         wptr(part[0]), wptr(part[1]), skip_zero), "k-means")
            return part

        for part in _threads.run(straddlers, parts):
            CW += part[0]
            CS1 += part[1]
        gain = scalar("double")
        run(lib.wp_enc_lloyd_step(ptr(CW), ptr(CS1), wptr(cent), q, gain), "k-means")
        if not gain[0] >= LLOYD_GAIN * scale:
            break


def keys32(x3: np.ndarray, delta: int) -> np.ndarray:
    """The bin of every float32 element (:func:`key32_bits`), in parallel chunks."""
    flat = x3.reshape(-1).view(np.uint32)
    out = np.empty(flat.shape, np.uint16)
    _threads.run(lambda span: key32_bits(flat, span[0], span[1], delta, out), _threads.chunks(flat.size))
    return out.reshape(x3.shape)


def assign(x3: np.ndarray, luts: np.ndarray, fit: Fit | None = None) -> np.ndarray:
    """uint8 codes (the view's shape): each element's nearest entry in its group's LUT ``luts[g]``
    (float64, ascending); ties go to the lower index. ``fit`` (from :func:`kmeans`) lends its
    float32 bins, which make the search cheaper."""
    out3 = np.empty(x3.shape, np.uint8)
    luts = np.ascontiguousarray(luts, np.float64)
    G, k = luts.shape
    values = fp16_values()
    half = x3.dtype == np.uint16
    keys3 = fit.keys3 if fit is not None and fit.keys3 is not None else None
    delta = fit.delta if keys3 is not None else 0
    if G == 1 and x3.size > 4 * SMALL:
        table = np.empty(65536, np.int16)
        if keys3 is not None:
            run(lib.wp_enc_bin_codes(ptr(luts[0]), k, delta, ptr(values), wptr(table)), "palettize")

        def part(span):
            codes = np.full(65536, 0xFFFF, np.uint16) if half else table  # float16: a table of codes per chunk
            run(lib.wp_enc_assign_chunk(ptr(x3), half, ptr(keys3), *x3.shape, span[0], span[1], ptr(luts[0]), k, delta,
                                        ptr(values), wptr(codes), wptr(out3)), "palettize")

        _threads.run(part, _threads.chunks(x3.shape[2]))
    else:
        _threads.run(lambda s: run(lib.wp_enc_assign_groups(ptr(x3), half, ptr(keys3), *x3.shape, delta, ptr(values),
                                                            s[0], s[1], ptr(luts), k, wptr(out3)), "palettize"),
                     _threads.spans(G))
    return out3


def minmax(x3: np.ndarray, skip_zero: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) of every group, float64."""
    G = x3.shape[1]
    lo, hi = np.empty(G), np.empty(G)
    half = x3.dtype == np.uint16
    _threads.run(lambda s: run(lib.wp_enc_minmax_groups(ptr(x3), half, ptr(fp16_values()), *x3.shape, s[0], s[1],
                                                        wptr(lo), wptr(hi), skip_zero), "palettize"),
                 _threads.spans(G))
    return lo, hi


def distinct(x3: np.ndarray, limit: int, skip_zero: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values per group [G, limit], how many per group; limit + 1 = too many)."""
    G = x3.shape[1]
    values, counts = np.zeros((G, limit)), np.zeros(G, np.int64)
    half = x3.dtype == np.uint16
    _threads.run(lambda s: run(lib.wp_enc_distinct_groups(ptr(x3), half, ptr(fp16_values()), *x3.shape, s[0], s[1],
                                                          limit, wptr(values), wptr(counts), skip_zero), "palettize"),
                 _threads.spans(G))
    return values, counts
