"""The exact 1-D k-means DP: optimality against brute force, the SSE curve, fp16/fp32 LUT fitting."""
import itertools
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import weightpack as wp
from weightpack.compress import kmeans, palettization
from weightpack.compress.kmeans import optimal_kmeans_1d


def brute_force_sse(x, w, clusters):
    """Least SSE over every split of sorted x into exactly ``clusters`` contiguous runs."""
    best = np.inf
    for cuts in itertools.combinations(range(1, x.size), clusters - 1):
        bounds = (0, *cuts, x.size)
        sse = 0.0
        for a, b in zip(bounds[:-1], bounds[1:]):
            mean = np.sum(w[a:b] * x[a:b]) / np.sum(w[a:b])
            sse += np.sum(w[a:b] * (x[a:b] - mean) ** 2)
        best = min(best, sse)
    return best


def sse_of(values, approx):
    return float(np.sum((np.asarray(values, np.float64) - np.asarray(approx, np.float64)) ** 2))


weighted_points = st.lists(
    st.tuples(st.floats(-100, 100, allow_nan=False, width=32), st.floats(0.01, 50)), min_size=1, max_size=10
)


@given(points=weighted_points, k=st.integers(1, 4))
def test_dp_matches_brute_force(points, k):
    values = {}
    for v, w in points:
        values[v + 0.0] = values.get(v + 0.0, 0.0) + w
    x = np.array(sorted(values))
    w = np.array([values[v] for v in x])
    r = optimal_kmeans_1d(x, w, k)
    scale = np.sum(w * (x - np.average(x, weights=w)) ** 2) + 1e-12
    for j in range(1, k + 1):
        expected = brute_force_sse(x, w, j) if j <= x.size else 0.0
        assert r.sse_per_k[j - 1] == pytest.approx(expected, rel=1e-9, abs=1e-9 * scale)
    assert r.sse == pytest.approx(brute_force_sse(x, w, min(k, x.size)), rel=1e-9, abs=1e-9 * scale)
    assert r.centroids.size == min(k, x.size)
    assert np.all(np.diff(r.centroids) > 0)


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(2, 64))
def test_sse_per_k_is_non_increasing(seed, k):
    rng = np.random.default_rng(seed)
    x = np.unique(rng.standard_normal(300))
    w = rng.integers(1, 100, x.size).astype(np.float64)
    sse = optimal_kmeans_1d(x, w, k).sse_per_k
    assert sse.shape == (k,)
    assert np.all(np.diff(sse) <= 1e-12 * sse[0])
    assert sse[-1] >= 0


def test_fewer_values_than_clusters():
    r = optimal_kmeans_1d([1.0, 2.0, 4.0], [1, 2, 3], 8)
    assert r.centroids.tolist() == [1.0, 2.0, 4.0]
    assert r.sse == 0.0
    assert r.sse_per_k[2:].tolist() == [0.0] * 6
    assert r.sse_per_k[0] == pytest.approx(np.sum(np.array([1, 2, 3]) * (np.array([1, 2, 4]) - 17 / 6) ** 2))


@pytest.mark.parametrize(
    "values, weights, k, message",
    [
        ([1.0, 0.5], [1, 1], 2, "sorted"),
        ([1.0, 1.0], [1, 1], 2, "no repeats"),
        ([1.0, 2.0], [1, 0], 2, "positive"),
        ([1.0, 2.0], [1, 1], 0, "k=0"),
        ([1.0, 2.0], [1], 2, "equal length"),
        ([1.0, np.nan], [1, 1], 2, "finite"),
    ],
)
def test_optimal_kmeans_rejects_bad_input(values, weights, k, message):
    with pytest.raises(wp.WeightpackError, match=message):
        optimal_kmeans_1d(values, weights, k)


def dp_reference(values):
    """(optimal clusters' float64 means, their weights, optimum SSE) per k, from the distinct values."""
    x, counts = np.unique(np.asarray(values).astype(np.float64), return_counts=True)

    def solve(k):
        starts, sse = kmeans.solve(x, counts.astype(np.float64), k)
        means = kmeans.cluster_means(x, counts.astype(np.float64), starts)
        weights = np.add.reduceat(counts, starts)
        return means, weights, sse[k - 1]

    return solve


