"""Shape ops: reshape, transpose, squeeze / expand_dims, slicing, split / concat / stack, tile,
gathers and scatters, shape / fill / range_1d, band_part, one_hot, reverse, and their kin
(coremltools' iOS15-iOS18 definitions).

Indices: ``gather`` and its kin accept negative indices (counted from the end, as iOS15/16
define them); an index outside the axis raises :class:`~weightpack.errors.WeightpackError` at
run time (Core ML leaves it undefined).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import WeightpackError
from .registry import op
from .shapes import ShapeError, broadcast, normalize_axes, normalize_axis, product

ALL = ("fp16", "fp32", "int8", "uint8", "int16", "uint16", "int32", "bool")
INDEX = ("int8", "uint8", "int16", "uint16", "int32")


def _dims(shape):
    return None if shape is None else tuple(shape)


def _shape_values(b, param, length_hint=None):
    """A shape-like integer parameter: (values or None when it is a variable, its length or None)."""
    if b.is_const(param):
        values = b.ints(param)
        return values, len(values)
    operand = b.operand(param)
    rank = operand.shape[0] if operand.shape and len(operand.shape) == 1 else length_hint
    return None, rank


# ---------------------------------------------------------------------------------- reshape


def resolve_reshape(target, x_shape, opset: int):
    """The output shape of ``reshape`` (``0`` copies a dimension of x, ``-1`` is inferred)."""
    target = list(target)
    rank = len(x_shape)
    if 0 in target:
        if opset >= 17:
            for i in range(len(target)):
                if target[i] == 0:
                    j = rank - (len(target) - i)
                    target[i] = x_shape[j] if j >= 0 else 1
        else:
            if len(target) != rank:
                raise ShapeError(f"shape {target} holds 0 but has length {len(target)}, not the rank {rank} of x")
            target = [x_shape[i] if t == 0 else t for i, t in enumerate(target)]
    if target.count(-1) > 1:
        raise ShapeError(f"shape {target} has more than one -1")
    if any(t is not None and t < -1 for t in target):
        raise ShapeError(f"shape {target} holds a negative size")
    total = product(x_shape)
    if -1 in target:
        known = product([t for t in target if t != -1])
        if total is None or known is None:
            target[target.index(-1)] = None
        elif known == 0 or total % known:
            raise ShapeError(f"x of shape {tuple(x_shape)} cannot take the shape {target}")
        else:
            target[target.index(-1)] = total // known
    count = product(target)
    if total is not None and count is not None and total != count:
        raise ShapeError(f"x of shape {tuple(x_shape)} ({total} elements) cannot take the shape {tuple(target)} ({count} elements)")
    return tuple(target)


@op("reshape")
def reshape(b):
    x = b.operand("x")
    values, length = _shape_values(b, "shape")
    opset = b.opset
    if values is not None:
        out = b.infer(lambda: resolve_reshape(values, x.shape, opset)) if x.shape is not None else None
        if out is not None and None not in out and x.shape is not None and None not in x.shape:
            fixed = out
            return b.emit(lambda v: v.reshape(fixed), [x], [(out, x.type.dtype)])
        return b.emit(lambda v: v.reshape(resolve_reshape(values, v.shape, opset)), [x], [(out, x.type.dtype)])
    out = None if length is None else (None,) * length

    def run(v, shape):
        try:
            return v.reshape(resolve_reshape([int(s) for s in shape], v.shape, opset))
        except ShapeError as err:
            raise WeightpackError(f"{b.where}: {err}") from None

    return b.emit(run, [x, b.operand("shape")], [(out, x.type.dtype)])


@op("reshape_like")
def reshape_like(b):
    x, refs = b.operand("x"), b.operands("ref_tensors")
    begins, ends, end_masks = b.ints("begins"), b.ints("ends"), b.bools("end_masks")
    if not len(refs) == len(begins) == len(ends) == len(end_masks):
        b.fail("ref_tensors, begins, ends and end_masks must have the same length")

    def target(shapes):
        out = []
        for shape, begin, end, mask in zip(shapes, begins, ends, end_masks):
            out.extend(shape[begin:] if mask else shape[begin:end])
        return tuple(out)

    known = None if any(r.shape is None for r in refs) else target([r.shape for r in refs])
    return b.emit(lambda v, *rs: v.reshape(target([r.shape for r in rs])), [x, *refs], [(known, x.type.dtype)])


@op("flatten2d")
def flatten2d(b):
    x = b.operand("x")
    if x.rank is None:
        b.fail("x must have a known rank")
    axis = b.int_("axis", 1)
    if not -x.rank <= axis <= x.rank:
        b.fail(f"axis {axis} is outside [{-x.rank}, {x.rank}]")
    axis = axis + x.rank if axis < 0 else axis
    out = (product(x.shape[:axis]), product(x.shape[axis:]))
    return b.emit(lambda v: v.reshape(int(np.prod(v.shape[:axis])), -1), [x], [(out, x.type.dtype)])


@op("transpose")
def transpose(b):
    x = b.operand("x")
    perm = b.ints("perm")
    if x.rank is not None:
        if len(perm) != x.rank:
            b.fail(f"perm {list(perm)} must have one entry per dimension of x {x.type}")
        perm = b.infer(lambda: normalize_axes(perm, x.rank, "perm"))
    out = None if x.shape is None else tuple(x.shape[p] for p in perm)
    return b.emit(lambda v: v.transpose(perm), [x], [(out, x.type.dtype)])


@op("squeeze")
def squeeze(b):
    x = b.operand("x")
    axes = b.ints("axes", None)
    if x.rank is None:
        b.fail("x must have a known rank")
    if axes is None:
        if x.shape is not None and None in x.shape:
            return b.emit(np.squeeze, [x], [(None, x.type.dtype)])
        out = tuple(d for d in x.shape if d != 1)
        return b.emit(lambda v: v.reshape(out), [x], [(out, x.type.dtype)])
    axes = b.infer(lambda: normalize_axes(axes, x.rank))
    drop = tuple(a for a in axes if x.shape[a] == 1)
    out = tuple(d for i, d in enumerate(x.shape) if i not in drop)
    return b.emit(lambda v: np.squeeze(v, axis=tuple(a for a in axes if v.shape[a] == 1)), [x], [(out, x.type.dtype)])


@op("expand_dims")
def expand_dims(b):
    x = b.operand("x")
    axes = b.ints("axes")
    if x.rank is None:
        b.fail("x must have a known rank")
    rank = x.rank + len(axes)
    axes = b.infer(lambda: sorted(normalize_axes(axes, rank)))
    out = list(x.shape)
    for a in axes:
        out.insert(a, 1)
    return b.emit(lambda v: np.expand_dims(v, tuple(axes)), [x], [(tuple(out), x.type.dtype)])


# ---------------------------------------------------------------------------------- slicing


def slice_index(rank, begin, end, stride, begin_mask, end_mask, squeeze_mask):
    """The numpy index of ``x[begin:end:stride, ...]`` with MIL's masks (squeeze: ``x[begin]``)."""
    index = []
    for i in range(rank):
        if squeeze_mask and squeeze_mask[i]:
            index.append(int(begin[i]))
            continue
        start = None if begin_mask and begin_mask[i] else int(begin[i])
        stop = None if end_mask and end_mask[i] else int(end[i])
        step = 1 if stride is None else int(stride[i])
        if step == 0:
            raise ShapeError(f"stride {list(stride)} holds 0")
        index.append(slice(start, stop, step))
    return tuple(index)


