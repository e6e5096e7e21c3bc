"""Calling the encoders' C kernels (csrc/encode_*.c, built at install): pointers to numpy
buffers and status checks. The kernels release the GIL, so the encoders' thread pool
(:mod:`._threads`) runs them in parallel."""
from __future__ import annotations

import numpy as np

from .._c import check, ffi, lib, status as status_codes  # noqa: F401  (lib re-exported for the encoders)

NULL = ffi.NULL
_CTYPES = {
    np.dtype(np.float64): "double[]", np.dtype(np.float32): "float[]", np.dtype(np.int64): "long long[]",
    np.dtype(np.int32): "int[]", np.dtype(np.int16): "short[]", np.dtype(np.uint32): "unsigned int[]",
    np.dtype(np.uint16): "unsigned short[]", np.dtype(np.uint8): "unsigned char[]",
}


def ptr(a: np.ndarray | None):
    """A pointer to the memory of a C-contiguous array (NULL for None or an empty array: the
    kernels read an empty optional input as absent)."""
    if a is None or a.size == 0:
        return NULL
    if not a.flags.c_contiguous:
        raise ValueError("encoder kernels take C-contiguous arrays")  # a bug, not a user error
    return ffi.from_buffer(_CTYPES[a.dtype], a)


def wptr(a: np.ndarray):
    """A pointer to a writeable C-contiguous array the kernel fills."""
    if not (a.flags.c_contiguous and a.flags.writeable):
        raise ValueError("encoder kernels write C-contiguous, writeable arrays")  # a bug, not a user error
    return ffi.from_buffer(_CTYPES[a.dtype], a, require_writable=True)


def run(status: int, what: str) -> None:
    """Raise for a kernel's error status (MemoryError when its scratch memory was refused)."""
    if status == status_codes.MEMORY:
        raise MemoryError(f"{what}: the kernel could not allocate its scratch memory")
    check(status, what)


def scalar(ctype: str):
    """A one-element C output (``result[0]`` after the call)."""
    return ffi.new(f"{ctype}[1]")
