"""coremltools' op compression configs, translated into calls of weightpack's encoders.

Every ``Op*Config`` option maps to a weightpack encoder argument; nothing falls back to
coremltools' own numerics. Where coremltools leaves a weight uncompressed (a group size that
does not divide the axis, a block wider than half the channels, ...) the translation returns the
reason as a string and the weight stays as it is, as in coremltools.

=======================================  ========================================================
coremltools option                       weightpack
=======================================  ========================================================
OpMagnitudePrunerConfig.target_sparsity  ``prune(w, sparsity)``: exactly round(s N) weights
                                         pruned (coremltools over-prunes ties at its percentile)
  block_size, dim                        ``prune(w, sparsity, block_size, dim)``: whole blocks by
                                         their L2 norm (conv/linear weights, as coremltools)
  n_m_ratio, dim                         ``prune(w, n_m_ratio, dim)``: n of every m along dim
OpThresholdPrunerConfig.threshold        ``prune(w, threshold)``: every ``|w| <= threshold``
  minimum_sparsity_percentile            honoured: a weight left sparser than this stays dense
OpPalettizerConfig.mode                  "kmeans" (optimal 1-D k-means), "uniform", "unique",
                                         "custom" (``lut_function``)
  nbits                                  1, 2, 3, 4, 6, 8 (3 needs iOS18)
  granularity, group_size, channel_axis  per_tensor, per_grouped_channel (iOS18): ``group_size``
                                         consecutive channels along the axis coremltools picks
  cluster_dim                            ``cluster_dim``: vectors along that axis (iOS18)
  enable_per_channel_scale               ``per_channel_scale=True``: a ScaledLUTTensor (iOS18)
  num_kmeans_workers                     accepted; no effect (weightpack's k-means is exact and fast)
OpLinearQuantizerConfig.mode             "linear_symmetric" -> symmetric, "linear" -> asymmetric
  dtype                                  int8, uint8, int4, uint4 (4-bit needs iOS18)
  granularity, block_size                per_tensor, per_channel, per_block (iOS18), as blocks
                                         along every axis (coremltools' layout)
weight_threshold (every config)          honoured: compress iff size > weight_threshold
=======================================  ========================================================
"""
from __future__ import annotations

import numpy as np
from coremltools.converters.mil.mil import types
from coremltools.optimize.coreml import (
    OpLinearQuantizerConfig,
    OpMagnitudePrunerConfig,
    OpPalettizerConfig,
    OpThresholdPrunerConfig,
)
from coremltools.optimize.coreml._config import CompressionGranularity

from ..errors import WeightpackError

KINDS = {
    "prune": (OpMagnitudePrunerConfig, OpThresholdPrunerConfig),
    "palettize": (OpPalettizerConfig,),
    "quantize": (OpLinearQuantizerConfig,),
}


def minimum_target(op_config) -> tuple[str, str]:
    """(oldest target for ``op_config``, what needs it), as coremltools' compressors require."""
    if isinstance(op_config, OpPalettizerConfig):
        if op_config.granularity == CompressionGranularity.PER_GROUPED_CHANNEL:
            return "iOS18", "per_grouped_channel palettization"
        if op_config.nbits == 3:
            return "iOS18", "3-bit palettization"
        if op_config.cluster_dim > 1:
            return "iOS18", "vector palettization"
        if op_config.enable_per_channel_scale:
            return "iOS18", "palettization with a per-channel scale"
    if isinstance(op_config, OpLinearQuantizerConfig):
        if op_config.granularity == CompressionGranularity.PER_BLOCK:
            return "iOS18", "per_block quantization"
        if quant_dtype(op_config) in ("int4", "uint4"):
            return "iOS18", "4-bit quantization"
    return "iOS16", ""


def quant_dtype(op_config: OpLinearQuantizerConfig) -> str:
    return types.builtin_to_string(op_config.dtype)


