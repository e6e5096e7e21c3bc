"""weight.bin: weightpack's writer and reader against coremltools' own, the worked example of
reference/coreml-format.md §1.8, a matrix of corrupted files, atomic writes and zero-copy reads."""
import mmap
import os
import re
import stat
import struct
import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from weightpack import FormatError, NBitArray, WeightpackError
from weightpack.bits import value_range
from weightpack.coreml.blob import DTYPE_CODES, BlobReader, BlobWriter

# blob dtype -> (coremltools' read_/write_ method stem, the numpy dtype coremltools takes and returns)
ORACLE_TYPES = {
    "fp16": ("fp16", np.uint16),
    "fp32": ("float", np.float32),
    "uint8": ("uint8", np.uint8),
    "int8": ("int8", np.int8),
    "int16": ("int16", np.int16),
    "uint16": ("uint16", np.uint16),
    "int32": ("int32", np.int32),
    "uint32": ("uint32", np.uint32),
    "int4": ("int4", np.int8),
    "uint1": ("uint1", np.uint8),
    "uint2": ("uint2", np.uint8),
    "uint3": ("uint3", np.uint8),
    "uint4": ("uint4", np.uint8),
    "uint6": ("uint6", np.uint8),
}
# sub-byte blob dtype -> (bits, signed)
SUBBYTE = {
    "int4": (4, True),
    "uint1": (1, False),
    "uint2": (2, False),
    "uint3": (3, False),
    "uint4": (4, False),
    "uint6": (6, False),
}

# reference/coreml-format.md §1.8: fp16 [1, -2, 0.5] at 64, uint3 [1..7] at 192, int4 [1, -2, 7, -8, 3] at 320
EXAMPLE_BLOBS = [
    (64, "fp16", np.array([1.0, -2.0, 0.5], np.float16)),
    (192, "uint3", np.array([1, 2, 3, 4, 5, 6, 7], np.uint8)),
    (320, "int4", np.array([1, -2, 7, -8, 3], np.int8)),
]
EXAMPLE_PAYLOAD_END = {64: 134, 192: 259, 320: 387}


def example_bytes() -> bytes:
    """The 387-byte file of §1.8, assembled from its hex dump."""
    data = bytearray(387)
    for offset, text in [
        (0x000, "0300 0000 0200 0000"),
        (0x040, "efbe adde 0100 0000 0600 0000 0000 0000 8000 0000 0000 0000 0000 0000 0000 0000"),
        (0x080, "003c 00c0 0038"),
        (0x0C0, "efbe adde 0c00 0000 0300 0000 0000 0000 0001 0000 0000 0000 0300 0000 0000 0000"),
        (0x100, "d158 1f"),
        (0x140, "efbe adde 0800 0000 0300 0000 0000 0000 8001 0000 0000 0000 0400 0000 0000 0000"),
        (0x180, "e187 03"),
    ]:
        chunk = bytes.fromhex(text)
        data[offset : offset + len(chunk)] = chunk
    return bytes(data)


@pytest.fixture(scope="module")
def milstorage():
    """coremltools' blob storage bindings: the oracle."""
    from coremltools import libmilstoragepython

    return libmilstoragepython


def write_file(path, data: bytes) -> str:
    with open(path, "wb") as file:
        file.write(data)
    return str(path)


def read_all(path, blobs):
    """Read (offset, dtype, values) blobs from ``path`` and check their values."""
    with BlobReader(path) as reader:
        for offset, name, values in blobs:
            got = reader.read(offset, name, unpack=True)
            assert got.dtype == values.dtype and got.tobytes() == values.tobytes()


def mapping_of(array) -> object:
    """The object at the bottom of ``array``'s chain of bases."""
    base = array
    while getattr(base, "base", None) is not None:
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


# --- byte for byte against coremltools ------------------------------------------------------------


