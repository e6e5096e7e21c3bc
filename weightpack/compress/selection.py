"""Choosing which weights to prune, in O(n) (numba kernels).

Scores are compared through monotone unsigned keys: the bits of ``|w|`` (float16: 15 bits,
float32: 31 bits) or of a float32 score ``float32(|w|) * float32(importance)``. The k smallest keys
are found by radix selection (one histogram of the high 16 bits, one of the low 16 bits inside
the bucket that holds the k-th), never by sorting. Among equal keys the lower flat index goes
first, as a stable sort would. The output is written straight into Core ML's arrays: the packed
uint1 mask and the kept values, in row-major order.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

from . import _threads


def _key(a, i):  # pragma: no cover - replaced by the overload inside numba
    raise NotImplementedError


@overload(_key, inline="always")
def _key_impl(a, i):
    """The magnitude bits of element i: float16 15 bits, float32 31 bits (a non-negative float32
    score keeps all its bits)."""
    if a.dtype == types.uint16:
        return lambda a, i: np.uint32(a[i] & 0x7FFF)
    return lambda a, i: np.uint32(a[i] & 0x7FFFFFFF)


def score_keys(w: np.ndarray, importance) -> np.ndarray:
    """Monotone keys of the scores: the bits of ``w`` itself (its magnitude is compared), or the
    uint32 view of ``float32(|w|) * importance`` (float32)."""
    if importance is None:
        return w.reshape(-1).view(np.uint16 if w.dtype == np.float16 else np.uint32)
    score = np.abs(w.astype(np.float32))
    score *= importance
    return score.reshape(-1).view(np.uint32)


@numba.njit(nogil=True, cache=True)
def histogram_high(keys, lo, hi, shift, counts):
    """counts[key >> shift] += 1 for elements lo..hi-1."""
    for i in range(lo, hi):
        counts[_key(keys, i) >> shift] += 1


@numba.njit(nogil=True, cache=True)
def histogram_low(keys, lo, hi, bucket, counts):
    """counts[key & 0xFFFF] += 1 for the elements whose key >> 16 == bucket."""
    for i in range(lo, hi):
        k = _key(keys, i)
        if (k >> 16) == bucket:
            counts[k & 0xFFFF] += 1


def kth_key(keys: np.ndarray, k: int) -> tuple[int, int]:
    """(T, below): the k-th smallest key (1-based) and how many keys are below it."""
    parts = _threads.chunks(keys.size)
    wide = keys.dtype.itemsize == 4
    shift = 16 if wide else 0

    def high(span):
        c = np.zeros(65536 if wide else 32768, np.int64)
        histogram_high(keys, span[0], span[1], shift, c)
        return c

    counts = sum(_threads.run(high, parts))
    cum = np.cumsum(counts)
    bucket = int(np.searchsorted(cum, k))  # first bucket where the running count reaches k
    below = int(cum[bucket - 1]) if bucket else 0
    if not wide:
        return bucket, below

    def low(span):
        c = np.zeros(65536, np.int64)
        histogram_low(keys, span[0], span[1], bucket, c)
        return c

    cum = np.cumsum(sum(_threads.run(low, parts)))
    sub = int(np.searchsorted(cum, k - below))
    return (bucket << 16) | sub, below + (int(cum[sub - 1]) if sub else 0)


@numba.njit(nogil=True, cache=True)
def count_ties(keys, lo, hi, T):
    n = 0
    for i in range(lo, hi):
        if _key(keys, i) == T:
            n += 1
    return n


@numba.njit(nogil=True, cache=True)
def write_sparse(keys, wbits, lo, hi, T, quota, prune_all, mask, values, offset):
    """Prune keys < T and the first ``quota`` keys == T of lo..hi-1 (all with ``prune_all``); keep the
    rest unless zero. Sets mask bytes lo//8.. (lo a multiple of 8) and writes the kept ``wbits`` from
    ``values[offset]`` on (pass ``values`` empty to count only). Returns the number kept."""
    kept = 0
    byte = 0
    for i in range(lo, hi):
        k = _key(keys, i)
        drop = prune_all or k < T
        if not drop and k == T and quota > 0:
            quota -= 1
            drop = True
        keep = not drop and _key(wbits, i) != 0
        if keep:
            byte |= 1 << ((i - lo) & 7)
            if mask.shape[0] > 0:
                values[offset + kept] = wbits[i]
            kept += 1
        if (i - lo) & 7 == 7 or i == hi - 1:
            if mask.shape[0] > 0:
                mask[(i >> 3)] = byte
            byte = 0
    return kept


def prune_smallest(wbits: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(packed uint1 mask, kept value bits): prune the k smallest keys (ties: lower flat index first)
    and every zero; ``wbits`` are the weights' bits (uint16/uint32), ``keys`` their score keys."""
    n = wbits.size
    parts = _threads.chunks(n)
    prune_all = k >= n
    T, quotas = np.uint32(0), [0] * len(parts)
    if 0 < k < n:
        t, below = kth_key(keys, k)
        T = np.uint32(t)
        left = k - below
        for j, ties in enumerate(_threads.run(lambda s: count_ties(keys, s[0], s[1], T), parts)):
            quotas[j] = min(ties, left)
            left -= quotas[j]
    no_mask, no_values = np.empty(0, np.uint8), np.empty(0, wbits.dtype)

    def count(j):
        return write_sparse(keys, wbits, parts[j][0], parts[j][1], T, quotas[j], prune_all, no_mask, no_values, 0)

    offsets = np.concatenate(([0], np.cumsum(_threads.run(count, range(len(parts))))))
    mask = np.empty((n + 7) // 8, np.uint8)
    values = np.empty(int(offsets[-1]), wbits.dtype)

    def write(j):
        write_sparse(keys, wbits, parts[j][0], parts[j][1], T, quotas[j], prune_all, mask, values, offsets[j])

    _threads.run(write, range(len(parts)))
    return mask, values


@numba.njit(nogil=True, cache=True)
def select_rows(keys2, k, r0, r1, pruned2):
    """Per row r0..r1-1 of ``keys2`` [R, M]: mark the k smallest keys (ties: lower index first)."""
    M = keys2.shape[1]
    buf = np.empty(M, keys2.dtype)
    for r in range(r0, r1):
        if k <= 0:
            pruned2[r, :] = False
            continue
        if k >= M:
            pruned2[r, :] = True
            continue
        buf[:] = keys2[r]
        T = np.partition(buf, k - 1)[k - 1]
        below = 0
        for j in range(M):
            if keys2[r, j] < T:
                below += 1
        quota = k - below
        for j in range(M):
            v = keys2[r, j]
            drop = v < T
            if not drop and v == T and quota > 0:
                quota -= 1
                drop = True
            pruned2[r, j] = drop


@numba.njit(nogil=True, cache=True)
def select_n_of_m(keys2, n, m, r0, r1, pruned2):
    """In every run of m consecutive elements of each row: mark the n smallest keys (ties: lower index
    first). A last run of r < m elements marks max(0, n - (m - r)): coremltools pads it with zeros."""
    D = keys2.shape[1]
    order = np.empty(m, np.int64)
    for r in range(r0, r1):
        for start in range(0, D, m):
            size = min(m, D - start)
            count = n - (m - size)
            for j in range(size):
                pruned2[r, start + j] = False
            if count <= 0:
                continue
            for j in range(size):  # insertion sort of (key, index)
                q = j
                while q > 0 and keys2[r, start + order[q - 1]] > keys2[r, start + j]:
                    order[q] = order[q - 1]
                    q -= 1
                order[q] = j
            for j in range(min(count, size)):
                pruned2[r, start + order[j]] = True