@pytest.mark.parametrize("n", [3000, 40000])  # the sort path and the bit-pattern histogram path
@pytest.mark.parametrize("nbits", [1, 3, 4, 8])
def test_fp16_lut_is_the_rounded_optimum(n, nbits):
    """LUT = the DP's float64 centroids rounded to fp16; SSE* <= SSE <= SSE* + rounding term."""
    rng = np.random.default_rng(n + nbits)
    w = (rng.standard_normal(n) * 0.05).astype(np.float16)
    w[:50] = -0.0
    p = wp.palettize(w, nbits=nbits)
    means, weights, optimum = dp_reference(w)(1 << nbits)
    lut = p.lut.ravel()
    assert lut[: means.size].tolist() == means.astype(np.float16).tolist()
    rounding = float(np.sum(weights * (means.astype(np.float16).astype(np.float64) - means) ** 2))
    sse = sse_of(w, p.decompress())
    assert optimum * (1 - 1e-9) <= sse <= (optimum + rounding) * (1 + 1e-9)


@pytest.mark.parametrize("nbits", [2, 4, 6])
def test_never_worse_than_coremltools_kmeans(nbits):
    from coremltools.models.neural_network.quantization_utils import _get_kmeans_lookup_table_and_weight

    rng = np.random.default_rng(nbits)
    w = (rng.laplace(size=12000) * 0.02).astype(np.float16)
    lut, labels = _get_kmeans_lookup_table_and_weight(nbits, w)
    theirs = sse_of(w, lut.astype(np.float16)[labels])
    ours = sse_of(w, wp.palettize(w, nbits=nbits).decompress())
    assert ours <= theirs * (1 + 1e-12)


def test_fp32_exact_when_few_distinct_values():
    rng = np.random.default_rng(1)
    w = rng.choice(rng.standard_normal(5000), size=30000).astype(np.float32)
    p = wp.palettize(w, nbits=4)
    means, weights, optimum = dp_reference(w)(16)
    assert p.lut.ravel().tolist() == means.astype(np.float32).tolist()
    assert sse_of(w, p.decompress()) <= (optimum + np.sum(weights * (means.astype(np.float32) - means) ** 2)) * (1 + 1e-9)


@pytest.mark.parametrize("nbits", [2, 4, 6])
def test_fp32_binned_path_within_0p1_percent_of_optimum(monkeypatch, nbits):
    """Force the float16-bin DP + Lloyd path on a small input and compare with the exact DP."""
    rng = np.random.default_rng(nbits)
    w = (rng.standard_normal(100_000) * rng.choice([0.01, 0.1], 100_000)).astype(np.float32)
    optimum = dp_reference(w)(1 << nbits)[2]
    monkeypatch.setattr(palettization, "EXACT_LIMIT", 1000)
    sse = sse_of(w, wp.palettize(w, nbits=nbits).decompress())
    assert optimum * (1 - 1e-9) <= sse <= optimum * 1.001


def test_lloyd_never_increases_sse():
    rng = np.random.default_rng(3)
    x = np.unique(rng.standard_normal(2000))
    w = np.ones_like(x)
    starts = np.array([0, 100, 900, 1900])  # a poor start
    before = np.sum([np.sum((x[a:b] - x[a:b].mean()) ** 2) for a, b in zip(starts, [*starts[1:], x.size])])
    means = kmeans.lloyd(x, w, starts, 100)
    after = np.sum(np.min((x[:, None] - means[None, :]) ** 2, axis=1))
    assert after < before
    assert np.all(np.diff(means) > 0)


def test_import_weightpack_does_not_load_numba():
    code = (
        "import sys, time; t = time.perf_counter(); import weightpack as wp; t = time.perf_counter() - t\n"
        "import numpy as np; w = np.ones((4, 4), np.float32)\n"
        "wp.prune(w); wp.quantize(w); wp.palettize(w, mode='uniform')\n"
        "assert 'numba' not in sys.modules, 'numba was imported'\n"
        "print(t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 0.5
