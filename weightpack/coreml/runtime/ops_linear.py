"""Products: ``linear``, ``matmul`` (NumPy-style batch broadcasting, 1-D promotion, transposes)
and ``einsum``.

A constant weight goes through its :class:`~.weights.WeightUse`: fused weightpack product,
dense BLAS, or a scratch decompression, as the policy decided at load.
"""
from __future__ import annotations

import re

import numpy as np

from .registry import op
from .shapes import ShapeError, broadcast, product, same_dim

NUMBERS = ("fp16", "fp32", "int32")


def rows_hint(b, shape) -> int:
    """The batch rows a product will see, for the ``auto`` policy's timing (declared, else the
    program's batch size)."""
    rows = product(shape) if shape is not None else None
    return rows if rows else b.ctx.batch_size


@op("linear")
def linear(b):
    x = b.operand("x")
    b.expect(x, NUMBERS, "x")
    if x.rank == 0:
        b.fail(f"x must have rank 1 or more, got {x.type}")
    w_type = b.type_of("weight")
    if w_type.rank != 2:
        b.fail(f"weight must be a matrix (out, in), got {w_type}")
    out_features, in_features = w_type.shape
    if x.shape is not None and not same_dim(x.shape[-1], in_features):
        b.fail(f"x {x.type} has {x.shape[-1]} features; the weight {w_type} takes {in_features}")
    args = [x]
    bias, bias_is_zero = None, lambda: True
    if b.has("bias"):
        bias = b.operand("bias")
        if bias.shape is not None and tuple(bias.shape) != (out_features,):
            b.fail(f"bias {bias.type} must have shape ({out_features},)")
        args.append(bias)
        bias_is_zero = b.zero_test("bias") or (lambda: False)
    out = None if x.shape is None else tuple(x.shape[:-1]) + (out_features,)
    use = b.weight("weight", "linear", matrix_side=True, rows_hint=rows_hint(b, None if x.shape is None else x.shape[:-1]))
    if use is None:  # a weight computed by the program
        w = b.operand("weight")
        args.insert(1, w)

        def run_var(v, weight, *bias):
            y = np.matmul(v, weight.T)
            return y + bias[0] if bias else y

        return b.emit(run_var, args, [(out, x.type.dtype)])

    if bias is not None and bias.is_const:  # known at load: bound here, skipped when zero
        fixed = None if bias_is_zero() else bias.value

        def run_fixed(v):
            flat = v.reshape(-1, in_features)
            y = use.matmul_nt(flat if flat.flags.c_contiguous else np.ascontiguousarray(flat))
            if fixed is not None:
                y += fixed
            return y.reshape(v.shape[:-1] + (out_features,))

        return b.emit(run_fixed, [x], [(out, x.type.dtype)])

    def run(v, *bias):
        flat = v if v.ndim == 2 else v.reshape(-1, in_features)
        y = use.matmul_nt(flat if flat.flags.c_contiguous else np.ascontiguousarray(flat))
        if bias and not bias_is_zero():
            y += bias[0]
        return y if v.ndim == 2 else y.reshape(v.shape[:-1] + (out_features,))

    return b.emit(run, args, [(out, x.type.dtype)])


def matmul_shape(xs, ys, tx: bool, ty: bool):
    """The output shape of ``matmul`` (None where unknown)."""
    if xs is None or ys is None:
        return None
    xs, ys = list(xs), list(ys)
    if len(xs) == 0 or len(ys) == 0:
        raise ShapeError("matmul operands must have rank 1 or more")
    x_vec, y_vec = len(xs) == 1, len(ys) == 1
    if x_vec:
        xs = [1] + xs
    elif tx:
        xs[-1], xs[-2] = xs[-2], xs[-1]
    if y_vec:
        ys = ys + [1]
    elif ty:
        ys[-1], ys[-2] = ys[-2], ys[-1]
    if not same_dim(xs[-1], ys[-2]):
        raise ShapeError(f"inner dimensions {xs[-1]} and {ys[-2]} differ")
    out = list(broadcast(tuple(xs[:-2]), tuple(ys[:-2]))) + [xs[-2], ys[-1]]
    if x_vec:
        del out[-2]
    if y_vec:
        del out[-1]
    return tuple(out)


