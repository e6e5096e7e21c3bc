"""The weights of a Core ML ML program as weightpack tensors, read from the protobuf and weight.bin without decompressing.

Every weight is the output of a ``const`` op with a weight.bin value, or the end of a chain of
``constexpr_*`` ops, that a non-constexpr op (or the block's output) consumes. Its arrays are
zero-copy views of the memory-mapped weight.bin (:class:`~weightpack.coreml.blob.BlobReader`);
nothing is decompressed:

==========================================================  ======================================
ops (parameters: iOS16/17 attributes, iOS18 inputs)         weightpack value
==========================================================  ======================================
``const``                                                   numpy array
``constexpr_sparse_to_dense``                               SparseTensor (iOS16 packed mask: same bytes)
``constexpr_lut_to_dense``                                  PalettizedTensor (iOS16 packed indices:
                                                            same bytes; lut[2**n] -> [1.., 2**n, 1])
``constexpr_blockwise_shift_scale``                         QuantizedTensor
``constexpr_affine_dequantize``                             QuantizedTensor (scale/zero point of
                                                            rank 0/1 along ``axis`` -> full rank)
``constexpr_lut_to_sparse`` -> ``constexpr_sparse_to_dense``  SparsePalettizedTensor
``constexpr_sparse_blockwise_shift_scale`` -> ``..._to_dense``  SparseQuantizedTensor
``constexpr_cast``                                          numpy array (fp16 -> fp32, a copy)
shift-scale -> LUT op(s) -> shift-scale (either optional)      ScaledLUTTensor (see below)
==========================================================  ======================================

Coremltools' chains around a LUT become a :class:`~weightpack.ScaledLUTTensor` holding the arrays as
stored:

- an int8/uint8 LUT dequantized by ``constexpr_blockwise_shift_scale`` (one scale per LUT) before
  ``lut_to_dense`` / ``lut_to_sparse`` (joint palettize + quantize, and quantize + palettize);
- ``constexpr_blockwise_shift_scale`` of a LUT op's output (no offset, any block layout): the
  output ``scale`` (weightpack's own per-channel-scale export, iOS26-style chains).

Chains no single weightpack type holds come back in the closest form that decodes to the same
bits, the derived part computed (small, not zero-copy):

- a LUT computed otherwise (coremltools' canonical per-channel-scale pattern: a shift-scale of a
  float LUT repeated per input channel) becomes the computed LUT of a PalettizedTensor;
- quantized data that is the output of a constexpr op becomes a QuantizedTensor over the decoded
  integers (as large as the int8 tensor);
- a shift-scale of other float data is evaluated as Core ML's reference does
  (:func:`float_shift_scale`) and returned dense.

Anything else (a sparse half-chain consumed directly, an unknown op, a mask read as a weight) and
every malformed value (an unknown data type, a missing parameter, shapes that do not fit, an
element count beyond 2**63 - 1) raises :class:`FormatError` naming the op.

Only coremltools' generated protobuf classes are used (importing them imports coremltools).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from coremltools.proto import MIL_pb2

from ..bits import NBitArray, element_count
from ..compress.scaled import ScaledLUTTensor
from ..errors import FormatError, WeightpackError
from ..formats import (
    CompressedTensor,
    PalettizedTensor,
    QuantizedTensor,
    SparsePalettizedTensor,
    SparseQuantizedTensor,
    SparseTensor,
)
from .blob import BlobReader

# MIL proto DataType name -> weight.bin dtype name
_BLOB_DTYPES = {
    "FLOAT16": "fp16", "FLOAT32": "fp32", "UINT8": "uint8", "INT8": "int8", "BFLOAT16": "bf16",
    "INT16": "int16", "UINT16": "uint16", "INT4": "int4", "UINT1": "uint1", "UINT2": "uint2",
    "UINT4": "uint4", "UINT3": "uint3", "UINT6": "uint6", "INT32": "int32", "UINT32": "uint32",
    "FLOAT8E4M3FN": "fp8e4m3fn", "FLOAT8E5M2": "fp8e5m2",
}  # fmt: skip
# MIL proto DataType name -> numpy dtype of immediate values
_NUMPY = {
    "FLOAT16": np.float16, "FLOAT32": np.float32, "FLOAT64": np.float64, "INT8": np.int8,
    "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16,
    "UINT32": np.uint32, "UINT64": np.uint64, "BOOL": np.bool_,
}  # fmt: skip
_SUBBYTE = {"INT4": (4, True), "UINT1": (1, False), "UINT2": (2, False), "UINT3": (3, False),
            "UINT4": (4, False), "UINT6": (6, False)}  # fmt: skip
BLOCK_OUTPUT = "(block output)"
_NOT_STORED = ("shape", "axis", "vector_axis", "output_dtype")  # scalars and shapes: not payload


@dataclass(frozen=True)
class Consumer:
    """An op that reads a weight: its type, its name, and the parameter the weight feeds."""

    op_type: str
    name: str
    param: str


@dataclass(frozen=True)
class Weight:
    """One weight of a program: ``value`` (a weightpack tensor or a numpy array), the ops that
    consume it, the op types of the chain that produces it (e.g. ``('constexpr_lut_to_dense',)``),
    and the arrays that chain stores: ``stored`` is ``((op name, op type, parameter, Core ML
    dtype, nbytes), ...)`` (shapes, axes and names left out), which differs from ``value``'s arrays where
    the value is derived (a quantized LUT is stored as int8 + scale, ``value`` holds it decoded)."""

    name: str
    value: object
    consumers: tuple
    chain: tuple
    stored: tuple = ()

    @property
    def nbytes(self) -> int:
        """Bytes the model stores for this weight (the sum of ``stored``)."""
        return sum(entry[-1] for entry in self.stored)


@dataclass(frozen=True)
class _Ref:
    """A parameter bound to another op's output."""

    name: str


