"""Input checks shared by the encoders. The caller's arrays are read, never written."""
from __future__ import annotations

import functools

import numpy as np

from ..errors import WeightpackError, check_allocation, describe
from ..formats import CompressedTensor, SparseTensor
from ..formats.base import FLOAT_DTYPES


def float_weights(w, name: str = "w") -> np.ndarray:
    """``w`` as a C-contiguous float16/float32 array of rank >= 1, finite and non-empty.

    float64 is cast to float32; other inputs are refused. The result may share memory with ``w``.
    """
    if isinstance(w, CompressedTensor):
        raise WeightpackError(f"{name} must be a float array, got a {type(w).__name__}")
    arr = np.asarray(w)
    if arr.dtype.kind != "f" or arr.dtype.itemsize > 8:
        raise WeightpackError(f"{name} has dtype {arr.dtype}; allowed: float16, float32 (float64 is cast to float32)")
    check_allocation(arr.size * min(arr.itemsize, 4), f"{name} of shape {arr.shape} as a contiguous {dtype_name_of(arr.dtype)} array")
    check_values(arr, name)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype == np.float64:
        if np.abs(arr).max() > np.finfo(np.float32).max:
            raise WeightpackError(f"{name} holds float64 values beyond float32's range (|w| > {np.finfo(np.float32).max:.4g})")
        arr = arr.astype(np.float32)
    return np.ascontiguousarray(arr)


def check_values(arr: np.ndarray, name: str) -> None:
    """Rank >= 1, non-empty, finite."""
    if arr.ndim == 0 or arr.size == 0:
        raise WeightpackError(f"{name} has shape {arr.shape}; it must have rank >= 1 and at least one element")
    bad = count_nonfinite(arr)
    if bad:
        raise WeightpackError(
            f"{name} contains NaN or infinity ({bad} of {arr.size} values); only finite weights can be compressed"
        )


def count_nonfinite(arr: np.ndarray) -> int:
    """How many NaNs and infinities ``arr`` holds; float16 through its bits (numpy emulates float16
    arithmetic), in chunks so no temporary grows with the array."""
    if arr.dtype != np.float16:
        return int(arr.size - np.count_nonzero(np.isfinite(arr)))
    flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint16)
    step = 1 << 20
    return sum(int(np.count_nonzero((flat[i:i + step] & 0x7C00) == 0x7C00)) for i in range(0, flat.size, step))


def sparse_values(t: SparseTensor) -> np.ndarray:
    """The float nonzero values of a SparseTensor."""
    values = t.nonzero_data
    if not isinstance(values, np.ndarray) or values.dtype not in FLOAT_DTYPES:
        kind = getattr(values, "dtype_name", None) or values.dtype
        raise WeightpackError(f"w is a SparseTensor with {kind} nonzero_data; allowed: fp16, fp32")
    if values.size == 0:
        raise WeightpackError("w is a SparseTensor with no nonzero values; there is nothing to compress")
    return values


def check_axis(axis, ndim: int, name: str = "axis") -> int:
    """``axis`` normalised to [0, ndim)."""
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
        raise WeightpackError(f"{name}={describe(axis)} must be an integer in [{-ndim}, {ndim}) for a rank-{ndim} tensor")
    return int(axis) % ndim


def check_choice(value, name: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise WeightpackError(f"{name}={describe(value)} is unknown; allowed: {', '.join(map(repr, allowed))}")
    return value


def positive_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise WeightpackError(f"{name}={describe(value)} must be a positive integer")
    return int(value)


def importance_array(importance, shape, name: str = "importance") -> np.ndarray:
    """``importance`` as a C-contiguous float32 array of ``shape``: finite, non-negative, and of the
    weights' rank with each dimension equal to theirs or 1 (then repeated, e.g. ``[1, C_in]``).

    A float32 array of the full shape is used as is (no copy)."""
    arr = np.asarray(importance)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise WeightpackError(f"{name} has dtype {arr.dtype}; allowed: a float or integer array")
    shape = tuple(shape)
    check_allocation(arr.size * 4, f"{name} of shape {arr.shape} as float32")
    if arr.ndim != len(shape) or any(a not in (1, s) for a, s in zip(arr.shape, shape)):
        raise WeightpackError(
            f"{name} has shape {arr.shape}; it must have the weights' rank {len(shape)} with each dimension "
            f"equal to theirs {shape} or 1"
        )
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise WeightpackError(f"{name} contains NaN or infinity; only finite, non-negative values are allowed")
    if arr.size and arr.min() < 0:
        raise WeightpackError(f"{name} holds {arr.min()}, a negative value; importance must be >= 0")
    if arr.dtype == np.float64 and arr.size and arr.max() > np.finfo(np.float32).max:
        raise WeightpackError(f"{name} holds values beyond float32's range")
    if arr.shape == shape and arr.dtype == np.float32 and arr.flags.c_contiguous:
        return arr
    return np.ascontiguousarray(np.broadcast_to(arr.astype(np.float32, copy=False), shape))


def check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise WeightpackError(f"{name}={describe(value)} must be True or False")
    return bool(value)


@functools.cache
def fp16_values() -> np.ndarray:
    """The value of every float16 bit pattern as float64 (NaN for non-finite ones); read-only."""
    values = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float64)
    values[~np.isfinite(values)] = np.nan
    values.flags.writeable = False
    return values


@functools.cache
def fp16_order() -> np.ndarray:
    """Every finite float16 bit pattern except -0, sorted by value (int32, read-only)."""
    values = fp16_values()
    patterns = np.flatnonzero(np.isfinite(values))
    patterns = patterns[patterns != 0x8000]
    order = patterns[np.argsort(values[patterns], kind="stable")].astype(np.int32)
    order.flags.writeable = False
    return order


def freeze(arr: np.ndarray) -> np.ndarray:
    """Mark ``arr`` and every array it views as read-only (so the formats keep it without a copy).
    Only for arrays the encoder itself allocated."""
    base = arr
    while isinstance(base, np.ndarray):
        base.flags.writeable = False
        base = base.base
    return arr


def dtype_name_of(value) -> str | None:
    """The numpy name of a dtype given as a string or anything ``np.dtype`` takes (None if neither)."""
    if isinstance(value, str):
        return value
    try:
        return np.dtype(value).name
    except TypeError:
        return None
