"""An ML program's protobuf as a :class:`~.graph.Graph`: ops, typed variables, constants, weights.

Every ``const`` and ``constexpr_*`` value comes from :class:`~weightpack.coreml.mil_import.ProgramReader`,
the loader :func:`weightpack.coreml.load` uses: weights are weightpack tensors or numpy arrays that
view the memory-mapped weight.bin (zero-copy); constexpr chains are never decompressed here.
Importing this module imports coremltools (its generated protobuf classes only).
"""
from __future__ import annotations

from coremltools.proto import MIL_pb2

from ...errors import FormatError, WeightpackError
from ..mil_import import ProgramReader, _op_name
from ..package import _open
from .graph import Const, Graph, OpNode, Ref, TensorType, Var

OPSETS = {"CoreML5": 15, "CoreML6": 16, "CoreML7": 17, "CoreML8": 18}
_PROTO_DTYPES = {
    "FLOAT16": "fp16", "FLOAT32": "fp32", "FLOAT64": "fp64", "INT8": "int8", "UINT8": "uint8",
    "INT16": "int16", "UINT16": "uint16", "INT32": "int32", "UINT32": "uint32", "INT64": "int64",
    "UINT64": "uint64", "BOOL": "bool", "STRING": "string",
}  # fmt: skip


def load_graph(model, function: str = "main") -> Graph:
    """The :class:`Graph` of ``function`` of ``model`` (an .mlpackage path or a coremltools MLModel)."""
    spec, weights_dir, source = _open(model)
    reader = ProgramReader(spec, weights_dir, function, source)
    try:
        func = spec.mlProgram.functions[function]
        if func.opset not in OPSETS:
            raise WeightpackError(
                f"{source}: function {function!r} uses opset {func.opset!r}; supported: "
                + ", ".join(f"{name} (iOS{v})" for name, v in OPSETS.items())
            )
        graph = Graph(inputs=[], outputs=[], source=source, opset=OPSETS[func.opset])
        for arg in func.inputs:
            where = f"{source}: function {function!r}, input {arg.name!r}"
            if arg.type.WhichOneof("type") == "stateType":  # iOS18 state<tensor<...>>: the tensor it wraps
                graph.states.append(Var(arg.name, _tensor_type(arg.type.stateType.wrappedType, f"{where} (a state)")))
            else:
                graph.inputs.append(Var(arg.name, _tensor_type(arg.type, where)))
        block = func.block_specializations[func.opset]
        weight_names = set(reader.weights())
        used = _used_by_ops(block)
        _walk(block, graph, reader, weight_names, used, f"{function}/block")
        graph.outputs = list(block.outputs)
        graph.weights = weight_names & set(graph.constants)
        if function == "main" and not spec.description.functions:
            graph.input_shapes = _flexible_shapes(spec.description.input)
        return graph
    finally:
        reader.close()  # arrays already read keep their mapping alive


def _used_by_ops(block) -> set:
    """Names read by ops other than const/constexpr ones (nested blocks included) or by the block's outputs."""
    used = set(block.outputs)
    for op in block.operations:
        if op.type != "const" and not op.type.startswith("constexpr_"):
            used.update(b.name for arg in op.inputs.values() for b in arg.arguments if b.WhichOneof("binding") == "name")
        for nested in op.blocks:
            used |= _used_by_ops(nested)
    return used


def _walk(block, graph: Graph, reader: ProgramReader, weight_names: set, used: set, path: str) -> None:
    source = graph.source
    for op in block.operations:
        name = _op_name(op)
        where = f"{path}/op {name!r} ({op.type})"
        if op.type == "const" or op.type.startswith("constexpr_"):
            for output in op.outputs:
                if output.name in used:  # values read only by other constexpr ops stay unread
                    graph.constants[output.name] = reader.value(output.name)
                    graph.const_types[output.name] = _tensor_type(output.type, f"{source}: {where}, output {output.name!r}", allow_string=True)
            continue
        inputs = {}
        for param, argument in op.inputs.items():
            bindings = tuple(_binding(b, reader, f"{source}: {where}, parameter {param!r}") for b in argument.arguments)
            inputs[param] = bindings[0] if len(bindings) == 1 else bindings
        outputs = [Var(o.name, _tensor_type(o.type, f"{source}: {where}, output {o.name!r}")) for o in op.outputs]
        if op.blocks:
            where += " (holds nested blocks)"
        graph.ops.append(OpNode(op.type, name, inputs, outputs, where))


def _binding(binding, reader: ProgramReader, where: str):
    if binding.WhichOneof("binding") == "name":
        return Ref(binding.name)
    return Const(reader.decode(binding.value, where))


def _tensor_type(value_type, where: str, allow_string: bool = False) -> TensorType:
    kind = value_type.WhichOneof("type")
    if kind != "tensorType":
        raise WeightpackError(f"{where}: a {kind or 'typeless'} value; the executor runs tensors (and states of tensors) only, no lists or dicts")
    tensor = value_type.tensorType
    proto_name = MIL_pb2.DataType.Name(tensor.dataType)
    dtype = _PROTO_DTYPES.get(proto_name)
    if dtype is None or (dtype == "string" and not allow_string):
        raise WeightpackError(f"{where}: tensors of type {proto_name} are not supported")
    dims = []
    for dim in tensor.dimensions:
        dims.append(int(dim.constant.size) if dim.WhichOneof("dimension") == "constant" else None)
    if tensor.rank < 0 or len(dims) != tensor.rank:
        if tensor.rank < 0:
            return TensorType(None, dtype)
        raise FormatError(f"{where}: rank {tensor.rank} but {len(dims)} dimensions")
    return TensorType(tuple(dims), dtype)


def _flexible_shapes(features) -> dict:
    """{input name: ("enumerated", [shapes]) or ("range", [(low, high or None), ...])} of the
    model description's flexible multi-array inputs."""
    found = {}
    for feature in features:
        if feature.type.WhichOneof("Type") != "multiArrayType":
            continue
        array = feature.type.multiArrayType
        kind = array.WhichOneof("ShapeFlexibility")
        if kind == "enumeratedShapes":
            found[feature.name] = ("enumerated", [tuple(int(d) for d in s.shape) for s in array.enumeratedShapes.shapes])
        elif kind == "shapeRange":
            found[feature.name] = (
                "range",
                [(int(r.lowerBound), None if r.upperBound < 0 else int(r.upperBound)) for r in array.shapeRange.sizeRanges],
            )
    return found
