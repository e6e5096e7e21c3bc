"""Drop-in replacements for ``coremltools.optimize.coreml``'s post-training compressors, computed by weightpack.

:func:`prune_weights`, :func:`palettize_weights` and :func:`linear_quantize_weights` take an
MLModel and coremltools' own ``OptimizationConfig`` and return an MLModel with the op types
coremltools would produce (iOS16/17 or iOS18 forms, joint-compression chains), but every number
comes from weightpack's encoders. How each option maps to an encoder
argument: :mod:`.op_configs`; nothing falls back to coremltools' numerics.

How: the model goes to a pymil Program and back, as in coremltools' own API, with coremltools'
default MIL passes afterwards. coremltools decides *which* consts are compressed and with which
op config (its ``OptimizationConfig`` resolution, op_name > op_type > global, conflicts, its
gating: ``weight_threshold``, rank <= 1 consts, consts feeding only the block output, joint
chains) and the layout (its channel-axis choice per consumer op). weightpack computes the
compressed arrays and builds the constexpr ops (:mod:`.mil_export`). This keeps coremltools'
graph semantics without monkey-patching its kernels, so nothing global changes and coremltools'
own API keeps working beside weightpack's.

Also :func:`decompress_weights` (every constexpr chain back to a const, decoded by weightpack)
and :func:`get_weights_metadata` (in :mod:`.metadata`).
"""
from __future__ import annotations

import logging

import numpy as np
from coremltools.converters.mil.backend.mil.load import should_use_weight_file
from coremltools.optimize import _utils as ct_utils
from coremltools.optimize.coreml import OptimizationConfig

from ..compress.scaled import ScaledLUTTensor
from ..errors import WeightpackError, describe
from ..formats import (
    PalettizedTensor,
    QuantizedTensor,
    SparsePalettizedTensor,
    SparseQuantizedTensor,
    SparseTensor,
)
from . import op_configs
from .metadata import get_weights_metadata
from .package import read_weights
from .program import named_vars, program_target, replace_weight, to_model, to_program
from .targets import SPEC_VERSIONS, at_least, parse_target, target_for_spec
from .values import dense

log = logging.getLogger("weightpack")

__all__ = ["prune_weights", "palettize_weights", "linear_quantize_weights", "decompress_weights", "get_weights_metadata"]


def prune_weights(mlmodel, config, joint_compression: bool = False, *, target=None, progress=None, encoder=None):
    """coremltools' ``prune_weights`` with weightpack's exact-count magnitude pruning.

    Extra keywords (all three compressors): ``target`` builds the ops for a newer deployment
    target than the model's own ('iOS16', 'iOS17', 'iOS18'; default: the model's, at least
    iOS16); ``progress(done, total, name)`` is called after each candidate weight;
    ``encoder(kind, op, op_config, default)``, if given, computes each selected const weight
    instead (``default()`` is the data-free result; both return (var, value, name) or None), in
    program order: how calibrated compression (:mod:`.calibrated`) plugs in its encoders.
    """
    return _Compression("prune", mlmodel, config, joint_compression, target, progress, encoder).run()


def palettize_weights(mlmodel, config, joint_compression: bool = False, *, target=None, progress=None, encoder=None):
    """coremltools' ``palettize_weights`` with weightpack's optimal k-means (or uniform) LUTs."""
    return _Compression("palettize", mlmodel, config, joint_compression, target, progress, encoder).run()


def linear_quantize_weights(mlmodel, config, joint_compression: bool = False, *, target=None, progress=None, encoder=None):
    """coremltools' ``linear_quantize_weights`` with weightpack's quantizer."""
    return _Compression("quantize", mlmodel, config, joint_compression, target, progress, encoder).run()


