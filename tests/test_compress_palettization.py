"""Palettization: LUT shapes and dtypes, groups, nearest-entry indices, uniform mode, sparse input, bad input."""
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import weightpack as wp
from compress_oracle import assert_matches_coreml, sse, student_rows


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


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("axis", [0, 1])
def test_big_groups_index_the_nearest_stored_entry(dtype, axis):
    """Groups above 8,192 elements: histogram (fp16) or bins (fp32), indices from the group kernel."""
    w = student_rows((64, 2048), seed=3, dtype=dtype)
    imp = np.random.default_rng(1).random((1, 2048)).astype(np.float32)
    for kwargs in (dict(), dict(importance=imp)):
        p = wp.palettize(w, nbits=3, group_size=16 if axis == 0 else 512, axis=axis, **kwargs)
        indices = p.indices.values()
        for g in range(4):
            part = slice(16 * g, 16 * g + 16) if axis == 0 else (slice(None), slice(512 * g, 512 * g + 512))
            lut = np.take(p.lut, [g], axis=axis).ravel()
            np.testing.assert_array_equal(indices[part], nearest_reference(lut, w[part]))


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
    (dict(mode="lloyd"), "mode='lloyd' is unknown; allowed: 'kmeans', 'uniform', 'unique', 'custom'"),
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


def test_compressed_inputs_are_refused():
    s = wp.prune(np.arange(1, 9, dtype=np.float32).reshape(2, 4), 0.5)
    with pytest.raises(wp.WeightpackError, match="must be a float array, got a PalettizedTensor"):
        wp.palettize(wp.palettize(s.decompress(), nbits=2))


# ------------------------------------------------------------------ options coremltools also has


OPTIONS = [
    dict(nbits=4),
    dict(nbits=3, group_size=8),
    dict(nbits=2, group_size=4, axis=1),
    dict(nbits=4, cluster_dim=4),
    dict(nbits=2, cluster_dim=2, group_size=8),
    dict(nbits=4, lut_dtype="int8"),
    dict(nbits=4, per_channel_scale=True),
    dict(nbits=3, group_size=16, per_channel_scale=True, lut_dtype="uint8"),
    dict(nbits=3, group_size=8, per_channel_scale=True, scale_axis=0),
    dict(nbits=2, group_size=4, cluster_dim=2, per_channel_scale=True, scale_axis=0, lut_dtype="int8"),
    dict(nbits=4, mode="uniform", group_size=8),
    dict(nbits=2, cluster_dim=2, per_channel_scale=True, lut_dtype="int8"),
    dict(mode="unique"),
]


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_option_round_trips_and_matches_coremltools(options, dtype, backend):
    w = student_rows((32, 48), seed=len(options), dtype=dtype)
    if options.get("mode") == "unique":
        w = (np.round(w.astype(np.float32) * 300) / 300).astype(dtype)
    before = w.copy()
    t = wp.palettize(w, **options)
    np.testing.assert_array_equal(w, before)  # the caller's array is untouched
    assert_matches_coreml(t, backend)
    again = type(t)(**_fields(t))
    assert again == t
    np.testing.assert_array_equal(again.decompress(backend=backend), t.decompress(backend="numpy"))
    floor = 0 if options.get("mode") == "unique" else 1
    assert wp.snr_db(w, t.decompress()) > floor


def _fields(t):
    """Constructor arguments of ``t`` from its arrays (the way an importer rebuilds it)."""
    if isinstance(t, wp.ScaledLUTTensor):
        return dict(palettized=t.palettized, lut_scale=t.lut_scale, lut_offset=t.lut_offset, scale=t.scale)
    fields = {k: v for k, v in t.arrays().items()}
    fields["vector_axis"] = t.vector_axis
    return fields


@pytest.mark.parametrize("options", [dict(), dict(group_size=8), dict(cluster_dim=2), dict(per_channel_scale=True),
                                     dict(lut_dtype="int8", group_size=4, axis=1), dict(mode="uniform")])
def test_sparse_input_every_option(options, backend):
    w = student_rows((16, 32), seed=11)
    s = wp.prune(w, 0.5)
    t = wp.palettize(s, nbits=2, **options)
    assert_matches_coreml(t, backend)
    out = t.decompress()
    dense = s.decompress()
    if options.get("cluster_dim", 1) == 1:
        np.testing.assert_array_equal(out[dense == 0], 0)
    assert wp.snr_db(dense, out) > 3


