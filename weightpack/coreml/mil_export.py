"""weightpack tensors as Core ML MIL ops, built with coremltools' MIL builder (imported here, lazily by callers).

:func:`weight_var` adds to the current MIL block the ops that produce one weight:

================================  ==============================================================
tensor                            ops (iOS16 / iOS17 target; iOS18 target)
================================  ==============================================================
numpy array                       ``const``
SparseTensor                      ``constexpr_sparse_to_dense`` (uint8-packed mask + shape; uint1 mask)
PalettizedTensor                  ``constexpr_lut_to_dense`` (uint8-packed indices, lut[2**n], shape;
                                  uintN indices, lut[G..., 2**n, V], vector_axis)
QuantizedTensor                   ``constexpr_affine_dequantize`` (per tensor or channel: rank 0/1
                                  scale and zero point, axis); ``constexpr_blockwise_shift_scale``
SparsePalettizedTensor            iOS18: ``constexpr_lut_to_sparse`` -> ``constexpr_sparse_to_dense``
SparseQuantizedTensor             iOS18: ``constexpr_sparse_blockwise_shift_scale`` -> ``constexpr_sparse_to_dense``
ScaledLUTTensor                   iOS18: an int8/uint8 LUT through ``constexpr_blockwise_shift_scale``
                                  into the LUT op(s) above, and/or ``constexpr_blockwise_shift_scale``
                                  of their output by ``scale`` (float data, no offset)
================================  ==============================================================

The arrays handed to coremltools are the tensor's own values (sub-byte arrays unpacked into
coremltools' uint8/int8 carriers tagged with their true type; coremltools packs them again with
the same LSB-first rule), so the blobs coremltools writes are exactly weightpack's arrays. The
iOS16 packed index and mask streams *are* weightpack's packed bytes.
"""
from __future__ import annotations

import numpy as np
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from ..bits import NBitArray
from ..errors import WeightpackError
from ..formats import (
    PalettizedTensor,
    QuantizedTensor,
    SparsePalettizedTensor,
    SparseQuantizedTensor,
    SparseTensor,
)
from .targets import at_least, check_expressible, quantization_axis


def weight_var(value, target: str, name: str, before_op=None):
    """Add the op(s) producing ``value`` (a weightpack tensor or a numpy array) and return the output Var.

    Must run inside a MIL block context (an ``mb.program`` body, or ``with block:``). ``name`` names
    the op whose output is the dense weight; helper ops of a chain get ``name`` plus a suffix.
    ``before_op`` places the new ops before an existing op. Raises :class:`WeightpackError` naming
    the minimum target if ``target`` cannot express ``value``.
    """
    placement = {} if before_op is None else {"before_op": before_op}
    if isinstance(value, np.ndarray):
        return mb.const(val=value, name=name, **placement)
    check_expressible(value, target)
    if not at_least(target, "iOS18"):
        return _ios16_var(value, name, placement)
    return _ios18_var(value, name, placement)


def _ios16_var(value, name: str, placement: dict):
    if isinstance(value, SparseTensor):
        return mb.constexpr_sparse_to_dense(
            nonzero_data=mil_array(value.nonzero_data),
            mask=np.array(value.mask.packed),
            shape=np.array(value.shape, np.uint32),
            name=name,
            **placement,
        )
    if isinstance(value, PalettizedTensor):
        return mb.constexpr_lut_to_dense(
            indices=np.array(value.indices.packed),
            lut=np.array(value.lut).reshape(-1),
            shape=np.array(value.shape, np.uint32),
            name=name,
            **placement,
        )
    if isinstance(value, QuantizedTensor):
        return _affine_dequantize(value, name, placement)
    raise WeightpackError(f"cannot export a {type(value).__name__}; expected a weightpack tensor or a numpy array")


