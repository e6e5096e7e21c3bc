"""Editing the MIL program of a Core ML model with coremltools: MLModel -> pymil Program -> MLModel.

:func:`to_program` and :func:`to_model` are the round trip coremltools' own compressors make
(``coremltools.models.utils._apply_graph_pass``); :func:`replace_weight` swaps the ops producing
one weight for the ops of a weightpack tensor (:mod:`.mil_export`). coremltools is imported here.
"""
from __future__ import annotations

import coremltools as ct
from coremltools.converters.mil.converter import mil_convert
from coremltools.converters.mil.frontend.milproto import load as milproto_load
from coremltools.models.utils import _convert_model_spec_to_pymil_prog

from ..errors import WeightpackError
from .mil_export import weight_var
from .targets import target_for_spec

PIPELINES = ("default", "minimal")


def to_program(mlmodel, spec_version: int):
    """The model's pymil Program, opened at ``spec_version`` (at least the model's own)."""
    if mlmodel._is_multifunction():
        raise WeightpackError("multifunction models are not supported (nor are they by coremltools' compressors)")
    try:
        return _convert_model_spec_to_pymil_prog(mlmodel, spec_version, milproto_load.load)
    except (TypeError, ValueError, NotImplementedError) as err:  # coremltools' own rejections
        raise WeightpackError(f"coremltools cannot open the model's program: {err}") from None


def to_model(prog, like, spec_version: int, pipeline: str = "default"):
    """A new MLModel of ``prog`` with ``like``'s description and compute units.

    ``pipeline="default"`` runs coremltools' default MIL passes, as its compressors do (constant
    deduplication, canonical joint-compression patterns, ...); ``"minimal"`` runs only the backend
    passes, which never change a constexpr op's arrays.
    """
    passes = ct.PassPipeline.DEFAULT if pipeline == "default" else ct.PassPipeline.EMPTY
    return mil_convert(
        prog,
        convert_to="mlprogram",
        convert_from="milinternal",
        specification_version=spec_version,
        compute_units=like.compute_unit,
        model_description=like.get_spec().description,
        skip_model_load=like.__proxy__ is None,
        pass_pipeline=passes,
    )


def program_target(prog) -> str:
    """The deployment target the program's main function is built for."""
    opset = next(iter(prog.functions.values())).opset_version
    return target_for_spec(opset.value)


def named_vars(prog) -> dict:
    """{var name: Var} for the outputs of every op of every function (nested blocks included)."""
    found = {}

    def walk(block):
        for op in block.operations:
            for var in op.outputs:
                found[var.name] = var
            for nested in op.blocks:
                walk(nested)

    for function in prog.functions.values():
        walk(function)
    return found


def replace_weight(var, value, target: str, name: str | None = None):
    """Make every consumer of ``var`` read ``value`` (a weightpack tensor or numpy array) instead;
    delete the ops that produced ``var`` once nothing else reads them. Returns the new Var, named
    ``name`` (default: ``var``'s name)."""
    producer = var.op
    block = producer.enclosing_block
    name = var.name if name is None else name
    if name == var.name:
        var.name = producer.name = f"{name}__replaced"  # free the name for the new op
    with block:
        new_var = weight_var(value, target, name, before_op=producer)
    block.replace_uses_of_var_after_op(
        anchor_op=producer, old_var=var, new_var=new_var, no_check_var_types=True, force_replace=True
    )
    remove_unused(producer)
    return new_var


def remove_unused(op) -> None:
    """Delete ``op`` if no op and no block output reads it, then its const/constexpr inputs likewise."""
    block = op.enclosing_block
    if any(var.child_ops or var in block.outputs for var in op.outputs):
        return
    inputs = [var.op for var in op.get_flattened_inputs() if var.op is not None]
    block.remove_ops([op])
    for producer in dict.fromkeys(inputs):
        if producer.op_type == "const" or producer.op_type.startswith("constexpr_"):
            remove_unused(producer)
