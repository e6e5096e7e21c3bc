"""Decompression is bit-identical to coremltools' own reference decompressors (the `decompress`
static methods of the constexpr ops), fed the same arrays its model loader would give them.

iOS 18 ops take every layout weightpack stores; the iOS 16 ops take the subset they can express
(one LUT of scalars, no 3-bit, 8-bit quantization per tensor or per channel), with weightpack's
packed bytes passed as the iOS 16 `uint8` index and mask streams.
"""
import numpy as np
import pytest
from coremltools.converters.mil.mil.ops.defs.iOS16 import constexpr_ops as ios16
from coremltools.converters.mil.mil.ops.defs.iOS18 import compression as ios18
from coremltools.optimize._utils import pack_elements_into_bits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strategies import (
    CASES,
    IOS16_NBITS,
    assert_same_bits,
    decompress_on,
    palettized_cases,
    quantized_cases,
    sparse_cases,
)
from weightpack import (
    PalettizedTensor,
    QuantizedTensor,
    SparsePalettizedTensor,
    SparseQuantizedTensor,
    SparseTensor,
)

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------- coremltools' iOS 18 decoders


def ios18_sparse(raw):
    return ios18.constexpr_sparse_to_dense.decompress(raw["nonzero_data"], raw["mask"])


def ios18_palettized(raw):
    return ios18.constexpr_lut_to_dense.decompress(raw["indices"], raw["lut"], raw["vector_axis"])


def ios18_quantized(raw):
    return ios18.constexpr_blockwise_shift_scale.decompress(raw["data"], raw["scale"], raw["offset"])


def ios18_sparse_palettized(raw):
    mask, nonzero = ios18.constexpr_lut_to_sparse.decompress(
        raw["indices_mask"], raw["indices_nonzero_data"], raw["lut"], raw["vector_axis"]
    )
    return ios18.constexpr_sparse_to_dense.decompress(nonzero, mask)


def ios18_sparse_quantized(raw):
    mask, nonzero = ios18.constexpr_sparse_blockwise_shift_scale.decompress(
        raw["data_mask"], raw["nonzero_data"], raw["scale"], raw["offset"]
    )
    return ios18.constexpr_sparse_to_dense.decompress(nonzero, mask)


IOS18 = {
    SparseTensor: ios18_sparse,
    PalettizedTensor: ios18_palettized,
    QuantizedTensor: ios18_quantized,
    SparsePalettizedTensor: ios18_sparse_palettized,
    SparseQuantizedTensor: ios18_sparse_quantized,
}


def check(tensor, backend, reference):
    """``tensor`` decompresses on ``backend`` to exactly ``reference()``, in its natural dtype
    and cast to fp16 / fp32; a backend without the kernel raises BackendError instead."""
    natural = decompress_on(tensor, backend)
    if natural is None:
        return
    expected = reference()
    assert_same_bits(natural, expected)
    for dtype in (np.float16, np.float32):
        assert_same_bits(decompress_on(tensor, backend, dtype), expected.astype(dtype))


@pytest.mark.parametrize("cls", list(CASES), ids=lambda c: c.__name__)
@fixture_ok
@given(data=st.data())
def test_ios18_decompress_is_bit_identical(backend, cls, data):
    case = data.draw(CASES[cls](), label="case")
    check(case.build(), backend, lambda: IOS18[cls](case.raw))


# ------------------------------------------------------------------- coremltools' iOS 16 decoders


@fixture_ok
@given(palettized_cases(nbits_choices=IOS16_NBITS, vector_sizes=(1,), grouped=False))
def test_ios16_lut_to_dense(backend, case):
    tensor = case.build()
    indices = tensor.indices.packed  # the iOS 18 uint{n} blob's bytes are the iOS 16 uint8 stream
    assert indices.tobytes() == pack_elements_into_bits(case.raw["indices"].ravel(), tensor.nbits).tobytes()
    shape = np.array(tensor.shape, np.uint32)
    check(tensor, backend, lambda: ios16.constexpr_lut_to_dense.decompress(tensor.lut.reshape(-1), indices, shape))


@fixture_ok
@given(sparse_cases(value_types=("fp16", "fp32", "int8", "uint8")))
def test_ios16_sparse_to_dense(backend, case):
    tensor = case.build()
    mask = tensor.mask.packed  # the iOS 18 uint1 mask's bytes are the iOS 16 packed mask
    assert mask.tobytes() == np.packbits(case.raw["mask"].ravel(), bitorder="little").tobytes()
    shape = np.array(tensor.shape, np.uint32)
    check(
        tensor, backend, lambda: ios16.constexpr_sparse_to_dense.decompress(case.raw["nonzero_data"], mask, shape)
    )


