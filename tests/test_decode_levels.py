"""Decompression on every SIMD level of the C backend is bit-identical to the numpy reference,
on tensors large enough for the vector paths (64-element steps, chunks split across threads,
table boundaries and row tails inside a step) and on rows of any length (rows and tables that
start inside a byte of the code stream or of the mask, rows shorter than a vector step)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import weightpack as wp
from weightpack import NBitArray
from weightpack.kernels import backend_c

from strategies import assert_same_bits, divisors, int_range


@pytest.fixture(params=backend_c.simd_levels())
def simd(request):
    assert backend_c.set_simd(request.param) == request.param
    yield request.param
    backend_c.set_simd()


@st.composite
def large_tensors(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = draw(st.sampled_from([1, 2, 3, 5, 17]))
    cols = draw(st.sampled_from([1, 7, 33, 64, 65, 100, 128, 192, 257, 1000, 8192 + 72]))
    groups = (draw(st.sampled_from(divisors(rows))), draw(st.sampled_from(divisors(cols)[:8])))
    mask = rng.random((rows, cols)) < draw(st.sampled_from([0.0, 0.4, 0.9, 1.0]))
    nnz = int(mask.sum())
    kind = draw(st.sampled_from(["lut", "sparse_lut", "sparse", "quant", "sparse_quant"]))
    if kind in ("lut", "sparse_lut"):
        nbits = draw(st.sampled_from([1, 2, 3, 4, 6, 8]))
        lut_dtype = draw(st.sampled_from([np.float16, np.float32, np.int8]))
        lut = (rng.standard_normal(groups + (1 << nbits, 1)) * 50).astype(lut_dtype)
        if kind == "lut":
            return wp.PalettizedTensor(rng.integers(0, 1 << nbits, (rows, cols)), lut)
        return wp.SparsePalettizedTensor(mask, rng.integers(0, 1 << nbits, nnz), lut)
    if kind == "sparse":
        dtype = draw(st.sampled_from([np.float16, np.float32, np.int8]))
        return wp.SparseTensor(mask, (rng.standard_normal(nnz) * 50).astype(dtype))
    data_type = draw(st.sampled_from(["int4", "uint4", "int8", "uint8"]))
    lo, hi = int_range(data_type)
    bits, signed = int(data_type[-1]), data_type.startswith("int")
    scale = (rng.random(groups) * 0.1).astype(draw(st.sampled_from([np.float16, np.float32])))
    offset = draw(st.sampled_from([None, "int", "float"]))
    if offset == "int":
        offset = NBitArray.from_values(rng.integers(lo, hi + 1, groups), bits, signed=signed)
    elif offset == "float":
        offset = (rng.standard_normal(groups) * 3).astype(scale.dtype)
    if kind == "quant":
        return wp.QuantizedTensor(NBitArray.from_values(rng.integers(lo, hi + 1, (rows, cols)), bits, signed=signed), scale, offset)
    data = NBitArray.from_values(rng.integers(lo, hi + 1, nnz), bits, signed=signed)
    return wp.SparseQuantizedTensor(mask, data, scale, offset)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tensor=large_tensors(), dtype=st.sampled_from([None, np.float16, np.float32]))
def test_decompression_is_bit_identical_on_every_level(simd, tensor, dtype):
    assert_same_bits(tensor.decompress(dtype, backend="c"), tensor.decompress(dtype, backend="numpy"))


def test_decoders_refuse_a_mask_with_more_bits_than_stored_values(simd):
    """The C entry points check what the mask asks for against the stream before writing."""
    from weightpack._c import buffer, ffi, lib, status

    count = 8192 + 64 * 3 + 5
    mask = np.packbits(np.ones(count, np.uint8), bitorder="little")
    values = np.ones(count - 1, np.float16)  # one value short
    out = np.empty(count, np.float32)
    rc = lib.wp_sparse_decode(buffer(mask), mask.size, count, buffer(values), values.size, 2, 1,
                              buffer(out, writable=True), out.size)
    assert rc == status.SIZE
    codes = np.zeros((count - 1) // 2, np.uint8)  # 4-bit codes for count - 2 elements
    table = np.zeros(16, np.float32)
    row = np.zeros(1, np.int64)
    rc = lib.wp_lut_decode(buffer(codes), codes.size, 4, buffer(mask), mask.size, 1, count,
                           buffer(row, "long long[]"), count, buffer(table), ffi.NULL, ffi.NULL, 1, 16, 1, 4,
                           buffer(row, "long long[]"), 1, 1, buffer(out, writable=True), out.size)
    assert rc == status.SIZE
