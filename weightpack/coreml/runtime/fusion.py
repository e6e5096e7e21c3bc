"""Chains of ops that ``Program.predict`` runs as one fused step, with bit-identical results.

At load, :func:`fuse` finds known chains among the compiled steps (consecutive ops, each
intermediate read only by the next op of the chain and not a program output). A fused step
computes exactly what the ops compute, operation by operation in float32 in numpy's order, only
without the interpreter's per-op work and numpy's per-call costs, which dominate at batch 1
(each numpy call after a weight product runs from cold caches). ``predict(observe=...)`` still
runs op by op, so every op's inputs can be observed. Fusion applies to ``compute_precision="fp32"``
only (``"fp16"`` rounds each op's output), but for the state chains, which only move values.

Chains:

- ``rmsnorm``: ``pow(x, 2) -> reduce_mean(last axis, keep_dims) -> add(eps) -> rsqrt(epsilon) ->
  mul(x, .) -> mul(., w)`` with a constant vector ``w`` over the last axis (C kernel
  ``csrc/rmsnorm.c``: numpy's pairwise summation, the same float32 roundings), with the residual
  ``add`` of two variables that makes ``x`` when nothing else reads ``x`` in between;
- ``rotary``: rotary position embeddings as converters write ``x * cos + rotate_half(x) * sin``:
  ``slice(x, [.., h:]) -> mul(., -1)``, ``slice(x, [.., :h])``, ``concat(last axis) -> mul(., sin)
  -> add(x or mul(x, cos), .)``, with constant ``sin`` / ``cos`` broadcasting into x: one C call
  (``csrc/rotary.c``) when they are vectors over the last axis (a decoding step), else a copy and
  three numpy calls writing into one buffer; the same float32 operations either way;
- ``silu_gate``: ``silu(g) -> mul(., u)`` with ``u`` of g's shape: numpy's ``exp(-g)``, then one C
  call for ``(g / (e + 1)) * u`` (``csrc/silu_gate.c``), run where the mul runs;
- ``attention``: ``scaled_dot_product_attention`` whose key and value come from ``moves`` chains
  that repeat each key/value head for a group of query heads (grouped-query attention): one C
  call on the unrepeated heads (``csrc/attention.c``; the same per-head arithmetic as on the
  repeated ones) when the problem is small (a decoding step), else the chains and the op;
- ``state_update``: ``read_state(S) -> slice_update(x=., update=u) -> write_state(S, .)`` (a KV
  cache taking its new positions): ``u`` assigned into the state's slice in place, where the ops
  convert the whole state to float32, copy it and convert it back (the other elements round-trip
  binary16 -> float32 -> binary16 unchanged, ``u`` is cast as numpy casts: the same bits), run
  where the write runs;
- ``state_slice``: ``read_state(S) -> slice_by_index(x=.)`` (the filled positions of a KV cache):
  only the slice converted to float32, where the slice runs. One read may feed several slices and
  one update (a cache stacking every layer: one layer's slice, the next layer's update), the
  slices before the write; no other op may touch ``S`` from the read to the last of them;
- ``moves``: a chain of data movements with a ``tile`` among them (``transpose``, ``reshape``,
  ``tile``, ``squeeze``, ``expand_dims``; the head repeats of grouped-query attention) on an input
  of static shape: one gather (``csrc/gather.c`` for float32) through the index map the chain
  computes, found at load by running the ops themselves on the element numbers (the ops need not be adjacent: the gather runs where
  the chain's last op runs).
"""
from __future__ import annotations

import time

import numpy as np

from ..._c import check, ffi, lib
from ...errors import WeightpackError
from .graph import Const, Ref, dtype_of
from .ops_tensor import assign_slice
from .registry import runtime_dtype

FLOATS = ("fp16", "fp32")
F32 = np.dtype(np.float32)


class Fused:
    """A fused chain: ``run(env)`` does what the steps ``members`` (indices, ascending) do, where
    the last of them runs; ``reads``: the environment slots it reads; ``kind``: the chain's name;
    ``ops``: its op names."""

    __slots__ = ("kind", "members", "run", "reads", "ops", "source")

    def __init__(self, kind, members, run, reads, ops, source=None):
        self.kind, self.members, self.run, self.reads, self.ops = kind, tuple(members), run, reads, ops
        self.source = source  # moves: (input slot, input shape, index map)

    @property
    def last(self) -> int:
        return self.members[-1]


