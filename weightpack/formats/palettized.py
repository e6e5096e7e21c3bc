"""Palettized tensors: n-bit indices into lookup tables (LUTs) of 2**n scalars or short vectors.

Mirrors Core ML's ``constexpr_lut_to_dense(indices, lut, vector_axis)`` (iOS 18). ``indices`` has
logical shape S (rank K); ``lut`` has shape ``[G0, ..., G(K-1), 2**n, V]``: the tensor is cut into
``G0 x ... x G(K-1)`` contiguous blocks of shape ``S[i] / G[i]``, each with its own LUT. Position p
uses LUT ``g(p) = (p[i] // (S[i] / G[i]))_i``. With ``V > 1`` each index expands to V consecutive
elements along ``vector_axis`` (the output is V times longer on that axis).
"""
from __future__ import annotations

import numpy as np

from ..bits import NBitArray, element_count
from ..errors import WeightpackError, describe
from .base import BYTE_INT_DTYPES, FLOAT_DTYPES, CompressedTensor, check_block_shape, frozen_array, int_array

LUT_SIZES = {2: 1, 4: 2, 8: 3, 16: 4, 64: 6, 256: 8}


def lut_array(lut) -> tuple[np.ndarray, int]:
    """Validate a LUT of shape [G..., 2**n, V]; return it and its index width n."""
    lut = frozen_array(lut, "lut", FLOAT_DTYPES + BYTE_INT_DTYPES)
    if lut.ndim < 3:
        raise WeightpackError(
            f"lut must have shape [G0..G(K-1), 2**nbits, V] (rank of the indices + 2), got shape {lut.shape}"
        )
    entries = lut.shape[-2]
    if entries not in LUT_SIZES:
        raise WeightpackError(
            f"lut has {entries} entries per table (lut.shape[-2]); allowed: {sorted(LUT_SIZES)} (1, 2, 3, 4, 6, 8 bits)"
        )
    if lut.shape[-1] < 1:
        raise WeightpackError(f"lut's vector size lut.shape[-1] must be at least 1, got {lut.shape[-1]}")
    return lut, LUT_SIZES[entries]


def index_array(indices, nbits: int, name: str) -> NBitArray:
    """Indices as a uint{nbits} NBitArray; raw integers must lie inside the LUT."""
    if not isinstance(indices, NBitArray):
        raw = np.asarray(indices)
        if raw.dtype.kind in "iu" and raw.size and (raw.min() < 0 or raw.max() >= 1 << nbits):
            bad = raw.min() if raw.min() < 0 else raw.max()
            raise WeightpackError(f"{name} holds {bad}, beyond the LUT's {1 << nbits} entries [0, {(1 << nbits) - 1}]")
    return int_array(indices, name, (f"uint{nbits}",), as_type=f"uint{nbits}")


def check_vector_axis(vector_axis, vector_size: int, rank: int):
    """``vector_axis`` normalised to [0, rank), required exactly when the LUT holds vectors."""
    if vector_size == 1:
        if vector_axis is not None:
            raise WeightpackError(f"vector_axis={describe(vector_axis)} must be None for a scalar LUT (V = 1)")
        return None
    if isinstance(vector_axis, (bool, np.bool_)) or not isinstance(vector_axis, (int, np.integer)) or not (
        -rank <= vector_axis < rank
    ):
        raise WeightpackError(
            f"vector_axis={describe(vector_axis)} must be an integer in [{-rank}, {rank}) for a vector LUT (V = {vector_size})"
        )
    return int(vector_axis) % rank


def expanded_shape(shape, vector_axis, vector_size: int) -> tuple[int, ...]:
    """The output shape: ``shape`` with the vector axis ``vector_size`` times longer."""
    out = list(shape)
    if vector_axis is not None:
        out[vector_axis] *= vector_size
        element_count(out, "the expanded shape (indices' shape, vector axis times the LUT's vector size)")
    return tuple(out)


class PalettizedTensor(CompressedTensor):
    """A tensor stored as n-bit ``indices`` into one or more lookup tables ``lut``.

    >>> lut = np.array([-1, -0.5, 0.5, 1], np.float16).reshape(1, 1, 4, 1)
    >>> t = PalettizedTensor(np.array([[0, 1], [2, 3]]), lut)
    >>> t.decompress().tolist(), t.nbits, t.nbytes
    ([[-1.0, -0.5], [0.5, 1.0]], 2, 9)
    """

    __slots__ = ("indices", "lut", "vector_axis")
    op = "constexpr_lut_to_dense"
    _kernel = "decompress_palettized"

    def __init__(self, indices, lut, vector_axis=None):
        lut, nbits = lut_array(lut)
        indices = index_array(indices, nbits, "indices")
        if indices.ndim != lut.ndim - 2 or indices.ndim == 0:
            raise WeightpackError(
                f"lut has rank {lut.ndim} (shape {lut.shape}); it must be the rank of the indices "
                f"({indices.ndim}, shape {indices.shape}) plus 2, with indices of rank >= 1"
            )
        check_block_shape(indices.shape, lut.shape[:-2], "lut's group dimensions")
        vector_axis = check_vector_axis(vector_axis, lut.shape[-1], indices.ndim)
        expanded_shape(indices.shape, vector_axis, lut.shape[-1])  # its element count must fit too
        self._init(indices=indices, lut=lut, vector_axis=vector_axis)

    @property
    def nbits(self) -> int:
        return self.indices.nbits

    @property
    def vector_size(self) -> int:
        return self.lut.shape[-1]

    @property
    def group_shape(self) -> tuple[int, ...]:
        """How many LUTs along each axis: ``lut.shape[:-2]``."""
        return self.lut.shape[:-2]

    @property
    def shape(self) -> tuple[int, ...]:
        return expanded_shape(self.indices.shape, self.vector_axis, self.vector_size)

    @property
    def dtype(self) -> np.dtype:
        return self.lut.dtype

    def arrays(self) -> dict:
        return {"indices": self.indices, "lut": self.lut}

    def _attrs(self) -> tuple:
        return (self.vector_axis,)
