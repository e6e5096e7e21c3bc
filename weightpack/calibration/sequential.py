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

    def __init__(self, program, inputs, *, sequential: bool = True, weight_threshold: int = 2048, progress=None):
        self.program = as_program(program)
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
            self._fresh.update(collect(self.program, self.source, weights=wanted).items())
            self.passes += 1
        return self._fresh.pop(name)

    def finish(self, name: str, tensor) -> None:
        """``name`` is final: ``tensor`` (a weightpack tensor or array) replaces it in the program."""
        self.done.add(name)
        if not self.sequential:
            return
        if tensor is not None:
            self.program.set_weight(name, tensor)
        for other in [m for m in self._fresh if name in self.upstream.get(m, ())]:
            del self._fresh[other]

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