def fuse(steps, ctx, outputs) -> list:
    """The fused chains among ``steps`` (compiled in ``ctx``), in program order; ``outputs``:
    the program's output names (never fused away). Under ``fp16`` precision only the state
    chains, which move values without computing (binary16 values stay the same bits)."""
    exact = ctx.precision == "fp32"
    patterns = (_rmsnorm, _rotary, _silu_gate, _moves) if exact else ()
    readers = {}
    for k, step in enumerate(steps):
        for binding in step.node.inputs.values():
            for b in binding if isinstance(binding, tuple) else (binding,):
                if isinstance(b, Ref):
                    readers.setdefault(b.name, set()).add(k)
    found, taken, outputs = [], set(), set(outputs)
    for k in range(len(steps)):
        if k in taken:
            continue
        chains = _state_chains(steps, k, ctx, readers, outputs, taken)
        if not chains:
            chain = next((c for c in (pattern(steps, k, ctx, readers, outputs, taken) for pattern in patterns) if c is not None), None)
            chains = [] if chain is None else [chain]
        for chain in chains:
            found.append(chain)
            taken.update(chain.members)
    if exact:
        found = _grouped_attention(found, steps, ctx, readers, outputs)
    return sorted(found, key=lambda chain: chain.last)


# ---------------------------------------------------------------------- matching helpers


def _ref(node, param):
    binding = node.inputs.get(param)
    return binding.name if isinstance(binding, Ref) else None


def _out(node):
    return node.outputs[0].name if len(node.outputs) == 1 else None


def _constant(ctx, node, param):
    """A parameter's constant value (not a weight), or None."""
    binding = node.inputs.get(param)
    if isinstance(binding, Const):
        return binding.value
    if isinstance(binding, Ref) and binding.name in ctx.constants and binding.name not in ctx.store.slots:
        return ctx.constants[binding.name]
    return None


def _float_scalar(value):
    """A float constant holding one number, as the float32 the ops compute with (a Python float
    holding it exactly), or None."""
    if not isinstance(value, (np.ndarray, np.generic)) or value.size != 1 or value.dtype.kind != "f":
        return None
    return float(np.float32(value.reshape(())))


def _other(node, name):
    """The parameter (``"x"`` or ``"y"``) of binary ``node`` not bound to the variable ``name``
    (None unless exactly one of them is)."""
    x, y = _ref(node, "x"), _ref(node, "y")
    if x == name and y != name:
        return "y"
    if y == name and x != name:
        return "x"
    return None


def _is_float(ctx, name) -> bool:
    t = ctx.types.get(name)
    return t is not None and t.dtype in FLOATS


# ---------------------------------------------------------------------- rmsnorm