def _sliced_shape(shape, index):
    out = []
    for dim, item in zip(shape, index):
        if isinstance(item, int):
            if dim is not None and not -dim <= item < dim:
                raise ShapeError(f"index {item} is outside a dimension of {dim}")
            continue
        out.append(None if dim is None else len(range(*item.indices(dim))))
    return tuple(out)


def _slice_params(b, x):
    """(index or None, runtime operands, a function of their values -> index)."""
    if x.rank is None:
        b.fail("x must have a known rank")
    masks = {name: b.bools(name, None) for name in ("begin_mask", "end_mask", "squeeze_mask")}
    for name, mask in masks.items():
        if mask is not None and len(mask) != x.rank:
            b.fail(f"{name} has {len(mask)} entries; x has rank {x.rank}")
    params = ["begin", "end"] + (["stride"] if b.has("stride") else [])
    if all(b.is_const(p) for p in params):
        values = [b.ints(p) for p in params]
        for p, v in zip(params, values):
            if len(v) != x.rank:
                b.fail(f"{p} has {len(v)} entries; x has rank {x.rank}")
        stride = values[2] if len(values) == 3 else None
        index = b.infer(lambda: slice_index(x.rank, values[0], values[1], stride, *masks.values()))
        return index, [], None
    operands = [b.operand(p) for p in params]
    rank = x.rank

    def index_of(*vals):
        stride = vals[2] if len(vals) == 3 else None
        return slice_index(rank, vals[0], vals[1], stride, *masks.values())

    return None, operands, index_of