def decompress_weights(mlmodel):
    """Every constexpr chain replaced by a ``const`` of its dense value, decoded by weightpack.

    Like coremltools' ``decompress_weights``, the consts keep the names of the vars they replace,
    and then coremltools' default passes run: consts of 100+ elements with equal values (two
    equal weights) are merged into the first, whose name is the one left.
    """
    weights = read_weights(mlmodel)
    spec_version = mlmodel.get_spec().specificationVersion
    prog = to_program(mlmodel, spec_version)
    found = named_vars(prog)
    target = program_target(prog)
    for name, weight in weights.items():
        if weight.chain != ("const",):
            replace_weight(found[name], dense(weight.value), target)
    return to_model(prog, mlmodel, spec_version)


class _Compression:
    """One call of a drop-in compressor: validate, pick the consts, compress, rebuild the model."""

    def __init__(self, kind, mlmodel, config, joint, target, progress, encoder=None):
        if not isinstance(config, OptimizationConfig):
            raise WeightpackError(f"config must be a coremltools OptimizationConfig, got {describe(config)}")
        if not isinstance(joint, bool):
            raise WeightpackError(f"joint_compression={describe(joint)} must be True or False")
        if not hasattr(mlmodel, "get_spec"):
            raise WeightpackError(f"mlmodel must be a coremltools MLModel, got {describe(mlmodel)}")
        self.kind, self.mlmodel, self.config, self.joint, self.progress = kind, mlmodel, config, joint, progress
        self.encoder = encoder
        own = mlmodel.get_spec().specificationVersion
        self.spec_version = max(own, SPEC_VERSIONS["iOS16"])
        if target is not None:
            target = parse_target(target)
            if SPEC_VERSIONS[target] < own:
                raise WeightpackError(f"target={target} is older than the model's own target {target_for_spec(own)}")
            self.spec_version = SPEC_VERSIONS[target]
        self._check_config()

    def _check_config(self) -> None:
        config = self.config
        if config._op_selector is not None:
            raise WeightpackError("the deprecated op_selector of OptimizationConfig is not supported; use op_name_configs")
        entries = [("global_config", config.global_config)]
        entries += [(f"op_type_configs[{k!r}]", v) for k, v in config.op_type_configs.items()]
        entries += [(f"op_name_configs[{k!r}]", v) for k, v in config.op_name_configs.items()]
        allowed = op_configs.KINDS[self.kind]
        for where, op_config in entries:
            if op_config is None:
                continue
            if not isinstance(op_config, allowed):
                raise WeightpackError(
                    f"{where} is a {type(op_config).__name__}; {self.kind} takes {' or '.join(c.__name__ for c in allowed)}"
                )

    def run(self):
        prog = to_program(self.mlmodel, self.spec_version)
        self.target = program_target(prog)
        if self.joint and not at_least(self.target, "iOS18"):
            raise WeightpackError(f"joint_compression needs target iOS18 or later; the model's target is {self.target}")
        self.weights = read_weights(self.mlmodel) if self.joint else {}
        candidates = []
        for function in prog.functions.values():
            self._collect(function, candidates)
        for done, op in enumerate(candidates, 1):
            self._compress(op)
            if self.progress is not None:
                self.progress(done, len(candidates), op.name)
        return to_model(prog, self.mlmodel, self.spec_version)

    # --------------------------------------------------------------------------- selection

    def _collect(self, block, found: list) -> None:
        """Candidate ops in program order (coremltools' ``is_valid_op``), nested blocks first."""
        for op in list(block.operations):
            for nested in op.blocks:
                self._collect(nested, found)
            if self.kind == "prune" and self.joint:
                if op.op_type in ("constexpr_blockwise_shift_scale", "constexpr_lut_to_dense") and op.outputs[0].name in self.weights:
                    found.append(op)
            elif op.op_type == "const" and should_use_weight_file(op.outputs[0].val):
                found.append(op)

    def _op_config(self, op):
        try:
            return self.config._get_const_op_config(op)
        except (TypeError, ValueError) as err:  # coremltools' conflict and set_op_type errors
            raise WeightpackError(f"config for {op.name!r}: {err}") from None

    def _worth_compressing(self, op, op_config) -> bool:
        """coremltools' ``need_compress_const``: not a parameter of a constexpr op (except the joint
        inputs), not rank <= 1 (unless in a chain), stored in weight.bin, larger than the threshold."""
        children = op.outputs[0].child_ops
        if not children:  # read only by the block output (coremltools skips these too)
            return False
        if any(c.op_type.startswith("constexpr_") for c in children) and self._joint_child(op) is None:
            return False
        if not children[0].op_type.startswith("constexpr_") and op.outputs[0].rank <= 1:
            return False
        if not should_use_weight_file(self._value(op)):
            return False
        return int(np.prod(self._final_var(op).shape)) > op_config.weight_threshold

    def _joint_child(self, op):
        """The constexpr op whose joint input ``op`` is, for this kind of compression (else None)."""
        if not self.joint or not at_least(self.target, "iOS18") or len(op.outputs[0].child_ops) != 1:
            return None
        child = op.outputs[0].child_ops[0]
        param = _JOINT_INPUTS.get(self.kind, {}).get(child.op_type)
        return child if param is not None and getattr(child, param) is op.outputs[0] else None

    def _final_var(self, op):
        """The var a consumer reads: ``op``'s output, or the end of the constexpr chain it feeds."""
        var = op.outputs[0]
        while self.joint and var.child_ops and var.child_ops[0].op_type.startswith("constexpr_"):
            child = var.child_ops[0]
            var = child.outputs[-1] if child.op_type in ("constexpr_lut_to_sparse", "constexpr_sparse_blockwise_shift_scale") else child.outputs[0]
        return var

    def _value(self, op):
        if op.op_type == "const":
            return op.outputs[0].val
        return dense(self.weights[op.outputs[0].name].value)

    # --------------------------------------------------------------------------- compression

    def _compress(self, op) -> None:
        op_config = self._op_config(op)
        if op_config is None or not self._worth_compressing(op, op_config):
            return
        needed, why = op_configs.minimum_target(op_config)
        if not at_least(self.target, needed):
            raise WeightpackError(f"{why} needs target iOS18 or later; the model's target is {self.target} (weight {op.name!r})")
        child = self._joint_child(op)
        compress = {"prune": self._prune, "palettize": self._palettize, "quantize": self._quantize}[self.kind]
        if self.encoder is not None and child is None and op.op_type == "const":
            result = self.encoder(self.kind, op, op_config, lambda: compress(op, op_config, child))
        else:
            result = compress(op, op_config, child)
        if result is None:
            return
        var, value, name = result
        if isinstance(value, str):
            log.warning("left %s uncompressed: %s", op.name, value)
            return
        replace_weight(var, value, self.target, name)

    def _float_weights(self, op) -> np.ndarray:
        value = op.outputs[0].val
        if not op_configs.is_float(value):
            raise WeightpackError(
                f"const {op.name!r} holds {value.dtype} values; weightpack compresses fp16/fp32 weights "
                f"(exclude it with op_name_configs[{op.name!r}] = None)"
            )
        return value

    def _prune(self, op, op_config, child):
        name = f"{op.name}_sparsified"
        if op.op_type == "const":
            if op_configs.is_structured(op_config) and not op_config._check_const_op_is_valid(op):
                if op.name not in self.config.op_name_configs:  # coremltools' rule: conv/linear weights only
                    return op.outputs[0], "block and n:m pruning apply to conv and linear weights", None
            return op.outputs[0], op_configs.prune(self._float_weights(op), op_config), name
        if op_configs.is_structured(op_config):
            raise WeightpackError(f"{op.name!r}: block or n:m pruning of a compressed weight is not supported (nor by coremltools)")
        existing = self.weights[op.outputs[0].name].value  # joint: a quantized or palettized weight
        sparse = op_configs.prune(dense(existing), op_config)
        return op.outputs[0], sparse if isinstance(sparse, str) else _sparsify(existing, sparse.mask, op.name), name

    def _palettize(self, op, op_config, child):
        if child is not None:  # joint: the nonzero values of a sparse weight
            existing = self.weights[child.outputs[0].name].value
            if child.op_type == "constexpr_blockwise_shift_scale" or not isinstance(existing, SparseTensor):
                raise WeightpackError(
                    f"{op.name!r}: palettizing quantized integer data (an int8 LUT) is not supported by weightpack's encoders yet"
                )
            var, weights, name = child.outputs[0], existing, child.name
        else:
            var, weights, name = op.outputs[0], self._float_weights(op), f"{op.name}_palettized"
        block_sizes, channel_axis = ct_utils.infer_block_sizes(op, op_config, dense(weights), return_channel_axis=True)
        if block_sizes is None:
            return var, "coremltools cannot tell its channel axis", None
        if op_config.cluster_dim > 1 and not ct_utils.is_cluster_dim_valid(op, op_config.cluster_dim, channel_axis):
            return var, f"cluster_dim={op_config.cluster_dim} does not divide the channels of each conv group", None
        return var, op_configs.palettize(weights, op_config, block_sizes, channel_axis), name

    def _quantize(self, op, op_config, child):
        value = op.outputs[0].val
        if value.dtype.kind == "f" and np.isinf(value).any():
            return op.outputs[0], "it holds inf/-inf", None
        if value.dtype == bool or (value.dtype.kind in "iu" and value.dtype.itemsize <= 1 and np.ptp(value) < 2):
            return None  # coremltools leaves 0/1 masks alone, silently
        if child is not None and child.op_type.startswith("constexpr_lut_to_"):
            if op_config.granularity.name != "PER_TENSOR":
                raise WeightpackError(f"{op.name!r}: quantizing a palettization's LUT needs granularity='per_tensor' (as in coremltools)")
            return op.outputs[0], op_configs.quantize(self._float_weights(op), op_config, [0] * value.ndim), f"{op.name}_quantized"
        if child is not None:  # the nonzero values of a sparse weight
            existing = self.weights[child.outputs[0].name].value
            block_sizes = ct_utils.infer_block_sizes(op, op_config, dense(existing))
            if block_sizes is None:
                return op.outputs[0], "coremltools cannot tell its channel axis", None
            return child.outputs[0], op_configs.quantize(existing, op_config, block_sizes), child.name
        weights = self._float_weights(op)
        block_sizes = ct_utils.infer_block_sizes(op, op_config, weights)
        if block_sizes is None:
            return op.outputs[0], "coremltools cannot tell its channel axis", None
        return op.outputs[0], op_configs.quantize(weights, op_config, block_sizes), f"{op.name}_quantized"