class ProgramReader:
    """Reads the weights of one function of an ML program (``spec``: a ``CoreML.Specification.Model``).

    ``weights_dir`` is the package's weights folder: blob file names are looked up there by their
    base name, as coremltools does. ``mmap=False`` reads each weight file into memory instead of
    mapping it (:class:`~weightpack.coreml.blob.BlobReader`).
    """

    def __init__(self, spec, weights_dir, function: str = "main", source: str = "model", *, mmap: bool = True):
        self.source = source
        self.mmap = mmap
        self.weights_dir = os.fspath(weights_dir) if weights_dir is not None else None
        kind = spec.WhichOneof("Type")
        if kind != "mlProgram":
            raise FormatError(f"{source} is not an ML program (it is a {kind or 'model with no type'}); only ML programs hold compressed weights")
        functions = spec.mlProgram.functions
        if function not in functions:
            raise FormatError(f"{source} has no function {function!r}; it has: {', '.join(functions) or 'none'}")
        func = functions[function]
        if func.opset not in func.block_specializations:
            raise FormatError(f"{source}: function {function!r} has no block for its opset {func.opset!r}")
        self._readers = {}
        self._producers = {}  # var name -> (op, output index)
        self._consumers = {}  # var name -> [Consumer]
        self._order = []  # const / constexpr ops, in program order
        self._walk(func.block_specializations[func.opset])
        self._values = {}
        self._active = set()

    def weights(self) -> dict:
        """{var name: Weight} for every weight, in program order."""
        found = {}
        for op in self._order:
            for output in op.outputs:
                users = self._consumers.get(output.name, [])
                if not any(not u.op_type.startswith("constexpr_") for u in users):
                    continue  # a parameter of another constexpr op, or unused
                stored_value = op.attributes.get("val")
                if op.type == "const" and (stored_value is None or not stored_value.HasField("blobFileValue")):
                    continue  # small immediate constants (axes, shapes, ...) are not weights
                value = self.value(output.name)  # first: it refuses cycles, which _chain would follow forever
                if not isinstance(value, (CompressedTensor, np.ndarray)):
                    consumer = next(u for u in users if not u.op_type.startswith("constexpr_"))
                    raise FormatError(
                        f"{self.source}: op {_op_name(op)!r} ({op.type}): its output {output.name!r} is a "
                        f"{type(value).__name__}, not a weight, yet {consumer.op_type} op {consumer.name!r} reads it as one"
                    )
                chain, stored = self._guarded(op, lambda where: self._chain(output.name))
                found[output.name] = Weight(output.name, value, tuple(users), chain, stored)
        return found

    def close(self) -> None:
        """Release the weight files (arrays already returned keep their mapping alive)."""
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    # ------------------------------------------------------------------------------ graph walk

    def _walk(self, block) -> None:
        for op in block.operations:
            name = _op_name(op)
            for index, output in enumerate(op.outputs):
                self._producers[output.name] = (op, index)
            for param, argument in op.inputs.items():
                for binding in argument.arguments:
                    if binding.WhichOneof("binding") == "name":
                        self._consumers.setdefault(binding.name, []).append(Consumer(op.type, name, param))
            if op.type == "const" or op.type.startswith("constexpr_"):
                self._order.append(op)
            for nested in op.blocks:
                self._walk(nested)
        for output in block.outputs:
            self._consumers.setdefault(output, []).append(Consumer(BLOCK_OUTPUT, BLOCK_OUTPUT, ""))

    def _chain(self, name: str) -> tuple[tuple, tuple]:
        """(op types producing ``name``, upstream first; the arrays they store, each once: a blob
        two ops share, e.g. the mask of a joint op and of the sparse_to_dense after it, counts once)."""
        types, entries = self._chain_entries(name)
        stored = {}
        for key, entry in entries:
            stored.setdefault(key, entry)
        return tuple(dict.fromkeys(types)), tuple(stored.values())

    def _chain_entries(self, name: str) -> tuple[list, list]:
        op, _ = self._producers[name]
        types, entries = [], []
        for param, value in _params(op).items():
            if isinstance(value, _Ref):
                if value.name in self._producers:
                    more_types, more_entries = self._chain_entries(value.name)
                    types.extend(more_types)
                    entries.extend(more_entries)
            elif param not in _NOT_STORED:
                array = self.decode(value, f"{self.source}: op {_op_name(op)!r}, parameter {param!r}")
                if isinstance(array, (np.ndarray, NBitArray)):
                    proto_type = _type_name(value.type.tensorType.dataType, _op_name(op))
                    dtype = _BLOB_DTYPES.get(proto_type, proto_type.lower())
                    entry = (_op_name(op), op.type, param, dtype, int(array.nbytes))
                    blob = value.blobFileValue if value.WhichOneof("value") == "blobFileValue" else None
                    key = ("blob", os.path.basename(blob.fileName), blob.offset) if blob is not None else entry
                    entries.append((key, entry))
        return types + [op.type], entries

    # ----------------------------------------------------------------------------- values

    def value(self, name: str):
        """The weight (or intermediate value) named ``name``, as a weightpack tensor or numpy array."""
        if name not in self._values:
            if name in self._active:
                raise FormatError(f"{self.source}: the ops producing {name!r} form a cycle")
            if name not in self._producers:
                raise FormatError(f"{self.source}: {name!r} is used but no op produces it")
            self._active.add(name)
            try:
                op, index = self._producers[name]
                self._values[name] = self._build(op, index)
            finally:
                self._active.discard(name)
        return self._values[name]

    def joint(self, op):
        """The SparsePalettizedTensor / SparseQuantizedTensor of a two-output joint op (built once)."""
        key = ("joint", op.outputs[0].name)
        if key not in self._values:
            self._values[key] = self._guarded(op, lambda where: _joint(_Params(self, op, where)))
        return self._values[key]

    def _build(self, op, index: int):
        builder = _BUILDERS.get(op.type)
        if builder is None:
            raise FormatError(f"{self.source}: op {_op_name(op)!r} ({op.type}): weightpack does not know this op")
        return self._guarded(op, lambda where: builder(self, _Params(self, op, where), index))

    def _guarded(self, op, build):
        """``build(where)``; any error becomes a FormatError naming the (innermost) op it concerns:
        whatever a model's ops hold that weightpack cannot read is a problem of the file."""
        where = f"{self.source}: op {_op_name(op)!r} ({op.type})"
        try:
            return build(where)
        except WeightpackError as err:
            if str(err).startswith(f"{self.source}: op "):
                raise err if isinstance(err, FormatError) else FormatError(str(err)) from None
            raise FormatError(f"{where}: {err}") from None
        except (ValueError, TypeError, IndexError, KeyError, OverflowError, ZeroDivisionError, AttributeError) as err:
            raise FormatError(f"{where}: {type(err).__name__}: {err}") from None

    def decode(self, value, where: str):
        """A proto ``Value`` as a numpy array, an NBitArray (sub-byte types) or a str."""
        tensor_type = value.type.tensorType
        dtype_name = _type_name(tensor_type.dataType, where)
        shape = []
        for dim in tensor_type.dimensions:
            if dim.WhichOneof("dimension") != "constant":
                raise FormatError(f"{where}: a constant with a symbolic dimension")
            shape.append(int(dim.constant.size))
        if len(shape) != tensor_type.rank:
            raise FormatError(f"{where}: rank {tensor_type.rank} but {len(shape)} dimensions")
        kind = value.WhichOneof("value")
        if kind == "blobFileValue":
            return self._blob(value.blobFileValue, dtype_name, tuple(shape), where)
        if kind != "immediateValue" or value.immediateValue.WhichOneof("value") != "tensor":
            raise FormatError(f"{where}: not a tensor constant")
        return _immediate(value.immediateValue.tensor, dtype_name, tuple(shape), where)

    def _blob(self, blob_value, dtype_name: str, shape: tuple, where: str):
        blob_dtype = _BLOB_DTYPES.get(dtype_name)
        if blob_dtype is None:
            raise FormatError(f"{where}: type {dtype_name} cannot be stored in weight.bin")
        if self.weights_dir is None:
            raise WeightpackError(f"{where}: the model refers to weight.bin but has no weights folder")
        path = os.path.join(self.weights_dir, os.path.basename(blob_value.fileName))
        if path not in self._readers:
            if not os.path.isfile(path):
                raise FormatError(f"{where}: weight file {path} is missing")
            self._readers[path] = BlobReader(path, mmap=self.mmap)
        count = element_count(shape, "the declared shape")  # before reading: a wrapped count would match a small blob
        data = self._readers[path].read(blob_value.offset, blob_dtype)
        if data.size != count:
            raise FormatError(
                f"{where}: the blob at offset {blob_value.offset} of {path} holds {data.size} elements, "
                f"the model's shape {list(shape)} needs {count}"
            )
        if isinstance(data, NBitArray):
            return NBitArray(data.packed, data.nbits, shape, signed=data.signed)
        return data.reshape(shape)


