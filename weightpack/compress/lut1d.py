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

Everything here is deterministic: sums are taken in a fixed order whatever the thread count.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numba
import numpy as np

from . import _threads
from ._common import fp16_order, fp16_values
from ._jit import round_f16, value
from .kmeans import dp_means, dp_solve, solve_k_in, workspace

SMALL = 8192  # groups up to this many elements are sorted instead of histogrammed
LLOYD_PASSES = 12
LLOYD_GAIN = 1e-7  # Lloyd passes stop once moving the centroids gains less than this fraction of the error
NO_IMP = np.empty((0, 0, 0), np.float32)
NO_SW = np.empty(0)
NO_TABLE = np.empty(0)


@functools.cache
def key32_order() -> np.ndarray:
    """The bins of :func:`key32_bits` in increasing value order: as :func:`fp16_order`, with 0x8000
    (small negative values) right before 0."""
    order = fp16_order()
    zero = int(np.flatnonzero(order == 0)[0])
    out = np.concatenate((order[:zero], [0x8000], order[zero:])).astype(np.int32)
    out.flags.writeable = False
    return out


@numba.njit(nogil=True, cache=True, inline="always")
def _weight(imp3, sw, inner, o, g, l, r):
    """The objective's weight of element (o, g, l); ``r`` = l % inner, kept by the caller."""
    w = 1.0
    if imp3.shape[0] > 0:
        w = np.float64(imp3[o, g, l])
    if sw.shape[0] > 0:
        w *= sw[o * inner + r]
    return w


@numba.njit(nogil=True, cache=True, inline="always")
def _rank(mids, v):
    """#(mids < v) for sorted ``mids``: a branch-free count when short, else a binary search."""
    n = mids.shape[0]
    if n <= 32:
        c = 0
        for j in range(n):
            c += mids[j] < v
        return c
    return np.searchsorted(mids, v)


@numba.njit(nogil=True, cache=True)
def _nearest(entries, first, mids, v):
    """Index of the nearest entry: first[#(mids < v)] (ties to the lower index)."""
    return first[_rank(mids, v)]


@numba.njit(nogil=True, cache=True)
def _nearest_tables(entries):
    k = entries.shape[0]
    mids = np.empty(max(k - 1, 0))
    for i in range(k - 1):
        mids[i] = (entries[i] + entries[i + 1]) * 0.5
    first = np.empty(k, np.int64)
    for i in range(k):
        first[i] = i if i == 0 or entries[i] != entries[i - 1] else first[i - 1]
    return mids, first


@numba.njit(nogil=True, cache=True)
def hist16(bits3, imp3, sw, inner, g, l0, l1, counts):
    """Add each element's weight to ``counts[its bit pattern]`` (float64 [65536])."""
    if imp3.shape[0] == 0 and sw.shape[0] == 0:
        for o in range(bits3.shape[0]):
            seg = bits3[o, g]
            for l in range(l0, l1):
                counts[seg[l]] += 1.0
        return
    for o in range(bits3.shape[0]):
        r = l0 % inner
        for l in range(l0, l1):
            counts[bits3[o, g, l]] += _weight(imp3, sw, inner, o, g, l, r)
            r += 1
            if r == inner:
                r = 0


@numba.njit(nogil=True, cache=True)
def compact16(counts, order, values, xs, ws, ks, skip_zero):
    """Distinct values (increasing) with positive weight into xs/ws (their bit patterns into ``ks``
    when it is not empty); resets ``counts``. Returns m. With ``skip_zero`` the value 0 is left out."""
    counts[0] = 0.0 if skip_zero else counts[0] + counts[0x8000]
    counts[0x8000] = 0.0
    keep_keys = ks.shape[0] > 0
    m = 0
    for i in range(order.shape[0]):
        key = order[i]
        c = counts[key]
        if c != 0.0:
            if c > 0.0:
                xs[m] = values[key]
                ws[m] = c
                if keep_keys:
                    ks[m] = key
                m += 1
            counts[key] = 0.0
    return m


