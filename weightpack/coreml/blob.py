"""Core ML's weight file, ``weight.bin`` (MIL "blob storage v2"): an atomic writer and a zero-copy reader.

Byte-compatible with coremltools' ``_BlobStorageWriter`` / ``_BlobStorageReader``; coremltools is
not needed. The format (every integer little-endian):

The header, 64 bytes at offset 0::

    u32 count      number of blobs
    u32 version    2
    7 x u64        reserved: written 0

Each blob: a 64-byte metadata record at a multiple of 64, then its payload::

    u32 sentinel   0xDEADBEEF (bytes ef be ad de)
    u32 dtype      a code of DTYPE_CODES
    u64 size       payload bytes, > 0; ceil(n * bits / 8) for n sub-byte elements
    u64 offset     absolute file offset of the payload; writers use record offset + 64
    u64 padding    sub-byte types: unused high bits of the payload's last byte, (-n * bits) % 8.
                   Byte-sized types: written 0, ignored on read (before iOS 18 these bytes were
                   uninitialised)
    4 x u64        reserved: written 0, ignored on read

The first record is at offset 64; each next one at the previous payload's end rounded up to a
multiple of 64, the gap filled with zeros; the file ends with the last payload's last byte. A model
names a blob by the offset of its **metadata record**, which :meth:`BlobWriter.write` returns.

dtype codes: fp16 1, fp32 2, uint8 3, int8 4, bf16 5, int16 6, uint16 7, int4 8, uint1 9, uint2 10,
uint4 11, uint3 12, uint6 13, int32 14, uint32 15, fp8e4m3fn 16, fp8e5m2 17. Sub-byte payloads
(uint1/2/3/4/6, int4) are LSB-first n-bit streams with zero padding bits (see
:mod:`weightpack.bits`) and are read as :class:`~weightpack.bits.NBitArray`. bf16 and fp8 have no
numpy type: they are written and read as uint16 / uint8 bit patterns, named by ``dtype=``.

A reader MUST reject, with :class:`~weightpack.errors.FormatError` naming the file and offset: a
file shorter than 64 bytes; version != 2; a record not wholly inside the file; a bad sentinel; an
unknown dtype code, or one other than the dtype asked for; size 0; size or offset >= 2**63; a
payload not wholly inside the file; for sub-byte types padding >= 8, padding not a multiple of the
width for 1/2/4-bit types, or ``size * 8 - padding`` not a multiple of the width; for byte-sized
types a size that is not a multiple of the element size. It reads ``count`` only to walk the blobs
(as coremltools' ``GetAllOffsets`` does); direct reads by offset ignore it.

>>> import os, tempfile, numpy as np
>>> tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "weight.bin")
>>> with BlobWriter(path) as writer:
...     writer.write(np.array([1.0, -2.0, 0.5], np.float16)), writer.write([1, -2, 7], dtype="int4")
(64, 192)
>>> os.path.getsize(path)
258
>>> with BlobReader(path) as reader:
...     [(info.offset, info.dtype, info.size) for info in reader]
...     reader.read(192, "int4", unpack=True).tolist()
[(64, 'fp16', 3), (192, 'int4', 3)]
[1, -2, 7]
>>> tmp.cleanup()
"""
from __future__ import annotations

import mmap as _mmap
import os
import struct
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from ..bits import NBitArray
from ..atomic import TempFile
from ..errors import FormatError, WeightpackError, describe

VERSION = 2
SENTINEL = 0xDEADBEEF
ALIGNMENT = 64
_HEADER = struct.Struct("<II56x")  # count, version, 7 x u64 reserved
_METADATA = struct.Struct("<IIQQQ32x")  # sentinel, dtype code, size, data offset, padding bits, 4 x u64 reserved
_LIMIT = 2**63  # sizes and offsets at or above this overflow a signed 64-bit file offset


@dataclass(frozen=True)
class _DType:
    """One blob element type: its name, code and how numpy holds it."""

    name: str
    code: int
    nbits: int
    storage: np.dtype | None = None  # the numpy dtype of byte-sized types; None for sub-byte types
    signed: bool = False  # sub-byte types: two's complement
    bit_pattern: bool = False  # no numpy type: ``storage`` holds the raw bits

    @property
    def subbyte(self) -> bool:
        return self.storage is None


