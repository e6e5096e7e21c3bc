"""The encoders: float weights in, Core ML-shaped compressed tensors out.

- :func:`prune`: magnitude pruning to an exact count -> SparseTensor;
- :func:`palettize`: optimal (or uniform) LUTs -> PalettizedTensor / SparsePalettizedTensor;
- :func:`quantize`: linear int8/uint8/int4/uint4 -> QuantizedTensor / SparseQuantizedTensor.

Each module's docstring states its rounding and tie rules. The inputs are never modified.
numba loads only when k-means runs (:mod:`.kmeans`).
"""
from .palettization import palettize
from .pruning import prune
from .quantization import quantize

__all__ = ["prune", "palettize", "quantize"]
