"""The exact 1-D k-means DP: optimality against brute force, the SSE curve, fp16/fp32 LUT fitting."""
import itertools
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import weightpack as wp
from weightpack.compress import kmeans
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


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.sampled_from([2, 3, 5, 16, 17, 64, 256]), m=st.integers(1, 4000),
       dist=st.sampled_from(["normal", "laplace", "integers", "clumps"]))
def test_one_layer_penalized_dp_finds_the_k_layer_optimum(seed, k, m, dist):
    """solve_k (Lagrangian penalty, one DP layer, galloping deque) against the k-layer DP."""
    rng = np.random.default_rng(seed)
    raw = {"normal": rng.standard_normal(m), "laplace": rng.laplace(size=m), "integers": rng.integers(0, 50, m) * 1.0,
           "clumps": rng.choice([0.0, 1.0, 5.0], m) + rng.standard_normal(m) * 1e-3}[dist]
    x = np.unique(raw)
    w = rng.integers(1, 20, x.size).astype(np.float64)
    starts, sse = kmeans.solve(x, w, k)
    fast = kmeans.solve_k(x, w, k)
    assert fast.size == starts.size

    def cost(s):
        ends = np.append(s[1:], x.size)
        return sum(np.sum(w[a:b] * (x[a:b] - np.average(x[a:b], weights=w[a:b])) ** 2) for a, b in zip(s, ends))

    assert cost(fast) == pytest.approx(cost(starts), rel=1e-9, abs=1e-12)


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


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), nbits=st.sampled_from([1, 2, 3, 4, 6]), dtype=st.sampled_from([np.float16, np.float32]),
       n=st.sampled_from([500, 12_000]))
def test_never_worse_than_coremltools_kmeans(seed, nbits, dtype, n):
    """coremltools: exact (kmeans1d) for fp16 groups of >= 10,000, scikit-learn otherwise."""
    from coremltools.models.neural_network.quantization_utils import _get_kmeans_lookup_table_and_weight

    rng = np.random.default_rng(seed)
    w = (rng.laplace(size=n) * 0.02).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lut, labels = _get_kmeans_lookup_table_and_weight(nbits, w)
    theirs = sse_of(w, lut.astype(dtype)[labels])
    ours = sse_of(w, wp.palettize(w, nbits=nbits).decompress())
    assert ours <= theirs * (1 + 1e-12)


def test_fp32_exact_when_few_distinct_values():
    rng = np.random.default_rng(1)
    w = rng.choice(rng.standard_normal(5000), size=30000).astype(np.float32)
    p = wp.palettize(w, nbits=4)
    means, weights, optimum = dp_reference(w)(16)
    assert p.lut.ravel().tolist() == means.astype(np.float32).tolist()
    assert sse_of(w, p.decompress()) <= (optimum + np.sum(weights * (means.astype(np.float32) - means) ** 2)) * (1 + 1e-9)


@pytest.mark.parametrize("nbits, closeness", [(2, 1e-6), (4, 1e-6), (6, 5e-6), (8, 1e-4)])
def test_fp32_binned_path_close_to_the_optimum(nbits, closeness):
    """Above 8,192 elements float32 takes the binned DP + Lloyd path; the exact DP on every distinct
    value is the reference (measured: 7e-8, 4e-8, 1.6e-6, 2e-5 above it)."""
    rng = np.random.default_rng(nbits)
    w = (rng.standard_normal(60_000) * rng.choice([0.01, 0.1], 60_000)).astype(np.float32)
    optimum = dp_reference(w)(1 << nbits)[2]
    stored = sse_of(w, wp.palettize(w, nbits=nbits).decompress())
    assert optimum * (1 - 1e-9) <= stored <= optimum * (1 + closeness)


def test_fp32_large_tensor_with_few_values_is_exact():
    """Bins holding a single value make the binned DP exact."""
    rng = np.random.default_rng(2)
    w = rng.choice(rng.standard_normal(3000).astype(np.float32), size=50_000)
    means, weights, optimum = dp_reference(w)(16)
    assert wp.palettize(w, nbits=4).lut.ravel().tolist() == means.astype(np.float32).tolist()


def test_rd_curve_is_the_optimum_for_every_size():
    w = (np.random.default_rng(5).laplace(size=(64, 300)) * 0.03).astype(np.float16)
    curve = wp.palettize_rd_curve(w, max_nbits=4)
    solve = dp_reference(w)
    for c in range(1, 17):
        assert curve.sse[0, c - 1] == pytest.approx(solve(c)[2], rel=1e-9)
    assert curve.energy[0] == pytest.approx(np.sum(w.astype(np.float64) ** 2))
    snr = curve.table()
    assert list(snr) == [1, 2, 3, 4] and all(a < b for a, b in zip(list(snr.values()), list(snr.values())[1:]))
    p = wp.palettize(w, nbits=3)
    assert sse_of(w, p.decompress()) >= curve.sse_at(3) * (1 - 1e-9)