@dataclass(frozen=True)
class Slicing:
    """How a slice op indexes its ``x``: the constant ``index``, or ``index_of(*values of
    operands)``; ``update``: slice_update's update operand. Fused steps that slice a state in
    place (:mod:`.fusion`) index it this way."""

    index: tuple | None
    operands: list
    index_of: object
    update: object = None

    def where(self, env):
        """The numpy index, the operands read from the environment ``env``."""
        if self.index is not None:
            return self.index
        return self.index_of(*[env[o.slot] if o.slot is not None else o.value for o in self.operands])


def assign_slice(out, where, update) -> None:
    """``out[where] = update`` (reshaped to the slice's shape), as ``slice_update`` assigns."""
    try:
        out[where] = update.reshape(out[where].shape)
    except ValueError:
        raise WeightpackError(f"update of shape {update.shape} does not fit the slice of shape {out[where].shape}") from None


@op("slice_by_index")
def slice_by_index(b):
    x = b.operand("x")
    index, operands, index_of = _slice_params(b, x)
    if index is not None:
        out = b.infer(lambda: _sliced_shape(x.shape, index))
        step = b.emit(lambda v: v[index], [x], [(out, x.type.dtype)])
    else:
        squeezed = b.bools("squeeze_mask", None) or (False,) * x.rank
        out = tuple(None for s in squeezed if not s)
        step = b.emit(lambda v, *vals: v[index_of(*vals)], [x, *operands], [(out, x.type.dtype)])
    step.slicing = Slicing(index, operands, index_of)
    return step


@op("slice_by_size")
def slice_by_size(b):
    x = b.operand("x")
    if x.rank is None:
        b.fail("x must have a known rank")

    def index_of(begin, size):
        if len(begin) != x.rank or len(size) != x.rank:
            raise ShapeError(f"begin {list(begin)} and size {list(size)} must have {x.rank} entries")
        return tuple(slice(int(s), None if int(n) == -1 else int(s) + int(n)) for s, n in zip(begin, size))

    if b.is_const("begin") and b.is_const("size"):
        begin, size = b.ints("begin"), b.ints("size")
        index = b.infer(lambda: index_of(begin, size))
        out = tuple(
            (d - s if d is not None else None) if n == -1 else n for d, s, n in zip(x.shape, begin, size)
        )
        return b.emit(lambda v: v[index], [x], [(out, x.type.dtype)])
    return b.emit(lambda v, s, n: v[index_of(s, n)], [x, b.operand("begin"), b.operand("size")], [((None,) * x.rank, x.type.dtype)])


@op("slice_update")
def slice_update(b):
    x, update = b.operand("x"), b.operand("update")
    index, operands, index_of = _slice_params(b, x)

    def run(v, u, *vals):
        out = v.copy()
        assign_slice(out, index if index is not None else index_of(*vals), u)
        return out

    if index is not None and x.shape is not None:
        sliced = b.infer(lambda: _sliced_shape(x.shape, index))
        if update.shape is not None and product(sliced) is not None and product(update.shape) is not None and product(sliced) != product(update.shape):
            b.fail(f"update {update.type} does not fit the slice of shape {sliced}")
    step = b.emit(run, [x, update, *operands], [(x.shape, x.type.dtype)])
    step.slicing = Slicing(index, operands, index_of, update)
    return step


# ---------------------------------------------------------------------------------- join, split


