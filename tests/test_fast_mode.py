"""Fast mode: int8 activations and integer dot products, within its documented error of the exact
product; exact results wherever it does not apply."""
import os
import sys

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
    yield "uint8 per channel", quantized_weight(rng, "uint8"), FAST_RTOL  # no offset: the codes' own bias
    yield "uint4 per block of 32", quantized_weight(rng, "uint4", blocks=16), FAST_RTOL
    yield "int4 per block of 32 with offsets", quantized_weight(rng, "int4", blocks=16, offset=True), FAST_RTOL


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_fast_mode_error_is_within_its_bound(batch):
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 512)).astype(np.float32)
    for name, weight, bound in weights(rng):
        error = relative_error(weight, x, wp.matmul(weight, x, mode="fast"))
        assert error < bound, f"{name}: relative error {error:.4f}"
        assert error > 1e-6 or not backend_c.fast_mode_runs(), f"{name}: fast mode did not run"


@pytest.mark.parametrize("rows", [1, 3, 67, 93])
def test_every_row_gets_the_same_bits_in_a_tile_or_alone(rows):
    """Rows run in tiles of several (sharing each load of the activations) and, at a range's end,
    alone: a row's result is the same bits either way, whatever the thread count."""
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((2, 512)).astype(np.float32)
    for data_type, blocks in (("int8", 1), ("int4", 16), ("uint8", 16), ("uint4", 1)):
        whole = quantized_weight(rng, data_type, blocks)
        data, scale = whole.data.values()[:rows], whole.scale[:rows]
        weight = wp.QuantizedTensor(wp.NBitArray.from_values(data, whole.data.nbits, signed=whole.data.signed), scale)
        with wp.threads(2):
            y = wp.matmul(weight, x, mode="fast")
        for r in range(0, rows, max(1, rows // 5)):
            alone = wp.QuantizedTensor(wp.NBitArray.from_values(data[r:r + 1], whole.data.nbits, signed=whole.data.signed), scale[r:r + 1])
            np.testing.assert_array_equal(wp.matmul(alone, x, mode="fast")[:, 0], y[:, r], err_msg=f"{data_type}, row {r}")
        assert relative_error(weight, x, y) < FAST_RTOL, data_type


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


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def _build_can_use_amx() -> bool:
    """Linux, a CPU with AMX-BF16 and AVX512-FP16 (the level AMX belongs to), and a compiler with
    both instruction sets' intrinsics (gcc 12+, clang 15+)."""
    name, _, version = backend_c.COMPILER.partition(" ")
    major = int(version.split(".")[0]) if version[:1].isdigit() else 0
    compiler_ok = (name == "gcc" and major >= 12) or (name == "clang" and major >= 15)
    return sys.platform == "linux" and {"amx_bf16", "amx_tile", "avx512_fp16"} <= _cpu_flags() and compiler_ok


def _amx_at_the_best_level() -> bool:
    try:
        backend_c.set_simd()
        return backend_c.fast_mode_uses_amx()
    finally:
        backend_c.set_simd(os.environ.get("WEIGHTPACK_SIMD") or None)


def test_amx_is_used_wherever_the_build_and_cpu_allow_it():
    """Guards the skip below: on a CPU with AMX, a build that can use it does (at its best level)."""
    assert _amx_at_the_best_level() == _build_can_use_amx()


@pytest.fixture
def best_level():
    backend_c.set_simd()
    yield
    backend_c.set_simd(os.environ.get("WEIGHTPACK_SIMD") or None)


@pytest.mark.skipif(not _amx_at_the_best_level(), reason="no AMX here: the CPU lacks it, or this compiler lacks AVX512-FP16 intrinsics (gcc < 12, clang < 15)")
@pytest.mark.parametrize("batch", [16, 40, 64])
def test_batches_on_amx_tiles_are_within_the_bound(batch, best_level):
    """Batches of 16+ run on AMX (bf16 weights and activations; the avx512fp16 level): within the
    same bound, and really a different kernel from the integer dot products of the avx512 level."""
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 512)).astype(np.float32)
    for name, weight, bound in weights(rng):
        y = wp.matmul(weight, x, mode="fast")
        assert relative_error(weight, x, y) < bound, name
        try:
            backend_c.set_simd("avx512")
            assert not np.array_equal(y, wp.matmul(weight, x, mode="fast")), f"{name}: AMX did not run"
        finally:
            backend_c.set_simd()