@numba.njit(nogil=True, cache=True)
def _sorted_distinct(x3, table, imp3, sw, inner, g, xs, ws, skip_zero):
    """Distinct values of group g (sorted, -0 merged into +0) with summed positive weights. Returns m."""
    outer = x3.shape[0]
    L = x3.shape[2]
    n = outer * L
    vals = np.empty(n)
    wts = np.empty(n)
    i = 0
    for o in range(outer):
        r = 0
        for l in range(L):
            vals[i] = value(x3[o, g, l], table) + 0.0
            wts[i] = _weight(imp3, sw, inner, o, g, l, r)
            i += 1
            r += 1
            if r == inner:
                r = 0
    order = np.argsort(vals, kind="mergesort")
    m = 0
    for q in range(n):
        v = vals[order[q]]
        w = wts[order[q]]
        if m > 0 and v == xs[m - 1]:
            ws[m - 1] += w
        else:
            xs[m] = v
            ws[m] = w
            m += 1
    kept = 0  # drop values whose total weight is not positive
    for q in range(m):
        if ws[q] > 0.0 and not (skip_zero and xs[q] == 0.0):
            xs[kept] = xs[q]
            ws[kept] = ws[q]
            kept += 1
    return kept


@numba.njit(nogil=True, cache=True)
def hist32(x3, keys3, imp3, sw, inner, g, l0, l1, rec, skip_zero, squares):
    """Add every element to ``rec[its bin]`` = (weight, weighted sum, and with ``squares`` (4
    columns) the weighted sum of squares and whether the bin holds one value: column 3 is the first
    value, NaN while empty, +inf once a second value was seen). Without squares ``rec`` has 2
    columns: half the memory traffic."""
    weighted = imp3.shape[0] > 0 or sw.shape[0] > 0
    for o in range(x3.shape[0]):
        r = l0 % inner
        seg = x3[o, g]
        kseg = keys3[o, g]
        for l in range(l0, l1):
            v = np.float64(seg[l])
            key = kseg[l]
            w = 1.0
            if weighted:
                w = _weight(imp3, sw, inner, o, g, l, r)
                r += 1
                if r == inner:
                    r = 0
            if skip_zero and v == 0.0:
                continue
            rec[key, 0] += w
            rec[key, 1] += w * v
            if squares:
                rec[key, 2] += w * v * v
                f = rec[key, 3]
                if f != v and f != np.inf:
                    rec[key, 3] = v if np.isnan(f) else np.inf


@numba.njit(nogil=True, cache=True)
def merge_records(rec, part):
    """Add the histogram ``part`` into ``rec`` (same layout as :func:`hist32`)."""
    wide = rec.shape[1] == 4
    for key in range(rec.shape[0]):
        rec[key, 0] += part[key, 0]
        rec[key, 1] += part[key, 1]
        if wide:
            rec[key, 2] += part[key, 2]
            f = part[key, 3]
            r = rec[key, 3]
            if np.isnan(r):
                rec[key, 3] = f
            elif r != f and not np.isnan(f):
                rec[key, 3] = np.inf


def new_records(squares: bool) -> np.ndarray:
    rec = np.zeros((65536, 4 if squares else 2))
    if squares:
        rec[:, 3] = np.nan
    return rec


@numba.njit(nogil=True, cache=True)
def bin_bounds(key, delta, values):
    """The closed value range [lo, hi] that bin ``key`` of :func:`key32_bits` can hold: from its
    binary16 value to the next one (``values``: :func:`fp16_values`), over 2**delta."""
    code = key & 0x7FFF
    scale = 2.0 ** (-delta)
    a = values[code] * scale
    b = values[code + 1] * scale
    if key & 0x8000:
        return -b, -a
    return a, b


@numba.njit(nogil=True, cache=True)
def compact32(rec, order, delta, values, bkey, bw, bs1, bs2, blo, bhi):
    """Touched bins (positive weight) in value order into the b* arrays; a bin known to hold one
    value has that value as its range, the others the range :func:`bin_bounds` allows. Resets
    ``rec``. Returns the count."""
    wide = rec.shape[1] == 4
    m = 0
    for i in range(order.shape[0]):
        key = order[i]
        f = rec[key, 3] if wide else np.nan
        if rec[key, 0] > 0.0:
            bkey[m] = key
            bw[m] = rec[key, 0]
            bs1[m] = rec[key, 1]
            bs2[m] = rec[key, 2] if wide else 0.0
            if np.isnan(f) or f == np.inf:
                lo, hi = bin_bounds(key, delta, values)
                blo[m] = lo
                bhi[m] = hi
            else:
                blo[m] = f
                bhi[m] = f
            m += 1
        if rec[key, 0] != 0.0 or rec[key, 1] != 0.0 or not np.isnan(f):
            rec[key, 0] = 0.0
            rec[key, 1] = 0.0
            if wide:
                rec[key, 2] = 0.0
                rec[key, 3] = np.nan
    return m


