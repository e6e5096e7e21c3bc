"""``compress``: a Core ML model in, a compressed one out, calibrated on real inputs when given them.

The drop-in compressors (:mod:`.dropin`) choose which weights are compressed and in which layout,
exactly as without calibration; with ``calibration`` inputs every chosen weight that a linear,
constant-matrix matmul or conv op reads (:func:`weightpack.calibration.collect.calibrated_weights`)
is encoded by the calibrated encoder of its op config instead:

=====================================================  =========================================
op config                                              calibrated encoder
=====================================================  =========================================
OpPalettizerConfig kmeans, per_tensor or               ``gptq_palettize(w, H, nbits, group_size)``
per_grouped_channel along the output axis
  + enable_per_channel_scale                           ``per_row_scale=True``: one searched scale
                                                       per *output row* (coremltools' data-free
                                                       scale is per input channel)
OpLinearQuantizerConfig per_tensor / per_channel /     ``gptq_quantize(w, H, dtype, mode,
per_block along the input axis                         granularity, block_size)``
OpMagnitudePrunerConfig target_sparsity, or n_m_ratio  ``sparsegpt_prune(w, H, sparsity | n_m,
along the input axis of a 2-D weight                   refit=True)``: kept weights refit by least
                                                       squares, the better of SparseGPT's and
                                                       Wanda's masks
=====================================================  =========================================

Everything else (uniform or custom LUTs, vector LUTs, block pruning, threshold pruning, weights no
calibrated op reads, such as embedding tables: their error is absorbed downstream by the
residual-stream targets) keeps its data-free encoding. In a joint
compression the first stage is calibrated and the later ones (the nonzeros' palettization or
quantization) are data-free.

Sequential (default): weights are encoded in program order, each on statistics gathered with the
earlier weights already compressed (:class:`weightpack.calibration.sequential.SequentialStats`),
and, unless ``correct_inputs=False``, towards the original model's outputs from those compressed
inputs, a layer that writes into a residual stream towards the original sum (measured on the
fixtures: +0.2 to +6.4 dB of held-out output SNR over sequential statistics alone).

Without ``calibration`` the result is exactly the drop-in compressors' (the data-free path).
"""
from __future__ import annotations

import logging
import os
import time

from ..errors import WeightpackError, describe
from . import op_configs

log = logging.getLogger("weightpack")


def compress(model, config, *, calibration=None, output=None, sequential: bool = True, correct_inputs=None,
             refit: bool = False, prune_refit: bool = True, target=None, plan=None, progress=None, report=None):
    """Compress ``model`` (an .mlpackage path, a coremltools MLModel or a Program loaded from a
    package) with ``config``: a coremltools ``OptimizationConfig`` or a list of them applied in
    order (a joint compression, iOS18). ``calibration``: inputs for
    :func:`weightpack.calibration.collect` (an .npz path, a dict of stacked arrays or an iterable
    of input dicts), None for the data-free result. ``correct_inputs`` (default: on when
    ``sequential``): each weight also compensates the error its compressed inputs carry (aims at
    the original model's outputs; :mod:`weightpack.calibration.sequential`). ``refit``: calibrated
    palettizations also refit their LUT entries (and per-row scales) on H, alternating with the
    sweep while the layer's output error drops (``gptq_palettize(refit=True)``). ``prune_refit``
    (default on): calibrated pruning refits each row's kept weights by least squares on H after the
    sweep (``sparsegpt_prune(refit=True)``); False gives plain SparseGPT. ``plan``: {weight name: (nbits, group_size)}
    overriding a palettization's width per weight (see :func:`weightpack.calibration.plan_program`).
    ``progress(done, total, name)`` after each candidate weight; ``report(line)`` gets one line per
    encoded weight. Writes ``output`` (an .mlpackage, atomically) and returns its path when given,
    else returns the new MLModel.

    For example (``x.npz``: one stacked array per input of the model)::

        import weightpack.coreml as wpc, coremltools.optimize.coreml as cto
        cfg = cto.OptimizationConfig(cto.OpPalettizerConfig(nbits=4))
        wpc.compress("bert.mlpackage", cfg, calibration="x.npz", output="bert4.mlpackage")
    """
    from .dropin import linear_quantize_weights, palettize_weights, prune_weights
    from .package import check_output, read_weights, save_model

    for flag, value in (("refit", refit), ("prune_refit", prune_refit)):
        if not isinstance(value, bool):
            raise WeightpackError(f"{flag}={describe(value)} must be True or False")
    if refit and calibration is None:
        raise WeightpackError("refit=True needs calibration inputs (it refits LUTs on their statistics)")
    steps = _steps(config)
    path, mlmodel = _model(model)
    if output is not None:
        output = check_output(output)
    encoder = None
    if calibration is not None:
        if path is None:
            raise WeightpackError("calibration needs the model's .mlpackage path (an MLModel saved to disk), to run it")
        read_weights(path)
        correct = sequential if correct_inputs is None else correct_inputs
        encoder = CalibratedEncoder(path, calibration, sequential=sequential, correct_inputs=correct, refit=refit,
                                    prune_refit=prune_refit, plan=plan, report=report)
    elif plan is not None:
        encoder = CalibratedEncoder(None, None, plan=plan, report=report)
    compressors = {"prune": prune_weights, "palettize": palettize_weights, "quantize": linear_quantize_weights}
    for index, (kind, cfg) in enumerate(steps):
        mlmodel = compressors[kind](mlmodel, cfg, joint_compression=index > 0, target=target, progress=progress,
                                    encoder=encoder if index == 0 else None)  # fmt: skip
    if encoder is not None:
        encoder.close()
    if output is None:
        return mlmodel
    save_model(mlmodel, output)
    return output


