"""n-bit integer streams in Core ML's bit order, and :class:`NBitArray`, an immutable packed array.

Element ``i`` of an n-bit stream occupies stream bits ``[i*n, (i+1)*n)``; stream bit ``k`` is bit
``k % 8`` (0 = least significant) of byte ``k // 8``. 3- and 6-bit elements straddle bytes. The
unused high bits of the last byte are zero. Signed values (int4, int8) are stored in two's
complement and sign-extended when unpacked.

>>> import numpy as np
>>> pack_bits(np.array([1, 2, 3, 4, 5, 6, 7], np.uint8), 3).tobytes().hex()
'd1581f'
>>> unpack_bits(bytes.fromhex("d1581f"), 3, 7).tolist()
[1, 2, 3, 4, 5, 6, 7]
"""
from __future__ import annotations

import numpy as np

from .errors import FormatError, WeightpackError, describe

SUPPORTED_NBITS = (1, 2, 3, 4, 6, 8)
SIGNED_NBITS = (4, 8)


def check_nbits(nbits, signed: bool = False, name: str = "nbits") -> int:
    """Return ``nbits`` as an int, or raise naming the allowed widths."""
    allowed = SIGNED_NBITS if signed else SUPPORTED_NBITS
    if isinstance(nbits, (bool, np.bool_)) or not isinstance(nbits, (int, np.integer)) or int(nbits) not in allowed:
        kind = "signed" if signed else "unsigned"
        raise WeightpackError(f"{name}={describe(nbits)} is not a supported {kind} width; allowed: {allowed}")
    return int(nbits)


MAX_ELEMENTS = 2**63 - 1  # element counts (and byte sizes) must fit a signed 64-bit integer


def element_count(shape, name: str = "shape") -> int:
    """The number of elements of ``shape`` (non-negative integers), multiplied exactly: a product
    beyond ``MAX_ELEMENTS`` (2**63 - 1) raises instead of wrapping around as int64 arithmetic would.

    >>> element_count((2**31, 2**31))
    4611686018427387904
    >>> element_count((2**32, 2**32))
    Traceback (most recent call last):
    ...
    weightpack.errors.WeightpackError: shape=(4294967296, 4294967296) has 18446744073709551616 elements, more than 2**63 - 1
    """
    count = 1
    for d in shape:
        count *= int(d)
    if count > MAX_ELEMENTS and 0 not in shape:
        raise WeightpackError(f"{name}={describe(tuple(shape))} has {count} elements, more than 2**63 - 1")
    return count if 0 not in shape else 0


def packed_nbytes(count: int, nbits: int) -> int:
    """Bytes an n-bit stream of ``count`` elements occupies: ``ceil(count * nbits / 8)``."""
    return (int(count) * check_nbits(nbits) + 7) // 8


def value_range(nbits: int, signed: bool) -> tuple[int, int]:
    """The inclusive range of an n-bit integer."""
    return (-(1 << (nbits - 1)), (1 << (nbits - 1)) - 1) if signed else (0, (1 << nbits) - 1)


def _as_bytes(packed, name: str) -> np.ndarray:
    if isinstance(packed, (bytes, bytearray, memoryview)):
        return np.frombuffer(packed, np.uint8)
    arr = np.asarray(packed)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise WeightpackError(f"{name} must be a 1-D uint8 array, got dtype {arr.dtype} and shape {arr.shape}")
    return np.ascontiguousarray(arr)  # kernels take contiguous buffers (a strided view would fail in C)


