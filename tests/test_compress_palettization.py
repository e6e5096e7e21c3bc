"""Palettization: LUT shapes and dtypes, groups, nearest-entry indices, uniform mode, sparse input, bad input."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import weightpack as wp


def nearest_reference(lut, values):
    """argmin |v - lut| in float64; np.argmin returns the first (lowest) index on ties."""
    d = np.abs(values.astype(np.float64).reshape(-1, 1) - lut.astype(np.float64).reshape(1, -1))
    return np.argmin(d, axis=1).reshape(values.shape)


small_weights = hnp.arrays(
    st.sampled_from([np.float16, np.float32]),
    hnp.array_shapes(min_dims=1, max_dims=3, max_side=12),
    elements=st.floats(-8, 8, width=16),
)


@given(w=small_weights, nbits=st.sampled_from([1, 2, 3, 4, 6, 8]), mode=st.sampled_from(["kmeans", "uniform"]))
def test_indices_are_the_nearest_stored_entry(w, nbits, mode):
    p = wp.palettize(w, nbits=nbits, mode=mode)
    lut = p.lut.ravel()
    assert p.lut.shape == (1,) * w.ndim + (1 << nbits, 1) and p.lut.dtype == w.dtype
    assert np.all(np.diff(lut.astype(np.float64)) >= 0)
    np.testing.assert_array_equal(p.indices.values(), nearest_reference(lut, w))


def test_ties_go_to_the_lower_index():
    w = np.array([0.0, 1.0, 2.0, 3.0, 1.5], np.float32)
    p = wp.palettize(w, nbits=2, mode="uniform")  # LUT 0, 1, 2, 3: 1.5 is halfway between 1 and 2
    assert p.lut.ravel().tolist() == [0.0, 1.0, 2.0, 3.0]
    assert p.indices.values().tolist() == [0, 1, 2, 3, 1]


def test_unused_entries_repeat_the_largest_centroid():
    w = np.array([[3.0, 1.0, 2.0], [1.0, 2.0, 3.0]], np.float16)
    p = wp.palettize(w, nbits=3)
    assert p.lut.ravel().tolist() == [1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    assert p.indices.values().tolist() == [[2, 0, 1], [0, 1, 2]]
    assert wp.snr_db(w, p.decompress()) == float("inf")


def test_constant_tensor():
    w = np.full((4, 4), 0.25, np.float32)
    for mode in ("kmeans", "uniform"):
        p = wp.palettize(w, nbits=2, mode=mode)
        np.testing.assert_array_equal(p.decompress(), w)
        assert p.indices.values().max() == 0


@pytest.mark.parametrize("axis, group_size", [(0, 4), (1, 3), (0, 1), (1, 12)])
def test_groups_are_independent_luts(axis, group_size):
    w = (np.random.default_rng(axis).standard_normal((8, 12)) * np.arange(1, 13)).astype(np.float32)
    p = wp.palettize(w, nbits=2, group_size=group_size, axis=axis)
    groups = w.shape[axis] // group_size
    assert p.lut.shape == tuple(groups if a == axis else 1 for a in range(2)) + (4, 1)
    indices = p.indices.values()
    for g in range(groups):
        part = np.take(w, range(g * group_size, (g + 1) * group_size), axis=axis)
        alone = wp.palettize(part, nbits=2)
        np.testing.assert_array_equal(np.take(p.lut, [g], axis=axis).ravel(), alone.lut.ravel())
        np.testing.assert_array_equal(np.take(indices, range(g * group_size, (g + 1) * group_size), axis=axis),
                                      alone.indices.values())


def test_grouped_conv_weight_fp16():
    w = (np.random.default_rng(7).standard_normal((32, 16, 3, 3)) * 0.05).astype(np.float16)
    p = wp.palettize(w, nbits=3, group_size=8)
    assert p.lut.shape == (4, 1, 1, 1, 8, 1) and p.lut.dtype == np.float16
    assert wp.snr_db(w, p.decompress()) > 14


@pytest.mark.parametrize("nbits, min_db", [(1, 4.3), (2, 9.2), (3, 14.5), (4, 20.0), (6, 31.0), (8, 40.0)])
def test_kmeans_snr_on_gaussian(nbits, min_db, backend):
    """Lloyd-Max SNR for a Gaussian: 4.40, 9.30, 14.62, 20.22 dB at 1-4 bits."""
    w = (np.random.default_rng(nbits).standard_normal((128, 256)) * 0.02).astype(np.float16)
    p = wp.palettize(w, nbits=nbits)
    assert wp.snr_db(w, p.decompress(backend=backend)) > min_db
    again = wp.PalettizedTensor(p.indices, p.lut)
    assert again == p
    np.testing.assert_array_equal(again.decompress(backend=backend), p.decompress(backend="numpy"))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("nbits", [2, 4, 8])
def test_uniform_matches_coremltools_formula(dtype, nbits):
    from coremltools.optimize.coreml._quantization_passes import palettize_weights

    w = (np.random.default_rng(nbits).standard_normal(3000) * 0.1).astype(dtype)
    lut_ct, _ = palettize_weights._get_lut_and_indices(w, "UNIFORM", nbits, None)
    p = wp.palettize(w, nbits=nbits, mode="uniform")
    lut = p.lut.ravel()
    lo, hi = float(w.min()), float(w.max())
    assert lut.tolist() == (np.arange(1 << nbits) * ((hi - lo) / ((1 << nbits) - 1)) + lo).astype(dtype).tolist()
    ulp = np.spacing(np.abs(lut_ct).max().astype(dtype))
    assert np.abs(lut.astype(np.float64) - lut_ct.astype(np.float64)).max() <= 2 * ulp
    np.testing.assert_array_equal(p.indices.values(), nearest_reference(lut, w))


def test_float64_input_becomes_fp32_and_is_not_modified():
    w = np.random.default_rng(4).standard_normal((6, 10))
    before = w.copy()
    w.flags.writeable = False
    p = wp.palettize(w, nbits=2, group_size=2)
    assert p.lut.dtype == np.float32
    np.testing.assert_array_equal(w, before)


def test_big_endian_input():
    w = np.linspace(-1, 1, 40000).astype(">f2")
    p = wp.palettize(w, nbits=4)
    assert p.lut.dtype == np.float16
    np.testing.assert_array_equal(p.indices.values(), wp.palettize(w.astype(np.float16), nbits=4).indices.values())


def test_sparse_input(backend):
    w = (np.random.default_rng(5).standard_normal((16, 64)) * 0.02).astype(np.float16)
    s = wp.prune(w, 0.5)
    sp = wp.palettize(s, nbits=4)
    assert isinstance(sp, wp.SparsePalettizedTensor) and sp.lut.shape == (1, 1, 16, 1)
    alone = wp.palettize(s.nonzero_data, nbits=4)
    np.testing.assert_array_equal(sp.lut.ravel(), alone.lut.ravel())
    np.testing.assert_array_equal(sp.indices_nonzero_data.values(), alone.indices.values())
    out = sp.decompress(backend=backend)
    keep = s.mask.values().astype(bool)
    assert np.all(out[~keep] == 0)
    assert wp.snr_db(s.decompress(), out) > 19


@pytest.mark.parametrize("kwargs, message", [
    (dict(nbits=5), r"nbits=5 is not a supported unsigned width; allowed: \(1, 2, 3, 4, 6, 8\)"),
    (dict(nbits=4.0), "nbits=4.0"),
    (dict(mode="lloyd"), "mode='lloyd' is unknown; allowed: 'kmeans', 'uniform'"),
    (dict(group_size=3), r"group_size=3 does not divide w.shape\[0\]=8"),
    (dict(group_size=0), "group_size=0 must be a positive integer"),
    (dict(group_size=2, axis=-3), r"axis=-3 must be an integer in \[-2, 2\)"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(wp.WeightpackError, match=message):
        wp.palettize(np.ones((8, 4), np.float32), **kwargs)


@pytest.mark.parametrize("w, message", [
    (np.ones((2, 2), np.int32), "w has dtype int32"),
    (np.array([1.0, np.nan], np.float16), "NaN or infinity"),
    (np.array([1e300, 1.0]), "beyond float32's range"),
    (np.zeros((3, 0), np.float32), "at least one element"),
    (np.float16(1.0), "rank >= 1"),
])
def test_bad_weights(w, message):
    with pytest.raises(wp.WeightpackError, match=message):
        wp.palettize(w)


def test_sparse_input_refuses_groups_and_compressed_inputs():
    s = wp.prune(np.arange(1, 9, dtype=np.float32).reshape(2, 4), 0.5)
    with pytest.raises(wp.WeightpackError, match="group_size=2 is not supported for a SparseTensor"):
        wp.palettize(s, nbits=2, group_size=2)
    with pytest.raises(wp.WeightpackError, match="must be a float array, got a PalettizedTensor"):
        wp.palettize(wp.palettize(s.decompress(), nbits=2))