def _steps(config) -> list:
    import coremltools.optimize.coreml as cto

    configs = list(config) if isinstance(config, (list, tuple)) else [config]
    if not configs:
        raise WeightpackError("config is empty: give an OptimizationConfig or a list of them")
    steps = []
    for cfg in configs:
        if not isinstance(cfg, cto.OptimizationConfig):
            raise WeightpackError(f"config must be a coremltools OptimizationConfig or a list of them, got {describe(cfg)}")
        entries = [cfg.global_config, *cfg.op_type_configs.values(), *cfg.op_name_configs.values()]
        kinds = {k for e in entries if e is not None for k, types in op_configs.KINDS.items() if isinstance(e, types)}
        if len(kinds) != 1:
            raise WeightpackError(f"each OptimizationConfig must hold one kind of op config (pruner, palettizer or quantizer), found {len(kinds)}")
        steps.append((kinds.pop(), cfg))
    return steps


def _model(model):
    """(package path or None, MLModel) of what ``compress`` was given."""
    import coremltools as ct

    from .runtime import Program

    if isinstance(model, Program):
        model = model.graph.source
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.exists(path):
            raise WeightpackError(f"{path}: no such file or directory")
        from .package import read_weights

        read_weights(path)  # validates the package and every blob before coremltools reads it
        return path, ct.models.MLModel(path, skip_model_load=True)
    if hasattr(model, "get_spec"):
        return getattr(model, "package_path", None), model
    raise WeightpackError(f"model={describe(model)} must be an .mlpackage path, a coremltools MLModel or a Program")