@st.composite
def oracle_blob(draw):
    """(blob dtype, values as coremltools takes them) with 1..300 elements."""
    name = draw(st.sampled_from(sorted(ORACLE_TYPES)))
    size = draw(st.integers(1, 300))
    if name in SUBBYTE:
        lo, hi = value_range(*SUBBYTE[name])
        return name, draw(arrays(ORACLE_TYPES[name][1], size, elements=st.integers(lo, hi)))
    if name == "fp32":  # any bit pattern, NaN payloads included
        return name, draw(arrays(np.uint32, size)).view(np.float32)
    return name, draw(arrays(ORACLE_TYPES[name][1], size))


def weightpack_input(name, values, as_nbitarray: bool):
    """What weightpack's ``write`` takes for ``values`` in coremltools' representation: (array, dtype)."""
    if name == "fp16":
        return values.view(np.float16), None
    if name in SUBBYTE:
        nbits, signed = SUBBYTE[name]
        return (NBitArray.from_values(values, nbits, signed=signed), None) if as_nbitarray else (values, name)
    return values, None


@given(blobs=st.lists(st.tuples(oracle_blob(), st.booleans()), min_size=1, max_size=6))
def test_matches_coremltools_byte_for_byte(milstorage, blobs):
    with tempfile.TemporaryDirectory() as folder:
        ours, theirs = os.path.join(folder, "ours.bin"), os.path.join(folder, "theirs.bin")
        with BlobWriter(ours) as writer:
            our_offsets = [writer.write(*weightpack_input(name, values, flag)) for (name, values), flag in blobs]
        oracle = milstorage._BlobStorageWriter(theirs)
        their_offsets = [getattr(oracle, f"write_{ORACLE_TYPES[name][0]}_data")(values) for (name, values), _ in blobs]
        del oracle  # closes the file

        assert our_offsets == their_offsets
        with open(ours, "rb") as a, open(theirs, "rb") as b:
            assert a.read() == b.read()

        oracle_reader = milstorage._BlobStorageReader(ours)
        with BlobReader(theirs) as reader:
            assert [info.offset for info in reader] == their_offsets
            for offset, ((name, values), _) in zip(their_offsets, blobs):
                got = reader.read(offset, name, unpack=True)
                assert got.size == values.size and got.tobytes() == values.tobytes()
                assert reader.info(offset).size == values.size
                back = getattr(oracle_reader, f"read_{ORACLE_TYPES[name][0]}_data")(offset)
                assert back.dtype == values.dtype and back.tobytes() == values.tobytes()


def test_worked_example_byte_for_byte(tmp_path, milstorage):
    path = tmp_path / "weight.bin"
    with BlobWriter(path) as writer:
        offsets = [writer.write(values, None if name == "fp16" else name) for _, name, values in EXAMPLE_BLOBS]
    assert offsets == [offset for offset, _, _ in EXAMPLE_BLOBS]
    assert path.read_bytes() == example_bytes()
    read_all(path, EXAMPLE_BLOBS)
    with BlobReader(path) as reader:
        assert [(i.dtype, i.nbytes, i.data_offset, i.padding_bits, i.size) for i in reader] == [
            ("fp16", 6, 128, 0, 3),
            ("uint3", 3, 256, 3, 7),
            ("int4", 3, 384, 4, 5),
        ]


