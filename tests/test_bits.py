"""weightpack.bits: n-bit streams in Core ML's order, checked against coremltools' own packer."""
import numpy as np
import pytest
from coremltools.optimize._utils import pack_elements_into_bits, restore_elements_from_packed_bits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strategies import NBITS, assert_same_bits, int_arrays, shapes, streams, type_bits
from weightpack import NBitArray, kernels, pack_bits, unpack_bits
from weightpack.bits import packed_nbytes
from weightpack.errors import FormatError, WeightpackError

# `backend` is a plain string, safe to share between hypothesis examples.
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

# coreml-format.md §1.8 and §2.3: (Core ML type, values, payload bytes).
WORKED_EXAMPLES = [
    ("uint3", [1, 2, 3, 4, 5, 6, 7], "d1581f"),
    ("int4", [1, -2, 7, -8, 3], "e18703"),
    ("uint1", [1, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0], "8d03"),
    ("uint2", [0, 1, 2, 3, 3], "e403"),
    ("uint2", [0, 1, 2, 3], "e4"),
    ("uint4", [1, 2, 3, 15, 9], "21f309"),
    ("uint6", [1, 63, 5, 32, 17], "c15f8011"),
]


# --------------------------------------------------------------------------- against coremltools


@fixture_ok
@given(streams())
def test_pack_bits_equals_coremltools(backend, stream):
    values, nbits, signed = stream
    packed = pack_bits(values, nbits, signed=signed, backend=backend)
    assert packed.dtype == np.uint8 and packed.shape == (packed_nbytes(values.size, nbits),)
    assert packed.tobytes() == pack_elements_into_bits(values, nbits).tobytes()


@fixture_ok
@given(streams())
def test_unpack_bits_inverts_pack_and_equals_coremltools(backend, stream):
    values, nbits, signed = stream
    packed = pack_elements_into_bits(values, nbits)
    unpacked = unpack_bits(packed, nbits, values.size, signed=signed, backend=backend)
    assert_same_bits(unpacked, values)
    assert_same_bits(unpacked, restore_elements_from_packed_bits(packed, nbits, values.size, signed))


@pytest.mark.parametrize("nbits", NBITS)
def test_every_length_round_trips_like_coremltools(backend, nbits):
    rng = np.random.default_rng(nbits)
    for count in range(1, 34):  # every remainder of count * nbits modulo 8, several times
        values = rng.integers(0, 1 << nbits, count).astype(np.uint8)
        packed = pack_bits(values, nbits, backend=backend)
        assert packed.tobytes() == pack_elements_into_bits(values, nbits).tobytes(), count
        assert_same_bits(unpack_bits(packed, nbits, count, backend=backend), values)


@pytest.mark.parametrize("nbits", NBITS)
def test_empty_stream(backend, nbits):
    # coremltools' packer cannot take 0 elements (np.max of an empty array raises); its unpacker
    # returns an empty array, and so does weightpack both ways.
    empty = np.zeros(0, np.uint8)
    with pytest.raises(ValueError):
        pack_elements_into_bits(empty, nbits)
    assert pack_bits(empty, nbits, backend=backend).tobytes() == b""
    assert restore_elements_from_packed_bits(empty, nbits, 0).size == 0
    assert_same_bits(unpack_bits(b"", nbits, 0, backend=backend), empty)


@pytest.mark.parametrize("type_name, values, hexbytes", WORKED_EXAMPLES)
def test_worked_examples_of_the_reference(backend, type_name, values, hexbytes):
    nbits, signed = type_bits(type_name), type_name.startswith("int")
    assert pack_bits(np.array(values), nbits, signed=signed, backend=backend).tobytes().hex() == hexbytes
    unpacked = unpack_bits(bytes.fromhex(hexbytes), nbits, len(values), signed=signed, backend=backend)
    assert unpacked.dtype == (np.int8 if signed else np.uint8)
    assert unpacked.tolist() == values
    assert NBitArray.from_values(np.array(values), nbits, signed=signed).packed.tobytes().hex() == hexbytes


