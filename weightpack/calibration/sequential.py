"""Sequential calibration: each weight's statistics gathered on the outputs of the weights compressed before it.

GPTQ and SparseGPT compress a network layer after layer, feeding the calibration inputs through
the layers already compressed, so that each layer corrects the error that reaches it as well as
its own. :class:`SequentialStats` does this on a :class:`weightpack.coreml.Program`: the caller
asks for a weight's statistics (:meth:`SequentialStats.stats`), compresses it and hands the
result back (:meth:`SequentialStats.finish`, which swaps it into the program with
``set_weight``). A pass over the calibration inputs gathers the statistics of every weight
whose upstream weights (those whose values reach its input activations, from the program's data
flow) are all final, so a transformer block's q, k and v share one pass; statistics made stale
by a later ``finish`` of one of their upstream weights are dropped and gathered again.
With ``sequential=False`` one pass on the original program serves every weight.

Input-error correction (``correct_inputs=True``, sequential only): each pass also runs the
original program on the same batch, and a weight's encoder is given the target

    W_t = W + W (C - H~) (H~ + lambda I)^-1,    C = X^T X~ / n,  H~ = X~^T X~ / n

(X: the layer's inputs in the original program, X~: in the program compressed so far; lambda:
SPEC.md §10.2's damping of H~), the weights that minimise ``||X W^T - X~ W_t^T||``: encoded on
H~, the layer aims at the *original* model's outputs from its compressed inputs, compensating
the error of the layers before it, not only its own (GPTQ's objective with an asymmetric
target, as in GPTAQ). Where the inputs are unchanged (C = H~), W_t = W.

Residual streams (with ``correct_inputs``): when a linear's (or ``x @ W.T`` matmul's) output,
after at most one ``add`` of a constant (a bias), is read only by an ``add`` with an activation
``r`` (a transformer's residual stream: ``x + o(attention)``, ``x + down(mlp)``), the layer aims
at the original model's value of that sum, ``X W^T + R``, from ``X~`` and ``R~``:

    W_t = W + (W (C - H~) + D^T) (H~ + lambda I)^-1,    D = X~^T (R - R~) / n

so it also absorbs the part of the error the residual stream carries that its own inputs
predict linearly (on the BERT fixture, every other weight dense, a least-squares map from each MLP
down projection's inputs removed about 4.3 dB of the residual error a 4-bit token-embedding table
leaves, on held-out inputs). ``r`` must be reached
only by weights that also reach the layer's inputs (so it is final when they are); the passes
that gather such a weight run both programs to the end.

>>> import numpy as np, weightpack as wp
>>> from weightpack.runtime import Linear, Model
>>> rng = np.random.default_rng(0)
>>> layers = [Linear(rng.standard_normal((8, 8)).astype(np.float32)) for _ in range(2)]
>>> prog = Model(layers, policy="load").program
>>> first, second = [op.weight_name for op in prog.weight_ops()]
>>> seq = SequentialStats(prog, {"x": rng.standard_normal((16, 8)).astype(np.float32)})
>>> seq.finish(first, wp.palettize(prog.weight_ops()[0].weight, 2))
>>> seq.stats(second).count, seq.passes
(16, 1)
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..coreml.runtime.graph import Ref
from ..errors import WeightpackError
from .collect import _Stacked, as_program, batches, calibrated_weights, collect


class SequentialStats:
    """Fresh statistics per weight as compression proceeds in program order (see the module docstring).

    ``program``: a Program (its weights are replaced as weights are finished) or a path;
    ``inputs``: as :func:`~.collect.collect` takes them (an iterator is read once and kept).
    ``weight_threshold``: weights of rank >= 2 with more elements than this (and the calibrated
    ones) are expected to be finished; a pass waits for them (smaller ones are taken as final:
    if one is finished after all, the statistics it makes stale are gathered again).
    ``passes`` counts the passes over the inputs so far.
    """

    def __init__(self, program, inputs, *, sequential: bool = True, correct_inputs: bool = False,
                 weight_threshold: int = 2048, progress=None):  # fmt: skip
        if correct_inputs and not sequential:
            raise WeightpackError("correct_inputs=True needs sequential=True (without it the inputs are the original ones)")
        from ..coreml.runtime import Program

        owned = not isinstance(program, Program)  # loaded here from a path: free to be replaced
        self.program = as_program(program)
        self.original = None
        self.residuals, self._current = {}, None
        if correct_inputs:  # programs of the same graph: set_weight never changes the graph's constants
            import dataclasses

            self.residuals = residual_streams(self.program)
            graph = self.program.graph
            if self.residuals:  # the residual streams become outputs of a program of the same graph
                extra = [v for v in dict.fromkeys(self.residuals.values()) if v not in graph.outputs]
                graph = dataclasses.replace(graph, outputs=list(graph.outputs) + extra)
                self._current = Program(graph, "load")
                if owned:
                    self.program = self._current
            self.original = Program(graph, "load")
        self._cross, self._shift = {}, {}
        source = batches(inputs, self.program)
        if not isinstance(source, (_Stacked, Sequence)):
            source = list(source)
        self.source, self.sequential, self.progress = source, bool(sequential), progress
        self.layouts = calibrated_weights(self.program)
        self._rows_out = {op.weight_name: int(op.weight.shape[0]) for op in self.program.weight_ops() if op.weight_name in self.residuals}
        self.upstream = upstream_weights(self.program)
        self.tracked = set(self.layouts) | {
            op.weight_name for op in self.program.weight_ops()
            if len(op.weight.shape) >= 2 and int(np.prod(op.weight.shape)) > weight_threshold
        }  # fmt: skip
        self.done, self._fresh, self.passes = set(), {}, 0

    def stats(self, name: str):
        """The ActivationStats of weight ``name`` on the program as compressed so far."""
        if name not in self._fresh:
            if self.sequential:
                wanted = [m for m in self.layouts if m not in self.done and m not in self._fresh and self._ready(m)]
                wanted = list(dict.fromkeys([name, *wanted]))
            else:
                wanted = [m for m in self.layouts if m not in self.done]
            if self.original is None:
                self._fresh.update(collect(self.program, self.source, weights=wanted).items())
            else:
                self._collect_pairs(wanted)
            self.passes += 1
        return self._fresh.pop(name)

    def target(self, name: str, w, stats):
        """The weights the encoder should aim at for weight ``name`` (``w`` itself unless
        ``correct_inputs``; see the module docstring). ``stats``: what :meth:`stats` returned."""
        cross = self._cross.pop(name, None)
        shift = self._shift.pop(name, None)
        if cross is None:
            return w
        gram = stats.gram
        if np.array_equal(cross, gram) and shift is None:
            return w
        from .hessian import initial_damping

        flat = w.reshape(w.shape[0], -1).astype(np.float64)
        damped = gram + initial_damping(gram, 0.01) * np.eye(gram.shape[0])
        rhs = flat @ (cross - gram)
        if shift is not None:
            rhs += shift.T
        correction = np.linalg.solve(damped, rhs.T).T
        return (flat + correction).astype(w.dtype).reshape(w.shape)

    def _collect_pairs(self, wanted: list) -> None:
        """One pass of both programs: H~ per weight, and C = X^T X~ (float64 sums) beside it."""
        from .collect import observe_batch, watched_ops
        from .stats import ActivationStats

        stats = {name: ActivationStats(self.layouts[name]) for name in wanted}
        cross = {name: np.zeros((self.layouts[name],) * 2) for name in wanted}
        residual = {name: self.residuals[name] for name in wanted if name in self.residuals}
        shift = {name: None for name in residual}
        watched = watched_ops(self.program, wanted)
        for batch in self.source:
            original = {name: [] for name in wanted}
            current = {name: [] for name in wanted}
            if residual:  # to the end: the residual streams are outputs
                r_original = _observe_all(self.original, batch, wanted, lambda name, rows: original[name].append(rows))
                r_current = _observe_all(self._current, batch, wanted, lambda name, rows: current[name].append(rows))
            else:
                observe_batch(self.original, batch, wanted, watched, lambda name, rows: original[name].append(rows))
                observe_batch(self.program, batch, wanted, watched, lambda name, rows: current[name].append(rows))
            for name in wanted:
                x = np.concatenate([r.reshape(-1, r.shape[-1]) for r in original[name]]).astype(np.float64)
                xt = np.concatenate([r.reshape(-1, r.shape[-1]) for r in current[name]])
                stats[name].update(xt)
                xt = xt.astype(np.float64)
                cross[name] += x.T @ xt
                if name in residual:
                    shift[name] = _add_shift(shift[name], xt, r_original[residual[name]], r_current[residual[name]], self._rows_out[name])
                    if shift[name] is None:  # a stream broadcast over the layer's output: no row-aligned target
                        del residual[name], shift[name]
        for name in wanted:
            self._fresh[name] = stats[name]
            self._cross[name] = cross[name] / max(stats[name].count, 1)
            if shift.get(name) is not None:
                self._shift[name] = shift[name] / max(stats[name].count, 1)

    def finish(self, name: str, tensor) -> None:
        """``name`` is final: ``tensor`` (a weightpack tensor or array) replaces it in the program."""
        self.done.add(name)
        if not self.sequential:
            return
        if tensor is not None:
            self.program.set_weight(name, tensor)
            if self._current is not None and self._current is not self.program:
                self._current.set_weight(name, tensor)
        for other in [m for m in self._fresh if name in self.upstream.get(m, ())]:
            del self._fresh[other]
            self._cross.pop(other, None)
            self._shift.pop(other, None)

    def _ready(self, name: str) -> bool:
        return not ((self.upstream.get(name, set()) & self.tracked) - self.done)


def upstream_weights(program) -> dict:
    """{weight name: the weights whose values reach the activations entering the ops that read it}.

    Walks the program's ops in order; a weight an op reads directly (its own weight, a bias) is
    not upstream of that op's activations, only of its outputs.
    """
    return _reach(program)[1]


def residual_streams(program) -> dict:
    """{weight name: the residual stream its layer's output is added to} (see the module docstring).

    >>> import numpy as np
    >>> from weightpack.runtime import Linear, Model
    >>> prog = Model([Linear(np.eye(4, dtype=np.float32))], policy="load").program
    >>> residual_streams(prog)
    {}
    """
    from .collect import _node

    graph = program.graph
    readers = {}
    for node in graph.ops:
        for binding in _bindings(node.inputs):
            if isinstance(binding, Ref):
                readers.setdefault(binding.name, []).append(node)
    reach, _ = _reach(program)
    ops = {}
    for op in program.weight_ops():
        ops.setdefault(op.weight_name, []).append(op)
    found = {}
    for name in calibrated_weights(program):
        if len(ops[name]) != 1 or ops[name][0].role not in ("linear", "matmul") or ops[name][0].param not in ("weight", "y"):
            continue
        node = _node(program, ops[name][0].name)
        activations = frozenset().union(*(reach.get(b.name, frozenset()) for b in _bindings(node.inputs)
                                          if isinstance(b, Ref) and b.name not in graph.constants))  # fmt: skip
        value = node.outputs[0].name
        for _ in range(2):  # the layer's output, or its sum with a constant bias
            after = readers.get(value, [])
            if len(after) != 1 or after[0].type != "add" or value in graph.outputs:
                break
            other = [b for b in _bindings(after[0].inputs) if not (isinstance(b, Ref) and b.name == value)]
            if len(other) != 1 or not isinstance(other[0], Ref):
                break
            if other[0].name in graph.constants:
                value = after[0].outputs[0].name
                continue
            if reach.get(other[0].name, frozenset()) <= activations:
                found[name] = other[0].name
            break
    return found


def _observe_all(program, batch, names, sink) -> dict:
    """Run ``program`` on ``batch`` to the end, ``sink(name, rows)`` as in
    :func:`~.collect.observe_batch`; its outputs."""
    from .collect import ROLES, _rows

    def observe(op, arrays):
        if op.weight_name in names and op.role in ROLES:
            for rows in _rows(program, op, arrays):
                sink(op.weight_name, rows)

    return program.predict(batch, observe=observe)


def _add_shift(total, xt, r_original, r_current, out: int):
    """``total + X~^T (R - R~)`` (float64), R's rows of ``out`` values aligned with the layer's
    input rows; None when R does not hold one such row per input row (it is broadcast)."""
    if r_original.shape != r_current.shape or r_original.size != xt.shape[0] * out:
        return None
    difference = np.asarray(r_original, np.float64).reshape(-1, out) - np.asarray(r_current, np.float64).reshape(-1, out)
    part = xt.T @ difference
    return part if total is None else total + part


def _reach(program):
    """({var name: the weights reaching it}, upstream_weights' mapping)."""
    graph = program.graph
    reach = {}  # var name -> frozenset of weight names reaching it
    consumers = {}
    weight_names = set(graph.weights)
    for node in graph.ops:
        refs = [b for b in _bindings(node.inputs) if isinstance(b, Ref)]
        activations = frozenset().union(*(reach.get(r.name, frozenset()) for r in refs if r.name not in graph.constants))
        direct = {r.name for r in refs if r.name in weight_names}
        for weight in direct:
            consumers.setdefault(weight, set()).update(activations)
        out = activations | direct
        for var in node.outputs:
            reach[var.name] = out
    return reach, {name: ups - {name} for name, ups in consumers.items()}


def _bindings(inputs: Mapping):
    for value in inputs.values():
        if isinstance(value, tuple):
            yield from value
        else:
            yield value
