"""Magnitude pruning: exact count, tie order, zeros, edge sparsities, bad input."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import weightpack as wp
from compress_oracle import student_rows


def reference_keep(w, k):
    """Stable sort of |w|: the first k are pruned; zeros are never kept."""
    flat = w.reshape(-1)
    keep = np.ones(flat.size, bool)
    keep[np.argsort(np.abs(flat), kind="stable")[:k]] = False
    return (keep & (flat != 0)).reshape(w.shape)


# small integer-valued floats: many ties and zeros
tied_weights = hnp.arrays(
    st.sampled_from([np.float16, np.float32]),
    hnp.array_shapes(min_dims=1, max_dims=3, max_side=7),
    elements=st.integers(-4, 4).map(float),
)


@given(w=tied_weights, sparsity=st.floats(0, 1))
def test_exact_count_and_tie_order(w, sparsity):
    k = round(sparsity * w.size)
    s = wp.prune(w, sparsity)
    keep = s.mask.values().astype(bool)
    np.testing.assert_array_equal(keep, reference_keep(w, k))
    assert s.nonzero_data.dtype == w.dtype
    assert np.count_nonzero(~keep) == max(k, np.count_nonzero(w == 0))
    np.testing.assert_array_equal(s.decompress(), np.where(keep, w, 0))


def test_ties_prune_lower_flat_index_first():
    w = np.array([[3.0, -1.0, 2.0], [1.0, -1.0, 5.0]], np.float32)
    s = wp.prune(w, sparsity=2 / 6)  # k = 2 of the three |w| = 1
    assert s.decompress().tolist() == [[3.0, 0.0, 2.0], [0.0, -1.0, 5.0]]


def test_k_rounds_half_to_even():
    w = np.arange(1, 6, dtype=np.float32)  # N = 5
    assert wp.prune(w, 0.5).nonzero_data.tolist() == [3.0, 4.0, 5.0]  # 2.5 -> 2
    w = np.arange(1, 8, dtype=np.float32)  # N = 7
    assert wp.prune(w, 0.5).nonzero_data.tolist() == [5.0, 6.0, 7.0]  # 3.5 -> 4


def test_zeros_are_never_stored_and_can_exceed_the_target():
    w = np.array([0.0, -0.0, 0.0, 1.0, -2.0, 3.0], np.float16)
    s = wp.prune(w, sparsity=1 / 6)
    assert s.nonzero_data.tolist() == [1.0, -2.0, 3.0]
    assert s.sparsity == 0.5


def test_sparsity_zero_and_one():
    w = np.array([[0.5, 0.0], [-0.25, 2.0]], np.float32)
    assert wp.prune(w, 0).nonzero_data.tolist() == [0.5, -0.25, 2.0]
    full = wp.prune(w, 1.0)
    assert full.nonzero_data.size == 0 and full.sparsity == 1.0
    assert full.decompress().tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_float64_is_cast_to_float32_and_input_is_untouched():
    w = np.random.default_rng(0).standard_normal((8, 8))
    before = w.copy()
    w.flags.writeable = False
    s = wp.prune(w, 0.75)
    assert s.dtype == np.float32 and s.nonzero_data.size == 16
    np.testing.assert_array_equal(w, before)


def test_large_fp16_prunes_exactly():
    w = np.random.default_rng(1).standard_normal((256, 300)).astype(np.float16)  # many fp16 ties
    for sparsity in (0.1, 0.5, 0.75, 0.9):
        s = wp.prune(w, sparsity)
        assert np.count_nonzero(~s.mask.values().astype(bool)) == round(sparsity * w.size)
        np.testing.assert_array_equal(s.mask.values().astype(bool), reference_keep(w, round(sparsity * w.size)))


def test_round_trips_through_the_format(backend):
    w = np.random.default_rng(2).standard_normal((16, 24)).astype(np.float32)
    s = wp.prune(w, 0.5)
    again = wp.SparseTensor(s.mask, s.nonzero_data)
    assert again == s
    np.testing.assert_array_equal(again.decompress(backend=backend), s.decompress(backend="numpy"))
    kept = s.mask.values().astype(bool)
    assert wp.snr_db(w[kept], s.decompress()[kept]) == float("inf")


@pytest.mark.parametrize(
    "w, sparsity, message",
    [
        (np.ones(4, np.float32), 1.5, r"sparsity=1\.5 is outside \[0, 1\]"),
        (np.ones(4, np.float32), -0.1, r"sparsity=-0\.1 is outside"),
        (np.ones(4, np.float32), float("nan"), "sparsity=nan"),
        (np.ones(4, np.float32), "0.5", "sparsity='0.5' must be a number"),
        (np.ones(4, np.float32), True, "sparsity=True must be a number"),
        (np.ones(4, np.int32), 0.5, "w has dtype int32; allowed: float16, float32"),
        (np.array([1.0, np.inf], np.float32), 0.5, "w contains NaN or infinity"),
        (np.zeros((0, 3), np.float32), 0.5, r"w has shape \(0, 3\)"),
        (np.float32(1.0), 0.5, r"w has shape \(\)"),
    ],
)
def test_bad_input(w, sparsity, message):
    with pytest.raises(wp.WeightpackError, match=message):
        wp.prune(w, sparsity)


def test_sparse_input_is_refused():
    s = wp.prune(np.ones(4, np.float32), 0.5)
    with pytest.raises(wp.WeightpackError, match="already a SparseTensor"):
        wp.prune(s, 0.5)


# ----------------------------------------------------------- the compiled path and other criteria


def _coremltools_prune():
    from coremltools.optimize.coreml._quantization_passes import prune_weights

    return prune_weights


def _dense(params):
    """coremltools' SparseParamsIos16 as a dense array."""
    keep = np.unpackbits(params.mask, bitorder="little")[: int(np.prod(params.shape))].astype(bool)
    out = np.zeros(keep.size, params.nonzero_data.dtype)
    out[keep] = params.nonzero_data
    return out.reshape(params.shape)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.75, 1.0])