@pytest.mark.parametrize("nbits", [4, 8])
def test_signed_values_are_sign_extended(backend, nbits):
    every = np.arange(-(1 << (nbits - 1)), 1 << (nbits - 1))
    packed = pack_bits(every, nbits, signed=True, backend=backend)
    # the same stream holds the two's-complement codes, which read unsigned are 0 .. 2**n - 1
    codes = unpack_bits(packed, nbits, every.size, backend=backend)
    assert codes.tolist() == (every & ((1 << nbits) - 1)).tolist()
    signed = unpack_bits(packed, nbits, every.size, signed=True, backend=backend)
    assert signed.dtype == np.int8 and signed.tolist() == every.tolist()


def test_int4_sign_extension_examples(backend):
    # low nibble first: 0x8 is -8, 0xF is -1, 0x7 is 7, 0x0 is 0
    assert unpack_bits(bytes([0xF8, 0x07]), 4, 4, signed=True, backend=backend).tolist() == [-8, -1, 7, 0]


def test_input_forms_and_strided_buffers(backend):
    values = np.array([3, 1, 0, 2, 2, 1, 3], np.uint8)
    expected = pack_elements_into_bits(values, 2).tobytes()
    strided = np.repeat(values, 2)[::2]  # a non-contiguous view
    assert pack_bits(strided, 2, backend=backend).tobytes() == expected
    assert pack_bits(values.tolist(), 2, backend=backend).tobytes() == expected
    assert pack_bits(values.astype(np.int64).reshape(7, 1), 2, backend=backend).tobytes() == expected
    assert pack_bits(values.astype(bool), 1, backend=backend).tobytes() == pack_elements_into_bits(
        values.astype(bool).astype(np.uint8), 1
    ).tobytes()
    stream = np.frombuffer(expected, np.uint8)
    for packed in (expected, bytearray(expected), memoryview(expected), np.repeat(stream, 3)[::3]):
        assert_same_bits(unpack_bits(packed, 2, 7, backend=backend), values)


def test_inputs_are_not_modified(backend):
    values = np.array([5, 0, 7, 1], np.uint8)
    packed = pack_bits(values, 3, backend=backend)
    before = packed.copy()
    unpack_bits(packed, 3, 4, backend=backend)
    assert values.tolist() == [5, 0, 7, 1] and packed.tobytes() == before.tobytes()


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("nbits, count", [(n, c) for n in (1, 2, 3, 4, 6) for c in (1, 3, 5, 7, 9) if n * c % 8])
def test_nonzero_padding_bits_are_format_errors(backend, nbits, count):
    packed = pack_bits(np.full(count, (1 << nbits) - 1, np.uint8), nbits, backend=backend)
    used = nbits * count % 8
    for bit in range(used, 8):
        corrupt = packed.copy()
        corrupt[-1] |= 1 << bit
        with pytest.raises(FormatError, match="padding bits"):
            unpack_bits(corrupt, nbits, count, backend=backend)
        with pytest.raises(FormatError, match="padding bits"):
            NBitArray(corrupt, nbits, (count,))


@pytest.mark.parametrize("nbits", NBITS)
def test_wrong_stream_length_is_a_format_error(backend, nbits):
    packed = pack_bits(np.ones(9, np.uint8), nbits, backend=backend)
    need = packed.size
    for bad in (packed[:-1], np.concatenate([packed, np.zeros(1, np.uint8)])):
        with pytest.raises(FormatError, match=f"takes {need} bytes, got {bad.size}"):
            unpack_bits(bad, nbits, 9, backend=backend)
        with pytest.raises(FormatError, match=f"takes {need} bytes"):
            NBitArray(bad, nbits, (9,))


