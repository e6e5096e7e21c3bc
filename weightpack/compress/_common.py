"""Input checks shared by the encoders. The caller's arrays are read, never written."""
from __future__ import annotations

import numpy as np

from ..errors import WeightpackError, describe
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
    finite = np.isfinite(arr)
    if not finite.all():
        raise WeightpackError(
            f"{name} contains NaN or infinity ({finite.size - np.count_nonzero(finite)} of {finite.size} values); "
            "only finite weights can be compressed"
        )


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