class _Params:
    """An op's parameters by name: iOS16/17 attributes or iOS18 inputs, decoded on access."""

    def __init__(self, reader: ProgramReader, op, where: str):
        self.reader, self.op, self.where = reader, op, where
        self.raw = _params(op)

    def has(self, key: str) -> bool:
        return key in self.raw

    def get(self, key: str, required: bool = True):
        """The decoded value, or a :class:`_Ref` to another op's output."""
        if key not in self.raw:
            if required:
                raise FormatError(f"{self.where}: parameter {key!r} is missing")
            return None
        raw = self.raw[key]
        return raw if isinstance(raw, _Ref) else self.reader.decode(raw, f"{self.where}, parameter {key!r}")

    def array(self, key: str, required: bool = True):
        """The value, with a reference replaced by the referenced value decompressed (a numpy array)."""
        value = self.get(key, required)
        if isinstance(value, _Ref):
            value = self.reader.value(value.name)
            if isinstance(value, CompressedTensor):
                value = value.decompress()
        return value

    def integer(self, key: str, required: bool = False):
        """A scalar integer parameter (None when optional and absent)."""
        value = self.array(key, required=required)
        if value is None:
            return None
        value = np.asarray(_plain(value))
        if value.size != 1 or value.dtype.kind not in "iu":
            raise FormatError(f"{self.where}: parameter {key!r} must be one integer, got {value.dtype} of shape {value.shape}")
        return int(value.reshape(()))