@numba.njit(nogil=True, cache=True)
def _bins_points(bw, bs1, blo, bhi, nb, xs, ws):
    """DP input from the bins: positive-weight bins at their mean (their value when pure). Returns
    (m, pure)."""
    m = 0
    pure = True
    for b in range(nb):
        if bw[b] > 0.0:
            if blo[b] == bhi[b]:
                xs[m] = blo[b]
            else:
                pure = False
                mean = bs1[b] / bw[b]
                xs[m] = min(max(mean, blo[b]), bhi[b])
            ws[m] = bw[b]
            m += 1
    return m, pure


@numba.njit(nogil=True, cache=True)
def classify_bins(cent, bkey, bw, bs1, blo, bhi, nb, cls, CW, CS1):
    """For Lloyd on raw values: bins wholly inside one cell add their sums to that cluster and get
    ``cls[key]`` = cluster; bins across a boundary get -1 (their elements are looked at one by one).
    Returns the midpoints."""
    k = cent.shape[0]
    mids = np.empty(max(k - 1, 0))
    for i in range(k - 1):
        mids[i] = (cent[i] + cent[i + 1]) * 0.5
    CW[:] = 0.0
    CS1[:] = 0.0
    for b in range(nb):
        lo = _rank(mids, blo[b])
        hi = _rank(mids, bhi[b])
        if lo == hi:
            cls[bkey[b]] = lo
            CW[lo] += bw[b]
            CS1[lo] += bs1[b]
        else:
            cls[bkey[b]] = -1
    return mids


@numba.njit(nogil=True, cache=True)
def straddle_sums(x3, keys3, imp3, sw, inner, g, l0, l1, cls, mids, CW, CS1, skip_zero):
    """Add the elements of straddling bins to the cluster of their nearest centroid."""
    for o in range(x3.shape[0]):
        kseg = keys3[o, g]
        for l in range(l0, l1):
            if cls[kseg[l]] < 0:
                v = np.float64(x3[o, g, l])
                if skip_zero and v == 0.0:
                    continue
                c = _rank(mids, v)
                w = _weight(imp3, sw, inner, o, g, l, l % inner)
                CW[c] += w
                CS1[c] += w * v


@numba.njit(nogil=True, cache=True)
def lloyd_step(CW, CS1, cent):
    """Move the centroids to their clusters' means; returns what that alone lowers the error by
    (``sum CW * shift**2``), or -1 if a cluster is empty (the centroids are then left as they are)."""
    for c in range(cent.shape[0]):
        if not CW[c] > 0.0:
            return -1.0
    gain = 0.0
    for c in range(cent.shape[0]):
        new = CS1[c] / CW[c]
        gain += CW[c] * (new - cent[c]) ** 2
        cent[c] = new
    return gain


@numba.njit(nogil=True, cache=True)
def bins_error(cent, xs, ws, m):
    """The error of the points (xs, ws) at their nearest centroids: the scale Lloyd's gains are
    compared with."""
    k = cent.shape[0]
    mids = np.empty(max(k - 1, 0))
    for i in range(k - 1):
        mids[i] = (cent[i] + cent[i + 1]) * 0.5
    err = 0.0
    for b in range(m):
        d = xs[b] - cent[_rank(mids, xs[b])]
        err += ws[b] * d * d
    return err


@numba.njit(nogil=True, cache=True)
def _partition(xs, ws, k, curve, scratch):
    """(cluster starts, optimal SSE per number of clusters 1..k or zeros): the k-layer DP when the
    curve is wanted, else the one-layer penalized DP (``scratch``: :func:`.kmeans.workspace`)."""
    if curve:
        return dp_solve(xs, ws, k)
    return solve_k_in(xs, ws, k, scratch), np.zeros(k)


@numba.njit(nogil=True, cache=True)
def _store(cent_out, sse_out, g, means, sse):
    k = cent_out.shape[1]
    q = means.shape[0]
    for c in range(k):
        cent_out[g, c] = means[min(c, q - 1)]
    for c in range(k):
        sse_out[g, c] = sse[c]


