"""ActivationStats: accumulation, merging, .npz round trips, bad input."""
import numpy as np
import pytest

import weightpack as wp
from weightpack.calibration import ActivationStats


def batches(seed=0, n=5, features=6):
    rng = np.random.default_rng(seed)
    return [rng.integers(-8, 8, (rng.integers(1, 9), features)).astype(np.float32) for _ in range(n)]


def test_gram_and_second_moments_of_one_batch():
    x = np.random.default_rng(1).standard_normal((40, 6))
    s = ActivationStats(6).update(x)
    np.testing.assert_allclose(s.gram, x.T @ x / 40, rtol=1e-12)
    np.testing.assert_allclose(s.second_moments, np.mean(x**2, axis=0), rtol=1e-12)
    assert s.count == 40 and s.gram.dtype == np.float64


def test_merge_equals_a_single_pass():
    parts = batches()
    whole = ActivationStats(6).update(np.concatenate(parts))
    left, right = ActivationStats(6), ActivationStats(6)
    for i, b in enumerate(parts):
        (left if i % 2 else right).update(b)
    merged = left.merge(right)
    assert merged.count == whole.count
    np.testing.assert_array_equal(merged.gram, whole.gram)  # integer-valued data: sums are exact
    np.testing.assert_array_equal(merged.second_moments, whole.second_moments)
    assert left.count + right.count == merged.count  # the inputs are unchanged


def test_any_float_dtype_and_leading_axes():
    x = np.random.default_rng(2).standard_normal((3, 4, 6))
    ref = ActivationStats(6).update(x.reshape(12, 6))
    for dtype in (np.float16, np.float32, np.float64):
        s = ActivationStats(6).update(x.astype(dtype))
        assert s.count == 12
        np.testing.assert_allclose(s.gram, ref.gram, rtol=2e-3, atol=1e-3)


def test_large_batches_are_chunked_identically(monkeypatch):
    from weightpack.calibration import stats

    x = np.random.default_rng(3).integers(-4, 4, (100, 6)).astype(np.float64)
    whole = ActivationStats(6).update(x)
    monkeypatch.setattr(stats, "CHUNK_BYTES", 8 * 6 * 7)  # 7 rows at a time
    np.testing.assert_array_equal(ActivationStats(6).update(x).gram, whole.gram)


def test_save_load_round_trip(tmp_path):
    s = ActivationStats(6)
    for b in batches():
        s.update(b)
    path = tmp_path / "layer0.npz"
    s.save(path)
    t = ActivationStats.load(path)
    assert t.count == s.count and t.has_gram
    np.testing.assert_array_equal(t.gram, s.gram)
    np.testing.assert_array_equal(t.second_moments, s.second_moments)
    light = ActivationStats(6, gram=False).update(batches()[0])
    light.save(path)  # overwrites atomically
    back = ActivationStats.load(path)
    assert not back.has_gram and back.count == light.count
    assert [p.name for p in tmp_path.iterdir()] == ["layer0.npz"]  # no temporary file left


def test_second_moments_only():
    s = ActivationStats(4, gram=False).update(np.ones((3, 4)))
    assert s.second_moments.tolist() == [1.0] * 4
    with pytest.raises(wp.WeightpackError, match="gram=False"):
        s.gram
    with pytest.raises(wp.WeightpackError, match="gram=True vs gram=False"):
        s.merge(ActivationStats(4))


def test_bad_activations_are_refused():
    s = ActivationStats(4)
    x = np.zeros((3, 4), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(wp.WeightpackError, match="NaN or infinity.*row 1, channel 2"):
        s.update(x)
    x[1, 2] = np.inf
    with pytest.raises(wp.WeightpackError, match="NaN or infinity"):
        s.update(x)
    with pytest.raises(wp.WeightpackError, match=r"shape \(3, 5\); the last axis must be in_features=4"):
        s.update(np.zeros((3, 5)))
    with pytest.raises(wp.WeightpackError, match="dtype int64"):
        s.update(np.zeros((3, 4), np.int64))
    assert s.count == 0  # refused batches add nothing
    with pytest.raises(wp.WeightpackError, match="in_features=0"):
        ActivationStats(0)
    with pytest.raises(wp.WeightpackError, match="in_features=5 into in_features=4"):
        s.merge(ActivationStats(5))


def test_bad_files_raise_format_error(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(wp.FormatError, match="not a readable .npz"):
        ActivationStats.load(junk)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(wp.FormatError, match="does not hold weightpack activation statistics"):
        ActivationStats.load(other)
    s = ActivationStats(3).update(np.ones((2, 3)))
    good = tmp_path / "good.npz"
    s.save(good)
    with np.load(good) as data:
        arrays = dict(data)
    arrays["gram_sum"] = np.zeros((2, 2))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(wp.FormatError, match=r"gram_sum has shape \(2, 2\)"):
        ActivationStats.load(tmp_path / "bad.npz")