def is_structured(op_config) -> bool:
    """Block or n:m pruning, which coremltools applies to conv and linear weights only."""
    return isinstance(op_config, OpMagnitudePrunerConfig) and (op_config.block_size is not None or op_config.n_m_ratio is not None)


def prune(weights, op_config):
    """A SparseTensor, or a reason to leave the weight dense."""
    from ..compress import prune as wp_prune

    if isinstance(op_config, OpThresholdPrunerConfig):
        sparse = wp_prune(weights, threshold=float(op_config.threshold))
        if sparse.sparsity < op_config.minimum_sparsity_percentile:
            return f"its sparsity {sparse.sparsity:.4f} is below minimum_sparsity_percentile {op_config.minimum_sparsity_percentile}"
        return sparse
    if op_config.n_m_ratio is not None:
        n, m = op_config.n_m_ratio
        dim = 1 if op_config.dim is None else op_config.dim
        if m > weights.shape[dim] / 2:
            return f"m={m} is more than half of the {weights.shape[dim]} channels along dim {dim}"
        return wp_prune(weights, n_m_ratio=(int(n), int(m)), dim=dim)
    if op_config.block_size is not None:
        dim = 0 if op_config.dim is None else op_config.dim
        if op_config.block_size > weights.shape[dim] / 2:
            return f"block_size={op_config.block_size} is more than half of the {weights.shape[dim]} channels along dim {dim}"
        return wp_prune(weights, sparsity=float(op_config.target_sparsity), block_size=op_config.block_size, dim=dim)
    return wp_prune(weights, sparsity=float(op_config.target_sparsity))


def palettize(weights, op_config: OpPalettizerConfig, block_sizes, channel_axis):
    """A PalettizedTensor, SparsePalettizedTensor (for a SparseTensor) or ScaledLUTTensor (with a
    per-channel scale), or a reason to leave the weight as it is."""
    from ..compress import palettize as wp_palettize

    shape = weights.shape
    groups = [(axis, b) for axis, b in enumerate(block_sizes) if b not in (0, shape[axis])]
    if len(groups) > 1:
        raise WeightpackError(f"block sizes {list(block_sizes)}: general block-wise palettization is not supported (nor is it by coremltools)")
    axis, group_size = groups[0] if groups else (0 if channel_axis is None else channel_axis % len(shape), None)
    span = shape[axis] if group_size is None else group_size
    if shape[axis] % span:
        return f"group_size={group_size} does not divide axis {axis} of shape {shape}"
    if span % op_config.cluster_dim:
        return f"cluster_dim={op_config.cluster_dim} does not divide the {span} channels of a group"
    mode = op_config.mode.lower()
    options = {"mode": mode, "group_size": group_size, "axis": axis, "cluster_dim": op_config.cluster_dim,
               "per_channel_scale": op_config.enable_per_channel_scale}  # fmt: skip
    if mode in ("kmeans", "uniform"):
        options["nbits"] = op_config.nbits
    if mode == "custom":
        options["lut_function"] = op_config.lut_function
    return wp_palettize(weights, **options)


def quantize(weights, op_config: OpLinearQuantizerConfig, block_sizes):
    """A QuantizedTensor (SparseQuantizedTensor for a SparseTensor), or a reason to skip the weight."""
    from ..compress import quantize as wp_quantize

    shape = weights.shape
    for axis, (b, n) in enumerate(zip(block_sizes, shape)):
        if b < 0 or (b and n % b):
            return f"block size {b} does not divide axis {axis} of shape {shape}"
    mode = "symmetric" if op_config.mode == "LINEAR_SYMMETRIC" else "asymmetric"
    return wp_quantize(
        weights, quant_dtype(op_config), mode=mode, granularity="per_block", block_size=tuple(int(b) for b in block_sizes)
    )


def is_float(value) -> bool:
    return isinstance(value, np.ndarray) and value.dtype in (np.float16, np.float32)