def test_sparse_groups_fit_only_their_nonzeros():
    w = student_rows((16, 64), seed=2)
    s = wp.prune(w, 0.6)
    t = wp.palettize(s, nbits=2, group_size=8)
    dense = s.decompress()
    for g in range(2):
        part = dense[8 * g: 8 * g + 8]
        alone = wp.palettize(part[part != 0], nbits=2)
        np.testing.assert_array_equal(t.lut[g].ravel(), alone.lut.ravel())


def test_vector_layout_is_core_mls():
    """cluster_dim=V along axis 0: index (r, c) covers rows V*r .. V*r+V-1 of column c."""
    w = student_rows((8, 6), seed=4, dtype=np.float32)
    t = wp.palettize(w, nbits=2, cluster_dim=4)
    assert t.indices.shape == (2, 6) and t.lut.shape == (1, 1, 4, 4) and t.vector_axis == 0
    lut = t.lut[0, 0]
    expect = np.concatenate([lut[t.indices.values()[r]].T for r in range(2)])
    np.testing.assert_array_equal(t.decompress(), expect)
    t1 = wp.palettize(w, nbits=1, cluster_dim=3, axis=1)
    assert t1.indices.shape == (8, 2) and t1.vector_axis == 1


def test_vector_kmeans_is_deterministic_and_seeded():
    w = student_rows((64, 64), seed=5, dtype=np.float32)
    a = wp.palettize(w, nbits=4, cluster_dim=2)
    assert a == wp.palettize(w, nbits=4, cluster_dim=2)
    assert a == wp.palettize(w, nbits=4, cluster_dim=2, seed=0)