@pytest.mark.parametrize(
    "values, nbits, signed, bad",
    [
        ([0, 8], 3, False, "8"),
        ([2, -1], 2, False, "-1"),
        ([0, 256], 8, False, "256"),
        ([1, 2], 1, False, "2"),
        ([64, 0], 6, False, "64"),
        ([7, 8], 4, True, "8"),
        ([-9, 0], 4, True, "-9"),
        ([128], 8, True, "128"),
        ([-129], 8, True, "-129"),
    ],
)
def test_out_of_range_values_are_named(backend, values, nbits, signed, bad):
    with pytest.raises(WeightpackError, match=rf"values holds {bad}, outside the u?int{nbits} range"):
        pack_bits(np.array(values), nbits, signed=signed, backend=backend)
    with pytest.raises(WeightpackError, match=rf"holds {bad}"):
        NBitArray.from_values(np.array(values), nbits, signed=signed, backend=backend)


@pytest.mark.parametrize("nbits", [0, 5, 7, 9, 16, -4, 4.0, True, "4", None])
def test_unsupported_widths(backend, nbits):
    with pytest.raises(WeightpackError, match=r"nbits=.* is not a supported unsigned width; allowed: \(1, 2, 3, 4, 6, 8\)"):
        pack_bits(np.array([0, 1]), nbits, backend=backend)
    with pytest.raises(WeightpackError, match="nbits="):
        unpack_bits(b"\x01", nbits, 1, backend=backend)
    with pytest.raises(WeightpackError, match="nbits="):
        NBitArray(b"\x01", nbits, (1,))


@pytest.mark.parametrize("nbits", [1, 2, 3, 6])
def test_signed_needs_4_or_8_bits(nbits):
    with pytest.raises(WeightpackError, match=r"not a supported signed width; allowed: \(4, 8\)"):
        pack_bits(np.array([0]), nbits, signed=True)
    with pytest.raises(WeightpackError, match="signed width"):
        unpack_bits(b"\x00", nbits, 1, signed=True)


@pytest.mark.parametrize("values", [np.array([0.0, 1.0]), np.array([1 + 0j]), np.array(["1"]), np.array([1, None])])
def test_non_integer_values(values):
    with pytest.raises(WeightpackError, match=rf"values must hold integers, got dtype {values.dtype}"):
        pack_bits(values, 4)


@pytest.mark.parametrize("packed", [np.zeros((1, 1), np.uint8), np.zeros(1, np.int16), np.zeros(1, np.int8), [1]])
def test_packed_must_be_a_flat_byte_buffer(packed):
    with pytest.raises(WeightpackError, match="packed must be a 1-D uint8 array"):
        unpack_bits(packed, 8, 1)


@pytest.mark.parametrize("count", [-1, 1.0, True, "1", None])
def test_count_must_be_a_non_negative_integer(count):
    with pytest.raises(WeightpackError, match="count="):
        unpack_bits(b"\x01", 1, count)


def test_c_kernels_check_sizes_themselves():
    """Called directly (bypassing bits.py's checks), the C kernels refuse what would overrun."""
    c = kernels.load("c")
    with pytest.raises(WeightpackError, match="buffer size mismatch"):
        c.pack_bits(np.ones(9, np.uint8), 3, np.empty(3, np.uint8))
    with pytest.raises(WeightpackError, match="out of range"):
        c.pack_bits(np.array([8], np.uint8), 3, np.empty(1, np.uint8))
    with pytest.raises(WeightpackError, match="unsupported bit width"):
        c.pack_bits(np.ones(1, np.uint8), 5, np.empty(1, np.uint8))
    with pytest.raises(WeightpackError, match="buffer size mismatch"):
        c.unpack_bits(np.zeros(1, np.uint8), 3, 5, False, np.empty(5, np.uint8))
    with pytest.raises(WeightpackError, match="buffer size mismatch"):
        c.unpack_bits(np.zeros(2, np.uint8), 3, 5, False, np.empty(4, np.uint8))
    with pytest.raises(FormatError, match="padding"):
        c.unpack_bits(np.array([0xFF], np.uint8), 3, 2, False, np.empty(2, np.uint8))


# ------------------------------------------------------------------------------------ NBitArray