def _t(v, flag):
    return np.swapaxes(v, -1, -2) if flag and v.ndim >= 2 else v


@op("matmul")
def matmul(b):
    x, y = b.peek("x"), b.peek("y")
    b.expect(x, NUMBERS, "x")
    b.expect(y, NUMBERS, "y")
    tx, ty = b.bool_("transpose_x", False), b.bool_("transpose_y", False)
    out = b.infer(lambda: matmul_shape(x.shape, y.shape, tx, ty))
    dtype = x.type.dtype if not x.is_const or y.is_const else y.type.dtype
    if y.is_const and not x.is_const:
        use = b.weight("y", "matmul", transpose=ty, matrix_side=ty and y.rank == 2, rows_hint=rows_hint(b, (x.shape or (None,))[:-1]))
        if use.matrix_side:  # x @ y.T with y the (out, in) matrix: the linear-layer product
            n, k = y.shape

            def run_right(v):
                v = _t(v, tx)
                flat = np.ascontiguousarray(v.reshape(-1, k))
                return use.matmul_nt(flat).reshape(v.shape[:-1] + (n,))

            return b.emit(run_right, [b.operand("x")], [(out, dtype)])
        return b.emit(lambda v: _dense_product(b, _t(v, tx), _t(use.dense(), ty)), [b.operand("x")], [(out, dtype)])
    if x.is_const and not y.is_const:
        use = b.weight("x", "matmul", transpose=tx, matrix_side=not tx and x.rank == 2, rows_hint=rows_hint(b, (y.shape or (None,))[1:]))
        if use.matrix_side:  # W @ y = (y.T @ W.T).T with W the (out, in) matrix
            m, k = x.shape

            def run_left(v):
                if v.ndim == 1:
                    return use.matmul_nt(np.ascontiguousarray(v.reshape(1, k))).reshape(m)
                vt = np.swapaxes(v, -1, -2) if not ty else v  # (..., N, K)
                flat = np.ascontiguousarray(vt.reshape(-1, k))
                return np.swapaxes(use.matmul_nt(flat).reshape(vt.shape[:-1] + (m,)), -1, -2)

            return b.emit(run_left, [b.operand("y")], [(out, dtype)])
        return b.emit(lambda v: _dense_product(b, _t(use.dense(), tx), _t(v, ty)), [b.operand("y")], [(out, dtype)])
    return b.emit(lambda u, v: _dense_product(b, _t(u, tx), _t(v, ty)), [b.operand("x"), b.operand("y")], [(out, dtype)])


def _dense_product(b, u, v):
    import time

    t0 = time.perf_counter()
    y = np.matmul(u, v)
    b.clock.seconds += time.perf_counter() - t0
    return y


_EQUATION = re.compile(r"^([a-zA-Z.]*)(,[a-zA-Z.]*)*->([a-zA-Z.]*)$")


@op("einsum")
def einsum(b):
    values = b.operands("values")
    equation = b.str_("equation").replace(" ", "")
    if not _EQUATION.match(equation) or "." in equation:
        b.fail(f"equation {equation!r} must be explicit, like 'nchw,nwhu->nchu'")
    inputs, output = equation.split("->")
    terms = inputs.split(",")
    if len(terms) != len(values):
        b.fail(f"equation {equation!r} has {len(terms)} operands; the op has {len(values)}")
    sizes = {}
    for term, v in zip(terms, values):
        if v.shape is None or len(term) != len(v.shape):
            b.fail(f"operand {v.type} does not match the subscripts {term!r}")
        for letter, dim in zip(term, v.shape):
            if dim is not None and dim != 1:
                if sizes.get(letter) not in (None, dim):
                    b.fail(f"subscript {letter!r} has sizes {sizes[letter]} and {dim}")
                sizes[letter] = dim
            else:
                sizes.setdefault(letter, dim)
    if any(letter not in sizes for letter in output):
        b.fail(f"output subscripts {output!r} name a letter no operand has")
    out = tuple(sizes[letter] for letter in output)
    clock = b.clock

    def run(*vs):
        import time

        t0 = time.perf_counter()
        y = np.einsum(equation, *vs, optimize=True)
        clock.seconds += time.perf_counter() - t0
        return y

    return b.emit(run, values, [(out, values[0].type.dtype)])
