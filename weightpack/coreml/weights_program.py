"""A MIL program whose ops consume a set of named weights: what :func:`~weightpack.coreml.save_weights` writes.

Per weight ``w`` of shape S (names made valid as coremltools does, 'fc.weight' -> 'fc_weight'):
one input ``<name>_x`` and one output ``<name>_y`` of w's dtype, computed by

- ``matmul(x[1, S1], w, transpose_y=True)`` for a 2-D weight (a linear layer without bias),
- ``conv(x[1, S1, S2, S3], w)`` for a 4-D weight (one output pixel),
- ``mul(x[S], w)`` otherwise.
"""
from __future__ import annotations

from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import Function, Program, types
from coremltools.converters.mil.mil.passes.defs.preprocess import NameSanitizer

from ..errors import WeightpackError
from .mil_export import weight_var
from .package import float_dtype


def weights_program(weights: dict, target: str):
    """(pymil Program, {given name: name in the program})."""
    import coremltools as ct

    sanitizer = NameSanitizer()
    names, specs, inputs, used = {}, {}, {}, set()
    for name, value in weights.items():
        if not isinstance(name, str) or not name:
            raise WeightpackError(f"weight names must be non-empty strings, got {name!r}")
        dtype = float_dtype(name, value)
        clean = sanitizer.sanitize_name(name)
        for taken in (clean, f"{clean}_x", f"{clean}_y"):
            if taken in used:
                raise WeightpackError(f"weight {name!r} would be named {clean!r}, which clashes with another weight's {taken!r}")
            used.add(taken)
        names[name] = clean
        specs[name] = (clean, dtype, tuple(value.shape))
        inputs[f"{clean}_x"] = mb.placeholder(shape=_input_shape(value.shape), dtype=_builtin(dtype))
    with Function(inputs, opset_version=getattr(ct.target, target)) as function:
        outputs = []
        for name, value in weights.items():
            clean, dtype, shape = specs[name]
            weight = weight_var(value, target, clean)
            outputs.append(_consumer(function.inputs[f"{clean}_x"], weight, len(shape), f"{clean}_y"))
        function.set_outputs(outputs)
    prog = Program()
    prog.add_function("main", function)
    return prog, names


def _input_shape(shape) -> tuple:
    if len(shape) == 2:
        return (1, shape[1])
    if len(shape) == 4:
        return (1,) + tuple(shape[1:])
    return tuple(shape)


def _consumer(x, weight, rank: int, name: str):
    if rank == 2:
        return mb.matmul(x=x, y=weight, transpose_y=True, name=name)
    if rank == 4:
        return mb.conv(x=x, weight=weight, name=name)
    return mb.mul(x=x, y=weight, name=name)


def _builtin(dtype):
    return types.fp16 if dtype.itemsize == 2 else types.fp32
