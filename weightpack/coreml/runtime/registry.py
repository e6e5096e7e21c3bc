"""The op registry and the builder each op's implementation receives at load.

An op family module registers one build function per op type::

    @op("relu")
    def relu(b):                      # b: Builder, at load
        x = b.operand("x")            # a variable or a constant, with its declared type
        return b.emit(lambda v: np.maximum(v, 0), [x], [(x.type.shape, x.type.dtype)])

The build function reads constant parameters (``b.const``, ``b.ints``, ...), checks them and the
declared input types (raising :class:`~weightpack.errors.FormatError` through ``b.fail`` for a
malformed op), and returns the compiled step from ``b.emit(fn, operands, outputs)``: ``fn`` takes the
operands' values and returns the output array (a tuple for several outputs); ``outputs`` are the
inferred (shape, dtype) of each output, checked against the types the program declares. Constant
operands are bound into the step at load; the step reads variables from the environment list and
writes its outputs, cast to the declared dtype (float16 values compute in float32, see
:mod:`weightpack.coreml.runtime`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..._c import ffi, lib
from ...errors import FormatError
from .graph import Const, Ref, TensorType, name_of
from .shapes import ShapeError

OPS = {}  # op type -> build function
MISSING = object()
F32 = np.dtype(np.float32)


def op(*names):
    """Register a build function for the op types ``names``."""

    def register(build):
        for name in names:
            OPS[name] = build
        return build

    return register


def covered_ops() -> list:
    """The op types the executor runs, sorted (constants and constexpr chains come on top)."""
    _load_families()
    return sorted(OPS)


def _load_families() -> None:
    from . import ops_attention, ops_elementwise, ops_linear, ops_nn, ops_reduce, ops_state, ops_tensor  # noqa: F401


def runtime_dtype(dtype_name: str, precision: str = "fp32") -> np.dtype:
    """The numpy dtype a declared dtype computes in: every float type in float32."""
    if dtype_name in ("fp16", "fp32"):
        return F32
    from .graph import dtype_of

    return dtype_of(dtype_name)


class _Typed:
    """``shape`` and ``rank`` of the declared ``type``."""

    @property
    def shape(self):
        return self.type.shape

    @property
    def rank(self):
        return self.type.rank


@dataclass
class Operand(_Typed):
    """A parameter's argument at load: a variable (``slot`` in the environment) or a constant
    (``value``, in its runtime dtype), with its declared ``type``."""

    slot: int | None
    value: object
    type: TensorType
    name: str = ""

    @property
    def is_const(self) -> bool:
        return self.slot is None


@dataclass(frozen=True)
class Declared(_Typed):
    """What :meth:`Builder.peek` tells about a parameter."""

    type: TensorType
    is_const: bool


@dataclass(frozen=True)
class StateSlot(_Typed):
    """A state input at load: its ``name``, its environment ``slot`` (which holds the state's
    array during ``predict``) and the tensor ``type`` it wraps."""

    name: str
    slot: int
    type: TensorType


class Step:
    """A compiled op: ``run(env)`` reads its inputs from ``env`` and writes its outputs there.
    ``slicing``: how a slice op indexes its ``x`` (:class:`~.ops_tensor.Slicing`), else None."""

    __slots__ = ("run", "node", "uses", "observed", "slicing")

    def __init__(self, run, node, uses, observed):
        self.run, self.node, self.uses, self.observed = run, node, uses, observed
        self.slicing = None


class Builder:
    """What an op's build function sees at load: its parameters, declared types and the weights."""

    def __init__(self, node, ctx):
        self.node, self.ctx = node, ctx
        self.type, self.name, self.where = node.type, node.name, node.where
        self.opset = ctx.opset
        self.outputs = [v.type for v in node.outputs]
        self.clock = ctx.clock
        self.uses = []

    # ------------------------------------------------------------------ parameters

    def fail(self, message: str):
        raise FormatError(f"{self.ctx.source}: {self.where}: {message}")

    def has(self, param: str) -> bool:
        return param in self.node.inputs

    def _binding(self, param: str):
        if param not in self.node.inputs:
            self.fail(f"parameter {param!r} is missing")
        return self.node.inputs[param]

    def is_const(self, param: str) -> bool:
        binding = self.node.inputs.get(param)
        return isinstance(binding, Const) or (isinstance(binding, Ref) and binding.name in self.ctx.constants)

    def const(self, param: str, default=MISSING):
        """The value of a parameter that must be a constant (numpy array or str), as stored."""
        if param not in self.node.inputs:
            if default is MISSING:
                self.fail(f"parameter {param!r} is missing")
            return default
        binding = self.node.inputs[param]
        if isinstance(binding, tuple):  # a variadic parameter of constants (reshape_like's begins)
            return [self._constant_value(param, b) for b in binding]
        return self._constant_value(param, binding)

    def _constant_value(self, param, binding):
        if isinstance(binding, Const):
            return binding.value
        if isinstance(binding, Ref) and binding.name in self.ctx.constants:
            value = self.ctx.constants[binding.name]
            return value if isinstance(value, (np.ndarray, str, list)) else self.ctx.dense_constant(binding.name)
        self.fail(f"parameter {param!r} must be a constant; it is bound to a variable")

    def _one(self, param, default, kinds, what):
        value = self.const(param, default)
        array = np.asarray(value)
        if array.size != 1 or array.dtype.kind not in kinds:
            self.fail(f"parameter {param!r} must be one {what}, got {_show(value)}")
        return array.reshape(())

    def _vector(self, param, default, kinds, what, convert):
        value = self.const(param, default)
        if value is None:
            return None
        array = np.asarray(value)
        if array.dtype.kind not in kinds or array.ndim > 1:
            self.fail(f"parameter {param!r} must be a vector of {what}, got {_show(value)}")
        return tuple(convert(v) for v in array.reshape(-1))

    def int_(self, param: str, default=MISSING) -> int:
        return int(self._one(param, default, "iub", "integer"))

    def ints(self, param: str, default=MISSING) -> tuple:
        return self._vector(param, default, "iu", "integers", int)

    def bool_(self, param: str, default=MISSING) -> bool:
        return bool(self._one(param, default, "bi", "boolean"))

    def bools(self, param: str, default=MISSING):
        return self._vector(param, default, "bi", "booleans", bool)

    def float_(self, param: str, default=MISSING) -> float:
        return float(self._one(param, default, "fiu", "number"))

    def str_(self, param: str, default=MISSING, allowed=None) -> str:
        value = self.const(param, default)
        if isinstance(value, np.ndarray) and value.dtype.kind in "US" and value.size == 1:
            value = str(value.reshape(()))
        if not isinstance(value, str):
            self.fail(f"parameter {param!r} must be a string, got {_show(value)}")
        if allowed is not None and value not in allowed:
            self.fail(f"parameter {param!r} is {value!r}; allowed: {', '.join(allowed)}")
        return value

    def scalar(self, param: str, like: Operand, default=MISSING):
        """A constant number as a 0-d array of ``like``'s runtime dtype (float32 for floats).

        A default is taken in ``like``'s declared dtype first (an fp16 program's default epsilon
        is the fp16 value), as the op computes it."""
        if param in self.node.inputs:
            operand = self.operand(param)
            if not operand.is_const:
                self.fail(f"parameter {param!r} must be a constant")
            value = np.asarray(operand.value)
            if value.size != 1:
                self.fail(f"parameter {param!r} must be one number, got shape {value.shape}")
            return value.reshape(()).astype(runtime_dtype(like.type.dtype))
        if default is MISSING:
            self.fail(f"parameter {param!r} is missing")
        from .graph import dtype_of

        declared = dtype_of(like.type.dtype)
        return np.asarray(default).astype(declared).astype(runtime_dtype(like.type.dtype))

    # ------------------------------------------------------------------ operands

    def type_of(self, param: str) -> TensorType:
        """The declared type of a parameter's argument (nothing is registered)."""
        binding = self._binding(param)
        if isinstance(binding, tuple):
            self.fail(f"parameter {param!r} takes one value, got {len(binding)}")
        return self.ctx.type_of(binding, f"parameter {param!r}", self)

    def state(self, param: str) -> StateSlot:
        """The state input a parameter is bound to (the state ops of :mod:`.ops_state`)."""
        binding = self._binding(param)
        if not isinstance(binding, Ref) or binding.name not in self.ctx.states:
            what = repr(binding.name) if isinstance(binding, Ref) else "a constant"
            self.fail(f"parameter {param!r} must be a state input of the function, got {what}")
        return self.ctx.states[binding.name]

    def peek(self, param: str) -> "Declared":
        """A parameter's declared type and whether it is a constant, nothing registered (for
        weights, which :meth:`weight` registers in their role)."""
        return Declared(self.type_of(param), self.is_const(param))

    def operand(self, param: str) -> Operand:
        binding = self._binding(param)
        if isinstance(binding, tuple):
            self.fail(f"parameter {param!r} takes one value, got {len(binding)}")
        return self.ctx.operand(binding, f"parameter {param!r}", self)

    def operands(self, param: str) -> list:
        binding = self._binding(param)
        bindings = binding if isinstance(binding, tuple) else (binding,)
        return [self.ctx.operand(b, f"parameter {param!r}", self) for b in bindings]

    def weight(self, param: str, role: str, **info):
        """The :class:`~.weights.WeightUse` of a constant parameter (a weight, or an immediate
        constant), registered in ``role``; None if the parameter is bound to a variable."""
        binding = self._binding(param)
        if isinstance(binding, Ref) and binding.name in self.ctx.constants:
            name = binding.name
            if name in self.ctx.store.slots:
                use = self.ctx.store.use(self.node, param, name, role, **info)
            else:
                use = self.ctx.store.use(self.node, param, self.ctx.constants[name], role, **info)
        elif isinstance(binding, Const):
            use = self.ctx.store.use(self.node, param, binding.value, role, **info)
        else:
            return None
        self.uses.append(use)
        return use

    def zero_test(self, param: str):
        """A function telling, at run time, whether a constant parameter holds only zeros (the
        zero bias converters give bias-free layers: its addition can be skipped); it follows
        ``set_weight``. None for a variable."""
        binding = self._binding(param)
        if isinstance(binding, Ref) and binding.name in self.ctx.store.slots:
            slot = self.ctx.store.slots[binding.name]
            return lambda: slot.zero
        if not self.is_const(param):
            return None
        value = np.asarray(self.const(param))
        zero = value.dtype.kind == "f" and not value.any()
        return lambda: zero

    def expect(self, operand: Operand, dtypes, what: str) -> None:
        """Fail unless the operand's declared dtype is one of ``dtypes``."""
        if operand.type.dtype not in dtypes:
            self.fail(f"{what} has type {operand.type}; allowed dtypes: {', '.join(dtypes)}")

    # ------------------------------------------------------------------ output

    def emit(self, fn, args, outputs) -> Step:
        """The compiled step of ``fn(*values of args)``; ``outputs``: inferred (shape, dtype name)
        per output (shape None or dtype None where the op cannot tell at load)."""
        if len(outputs) != len(self.node.outputs):
            self.fail(f"the op has {len(self.node.outputs)} outputs; it produces {len(outputs)}")
        dtypes = []
        for var, (shape, dtype) in zip(self.node.outputs, outputs):
            declared = var.type
            if dtype is not None and declared.dtype != dtype:
                self.fail(f"output {var.name!r} is declared {declared} but the op produces {dtype}")
            _check_shape(self, var, shape)
            dtypes.append(runtime_dtype(declared.dtype))
        rounding = [self.ctx.precision == "fp16" and v.type.dtype == "fp16" for v in self.node.outputs]
        out_slots = [self.ctx.slot_of(v.name) for v in self.node.outputs]
        run = make_run(fn, args, out_slots, dtypes, rounding)
        observed = [(o.name, o.slot) for o in args if o.slot is not None]
        return Step(run, self.node, list(self.uses), observed)

    def infer(self, compute):
        """``compute()`` (shape arithmetic), with a :class:`ShapeError` reported as this op's."""
        try:
            return compute()
        except ShapeError as err:
            self.fail(str(err))


