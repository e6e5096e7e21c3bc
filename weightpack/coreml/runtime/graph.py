"""The program the executor runs: typed variables, ops and their arguments, in program order.

:mod:`.parse` builds a :class:`Graph` from an ML program's protobuf; :mod:`weightpack.runtime`
builds one directly from layers. No coremltools here.

>>> g = Graph(inputs=[Var("x", TensorType((None, 4), "fp32"))], outputs=["y"])
>>> g.ops.append(OpNode("relu", "r", {"x": Ref("x")}, [Var("y", TensorType((None, 4), "fp32"))]))
>>> g.describe_inputs()
{'x': ((None, 4), dtype('float32'))}
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Core ML dtype names (MIL's) -> numpy dtypes of the values they hold
NUMPY_DTYPES = {
    "fp16": np.dtype(np.float16), "fp32": np.dtype(np.float32), "fp64": np.dtype(np.float64),
    "int8": np.dtype(np.int8), "uint8": np.dtype(np.uint8), "int16": np.dtype(np.int16),
    "uint16": np.dtype(np.uint16), "int32": np.dtype(np.int32), "uint32": np.dtype(np.uint32),
    "int64": np.dtype(np.int64), "uint64": np.dtype(np.uint64), "bool": np.dtype(np.bool_),
}  # fmt: skip
DTYPE_NAMES = {dtype: name for name, dtype in NUMPY_DTYPES.items()}
FLOAT_NAMES = ("fp16", "fp32", "fp64")


def dtype_of(name: str) -> np.dtype:
    return NUMPY_DTYPES[name]


def name_of(dtype) -> str:
    """Core ML's name of a numpy dtype ('fp32', 'int32', 'bool', ...)."""
    return DTYPE_NAMES[np.dtype(dtype)]


@dataclass(frozen=True)
class TensorType:
    """A declared tensor type: ``shape`` (a tuple whose unknown dimensions are None; None for an
    unknown rank) and ``dtype``, a Core ML dtype name."""

    shape: tuple | None
    dtype: str

    @property
    def rank(self):
        return None if self.shape is None else len(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_NAMES

    def __str__(self):
        dims = "?" if self.shape is None else ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"


@dataclass(frozen=True)
class Var:
    """A named variable and its declared type."""

    name: str
    type: TensorType


@dataclass(frozen=True)
class Ref:
    """An argument bound to a variable (a function input or another op's output)."""

    name: str


@dataclass(frozen=True)
class Const:
    """An argument given as a value in the op itself (numpy array, str, or a list of them)."""

    value: object


@dataclass
class OpNode:
    """One op: ``inputs`` maps a parameter to a :class:`Ref`, a :class:`Const` or, for variadic
    parameters (``concat``'s ``values``), a tuple of them. ``where`` locates it in the program."""

    type: str
    name: str
    inputs: dict
    outputs: list
    where: str = ""

    def __post_init__(self):
        if not self.where:
            self.where = f"op {self.name!r} ({self.type})"


@dataclass
class Graph:
    """A function of a program: its inputs, its ops in order, its outputs, and its constants.

    ``constants`` maps the name of every const / constexpr output to its value (numpy array, str,
    or weightpack tensor); ``weights`` is the subset stored as weights (weight.bin blobs and
    constexpr chains): the ones :meth:`~weightpack.coreml.Program.weight_ops` lists.
    ``input_shapes`` optionally restricts flexible inputs: {name: [allowed shapes]} or
    {name: [(lower, upper) per dimension]} (Core ML's enumerated shapes and ranges).
    ``states`` are the function's state inputs (iOS18 ``state<tensor<...>>``), each a :class:`Var`
    of the tensor type the state wraps; only ``read_state`` and ``coreml_update_state`` take them.
    """

    inputs: list
    outputs: list
    ops: list = field(default_factory=list)
    constants: dict = field(default_factory=dict)
    weights: set = field(default_factory=set)
    const_types: dict = field(default_factory=dict)
    input_shapes: dict = field(default_factory=dict)
    output_types: dict = field(default_factory=dict)
    states: list = field(default_factory=list)
    source: str = "program"
    opset: int = 18

    def describe_inputs(self) -> dict:
        """{name: (shape tuple, numpy dtype)}, unknown dimensions as None."""
        return _described(self.inputs)

    def describe_states(self) -> dict:
        """{name: (shape tuple, numpy dtype)} of the state inputs."""
        return _described(self.states)


def _described(variables) -> dict:
    return {v.name: (v.type.shape, dtype_of(v.type.dtype)) for v in variables}
