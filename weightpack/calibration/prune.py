"""Calibrated pruning: SparseGPT (error feedback through H) and Wanda (second moments only).

Counts (normative). Unstructured: exactly ``k = round(sparsity * N)`` weights are pruned in
total, as in :func:`weightpack.prune`. SparseGPT spreads them over its sweep blocks in proportion
to their columns (block ``[i1, i2)`` prunes ``R(k i2 / n) - R(k i1 / n)`` weights, R = round
half up); Wanda over the rows (row r prunes ``R(k (r+1) / rows) - R(k r / rows)``). With
``n_m=(n, m)`` every run of m consecutive input columns of every row loses exactly n weights
(m must divide the row length). Ties in a score prune the lower (row-major) position first.

- SparseGPT: inside each sweep block the weights of smallest ``w**2 / U[j, j]**2`` (current,
  error-corrected values; U the inverse Cholesky factor of the damped H) are pruned, then the
  sweep zeroes them column by column and the remaining weights absorb the error. With n:m the
  choice is made per row when the sweep reaches the first column of each run of m.
  ``act_order`` is off by default here (measured 0.1-0.3 dB worse) and not allowed with n:m.
- ``refit=True`` (SparseGPT): the sweep's kept weights are replaced by the exact least-squares
  solution on the damped H for their mask (:func:`refit_kept`: every kept weight of a row absorbs
  the error of every pruned one, not only the later columns'), and the same is done for Wanda's
  mask (same counts); the mask of lower output error ``tr((W - W^) H (W - W^)^T)`` is kept (the
  sweep's on a tie). Measured on the decoder fixture's 15 linears at 50% (bench/bench_prune_refit.py):
  +2.0 to +5.9 dB of layer output SNR over the sweep alone (Wanda's mask kept on every one).
- Wanda: score ``|w_rj| sqrt(E[x_j^2])``, smallest pruned per row (or per run of m); the kept
  weights are unchanged.

Zeros are never stored: a kept weight equal to 0 in the weights' dtype is left out of the mask,
so the sparsity can end slightly above the target.
"""
from __future__ import annotations

import numpy as np

from ..compress._common import check_bool, float_weights, positive_int
from ..compress.pruning import _smallest_reference, prune_count
from ..errors import WeightpackError, describe
from ..formats import SparseTensor
from . import hessian
from .stats import ActivationStats
from .sweep import DEFAULT_BLOCK, Layer


