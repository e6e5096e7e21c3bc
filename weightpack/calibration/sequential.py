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
        self.program = as_program(program)
        self.original = None
        if correct_inputs:  # a second program of the same graph: set_weight never changes the graph's constants
            from ..coreml.runtime import Program

            self.original = Program(self.program.graph, "load")
        self._cross = {}
        source = batches(inputs, self.program)
        if not isinstance(source, (_Stacked, Sequence)):
            source = list(source)
        self.source, self.sequential, self.progress = source, bool(sequential), progress
        self.layouts = calibrated_weights(self.program)
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
        if cross is None:
            return w
        gram = stats.gram
        if np.array_equal(cross, gram):
            return w
        from .hessian import initial_damping

        flat = w.reshape(w.shape[0], -1).astype(np.float64)
        damped = gram + initial_damping(gram, 0.01) * np.eye(gram.shape[0])
        correction = np.linalg.solve(damped, (flat @ (cross - gram)).T).T
        return (flat + correction).astype(w.dtype).reshape(w.shape)

    def _collect_pairs(self, wanted: list) -> None:
        """One pass of both programs: H~ per weight, and C = X^T X~ (float64 sums) beside it."""
        from .collect import observe_batch, watched_ops
        from .stats import ActivationStats

        stats = {name: ActivationStats(self.layouts[name]) for name in wanted}
        cross = {name: np.zeros((self.layouts[name],) * 2) for name in wanted}
        watched = watched_ops(self.program, wanted)
        for batch in self.source:
            original = {name: [] for name in wanted}
            observe_batch(self.original, batch, wanted, watched, lambda name, rows: original[name].append(rows))
            current = {name: [] for name in wanted}
            observe_batch(self.program, batch, wanted, watched, lambda name, rows: current[name].append(rows))
            for name in wanted:
                x = np.concatenate([r.reshape(-1, r.shape[-1]) for r in original[name]]).astype(np.float64)
                xt = np.concatenate([r.reshape(-1, r.shape[-1]) for r in current[name]])
                stats[name].update(xt)
                cross[name] += x.T @ xt.astype(np.float64)
        for name in wanted:
            self._fresh[name] = stats[name]
            self._cross[name] = cross[name] / max(stats[name].count, 1)

    def finish(self, name: str, tensor) -> None:
        """``name`` is final: ``tensor`` (a weightpack tensor or array) replaces it in the program."""
        self.done.add(name)
        if not self.sequential:
            return
        if tensor is not None:
            self.program.set_weight(name, tensor)
        for other in [m for m in self._fresh if name in self.upstream.get(m, ())]:
            del self._fresh[other]
            self._cross.pop(other, None)

    def _ready(self, name: str) -> bool:
        return not ((self.upstream.get(name, set()) & self.tracked) - self.done)


def upstream_weights(program) -> dict:
    """{weight name: the weights whose values reach the activations entering the ops that read it}.

    Walks the program's ops in order; a weight an op reads directly (its own weight, a bias) is
    not upstream of that op's activations, only of its outputs.
    """
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
    return {name: ups - {name} for name, ups in consumers.items()}


def _bindings(inputs: Mapping):
    for value in inputs.values():
        if isinstance(value, tuple):
            yield from value
        else:
            yield value
