"""The OBS / GPTQ column sweep shared by every error-feedback encoder.

For a weight W (rows x n) and the layer's damped Gram matrix H with ``U^T U = H^-1`` (U upper
triangular, :func:`.hessian.inverse_cholesky`), columns are rounded left to right; after column j
is rounded to q, the rest of every row absorbs the error::

    e_j = (w_j - q_j) / U[j, j]             W[:, l] -= e_j * U[j, l]   for l > j

which is the optimal (OBS) correction of the not-yet-rounded weights for the quadratic output
error ``sum_r (w_r - q_r)^T H (w_r - q_r)``. Unrolled, ``W - Q = E U``: the current value of a
column is its original value minus ``E[:, :j] @ U[:j, j]``, and since ``U H U^T = I`` the output
error of the result is ``sum(E**2)`` (returned).

Blocked, left-looking: a block of B columns first receives every earlier block's errors at once,
``W0[:, i1:i2] - E[:, :i1] @ U[:i1, i1:i2]`` (one BLAS product into a contiguous rows x B
buffer), then a compiled kernel sweeps the block's columns with the updates confined to the
block (float64). The product runs in U's precision: float32 for layers of more than
``FLOAT32_ABOVE`` input columns (H factored in float32 too, as GPTQ does; the rounding is about
1e-7 of the correction, far below any rounding step), halving memory and cutting the time 2-3x;
smaller layers use float64 throughout. Memory: E, U and one block buffer (U is read through a
reversed view and the weight through a per-block gather; each product copies only its slice).

The caller says how to round: ``begin(i1, i2, W1, U1, current)`` (optional) may look at the
block's current values first (SparseGPT's mask, GPTQ's per-block scales; ``current(j1, j2)``
gives columns ``j1..j2-1 >= i1`` with the earlier blocks' errors applied), then ``run(i1, i2,
W1, U1, err)`` runs a kernel that overwrites ``W1`` with the rounded values and fills ``err``
(all three C-contiguous, so the kernels compile once).
"""
from __future__ import annotations

import numpy as np

from ..compress._common import check_bool, float_weights
from ..errors import WeightpackError
from . import hessian

DEFAULT_BLOCK = 128
FLOAT32_ABOVE = 1024  # input columns; wider layers factor H and apply earlier blocks' errors in float32


def column_sweep(columns, rows: int, n: int, U: np.ndarray, run, block_size: int = DEFAULT_BLOCK, begin=None, out=None) -> float:
    """Round the ``n`` columns that ``columns(j1, j2)`` returns (float64, rows x (j2 - j1), the
    original values in sweep order); return sum(E**2). ``out`` (rows x n), when given, receives
    the rounded values (cast to its dtype)."""
    E = np.empty((rows, n), U.dtype)
    total = 0.0
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        W1 = np.ascontiguousarray(columns(i1, i2), np.float64)
        if i1:
            W1 -= E[:, :i1] @ U[:i1, i1:i2]
        U1 = np.array(U[i1:i2, i1:i2], np.float64, order="C")
        if begin is not None:
            begin(i1, i2, W1, U1, lambda j1, j2, i1=i1: columns(j1, j2) - E[:, :i1] @ U[:i1, j1:j2])
        e = np.empty((rows, i2 - i1))
        run(i1, i2, W1, U1, e)
        E[:, i1:i2] = e
        total += float(np.einsum("ij,ij->", e, e))
        if out is not None:
            out[:, i1:i2] = W1
    return total


class Layer:
    """A weight prepared for a sweep: rows x columns (permuted by act_order), U, damping, importance.

    Weights of rank > 2 are flattened to ``(shape[0], -1)``; H must then be the Gram matrix of
    inputs laid out the same way (unfolded patches).
    """

    def __init__(self, w, h, *, damp=hessian.DEFAULT_DAMP, act_order=False, name="w"):
        w = float_weights(w, name)
        if w.ndim < 2:
            raise WeightpackError(f"{name} has shape {w.shape}; a layer weight must have rank >= 2 (out, in, ...)")
        self.shape = w.shape
        self.dtype = w.dtype
        self.original = w.reshape(w.shape[0], -1)
        n = self.original.shape[1]
        damp = hessian.check_damp(damp)
        act_order = check_bool(act_order, "act_order")
        gram = hessian.rescaled(hessian.gram_matrix(h, n))  # results depend on H only up to scale
        self.perm = hessian.activation_order(gram) if act_order else None
        precision = np.float32 if n > FLOAT32_ABOVE else np.float64
        self.U, self.damping = hessian.inverse_cholesky(gram, damp, precision, self.perm)
        self.importance = np.diagonal(gram) + self.damping  # original column order
        del gram
        self.row_scale = None  # float64 [rows]: the sweep works on the rows divided by it

    @property
    def rows(self) -> int:
        return self.original.shape[0]

    @property
    def columns(self) -> int:
        return self.original.shape[1]

    def block(self, j1: int, j2: int) -> np.ndarray:
        """Columns ``j1..j2-1`` of the sweep order as float64 (gathered and scaled per call)."""
        cols = slice(j1, j2) if self.perm is None else self.perm[j1:j2]
        values = self.original[:, cols].astype(np.float64)
        if self.row_scale is not None:
            values /= self.row_scale[:, None]
        return values

    def sweep(self, run, block_size: int, begin=None, out=None) -> float:
        return column_sweep(self.block, self.rows, self.columns, self.U, run, block_size, begin, out)

    def unpermute(self, a: np.ndarray) -> np.ndarray:
        """A (rows, columns) array of the sweep's column order back in the weight's order, reshaped."""
        if self.perm is not None:
            restored = np.empty_like(a)
            restored[:, self.perm] = a
            a = restored
        return a.reshape(self.shape)
