"""weightpack.formats: validation, immutability, nbytes, decompress dtypes, equality and repr.

(That decompression computes Core ML's values is tested against coremltools in test_coreml_oracle.)
"""
import re

import numpy as np
import pytest
from hypothesis import given

from strategies import CASES, any_cases, assert_same_bits, type_bits
from weightpack import (
    BackendError,
    FormatError,
    NBitArray,
    PalettizedTensor,
    QuantizedTensor,
    SparsePalettizedTensor,
    SparseQuantizedTensor,
    SparseTensor,
    WeightpackError,
    kernels,
)

# fp32 values beyond fp16's range become inf when decompressed to fp16, as numpy casts them
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
F16, F32 = np.float16, np.float32
MASK = np.array([[1, 0, 1], [0, 1, 1]], bool)  # 4 set bits


def example(cls):
    """Keyword arguments (fresh writeable numpy arrays) of a small tensor of each type."""
    mask = np.array([[1, 0, 1, 1, 0], [0, 1, 0, 0, 1], [1, 0, 0, 0, 0]], np.uint8)
    if cls is SparseTensor:
        return {"mask": mask, "nonzero_data": np.array([1.5, -2, 0, -0.0, 7, 3e-40], F32)}
    if cls is PalettizedTensor:
        lut = np.arange(24, dtype=F16).reshape(3, 1, 8, 1) - 11
        return {"indices": np.arange(15, dtype=np.uint8).reshape(3, 5) % 8, "lut": lut}
    if cls is QuantizedTensor:
        data = np.arange(15, dtype=np.int8).reshape(3, 5) - 7
        return {"data": data, "scale": np.array([[0.5], [2], [-1]], F32), "offset": np.array([[0], [1], [-3]], np.int8)}
    if cls is SparsePalettizedTensor:
        lut = np.linspace(-1, 1, 16, dtype=F32).reshape(1, 1, 8, 2)
        return {"indices_mask": mask, "indices_nonzero_data": np.array([0, 7, 3, 1, 2, 5], np.uint8), "lut": lut, "vector_axis": 0}
    return {
        "data_mask": mask,
        "nonzero_data": np.array([-1, 5, 127, -128, 0, 3], np.int8),
        "scale": np.array([[0.25], [1], [-4]], F16),
        "offset": np.array([[1.5], [0], [-0.5]], F16),
    }


EXPECTED = {  # the dense values of the examples, worked out by hand
    SparseTensor: [[1.5, 0, -2, 0, 0], [0, -0.0, 0, 0, 7], [3e-40, 0, 0, 0, 0]],
    PalettizedTensor: [[-11, -10, -9, -8, -7], [2, 3, 4, -3, -2], [7, 8, 9, 10, 11]],  # row r uses LUT r
    QuantizedTensor: [[-3.5, -3, -2.5, -2, -1.5], [-6, -4, -2, 0, 2], [-6, -7, -8, -9, -10]],
    SparseQuantizedTensor: [[-0.625, 0, 0.875, 31.375, 0], [0, -128, 0, 0, 0], [-14, 0, 0, 0, 0]],
}
CLASSES = list(CASES)
ids = pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)


@ids
def test_examples_decompress_to_the_hand_computed_values(cls):
    tensor = cls(**example(cls))
    if cls is SparsePalettizedTensor:  # vector LUT of pairs along axis 0: rows 2r, 2r+1 from index row r
        lut = example(cls)["lut"].reshape(8, 2)
        expected = np.zeros((6, 5), F32)
        for (r, c), idx in zip(np.argwhere(example(cls)["indices_mask"]), [0, 7, 3, 1, 2, 5]):
            expected[2 * r : 2 * r + 2, c] = lut[idx]
    else:
        expected = np.array(EXPECTED[cls], tensor.dtype)
    assert_same_bits(tensor.decompress(), expected)


# --------------------------------------------------------------------------------------- validation


def nbit(values, type_name):
    return NBitArray.from_values(np.array(values), type_bits(type_name), signed=type_name.startswith("int"))


def lut(groups=(1, 1), entries=4, vector=1, dtype=F16):
    return np.zeros(tuple(groups) + (entries, vector), dtype)


