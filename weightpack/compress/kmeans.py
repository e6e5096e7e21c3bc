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

The loops run in C (csrc/encode_kmeans.c, compiled at install), so nothing is compiled on first use.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import WeightpackError
from ._common import positive_int
from ._native import lib, ptr, run, scalar, wptr


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
    """The k-layer DP on validated input: (first index of each of the min(k, m) clusters, sse_per_k [k])."""
    x, w = np.ascontiguousarray(x, np.float64), np.ascontiguousarray(w, np.float64)
    starts, sse, count = np.empty(min(k, x.size), np.int64), np.empty(k), scalar("long long")
    run(lib.wp_enc_kmeans_dp(ptr(x), ptr(w), x.size, k, wptr(starts), wptr(sse), count), "k-means")
    return starts[: count[0]], sse


def solve_k(x: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """First index of each of the min(k, m) clusters of the optimal k-partition (the penalized
    one-layer DP, the k-layer DP as the fallback: the module docstring)."""
    x, w = np.ascontiguousarray(x, np.float64), np.ascontiguousarray(w, np.float64)
    starts, count = np.empty(min(k, x.size), np.int64), scalar("long long")
    run(lib.wp_enc_kmeans_solve_k(ptr(x), ptr(w), x.size, k, wptr(starts), count), "k-means")
    return starts[: count[0]]


def cluster_means(x: np.ndarray, w: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Weighted mean of each run ``x[starts[c]:starts[c+1]]``, in float64."""
    return np.add.reduceat(w * x, starts) / np.add.reduceat(w, starts)
