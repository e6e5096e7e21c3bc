"""Importance-weighted LUTs: optimal on the exact paths, near-optimal when binned, independent of chunking."""
import numpy as np
import pytest

from weightpack.calibration import lut
from weightpack.compress import kmeans


def exact(values, cw, rs, k):
    """The weighted optimum of values / rs by the DP over every distinct value (no histogram, no bins)."""
    x = (values.astype(np.float64) / rs[:, None]).ravel()
    w = np.outer(rs**2, cw).ravel()
    order = np.argsort(x, kind="stable")
    x, w = x[order], w[order]
    starts = np.flatnonzero(np.r_[True, x[1:] != x[:-1]])
    return kmeans.optimal_kmeans_1d(x[starts], np.add.reduceat(w, starts), k)


def weighted_sse(values, cw, rs, table):
    v = values.astype(np.float64) / rs[:, None]
    entries = table.astype(np.float64)
    nearest = entries[np.argmin(np.abs(v[..., None] - entries), axis=-1)]
    return float(np.sum(np.outer(rs**2, cw) * (v - nearest) ** 2))


@pytest.mark.parametrize(
    "dtype,shape,scaled",
    [(np.float16, (40, 30), False), (np.float16, (200, 100), False), (np.float32, (40, 30), False), (np.float16, (40, 30), True)],
)
def test_exact_paths_give_the_optimal_lut(dtype, shape, scaled):
    rng = np.random.default_rng(0)
    values = rng.standard_t(4, shape).astype(dtype)
    values[0, :3] = [0.0, -0.0, 0.0]
    cw = rng.uniform(0.1, 3, shape[1])
    rs = rng.uniform(0.5, 2, shape[0]) if scaled else np.ones(shape[0])
    best = exact(values, cw, rs, 8)
    got = lut.fit_lut(values, cw, rs if scaled else None, 3, dtype)
    np.testing.assert_array_equal(got, best.centroids.astype(dtype))


@pytest.mark.parametrize("scaled", [False, True])
def test_binned_path_is_near_optimal(scaled):
    rng = np.random.default_rng(1)
    values = rng.standard_normal((300, 256)).astype(np.float32)  # > 65,536 distinct values
    cw = rng.uniform(0.1, 3, 256)
    rs = rng.uniform(0.5, 2, 300) if scaled else np.ones(300)
    best = exact(values, cw, rs, 16)
    got = lut.fit_lut(values, cw, rs if scaled else None, 4, np.float32)
    assert weighted_sse(values, cw, rs, got) <= best.sse * (1 + 1e-3)


@pytest.mark.parametrize("dtype,scaled", [(np.float16, False), (np.float32, False), (np.float16, True)])
def test_chunking_does_not_change_the_histogram(dtype, scaled, monkeypatch):
    rng = np.random.default_rng(2)
    values = rng.standard_normal((300, 256)).astype(dtype)
    cw = rng.uniform(0.1, 3, 256)
    rs = rng.uniform(0.5, 2, 300) if scaled else None
    x, w = lut.weighted_values(values, cw, rs)
    monkeypatch.setattr(lut, "CHUNK", 1000)
    x2, w2 = lut.weighted_values(values, cw, rs)
    np.testing.assert_allclose(x2, x, rtol=1e-12)
    np.testing.assert_allclose(w2, w, rtol=1e-12)
    assert w.sum() == pytest.approx((300 if rs is None else np.sum(rs**2)) * cw.sum())