def _params(op) -> dict:
    """{name: proto Value or _Ref}: attributes (iOS16/17 constexpr parameters) and inputs (iOS18)."""
    params = {key: value for key, value in op.attributes.items() if key != "name"}
    for key, argument in op.inputs.items():
        if len(argument.arguments) != 1:
            continue  # variadic inputs never hold constexpr parameters
        binding = argument.arguments[0]
        params[key] = _Ref(binding.name) if binding.WhichOneof("binding") == "name" else binding.value
    return params


def _type_name(code: int, where: str) -> str:
    """MIL's name of a tensor DataType code; a code outside its enum is a FormatError."""
    try:
        return MIL_pb2.DataType.Name(code)
    except ValueError:
        raise FormatError(f"{where}: tensor data type {code} is not one of MIL's types") from None


def _op_name(op) -> str:
    name = op.attributes.get("name")
    if name is not None and name.immediateValue.tensor.strings.values:
        return name.immediateValue.tensor.strings.values[0]
    return op.outputs[0].name if op.outputs else "?"


def _immediate(tensor, dtype_name: str, shape: tuple, where: str):
    kind = tensor.WhichOneof("value")
    count = element_count(shape, "the declared shape")
    if kind == "strings":
        values = list(tensor.strings.values)
        return values[0] if not shape and values else values
    if kind == "bytes":
        raw = np.frombuffer(tensor.bytes.values, np.uint8)
        if dtype_name in _SUBBYTE:
            nbits, signed = _SUBBYTE[dtype_name]
            return NBitArray(raw, nbits, shape, signed=signed)
        if dtype_name not in _NUMPY:
            raise FormatError(f"{where}: immediate bytes of type {dtype_name} are not supported")
        dtype = np.dtype(_NUMPY[dtype_name]).newbyteorder("<")
        if raw.size != count * dtype.itemsize:
            raise FormatError(f"{where}: {raw.size} bytes for {count} {dtype_name} elements")
        return raw.view(dtype).reshape(shape)
    if kind is None or dtype_name not in _NUMPY:
        raise FormatError(f"{where}: immediate value of type {dtype_name} is not supported")
    values = getattr(tensor, kind).values
    if len(values) != count:
        raise FormatError(f"{where}: {len(values)} immediate values for shape {list(shape)}")
    return np.array(values).astype(_NUMPY[dtype_name]).reshape(shape)