def test_rd_curve_per_group_and_with_per_channel_scale():
    w = (np.random.default_rng(6).standard_normal((32, 40)) * 0.1).astype(np.float16)
    curve = wp.palettize_rd_curve(w, max_nbits=2, group_size=8)
    assert curve.sse.shape == (4, 4) and curve.energy.shape == (4,)
    for g in range(4):
        alone = wp.palettize_rd_curve(w[8 * g: 8 * g + 8], max_nbits=2)
        np.testing.assert_allclose(curve.sse[g], alone.sse[0], rtol=1e-12)
    scaled = wp.palettize_rd_curve(w, max_nbits=2, per_channel_scale=True)
    t = wp.palettize(w, nbits=2, per_channel_scale=True)
    assert sse_of(w, t.decompress()) == pytest.approx(scaled.sse_at(2), rel=0.05)


def brute_force_weighted(x, w, k):
    """Least sum w (x - c)**2 over every assignment of the (few) values to k centroids."""
    order = np.argsort(x, kind="stable")
    xs, ws = x[order].astype(np.float64), w[order].astype(np.float64)
    return brute_force_sse(xs, ws, k) if np.unique(xs).size > k else 0.0


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 9), nbits=st.sampled_from([1, 2]))
def test_importance_weighted_kmeans_is_optimal_on_small_inputs(seed, n, nbits):
    rng = np.random.default_rng(seed)
    w = np.unique(rng.integers(-40, 40, n).astype(np.float16) / np.float16(8))
    imp = rng.random(w.size).astype(np.float32) + 0.01
    k = 1 << nbits
    p = wp.palettize(w, nbits=nbits, importance=imp)
    ours = sse_of_weighted(w, p.decompress(), imp)
    exact = brute_force_sse(w.astype(np.float64), imp.astype(np.float64), min(k, w.size)) if w.size > k else 0.0
    rounding = 2 * np.sum(imp) * (np.spacing(np.float16(np.abs(w).max())) ** 2)
    assert ours <= exact * (1 + 1e-6) + rounding


def sse_of_weighted(values, approx, weights):
    d = np.asarray(values, np.float64) - np.asarray(approx, np.float64)
    return float(np.sum(weights * d * d))


def test_importance_histogram_is_exact_for_fp16():
    """Weighted k-means on 50k fp16 values equals the DP on their importance-weighted histogram."""
    rng = np.random.default_rng(9)
    w = (rng.standard_normal((100, 500)) * 0.05).astype(np.float16)
    imp = (rng.random((100, 500)) ** 3).astype(np.float32)
    x = w.astype(np.float64).ravel() + 0.0
    values, inverse = np.unique(x, return_inverse=True)
    weights = np.bincount(inverse.ravel(), weights=imp.ravel().astype(np.float64))
    keep = weights > 0
    starts, sse = kmeans.solve(values[keep], weights[keep], 16)
    means = kmeans.cluster_means(values[keep], weights[keep], starts)
    p = wp.palettize(w, nbits=4, importance=imp)
    np.testing.assert_array_equal(p.lut.ravel(), means.astype(np.float16))
    rd = wp.palettize_rd_curve(w, max_nbits=4, importance=imp)
    assert rd.sse_at(4) == pytest.approx(sse[-1], rel=1e-9)


def test_same_bytes_whatever_the_thread_count(monkeypatch):
    from weightpack.compress import _threads

    w = (np.random.default_rng(3).standard_t(4, (64, 2048)) * 0.02).astype(np.float32)
    runs = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(_threads, "thread_count", lambda t=threads: t)
        runs.append([wp.palettize(w, 4), wp.palettize(w, 3, group_size=8), wp.palettize(w.astype(np.float16), 4,
                     importance=np.abs(w[:1]) + 1), wp.prune(w, 0.6), wp.prune(w, 0.3, importance=np.abs(w[:1])),
                     wp.quantize(w, "int4", granularity="per_block", block_size=32, clip_search=True, refit=True),
                     wp.palettize(w[:16], 4, cluster_dim=2)])
    assert runs[0] == runs[1] == runs[2]


def test_import_weightpack_does_not_load_numba():
    """numba loads with the first compiled kernel: never at import, nor for small prunes and quantizations."""
    code = (
        "import sys, time; t = time.perf_counter(); import weightpack as wp; t = time.perf_counter() - t\n"
        "import numpy as np; w = np.ones((4, 4), np.float32)\n"
        "wp.prune(w); wp.quantize(w); wp.compress.CompressionConfig(prune={})\n"
        "assert 'numba' not in sys.modules, 'numba was imported'\n"
        "print(t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 0.5