# kind -> {constexpr op: the input of it a joint compression of this kind compresses further}
_JOINT_INPUTS = {
    "palettize": {"constexpr_sparse_to_dense": "nonzero_data", "constexpr_blockwise_shift_scale": "data"},
    "quantize": {"constexpr_lut_to_dense": "lut", "constexpr_lut_to_sparse": "lut", "constexpr_sparse_to_dense": "nonzero_data"},
}


def _sparsify(existing, mask, name: str):
    """A quantized or palettized weight restricted to ``mask``: the joint sparse form of it."""
    keep = mask.values().astype(bool)
    if isinstance(existing, QuantizedTensor):
        return SparseQuantizedTensor(mask, _subset(existing.data, keep), existing.scale, existing.offset)
    if isinstance(existing, PalettizedTensor) and existing.vector_axis is None:
        return SparsePalettizedTensor(mask, _subset(existing.indices, keep), existing.lut)
    if isinstance(existing, ScaledLUTTensor) and existing.scale is None:  # an int8 LUT with its scale
        sparse = _sparsify(existing.palettized, mask, name)
        return ScaledLUTTensor(sparse, lut_scale=existing.lut_scale, lut_offset=existing.lut_offset)
    raise WeightpackError(f"{name!r}: pruning a {type(existing).__name__} jointly is not supported")


def _subset(array, keep):
    """The elements of an NBitArray where ``keep`` is set, as an NBitArray of the same type."""
    from ..bits import NBitArray

    return NBitArray.from_values(array.values()[keep], array.nbits, signed=array.signed)
