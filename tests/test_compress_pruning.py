"""Magnitude pruning: exact count, tie order, zeros, edge sparsities, bad input."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import weightpack as wp


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
