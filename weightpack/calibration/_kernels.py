"""Numba kernels of the column sweep: one block of columns, every row independent (``prange``).

Each kernel walks the block's columns left to right and, in every row, rounds the current value,
records the scaled error ``e = (w - q) / U[j, j]`` and subtracts ``e * U[j, l]`` from the block's
later columns ``l``. ``W1`` (rows x B, float64, C-contiguous) is overwritten with
the rounded values. (The propagation lines are repeated in each kernel: a shared helper measured
three times slower.) Imported only when a calibrated encoder runs (it loads numba).
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True, parallel=True)
def sweep_lut(W1, U1, mids, first, values, lut_of_row, codes, err):
    """Nearest LUT entry: ``codes[r, j] = first[g, #(mids[g] < w)]`` with ``g = lut_of_row[r]``.

    ``mids[g]`` are the midpoints of LUT g's adjacent entries (so a value on a midpoint takes the
    lower entry) and ``first[g, i]`` the lowest index holding entry i's value.
    """
    rows, width = W1.shape
    top = mids.shape[1]
    for r in numba.prange(rows):
        g = lut_of_row[r]
        for j in range(width):
            w = W1[r, j]
            lo = 0
            hi = top
            while lo < hi:
                mid = (lo + hi) >> 1
                if mids[g, mid] < w:
                    lo = mid + 1
                else:
                    hi = mid
            c = first[g, lo]
            codes[r, j] = c
            q = values[g, c]
            e = (w - q) / U1[j, j]  # the error, spread over the block's later columns
            err[r, j] = e
            W1[r, j] = q
            for l in range(j + 1, width):
                W1[r, l] -= e * U1[j, l]


@numba.njit(nogil=True, cache=True, parallel=True)
def sweep_quant(W1, U1, scale, offset, block_of_col, qmin, qmax, codes, err):
    """Linear rounding: ``q = clip(rint(w / s) + o, qmin, qmax)``, value ``s (q - o)``.

    ``scale``/``offset`` are (rows, blocks) float64; column j uses block ``block_of_col[j]``.
    """
    rows, width = W1.shape
    for r in numba.prange(rows):
        for j in range(width):
            b = block_of_col[j]
            s = scale[r, b]
            o = offset[r, b]
            w = W1[r, j]
            q = np.rint(w / s) + o
            if q < qmin:
                q = qmin
            elif q > qmax:
                q = qmax
            codes[r, j] = np.int16(q)
            q = s * (q - o)
            e = (w - q) / U1[j, j]  # the error, spread over the block's later columns
            err[r, j] = e
            W1[r, j] = q
            for l in range(j + 1, width):
                W1[r, l] -= e * U1[j, l]


@numba.njit(nogil=True, cache=True, parallel=True)
def sweep_prune(W1, U1, keep, n, m, err):
    """Zero the weights ``keep`` marks False. With ``m > 0``, at every m-th column the n smallest
    ``w**2 / U[l, l]**2`` among the next m (current values; ties to the lower column) are marked."""
    rows, width = W1.shape
    for r in numba.prange(rows):
        for j in range(width):
            if m > 0 and j % m == 0:
                for _ in range(n):
                    best = np.inf
                    arg = j
                    for l in range(j, j + m):
                        if keep[r, l]:
                            score = (W1[r, l] / U1[l, l]) ** 2
                            if score < best:
                                best = score
                                arg = l
                    keep[r, arg] = False
            w = W1[r, j]
            q = w if keep[r, j] else 0.0
            e = (w - q) / U1[j, j]  # the error, spread over the block's later columns
            err[r, j] = e
            W1[r, j] = q
            for l in range(j + 1, width):
                W1[r, l] -= e * U1[j, l]
