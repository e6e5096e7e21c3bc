"""The states of a stateful program (iOS18 ``state<tensor<...>>`` inputs, e.g. a KV cache) and
the checks every value handed to a program passes (inputs and state writes).

:meth:`Program.make_state <weightpack.coreml.Program.make_state>` makes a :class:`ProgramState`,
like coremltools' ``MLModel.make_state()``; ``Program.predict(inputs, state=state)`` then reads
and updates its arrays in place, call after call, as Core ML updates the state buffers of an
``MLState``. Core ML allocates the buffers initialised to zeros (Apple's documentation of
``MLModel.makeState()``: "The allocated state buffers are initialized to zeros"), and so does
``make_state``: the initial value a torch buffer had at conversion is not kept in the program.

>>> import numpy as np
>>> from weightpack.coreml import Program
>>> from weightpack.coreml.runtime.graph import Graph, OpNode, Ref, TensorType, Var
>>> t = TensorType((2,), "fp16")
>>> g = Graph(inputs=[Var("x", t)], outputs=["y"], states=[Var("acc", t)])
>>> g.ops += [OpNode("read_state", "r", {"input": Ref("acc")}, [Var("old", t)]),
...           OpNode("add", "a", {"x": Ref("old"), "y": Ref("x")}, [Var("new", t)]),
...           OpNode("coreml_update_state", "u", {"state": Ref("acc"), "value": Ref("new")}, [Var("y", t)])]
>>> prog = Program(g)
>>> prog.states
{'acc': ((2,), dtype('float16'))}
>>> state = prog.make_state()
>>> for _ in range(3):
...     y = prog.predict({"x": np.array([1.0, 0.5], np.float16)}, state=state)["y"]
>>> y, state.read_state("acc")
(array([3. , 1.5], dtype=float16), array([3. , 1.5], dtype=float16))
>>> state.write_state("acc", np.zeros(2, np.float16))
"""
from __future__ import annotations

import numpy as np

from ...errors import WeightpackError, describe
from .graph import dtype_of


class ProgramState:
    """The state buffers of one program (Core ML's ``MLState``): one numpy array per state, in
    the state's dtype, zeros when made. Pass it to ``Program.predict(..., state=...)`` of the
    program that made it; each call reads and updates the arrays in place. Calls sharing a state
    must not run concurrently (as Core ML requires of an ``MLState``)."""

    def __init__(self, declared: dict, owner: object):
        self._declared = dict(declared)  # name -> TensorType of the wrapped tensor
        self._owner = owner
        self._arrays = {name: np.zeros(vtype.shape, dtype_of(vtype.dtype)) for name, vtype in self._declared.items()}

    @property
    def names(self) -> tuple:
        """The names of the states, in the program's order."""
        return tuple(self._declared)

    def read_state(self, name: str) -> np.ndarray:
        """A copy of the state ``name``'s current value (``MLState.read_state``)."""
        return self._array(name).copy()

    def write_state(self, name: str, value) -> None:
        """Set the state ``name`` to ``value`` (``MLState.write_state``): an array of the state's
        shape and of its kind of dtype (float, integer or bool), converted to the state's dtype;
        the state keeps its own buffer (``value`` is copied)."""
        array = self._array(name)
        np.copyto(array, conformed(value, self._declared[name], f"value for state {name!r}", "the state holds"))

    def __repr__(self) -> str:
        return "ProgramState(" + ", ".join(f"{name}: {vtype}" for name, vtype in self._declared.items()) + ")"

    def _array(self, name):
        if name not in self._arrays:
            raise WeightpackError(f"the program has no state named {describe(name)}; its states: {', '.join(map(repr, self._arrays))}")
        return self._arrays[name]


def conformed(array, vtype, what: str, takes: str, check_shape=None) -> np.ndarray:
    """``array`` in the declared dtype of ``vtype`` (no copy when it already is), after checking
    its kind of dtype (float / integer / bool), its shape (``vtype``'s, None dimensions matching
    any size; then ``check_shape(shape)`` if given) and, for integers, their range.
    ``what`` names the value and ``takes`` the declaring side in error messages."""
    if not isinstance(array, (np.ndarray, np.generic)):
        if not isinstance(array, (list, tuple, int, float, bool)):
            raise WeightpackError(f"{what} must be a numpy array, got {describe(array)}")
        array = np.asarray(array)
    want = dtype_of(vtype.dtype)
    if _kind(array.dtype) != _kind(want):
        raise WeightpackError(f"{what} has dtype {array.dtype}; {takes} {vtype}")
    if vtype.shape is not None and (len(array.shape) != len(vtype.shape) or any(d is not None and d != s for d, s in zip(vtype.shape, array.shape))):
        raise WeightpackError(f"{what} has shape {tuple(array.shape)}; {takes} {vtype}")
    if check_shape is not None:
        check_shape(array.shape)
    if want.kind in "iu" and array.dtype != want and array.size and (array.min() < np.iinfo(want).min or array.max() > np.iinfo(want).max):
        raise WeightpackError(f"{what} holds values outside the {want} range of {vtype}")
    return array.astype(want, copy=False)


def _kind(dtype) -> str:
    kind = np.dtype(dtype).kind
    return "i" if kind in "iu" else kind
