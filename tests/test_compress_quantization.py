"""Linear quantization: coremltools parity, ranges, rounding, blocks, zeros, sparse input, bad input."""
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import weightpack as wp
from compress_oracle import assert_matches_coreml, sse, student_rows


def coremltools_qparams(w, nbits, signed, mode, block_sizes):
    from coremltools.optimize import _utils

    return _utils.compute_qparams(w, nbits, signed, mode, None, block_sizes)


def exact_q(w, scale, offset, qmin, qmax):
    """Round-half-even of the exact quotient (float64 decides every fp16/fp32 tie)."""
    return np.clip(np.round(w.astype(np.float64) / scale.astype(np.float64)) + offset, qmin, qmax)


def quotient_rounding_flips(w, scale):
    """Where rounding w / scale to w's dtype first changes the rounded integer (coremltools' way)."""
    in_dtype = np.round(w / scale)
    return in_dtype != np.round(w.astype(np.float64) / scale.astype(np.float64))


finite_matrices = hnp.arrays(
    st.sampled_from([np.float16, np.float32]),
    st.tuples(st.integers(1, 6), st.integers(1, 9)),
    elements=st.floats(-1000, 1000, width=16),
)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # coremltools divides by 0 on all-zero rows
@given(w=finite_matrices)
def test_int8_symmetric_per_channel_matches_coremltools(w):
    q, scale, _ = coremltools_qparams(w, 8, True, "LINEAR_SYMMETRIC", [1, 0])
    t = wp.quantize(w)
    assert t.offset is None and t.scale.dtype == w.dtype
    nonzero_rows = scale.ravel() > 0  # all-zero rows, and fp16 scales that underflow: weightpack stores 1 / a subnormal
    np.testing.assert_array_equal(t.scale[nonzero_rows], scale[nonzero_rows])
    ours = t.data.values()[nonzero_rows]
    flips = quotient_rounding_flips(w[nonzero_rows], scale[nonzero_rows])
    np.testing.assert_array_equal(ours[~flips], q[nonzero_rows][~flips])
    assert np.all(np.abs(ours[flips].astype(int) - q[nonzero_rows][flips]) == 1)


def test_int8_fp32_equal_to_coremltools_on_random_weights():
    w = (np.random.default_rng(0).standard_normal((64, 128)) * 0.05).astype(np.float32)
    q, scale, zp = coremltools_qparams(w, 8, True, "LINEAR_SYMMETRIC", [1, 0])
    t = wp.quantize(w, "int8")
    assert zp is None and t.offset is None
    np.testing.assert_array_equal(t.scale, scale)
    np.testing.assert_array_equal(t.data.values(), q)


def test_documented_difference_quotient_rounded_in_fp16():
    """coremltools rounds w / scale to fp16 before rounding to an integer; weightpack rounds the exact quotient."""
    w = np.array([[38.1, 1.3505859375, 2.25]], np.float16)  # scale 0.3 (fp16); exact 4.5012 and 7.4988
    q, scale, _ = coremltools_qparams(w, 8, True, "LINEAR_SYMMETRIC", [1, 0])
    t = wp.quantize(w)
    assert t.scale.tolist() == scale.tolist()
    assert (w / scale)[:, 1:].tolist() == [[4.5, 7.5]]  # the fp16 quotients land on ties
    assert q.tolist() == [[127, 4, 8]]
    assert t.data.values().tolist() == [[127, 5, 7]]


@pytest.mark.parametrize("dtype, nbits, signed", [("int8", 8, True), ("uint8", 8, False), ("int4", 4, True), ("uint4", 4, False)])
@pytest.mark.parametrize("mode", ["symmetric", "asymmetric"])
def test_ranges_offsets_and_coremltools_agreement(dtype, nbits, signed, mode):
    w = (np.random.default_rng(nbits).standard_normal((32, 64)) * 0.1 + (0.05 if mode == "asymmetric" else 0)).astype(np.float32)
    t = wp.quantize(w, dtype, mode=mode)
    ct_mode = "LINEAR_SYMMETRIC" if mode == "symmetric" else "LINEAR"
    q, scale, zp = coremltools_qparams(w, nbits, signed, ct_mode, [1, 0])
    qmin, qmax = wp.bits.value_range(nbits, signed)
    if mode == "symmetric":
        qmin, qmax = (qmin + 1, qmax) if signed else (qmin, qmax - 1)
    data = t.data.values()
    assert data.min() >= qmin and data.max() <= qmax
    assert t.data.dtype_name == dtype
    if mode == "symmetric" and signed:
        assert t.offset is None and zp is None
    else:
        offset = t.offset.values()
        np.testing.assert_array_equal(offset, zp)
        if mode == "symmetric":
            assert np.all(offset == qmax // 2)
    np.testing.assert_allclose(t.scale, scale, rtol=2 ** -23)  # asymmetric: coremltools rounds hi - lo
    offset = 0 if t.offset is None else t.offset.values()
    np.testing.assert_array_equal(data, exact_q(w, t.scale, offset, qmin, qmax))
    assert np.abs(data.astype(int) - q).max() <= 1


def test_round_half_to_even_on_exact_half_steps():
    w = np.array([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5]], np.float32)  # scale exactly 1
    t = wp.quantize(w, granularity="per_tensor")
    assert float(t.scale.ravel()[0]) == 1.0
    assert t.data.values().tolist() == [[127, 0, 2, 2, 0, -2, -2, 4]]


