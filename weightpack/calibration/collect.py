"""Activation statistics of every weight op of a Core ML program, gathered by running it.

:func:`collect` runs a :class:`weightpack.coreml.Program` on calibration inputs and accumulates
one :class:`~.stats.ActivationStats` per weight, in the layout the calibrated encoders expect
(rows of ``prod(w.shape[1:])`` values for a weight ``w`` of shape (out, in, ...)):

- ``linear``: the rows of ``x`` (..., in);
- ``matmul`` with a constant (out, in) matrix (``x @ W.T``: ``y`` with ``transpose_y``; ``W @ y``:
  ``x`` without ``transpose_x``): the rows of the other operand, transposed as the op reads it;
- ``conv`` (weight (C_out, C_in / groups, *kernel)): the im2col patches of the padded input,
  each row ordered like ``w.reshape(C_out, -1)``. With ``groups > 1`` the patches of every group
  are pooled into one statistic (the exact H differs per group; pooling is what one Gram matrix
  per weight can hold).

A weight is calibrated only when every op reading it is one of these, with the same layout
(an embedding table that is also read by ``gather``, a ``conv_transpose`` weight or a matmul
operand stored (in, out) are not): :func:`calibrated_weights` lists them.

Streaming: each batch runs once and its activations are folded into the statistics as the
program reaches each op; memory is that of the statistics plus one batch's activations (plus the
stacked input arrays themselves when given as an .npz or a dict; an iterable of input dicts is
consumed as it goes). A pass stops as soon as the last op it observes has been reached.

Inputs (:func:`batches`): an .npz path, a dict of stacked arrays (first axis: sample) or an
iterable of input dicts. A stacked array with one more axis than the input is split along its
first axis; one with the input's own rank is cut into runs of the declared first dimension (one
row each where that dimension is free).

>>> import numpy as np, weightpack as wp
>>> from weightpack.runtime import Linear, Model
>>> w = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
>>> prog = Model([Linear(w)], policy="load").program
>>> stats = collect(prog, {"x": np.ones((6, 8), np.float32)})
>>> name = prog.weight_ops()[0].weight_name
>>> stats[name].count, stats[name].in_features
(6, 8)
"""
from __future__ import annotations

import os
import weakref
from collections.abc import Iterable, Mapping

import numpy as np

from ..atomic import save_npz
from ..errors import FormatError, WeightpackError, describe
from .stats import ActivationStats, read_npz

ROLES = ("linear", "matmul", "conv")
FORMAT_NAME = "weightpack.ProgramStats"
FORMAT_VERSION = 1
IM2COL_ROWS = 1 << 16  # patch rows unfolded at a time


class ProgramStats(Mapping):
    """{weight name: ActivationStats} of a program's calibrated weights, in program order.

    ``batches`` counts the input batches folded in. Shards gathered on several machines merge
    (:meth:`merge`) and round-trip through one .npz file (:meth:`save`, :meth:`load`).
    """

    def __init__(self, stats: dict, batches: int = 0):
        self._stats = dict(stats)
        self.batches = int(batches)

    def __getitem__(self, name):
        return self._stats[name]

    def __iter__(self):
        return iter(self._stats)

    def __len__(self):
        return len(self._stats)

    def merge(self, other: "ProgramStats") -> "ProgramStats":
        """The statistics of both shards (the same weights, e.g. two halves of the inputs)."""
        if not isinstance(other, ProgramStats):
            raise WeightpackError(f"can only merge another ProgramStats, got {describe(other)}")
        if list(other) != list(self):
            missing = sorted(set(self) ^ set(other))[:3]
            raise WeightpackError(f"cannot merge statistics of different weights (e.g. {', '.join(map(repr, missing))} in only one)")
        return ProgramStats({name: s.merge(other[name]) for name, s in self.items()}, self.batches + other.batches)

    def save(self, path) -> None:
        """Write every statistic into one .npz, atomically."""
        arrays = {"format": np.array(FORMAT_NAME), "version": np.array(FORMAT_VERSION),
                  "names": np.array(list(self), dtype=str), "batches": np.array(self.batches, np.int64)}  # fmt: skip
        for i, stats in enumerate(self.values()):
            arrays.update({f"{i}.{key}": value for key, value in stats.arrays().items()})
        save_npz(path, arrays)

    @classmethod
    def load(cls, path) -> "ProgramStats":
        arrays = read_npz(path)
        if str(arrays.get("format", "")) != FORMAT_NAME or int(arrays.get("version", -1)) != FORMAT_VERSION:
            raise FormatError(f"{path!r} does not hold weightpack program statistics ({FORMAT_NAME} version {FORMAT_VERSION})")
        names = arrays.get("names")
        if names is None or names.ndim != 1:
            raise FormatError(f"{path!r}: names must be a 1-D array of weight names")
        stats = {}
        for i, name in enumerate(names.tolist()):
            prefix = f"{i}."
            part = {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}
            stats[name] = ActivationStats.from_arrays(part, f"{path!r} weight {name!r}")
        return cls(stats, int(arrays.get("batches", 0)))

    def __repr__(self):
        return f"ProgramStats({len(self)} weights, {self.batches} batches)"


