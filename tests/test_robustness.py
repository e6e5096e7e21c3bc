"""Extreme and hostile inputs (issue 10): element counts beyond int64, finite inputs whose results
overflow, arguments far out of range. Each gives a WeightpackError that says what is wrong, or a
correct result; never a raw numpy/numba exception, a hang or a silent inf/NaN."""
import time
import tracemalloc

import numpy as np
import pytest

import weightpack as wp

# ------------------------------------------------------------------- element counts beyond int64


@pytest.mark.parametrize("packed, nbits, shape", [
    (b"", 4, (2**32, 2**32)),  # wraps to 0 elements in int64
    (bytes(4), 4, (2**62 + 2, 4)),  # wraps to 8 elements: would match the 4 bytes
    (bytes(4), 4, (2**63 + 2, 4)),
    (bytes(4), 4, (2**64 - 9,)),  # a negative count in int64
    (bytes(1), 1, (2**21,) * 3),  # exactly 2**63
])
def test_nbitarray_refuses_element_counts_beyond_int64_fast_and_without_allocating(packed, nbits, shape):
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(wp.WeightpackError, match=r"more than 2\*\*63 - 1"):
        wp.NBitArray(packed, nbits, shape)
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 1 << 20  # a refusal, not an attempt


def unchecked_nbitarray(shape, nbits=4):
    """An NBitArray of ``shape`` over no bytes, built past its checks: stands in for a stream too
    large to allocate, to reach the checks that follow in a tensor's constructor."""
    bits = wp.NBitArray.__new__(wp.NBitArray)
    for name, value in (("packed", np.zeros(0, np.uint8)), ("nbits", nbits), ("signed", False), ("shape", shape)):
        object.__setattr__(bits, name, value)
    return bits


def test_vector_lut_whose_expanded_shape_overflows_is_refused():
    """Indices of 2**62 elements are countable; 4-vectors along axis 0 make 2**64: refused."""
    with pytest.raises(wp.WeightpackError, match=r"expanded shape.*more than 2\*\*63 - 1"):
        wp.PalettizedTensor(unchecked_nbitarray((2**31, 2**31)), np.zeros((1, 1, 16, 4), np.float16), vector_axis=0)


# ------------------------------------------------------------- finite inputs, overflowing results


def lut_weight():
    return wp.palettize(np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32), nbits=4)


@pytest.mark.parametrize("product", ["matmul", "matvec"])
def test_float64_activations_beyond_float32_are_refused_saying_so(product):
    x = np.full((2, 64) if product == "matmul" else 64, 1e39)  # finite float64, infinite as float32
    with pytest.raises(wp.WeightpackError, match="too large for float32") as err:
        getattr(wp, product)(lut_weight(), x)
    assert "NaN" not in str(err.value)
    assert np.isfinite(wp.matmul(lut_weight(), np.full((2, 64), 1e30))).all()  # large but representable: computed


def test_activation_stats_refuse_batches_whose_squares_overflow_and_stay_unchanged():
    stats = wp.ActivationStats(4).update(np.ones((3, 4)))
    with pytest.raises(wp.WeightpackError, match="sums of squares overflow float64"):
        stats.update(np.full((2, 4), 1e200))
    assert stats.count == 3 and np.array_equal(stats.gram, np.ones((4, 4)))  # not poisoned
    big = wp.ActivationStats(4).update(np.full((1, 4), 1e154))  # each sum finite alone...
    with pytest.raises(wp.WeightpackError, match="overflow"):
        big.merge(big).merge(big).merge(big).update(np.full((1, 4), 1e154))  # ...not together
    with pytest.raises(wp.WeightpackError, match="overflow"):
        wp.ActivationStats(1, gram=False).update(np.array([[1e300]]))