IDX = np.zeros((4, 6), np.uint8)
DATA = np.zeros((4, 6), np.int8)
SCALE = np.ones((4, 1), F16)
NONZERO4 = np.ones(4, F16)

BAD_INPUTS = [
    # SparseTensor
    (lambda: SparseTensor(MASK, np.ones(3, F16)), r"mask has 4 set bits but nonzero_data holds 3 values"),
    (lambda: SparseTensor(np.array([0, 2, 1]), np.ones(2, F16)), r"mask must hold only 0 and 1"),
    (lambda: SparseTensor(np.array([0.0, 1.0]), np.ones(1, F16)), r"mask must be boolean or 0/1 integers, got dtype float64"),
    (lambda: SparseTensor(np.bool_(True), np.ones(1, F16)), r"mask must have at least one dimension"),
    (lambda: SparseTensor(nbit([1, 1], "uint2"), np.ones(2, F16)), r"mask must be a uint1 NBitArray, got uint2"),
    (lambda: SparseTensor(MASK, np.ones((2, 2), F16)), r"nonzero_data must have 1 dimension\(s\), got shape \(2, 2\)"),
    (lambda: SparseTensor(MASK, np.ones(4)), r"nonzero_data has dtype float64; allowed: fp16, fp32, int8, uint8"),
    (lambda: SparseTensor(MASK, np.ones(4, np.int16)), r"nonzero_data has dtype int16"),
    (lambda: SparseTensor(MASK, np.array([1, np.nan, 1, 1], F16)), r"nonzero_data contains NaN or infinity"),
    (lambda: SparseTensor(MASK, np.array([1, 1, -np.inf, 1], F32)), r"nonzero_data contains NaN or infinity"),
    (lambda: SparseTensor(MASK, nbit([1, 1, 1, 1], "uint2")), r"nonzero_data has Core ML dtype uint2; allowed: int4, uint4, int8, uint8"),
    (lambda: SparseTensor(MASK, nbit([[1, 1], [1, 1]], "int4")), r"nonzero_data must be 1-D"),
    # PalettizedTensor
    (lambda: PalettizedTensor(IDX, lut(entries=3)), r"lut has 3 entries per table \(lut.shape\[-2\]\); allowed: \[2, 4, 8, 16, 64, 256\]"),
    (lambda: PalettizedTensor(IDX, lut(entries=32)), r"lut has 32 entries per table"),
    (lambda: PalettizedTensor(IDX, lut(entries=1)), r"lut has 1 entries per table"),
    (lambda: PalettizedTensor(IDX, np.zeros((4, 1), F16)), r"lut must have shape \[G0..G\(K-1\), 2\*\*nbits, V\]"),
    (lambda: PalettizedTensor(IDX, lut(groups=(1,))), r"lut has rank 3 .* must be the rank of the indices \(2, shape \(4, 6\)\) plus 2"),
    (lambda: PalettizedTensor(IDX, lut(vector=0)), r"lut's vector size lut.shape\[-1\] must be at least 1, got 0"),
    (lambda: PalettizedTensor(IDX, lut(dtype=np.float64)), r"lut has dtype float64; allowed: fp16, fp32, int8, uint8"),
    (lambda: PalettizedTensor(IDX, lut(dtype=np.int16)), r"lut has dtype int16"),
    (lambda: PalettizedTensor(IDX, np.full((1, 1, 2, 1), np.inf, F32)), r"lut contains NaN or infinity"),
    (lambda: PalettizedTensor(IDX + 4, lut()), r"indices holds 4, beyond the LUT's 4 entries \[0, 3\]"),
    (lambda: PalettizedTensor(IDX.astype(int) - 1, lut()), r"indices holds -1, beyond the LUT's 4 entries"),
    (lambda: PalettizedTensor(IDX.astype(F32), lut()), r"indices must hold integers, got dtype float32"),
    (lambda: PalettizedTensor(nbit(IDX, "uint3"), lut()), r"indices has Core ML dtype uint3; allowed: uint2"),
    (lambda: PalettizedTensor(IDX, lut(groups=(3, 1))), r"lut's group dimensions.shape\[0\]=3 must divide the data's dimension 4"),
    (lambda: PalettizedTensor(IDX, lut(groups=(1, 4))), r"lut's group dimensions.shape\[1\]=4 must divide the data's dimension 6"),
    (lambda: PalettizedTensor(IDX, lut(groups=(0, 1))), r"lut's group dimensions.shape\[0\]=0 must divide"),
    (lambda: PalettizedTensor(IDX, lut(vector=2)), r"vector_axis=None must be an integer in \[-2, 2\) for a vector LUT \(V = 2\)"),
    (lambda: PalettizedTensor(IDX, lut(vector=2), vector_axis=2), r"vector_axis=2 must be an integer in \[-2, 2\)"),
    (lambda: PalettizedTensor(IDX, lut(vector=2), vector_axis=-3), r"vector_axis=-3 must be an integer"),
    (lambda: PalettizedTensor(IDX, lut(vector=2), vector_axis=1.0), r"vector_axis=1.0 must be an integer"),
    (lambda: PalettizedTensor(IDX, lut(vector=2), vector_axis=True), r"vector_axis=True must be an integer"),
    (lambda: PalettizedTensor(IDX, lut(), vector_axis=0), r"vector_axis=0 must be None for a scalar LUT \(V = 1\)"),
    # QuantizedTensor
    (lambda: QuantizedTensor(DATA.astype(F32), SCALE), r"data must hold integers, got dtype float32"),
    (lambda: QuantizedTensor(DATA.astype(np.int16), SCALE), r"data has dtype int16; pass int8/uint8 or an NBitArray"),
    (lambda: QuantizedTensor(nbit(DATA, "uint2"), SCALE), r"data has Core ML dtype uint2; allowed: int4, uint4, int8, uint8"),
    (lambda: QuantizedTensor(np.int8(3), np.ones((), F16)), r"data must have at least one dimension"),
    (lambda: QuantizedTensor(DATA, np.ones(4, F16)), r"scale has rank 1 \(shape \(4,\)\); it must have the data's rank 2"),
    (lambda: QuantizedTensor(DATA, np.ones((3, 1), F16)), r"scale.shape\[0\]=3 must divide the data's dimension 4"),
    (lambda: QuantizedTensor(DATA, np.ones((4, 0), F16)), r"scale.shape\[1\]=0 must divide"),
    (lambda: QuantizedTensor(DATA, np.ones((4, 1))), r"scale has dtype float64; allowed: fp16, fp32"),
    (lambda: QuantizedTensor(DATA, np.ones((4, 1), np.int8)), r"scale has dtype int8"),
    (lambda: QuantizedTensor(DATA, np.full((4, 1), np.nan, F16)), r"scale contains NaN or infinity"),
    (lambda: QuantizedTensor(DATA, SCALE, np.zeros((4, 1), np.uint8)), r"offset has dtype uint8; an integer offset must have the data's dtype int8"),
    (lambda: QuantizedTensor(DATA.astype(np.uint8), SCALE, np.zeros((4, 1), np.int8)), r"offset has dtype int8; .* dtype uint8"),
    (lambda: QuantizedTensor(DATA, SCALE, np.zeros((4, 1), np.int16)), r"offset has dtype int16"),
    (lambda: QuantizedTensor(nbit(DATA, "int4"), SCALE, nbit([[0]] * 4, "int8")), r"offset has Core ML dtype int8; allowed: int4"),
    (lambda: QuantizedTensor(nbit(DATA, "int4"), SCALE, np.full((4, 1), 8, np.int8)), r"offset holds 8, outside the int4 range \[-8, 7\]"),
    (lambda: QuantizedTensor(nbit(DATA, "uint4"), SCALE, np.full((4, 1), 16, np.uint8)), r"offset holds 16, outside the uint4 range"),
    (lambda: QuantizedTensor(DATA, SCALE, np.zeros((4, 1), F32)), r"offset has dtype float32; allowed: fp16"),
    (lambda: QuantizedTensor(DATA, SCALE.astype(F32), np.zeros((4, 1), F16)), r"offset has dtype float16; allowed: fp32"),
    (lambda: QuantizedTensor(DATA, SCALE, np.full((4, 1), np.inf, F16)), r"offset contains NaN or infinity"),
    (lambda: QuantizedTensor(DATA, SCALE, np.zeros((2, 1), np.int8)), r"offset has shape \(2, 1\); it must match scale's shape \(4, 1\)"),
    (lambda: QuantizedTensor(DATA, SCALE, np.zeros((4, 1), bool)), r"offset has dtype bool"),
    # SparsePalettizedTensor
    (lambda: SparsePalettizedTensor(MASK, np.zeros(3, np.uint8), lut()), r"indices_mask has 4 set bits but indices_nonzero_data holds 3"),
    (lambda: SparsePalettizedTensor(MASK, np.zeros((2, 2), np.uint8), lut()), r"indices_nonzero_data must be 1-D"),
    (lambda: SparsePalettizedTensor(MASK, np.array([0, 1, 4, 0]), lut()), r"indices_nonzero_data holds 4, beyond the LUT's 4 entries"),
    (lambda: SparsePalettizedTensor(MASK, np.zeros(4, np.uint8), lut(groups=(1,))), r"lut has rank 3 .* the mask's rank 2 plus 2"),
    (lambda: SparsePalettizedTensor(MASK, np.zeros(4, np.uint8), lut(groups=(1, 2))), r"lut's group dimensions.shape\[1\]=2 must divide the data's dimension 3"),
    (lambda: SparsePalettizedTensor(MASK, np.zeros(4, np.uint8), lut(vector=4)), r"vector_axis=None must be an integer"),
    (lambda: SparsePalettizedTensor(MASK, np.zeros(4, np.uint8), lut(), vector_axis=-1), r"vector_axis=-1 must be None"),
    (lambda: SparsePalettizedTensor(MASK * 3, np.zeros(4, np.uint8), lut()), r"indices_mask must hold only 0 and 1"),
    (lambda: SparsePalettizedTensor(MASK, np.zeros(4, np.uint8), lut(entries=5)), r"lut has 5 entries"),
    # SparseQuantizedTensor
    (lambda: SparseQuantizedTensor(MASK, np.zeros(5, np.int8), np.ones((2, 1), F16)), r"data_mask has 4 set bits but nonzero_data holds 5"),
    (lambda: SparseQuantizedTensor(MASK, nbit([[0, 0], [0, 0]], "int4"), np.ones((2, 1), F16)), r"nonzero_data must be 1-D"),
    (lambda: SparseQuantizedTensor(MASK, NONZERO4, np.ones((2, 1), F16)), r"nonzero_data must hold integers"),
    (lambda: SparseQuantizedTensor(MASK, np.zeros(4, np.int8), np.ones(2, F16)), r"scale has rank 1 .* data's rank 2"),
    (lambda: SparseQuantizedTensor(MASK, np.zeros(4, np.int8), np.ones((1, 2), F16)), r"scale.shape\[1\]=2 must divide the data's dimension 3"),
    (lambda: SparseQuantizedTensor(MASK, np.zeros(4, np.int8), np.ones((2, 1), F16), np.zeros((2, 1), np.uint8)), r"offset has dtype uint8"),
    (lambda: SparseQuantizedTensor(np.array([[2]]), np.zeros(1, np.int8), np.ones((1, 1), F16)), r"data_mask must hold only 0 and 1"),
]


