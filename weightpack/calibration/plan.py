"""Bits per weight of a whole Core ML program under a size budget: ``plan_program``.

The layers are the program's weights of rank >= 2 with more than ``weight_threshold`` elements
(the ones the compressors palettize); their sizes are :func:`.allocate.allocate_bits`'s (packed
indices plus LUTs), the budget a hard limit on their sum.

- ``sensitivity=False``: :func:`.allocate.allocate_bits` on the program's real statistics
  (weights no calibrated op reads, such as embedding tables, enter with no statistics).
- ``sensitivity=True``: the cost of an option is *measured on the model*: the layer alone is
  encoded at that option (``gptq_palettize`` with its statistics, data-free without), swapped
  into the program, and the program's relative output error on the calibration inputs
  ``sum_outputs ||y - y_ref||^2 / ||y_ref||^2`` (y_ref: the uncompressed program) is its cost.
  Costs of different layers are taken to add up (true to first order for small errors); the
  allocator of :mod:`.allocate` (steepest steps along each layer's lower convex hull, then
  single changes) chooses under the budget. The mixed plan and the best uniform plan that fits
  (by the summed measured costs) are then both applied whole and measured; the better one is
  returned, so the plan is never worse on the calibration inputs than the best uniform plan of
  that size.
"""
from __future__ import annotations

import numpy as np

from ..errors import WeightpackError
from .allocate import BitPlan, LayerPlan, Option, _best_uniform, _budget, _choose, _sizes, allocate_bits
from .collect import as_program, batches


def program_layers(program, stats=None, weight_threshold: int = 2048) -> dict:
    """{weight name: (w, ActivationStats or None)} of the weights a palettization compresses."""
    program = as_program(program)
    layers = {}
    for op in program.weight_ops():
        w = op.weight
        if op.weight_name in layers or len(w.shape) < 2 or np.dtype(w.dtype).kind != "f":
            continue
        if int(np.prod(w.shape)) <= weight_threshold or not isinstance(w, np.ndarray):
            continue
        layers[op.weight_name] = (w, None if stats is None else stats.get(op.weight_name))
    if not layers:
        raise WeightpackError(f"the program has no dense float weight of rank >= 2 with more than {weight_threshold} elements to plan")
    return layers


def plan_program(program, stats, inputs=None, *, bits_per_weight=None, nbytes=None, nbits=(2, 3, 4, 6, 8),
                 group_sizes=(None,), weight_threshold: int = 2048, sensitivity: bool = False, report=None) -> BitPlan:
    """A :class:`~.allocate.BitPlan` for the program's weights (see the module docstring).

    ``stats``: a :class:`~.collect.ProgramStats` (or None: every layer data-free); ``inputs``: the
    calibration inputs, needed with ``sensitivity=True``. ``report(line)`` gets progress lines.
    """
    program = as_program(program)
    layers = program_layers(program, stats, weight_threshold)
    if not sensitivity:
        return allocate_bits(layers, bits_per_weight, nbytes=nbytes, nbits=nbits, group_sizes=group_sizes)
    if inputs is None:
        raise WeightpackError("sensitivity=True measures the program's output error: give the calibration inputs")
    return _measured_plan(program, layers, inputs, bits_per_weight, nbytes, nbits, group_sizes, report)


class OutputError:
    """Relative output error of the program, as it stands, against its outputs at creation."""

    def __init__(self, program, inputs):
        self.program = program
        self.batches = list(batches(inputs, program))
        self.reference = [program.predict(b) for b in self.batches]
        self.signal = sum(float(np.sum(np.square(y[k], dtype=np.float64))) for y in self.reference for k in y)

    def __call__(self) -> float:
        noise = 0.0
        for batch, ref in zip(self.batches, self.reference):
            out = self.program.predict(batch)
            noise += sum(float(np.sum(np.square(out[k].astype(np.float64) - ref[k]))) for k in ref)
        return noise / self.signal if self.signal > 0 else noise


def encode(w, stats, nbits: int, group_size):
    """The layer at one option: ``gptq_palettize`` with a Gram matrix, else ``weightpack.palettize``."""
    from ..compress import palettize
    from .palettize import gptq_palettize

    if stats is not None and stats.has_gram and stats.count > 0:
        return gptq_palettize(w, stats, nbits, group_size=group_size)
    return palettize(w, nbits, group_size=group_size)


def _measured_plan(program, layers, inputs, bits_per_weight, nbytes, nbits, group_sizes, report):
    widths = sorted(set(nbits))
    error = OutputError(program, inputs)
    plans = []
    sizes = {name: _sizes(name, w, widths, group_sizes) for name, (w, _) in layers.items()}
    weights = sum(w.size for w, _ in layers.values())
    budget = _budget(bits_per_weight, nbytes, weights)
    smallest = sum(min(s.values()) for s in sizes.values())
    if budget < smallest:
        raise WeightpackError(
            f"the budget of {8 * budget / weights:.4f} bits per weight ({budget:,} bytes) is below the minimum "
            f"reachable {8 * smallest / weights:.4f} bits per weight ({smallest:,} bytes) with nbits={tuple(widths)} "
            f"and group_sizes={tuple(group_sizes)}"
        )
    tensors = {}
    for name, (w, stats) in layers.items():
        options = []
        for (b, g), size in sizes[name].items():
            tensor = encode(w, stats, b, g)
            tensors[(name, b, g)] = tensor
            program.set_weight(name, tensor)
            options.append(Option(b, g, size, error()))
        program.set_weight(name, w)
        options.sort(key=lambda o: (o.nbytes, o.error))
        plans.append(LayerPlan(name, tuple(w.shape), options[0], 1.0, tuple(options)))  # errors are relative
        if report is not None:
            report(f"sensitivity of {name}: " + ", ".join(f"{o.nbits}b{'' if o.group_size is None else f'/g{o.group_size}'} {o.error:.2e}" for o in options))
    choice = _choose([p.options for p in plans], budget - smallest)
    mixed = [p._replace(choice=p.options[c]) for p, c in zip(plans, choice)]
    uniform = _best_uniform(plans, budget)
    candidates = [("mixed", mixed)]
    if uniform is not None:
        candidates.append(("uniform", [p._replace(choice=next(o for o in p.options if (o.nbits, o.group_size) == uniform[:2])) for p in plans]))
    measured = []
    for label, plan in candidates:
        for p in plan:
            program.set_weight(p.name, tensors[(p.name, p.choice.nbits, p.choice.group_size)])
        measured.append(error())
        if report is not None:
            report(f"{label} plan: measured relative output error {measured[-1]:.3e}")
    for name, (w, _) in layers.items():
        program.set_weight(name, w)
    best = int(np.argmin(measured))
    result = BitPlan(candidates[best][1], budget, "measured output", uniform, fallback=best == 1)
    result.measured_errors = dict(zip((label for label, _ in candidates), measured))
    for p in result.layers:
        result._encoded[p.name] = tensors[(p.name, p.choice.nbits, p.choice.group_size)]
    return result


def plan_options(plan: BitPlan) -> dict:
    """{weight name: (nbits, group_size)} of a plan, as :func:`weightpack.coreml.compress` takes it."""
    return {p.name: (p.choice.nbits, p.choice.group_size) for p in plan.layers}