def test_compiled_selection_equals_the_reference(dtype, sparsity, monkeypatch):
    from weightpack.compress import pruning

    w = student_rows((300, 400), seed=1, dtype=dtype)
    w[3, :50] = 0
    w[7, :] = w[7, 0]  # a run of ties
    fast = wp.prune(w, sparsity)
    monkeypatch.setattr(pruning, "REFERENCE_MAX", 10**9)
    reference = wp.prune(w, sparsity)
    assert fast == reference
    imp = np.random.default_rng(0).random((1, 400)).astype(np.float32)
    monkeypatch.setattr(pruning, "REFERENCE_MAX", 0)
    fast = wp.prune(w, sparsity, importance=imp)
    monkeypatch.setattr(pruning, "REFERENCE_MAX", 10**9)
    assert fast == wp.prune(w, sparsity, importance=imp)


def test_threshold_matches_coremltools():
    w = student_rows((32, 64), seed=3, dtype=np.float32)
    t = float(np.quantile(np.abs(w), 0.4))
    ours = wp.prune(w, threshold=t)
    theirs = _coremltools_prune().compress_by_threshold(w, t, 0.0)
    np.testing.assert_array_equal(ours.decompress(), _dense(theirs))
    assert wp.prune(w, threshold=0).sparsity == 0


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (3, 8), (4, 4)])
def test_n_m_matches_coremltools(n, m, dim):
    rng = np.random.default_rng(n + m)
    w = ((rng.permutation(48 * 40) + 1) * rng.choice([-1, 1], 48 * 40)).astype(np.float32).reshape(48, 40)  # distinct |w|
    ours = wp.prune(w, n_m_ratio=(n, m), dim=dim)
    theirs = _coremltools_prune().compress_by_nm_sparsity(w, (n, m), dim)
    np.testing.assert_array_equal(ours.decompress(), _dense(theirs))


def test_n_m_last_short_run_counts_the_padding():
    w = np.arange(1, 11, dtype=np.float32).reshape(1, 10)  # runs of 4: [1..4], [5..8], [9, 10]
    s = wp.prune(w, n_m_ratio=(3, 4))
    assert s.decompress().tolist() == [[0, 0, 0, 4, 0, 0, 0, 8, 0, 10]]  # last run: 3 - 2 padded = 1 pruned