@pytest.mark.parametrize("build, message", BAD_INPUTS)
def test_bad_input_raises_a_weightpack_error_naming_the_argument(build, message):
    with pytest.raises(WeightpackError, match=message):
        build()


def test_nonzero_padding_bits_in_packed_input_are_format_errors():
    # a packed mask of 3 elements whose 5 padding bits are not all zero
    with pytest.raises(FormatError, match=r"padding bits of the last byte \(byte 0, value 0x0f\)"):
        SparseTensor(NBitArray(b"\x0f", 1, (3,)), np.ones(4, F16))
    with pytest.raises(FormatError, match="padding bits"):
        PalettizedTensor(NBitArray(b"\x00\x10", 3, (2, 2)), lut(entries=8))


def test_caller_arrays_are_never_modified():
    for cls in CLASSES:
        kwargs = example(cls)
        before = {k: v.copy() for k, v in kwargs.items() if isinstance(v, np.ndarray)}
        tensor = cls(**kwargs)
        tensor.decompress()
        tensor.decompress(F32)
        for key, value in before.items():
            assert_same_bits(kwargs[key], value)


@ids
def test_later_changes_to_the_callers_arrays_do_not_reach_the_tensor(cls):
    kwargs = example(cls)
    tensor = cls(**kwargs)
    dense = tensor.decompress()
    for value in kwargs.values():
        if isinstance(value, np.ndarray):
            value[...] = 1 - value  # every element changes (and masks stay 0/1)
    assert_same_bits(tensor.decompress(), dense)


