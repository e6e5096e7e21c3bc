"""State ops (iOS18): ``read_state``, ``write_state`` and ``coreml_update_state``, as coremltools
defines them.

A state is a function input of type ``state<tensor<...>>`` (a KV cache, an accumulator): a
tensor that persists from one ``predict`` to the next. During ``predict`` its environment slot
holds the array of the caller's :class:`~weightpack.coreml.runtime.states.ProgramState` itself,
in the state's own dtype (float16 for an fp16 state), and only these ops touch it (and the
fused steps that run a KV cache's slice update or slice read in place, :mod:`.fusion`, with the
same results):

- ``read_state(input=state)`` returns a copy of the state's content (its type: the wrapped tensor
  type), so later writes never change a value already read;
- ``write_state(input=state, data=value)`` (no output) copies ``value``, of exactly the wrapped
  type, into the state: for an fp16 state, ``value`` rounded to binary16 whatever the compute
  precision (the state stores binary16);
- ``coreml_update_state(state, value)`` is coremltools' in-memory (PyMIL) form of ``write_state``
  followed by ``read_state``: it writes ``value`` and returns what the state then holds. A saved
  program stores the two ops instead (coremltools' MIL backend splits it; its proto loader joins
  them back).
"""
from __future__ import annotations

from ...errors import WeightpackError
from .registry import Operand, op, runtime_dtype, store
from .shapes import same_dim


def _state_operand(b, param):
    """The state a parameter is bound to, as an operand whose slot holds the state's array."""
    state = b.state(param)
    return state, Operand(state.slot, None, state.type, param)


def _writer(b, state_param: str, value_param: str):
    """(state, operands, ``write(state array, value)``) of an op writing ``value_param`` into
    ``state_param``; the value's declared type must be the state's (coremltools' rule)."""
    state, target = _state_operand(b, state_param)
    value = b.operand(value_param)
    if value.type.dtype != state.type.dtype or (
        value.shape is not None and (len(value.shape) != len(state.shape) or not all(map(same_dim, value.shape, state.shape)))
    ):
        b.fail(f"parameter {value_param!r} has type {value.type}; state {state.name!r} holds {state.type}")
    name, shape = state.name, state.shape

    def write(s, v):
        if v.shape != shape:
            raise WeightpackError(f"parameter {value_param!r} has shape {v.shape}; state {name!r} holds shape {shape}")
        store(s, v)  # float32 -> float16 rounds to nearest even (numpy's cast, bit for bit)

    return state, [target, value], write


@op("read_state")
def read_state(b):
    state, operand = _state_operand(b, "input")
    runtime = runtime_dtype(state.type.dtype)
    return b.emit(lambda s: s.astype(runtime), [operand], [(state.shape, state.type.dtype)])


@op("write_state")
def write_state(b):
    _, operands, write = _writer(b, "input", "data")

    def run(s, v):
        write(s, v)
        return ()

    return b.emit(run, operands, [])


@op("coreml_update_state")
def coreml_update_state(b):
    state, operands, write = _writer(b, "state", "value")
    runtime = runtime_dtype(state.type.dtype)

    def run(s, v):
        write(s, v)
        return s.astype(runtime)

    return b.emit(run, operands, [(state.shape, state.type.dtype)])
