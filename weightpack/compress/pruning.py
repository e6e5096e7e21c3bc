"""Magnitude pruning to an exact count.

Rules (normative):

- ``k = round(sparsity * N)``, the product evaluated in float64 and rounded half to even (Python's
  ``round``), for N elements. float64 weights are cast to float32 first; magnitudes are those of
  the stored values, compared in the weights' own dtype.
- The k elements of smallest ``|w|`` are pruned. Among equal magnitudes the lower flat (row-major)
  index is pruned first. This is what a stable sort of ``|w|`` would do; it runs in O(N) with one
  ``np.partition``.
- Elements equal to 0 (+0 or -0) are never stored. They have the smallest magnitude, so they are
  pruned first; if there are more than k of them the sparsity ends above the target.

coremltools differs: it prunes every ``|w| <= percentile(|w|, 100 s)`` (linear interpolation, in the
weights' dtype), so ties at the threshold over-prune and distinct values prune
``floor((N - 1) s) + 1`` elements.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..errors import WeightpackError, describe
from ..formats import SparseTensor
from ._common import float_weights


def prune(w, sparsity=0.5) -> SparseTensor:
    """Zero the ``round(sparsity * w.size)`` smallest-magnitude weights; store the rest sparsely.

    >>> import numpy as np
    >>> w = np.array([[0.5, -0.25, 0.75], [0.25, 0.0, 2.0]], np.float32)
    >>> s = prune(w, sparsity=1 / 3)          # k = 2: the 0, then -0.25 (ties: lower index first)
    >>> s.decompress().tolist(), s.nonzero_data.tolist()
    ([[0.5, 0.0, 0.75], [0.25, 0.0, 2.0]], [0.5, 0.75, 0.25, 2.0])
    """
    if isinstance(w, SparseTensor):
        raise WeightpackError("w is already a SparseTensor; prune its dense values (w.decompress()) instead")
    w = float_weights(w)
    k = prune_count(sparsity, w.size)
    flat = w.reshape(-1)
    keep = flat != 0
    if k >= flat.size:
        keep[:] = False
    elif k > 0:
        magnitude = np.abs(flat)
        kth = np.partition(magnitude, k - 1)[k - 1]
        below = magnitude < kth
        keep &= ~below
        ties = np.flatnonzero(magnitude == kth)[: k - int(np.count_nonzero(below))]
        keep[ties] = False
    return SparseTensor(keep.reshape(w.shape), flat[keep])


def prune_count(sparsity, size: int) -> int:
    """How many of ``size`` elements ``sparsity`` prunes: ``round(sparsity * size)``, half to even."""
    if isinstance(sparsity, (bool, np.bool_)) or not isinstance(sparsity, numbers.Real):
        raise WeightpackError(f"sparsity={describe(sparsity)} must be a number in [0, 1]")
    s = float(sparsity)
    if not 0.0 <= s <= 1.0:
        raise WeightpackError(f"sparsity={describe(sparsity)} is outside [0, 1]")
    return round(s * size)
