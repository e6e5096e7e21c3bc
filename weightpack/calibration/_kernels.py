"""Kernels of the column sweep (C, csrc/encode_sweep.c): one block of columns, every row independent.

Each kernel walks the block's columns left to right and, in every row, rounds the current value,
records the scaled error ``e = (w - q) / U[j, j]`` and subtracts ``e * U[j, l]`` from the block's
later columns ``l``. ``W1`` (rows x B, float64, C-contiguous) is overwritten with the rounded
values and ``err`` with the errors. Serial: at about 5 ms per 4096 x 128 block the kernels are a
small part of a sweep, and threads measured slower on a shared machine.
"""
from __future__ import annotations

import numpy as np

from ..compress._native import lib, ptr, run, wptr


def _f64(a) -> np.ndarray:
    return np.ascontiguousarray(a, np.float64)


def sweep_lut(W1, U1, mids, first, values, lut_of_row, codes, err):
    """Nearest LUT entry: ``codes[r, j] = first[g, #(mids[g] < w)]`` with ``g = lut_of_row[r]``.

    ``mids[g]`` are the midpoints of LUT g's adjacent entries (so a value on a midpoint takes the
    lower entry) and ``first[g, i]`` the lowest index holding entry i's value.
    """
    first = np.ascontiguousarray(first, np.int64)
    run(lib.wp_enc_sweep_lut(wptr(W1), ptr(_f64(U1)), *W1.shape, ptr(_f64(mids)), ptr(first), ptr(_f64(values)),
                             first.shape[1], ptr(np.ascontiguousarray(lut_of_row, np.int64)), wptr(codes), wptr(err)),
        "calibrated palettization")


def sweep_quant(W1, U1, scale, offset, block_of_col, qmin, qmax, codes, err):
    """Linear rounding: ``q = clip(rint(w / s) + o, qmin, qmax)``, value ``s (q - o)``.

    ``scale``/``offset`` are (rows, blocks) float64; column j uses block ``block_of_col[j]``.
    """
    scale, offset = _f64(scale), _f64(offset)
    run(lib.wp_enc_sweep_quant(wptr(W1), ptr(_f64(U1)), *W1.shape, ptr(scale), ptr(offset), scale.shape[1],
                               ptr(np.ascontiguousarray(block_of_col, np.int64)), float(qmin), float(qmax), wptr(codes),
                               wptr(err)), "calibrated quantization")


def sweep_prune(W1, U1, keep, n, m_run, err):
    """Zero the weights ``keep`` marks False. With ``m_run > 0``, at every m_run-th column the n
    smallest ``(w / U[l, l])**2`` among the next m_run (current values; ties to the lower column)
    of each row are marked first."""
    run(lib.wp_enc_sweep_prune(wptr(W1), ptr(_f64(U1)), *W1.shape, wptr(keep.view(np.uint8)), n, m_run, wptr(err)),
        "calibrated pruning")