@numba.njit(nogil=True, cache=True)
def kmeans16_groups(bits3, imp3, sw, inner, k, g0, g1, values, order, cent_out, sse_out, skip_zero, curve, out3):
    """Optimal k-means of the float16 groups g0..g1-1: centroids (float64, ascending, unused entries
    repeat the largest) and the optimal SSE with 1..k clusters. With a non-empty ``out3`` also the
    indices for the float16-rounded centroids (the stored LUT), in the same pass."""
    n = bits3.shape[0] * bits3.shape[2]
    cap = min(n, 65536)
    xs = np.empty(cap)
    ws = np.empty(cap)
    big = n > SMALL
    counts = np.zeros(65536) if big else np.zeros(0)
    codes = out3.shape[0] > 0
    ks = np.empty(cap if codes and big else 0, np.int32)
    table = np.empty(65536 if codes and big else 0, np.uint16)
    entries = np.empty(k)
    scratch = workspace(cap)
    for g in range(g0, g1):
        m = _distinct16(bits3, imp3, sw, inner, g, values, order, counts, xs, ws, ks, skip_zero)
        if m == 0:  # every weight is zero: plain k-means
            m = _distinct16(bits3, imp3[:0, :0, :0], sw[:0], inner, g, values, order, counts, xs, ws, ks, skip_zero)
        if m == 0:  # nothing to fit (an all-zero group of a sparse tensor)
            xs[0] = 0.0
            ws[0] = 1.0
            m = 1
        starts, sse = _partition(xs[:m], ws[:m], k, curve, scratch)
        _store(cent_out, sse_out, g, dp_means(xs[:m], ws[:m], starts), sse)
        if not codes:
            continue
        for c in range(k):
            entries[c] = round_f16(cent_out[g, c])
        if big:
            _codes_from_distinct(bits3, g, entries, values, xs, ks, m, table, out3)
        else:
            assign_search(bits3, values, g, 0, bits3.shape[2], entries, out3)


@numba.njit(nogil=True, cache=True)
def _codes_from_distinct(bits3, g, entries, values, xs, ks, m, table, out3):
    """Indices of group g: the code of each distinct value (``xs``/``ks``, ascending) by one walk
    along the midpoints, then one lookup per element (values left out of the fit are searched)."""
    mids, first = _nearest_tables(entries)
    table[:] = 0xFFFF
    p = 0
    for i in range(m):
        while p < mids.shape[0] and mids[p] < xs[i]:
            p += 1
        table[ks[i]] = first[p]
    assign16(bits3, g, 0, bits3.shape[2], entries, values, table, out3)


@numba.njit(nogil=True, cache=True)
def _distinct16(bits3, imp3, sw, inner, g, values, order, counts, xs, ws, ks, skip_zero):
    if counts.shape[0] == 0:
        return _sorted_distinct(bits3, values, imp3, sw, inner, g, xs, ws, skip_zero)
    hist16(bits3, imp3, sw, inner, g, 0, bits3.shape[2], counts)
    return compact16(counts, order, values, xs, ws, ks, skip_zero)


