"""Packing the encoders' uint8 codes into Core ML's LSB-first n-bit streams (numba kernels).

The result is what :func:`weightpack.pack_bits` returns (element i at stream bits
``[i*n, (i+1)*n)``, padding bits zero), built without the int64 temporaries of the general packer
and in parallel chunks. Codes must already be below ``2**nbits``.
"""
from __future__ import annotations

import numba
import numpy as np

from ..bits import NBitArray, packed_nbytes
from . import _threads


@numba.njit(nogil=True, cache=True)
def _pack(codes, nbits, lo, hi, out):
    """Pack ``codes[lo:hi]`` (``lo`` a multiple of 8) into ``out`` from byte ``lo * nbits // 8``."""
    if nbits == 8:
        for i in range(lo, hi):
            out[i] = codes[i]
        return
    if nbits == 4:
        j = lo >> 1
        i = lo
        while i + 1 < hi:
            out[j] = codes[i] | (codes[i + 1] << 4)
            i += 2
            j += 1
        if i < hi:
            out[j] = codes[i]
        return
    j = lo * nbits // 8
    acc = np.uint64(0)
    filled = 0
    for i in range(lo, hi):
        acc |= np.uint64(codes[i]) << np.uint64(filled)
        filled += nbits
        while filled >= 8:
            out[j] = np.uint8(acc & np.uint64(0xFF))
            acc >>= np.uint64(8)
            filled -= 8
            j += 1
    if filled > 0:
        out[j] = np.uint8(acc & np.uint64(0xFF))


def pack_codes(codes: np.ndarray, nbits: int) -> np.ndarray:
    """The n-bit stream of the flat uint8 ``codes`` (each < 2**nbits), as a read-only uint8 array.

    >>> pack_codes(np.array([1, 2, 3, 4, 5, 6, 7], np.uint8), 3).tobytes().hex()
    'd1581f'
    """
    flat = np.ascontiguousarray(codes).reshape(-1)
    out = np.empty(packed_nbytes(flat.size, nbits), np.uint8)
    _threads.run(lambda span: _pack(flat, nbits, span[0], span[1], out), _threads.chunks(flat.size))
    out.flags.writeable = False
    return out


def nbit_array(codes: np.ndarray, nbits: int) -> NBitArray:
    """An unsigned NBitArray of ``codes``' shape (codes are trusted: each < 2**nbits)."""
    return NBitArray(pack_codes(codes, nbits), nbits, codes.shape)


@numba.njit(nogil=True, cache=True)
def _select(codes, packed, out):
    j = 0
    for b in range(packed.shape[0]):
        byte = packed[b]
        while byte:
            low = byte & -byte
            out[j] = codes[8 * b + _bit_index(low)]
            j += 1
            byte ^= low


@numba.njit(nogil=True, cache=True, inline="always")
def _bit_index(low):
    i = 0
    while low > 1:
        low >>= 1
        i += 1
    return i


def select(codes: np.ndarray, mask: NBitArray, count: int) -> np.ndarray:
    """The codes at the set bits of the 1-bit ``mask`` (row-major), without unpacking the mask;
    ``count`` is its popcount."""
    out = np.empty(count, codes.dtype)
    _select(np.ascontiguousarray(codes).reshape(-1), mask.packed, out)
    return out
