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
