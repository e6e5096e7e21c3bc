"""The numba backend against the numpy reference: decompression bit for bit, products within the
float32 dot-product bound, bit streams, and its fp16 arithmetic against numpy's own conversions."""
import subprocess
import sys
import threading

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import weightpack as wp
from weightpack import kernels
from weightpack.ops import error_bound, matrix_shape

from strategies import CASES, assert_same_bits, divisors, generators, int_range, streams

nb = kernels.load("numba")
TYPES = list(CASES)


def test_import_weightpack_does_not_import_numba():
    code = "import sys, weightpack; assert 'numba' not in sys.modules, 'numba was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registry_order():
    assert "numba" in kernels.available()
    assert kernels.BACKENDS.index("numba") < kernels.BACKENDS.index("c")
    assert kernels._PREFERENCE == ("c", "numba", "numpy")


# ---- fp16 arithmetic ---------------------------------------------------------------------------


@numba.njit
def _to_half_all(values, out):
    for i in range(values.size):
        out[i] = nb.float_to_half(values[i])


@numba.njit
def _round_half_all(values, out):
    for i in range(values.size):
        out[i] = nb.round_half(values[i])


@numba.njit
def _to_float_all(halves, out):
    for i in range(halves.size):
        out[i] = nb.half_to_float(halves[i])


def _sweep_patterns() -> np.ndarray:
    """float32 bit patterns: a strided sweep of all 2**32 (every exponent, NaNs and infinities
    included), every value exactly halfway between two fp16 values (and its neighbours), and
    the edges of fp16's range."""
    strided = np.arange(0, 2**32, 997, dtype=np.uint64).astype(np.uint32)
    halves = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    mids = ((halves[:-1] + halves[1:]) / 2).astype(np.float32)  # exact: 12 significant bits
    assert np.all(mids.astype(np.float64) == (halves[:-1] + halves[1:]) / 2)
    edges = np.array([65504, 65520, 65536, 2.0**-14, 2.0**-24, 2.0**-25, 1.5 * 2.0**-25], np.float32)
    around = np.concatenate([mids, edges]).view(np.uint32)
    near = np.concatenate([around - 1, around, around + 1])
    both_signs = np.concatenate([strided, near, near | 0x80000000])
    return both_signs.view(np.float32)


def test_float_to_half_matches_numpy_on_a_sweep():
    values = _sweep_patterns()
    with np.errstate(all="ignore"):
        expected = values.astype(np.float16)
    halves = np.empty(values.size, np.uint16)
    _to_half_all(values, halves)
    assert_same_bits(halves.view(np.float16), expected)
    rounded = np.empty(values.size, np.float32)
    _round_half_all(values, rounded)
    assert_same_bits(rounded, expected.astype(np.float32))


def test_half_to_float_is_exact_on_every_pattern():
    halves = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    out = np.empty(halves.size, np.float32)
    _to_float_all(halves, out)
    assert_same_bits(out, halves.view(np.float16).astype(np.float32))


# ---- bit streams -------------------------------------------------------------------------------


@given(streams())
def test_pack_and_unpack_match_numpy(stream):
    values, nbits, signed = stream
    packed = wp.pack_bits(values, nbits, signed=signed, backend="numba")
    assert_same_bits(packed, wp.pack_bits(values, nbits, signed=signed, backend="numpy"))
    assert_same_bits(wp.unpack_bits(packed, nbits, values.size, signed=signed, backend="numba"), values)


# ---- decompression: bit for bit ----------------------------------------------------------------


@pytest.mark.parametrize("cls", TYPES, ids=lambda c: c.__name__)
def test_decompress_is_bit_identical_to_numpy(cls):
    @given(CASES[cls]())
    def check(case):
        tensor = case.build()
        for dtype in (None, np.float16, np.float32):
            assert_same_bits(tensor.decompress(dtype, backend="numba"), tensor.decompress(dtype, backend="numpy"))

    check()


# Rows longer than a decompression task (8192 columns), rows that end inside a 64-step, and
# tables that change inside a task.
LONG_SHAPES = [(2, 8192 + 136), (1, 2 * 8192 + 72), (6, 320)]


def _assert_decompress_same(tensor):
    for dtype in (None, np.float16, np.float32):
        assert_same_bits(tensor.decompress(dtype, backend="numba"), tensor.decompress(dtype, backend="numpy"))


@pytest.mark.parametrize("shape", LONG_SHAPES)
@pytest.mark.parametrize("nbits", [1, 2, 3, 4, 6, 8])
def test_long_rows_decompress_palettized(shape, nbits):
    rng = np.random.default_rng(nbits)
    indices = rng.integers(0, 1 << nbits, shape)
    mask = rng.random(shape) < 0.6
    for groups, dtype in [((1, 1), np.float16), ((shape[0], 1), np.float32), ((1, 2), np.int8)]:
        lut = (rng.standard_normal((*groups, 1 << nbits, 1)) * 20).astype(dtype)
        _assert_decompress_same(wp.PalettizedTensor(indices, lut))
        _assert_decompress_same(wp.SparsePalettizedTensor(mask, indices[mask], lut))