@op("concat")
def concat(b):
    values = b.operands("values")
    interleave = b.bool_("interleave", False)
    rank = next((v.rank for v in values if v.rank is not None), None)
    if rank is None:
        b.fail("the values must have a known rank")
    if rank == 0:  # scalars (shape arithmetic) concatenate into a vector
        if any(v.rank != 0 for v in values):
            b.fail(f"values of ranks {[v.rank for v in values]} cannot be concatenated")
        return b.emit(lambda *vs: np.stack(vs), values, [((len(values),), values[0].type.dtype)])
    axis = b.infer(lambda: normalize_axis(b.int_("axis"), rank))
    out = None
    if all(v.shape is not None for v in values):
        if any(len(v.shape) != rank for v in values):
            b.fail(f"values of ranks {[v.rank for v in values]} cannot be concatenated")
        out = []
        for i in range(rank):
            dims = [v.shape[i] for v in values]
            if i == axis:
                out.append(None if None in dims else sum(dims))
            else:
                known = {d for d in dims if d is not None}
                if len(known) > 1:
                    b.fail(f"values of shapes {[v.shape for v in values]} differ outside axis {axis}")
                out.append(known.pop() if known else None)
        out = tuple(out)
    if interleave:
        def fn(*vs):
            stacked = np.stack(vs, axis=axis + 1)
            shape = list(vs[0].shape)
            shape[axis] *= len(vs)
            return stacked.reshape(shape)
    else:
        def fn(*vs):
            return np.concatenate(vs, axis=axis)
    dtype = values[0].type.dtype
    return b.emit(fn, values, [(out, dtype)])


@op("stack")
def stack(b):
    values = b.operands("values")
    shape = values[0].shape
    if shape is None:
        b.fail("the values must have a known rank")
    axis = b.infer(lambda: normalize_axis(b.int_("axis"), len(shape) + 1))
    out = list(b.infer(lambda: broadcast(*[v.shape for v in values])))
    out.insert(axis, len(values))
    return b.emit(lambda *vs: np.stack(vs, axis=axis), values, [(tuple(out), values[0].type.dtype)])