@st.composite
def nbit_arrays(draw):
    nbits = draw(st.sampled_from(NBITS))
    signed = nbits in (4, 8) and draw(st.booleans())
    shape = draw(shapes(min_rank=0))
    values = draw(int_arrays(shape, f"{'int' if signed else 'uint'}{nbits}"))
    return values, nbits, signed


@fixture_ok
@given(nbit_arrays())
def test_nbitarray_from_values(backend, drawn):
    values, nbits, signed = drawn
    arr = NBitArray.from_values(values, nbits, signed=signed, backend=backend)
    assert (arr.shape, arr.nbits, arr.signed, arr.size, arr.ndim) == (values.shape, nbits, signed, values.size, values.ndim)
    assert arr.dtype_name == f"{'int' if signed else 'uint'}{nbits}"
    assert arr.nbytes == arr.packed.size == (values.size * nbits + 7) // 8
    assert arr.packed.tobytes() == (pack_elements_into_bits(values.ravel(), nbits).tobytes() if values.size else b"")
    assert_same_bits(arr.values(backend=backend), values)
    assert arr == NBitArray(arr.packed.tobytes(), nbits, values.shape, signed=signed)


def test_nbitarray_is_immutable():
    arr = NBitArray.from_values(np.array([[1, 2], [3, 0]]), 2)
    for name in ("packed", "nbits", "signed", "shape", "new_attribute"):
        with pytest.raises(AttributeError, match="immutable"):
            setattr(arr, name, None)
    assert not arr.packed.flags.writeable
    with pytest.raises(ValueError):
        arr.packed[0] = 0
    values = arr.values()
    values[0, 0] = 0  # the unpacked values are a fresh array
    assert arr.values().tolist() == [[1, 2], [3, 0]]
    eight = NBitArray.from_values(np.array([5, 6], np.uint8), 8)
    eight.values()[0] = 0
    assert eight.values().tolist() == [5, 6]


def test_nbitarray_never_shares_memory_that_can_change():
    source = bytearray(b"\x39")
    from_bytearray = NBitArray(source, 2, (2, 2))
    writeable = np.array([0x39], np.uint8)
    from_array = NBitArray(writeable, 2, (2, 2))
    readonly_view = writeable.view()
    readonly_view.flags.writeable = False
    from_view = NBitArray(readonly_view, 2, (2, 2))
    source[0] = writeable[0] = 0
    for arr in (from_bytearray, from_array, from_view):
        assert arr.values().tolist() == [[1, 2], [3, 0]]


def test_nbitarray_over_immutable_memory_is_not_copied():
    buffer = np.frombuffer(b"\x39\x01", np.uint8)  # read-only, over an immutable bytes object
    assert np.shares_memory(NBitArray(buffer, 4, (3,)).packed, buffer)


def test_nbitarray_equality_and_repr():
    a = NBitArray.from_values(np.array([1, -2, 7]), 4, signed=True)
    assert a == NBitArray(a.packed.tobytes(), 4, (3,), signed=True)
    assert a != NBitArray(a.packed.tobytes(), 4, (3,))  # same bytes, unsigned
    assert a != NBitArray(a.packed.tobytes(), 4, (3, 1), signed=True)
    assert a != NBitArray.from_values(np.array([1, -2, 6]), 4, signed=True)
    assert a != a.packed.tobytes() and a != 3
    with pytest.raises(TypeError):
        hash(a)
    assert repr(a) == "NBitArray(int4, shape=(3,), nbytes=2)"


@pytest.mark.parametrize("shape", [(-1,), 3, (2.5,), ("a",), None])
def test_nbitarray_bad_shape(shape):
    with pytest.raises(WeightpackError, match="shape=.* must be a sequence of non-negative integers"):
        NBitArray(b"\x00", 1, shape)


def test_nbitarray_shape_must_match_the_stream():
    with pytest.raises(FormatError, match="takes 2 bytes, got 1"):
        NBitArray(b"\x00", 3, (2, 2))
