"""Numba kernels of the column sweep: one block of columns, every row independent.

Each kernel walks the block's columns left to right and, in every row, rounds the current value,
records the scaled error ``e = (w - q) / U[j, j]`` and subtracts ``e * U[j, l]`` from the block's
later columns ``l``. ``W1`` (rows x B, float64, C-contiguous) is overwritten with the rounded
values and ``err`` with the errors.

Rows are processed in tiles of ``TILE``, transposed into a local buffer so that the update of a
column is a contiguous loop over the tile's rows, which vectorises (measured 4x faster than
row-by-row loops; every element sees the same operations in the same order, so the results are
identical). Serial: at about 5 ms per 4096 x 128 block the kernels are a small part of a sweep,
and threads measured slower on a shared machine. Imported only when a calibrated encoder runs
(it loads numba).
"""
from __future__ import annotations

import numba
import numpy as np

from ..compress._jit import value

TILE = 32


@numba.njit(nogil=True, cache=True)
def _load(W1, r0, m):
    buf = np.empty((W1.shape[1], TILE))
    for i in range(m):
        for l in range(W1.shape[1]):
            buf[l, i] = W1[r0 + i, l]
    return buf


@numba.njit(nogil=True, cache=True)
def _store(buf, W1, r0, m):
    for i in range(m):
        for l in range(W1.shape[1]):
            W1[r0 + i, l] = buf[l, i]


@numba.njit(nogil=True, cache=True)
def _spread(buf, e, U1, err, r0, m, j):
    """Record column j's errors and subtract them from the tile's later columns."""
    for i in range(m):
        err[r0 + i, j] = e[i]
    for l in range(j + 1, buf.shape[0]):
        u = U1[j, l]
        row = buf[l]
        for i in range(m):
            row[i] -= e[i] * u


@numba.njit(nogil=True, cache=True)
def sweep_lut(W1, U1, mids, first, values, lut_of_row, codes, err):
    """Nearest LUT entry: ``codes[r, j] = first[g, #(mids[g] < w)]`` with ``g = lut_of_row[r]``.

    ``mids[g]`` are the midpoints of LUT g's adjacent entries (so a value on a midpoint takes the
    lower entry) and ``first[g, i]`` the lowest index holding entry i's value. The count is a
    branch-free scan (it vectorises; a binary search measured 2-5x slower from mispredictions).
    """
    rows, width = W1.shape
    top = mids.shape[1]
    e = np.empty(TILE)
    for r0 in range(0, rows, TILE):
        m = min(TILE, rows - r0)
        buf = _load(W1, r0, m)
        for j in range(width):
            d = U1[j, j]
            col = buf[j]
            for i in range(m):
                g = lut_of_row[r0 + i]
                w = col[i]
                below = 0
                for t in range(top):
                    below += mids[g, t] < w
                c = first[g, below]
                codes[r0 + i, j] = c
                col[i] = values[g, c]
                e[i] = (w - col[i]) / d
            _spread(buf, e, U1, err, r0, m, j)
        _store(buf, W1, r0, m)


@numba.njit(nogil=True, cache=True)
def sweep_quant(W1, U1, scale, offset, block_of_col, qmin, qmax, codes, err):
    """Linear rounding: ``q = clip(rint(w / s) + o, qmin, qmax)``, value ``s (q - o)``.

    ``scale``/``offset`` are (rows, blocks) float64; column j uses block ``block_of_col[j]``.
    """
    rows, width = W1.shape
    e = np.empty(TILE)
    for r0 in range(0, rows, TILE):
        m = min(TILE, rows - r0)
        buf = _load(W1, r0, m)
        for j in range(width):
            d = U1[j, j]
            b = block_of_col[j]
            col = buf[j]
            for i in range(m):
                s = scale[r0 + i, b]
                o = offset[r0 + i, b]
                w = col[i]
                q = np.rint(w / s) + o
                if q < qmin:
                    q = qmin
                elif q > qmax:
                    q = qmax
                codes[r0 + i, j] = np.int16(q)
                col[i] = s * (q - o)
                e[i] = (w - col[i]) / d
            _spread(buf, e, U1, err, r0, m, j)
        _store(buf, W1, r0, m)


