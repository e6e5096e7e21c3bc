"""Decompression kernels of the numba backend: Core ML's decoded values, bit for bit.

A tensor is walked as in ``plan.row_plan``: ``rows x cols`` elements, the table (a LUT, or one
block's scale and offset) advancing every ``col_block`` columns. The flat element range is cut
into tasks of ``TASK`` elements that run in parallel (``prange``); a task may span several rows.
Each task knows the stream element it starts at: its first flat element for dense codes, the
count of set mask bits before it for sparse ones (:func:`task_starts`). Inside a row,
:func:`decode_span` turns codes into values: where every element is stored, block by block in
one pass (codes unpacked with shifts, eight at a time, and looked up); otherwise the codes are
unpacked first and then walked with the mask and the blocks.

Decompression copies bit patterns: LUTs and values arrive converted to the output's dtype as
unsigned integers of its item size (uint16 for binary16), so no float conversion can change a
bit; Core ML's shift-scale is computed exactly (``numba_core.dequantize``) and stored as bits.

>>> import numpy as np, weightpack as wp
>>> t = wp.PalettizedTensor(np.array([[0, 3, 1]]), np.array([[[[0.5], [1.0], [2.0], [4.0]]]], np.float16))
>>> t.decompress(backend="numba").tolist()
[[0.5, 4.0, 1.0]]
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .numba_core import (
    IDENTITY, as_stored, code_value, count_set, decode_codes, dequantize, expand, expand_floats, jit, keep, mask_bit,
    parallel,
)

TASK = 1 << 14  # elements per parallel task
LONG_BLOCK = 256  # dense blocks at least this long are unpacked and looked up in one pass each


@parallel
def task_starts(mask, total):
    """For the tasks of ``total`` elements: where each task's stored elements start (set bits of
    ``mask`` before it), followed by the count of all of them."""
    tasks = (total + TASK - 1) // TASK
    starts = np.zeros(tasks + 1, np.int64)
    for task in prange(tasks):
        e = task * TASK
        starts[task + 1] = count_set(mask, e, min(TASK, total - e))
    for task in range(tasks):
        starts[task + 1] += starts[task]
    return starts


@jit
def decode_span(codes, nbits, signed, k, mask, e, n, col, col_block, t, luts, scale, offset, half_math,
                round_difference, table, held, out, o, scratch):
    """Elements ``e .. e + n - 1`` of one row, from column ``col`` (block ``t`` there, the next one
    every ``col_block`` columns), into ``out[o:o + n]``; returns the next stream element ``k``.

    With a nonempty ``mask`` only set bits take a stored element and the others are zero. A
    block's values are ``luts[t * 2**nbits + code]`` when ``luts`` is nonempty, else Core ML's
    shift-scale with ``scale[t]`` and ``offset[t]``: by lookup in ``table`` (filled with every
    code's value when the block changes; ``held[0]`` remembers which block it holds) when it is
    nonempty, else code by code. Long blocks of a dense tensor are unpacked and looked up in one
    pass each; otherwise all codes are unpacked first (into ``scratch``, uint8, at least n long)
    and then walked with the mask and the blocks. Nothing here calls a function per block with
    arrays: each such call costs numba two atomic reference counts per array."""
    entries = 1 << nbits
    left = col_block - col % col_block  # elements until the next block
    fused = not mask.size and (luts.size > 0 or table.size > 0) and col_block >= LONG_BLOCK
    count = count_set(mask, e, n) if mask.size else n
    dst = out[o:o + n]
    if count == 0:
        dst[:] = 0
        return k
    if not fused:
        decode_codes(codes, k, count, nbits, IDENTITY, 0, scratch, 0)
    c, last, i = 0, count - 1, 0
    while i < n:
        run = min(n - i, left)
        sc, of = np.float32(0), np.float32(0)
        if not luts.size:
            sc, of = scale[t], offset[t] if offset.size else np.float32(0)
            if table.size and held[0] != t:
                for code in range(entries):
                    w = dequantize(code_value(code, nbits, signed), sc, of, half_math, round_difference)
                    table[code] = as_stored(table, w)
                held[0] = t
        if fused and luts.size:
            decode_codes(codes, k + i, run, nbits, luts, t * entries, out, o + i)
        elif fused:
            decode_codes(codes, k + i, run, nbits, table, 0, out, o + i)
        elif not mask.size:  # short blocks, every element stored: tight loops over the unpacked codes
            if luts.size:
                for j in range(i, i + run):
                    dst[j] = luts[t * entries + scratch[j]]
            elif table.size:
                for j in range(i, i + run):
                    dst[j] = table[scratch[j]]
            else:
                for j in range(i, i + run):
                    dst[j] = as_stored(dst, dequantize(code_value(scratch[j], nbits, signed), sc, of, half_math,
                                                       round_difference))
        else:
            for j in range(i, i + run):
                bit = mask_bit(mask, e + j)
                code = scratch[min(c, last)]  # past the last stored element: read, then discarded
                if luts.size:
                    value = luts[t * entries + code]
                elif table.size:
                    value = table[code]
                else:
                    value = as_stored(dst, dequantize(code_value(code, nbits, signed), sc, of, half_math,
                                                      round_difference))
                dst[j] = keep(value, bit)
                c += bit
        i += run
        t += 1
        left = col_block
    return k + count


@parallel
def codes_decode(codes, nbits, signed, mask, starts, rows, cols, row_table, col_block, luts, scale, offset,
                 half_math, round_difference, out):
    """Every element of a LUT (``luts`` nonempty: the LUTs as ``out``'s bits) or shift-scale
    tensor (``scale``/``offset`` per block as float32; see ``numba_core.dequantize`` for the
    flags), element e of the ``rows x cols`` walk into ``out[e]``. Shift-scale blocks at least
    as long as their table of every code's value decode by lookup."""
    total = rows * cols
    by_table = not luts.size and col_block >= 1 << nbits
    for task in prange((total + TASK - 1) // TASK):
        e = task * TASK
        end = min(total, e + TASK)
        k = starts[task] if mask.size else e
        r = e // cols
        j = e - r * cols
        scratch = np.empty(TASK, np.uint8)
        table = np.empty(1 << nbits if by_table else 0, out.dtype)
        held = np.full(1, -1, np.int64)
        while e < end:
            n = min(cols - j, end - e)
            k = decode_span(codes, nbits, signed, k, mask, e, n, j, col_block, row_table[r] + j // col_block, luts,
                            scale, offset, half_math, round_difference, table, held, out, e, scratch)
            e += n
            r, j = r + 1, 0


@parallel
def lut_vectors_decode(codes, nbits, mask, starts, rows, cols, row_table, col_block, luts, vsize, row_out,
                       col_stride, v_stride, out):
    """A LUT of vectors: element (r, j)'s ``vsize`` values to ``out[row_out[r] + j * col_stride +
    v * v_stride]`` (zeros at clear mask bits)."""
    total, entries = rows * cols, 1 << nbits
    for task in prange((total + TASK - 1) // TASK):
        e = task * TASK
        end = min(total, e + TASK)
        k = starts[task] if mask.size else e
        count = count_set(mask, e, end - e) if mask.size else end - e
        scratch = np.empty(TASK, np.uint8)
        decode_codes(codes, k, count, nbits, IDENTITY, 0, scratch, 0)
        r = e // cols
        j = e - r * cols
        t, left = row_table[r] + j // col_block, col_block - j % col_block
        c = 0
        for i in range(e, end):
            stored = not mask.size or mask_bit(mask, i)
            src = (t * entries + scratch[c]) * vsize if stored else 0
            for v in range(vsize):
                out[row_out[r] + j * col_stride + v * v_stride] = luts[src + v] if stored else 0
            c += stored
            j += 1
            left -= 1
            if j == cols:
                r, j = r + 1, 0
                if r < rows:
                    t, left = row_table[r], col_block
            elif left == 0:
                t, left = t + 1, col_block


@parallel
def sparse_decode(mask, starts, values, out):
    """``values`` in order at the set bits of ``mask``, zero elsewhere (bits copied)."""
    total = out.size
    for task in prange((total + TASK - 1) // TASK):
        e = task * TASK
        expand(values, starts[task], mask, e, min(TASK, total - e), out, e)


@parallel
def sparse_widen(mask, starts, values, f16, out):
    """As :func:`sparse_decode` for binary16 ``values`` (bits) into float32 ``out``."""
    total = out.size
    for task in prange((total + TASK - 1) // TASK):
        e = task * TASK
        expand_floats(values, f16, starts[task], mask, e, min(TASK, total - e), out, e)


# ---- bit streams ----------------------------------------------------------------------------


@jit
def pack(codes, nbits, out):
    """Codes (each < 2**nbits) into the LSB-first stream ``out``: eight codes fill ``nbits`` bytes."""
    count = codes.size
    p = 0
    for i in range(0, count, 8):
        word = 0
        for m in range(min(8, count - i)):
            word |= np.int64(codes[i + m]) << (m * nbits)
        for b in range(min(nbits, out.size - p)):
            out[p + b] = (word >> (8 * b)) & 0xFF
        p += nbits


@jit
def sign_extend(codes, nbits):
    """n-bit two's-complement codes (uint8) in place as int8 bit patterns."""
    if nbits == 8:
        return
    high = 0xFF ^ ((1 << nbits) - 1)
    for i in range(codes.size):
        if codes[i] >> (nbits - 1):
            codes[i] |= high
