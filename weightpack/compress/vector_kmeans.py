"""k-means for short vectors (vector palettization): k-means++ seeding, then Lloyd iterations.

The objective is ``sum_i sum_v wt[i, v] * (x[i, v] - c[a(i), v])**2`` (``wt`` = 1 without
importance). Seeding is scikit-learn's greedy k-means++: the first centre is drawn with
probability proportional to a vector's total weight, each next one is the best (lowest total
distance) of ``2 + int(ln k)`` candidates drawn with probability proportional to the current
distance. Inputs above ``SEED_SAMPLE`` vectors are seeded on that many of them (a seeded random
subset). Lloyd then alternates nearest-centre assignment (ties to the lower index) and weighted
means per component, until no vector changes cluster, the error falls by less than ``TOL`` of
itself, or ``MAX_ITER`` iterations; a cluster that empties takes the vector farthest from its
centre. The random numbers come from ``numpy.random.default_rng(seed)``, so a seed fixes the result.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from . import _threads
from ._common import fp16_values
from ._jit import value

SEED_SAMPLE = 1 << 17
MAX_ITER = 100
TOL = 1e-7


@numba.njit(nogil=True, cache=True, inline="always")
def _dist(X, table, wt, i, centers, c):
    d = 0.0
    V = X.shape[1]
    if wt.shape[0] > 0:
        for v in range(V):
            e = value(X[i, v], table) - centers[c, v]
            d += wt[i, v] * e * e
    else:
        for v in range(V):
            e = value(X[i, v], table) - centers[c, v]
            d += e * e
    return d


@numba.njit(nogil=True, cache=True)
def _pick(cum, r):
    """First index whose cumulative weight exceeds r."""
    i = np.searchsorted(cum, r, side="right")
    return min(i, cum.shape[0] - 1)


@numba.njit(nogil=True, cache=True)
def seed_plus_plus(X, table, wt, k, uniforms):
    """Greedy k-means++ centres (float64 [q, V], q <= k distinct while the data allow)."""
    N, V = X.shape
    trials = 2 + int(math.log(k))
    centers = np.empty((k, V))
    mass = np.empty(N)
    for i in range(N):
        s = 0.0
        if wt.shape[0] > 0:
            for v in range(V):
                s += wt[i, v]
        else:
            s = V
        mass[i] = s
    cum = np.cumsum(mass)
    u = 0
    first = _pick(cum, uniforms[u] * cum[N - 1])
    u += 1
    for v in range(V):
        centers[0, v] = value(X[first, v], table)
    closest = np.empty(N)
    for i in range(N):
        closest[i] = _dist(X, table, wt, i, centers, 0)
    trial_d = np.empty(N)
    best_d = np.empty(N)
    q = 1
    for c in range(1, k):
        pot = np.cumsum(closest)
        total = pot[N - 1]
        if not total > 0.0:
            break
        best_pot = np.inf
        best_i = -1
        for _ in range(trials):
            cand = _pick(pot, uniforms[u] * total)
            u += 1
            for v in range(V):
                centers[c, v] = value(X[cand, v], table)
            s = 0.0
            for i in range(N):
                d = min(closest[i], _dist(X, table, wt, i, centers, c))
                trial_d[i] = d
                s += d
            if s < best_pot:
                best_pot = s
                best_i = cand
                best_d[:] = trial_d
        for v in range(V):
            centers[c, v] = value(X[best_i, v], table)
        closest[:] = best_d
        q += 1
    return centers[:q].copy()


@numba.njit(nogil=True, cache=True)
def nearest(X, table, wt, centers, out):
    """Index of each vector's nearest centre (ties to the lower index); returns the total error."""
    total = 0.0
    for i in range(X.shape[0]):
        best = np.inf
        arg = 0
        for c in range(centers.shape[0]):
            d = _dist(X, table, wt, i, centers, c)
            if d < best:
                best = d
                arg = c
        out[i] = arg
        total += best
    return total


@numba.njit(nogil=True, cache=True)
def lloyd(X, table, wt, centers, max_iter, tol):
    """Lloyd iterations from ``centers`` (updated in place); returns the final error."""
    N, V = X.shape
    q = centers.shape[0]
    labels = np.full(N, -1, np.int64)
    fresh = np.empty(N, np.int64)
    sums = np.empty((q, V))
    mass = np.empty((q, V))
    count = np.empty(q, np.int64)
    err = np.inf
    for _ in range(max_iter):
        new_err = nearest(X, table, wt, centers, fresh)
        changed = 0
        for i in range(N):
            if fresh[i] != labels[i]:
                changed += 1
                labels[i] = fresh[i]
        if changed == 0 or not new_err < err * (1.0 - tol):
            err = min(err, new_err)
            break
        err = new_err
        sums[:] = 0.0
        mass[:] = 0.0
        count[:] = 0
        for i in range(N):
            c = labels[i]
            count[c] += 1
            for v in range(V):
                w = wt[i, v] if wt.shape[0] > 0 else 1.0
                sums[c, v] += w * value(X[i, v], table)
                mass[c, v] += w
        for c in range(q):
            if count[c] == 0:  # an empty cluster takes the vector farthest from its centre
                far = 0
                far_d = -1.0
                for i in range(N):
                    d = _dist(X, table, wt, i, centers, labels[i])
                    if d > far_d:
                        far_d = d
                        far = i
                for v in range(V):
                    centers[c, v] = value(X[far, v], table)
                labels[far] = c
                continue
            for v in range(V):
                if mass[c, v] > 0.0:
                    centers[c, v] = sums[c, v] / mass[c, v]
    return err


def fit(X: np.ndarray, wt: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Centres (float64 [q, V], q <= k, sorted lexicographically) of the vectors ``X`` [N, V]
    (float32, or float16 as its uint16 bits)."""
    table = _table(X)
    rng = np.random.default_rng(seed)
    trials = 2 + int(math.log(k))
    sample, sample_wt = X, wt
    if X.shape[0] > SEED_SAMPLE:
        pick = np.sort(rng.choice(X.shape[0], SEED_SAMPLE, replace=False))
        sample = X[pick]
        sample_wt = wt[pick] if wt.shape[0] else wt
    uniforms = rng.random(1 + k * trials)
    centers = seed_plus_plus(sample, table, sample_wt, k, uniforms)
    lloyd(X, table, wt, centers, MAX_ITER, TOL)
    return centers[np.lexsort(centers.T[::-1])]


def _table(X: np.ndarray) -> np.ndarray:
    return fp16_values() if X.dtype == np.uint16 else np.empty(0)


def assign_groups(Xg: np.ndarray, wtg: np.ndarray, entries: np.ndarray) -> np.ndarray:
    """uint8 codes [G, N]: the nearest entry of each group's table ``entries[g]`` [K, V]."""
    out = np.empty(Xg.shape[:2], np.int64)
    table = _table(Xg)

    def one(g):
        nearest(Xg[g], table, wtg[g] if wtg.size else wtg.reshape(0, 0), entries[g], out[g])

    _threads.run(one, range(Xg.shape[0]))
    return out.astype(np.uint8)
