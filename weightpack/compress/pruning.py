"""Pruning: which weights become zero, stored as Core ML's mask + nonzero values.

Rules (normative; SPEC.md §9.1 states them too). The *score* of a weight is ``|w|`` (float64
input is cast to float32 first; magnitudes compared in the weights' dtype), or with
``importance`` the float32 product ``float32(|w|) * float32(importance)`` (Wanda: importance = the
L2 norm of each input channel's activations, shape ``[1, C_in]``).

- ``sparsity=s`` (magnitude): exactly ``k = round(s * N)`` elements are pruned (the product in
  float64, rounded half to even): the k smallest scores, ties to the lower flat (row-major) index,
  as a stable sort would. ``granularity="per_channel"`` applies this to every slice along ``axis``
  on its own (``k = round(s * slice size)``).
- ``block_size=b`` (with ``sparsity``): runs of b consecutive elements along ``dim`` (default 0; a
  shorter last run if b does not divide the axis) are pruned whole; a block's score is the L2 norm
  of its scores; ``round(s * number of blocks)`` blocks, ties to the lower block (row-major order
  of the blocks).
- ``n_m_ratio=(n, m)``: in every run of m consecutive elements along ``dim`` (default 1), the n
  smallest scores are pruned (n is the number of zeros, as in coremltools), ties to the lower
  index; a last run of r < m elements prunes ``max(0, n - (m - r))`` (coremltools pads it with
  zeros).
- ``threshold=t``: every score ``<= t`` is pruned (coremltools' rule).
- Elements equal to 0 (+0 or -0) are never stored: they have the lowest score, so they go first;
  with more zeros than k the sparsity ends above the target.

coremltools differs: it prunes every ``|w| <= percentile(|w|, 100 s)`` (linear interpolation, in the
weights' dtype), so ties at the threshold over-prune and distinct values prune ``floor((N - 1) s) +
1`` elements; its n:m breaks ties by an unstable sort.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..bits import NBitArray
from ..errors import WeightpackError, describe
from ..formats import SparseTensor
from ._common import check_axis, check_choice, float_weights, importance_array, positive_int

GRANULARITIES = ("per_tensor", "per_channel")
REFERENCE_MAX = 1 << 16  # magnitude pruning of up to this many elements runs the numpy reference


def prune(w, sparsity=None, *, threshold=None, block_size=None, dim=None, n_m_ratio=None,
          granularity="per_tensor", axis=0, importance=None) -> SparseTensor:
    """Zero the lowest-scoring weights and store the rest sparsely (rules: the module docstring).

    Give one of ``sparsity`` (default 0.5), ``threshold`` or ``n_m_ratio``. ``block_size`` and
    ``dim`` shape magnitude pruning into blocks; ``granularity``/``axis`` select per tensor or per
    slice; ``importance`` (non-negative, the weights' shape or 1 on some axes) scales the scores.

    >>> import numpy as np
    >>> w = np.array([[0.5, -0.25, 0.75], [0.25, 0.0, 2.0]], np.float32)
    >>> s = prune(w, sparsity=1 / 3)          # k = 2: the 0, then -0.25 (ties: lower index first)
    >>> s.decompress().tolist(), s.nonzero_data.tolist()
    ([[0.5, 0.0, 0.75], [0.25, 0.0, 2.0]], [0.5, 0.75, 0.25, 2.0])
    >>> prune(np.arange(1, 9, dtype=np.float32).reshape(2, 4), n_m_ratio=(1, 2)).decompress().tolist()
    [[0.0, 2.0, 0.0, 4.0], [0.0, 6.0, 0.0, 8.0]]
    """
    if isinstance(w, SparseTensor):
        raise WeightpackError("w is already a SparseTensor; prune its dense values (w.decompress()) instead")
    w = float_weights(w)
    given = [name for name, v in (("sparsity", sparsity), ("threshold", threshold), ("n_m_ratio", n_m_ratio)) if v is not None]
    if len(given) > 1:
        raise WeightpackError(f"give one of sparsity, threshold and n_m_ratio, not {' and '.join(given)}")
    granularity = check_choice(granularity, "granularity", GRANULARITIES)
    axis = check_axis(axis, w.ndim)
    if importance is not None:
        importance = importance_array(importance, w.shape)
    if granularity != "per_tensor" and (threshold is not None or n_m_ratio is not None or block_size is not None):
        raise WeightpackError(
            f"granularity={granularity!r} applies to sparsity without blocks; allowed with threshold, n_m_ratio or "
            "block_size: 'per_tensor'"
        )
    if block_size is not None and (threshold is not None or n_m_ratio is not None):
        raise WeightpackError("block_size applies to sparsity; it cannot be combined with threshold or n_m_ratio")
    if dim is not None and block_size is None and n_m_ratio is None:
        raise WeightpackError(f"dim={describe(dim)} is only used with block_size or n_m_ratio")
    if threshold is not None:
        pruned = _scores(w, importance) <= _threshold(threshold)
        return _sparse(w, pruned)
    if n_m_ratio is not None:
        n, m = _n_m(n_m_ratio)
        dim = check_axis(1 if dim is None else dim, w.ndim, "dim")
        length = w.shape[dim]
        if m > length:  # one short run of all `length` elements: it prunes max(0, n - (m - length))
            n, m = max(0, n - (m - length)), length
        return _sparse(w, _n_of_m(w, importance, n, m, dim))
    s = 0.5 if sparsity is None else sparsity
    if block_size is not None:
        block_size = positive_int(block_size, "block_size")
        dim = check_axis(0 if dim is None else dim, w.ndim, "dim")
        block_size = min(block_size, w.shape[dim])  # a longer block is one short run of the whole axis
        return _sparse(w, _blocks(w, importance, s, block_size, dim))
    if granularity == "per_channel":
        return _sparse(w, _per_slice(w, importance, s, axis))
    k = prune_count(s, w.size)
    if w.size <= REFERENCE_MAX:
        return _sparse(w, _smallest_reference(_scores(w, importance).reshape(-1), k).reshape(w.shape))
    from .selection import prune_smallest, score_keys

    wbits = w.reshape(-1).view(np.uint16 if w.dtype == np.float16 else np.uint32)
    packed, kept = prune_smallest(wbits, score_keys(w, importance), k)
    packed.flags.writeable = False
    kept.flags.writeable = False
    return SparseTensor(NBitArray(packed, 1, w.shape), kept.view(w.dtype))


def prune_count(sparsity, size: int) -> int:
    """How many of ``size`` elements ``sparsity`` prunes: ``round(sparsity * size)``, half to even."""
    if isinstance(sparsity, (bool, np.bool_)) or not isinstance(sparsity, numbers.Real):
        raise WeightpackError(f"sparsity={describe(sparsity)} must be a number in [0, 1]")
    s = float(sparsity)
    if not 0.0 <= s <= 1.0:
        raise WeightpackError(f"sparsity={describe(sparsity)} is outside [0, 1]")
    return round(s * size)


def _threshold(threshold) -> float:
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real) or not threshold >= 0:
        raise WeightpackError(f"threshold={describe(threshold)} must be a number >= 0")
    if not np.isfinite(threshold):
        raise WeightpackError(f"threshold={describe(threshold)} must be finite")
    return float(threshold)


def _n_m(n_m_ratio) -> tuple[int, int]:
    ok = isinstance(n_m_ratio, (tuple, list)) and len(n_m_ratio) == 2
    if ok:
        n, m = n_m_ratio
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in (n, m))
    if not ok:
        raise WeightpackError(f"n_m_ratio={describe(n_m_ratio)} must be a pair of integers (n, m): n zeros in every m")
    n, m = int(n), int(m)
    if m < 1 or n < 0 or n > m:
        raise WeightpackError(f"n_m_ratio={describe(n_m_ratio)}: allowed 0 <= n <= m and m >= 1 (n zeros in every m weights)")
    return n, m


def _scores(w: np.ndarray, importance) -> np.ndarray:
    """|w| in its own dtype, or float32(|w|) * importance."""
    if importance is None:
        return np.abs(w)
    return np.abs(w.astype(np.float32)) * importance


def _smallest_reference(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean: the k smallest scores, ties to the lower index (numpy reference, O(N) partition)."""
    pruned = np.zeros(scores.size, bool)
    if k >= scores.size:
        pruned[:] = True
    elif k > 0:
        kth = np.partition(scores, k - 1)[k - 1]
        below = scores < kth
        pruned |= below
        ties = np.flatnonzero(scores == kth)[: k - int(np.count_nonzero(below))]
        pruned[ties] = True
    return pruned


def _keys2(w: np.ndarray, importance, axis: int) -> np.ndarray:
    """Score keys as a 2-D array: one row per slice along ``axis``, in flat order within a row."""
    from .selection import score_keys

    keys = score_keys(w, importance).reshape(w.shape)
    if keys.dtype == np.uint16:
        keys = keys & np.uint16(0x7FFF)
    elif importance is None:
        keys = keys & np.uint32(0x7FFFFFFF)
    moved = np.moveaxis(keys, axis, 0)
    return np.ascontiguousarray(moved).reshape(moved.shape[0], -1)


def _per_slice(w: np.ndarray, importance, s, axis: int) -> np.ndarray:
    from . import _threads
    from .selection import select_rows

    keys2 = _keys2(w, importance, axis)
    k = prune_count(s, keys2.shape[1])
    pruned2 = np.empty(keys2.shape, bool)
    _threads.run(lambda sp: select_rows(keys2, k, sp[0], sp[1], pruned2), _threads.spans(keys2.shape[0]))
    moved_shape = np.moveaxis(np.empty(w.shape, bool), axis, 0).shape
    return np.moveaxis(pruned2.reshape(moved_shape), 0, axis)


def _n_of_m(w: np.ndarray, importance, n: int, m: int, dim: int) -> np.ndarray:
    from . import _threads
    from .selection import select_n_of_m

    keys = _keys2(w, importance, dim).T  # runs go along dim: make it the last axis
    keys2 = np.ascontiguousarray(keys)
    pruned2 = np.empty(keys2.shape, bool)
    _threads.run(lambda sp: select_n_of_m(keys2, n, m, sp[0], sp[1], pruned2), _threads.spans(keys2.shape[0]))
    moved_shape = np.moveaxis(np.empty(w.shape, bool), dim, 0).shape
    return np.moveaxis(pruned2.T.reshape(moved_shape), 0, dim)


def _blocks(w: np.ndarray, importance, s, b: int, dim: int) -> np.ndarray:
    """Prune whole runs of b elements along ``dim``, by the L2 norm of their scores (float64)."""
    scores = _scores(w, importance).astype(np.float64)
    moved = np.moveaxis(scores, dim, 0)
    D = moved.shape[0]
    nb = -(-D // b)
    padded = np.zeros((nb * b,) + moved.shape[1:])
    padded[:D] = moved
    norms = np.sqrt(np.sum(np.square(padded.reshape((nb, b) + moved.shape[1:])), axis=1))
    # block order: row-major over the block grid in the original axis order
    grid = np.moveaxis(norms, 0, dim).reshape(-1)
    chosen = _smallest_reference(grid, prune_count(s, grid.size))
    chosen = np.moveaxis(chosen.reshape(np.moveaxis(norms, 0, dim).shape), dim, 0)
    pruned = np.repeat(chosen, b, axis=0)[:D]
    return np.moveaxis(pruned, 0, dim)


def _sparse(w: np.ndarray, pruned: np.ndarray) -> SparseTensor:
    """SparseTensor keeping the elements not pruned and not zero."""
    bits = w.view(np.uint16 if w.dtype == np.float16 else np.uint32)
    keep = ~pruned & ((bits & (0x7FFF if w.dtype == np.float16 else 0x7FFFFFFF)) != 0)
    packed = np.packbits(keep.reshape(-1), bitorder="little")
    packed.flags.writeable = False
    values = w.reshape(-1)[keep.reshape(-1)]
    values.flags.writeable = False
    return SparseTensor(NBitArray(packed, 1, w.shape), values)
