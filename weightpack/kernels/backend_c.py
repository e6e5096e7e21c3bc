"""The C backend: kernels compiled from csrc/ and called through cffi (the GIL is released)."""
from __future__ import annotations

import numpy as np

from .._c import buffer, check, lib


def pack_bits(codes: np.ndarray, nbits: int, out: np.ndarray) -> None:
    """Pack uint8 codes (each < 2**nbits) into ``out`` (uint8, ceil(n*nbits/8) bytes)."""
    status = lib.wp_pack_bits(buffer(codes), codes.size, nbits, buffer(out, writable=True), out.size)
    check(status, "pack_bits")


def unpack_bits(packed: np.ndarray, nbits: int, count: int, signed: bool, out: np.ndarray) -> None:
    """Unpack ``count`` elements into ``out`` (uint8, or int8 sign-extended when ``signed``)."""
    status = lib.wp_unpack_bits(
        buffer(packed), packed.size, count, nbits, int(signed), buffer(out, writable=True), out.size
    )
    check(status, "unpack_bits")
