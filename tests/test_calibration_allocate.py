"""allocate_bits: budgets, exhaustive optimum on small cases, the printed table, bad input."""
import itertools

import numpy as np
import pytest

import weightpack as wp
from weightpack.calibration import ActivationStats, allocate_bits
from weightpack.compress import kmeans


def model(seed=0):
    rng = np.random.default_rng(seed)
    return {
        f"layer{i}": (
            (rng.standard_normal((32, 48)) * rng.uniform(0.5, 2)).astype(np.float16),
            rng.uniform(0.1, 10, 48) * 10.0**i,
        )
        for i in range(3)
    }


@pytest.mark.parametrize("budget", [2.1, 2.6, 3.0, 3.5, 4.5, 8.2])
def test_plan_fits_the_budget_and_is_optimal(budget):
    layers = model()
    plan = allocate_bits(layers, budget, nbits=(2, 3, 4, 6), group_sizes=(None, 8))
    limit = int(budget * plan.weights / 8)
    assert plan.nbytes <= limit
    options = [p.options for p in plan.layers]
    best = min(
        sum(o.error for o in combo)
        for combo in itertools.product(*options)
        if sum(o.nbytes for o in combo) <= limit
    )
    assert plan.error <= best * 1.05  # greedy on the hull, then fill: within 5% of the exhaustive optimum here


def test_errors_are_the_weighted_kmeans_optimum():
    layers = model()
    plan = allocate_bits(layers, 3.0)
    w, d = layers["layer1"]
    d = d + 0.01 * d.mean()
    x = w.astype(np.float64).ravel()
    order = np.argsort(x, kind="stable")
    xs, ws = x[order], np.tile(d, 32)[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    sse = kmeans.optimal_kmeans_1d(xs[starts], np.add.reduceat(ws, starts), 256).sse_per_k
    for o in plan["layer1"].options:
        assert o.error == pytest.approx(sse[(1 << o.nbits) - 1], rel=1e-9)


def test_more_important_layers_get_more_bits():
    plan = allocate_bits(model(), 3.5)
    bits = [p.choice.nbits for p in plan.layers]
    assert bits == sorted(bits) and bits[0] < bits[-1]


def test_table_and_compress():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 48))
    layers = [
        ("q", rng.standard_normal((32, 48)).astype(np.float16), ActivationStats(48).update(x)),
        ("k", rng.standard_normal((32, 48)).astype(np.float16), None),
    ]
    plan = allocate_bits(layers, 3.5)
    text = str(plan)
    assert "q" in text and "budget 3.500 bits/weight" in text and len(text.splitlines()) == 6
    out = plan.compress(layers)
    assert [t.nbits for t in out.values()] == [p.choice.nbits for p in plan.layers]
    assert out["k"] == wp.palettize(layers[1][1], plan["k"].choice.nbits)
    assert allocate_bits(layers, nbytes=plan.nbytes).nbytes <= plan.nbytes


def test_impossible_budget_names_the_minimum():
    with pytest.raises(wp.WeightpackError, match=r"budget of 1\.0000 bits per weight .* below the minimum reachable 2\.0\d+ bits"):
        allocate_bits(model(), 1.0)


def test_bad_arguments():
    layers = model()
    cases = [
        (lambda: allocate_bits(layers), "exactly one budget"),
        (lambda: allocate_bits(layers, 3, nbytes=100), "exactly one budget"),
        (lambda: allocate_bits(layers, -1), "bits_per_weight=-1"),
        (lambda: allocate_bits(layers, 3, nbits=(5,)), "nbits"),
        (lambda: allocate_bits(layers, 3, group_sizes=(5,)), "no group size"),
        (lambda: allocate_bits({}, 3), "empty"),
        (lambda: allocate_bits({"a": (np.ones((4, 4), np.float32), np.ones(3))}, 3), "stats has shape \\(3,\\)"),
        (lambda: allocate_bits(layers, 3, sensitivity={"layer0": 0}), "sensitivity\\['layer0'\\]=0"),
    ]
    for call, message in cases:
        with pytest.raises(wp.WeightpackError, match=message):
            call()
