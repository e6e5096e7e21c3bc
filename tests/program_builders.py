"""Small programs for the executor's tests: one op built directly as a graph (fast, no
coremltools), coremltools' own value inference of an op (its MIL definitions are the
specification), and MIL programs converted by coremltools.
"""
from __future__ import annotations

import numpy as np

from weightpack.coreml.runtime import Program
from weightpack.coreml.runtime.graph import Const, Graph, OpNode, Ref, TensorType, Var, name_of


def tensor_type(value) -> TensorType:
    array = np.asarray(value)
    return TensorType(tuple(array.shape), name_of(array.dtype))


def op_graph(op_type, arrays=None, consts=None, outputs=(), opset=18, weights=None) -> Graph:
    """A program of one op: ``arrays`` {param: array} are its inputs (a list for a variadic
    parameter), ``consts`` {param: value} immediate constants, ``weights`` {param: tensor} weight
    constants; ``outputs``: arrays (or TensorTypes) that declare the output types."""
    graph = Graph(inputs=[], outputs=[], source="test program", opset=opset)
    inputs = {}
    for param, value in (arrays or {}).items():
        if isinstance(value, (list, tuple)):
            refs = []
            for k, item in enumerate(value):
                graph.inputs.append(Var(f"{param}_{k}", tensor_type(item)))
                refs.append(Ref(f"{param}_{k}"))
            inputs[param] = tuple(refs)
        else:
            graph.inputs.append(Var(param, tensor_type(value)))
            inputs[param] = Ref(param)
    for param, value in (consts or {}).items():
        inputs[param] = tuple(Const(v) for v in value) if isinstance(value, tuple) else Const(value)
    for param, value in (weights or {}).items():
        name = f"{param}_weight"
        graph.constants[name] = value
        graph.weights.add(name)
        graph.const_types[name] = TensorType(tuple(value.shape), name_of(value.dtype))
        inputs[param] = Ref(name)
    out_vars = [Var(f"out{k}", o if isinstance(o, TensorType) else tensor_type(o)) for k, o in enumerate(outputs)]
    graph.ops.append(OpNode(op_type, "the_op", inputs, out_vars))
    graph.outputs = [v.name for v in out_vars]
    return graph


def run_op(op_type, arrays=None, consts=None, outputs=(), opset=18, weights=None, **program):
    """Run one op; returns its outputs (a list, in order)."""
    prog = Program(op_graph(op_type, arrays, consts, outputs, opset, weights), **program)
    feeds = {}
    for param, value in (arrays or {}).items():
        if isinstance(value, (list, tuple)):
            feeds.update({f"{param}_{k}": v for k, v in enumerate(value)})
        else:
            feeds[param] = value
    result = prog.predict(feeds)
    return [result[name] for name in prog.outputs]


def mil_value(op_type, opset="iOS18", **kwargs):
    """coremltools' value inference of ``op_type`` on constant inputs (None where it has none)."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function

    with Function({}, opset_version=getattr(ct.target, opset)):
        out = getattr(mb, op_type)(**kwargs)
        if isinstance(out, (list, tuple)):
            return [o.val for o in out]
        return out.val


def mil_model(build, specs, opset="iOS18", precision="fp32", passes="empty"):
    """An MLModel of ``build(*placeholders)`` (a MIL builder function) converted by coremltools.

    ``specs``: [(shape, numpy dtype)] of the inputs; ``passes``: "empty" (only coremltools'
    backend passes: ops stay as built) or "default"."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    builtin = {np.float32: types.fp32, np.float16: types.fp16, np.int32: types.int32, np.bool_: types.bool}
    target = getattr(ct.target, opset)
    prog = mb.program(
        input_specs=[mb.TensorSpec(shape=shape, dtype=builtin[np.dtype(dtype).type]) for shape, dtype in specs],
        opset_version=target,
    )(build)
    return ct.convert(
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=target,
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        pass_pipeline=ct.PassPipeline.EMPTY if passes == "empty" else ct.PassPipeline.DEFAULT,
        skip_model_load=True,
    )
