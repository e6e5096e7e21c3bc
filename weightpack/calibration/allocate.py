"""Bits per layer from a size budget: ``allocate_bits`` chooses each layer's LUT width and granularity.

Error model. Each layer's options are its LUT widths ``nbits`` times granularities
``group_sizes``; an option's size is its packed indices plus LUTs. Its error starts from the
diagonal proxy: for input second moments ``d_j`` (the diagonal of H plus the sweep's damping
``0.01 mean(d)``) the output error of a weight error E is ``sum_rj d_j E_rj^2`` when errors of
different inputs are uncorrelated; the importance-weighted optimal k-means (:mod:`.lut`) gives its
least value for every LUT size. The proxy ignores what error feedback gains, and that gain differs
from layer to layer far more than from option to option (measured on BERT-shaped layers: 0.5 to
18 dB between layers, within about 1 dB between the options of one layer): with a Gram matrix
(``measure=True``) the calibrated encoder is therefore run once per layer, at the option nearest
the budget's average width, and the layer's proxy curve is scaled so that this option's error is
the measured ``tr((W - W_hat) (H + lambda I) (W - W_hat)^T)``.

Objective. ``objective="relative"`` (default) minimises the sum over layers of error / signal
(each layer's output noise-to-signal ratio, signal ``tr(W (H + lambda I) W^T)``, or
``sum_rj d_j w_rj^2`` without a Gram matrix): along a chain of layers relative errors add up
whatever each layer's output scale, while absolute errors favour the layers with large outputs
and starve the small ones (measured: attention output projections at 2 bits, the mean layer SNR
below the uniform plan's). ``objective="absolute"`` minimises the sum of output errors.
``sensitivity`` multiplies a layer's term (e.g. its measured effect on the model output).

Choice. Minimise the total under ``total bytes <= budget`` (a hard limit): each layer starts at
its smallest option; the cheapest error reductions per byte along each layer's lower convex hull
are taken while they fit (optimal at the hull's breakpoints), then any single-layer change that
still fits and lowers the total is taken, best per byte first. The result is compared with every
uniform plan (one option for all layers) that fits; the best of those is returned instead when
the mixed plan's estimate is not lower. A budget below the smallest reachable size is refused,
naming both.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from ..bits import check_nbits
from ..compress import _threads
from ..compress._common import check_bool, check_choice, float_weights, positive_int
from ..errors import WeightpackError, describe
from . import hessian
from .lut import weighted_values
from .refit import OutputError
from .stats import ActivationStats
from .sweep import FLOAT32_ABOVE

OBJECTIVES = ("relative", "absolute")


class Option(NamedTuple):
    """One way to store a layer: ``nbits``-bit LUT(s), one per ``group_size`` output channels (None: one)."""

    nbits: int
    group_size: int | None
    nbytes: int
    error: float  # estimated error in the objective's units (times the layer's sensitivity)


class LayerPlan(NamedTuple):
    name: str
    shape: tuple
    choice: Option
    signal: float  # the layer's output signal in the objective's units (times sensitivity)
    options: tuple  # every Option considered, by size
    measured: float | None = None  # dB the error-feedback encoder gained over the proxy at the measured option

    @property
    def snr_db(self) -> float:
        """Estimated output SNR of this layer in dB (signal / error)."""
        if self.choice.error == 0:
            return math.inf
        return 10 * math.log10(self.signal / self.choice.error) if self.signal > 0 else -math.inf


class BitPlan:
    """The chosen option of every layer; ``print(plan)`` shows it as a table.

    ``uniform`` is the best uniform plan that fits the budget, as ``(nbits, group_size, error)``
    (None if none fits); ``fallback`` says whether it was returned because the mixed plan's
    estimate was not lower.
    """

    def __init__(self, layers: list, budget_nbytes: int, objective: str = "relative", uniform=None, fallback=False):
        self.layers = layers
        self.budget_nbytes = budget_nbytes
        self.objective = objective
        self.uniform = uniform
        self.fallback = fallback
        self._encoded = {}  # name -> the tensor a measurement produced for the chosen option

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
        head = f"{'layer':<24} {'shape':>14} {'nbits':>5} {'LUTs':>6} {'bytes':>12} {'bits/w':>7} {'est. error':>10} {'est. SNR dB':>11}"
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
        lines.append(f"objective: {self.objective} error" + ("" if self.uniform is None else (
            f"; best uniform plan ({self.uniform[0]}-bit, "
            f"{'one LUT per tensor' if self.uniform[1] is None else f'one LUT per {self.uniform[1]} rows'}): "
            f"{self.uniform[2]:.3e}" + (" (returned: the mixed plan was not better)" if self.fallback else ""))))
        return "\n".join(lines)

    def __str__(self):
        return self.table()

    def __repr__(self):
        return f"BitPlan({len(self.layers)} layers, {self.bits_per_weight:.3f} bits/weight, {self.nbytes:,} bytes)"

    def compress(self, layers) -> dict:
        """Compress every layer as planned: :func:`gptq_palettize` where a Gram matrix is known
        (an ActivationStats with one, or a 2-D H), else :func:`weightpack.palettize` weighted by
        the second moments when given (the LUT the plan's estimate assumed)."""
        from .palettize import gptq_palettize

        out = {}
        for (name, w, stats), p in zip(_items(layers), self.layers):
            c = p.choice
            if name in self._encoded:
                out[name] = self._encoded[name]
            elif _has_gram(stats):
                out[name] = gptq_palettize(w, stats, c.nbits, group_size=c.group_size)
            else:
                out[name] = _data_free(w, stats, c.nbits, c.group_size)
        return out


def allocate_bits(layers, bits_per_weight=None, *, nbytes=None, nbits=(2, 3, 4, 6, 8), group_sizes=(None,),
                  sensitivity=None, objective="relative", measure=True):
    """Choose the LUT width (and granularity) of every layer to minimise the total estimated error.

    ``layers``: a mapping ``name -> (w, stats)`` or a sequence of ``(name, w, stats)``, where
    ``stats`` is an ActivationStats, an (in x in) Gram matrix, the per-input second moments, or
    None. The budget is ``bits_per_weight`` (average over all layers) or ``nbytes`` (total), a
    hard limit. ``objective``: "relative" (sum of each layer's error / signal) or "absolute" (sum
    of output errors). ``measure``: run the calibrated encoder once per layer with a Gram matrix
    to correct its error curve (see the module docstring).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> layers = {"a": (rng.standard_normal((64, 64)).astype(np.float16), np.ones(64)),
    ...           "b": (rng.standard_normal((64, 64)).astype(np.float16), np.full(64, 100.0))}
    >>> plan = allocate_bits(layers, 3.5, objective="absolute")
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
    check_choice(objective, "objective", OBJECTIVES)
    measure = check_bool(measure, "measure")
    sensitivity = {} if sensitivity is None else dict(sensitivity)
    prepared = []
    for name, w, stats in items:
        factor = sensitivity.get(name, 1.0)
        if isinstance(factor, (bool, np.bool_)) or not isinstance(factor, numbers.Real) or not 0 < factor < math.inf:
            raise WeightpackError(f"sensitivity[{name!r}]={describe(factor)} must be a positive finite number")
        w = float_weights(w, f"layers[{name!r}]")
        if w.ndim < 2:
            raise WeightpackError(f"layer {name!r} has shape {w.shape}; a layer weight must have rank >= 2")
        sizes = _sizes(name, w, widths, group_sizes)
        n = int(np.prod(w.shape[1:]))
        d = _importance(stats, n, name)
        if _has_gram(stats) and not isinstance(stats, ActivationStats):
            hessian.gram_matrix(stats, n, f"layers[{name!r}] stats")  # validated before any work
        prepared.append((name, w, stats, d, float(factor), sizes))
    weights = sum(p[1].size for p in prepared)
    budget = _budget(bits_per_weight, nbytes, weights)
    smallest = sum(min(p[-1].values()) for p in prepared)
    if budget < smallest:
        raise WeightpackError(
            f"the budget of {8 * budget / weights:.4f} bits per weight ({budget:,} bytes) is below the minimum "
            f"reachable {8 * smallest / weights:.4f} bits per weight ({smallest:,} bytes) with nbits={tuple(widths)} "
            f"and group_sizes={tuple(group_sizes)}"
        )
    reference = min(widths, key=lambda b: (abs(b - 8 * budget / weights), b))
    plans, encoded = [], {}
    for name, w, stats, d, factor, sizes in prepared:
        plan, tensor = _layer_options(name, w, stats, d, sizes, factor, objective, reference if measure else None)
        plans.append(plan)
        if tensor is not None:
            encoded[name] = tensor
    choice = _choose([p.options for p in plans], budget - smallest)
    mixed = [p._replace(choice=p.options[c]) for p, c in zip(plans, choice)]
    uniform = _best_uniform(plans, budget)
    same = uniform is not None and all((p.choice.nbits, p.choice.group_size) == uniform[:2] for p in mixed)
    fallback = uniform is not None and not same and uniform[2] <= sum(p.choice.error for p in mixed)
    if fallback:
        mixed = [p._replace(choice=next(o for o in p.options if (o.nbits, o.group_size) == uniform[:2])) for p in plans]
    result = BitPlan(mixed, budget, objective, uniform, fallback)
    for p in mixed:  # a measurement at the chosen option is the tensor compress() would make
        if p.name in encoded and (p.choice.nbits, p.choice.group_size) == encoded[p.name][0]:
            result._encoded[p.name] = encoded[p.name][1]
    return result


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


def _has_gram(stats) -> bool:
    if isinstance(stats, ActivationStats):
        return stats.has_gram
    return stats is not None and np.ndim(stats) == 2


def _sizes(name, w, widths, group_sizes) -> dict:
    """{(nbits, group_size): stored bytes} of every option that applies to ``w``."""
    rows = w.shape[0]
    sizes = {}
    for g in group_sizes:
        if rows % (rows if g is None else g):
            continue  # this granularity does not apply to this layer
        luts = 1 if g is None else rows // g
        for b in widths:
            sizes[(b, g)] = -(-w.size * b // 8) + luts * (1 << b) * w.dtype.itemsize
    if not sizes:
        raise WeightpackError(f"no group size in {tuple(group_sizes)} divides layer {name!r}'s {rows} output channels")
    return sizes


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
    return d + hessian.DEFAULT_DAMP * mean if mean > 0 else np.ones(n)


def _data_free(w, stats, nbits, group_size):
    """``weightpack.palettize`` weighted by the second moments (none for ``stats=None``)."""
    from ..compress import palettize

    if stats is None:
        return palettize(w, nbits, group_size=group_size)
    w = np.asarray(w)
    d = _importance(stats, int(np.prod(w.shape[1:])), "w")
    return palettize(w, nbits, group_size=group_size, importance=d.reshape((1,) + w.shape[1:]))


def _layer_options(name, w, stats, d, sizes, factor, objective, reference):
    """(LayerPlan with every option's estimated error, (option, tensor) of the measurement or None);
    ``d``: the layer's input importances (:func:`_importance`)."""
    flat = w.reshape(w.shape[0], -1)
    rows, n = flat.shape
    proxy = {}
    for g in sorted({g for _, g in sizes}, key=lambda g: g or 0):
        size = rows if g is None else g
        ks = sorted({1 << b for b, gg in sizes if gg == g})

        def group_errors(start, size=size, ks=ks):
            x, weight = weighted_values(flat[start : start + size], d)
            return [_kmeans_error(x, weight, k) for k in ks]

        per_group = np.array(_threads.run(group_errors, range(0, rows, size)))
        for b in {b for b, gg in sizes if gg == g}:
            proxy[(b, g)] = float(per_group[:, ks.index(1 << b)].sum())
    scale, measured, gain = 1.0, None, None
    if _has_gram(stats):
        gram = hessian.gram_matrix(stats, n, f"layers[{name!r}] stats")
        output_error = OutputError(gram, hessian.initial_damping(gram, hessian.DEFAULT_DAMP), FLOAT32_ABOVE)
        signal = output_error(flat)
        if reference is not None:
            from .palettize import gptq_palettize

            key = min(sizes, key=lambda o: (o[0] != reference, abs(o[0] - reference), o[0], o[1] is not None, o[1] or 0))
            tensor = gptq_palettize(w, stats, key[0], group_size=key[1])
            error = output_error(flat.astype(np.float64) - tensor.decompress(np.float32).reshape(rows, n))
            if proxy[key] > 0 and error > 0:
                scale = error / proxy[key]
                gain = 10 * math.log10(1 / scale)
            measured = (key, tensor)
    else:
        signal = float(np.sum(flat.astype(np.float64) ** 2 * d))
    unit = factor / signal if objective == "relative" and signal > 0 else factor
    options = sorted((Option(b, g, sizes[(b, g)], unit * scale * proxy[(b, g)]) for b, g in sizes),
                     key=lambda o: (o.nbytes, o.error))
    plan = LayerPlan(name, tuple(w.shape), options[0], unit * signal, tuple(options), gain)
    return plan, measured


def _kmeans_error(x, weight, k) -> float:
    """The least weighted squared error of ``x`` with ``k`` centres (the optimal k-partition's)."""
    from ..compress import kmeans

    if x.size <= k:
        return 0.0
    starts = kmeans.solve_k(np.ascontiguousarray(x), np.ascontiguousarray(weight), k)
    means = kmeans.cluster_means(x, weight, starts)
    centre = np.repeat(means, np.diff(np.append(starts, x.size)))
    return float(np.sum(weight * (x - centre) ** 2))


def _best_uniform(plans, budget: int):
    """(nbits, group_size, total error) of the best single option for every layer within the budget."""
    best = None
    common = set.intersection(*({(o.nbits, o.group_size) for o in p.options} for p in plans))
    for key in sorted(common, key=lambda o: (o[0], o[1] or 0)):
        chosen = [next(o for o in p.options if (o.nbits, o.group_size) == key) for p in plans]
        if sum(o.nbytes for o in chosen) <= budget:
            error = sum(o.error for o in chosen)
            if best is None or error < best[2]:
                best = (key[0], key[1], error)
    return best


def _choose(options: list, slack: int) -> list:
    """Index of the chosen option per layer (options sorted by size) spending at most ``slack`` extra bytes."""
    choice = [0] * len(options)
    hulls = [_hull(opts) for opts in options]
    position = [0] * len(options)  # index into each layer's own hull
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
        old, new = options[i][hulls[i][position[i]]], options[i][hulls[i][position[i] + 1]]
        slack -= new.nbytes - old.nbytes
        position[i] += 1
        choice[i] = hulls[i][position[i]]
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
