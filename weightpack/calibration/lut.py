"""Importance-weighted optimal LUTs and the nearest-entry tables the column sweep uses.

``fit_lut(values, importance, nbits, dtype)`` minimises ``sum importance * (v - lut[a(v)])**2``:

- constant (or no) importance on float16/float32 values: exactly the data-free encoder's LUT
  (:func:`weightpack.compress.palettization.kmeans_lut`), so calibration with H = identity gives
  the data-free result bit for bit;
- float16 values: exact, by the weighted DP (:mod:`weightpack.compress.kmeans`) on the histogram
  of the 65,536 bit patterns, each pattern weighted by the summed importance of its elements;
- other values (float32, or float64 values divided by a per-row scale): exact on the distinct
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


def fit_lut(values: np.ndarray, importance, nbits: int, dtype) -> np.ndarray:
    """LUT [2**nbits] of ``dtype`` for 1-D ``values`` weighted by ``importance`` (None = uniform)."""
    from ..compress import kmeans, palettization

    k = 1 << nbits
    uniform = importance is None or np.ptp(importance) == 0
    if uniform and values.dtype == dtype and values.dtype in (np.float16, np.float32):
        return palettization.kmeans_lut(np.ascontiguousarray(values), nbits)[0]
    x, w = weighted_values(values, np.ones(values.size) if importance is None else importance)
    starts, _ = kmeans.solve(x, w, k)
    lut = kmeans.cluster_means(x, w, starts).astype(dtype)
    return np.concatenate((lut, np.repeat(lut[-1:], k - lut.size)))


def weighted_values(values: np.ndarray, weights) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values as float64, their summed positive weights) of 1-D ``values``.

    float16: by bit-pattern histogram; others: sorted for up to ``EXACT_LIMIT`` elements, else
    binned (see the module docstring). Zero-weight values are dropped.
    """
    weights = np.asarray(weights, np.float64)
    if values.dtype == np.float16:
        x, w = _fp16_histogram(values, weights)
    elif values.size <= EXACT_LIMIT:
        order = np.argsort(values, kind="stable")
        sorted_values = values[order].astype(np.float64)
        starts = np.flatnonzero(np.concatenate(([True], sorted_values[1:] != sorted_values[:-1])))
        x, w = sorted_values[starts], np.add.reduceat(weights[order], starts)
    else:
        x, w = _binned(values.astype(np.float64), weights)
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


def _fp16_histogram(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct float16 values ascending as float64, summed weights); -0 counts as +0."""
    hist = np.bincount(np.ascontiguousarray(values).view(np.uint16).ravel(), weights=weights, minlength=65536)
    hist[0] += hist[0x8000]
    order = _fp16_order()
    return _fp16_values()[order], hist[order]


def _binned(x: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weighted bin means ascending, bin weights) over bins of equal float16 rounding of x * 2**s."""
    exponent = np.frexp(np.abs(x).max())[1]
    keys = (x * 2.0 ** (15 - exponent)).astype(np.float16).view(np.uint16)
    keys = np.where(keys == 0x8000, 0, keys)
    w = np.bincount(keys, weights=weights, minlength=65536)
    wx = np.bincount(keys, weights=weights * x, minlength=65536)
    order = _fp16_order()
    w, wx = w[order], wx[order]
    keep = w > 0
    return wx[keep] / w[keep], w[keep]
