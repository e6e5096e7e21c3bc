"""Compressed tensor types, one per Core ML constexpr op (iOS 18 forms)."""
from .base import CompressedTensor
from .joint import SparsePalettizedTensor, SparseQuantizedTensor
from .palettized import PalettizedTensor
from .quantized import QuantizedTensor
from .sparse import SparseTensor

__all__ = [
    "CompressedTensor",
    "SparseTensor",
    "PalettizedTensor",
    "QuantizedTensor",
    "SparsePalettizedTensor",
    "SparseQuantizedTensor",
]