def test_all_zero_channels():
    w = np.zeros((3, 4), np.float16)
    w[1] = [1, -2, 3, 0.5]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for dtype, mode, expect in [("int8", "symmetric", 0), ("uint8", "symmetric", 127), ("int4", "asymmetric", 0), ("uint4", "asymmetric", 0)]:
            t = wp.quantize(w, dtype, mode=mode)
            data = t.data.values()
            assert t.scale[[0, 2]].ravel().tolist() == [1.0, 1.0]
            assert data[[0, 2]].ravel().tolist() == [expect] * 8
            assert np.all(np.isfinite(t.decompress())) and t.decompress()[[0, 2]].tolist() == [[0.0] * 4] * 2


def test_asymmetric_range_includes_zero():
    w = np.array([[1.0, 1.5, 2.0, 3.0]], np.float32)  # all positive: the range is [0, 3]
    t = wp.quantize(w, "uint8", mode="asymmetric")
    assert t.offset.values().ravel().tolist() == [0]
    assert float(t.scale.ravel()[0]) == np.float32(3.0 / 255)
    t = wp.quantize(-w, "int8", mode="asymmetric")  # all negative: [-3, 0], zero maps to qmax
    assert t.offset.values().ravel().tolist() == [127]
    assert t.data.values().ravel().tolist()[-1] == -128


def test_tiny_fp16_scale_does_not_underflow_to_zero():
    w = np.array([[2.0**-24, -(2.0**-23), 0.0]], np.float16)  # max |w| / 127 rounds to 0 in fp16
    t = wp.quantize(w)
    assert float(t.scale.ravel()[0]) == 2.0**-24
    np.testing.assert_array_equal(t.decompress(), w)


@pytest.mark.parametrize("shape, axis, block_size, scale_shape", [
    ((8, 64), 0, 16, (8, 4)),
    ((8, 64), 1, 2, (4, 64)),
    ((16, 32, 3, 3), 0, 8, (16, 4, 1, 1)),
    ((16, 32, 3, 3), 0, (4, 0, 3, 1), (4, 1, 1, 3)),
])
def test_per_block_layout(shape, axis, block_size, scale_shape):
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    t = wp.quantize(w, "int4", granularity="per_block", axis=axis, block_size=block_size)
    assert t.scale.shape == scale_shape
    assert wp.snr_db(w, t.decompress()) > 14


def test_per_channel_along_another_axis():
    w = np.random.default_rng(6).standard_normal((5, 7, 3)).astype(np.float32)
    t = wp.quantize(w, axis=-2)
    assert t.scale.shape == (1, 7, 1)
    np.testing.assert_array_equal(t.scale.ravel(), (np.abs(w).max(axis=(0, 2)) * 2 / 254).astype(np.float32))
    assert wp.quantize(w, granularity="per_tensor", axis=2).scale.shape == (1, 1, 1)


def test_per_block_matches_coremltools():
    w = (np.random.default_rng(5).standard_normal((16, 64)) * 0.02).astype(np.float32)
    q, scale, _ = coremltools_qparams(w, 8, True, "LINEAR_SYMMETRIC", [1, 32])
    t = wp.quantize(w, granularity="per_block", block_size=32)
    np.testing.assert_array_equal(t.scale, scale)
    flips = quotient_rounding_flips(w, np.repeat(scale, 32, axis=1))
    np.testing.assert_array_equal(t.data.values()[~flips], q[~flips])