# ---------------------------------------------------------------------------------- layouts


def calibrated_weights(program) -> dict:
    """{weight name: in_features} of the weights every reader of which has a calibrated layout."""
    found, refused = {}, set()
    for op in program.weight_ops():
        n = _in_features(op)
        if n is None or (op.weight_name in found and found[op.weight_name] != n):
            refused.add(op.weight_name)
        else:
            found[op.weight_name] = n
    return {name: n for name, n in found.items() if name not in refused}


def _in_features(op):
    """The row length of ``op``'s statistics, or None if ``op`` reads its weight in no calibrated layout."""
    shape = tuple(op.weight.shape)
    if op.role not in ROLES or len(shape) < 2 or np.dtype(op.weight.dtype).kind != "f":
        return None
    if op.role == "matmul" and not (op.matrix_side and len(shape) == 2):
        return None
    return int(np.prod(shape[1:]))


def _rows(program, op, arrays: dict):
    """The activation rows ``op`` multiplies its weight with (an iterator of 2-D arrays)."""
    if op.role == "linear":
        yield arrays["x"]
    elif op.role == "matmul":
        node = _node(program, op.name)
        if op.param == "y":  # x @ W.T
            x = arrays["x"]
            yield np.swapaxes(x, -1, -2) if _flag(program, node, "transpose_x") and x.ndim >= 2 else x
        else:  # W @ y: the columns of y (as read) are the rows
            y = arrays["y"]
            yield y if _flag(program, node, "transpose_y") and y.ndim >= 2 else np.swapaxes(y, -1, -2)
    else:
        yield from _patches(program, op, arrays["x"])