def _affine_dequantize(value: QuantizedTensor, name: str, placement: dict):
    """iOS16's ``constexpr_affine_dequantize``: scale and zero point of rank 0 (per tensor) or 1 (per channel)."""
    axis = quantization_axis(value)
    per_channel = value.scale.size > 1
    scale = value.scale.reshape(-1) if per_channel else value.scale.reshape(())
    if value.offset is None:
        zero_point = np.zeros(scale.shape, value.data.value_dtype)  # iOS16 needs one; coremltools writes zeros too
    else:
        zero_point = mil_array(value.offset).reshape(scale.shape)
    return mb.constexpr_affine_dequantize(
        quantized_data=mil_array(value.data),
        zero_point=zero_point,
        scale=np.array(scale),
        axis=np.int32(axis),
        name=name,
        **placement,
    )


def _ios18_var(value, name: str, placement: dict):
    if isinstance(value, SparseTensor):
        return mb.constexpr_sparse_to_dense(
            nonzero_data=mil_array(value.nonzero_data), mask=mil_array(value.mask), name=name, **placement
        )
    if isinstance(value, (PalettizedTensor, SparsePalettizedTensor)):
        return _palettized_var(value, np.array(value.lut), name, placement)
    if isinstance(value, QuantizedTensor):
        return mb.constexpr_blockwise_shift_scale(
            data=mil_array(value.data), scale=np.array(value.scale), offset=_optional(value.offset), name=name, **placement
        )
    if isinstance(value, SparseQuantizedTensor):
        mask, nonzero = mb.constexpr_sparse_blockwise_shift_scale(
            data_mask=mil_array(value.data_mask),
            nonzero_data=mil_array(value.nonzero_data),
            scale=np.array(value.scale),
            offset=_optional(value.offset),
            name=f"{name}_sparse_shift_scale",
            **placement,
        )
        return mb.constexpr_sparse_to_dense(nonzero_data=nonzero, mask=mask, name=name, **placement)
    if hasattr(value, "palettized"):  # a ScaledLUTTensor
        return _scaled_lut_var(value, name, placement)
    raise WeightpackError(f"cannot export a {type(value).__name__}; expected a weightpack tensor or a numpy array")


def _palettized_var(value, lut, name: str, placement: dict):
    """``constexpr_lut_to_dense``, or ``constexpr_lut_to_sparse`` + ``constexpr_sparse_to_dense``,
    looking up ``lut`` (an array, or the Var of a LUT computed by another op)."""
    if isinstance(value, PalettizedTensor):
        return mb.constexpr_lut_to_dense(
            indices=mil_array(value.indices), lut=lut, vector_axis=_vector_axis(value), name=name, **placement
        )
    mask, nonzero = mb.constexpr_lut_to_sparse(
        indices_mask=mil_array(value.indices_mask),
        indices_nonzero_data=mil_array(value.indices_nonzero_data),
        lut=lut,
        vector_axis=_vector_axis(value),
        name=f"{name}_lut_to_sparse",
        **placement,
    )
    return mb.constexpr_sparse_to_dense(nonzero_data=nonzero, mask=mask, name=name, **placement)


def _scaled_lut_var(value, name: str, placement: dict):
    """An integer LUT dequantized by a shift-scale op before the lookup, and/or a shift-scale op
    multiplying the looked-up values by ``scale``."""
    p = value.palettized
    lut = np.array(p.lut)
    if value.lut_scale is not None:
        lut = mb.constexpr_blockwise_shift_scale(
            data=lut, scale=np.array(value.lut_scale), offset=_optional(value.lut_offset), name=f"{name}_lut", **placement
        )
    if value.scale is None:
        return _palettized_var(p, lut, name, placement)
    looked_up = _palettized_var(p, lut, f"{name}_palettized", placement)
    return mb.constexpr_blockwise_shift_scale(data=looked_up, scale=np.array(value.scale), name=name, **placement)


def mil_array(array) -> np.ndarray:
    """A new numpy array as coremltools' builder takes it: sub-byte NBitArrays unpacked into
    uint8/int8 carriers tagged with their Core ML type (``uint4``, ``int4``, ...)."""
    if not isinstance(array, NBitArray):
        return np.array(array)
    values = array.values()
    if array.nbits == 8:
        return values
    return values.astype(types.nptype_from_builtin(types.string_to_builtin(array.dtype_name)))


def _optional(array):
    return None if array is None else mil_array(array)


def _vector_axis(value):
    return None if value.vector_axis is None else np.int32(value.vector_axis)
