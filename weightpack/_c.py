"""Loads the compiled C extension (built by cffi at install time) and turns its status codes into
exceptions."""
from __future__ import annotations

from .errors import BackendError, FormatError, WeightpackError

try:
    from ._wpc import ffi, lib  # noqa: F401  (re-exported)
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "weightpack's C extension is not built; reinstall with `pip install -e .` and a C compiler"
    ) from exc

class status:
    """The C kernels' status codes (csrc/wp_internal.h)."""

    OK, NBITS, SIZE, RANGE, PADDING, ARG, NOT_AVAILABLE, NONFINITE = 0, -1, -2, -3, -4, -5, -6, -7


_STATUS = {
    -1: (WeightpackError, "unsupported bit width"),
    -2: (WeightpackError, "buffer size mismatch"),
    -3: (WeightpackError, "value out of range for the bit width"),
    -4: (FormatError, "nonzero padding bits"),
    -5: (WeightpackError, "invalid kernel argument"),
    -6: (BackendError, "not available at the CPU level in force"),
    -7: (WeightpackError, "x contains NaN or infinity"),
}


def check(status: int, what: str) -> None:
    """Raise the exception matching a C status code (0 is success)."""
    if status:
        cls, text = _STATUS.get(status, (BackendError, f"unknown status {status}"))
        raise cls(f"{what}: {text} (C status {status})")


def buffer(array, ctype: str = "unsigned char[]", writable: bool = False):
    """A cffi pointer of type ``ctype`` to a C-contiguous numpy array's memory (no copy)."""
    if not array.flags.c_contiguous:
        raise WeightpackError("C kernels need C-contiguous arrays")
    return ffi.from_buffer(ctype, array, require_writable=writable)
