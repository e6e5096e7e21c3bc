"""The encoders: float weights in, Core ML-shaped compressed tensors out.

- :func:`prune`: magnitude, threshold, block and n:m pruning (optionally importance-scored) -> SparseTensor;
- :func:`palettize`: optimal k-means (scalar or vector), uniform, unique or custom LUTs -> PalettizedTensor
  / SparsePalettizedTensor, or a :class:`ScaledLUTTensor` with an int8 LUT or a per-channel scale;
- :func:`palettize_rd_curve`: the optimal error for every LUT size, from one run;
- :func:`quantize`: linear int8/uint8/int4/uint4 -> QuantizedTensor / SparseQuantizedTensor, or the
  LUT of a palettized tensor;
- :func:`compress_all`: a mapping of tensors on any ``concurrent.futures`` executor.

Each module's docstring states its rounding and tie rules. The inputs are never modified.
Their hot loops are C (csrc/encode_*.c), compiled at install: the first call is as fast as the next.
"""
from .batch import CompressionConfig, compress_all
from .palettization import palettize
from .pruning import prune
from .quantization import quantize
from .rd_curve import RDCurve, palettize_rd_curve
from .scaled import ScaledLUTTensor

__all__ = ["prune", "palettize", "palettize_rd_curve", "RDCurve", "quantize", "compress_all", "CompressionConfig", "ScaledLUTTensor"]
