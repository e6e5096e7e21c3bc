"""``scaled_dot_product_attention`` (iOS18): ``softmax(Q K^T / sqrt(E) + mask) V``.

A boolean mask keeps the positions where it is true (the others get -inf); a float mask is
added to the scores. A row whose every position is masked comes out NaN, as in PyTorch.
"""
from __future__ import annotations

import math
import time

import numpy as np

from ..._c import check, ffi, lib
from .registry import op
from .shapes import broadcast, same_dim

FLOATS = ("fp16", "fp32")
F32 = np.dtype(np.float32)


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
        y = small_attention(query, key, value, masks[0] if masks else None, scale, clock=clock)
        if y is not None:
            return y
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
        weights = _softmax_last_axis(scores, clock)  # scores: a new array
        t0 = time.perf_counter()
        y = np.matmul(weights, value)
        clock.seconds += time.perf_counter() - t0
        return y

    return b.emit(run, args, [(out, q.type.dtype)])


SMALL_ATTENTION = 1 << 18  # multiply-adds up to which one C call beats numpy's batched matmuls


def small_attention(query, key, value, mask, scale, group: int = 1, clock=None):
    """The attention of a small problem (a decoding step) in one C call (csrc/attention.c), or
    None when it is not one: float32 operands whose batch dimensions match (``key`` / ``value``
    with ``1 / group`` of the query's heads on the last batch axis), at most
    ``SMALL_ATTENTION`` multiply-adds. The C call's time adds to ``clock.elementwise``."""
    if query.dtype != F32 or key.dtype != F32 or value.dtype != F32 or query.ndim < 3 or key.ndim != query.ndim or value.ndim != query.ndim:
        return None
    batch, (lq, e), (lk, ev) = query.shape[:-2], query.shape[-2:], value.shape[-2:]
    kv_batch = batch[:-1] + (batch[-1] // group,)
    if key.shape != kv_batch + (lk, e) or value.shape[:-2] != kv_batch or batch[-1] % group:
        return None
    heads = math.prod(batch)
    if heads * lq * lk * (e + ev) > SMALL_ATTENTION or heads == 0 or lq == 0 or lk == 0 or e == 0 or ev == 0:
        return None
    kind, mask_ptr, mask_len, strides = 0, ffi.NULL, 0, (0, 0, 0)
    if mask is not None:
        kind = 2 if mask.dtype == np.bool_ else 1 if mask.dtype == F32 else 0
        view = _mask_view(mask, batch, lq, lk) if kind else None
        if view is None:
            return None
        array, strides = view
        mask_ptr, mask_len = ffi.from_buffer("unsigned char[]" if kind == 2 else "float[]", array), array.size
    q = np.ascontiguousarray(query)
    k = np.ascontiguousarray(key)
    v = np.ascontiguousarray(value)
    out = np.empty(batch + (lq, ev), F32)
    buf = ffi.from_buffer
    t0 = time.perf_counter()
    status = lib.wp_sdpa_f32(buf("float[]", q), q.size, buf("float[]", k), k.size, buf("float[]", v), v.size, heads, group, lq, lk, e, ev,
                             float(scale), kind, mask_ptr, mask_len, *strides, buf("float[]", out, require_writable=True), out.size)  # fmt: skip
    if clock is not None:
        clock.elementwise += time.perf_counter() - t0
    check(status, "scaled_dot_product_attention")
    return out


def _mask_view(mask, batch, lq, lk):
    """(contiguous array, element strides over (heads, lq, lk)) reading ``mask`` broadcast to
    ``batch + (lq, lk)``, or None if it does not broadcast so."""
    if not 2 <= mask.ndim <= len(batch) + 2 or mask.shape[-2] not in (1, lq) or mask.shape[-1] not in (1, lk):
        return None
    rows, cols = mask.shape[-2:]
    lead = mask.shape[:-2]
    mask = np.ascontiguousarray(mask)
    sq, sk = (cols if rows > 1 else 0), (1 if cols > 1 else 0)
    if math.prod(lead) == 1:
        return mask, (0, sq, sk)
    if tuple(lead) == tuple(batch):
        return mask, (rows * cols, sq, sk)
    try:  # any other broadcast: materialised
        full = np.ascontiguousarray(np.broadcast_to(mask, tuple(batch) + (lq, lk)))
    except ValueError:
        return None
    return full, (lq * lk, lk, 1)


def _softmax_last_axis(scores, clock=None):
    """Softmax over the last axis, in place: ``x - max``, numpy's exp, ``/ sum``. The two passes
    around exp run in C (csrc/softmax.c, numpy's bits: pairwise sum) on float32 rows; otherwise
    numpy's ufunc reductions (what np.max / np.sum call, without their Python wrappers)."""
    n = scores.shape[-1] if scores.ndim else 0
    if scores.dtype == np.float32 and scores.flags.c_contiguous and n > 0:
        rows = scores.size // n
        pointer = ffi.from_buffer("float[]", scores, require_writable=True)
        t0 = time.perf_counter()
        if lib.wp_softmax_shift_f32(pointer, rows, n) == 0:
            t1 = time.perf_counter()
            np.exp(scores, out=scores)
            t2 = time.perf_counter()
            lib.wp_softmax_scale_f32(pointer, rows, n)
            if clock is not None:
                clock.elementwise += (t1 - t0) + (time.perf_counter() - t2)
            return scores
    np.subtract(scores, np.maximum.reduce(scores, axis=-1, keepdims=True), out=scores)
    np.exp(scores, out=scores)
    scores /= np.add.reduce(scores, axis=-1, keepdims=True)
    return scores
