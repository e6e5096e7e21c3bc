"""allocate_bits: budgets (a hard limit, hypothesis), exhaustive optimum on small cases, the
uniform fallback, measured error curves, held-out quality on encoder-shaped layers, bad input."""
import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import weightpack as wp
from weightpack.calibration import ActivationStats, allocate_bits, gptq_palettize
from weightpack.calibration import allocate as allocate_module
from weightpack.compress import kmeans


def bench_calibration():
    path = Path(__file__).resolve().parent.parent / "bench" / "bench_calibration.py"
    spec = importlib.util.spec_from_file_location("bench_calibration", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


@pytest.mark.parametrize("objective", ["absolute", "relative"])
def test_errors_are_the_weighted_kmeans_optimum(objective):
    layers = model()
    plan = allocate_bits(layers, 3.0, objective=objective)
    w, d = layers["layer1"]
    d = d + 0.01 * d.mean()
    x = w.astype(np.float64).ravel()
    order = np.argsort(x, kind="stable")
    xs, ws = x[order], np.tile(d, 32)[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    sse = kmeans.optimal_kmeans_1d(xs[starts], np.add.reduceat(ws, starts), 256).sse_per_k
    signal = float(np.sum(w.astype(np.float64) ** 2 * d))
    unit = 1 / signal if objective == "relative" else 1.0
    for o in plan["layer1"].options:
        assert o.error == pytest.approx(sse[(1 << o.nbits) - 1] * unit, rel=1e-9)
    assert plan["layer1"].signal == pytest.approx(signal * unit, rel=1e-12)


def test_more_important_layers_get_more_bits():
    plan = allocate_bits(model(), 3.5, objective="absolute")
    bits = [p.choice.nbits for p in plan.layers]
    assert bits == sorted(bits) and bits[0] < bits[-1]


def test_relative_objective_ignores_the_scale_of_a_layer():
    layers = model()
    plan = allocate_bits(layers, 3.5)
    for name, (w, d) in layers.items():  # the inputs 10x louder, or the weights 4x larger: the same plan
        louder = {**layers, name: (w, 100 * d)}
        larger = {**layers, name: ((4 * w.astype(np.float32)).astype(np.float16), d)}
        for other in (allocate_bits(louder, 3.5), allocate_bits(larger, 3.5)):
            assert [p.choice[:3] for p in other.layers] == [p.choice[:3] for p in plan.layers]
            assert other.error == pytest.approx(plan.error, rel=1e-9)


@st.composite
def layer_sets(draw):
    """A few small layers of random shapes and statistics (none, second moments, Gram matrix)."""
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(draw(st.integers(1, 4))):
        rows, cols = draw(st.sampled_from([4, 8, 12, 16, 24])), draw(st.sampled_from([3, 8, 16]))
        w = (rng.standard_t(4, (rows, cols)) * rng.uniform(0.01, 3)).astype(draw(st.sampled_from([np.float16, np.float32])))
        kind = draw(st.sampled_from(["none", "moments", "gram"]))
        stats = None
        if kind != "none":
            x = rng.standard_normal((64, cols)) @ rng.standard_normal((cols, cols)) * rng.uniform(0.1, 10)
            stats = ActivationStats(cols).update(x)
            stats = stats if kind == "gram" else stats.second_moments
        layers.append((f"l{i}", w, stats))
    nbits = tuple(draw(st.lists(st.sampled_from([1, 2, 3, 4, 6, 8]), min_size=1, max_size=4, unique=True)))
    group_sizes = tuple(draw(st.lists(st.sampled_from([None, 2, 4, 8]), min_size=1, max_size=3, unique=True)))
    return layers, nbits, group_sizes


@settings(max_examples=40, deadline=None)
@given(case=layer_sets(), where=st.floats(-0.2, 1.2), objective=st.sampled_from(["relative", "absolute"]),
       measure=st.booleans())
def test_the_budget_is_a_hard_limit(case, where, objective, measure):
    """Any layer set, any budget: the plan fits (and beats every uniform plan that fits), or the
    budget is refused as below the minimum."""
    layers, nbits, group_sizes = case
    sizes = [allocate_module._sizes(name, w, sorted(set(nbits)), group_sizes) for name, w, _ in layers
             if any(g is None or w.shape[0] % g == 0 for g in group_sizes)]
    if len(sizes) < len(layers):
        with pytest.raises(wp.WeightpackError, match="no group size"):
            allocate_bits(layers, nbytes=10**9, nbits=nbits, group_sizes=group_sizes)
        return
    low = sum(min(s.values()) for s in sizes)
    high = sum(max(s.values()) for s in sizes)
    budget = max(1, int(low + where * (high - low)))
    kw = dict(nbytes=budget, nbits=nbits, group_sizes=group_sizes, objective=objective, measure=measure)
    if budget < low:
        with pytest.raises(wp.WeightpackError, match=f"below the minimum reachable .* \\({low:,} bytes\\)"):
            allocate_bits(layers, **kw)
        return
    plan = allocate_bits(layers, **kw)
    assert plan.nbytes <= budget
    common = set.intersection(*(set(s) for s in sizes))
    for key in common:
        if sum(s[key] for s in sizes) <= budget:
            uniform = sum(next(o.error for o in p.options if (o.nbits, o.group_size) == key) for p in plan.layers)
            assert plan.error <= uniform * (1 + 1e-12)
    assert [len(t.shape) for t in plan.compress(layers).values()] == [2] * len(layers)


def test_each_layer_steps_along_its_own_hull():
    """The case of the issue: steps of one layer's hull were sized with another's (over budget)."""
    options = [
        [allocate_module.Option(2, None, 100, 10.0), allocate_module.Option(4, None, 200, 1.0)],
        [allocate_module.Option(2, None, 100, 5.0), allocate_module.Option(3, None, 110, 4.9),
         allocate_module.Option(4, None, 120, 4.8)],
    ]
    choice = allocate_module._choose(options, 105)  # layer 0's step costs 100 bytes; layer 1's 10
    spent = sum(opts[c].nbytes - opts[0].nbytes for opts, c in zip(options, choice))
    assert spent <= 105 and choice == [1, 0]


def test_the_best_uniform_plan_is_returned_when_the_mixed_plan_is_not_better(monkeypatch):
    layers = model()
    monkeypatch.setattr(allocate_module, "_choose", lambda options, slack: [0] * len(options))  # a poor choice
    plan = allocate_bits(layers, 3.2, nbits=(2, 3, 4))
    assert plan.fallback and [p.choice.nbits for p in plan.layers] == [3, 3, 3] and plan.uniform[:2] == (3, None)
    assert "returned: the mixed plan was not better" in str(plan)


def test_measured_errors_scale_each_curve_to_the_encoder():
    """With a Gram matrix the option nearest the budget is encoded: its estimated error is the
    encoder's real output error, and compress() hands back that very tensor."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((512, 48)) @ rng.standard_normal((48, 48))  # correlated: error feedback gains
    stats = ActivationStats(48).update(x)
    w = rng.standard_normal((32, 48)).astype(np.float16)
    layers = [("a", w, stats), ("b", rng.standard_normal((32, 48)).astype(np.float16), stats.second_moments)]
    plan = allocate_bits(layers, 3.0, objective="absolute", nbits=(2, 3, 4))
    a = plan["a"]
    t = gptq_palettize(w, stats, 3)
    h = stats.gram + 0.01 * np.mean(np.diag(stats.gram)) * np.eye(48)
    e = w.astype(np.float64) - t.decompress(np.float32)
    measured = next(o for o in a.options if o.nbits == 3)
    assert measured.error == pytest.approx(float(np.sum((e @ h) * e)), rel=1e-9)
    assert a.measured > 1  # error feedback gains over the diagonal proxy
    assert plan["b"].measured is None
    unmeasured = allocate_bits(layers, 3.0, objective="absolute", nbits=(2, 3, 4), measure=False)["a"]
    assert [o.error / u.error for o, u in zip(a.options, unmeasured.options)] == pytest.approx([10 ** (-a.measured / 10)] * 3)
    out = plan.compress(layers)
    if a.choice.nbits == 3:
        assert out["a"] is plan._encoded["a"]
    d = stats.second_moments + 0.01 * stats.second_moments.mean()
    assert out["b"] == wp.palettize(layers[1][1], plan["b"].choice.nbits, importance=d[None])


def test_encoder_plans_beat_the_uniform_plan_on_held_out_inputs():
    """Layers shaped like a small encoder (two blocks, q k v o ff1 ff2): at the size of the uniform
    4-bit and 3-bit plans, the plan's mean held-out noise-to-signal ratio is below the uniform
    GPTQ plan's, and so is its estimate."""
    layers = bench_calibration().encoder_stack(n_layers=2, d=64, ff=256, n_cal=4096, n_test=2048)
    items = [(name, w, stats) for name, w, stats, _ in layers]

    def held_out(tensors):
        ratios = []
        for name, w, _, x in layers:
            y = x @ w.astype(np.float32).T
            ratios.append(np.sum((y - x @ tensors[name].decompress(np.float32).T) ** 2) / np.sum(y**2))
        return float(np.mean(ratios))

    for nbits in (4, 3):
        budget = sum(wp.palettize(w, nbits).nbytes for _, w, _ in items)
        plan = allocate_bits(items, nbytes=budget, group_sizes=(None, 16))
        assert plan.nbytes <= budget and plan.error < plan.uniform[2]
        uniform = {name: gptq_palettize(w, stats, nbits) for name, w, stats in items}
        assert held_out(plan.compress(items)) < 0.95 * held_out(uniform)


def test_table_and_compress():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 48))
    layers = [
        ("q", rng.standard_normal((32, 48)).astype(np.float16), ActivationStats(48).update(x)),
        ("k", rng.standard_normal((32, 48)).astype(np.float16), None),
    ]
    plan = allocate_bits(layers, 3.5)
    text = str(plan)
    assert "q" in text and "budget 3.500 bits/weight" in text and len(text.splitlines()) == 7
    assert text.splitlines()[-1].startswith("objective: relative error; best uniform plan (")
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
        (lambda: allocate_bits(layers, 3, objective="mse"), "objective='mse' is unknown; allowed: 'relative', 'absolute'"),
        (lambda: allocate_bits(layers, 3, measure=1), "measure=1 must be True or False"),
        (lambda: allocate_bits({"a": (np.ones((4, 4), np.float32), np.triu(np.ones((4, 4))))}, 3), "not symmetric"),
    ]
    for call, message in cases:
        with pytest.raises(wp.WeightpackError, match=message):
            call()
