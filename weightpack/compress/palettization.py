"""Palettization: each weight becomes an n-bit index into a LUT of 2**n values.

Rules (normative):

- LUT dtype = the weights' dtype (float64 weights are cast to float32 first). A per-tensor LUT
  has shape ``[1] * rank + [2**n, 1]``; with ``group_size=g`` the weights are cut along ``axis``
  into runs of g consecutive slices, one LUT each (``S[axis] / g`` on that axis of the LUT shape).
- ``mode="kmeans"``: the LUT holds the optimal 1-D k-means centroids (least sum of squared
  errors), each the float64 mean of its cluster rounded once to the LUT dtype, sorted
  ascending. float16 weights: exact, by the DP of :mod:`.kmeans` on the histogram of the 65,536
  bit patterns (+0 and -0 merged). float32 weights: exact on the distinct values when there are
  at most 65,536 of them; otherwise the DP runs on bins of values that round to the same float16
  (after scaling by a power of two so the largest fits), each bin weighted by its count and
  placed at its true mean, and Lloyd passes on all the distinct values refine the centroids
  until the SSE stops decreasing (within 0.1% of the optimum; measured in the tests).
- ``mode="uniform"``: ``lut[i] = min + i * (max - min) / (2**n - 1)`` in float64, rounded to
  the LUT dtype (coremltools' formula, without its rounding of the step to the weights' dtype).
- With fewer distinct values than 2**n, the unused entries repeat the largest centroid, so every
  LUT is sorted ascending (non-decreasing).
- Indices: every weight gets the index of the nearest entry of the *stored* LUT, ties (equal
  distance, including repeated entries) to the lower index. Distances are compared in float64
  through midpoints of adjacent entries (exact for float16 LUTs). Assigning to the stored LUT is
  never worse than the k-means partition itself.

coremltools differs: its kmeans mode is exact only for float16 groups of at least 10,000 weights
(scikit-learn's Lloyd otherwise), keeps the DP's cluster ids instead of the nearest stored entry,
and fills unused entries with 0.
"""
from __future__ import annotations

import functools

import numpy as np

from ..bits import check_nbits
from ..errors import WeightpackError, describe
from ..formats import PalettizedTensor, SparsePalettizedTensor, SparseTensor
from ._common import check_axis, check_choice, float_weights, positive_int, sparse_values

MODES = ("kmeans", "uniform")
EXACT_LIMIT = 65536  # float32: the DP runs on the distinct values when there are at most this many
HISTOGRAM_MIN = 1 << 14  # float16 groups this large are counted by bit pattern instead of sorted
LLOYD_PASSES = 100


def palettize(w, nbits=4, *, mode="kmeans", group_size=None, axis=0):
    """Cluster the weights into 2**nbits values (one LUT per tensor or per group of channels).

    A SparseTensor input palettizes its nonzeros with one LUT into a SparsePalettizedTensor.

    >>> import numpy as np
    >>> w = np.array([[0.0, 0.1, 0.2, 0.3], [1.0, 1.1, 1.2, 1.3]], np.float32)
    >>> p = palettize(w, nbits=1)
    >>> p.lut.ravel().tolist(), p.indices.values().tolist()
    ([0.15000000596046448, 1.149999976158142], [[0, 0, 0, 0], [1, 1, 1, 1]])
    >>> palettize(w, nbits=2, group_size=1).lut.shape
    (2, 1, 4, 1)
    """
    nbits = check_nbits(nbits)
    fit = {"kmeans": kmeans_lut, "uniform": uniform_lut}[check_choice(mode, "mode", MODES)]
    if isinstance(w, SparseTensor):
        if group_size is not None:
            raise WeightpackError(f"group_size={describe(group_size)} is not supported for a SparseTensor input; allowed: None")
        lut, indices = fit(sparse_values(w), nbits)
        return SparsePalettizedTensor(w.mask, indices, lut.reshape((1,) * w.ndim + (-1, 1)))
    w = float_weights(w)
    axis = check_axis(axis, w.ndim)
    groups = 1
    if group_size is not None:
        groups = w.shape[axis] // positive_int(group_size, "group_size")
        if w.shape[axis] % group_size:
            raise WeightpackError(
                f"group_size={group_size} does not divide w.shape[{axis}]={w.shape[axis]} (w has shape {w.shape})"
            )
    else:
        axis = 0
    moved = np.moveaxis(w, axis, 0)
    rows = moved.reshape(groups, -1)
    luts = np.empty((groups, 1 << nbits), w.dtype)
    indices = np.empty(rows.shape, np.uint8)
    for g in range(groups):
        luts[g], indices[g] = fit(rows[g], nbits)
    lut_shape = [groups if a == axis else 1 for a in range(w.ndim)] + [1 << nbits, 1]
    return PalettizedTensor(np.moveaxis(indices.reshape(moved.shape), 0, axis), luts.reshape(lut_shape))


