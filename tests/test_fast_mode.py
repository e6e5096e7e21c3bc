"""Fast mode: int8 activations and integer dot products, within its documented error of the exact
product; exact results wherever it does not apply."""
import numpy as np
import pytest

import weightpack as wp
from weightpack.errors import WeightpackError
from weightpack.kernels import backend_c
from weightpack.ops import FAST_RTOL


def relative_error(weight, x, y):
    exact = x.astype(np.float64) @ weight.decompress(np.float32).astype(np.float64).reshape(weight.shape[0], -1).T
    return np.linalg.norm(y - exact) / np.linalg.norm(exact)


def lut_weight(rng, nbits, groups=1):
    lut = np.sort(rng.standard_t(4, (groups, 1, 1 << nbits, 1)) * 0.02, axis=2).astype(np.float16)
    return wp.PalettizedTensor(rng.integers(0, 1 << nbits, (96, 512)), lut)


def quantized_weight(rng, data_type, blocks=1, offset=False):
    bits, signed = int(data_type[-1]), data_type.startswith("int")
    lo, hi = (-(1 << (bits - 1)) + 1, (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    data = wp.NBitArray.from_values(rng.integers(lo, hi + 1, (96, 512)), bits, signed=signed)
    scale = (rng.random((96, blocks)) * 0.01 + 1e-3).astype(np.float16)
    offsets = wp.NBitArray.from_values(rng.integers(lo, hi + 1, (96, blocks)), bits, signed=signed) if offset else None
    return wp.QuantizedTensor(data, scale, offsets)


def weights(rng):
    yield "lut4", lut_weight(rng, 4), FAST_RTOL
    yield "lut4 per 16 rows", lut_weight(rng, 4, groups=6), FAST_RTOL
    yield "lut2", lut_weight(rng, 2), 2 * FAST_RTOL
    yield "int8 per channel", quantized_weight(rng, "int8"), FAST_RTOL
    yield "uint8 with offsets", quantized_weight(rng, "uint8", offset=True), FAST_RTOL
    yield "int4 per block of 32", quantized_weight(rng, "int4", blocks=16), FAST_RTOL
    yield "uint4 per channel with offsets", quantized_weight(rng, "uint4", offset=True), FAST_RTOL


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_fast_mode_error_is_within_its_bound(batch):
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 512)).astype(np.float32)
    for name, weight, bound in weights(rng):
        error = relative_error(weight, x, wp.matmul(weight, x, mode="fast"))
        assert error < bound, f"{name}: relative error {error:.4f}"
        assert error > 1e-6 or not backend_c.fast_mode_runs(), f"{name}: fast mode did not run"


def test_layouts_fast_mode_does_not_cover_are_exact():
    rng = np.random.default_rng(5)
    lut = np.linspace(-1, 1, 16, dtype=np.float16).reshape(1, 1, 16, 1)
    x = rng.standard_normal((2, 96)).astype(np.float32)
    mask = rng.random((8, 96)) < 0.5
    uncovered = (  # 96 columns are not whole 64-byte steps; 6-bit LUTs and sparse weights have no fast kernel
        wp.PalettizedTensor(rng.integers(0, 16, (8, 96)), lut),
        wp.QuantizedTensor(rng.integers(-127, 128, (8, 96)).astype(np.int8), np.full((8, 1), 0.01, np.float16)),
        wp.SparseTensor(mask, rng.standard_normal(int(mask.sum())).astype(np.float16)),
        wp.PalettizedTensor(rng.integers(0, 64, (8, 96)), np.linspace(-1, 1, 64, dtype=np.float16).reshape(1, 1, 64, 1)),
    )
    for weight in uncovered:
        np.testing.assert_array_equal(wp.matmul(weight, x, mode="fast"), wp.matmul(weight, x))


def _levels_without_fast_mode():
    levels = []
    for level in backend_c.simd_levels():
        backend_c.set_simd(level)
        if not backend_c.fast_mode_runs():
            levels.append(level)
    backend_c.set_simd()
    return levels


@pytest.mark.parametrize("level", _levels_without_fast_mode())
def test_lower_simd_levels_run_the_exact_product(level):
    rng = np.random.default_rng(6)
    weight = quantized_weight(rng, "int8")
    x = rng.standard_normal((1, 512)).astype(np.float32)
    try:
        backend_c.set_simd(level)
        np.testing.assert_array_equal(wp.matmul(weight, x, mode="fast"), wp.matmul(weight, x))
    finally:
        backend_c.set_simd()


def test_unknown_mode_is_an_error():
    weight = wp.QuantizedTensor(np.ones((4, 8), np.int8), np.ones((4, 1), np.float32))
    with pytest.raises(WeightpackError, match="mode='turbo'"):
        wp.matvec(weight, np.ones(8), mode="turbo")
