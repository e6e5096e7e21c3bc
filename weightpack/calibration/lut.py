"""Importance-weighted optimal LUTs and the nearest-entry tables the column sweep uses.

``fit_lut(values, column_weights, row_scale, nbits, dtype)`` minimises
``sum_rj column_weights[j] (v_rj - row_scale[r] lut[a_rj])**2`` (row_scale: 1 by default):

- constant (or no) importance on float16/float32 values: exactly the data-free encoder's LUT
  (:func:`weightpack.compress.palettization.kmeans_lut`), so calibration with H = identity gives
  the data-free result bit for bit;
- float16 values without a row scale: exact, by the weighted DP (:mod:`weightpack.compress.kmeans`)
  on the histogram of the 65,536 bit patterns, each pattern weighted by the summed importance of
  its elements;
- other values (float32, or values divided by a row scale in float64): exact on the distinct
  values for up to 65,536 elements; beyond that the DP runs on bins of values that round to the
  same float16 (after scaling by a power of two), each bin at its weighted mean (within about
  0.001% of the optimum on smooth data).

Centroids are rounded once to ``dtype``; unused entries repeat the largest, as in the data-free
encoder.
"""
from __future__ import annotations

import numpy as np

from ..compress.palettization import _fp16_order, _fp16_values  # value tables of all float16 patterns

EXACT_LIMIT = 65536
CHUNK = 1 << 20  # elements weighted at a time (bounds the temporary weight arrays)


def fit_lut(values: np.ndarray, column_weights, row_scale, nbits: int, dtype) -> np.ndarray:
    """LUT [2**nbits] of ``dtype`` for the 2-D ``values`` (rows x columns) weighted per column by
    ``column_weights`` (None: ones); with ``row_scale`` the LUT is fitted to ``values / row_scale``
    per row, each element's weight times ``row_scale**2`` (the error of ``row_scale * lut``)."""
    from ..compress import kmeans, palettization

    k = 1 << nbits
    uniform = row_scale is None and (column_weights is None or np.ptp(column_weights) == 0)
    if uniform and values.dtype == dtype and values.dtype in (np.float16, np.float32):
        return palettization.kmeans_lut(np.ascontiguousarray(values).reshape(-1), nbits)[0]
    x, w = weighted_values(values, column_weights, row_scale)
    starts, _ = kmeans.solve(x, w, k)
    lut = kmeans.cluster_means(x, w, starts).astype(dtype)
    return np.concatenate((lut, np.repeat(lut[-1:], k - lut.size)))


def weighted_values(values: np.ndarray, column_weights=None, row_scale=None) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values as float64, their summed positive weights) of the 2-D ``values``
    (divided by ``row_scale`` per row when given, with weights ``row_scale**2 column_weights``).

    float16 (unscaled): by bit-pattern histogram; others: sorted for up to ``EXACT_LIMIT``
    elements, else binned (see the module docstring). Zero-weight values are dropped. Weights and
    scaled values are formed ``CHUNK`` elements at a time, never for the whole tensor.
    """
    rows, cols = values.shape
    cw = np.ones(cols) if column_weights is None else np.asarray(column_weights, np.float64)
    rs = None if row_scale is None else np.asarray(row_scale, np.float64)
    rw = np.ones(rows) if rs is None else rs**2
    fp16 = values.dtype == np.float16 and rs is None
    if not fp16 and values.size <= EXACT_LIMIT:
        flat = (values.astype(np.float64) if rs is None else values / rs[:, None]).reshape(-1)
        order = np.argsort(flat, kind="stable")
        sorted_values = flat[order]
        starts = np.flatnonzero(np.concatenate(([True], sorted_values[1:] != sorted_values[:-1])))
        x, w = sorted_values[starts], np.add.reduceat(np.outer(rw, cw).reshape(-1)[order], starts)
    else:
        if not fp16:
            top = np.abs(values).max(axis=1).astype(np.float64)
            shift = 15 - np.frexp(np.max(top if rs is None else top / rs))[1]
        w = np.zeros(65536)
        wx = None if fp16 else np.zeros(65536)
        step = max(1, CHUNK // cols)
        for r in range(0, rows, step):
            block = values[r : r + step]
            weight = (rw[r : r + step, None] * cw).reshape(-1)
            if fp16:
                keys = np.ascontiguousarray(block).view(np.uint16).reshape(-1)
            else:  # bins: equal float16 rounding of the value times 2**shift
                block = block.astype(np.float64)
                if rs is not None:
                    block /= rs[r : r + step, None]
                block = block.reshape(-1)
                keys = (block * 2.0**shift).astype(np.float16).view(np.uint16)
                wx += np.bincount(keys, weights=weight * block, minlength=65536)
            w += np.bincount(keys, weights=weight, minlength=65536)
        w[0] += w[0x8000]  # -0 bins with +0
        order = _fp16_order()
        w = w[order]
        if fp16:
            x = _fp16_values()[order]
        else:
            wx[0] += wx[0x8000]
            x = wx[order] / np.where(w > 0, w, 1)
    keep = w > 0
    return x[keep], w[keep]


def nearest_tables(luts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(midpoints [G, k-1], lowest index of each entry's value [G, k], entries [G, k]) in float64.

    The nearest entry of LUT g to v is ``first[g, #(mids[g] < v)]``: ties (a value on a midpoint,
    or repeated entries) go to the lower index, as in the data-free encoder.
    """
    entries = luts.astype(np.float64)
    first = np.stack([np.searchsorted(e, e, side="left") for e in entries]).astype(np.int64)
    mids = (entries[:, :-1] + entries[:, 1:]) * 0.5
    return np.ascontiguousarray(mids), first, entries
