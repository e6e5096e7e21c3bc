"""Choosing which weights to prune, in O(n) (C kernels, csrc/encode_select.c).

Scores are compared through monotone unsigned keys: the bits of ``|w|`` (float16: 15 bits,
float32: 31 bits) or of a float32 score ``float32(|w|) * float32(importance)``. The k smallest keys
are found by radix selection (one histogram of the high 16 bits, one of the low 16 bits inside
the bucket that holds the k-th), never by sorting. Among equal keys the lower flat index goes
first, as a stable sort would. The output is written straight into Core ML's arrays: the packed
uint1 mask and the kept values, in row-major order.
"""
from __future__ import annotations

import numpy as np

from . import _threads
from ._native import NULL, lib, ptr, run, scalar, wptr


def score_keys(w: np.ndarray, importance) -> np.ndarray:
    """Monotone keys of the scores: the bits of ``w`` itself (its magnitude is compared), or the
    uint32 view of ``float32(|w|) * importance`` (float32)."""
    if importance is None:
        return w.reshape(-1).view(np.uint16 if w.dtype == np.float16 else np.uint32)
    score = np.abs(w.astype(np.float32))
    score *= importance
    return score.reshape(-1).view(np.uint32)


def histogram_high(keys, lo, hi, shift, counts):
    """counts[key >> shift] += 1 for elements lo..hi-1 (keys: the magnitude bits, float16 15 bits,
    float32 31 bits; a non-negative float32 score keeps all its bits)."""
    run(lib.wp_enc_histogram_high(ptr(keys), keys.dtype == np.uint16, lo, hi, shift, wptr(counts)), "prune")


def histogram_low(keys, lo, hi, bucket, counts):
    """counts[key & 0xFFFF] += 1 for the elements whose key >> 16 == bucket."""
    run(lib.wp_enc_histogram_low(ptr(keys), keys.dtype == np.uint16, lo, hi, bucket, wptr(counts)), "prune")


def kth_key(keys: np.ndarray, k: int, parts) -> tuple[int, np.ndarray, np.ndarray]:
    """(T, below, ties): the k-th smallest key (1-based), and per part (chunk) of ``keys`` how many
    keys are below T and equal to it, from per-part histograms (no pass to count them)."""
    wide = keys.dtype.itemsize == 4
    shift = 16 if wide else 0

    def high(span):
        c = np.zeros(65536 if wide else 32768, np.int64)
        histogram_high(keys, span[0], span[1], shift, c)
        return c

    hist = np.stack(_threads.run(high, parts))
    cum = np.cumsum(hist.sum(axis=0))
    bucket = int(np.searchsorted(cum, k))  # first bucket where the running count reaches k
    below = hist[:, :bucket].sum(axis=1)
    if not wide:
        return bucket, below, hist[:, bucket]

    def low(span):
        c = np.zeros(65536, np.int64)
        histogram_low(keys, span[0], span[1], bucket, c)
        return c

    sub_hist = np.stack(_threads.run(low, parts))
    sub = int(np.searchsorted(np.cumsum(sub_hist.sum(axis=0)), k - int(below.sum())))
    return (bucket << 16) | sub, below + sub_hist[:, :sub].sum(axis=1), sub_hist[:, sub]


def write_sparse(keys, wbits, lo, hi, T, quota, prune_all, mask, values, offset, total):
    """Prune keys < T and the first ``quota`` keys == T of lo..hi-1 (all with ``prune_all``); keep the
    rest unless zero. Returns the number kept. With a non-empty ``mask``, also sets its bytes lo//8..
    (lo a multiple of 8) and writes the ``total`` kept ``wbits`` to ``values[offset:offset + total]``."""
    kept = scalar("long long")
    write = mask.size > 0
    run(lib.wp_enc_write_sparse(ptr(keys), keys.dtype == np.uint16, ptr(wbits), wbits.dtype == np.uint16, lo, hi, int(T),
                                quota, prune_all, wptr(mask) if write else NULL,
                                wptr(values) if write and values.size else NULL, offset, total, kept), "prune")
    return kept[0]