@pytest.mark.parametrize("dtype, granularity, min_db", [
    ("int8", "per_channel", 38), ("int8", "per_tensor", 34), ("uint8", "per_channel", 38), ("int4", "per_channel", 14),
])
def test_snr_and_round_trip(dtype, granularity, min_db, backend):
    w = (np.random.default_rng(1).standard_normal((64, 128)) * 0.02).astype(np.float16)
    t = wp.quantize(w, dtype, granularity=granularity)
    assert wp.snr_db(w, t.decompress()) > min_db
    again = wp.QuantizedTensor(t.data, t.scale, t.offset)
    assert again == t
    np.testing.assert_array_equal(again.decompress(backend=backend), t.decompress(backend="numpy"))


def test_sparse_input_uses_dense_blocks(backend):
    w = np.random.default_rng(2).standard_normal((8, 32)).astype(np.float32)
    s = wp.prune(w, 0.5)
    t = wp.quantize(s, "int4", granularity="per_block", block_size=8)
    assert isinstance(t, wp.SparseQuantizedTensor) and t.scale.shape == (8, 4)
    dense = wp.quantize(s.decompress(), "int4", granularity="per_block", block_size=8)
    keep = s.mask.values().astype(bool)
    np.testing.assert_array_equal(t.nonzero_data.values(), dense.data.values()[keep])
    np.testing.assert_array_equal(t.scale, dense.scale)
    out = t.decompress(backend=backend)
    assert np.all(out[~keep] == 0)
    assert wp.snr_db(s.decompress(), out) > 14


def test_input_is_not_modified():
    w = np.random.default_rng(3).standard_normal((4, 8))
    before = w.copy()
    w.flags.writeable = False
    t = wp.quantize(w, "uint4", mode="asymmetric", granularity="per_tensor")
    assert t.scale.dtype == np.float32
    np.testing.assert_array_equal(w, before)


