"""The exceptions weightpack raises.

Every error is a :class:`WeightpackError`, itself a :class:`ValueError`, and its message names the
argument, the bad value and what is allowed.
"""


class WeightpackError(ValueError):
    """Base class: bad input to a weightpack function."""


class FormatError(WeightpackError):
    """Stored bytes break the format: nonzero padding bits, a truncated stream, a corrupted file."""


class BackendError(WeightpackError):
    """A backend is unknown, failed to load, or does not implement the requested operation."""


def describe(value, limit: int = 60) -> str:
    """A short repr of ``value`` for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def physical_memory() -> int:
    """Bytes of memory this machine has (2**63 when the system does not say)."""
    import os

    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 2**63


def check_allocation(nbytes: int, what: str) -> None:
    """Refuse, before numpy tries, work that needs more memory than the machine has: e.g. a
    broadcast view of 2**40 rows, whose float32 copy no machine holds.

    >>> check_allocation(2**70, "x of shape (2**62, 256) as float32")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    weightpack.errors.WeightpackError: x of shape (2**62, 256) as float32 would need 1 ZiB of memory; this machine has ...
    """
    limit = physical_memory()
    if nbytes > limit:
        raise WeightpackError(f"{what} would need {_human(nbytes)} of memory; this machine has {_human(limit)}")


def _human(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB"):
        if value < 1024 or unit == "ZiB":
            return f"{value:.3g} {unit}" if unit != "bytes" else f"{int(value)} bytes"
        value /= 1024