def _check_shape(b: Builder, var, shape) -> None:
    declared = var.type.shape
    if shape is None or declared is None:
        return
    if len(shape) != len(declared) or any(d is not None and s is not None and d != s for d, s in zip(declared, shape)):
        b.fail(f"output {var.name!r} is declared {var.type}, but its inputs make shape {tuple(shape)}")


def _show(value) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------- step compilation


def _bind(fn, args):
    """``fn`` over the variable operands only (constants bound in), and their slots."""
    slots = tuple(a.slot for a in args if a.slot is not None)
    if len(slots) == len(args):
        return fn, slots
    if len(args) == 2 and len(slots) == 1:
        if args[0].slot is None:
            c0 = args[0].value
            return (lambda v: fn(c0, v)), slots
        c1 = args[1].value
        return (lambda v: fn(v, c1)), slots
    template = [a.value for a in args]
    positions = [k for k, a in enumerate(args) if a.slot is not None]

    def bound(*values):
        full = list(template)
        for k, v in zip(positions, values):
            full[k] = v
        return fn(*full)

    return bound, slots


def _finish(y, dtype, rounding):
    if not isinstance(y, np.ndarray) and not isinstance(y, np.generic):
        y = np.asarray(y)
    if y.dtype is not dtype and y.dtype != dtype:
        y = y.astype(dtype)
    if rounding:
        y = y.astype(np.float16).astype(np.float32)
    return y


