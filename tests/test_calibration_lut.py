"""Importance-weighted LUTs: optimal on the exact paths, near-optimal when binned, independent of chunking."""
import numpy as np
import pytest

from weightpack.calibration import lut
from weightpack.compress import kmeans


def exact(values, cw, rw, k):
    """The weighted optimum by the DP over every distinct value (no histogram, no bins)."""
    x = values.astype(np.float64).ravel()
    w = np.outer(rw, cw).ravel()
    order = np.argsort(x, kind="stable")
    x, w = x[order], w[order]
    starts = np.flatnonzero(np.r_[True, x[1:] != x[:-1]])
    return kmeans.optimal_kmeans_1d(x[starts], np.add.reduceat(w, starts), k)


def weighted_sse(values, cw, rw, table):
    v = values.astype(np.float64)
    entries = table.astype(np.float64)
    nearest = entries[np.argmin(np.abs(v[..., None] - entries), axis=-1)]
    return float(np.sum(np.outer(rw, cw) * (v - nearest) ** 2))


@pytest.mark.parametrize("dtype,shape", [(np.float16, (40, 30)), (np.float16, (200, 100)), (np.float32, (40, 30))])
def test_exact_paths_give_the_optimal_lut(dtype, shape):
    rng = np.random.default_rng(0)
    values = rng.standard_t(4, shape).astype(dtype)
    values[0, :3] = [0.0, -0.0, 0.0]
    cw, rw = rng.uniform(0.1, 3, shape[1]), rng.uniform(0.5, 2, shape[0])
    best = exact(values, cw, rw, 8)
    got = lut.fit_lut(values, cw, rw, 3, dtype)
    np.testing.assert_array_equal(got, best.centroids.astype(dtype))


def test_binned_path_is_near_optimal():
    rng = np.random.default_rng(1)
    values = (rng.standard_normal((300, 256)) / rng.uniform(1, 3, (300, 1))).astype(np.float64)  # > 65,536 distinct
    cw, rw = rng.uniform(0.1, 3, 256), rng.uniform(0.5, 2, 300)
    best = exact(values, cw, rw, 16)
    got = lut.fit_lut(values, cw, rw, 4, np.float32)
    assert weighted_sse(values, cw, rw, got) <= best.sse * (1 + 1e-3)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_chunking_does_not_change_the_histogram(dtype, monkeypatch):
    rng = np.random.default_rng(2)
    values = rng.standard_normal((300, 256)).astype(dtype)
    cw = rng.uniform(0.1, 3, 256)
    x, w = lut.weighted_values(values, cw)
    monkeypatch.setattr(lut, "CHUNK", 1000)
    x2, w2 = lut.weighted_values(values, cw)
    np.testing.assert_allclose(x2, x, rtol=1e-12)
    np.testing.assert_allclose(w2, w, rtol=1e-12)
    assert w.sum() == pytest.approx(300 * cw.sum())
