"""Calibration-aware compression: activation statistics in, lower layer-output error out.

- :class:`ActivationStats`: the Gram matrix ``H = X^T X / n``, second moments and row count of a
  layer's inputs, gathered batch by batch, mergeable, saved as .npz;
- :func:`gptq_palettize`, :func:`gptq_quantize`: the OBS/GPTQ column sweep with error feedback
  through H, producing the same PalettizedTensor / QuantizedTensor as the data-free encoders
  (or a :class:`~weightpack.ScaledLUTTensor` with a per-row scale);
- :func:`sparsegpt_prune`, :func:`wanda_prune`: calibrated pruning to a SparseTensor;
- :func:`allocate_bits`: LUT bit width and granularity per layer under a size budget;
- :func:`collect` (:mod:`.collect`): the statistics of every weight op of a Core ML program, by
  running it on calibration inputs; :class:`SequentialStats` (:mod:`.sequential`): the same with
  earlier layers compressed; :func:`plan_program` (:mod:`.plan`): bits per layer of a whole
  program, from its statistics or its measured sensitivity.

The sweep kernels are C (csrc/encode_sweep.c), compiled at install.
"""
from .allocate import BitPlan, allocate_bits
from .collect import ProgramStats, collect
from .palettize import gptq_palettize
from .prune import sparsegpt_prune, wanda_prune
from .quantize import gptq_quantize
from .stats import ActivationStats


def __getattr__(name):  # the program-level helpers import the runtime: on first use only
    if name in ("SequentialStats", "plan_program"):
        from . import plan, sequential

        return {"SequentialStats": sequential.SequentialStats, "plan_program": plan.plan_program}[name]
    raise AttributeError(f"module 'weightpack.calibration' has no attribute {name!r}")

__all__ = [
    "ActivationStats",
    "gptq_palettize",
    "gptq_quantize",
    "sparsegpt_prune",
    "wanda_prune",
    "allocate_bits",
    "BitPlan",
    "collect",
    "ProgramStats",
    "SequentialStats",
    "plan_program",
]
