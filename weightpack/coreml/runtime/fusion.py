"""Chains of ops that ``Program.predict`` runs as one fused step, with bit-identical results.

At load, :func:`fuse` finds known chains among the compiled steps (consecutive ops, each
intermediate read only by the next op of the chain and not a program output). A fused step
computes exactly what the ops compute, operation by operation in float32 in numpy's order, only
without the interpreter's per-op work and numpy's per-call costs, which dominate at batch 1
(each numpy call after a weight product runs from cold caches). ``predict(observe=...)`` still
runs op by op, so every op's inputs can be observed. Fusion applies to ``compute_precision="fp32"``
only (``"fp16"`` rounds each op's output).

Chains:

- ``rmsnorm``: ``pow(x, 2) -> reduce_mean(last axis, keep_dims) -> add(eps) -> rsqrt(epsilon) ->
  mul(x, .) -> mul(., w)`` with a constant vector ``w`` over the last axis (C kernel
  ``csrc/rmsnorm.c``: numpy's pairwise summation, the same float32 roundings).
"""
from __future__ import annotations

import numpy as np

from ..._c import check, ffi, lib
from .graph import Const, Ref, dtype_of

FLOATS = ("fp16", "fp32")
F32 = np.dtype(np.float32)


class Fused:
    """A fused chain: ``run(env)`` does what the steps ``first..last`` do; ``reads``: the
    environment slots it reads; ``kind``: the chain's name; ``ops``: its op names."""

    __slots__ = ("kind", "first", "last", "run", "reads", "ops")

    def __init__(self, kind, first, last, run, reads, ops):
        self.kind, self.first, self.last, self.run, self.reads, self.ops = kind, first, last, run, reads, ops


def fuse(steps, ctx, outputs) -> list:
    """The fused chains among ``steps`` (compiled in ``ctx``), in program order; ``outputs``:
    the program's output names (never fused away)."""
    if ctx.precision != "fp32":
        return []
    readers = {}
    for k, step in enumerate(steps):
        for binding in step.node.inputs.values():
            for b in binding if isinstance(binding, tuple) else (binding,):
                if isinstance(b, Ref):
                    readers.setdefault(b.name, set()).add(k)
    found, k = [], 0
    while k < len(steps):
        chain = _rmsnorm(steps, k, ctx, readers, set(outputs))
        if chain is not None:
            found.append(chain)
            k = chain.last + 1
        else:
            k += 1
    return found


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
    """The operand of binary ``node`` that is not the variable ``name``: (param, binding)."""
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


def _rmsnorm(steps, k, ctx, readers, outputs):
    if k + 6 > len(steps):
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

    def run(env):
        v = env[x_slot]
        w = fixed if read_weight is None else env[read_weight]
        if v.dtype != F32 or w.dtype != F32 or v.shape[-1] != n or w.size != n or v.size == 0:
            for member in member_runs:  # what numpy does with it, error included
                member(env)
            return
        if not v.flags.c_contiguous:
            v = np.ascontiguousarray(v)
        if not w.flags.c_contiguous:
            w = np.ascontiguousarray(w)
        y = np.empty(v.shape, F32)
        rows = v.size // n
        check(lib.wp_rmsnorm_f32(ffi.from_buffer("float[]", v), rows, n, eps_add, eps_rsqrt, pointer(w), n,
                                 ffi.from_buffer("float[]", y, require_writable=True), y.size), "rmsnorm")  # fmt: skip
        env[out_slot] = y

    reads = (x_slot,) if read_weight is None else (x_slot, read_weight)
    return Fused("rmsnorm", k, k + 5, run, reads, tuple(node.name for node in nodes))


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