def ios16_affine_params(case, float_zero_point=False):
    """(zero_point, scale, axis) of constexpr_affine_dequantize for a per-tensor / per-channel case,
    as coremltools' ios18_quant_params_to_ios16 builds them: rank 0 or 1, explicit zero point."""
    raw, axis = case.raw, case.info["axis"]
    squeeze = (lambda a: a.reshape(())) if axis is None else (lambda a: a.reshape(-1))
    offset = raw["offset"]
    if offset is None:
        offset = np.zeros_like(raw["scale"], raw["data"].dtype)
    zero_point = squeeze(offset.astype(np.float32) if float_zero_point else offset)
    return zero_point, squeeze(raw["scale"]), np.int32(0 if axis is None else axis)


IOS16_QUANT = {"data_types": ("int8", "uint8"), "kinds": ("per_tensor", "per_channel")}


@fixture_ok
@given(
    quantized_cases(**IOS16_QUANT, offsets=("none", "int"))
    | quantized_cases(**IOS16_QUANT, offsets=("float",), scale_dtypes=(np.float32,))
)
def test_ios16_affine_dequantize_equals_ios18(backend, case):
    """iOS 16 evaluates in fp32 and casts to the scale's dtype; iOS 18 in the scale's dtype. With
    integer data and offsets, q - offset is exact in both, so each rounds the one product once;
    with an fp32 scale (and so an fp32 offset) both are the same fp32 arithmetic."""
    zero_point, scale, axis = ios16_affine_params(case, float_zero_point=case.info["offset_kind"] == "float")
    check(
        case.build(),
        backend,
        lambda: ios16.constexpr_affine_dequantize.decompress(case.raw["data"], zero_point, scale, axis),
    )


@fixture_ok
@given(quantized_cases(**IOS16_QUANT, offsets=("float",), scale_dtypes=(np.float16,)))
def test_ios16_affine_dequantize_with_fp16_offsets_differs_only_by_rounding_q_minus_offset(backend, case):
    """An fp16 offset needs an fp32 zero point on iOS 16 (its zero_point is uint8/int8/fp32). iOS 18
    rounds q - offset to fp16 before the product; iOS 16 keeps it in fp32. Exactly that differs:
    iOS 18 = fp16(scale * fp16(q - offset)) and iOS 16 = fp16(scale * fp32(q - offset)), products in fp32."""
    tensor = case.build()
    out = decompress_on(tensor, backend)
    if out is None:
        return
    zero_point, scale, axis = ios16_affine_params(case, float_zero_point=True)
    ios16_out = ios16.constexpr_affine_dequantize.decompress(case.raw["data"], zero_point, scale, axis)
    data, offset, full_scale = broadcast_block_params(case)
    diff16 = data.astype(np.float16) - offset
    diff32 = data.astype(np.float32) - offset.astype(np.float32)
    with np.errstate(invalid="ignore"):  # inf * 0 in the expectation is NaN, as in the decoder
        assert_same_bits(out, (full_scale.astype(np.float32) * diff16.astype(np.float32)).astype(np.float16))
        assert_same_bits(ios16_out, (full_scale.astype(np.float32) * diff32).astype(np.float16))
    exact = diff16.astype(np.float32) == diff32  # where fp16 holds q - offset exactly, no difference
    assert_same_bits(out[exact], ios16_out[exact])


def broadcast_block_params(case):
    """data, offset and scale of a quantized case, offset and scale repeated to the data's shape."""
    data, scale, offset = case.raw["data"], case.raw["scale"], case.raw["offset"]
    for axis, (dim, blocks) in enumerate(zip(data.shape, scale.shape)):
        scale, offset = np.repeat(scale, dim // blocks, axis), np.repeat(offset, dim // blocks, axis)
    return data, offset, scale


def test_ios16_affine_dequantize_fp16_offset_example():
    """The smallest kind of discrepancy: one fp16 ulp. q=255, offset=fp16(0.3), scale=fp16(0.01):
    fp16(255 - 0.2998) = 254.75 and 254.75 * 0.010002 rounds to 0x4119 (2.549), while
    254.7002 * 0.010002 rounds to 0x4118 (2.547)."""
    data = np.array([255], np.uint8)
    scale, offset = np.array([np.float16(0.01)]), np.array([np.float16(0.3)])
    ios18_out = QuantizedTensor(data, scale, offset).decompress()
    assert_same_bits(ios18_out, ios18.constexpr_blockwise_shift_scale.decompress(data, scale, offset))
    ios16_out = ios16.constexpr_affine_dequantize.decompress(data, offset.astype(np.float32), scale, 0)
    assert ios18_out.view(np.uint16).tolist() == [0x4119]
    assert ios16_out.view(np.uint16).tolist() == [0x4118]