def make_run(fn, args, out_slots, dtypes, rounding):
    """A closure ``run(env)`` calling ``fn`` on the variable operands and storing its outputs."""
    f, slots = _bind(fn, args)
    if len(out_slots) == 1 and not rounding[0]:
        o, dt = out_slots[0], dtypes[0]
        if len(slots) == 1:
            (i0,) = slots

            def run(env):
                y = f(env[i0])
                if y.dtype is not dt and y.dtype != dt:
                    y = _finish(y, dt, False)
                env[o] = y

            return run
        if len(slots) == 2:
            i0, i1 = slots

            def run(env):
                y = f(env[i0], env[i1])
                if y.dtype is not dt and y.dtype != dt:
                    y = _finish(y, dt, False)
                env[o] = y

            return run
    single = len(out_slots) == 1
    outs = list(zip(out_slots, dtypes, rounding))

    def run(env):
        ys = f(*[env[i] for i in slots])
        if single:
            ys = (ys,)
        for (o, dt, rnd), y in zip(outs, ys):
            env[o] = _finish(y, dt, rnd)

    return run


F16 = np.dtype(np.float16)


def store(out: np.ndarray, value: np.ndarray) -> None:
    """Copy ``value`` into ``out`` (the same shape; ``out`` C-contiguous), cast to ``out``'s dtype:
    float32 to float16 through the C conversion (numpy's cast bit for bit, eight at a time where
    the CPU has F16C), anything else through numpy."""
    if out.dtype == F16 and value.dtype == F32 and value.flags.c_contiguous:
        if lib.wp_f32_to_f16(ffi.from_buffer("float[]", value), ffi.cast("unsigned short *", ffi.from_buffer(out, require_writable=True)), value.size) == 0:
            return
    np.copyto(out, value, casting="unsafe")


def type_from_value(value) -> TensorType:
    """The type of an immediate constant."""
    if isinstance(value, str):
        return TensorType((), "string")
    if not isinstance(value, (np.ndarray, np.generic, list, tuple, int, float, bool)) and hasattr(value, "shape"):
        return TensorType(tuple(value.shape), name_of(value.dtype))  # a weightpack tensor
    array = np.asarray(value)
    if array.dtype.kind in "US":
        return TensorType(array.shape, "string")
    try:
        return TensorType(tuple(array.shape), name_of(array.dtype))
    except KeyError:
        return TensorType(tuple(array.shape), "fp32")