def _patches(program, op, x):
    """im2col rows of a conv input, columns ordered like ``w.reshape(C_out, -1)``."""
    from ..coreml.runtime.ops_nn import _pad_spatial, conv_pads, windows

    node = _node(program, op.name)
    kernel = tuple(op.weight.shape[2:])
    rank = len(kernel)
    strides = _ints(program, node, "strides", (1,) * rank)
    dilations = _ints(program, node, "dilations", (1,) * rank)
    custom = _ints(program, node, "pad", (0,) * (2 * rank))
    pad_type = _const(program, node, "pad_type", "valid")
    groups = int(_const(program, node, "groups", 1))
    pads = conv_pads(str(pad_type), x.shape[2:], kernel, strides, dilations, custom)
    c_g = op.weight.shape[1]
    for start in range(0, x.shape[0], max(1, IM2COL_ROWS // max(1, int(np.prod(x.shape[2:]))))):
        view = windows(_pad_spatial(x[start : start + IM2COL_ROWS], pads), kernel, strides, dilations)  # (N, C, *out, *K)
        n, out = view.shape[0], view.shape[2 : 2 + rank]
        view = view.reshape((n, groups, c_g) + out + kernel)
        order = (0, 1) + tuple(range(3, 3 + rank)) + (2,) + tuple(range(3 + rank, 3 + 2 * rank))
        yield view.transpose(order).reshape(-1, c_g * int(np.prod(kernel)))


_NODES = weakref.WeakKeyDictionary()  # program -> {op name: OpNode}


def _node(program, name: str):
    if program not in _NODES:
        _NODES[program] = {node.name: node for node in program.graph.ops}
    return _NODES[program][name]


def _const(program, node, param, default):
    from ..coreml.runtime.graph import Const, Ref

    binding = node.inputs.get(param)
    if binding is None:
        return default
    if isinstance(binding, Const):
        value = binding.value
    elif isinstance(binding, Ref) and binding.name in program.graph.constants:
        value = program.graph.constants[binding.name]
    else:
        raise WeightpackError(f"{node.where}: parameter {param!r} is not a constant; its activations cannot be unfolded")
    return value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value


def _ints(program, node, param, default) -> tuple:
    return tuple(int(v) for v in np.atleast_1d(_const(program, node, param, default)))


def _flag(program, node, param) -> bool:
    return bool(_const(program, node, param, False))


# ---------------------------------------------------------------------------------- inputs


def batches(inputs, program) -> Iterable:
    """The input dicts ``inputs`` stands for (see the module docstring), in order; re-iterable
    for an .npz path or a dict of arrays."""
    if isinstance(inputs, (str, os.PathLike)):
        from ..cli_programs import load_inputs

        inputs = load_inputs(os.fspath(inputs))
    if isinstance(inputs, Mapping):
        return _Stacked(inputs, program.inputs)
    if isinstance(inputs, Iterable) and not isinstance(inputs, (np.ndarray, bytes)):
        return inputs
    raise WeightpackError(
        f"inputs={describe(inputs)} must be an .npz path, a dict of stacked arrays or an iterable of input dicts"
    )


class _Stacked:
    """Batches cut from stacked arrays, validated against the program's declared inputs."""

    def __init__(self, arrays: Mapping, declared: dict):
        missing = [name for name in declared if name not in arrays]
        extra = [name for name in arrays if name not in declared]
        takes = ", ".join(f"{name} {shape}" for name, (shape, _) in declared.items())
        if missing or extra:
            what = f"lack {', '.join(map(repr, missing))}" if missing else f"hold {', '.join(map(repr, extra))}, which the program does not take"
            raise WeightpackError(f"the calibration inputs {what}; the program takes {takes}")
        self.cuts, counts = {}, {}
        for name, (shape, _) in declared.items():
            array = np.asarray(arrays[name])
            rank = None if shape is None else len(shape)
            if rank is not None and array.ndim == rank + 1:
                self.cuts[name] = (array, None)
                counts[name] = array.shape[0]
            elif rank is None or array.ndim == rank and rank > 0:
                run = shape[0] if shape is not None and shape[0] is not None else 1
                if array.shape[0] % run:
                    raise WeightpackError(
                        f"calibration input {name!r} has shape {array.shape}: its first axis is not a multiple of the "
                        f"program's batch of {run} (the program takes {name} {shape})"
                    )
                self.cuts[name] = (array, run)
                counts[name] = array.shape[0] // run
            else:
                raise WeightpackError(
                    f"calibration input {name!r} has shape {array.shape}; the program takes {name} {shape}: give "
                    f"arrays of that rank stacked along the first axis, or with one more leading axis of samples"
                )
        if len(set(counts.values())) > 1:
            raise WeightpackError(f"the calibration inputs hold different numbers of batches: {counts}")
        self.count = next(iter(counts.values()), 0)
        if self.count == 0:
            raise WeightpackError("the calibration inputs hold no samples")

    def __len__(self):
        return self.count

    def __iter__(self):
        for i in range(self.count):
            yield {name: array[i] if run is None else array[i * run : (i + 1) * run] for name, (array, run) in self.cuts.items()}


# ---------------------------------------------------------------------------------- collecting


class _Done(Exception):
    """Raised inside ``observe`` once the last op of a pass has been seen: the rest need not run."""


def collect(program, inputs, *, weights=None, gram: bool = True, progress=None) -> ProgramStats:
    """Run ``program`` (a Program or an .mlpackage path) on ``inputs`` and return the
    :class:`ProgramStats` of ``weights`` (names; default every calibrated weight, see
    :func:`calibrated_weights`). ``gram=False`` keeps only the second moments (Wanda).
    ``progress(done, total)`` is called after each batch when the number of batches is known.
    """
    program = as_program(program)
    available = calibrated_weights(program)
    names = list(available) if weights is None else list(weights)
    for name in names:
        if name not in available:
            raise WeightpackError(
                f"weight {name!r} has no calibrated layout (read by an op other than linear, a constant-matrix "
                f"matmul or conv, or not a weight of the program); calibrated weights: {', '.join(available) or 'none'}"
            )
    stats = {name: ActivationStats(available[name], gram=gram) for name in names}
    source = batches(inputs, program)
    total = len(source) if hasattr(source, "__len__") else None
    watched = watched_ops(program, stats)
    count = 0
    for batch in source:
        if not isinstance(batch, Mapping):
            raise WeightpackError(f"each calibration batch must be a dict of name -> array, got {describe(batch)}")
        observe_batch(program, batch, stats, watched, lambda name, rows: stats[name].update(rows))
        count += 1
        if progress is not None and total:
            progress(count, total)
    if count == 0:
        raise WeightpackError("the calibration inputs hold no samples")
    return ProgramStats(stats, count)


def observe_batch(program, batch, names, watched: set, sink) -> None:
    """Run ``program`` on ``batch``, calling ``sink(name, rows)`` with the activation rows of each
    weight in ``names`` (:func:`_rows`), stopping once every op in ``watched`` has been seen."""
    left = set(watched)

    def observe(op, arrays):
        if op.weight_name in names and op.role in ROLES:
            for rows in _rows(program, op, arrays):
                sink(op.weight_name, rows)
            left.discard(op.name)
            if not left:
                raise _Done

    try:
        program.predict(batch, observe=observe)
    except _Done:
        pass


def watched_ops(program, names) -> set:
    """The ops reading the weights ``names``."""
    return {op.name for op in program.weight_ops() if op.weight_name in names}


def as_program(program):
    """``program`` itself, or the Program loaded (policy ``load``) from an .mlpackage path."""
    from ..coreml.runtime import Program

    if isinstance(program, Program):
        return program
    if isinstance(program, (str, os.PathLike)):
        if not os.path.exists(program):
            raise WeightpackError(f"{os.fspath(program)}: no such file or directory")
        return Program.load(os.fspath(program), policy="load")
    raise WeightpackError(f"program={describe(program)} must be a weightpack.coreml.Program or an .mlpackage path")
