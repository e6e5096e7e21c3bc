"""Row plans: how the compiled kernels walk a compressed tensor as rows of a flat buffer.

A tensor's logical shape ``S`` (the indices' or data's shape) is walked as ``rows x cols`` with
``cols = S[-1]``. Every row knows the first table it uses (a LUT, or a block of scale/offset) and
where its first output element goes; along a row the table advances every ``col_block``
elements. For flat index ``e = r * cols + j``:

    table(e)  = row_table[r] + j // col_block
    out(e, v) = row_out[r] + j * col_stride + v * v_stride        (v < V, the LUT's vector size)

Adjacent axes are merged first wherever no table boundary lies inside them (and no vector LUT
expands them), so most tensors walk as one row or one row per channel.

>>> import numpy as np
>>> p = row_plan((4, 3, 3), (2, 1, 1))    # two contiguous halves: one row of two blocks
>>> p.rows, p.cols, p.row_table.tolist(), p.col_block
(1, 36, [0], 18)
>>> p = row_plan((4, 6), (2, 3))          # 2 x 3 tables of 2 x 2 elements
>>> p.rows, p.cols, p.row_table.tolist(), p.col_block
(4, 6, [0, 0, 3, 3], 2)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RowPlan:
    rows: int
    cols: int
    row_table: np.ndarray  # int64[rows]
    col_block: int
    row_out: np.ndarray  # int64[rows]
    col_stride: int
    v_stride: int
    n_tables: int
    out_size: int


def _merge_axes(shape, groups):
    """Merge axis i+1 into axis i wherever axis i+1 has a single group."""
    merged_s, merged_g = [shape[0]], [groups[0]]
    for s, g in zip(shape[1:], groups[1:]):
        if g == 1:
            merged_s[-1] *= s
        else:
            merged_s.append(s)
            merged_g.append(g)
    return merged_s, merged_g


def _broadcast_sum(shape, weights_per_axis) -> np.ndarray:
    """Flat array over ``shape`` of ``sum_i f_i(coordinate_i)`` (f_i given as arrays)."""
    total = np.zeros((1,) * len(shape), np.int64)
    for axis, values in enumerate(weights_per_axis):
        total = total + values.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    return np.broadcast_to(total, shape).reshape(-1)


def row_plan(shape, groups, vector_axis=None, vector_size: int = 1) -> RowPlan:
    """The row plan of a tensor of logical ``shape`` cut into ``groups`` tables per axis."""
    shape, groups = list(shape), list(groups)
    if vector_axis is None or vector_size == 1:
        shape, groups = _merge_axes(shape, groups)
        vector_axis, vector_size = None, 1
    if not shape or any(s == 0 for s in shape):
        return RowPlan(0, 0, np.zeros(0, np.int64), 1, np.zeros(0, np.int64), 1, 1, int(np.prod(groups)), 0)
    lead_s, lead_g = shape[:-1], groups[:-1]
    cols, col_block = shape[-1], shape[-1] // groups[-1]

    table_strides = np.cumprod([1] + groups[::-1])[::-1][1:]  # row-major strides of the table grid
    row_table = _broadcast_sum(
        lead_s, [np.arange(s) // (s // g) * st for s, g, st in zip(lead_s, lead_g, table_strides[:-1])]
    ) if lead_s else np.zeros(1, np.int64)

    out_shape = list(shape)
    if vector_axis is not None:
        out_shape[vector_axis] *= vector_size
    out_strides = np.cumprod([1] + out_shape[::-1])[::-1][1:]
    expand = [vector_size if a == vector_axis else 1 for a in range(len(shape))]
    row_out = _broadcast_sum(
        lead_s, [np.arange(s) * e * st for s, e, st in zip(lead_s, expand, out_strides[:-1])]
    ) if lead_s else np.zeros(1, np.int64)

    if vector_axis == len(shape) - 1:
        col_stride, v_stride = vector_size, 1
    elif vector_axis is not None:
        col_stride, v_stride = 1, int(out_strides[vector_axis])
    else:
        col_stride, v_stride = 1, 1
    return RowPlan(
        rows=int(np.prod(lead_s, dtype=np.int64)) if lead_s else 1,
        cols=cols,
        row_table=np.ascontiguousarray(row_table, np.int64),
        col_block=col_block,
        row_out=np.ascontiguousarray(row_out, np.int64),
        col_stride=col_stride,
        v_stride=v_stride,
        n_tables=int(np.prod(groups, dtype=np.int64)),
        out_size=int(np.prod(out_shape, dtype=np.int64)),
    )


@dataclass(frozen=True)
class MatrixPlan:
    """A tensor viewed as a ``rows x cols`` matrix (rows = first axis) for the fused products:
    element (r, j) uses table ``row_table[r] + j // col_block``."""

    rows: int
    cols: int
    row_table: np.ndarray  # int64[rows]
    col_block: int
    n_tables: int


def matrix_plan(shape, groups) -> MatrixPlan | None:
    """The matrix view of ``shape`` cut into ``groups``, or None when the tables of the trailing
    axes do not form contiguous runs of each matrix row.

    >>> p = matrix_plan((4, 8, 3), (2, 1, 1))
    >>> p.rows, p.cols, p.row_table.tolist(), p.col_block
    (4, 24, [0, 0, 1, 1], 24)
    """
    shape, groups = list(shape), list(groups)
    if len(shape) == 1:
        shape, groups = [1] + shape, [1] + groups
    rest_s, rest_g = _merge_axes(shape[1:], groups[1:])
    if len(rest_s) != 1:
        return None
    rows, cols, col_groups = shape[0], rest_s[0], rest_g[0]
    row_table = (np.arange(rows, dtype=np.int64) // max(rows // groups[0], 1)) * col_groups
    return MatrixPlan(rows, cols, row_table, max(cols // col_groups, 1), int(groups[0] * col_groups))


def row_starts(mask_bits: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Where each row's values start in the value stream of a packed ``rows x cols`` 1-bit mask,
    followed by the total count (int64[rows + 1]).

    >>> row_starts(np.packbits([1, 0, 1, 1, 0, 1], bitorder="little"), 2, 3).tolist()
    [0, 2, 4]
    """
    bits = np.unpackbits(mask_bits, bitorder="little", count=rows * cols)
    starts = np.zeros(rows + 1, np.int64)
    np.cumsum(bits.reshape(rows, cols).sum(axis=1, dtype=np.int64), out=starts[1:])
    return starts