@numba.njit(nogil=True, cache=True)
def kmeans32_groups(x3, keys3, imp3, sw, inner, k, g0, g1, delta, values, order, cent_out, sse_out, skip_zero, curve,
                    out3):
    """As :func:`kmeans16_groups` for float32 groups (binned DP + Lloyd when large; ``keys3``: the
    bins of :func:`keys32`). The SSE curve is that of the optimal partition of the bins (exact when
    the bins are pure). A non-empty ``out3`` gets the indices for the float32-rounded centroids."""
    n = x3.shape[0] * x3.shape[2]
    cap = min(n, 65536)
    xs = np.empty(cap)
    ws = np.empty(cap)
    big = n > SMALL
    nh = 65536 if big else 0
    rec = np.zeros((nh, 4 if curve else 2))
    if curve:
        rec[:, 3] = np.nan
    bins = (np.empty(cap, np.int32), np.empty(cap), np.empty(cap), np.empty(cap), np.empty(cap), np.empty(cap))
    cls = np.empty(nh, np.int32)
    scratch = workspace(cap)
    codes = out3.shape[0] > 0
    table = np.empty(nh if codes else 0, np.int16)
    entries = np.empty(k)
    for g in range(g0, g1):
        if not big:
            m = _sorted_distinct(x3, xs[:0], imp3, sw, inner, g, xs, ws, skip_zero)
            if m == 0:
                m = _sorted_distinct(x3, xs[:0], imp3[:0, :0, :0], sw[:0], inner, g, xs, ws, skip_zero)
            if m == 0:
                xs[0] = 0.0
                ws[0] = 1.0
                m = 1
            starts, sse = _partition(xs[:m], ws[:m], k, curve, scratch)
            _store(cent_out, sse_out, g, dp_means(xs[:m], ws[:m], starts), sse)
            if codes:
                for c in range(k):
                    entries[c] = np.float32(cent_out[g, c])
                assign_search(x3, xs[:0], g, 0, x3.shape[2], entries, out3)
            continue
        use_imp = imp3
        use_sw = sw
        hist32(x3, keys3, use_imp, use_sw, inner, g, 0, x3.shape[2], rec, skip_zero, curve)
        nb = compact32(rec, order, delta, values, *bins)
        m, pure = _bins_points(bins[1], bins[2], bins[4], bins[5], nb, xs, ws)
        if m == 0:  # every weight is zero: plain k-means
            use_imp = imp3[:0, :0, :0]
            use_sw = sw[:0]
            hist32(x3, keys3, use_imp, use_sw, inner, g, 0, x3.shape[2], rec, skip_zero, curve)
            nb = compact32(rec, order, delta, values, *bins)
            m, pure = _bins_points(bins[1], bins[2], bins[4], bins[5], nb, xs, ws)
        if m == 0:  # nothing to fit (an all-zero group of a sparse tensor)
            _store(cent_out, sse_out, g, np.zeros(1), np.zeros(k))
            continue
        starts, sse = _partition(xs[:m], ws[:m], k, curve, scratch)
        cent = _bin_cluster_means(bins[1], bins[2], nb, starts, xs[:m])
        if curve:
            sse += _within(bins[1], bins[2], bins[3], nb)
        elif not pure:
            _lloyd_group(x3, keys3, use_imp, use_sw, inner, g, cent, bins, nb, cls, skip_zero, bins_error(cent, xs, ws, m))
        _store(cent_out, sse_out, g, cent, sse)
        if codes:
            for c in range(k):
                entries[c] = np.float32(cent_out[g, c])
            _codes_from_bins(x3, keys3, g, entries, bins, nb, table, out3)


@numba.njit(nogil=True, cache=True)
def _codes_from_bins(x3, keys3, g, entries, bins, nb, table, out3):
    """Indices of float32 group g: each bin's code by one walk along the midpoints (-1 where a
    midpoint cuts the bin), then one lookup per element, or a search for the cut bins' elements."""
    mids, first = _nearest_tables(entries)
    table[:] = -1
    p = 0
    for b in range(nb):
        while p < mids.shape[0] and mids[p] < bins[4][b]:
            p += 1
        q = p
        while q < mids.shape[0] and mids[q] < bins[5][b]:
            q += 1
        table[bins[0][b]] = first[p] if p == q else -1
    for o in range(x3.shape[0]):
        seg = x3[o, g]
        kseg = keys3[o, g]
        dst = out3[o, g]
        for l in range(x3.shape[2]):
            c = table[kseg[l]]
            dst[l] = c if c >= 0 else first[_rank(mids, np.float64(seg[l]))]


@numba.njit(nogil=True, cache=True)
def _within(bw, bs1, bs2, nb):
    """Sum of the squared deviations inside each bin (what the DP on bin means leaves out)."""
    total = 0.0
    for b in range(nb):
        if bw[b] > 0.0:
            total += max(bs2[b] - bs1[b] * bs1[b] / bw[b], 0.0)
    return total


@numba.njit(nogil=True, cache=True)
def _bin_cluster_means(bw, bs1, nb, starts, xs):
    """Exact cluster means from the bins' sums (clusters given as runs of positive-weight bins)."""
    q = starts.shape[0]
    m = xs.shape[0]
    cw = np.zeros(q)
    c1 = np.zeros(q)
    c = 0
    point = 0
    for b in range(nb):
        if bw[b] > 0.0:
            while c + 1 < q and point >= starts[c + 1]:
                c += 1
            cw[c] += bw[b]
            c1[c] += bs1[b]
            point += 1
    out = np.empty(q)
    for c in range(q):
        out[c] = c1[c] / cw[c]
    return out


