"""Fused products of the numba backend: ``y = x @ W.T`` with W decoded a tile at a time.

W is seen as in ``plan.matrix_plan``: ``rows x cols``, element (r, j) in table
``row_table[r] + j // col_block``. Parallel tasks (``prange``) take ``ROWS`` weight rows each.
A task decodes ``TILE`` columns of its rows into a small float32 tile, with the decompression
kernels' run decoders (codes unpacked with shifts, looked up in the block's table), and then
multiplies the tile with every activation row: the rows share each load of the activations, and
each weight is decoded once for the whole batch. Quantized blocks at least as long as their
table of every code's decoded value compute that table once per row and block (Core ML's
arithmetic, exactly) and decode by lookup.

Sums are float32, accumulated per tile in two interleaved halves and then added up: a different
order than numpy's, within the bound of ``weightpack.ops``.

>>> import numpy as np, weightpack as wp
>>> w = wp.QuantizedTensor(np.array([[1, -1], [2, 0]], np.int8), np.array([[0.5], [0.25]], np.float32))
>>> wp.matmul(w, np.array([[1.0, 2.0]]), backend="numba").tolist()
[[-0.5, 0.5]]
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .numba_core import expand_floats, jit, parallel
from .numba_decode import decode_span

ROWS = 4  # weight rows per task
TILE = 2048  # columns decoded at a time


@jit
def add_products(W, n, x, j0, sums):
    """``sums[b, i] += W[i, :n] . x[b, j0:j0 + n]`` for the ``ROWS`` rows of the tile and every
    activation row b. Each sum runs as two chains (even and odd columns) so that additions overlap."""
    w0, w1, w2, w3 = W[0], W[1], W[2], W[3]
    for b in range(x.shape[0]):
        xb = x[b, j0:j0 + n]
        a0 = a1 = a2 = a3 = c0 = c1 = c2 = c3 = np.float32(0)
        for j in range(0, n - 1, 2):
            xe, xo = xb[j], xb[j + 1]
            a0 += w0[j] * xe
            a1 += w1[j] * xe
            a2 += w2[j] * xe
            a3 += w3[j] * xe
            c0 += w0[j + 1] * xo
            c1 += w1[j + 1] * xo
            c2 += w2[j + 1] * xo
            c3 += w3[j + 1] * xo
        if n & 1:
            xe = xb[n - 1]
            a0 += w0[n - 1] * xe
            a1 += w1[n - 1] * xe
            a2 += w2[n - 1] * xe
            a3 += w3[n - 1] * xe
        sums[b, 0] += a0 + c0
        sums[b, 1] += a1 + c1
        sums[b, 2] += a2 + c2
        sums[b, 3] += a3 + c3


@parallel
def matmul_rows(codes, nbits, signed, mask, row_start, rows, cols, row_table, col_block, luts, scale, offset,
                half_math, round_difference, values, f16, x, y):
    """``y = x @ W.T``. Stored element k of W (row-major order, set mask bits only when ``mask``
    is nonempty; row r starts at ``row_start[r]``) is ``values[k]`` when ``values`` is nonempty
    (float32, or binary16 bits read through ``f16``), else n-bit code k of ``codes`` decoded as
    ``numba_decode.decode_span`` does (``luts`` float32). Quantized blocks at least as long as
    their table of every code's value keep that table per row across tiles."""
    batch = x.shape[0]
    by_table = not values.size and not luts.size and col_block >= 1 << nbits
    for task in prange((rows + ROWS - 1) // ROWS):
        r0 = task * ROWS
        nr = min(ROWS, rows - r0)
        W = np.zeros((ROWS, TILE), np.float32)  # rows past ``nr`` stay zero
        scratch = np.empty(TILE, np.uint8)
        tables = np.empty((ROWS, 1 << nbits if by_table else 0), np.float32)
        held = np.full(ROWS, -1, np.int64)  # the block each row's table holds
        k = np.empty(ROWS, np.int64)
        for i in range(nr):
            k[i] = row_start[r0 + i] if mask.size else (r0 + i) * cols
        sums = np.zeros((batch, ROWS), np.float32)
        for j0 in range(0, cols, TILE):
            n = min(TILE, cols - j0)
            for i in range(nr):
                r = r0 + i
                if values.size:
                    k[i] = expand_floats(values, f16, k[i], mask, r * cols + j0, n, W[i], 0)
                else:
                    k[i] = decode_span(codes, nbits, signed, k[i], mask, r * cols + j0, n, j0, col_block,
                                       row_table[r] + j0 // col_block, luts, scale, offset, half_math, round_difference,
                                       tables[i], held[i:i + 1], W[i], 0, scratch)
            add_products(W, n, x, j0, sums)
        for b in range(batch):
            for i in range(nr):
                y[b, r0 + i] = sums[b, i]