@pytest.mark.parametrize(
    "name, values, payload, padding",
    [
        ("uint1", [1, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0], "8d03", 5),
        ("uint2", [0, 1, 2, 3, 3], "e403", 6),
        ("uint4", [1, 2, 3, 15, 9], "21f309", 4),
        ("uint6", [1, 63, 5, 32, 17], "c15f8011", 2),
    ],
)
def test_packing_examples(tmp_path, name, values, payload, padding):
    path = tmp_path / "weight.bin"
    with BlobWriter(path) as writer:
        writer.write(values, dtype=name)
    data = path.read_bytes()
    assert data[128:].hex() == payload
    assert struct.unpack_from("<IIQQQ", data, 64) == (0xDEADBEEF, DTYPE_CODES[name], len(payload) // 2, 128, padding)


def test_layout_transposed_and_nd_arrays_flatten_in_c_order(tmp_path, milstorage):
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4).T  # not C-contiguous
    ours, theirs = tmp_path / "ours.bin", tmp_path / "theirs.bin"
    with BlobWriter(ours) as writer:
        writer.write(matrix)
        writer.write(np.arange(6).reshape(2, 3) % 4, dtype="uint2")
    oracle = milstorage._BlobStorageWriter(str(theirs))
    oracle.write_float_data(np.ascontiguousarray(matrix))
    oracle.write_uint2_data((np.arange(6) % 4).astype(np.uint8))
    del oracle
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.mark.parametrize(
    "name, code, numpy_dtype", [("bf16", 5, np.uint16), ("fp8e4m3fn", 16, np.uint8), ("fp8e5m2", 17, np.uint8)]
)
def test_bf16_and_fp8_round_trip_as_bit_patterns(tmp_path, name, code, numpy_dtype):
    bits = np.arange(np.iinfo(numpy_dtype).max, 0, -97, dtype=numpy_dtype)
    path = tmp_path / "weight.bin"
    with BlobWriter(path) as writer:
        offset = writer.write(bits, dtype=name)
    assert struct.unpack_from("<IIQ", path.read_bytes(), offset) == (0xDEADBEEF, code, bits.nbytes)
    with BlobReader(path) as reader:
        assert reader.info(offset).dtype == name
        for got in (reader.read(offset, name), reader.read(offset)):
            assert got.dtype == numpy_dtype and np.array_equal(got, bits)
        with pytest.raises(FormatError, match=f"offset {offset}: holds {name} .* not the requested"):
            reader.read(offset, "uint16" if numpy_dtype == np.uint16 else "uint8")
    with BlobWriter(tmp_path / "other.bin") as writer, pytest.raises(WeightpackError, match="raw bit patterns"):
        writer.write(bits.astype(np.float32), dtype=name)


# --- corrupted files ------------------------------------------------------------------------------


def test_truncated_at_every_byte(tmp_path):
    data = example_bytes()
    path = tmp_path / "weight.bin"
    for length in range(len(data)):
        write_file(path, data[:length])
        if length < 64:
            with pytest.raises(FormatError, match=f"header at offset 0: needs 64 bytes, the file has {length}$"):
                BlobReader(path)
            continue
        with BlobReader(path) as reader:
            for offset, name, values in EXAMPLE_BLOBS:
                if EXAMPLE_PAYLOAD_END[offset] <= length:
                    assert reader.read(offset, name, unpack=True).tobytes() == values.tobytes()
                else:
                    message = f"^{re.escape(str(path))}: blob metadata at offset {offset}: .*past the end"
                    with pytest.raises(FormatError, match=message):
                        reader.read(offset, name)
            with pytest.raises(FormatError, match=r"at offset (64|192|320): .*past the end"):
                list(reader)


