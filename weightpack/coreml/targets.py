"""Core ML deployment targets, and the oldest one that can express each compressed tensor.

A target fixes the model's ``specificationVersion`` and so which constexpr ops exist:

=======  =====  =========================================================================
target   spec   constexpr ops
=======  =====  =========================================================================
iOS16    7      lut_to_dense (one LUT of scalars, uint8-packed indices, no 3-bit),
                sparse_to_dense (uint8-packed mask), affine_dequantize (8-bit, per tensor
                or per channel)
iOS17    8      the same as iOS16
iOS18    9      every weightpack tensor: uintN indices, grouped and vector LUTs, uint1
                masks, blockwise_shift_scale (4-bit, per block), lut_to_sparse,
                sparse_blockwise_shift_scale
=======  =====  =========================================================================

No coremltools import here.

>>> import numpy as np
>>> from weightpack import PalettizedTensor
>>> t = PalettizedTensor(np.zeros((4, 4), np.uint8), np.zeros((2, 1, 8, 1), np.float16))
>>> minimum_target(t)
('iOS18', '3-bit indices, 2 LUTs')
>>> check_expressible(t, "iOS16")
Traceback (most recent call last):
...
weightpack.errors.WeightpackError: a PalettizedTensor with 3-bit indices, 2 LUTs needs target iOS18 or later; the target is iOS16
"""
from __future__ import annotations

import numpy as np

from ..bits import NBitArray
from ..errors import WeightpackError, describe
from ..formats import PalettizedTensor, QuantizedTensor, SparseTensor

SPEC_VERSIONS = {"iOS16": 7, "iOS17": 8, "iOS18": 9}
"""Target name -> the Core ML ``specificationVersion`` it writes."""

_BY_LOWER = {name.lower(): name for name in SPEC_VERSIONS}


def parse_target(target) -> str:
    """A target name ('iOS16', 'ios18', ...) or coremltools' ``ct.target.iOS18``, as its canonical name.

    >>> parse_target("ios17"), parse_target("iOS18")
    ('iOS17', 'iOS18')
    """
    name = getattr(target, "name", target)  # coremltools' AvailableTarget enum has .name
    if isinstance(name, str) and name.lower() in _BY_LOWER:
        return _BY_LOWER[name.lower()]
    raise WeightpackError(f"target={describe(target)} is unknown; allowed: {', '.join(SPEC_VERSIONS)}")


def target_for_spec(spec_version: int) -> str:
    """The newest target whose specification version is at most ``spec_version`` (iOS26 models read as iOS18).

    >>> target_for_spec(7), target_for_spec(10)
    ('iOS16', 'iOS18')
    """
    if spec_version < SPEC_VERSIONS["iOS16"]:
        raise WeightpackError(
            f"specificationVersion {spec_version} predates iOS16 (7), the first with compressed weights"
        )
    return max((v, name) for name, v in SPEC_VERSIONS.items() if v <= spec_version)[1]


def at_least(target: str, minimum: str) -> bool:
    """Whether ``target`` can use what ``minimum`` introduced."""
    return SPEC_VERSIONS[target] >= SPEC_VERSIONS[minimum]


def minimum_target(tensor) -> tuple[str, str]:
    """(oldest target that expresses ``tensor``, what needs it); dense arrays and iOS16 forms give 'iOS16'."""
    if isinstance(tensor, np.ndarray):
        return "iOS16", "dense"
    if isinstance(tensor, SparseTensor):
        if isinstance(tensor.nonzero_data, NBitArray) and tensor.nonzero_data.nbits < 8:
            return "iOS18", f"{tensor.nonzero_data.dtype_name} nonzero values"
        return "iOS16", "sparse"
    if isinstance(tensor, PalettizedTensor):
        needs = []
        if tensor.nbits == 3:
            needs.append("3-bit indices")
        groups = int(np.prod(tensor.group_shape))
        if groups > 1:
            needs.append(f"{groups} LUTs")
        if tensor.vector_size > 1:
            needs.append(f"vector LUT entries of {tensor.vector_size}")
        return ("iOS18", ", ".join(needs)) if needs else ("iOS16", "palettized")
    if isinstance(tensor, QuantizedTensor):
        return _quantized_minimum(tensor)
    if hasattr(tensor, "palettized"):  # ScaledLUTTensor
        if getattr(tensor, "lut_scale", None) is not None:
            return "iOS18", "an integer LUT with a scale"
        return "iOS18", "a per-channel scale after its LUT"
    return "iOS18", f"its op {tensor.op}"


def _quantized_minimum(tensor: QuantizedTensor) -> tuple[str, str]:
    needs = []
    if tensor.data.nbits != 8:
        needs.append(f"{tensor.data.dtype_name} data")
    if quantization_axis(tensor) is None:
        needs.append(f"block shape {tensor.block_shape}")
    offset = tensor.offset
    if isinstance(offset, np.ndarray) and offset.dtype.kind == "f" and tensor.scale.dtype != np.float32:
        needs.append("a float offset with a fp16 scale")  # iOS16 zero points are fp32 and round differently
    return ("iOS18", ", ".join(needs)) if needs else ("iOS16", "quantized")


def quantization_axis(tensor: QuantizedTensor) -> int | None:
    """The axis of a per-channel scale (0 per tensor); None when blocks span several axes (not iOS16)."""
    varying = [axis for axis, n in enumerate(tensor.scale.shape) if n > 1]
    if not varying:
        return 0
    if len(varying) == 1 and tensor.block_shape[varying[0]] == 1:
        return varying[0]
    return None


def check_expressible(tensor, target: str) -> None:
    """Raise naming the minimum target if ``target`` cannot express ``tensor``."""
    needed, why = minimum_target(tensor)
    if not at_least(target, needed):
        raise WeightpackError(
            f"a {type(tensor).__name__} with {why} needs target {needed} or later; the target is {target}"
        )