def sparsegpt_prune(w, h, sparsity=None, *, n_m=None, act_order=False, refit=False, damp=hessian.DEFAULT_DAMP,
                    sweep_block=DEFAULT_BLOCK):  # fmt: skip
    """Prune a layer weight ``w`` (out, in, ...) with SparseGPT given its inputs' Gram matrix ``h``.

    Give ``sparsity`` (default 0.5) or ``n_m=(n, m)`` (n of every m consecutive inputs pruned).
    ``refit=True``: least-squares refit of the kept weights, and the better of the sweep's and
    Wanda's masks (see the module docstring).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> w = rng.standard_normal((4, 16)).astype(np.float32)
    >>> x = rng.standard_normal((256, 16)) @ rng.standard_normal((16, 16))
    >>> s = sparsegpt_prune(w, x.T @ x / 256, 0.5)
    >>> s.sparsity, sparsegpt_prune(w, x.T @ x / 256, n_m=(2, 4)).sparsity
    (0.5, 0.5)
    """
    sparsity, nm = _check_target(sparsity, n_m)
    sweep_block = positive_int(sweep_block, "sweep_block")
    if nm is not None and act_order:
        raise WeightpackError("act_order=True is not allowed with n_m: the runs of m columns are in the original order")
    refit = check_bool(refit, "refit")
    layer = Layer(w, h, damp=damp, act_order=act_order)
    rows, n = layer.rows, layer.columns
    keep = np.ones((rows, n), bool)
    if nm is None:
        total = prune_count(sparsity, rows * n)
        nn, m = 0, 0

        def count(i):  # R(k i / n): weights pruned in columns [0, i)
            return (2 * total * i + n) // (2 * n)

    else:
        nn, m = nm
        if n % m:
            raise WeightpackError(f"n_m={describe(n_m)}: m={m} does not divide the {n} input columns of each row")
        sweep_block = max(m, sweep_block // m * m)

    def begin(i1, i2, W1, U1, current):  # unstructured: this block's mask, from the current values
        keep[:, i1:i2] &= ~_smallest((W1 / np.diagonal(U1)) ** 2, count(i2) - count(i1))

    def run(i1, i2, W1, U1, err):
        from . import _kernels

        block = np.ascontiguousarray(keep[:, i1:i2])
        _kernels.sweep_prune(W1, U1, block, nn, m, err)
        keep[:, i1:i2] = block

    values = np.empty((rows, n), layer.dtype)  # the final values, rounded to the weights' dtype
    layer.sweep(run, sweep_block, begin if nm is None else None, out=values)
    values, keep = layer.unpermute(values), layer.unpermute(keep)
    if refit:
        values, keep = _best_refit(layer, keep.reshape(rows, n), sparsity, nm)
    return _sparse(values.reshape(layer.shape), keep.reshape(layer.shape), layer.dtype)


def _best_refit(layer: Layer, keep: np.ndarray, sparsity, nm):
    """(values, mask) of the lower-error least-squares refit of the sweep's and Wanda's masks."""
    gram = layer.gram + layer.damping * np.eye(layer.columns)
    target = layer.original.astype(np.float64)
    masks = [keep, wanda_prune(layer.original, np.diagonal(layer.gram), sparsity if nm is None else None, n_m=nm).mask.values()]
    best = None
    for mask in masks:
        mask = np.asarray(mask, bool).reshape(keep.shape)
        values = refit_kept(target, mask, gram)
        error = values - target
        cost = float(np.einsum("ij,ij->", error @ gram, error))
        if best is None or cost < best[0]:
            best = (cost, values, mask)
    return best[1].astype(layer.dtype), best[2]


def refit_kept(w, keep, gram, *, tolerance=1e-12, max_iterations=None) -> np.ndarray:
    """The weights ``v`` (rows x n, float64) zero outside ``keep`` nearest to ``w`` in the metric
    ``gram`` (positive definite): per row ``v_S = w_S + H_SS^-1 H_SP w_P`` (S kept, P pruned).

    Solved by conjugate gradients on all rows at once (one rows x n x n product per iteration),
    until every row's squared residual is below ``tolerance`` times its start or after
    ``max_iterations`` (default n, where CG is exact in exact arithmetic).

    >>> import numpy as np
    >>> h = np.array([[2.0, 1.0], [1.0, 2.0]])
    >>> refit_kept(np.array([[1.0, 1.0]]), np.array([[True, False]]), h).tolist()
    [[1.5, 0.0]]
    """
    w = np.asarray(w, np.float64)
    mask = np.asarray(keep, bool)
    b = ((w * ~mask) @ gram) * mask
    d = np.zeros_like(w)
    r = b.copy()
    p = r.copy()
    rs = np.einsum("ij,ij->i", r, r)
    stop = tolerance * rs
    for _ in range(w.shape[1] if max_iterations is None else max_iterations):
        active = rs > stop
        if not active.any():
            break
        ap = (p @ gram) * mask
        curvature = np.einsum("ij,ij->i", p, ap)
        alpha = np.where(active & (curvature > 0), rs / np.where(curvature > 0, curvature, 1), 0.0)
        d += alpha[:, None] * p
        r -= alpha[:, None] * ap
        new = np.einsum("ij,ij->i", r, r)
        beta = np.where(active & (rs > 0), new / np.where(rs > 0, rs, 1), 0.0)
        p = r + beta[:, None] * p
        rs = new
    return (w + d) * mask


def wanda_prune(w, second_moments, sparsity=None, *, n_m=None):
    """Prune ``w`` (out, in, ...) by Wanda's score ``|w| sqrt(E[x^2])``, per row (or per run of m).

    ``second_moments`` is an ActivationStats (with or without its Gram matrix) or the per-input
    ``E[x_j^2]`` (length in = the product of w.shape[1:]). Kept weights are not changed.

    >>> import numpy as np
    >>> w = np.array([[1.0, -2.0, 3.0, 0.5]], np.float32)
    >>> wanda_prune(w, np.array([4.0, 1.0, 0.01, 1.0]), 0.5).decompress().tolist()
    [[1.0, -2.0, 0.0, 0.0]]
    """
    sparsity, nm = _check_target(sparsity, n_m)
    w = float_weights(w)
    if w.ndim < 2:
        raise WeightpackError(f"w has shape {w.shape}; a layer weight must have rank >= 2 (out, in, ...)")
    flat = w.reshape(w.shape[0], -1)
    rows, n = flat.shape
    moments = _second_moments(second_moments, n)
    score = np.abs(flat.astype(np.float64)) * np.sqrt(moments)
    if nm is None:
        total = prune_count(sparsity, rows * n)
        bounds = (2 * total * np.arange(rows + 1) + rows) // (2 * rows)
        per_row = np.diff(bounds)
        rank = np.empty((rows, n), np.int64)
        np.put_along_axis(rank, np.argsort(score, axis=1, kind="stable"), np.arange(n), axis=1)
        keep = rank >= per_row[:, None]
    else:
        nn, m = nm
        if n % m:
            raise WeightpackError(f"n_m={describe(n_m)}: m={m} does not divide the {n} input columns of each row")
        runs = score.reshape(rows, n // m, m)
        rank = np.empty(runs.shape, np.int64)
        np.put_along_axis(rank, np.argsort(runs, axis=2, kind="stable"), np.arange(m), axis=2)
        keep = (rank >= nn).reshape(rows, n)
    return _sparse(flat, keep, w.dtype, w.shape)


def _sparse(values, keep, dtype, shape=None) -> SparseTensor:
    stored = np.asarray(values).astype(dtype, copy=False)
    if shape is not None:
        stored, keep = stored.reshape(shape), keep.reshape(shape)
    mask = keep & (stored != 0)
    return SparseTensor(mask, stored[mask])


def _smallest(scores: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask of the ``count`` smallest scores; equal scores: lower row-major position first."""
    return _smallest_reference(scores.reshape(-1), count).reshape(scores.shape)


def _check_target(sparsity, n_m):
    if n_m is None:
        prune_count(0.5 if sparsity is None else sparsity, 1)  # validates
        return 0.5 if sparsity is None else sparsity, None
    if sparsity is not None:
        raise WeightpackError(f"give sparsity={describe(sparsity)} or n_m={describe(n_m)}, not both")
    ok = isinstance(n_m, (tuple, list)) and len(n_m) == 2
    ok = ok and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in n_m)
    if not ok or not 0 < n_m[0] < n_m[1]:
        raise WeightpackError(f"n_m={describe(n_m)} must be a pair of integers (n, m) with 0 < n < m")
    return None, (int(n_m[0]), int(n_m[1]))


def _second_moments(value, n: int) -> np.ndarray:
    if isinstance(value, ActivationStats):
        if value.in_features != n:
            raise WeightpackError(f"second_moments holds statistics of in_features={value.in_features}; the weight needs {n}")
        return value.second_moments
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu" or arr.shape != (n,):
        raise WeightpackError(
            f"second_moments has shape {arr.shape} and dtype {arr.dtype}; it must be {n} real values (E[x_j^2] per input)"
        )
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all() or arr.min() < 0:
        raise WeightpackError("second_moments must be finite and non-negative (they are mean squares)")
    return arr
