"""``scaled_dot_product_attention`` (iOS18): ``softmax(Q K^T / sqrt(E) + mask) V``.

A boolean mask keeps the positions where it is true (the others get -inf); a float mask is
added to the scores. A row whose every position is masked comes out NaN, as in PyTorch.
"""
from __future__ import annotations

import math
import time

import numpy as np

from ..._c import ffi, lib
from .registry import op
from .shapes import broadcast, same_dim

FLOATS = ("fp16", "fp32")


@op("scaled_dot_product_attention")
def scaled_dot_product_attention(b):
    q, k, v = b.operand("query"), b.operand("key"), b.operand("value")
    for name, operand in (("query", q), ("key", k), ("value", v)):
        b.expect(operand, FLOATS, name)
        if operand.rank is not None and operand.rank < 3:
            b.fail(f"{name} must have rank 3 or more (batch, ..., sequence, embedding), got {operand.type}")
    args = [q, k, v]
    out = None
    if q.shape is not None and k.shape is not None and v.shape is not None:
        if not same_dim(q.shape[-1], k.shape[-1]) or not same_dim(k.shape[-2], v.shape[-2]):
            b.fail(f"query {q.type}, key {k.type} and value {v.type} do not fit (E of query and key, S of key and value)")
        batch = b.infer(lambda: broadcast(tuple(q.shape[:-2]), tuple(k.shape[:-2]), tuple(v.shape[:-2])))
        out = batch + (q.shape[-2], v.shape[-1])
    mask = None
    if b.has("attn_mask"):
        mask = b.operand("attn_mask")
        b.expect(mask, FLOATS + ("bool",), "attn_mask")
        if out is not None and mask.shape is not None:
            b.infer(lambda: broadcast(tuple(mask.shape), out[:-1] + (k.shape[-2],)))
        args.append(mask)
    clock = b.clock
    embed = q.shape[-1] if q.shape is not None else None
    fits = {}  # (mask shape, scores shape) -> the mask broadcasts into the scores

    fixed_scale = None if embed is None else np.float32(1.0 / math.sqrt(embed))

    def run(query, key, value, *masks):
        scale = fixed_scale if fixed_scale is not None else np.float32(1.0 / math.sqrt(query.shape[-1]))
        t0 = time.perf_counter()
        scores = np.matmul(query * scale, key.swapaxes(-1, -2))
        clock.seconds += time.perf_counter() - t0
        if masks:
            m = masks[0]
            if m.dtype == np.bool_:
                scores = np.where(m, scores, np.float32(-np.inf))
            else:
                key_ = (m.shape, scores.shape)
                inplace = fits.get(key_)
                if inplace is None:  # whether the mask broadcasts into the scores (then: in place)
                    inplace = fits[key_] = m.ndim <= scores.ndim and all(d in (1, s) for d, s in zip(m.shape[::-1], scores.shape[::-1]))
                if inplace:
                    scores += m
                else:
                    scores = scores + m
        weights = _softmax_last_axis(scores)  # scores: a new array
        t0 = time.perf_counter()
        y = np.matmul(weights, value)
        clock.seconds += time.perf_counter() - t0
        return y

    return b.emit(run, args, [(out, q.type.dtype)])


def _softmax_last_axis(scores):
    """Softmax over the last axis, in place: ``x - max``, numpy's exp, ``/ sum``. The two passes
    around exp run in C (csrc/softmax.c, numpy's bits: pairwise sum) on float32 rows; otherwise
    numpy's ufunc reductions (what np.max / np.sum call, without their Python wrappers)."""
    n = scores.shape[-1] if scores.ndim else 0
    if scores.dtype == np.float32 and scores.flags.c_contiguous and n > 0:
        rows = scores.size // n
        pointer = ffi.from_buffer("float[]", scores, require_writable=True)
        if lib.wp_softmax_shift_f32(pointer, rows, n) == 0:
            np.exp(scores, out=scores)
            lib.wp_softmax_scale_f32(pointer, rows, n)
            return scores
    np.subtract(scores, np.maximum.reduce(scores, axis=-1, keepdims=True), out=scores)
    np.exp(scores, out=scores)
    scores /= np.add.reduce(scores, axis=-1, keepdims=True)
    return scores