@numba.njit(nogil=True, cache=True)
def _lloyd_group(x3, keys3, imp3, sw, inner, g, cent, bins, nb, cls, skip_zero, scale):
    """Lloyd passes on group g's raw values; stops once a pass gains less than LLOYD_GAIN * scale."""
    k = cent.shape[0]
    CW = np.zeros(k)
    CS1 = np.zeros(k)
    for _ in range(LLOYD_PASSES):
        mids = classify_bins(cent, bins[0], bins[1], bins[2], bins[4], bins[5], nb, cls, CW, CS1)
        straddle_sums(x3, keys3, imp3, sw, inner, g, 0, x3.shape[2], cls, mids, CW, CS1, skip_zero)
        gain = lloyd_step(CW, CS1, cent)
        if not gain >= LLOYD_GAIN * scale:
            break


@numba.njit(nogil=True, cache=True)
def minmax_groups(x3, table, g0, g1, lo_out, hi_out, skip_zero):
    """Smallest and largest value of each group (float64; 0, 0 if there is none)."""
    for g in range(g0, g1):
        lo = np.inf
        hi = -np.inf
        for o in range(x3.shape[0]):
            for l in range(x3.shape[2]):
                v = value(x3[o, g, l], table)
                if skip_zero and v == 0.0:
                    continue
                lo = min(lo, v)
                hi = max(hi, v)
        lo_out[g] = lo if lo <= hi else 0.0
        hi_out[g] = hi if lo <= hi else 0.0


@numba.njit(nogil=True, cache=True)
def distinct_groups(x3, table, g0, g1, limit, out, counts, skip_zero):
    """Up to ``limit`` sorted distinct values of each group (-0 merged into +0) into ``out[g]``;
    ``counts[g]`` = how many (``limit + 1`` means more than ``limit``)."""
    buf = np.empty(limit + 1)
    for g in range(g0, g1):
        m = 0
        for o in range(x3.shape[0]):
            for l in range(x3.shape[2]):
                v = value(x3[o, g, l], table) + 0.0
                if skip_zero and v == 0.0:
                    continue
                p = np.searchsorted(buf[:m], v)
                if p < m and buf[p] == v:
                    continue
                if m == limit:
                    m = limit + 1
                    break
                for q in range(m, p, -1):
                    buf[q] = buf[q - 1]
                buf[p] = v
                m += 1
            if m > limit:
                break
        if m == 0:  # nothing but pruned zeros
            buf[0] = 0.0
            m = 1
        counts[g] = m
        for q in range(min(m, limit)):
            out[g, q] = buf[q]


@numba.njit(nogil=True, cache=True)
def assign16(bits3, g, l0, l1, entries, values, table, out3):
    """Indices of the nearest entries for float16 elements through a lazily filled table of codes
    (``table`` uint16 [65536], all 0xFFFF on entry)."""
    mids, first = _nearest_tables(entries)
    for o in range(bits3.shape[0]):
        seg = bits3[o, g]
        dst = out3[o, g]
        for l in range(l0, l1):
            b = seg[l]
            c = table[b]
            if c == 0xFFFF:
                c = _nearest(entries, first, mids, values[b])
                table[b] = c
            dst[l] = c


@numba.njit(nogil=True, cache=True)
def assign_search(x3, table, g, l0, l1, entries, out3):
    """Indices of the nearest entries by counting the midpoints below each value."""
    mids, first = _nearest_tables(entries)
    for o in range(x3.shape[0]):
        seg = x3[o, g]
        dst = out3[o, g]
        for l in range(l0, l1):
            dst[l] = first[_rank(mids, value(seg[l], table))]


@numba.njit(nogil=True, cache=True)
def bin_code(key, delta, values, mids, first):
    """The index every value of bin ``key`` takes, or -1 if the bin straddles a midpoint."""
    lo, hi = bin_bounds(key, delta, values)
    a = _rank(mids, lo)
    return first[a] if a == _rank(mids, hi) else -1


@numba.njit(nogil=True, cache=True)
def bin_codes(entries, delta, values, table):
    """:func:`bin_code` of every bin (``table`` int16 [65536])."""
    mids, first = _nearest_tables(entries)
    for key in range(65536):
        table[key] = -1 if (key & 0x7FFF) >= 0x7C00 else bin_code(key, delta, values, mids, first)


