"""Hypothesis strategies for random valid compressed tensors, and the helpers tests share.

A strategy draws a :class:`Case`: the Core ML arrays of one tensor in the plain numpy form
coremltools' loader hands to its ops (``raw``: sub-byte integers as uint8/int8 values, masks as
0/1 uint8 arrays), plus the keyword arguments that build the weightpack tensor from them
(``kwargs``: the same values, sometimes as NBitArrays, bool masks or other equivalent forms).

Bulk values come from a numpy generator seeded by hypothesis (fast for hundreds of elements);
hypothesis picks everything structural (shapes, widths, layouts, dtypes, densities, value styles)
and shrinks it.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import strategies as st

from weightpack import (
    BackendError,
    NBitArray,
    PalettizedTensor,
    QuantizedTensor,
    SparsePalettizedTensor,
    SparseQuantizedTensor,
    SparseTensor,
    kernels,
)

NBITS = (1, 2, 3, 4, 6, 8)
IOS16_NBITS = (1, 2, 4, 6, 8)  # iOS 16 LUTs have 2, 4, 16, 64 or 256 entries: no 3-bit
VECTOR_SIZES = (1, 2, 3, 4, 8)
FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
LUT_DTYPES = FLOAT_DTYPES + (np.dtype(np.int8), np.dtype(np.uint8))
QUANT_TYPES = ("int4", "uint4", "int8", "uint8")
SPARSE_TYPES = ("fp16", "fp32", "int8", "uint8", "int4", "uint4")
BLOCK_KINDS = ("per_tensor", "per_channel", "per_block")
OFFSET_KINDS = ("none", "int", "float")
# Dimensions: 1, odd, even, not divisible by 8, divisible by 8, with divisors for groups/blocks.
DIMS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 15, 16, 24)
MAX_SIZE = 600  # elements per dense tensor: keeps every example fast
MAX_LUT = 4096  # elements of all LUTs together


def type_bits(type_name: str) -> int:
    """Width of a Core ML integer type ('uint3' -> 3, 'int8' -> 8)."""
    return int(type_name.removeprefix("u").removeprefix("int"))


def int_range(type_name: str) -> tuple[int, int]:
    """Inclusive value range of a Core ML integer type ('int4' -> (-8, 7))."""
    bits = type_bits(type_name)
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if type_name.startswith("int") else (0, (1 << bits) - 1)


def carrier(type_name: str) -> np.dtype:
    """The numpy dtype holding values of a Core ML integer type (int4 -> int8, uint3 -> uint8)."""
    return np.dtype(np.int8 if type_name.startswith("int") else np.uint8)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# ----------------------------------------------------------------------------------- building blocks


@st.composite
def shapes(draw, min_rank=1, max_rank=4, max_size=MAX_SIZE):
    """A shape of rank 1-4 whose dimensions come from DIMS and whose size is at most ``max_size``."""
    rank = draw(st.integers(min_rank, max_rank))
    dims, budget = [], max_size
    for _ in range(rank):
        dim = draw(st.sampled_from([d for d in DIMS if d <= budget] or [1]))
        dims.append(dim)
        budget = max(1, budget // dim)
    return tuple(dims)


@st.composite
def divisor_shapes(draw, shape, max_size=None):
    """A shape dividing ``shape`` axis by axis (LUT groups, scale blocks), at most ``max_size`` elements."""
    out, budget = [], max_size or int(np.prod(shape))
    for dim in shape:
        choices = [d for d in divisors(dim) if d <= budget] or [1]
        out.append(draw(st.sampled_from(choices)))
        budget = max(1, budget // out[-1])
    return tuple(out)


@st.composite
def generators(draw):
    """A numpy Generator seeded by hypothesis."""
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def _special_floats(dtype) -> np.ndarray:
    info = np.finfo(dtype)
    tiny_sub = info.smallest_subnormal
    return np.array(
        [0.0, -0.0, 1.0, -1.0, tiny_sub, -tiny_sub, info.smallest_normal, info.max, -info.max, info.eps], dtype
    )


@st.composite
def float_arrays(draw, shape, dtype, style=None):
    """Finite floats of ``dtype``: normal values across magnitudes, or sprinkled with -0.0,
    subnormals, the largest finite values, or one constant."""
    rng = draw(generators())
    style = style or draw(st.sampled_from(["normal", "special", "constant", "small"]))
    size = int(np.prod(shape))
    if style == "constant":
        return np.full(shape, draw(st.sampled_from(list(_special_floats(dtype)))), dtype)
    magnitude = {"normal": 10.0 ** rng.integers(-3, 4), "special": 1.0, "small": 1e-6}[style]
    values = (rng.standard_normal(size) * magnitude).astype(dtype)
    if style == "special" and size:
        picks = rng.random(size) < 0.3
        values[picks] = rng.choice(_special_floats(dtype), int(picks.sum()))
    return values.reshape(shape)


@st.composite
def int_arrays(draw, shape, type_name):
    """Values of a Core ML integer type, in its carrier dtype: uniform, the extremes only, or constant."""
    rng = draw(generators())
    lo, hi = int_range(type_name)
    style = draw(st.sampled_from(["uniform", "extremes", "constant"]))
    if style == "uniform":
        values = rng.integers(lo, hi, shape, endpoint=True)
    elif style == "extremes":
        values = rng.choice([lo, hi], shape)
    else:
        values = np.full(shape, draw(st.integers(lo, hi)))
    return values.astype(carrier(type_name))


@st.composite
def streams(draw, nbits_choices=NBITS, max_count=300):
    """(values, nbits, signed): 1-D integers for an n-bit stream in their carrier dtype (int8 when
    signed, which only 4 and 8 bits can be); lengths include 1, 7, 8, 9 and odd ones."""
    nbits = draw(st.sampled_from(nbits_choices))
    signed = nbits in (4, 8) and draw(st.booleans())
    count = draw(st.sampled_from([1, 7, 8, 9]) | st.integers(1, max_count))
    values = draw(int_arrays((count,), f"{'int' if signed else 'uint'}{nbits}"))
    return values, nbits, signed


@st.composite
def masks(draw, shape):
    """A 0/1 uint8 mask of any density, including all zeros and all ones."""
    density = draw(st.sampled_from([0.0, 1.0, 0.5]) | st.floats(0.0, 1.0))
    rng = draw(generators())
    return (rng.random(shape) < density).astype(np.uint8)


@st.composite
def mask_inputs(draw, mask):
    """The same mask as weightpack accepts it: bool array, 0/1 integers, or a packed NBitArray."""
    form = draw(st.sampled_from(["bool", "uint8", "nbit"]))
    if form == "bool":
        return mask.astype(bool)
    if form == "uint8":
        return mask.copy()
    return NBitArray.from_values(mask, 1)


@st.composite
def int_inputs(draw, values, type_name):
    """Integer values as weightpack accepts them: a numpy array of their carrier dtype (8-bit types
    only), or an NBitArray of exactly ``type_name``."""
    bits = type_bits(type_name)
    if bits == 8 and draw(st.booleans()):
        return values.copy()
    return NBitArray.from_values(values, bits, signed=type_name.startswith("int"))


@st.composite
def luts(draw, group_shape, nbits, vector_size, dtypes=LUT_DTYPES):
    """A LUT of shape ``group_shape + (2**nbits, vector_size)``: float or int8/uint8 entries."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    shape = tuple(group_shape) + (1 << nbits, vector_size)
    if dtype.kind == "f":
        return draw(float_arrays(shape, dtype))
    return draw(int_arrays(shape, dtype.name))


