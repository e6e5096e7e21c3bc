"""The error-feedback encoders against a slow, obviously correct OBS sweep; H = I against the data-free encoders."""
import numpy as np
import pytest

import weightpack as wp
from weightpack.calibration import ActivationStats, gptq_palettize, gptq_quantize, sparsegpt_prune, wanda_prune
from weightpack.calibration.hessian import inverse_cholesky

SEEDS = range(4)


def layer(seed, rows=8, cols=12, dtype=np.float32, samples=64):
    """A weight and the Gram matrix of correlated activations with one loud channel."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(dtype)
    x = rng.standard_normal((samples, cols)) @ rng.standard_normal((cols, cols))
    x[:, 3] *= 5
    return w, x.T @ x / samples


def damped(h, damp=0.01):
    return h + damp * np.mean(np.diag(h)) * np.eye(len(h))


def obs_reference(w, h, round_column, begin=None):
    """Round column j, then give the columns after it the OBS correction computed from the
    explicit inverse of H over the columns not yet rounded. ``begin(j, W)`` runs first."""
    W = w.astype(np.float64).copy()
    Q = np.zeros_like(W)
    for j in range(W.shape[1]):
        if begin is not None:
            begin(j, W)
        h_inv = np.linalg.inv(h[j:, j:])
        Q[:, j] = round_column(j, W[:, j])
        W[:, j + 1 :] -= np.outer((W[:, j] - Q[:, j]) / h_inv[0, 0], h_inv[0, 1:])
    return Q


def nearest(lut, values):
    return np.argmin(np.abs(values[:, None] - lut[None, :]), axis=1)  # first index on ties


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("sweep_block", [1, 5, 128])
def test_palettize_matches_reference(seed, sweep_block):
    w, h = layer(seed)
    p = gptq_palettize(w, h, nbits=2, act_order=False, refit=False, sweep_block=sweep_block)
    lut = p.lut.ravel().astype(np.float64)
    ref = obs_reference(w, damped(h), lambda j, col: lut[nearest(lut, col)])
    np.testing.assert_array_equal(p.decompress(), ref.astype(np.float32))


@pytest.mark.parametrize("seed", SEEDS)
def test_grouped_scaled_palettize_matches_reference(seed):
    w, h = layer(seed)
    t = gptq_palettize(w, h, nbits=2, group_size=4, per_row_scale=True, scale_method="max", act_order=False, refit=False,
                       sweep_block=5)
    luts = t.palettized.lut.reshape(2, 4).astype(np.float64)
    s = t.scale.ravel().astype(np.float64)
    lut_of_row = np.repeat([0, 1], 4)

    def round_column(j, col):
        v = col / s
        return np.array([luts[g][nearest(luts[g], v[r : r + 1])[0]] for r, g in enumerate(lut_of_row)]) * s

    ref = obs_reference(w, damped(h), round_column)
    np.testing.assert_allclose(t.decompress(), ref, rtol=1e-6)
    assert t.scale.ravel().tolist() == np.abs(w).max(axis=1).tolist()


@pytest.mark.parametrize("seed", SEEDS)
def test_act_order_matches_reference_in_permuted_order(seed):
    w, h = layer(seed)
    p = gptq_palettize(w, h, nbits=2, refit=False)  # act_order is the default
    order = np.argsort(-np.diag(h), kind="stable")
    lut = p.lut.ravel().astype(np.float64)
    ref = obs_reference(w[:, order], damped(h)[np.ix_(order, order)], lambda j, col: lut[nearest(lut, col)])
    out = np.empty_like(ref)
    out[:, order] = ref
    np.testing.assert_array_equal(p.decompress(), out.astype(np.float32))
    assert not np.array_equal(order, np.arange(12))  # the test does permute


@pytest.mark.parametrize("seed", SEEDS)
def test_quantize_per_channel_matches_reference(seed):
    w, h = layer(seed)
    q = gptq_quantize(w, h, "int4", mode="asymmetric", act_order=False)
    s = q.scale.astype(np.float64)[:, 0]
    o = q.offset.values().astype(np.float64)[:, 0]
    ref = obs_reference(w, damped(h), lambda j, col: s * (np.clip(np.round(col / s) + o, -8, 7) - o))
    np.testing.assert_allclose(q.decompress(), ref, rtol=1e-6)
    np.testing.assert_array_equal(q.scale, wp.quantize(w, "int4", mode="asymmetric").scale)  # static scales


@pytest.mark.parametrize("seed", SEEDS)
def test_quantize_per_block_scales_follow_the_corrected_weights(seed):
    w, h = layer(seed)
    q = gptq_quantize(w, h, "int4", granularity="per_block", block_size=4, act_order=False, sweep_block=4)
    scale = np.zeros((8, 3))

    def begin(j, W):  # the scale of block j // 4 from the current (error-corrected) values
        if j % 4 == 0:
            scale[:, j // 4] = (2 * np.abs(W[:, j : j + 4]).max(axis=1) / 14).astype(np.float32)

    def round_column(j, col):
        s = scale[:, j // 4]
        return s * np.clip(np.round(col / s), -7, 7)

    ref = obs_reference(w, damped(h), round_column, begin)
    np.testing.assert_array_equal(q.scale, scale.astype(np.float32))
    np.testing.assert_allclose(q.decompress(), ref, rtol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_sparsegpt_matches_reference(seed):
    w, h = layer(seed)
    hd = damped(h)
    s = sparsegpt_prune(w, h, 0.5, sweep_block=4)
    pruned = np.zeros(w.shape, bool)

    def begin(j, W):  # per block of 4 columns: the 16 smallest w^2 / [H_rest^-1]_00
        if j % 4 == 0:
            d = np.array([np.linalg.inv(hd[c:, c:])[0, 0] for c in range(j, j + 4)])
            score = (W[:, j : j + 4] ** 2 / d).ravel()
            pruned[:, j : j + 4] = np.isin(np.arange(32), np.argsort(score, kind="stable")[:16]).reshape(8, 4)

    ref = obs_reference(w, hd, lambda j, col: np.where(pruned[:, j], 0.0, col), begin)
    np.testing.assert_allclose(s.decompress(), ref, rtol=1e-6)
    assert s.sparsity == 0.5


@pytest.mark.parametrize("seed", SEEDS)
def test_sparsegpt_n_m_matches_reference(seed):
    w, h = layer(seed)
    hd = damped(h)
    s = sparsegpt_prune(w, h, n_m=(2, 4))
    pruned = np.zeros(w.shape, bool)

    def begin(j, W):  # per row, the 2 smallest scores of every run of 4, chosen at its first column
        if j % 4 == 0:
            d = np.array([np.linalg.inv(hd[c:, c:])[0, 0] for c in range(j, j + 4)])
            order = np.argsort(W[:, j : j + 4] ** 2 / d, axis=1, kind="stable")
            np.put_along_axis(pruned[:, j : j + 4], order[:, :2], True, axis=1)

    ref = obs_reference(w, hd, lambda j, col: np.where(pruned[:, j], 0.0, col), begin)
    np.testing.assert_allclose(s.decompress(), ref, rtol=1e-6)
    assert (s.mask.values().reshape(8, 3, 4).sum(axis=2) == 2).all()


def test_inverse_cholesky_is_the_upper_factor_of_the_inverse():
    _, h = layer(0)
    u, lam = inverse_cholesky(h)
    assert lam == pytest.approx(0.01 * np.mean(np.diag(h)))
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(damped(h)), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(u, np.triu(u))
    big = np.random.default_rng(1).standard_normal((300, 300))  # the recursive blocked path
    h = big @ big.T
    u, lam = inverse_cholesky(h)
    np.testing.assert_allclose(u.T @ u @ (h + lam * np.eye(300)), np.eye(300), atol=1e-8)


def test_stats_feed_the_encoders():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((8, 6)).astype(np.float32)
    s = ActivationStats(6).update(rng.standard_normal((50, 6)))
    assert gptq_palettize(w, s, nbits=2) == gptq_palettize(w, s.gram, nbits=2)
    assert wanda_prune(w, s) == wanda_prune(w, s.second_moments)
    with pytest.raises(wp.WeightpackError, match="count=0"):
        gptq_palettize(w, ActivationStats(6))
    with pytest.raises(wp.WeightpackError, match="in_features=6; the weight needs 3"):
        gptq_palettize(w[:, :3], s)


# --- H = identity: exactly the data-free encoders -------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("shape,nbits,group_size", [((8, 12), 2, None), ((8, 12), 3, 2), ((128, 160), 4, None), ((300, 256), 6, 100)])
@pytest.mark.parametrize("scale_h", [1.0, 3.7])
def test_identity_palettize_is_data_free(dtype, shape, nbits, group_size, scale_h):
    w = (np.random.default_rng(5).standard_t(4, shape) * 0.1).astype(dtype)
    h = scale_h * np.eye(shape[1])
    for act_order in (False, True):
        got = gptq_palettize(w, h, nbits=nbits, group_size=group_size, act_order=act_order, sweep_block=64)
        assert got == wp.palettize(w, nbits=nbits, group_size=group_size)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("qtype", ["int8", "uint8", "int4", "uint4"])
@pytest.mark.parametrize("mode", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("granularity,block_size", [("per_tensor", None), ("per_channel", None), ("per_block", 4), ("per_block", 32)])
def test_identity_quantize_is_data_free(dtype, qtype, mode, granularity, block_size):
    w = (np.random.default_rng(6).standard_t(4, (16, 64)) * 0.1).astype(dtype)
    w[3] = 0  # an all-zero row
    h = np.eye(64)
    got = gptq_quantize(w, h, qtype, mode=mode, granularity=granularity, block_size=block_size, sweep_block=24)
    assert got == wp.quantize(w, qtype, mode=mode, granularity=granularity, block_size=block_size)


def test_identity_quantize_conv_layout():
    w = np.random.default_rng(7).standard_normal((8, 6, 3, 3)).astype(np.float32)
    got = gptq_quantize(w, np.eye(54), "int4", granularity="per_block", block_size=2)
    assert got == wp.quantize(w, "int4", granularity="per_block", block_size=2)
    assert gptq_palettize(w, np.eye(54), nbits=3, group_size=4) == wp.palettize(w, nbits=3, group_size=4)


# --- damping --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,h",
    [
        ("zero", np.zeros((12, 12))),
        ("rank one", np.outer(np.arange(12.0), np.arange(12.0))),
        ("dead channels", np.diag([0.0] * 6 + [1.0] * 6)),
        ("indefinite", np.ones((12, 12)) * 2 - np.eye(12)),
        ("huge range", np.diag(10.0 ** np.arange(-150, 150, 25))),
    ],
)
def test_singular_or_ill_conditioned_h_gives_finite_results(name, h):
    w, _ = layer(0)
    for t in (
        gptq_palettize(w, h, nbits=2),
        gptq_palettize(w, h, nbits=2, per_row_scale=True, act_order=True),
        gptq_quantize(w, h, "int4", granularity="per_block", block_size=4),
        gptq_quantize(w, h, "int8", scale_method="mse"),
        sparsegpt_prune(w, h, 0.5),
        sparsegpt_prune(w, h, n_m=(1, 4)),
    ):
        assert np.isfinite(t.decompress()).all(), name


def test_zero_h_is_data_free():
    w, _ = layer(0)
    assert gptq_palettize(w, np.zeros((12, 12)), nbits=2) == wp.palettize(w, nbits=2)


@pytest.mark.parametrize("n", [1, 128, 129, 300, 700])
def test_recursive_cholesky_inverse(n):
    from weightpack.calibration.hessian import cholesky_inverse

    a = np.random.default_rng(n).standard_normal((n, n + 5))
    a = a @ a.T
    inverse, pivot = cholesky_inverse(a)
    np.testing.assert_array_equal(inverse, np.tril(inverse))
    np.testing.assert_allclose(inverse @ a @ inverse.T, np.eye(n), atol=1e-9)
    assert pivot == pytest.approx(np.diagonal(np.linalg.cholesky(a)).min())


def test_float32_factorisation_and_its_float64_fallback():
    rng = np.random.default_rng(8)
    a = rng.standard_normal((64, 64))
    h = a @ a.T / 64
    u32, lam32 = inverse_cholesky(h, dtype=np.float32)
    u64, lam64 = inverse_cholesky(h)
    assert u32.dtype == np.float32 and lam32 == lam64
    np.testing.assert_allclose(u32, u64, rtol=0, atol=1e-4 * np.abs(u64).max())
    b = rng.standard_normal((64, 8)) * 1e3  # rank 8: float32 rounding swamps a 1e-9 damping
    u, lam = inverse_cholesky(b @ b.T, damp=1e-9, dtype=np.float32)
    assert u.dtype == np.float64 and lam == pytest.approx(1e-9 * np.mean(np.diag(b @ b.T)))


def test_wide_layers_use_float32_and_stay_exact_for_identity():
    w = np.random.default_rng(9).standard_normal((4, 1100)).astype(np.float16)
    assert gptq_palettize(w, np.eye(1100), nbits=3) == wp.palettize(w, nbits=3)
    assert gptq_quantize(w, 2 * np.eye(1100), "int4") == wp.quantize(w, "int4")


def test_damping_escalates_until_the_factorisation_succeeds():
    h = np.ones((12, 12)) * 2 - np.eye(12)  # eigenvalues 23 and -1: needs lambda > 1
    u, lam = inverse_cholesky(h)
    assert lam == pytest.approx(0.01 * 1000)
    assert np.isfinite(u).all()


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "h,message",
    [
        (np.eye(11), r"shape \(11, 11\).*\(12, 12\)"),
        (np.eye(12)[:, :6], r"shape \(12, 6\)"),
        (np.triu(np.ones((12, 12))), "not symmetric: H\\[0, 1\\]"),
        (np.where(np.eye(12) > 0, np.nan, 0.0), "NaN or infinity"),
        (-np.eye(12), r"H\[0, 0\]=-1 is negative"),
        (np.eye(12).astype(complex), "dtype complex"),
    ],
)
def test_bad_h_is_refused(h, message):
    w, _ = layer(0)
    for f in (gptq_palettize, gptq_quantize, sparsegpt_prune):
        with pytest.raises(wp.WeightpackError, match=message):
            f(w, h)


def test_bad_arguments_are_refused():
    w, h = layer(0)
    cases = [
        (lambda: gptq_palettize(w, h, nbits=5), "nbits"),
        (lambda: gptq_palettize(w, h, group_size=3), "group_size=3 does not divide w.shape\\[0\\]=8"),
        (lambda: gptq_palettize(w, h, damp=0), "damp=0 must be a positive"),
        (lambda: gptq_palettize(w, h, sweep_block=0), "sweep_block=0"),
        (lambda: gptq_palettize(w[0], h), "rank >= 2"),
        (lambda: gptq_palettize(np.where(w > 1, np.inf, w), h), "NaN or infinity"),
        (lambda: gptq_quantize(w, h, "int3"), "dtype='int3' is unknown"),
        (lambda: gptq_quantize(w, h, granularity="per_block"), "needs block_size"),
        (lambda: gptq_quantize(w, h, granularity="per_block", block_size=5), "block_size=5 does not divide"),
        (lambda: gptq_quantize(w, h, scale_method="best"), "scale_method='best' is unknown"),
        (lambda: sparsegpt_prune(w, h, 0.5, n_m=(2, 4)), "not both"),
        (lambda: sparsegpt_prune(w, h, n_m=(4, 4)), "0 < n < m"),
        (lambda: sparsegpt_prune(w, h, n_m=(2, 5)), "m=5 does not divide the 12"),
        (lambda: sparsegpt_prune(w, h, n_m=(2, 4), act_order=True), "act_order"),
        (lambda: sparsegpt_prune(w, h, 1.5), "outside \\[0, 1\\]"),
    ]
    for call, message in cases:
        with pytest.raises(wp.WeightpackError, match=message):
            call()


def test_inputs_are_not_modified():
    w, h = layer(0)
    w0, h0 = w.copy(), h.copy()
    gptq_palettize(w, h, per_row_scale=True, act_order=True)
    gptq_quantize(w, h, "int4", granularity="per_block", block_size=4, scale_method="mse")
    sparsegpt_prune(w, h)
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(h, h0)