def kmeans_lut(values: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """(LUT [2**nbits] of values' dtype, uint8 indices) by optimal k-means, for 1-D contiguous values."""
    from . import kmeans

    k = 1 << nbits
    if values.dtype == np.float16 and values.size >= HISTOGRAM_MIN:
        counts = kmeans.histogram16(values.view(np.uint16))
        counts[0] += counts[0x8000]
        keys = _fp16_order()
        keys = keys[counts[keys] > 0]
        x, counts = _fp16_values()[keys], counts[keys].astype(np.float64)
    else:
        x, counts = kmeans.unique_counts(np.sort(values.astype(np.float32, copy=False)))
    if x.size <= EXACT_LIMIT:
        starts, _ = kmeans.solve(x, counts, k)
        centroids = kmeans.cluster_means(x, counts, starts)
    else:
        centroids = _binned_centroids(x, counts, k)
    lut = _fill(centroids, k, values.dtype)
    return lut, assign(lut, values)


def uniform_lut(values: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """(LUT of 2**nbits evenly spaced values from min to max, uint8 indices)."""
    lo, hi = float(values.min()), float(values.max())
    k = 1 << nbits
    lut = (np.arange(k) * ((hi - lo) / (k - 1)) + lo).astype(values.dtype)
    return lut, assign(lut, values)


def assign(lut: np.ndarray, values: np.ndarray) -> np.ndarray:
    """:func:`nearest_entry`; large float16 inputs go through a table of all 65,536 bit patterns."""
    if values.dtype == np.float16 and values.size >= HISTOGRAM_MIN:
        from . import kmeans

        return kmeans.lookup16(nearest_entry(lut, _fp16_values()), values.view(np.uint16))
    return nearest_entry(lut, values)


def nearest_entry(lut: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of the sorted ``lut`` for each value; ties to the lower index."""
    entries = lut.astype(np.float64)
    first = np.searchsorted(entries, entries, side="left")  # lowest index holding each entry's value
    mids = (entries[:-1] + entries[1:]) * 0.5
    return first[np.searchsorted(mids, values, side="left")].astype(np.uint8)


def _binned_centroids(x: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """Near-optimal centroids for many distinct values: DP on float16 bins, then Lloyd passes."""
    from . import kmeans

    exponent = np.frexp(np.abs(x).max())[1]
    keys = (x * 2.0 ** (15 - exponent)).astype(np.float16)
    bin_starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    bin_counts = np.add.reduceat(counts, bin_starts)
    bin_means = np.add.reduceat(counts * x, bin_starts) / bin_counts
    starts, _ = kmeans.solve(bin_means, bin_counts, k)
    return kmeans.lloyd(x, counts, bin_starts[starts], LLOYD_PASSES)


def _fill(centroids: np.ndarray, k: int, dtype) -> np.ndarray:
    lut = centroids.astype(dtype)
    return np.concatenate((lut, np.repeat(lut[-1:], k - lut.size)))


@functools.cache
def _fp16_values() -> np.ndarray:
    """The value of every float16 bit pattern, as float64 (read-only)."""
    values = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float64)
    values.flags.writeable = False
    return values


@functools.cache
def _fp16_order() -> np.ndarray:
    """Every finite float16 bit pattern except -0, sorted by value (read-only)."""
    values = _fp16_values()
    patterns = np.flatnonzero(np.isfinite(values))
    patterns = patterns[patterns != 0x8000]
    order = patterns[np.argsort(values[patterns], kind="stable")]
    order.flags.writeable = False
    return order