@st.composite
def lut_layouts(draw, max_size=MAX_SIZE, nbits_choices=NBITS, vector_sizes=VECTOR_SIZES, grouped=True):
    """(index shape S, nbits, V, vector_axis, LUT group shape G) with G dividing S and V * |S| bounded."""
    nbits = draw(st.sampled_from(nbits_choices))
    vector_size = draw(st.sampled_from(vector_sizes))
    shape = draw(shapes(max_size=max(1, max_size // vector_size)))
    vector_axis = None
    if vector_size > 1:
        vector_axis = draw(st.integers(-len(shape), len(shape) - 1))
    lut_budget = max(1, MAX_LUT // ((1 << nbits) * vector_size))
    groups = draw(divisor_shapes(shape, lut_budget)) if grouped else (1,) * len(shape)
    return shape, nbits, vector_size, vector_axis, groups


@st.composite
def scale_shapes(draw, shape, kinds=BLOCK_KINDS):
    """(kind, scale shape, axis): per-tensor (all ones), per-channel along ``axis``, or any blocks."""
    kind = draw(st.sampled_from(kinds))
    if kind == "per_tensor":
        return kind, (1,) * len(shape), None
    if kind == "per_channel":
        axis = draw(st.integers(0, len(shape) - 1))
        return kind, tuple(d if a == axis else 1 for a, d in enumerate(shape)), axis
    return kind, draw(divisor_shapes(shape)), None


@st.composite
def scale_offsets(draw, shape, data_type, kinds=BLOCK_KINDS, offsets=OFFSET_KINDS, scale_dtypes=FLOAT_DTYPES):
    """(info, raw scale, raw offset, offset as weightpack takes it) for data of ``shape``."""
    kind, scale_shape, axis = draw(scale_shapes(shape, kinds))
    dtype = np.dtype(draw(st.sampled_from(scale_dtypes)))
    scale = draw(float_arrays(scale_shape, dtype))
    offset_kind = draw(st.sampled_from(offsets))
    if offset_kind == "none":
        offset = offset_input = None
    elif offset_kind == "int":
        offset = draw(int_arrays(scale_shape, data_type))
        offset_input = draw(int_inputs(offset, data_type))
    else:
        if draw(st.booleans()):  # fractional zero points inside the data's range, as encoders make
            lo, hi = int_range(data_type)
            offset = draw(generators()).uniform(lo, hi, scale_shape).astype(dtype)
        else:
            offset = draw(float_arrays(scale_shape, dtype))
        offset_input = offset.copy()
    info = {"block_kind": kind, "axis": axis, "offset_kind": offset_kind}
    return info, scale, offset, offset_input


# ------------------------------------------------------------------------------------------ cases


@dataclasses.dataclass
class Case:
    """One random compressed tensor: ``raw`` are Core ML's arrays as coremltools' ops take them
    (keys are Core ML's parameter names), ``kwargs`` build the weightpack tensor, ``info`` says how
    it was drawn (types, layout)."""

    cls: type
    raw: dict
    kwargs: dict
    info: dict

    def build(self):
        return self.cls(**self.kwargs)


@st.composite
def sparse_cases(draw, value_types=SPARSE_TYPES):
    shape = draw(shapes())
    mask = draw(masks(shape))
    count = int(mask.sum())
    value_type = draw(st.sampled_from(value_types))
    if value_type.startswith("fp"):
        nonzero = draw(float_arrays((count,), np.dtype({"fp16": np.float16, "fp32": np.float32}[value_type])))
        nonzero_input = nonzero.copy()
    else:
        nonzero = draw(int_arrays((count,), value_type))
        nonzero_input = draw(int_inputs(nonzero, value_type))
    return Case(
        SparseTensor,
        {"nonzero_data": nonzero, "mask": mask},
        {"mask": draw(mask_inputs(mask)), "nonzero_data": nonzero_input},
        {"value_type": value_type},
    )


@st.composite
def _index_inputs(draw, indices, nbits):
    if draw(st.booleans()):
        return NBitArray.from_values(indices, nbits)
    return indices.astype(draw(st.sampled_from([np.uint8, np.int64])))


@st.composite
def palettized_cases(draw, nbits_choices=NBITS, vector_sizes=VECTOR_SIZES, grouped=True, lut_dtypes=LUT_DTYPES):
    shape, nbits, vsize, vaxis, groups = draw(lut_layouts(nbits_choices=nbits_choices, vector_sizes=vector_sizes, grouped=grouped))
    indices = draw(int_arrays(shape, f"uint{nbits}"))
    lut = draw(luts(groups, nbits, vsize, lut_dtypes))
    return Case(
        PalettizedTensor,
        {"indices": indices, "lut": lut, "vector_axis": vaxis},
        {"indices": draw(_index_inputs(indices, nbits)), "lut": lut.copy(), "vector_axis": vaxis},
        {"nbits": nbits, "group_shape": groups, "vector_size": vsize},
    )


@st.composite
def quantized_cases(draw, data_types=QUANT_TYPES, kinds=BLOCK_KINDS, offsets=OFFSET_KINDS, scale_dtypes=FLOAT_DTYPES):
    shape = draw(shapes())
    data_type = draw(st.sampled_from(data_types))
    data = draw(int_arrays(shape, data_type))
    info, scale, offset, offset_input = draw(scale_offsets(shape, data_type, kinds, offsets, scale_dtypes))
    return Case(
        QuantizedTensor,
        {"data": data, "scale": scale, "offset": offset},
        {"data": draw(int_inputs(data, data_type)), "scale": scale.copy(), "offset": offset_input},
        {"data_type": data_type, **info},
    )


def _sparsified(draw, dense, cls, values_key, mask_key, nonzero_key, inputs):
    """``dense`` with its ``values_key`` array stored sparsely: a mask of any density over it and
    the values at its set bits (every other array, and the layout, stay as drawn)."""
    mask = draw(masks(dense.raw[values_key].shape))
    nonzero = dense.raw[values_key][mask.astype(bool)]
    rest = {k: v for k, v in dense.raw.items() if k != values_key}
    rest_kwargs = {k: v for k, v in dense.kwargs.items() if k != values_key}
    return Case(
        cls,
        {mask_key: mask, nonzero_key: nonzero, **rest},
        {mask_key: draw(mask_inputs(mask)), nonzero_key: draw(inputs(nonzero)), **rest_kwargs},
        dense.info,
    )


@st.composite
def sparse_palettized_cases(draw):
    dense = draw(palettized_cases())
    inputs = lambda values: _index_inputs(values, dense.info["nbits"])  # noqa: E731
    return _sparsified(draw, dense, SparsePalettizedTensor, "indices", "indices_mask", "indices_nonzero_data", inputs)


@st.composite
def sparse_quantized_cases(draw):
    dense = draw(quantized_cases())
    inputs = lambda values: int_inputs(values, dense.info["data_type"])  # noqa: E731
    return _sparsified(draw, dense, SparseQuantizedTensor, "data", "data_mask", "nonzero_data", inputs)


CASES = {
    SparseTensor: sparse_cases,
    PalettizedTensor: palettized_cases,
    QuantizedTensor: quantized_cases,
    SparsePalettizedTensor: sparse_palettized_cases,
    SparseQuantizedTensor: sparse_quantized_cases,
}


def any_cases():
    """A case of any of the five types."""
    return st.one_of([strategy() for strategy in CASES.values()])


# ----------------------------------------------------------------------------------------- helpers


def assert_same_bits(actual, expected):
    """Same dtype, same shape, same bits (so -0.0 differs from 0.0, and NaN payloads count)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    if actual.dtype.kind == "f":
        as_int = np.dtype(f"u{actual.dtype.itemsize}")
        actual, expected = actual.view(as_int), expected.view(as_int)
    differ = np.flatnonzero(actual.ravel() != expected.ravel())
    assert differ.size == 0, (
        f"{differ.size} of {actual.size} elements differ; first at flat index {differ[0]}: "
        f"{actual.ravel()[differ[0]]!r} != {expected.ravel()[differ[0]]!r}"
    )


def implements(backend: str, op: str) -> bool:
    return hasattr(kernels.load(backend), op)


def decompress_on(tensor, backend: str, dtype=None):
    """``tensor.decompress(dtype)`` on ``backend``; a backend without the kernel must raise
    BackendError naming it, and then the result is None."""
    if implements(backend, tensor._kernel):
        return tensor.decompress(dtype, backend=backend)
    with pytest.raises(BackendError, match=tensor._kernel):
        tensor.decompress(dtype, backend=backend)
    return None