def write_kept_from(keys, wbits, lo, hi, T, mask, values, offset, total):
    """:func:`write_sparse` for the common case without a tie quota: keep every key >= T whose
    weight is nonzero. Returns the number kept."""
    kept = scalar("long long")
    run(lib.wp_enc_write_kept_from(ptr(keys), keys.dtype == np.uint16, ptr(wbits), wbits.dtype == np.uint16, lo, hi,
                                   int(T), wptr(mask), wptr(values) if values.size else NULL, offset, total, kept),
        "prune")
    return kept[0]


def prune_smallest(wbits: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(packed uint1 mask, kept value bits): prune the k smallest keys (ties: lower flat index first)
    and every zero; ``wbits`` are the weights' bits (uint16/uint32), ``keys`` their score keys."""
    n = wbits.size
    parts = _threads.chunks(n, size=_threads.HIST_CHUNK)
    T, quotas, prune_all, ties = np.uint32(0), [0] * len(parts), k >= n, None
    no_mask, no_values = np.empty(0, np.uint8), np.empty(0, wbits.dtype)
    if prune_all:
        kept = [0] * len(parts)
    elif k == 0:
        kept = _threads.run(lambda s: write_sparse(keys, wbits, s[0], s[1], T, 0, False, no_mask, no_values, 0, 0), parts)
    else:
        t, below, ties = kth_key(keys, k, parts)
        T = np.uint32(t)
        left = k - int(below.sum())
        for j in range(len(parts)):
            quotas[j] = min(int(ties[j]), left)
            left -= quotas[j]
        sizes = [hi - lo for lo, hi in parts]
        # above T every key is a nonzero weight; at T = 0 the ties may or may not be zeros: count them
        kept = [size - int(b) - int(q) for size, b, q in zip(sizes, below, quotas)]
        if t == 0:
            kept = _threads.run(lambda j: write_sparse(keys, wbits, parts[j][0], parts[j][1], T, quotas[j], False,
                                                       no_mask, no_values, 0, 0), range(len(parts)))
    offsets = np.concatenate(([0], np.cumsum(kept))).astype(np.int64)
    mask = np.empty((n + 7) // 8, np.uint8)
    values = np.empty(int(offsets[-1]), wbits.dtype)

    ties = ties if 0 < k < n else [0] * len(parts)

    def write(j):
        lo, hi = parts[j]
        if prune_all:
            mask[lo >> 3:(hi + 7) >> 3] = 0
        elif quotas[j] in (0, ties[j]):  # no tie, or every tie of this chunk, is pruned: a plain threshold
            write_kept_from(keys, wbits, lo, hi, T + np.uint32(quotas[j] > 0), mask, values, offsets[j], kept[j])
        else:
            write_sparse(keys, wbits, lo, hi, T, quotas[j], prune_all, mask, values, offsets[j], kept[j])

    _threads.run(write, range(len(parts)))
    return mask, values


def select_rows(keys2, k, r0, r1, pruned2):
    """Per row r0..r1-1 of ``keys2`` [R, M]: mark the k smallest keys (ties: lower index first)."""
    run(lib.wp_enc_select_rows(ptr(keys2), keys2.dtype == np.uint16, keys2.shape[1], k, r0, r1,
                               wptr(pruned2.view(np.uint8))), "prune")


def select_n_of_m(keys2, n, m, r0, r1, pruned2):
    """In every run of m consecutive elements of each row: mark the n smallest keys (ties: lower index
    first). A last run of r < m elements marks max(0, n - (m - r)): coremltools pads it with zeros."""
    run(lib.wp_enc_select_n_of_m(ptr(keys2), keys2.dtype == np.uint16, keys2.shape[1], n, m, r0, r1,
                                 wptr(pruned2.view(np.uint8))), "prune")
