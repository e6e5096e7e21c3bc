"""Optimal 1-D k-means: the exact dynamic program over sorted values with weights (counts).

For sorted values the optimal clusters are contiguous runs, so with ``D[j][i]`` the least SSE of
values ``0..i`` in ``j + 1`` clusters::

    D[0][i] = cost(0, i)
    D[j][i] = min over t in [j, i] of D[j-1][t-1] + cost(t, i)       (t: first value of the last cluster)

``cost(t, i) = sum w x**2 - (sum w x)**2 / sum w`` over values ``t..i``, from float64 prefix sums
of ``w``, ``w (x - c)`` and ``w (x - c)**2`` (``c`` = the weighted mean, which keeps the sums small
and the subtraction accurate; tiny negative results are clamped to 0). The argmin ``t`` is
monotone in ``i`` and never smaller than the previous layer's (``T[j-1][i] <= T[j][i]``), so each
layer is solved by divide and conquer on the monotone argmin within those bounds: O(k m log m)
for m values. The leftmost minimum wins ties. ``D[j][m-1]`` is the optimal SSE with ``j + 1``
clusters, returned for every ``j`` (a rate-distortion curve for free).

When only the k-cluster partition is needed (not the whole curve), :func:`solve_k` finds it with
one DP *layer* instead of k: the Lagrangian relaxation ``F_lam(i) = min_t F_lam(t-1) + cost(t, i) +
lam`` (the cost of a partition plus lam per cluster) is solved row by row with a deque of candidate
starts, each taking over from the first row where it is strictly better (found by galloping and
bisection; the quadrangle inequality makes that row boundary monotone). A partition optimal for
``F_lam`` with exactly k clusters is an optimal k-partition (any other k-partition has a larger
cost at the same penalty). ``lam`` starts from a DP on 256 bins of the values and is updated from
the cluster counts it gives (rescaled by ``(count / k)**3``, then by the slope between the
penalized optima on either side of k) until the count is k; if that fails within 40 tries (k is
not a vertex of the convex curve of optimal errors) the k-layer DP decides. O(m log) per try,
a few tries: about 10 times less work than the k-layer DP at k = 16 and m = 15,000.

Also here: Lloyd refinement on sorted values. This module imports numba; the rest of weightpack
loads it only when a compiled kernel is needed.
"""
from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from ..errors import WeightpackError
from ._common import positive_int


class KMeans1D(NamedTuple):
    """Result of :func:`optimal_kmeans_1d`."""

    centroids: np.ndarray  # float64, strictly increasing, min(k, m) entries
    sse: float  # sum of w (x - nearest centroid)**2 in float64
    sse_per_k: np.ndarray  # float64 [k]: optimal SSE with 1, 2, ..., k clusters


def optimal_kmeans_1d(values, weights, k: int) -> KMeans1D:
    """Exact weighted 1-D k-means on sorted unique ``values`` with positive ``weights``.

    Returns the optimal centroids (the weighted means of the clusters), their SSE, and the
    optimal SSE for every number of clusters 1..k. With ``m <= k`` values every value is its own
    centroid and the SSE is 0.

    >>> r = optimal_kmeans_1d([0.0, 1.0, 10.0, 11.0], [1, 1, 1, 3], 2)
    >>> r.centroids.tolist(), r.sse, np.round(r.sse_per_k, 9).tolist()
    ([0.5, 10.75], 1.25, [141.333333333, 1.25])
    """
    x = np.asarray(values, np.float64)
    w = np.asarray(weights, np.float64)
    if x.ndim != 1 or w.shape != x.shape or x.size == 0:
        raise WeightpackError(
            f"values and weights must be 1-D, non-empty and of equal length, got shapes {x.shape} and {w.shape}"
        )
    k = positive_int(k, "k")
    if not (np.isfinite(x).all() and np.isfinite(w).all()):
        raise WeightpackError("values and weights must be finite")
    if (w <= 0).any():
        raise WeightpackError(f"weights must be positive, got a minimum of {w.min()}")
    if (np.diff(x) <= 0).any():
        raise WeightpackError("values must be sorted in increasing order with no repeats")
    starts, sse_per_k = solve(x, w, k)
    centroids = cluster_means(x, w, starts)
    sse = float(np.sum(w * (x - np.repeat(centroids, np.diff(np.append(starts, x.size)))) ** 2))
    return KMeans1D(centroids, sse, sse_per_k)


