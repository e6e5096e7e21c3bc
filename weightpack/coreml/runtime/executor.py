"""``Program``: load an ML program once, then run it like ``MLModel.predict``.

At load every op is resolved to a compiled step (its constants bound, its weights prepared by
the policy, its declared types checked); ``predict`` checks the inputs, then runs the steps in
order over a list of variable slots and returns the outputs.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ...errors import FormatError, WeightpackError, describe
from ..values import is_weight
from .fusion import fuse
from .graph import Const, Graph, Ref, dtype_of
from . import threads as thread_choice
from .registry import OPS, Builder, Operand, StateSlot, covered_ops, runtime_dtype, store, type_from_value
from .report import KernelClock, Report
from .states import ProgramState, conformed
from .weights import POLICIES, WeightStore, dense_float32

PRECISIONS = ("fp32", "fp16")
STATE_DTYPES = ("fp16", "fp32", "int8", "uint8", "int16", "uint16", "int32", "bool")  # coreml_update_state's


@dataclass(frozen=True)
class WeightOp:
    """An op that consumes a weight (a weight.bin constant or a constexpr chain).

    ``name`` / ``op_type``: the op; ``weight_name``: the weight's variable (the key of
    :meth:`Program.set_weight`); ``weight``: its value (weightpack tensor or numpy array, as
    loaded or as last set); ``param``: the op's parameter it feeds; ``role``: ``"linear"``
    (weight (out, in), ``y = x @ W.T + b``), ``"matmul"`` (``param`` ``"x"`` or ``"y"`` of
    ``matmul``, ``transpose`` its transpose flag), ``"conv"`` (weight (C_out, C_in / groups,
    *kernel)), ``"conv_transpose"`` (weight (C_in, C_out / groups, *kernel)), ``"gather"``
    (an embedding table, rows looked up) or ``"other"``; ``matrix_side``: the weight as stored is
    the (out, in) matrix of a product ``x @ W.T`` (linear; matmul ``y`` with ``transpose_y``;
    matmul ``x`` without ``transpose_x``, whose "x" is then the other operand transposed);
    ``mode``: how the policy runs it (``dense``, ``fused``, ``scratch``, ``rows``).
    """

    name: str
    op_type: str
    weight_name: str
    weight: object
    param: str
    role: str
    transpose: bool
    matrix_side: bool
    mode: str


class _Context:
    """Compile-time state: declared types, environment slots, constants and weights."""

    def __init__(self, graph: Graph, store: WeightStore, precision: str, clock, batch_size: int):
        self.graph, self.store, self.precision, self.clock = graph, store, precision, clock
        self.source, self.opset, self.constants = graph.source, graph.opset, graph.constants
        self.batch_size = batch_size
        self.types = {}  # var name -> declared TensorType, as vars get defined
        self.slots = {}  # var name -> environment index
        self.weight_slots = {}  # weight name read as a plain operand -> environment index
        self.const_slots = {}  # constant that is a program output -> environment index
        self.states = {}  # state input name -> StateSlot (its slot holds the state's array in predict)

    def slot_of(self, name: str) -> int:
        if name not in self.slots:
            self.slots[name] = len(self.slots)
        return self.slots[name]

    def dense_constant(self, name: str):
        return dense_float32(self.constants[name], self.store.backend)

    def type_of(self, binding, what: str, builder: Builder):
        if isinstance(binding, Const):
            return type_from_value(binding.value)
        if isinstance(binding, Ref) and binding.name in self.types:
            return self.types[binding.name]
        if isinstance(binding, Ref) and binding.name in self.constants:
            return self.graph.const_types.get(binding.name) or type_from_value(self.constants[binding.name])
        return self.operand(binding, what, builder).type  # reports the missing variable

    def operand(self, binding, what: str, builder: Builder) -> Operand:
        param = what.removeprefix("parameter ").strip("'")
        if isinstance(binding, Const):
            return Operand(None, _runtime_const(binding.value), type_from_value(binding.value), param)
        if not isinstance(binding, Ref):
            builder.fail(f"{what} is not a variable or a value")
        name = binding.name
        if name in self.states:
            builder.fail(f"{what} reads the state {name!r}; only read_state, write_state and coreml_update_state take a state")
        if name in self.types:
            return Operand(self.slots[name], None, self.types[name], param)
        if name in self.constants:
            ctype = self.graph.const_types.get(name) or type_from_value(self.constants[name])
            if name in self.store.slots:  # a weight read as a plain tensor: dense, from the environment
                builder.weight(param, "other")
                if name not in self.weight_slots:
                    self.weight_slots[name] = self.slot_of(name)
                return Operand(self.weight_slots[name], None, ctype, param)
            return Operand(None, _runtime_const(self.constants[name]), ctype, param)
        builder.fail(f"{what} reads {name!r}, which is neither an input nor the output of an earlier op")


def _runtime_const(value):
    """An immediate constant in its runtime dtype: floats as float32, the rest as stored."""
    if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.dtype != np.float32:
        return value.astype(np.float32)
    return value


class Program:
    """An ML program loaded for execution on Linux (numpy + weightpack's kernels).

    >>> import numpy as np, weightpack as wp
    >>> from weightpack.runtime import Linear, Model
    >>> w = wp.palettize(np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32), nbits=4)
    >>> prog = Model([Linear(w, activation="relu")], policy="jit").program
    >>> sorted(prog.inputs), prog.outputs, prog.report.layer_modes
    (['x'], ['y'], ['fused'])
    >>> y = prog.predict({"x": np.ones((2, 8), np.float32)})["y"]
    >>> y.shape, bool((y >= 0).all())
    ((2, 4), True)
    """

    def __init__(self, graph: Graph, policy: str = "jit", *, compute_precision: str = "fp32", backend=None, batch_size: int = 1, threads=None):
        if policy not in POLICIES:
            raise WeightpackError(f"policy={describe(policy)} is unknown; allowed: {', '.join(POLICIES)}")
        if compute_precision not in PRECISIONS:
            raise WeightpackError(f"compute_precision={describe(compute_precision)} is unknown; allowed: {', '.join(PRECISIONS)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise WeightpackError(f"batch_size={describe(batch_size)} must be a positive integer")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise WeightpackError(f"threads={describe(threads)} must be a positive integer or None (measured at load)")
        _refuse_uncovered(graph)
        start = time.perf_counter()
        self.graph, self.policy, self.compute_precision = graph, policy, compute_precision
        self._state_owner = object()  # identifies the states this program makes
        self._clock = KernelClock()
        weights = {name: graph.constants[name] for name in graph.constants if name in graph.weights}
        self._store = WeightStore(weights, policy, self._clock, backend)
        self._steps, self._ctx = self._compile(batch_size)
        self._store.finish()
        self._template = self._make_template()
        self._declared = {v.name: v.type for v in graph.inputs}
        self._output_specs = [(name, self._ctx.slots[name], dtype_of(self._output_dtype(name))) for name in graph.outputs]
        self._frees = self._last_uses([(k, step.run, [slot for _, slot in step.observed]) for k, step in enumerate(self._steps)])
        self._fused = fuse(self._steps, self._ctx, self.graph.outputs)
        self._plan = self._fused_plan()
        self._plan_frees = self._last_uses(self._plan)
        self._plan_run = [(k, run, frees) for (k, run, _), frees in zip(self._plan, self._plan_frees)]
        self._weight_slot_set = set(self._ctx.weight_slots.values())
        self._times = [0.0] * len(self._steps)  # per op, of the last observed call
        self._plan_times = [0.0] * len(self._steps)  # per op, of the last call: a fused chain's on its last op
        self._op_keys = [(step.node.type, step.node.name) for step in self._steps]
        self.report = Report(policy)
        self._threads = None  # weightpack's C kernel threads during predict (None: the process's)
        self._choose_threads(threads)
        chosen = self.report
        self.report = Report(policy, threads=chosen.threads, thread_seconds=chosen.thread_seconds, blas_threads=chosen.blas_threads)
        self.report.load_seconds = time.perf_counter() - start
        self._refresh_report()

    @classmethod
    def load(cls, model, policy: str = "jit", *, function: str = "main", compute_precision: str = "fp32", backend=None, batch_size: int = 1,
             threads=None):  # fmt: skip
        """Load ``model`` (an .mlpackage path or a coremltools MLModel) for execution.

        ``policy``: ``"jit"`` (iOS 17: weights stay compressed, fused products), ``"load"``
        (iOS 16: decompressed at load, BLAS) or ``"auto"`` (the faster per op, timed at load).
        ``compute_precision``: ``"fp32"`` computes every float value in float32, including the
        fp16 values of an fp16 program; ``"fp16"`` rounds every fp16-typed value to binary16
        after each op (Core ML's fp16 storage of activations; arithmetic inside an op stays
        float32). ``backend`` picks the kernel backend (None: the fastest available).
        ``batch_size``: the rows ``auto`` times its products at where the program leaves them open.
        ``threads``: weightpack's kernel threads during ``predict``; None (default): when weights
        run compressed (``jit`` / ``auto``) on several CPUs, the count that runs the whole program
        fastest, measured at load (:mod:`.threads`; ``report.threads`` and
        ``report.thread_seconds`` tell), else the process's setting.
        """
        from .parse import load_graph

        graph = load_graph(model, function)
        return cls(graph, policy, compute_precision=compute_precision, backend=backend, batch_size=batch_size, threads=threads)

    # ------------------------------------------------------------------ public API

    @property
    def inputs(self) -> dict:
        """{name: (shape tuple, numpy dtype)} as the program declares them (None: any size)."""
        return self.graph.describe_inputs()

    @property
    def outputs(self) -> list:
        return list(self.graph.outputs)

    def weight_ops(self) -> list:
        """Every op that consumes a weight, in program order: a list of :class:`WeightOp`."""
        return [_weight_op(u) for u in self._store.uses]

    def set_weight(self, name: str, tensor) -> None:
        """Replace the weight ``name`` (a :class:`WeightOp` ``weight_name``) by ``tensor`` (a
        weightpack tensor or a float array of the same shape); later calls use it, prepared as
        the policy prepares weights at load."""
        if name not in self._store.slots:
            raise WeightpackError(f"the program has no weight named {describe(name)}; weight_ops() lists its weights")
        old = self._store.slots[name].value
        if not is_weight(tensor):
            raise WeightpackError(f"tensor must be a weightpack tensor or a numpy array, got {describe(tensor)}")
        if tuple(tensor.shape) != tuple(old.shape):
            raise WeightpackError(f"tensor has shape {tuple(tensor.shape)}; weight {name!r} has shape {tuple(old.shape)}")
        if np.dtype(tensor.dtype).kind != "f" or np.dtype(tensor.dtype).itemsize not in (2, 4):
            raise WeightpackError(f"tensor decodes to {np.dtype(tensor.dtype)}; weights are float16 or float32")
        self._store.set_weight(name, tensor)
        if name in self._ctx.weight_slots:
            self._template[self._ctx.weight_slots[name]] = self._store.slots[name].dense
        self._refresh_report()

    @property
    def states(self) -> dict:
        """{name: (shape tuple, numpy dtype)} of the program's states (iOS18 ``state`` inputs,
        e.g. a KV cache); empty for a stateless program. :meth:`make_state` makes them."""
        return self.graph.describe_states()

    def make_state(self) -> ProgramState:
        """A new :class:`~.states.ProgramState` of this program (Core ML's ``MLModel.make_state``):
        one zero-filled array per state, updated in place by each ``predict(..., state=...)``."""
        if not self.graph.states:
            raise WeightpackError(f"{self.graph.source}: the program has no states; call predict without state=")
        return ProgramState({v.name: v.type for v in self.graph.states}, self._state_owner)

    def predict(self, inputs, *, state=None, observe=None) -> dict:
        """Run the program on ``inputs`` ({name: array}); {output name: numpy array}.

        Every input is checked (name, shape, dtype) before anything runs. A stateful program
        (:attr:`states`) needs ``state``, a :class:`~.states.ProgramState` from
        :meth:`make_state`: its arrays are read by ``read_state`` and updated in place by
        ``write_state`` / ``coreml_update_state`` (like ``MLModel.predict(data, state=state)``). ``observe``, if given,
        is called as ``observe(op, arrays)`` right before each op that consumes a weight, once
        per weight it consumes (a linear op with a stored bias: twice, roles ``"linear"`` and
        ``"other"``), with ``op`` the :class:`WeightOp` and ``arrays`` {parameter: read-only
        numpy array} of the op's variable inputs (the activations entering it).
        """
        start = time.perf_counter()
        env = list(self._template)
        for slot, array in self._checked_inputs(inputs):
            env[slot] = array
        for slot, array in self._checked_state(state):
            env[slot] = array
        self._clock.seconds = self._clock.elementwise = 0.0
        pool = self._kernel_lib if self._threads is not None else None
        before = pool.wp_threads() if pool is not None else None
        if before is not None and before != self._threads:
            pool.wp_set_threads(self._threads)
        try:
            with np.errstate(all="ignore"):  # inf / NaN are results, as on a device, not warnings
                if observe is None:
                    self._run(env)
                    times = self._plan_times
                else:
                    self._run_observed(env, observe)
                    times = self._times
        finally:
            if before is not None and before != self._threads:
                pool.wp_set_threads(before)
        outputs = {name: _output_array(env[slot], dtype) for name, slot, dtype in self._output_specs}
        self.report.latency_seconds = time.perf_counter() - start
        self.report.kernel_seconds = self._clock.seconds
        self.report.elementwise_seconds = self._clock.elementwise
        self.report.op_seconds = dict(zip(self._op_keys, times))
        return outputs

    # ------------------------------------------------------------------ threads

    def _choose_threads(self, threads) -> None:
        """Fix weightpack's kernel threads for ``predict``: ``threads`` if given, else (weights
        running compressed, several CPUs) the fastest count for the whole program (:mod:`.threads`)."""
        kernels = thread_choice.c_kernels()
        self._kernel_lib = None if kernels is None else kernels.lib
        self.report.blas_threads = thread_choice.blas_threads()
        if kernels is None:
            return
        if threads is not None:
            self._threads = threads
        elif self.policy != "load" and any(u.mode != "dense" for u in self._store.uses) and thread_choice.cpu_count() > 1:
            candidates = sorted({1, thread_choice.cpu_count()})
            try:
                self._threads, self.report.thread_seconds = thread_choice.choose(self, candidates)
            except WeightpackError:  # zeros are no valid input of this program: keep the process's count
                self._threads = None
        self.report.threads = self._threads if self._threads is not None else int(self._kernel_lib.wp_threads())

    # ------------------------------------------------------------------ running

    def _run(self, env) -> None:
        """Every op in order, fused chains (:mod:`.fusion`) as one step each."""
        clock, times = time.perf_counter, self._plan_times
        k = 0
        t0 = clock()
        try:
            for k, run, frees in self._plan_run:
                run(env)
                t1 = clock()
                times[k] = t1 - t0
                t0 = t1
                for slot in frees:
                    env[slot] = None
        except Exception as err:  # a kernel's error, with the op that raised it
            raise self._located(err, k) from None

    def _fused_plan(self) -> list:
        """(index of the op that stands for the step, run, slots read) per step of ``_run``: a
        fused chain stands in for its ops, at its last op."""
        chains = {chain.last: chain for chain in self._fused}
        inside = {k for chain in self._fused for k in chain.members[:-1]}
        plan = []
        for k, step in enumerate(self._steps):
            if k in chains:
                plan.append((k, chains[k].run, list(chains[k].reads)))
            elif k not in inside:
                plan.append((k, step.run, [slot for _, slot in step.observed]))
        return plan

    def _run_observed(self, env, observe) -> None:
        clock, times, frees = time.perf_counter, self._times, self._frees
        for k, step in enumerate(self._steps):
            for use in step.uses:
                if use.slot is not None:
                    observe(_weight_op(use), {param: _read_only(env[slot]) for param, slot in step.observed if slot not in self._weight_slot_set})
            t0 = clock()
            try:
                step.run(env)
            except Exception as err:
                raise self._located(err, k) from None
            times[k] = clock() - t0
            for slot in frees[k]:
                env[slot] = None

    def _located(self, err: Exception, k: int) -> WeightpackError:
        where = f"{self.graph.source}: {self._steps[k].node.where}"
        text = str(err)
        if isinstance(err, WeightpackError) and text.startswith(f"{self.graph.source}: "):  # located already (a fused chain's op)
            return err
        cls = type(err) if isinstance(err, WeightpackError) else WeightpackError
        return cls(f"{where}: {text if isinstance(err, WeightpackError) else f'{type(err).__name__}: {text}'}")

    def _checked_inputs(self, inputs) -> list:
        if not isinstance(inputs, Mapping):
            raise WeightpackError(f"inputs must be a dict of name -> array, got {describe(inputs)}")
        declared = self._declared
        missing = [name for name in declared if name not in inputs]
        if missing:
            raise WeightpackError(f"inputs lack {', '.join(map(repr, missing))}; the program takes {_signature(declared)}")
        extra = [name for name in inputs if name not in declared]
        if extra:
            raise WeightpackError(f"inputs {', '.join(map(repr, extra))} are not inputs of the program; it takes {_signature(declared)}")
        checked = []
        for name, vtype in declared.items():
            array = conformed(inputs[name], vtype, f"input {name!r}", "the program takes", lambda shape: self._check_flexible(name, shape))
            checked.append((self._ctx.slots[name], array.astype(runtime_dtype(vtype.dtype), copy=False)))
        return checked

    def _checked_state(self, state) -> list:
        """(slot, the state's own array) per state of the program, once ``state`` is checked."""
        if not self.graph.states:
            if state is not None:
                raise WeightpackError(f"state={describe(state)} was given, but the program has no states; call predict without state=")
            return []
        if state is None:
            raise WeightpackError(
                f"the program is stateful ({', '.join(f'{n}: {v.type}' for n, v in self._ctx.states.items())}): "
                "pass state=program.make_state() to predict"
            )
        if not isinstance(state, ProgramState):
            raise WeightpackError(f"state must be a ProgramState made by this program's make_state(), got {describe(state)}")
        if state._owner is not self._state_owner:
            raise WeightpackError(f"state {state!r} was made by another program; pass one made by this program's make_state()")
        return [(slot.slot, state._arrays[name]) for name, slot in self._ctx.states.items()]

    def _check_flexible(self, name: str, shape) -> None:
        """A flexible input's shape against the program's enumerated shapes or ranges."""
        flexible = self.graph.input_shapes.get(name)
        if flexible is None:
            return
        kind, allowed = flexible
        if kind == "enumerated" and tuple(shape) not in allowed:
            raise WeightpackError(f"input {name!r} has shape {tuple(shape)}; the program takes one of {allowed}")
        if kind == "range" and (
            len(shape) != len(allowed) or any(s < lo or (hi is not None and s > hi) for s, (lo, hi) in zip(shape, allowed))
        ):
            ranges = ", ".join(f"{lo}..{'' if hi is None else hi}" for lo, hi in allowed)
            raise WeightpackError(f"input {name!r} has shape {tuple(shape)}; the program takes dimensions in ({ranges})")

    def _output_dtype(self, name: str) -> str:
        if name in self._ctx.types:
            return self._ctx.types[name].dtype
        return self.graph.const_types.get(name, type_from_value(self.graph.constants[name])).dtype

    # ------------------------------------------------------------------ compiling

    def _compile(self, batch_size: int):
        ctx = _Context(self.graph, self._store, self.compute_precision, self._clock, batch_size)
        for var in self.graph.inputs:
            if var.name in ctx.types:
                raise FormatError(f"{self.graph.source}: input {var.name!r} is declared twice")
            ctx.types[var.name] = var.type
            ctx.slot_of(var.name)
        for var in self.graph.states:
            ctx.states[var.name] = _state_slot(var, ctx, self.graph.source)
        steps = []
        for node in self.graph.ops:
            builder = Builder(node, ctx)
            step = OPS[node.type](builder)
            for var in node.outputs:
                if var.name in ctx.types or var.name in self.graph.constants or var.name in ctx.states:
                    builder.fail(f"output {var.name!r} redefines an existing variable")
                ctx.types[var.name] = var.type
            steps.append(step)
        for name in self.graph.outputs:
            if name in ctx.types:
                continue
            if name in self.graph.constants:
                ctx.const_slots[name] = ctx.slot_of(name)
                continue
            if name in ctx.states:
                raise FormatError(f"{self.graph.source}: the program output {name!r} is a state; outputs are tensors (read_state reads a state)")
            raise FormatError(f"{self.graph.source}: the program output {name!r} is produced by no op")
        return steps, ctx

    def _make_template(self) -> list:
        template = [None] * len(self._ctx.slots)
        for name, slot in self._ctx.weight_slots.items():
            template[slot] = self._store.slots[name].dense
        for name, slot in self._ctx.const_slots.items():
            template[slot] = _runtime_const(dense_float32(self.graph.constants[name]))
        return template

    def _last_uses(self, plan) -> list:
        """Per step of ``plan``, the slots no later step reads (released to keep peak memory low)."""
        keep = {self._ctx.slots[name] for name in self.graph.outputs}
        last = {}
        for j, (_, _, reads) in enumerate(plan):
            for slot in reads:
                last[slot] = j
        frees = [[] for _ in plan]
        for slot, k in last.items():
            if slot not in keep:
                frees[k].append(slot)
        return [tuple(f) for f in frees]

    def _refresh_report(self) -> None:
        self.report.resident_weight_bytes = self._store.resident_bytes()
        self.report.scratch_bytes = int(self._store.scratch.nbytes)
        self.report.layer_modes = [u.mode for u in self._store.uses]
        self.report.fused_chains = [(chain.kind, chain.ops) for chain in self._fused]


def _output_array(value, dtype):
    """A new array of ``value`` in the output's declared dtype (float32 to float16 through the C
    conversion: :func:`.registry.store`)."""
    if dtype == np.float16 and isinstance(value, np.ndarray) and value.dtype == np.float32:
        out = np.empty(value.shape, np.float16)
        store(out, value)
        return out
    return np.array(value, dtype, copy=True)


def _read_only(array):
    """A view ``observe`` cannot write through (the program keeps using the array)."""
    if isinstance(array, np.ndarray) and array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array


def _weight_op(use) -> WeightOp:
    return WeightOp(use.op.name, use.op.type, use.slot.name, use.slot.value, use.param, use.role, use.transpose, use.matrix_side, use.mode)


def _signature(declared: dict) -> str:
    return ", ".join(f"{name}: {vtype}" for name, vtype in declared.items())


def _state_slot(var, ctx, source: str) -> StateSlot:
    """A state input registered in ``ctx``: a fixed shape and a dtype Core ML states hold."""
    if var.name in ctx.types or var.name in ctx.states:
        raise FormatError(f"{source}: input {var.name!r} is declared twice")
    if var.type.shape is None or None in var.type.shape:
        raise WeightpackError(f"{source}: state {var.name!r} has type {var.type}; a state needs a fixed shape")
    if var.type.dtype not in STATE_DTYPES:
        raise WeightpackError(f"{source}: state {var.name!r} has type {var.type}; states hold {', '.join(STATE_DTYPES)}")
    return StateSlot(var.name, ctx.slot_of(var.name), var.type)


def _refuse_uncovered(graph: Graph) -> None:
    covered = covered_ops()
    for node in graph.ops:
        if node.type not in OPS:
            raise WeightpackError(
                f"{graph.source}: {node.where}: op type {node.type!r} is not covered by weightpack's executor; "
                f"covered ops: {', '.join(covered)}"
            )
