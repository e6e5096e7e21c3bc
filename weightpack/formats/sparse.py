"""Sparse tensors: a 1-bit mask plus the nonzero values in row-major order.

Mirrors Core ML's ``constexpr_sparse_to_dense(nonzero_data, mask)`` (iOS 18): flat element ``i``
of the output is ``nonzero_data[rank of i among set mask bits]`` where mask bit ``i`` is set, and
zero elsewhere.
"""
from __future__ import annotations

import numpy as np

from ..bits import NBitArray
from ..errors import WeightpackError
from .base import BYTE_INT_DTYPES, FLOAT_DTYPES, CompressedTensor, frozen_array, int_array, mask_array, popcount

SPARSE_INT_TYPES = ("int4", "uint4", "int8", "uint8")


def nonzero_array(value, name: str = "nonzero_data"):
    """Nonzero values: a 1-D fp16/fp32/int8/uint8 numpy array, or a 1-D int4/uint4/int8/uint8 NBitArray."""
    if isinstance(value, NBitArray):
        arr = int_array(value, name, SPARSE_INT_TYPES)
        if arr.ndim != 1:
            raise WeightpackError(f"{name} must be 1-D, got shape {arr.shape}")
        return arr
    return frozen_array(value, name, FLOAT_DTYPES + BYTE_INT_DTYPES, ndim=1)


def check_count(mask: NBitArray, count: int, mask_name: str, data_name: str) -> None:
    """The mask's popcount must equal the number of stored values."""
    bits = popcount(mask)
    if bits != count:
        raise WeightpackError(
            f"{mask_name} has {bits} set bits but {data_name} holds {count} values; they must be equal"
        )


def value_dtype(arr) -> np.dtype:
    """The numpy dtype a stored array decodes to (NBitArrays decode to int8/uint8)."""
    return arr.value_dtype if isinstance(arr, NBitArray) else arr.dtype


class MaskedTensor(CompressedTensor):
    """A tensor that stores values only where its 1-bit ``mask`` is set."""

    __slots__ = ()

    @property
    def sparsity(self) -> float:
        """Fraction of the mask's positions with no stored value (0.0 for an empty tensor)."""
        size = self.mask.size
        return 1.0 - self.derived("popcount", lambda: popcount(self.mask)) / size if size else 0.0


class SparseTensor(MaskedTensor):
    """A dense tensor stored as ``mask`` (uint1, logical shape S) and ``nonzero_data`` (1-D).

    >>> t = SparseTensor(np.array([[1, 0, 0], [0, 1, 1]], bool), np.array([5, 6, 7], np.float16))
    >>> t.decompress().tolist(), t.nbytes, round(t.sparsity, 3)
    ([[5.0, 0.0, 0.0], [0.0, 6.0, 7.0]], 7, 0.5)
    """

    __slots__ = ("mask", "nonzero_data")
    op = "constexpr_sparse_to_dense"
    _kernel = "decompress_sparse"

    def __init__(self, mask, nonzero_data):
        mask = mask_array(mask)
        nonzero_data = nonzero_array(nonzero_data)
        check_count(mask, nonzero_data.shape[0], "mask", "nonzero_data")
        self._init(mask=mask, nonzero_data=nonzero_data)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.mask.shape

    @property
    def dtype(self) -> np.dtype:
        return value_dtype(self.nonzero_data)

    def arrays(self) -> dict:
        return {"nonzero_data": self.nonzero_data, "mask": self.mask}