@pytest.mark.parametrize("shape", LONG_SHAPES)
@pytest.mark.parametrize("data_type", ["int8", "uint8", "int4", "uint4"])
def test_long_rows_decompress_quantized(shape, data_type):
    rng = np.random.default_rng(len(data_type))
    nbits, signed, lo, hi = _code_type(data_type)
    values = rng.integers(lo, hi + 1, shape)
    mask = rng.random(shape) < 0.5
    stored = wp.NBitArray.from_values(values[mask], nbits, signed=signed)
    dense = wp.NBitArray.from_values(values, nbits, signed=signed)
    for scale_shape, dtype in [((shape[0], 1), np.float16), ((shape[0], shape[1] // 8), np.float16),
                               ((1, 2), np.float32)]:
        scale = (rng.random(scale_shape) * 0.02).astype(dtype)
        offset = rng.integers(lo, hi + 1, scale_shape).astype(np.int8 if signed else np.uint8)
        for off in (None, offset, rng.uniform(lo, hi, scale_shape).astype(dtype)):
            _assert_decompress_same(wp.QuantizedTensor(dense, scale, off))
            _assert_decompress_same(wp.SparseQuantizedTensor(mask, stored, scale, off))


@pytest.mark.parametrize("shape", LONG_SHAPES)
@pytest.mark.parametrize("value_dtype", [np.float16, np.float32, np.int8])
def test_long_rows_decompress_sparse(shape, value_dtype):
    rng = np.random.default_rng(3)
    for density in (0.0, 0.4, 1.0):
        mask = rng.random(shape) < density
        _assert_decompress_same(wp.SparseTensor(mask, (rng.standard_normal(int(mask.sum())) * 20).astype(value_dtype)))


# ---- fused products ----------------------------------------------------------------------------


def assert_product_within_bound(tensor, rng, batch: int) -> None:
    """``matmul`` on numba, for random activations, against the float64 product of the decoded
    weights: within ``error_bound(in) * sum |w x|`` (ops.py) plus ``in`` times half the smallest
    float32 subnormal, which products that underflow may lose."""
    rows, cols = matrix_shape(tensor)
    x = rng.standard_normal((batch, cols)).astype(np.float32)
    w = tensor.decompress(np.float32, backend="numpy").reshape(rows, cols).astype(np.float64)
    with np.errstate(all="ignore"):
        y = wp.matmul(tensor, x, backend="numba")
        exact = x.astype(np.float64) @ w.T
        magnitude = np.abs(x.astype(np.float64)) @ np.abs(w).T
        excess = np.abs(y.astype(np.float64) - exact) - (error_bound(cols) * magnitude + cols * 2.0**-150)
    fits = magnitude < 2.0**125  # beyond, float32 sums may overflow
    assert y.shape == (x.shape[0], rows) and y.dtype == np.float32
    assert np.all(excess[fits] <= 0), f"error beyond the bound by {excess[fits].max()}"


@pytest.mark.parametrize("cls", TYPES, ids=lambda c: c.__name__)
def test_matmul_is_within_the_bound(cls):
    @given(CASES[cls](), generators(), st.integers(1, 9))
    def check(case, rng, batch):
        assert_product_within_bound(case.build(), rng, batch)

    check()


def _code_type(data_type):
    """(bits, signed, lowest, highest) of a Core ML integer type."""
    return (int(data_type[-1]), data_type.startswith("int"), *int_range(data_type))


def _lut(rng, groups, nbits, dtype=np.float32):
    return rng.standard_normal((*groups, 1 << nbits, 1)).astype(dtype)


# Shapes with long rows reach the vector loops (64 columns, or 16 bytes of codes, per step) and
# their tails; with two tables per row, 1088 columns change table inside a step of 64.
SHAPES = [(5, 96), (3, 520), (17, 8, 9), (2, 1000), (3, 1088)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nbits", [1, 2, 3, 4, 8])
def test_palettized_fast_paths(shape, nbits):
    rng = np.random.default_rng(nbits)
    indices = rng.integers(0, 1 << nbits, shape)
    row_groups = (shape[0], *(1,) * (len(shape) - 1))
    col_groups = (1,) * (len(shape) - 1) + (2 if shape[-1] % 16 == 0 else 1,)
    for groups in [(1,) * len(shape), row_groups, col_groups]:
        tensor = wp.PalettizedTensor(indices, _lut(rng, groups, nbits, np.float16))
        assert_product_within_bound(tensor, rng, 5)  # a tile of four activation rows and one more
        mask = rng.random(shape) < 0.6
        assert_product_within_bound(wp.SparsePalettizedTensor(mask, indices[mask], _lut(rng, groups, nbits)), rng, 5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("data_type", ["int8", "uint8", "int4", "uint4"])
def test_quantized_fast_paths(shape, data_type):
    rng = np.random.default_rng(len(data_type))
    nbits, signed, lo, hi = _code_type(data_type)
    values, mask = rng.integers(lo, hi + 1, shape), rng.random(shape) < 0.6
    data = wp.NBitArray.from_values(values, nbits, signed=signed)
    stored = wp.NBitArray.from_values(values[mask], nbits, signed=signed)
    carrier = np.int8 if signed else np.uint8
    for scale_shape in [(shape[0], *(1,) * (len(shape) - 1)), (*shape[:-1], 1), (*(1,) * (len(shape) - 1), 2)]:
        if shape[-1] % scale_shape[-1]:
            continue
        for dtype in (np.float16, np.float32):
            scale = (rng.random(scale_shape) * 0.02).astype(dtype)
            offsets = [None, rng.integers(lo, hi + 1, scale_shape).astype(carrier),
                       rng.uniform(lo, hi, scale_shape).astype(dtype)]
            for offset in offsets:
                assert_product_within_bound(wp.QuantizedTensor(data, scale, offset), rng, 5)
                assert_product_within_bound(wp.SparseQuantizedTensor(mask, stored, scale, offset), rng, 3)


@pytest.mark.parametrize("cols", [8, 24, 64, 100, 520])
@pytest.mark.parametrize("value_dtype", [np.float16, np.float32, np.int8])
def test_sparse_fast_paths(cols, value_dtype):
    rng = np.random.default_rng(cols)
    dense = (rng.standard_normal((7, cols)) * 20).astype(value_dtype)
    for density in (0.0, 0.5, 1.0):
        mask = rng.random(dense.shape) < density
        assert_product_within_bound(wp.SparseTensor(mask, dense[mask]), rng, 5)


# Decompression tasks (numba_decode.TASK elements) cross rows, blocks and mask bytes; product tiles
# (numba_matmul.TILE columns) cross blocks, and rows come in groups of numba_matmul.ROWS.
@settings(max_examples=20, deadline=None)
@given(st.data())
def test_tasks_and_tiles_cross_rows_blocks_and_mask_bytes(data):
    from weightpack.kernels import numba_decode, numba_matmul

    rng = data.draw(generators())
    rows = data.draw(st.integers(1, 7))
    cols = -(-numba_decode.TASK // rows) + data.draw(st.integers(-5, numba_matmul.TILE * 3))
    shape = (rows, cols)
    row_groups = data.draw(st.sampled_from(divisors(rows)))
    col_groups = data.draw(st.sampled_from([d for d in divisors(cols) if d <= 64]))
    mask = rng.random(shape) < data.draw(st.sampled_from([0.0, 0.3, 0.97, 1.0]))
    if data.draw(st.booleans()):
        nbits = data.draw(st.sampled_from([1, 2, 3, 4, 6, 8]))
        lut = (rng.standard_normal((row_groups, col_groups, 1 << nbits, 1)) * 4).astype(
            data.draw(st.sampled_from([np.float16, np.float32])))
        indices = rng.integers(0, 1 << nbits, shape)
        tensors = [wp.PalettizedTensor(indices, lut), wp.SparsePalettizedTensor(mask, indices[mask], lut)]
    else:
        data_type = data.draw(st.sampled_from(["int8", "uint8", "int4", "uint4"]))
        nbits, signed, lo, hi = _code_type(data_type)
        values = rng.integers(lo, hi + 1, shape)
        scale = (rng.random((row_groups, col_groups)) * 0.05).astype(data.draw(st.sampled_from([np.float16, np.float32])))
        offset = data.draw(st.sampled_from([None, "int", "float"]))
        if offset == "int":
            offset = rng.integers(lo, hi + 1, scale.shape).astype(np.int8 if signed else np.uint8)
        elif offset == "float":
            offset = rng.uniform(lo, hi, scale.shape).astype(scale.dtype)
        tensors = [wp.QuantizedTensor(wp.NBitArray.from_values(values, nbits, signed=signed), scale, offset),
                   wp.SparseQuantizedTensor(mask, wp.NBitArray.from_values(values[mask], nbits, signed=signed), scale,
                                            offset)]
    tensors.append(wp.SparseTensor(mask, rng.standard_normal(int(mask.sum())).astype(np.float16)))
    for tensor in tensors:
        _assert_decompress_same(tensor)
        assert_product_within_bound(tensor, rng, data.draw(st.integers(1, 6)))


def test_products_from_many_threads_agree():
    """The kernels release the GIL and may run from several threads at once (parallel regions
    included), giving the same bits as alone."""
    rng = np.random.default_rng(0)
    tensors = [
        wp.PalettizedTensor(rng.integers(0, 16, (256, 512)), _lut(rng, (1, 1), 4)),
        wp.QuantizedTensor(rng.integers(-128, 128, (256, 512)).astype(np.int8), np.full((256, 1), 0.01, np.float16)),
        wp.prune(rng.standard_normal((256, 512)).astype(np.float16), sparsity=0.5),
    ]
    x = rng.standard_normal((4, 512)).astype(np.float32)
    expected = [wp.matmul(t, x, backend="numba") for t in tensors]
    failures = []

    def work():
        try:
            for _ in range(20):
                for t, y in zip(tensors, expected):
                    if not np.array_equal(wp.matmul(t, x, backend="numba"), y):
                        failures.append(type(t).__name__)
        except Exception as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