@numba.njit(nogil=True, cache=True)
def sweep_prune(W1, U1, keep, n, m_run, err):
    """Zero the weights ``keep`` marks False. With ``m_run > 0``, at every m_run-th column the n
    smallest ``(w / U[l, l])**2`` among the next m_run (current values; ties to the lower column)
    of each row are marked first."""
    rows, width = W1.shape
    e = np.empty(TILE)
    for r0 in range(0, rows, TILE):
        m = min(TILE, rows - r0)
        buf = _load(W1, r0, m)
        for j in range(width):
            if m_run > 0 and j % m_run == 0:
                for i in range(m):
                    for _ in range(n):
                        best = np.inf
                        arg = j
                        for l in range(j, j + m_run):
                            if keep[r0 + i, l]:
                                score = (buf[l, i] / U1[l, l]) ** 2
                                if score < best:
                                    best = score
                                    arg = l
                        keep[r0 + i, arg] = False
            d = U1[j, j]
            col = buf[j]
            for i in range(m):
                w = col[i]
                if not keep[r0 + i, j]:
                    col[i] = 0.0
                e[i] = (w - col[i]) / d
            _spread(buf, e, U1, err, r0, m, j)
        _store(buf, W1, r0, m)


@numba.njit(nogil=True, cache=True)
def scale_errors(W, table, order, importance, scales, mids, values, lut_of_row, out):
    """``out[r, a]``: the importance-weighted error of row r of ``W`` when each weight takes the
    nearest entry of ``s * lut`` (``s = scales[r, a] > 0``, the row's LUT; a weight on a midpoint
    takes the lower entry): ``sum_j importance[j] (w_rj - s lut[n(w_rj)])**2``. ``W`` is float32,
    or the uint16 bits of float16 values with ``table`` their values; ``order[r]`` sorts row r.

    The entries split the sorted row into runs at ``s * mids`` (binary search) and a run's error
    comes from prefix sums of ``d``, ``d w`` and ``d w**2``: ``n + K log n`` work per row and
    candidate scale instead of ``n K``."""
    rows, n = W.shape
    k = values.shape[1]
    xs = np.empty(n)
    p0 = np.empty(n + 1)
    p1 = np.empty(n + 1)
    p2 = np.empty(n + 1)
    for r in range(rows):
        p0[0] = p1[0] = p2[0] = 0.0
        for i in range(n):
            j = order[r, i]
            v = value(W[r, j], table)
            d = importance[j]
            xs[i] = v
            p0[i + 1] = p0[i] + d
            p1[i + 1] = p1[i] + d * v
            p2[i + 1] = p2[i] + d * v * v
        g = lut_of_row[r]
        for a in range(scales.shape[1]):
            s = scales[r, a]
            lo = 0
            total = 0.0
            for t in range(k):
                hi = n if t == k - 1 else np.searchsorted(xs, s * mids[g, t], side="right")
                if hi > lo:
                    c = s * values[g, t]
                    total += (p2[hi] - p2[lo]) - 2.0 * c * (p1[hi] - p1[lo]) + c * c * (p0[hi] - p0[lo])
                    lo = hi
            out[r, a] = max(total, 0.0)


@numba.njit(nogil=True, cache=True)
def lut_gram(codes, H, row_weight, lut_of_row, out, tile, band):
    """``out[g, a, b] += sum_{r: lut_of_row[r] = g} row_weight[r] sum_{j, l} [codes[r, j] = a] H[j, l] [codes[r, l] = b]``:
    the normal matrix of the LUT entries (each row's one-hot code matrix M_r: ``M_r^T H M_r``).

    For a tile of rows and a band of columns, ``T[i, a, :] = sum_{j: codes[r, j] = a} H[j, band]``
    is accumulated (each band of an H row is read once per tile of rows), then gathered by the
    codes of the band: about ``rows * n**2`` additions in all. ``H`` is symmetric (its row j is
    its column j)."""
    rows, n = codes.shape
    k = out.shape[1]
    T = np.empty((tile, k, band), H.dtype)
    for r0 in range(0, rows, tile):
        m = min(tile, rows - r0)
        for c0 in range(0, n, band):
            c1 = min(c0 + band, n)
            nb = c1 - c0
            T[:] = 0
            for j in range(n):
                h = H[j, c0:c1]
                for i in range(m):
                    t = T[i, codes[r0 + i, j]]
                    for l in range(nb):
                        t[l] += h[l]
            for i in range(m):
                g = lut_of_row[r0 + i]
                s2 = row_weight[r0 + i]
                for l in range(nb):
                    b = codes[r0 + i, c0 + l]
                    for a in range(k):
                        out[g, a, b] += s2 * T[i, a, l]
