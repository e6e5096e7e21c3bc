"""Wanda against a brute-force per-row selection; exact pruning counts of both calibrated pruners."""
import numpy as np
import pytest

import weightpack as wp
from weightpack.calibration import sparsegpt_prune, wanda_prune


def test_wanda_prunes_the_smallest_scores_of_each_row():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 20)).astype(np.float16)
    m2 = rng.uniform(0, 4, 20)
    s = wanda_prune(w, m2, 0.4)
    score = np.abs(w.astype(np.float64)) * np.sqrt(m2)
    for r in range(6):
        pruned = np.argsort(score[r], kind="stable")[:8]
        expect = w[r].copy()
        expect[pruned] = 0
        np.testing.assert_array_equal(s.decompress()[r], expect)


def test_wanda_n_m():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 16)).astype(np.float32)
    s = wanda_prune(w, rng.uniform(0.5, 2, 16), n_m=(2, 4))
    assert (s.mask.values().reshape(4, 4, 4).sum(axis=2) == 2).all()
    kept = s.decompress() != 0
    np.testing.assert_array_equal(s.decompress()[kept], w[kept])  # kept weights unchanged


def test_wanda_with_uniform_moments_is_per_row_magnitude():
    w = np.random.default_rng(2).standard_normal((5, 10)).astype(np.float32)
    s = wanda_prune(w, np.ones(10), 0.3)
    for row in s.decompress():
        assert np.count_nonzero(row) == 7


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.37, 0.5, 0.75, 1.0])
def test_exact_counts(sparsity):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((7, 30)).astype(np.float32)
    x = rng.standard_normal((100, 30))
    k = round(sparsity * w.size)
    assert w.size - wanda_prune(w, np.mean(x**2, axis=0), sparsity).nonzero_data.size == k
    for block in (4, 7, 128):
        assert w.size - sparsegpt_prune(w, x.T @ x / 100, sparsity, sweep_block=block).nonzero_data.size == k


def test_zeros_are_never_stored():
    w = np.zeros((4, 8), np.float32)
    w[:, :3] = 1
    for s in (wanda_prune(w, np.ones(8), 0.25), sparsegpt_prune(w, np.eye(8), 0.25)):
        assert s.nonzero_data.size == 12 and (s.nonzero_data != 0).all()


def test_sparsegpt_beats_magnitude_on_correlated_inputs():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((32, 64)).astype(np.float32)
    basis, _ = np.linalg.qr(rng.standard_normal((64, 64)))
    spectrum = np.arange(1, 65) ** -0.6  # a decaying spectrum, as in transformer activations

    def draw(n):
        return (rng.standard_normal((n, 64)) * spectrum) @ basis.T

    h = (lambda x: x.T @ x / len(x))(draw(4096))
    x = draw(4096)  # held out
    y = x @ w.T
    snr = {
        "magnitude": wp.snr_db(y, x @ wp.prune(w, 0.5).decompress().T),
        "wanda": wp.snr_db(y, x @ wanda_prune(w, np.diag(h), 0.5).decompress().T),
        "sparsegpt": wp.snr_db(y, x @ sparsegpt_prune(w, h, 0.5).decompress().T),
    }
    assert snr["sparsegpt"] > snr["wanda"] > snr["magnitude"]
    assert snr["sparsegpt"] > snr["magnitude"] + 3


def test_bad_moments_are_refused():
    w = np.ones((2, 4), np.float32)
    with pytest.raises(wp.WeightpackError, match=r"second_moments has shape \(3,\)"):
        wanda_prune(w, np.ones(3))
    with pytest.raises(wp.WeightpackError, match="non-negative"):
        wanda_prune(w, -np.ones(4))
    with pytest.raises(wp.WeightpackError, match="n_m=\\(2, 3\\): m=3 does not divide"):
        wanda_prune(w, np.ones(4), n_m=(2, 3))


def _output_error(w, w_hat, h):
    e = (w - w_hat).astype(np.float64)
    return float(np.einsum("ij,ij->", e @ h, e))


def test_refit_kept_is_the_exact_least_squares_solution_per_row():
    from weightpack.calibration.prune import refit_kept

    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 12)) @ rng.standard_normal((12, 12))
    h = x.T @ x / 200
    w = rng.standard_normal((5, 12))
    keep = rng.random((5, 12)) < 0.5
    got = refit_kept(w, keep, h)
    for r in range(5):
        s, p = keep[r], ~keep[r]
        exact = w[r, s] + np.linalg.solve(h[np.ix_(s, s)], h[np.ix_(s, p)] @ w[r, p])
        np.testing.assert_allclose(got[r, s], exact, rtol=1e-7, atol=1e-9)
        assert np.all(got[r, p] == 0)


@pytest.mark.parametrize("target", [{"sparsity": 0.5}, {"n_m": (2, 4)}])
def test_sparsegpt_refit_lowers_the_output_error_and_keeps_the_counts(target):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((400, 32)) @ rng.standard_normal((32, 32))
    h = x.T @ x / 400
    w = rng.standard_normal((16, 32)).astype(np.float32)
    plain = sparsegpt_prune(w, h, **target)
    refit = sparsegpt_prune(w, h, **target, refit=True)
    assert refit.nonzero_data.size == plain.nonzero_data.size == w.size // 2
    assert _output_error(w, refit.decompress(), h) < 0.8 * _output_error(w, plain.decompress(), h)
    if "n_m" in target:
        assert np.all(refit.mask.values().reshape(16, 8, 4).sum(axis=2) == 2)
    with pytest.raises(wp.WeightpackError, match="refit"):
        sparsegpt_prune(w, h, 0.5, refit="yes")
