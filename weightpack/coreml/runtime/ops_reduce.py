"""Reductions (``reduce_*``, argmax / argmin), ordering (``topk``, ``argsort``) and ``cumsum``.

Ties in argmax / argmin / topk / argsort resolve to the lowest index (stable sorts; Core ML
leaves them unspecified).
"""
from __future__ import annotations

import numpy as np

from .registry import op
from .shapes import normalize_axes, normalize_axis

NUMBERS = ("fp16", "fp32", "int32", "int8", "uint8", "int16", "uint16")


def _log_sum_exp(v, axis, keepdims):
    peak = np.max(v, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, np.zeros((), v.dtype))
    total = np.log(np.sum(np.exp(v - peak), axis=axis, keepdims=True)) + peak
    return total if keepdims else np.squeeze(total, axis=axis)


REDUCTIONS = {
    "reduce_sum": np.sum, "reduce_mean": np.mean, "reduce_max": np.max, "reduce_min": np.min,
    "reduce_prod": np.prod,
    "reduce_l1_norm": lambda v, axis, keepdims: np.sum(np.abs(v), axis=axis, keepdims=keepdims),
    "reduce_l2_norm": lambda v, axis, keepdims: np.sqrt(np.sum(v * v, axis=axis, keepdims=keepdims)),
    "reduce_sum_square": lambda v, axis, keepdims: np.sum(v * v, axis=axis, keepdims=keepdims),
    "reduce_log_sum": lambda v, axis, keepdims: np.log(np.sum(v, axis=axis, keepdims=keepdims)),
    "reduce_log_sum_exp": _log_sum_exp,
}  # fmt: skip


def _ranked_x(b, axis_default=None):
    """The x operand (a number tensor of known rank) and, given a default, its normalized ``axis``."""
    x = b.operand("x")
    b.expect(x, NUMBERS, "x")
    if x.rank is None:
        b.fail("x must have a known rank")
    if axis_default is None:
        return x
    return x, b.infer(lambda: normalize_axis(b.int_("axis", axis_default), x.rank))


def _reduced(shape, axes, keep):
    return tuple(1 if i in axes else d for i, d in enumerate(shape) if keep or i not in axes)


@op(*REDUCTIONS)
def reduce(b):
    x = _ranked_x(b)
    keep = b.bool_("keep_dims", False)
    given = b.ints("axes", None)
    axes = tuple(range(x.rank)) if given is None else b.infer(lambda: normalize_axes(given, x.rank))
    fn = REDUCTIONS[b.type]
    dtype = x.type.dtype
    if b.type == "reduce_mean" and dtype not in ("fp16", "fp32"):
        return b.emit(lambda v: np.trunc(np.mean(v, axis=axes, keepdims=keep)), [x], [(_reduced(x.shape, axes, keep), dtype)])
    return b.emit(lambda v: fn(v, axis=axes, keepdims=keep), [x], [(_reduced(x.shape, axes, keep), dtype)])


@op("reduce_argmax", "reduce_argmin")
def reduce_arg(b):
    x, axis = _ranked_x(b, -1)
    keep = b.bool_("keep_dims", False)
    dtype = b.str_("output_dtype", "int32", allowed=("int32", "uint16")) if b.opset >= 17 else "int32"
    pick = np.argmax if b.type == "reduce_argmax" else np.argmin
    return b.emit(lambda v: pick(v, axis=axis, keepdims=keep), [x], [(_reduced(x.shape, (axis,), keep), dtype)])


def _order(v, axis, ascending):
    return np.argsort(v if ascending else -v, axis=axis, kind="stable")


@op("argsort")
def argsort(b):
    x, axis = _ranked_x(b, -1)
    ascending = b.bool_("ascending", False)
    return b.emit(lambda v: _order(v, axis, ascending), [x], [(x.shape, "int32")])


@op("topk")
def topk(b):
    x, axis = _ranked_x(b, -1)
    k = b.int_("k", 1)
    ascending = b.bool_("ascending", False)
    with_indices = b.bool_("return_indices", True) if b.opset >= 16 else True
    sort = b.bool_("sort", True) if b.opset >= 16 else True  # an unsorted top-k may come back sorted
    del sort
    index_dtype = b.str_("output_indices_dtype", "int32", allowed=("int32", "uint16")) if b.opset >= 17 else "int32"
    dim = x.shape[axis]
    if k == -1 and b.opset >= 17:
        count = dim
    elif k < 1 or (dim is not None and k > dim):
        b.fail(f"k {k} must be in [1, {dim}]")
    else:
        count = k
    shape = list(x.shape)
    shape[axis] = count
    outs = [(tuple(shape), x.type.dtype)] + ([(tuple(shape), index_dtype)] if with_indices else [])

    def run(v):
        n = v.shape[axis] if k == -1 else k
        idx = np.take(_order(v, axis, ascending), np.arange(n), axis=axis)
        values = np.take_along_axis(v, idx, axis=axis)
        return (values, idx) if with_indices else values

    return b.emit(run, [x], outs)


@op("cumsum")
def cumsum(b):
    x, axis = _ranked_x(b, 0)
    exclusive, reverse = b.bool_("exclusive", False), b.bool_("reverse", False)

    def run(v):
        w = np.flip(v, axis) if reverse else v
        total = np.cumsum(w, axis=axis, dtype=v.dtype)
        if exclusive:  # shifted by one: the first element is 0
            head = np.zeros_like(np.take(total, [0], axis=axis))
            total = np.concatenate([head, np.take(total, np.arange(total.shape[axis] - 1), axis=axis)], axis=axis)
        return np.flip(total, axis) if reverse else total

    return b.emit(run, [x], [(x.shape, x.type.dtype)])