def test_n_m_ties_go_to_the_lower_index():
    w = np.array([[1.0, -1.0, 1.0, 2.0]], np.float32)
    assert wp.prune(w, n_m_ratio=(2, 4)).decompress().tolist() == [[0.0, 0.0, 1.0, 2.0]]


@pytest.mark.parametrize("dim", [0, 1])
def test_blocks_follow_the_rule(dim):
    rng = np.random.default_rng(dim)
    w = rng.standard_normal((10, 12)).astype(np.float32)
    s = wp.prune(w, 0.5, block_size=4, dim=dim)
    moved = np.moveaxis(w.astype(np.float64), dim, 0)
    blocks = [moved[i:i + 4] for i in range(0, moved.shape[0], 4)]
    norms = np.stack([np.sqrt(np.sum(b * b, axis=0)) for b in blocks])  # [blocks, other]
    grid = np.moveaxis(norms, 0, dim).reshape(-1)
    chosen = np.zeros(grid.size, bool)
    chosen[np.argsort(grid, kind="stable")[: round(0.5 * grid.size)]] = True
    pruned = np.repeat(np.moveaxis(chosen.reshape(np.moveaxis(norms, 0, dim).shape), dim, 0), 4, axis=0)[: moved.shape[0]]
    expect = np.where(np.moveaxis(pruned, 0, dim), 0, w)
    np.testing.assert_array_equal(s.decompress(), expect)


def test_per_channel_prunes_every_row_exactly():
    w = student_rows((40, 33), seed=6, dtype=np.float16)
    s = wp.prune(w, 0.6, granularity="per_channel")
    keep = s.mask.values().astype(bool)
    assert np.all((~keep).sum(axis=1) == round(0.6 * 33))
    for r in range(40):
        np.testing.assert_array_equal(keep[r], reference_keep(w[r], round(0.6 * 33)))
    cols = wp.prune(w, 0.5, granularity="per_channel", axis=1)
    assert np.all((~cols.mask.values().astype(bool)).sum(axis=0) == 20)


def test_wanda_scores_weights_by_activation_norms():
    """Wanda: |W_ij| * ||X_j||, compared per output row."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((16, 32)).astype(np.float32)
    norms = rng.random((1, 32)).astype(np.float32) * 10
    s = wp.prune(w, 0.5, granularity="per_channel", importance=norms)
    score = np.abs(w) * norms
    for r in range(16):
        np.testing.assert_array_equal(s.mask.values()[r].astype(bool), reference_keep(score[r], 16))


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_m_ratio=(5, 4)), r"n_m_ratio=\(5, 4\): allowed 0 <= n <= m"),
    (dict(n_m_ratio=(2,)), "must be a pair of integers"),
    (dict(n_m_ratio=(1, 2), dim=2), r"dim=2 must be an integer in \[-2, 2\)"),
    (dict(sparsity=0.5, threshold=0.1), "give one of sparsity, threshold and n_m_ratio, not sparsity and threshold"),
    (dict(threshold=-1.0), "threshold=-1.0 must be a number >= 0"),
    (dict(threshold=0.1, block_size=2), "granularity|block_size applies to sparsity"),
    (dict(block_size=0), "block_size=0 must be a positive integer"),
    (dict(dim=1), "dim=1 is only used with block_size or n_m_ratio"),
    (dict(granularity="per_row"), "granularity='per_row' is unknown; allowed: 'per_tensor', 'per_channel'"),
    (dict(granularity="per_channel", n_m_ratio=(1, 2)), "granularity='per_channel' applies to sparsity without blocks"),
    (dict(importance=np.ones(4)), r"importance has shape \(4,\); it must have the weights' rank 2"),
    (dict(importance=-np.ones((1, 4))), "importance holds -1.0, a negative value"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(wp.WeightpackError, match=message):
        wp.prune(np.ones((4, 4), np.float32), **kwargs)
