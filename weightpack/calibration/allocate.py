"""Bits per layer from a size budget: ``allocate_bits`` chooses each layer's LUT width and granularity.

Distortion model. For a layer with input second moments ``d_j = E[x_j^2]`` (the diagonal of H,
plus the sweep's damping ``0.01 mean(d)``), the output error of a weight error E is
``E ||E x||^2 ~ sum_rj d_j E_rj^2`` when errors of different inputs are uncorrelated. The LUT
minimising that sum is the importance-weighted optimal k-means of :mod:`.lut`, and its exact DP
gives the optimal weighted error for every LUT size in one run: the rate-distortion curve of the
layer, for each ``nbits`` and ``group_size`` (LUT per tensor or per group of output channels)
asked for. Layers without statistics weigh every input 1 (plain SSE); ``sensitivity`` multiplies
a layer's errors (e.g. to weigh layers by their effect on the model output).

Choice. Minimise the total error under ``total bytes <= budget`` (sizes as stored: packed
indices plus LUTs): each layer starts at its smallest option; the cheapest error reductions per
byte along each layer's lower convex hull are taken while they fit (optimal at the hull's
breakpoints), then any single-layer change that still fits and lowers the error is taken, best
per byte first. A budget below the smallest reachable size is refused, naming both.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from ..bits import check_nbits
from ..compress._common import float_weights, positive_int
from ..errors import WeightpackError, describe
from .lut import weighted_values
from .stats import ActivationStats


class Option(NamedTuple):
    """One way to store a layer: ``nbits``-bit LUT(s), one per ``group_size`` output channels (None: one)."""

    nbits: int
    group_size: int | None
    nbytes: int
    error: float  # importance-weighted squared error (times the layer's sensitivity)


class LayerPlan(NamedTuple):
    name: str
    shape: tuple
    choice: Option
    signal: float  # importance-weighted sum of squared weights (times sensitivity)
    options: tuple  # every Option considered, by size

    @property
    def snr_db(self) -> float:
        """Estimated output SNR of this layer in dB (signal / weighted error)."""
        if self.choice.error == 0:
            return math.inf
        return 10 * math.log10(self.signal / self.choice.error) if self.signal > 0 else -math.inf


class BitPlan:
    """The chosen option of every layer; ``print(plan)`` shows it as a table."""

    def __init__(self, layers: list, budget_nbytes: int):
        self.layers = layers
        self.budget_nbytes = budget_nbytes

    @property
    def nbytes(self) -> int:
        return sum(p.choice.nbytes for p in self.layers)

    @property
    def weights(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self.layers)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / self.weights

    @property
    def error(self) -> float:
        return sum(p.choice.error for p in self.layers)

    def __getitem__(self, name) -> LayerPlan:
        for p in self.layers:
            if p.name == name:
                return p
        raise KeyError(name)

    def table(self) -> str:
        head = f"{'layer':<24} {'shape':>14} {'nbits':>5} {'LUTs':>6} {'bytes':>12} {'bits/w':>7} {'w. error':>10} {'est. SNR dB':>11}"
        lines = [head, "-" * len(head)]
        for p in self.layers:
            c = p.choice
            luts = 1 if c.group_size is None else p.shape[0] // c.group_size
            lines.append(
                f"{p.name:<24} {'x'.join(map(str, p.shape)):>14} {c.nbits:>5} {luts:>6} {c.nbytes:>12,} "
                f"{8 * c.nbytes / np.prod(p.shape):>7.3f} {c.error:>10.3e} {p.snr_db:>11.2f}"
            )
        lines.append("-" * len(head))
        budget = 8 * self.budget_nbytes / self.weights
        lines.append(
            f"{'total':<24} {self.weights:>14,} {'':>5} {'':>6} {self.nbytes:>12,} {self.bits_per_weight:>7.3f} "
            f"{self.error:>10.3e}   budget {budget:.3f} bits/weight ({self.budget_nbytes:,} bytes)"
        )
        return "\n".join(lines)

    def __str__(self):
        return self.table()

    def __repr__(self):
        return f"BitPlan({len(self.layers)} layers, {self.bits_per_weight:.3f} bits/weight, {self.nbytes:,} bytes)"

    def compress(self, layers) -> dict:
        """Compress every layer as planned: :func:`gptq_palettize` where a Gram matrix is known
        (an ActivationStats with one, or a 2-D H), else data-free :func:`weightpack.palettize`."""
        from ..compress import palettize
        from .palettize import gptq_palettize

        out = {}
        for (name, w, stats), p in zip(_items(layers), self.layers):
            c = p.choice
            has_gram = (isinstance(stats, ActivationStats) and stats.has_gram) or (
                stats is not None and not isinstance(stats, ActivationStats) and np.ndim(stats) == 2
            )
            if has_gram:
                out[name] = gptq_palettize(w, stats, c.nbits, group_size=c.group_size)
            else:
                out[name] = palettize(w, c.nbits, group_size=c.group_size)
        return out


def allocate_bits(layers, bits_per_weight=None, *, nbytes=None, nbits=(2, 3, 4, 6, 8), group_sizes=(None,), sensitivity=None):
    """Choose the LUT width (and granularity) of every layer to minimise the total weighted error.

    ``layers``: a mapping ``name -> (w, stats)`` or a sequence of ``(name, w, stats)``, where
    ``stats`` is an ActivationStats, an (in x in) Gram matrix, the per-input second moments, or
    None. The budget is ``bits_per_weight`` (average over all layers) or ``nbytes`` (total).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> layers = {"a": (rng.standard_normal((64, 64)).astype(np.float16), np.ones(64)),
    ...           "b": (rng.standard_normal((64, 64)).astype(np.float16), np.full(64, 100.0))}
    >>> plan = allocate_bits(layers, 3.5)
    >>> [(p.name, p.choice.nbits) for p in plan.layers], plan.bits_per_weight <= 3.5
    ([('a', 2), ('b', 4)], True)
    """
    items = _items(layers)
    if not items:
        raise WeightpackError("layers is empty; give at least one (name, w, stats)")
    widths = sorted({check_nbits(b) for b in nbits}) if isinstance(nbits, (tuple, list)) else None
    if not widths:
        raise WeightpackError(f"nbits={describe(nbits)} must be a non-empty tuple of LUT widths (1, 2, 3, 4, 6, 8)")
    if not isinstance(group_sizes, (tuple, list)) or not group_sizes:
        raise WeightpackError(f"group_sizes={describe(group_sizes)} must be a non-empty tuple (None = one LUT per tensor)")
    for g in group_sizes:
        if g is not None:
            positive_int(g, "group_sizes entry")
    sensitivity = {} if sensitivity is None else dict(sensitivity)
    plans = []
    for name, w, stats in items:
        factor = sensitivity.get(name, 1.0)
        if isinstance(factor, (bool, np.bool_)) or not isinstance(factor, numbers.Real) or not 0 < factor < math.inf:
            raise WeightpackError(f"sensitivity[{name!r}]={describe(factor)} must be a positive finite number")
        plans.append(_layer_options(name, w, stats, widths, group_sizes, float(factor)))
    weights = sum(int(np.prod(p.shape)) for p in plans)
    budget = _budget(bits_per_weight, nbytes, weights)
    smallest = sum(p.options[0].nbytes for p in plans)
    if budget < smallest:
        raise WeightpackError(
            f"the budget of {8 * budget / weights:.4f} bits per weight ({budget:,} bytes) is below the minimum "
            f"reachable {8 * smallest / weights:.4f} bits per weight ({smallest:,} bytes) with nbits={tuple(widths)} "
            f"and group_sizes={tuple(group_sizes)}"
        )
    choice = _choose([p.options for p in plans], budget - smallest)
    return BitPlan([p._replace(choice=p.options[c]) for p, c in zip(plans, choice)], budget)


def _items(layers) -> list:
    if isinstance(layers, Mapping):
        items = [(name, *value) if isinstance(value, tuple) and len(value) == 2 else (name, value, None) for name, value in layers.items()]
    else:
        items = list(layers)
    for item in items:
        if not isinstance(item, tuple) or len(item) != 3:
            raise WeightpackError(f"each layer must be (name, w, stats), got {describe(item)}")
    return items


def _budget(bits_per_weight, nbytes, weights: int) -> int:
    if (bits_per_weight is None) == (nbytes is None):
        raise WeightpackError("give exactly one budget: bits_per_weight (e.g. 3.5) or nbytes")
    if nbytes is not None:
        return positive_int(nbytes, "nbytes")
    if isinstance(bits_per_weight, (bool, np.bool_)) or not isinstance(bits_per_weight, numbers.Real) or not 0 < bits_per_weight < math.inf:
        raise WeightpackError(f"bits_per_weight={describe(bits_per_weight)} must be a positive number")
    return int(math.floor(bits_per_weight * weights / 8))


def _importance(stats, n: int, name: str) -> np.ndarray:
    if stats is None:
        return np.ones(n)
    if isinstance(stats, ActivationStats):
        if stats.in_features != n:
            raise WeightpackError(f"layer {name!r}: statistics of in_features={stats.in_features}, the weight needs {n}")
        d = stats.second_moments
    else:
        arr = np.asarray(stats, np.float64)
        if arr.shape not in ((n,), (n, n)) or not np.isfinite(arr).all():
            raise WeightpackError(
                f"layer {name!r}: stats has shape {arr.shape}; allowed: ActivationStats, ({n}, {n}) Gram matrix, "
                f"({n},) second moments (finite), or None"
            )
        d = np.diagonal(arr) if arr.ndim == 2 else arr
    if d.min() < 0:
        raise WeightpackError(f"layer {name!r}: negative second moment {d.min():.4g}")
    mean = float(d.mean())
    return d + 0.01 * mean if mean > 0 else np.ones(n)


def _layer_options(name, w, stats, widths, group_sizes, factor) -> LayerPlan:
    from ..compress import kmeans

    w = float_weights(w, f"layers[{name!r}]")
    if w.ndim < 2:
        raise WeightpackError(f"layer {name!r} has shape {w.shape}; a layer weight must have rank >= 2")
    flat = w.reshape(w.shape[0], -1)
    rows, n = flat.shape
    d = _importance(stats, n, name)
    kmax = 1 << widths[-1]
    options = []
    for g in group_sizes:
        size = rows if g is None else g
        if rows % size:
            continue  # this granularity does not apply to this layer
        curve = np.zeros(kmax)
        for start in range(0, rows, size):
            x, weight = weighted_values(flat[start : start + size], d)
            curve += kmeans.solve(x, weight, kmax)[1]
        for b in widths:
            nbytes = -(-w.size * b // 8) + (rows // size) * (1 << b) * w.dtype.itemsize
            options.append(Option(b, g, nbytes, factor * float(curve[(1 << b) - 1])))
    if not options:
        raise WeightpackError(f"no group size in {tuple(group_sizes)} divides layer {name!r}'s {rows} output channels")
    options.sort(key=lambda o: (o.nbytes, o.error))
    signal = factor * float(np.sum(flat.astype(np.float64) ** 2 * d))
    return LayerPlan(name, tuple(w.shape), options[0], signal, tuple(options))


def _choose(options: list, slack: int) -> list:
    """Index of the chosen option per layer (options sorted by size) spending at most ``slack`` extra bytes."""
    choice = [0] * len(options)
    hulls = [_hull(opts) for opts in options]
    position = [0] * len(options)  # index into the hull
    while True:  # the steepest hull step that fits
        best, best_layer = 0.0, None
        for i, hull in enumerate(hulls):
            if position[i] + 1 < len(hull):
                a, b = options[i][hull[position[i]]], options[i][hull[position[i] + 1]]
                gain = (a.error - b.error) / (b.nbytes - a.nbytes)
                if b.nbytes - a.nbytes <= slack and gain > best:
                    best, best_layer = gain, i
        if best_layer is None:
            break
        i = best_layer
        old, new = options[i][hull[position[i]]], options[i][hull[position[i] + 1]]
        slack -= new.nbytes - old.nbytes
        position[i] += 1
        choice[i] = hull[position[i]]
    while True:  # fill: any single change that fits and lowers the error, best per byte
        best, move = 0.0, None
        for i, opts in enumerate(options):
            cur = opts[choice[i]]
            for j, o in enumerate(opts):
                extra = o.nbytes - cur.nbytes
                if o.error < cur.error and extra <= slack:
                    gain = (cur.error - o.error) / max(extra, 1)
                    if gain > best:
                        best, move = gain, (i, j)
        if move is None:
            return choice
        i, j = move
        slack -= options[i][j].nbytes - options[i][choice[i]].nbytes
        choice[i] = j


def _hull(opts) -> list:
    """Indices of the lower convex hull of (nbytes, error), from the smallest option, error decreasing."""
    hull = [0]
    for j in range(1, len(opts)):
        if opts[j].error >= opts[hull[-1]].error:
            continue
        while len(hull) >= 2:
            a, b = opts[hull[-2]], opts[hull[-1]]
            # drop b if it lies on or above the segment a -> j
            if (b.error - a.error) * (opts[j].nbytes - a.nbytes) >= (opts[j].error - a.error) * (b.nbytes - a.nbytes):
                hull.pop()
            else:
                break
        hull.append(j)
    return hull