@numba.njit(nogil=True, cache=True)
def assign_binned(x3, keys3, g, l0, l1, entries, delta, values, table, lazy, out3):
    """Indices of the nearest entries for float32 elements: a bin wholly on one side of every
    midpoint takes its index from ``table`` (int16 [65536]: :func:`bin_codes`, or with ``lazy``
    all -2 on entry and filled as bins are met), the others are counted one by one."""
    mids, first = _nearest_tables(entries)
    for o in range(x3.shape[0]):
        seg = x3[o, g]
        kseg = keys3[o, g]
        dst = out3[o, g]
        for l in range(l0, l1):
            key = kseg[l]
            c = table[key]
            if lazy and c == -2:
                c = bin_code(key, delta, values, mids, first)
                table[key] = c
            if c < 0:
                c = first[_rank(mids, np.float64(seg[l]))]
            dst[l] = c


@numba.njit(nogil=True, cache=True)
def assign_groups16(bits3, values, g0, g1, luts, out3):
    """Nearest-entry indices of float16 groups g0..g1-1, each against its sorted LUT ``luts[g]``."""
    lazy = bits3.shape[0] * bits3.shape[2] >= 4096
    codes = np.empty(65536 if lazy else 0, np.uint16)
    for g in range(g0, g1):
        if lazy:
            codes[:] = 0xFFFF
            assign16(bits3, g, 0, bits3.shape[2], luts[g], values, codes, out3)
        else:
            assign_search(bits3, values, g, 0, bits3.shape[2], luts[g], out3)


@numba.njit(nogil=True, cache=True)
def assign_groups32(x3, keys3, delta, values, g0, g1, luts, out3):
    """Nearest-entry indices of float32 groups g0..g1-1, each against its sorted LUT ``luts[g]``
    (through the bins when ``keys3`` holds them)."""
    binned = keys3.shape[0] > 0
    table = np.empty(65536 if binned else 0, np.int16)
    for g in range(g0, g1):
        if binned:
            table[:] = -2
            assign_binned(x3, keys3, g, 0, x3.shape[2], luts[g], delta, values, table, True, out3)
        else:
            assign_search(x3, luts[:0, 0], g, 0, x3.shape[2], luts[g], out3)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def key32_bits(bits, lo, hi, delta, out):
    """Bins of float32 values (``bits[lo:hi]``): the value times 2**delta truncated to binary16
    precision (10 mantissa bits; multiples of 2**-24 below 2**-14), as a binary16-like pattern whose
    sign bit is the value's. Branch-free uint32 arithmetic (vectorized); ``delta <= 112`` keeps
    float32 subnormals exact."""
    src = bits[lo:hi]
    dst = out[lo:hi]
    sub_shift = np.uint32(max(125 - delta, 0))
    bias = np.int32(delta - 127 + 15)
    for i in range(src.shape[0]):
        b = src[i]
        ef = np.int32((b >> np.uint32(23)) & np.uint32(0xFF))
        mant = b & np.uint32(0x7FFFFF)
        e15 = ef + bias  # the binary16 exponent field the scaled value would have
        normal = np.uint32((e15 << 10)) | (mant >> np.uint32(13))
        shift = np.uint32(min(max(-e15 + 14, 0), 31))
        tiny = (mant | np.uint32(0x800000)) >> shift
        sub = mant >> sub_shift
        code = normal if e15 >= 1 else (tiny if ef > 0 else sub)
        dst[i] = np.uint16(code | ((b >> np.uint32(16)) & np.uint32(0x8000)))


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