def test_calibrated_encoders_depend_on_h_only_up_to_scale():
    """H = 1e308 I (and any H times a power of two) gives the same result as H; no raw ZeroDivisionError."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    x = rng.standard_normal((64, 16))
    h = x.T @ x / 64
    reference = wp.gptq_palettize(w, h, nbits=2)
    assert wp.gptq_palettize(w, np.ldexp(h, 900), nbits=2) == reference
    assert wp.gptq_palettize(w, np.ldexp(h, -900), nbits=2) == reference
    assert wp.gptq_quantize(w, np.ldexp(h, 1000), "int4") == wp.gptq_quantize(w, h, "int4")
    assert isinstance(wp.gptq_palettize(np.ones((4, 16), np.float32), np.eye(16) * 1e308, nbits=2), wp.PalettizedTensor)


@pytest.mark.parametrize("kwargs", [
    {}, {"granularity": "per_tensor"}, {"dtype": "uint8"}, {"dtype": "int4"}, {"dtype": "uint8", "mode": "asymmetric"},
    {"refit": True}, {"clip_search": True, "refit": True}, {"dtype": "uint4", "mode": "asymmetric", "refit": True},
])
def test_quantized_fp16_extremes_decode_finite(kwargs):
    """fp16 65504: 65504 / 127 rounds up to 516, and 127 x 516 is infinite in binary16; the stored
    scale steps down instead (SPEC 9.3), so every decoded value is finite and within a step of w."""
    w = np.array([[65504, -65504, 1, 0.5], [65504, 0, 0, 0], [-65504, 0.25, 2, 8]], np.float16)
    decoded = wp.quantize(w, **kwargs).decompress()
    assert np.isfinite(decoded).all()
    big = np.abs(w) == 65504
    assert (np.abs(decoded[big].astype(np.float32)) > 60000).all()


# ------------------------------------------------------------ arguments far out of range


def test_n_m_and_block_sizes_longer_than_the_axis_are_one_short_run():
    w = np.random.default_rng(2).standard_normal((16, 64)).astype(np.float32)
    assert wp.prune(w, n_m_ratio=(1, 2**70)).sparsity == 0.0  # the run of 64 prunes max(0, 1 - (2**70 - 64))
    assert wp.prune(w, n_m_ratio=(3, 66)) == wp.prune(w, n_m_ratio=(1, 64))
    assert wp.prune(w, 0.5, block_size=2**70) == wp.prune(w, 0.5, block_size=16)


@pytest.mark.parametrize("call, message", [
    (lambda: wp.gptq_palettize(np.ones((4, 16), np.float32), np.eye(16), nbits=2, act_order="yes"), "act_order='yes' must be True or False"),
    (lambda: lut_weight().decompress(out=np.empty((16, 64), np.float64)), "out has dtype float64, which is not available"),
    (lambda: wp.ActivationStats(2**40), "would need"),
])
def test_bad_arguments_are_named(call, message):
    with pytest.raises(wp.WeightpackError, match=message):
        call()


HUGE = (2**40, 64)


@pytest.mark.parametrize("call", [
    lambda x: wp.matmul(lut_weight(), x),
    lambda x: wp.prune(x, 0.5),
    lambda x: wp.quantize(x, "int8"),
    lambda x: wp.palettize(x, nbits=4),
    lambda x: wp.ActivationStats(64).update(x),
    lambda x: wp.SparseTensor(np.broadcast_to(True, x.shape), np.zeros(1, np.float16)),
    lambda x: wp.QuantizedTensor(np.broadcast_to(np.int8(1), x.shape), np.ones((1, 1), np.float16)),
], ids=["matmul", "prune", "quantize", "palettize", "stats", "sparse", "quantized"])
def test_broadcast_inputs_no_machine_holds_are_refused_saying_how_much(call):
    x = np.broadcast_to(np.float32(1), HUGE)  # 256 TiB as float32, 0 bytes as a view
    with pytest.raises(wp.WeightpackError, match=r"would need \d.* of memory; this machine has"):
        call(x)


# ------------------------------------------------------------------- missing pieces (10.7)


def scaled_luts():
    w = np.random.default_rng(3).standard_normal((32, 64)).astype(np.float16)
    return {
        "int8 LUT": wp.palettize(w, nbits=4, lut_dtype="int8"),
        "per-channel scale": wp.palettize(w, nbits=4, per_channel_scale=True),
        "quantized LUT": wp.quantize(wp.palettize(w, nbits=4), "int8", granularity="per_tensor"),
        "sparse, int8 LUT": wp.palettize(wp.prune(w, 0.5), nbits=2, lut_dtype="int8"),
    }


@pytest.mark.parametrize("name", list(scaled_luts()))
def test_products_of_scaled_lut_tensors(name):
    from weightpack.ops import error_bound

    t = scaled_luts()[name]
    assert isinstance(t, wp.ScaledLUTTensor)
    x = np.random.default_rng(4).standard_normal((3, 64)).astype(np.float32)
    dense = t.decompress(np.float32).astype(np.float64)
    exact = x.astype(np.float64) @ dense.T
    bound = error_bound(64) * (np.abs(x) @ np.abs(dense).T) + 64 * 2.0**-149
    y = wp.matmul(t, x)
    assert y.dtype == np.float32 and y.shape == (3, 32) and (np.abs(y - exact) <= bound).all()
    assert np.array_equal(wp.matvec(t, x[0]), wp.matmul(t, x[:1])[0])


@pytest.mark.parametrize("name", list(scaled_luts()))
def test_scaled_lut_decompress_into_out(name):
    t = scaled_luts()[name]
    for dtype in (np.float16, np.float32):
        out = np.empty(t.shape, dtype)
        assert t.decompress(out=out) is out and np.array_equal(out, t.decompress(dtype))
    with pytest.raises(wp.WeightpackError, match="out must be a C-contiguous"):
        t.decompress(out=np.empty((2, 2), np.float32))
    with pytest.raises(wp.WeightpackError, match="out has dtype float64"):
        t.decompress(out=np.empty(t.shape, np.float64))


def test_save_weights_refuses_an_empty_weight(tmp_path):
    from weightpack.coreml import save_weights

    with pytest.raises(wp.WeightpackError, match=r"weights\['e'\] has shape \(0, 4\), no elements"):
        save_weights(tmp_path / "m.mlpackage", {"w": np.ones((2, 4), np.float16), "e": np.ones((0, 4), np.float16)})
    assert list(tmp_path.iterdir()) == []


def test_inspect_counts_a_mask_two_ops_share_once(tmp_path):
    """coremltools' prune + int8 joint chain binds the same mask blob to both of its ops."""
    import coremltools.optimize.coreml as cto

    from coreml_models import THRESHOLD, linear_model
    from weightpack.coreml.inspection import rows

    model = cto.prune_weights(linear_model("iOS18"), cto.OptimizationConfig(
        global_config=cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=THRESHOLD)))  # fmt: skip
    model = cto.linear_quantize_weights(model, cto.OptimizationConfig(
        global_config=cto.OpLinearQuantizerConfig(weight_threshold=THRESHOLD)), joint_compression=True)  # fmt: skip
    path = str(tmp_path / "joint.mlpackage")
    model.save(path)
    weights = wp.coreml.load(path)
    joint = [r for r in rows(path) if r["type"] == "SparseQuantizedTensor"]
    assert len(joint) == 3
    assert all(r["nbytes"] == weights[r["name"]].nbytes for r in joint)


