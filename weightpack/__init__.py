"""weightpack: compressed neural-network weights, byte-compatible with Apple Core ML.

>>> import numpy as np, weightpack as wp
>>> w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)
>>> p = wp.palettize(w, nbits=2)
>>> p.decompress().shape, p.nbytes
((8, 8), 32)
"""
from .bits import NBitArray, pack_bits, unpack_bits
from .errors import BackendError, FormatError, WeightpackError
from .formats import (
    CompressedTensor,
    PalettizedTensor,
    QuantizedTensor,
    SparsePalettizedTensor,
    SparseQuantizedTensor,
    SparseTensor,
)

__version__ = "0.1.0"

__all__ = [
    "NBitArray",
    "pack_bits",
    "unpack_bits",
    "WeightpackError",
    "FormatError",
    "BackendError",
    "CompressedTensor",
    "SparseTensor",
    "PalettizedTensor",
    "QuantizedTensor",
    "SparsePalettizedTensor",
    "SparseQuantizedTensor",
]