@op("split")
def split(b):
    x = b.operand("x")
    if x.rank is None:
        b.fail("x must have a known rank")
    axis = b.infer(lambda: normalize_axis(b.int_("axis"), x.rank))
    count = len(b.node.outputs)
    sizes = b.ints("split_sizes", None)
    if sizes is None:
        num = b.int_("num_splits", count)
        if num != count:
            b.fail(f"num_splits is {num} but the op has {count} outputs")
        dim = x.shape[axis]
        if dim is not None and dim % num:
            b.fail(f"dimension {dim} of axis {axis} does not split into {num} equal parts")
        sizes = None if dim is None else (dim // num,) * num
    elif len(sizes) != count or (x.shape[axis] is not None and sum(sizes) != x.shape[axis]):
        b.fail(f"split_sizes {list(sizes)} must have {count} entries summing to {x.shape[axis]}")
    outs = []
    for k in range(count):
        shape = list(x.shape)
        shape[axis] = None if sizes is None else sizes[k]
        outs.append((tuple(shape), x.type.dtype))
    if sizes is not None:
        cuts = np.cumsum(sizes)[:-1].tolist()
        return b.emit(lambda v: tuple(np.split(v, cuts, axis=axis)), [x], outs)
    return b.emit(lambda v: tuple(np.split(v, count, axis=axis)), [x], outs)


def tile_array(v, reps):
    """``np.tile`` for len(reps) == v.ndim as one broadcast copy into the result (numpy's tile
    copies per axis; ``np.broadcast_to`` costs more than the copy at batch 1)."""
    if v.ndim == 0:
        return v.copy()
    out = np.empty([r * d for r, d in zip(reps, v.shape)], v.dtype)
    out.reshape([s for r, d in zip(reps, v.shape) for s in (r, d)])[...] = v.reshape([s for d in v.shape for s in (1, d)])
    return out


def _checked_reps(reps, rank, where):
    reps = tuple(int(r) for r in np.asarray(reps).reshape(-1))
    if (rank is not None and len(reps) != rank) or any(r < 1 for r in reps):
        raise ShapeError(f"reps {list(reps)} must hold one positive count per dimension of x (rank {rank})")
    return reps


@op("tile")
def tile(b):
    x = b.operand("x")
    if b.is_const("reps"):
        reps = b.infer(lambda: _checked_reps(b.ints("reps"), x.rank, b.where))
        out = None if x.shape is None else tuple(None if d is None else d * r for d, r in zip(x.shape, reps))
        return b.emit(lambda v: tile_array(v, reps), [x], [(out, x.type.dtype)])
    where = b.where

    def run(v, reps):
        try:
            return tile_array(v, _checked_reps(reps, v.ndim, where))
        except ShapeError as err:
            raise WeightpackError(str(err)) from None

    return b.emit(run, [x, b.operand("reps")], [(None if x.rank is None else (None,) * x.rank, x.type.dtype)])


@op("reverse")
def reverse(b):
    x = b.operand("x")
    axes = b.ints("axes", None)
    if axes is not None and x.rank is not None:
        axes = b.infer(lambda: normalize_axes(axes, x.rank))
    return b.emit(lambda v: np.flip(v, axes), [x], [(x.shape, x.type.dtype)])


@op("reverse_sequence")
def reverse_sequence(b):
    x, lengths = b.operand("x"), b.operand("lengths")
    if x.rank is None:
        b.fail("x must have a known rank")
    seq = b.infer(lambda: normalize_axis(b.int_("seq_axis", 0), x.rank, "seq_axis"))
    batch = b.infer(lambda: normalize_axis(b.int_("batch_axis", 0), x.rank, "batch_axis"))

    if seq == batch:
        b.fail(f"seq_axis and batch_axis are both {seq}")
    inner = seq - 1 if batch < seq else seq  # the sequence axis once the batch index is taken

    def run(v, n):
        out = v.copy()
        lengths = np.asarray(n).reshape(-1)
        if lengths.size != v.shape[batch]:
            raise WeightpackError(f"{b.where}: {lengths.size} lengths for a batch of {v.shape[batch]}")
        for i, length in enumerate(lengths.tolist()):
            if not 0 <= length <= v.shape[seq]:
                raise WeightpackError(f"{b.where}: length {length} is outside [0, {v.shape[seq]}]")
            part = [slice(None)] * v.ndim
            part[batch], part[seq] = i, slice(0, length)
            out[tuple(part)] = np.flip(v[tuple(part)], axis=inner)
        return out

    return b.emit(run, [x, lengths], [(x.shape, x.type.dtype)])


@op("sliding_windows")
def sliding_windows(b):
    x = b.operand("x")
    if x.rank is None:
        b.fail("x must have a known rank")
    axis = b.infer(lambda: normalize_axis(b.int_("axis"), x.rank))
    size, stride = b.int_("size"), b.int_("stride", 1)
    if size < 1 or stride < 1:
        b.fail(f"size {size} and stride {stride} must be positive")
    dim = x.shape[axis]
    out = list(x.shape)
    out[axis : axis + 1] = [None if dim is None else (dim - size) // stride + 1, size]

    def run(v):
        windows = np.lib.stride_tricks.sliding_window_view(v, size, axis=axis)[(slice(None),) * axis + (slice(None, None, stride),)]
        return np.moveaxis(windows, -1, axis + 1)

    return b.emit(run, [x], [(tuple(out), x.type.dtype)])


# ---------------------------------------------------------------------------------- values


@op("shape")
def shape(b):
    x = b.operand("x")
    out = None if x.rank is None else (x.rank,)
    return b.emit(lambda v: np.array(v.shape, np.int32), [x], [(out, "int32")])


def _fill_value(b, param):
    """The fill value and its dtype name (default 0.0, fp32)."""
    if not b.has(param):
        return np.float32(0.0), "fp32"
    operand = b.operand(param)
    return np.asarray(operand.value).reshape(()), operand.type.dtype


@op("fill")
def fill(b):
    value, dtype = _fill_value(b, "value")
    values, length = _shape_values(b, "shape")
    if values is not None:
        if any(v < 0 for v in values):
            b.fail(f"shape {list(values)} holds a negative size")
        return b.emit(lambda: np.full(values, value), [], [(tuple(values), dtype)])
    out = None if length is None else (None,) * length
    return b.emit(lambda s: np.full(tuple(int(d) for d in s), value), [b.operand("shape")], [(out, dtype)])


@op("fill_like")
def fill_like(b):
    ref = b.operand("ref_tensor")
    value, dtype = _fill_value(b, "value")
    return b.emit(lambda r: np.full(r.shape, value), [ref], [(ref.shape, dtype)])


@op("range_1d")
def range_1d(b):
    start, end, step = b.operand("start"), b.operand("end"), b.operand("step")
    dtypes = {o.type.dtype for o in (start, end, step)}
    if len(dtypes) != 1:
        b.fail(f"start, end and step must have one dtype, got {sorted(dtypes)}")
    dtype = dtypes.pop()
    out = (None,)
    if start.is_const and end.is_const and step.is_const:
        s, e, d = (float(np.asarray(o.value).reshape(())) for o in (start, end, step))
        if d == 0:
            b.fail("step is 0")
        out = (max(0, int(np.ceil((e - s) / d))),)

    def run(s, e, d):
        if np.asarray(d).reshape(()) == 0:
            raise WeightpackError(f"{b.where}: step is 0")
        return np.arange(np.asarray(s).reshape(()), np.asarray(e).reshape(()), np.asarray(d).reshape(()))

    return b.emit(run, [start, end, step], [(out, dtype)])


@op("band_part")
def band_part(b):
    x = b.operand("x")
    lower, upper = b.int_("lower", -1), b.int_("upper", -1)
    if x.rank is not None and x.rank < 2:
        b.fail(f"x must have rank 2 or more, got {x.type}")
    masks = {}

    def run(v):
        key = v.shape[-2:]
        if key not in masks:
            m = np.arange(key[0])[:, None]
            n = np.arange(key[1])[None, :]
            masks[key] = ((lower < 0) | (m - n <= lower)) & ((upper < 0) | (n - m <= upper))
        return np.where(masks[key], v, np.zeros((), v.dtype))

    return b.emit(run, [x], [(x.shape, x.type.dtype)])


@op("one_hot")
def one_hot(b):
    indices = b.operand("indices")
    b.expect(indices, INDEX, "indices")
    on, off = b.operand("on_value") if b.has("on_value") else None, b.operand("off_value") if b.has("off_value") else None
    on_value = np.int32(1) if on is None else np.asarray(on.value).reshape(())
    off_value = np.int32(0) if off is None else np.asarray(off.value).reshape(())
    dtype = "int32" if on is None else on.type.dtype
    axis = b.int_("axis", -1)
    if indices.rank is None:
        b.fail("indices must have a known rank")
    if not -indices.rank - 1 <= axis <= indices.rank:
        b.fail(f"axis {axis} is outside [{-indices.rank - 1}, {indices.rank}]")
    cut = indices.rank + axis + 1 if axis < 0 else axis
    depth = b.operand("one_hot_vector_size")
    size = int(np.asarray(depth.value).reshape(())) if depth.is_const else None
    out = tuple(indices.shape[:cut]) + (size,) + tuple(indices.shape[cut:])

    def run(i, n):
        n = int(np.asarray(n).reshape(()))
        hot = np.expand_dims(i, cut) == np.arange(n).reshape((1,) * cut + (n,) + (1,) * (i.ndim - cut))
        return np.where(hot, on_value, off_value)

    return b.emit(run, [indices, depth], [(out, dtype)])


@op("non_zero")
def non_zero(b):
    x = b.operand("x")
    out = (None, x.rank)
    return b.emit(lambda v: np.argwhere(v).astype(np.int32), [x], [(out, "int32")])


# ---------------------------------------------------------------------------------- gathers


def checked_indices(indices, size: int, where: str):
    """``indices`` as int64, negative ones counted from the end; out of range -> WeightpackError."""
    idx = np.asarray(indices).astype(np.int64, copy=False)
    if idx.size:
        low, high = int(idx.min()), int(idx.max())
        if low < -size or high >= size:
            bad = low if low < -size else high
            raise WeightpackError(f"{where}: index {bad} is outside [{-size}, {size}) of the gathered axis")
        if low < 0:
            idx = np.where(idx < 0, idx + size, idx)
    return idx


@op("gather")
def gather(b):
    x, indices = b.peek("x"), b.operand("indices")
    b.expect(indices, INDEX, "indices")
    batch_dims = b.int_("batch_dims", 0)
    if x.rank is None or indices.rank is None:
        b.fail("x and indices must have known ranks")
    axis = b.infer(lambda: normalize_axis(b.int_("axis", 0), x.rank))
    if not 0 <= batch_dims <= min(axis, indices.rank):
        b.fail(f"batch_dims {batch_dims} must be in [0, min(axis {axis}, rank of indices {indices.rank})]")
    for i in range(batch_dims):
        if x.shape[i] is not None and indices.shape[i] is not None and x.shape[i] != indices.shape[i]:
            b.fail(f"the batch dimensions of x {x.type} and indices {indices.type} differ")
    out = tuple(x.shape[:axis]) + tuple(indices.shape[batch_dims:]) + tuple(x.shape[axis + 1 :])
    where = b.where
    use = b.weight("x", "gather") if axis == 0 and batch_dims == 0 and b.is_const("x") else None
    if use is not None:
        rows = x.shape[0]
        return b.emit(lambda i: use.rows(checked_indices(i, rows, where)), [indices], [(out, x.type.dtype)])

    x = b.operand("x")

    def run(v, i):
        i = checked_indices(i, v.shape[axis], where)
        if batch_dims == 0:
            return np.take(v, i, axis=axis)
        return per_batch(v, i, batch_dims, lambda vv, ii: np.take(vv, ii, axis=axis - batch_dims))

    return b.emit(run, [x, indices], [(out, x.type.dtype)])


@op("gather_along_axis")
def gather_along_axis(b):
    x, indices = b.operand("x"), b.operand("indices")
    b.expect(indices, INDEX, "indices")
    if x.rank is None or indices.rank != x.rank:
        b.fail(f"indices {indices.type} must have the rank of x {x.type}")
    axis = b.infer(lambda: normalize_axis(b.int_("axis", 0), x.rank))
    where = b.where
    return b.emit(
        lambda v, i: np.take_along_axis(v, checked_indices(i, v.shape[axis], where), axis=axis),
        [x, indices],
        [(indices.shape, x.type.dtype)],
    )


def per_batch(v, i, batch_dims: int, gather_one):
    """``gather_one(x_b, indices_b)`` over the leading ``batch_dims`` dimensions both share, stacked."""
    batch = v.shape[:batch_dims]
    parts = [gather_one(vv, ii) for vv, ii in zip(v.reshape((-1,) + v.shape[batch_dims:]), i.reshape((-1,) + i.shape[batch_dims:]))]
    return np.stack(parts).reshape(batch + parts[0].shape)


def _nd_index(v, i, where, offset=0):
    depth = i.shape[-1]
    if depth > v.ndim - offset:
        raise WeightpackError(f"{where}: indices of depth {depth} exceed the rank {v.ndim - offset} of x")
    parts = tuple(checked_indices(i[..., k], v.shape[offset + k], where) for k in range(depth))
    return parts


@op("gather_nd")
def gather_nd(b):
    x, indices = b.operand("x"), b.operand("indices")
    b.expect(indices, INDEX, "indices")
    batch_dims = b.int_("batch_dims", 0)
    out = None
    if x.shape is not None and indices.shape is not None and indices.shape[-1] is not None:
        out = tuple(indices.shape[:-1]) + tuple(x.shape[batch_dims + indices.shape[-1] :])
    where = b.where

    def run(v, i):
        if batch_dims == 0:
            return v[_nd_index(v, i, where)]
        return per_batch(v, i, batch_dims, lambda vv, ii: vv[_nd_index(vv, ii, where)])

    return b.emit(run, [x, indices], [(out, x.type.dtype)])


SCATTER_MODES = {
    "update": None, "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide,
    "max": np.maximum, "min": np.minimum,
}  # fmt: skip


def _scatter_into(out, index, updates, mode):
    ufunc = SCATTER_MODES[mode]
    if ufunc is None:
        out[index] = updates
    else:
        ufunc.at(out, index, updates)


@op("scatter", "scatter_along_axis", "scatter_nd")
def scatter(b):
    data, indices, updates = b.operand("data"), b.operand("indices"), b.operand("updates")
    b.expect(indices, INDEX, "indices")
    mode = b.str_("mode", "add", allowed=tuple(SCATTER_MODES))
    if data.rank is None:
        b.fail("data must have a known rank")
    axis = b.infer(lambda: normalize_axis(b.int_("axis", 0), data.rank)) if b.type != "scatter_nd" else 0
    kind, where = b.type, b.where

    def run(d, i, u):
        out = d.copy()
        if kind == "scatter":
            idx = checked_indices(i, d.shape[axis], where).reshape(-1)
            index = (slice(None),) * axis + (idx,)
            _scatter_into(out, index, np.asarray(u).reshape(out[index].shape), mode)
        elif kind == "scatter_along_axis":
            idx = checked_indices(i, d.shape[axis], where)
            grids = list(np.indices(idx.shape, sparse=True))
            grids[axis] = idx
            _scatter_into(out, tuple(grids), u, mode)
        else:
            _scatter_into(out, _nd_index(d, i, where), u, mode)
        return out

    return b.emit(run, [data, indices, updates], [(data.shape, data.type.dtype)])