@numba.njit(nogil=True, cache=True)
def _solve_hist16(counts, order, values, k, cent_out, sse_out, skip_zero, curve):
    xs = np.empty(65536)
    ws = np.empty(65536)
    m = compact16(counts, order, values, xs, ws, np.empty(0, np.int32), skip_zero)
    starts, sse = _partition(xs[:m], ws[:m], k, curve, workspace(m))
    _store(cent_out, sse_out, 0, dp_means(xs[:m], ws[:m], starts), sse)


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
    bins = (np.empty(65536, np.int32),) + tuple(np.empty(65536) for _ in range(5))
    nb = compact32(rec, key32_order(), delta, fp16_values(), *bins)
    xs, ws = np.empty(nb), np.empty(nb)
    m, pure = _bins_points(bins[1], bins[2], bins[4], bins[5], nb, xs, ws)
    if m == 0:
        if imp3.size or sw.size:  # every weight is zero: plain k-means
            return _kmeans32_chunked(x3, keys3, NO_IMP, NO_SW, inner, k, delta, skip_zero, curve)
        return np.zeros((1, k)), np.zeros((1, k))  # nothing but pruned zeros
    starts, sse = _partition(xs[:m], ws[:m], k, curve, workspace(m))
    cent = _bin_cluster_means(bins[1], bins[2], nb, starts, xs[:m])
    if curve:
        sse = sse + _within(bins[1], bins[2], bins[3], nb)
    elif not pure:
        _lloyd_chunked(x3, keys3, imp3, sw, inner, cent, bins, nb, parts, skip_zero, bins_error(cent, xs, ws, m))
    out = np.empty((1, k))
    out_sse = np.empty((1, k))
    _store(out, out_sse, 0, cent, sse)
    return out, out_sse


def _lloyd_chunked(x3, keys3, imp3, sw, inner, cent, bins, nb, parts, skip_zero, scale):
    """Lloyd passes on the raw values of one big group, the straddling elements counted in parallel."""
    cls = np.empty(65536, np.int32)
    q = cent.size
    for _ in range(LLOYD_PASSES):
        CW, CS1 = np.zeros(q), np.zeros(q)
        mids = classify_bins(cent, bins[0], bins[1], bins[2], bins[4], bins[5], nb, cls, CW, CS1)

        def straddlers(span, mids=mids):
            part = np.zeros((2, q))
            straddle_sums(x3, keys3, imp3, sw, inner, 0, span[0], span[1], cls, mids, part[0], part[1], skip_zero)
            return part

        for part in _threads.run(straddlers, parts):
            CW += part[0]
            CS1 += part[1]
        gain = lloyd_step(CW, CS1, cent)
        if not gain >= LLOYD_GAIN * scale:
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
    G = x3.shape[1]
    values = fp16_values()
    keys3 = fit.keys3 if fit is not None and fit.keys3 is not None else None
    delta = fit.delta if keys3 is not None else 0
    if G == 1 and x3.size > 4 * SMALL:
        table = np.empty(65536, np.int16)
        if keys3 is not None:
            bin_codes(luts[0], delta, values, table)

        def part(span):
            lo, hi = span
            if x3.dtype == np.uint16:
                assign16(x3, 0, lo, hi, luts[0], values, np.full(65536, 0xFFFF, np.uint16), out3)
            elif keys3 is not None:
                assign_binned(x3, keys3, 0, lo, hi, luts[0], delta, values, table, False, out3)
            else:
                assign_search(x3, NO_TABLE, 0, lo, hi, luts[0], out3)

        _threads.run(part, _threads.chunks(x3.shape[2]))
    elif x3.dtype == np.uint16:
        _threads.run(lambda s: assign_groups16(x3, values, s[0], s[1], luts, out3), _threads.spans(G))
    else:
        no_keys = np.empty((0, 0, 0), np.uint16)
        _threads.run(lambda s: assign_groups32(x3, no_keys if keys3 is None else keys3, delta, values, s[0], s[1], luts, out3),
                     _threads.spans(G))
    return out3


def minmax(x3: np.ndarray, skip_zero: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) of every group, float64."""
    G = x3.shape[1]
    lo, hi = np.empty(G), np.empty(G)
    table = fp16_values() if x3.dtype == np.uint16 else NO_TABLE
    _threads.run(lambda s: minmax_groups(x3, table, s[0], s[1], lo, hi, skip_zero), _threads.spans(G))
    return lo, hi


def distinct(x3: np.ndarray, limit: int, skip_zero: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values per group [G, limit], how many per group; limit + 1 = too many)."""
    G = x3.shape[1]
    out = np.zeros((G, limit))
    counts = np.zeros(G, np.int64)
    table = fp16_values() if x3.dtype == np.uint16 else NO_TABLE
    _threads.run(lambda s: distinct_groups(x3, table, s[0], s[1], limit, out, counts, skip_zero), _threads.spans(G))
    return out, counts