def _checked_values(values, nbits: int, signed: bool, name: str) -> np.ndarray:
    """Values as a flat uint8 array of their n-bit two's-complement codes, range-checked."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu" and arr.dtype != np.bool_:
        raise WeightpackError(f"{name} must hold integers, got dtype {arr.dtype}")
    lo, hi = value_range(nbits, signed)
    flat = arr.reshape(-1)
    if flat.size:
        vmin, vmax = int(flat.min()), int(flat.max())
        if vmin < lo or vmax > hi:
            bad = vmin if vmin < lo else vmax
            kind = f"int{nbits}" if signed else f"uint{nbits}"
            raise WeightpackError(f"{name} holds {bad}, outside the {kind} range [{lo}, {hi}]")
    # in range, so the values fit a byte: two's complement of int8, then keep the low n bits
    codes = np.ascontiguousarray(flat.astype(np.int8 if signed else np.uint8, copy=False)).view(np.uint8)
    return codes & np.uint8((1 << nbits) - 1) if signed and nbits < 8 else codes


def pack_bits(values, nbits: int, *, signed: bool = False, backend=None) -> np.ndarray:
    """Pack integers into an LSB-first n-bit stream (Core ML's order); returns a new uint8 array.

    >>> pack_bits(np.array([0, 1, 2, 3, 3]), 2).tobytes().hex()
    'e403'
    >>> pack_bits(np.array([1, -2, 7, -8, 3]), 4, signed=True).tobytes().hex()
    'e18703'
    """
    from . import kernels

    nbits = check_nbits(nbits, signed)
    codes = _checked_values(values, nbits, signed, "values")
    out = np.empty(packed_nbytes(codes.size, nbits), np.uint8)
    kernels.get(backend).pack_bits(codes, nbits, out)
    return out


def unpack_bits(packed, nbits: int, count: int, *, signed: bool = False, backend=None) -> np.ndarray:
    """Unpack ``count`` n-bit integers; uint8 values, or int8 sign-extended when ``signed``.

    Raises :class:`FormatError` if ``packed`` has the wrong length or nonzero padding bits.

    >>> unpack_bits(bytes.fromhex("e18703"), 4, 5, signed=True).tolist()
    [1, -2, 7, -8, 3]
    """
    from . import kernels

    nbits = check_nbits(nbits, signed)
    data = _as_bytes(packed, "packed")
    if isinstance(count, (bool, np.bool_)) or not isinstance(count, (int, np.integer)) or count < 0:
        raise WeightpackError(f"count={describe(count)} must be a non-negative integer")
    count = int(count)
    _check_stream(data, nbits, count)
    out = np.empty(count, np.int8 if signed else np.uint8)
    kernels.get(backend).unpack_bits(data, nbits, count, signed, out)
    return out


def _check_stream(data: np.ndarray, nbits: int, count: int) -> None:
    need = packed_nbytes(count, nbits)
    if data.size != need:
        raise FormatError(
            f"an n-bit stream of {count} {nbits}-bit elements takes {need} bytes, got {data.size}"
        )
    used = count * nbits % 8
    if used and int(data[-1]) >> used:
        raise FormatError(
            f"padding bits of the last byte (byte {need - 1}, value 0x{int(data[-1]):02x}) must be zero; "
            f"only its low {used} bits hold data"
        )


def _frozen(arr: np.ndarray) -> np.ndarray:
    """A read-only array with ``arr``'s contents, copying only when ``arr`` could change under us:
    when it, or an array it is a view of, is writeable (a read-only view of a writeable array
    changes with it). Read-only arrays over other buffers (bytes, a read-only mmap) are not copied."""
    base = arr
    while isinstance(base, np.ndarray):
        if base.flags.writeable:
            arr = arr.copy()
            break
        base = base.base
    else:
        arr = arr.view()
    arr.flags.writeable = False
    return arr


class NBitArray:
    """An immutable array of n-bit integers stored as Core ML stores it: a packed LSB-first stream.

    ``packed`` is the stream (uint8, ``ceil(size * nbits / 8)`` bytes), ``shape`` the logical shape.
    Unsigned widths: 1, 2, 3, 4, 6, 8 bits (Core ML's uint1 ... uint8); signed: 4 and 8 (int4, int8).

    >>> a = NBitArray.from_values(np.array([[1, 2], [3, 0]]), 2)
    >>> a.dtype_name, a.shape, a.nbytes, a.packed.tobytes().hex()
    ('uint2', (2, 2), 1, '39')
    >>> a.values().tolist()
    [[1, 2], [3, 0]]
    """

    __slots__ = ("packed", "nbits", "signed", "shape")

    def __init__(self, packed, nbits: int, shape, *, signed: bool = False):
        nbits = check_nbits(nbits, bool(signed))
        shape = _check_shape(shape, "shape")
        data = _as_bytes(packed, "packed")
        _check_stream(data, nbits, element_count(shape))
        object.__setattr__(self, "packed", _frozen(data))
        object.__setattr__(self, "nbits", nbits)
        object.__setattr__(self, "signed", bool(signed))
        object.__setattr__(self, "shape", shape)

    @classmethod
    def from_values(cls, values, nbits: int, *, signed: bool = False, backend=None) -> "NBitArray":
        """Pack an integer array (any shape) into a new NBitArray."""
        arr = np.asarray(values)
        packed = pack_bits(arr, nbits, signed=signed, backend=backend)
        packed.flags.writeable = False
        return cls(packed, nbits, arr.shape, signed=signed)

    def __reduce_ex__(self, protocol):
        """Pickling: the packed bytes go as a numpy array (protocol 5 hands them out of band,
        uncopied); the copy that comes back is read-only and kept as is (see :func:`owned`)."""
        return _unpickle_nbitarray, (self.packed, self.nbits, self.shape, self.signed)

    def __setattr__(self, name, value):
        raise AttributeError(f"NBitArray is immutable; cannot set {name!r}")

    def __delattr__(self, name):
        raise AttributeError(f"NBitArray is immutable; cannot delete {name!r}")

    @property
    def size(self) -> int:
        return element_count(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the packed stream, as stored in a Core ML weight blob."""
        return int(self.packed.size)

    @property
    def dtype_name(self) -> str:
        """Core ML's name for the element type: 'uint1' ... 'uint8', 'int4', 'int8'."""
        return f"{'int' if self.signed else 'uint'}{self.nbits}"

    @property
    def value_dtype(self) -> np.dtype:
        """The numpy dtype :meth:`values` returns (int8 for signed, else uint8)."""
        return np.dtype(np.int8 if self.signed else np.uint8)

    def values(self, backend=None) -> np.ndarray:
        """The integers, unpacked into a new int8 (signed) or uint8 array of shape ``shape``."""
        if self.nbits == 8:
            return self.packed.view(self.value_dtype).reshape(self.shape).copy()
        flat = unpack_bits(self.packed, self.nbits, self.size, signed=self.signed, backend=backend)
        return flat.reshape(self.shape)

    def __eq__(self, other):
        if not isinstance(other, NBitArray):
            return NotImplemented
        return (self.nbits, self.signed, self.shape) == (other.nbits, other.signed, other.shape) and bool(
            np.array_equal(self.packed, other.packed)
        )

    __hash__ = None

    def __repr__(self):
        return f"NBitArray({self.dtype_name}, shape={self.shape}, nbytes={self.nbytes})"


def owned(value):
    """``value`` (an array unpickled for us, or anything else) marked read-only in place, so the
    tensor rebuilt around it keeps it without a copy: nobody else holds it. Arrays over a buffer
    passed out of band (pickle protocol 5) are the caller's to leave alone, as pickle's contract
    for such buffers says."""
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    return value


def _unpickle_nbitarray(packed, nbits, shape, signed):
    return NBitArray(owned(packed), nbits, shape, signed=signed)


def _check_shape(shape, name: str) -> tuple[int, ...]:
    """``shape`` as a tuple of Python ints, each >= 0, whose product fits ``MAX_ELEMENTS``."""
    try:
        dims = tuple(int(d) for d in shape)
        ok = all(d >= 0 and d == s for d, s in zip(dims, shape))
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise WeightpackError(f"{name}={describe(shape)} must be a sequence of non-negative integers")
    element_count(dims, name)
    return dims