def _plain(value):
    return value.values() if isinstance(value, NBitArray) else value


def _as_nbit(value, where: str) -> NBitArray:
    """An 8-bit numpy integer array as an NBitArray over the same bytes (sub-byte ones already are)."""
    if isinstance(value, NBitArray):
        return value
    array = np.asarray(value)
    if array.dtype not in (np.int8, np.uint8):
        raise WeightpackError(f"{where}: integer data of dtype {array.dtype}; expected int4/uint4/int8/uint8")
    return NBitArray(array.reshape(-1).view(np.uint8), 8, array.shape, signed=array.dtype == np.int8)


def float_shift_scale(data: np.ndarray, scale: np.ndarray, offset) -> np.ndarray:
    """``scale * (data - offset)`` for float ``data``, blockwise, each step rounded to the scale's dtype
    (Core ML's reference arithmetic; weightpack's QuantizedTensor holds only integer data).

    >>> float_shift_scale(np.array([[1.0, 3.0]], np.float16), np.array([[0.5]], np.float16), None).tolist()
    [[0.5, 1.5]]
    """
    dtype = scale.dtype
    if scale.ndim != data.ndim or (offset is not None and np.ndim(offset) != data.ndim):
        raise FormatError(f"scale of shape {scale.shape} must have the rank of the data's shape {data.shape}")
    for axis, (n, m) in enumerate(zip(data.shape, scale.shape)):
        if m == 0 or n % m:
            raise FormatError(f"scale shape {scale.shape} does not divide the data shape {data.shape}")
        scale = np.repeat(scale, n // m, axis=axis)
        if offset is not None:
            offset = np.repeat(np.asarray(offset), n // m, axis=axis)
    values = data.astype(dtype)
    if offset is not None:
        values = values - offset.astype(dtype)
    return (values * scale).astype(dtype)


# ----------------------------------------------------------------------------- op builders


def _const(reader, params, index):
    return _plain(params.get("val"))


def _cast(reader, params, index):
    source = np.asarray(_plain(params.array("source_val")))
    dtype = params.array("output_dtype")
    if dtype != "fp32":
        raise WeightpackError(f"{params.where}: output_dtype {dtype!r} is not supported; Core ML allows 'fp32'")
    return source.astype(np.float32)


def _sparse_to_dense(reader, params, index):
    nonzero = params.get("nonzero_data")
    if isinstance(nonzero, _Ref) and reader._producers.get(nonzero.name, (None, None))[1] == 1:
        source = reader._producers[nonzero.name][0]
        if source.type in _JOINT:
            joint = reader.joint(source)
            mask = params.get("mask")
            if isinstance(mask, _Ref):
                if reader._producers.get(mask.name) == (source, 0):
                    return joint
            elif isinstance(mask, NBitArray) and mask == output_mask(joint):
                return joint  # coremltools binds the mask as a (deduplicated) constant, not the op's output
    mask, nonzero = params.array("mask"), params.array("nonzero_data")
    if params.has("shape"):  # iOS16: a uint8-packed mask and the shape
        shape = tuple(int(d) for d in np.asarray(params.array("shape")).reshape(-1))
        mask = NBitArray(np.asarray(mask).reshape(-1), 1, shape)
    elif not isinstance(mask, NBitArray):
        mask = np.asarray(mask) != 0
    return SparseTensor(mask, nonzero)


def output_mask(joint) -> NBitArray:
    """The mask a joint op outputs: its mask, repeated V times along the vector axis for vector LUTs."""
    sparse = joint.palettized if isinstance(joint, ScaledLUTTensor) else joint
    if isinstance(sparse, SparseQuantizedTensor) or sparse.vector_axis is None:
        return sparse.mask
    return NBitArray.from_values(np.repeat(sparse.mask.values(), sparse.vector_size, axis=sparse.vector_axis), 1)


def _sparse_pair(reader, params, index):
    """Output 0 (the mask) or 1 (the nonzero values) of a two-output op used on its own."""
    joint = reader.joint(params.op)
    mask = output_mask(joint)
    return mask if index == 0 else joint.decompress()[mask.values().astype(bool)]


def _lut_to_dense(reader, params, index):
    lut = params.array("lut")
    indices = params.get("indices")
    if params.has("shape"):  # iOS16: uint8-packed indices, one LUT of 2**n scalars, the shape
        shape = tuple(int(d) for d in np.asarray(params.array("shape")).reshape(-1))
        lut = np.asarray(lut)
        nbits = {2: 1, 4: 2, 16: 4, 64: 6, 256: 8}.get(lut.size)
        if lut.ndim != 1 or nbits is None:
            raise FormatError(f"{params.where}: an iOS16 lut must be a vector of 2, 4, 16, 64 or 256 entries, got shape {lut.shape}")
        indices = NBitArray(np.asarray(indices).reshape(-1), nbits, shape)
        return PalettizedTensor(indices, lut.reshape((1,) * len(shape) + (lut.size, 1)))
    if isinstance(indices, _Ref):
        indices = params.array("indices")
    indices = indices if isinstance(indices, NBitArray) else _as_nbit(indices, params.where)
    lut, lut_parts = _lut(reader, params)
    return _with_lut_scale(PalettizedTensor(indices, lut, params.integer("vector_axis")), lut_parts)


def _lut(reader, params) -> tuple:
    """(the LUT array, {lut_scale, lut_offset} or {}): an int8/uint8 LUT as stored when a shift-scale
    op with one scale per LUT dequantizes it (coremltools' joint palettize + quantize), else the
    LUT's values (computed if an op produces them)."""
    lut = params.get("lut")
    if isinstance(lut, _Ref) and lut.name in reader._producers:
        source, _ = reader._producers[lut.name]
        if source.type == "constexpr_blockwise_shift_scale":
            stage = _Params(reader, source, f"{reader.source}: op {_op_name(source)!r} ({source.type})")
            data = stage.get("data")
            if not isinstance(data, _Ref):
                data, scale = np.asarray(_plain(data)), stage.array("scale")
                if data.dtype in (np.int8, np.uint8) and data.ndim >= 3 and scale.shape == data.shape[:-2] + (1, 1):
                    return data, {"lut_scale": scale, "lut_offset": stage.array("offset", required=False)}
    return params.array("lut"), {}


def _with_lut_scale(palettized, lut_parts: dict):
    return ScaledLUTTensor(palettized, **lut_parts) if lut_parts else palettized


def _joint(params):
    """The tensor a constexpr_lut_to_sparse / constexpr_sparse_blockwise_shift_scale op stores."""
    if params.op.type == "constexpr_lut_to_sparse":
        return _lut_to_sparse(params)
    return _sparse_shift_scale(params)


def _lut_to_sparse(params):
    lut, lut_parts = _lut(params.reader, params)
    palettized = SparsePalettizedTensor(
        params.array("indices_mask"), params.array("indices_nonzero_data"), lut, params.integer("vector_axis")
    )
    return _with_lut_scale(palettized, lut_parts)


def _sparse_shift_scale(params):
    return SparseQuantizedTensor(
        params.array("data_mask"),
        _as_nbit(params.array("nonzero_data"), params.where),
        params.array("scale"),
        params.array("offset", required=False),
    )


def _shift_scale(reader, params, index):
    scaled = _scaled_lut_output(reader, params)
    if scaled is not None:
        return scaled
    data, scale = params.array("data"), params.array("scale")
    offset = params.array("offset", required=False)
    if isinstance(data, np.ndarray) and data.dtype.kind == "f":
        return float_shift_scale(data, np.asarray(scale), _plain(offset))  # e.g. a LUT scaled per channel
    return QuantizedTensor(_as_nbit(data, params.where), scale, offset)


def _scaled_lut_output(reader, params):
    """A ScaledLUTTensor when this shift-scale multiplies (no offset) what a LUT chain looked up;
    else None."""
    data = params.get("data")
    if not isinstance(data, _Ref) or params.has("offset") or data.name not in reader._producers:
        return None
    if reader._producers[data.name][0].type not in ("constexpr_lut_to_dense", "constexpr_sparse_to_dense"):
        return None
    inner = reader.value(data.name)
    lut_parts = {}
    if isinstance(inner, ScaledLUTTensor) and inner.scale is None:
        inner, lut_parts = inner.palettized, {"lut_scale": inner.lut_scale, "lut_offset": inner.lut_offset}
    if not isinstance(inner, (PalettizedTensor, SparsePalettizedTensor)):
        return None
    try:
        return ScaledLUTTensor(inner, scale=params.array("scale"), **lut_parts)
    except WeightpackError:  # a scale of another layout or dtype: decoded densely instead
        return None


def _affine_dequantize(reader, params, index):
    """iOS16: scale and zero point of rank 0 or 1 along ``axis``, evaluated in fp32 then cast."""
    data = np.asarray(_plain(params.array("quantized_data")))
    scale = np.asarray(params.array("scale"))
    zero_point = np.asarray(_plain(params.array("zero_point")))
    rank = data.ndim
    axis = params.integer("axis", required=True)
    if rank == 0 or not -rank <= axis < rank:
        raise FormatError(f"{params.where}: axis {axis} is outside a rank-{rank} tensor")
    axis %= rank
    full = [1] * rank
    count = max(scale.size, zero_point.size)
    for name, array in (("scale", scale), ("zero_point", zero_point)):
        if array.ndim > 1 or array.size not in (1, data.shape[axis]):
            raise FormatError(f"{params.where}: {name} of shape {array.shape} does not fit axis {axis} of {data.shape}")
    if count > 1:
        full[axis] = count
    scale = np.broadcast_to(scale.reshape(-1), (count,)).reshape(full)
    zero_point = np.broadcast_to(zero_point.reshape(-1), (count,)).reshape(full)
    offset = _zero_point_offset(zero_point, data.dtype, scale.dtype, params.where)
    return QuantizedTensor(_as_nbit(data, params.where), scale, offset)


def _zero_point_offset(zero_point: np.ndarray, data_dtype, scale_dtype, where: str):
    """iOS16's zero point as a weightpack offset that decodes to the same bits (None for all zeros:
    ``q - 0`` is exact in every dtype, and iOS16 writers store zeros for an offset-free tensor)."""
    if not np.any(zero_point):
        return None
    if zero_point.dtype == data_dtype:
        return zero_point
    info = np.iinfo(data_dtype)
    integral = np.all(np.round(zero_point) == zero_point) and zero_point.min() >= info.min and zero_point.max() <= info.max
    if integral:
        return zero_point.astype(data_dtype)  # exact: the same difference in fp32 and in the scale's dtype
    if zero_point.dtype.kind == "f" and scale_dtype == np.float32:
        return zero_point.astype(np.float32)  # fp32 arithmetic either way
    raise WeightpackError(
        f"{where}: a fractional zero point with a {scale_dtype} scale is evaluated in fp32 by this op; "
        "no weightpack tensor decodes to the same bits"
    )


_BUILDERS = {
    "const": _const,
    "constexpr_cast": _cast,
    "constexpr_sparse_to_dense": _sparse_to_dense,
    "constexpr_lut_to_dense": _lut_to_dense,
    "constexpr_blockwise_shift_scale": _shift_scale,
    "constexpr_affine_dequantize": _affine_dequantize,
    "constexpr_lut_to_sparse": _sparse_pair,
    "constexpr_sparse_blockwise_shift_scale": _sparse_pair,
}
_JOINT = ("constexpr_lut_to_sparse", "constexpr_sparse_blockwise_shift_scale")
