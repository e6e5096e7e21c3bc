"""Calibration-aware compression: activation statistics in, lower layer-output error out.

- :class:`ActivationStats`: the Gram matrix ``H = X^T X / n``, second moments and row count of a
  layer's inputs, gathered batch by batch, mergeable, saved as .npz;
- :func:`gptq_palettize`, :func:`gptq_quantize`: the OBS/GPTQ column sweep with error feedback
  through H, producing the same PalettizedTensor / QuantizedTensor as the data-free encoders
  (or a :class:`ScaledPalettizedTensor` with a per-row scale);
- :func:`sparsegpt_prune`, :func:`wanda_prune`: calibrated pruning to a SparseTensor;
- :func:`allocate_bits`: LUT bit width and granularity per layer under a size budget.

The sweep kernels are C (csrc/encode_sweep.c), compiled at install.
"""
from .allocate import BitPlan, allocate_bits
from .palettize import gptq_palettize
from .prune import sparsegpt_prune, wanda_prune
from .quantize import gptq_quantize
from .scaled import ScaledPalettizedTensor
from .stats import ActivationStats

__all__ = [
    "ActivationStats",
    "gptq_palettize",
    "gptq_quantize",
    "sparsegpt_prune",
    "wanda_prune",
    "allocate_bits",
    "BitPlan",
    "ScaledPalettizedTensor",
]
