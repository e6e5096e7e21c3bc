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
The loops run in C (csrc/encode_vector.c).
"""
from __future__ import annotations

import math

import numpy as np

from . import _threads
from ._common import fp16_values
from ._native import lib, ptr, run, scalar, wptr

SEED_SAMPLE = 1 << 17
MAX_ITER = 100
TOL = 1e-7


def _vectors(X: np.ndarray, wt: np.ndarray):
    """The arguments every kernel (csrc/encode_vector.c) starts with: vectors, weights and sizes."""
    X = np.ascontiguousarray(X)
    half = X.dtype == np.uint16
    return ptr(X), half, ptr(fp16_values() if half else None), ptr(np.ascontiguousarray(wt, np.float32)), *X.shape


def seed_plus_plus(X, wt, k, trials, uniforms):
    """Greedy k-means++ centres (float64 [q, V], q <= k distinct while the data allow)."""
    centers, q = np.empty((k, X.shape[1])), scalar("long long")
    run(lib.wp_enc_vector_seed(*_vectors(X, wt), k, trials, ptr(uniforms), wptr(centers), q), "vector k-means")
    return centers[: q[0]].copy()


def lloyd(X, wt, centers, max_iter, tol):
    """Lloyd iterations from ``centers`` (updated in place); returns the final error."""
    err = scalar("double")
    run(lib.wp_enc_vector_lloyd(*_vectors(X, wt), wptr(centers), centers.shape[0], max_iter, tol, err), "vector k-means")
    return err[0]


def nearest(X, wt, centers, out):
    """Index of each vector's nearest centre (ties to the lower index) into ``out`` (int64)."""
    centers = np.ascontiguousarray(centers, np.float64)
    run(lib.wp_enc_vector_nearest(*_vectors(X, wt), ptr(centers), centers.shape[0], wptr(out)), "vector k-means")


def fit(X: np.ndarray, wt: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Centres (float64 [q, V], q <= k, sorted lexicographically) of the vectors ``X`` [N, V]
    (float32, or float16 as its uint16 bits)."""
    rng = np.random.default_rng(seed)
    trials = 2 + int(math.log(k))
    sample, sample_wt = X, wt
    if X.shape[0] > SEED_SAMPLE:
        pick = np.sort(rng.choice(X.shape[0], SEED_SAMPLE, replace=False))
        sample = X[pick]
        sample_wt = wt[pick] if wt.shape[0] else wt
    uniforms = rng.random(1 + k * trials)
    centers = seed_plus_plus(sample, sample_wt, k, trials, uniforms)
    lloyd(X, wt, centers, MAX_ITER, TOL)
    return centers[np.lexsort(centers.T[::-1])]


def assign_groups(Xg: np.ndarray, wtg: np.ndarray, entries: np.ndarray) -> np.ndarray:
    """uint8 codes [G, N]: the nearest entry of each group's table ``entries[g]`` [K, V]."""
    out = np.empty(Xg.shape[:2], np.int64)

    def one(g):
        nearest(Xg[g], wtg[g] if wtg.size else wtg.reshape(0, 0), entries[g], out[g])

    _threads.run(one, range(Xg.shape[0]))
    return out.astype(np.uint8)
