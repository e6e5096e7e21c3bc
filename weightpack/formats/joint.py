"""Sparse tensors whose nonzero values are themselves compressed.

- :class:`SparsePalettizedTensor` mirrors ``constexpr_lut_to_sparse(indices_mask,
  indices_nonzero_data, lut, vector_axis)`` followed by ``constexpr_sparse_to_dense``: one n-bit
  index per set mask bit; LUT groups are laid over the mask's shape S; with vector LUTs the mask is
  repeated V times along ``vector_axis``.
- :class:`SparseQuantizedTensor` mirrors ``constexpr_sparse_blockwise_shift_scale(data_mask,
  nonzero_data, scale, offset)`` followed by ``constexpr_sparse_to_dense``: each stored integer
  uses the scale and offset of the block its dense position falls in (blocks over S).
"""
from __future__ import annotations

import numpy as np

from ..errors import WeightpackError
from .base import check_block_shape, int_array, mask_array
from .palettized import check_vector_axis, expanded_shape, index_array, lut_array
from .quantized import QUANT_TYPES, ScaledTensor, scale_offset_arrays
from .sparse import MaskedTensor, check_count


class SparsePalettizedTensor(MaskedTensor):
    """Sparse tensor whose nonzeros are palettized: ``indices_mask`` + ``indices_nonzero_data`` + ``lut``.

    >>> lut = np.array([1, 2, 3, 4], np.float16).reshape(1, 1, 4, 1)
    >>> t = SparsePalettizedTensor(np.array([[1, 0], [0, 1]], bool), np.array([3, 1]), lut)
    >>> t.decompress().tolist()
    [[4.0, 0.0], [0.0, 2.0]]
    """

    __slots__ = ("indices_mask", "indices_nonzero_data", "lut", "vector_axis")
    op = "constexpr_lut_to_sparse"
    _kernel = "decompress_sparse_palettized"

    def __init__(self, indices_mask, indices_nonzero_data, lut, vector_axis=None):
        mask = mask_array(indices_mask, "indices_mask")
        lut, nbits = lut_array(lut)
        indices = index_array(indices_nonzero_data, nbits, "indices_nonzero_data")
        if indices.ndim != 1:
            raise WeightpackError(f"indices_nonzero_data must be 1-D, got shape {indices.shape}")
        check_count(mask, indices.size, "indices_mask", "indices_nonzero_data")
        if lut.ndim != mask.ndim + 2:
            raise WeightpackError(
                f"lut has rank {lut.ndim} (shape {lut.shape}); it must be the mask's rank {mask.ndim} plus 2"
            )
        check_block_shape(mask.shape, lut.shape[:-2], "lut's group dimensions")
        vector_axis = check_vector_axis(vector_axis, lut.shape[-1], mask.ndim)
        expanded_shape(mask.shape, vector_axis, lut.shape[-1])  # its element count must fit too
        self._init(indices_mask=mask, indices_nonzero_data=indices, lut=lut, vector_axis=vector_axis)

    @property
    def mask(self):
        return self.indices_mask

    @property
    def nbits(self) -> int:
        return self.indices_nonzero_data.nbits

    @property
    def vector_size(self) -> int:
        return self.lut.shape[-1]

    @property
    def shape(self) -> tuple[int, ...]:
        return expanded_shape(self.indices_mask.shape, self.vector_axis, self.vector_size)

    @property
    def dtype(self) -> np.dtype:
        return self.lut.dtype

    def arrays(self) -> dict:
        return {"indices_mask": self.indices_mask, "indices_nonzero_data": self.indices_nonzero_data, "lut": self.lut}

    def _attrs(self) -> tuple:
        return (self.vector_axis,)


class SparseQuantizedTensor(MaskedTensor, ScaledTensor):
    """Sparse tensor whose nonzeros are quantized: ``data_mask`` + ``nonzero_data`` + ``scale`` (+ ``offset``).

    >>> t = SparseQuantizedTensor(np.array([[1, 1], [0, 1]], bool), np.array([2, -4, 6], np.int8),
    ...                           np.array([[0.5], [0.25]], np.float16))
    >>> t.decompress().tolist()
    [[1.0, -2.0], [0.0, 1.5]]
    """

    __slots__ = ("data_mask", "nonzero_data", "scale", "offset")
    op = "constexpr_sparse_blockwise_shift_scale"
    _kernel = "decompress_sparse_quantized"

    def __init__(self, data_mask, nonzero_data, scale, offset=None):
        mask = mask_array(data_mask, "data_mask")
        data = int_array(nonzero_data, "nonzero_data", QUANT_TYPES)
        if data.ndim != 1:
            raise WeightpackError(f"nonzero_data must be 1-D, got shape {data.shape}")
        check_count(mask, data.size, "data_mask", "nonzero_data")
        scale, offset = scale_offset_arrays(mask.shape, data.dtype_name, scale, offset)
        self._init(data_mask=mask, nonzero_data=data, scale=scale, offset=offset)

    @property
    def mask(self):
        return self.data_mask

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data_mask.shape

    def arrays(self) -> dict:
        return {"data_mask": self.data_mask, "nonzero_data": self.nonzero_data, "scale": self.scale, "offset": self.offset}