def test_ios16_quantized_tensor_without_offset_round_trips(tmp_path):
    from weightpack.coreml import load, save_weights

    q = wp.quantize(np.random.default_rng(5).standard_normal((16, 32)).astype(np.float16), "int8")
    assert q.offset is None
    save_weights(tmp_path / "m.mlpackage", {"q": q}, target="iOS16")  # constexpr_affine_dequantize: zero_point 0
    assert load(tmp_path / "m.mlpackage")["q"] == q


# ------------------------------------------------------------------------- mmap hazards (10.9)

TRUNCATE_AND_TOUCH = """
import os, sys, numpy as np, weightpack as wp
from weightpack.coreml import load, save_weights
path = sys.argv[1]
save_weights(path, {"w": wp.quantize(np.ones((256, 1024), np.float16), "int8")})
q = load(path, mmap=sys.argv[2] == "map")["w"]
blob = os.path.join(path, "Data", "com.apple.CoreML", "weights", "weight.bin")
with open(blob, "r+b") as f:
    f.truncate(0)  # another tool rewriting the file in place
print(int(q.data.values().astype(np.int64).sum()))
"""


@pytest.mark.parametrize("mode", ["copy", "map"])
def test_load_without_mmap_survives_the_file_being_truncated_in_place(tmp_path, mode):
    import signal
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", TRUNCATE_AND_TOUCH, str(tmp_path / "m.mlpackage"), mode],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    if mode == "copy":  # mmap=False: the values were read into memory
        assert done.returncode == 0 and done.stdout.strip() == str(127 * 256 * 1024), done.stderr[-2000:]
    else:  # the default mapping: the hazard the docs describe
        assert done.returncode == -signal.SIGBUS, (done.returncode, done.stderr[-2000:])


def test_load_without_mmap_gives_equal_read_only_tensors_over_no_mapping(tmp_path):
    import mmap

    from weightpack.coreml import load, save_weights

    tensors = {"p": wp.palettize(np.linspace(-1, 1, 512, dtype=np.float16).reshape(16, 32), nbits=2),
               "d": np.arange(64, dtype=np.float16).reshape(8, 8)}  # fmt: skip
    save_weights(tmp_path / "m.mlpackage", tensors)
    copied, mapped = load(tmp_path / "m.mlpackage", mmap=False), load(tmp_path / "m.mlpackage")
    assert copied.keys() == mapped.keys()
    for name in copied:
        a, b = copied[name], mapped[name]
        assert (np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b)
        arrays = [a] if isinstance(a, np.ndarray) else [x.packed if isinstance(x, wp.NBitArray) else x for x in a.arrays().values() if x is not None]
        for array in arrays:
            base = array
            while isinstance(base, np.ndarray):
                base = base.base
            assert not array.flags.writeable and not isinstance(base, mmap.mmap)