@ids
def test_read_only_views_of_writeable_arrays_are_copied(cls):
    kwargs = example(cls)
    views = {}
    for key, value in kwargs.items():
        if isinstance(value, np.ndarray):
            views[key] = value.view()
            views[key].flags.writeable = False
    tensor = cls(**{**kwargs, **views})
    dense = tensor.decompress()
    for key in views:
        kwargs[key][...] = 1 - kwargs[key]
    assert_same_bits(tensor.decompress(), dense)


@ids
def test_tensors_are_immutable(cls):
    tensor = cls(**example(cls))
    for name in [*cls.__slots__, "shape", "dtype", "new_attribute"]:
        with pytest.raises(AttributeError):
            setattr(tensor, name, None)
    for name in cls.__slots__:
        with pytest.raises(AttributeError, match="immutable"):
            delattr(tensor, name)
    for name, stored in tensor.arrays().items():
        if stored is None:
            continue
        buffer = stored.packed if isinstance(stored, NBitArray) else stored
        assert not buffer.flags.writeable, name
        with pytest.raises(ValueError, match="read-only"):
            buffer[...] = 0
    dense = tensor.decompress()
    dense[...] = 0  # the result is the caller's own array
    assert tensor.decompress().any()


# ------------------------------------------------------------------------------------------- nbytes