def solve(x: np.ndarray, w: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The DP on validated input: (first index of each of the min(k, m) clusters, sse_per_k [k])."""
    return dp_solve(np.ascontiguousarray(x, np.float64), np.ascontiguousarray(w, np.float64), k)


def cluster_means(x: np.ndarray, w: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Weighted mean of each run ``x[starts[c]:starts[c+1]]``, in float64."""
    return np.add.reduceat(w * x, starts) / np.add.reduceat(w, starts)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def dp_solve(x, w, k):
    """(starts int64 [min(k, m)], sse_per_k float64 [k]) for sorted distinct ``x`` with weights ``w > 0``."""
    m = x.shape[0]
    sse = np.zeros(k)
    if m <= k:
        if m > 1:
            part = np.zeros(m - 1)
            _dp(x, w, m - 1, np.empty((m - 1, m), np.int32), part)
            sse[: m - 1] = part
        return np.arange(m), sse
    if m <= 65536:
        splits16 = np.empty((k, m), np.uint16)
        _dp(x, w, k, splits16, sse)
        return _backtrack(splits16, m), sse
    splits32 = np.empty((k, m), np.int32)
    _dp(x, w, k, splits32, sse)
    return _backtrack(splits32, m), sse


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _prefixes(x, w):
    """Prefix sums of w, w (x - c), w (x - c)**2 (c: the weighted mean)."""
    m = x.shape[0]
    p0 = np.empty(m + 1)
    p1 = np.empty(m + 1)
    p2 = np.empty(m + 1)
    _fill_prefixes(x, w, p0, p1, p2)
    return p0, p1, p2


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _fill_prefixes(x, w, p0, p1, p2):
    m = x.shape[0]
    total = 0.0
    centre = 0.0
    for i in range(m):
        total += w[i]
        centre += w[i] * x[i]
    centre /= total
    p0[0] = 0.0
    p1[0] = 0.0
    p2[0] = 0.0
    for i in range(m):
        d = x[i] - centre
        p0[i + 1] = p0[i] + w[i]
        p1[i + 1] = p1[i] + w[i] * d
        p2[i + 1] = p2[i] + w[i] * d * d


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _penalized(p0, p1, p2, lam, F, arg, cnt, dq_t, dq_s):
    """Least ``cost(partition) + lam * clusters`` of the values: F[i] for values 0..i, ``arg[i]`` the
    start of the last cluster, ``cnt[i]`` the clusters. Returns (F[m-1], cnt[m-1])."""
    m = F.shape[0]
    head = 0
    tail = 1
    dq_t[0] = 0
    dq_s[0] = 0
    for i in range(m):
        while head + 1 < tail and dq_s[head + 1] <= i:
            head += 1
        t = dq_t[head]
        F[i] = (lam if t == 0 else F[t - 1] + lam) + _cost(p0, p1, p2, t, i)
        arg[i] = t
        cnt[i] = 1 if t == 0 else cnt[t - 1] + 1
        tn = i + 1
        if tn >= m:
            break
        gn = F[i] + lam
        while tail > head:  # drop the candidates tn beats from their first row on
            tb = dq_t[tail - 1]
            row = max(dq_s[tail - 1], tn)
            gb = lam if tb == 0 else F[tb - 1] + lam
            if gn + _cost(p0, p1, p2, tn, row) < gb + _cost(p0, p1, p2, tb, row):
                tail -= 1
            else:
                break
        if tail == head:
            dq_t[tail] = tn
            dq_s[tail] = tn
            tail += 1
            continue
        tb = dq_t[tail - 1]
        gb = lam if tb == 0 else F[tb - 1] + lam
        base = max(dq_s[tail - 1], tn)
        lo = base + 1  # the first row where tn is strictly better lies in [lo, hi]; m: none
        hi = m
        step = 1
        while base + step < m:
            row = base + step
            if gn + _cost(p0, p1, p2, tn, row) < gb + _cost(p0, p1, p2, tb, row):
                hi = row
                break
            lo = row + 1
            step *= 2
        while lo < hi:
            mid = (lo + hi) >> 1
            if gn + _cost(p0, p1, p2, tn, mid) < gb + _cost(p0, p1, p2, tb, mid):
                hi = mid
            else:
                lo = mid + 1
        if lo < m:
            dq_t[tail] = tn
            dq_s[tail] = lo
            tail += 1
    return F[m - 1], cnt[m - 1]


@numba.njit(nogil=True, cache=True, error_model="numpy")
def solve_k(x, w, k):
    """First index of each of the min(k, m) clusters of the optimal k-partition (see the module
    docstring: the penalized one-layer DP, the k-layer DP as the fallback)."""
    return solve_k_in(x, w, k, workspace(x.shape[0]))


@numba.njit(nogil=True, cache=True)
def workspace(m):
    """Scratch arrays for :func:`solve_k_in` with up to ``m`` values (reused across groups)."""
    return (np.empty(m + 1), np.empty(m + 1), np.empty(m + 1), np.empty(m), np.empty(m, np.int64),
            np.empty(m, np.int64), np.empty(m + 1, np.int64), np.empty(m + 1, np.int64))


@numba.njit(nogil=True, cache=True, error_model="numpy")
def solve_k_in(x, w, k, ws):
    """:func:`solve_k` with the scratch arrays ``ws`` of :func:`workspace`."""
    m = x.shape[0]
    if m <= k or k == 1 or m <= 4 * k:
        return dp_solve(x, w, k)[0]
    p0, p1, p2 = ws[0][: m + 1], ws[1][: m + 1], ws[2][: m + 1]
    F, arg, cnt, dq_t, dq_s = ws[3][:m], ws[4][:m], ws[5][:m], ws[6][: m + 1], ws[7][: m + 1]
    _fill_prefixes(x, w, p0, p1, p2)
    bins = min(m, 256)  # a first penalty from the k+1-layer DP on bins of consecutive values
    cx = np.empty(bins)
    cw = np.empty(bins)
    for b in range(bins):
        lo, hi = b * m // bins, (b + 1) * m // bins
        cw[b] = p0[hi] - p0[lo]
        cx[b] = (p1[hi] - p1[lo]) / cw[b]
    coarse = dp_solve(cx, cw, k + 1)[1]
    lam = coarse[k - 2] - coarse[k - 1]
    if not lam > 0.0:
        return dp_solve(x, w, k)[0]
    more_c, more_d, more_lam = -1, 0.0, 0.0  # the penalized optimum with more clusters than k
    fewer_c, fewer_d, fewer_lam = -1, 0.0, np.inf
    for _ in range(40):
        value, c = _penalized(p0, p1, p2, lam, F, arg, cnt, dq_t, dq_s)
        if c == k:
            starts = np.empty(k, np.int64)
            i = m - 1
            for j in range(k - 1, -1, -1):
                starts[j] = arg[i]
                i = arg[i] - 1
            return starts
        d = value - lam * c
        if c > k:
            more_c, more_d, more_lam = c, d, lam
        else:
            fewer_c, fewer_d, fewer_lam = c, d, lam
        if more_c > 0 and fewer_c > 0:
            nxt = (fewer_d - more_d) / (more_c - fewer_c)  # the slope between the two optima
            if not (more_lam < nxt < fewer_lam) or nxt == lam:
                nxt = 0.5 * (more_lam + fewer_lam)
            if not (more_lam < nxt < fewer_lam):
                break
            lam = nxt
        else:
            lam *= (c / k) ** 3
    return dp_solve(x, w, k)[0]


@numba.njit(nogil=True, cache=True, error_model="numpy")
def dp_means(x, w, starts):
    """Weighted mean of each run ``x[starts[c]:starts[c+1]]`` (float64)."""
    k = starts.shape[0]
    m = x.shape[0]
    out = np.empty(k)
    for c in range(k):
        hi = starts[c + 1] if c + 1 < k else m
        s0 = 0.0
        s1 = 0.0
        for i in range(starts[c], hi):
            s0 += w[i]
            s1 += w[i] * x[i]
        out[c] = s1 / s0
    return out


@numba.njit(nogil=True, cache=True)
def _backtrack(splits, m):
    k = splits.shape[0]
    starts = np.empty(k, np.int64)
    i = m - 1
    for j in range(k - 1, -1, -1):
        t = np.int64(splits[j, i])
        starts[j] = t
        i = t - 1
    return starts


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _dp(x, w, k, splits, sse):
    """Fill ``splits[j, i]`` (first index of the last cluster of D[j][i]) and ``sse[j] = D[j][m-1]``."""
    m = x.shape[0]
    p0, p1, p2 = _prefixes(x, w)
    # prev[t] = D[j-1][t-1]: the cost of values 0..t-1 in j clusters (index 0 unused)
    prev = np.empty(m + 1)
    cur = np.empty(m + 1)
    prev[0] = 0.0
    for i in range(m):
        prev[i + 1] = _cost(p0, p1, p2, 0, i)
        splits[0, i] = 0
    sse[0] = prev[m]
    stack = np.empty((128, 4), np.int64)
    for j in range(1, k):
        # rows i in [j, m-1]; candidate starts t in [max(j, splits[j-1][i]), i]; stack of (rows lo, hi, starts lo, hi)
        for i in range(j):
            splits[j, i] = i
        stack[0, 0] = j
        stack[0, 1] = m - 1
        stack[0, 2] = j
        stack[0, 3] = m - 1
        top = 1
        while top > 0:
            top -= 1
            ilo = stack[top, 0]
            ihi = stack[top, 1]
            tlo = stack[top, 2]
            thi = stack[top, 3]
            mid = (ilo + ihi) >> 1
            lo = max(tlo, np.int64(splits[j - 1, mid]))
            hi = min(thi, mid)
            if lo > hi:
                lo = hi
            a0 = p0[mid + 1]
            a1 = p1[mid + 1]
            a2 = p2[mid + 1]
            best = np.inf
            arg = lo
            for t in range(lo, hi + 1):
                s1 = a1 - p1[t]
                c = (a2 - p2[t]) - s1 * s1 / (a0 - p0[t])
                v = prev[t] + (c if c > 0.0 else 0.0)
                if v < best:
                    best = v
                    arg = t
            cur[mid + 1] = best
            splits[j, mid] = arg
            if ilo < mid:
                stack[top, 0] = ilo
                stack[top, 1] = mid - 1
                stack[top, 2] = tlo
                stack[top, 3] = arg
                top += 1
            if mid < ihi:
                stack[top, 0] = mid + 1
                stack[top, 1] = ihi
                stack[top, 2] = arg
                stack[top, 3] = thi
                top += 1
        sse[j] = cur[m]
        prev, cur = cur, prev


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _cost(p0, p1, p2, t, i):
    sw = p0[i + 1] - p0[t]
    s1 = p1[i + 1] - p1[t]
    c = (p2[i + 1] - p2[t]) - s1 * s1 / sw
    return c if c > 0.0 else 0.0


@numba.njit(nogil=True, cache=True, error_model="numpy")
def lloyd(x, w, starts, max_passes):
    """Lloyd passes on sorted ``x`` (weights ``w``) from the clusters starting at ``starts``.

    Each pass puts the boundaries at the midpoints of the current means (a value on a midpoint
    stays below it) and moves only the values between old and new boundaries: O(k log m + moved).
    Stops when the SSE stops decreasing or a cluster would empty. Returns the means (float64).
    """
    m = x.shape[0]
    k = starts.shape[0]
    centre = 0.0
    total = 0.0
    for i in range(m):
        centre += w[i] * x[i]
        total += w[i]
    centre /= total
    bounds = np.empty(k + 1, np.int64)
    bounds[:k] = starts
    bounds[k] = m
    n = np.zeros(k)
    s1 = np.zeros(k)
    s2 = np.zeros(k)
    for c in range(k):
        for i in range(bounds[c], bounds[c + 1]):
            d = x[i] - centre
            n[c] += w[i]
            s1[c] += w[i] * d
            s2[c] += w[i] * d * d
    sse = _sse(n, s1, s2)
    new_bounds = bounds.copy()
    for _ in range(max_passes):
        nn, ns1, ns2 = n.copy(), s1.copy(), s2.copy()
        for c in range(1, k):
            mid = 0.5 * (s1[c - 1] / n[c - 1] + s1[c] / n[c]) + centre
            b = np.searchsorted(x, mid, side="right")
            new_bounds[c] = b
            lo, hi, sign = (bounds[c], b, 1.0) if b > bounds[c] else (b, bounds[c], -1.0)
            for i in range(lo, hi):  # sign 1: from cluster c to c - 1; -1: from c - 1 to c
                d = x[i] - centre
                nn[c] -= sign * w[i]
                nn[c - 1] += sign * w[i]
                ns1[c] -= sign * w[i] * d
                ns1[c - 1] += sign * w[i] * d
                ns2[c] -= sign * w[i] * d * d
                ns2[c - 1] += sign * w[i] * d * d
        empty = False
        for c in range(k):
            if new_bounds[c + 1] <= new_bounds[c]:
                empty = True
        if empty:
            break
        new_sse = _sse(nn, ns1, ns2)
        if not new_sse < sse:
            break
        n, s1, s2, sse = nn, ns1, ns2, new_sse
        bounds[:] = new_bounds
    return s1 / n + centre


@numba.njit(nogil=True, cache=True)
def _sse(n, s1, s2):
    total = 0.0
    for c in range(n.shape[0]):
        v = s2[c] - s1[c] * s1[c] / n[c]
        if v > 0.0:
            total += v
    return total