# (what, file offset of the field, struct format, new value, where the read goes, message)
CORRUPTIONS = [
    ("version 1", 4, "<I", 1, 64, r"header at offset 0: version is 1, expected 2"),
    ("sentinel", 64, "<I", 0xDEADBEEE, 64, r"offset 64: sentinel is 0xDEADBEEE, expected 0xDEADBEEF"),
    ("unknown dtype code", 68, "<I", 99, 64, r"offset 64: dtype code 99 is unknown"),
    ("dtype code 0", 68, "<I", 0, 64, r"offset 64: dtype code 0 is unknown"),
    ("size 0", 72, "<Q", 0, 64, r"offset 64: size is 0 bytes"),
    ("size 2**64-1", 72, "<Q", 2**64 - 1, 64, r"offset 64: size 18446744073709551615 is not below 2\*\*63"),
    ("data offset 2**63", 80, "<Q", 2**63, 64, r"offset 64: data offset 9223372036854775808 is not below"),
    ("data past the end", 80, "<Q", 384, 64, r"offset 64: payload \[384, 390\) extends past the end of the file \(387"),
    ("odd fp16 size", 72, "<Q", 5, 64, r"offset 64: size 5 is not a multiple of the 2-byte fp16 element"),
    ("padding 8", 216, "<Q", 8, 192, r"offset 192: padding of 8 bits: must be below 8"),
    ("padding 2**64-1", 216, "<Q", 2**64 - 1, 192, r"offset 192: padding of 18446744073709551615 bits: must be below"),
    ("uint3 partial element", 216, "<Q", 2, 192, r"offset 192: 3 bytes less 2 padding bits is not a whole number"),
    ("int4 padding not a multiple of 4", 344, "<Q", 2, 320, r"offset 320: padding of 2 bits is not a multiple of 4"),
    ("nonzero padding bits", 258, "<B", 0x9F, 192, r"offset 192: payload at 256: padding bits of the last byte"),
    ("count past the last blob", 0, "<I", 4, "walk", r"offset 448: the 64-byte record extends past the end"),
    ("record past the end", 0, "<I", 3, 10_000, r"offset 10000: the 64-byte record extends past the end"),
    ("record overhangs the end", 0, "<I", 3, 384, r"offset 384: the 64-byte record extends past the end"),
    ("header read as a record", 0, "<I", 3, 0, r"offset 0: sentinel is 0x00000003"),
    ("payload read as a record", 0, "<I", 3, 128, r"offset 128: sentinel is 0xC0003C00"),
]


@pytest.mark.parametrize(
    "field, fmt, value, where, message", [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS]
)
def test_corrupted_field_raises_format_error(tmp_path, field, fmt, value, where, message):
    data = bytearray(example_bytes())
    struct.pack_into(fmt, data, field, value)
    path = write_file(tmp_path / "weight.bin", bytes(data))
    with pytest.raises(FormatError, match=f"^{re.escape(path)}: .*{message}"):
        with BlobReader(path) as reader:
            list(reader) if where == "walk" else reader.read(where)


def test_walk_must_advance(tmp_path):
    data = bytearray(example_bytes())
    struct.pack_into("<Q", data, 80, 0)  # fp16 payload "at" offset 0: the next record would be at 64 again
    path = write_file(tmp_path / "weight.bin", bytes(data))
    with BlobReader(path) as reader:
        with pytest.raises(FormatError, match="offset 64: payload ends at 6, so no next record"):
            list(reader)


def test_dtype_mismatch_with_requested(tmp_path):
    path = write_file(tmp_path / "weight.bin", example_bytes())
    with BlobReader(path) as reader:
        for offset, name, wrong in [(64, "fp16", "fp32"), (192, "uint3", "uint4"), (320, "int4", "uint4")]:
            code, wrong_code = DTYPE_CODES[name], DTYPE_CODES[wrong]
            pattern = rf"offset {offset}: holds {name} \(code {code}\), not the requested {wrong} \(code {wrong_code}\)"
            with pytest.raises(FormatError, match=pattern):
                reader.read(offset, wrong)
            with pytest.raises(FormatError, match=pattern):
                reader.info(offset, wrong)


def test_accepts_what_coremltools_accepts(tmp_path, milstorage):
    """Reserved fields, an fp16 blob's padding field (pre-iOS 18: uninitialised) and count are not checked on reads."""
    data = bytearray(example_bytes())
    data[8:64] = b"\xff" * 56  # header reserved
    data[64 + 24 : 128] = b"\xab" * 40  # fp16: padding field and reserved
    data[192 + 32 : 256] = b"\xcd" * 32  # uint3: reserved
    struct.pack_into("<I", data, 0, 0)  # count 0
    path = write_file(tmp_path / "weight.bin", bytes(data))
    read_all(path, EXAMPLE_BLOBS)
    with BlobReader(path) as reader:
        assert list(reader) == []
    assert milstorage._BlobStorageReader(path).read_fp16_data(64).tobytes() == EXAMPLE_BLOBS[0][2].tobytes()