_DTYPES = (
    _DType("fp16", 1, 16, np.dtype("<f2")),
    _DType("fp32", 2, 32, np.dtype("<f4")),
    _DType("uint8", 3, 8, np.dtype("u1")),
    _DType("int8", 4, 8, np.dtype("i1")),
    _DType("bf16", 5, 16, np.dtype("<u2"), bit_pattern=True),
    _DType("int16", 6, 16, np.dtype("<i2")),
    _DType("uint16", 7, 16, np.dtype("<u2")),
    _DType("int4", 8, 4, signed=True),
    _DType("uint1", 9, 1),
    _DType("uint2", 10, 2),
    _DType("uint4", 11, 4),
    _DType("uint3", 12, 3),
    _DType("uint6", 13, 6),
    _DType("int32", 14, 32, np.dtype("<i4")),
    _DType("uint32", 15, 32, np.dtype("<u4")),
    _DType("fp8e4m3fn", 16, 8, np.dtype("u1"), bit_pattern=True),
    _DType("fp8e5m2", 17, 8, np.dtype("u1"), bit_pattern=True),
)
_BY_NAME = {d.name: d for d in _DTYPES}
_BY_CODE = {d.code: d for d in _DTYPES}
_BY_NUMPY = {d.storage: d for d in _DTYPES if d.storage is not None and not d.bit_pattern}

DTYPE_CODES = MappingProxyType({d.name: d.code for d in _DTYPES})
"""Blob dtype name -> the u32 code stored in its metadata record."""


