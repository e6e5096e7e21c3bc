"""coremltools' op compression configs, translated into calls of weightpack's encoders.

Each ``Op*Config`` option is either honoured (mapped to a weightpack encoder argument) or refused
with a :class:`WeightpackError` naming it; nothing falls back to coremltools' own numerics.

======================================  ==========================================================
coremltools option                      weightpack
======================================  ==========================================================
OpMagnitudePrunerConfig.target_sparsity ``prune(w, sparsity)``: exactly round(s N) weights pruned
                                        (coremltools over-prunes ties at the percentile)
  block_size, n_m_ratio, dim            refused (structured pruning: not in weightpack yet)
OpThresholdPrunerConfig                 refused (threshold pruning: not in weightpack yet)
OpPalettizerConfig.mode                 "kmeans" (optimal 1-D k-means), "uniform"; "unique",
                                        "custom" refused
  nbits                                 1, 2, 3, 4, 6, 8 (3 needs iOS18)
  granularity, group_size, channel_axis per_tensor, per_grouped_channel (iOS18): ``group_size``
                                        consecutive channels along the axis coremltools picks
  cluster_dim > 1                       refused (vector palettization: not in weightpack yet)
  enable_per_channel_scale              refused (not in weightpack yet)
  num_kmeans_workers                    accepted; no effect (weightpack's k-means is exact and fast)
OpLinearQuantizerConfig.mode            "linear_symmetric" -> symmetric, "linear" -> asymmetric
  dtype                                 int8, uint8, int4, uint4 (4-bit needs iOS18)
  granularity, block_size               per_tensor, per_channel, per_block (iOS18), as blocks
                                        along every axis (coremltools' layout)
weight_threshold (every config)         honoured: compress iff size > weight_threshold
======================================  ==========================================================
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


def check_supported(op_config, where: str) -> None:
    """Raise if ``op_config`` asks for something weightpack's encoders cannot do yet."""

    def refuse(option: str) -> None:
        raise WeightpackError(f"{where}: {option} is not supported by weightpack's encoders yet")

    if isinstance(op_config, OpThresholdPrunerConfig):
        refuse("OpThresholdPrunerConfig (threshold pruning)")
    if isinstance(op_config, OpMagnitudePrunerConfig):
        if op_config.n_m_ratio is not None:
            refuse(f"n_m_ratio={op_config.n_m_ratio} (n:m pruning)")
        if op_config.block_size is not None:
            refuse(f"block_size={op_config.block_size} (block-structured pruning)")
    if isinstance(op_config, OpPalettizerConfig):
        if op_config.mode not in ("KMEANS", "UNIFORM"):
            refuse(f"mode={op_config.mode.lower()!r} (weightpack has 'kmeans' and 'uniform')")
        if op_config.cluster_dim != 1:
            refuse(f"cluster_dim={op_config.cluster_dim} (vector palettization)")
        if op_config.enable_per_channel_scale:
            refuse("enable_per_channel_scale=True")


def minimum_target(op_config) -> tuple[str, str]:
    """(oldest target for ``op_config``, what needs it), as coremltools' compressors require."""
    if isinstance(op_config, OpPalettizerConfig):
        if op_config.granularity == CompressionGranularity.PER_GROUPED_CHANNEL:
            return "iOS18", "per_grouped_channel palettization"
        if op_config.nbits == 3:
            return "iOS18", "3-bit palettization"
    if isinstance(op_config, OpLinearQuantizerConfig):
        if op_config.granularity == CompressionGranularity.PER_BLOCK:
            return "iOS18", "per_block quantization"
        if quant_dtype(op_config) in ("int4", "uint4"):
            return "iOS18", "4-bit quantization"
    return "iOS16", ""


def quant_dtype(op_config: OpLinearQuantizerConfig) -> str:
    return types.builtin_to_string(op_config.dtype)


def prune(weights, op_config: OpMagnitudePrunerConfig):
    """A SparseTensor (or the sparse nonzeros of ``weights`` if it is a compressed tensor's dense values)."""
    from ..compress import prune as wp_prune

    return wp_prune(weights, sparsity=float(op_config.target_sparsity))


def palettize(weights, op_config: OpPalettizerConfig, block_sizes, channel_axis):
    """A PalettizedTensor (SparsePalettizedTensor for a SparseTensor), or a reason to skip the weight."""
    from ..compress import palettize as wp_palettize

    mode = op_config.mode.lower()
    shape = weights.shape
    groups = [(axis, b) for axis, b in enumerate(block_sizes) if b not in (0, shape[axis])]
    if not groups:
        return wp_palettize(weights, op_config.nbits, mode=mode)
    if len(groups) > 1 or (channel_axis is not None and groups[0][0] != channel_axis % len(shape)):
        raise WeightpackError(f"block sizes {list(block_sizes)}: general block-wise palettization is not supported (nor is it by coremltools)")
    axis, group_size = groups[0]
    if shape[axis] % group_size:
        return f"group_size={group_size} does not divide axis {axis} of shape {shape}"
    return wp_palettize(weights, op_config.nbits, mode=mode, group_size=group_size, axis=axis)


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
