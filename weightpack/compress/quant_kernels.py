"""Linear quantization kernels (C, csrc/encode_quant.c) on a block-major view: ``x2[b]`` is block
b's elements.

float16 data comes as its uint16 bits with a float64 value table; every quotient and error is
computed in float64, so results do not depend on how a compiler rounds float16.
"""
from __future__ import annotations

import numpy as np

from . import _threads
from ._common import fp16_values
from ._native import lib, ptr, run, wptr


def _data(x2: np.ndarray):
    """(data, is float16, value table, elements per block): the first arguments of every kernel."""
    half = x2.dtype == np.uint16
    return ptr(x2), half, ptr(fp16_values() if half else None), x2.shape[1]


def minmax(x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    nb = x2.shape[0]
    lo, hi = np.empty(nb), np.empty(nb)
    data = _data(x2)
    _threads.run(lambda s: run(lib.wp_enc_block_minmax(*data, s[0], s[1], wptr(lo), wptr(hi)), "quantize"),
                 _threads.spans(nb))
    return lo, hi


def quantize(x2: np.ndarray, scale: np.ndarray, offset: np.ndarray, qmin: int, qmax: int, out_dtype) -> np.ndarray:
    """``clip(rint(x / scale[b]) + offset[b], qmin, qmax)`` per element (float64 quotient), int8/uint8."""
    out2 = np.empty(x2.shape, out_dtype)
    data = _data(x2)
    scale, offset = np.ascontiguousarray(scale, np.float64), np.ascontiguousarray(offset, np.float64)
    signed = np.dtype(out_dtype) == np.int8
    _threads.run(lambda s: run(lib.wp_enc_quantize_blocks(*data, s[0], s[1], ptr(scale), ptr(offset), float(qmin),
                                                          float(qmax), signed, wptr(out2.view(np.uint8))), "quantize"),
                 _threads.spans(x2.shape[0]))
    return out2


def search(x2, imp2, scale, offset, lo, hi, qmin, qmax, symmetric_kind, alphas, refits, f16, smallest):
    """Clip search and refits for every block (see csrc/encode_quant.c); returns (scale, offset)
    float64 arrays. ``symmetric_kind``: 0 asymmetric, 1 symmetric signed, 2 symmetric unsigned."""
    nb = x2.shape[0]
    out_s, out_z = np.empty(nb), np.empty(nb)
    data = _data(x2)
    arrays = [np.ascontiguousarray(a, np.float64) for a in (scale, offset, lo, hi, alphas)]
    imp2 = np.ascontiguousarray(imp2, np.float32)
    _threads.run(
        lambda s: run(lib.wp_enc_search_blocks(data[0], data[1], data[2], ptr(imp2), data[3], s[0], s[1],
                                               *map(ptr, arrays[:4]), float(qmin), float(qmax), symmetric_kind,
                                               ptr(arrays[4]), arrays[4].size, refits, bool(f16), smallest,
                                               wptr(out_s), wptr(out_z)), "quantize"),
        _threads.spans(nb),
    )
    return out_s, out_z
