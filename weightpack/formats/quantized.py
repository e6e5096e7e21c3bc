"""Linearly quantized tensors: integers with a scale and an optional offset per block.

Mirrors Core ML's ``constexpr_blockwise_shift_scale(data, scale, offset)`` (iOS 18): ``scale`` has
the data's rank and ``block[i] = data.shape[i] / scale.shape[i]``, which covers per-tensor
(scale of all ones), per-channel and per-block layouts. Element p decodes to
``scale[b] * (data[p] - offset[b])`` with ``b = p // block``, evaluated in the scale's dtype:
``data`` and ``offset`` are converted to it, then the difference and the product are each rounded
to it (Core ML's reference arithmetic).
"""
from __future__ import annotations

import numpy as np

from ..bits import NBitArray
from ..errors import WeightpackError
from .base import FLOAT_DTYPES, CompressedTensor, check_block_shape, dtype_name, frozen_array, int_array

QUANT_TYPES = ("int4", "uint4", "int8", "uint8")


def scale_offset_arrays(data_shape, data_type: str, scale, offset, scale_name: str = "scale"):
    """Validate ``scale`` (fp16/fp32, blocks dividing ``data_shape``) and ``offset``."""
    scale = frozen_array(scale, scale_name, FLOAT_DTYPES)
    check_block_shape(data_shape, scale.shape, scale_name)
    if offset is not None:
        if isinstance(offset, NBitArray) or np.asarray(offset).dtype.kind in "iu":
            carrier = np.dtype(np.int8 if data_type.startswith("int") else np.uint8)
            if not isinstance(offset, NBitArray) and np.asarray(offset).dtype != carrier:
                raise WeightpackError(
                    f"offset has dtype {np.asarray(offset).dtype}; an integer offset must have the data's "
                    f"dtype {data_type} (pass {carrier} values or an NBitArray of {data_type})"
                )
            offset = int_array(offset, "offset", (data_type,), as_type=data_type)
        else:
            offset = frozen_array(offset, "offset", (scale.dtype,))
        if offset.shape != scale.shape:
            raise WeightpackError(f"offset has shape {offset.shape}; it must match scale's shape {scale.shape}")
    return scale, offset


class ScaledTensor(CompressedTensor):
    """A tensor decoded as ``scale * (data - offset)`` per block: its dtype is the scale's."""

    __slots__ = ()

    @property
    def dtype(self) -> np.dtype:
        return self.scale.dtype

    @property
    def block_shape(self) -> tuple[int, ...]:
        """Elements per block along each axis: ``shape[i] / scale.shape[i]``."""
        return tuple(d // s for d, s in zip(self.shape, self.scale.shape))


class QuantizedTensor(ScaledTensor):
    """A tensor stored as integer ``data`` (int8/uint8/int4/uint4), ``scale`` and optional ``offset``.

    >>> q = QuantizedTensor(np.array([[-127, 0, 64, 127]], np.int8), np.array([[0.5]], np.float16))
    >>> q.decompress().tolist(), q.block_shape, q.nbytes
    ([[-63.5, 0.0, 32.0, 63.5]], (1, 4), 6)
    """

    __slots__ = ("data", "scale", "offset")
    op = "constexpr_blockwise_shift_scale"
    _kernel = "decompress_quantized"

    def __init__(self, data, scale, offset=None):
        data = int_array(data, "data", QUANT_TYPES)
        if data.ndim == 0:
            raise WeightpackError("data must have at least one dimension")
        scale, offset = scale_offset_arrays(data.shape, data.dtype_name, scale, offset)
        self._init(data=data, scale=scale, offset=offset)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def arrays(self) -> dict:
        return {"data": self.data, "scale": self.scale, "offset": self.offset}

    def __repr__(self):
        return super().__repr__().replace(f"dtype={dtype_name(self.dtype)}", f"dtype={dtype_name(self.dtype)}, block={self.block_shape}", 1)