@pytest.mark.parametrize(
    "build, nbytes",
    [
        # mask 15 bits -> 2 bytes, 6 fp32 values -> 24
        (lambda: SparseTensor(**example(SparseTensor)), 2 + 24),
        # mask 12 bits -> 2 bytes, 5 int4 values -> 3 bytes
        (lambda: SparseTensor(example(SparseTensor)["mask"][:, :4], nbit([1, -2, 3, 7, -8], "int4")), 2 + 3),
        # indices 15 x 3 bits -> 6 bytes, LUT 3 x 8 fp16 -> 48
        (lambda: PalettizedTensor(**example(PalettizedTensor)), 6 + 48),
        # indices 4 x 6 x 1 bit -> 3 bytes, LUT 2 x 2 x 3 (vector) fp32 -> 48 (nothing for vector_axis)
        (lambda: PalettizedTensor(IDX, lut(groups=(2, 1), entries=2, vector=3, dtype=F32), vector_axis=1), 3 + 48),
        # data 15 int8 -> 15, scale 3 fp32 -> 12, offset 3 int8 -> 3
        (lambda: QuantizedTensor(**example(QuantizedTensor)), 15 + 12 + 3),
        # data 15 int4 -> 8, scale 3 fp32 -> 12, offset 3 int4 -> 2
        (lambda: QuantizedTensor(nbit(np.arange(15).reshape(3, 5) - 7, "int4"), np.ones((3, 1), F32), np.zeros((3, 1), np.int8)), 8 + 12 + 2),
        # per-tensor uint4 without offset: 24 x 4 bits -> 12, scale 1 fp16 -> 2
        (lambda: QuantizedTensor(nbit(IDX, "uint4"), np.ones((1, 1), F16)), 12 + 2),
        # mask 2, 6 x 3 bits -> 3 bytes, LUT 8 x 2 fp32 -> 64
        (lambda: SparsePalettizedTensor(**example(SparsePalettizedTensor)), 2 + 3 + 64),
        # mask 2, 6 int8 -> 6, scale 3 fp16 -> 6, offset 3 fp16 -> 6
        (lambda: SparseQuantizedTensor(**example(SparseQuantizedTensor)), 2 + 6 + 6 + 6),
        # mask 18 bits -> 3, 7 uint4 -> 4, scale 6 fp16 -> 12, offset 6 uint4 -> 3
        (
            lambda: SparseQuantizedTensor(
                np.ones((2, 9), bool) & (np.arange(18).reshape(2, 9) % 3 == 0) | (np.arange(18).reshape(2, 9) == 1),
                nbit(np.arange(7), "uint4"),
                np.ones((2, 3), F16),
                np.full((2, 3), 7, np.uint8),
            ),
            3 + 4 + 12 + 3,
        ),
    ],
)
def test_nbytes_examples(build, nbytes):
    assert build().nbytes == nbytes