class CalibratedEncoder:
    """The drop-in compressors' ``encoder``: calibrated encoders on sequential statistics."""

    def __init__(self, path, calibration, *, sequential=True, correct_inputs=False, refit=False, prune_refit=True, plan=None,
                 report=None):
        from ..calibration.sequential import SequentialStats

        self.stats = None
        if path is not None:
            self.stats = SequentialStats(path, calibration, sequential=sequential, correct_inputs=correct_inputs)
        self.plan = dict(plan or {})
        self.refit, self.prune_refit = refit, prune_refit
        self.report = report
        self.count = 0

    def __call__(self, kind, op, op_config, default):
        name = op.outputs[0].name
        start = time.perf_counter()
        weights = op.outputs[0].val
        calibrated = self.stats is not None and name in self.stats.layouts
        tensor, how = None, "data-free"
        if calibrated:
            tensor, how = self._calibrated(kind, op, op_config, weights, name)
        if tensor is None and kind == "palettize" and name in self.plan:
            from ..compress import palettize

            nbits, group = self.plan[name]
            tensor, how = palettize(weights, nbits, group_size=group), f"palettize {_option(nbits, group)} (planned, data-free)"
        if tensor is None:
            result = default()
        else:
            result = (op.outputs[0], tensor, f"{op.name}{_SUFFIX[kind]}")
        value = None if result is None or isinstance(result[1], str) else result[1]
        if self.stats is not None:
            self.stats.finish(name, value)
        self.count += 1
        if self.report is not None:
            what = how if value is not None else "left as it is"
            self.report(f"[{self.count}] {name} {'x'.join(map(str, weights.shape))}: {what} ({time.perf_counter() - start:.2f} s)")
        return result

    def _calibrated(self, kind, op, op_config, weights, name):
        """(tensor, description) by the calibrated encoder, or (None, why not) when it does not apply."""
        from coremltools.optimize import _utils as ct_utils

        from ..calibration import gptq_palettize, gptq_quantize, sparsegpt_prune

        if kind == "palettize":
            if op_config.mode.lower() != "kmeans" or op_config.cluster_dim != 1:
                return None, "data-free"
            blocks, axis = ct_utils.infer_block_sizes(op, op_config, weights, return_channel_axis=True)
            if blocks is None or axis not in (0, None) or any(b not in (0, n) for b, n in zip(blocks[1:], weights.shape[1:])):
                return None, "data-free"
            group = blocks[0] if blocks[0] not in (0, weights.shape[0]) else None
            nbits = op_config.nbits
            if name in self.plan:
                nbits, group = self.plan[name]
            if group is not None and weights.shape[0] % group:
                return None, "data-free"
            stats, w = self._stats(name, weights)
            scaled = bool(op_config.enable_per_channel_scale)
            tensor = gptq_palettize(w, stats, nbits, group_size=group, per_row_scale=scaled, refit=self.refit)
            extras = (" + per-row scale" if scaled else "") + (" + refit" if self.refit else "")
            return tensor, f"gptq_palettize {_option(nbits, group)}{extras}, {stats.count} rows"
        if kind == "quantize":
            blocks = ct_utils.infer_block_sizes(op, op_config, weights)
            granularity = _granularity(blocks, weights.shape)
            if granularity is None:
                return None, "data-free"
            mode = "symmetric" if op_config.mode == "LINEAR_SYMMETRIC" else "asymmetric"
            dtype = op_configs.quant_dtype(op_config)
            stats, w = self._stats(name, weights)
            block = blocks[1] if granularity == "per_block" else None
            tensor = gptq_quantize(w, stats, dtype, mode=mode, granularity=granularity, block_size=block)
            return tensor, f"gptq_quantize {dtype} {granularity}{'' if block is None else f' {block}'}, {stats.count} rows"
        if not isinstance(op_config, op_configs.KINDS["prune"][0]) or op_config.block_size is not None:
            return None, "data-free"
        if op_config.n_m_ratio is not None:
            n, m = (int(v) for v in op_config.n_m_ratio)
            channels = weights.shape[1]
            if op_config.dim not in (None, 1) or m > channels / 2 or channels % m or not op_config._check_const_op_is_valid(op):
                return None, "data-free"
            stats, w = self._stats(name, weights)
            tensor = n_of_m_along_inputs(w, stats, n, m, refit=self.prune_refit)
            return tensor, f"sparsegpt_prune {n}:{m}{' + refit' if self.prune_refit else ''}, {stats.count} rows"
        stats, w = self._stats(name, weights)
        sparsity = float(op_config.target_sparsity)
        tensor = sparsegpt_prune(w, stats, sparsity, refit=self.prune_refit)
        return tensor, f"sparsegpt_prune {sparsity:.0%}{' + refit' if self.prune_refit else ''}, {stats.count} rows"

    def _stats(self, name, weights):
        """(the weight's ActivationStats, the weights its encoder aims at)."""
        stats = self.stats.stats(name)
        if stats.count < stats.in_features:
            log.warning(
                "weight %s: %d calibration rows for %d input features; a well-conditioned H needs at least %d "
                "(several times more is better): it is damped as SPEC.md section 10.2 says",
                name, stats.count, stats.in_features, stats.in_features,
            )
        return stats, self.stats.target(name, weights, stats)

    def close(self) -> None:
        if self.stats is not None and self.report is not None:
            mode = "statistics of the original model"
            if self.stats.sequential:
                mode = "sequential, inputs corrected" if self.stats.original is not None else "sequential"
            self.report(f"{self.stats.passes} pass{'es' if self.stats.passes != 1 else ''} over the calibration inputs ({mode})")
        self.stats = None


def n_of_m_along_inputs(w, stats, n: int, m: int, refit: bool = True):
    """SparseGPT with n of every m consecutive *input channels* pruned (coremltools' n:m along
    axis 1), also for a conv weight (out, C_in, *kernel): its columns are visited kernel tap by
    tap, so that each run of m lies along C_in, then the result is put back in the original layout.
    """
    import numpy as np

    from ..calibration import sparsegpt_prune
    from ..formats import SparseTensor

    if w.ndim == 2:
        return sparsegpt_prune(w, stats, n_m=(n, m), refit=refit)
    out, channels = w.shape[:2]
    taps = int(np.prod(w.shape[2:]))
    order = (np.arange(channels)[None, :] * taps + np.arange(taps)[:, None]).reshape(-1)  # tap-major columns
    gram = stats.gram[order][:, order]
    pruned = sparsegpt_prune(w.reshape(out, channels, taps).transpose(0, 2, 1).reshape(out, -1), gram, n_m=(n, m), refit=refit)

    def back(a):
        return a.reshape(out, taps, channels).transpose(0, 2, 1).reshape(w.shape)

    mask = back(pruned.mask.values().astype(bool))
    return SparseTensor(mask, back(pruned.decompress())[mask])


_SUFFIX = {"palettize": "_palettized", "quantize": "_quantized", "prune": "_sparsified"}


def _option(nbits, group) -> str:
    return f"{nbits}-bit" + ("" if group is None else f", one LUT per {group} rows")


def _granularity(blocks, shape):
    """gptq_quantize's granularity for coremltools' block sizes, or None if it has no equal."""
    if blocks is None or len(blocks) != len(shape) or any(b not in (0, n) for b, n in zip(blocks[2:], shape[2:])):
        return None
    out, inp = blocks[0], blocks[1]
    if out in (0, shape[0]) and inp in (0, shape[1]):
        return "per_tensor" if out == 0 or shape[0] == 1 else None
    if out != 1:
        return None
    if inp in (0, shape[1]):
        return "per_channel"
    return "per_block" if shape[1] % inp == 0 else None