@pytest.mark.parametrize("kwargs, message", [
    (dict(dtype="int16"), "dtype='int16' is unknown; allowed: int4, uint4, int8, uint8"),
    (dict(dtype=np.float32), "dtype=<class 'numpy.float32'> is unknown"),
    (dict(mode="linear"), "mode='linear' is unknown; allowed: 'symmetric', 'asymmetric'"),
    (dict(granularity="per_row"), "granularity='per_row' is unknown"),
    (dict(axis=2), r"axis=2 must be an integer in \[-2, 2\)"),
    (dict(granularity="per_block"), "needs block_size"),
    (dict(granularity="per_block", block_size=5), "block_size 5 along axis 1 does not divide the dimension 8"),
    (dict(granularity="per_block", block_size=0), "block_size=0 must be a positive integer"),
    (dict(granularity="per_block", block_size=(1, 2, 3)), "one entry per axis"),
    (dict(block_size=4), "only allowed with granularity='per_block'"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(wp.WeightpackError, match=message):
        wp.quantize(np.ones((4, 8), np.float32), **kwargs)


@pytest.mark.parametrize("w, message", [
    (np.ones((2, 2), np.int8), "w has dtype int8"),
    (np.array([np.nan], np.float32), "NaN or infinity"),
    (np.zeros(0, np.float32), "at least one element"),
])
def test_bad_weights(w, message):
    with pytest.raises(wp.WeightpackError, match=message):
        wp.quantize(w)


# ------------------------------------------------- compiled path, error minimisation, LUTs, memory


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("qtype, mode, granularity, axis, block_size", [
    ("int8", "symmetric", "per_channel", 0, None),
    ("uint8", "asymmetric", "per_tensor", 0, None),
    ("int4", "symmetric", "per_block", 0, 32),
    ("uint4", "symmetric", "per_channel", 1, None),
    ("int8", "asymmetric", "per_block", 0, (4, 0)),
])
def test_compiled_path_equals_the_reference(dtype, qtype, mode, granularity, axis, block_size, monkeypatch):
    from weightpack.compress import quantization

    w = student_rows((256, 320), seed=5, dtype=dtype)
    w[7] = 0  # an all-zero row
    fast = wp.quantize(w, qtype, mode=mode, granularity=granularity, axis=axis, block_size=block_size)
    monkeypatch.setattr(quantization, "REFERENCE_MAX", 10**9)
    assert fast == wp.quantize(w, qtype, mode=mode, granularity=granularity, axis=axis, block_size=block_size)


def _error(w, t, weights=None):
    return sse(w, t.decompress(np.float32), weights)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("qtype, mode, granularity, block_size", [
    ("int4", "symmetric", "per_channel", None),
    ("int4", "asymmetric", "per_block", 32),
    ("uint4", "symmetric", "per_block", 16),
    ("int8", "symmetric", "per_channel", None),
])
def test_clip_search_and_refit_never_raise_the_error(dtype, qtype, mode, granularity, block_size):
    w = student_rows((64, 256), seed=2, dtype=dtype)
    kw = dict(mode=mode, granularity=granularity, block_size=block_size)
    plain = _error(w, wp.quantize(w, qtype, **kw))
    clipped = _error(w, wp.quantize(w, qtype, clip_search=True, **kw))
    both = wp.quantize(w, qtype, clip_search=True, refit=True, **kw)
    tol = 1.001 if dtype == np.float16 else 1 + 1e-9  # the search measures float64 errors; fp16 decoding rounds
    assert clipped <= plain * tol and _error(w, both) <= clipped * tol
    if qtype == "int4" and granularity == "per_channel":
        assert 10 * np.log10(plain / _error(w, both)) > 1.0  # heavy tails: clipping pays (1.2 dB here)
    data = both.data.values()
    qmin, qmax = wp.bits.value_range(int(qtype[-1]), qtype.startswith("int"))
    assert data.min() >= qmin + (mode == "symmetric" and qtype.startswith("int")) and data.max() <= qmax
    assert both.scale.dtype == dtype and np.all(both.scale > 0)


def test_importance_weighs_the_search():
    w = student_rows((32, 128), seed=4, dtype=np.float32)
    imp = np.ones((1, 128), np.float32)
    imp[0, :16] = 1000.0
    full = np.broadcast_to(imp, w.shape)
    kw = dict(granularity="per_channel", clip_search=True, refit=True)
    weighted = wp.quantize(w, "int4", importance=imp, **kw)
    plain = wp.quantize(w, "int4", **kw)
    assert _error(w, weighted, full) <= _error(w, plain, full)
    with pytest.raises(wp.WeightpackError, match="importance weighs the error of clip_search and refit"):
        wp.quantize(w, "int4", importance=imp)


def test_sparse_search_ignores_the_pruned_zeros():
    w = student_rows((16, 64), seed=8, dtype=np.float32)
    s = wp.prune(w, 0.5)
    t = wp.quantize(s, "int4", granularity="per_channel", clip_search=True, refit=True)
    assert isinstance(t, wp.SparseQuantizedTensor)
    assert_matches_coreml(t)
    dense = s.decompress()
    keep = dense != 0
    plain = wp.quantize(s, "int4", granularity="per_channel")
    assert sse(dense[keep], t.decompress()[keep]) <= sse(dense[keep], plain.decompress()[keep]) * (1 + 1e-9)


@pytest.mark.parametrize("source", ["dense", "sparse", "scaled"])
def test_quantizing_a_lut_is_core_mls_joint_palettize_quantize(source, backend):
    w = student_rows((32, 64), seed=3)
    x = wp.prune(w, 0.5) if source == "sparse" else w
    p = wp.palettize(x, nbits=4, group_size=8, per_channel_scale=source == "scaled")
    t = wp.quantize(p, "int8", granularity="per_tensor")
    assert isinstance(t, wp.ScaledLUTTensor) and t.lut_scale.shape == (1, 1, 1, 1)
    assert t.palettized.lut.dtype == np.int8
    assert_matches_coreml(t, backend)
    per_lut = wp.quantize(p, "uint8", granularity="per_block", block_size=(1, 1, 16, 1))
    assert per_lut.lut_scale.shape == (4, 1, 1, 1) and per_lut.lut_offset.dtype_name == "uint8"
    assert wp.snr_db(p.decompress(), t.decompress()) > 30


@pytest.mark.parametrize("make, kwargs, message", [
    (lambda w: wp.palettize(w, 2), dict(dtype="int4"), "a LUT can be quantized to int8 or uint8"),
    (lambda w: wp.palettize(w, 2, lut_dtype="int8"), dict(dtype="int8"), "already quantized"),
    (lambda w: wp.palettize(w, 2), dict(dtype="int8", clip_search=True, importance=np.ones((8, 8))), "importance is not used"),
])
def test_lut_quantization_errors(make, kwargs, message):
    with pytest.raises(wp.WeightpackError, match=message):
        wp.quantize(make(np.random.default_rng(0).random((8, 8)).astype(np.float32)), **kwargs)


def test_extra_memory_stays_under_three_times_the_tensor():
    import tracemalloc

    w = student_rows((1024, 2048), seed=0, dtype=np.float16)
    wp.quantize(w[:64], "int4", granularity="per_block", block_size=32)  # compile outside the measurement
    for kwargs in (dict(dtype="int8"), dict(dtype="int4", granularity="per_block", block_size=32),
                   dict(dtype="uint8", axis=1, mode="asymmetric")):
        tracemalloc.start()
        t = wp.quantize(w, **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 3 * w.nbytes, (kwargs, peak / w.nbytes)
        del t
