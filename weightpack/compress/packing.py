"""Packing the encoders' uint8 codes into Core ML's LSB-first n-bit streams (C kernels,
csrc/encode_pack.c).

The result is what :func:`weightpack.pack_bits` returns (element i at stream bits
``[i*n, (i+1)*n)``, padding bits zero), built without the general packer's checks and in
parallel chunks. Codes must already be below ``2**nbits``.
"""
from __future__ import annotations

import numpy as np

from ..bits import NBitArray, packed_nbytes
from . import _threads
from ._native import lib, ptr, run, wptr


def pack_codes(codes: np.ndarray, nbits: int) -> np.ndarray:
    """The n-bit stream of the flat uint8 ``codes`` (each < 2**nbits), as a read-only uint8 array.

    >>> pack_codes(np.array([1, 2, 3, 4, 5, 6, 7], np.uint8), 3).tobytes().hex()
    'd1581f'
    """
    flat = np.ascontiguousarray(codes).reshape(-1)
    out = np.empty(packed_nbytes(flat.size, nbits), np.uint8)
    _threads.run(lambda span: run(lib.wp_enc_pack_codes(ptr(flat), nbits, span[0], span[1], wptr(out)), "pack"),
                 _threads.chunks(flat.size))
    out.flags.writeable = False
    return out


def nbit_array(codes: np.ndarray, nbits: int) -> NBitArray:
    """An unsigned NBitArray of ``codes``' shape (codes are trusted: each < 2**nbits)."""
    return NBitArray(pack_codes(codes, nbits), nbits, codes.shape)


def select(codes: np.ndarray, mask: NBitArray, count: int) -> np.ndarray:
    """The codes at the set bits of the 1-bit ``mask`` (row-major), without unpacking the mask;
    ``count`` is its popcount."""
    out = np.empty(count, codes.dtype)
    flat = np.ascontiguousarray(codes).reshape(-1).view(np.uint8)
    run(lib.wp_enc_select_codes(ptr(flat), ptr(mask.packed), mask.packed.size, wptr(out.view(np.uint8)), count),
        "select codes")
    return out