@pytest.mark.parametrize("cluster_dim", [2, 4])
def test_vector_kmeans_not_worse_than_coremltools(cluster_dim):
    """coremltools runs scikit-learn's KMeans (k-means++, one init, tol 1e-2) on the same vectors."""
    from coremltools.optimize.coreml._quantization_passes import palettize_weights

    w = student_rows((64, 128), seed=cluster_dim, dtype=np.float32)
    ours = wp.palettize(w, nbits=4, cluster_dim=cluster_dim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lut, idx = palettize_weights._get_lut_and_indices(w.copy(), "KMEANS", 4, None, cluster_dim=cluster_dim, vector_axis=0)
    vectors = np.swapaxes(w, -1, 0).reshape(-1, cluster_dim)  # coremltools' vectors: V consecutive along axis 0
    theirs = float(np.sum((vectors.astype(np.float64) - lut[np.asarray(idx).reshape(-1)]) ** 2))
    assert sse(w, ours.decompress()) <= theirs * 1.001


def test_unique_mode():
    w = np.array([[0.5, -0.25, 0.5], [0.0, -0.0, 3.0]], np.float16)
    t = wp.palettize(w, mode="unique")
    assert t.nbits == 2 and t.lut.ravel().tolist() == [-0.25, 0.0, 0.5, 3.0]
    np.testing.assert_array_equal(t.decompress(), w)
    five = wp.palettize(np.arange(5, dtype=np.float32), mode="unique")
    assert five.nbits == 3 and five.lut.ravel().tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    grouped = wp.palettize(np.arange(12, dtype=np.float32).reshape(4, 3), mode="unique", group_size=1)
    assert grouped.nbits == 2 and grouped.lut.shape == (4, 1, 4, 1)
    with pytest.raises(wp.WeightpackError, match="more than 256 distinct values; allowed: at most 256"):
        wp.palettize(np.arange(300, dtype=np.float32), mode="unique")


def test_custom_mode():
    def halves(values):
        lut = np.array([values.min(), values.max()])
        return lut, (values > values.mean()).astype(np.int64)

    w = np.array([[1.0, 2.0, 9.0], [10.0, 3.0, 11.0]], np.float32)
    t = wp.palettize(w, mode="custom", lut_function=halves)
    assert t.nbits == 1 and t.lut.ravel().tolist() == [1.0, 11.0]
    assert t.indices.values().tolist() == [[0, 0, 1], [1, 0, 1]]
    three = wp.palettize(w, mode="custom", lut_function=lambda v: (np.arange(3.0), np.zeros(v.shape, int)))
    assert three.nbits == 2 and three.lut.ravel().tolist() == [0.0, 1.0, 2.0, 2.0]
    vec = wp.palettize(w, mode="custom", cluster_dim=2, lut_function=lambda v: (np.ones((2, 2)), np.zeros((1, 3), int)))
    assert vec.lut.shape == (1, 1, 2, 2) and vec.decompress().tolist() == [[1.0] * 3] * 2


@pytest.mark.parametrize("result, message", [
    ((np.ones(3), np.zeros(5, int)), r"indices have dtype int64 and shape \(5,\); allowed: integers, 6 of them"),
    ((np.ones(3), np.full(6, 3)), r"indices hold 3; allowed: \[0, 2\]"),
    ((np.ones(300), np.zeros(6, int)), r"lut has shape \(300,\); allowed: \[K\] with 1 <= K <= 256"),
    ((np.array([1.0, np.nan]), np.zeros(6, int)), "lut contains NaN"),
    (np.ones(3), r"must be a tuple \(lut, indices\)"),
])
def test_custom_results_are_validated(result, message):
    with pytest.raises(wp.WeightpackError, match=message):
        wp.palettize(np.ones((2, 3), np.float32), mode="custom", lut_function=lambda v: result)


def test_int8_lut_is_a_quantized_lut():
    w = student_rows((32, 64), seed=8)
    t = wp.palettize(w, nbits=4, lut_dtype="int8", group_size=8)
    assert isinstance(t, wp.ScaledLUTTensor) and t.palettized.lut.dtype == np.int8
    assert t.lut_scale.shape == (4, 1, 1, 1) and t.lut_scale.dtype == np.float16 and t.lut_offset is None
    assert t.ops == ("constexpr_blockwise_shift_scale", "constexpr_lut_to_dense")
    assert np.abs(t.palettized.lut).max() == 127
    floats = t.float_lut()
    np.testing.assert_array_equal(t.palettized.indices.values(), _nearest_grouped(w, floats, 8))
    assert wp.snr_db(w, t.decompress()) > wp.snr_db(w, wp.palettize(w, nbits=4, group_size=8).decompress()) - 0.5


def _nearest_grouped(w, luts, group_size):
    out = np.empty(w.shape, np.int64)
    for g in range(luts.shape[0]):
        rows = slice(g * group_size, (g + 1) * group_size)
        out[rows] = nearest_reference(luts[g].ravel(), w[rows])
    return out


def test_per_channel_scale_is_per_input_channel_and_keeps_the_lut_small():
    w = student_rows((64, 32), seed=9)
    w[:, 5] = 0  # an all-zero input channel: scale 1
    t = wp.palettize(w, nbits=4, group_size=16, per_channel_scale=True)
    assert t.scale.shape == (1, 32) and t.scale.dtype == np.float16
    assert t.palettized.lut.shape == (4, 1, 16, 1)
    np.testing.assert_array_equal(t.scale.ravel(), np.where(np.abs(w).max(axis=0) == 0, 1, np.abs(w).max(axis=0)))
    assert t.ops == ("constexpr_lut_to_dense", "constexpr_blockwise_shift_scale")
    assert t.nbytes == t.palettized.nbytes + 64
    plain = wp.palettize(w, nbits=4, group_size=16)
    assert wp.snr_db(w, t.decompress()) > wp.snr_db(w, plain.decompress())


def test_per_channel_scale_along_another_axis_and_for_conv_weights():
    w = student_rows((8, 6, 3, 3), seed=10, dtype=np.float32)
    t = wp.palettize(w, nbits=3, per_channel_scale=True, axis=1, group_size=2)
    assert t.scale.shape == (8, 1, 3, 3) and t.palettized.lut.shape == (1, 3, 1, 1, 8, 1)
    np.testing.assert_array_equal(t.scale, np.abs(w).max(axis=1, keepdims=True))
    assert_matches_coreml(t)
    conv = wp.palettize(w, nbits=3, per_channel_scale=True)
    assert conv.scale.shape == (1, 6, 3, 3)  # coremltools' (1, C_in, kh, kw)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_per_row_scale_with_a_lut_per_group_of_rows(dtype):
    """scale_axis=0: one scale per output row, independent of the LUT per 16 rows; the fit is the
    weighted k-means of the scaled rows with weights s**2 (the error of s * lut)."""
    w = student_rows((64, 32), seed=12, dtype=dtype)
    w[7] = 0  # an all-zero row: scale 1
    t = wp.palettize(w, nbits=3, group_size=16, per_channel_scale=True, scale_axis=0)
    top = np.abs(w).max(axis=1, keepdims=True)
    assert t.scale.shape == (64, 1) and t.palettized.lut.shape == (4, 1, 8, 1)
    np.testing.assert_array_equal(t.scale, np.where(top == 0, 1, top))
    scaled = (w.astype(np.float32) / t.scale.astype(np.float32)).astype(dtype)
    weights = np.broadcast_to(np.square(t.scale.astype(np.float32)), w.shape)
    assert t.palettized == wp.palettize(scaled, nbits=3, group_size=16, importance=weights)
    assert t.nbytes == wp.palettize(w, nbits=3, group_size=16).nbytes + 64 * w.itemsize
    assert_matches_coreml(t)
    assert wp.snr_db(w, t.decompress()) > wp.snr_db(w, wp.palettize(w, nbits=3, group_size=16).decompress()) + 0.5
    curve = wp.palettize_rd_curve(w, max_nbits=3, group_size=16, per_channel_scale=True, scale_axis=0)
    assert curve.snr_db(3) == pytest.approx(wp.snr_db(w, t.decompress()), abs=0.02)
    conv = wp.palettize(student_rows((8, 6, 3, 3), seed=13), nbits=2, per_channel_scale=True, scale_axis=0, group_size=4)
    assert conv.scale.shape == (8, 1, 1, 1)
    assert_matches_coreml(conv)


@pytest.mark.parametrize("kwargs, message", [
    (dict(scale_axis=0), "scale_axis=0 needs per_channel_scale=True"),
    (dict(per_channel_scale=True, scale_axis=2), r"scale_axis=2 must be an integer in \[-2, 2\)"),
    (dict(cluster_dim=3), r"cluster_dim=3 does not divide w.shape\[0\]=8"),
    (dict(cluster_dim=4, group_size=2), "cluster_dim=4 does not divide group_size=2"),
    (dict(cluster_dim=2, mode="uniform"), "cluster_dim=2 is not supported with mode='uniform'"),
    (dict(mode="unique", nbits=4), "nbits=4 must be None with mode='unique'"),
    (dict(mode="custom"), "lut_function=None: it is required with mode='custom'"),
    (dict(lut_function=len), "it is required with mode='custom' and only allowed there"),
    (dict(lut_dtype="int4"), "lut_dtype='int4' is unknown; allowed: None, 'fp16', 'fp32', 'int8', 'uint8'"),
    (dict(importance=np.ones((8, 3))), r"importance has shape \(8, 3\); it must have the weights' rank 2"),
    (dict(importance=-np.ones((8, 4))), "importance holds -1.0, a negative value"),
    (dict(importance=np.full((1, 4), np.nan)), "importance contains NaN"),
    (dict(importance=np.ones((8, 4)), mode="uniform"), "importance is only used by mode='kmeans'"),
    (dict(per_channel_scale=1), "per_channel_scale=1 must be True or False"),
    (dict(seed=-1, cluster_dim=2), "seed=-1 must be a non-negative integer"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(wp.WeightpackError, match=message):
        wp.palettize(np.ones((8, 4), np.float32), **kwargs)


def test_importance_broadcasts_and_changes_the_fit():
    w = student_rows((16, 64), seed=12, dtype=np.float32)
    imp = np.ones((1, 64), np.float32)
    imp[0, :8] = 100.0
    weighted = wp.palettize(w, nbits=2, importance=imp)
    plain = wp.palettize(w, nbits=2)
    full = np.broadcast_to(imp, w.shape)
    assert sse(w, weighted.decompress(), full) < sse(w, plain.decompress(), full)
    assert weighted == wp.palettize(w, nbits=2, importance=np.ascontiguousarray(full))