def _rmsnorm(steps, k, ctx, readers, outputs, taken):
    if k + 6 > len(steps) or steps[k].node.type != "pow" or any(j in taken for j in range(k, k + 6)):
        return None
    nodes = [steps[k + i].node for i in range(6)]
    if [n.type for n in nodes] != ["pow", "reduce_mean", "add", "rsqrt", "mul", "mul"]:
        return None
    names = [_out(n) for n in nodes]
    if None in names or any(readers.get(names[i]) != {k + i + 1} or names[i] in outputs for i in range(5)):
        return None
    pow_, mean, add, rsqrt, mul_x, mul_w = nodes
    x = _ref(pow_, "x")
    xtype = ctx.types.get(x)
    if x is None or xtype is None or xtype.dtype not in FLOATS or not xtype.shape or xtype.shape[-1] is None:
        return None
    if not all(_is_float(ctx, name) for name in names):
        return None
    two = _float_scalar(_constant(ctx, pow_, "y"))
    if two != 2.0:
        return None
    n, rank = xtype.shape[-1], len(xtype.shape)
    axes = _constant(ctx, mean, "axes")
    keep = _constant(ctx, mean, "keep_dims")
    if _ref(mean, "x") != names[0] or axes is None or np.asarray(axes).reshape(-1).tolist() not in ([-1], [rank - 1]):
        return None
    if keep is None or not bool(np.asarray(keep).reshape(())):
        return None
    eps_param = _other(add, names[1])
    eps_add = _float_scalar(_constant(ctx, add, eps_param)) if eps_param else None
    if eps_add is None or _ref(rsqrt, "x") != names[2]:
        return None
    if "epsilon" in rsqrt.inputs:
        eps_rsqrt = _float_scalar(_constant(ctx, rsqrt, "epsilon"))
    else:  # the op's default, taken in x's declared dtype
        eps_rsqrt = float(np.float32(np.asarray(1e-12).astype(dtype_of(ctx.types[names[2]].dtype))))
    if eps_rsqrt is None or _other(mul_x, names[3]) is None or _ref(mul_x, _other(mul_x, names[3])) != x:
        return None
    w_param = _other(mul_w, names[4])
    if w_param is None:
        return None
    weight = _vector(ctx, mul_w, w_param, n, rank)
    if weight is None:
        return None
    x_slot, out_slot = ctx.slots[x], ctx.slots[_out(mul_w)]
    member_runs = [steps[k + i].run for i in range(6)]
    read_weight = weight if isinstance(weight, int) else None
    fixed = None if read_weight is not None else weight
    pointers = {}

    def pointer(array):
        cached = pointers.get("w")
        if cached is None or cached[0] is not array:
            cached = pointers["w"] = (array, ffi.from_buffer("float[]", array))
        return cached[1]

    # closure cells, not module globals: each op runs from cold caches after a weight product,
    # where every dictionary lookup is a cache miss
    empty, buf, kernel, f32, clock, now = np.empty, ffi.from_buffer, lib.wp_rmsnorm_f32, F32, ctx.clock, time.perf_counter

    def run(env):
        v = env[x_slot]
        w = fixed if read_weight is None else env[read_weight]
        if v.dtype != f32 or w.dtype != f32 or v.shape[-1] != n or w.size != n or v.size == 0:
            for member in member_runs:  # what numpy does with it, error included
                member(env)
            return
        if not v.flags.c_contiguous:
            v = np.ascontiguousarray(v)
        if not w.flags.c_contiguous:
            w = np.ascontiguousarray(w)
        y = empty(v.shape, f32)
        t0 = now()
        status = kernel(buf("float[]", v), v.size, v.size // n, n, eps_add, eps_rsqrt, pointer(w), w.size, buf("float[]", y, require_writable=True), y.size)
        clock.elementwise += now() - t0
        if status:
            check(status, "rmsnorm")
        env[out_slot] = y

    reads = (x_slot,) if read_weight is None else (x_slot, read_weight)
    members, names = tuple(range(k, k + 6)), tuple(node.name for node in nodes)
    residual = _residual_add(steps, k, ctx, readers, x, taken)
    if residual is None:
        return Fused("rmsnorm", members, run, reads, names)
    add_k, a_slot, b_slot = residual
    add_run, shape, add_kernel = steps[add_k].run, tuple(xtype.shape), lib.wp_add_rmsnorm_f32

    def run_with_add(env):
        a, b = env[a_slot], env[b_slot]
        w = fixed if read_weight is None else env[read_weight]
        if a.dtype != f32 or b.dtype != f32 or a.shape != shape or b.shape != shape or w.dtype != f32 or w.size != n or not w.flags.c_contiguous:
            add_run(env)  # what the ops do, error included
            run(env)
            return
        a = a if a.flags.c_contiguous else np.ascontiguousarray(a)
        b = b if b.flags.c_contiguous else np.ascontiguousarray(b)
        total, y = empty(shape, f32), empty(shape, f32)
        t0 = now()
        status = add_kernel(buf("float[]", a), buf("float[]", b), buf("float[]", total, require_writable=True), total.size, total.size // n, n,
                            eps_add, eps_rsqrt, pointer(w), w.size, buf("float[]", y, require_writable=True), y.size)  # fmt: skip
        clock.elementwise += now() - t0
        if status:
            check(status, "rmsnorm")
        env[x_slot], env[out_slot] = total, y

    reads = (a_slot, b_slot) + reads[1:]
    return Fused("rmsnorm", (add_k,) + members, run_with_add, reads, (steps[add_k].node.name,) + names)


def _residual_add(steps, k, ctx, readers, x, taken):
    """(step, slot a, slot b) of the ``add`` of two float variables of x's static shape that
    produces the norm's input ``x`` when nothing reads x before the norm (chain starting at step
    ``k``) is done: the add then runs inside the norm's step."""
    xtype = ctx.types.get(x)
    producer = next((j for j in range(k - 1, -1, -1) if _out(steps[j].node) == x), None)
    if producer is None or producer in taken or steps[producer].node.type != "add" or xtype.shape is None or None in xtype.shape:
        return None
    node = steps[producer].node
    a, b = _ref(node, "x"), _ref(node, "y")
    for name in (a, b):
        t = ctx.types.get(name)
        if name is None or t is None or t.dtype not in FLOATS or t.shape is None or tuple(t.shape) != tuple(xtype.shape) or name in ctx.weight_slots:
            return None
    if any(producer < j < k or j in (k + 1, k + 2, k + 3, k + 5) for j in readers.get(x, ())):
        return None
    return producer, ctx.slots[a], ctx.slots[b]


def _vector(ctx, node, param, n, rank):
    """RMSNorm's scale: the environment slot of a weight, or a float32 constant array, holding
    n values along the last axis; None if it is neither."""
    name = _ref(node, param)
    if name is not None and name in ctx.weight_slots:
        shape = ctx.store.slots[name].value.shape
        value_ok = len(shape) <= rank and int(np.prod(shape)) == n and (len(shape) == 0 or shape[-1] == n)
        return ctx.weight_slots[name] if value_ok and _is_float_const(ctx, name) else None
    value = _constant(ctx, node, param)
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.ndim > rank or value.size != n or value.shape[-1] != n:
        return None
    return np.ascontiguousarray(value, F32).reshape(-1)


def _is_float_const(ctx, name) -> bool:
    t = ctx.graph.const_types.get(name)
    return t is None or t.dtype in FLOATS


# ---------------------------------------------------------------------- moves

MOVES = ("transpose", "reshape", "tile", "squeeze", "expand_dims")
MAX_MAPPED = 1 << 24  # element numbers ride through the ops as float32: exact below 2**24


def _moves(steps, k, ctx, readers, outputs, taken):
    node = steps[k].node
    if node.type not in MOVES or not _only_x_varies(ctx, node):
        return None
    x = _ref(node, "x")
    xtype = ctx.types.get(x)
    if xtype is None or xtype.shape is None or None in xtype.shape or int(np.prod(xtype.shape)) >= MAX_MAPPED:
        return None
    members = [k]
    while True:
        out = _out(steps[members[-1]].node)
        following = readers.get(out, set())
        if out is None or out in outputs or len(following) != 1:
            break
        (j,) = following
        nxt = steps[j].node
        if j in taken or nxt.type not in MOVES or _ref(nxt, "x") != out or not _only_x_varies(ctx, nxt):
            break
        members.append(j)
    if len(members) < 2 or not any(steps[j].node.type == "tile" for j in members):
        return None
    x_slot, out_slot = ctx.slots[x], ctx.slots[_out(steps[members[-1]].node)]
    shape = tuple(xtype.shape)
    env = [None] * len(ctx.slots)
    env[x_slot] = np.arange(int(np.prod(shape)), dtype=F32).reshape(shape)
    try:
        for j in members:
            steps[j].run(env)
    except Exception:  # noqa: BLE001 - a chain the ops refuse at this shape stays unfused
        return None
    index = np.asarray(env[out_slot]).astype(np.int64)
    index_ptr = ffi.from_buffer("long long[]", index)
    member_runs = [steps[j].run for j in members]
    size, count, out_shape = int(np.prod(shape)), index.size, index.shape
    empty, buf, kernel, f32, clock, now = np.empty, ffi.from_buffer, lib.wp_gather_f32, F32, ctx.clock, time.perf_counter  # cells (see rmsnorm)

    def run(env):
        v = env[x_slot]
        if v.shape != shape:
            for member in member_runs:
                member(env)
            return
        if v.dtype != f32 or not v.flags.c_contiguous:
            env[out_slot] = np.take(v, index)
            return
        y = empty(out_shape, f32)
        t0 = now()
        status = kernel(buf("float[]", v), size, index_ptr, count, buf("float[]", y, require_writable=True))
        clock.elementwise += now() - t0
        if status:
            check(status, "moves")
        env[out_slot] = y

    return Fused("moves", members, run, (x_slot,), tuple(steps[j].node.name for j in members), (x_slot, shape, index))


def _only_x_varies(ctx, node) -> bool:
    """Whether every parameter of ``node`` but ``x`` is a constant."""
    return all(
        param == "x" or isinstance(b, Const) or (isinstance(b, Ref) and b.name in ctx.constants and b.name not in ctx.store.slots)
        for param, b in node.inputs.items()
    ) and isinstance(node.inputs.get("x"), Ref)


# ---------------------------------------------------------------------- rotary


def _rotary(steps, k, ctx, readers, outputs, taken):
    """Matched from its concat: ``concat([mul(slice_hi(x), -1), slice_lo(x)]) -> mul(sin) -> add``."""
    node = steps[k].node
    values = node.inputs.get("values")
    if node.type != "concat" or not isinstance(values, tuple) or len(values) != 2 or not all(isinstance(v, Ref) for v in values):
        return None
    producer = {_out(steps[j].node): j for j in range(k)}
    neg_k, lo_k = producer.get(values[0].name), producer.get(values[1].name)
    if neg_k is None or lo_k is None or steps[neg_k].node.type != "mul" or steps[lo_k].node.type != "slice_by_index":
        return None
    neg = steps[neg_k].node
    hi_param = next((p for p in ("x", "y") if _ref(neg, p) in producer), None)
    hi_k = producer.get(_ref(neg, hi_param)) if hi_param else None
    minus = _float_scalar(_constant(ctx, neg, "y" if hi_param == "x" else "x")) if hi_param else None
    if hi_k is None or minus != -1.0 or steps[hi_k].node.type != "slice_by_index":
        return None
    x = _ref(steps[hi_k].node, "x")
    xtype = ctx.types.get(x)
    if x is None or _ref(steps[lo_k].node, "x") != x or xtype is None or xtype.dtype not in FLOATS or not xtype.shape or None in xtype.shape:
        return None
    shape, width = tuple(xtype.shape), xtype.shape[-1]
    interleave = _constant(ctx, node, "interleave")
    if width % 2 or not _is_last_axis(ctx, node, len(shape)) or (interleave is not None and bool(np.asarray(interleave).reshape(-1)[0])):
        return None
    half = width // 2
    probe = np.arange(int(np.prod(shape)), dtype=F32).reshape(shape)
    if not (_slices_to(steps[hi_k], ctx, probe, probe[..., half:]) and _slices_to(steps[lo_k], ctx, probe, probe[..., :half])):
        return None
    chain = [hi_k, neg_k, lo_k, k]
    sin_k = _only_reader(readers, _out(node), outputs)
    if sin_k is None or steps[sin_k].node.type != "mul":
        return None
    sin = _broadcast_constant(ctx, steps[sin_k].node, _other(steps[sin_k].node, _out(node)), shape)
    add_k = _only_reader(readers, _out(steps[sin_k].node), outputs)
    if sin is None or add_k is None or steps[add_k].node.type != "add":
        return None
    add = steps[add_k].node
    base = _ref(add, _other(add, _out(steps[sin_k].node)) or "x")
    cos, cos_k = None, None
    if base != x:  # x * cos first
        cos_k = next((j for j in range(add_k) if _out(steps[j].node) == base), None)
        if cos_k is None or steps[cos_k].node.type != "mul" or readers.get(base) != {add_k} or base in outputs:
            return None
        cos = _broadcast_constant(ctx, steps[cos_k].node, _other(steps[cos_k].node, x), shape)
        if cos is None:
            return None
    for a, b_ in ((hi_k, neg_k), (neg_k, k), (lo_k, k)):
        if readers.get(_out(steps[a].node)) != {b_} or _out(steps[a].node) in outputs:
            return None
    members = sorted(chain + [sin_k, add_k] + ([cos_k] if cos_k is not None else []))
    if any(j in taken for j in members) or not _is_float(ctx, _out(add)):
        return None
    x_slot, out_slot = ctx.slots[x], ctx.slots[_out(add)]
    minus_one = np.float32(-1.0)
    member_runs = [steps[j].run for j in members]
    sin_slot, sin_value = sin
    cos_slot, cos_value = cos if cos is not None else (None, None)

    sin_vector = _as_vector(sin_value, width)
    cos_vector = _as_vector(cos_value, width)
    rows = int(np.prod(shape)) // width
    no_cos = ffi.NULL
    empty, buf, kernel, f32, clock, now = np.empty, ffi.from_buffer, lib.wp_rotary_f32, F32, ctx.clock, time.perf_counter  # cells (see rmsnorm)
    sin_ptr = None if sin_vector is None else buf("float[]", sin_vector)
    cos_ptr_fixed = None if cos_vector is None else buf("float[]", cos_vector)

    def run(env):
        v = env[x_slot]
        if v.shape != shape or v.dtype != f32:
            for member in member_runs:
                member(env)
            return
        s_ptr = sin_ptr if sin_slot is None else _vector_pointer(env[sin_slot], width)
        c_ptr = no_cos if cos_k is None else cos_ptr_fixed if cos_slot is None else _vector_pointer(env[cos_slot], width)
        if s_ptr is not None and c_ptr is not None:
            y = empty(shape, f32)
            v = v if v.flags.c_contiguous else np.ascontiguousarray(v)
            t0 = now()
            status = kernel(buf("float[]", v), v.size, rows, width, s_ptr, width, c_ptr, width, buf("float[]", y, require_writable=True), y.size)
            clock.elementwise += now() - t0
            if status:
                check(status, "rotary")
            env[out_slot] = y
            return
        rotated = np.empty(shape, F32)
        np.multiply(v[..., half:], minus_one, out=rotated[..., :half])
        rotated[..., half:] = v[..., :half]
        np.multiply(rotated, sin_value if sin_slot is None else env[sin_slot], out=rotated)
        if cos_k is not None:
            v = np.multiply(v, cos_value if cos_slot is None else env[cos_slot])
        env[out_slot] = np.add(v, rotated, out=rotated)

    reads = tuple(s for s in (x_slot, sin_slot, cos_slot) if s is not None)
    return Fused("rotary", members, run, reads, tuple(steps[j].node.name for j in members))


def _vector_pointer(value, width):
    """A cffi pointer to ``value`` as a float32 vector of ``width`` values (see :func:`_as_vector`),
    or None."""
    vector = _as_vector(value, width)
    return None if vector is None else ffi.from_buffer("float[]", vector)


def _as_vector(value, width):
    """``value`` as a contiguous float32 vector of ``width`` values when it is one along the last
    axis (every other dimension 1), else None."""
    if value is None or value.dtype != F32 or value.size != width or (value.ndim and value.shape[-1] != width):
        return None
    return np.ascontiguousarray(value).reshape(-1)


# ---------------------------------------------------------------------- silu gate


def _silu_gate(steps, k, ctx, readers, outputs, taken):
    node = steps[k].node
    if node.type != "silu" or not _is_float(ctx, _ref(node, "x")):
        return None
    mul_k = _only_reader(readers, _out(node), outputs)
    if mul_k is None or mul_k in taken or steps[mul_k].node.type != "mul":
        return None
    mul = steps[mul_k].node
    u_param = _other(mul, _out(node))
    u = _ref(mul, u_param) if u_param else None
    if u is None or u not in ctx.slots or ctx.slots[u] in ctx.weight_slots.values() or not _is_float(ctx, u) or not _is_float(ctx, _out(mul)):
        return None
    g_slot, u_slot, out_slot = ctx.slots[_ref(node, "x")], ctx.slots[u], ctx.slots[_out(mul)]
    member_runs = [steps[k].run, steps[mul_k].run]
    negative, exp, buf, kernel, f32, clock, now = np.negative, np.exp, ffi.from_buffer, lib.wp_silu_gate_f32, F32, ctx.clock, time.perf_counter  # cells (see rmsnorm)

    def run(env):
        g, v = env[g_slot], env[u_slot]
        if g.dtype != f32 or v.dtype != f32 or g.shape != v.shape or g.ndim == 0:
            for member in member_runs:
                member(env)
            return
        e = negative(g)
        exp(e, out=e)
        g = g if g.flags.c_contiguous else np.ascontiguousarray(g)
        v = v if v.flags.c_contiguous else np.ascontiguousarray(v)
        if not e.flags.c_contiguous:
            e = np.ascontiguousarray(e)
        out = buf("float[]", e, require_writable=True)
        t0 = now()
        status = kernel(buf("float[]", g), g.size, out, e.size, buf("float[]", v), v.size, out, e.size)
        clock.elementwise += now() - t0
        if status:
            check(status, "silu gate")
        env[out_slot] = e

    return Fused("silu_gate", (k, mul_k), run, (g_slot, u_slot), (node.name, mul.name))


# ---------------------------------------------------------------------- states (KV caches)


def _state_chains(steps, k, ctx, readers, outputs, taken) -> list:
    """The fused steps of a ``read_state`` (step ``k``) whose value only slice ops read (as their
    ``x``): each ``slice_by_index`` of it slices the state itself (``state_slice``), and at most
    one ``slice_update`` of it, whose result only a ``write_state`` of the same state reads, is
    assigned into the state in place (``state_update``). The slices must run before that write,
    and no other step may touch the state from the read to the last of them; else []."""
    node = steps[k].node
    if node.type != "read_state":
        return []
    state, value = _ref(node, "input"), _out(node)
    found = sorted(readers.get(value, ()))
    if not found or value in outputs or any(j in taken or not _slices(steps[j], value) for j in found):
        return []
    slices = [j for j in found if steps[j].node.type == "slice_by_index"]
    updates = [j for j in found if steps[j].node.type == "slice_update"]
    members, end = {k, *found}, found[-1]
    if len(updates) > 1:
        return []
    if updates:
        new = _out(steps[updates[0]].node)
        m = _only_reader(readers, new, outputs)
        if m is None or m in taken or m < end or steps[m].node.type != "write_state" or _ref(steps[m].node, "input") != state or _ref(steps[m].node, "data") != new:
            return []
        members.add(m)
        end = m
    if any(i not in members and any(_reads(b, state) for b in steps[i].node.inputs.values()) for i in range(k + 1, end)):
        return []
    chains = [_state_slice(steps, k, j, ctx, state) for j in slices]
    return chains + [_state_update(steps, k, updates[0], m, ctx, state)] if updates else chains


def _slices(step, value) -> bool:
    """Whether ``step`` is a slice op (of known slicing) reading ``value`` as its ``x`` only."""
    node = step.node
    return step.slicing is not None and _ref(node, "x") == value and not any(_reads(b, value) for p, b in node.inputs.items() if p != "x")


def _reads(binding, name) -> bool:
    return any(isinstance(b, Ref) and b.name == name for b in (binding if isinstance(binding, tuple) else (binding,)))


def _slot_reads(slicing) -> tuple:
    return tuple(o.slot for o in slicing.operands if o.slot is not None)


def _state_update(steps, k, j, m, ctx, state) -> Fused:
    """``read_state(S) -> slice_update(x=., update=u) -> write_state(S, .)``: ``u`` written into
    the state's slice in place (a KV cache's new positions), where the unfused ops convert the
    whole state to float32, copy it, and convert it back. The same bits: the other elements
    round-trip binary16 -> float32 -> binary16 unchanged, and ``u`` is cast as numpy casts."""
    slicing, where_text = steps[j].slicing, f"{ctx.source}: {steps[j].node.where}"
    state_slot, update = ctx.states[state].slot, slicing.update

    def run(env):
        u = env[update.slot] if update.slot is not None else update.value
        try:
            assign_slice(env[state_slot], slicing.where(env), np.asarray(u))
        except WeightpackError as err:  # located at the slice_update, not at the chain's last op
            raise WeightpackError(f"{where_text}: {err}") from None

    reads = (state_slot,) + ((update.slot,) if update.slot is not None else ()) + _slot_reads(slicing)
    return Fused("state_update", (k, j, m), run, reads, tuple(steps[i].node.name for i in (k, j, m)))


def _state_slice(steps, k, j, ctx, state) -> Fused:
    """``read_state(S) -> slice_by_index(x=.)``: only the slice converted to float32 (a KV cache's
    filled positions), where the unfused ops convert the whole state first. The same values."""
    slicing, state_slot = steps[j].slicing, ctx.states[state].slot
    out_slot, runtime = ctx.slots[_out(steps[j].node)], runtime_dtype(ctx.types[_out(steps[k].node)].dtype)

    def run(env):
        env[out_slot] = env[state_slot][slicing.where(env)].astype(runtime)

    reads = (state_slot,) + _slot_reads(slicing)
    return Fused("state_slice", (k, j), run, reads, (steps[k].node.name, steps[j].node.name))


def _only_reader(readers, name, outputs):
    following = readers.get(name, set())
    return next(iter(following)) if len(following) == 1 and name not in outputs else None


def _is_last_axis(ctx, node, rank) -> bool:
    axis = _constant(ctx, node, "axis")
    return axis is not None and np.asarray(axis).size == 1 and int(np.asarray(axis).reshape(())) in (-1, rank - 1)


def _slices_to(step, ctx, probe, expected) -> bool:
    """Whether the slice step, run on ``probe`` as its x, gives ``expected``."""
    env = [None] * len(ctx.slots)
    env[ctx.slots[_ref(step.node, "x")]] = probe
    try:
        step.run(env)
    except Exception:  # noqa: BLE001 - not this slice
        return False
    got = env[ctx.slots[_out(step.node)]]
    return got is not None and got.shape == expected.shape and np.array_equal(got, expected)


def _broadcast_constant(ctx, node, param, shape):
    """(weight slot, None) or (None, float32 array) of a float constant operand that broadcasts
    into ``shape`` without growing it; None otherwise."""
    if param is None:
        return None
    name = _ref(node, param)
    if name is not None and name in ctx.weight_slots:
        value, slot = ctx.store.slots[name].value, ctx.weight_slots[name]
    else:
        value, slot = _constant(ctx, node, param), None
    if value is None or not hasattr(value, "shape") or np.dtype(value.dtype).kind != "f":
        return None
    try:
        if np.broadcast_shapes(tuple(value.shape), shape) != shape:
            return None
    except ValueError:
        return None
    return (slot, None) if slot is not None else (None, np.asarray(value).astype(F32))


# ---------------------------------------------------------------------- grouped-query attention


def _grouped_attention(found, steps, ctx, readers, outputs):
    """``found`` with each sdpa whose key and value are head repeats (``moves`` chains read by
    it alone) and those two chains replaced by one ``attention`` chain."""
    from .ops_attention import small_attention  # the op's own C path, shared

    by_output = {_out(steps[chain.last].node): chain for chain in found if chain.kind == "moves"}
    replaced, added = set(), []
    for k, step in enumerate(steps):
        node = step.node
        if node.type != "scaled_dot_product_attention":
            continue
        q, key, value = (_ref(node, p) for p in ("query", "key", "value"))
        chains = [by_output.get(key), by_output.get(value)]
        qtype = ctx.types.get(q)
        if None in chains or chains[0] is chains[1] or qtype is None or qtype.shape is None or None in qtype.shape or len(qtype.shape) < 3:
            continue
        if any(readers.get(_out(steps[c.last].node)) != {k} for c in chains) or not _is_float(ctx, q):
            continue
        heads = [_head_groups(c.source, qtype.shape) for c in chains]
        if None in heads or heads[0][0] != heads[1][0]:
            continue
        group = heads[0][0]
        mask_slot, mask_value = None, None
        if "attn_mask" in node.inputs:
            mask_value = _constant(ctx, node, "attn_mask")
            name = _ref(node, "attn_mask")
            if mask_value is None and (name is None or name not in ctx.slots or name in ctx.weight_slots):
                continue
            mask_slot = ctx.slots[name] if mask_value is None else None
            if mask_value is not None:
                mask_value = np.asarray(mask_value)
                mask_value = mask_value.astype(F32) if mask_value.dtype.kind == "f" else mask_value
        q_slot, out_slot = ctx.slots[q], ctx.slots[_out(node)]
        scale = np.float32(1.0 / np.sqrt(qtype.shape[-1]))
        unrepeated = [_unrepeated(c.source[0], index) for c, (_, index) in zip(chains, heads)]
        fallback = (chains[0].run, chains[1].run, step.run)
        run = _attention_run(q_slot, unrepeated, mask_slot, mask_value, scale, group, out_slot, fallback, ctx.clock, small_attention)
        reads = tuple(x for x in (q_slot, chains[0].source[0], chains[1].source[0], mask_slot) if x is not None)
        added.append(Fused("attention", sorted(chains[0].members + chains[1].members + (k,)), run, reads, chains[0].ops + chains[1].ops + (node.name,)))
        replaced.update(id(c) for c in chains)
    return [chain for chain in found if id(chain) not in replaced] + added


def _attention_run(q_slot, unrepeated, mask_slot, mask_value, scale, group, out_slot, fallback, clock, small_attention):
    (read_k, k_slot), (read_v, v_slot) = unrepeated

    def run(env):
        mask = mask_value if mask_slot is None else env[mask_slot]
        key, value = read_k(env[k_slot]), read_v(env[v_slot])
        y = None if key is None or value is None else small_attention(env[q_slot], key, value, mask, scale, group, clock)
        if y is None:  # not small, or not float32: the repeats, then the op
            for member in fallback:
                member(env)
            return
        env[out_slot] = y

    return run


def _unrepeated(slot, index):
    """(read, slot): ``read(x)`` gives the unrepeated heads from the chain's input ``x`` (a
    reshape when they are its elements in order, else a gather), or None on an unexpected ``x``."""
    size = index.size
    if np.array_equal(index.reshape(-1), np.arange(size)):
        shape = index.shape

        def read(x):
            return x.reshape(shape) if x.size == size and x.dtype == F32 else None

        return read, slot
    flat = index.reshape(-1)
    top = int(flat.max()) if size else -1

    def gather(x):
        return np.take(x.reshape(-1), index) if x.dtype == F32 and x.size > top else None

    return gather, slot


def _head_groups(source, query_shape):
    """(g, index map of the unrepeated heads) when the moves chain ``source`` (input slot,
    shape, index map) repeats each of its heads g > 1 times in a row on the third axis from the
    end, giving the query's head count; else None."""
    _, _, index = source
    if index.ndim != len(query_shape) or index.shape[-3] != query_shape[-3]:
        return None
    heads = index.shape[-3]
    for group in range(heads, 1, -1):
        if heads % group:
            continue
        split = index.reshape(index.shape[:-3] + (heads // group, group) + index.shape[-2:])
        first = split[..., :1, :, :]
        if (split == first).all():
            return group, np.ascontiguousarray(first.reshape(index.shape[:-3] + (heads // group,) + index.shape[-2:]))
    return None