def _dtype(name) -> _DType:
    """The element type called ``name``, or raise naming the allowed names."""
    if not isinstance(name, str) or name not in _BY_NAME:
        raise WeightpackError(f"dtype={describe(name)} is not a blob dtype; allowed: {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def _align(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


@dataclass(frozen=True)
class BlobInfo:
    """A blob's metadata record, validated: where it is, what it holds.

    ``offset`` is the record's offset (the one a model refers to), ``data_offset`` the payload's,
    ``nbytes`` the payload's size, ``padding_bits`` the stored padding field (meaningful for
    sub-byte types only) and ``size`` the number of elements.

    >>> BlobInfo(offset=64, dtype="uint3", nbytes=3, data_offset=128, padding_bits=3).size
    7
    """

    offset: int
    dtype: str
    nbytes: int
    data_offset: int
    padding_bits: int

    @property
    def size(self) -> int:
        spec = _BY_NAME[self.dtype]
        return (self.nbytes * 8 - (self.padding_bits if spec.subbyte else 0)) // spec.nbits


def _payload(array, dtype) -> tuple[_DType, np.ndarray, int]:
    """(element type, payload as a flat uint8 array, element count) of what :meth:`BlobWriter.write` got.

    Copies only to pack sub-byte values or to make a non-contiguous array contiguous.
    """
    arr = array if isinstance(array, NBitArray) else np.asarray(array)
    if arr.size == 0:
        raise WeightpackError("cannot write an empty array: Core ML cannot read an empty blob back")
    if isinstance(arr, NBitArray):
        spec = _BY_NAME[arr.dtype_name]
        if dtype is not None and _dtype(dtype) is not spec:
            raise WeightpackError(f"dtype={dtype!r} does not match the NBitArray's element type {spec.name!r}")
        return spec, arr.packed, arr.size
    if dtype is None:
        if arr.dtype not in _BY_NUMPY:
            raise WeightpackError(
                f"array dtype {arr.dtype} has no blob dtype; convert it (to one of "
                f"{', '.join(str(t) for t in _BY_NUMPY)}) or pass dtype= (sub-byte, bf16, fp8)"
            )
        spec = _BY_NUMPY[arr.dtype]
    else:
        spec = _dtype(dtype)
    if spec.subbyte:
        return spec, NBitArray.from_values(arr, spec.nbits, signed=spec.signed).packed, arr.size
    if arr.dtype != spec.storage:
        raw = " of raw bit patterns" if spec.bit_pattern else ""
        raise WeightpackError(f"dtype={spec.name!r} is written from a {spec.storage} array{raw}, got {arr.dtype}")
    return spec, np.ascontiguousarray(arr).reshape(-1).view(np.uint8), arr.size


class BlobWriter:
    """Writes a weight.bin atomically: blobs go to a temporary file that replaces ``path`` on success.

    Use it as a context manager. On leaving the block normally the header is completed, the file
    flushed, fsynced and renamed over ``path``; if the block raises, the temporary file is removed
    and whatever was at ``path`` is untouched. Output is byte-identical to coremltools'
    ``_BlobStorageWriter`` given the same arrays.

    >>> import os, tempfile, numpy as np
    >>> tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "weight.bin")
    >>> with BlobWriter(path) as writer:
    ...     writer.write(np.arange(3, dtype=np.float32))
    ...     writer.write(np.array([0x3F80, 0x4000], np.uint16), dtype="bf16")
    64
    192
    >>> os.path.getsize(path), os.listdir(tmp.name)
    (260, ['weight.bin'])
    >>> tmp.cleanup()
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._file = None
        self._temp = None
        self._count = 0
        self._end = 0

    def __enter__(self) -> "BlobWriter":
        if self._temp is not None:
            raise WeightpackError(f"BlobWriter for {self.path} is already open")
        self._temp = TempFile(self.path)  # also removes what killed writers of this path left
        self._file = self._temp.file
        self._file.write(_HEADER.pack(0, VERSION))
        self._count, self._end = 0, _HEADER.size
        return self

    def write(self, array, dtype: str | None = None) -> int:
        """Append one blob; return its metadata offset (the offset a model refers to).

        ``array``: a numpy array (any shape, stored flat in C order) whose dtype picks the blob
        dtype (float16, float32, [u]int8, [u]int16, [u]int32), or an :class:`NBitArray`. ``dtype``
        names the blob dtype explicitly: required for sub-byte types given integers (range-checked
        and packed), and for bf16 / fp8 given their uint16 / uint8 bit patterns. Empty arrays are
        refused (Core ML cannot read an empty blob back).

        >>> import os, tempfile, numpy as np
        >>> tmp = tempfile.TemporaryDirectory()
        >>> with BlobWriter(os.path.join(tmp.name, "w.bin")) as writer:
        ...     offsets = [writer.write(np.array([[1, 2], [3, 4]], np.int8)), writer.write([1, 2, 3], dtype="uint3")]
        ...     writer.write([16], dtype="uint4")
        Traceback (most recent call last):
        ...
        weightpack.errors.WeightpackError: values holds 16, outside the uint4 range [0, 15]
        >>> offsets, os.listdir(tmp.name)
        ([64, 192], [])
        >>> tmp.cleanup()
        """
        if self._file is None:
            raise WeightpackError(f"BlobWriter for {self.path} is not open: write inside its `with` block")
        spec, payload, count = _payload(array, dtype)
        metadata_offset = _align(self._end)
        data_offset = metadata_offset + _METADATA.size
        padding_bits = -(count * spec.nbits) % 8
        record = _METADATA.pack(SENTINEL, spec.code, payload.size, data_offset, padding_bits)
        try:
            self._file.write(bytes(metadata_offset - self._end) + record)
            self._file.write(payload)
        except BaseException:
            self._discard()  # the file is in an unknown state: nothing more may be written or committed
            raise
        self._end = data_offset + payload.size
        self._count += 1
        return metadata_offset

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is not None:
            self._discard()
            return False
        if self._file is None:
            raise WeightpackError(f"a write to {self.path} failed earlier; the file was not written")
        try:
            self._file.seek(0)
            self._file.write(_HEADER.pack(self._count, VERSION))
        except BaseException:
            self._discard()
            raise
        temp, self._temp, self._file = self._temp, None, None
        temp.commit()
        return False

    def _discard(self) -> None:
        """Close and delete the temporary file, if any: nothing more may be written or committed."""
        temp, self._temp, self._file = self._temp, None, None
        if temp is not None:
            temp.discard()


class BlobReader:
    """Memory-maps a weight.bin read-only and hands out zero-copy views of its blobs.

    With ``mmap=False`` it reads the whole file into memory instead and hands out views of that
    copy: use it when another program may rewrite or truncate the file in place while the arrays
    are in use (the views of a mapping would then change under you, or the process would die
    with SIGBUS on touching a page the file no longer has).

    ``nbytes`` is the file's size, ``count`` the header's blob count (only iteration uses it).
    Arrays it returns are read-only views of the mapping and stay valid after :meth:`close`
    (the mapping lives until the last view is gone). Every malformed field raises
    :class:`FormatError` naming the file, the record's offset and the problem.

    >>> import os, tempfile, numpy as np
    >>> tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "weight.bin")
    >>> with BlobWriter(path) as writer:
    ...     writer.write(np.array([1.5, 2.5], np.float32))
    64
    >>> with BlobReader(path) as reader:
    ...     values = reader.read(64, "fp32")
    ...     reader.read(64, "fp16")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    weightpack.errors.FormatError: ...weight.bin: blob metadata at offset 64: holds fp32 (code 2), not the requested ...
    >>> values.tolist(), values.flags.writeable
    ([1.5, 2.5], False)
    >>> del values; tmp.cleanup()
    """

    def __init__(self, path, *, mmap: bool = True):
        self.path = os.fspath(path)
        with open(self.path, "rb") as file:
            file_size = os.fstat(file.fileno()).st_size
            if file_size < _HEADER.size:
                raise self._corrupt(0, f"needs {_HEADER.size} bytes, the file has {file_size}", "header")
            self._map = _mmap.mmap(file.fileno(), 0, access=_mmap.ACCESS_READ) if mmap else file.read()
        self.nbytes = len(self._map)
        count, version = _HEADER.unpack_from(self._map, 0)
        if version != VERSION:
            self.close()
            raise self._corrupt(0, f"version is {version}, expected {VERSION}", "header")
        self.count = count

    def info(self, offset: int, dtype: str | None = None) -> BlobInfo:
        """Validate the metadata record at ``offset`` (and its dtype, if given) and return it.

        >>> import os, tempfile, numpy as np
        >>> tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "weight.bin")
        >>> with BlobWriter(path) as writer:
        ...     writer.write([1, 0, 1], dtype="uint1")
        64
        >>> with BlobReader(path) as reader:
        ...     reader.info(64)
        BlobInfo(offset=64, dtype='uint1', nbytes=1, data_offset=128, padding_bits=5)
        >>> tmp.cleanup()
        """
        requested = None if dtype is None else _dtype(dtype)
        if isinstance(offset, (bool, np.bool_)) or not isinstance(offset, (int, np.integer)) or offset < 0:
            raise WeightpackError(f"offset={describe(offset)} must be a non-negative integer")
        offset = int(offset)
        data = self._mapping()
        file_end = f"the end of the file ({len(data)} bytes)"
        if offset + _METADATA.size > len(data):
            raise self._corrupt(offset, f"the {_METADATA.size}-byte record extends past {file_end}")
        sentinel, code, nbytes, data_offset, padding_bits = _METADATA.unpack_from(data, offset)
        if sentinel != SENTINEL:
            raise self._corrupt(offset, f"sentinel is 0x{sentinel:08X}, expected 0x{SENTINEL:08X}")
        spec = _BY_CODE.get(code)
        if spec is None:
            raise self._corrupt(offset, f"dtype code {code} is unknown; known: {min(_BY_CODE)} to {max(_BY_CODE)}")
        if requested is not None and requested is not spec:
            raise self._corrupt(
                offset, f"holds {spec.name} (code {code}), not the requested {requested.name} (code {requested.code})"
            )
        if nbytes == 0:
            raise self._corrupt(offset, "size is 0 bytes; a blob holds at least one byte")
        for field, value in (("size", nbytes), ("data offset", data_offset)):
            if value >= _LIMIT:
                raise self._corrupt(offset, f"{field} {value} is not below 2**63")
        if data_offset + nbytes > len(data):
            raise self._corrupt(offset, f"payload [{data_offset}, {data_offset + nbytes}) extends past {file_end}")
        problem = _size_problem(spec, nbytes, padding_bits)
        if problem:
            raise self._corrupt(offset, problem)
        return BlobInfo(offset, spec.name, nbytes, data_offset, padding_bits)

    def read(self, offset: int, dtype: str | None = None, *, unpack: bool = False):
        """The blob whose metadata record is at ``offset``, without copying.

        Byte-sized types: a read-only 1-D numpy view of the file (bf16 as uint16, fp8 as uint8
        bit patterns). Sub-byte types: an :class:`NBitArray` over the file's bytes, or with
        ``unpack=True`` its values (a new uint8 array, int8 for int4). ``dtype``, if given, must
        be the blob's.

        >>> import os, tempfile
        >>> tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "weight.bin")
        >>> with BlobWriter(path) as writer:
        ...     writer.write([1, 2, 3, 15, 9], dtype="uint4")
        64
        >>> with BlobReader(path) as reader:
        ...     reader.read(64), reader.read(64).packed.tobytes().hex(), reader.read(64, unpack=True).tolist()
        (NBitArray(uint4, shape=(5,), nbytes=3), '21f309', [1, 2, 3, 15, 9])
        >>> tmp.cleanup()
        """
        info = self.info(offset, dtype)
        spec = _BY_NAME[info.dtype]
        if not spec.subbyte:
            return np.frombuffer(self._map, spec.storage, info.size, info.data_offset)
        packed = np.frombuffer(self._map, np.uint8, info.nbytes, info.data_offset)
        try:
            bits = NBitArray(packed, spec.nbits, (info.size,), signed=spec.signed)
        except FormatError as err:
            raise self._corrupt(info.offset, f"payload at {info.data_offset}: {err}") from None
        return bits.values() if unpack else bits

    def __iter__(self):
        """Walk the header's ``count`` records from offset 64, each after the previous payload, 64-aligned.

        >>> import os, tempfile, numpy as np
        >>> tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "weight.bin")
        >>> with BlobWriter(path) as writer:
        ...     offsets = [writer.write(np.zeros(n, np.uint8)) for n in (1, 64, 65)]
        >>> with BlobReader(path) as reader:
        ...     offsets == [info.offset for info in reader]
        True
        >>> tmp.cleanup()
        """
        offset = _HEADER.size
        for _ in range(self.count):
            info = self.info(offset)
            yield info
            payload_end = info.data_offset + info.nbytes
            following = _align(payload_end)
            if following <= offset:
                raise self._corrupt(offset, f"payload ends at {payload_end}, so no next record follows this one")
            offset = following

    def close(self) -> None:
        """Release the mapping (views already handed out keep it alive until they are gone)."""
        if self._map is not None:
            try:
                if isinstance(self._map, _mmap.mmap):
                    self._map.close()
            except BufferError:
                pass  # arrays still view it; it is unmapped when the last one is collected
            self._map = None

    def __enter__(self) -> "BlobReader":
        return self

    def __exit__(self, exc_type, exc, traceback):
        self.close()
        return False

    def _mapping(self):
        if self._map is None:
            raise WeightpackError(f"BlobReader for {self.path} is closed")
        return self._map

    def _corrupt(self, offset: int, problem: str, what: str = "blob metadata") -> FormatError:
        return FormatError(f"{self.path}: {what} at offset {offset}: {problem}")


def _size_problem(spec: _DType, nbytes: int, padding_bits: int) -> str | None:
    """What is wrong with a payload of ``nbytes`` bytes and ``padding_bits`` padding of type ``spec``, if anything."""
    if not spec.subbyte:
        itemsize = spec.storage.itemsize
        if nbytes % itemsize:
            return f"size {nbytes} is not a multiple of the {itemsize}-byte {spec.name} element"
        return None
    if padding_bits >= 8:
        return f"padding of {padding_bits} bits: must be below 8"
    if 8 % spec.nbits == 0 and padding_bits % spec.nbits:
        return f"padding of {padding_bits} bits is not a multiple of {spec.nbits} ({spec.name} never straddles bytes)"
    if (nbytes * 8 - padding_bits) % spec.nbits:
        return f"{nbytes} bytes less {padding_bits} padding bits is not a whole number of {spec.nbits}-bit elements"
    return None