@pytest.mark.parametrize(
    "field, fmt, value, offset, name",
    [(80, "<Q", 129, 64, "fp16"), (344, "<Q", 0, 320, "int4")],
    ids=["unaligned payload offset", "int4 padding 0 gives a sixth element"],
)
def test_reads_like_coremltools_where_it_is_lenient(tmp_path, milstorage, field, fmt, value, offset, name):
    data = bytearray(example_bytes())
    struct.pack_into(fmt, data, field, value)
    path = write_file(tmp_path / "weight.bin", bytes(data))
    theirs = getattr(milstorage._BlobStorageReader(path), f"read_{ORACLE_TYPES[name][0]}_data")(offset)
    with BlobReader(path) as reader:
        assert reader.read(offset, name, unpack=True).tobytes() == theirs.tobytes()


def test_bad_offset_arguments(tmp_path):
    path = write_file(tmp_path / "weight.bin", example_bytes())
    with BlobReader(path) as reader:
        for offset in (-1, 1.5, True, "64"):
            with pytest.raises(WeightpackError, match="offset=.* must be a non-negative integer"):
                reader.read(offset)
        with pytest.raises(WeightpackError, match="dtype='float16' is not a blob dtype"):
            reader.read(64, "float16")
        assert reader.read(np.uint64(64)).tolist() == [1.0, -2.0, 0.5]


# --- atomic writes --------------------------------------------------------------------------------


def test_exception_leaves_existing_file_untouched(tmp_path):
    path = write_file(tmp_path / "weight.bin", b"the old file")
    with pytest.raises(RuntimeError, match="boom"):
        with BlobWriter(path) as writer:
            writer.write(np.ones(1000, np.float32))
            raise RuntimeError("boom")
    assert (tmp_path / "weight.bin").read_bytes() == b"the old file"
    assert os.listdir(tmp_path) == ["weight.bin"]


def test_refused_write_propagates_and_writes_nothing(tmp_path):
    with pytest.raises(WeightpackError, match="outside the uint2 range"):
        with BlobWriter(tmp_path / "weight.bin") as writer:
            writer.write(np.ones(10, np.float16))
            writer.write([4], dtype="uint2")
    assert os.listdir(tmp_path) == []


def test_refused_write_can_be_caught_and_the_file_stays_valid(tmp_path):
    path = tmp_path / "weight.bin"
    with BlobWriter(path) as writer:
        with pytest.raises(WeightpackError):
            writer.write([4], dtype="uint2")
        assert writer.write([3], dtype="uint2") == 64
    read_all(path, [(64, "uint2", np.array([3], np.uint8))])


class FailingFile:
    """A file whose writes fail as on a full disk."""

    def __init__(self, file):
        self.file = file

    def write(self, data):
        raise OSError(28, "No space left on device")

    def close(self):
        self.file.close()


def test_io_error_discards_the_file(tmp_path):
    path = write_file(tmp_path / "weight.bin", b"old")
    with pytest.raises(OSError, match="No space"):
        with BlobWriter(path) as writer:
            writer._file = FailingFile(writer._file)
            writer.write(np.ones(4, np.int8))
    with pytest.raises(WeightpackError, match="failed earlier; the file was not written"):
        with BlobWriter(path) as writer:
            writer._file = FailingFile(writer._file)
            with pytest.raises(OSError):
                writer.write(np.ones(4, np.int8))
    assert (tmp_path / "weight.bin").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["weight.bin"]


def test_file_appears_on_exit_with_default_permissions(tmp_path):
    path = tmp_path / "weight.bin"
    writer = BlobWriter(path)
    with pytest.raises(WeightpackError, match="not open"):
        writer.write(np.ones(2, np.int8))
    with writer:
        writer.write(np.ones(2, np.int8))
        assert not path.exists() and len(os.listdir(tmp_path)) == 1
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    with writer:  # a writer can be used again: it writes the file anew
        assert writer.write(np.ones(3, np.int8)) == 64
    assert os.listdir(tmp_path) == ["weight.bin"] and path.stat().st_size == 131