def stored_nbytes(case):
    """The bytes Core ML stores for a drawn case, from its raw arrays: bit streams are packed."""
    info, total = case.info, 0
    for key, value in case.raw.items():
        if not isinstance(value, np.ndarray):
            continue  # vector_axis, a missing offset
        if "mask" in key:
            bits = 1
        elif "indices" in key:
            bits = info["nbits"]
        elif key in ("data", "nonzero_data") or (key == "offset" and info.get("offset_kind") == "int"):
            type_name = info.get("data_type") or info["value_type"]
            bits = type_bits(type_name) if not type_name.startswith("fp") else None
        else:
            bits = None
        total += value.nbytes if bits is None else (value.size * bits + 7) // 8
    return total


@given(any_cases())
def test_nbytes_is_the_sum_of_the_stored_arrays(case):
    assert case.build().nbytes == stored_nbytes(case)


# --------------------------------------------------------------------------------------- decompress


@given(any_cases())
def test_shape_dtype_and_decompress_dtypes(case):
    tensor = case.build()
    raw = case.raw
    shape = list(next(v for k, v in raw.items() if k in ("mask", "indices", "indices_mask", "data", "data_mask")).shape)
    if raw.get("vector_axis") is not None:
        shape[raw["vector_axis"]] *= raw["lut"].shape[-1]
    natural = tensor.decompress()
    assert tensor.shape == natural.shape == tuple(shape)
    assert natural.dtype == tensor.dtype
    for dtype in (None, tensor.dtype, F16, F32, "float16", np.dtype("float32")):
        out = tensor.decompress(dtype)
        assert_same_bits(out, natural if dtype is None else natural.astype(dtype))


@ids
@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int16, "foo", object, "int4", 3])
def test_decompress_refuses_other_dtypes(cls, dtype):
    tensor = cls(**example(cls))
    with pytest.raises(WeightpackError, match=rf"dtype={re.escape(repr(dtype))} is not available for {cls.__name__}"):
        tensor.decompress(dtype)


def test_decompress_keeps_integer_lut_dtypes():
    tensor = PalettizedTensor(np.array([1, 0, 1]), np.array([-128, 127], np.int8).reshape(1, 2, 1))
    assert_same_bits(tensor.decompress(), np.array([127, -128, 127], np.int8))
    assert_same_bits(tensor.decompress(F16), np.array([127, -128, 127], F16))
    with pytest.raises(WeightpackError, match="allowed: int8 \\(natural\\), fp16, fp32"):
        tensor.decompress(np.uint8)


@ids
def test_a_backend_without_the_kernel_raises_backend_error(cls, backend, monkeypatch):
    tensor = cls(**example(cls))
    monkeypatch.delattr(kernels.load(backend), tensor._kernel, raising=False)
    with pytest.raises(BackendError, match=rf"backend '{backend}' does not implement '{tensor._kernel}'"):
        tensor.decompress(backend=backend)
    with pytest.raises(BackendError, match="unknown"):
        tensor.decompress(backend="gpu")


# ------------------------------------------------------------------------------- equality and repr


@ids
def test_equality(cls):
    tensor = cls(**example(cls))
    assert tensor == cls(**example(cls))
    assert not tensor != cls(**example(cls))
    others = [c(**example(c)) for c in CLASSES if c is not cls]
    assert all(tensor != other for other in others)
    assert tensor != "a tensor" and tensor != None  # noqa: E711
    with pytest.raises(TypeError):
        hash(tensor)


@pytest.mark.parametrize(
    "a, b",
    [
        (lambda: SparseTensor(MASK, NONZERO4), lambda: SparseTensor(nbit(MASK.astype(int), "uint1"), NONZERO4)),
        (lambda: SparseTensor(MASK, NONZERO4), lambda: SparseTensor(MASK.astype(np.int64), NONZERO4.copy())),
        (lambda: PalettizedTensor(IDX, lut()), lambda: PalettizedTensor(nbit(IDX, "uint2"), lut())),
        (lambda: PalettizedTensor(IDX, lut(vector=2), -1), lambda: PalettizedTensor(IDX, lut(vector=2), 1)),
        (lambda: QuantizedTensor(DATA, SCALE, DATA[:, :1]), lambda: QuantizedTensor(nbit(DATA, "int8"), SCALE, nbit(DATA[:, :1], "int8"))),
    ],
)
def test_equal_whatever_the_input_form(a, b):
    assert a() == b()


@pytest.mark.parametrize(
    "a, b",
    [
        (lambda: SparseTensor(MASK, NONZERO4), lambda: SparseTensor(MASK, np.array([1, 1, 1, 2], F16))),
        (lambda: SparseTensor(MASK, NONZERO4), lambda: SparseTensor(MASK, NONZERO4.astype(F32))),
        (lambda: SparseTensor(MASK, NONZERO4), lambda: SparseTensor(MASK[::-1], NONZERO4)),
        (lambda: SparseTensor(MASK, np.zeros(4, F16)), lambda: SparseTensor(MASK, -np.zeros(4, F16))),  # -0.0 is stored
        (lambda: PalettizedTensor(IDX, lut()), lambda: PalettizedTensor(IDX.reshape(6, 4), lut())),
        (lambda: PalettizedTensor(IDX, lut(vector=2), 0), lambda: PalettizedTensor(IDX, lut(vector=2), 1)),
        (lambda: PalettizedTensor(IDX, lut()), lambda: PalettizedTensor(IDX, lut(groups=(2, 1)))),
        (lambda: QuantizedTensor(DATA, SCALE), lambda: QuantizedTensor(DATA, SCALE, np.zeros((4, 1), np.int8))),
        (lambda: QuantizedTensor(DATA, SCALE, np.zeros((4, 1), np.int8)), lambda: QuantizedTensor(DATA, SCALE, np.zeros((4, 1), F16))),
        (lambda: QuantizedTensor(DATA, SCALE), lambda: QuantizedTensor(nbit(DATA, "int4"), SCALE)),
    ],
)
def test_unequal(a, b):
    assert a() != b() and not a() == b()


@pytest.mark.parametrize(
    "cls, text",
    [
        (SparseTensor, "SparseTensor(shape=(3, 5), dtype=fp32, nonzero_data=fp32[6], mask=uint1[3, 5], nbytes=26)"),
        (PalettizedTensor, "PalettizedTensor(shape=(3, 5), dtype=fp16, indices=uint3[3, 5], lut=fp16[3, 1, 8, 1], nbytes=54)"),
        (
            QuantizedTensor,
            "QuantizedTensor(shape=(3, 5), dtype=fp32, block=(1, 5), data=int8[3, 5], scale=fp32[3, 1], offset=int8[3, 1], nbytes=30)",
        ),
        (
            SparsePalettizedTensor,
            "SparsePalettizedTensor(shape=(6, 5), dtype=fp32, indices_mask=uint1[3, 5], indices_nonzero_data=uint3[6], "
            "lut=fp32[1, 1, 8, 2], nbytes=69)",
        ),
        (
            SparseQuantizedTensor,
            "SparseQuantizedTensor(shape=(3, 5), dtype=fp16, data_mask=uint1[3, 5], nonzero_data=int8[6], scale=fp16[3, 1], "
            "offset=fp16[3, 1], nbytes=20)",
        ),
    ],
)
def test_repr(cls, text):
    assert repr(cls(**example(cls))) == text


def test_repr_leaves_out_a_missing_offset():
    assert repr(QuantizedTensor(DATA, SCALE)) == (
        "QuantizedTensor(shape=(4, 6), dtype=fp16, block=(1, 6), data=int8[4, 6], scale=fp16[4, 1], nbytes=32)"
    )