def test_no_blobs_gives_a_bare_header(tmp_path):
    with BlobWriter(tmp_path / "weight.bin"):
        pass
    assert (tmp_path / "weight.bin").read_bytes() == struct.pack("<II56x", 0, 2)
    with BlobReader(tmp_path / "weight.bin") as reader:
        assert reader.count == 0 and list(reader) == []


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "array, dtype",
    [
        (np.array([], np.float32), None),
        (np.zeros((0, 3), np.int8), None),
        ([], "uint4"),
        (NBitArray.from_values(np.array([], np.uint8), 2), None),
    ],
)
def test_refuses_empty_arrays(tmp_path, array, dtype):
    with BlobWriter(tmp_path / "weight.bin") as writer, pytest.raises(WeightpackError, match="cannot write an empty"):
        writer.write(array, dtype)


@pytest.mark.parametrize(
    "values, dtype",
    [([16], "uint4"), ([-1], "uint1"), ([4], "uint2"), ([8], "uint3"), ([64], "uint6"), ([8], "int4"), ([-9], "int4")],
)
def test_refuses_out_of_range_subbyte_values(tmp_path, values, dtype):
    with BlobWriter(tmp_path / "weight.bin") as writer:
        with pytest.raises(WeightpackError, match=f"outside the {dtype} range"):
            writer.write(np.array(values), dtype)


@pytest.mark.parametrize(
    "array, dtype, message",
    [
        (np.ones(2), None, "array dtype float64 has no blob dtype"),
        (np.ones(2, bool), None, "array dtype bool has no blob dtype"),
        (np.ones(2, np.float32), "fp16", "dtype='fp16' is written from a float16 array, got float32"),
        (np.ones(2, ">f4"), None, "array dtype >f4 has no blob dtype"),
        (np.ones(2, np.float32), "float", "dtype='float' is not a blob dtype"),
        (np.ones(2), "uint4", "must hold integers"),
        (NBitArray.from_values([1, 2], 4), "uint2", "dtype='uint2' does not match the NBitArray's element type 'uint4"),
    ],
)
def test_refuses_mismatched_dtypes(tmp_path, array, dtype, message):
    with BlobWriter(tmp_path / "weight.bin") as writer, pytest.raises(WeightpackError, match=re.escape(message)):
        writer.write(array, dtype)


def test_caller_array_is_not_modified(tmp_path):
    values = np.array([3, 1, 2], np.int64)
    with BlobWriter(tmp_path / "weight.bin") as writer:
        writer.write(values, "uint2")
    assert values.tolist() == [3, 1, 2] and values.flags.writeable


# --- zero-copy reads ------------------------------------------------------------------------------


def test_reads_are_read_only_views_of_the_mapping(tmp_path):
    path = write_file(tmp_path / "weight.bin", example_bytes())
    reader = BlobReader(path)
    fp16, uint3 = reader.read(64), reader.read(192)
    assert isinstance(mapping_of(fp16), mmap.mmap) and mapping_of(fp16) is mapping_of(uint3.packed)
    assert not fp16.flags.writeable and not uint3.packed.flags.writeable
    with pytest.raises(ValueError):
        fp16[0] = 0
    reader.close()  # views keep the mapping alive
    assert fp16.tolist() == [1.0, -2.0, 0.5] and uint3.values().tolist() == [1, 2, 3, 4, 5, 6, 7]
    with pytest.raises(WeightpackError, match="is closed"):
        reader.read(64)
    reader.close()


def test_nbitarray_written_zero_copy_round_trip(tmp_path):
    indices = NBitArray.from_values(np.arange(37) % 8, 3)
    path = tmp_path / "weight.bin"
    with BlobWriter(path) as writer:
        offset = writer.write(indices)
    with BlobReader(path) as reader:
        assert reader.read(offset, "uint3") == indices
