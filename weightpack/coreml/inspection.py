"""How each weight of a model is stored, one row per weight: what ``weightpack inspect`` prints.

>>> import numpy as np, weightpack as wp
>>> describe(wp.palettize(np.linspace(-1, 1, 512, dtype=np.float16).reshape(16, 32), nbits=2, group_size=4))
'palettized 2-bit, fp16 LUTs: 4 along axis 0 (blocks of 4)'
>>> describe(wp.quantize(np.ones((8, 64), np.float16), "int4", granularity="per_block", block_size=32))
'quantized int4, fp16 scale per block 1x32'
"""
from __future__ import annotations

import numpy as np

from ..bits import NBitArray
from ..formats import (
    PalettizedTensor,
    QuantizedTensor,
    SparsePalettizedTensor,
    SparseQuantizedTensor,
    SparseTensor,
)
from ..formats.base import dtype_name


def describe(value) -> str:
    """A short description of how ``value`` (a weightpack tensor or numpy array) is stored."""
    if isinstance(value, SparseTensor):
        return f"sparse {_percent(value.sparsity)}, {_type_name(value.nonzero_data)} values"
    if isinstance(value, PalettizedTensor):
        return _palettized(value.nbits, value.lut, value.vector_axis, value.indices.shape)
    if isinstance(value, QuantizedTensor):
        return _quantized(value.data.dtype_name, value.scale, value.offset, value.block_shape)
    if isinstance(value, SparsePalettizedTensor):
        lut = _palettized(value.nbits, value.lut, value.vector_axis, value.indices_mask.shape)
        return f"sparse {_percent(value.sparsity)} + {lut}"
    if isinstance(value, SparseQuantizedTensor):
        return f"sparse {_percent(value.sparsity)} + {_quantized(value.nonzero_data.dtype_name, value.scale, value.offset, value.block_shape)}"
    if hasattr(value, "palettized"):  # ScaledLUTTensor
        return _scaled_lut(value)
    return f"dense {dtype_name(np.asarray(value).dtype)}"


def row(name: str, value, stored=None) -> dict:
    """One weight as a JSON-ready dict: name, shape, dtype, type, storage, bytes and ratio to fp16.

    ``stored`` (a :class:`~weightpack.coreml.mil_import.Weight`'s ``stored``) gives the bytes as
    the model holds them, where they differ from ``value``'s (a LUT computed from stored arrays).
    """
    shape = [int(d) for d in value.shape]
    size = int(np.prod(shape, dtype=np.int64))
    nbytes = int(value.nbytes) if not stored else sum(entry[-1] for entry in stored)
    storage = describe(value)
    return {
        "name": name,
        "shape": shape,
        "dtype": dtype_name(value.dtype),
        "type": type(value).__name__ if not isinstance(value, np.ndarray) else "dense",
        "storage": storage,
        "nbytes": nbytes,
        "fp16_nbytes": 2 * size,
        "ratio_to_fp16": round(nbytes / (2 * size), 4) if size else 0.0,
    }


def rows(model) -> list:
    """One :func:`row` per weight of ``model`` (an .mlpackage path or an MLModel)."""
    from .package import read_weights

    return [row(name, w.value, w.stored) for name, w in read_weights(model).items()]


def totals(rows: list) -> dict:
    """The sums of a list of rows."""
    nbytes = sum(r["nbytes"] for r in rows)
    fp16 = sum(r["fp16_nbytes"] for r in rows)
    params = sum(int(np.prod(r["shape"], dtype=np.int64)) for r in rows)
    return {"weights": len(rows), "parameters": params, "nbytes": nbytes, "fp16_nbytes": fp16,
            "ratio_to_fp16": round(nbytes / fp16, 4) if fp16 else 0.0}  # fmt: skip


def table(rows: list) -> str:
    """The rows as an ``ls -l``-style table (name last), then a totals line."""
    lines = [f"{'BYTES':>12}  {'RATIO':>6}  {'SHAPE':<16}  {'STORAGE':<52}  NAME"]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        lines.append(f"{r['nbytes']:>12,}  {r['ratio_to_fp16']:>6.3f}  {shape:<16}  {r['storage']:<52}  {r['name']}")
    t = totals(rows)
    summary = f"{t['weights']} weights, {t['parameters']:,} parameters (fp16: {t['fp16_nbytes']:,} bytes)"
    lines.append(f"{t['nbytes']:>12,}  {t['ratio_to_fp16']:>6.3f}  {'':<16}  {summary:<52}  total")
    return "\n".join(lines)


def _palettized(nbits: int, lut: np.ndarray, vector_axis, index_shape) -> str:
    groups = lut.shape[:-2]
    layout = [f"{g} along axis {a} (blocks of {index_shape[a] // g})" for a, g in enumerate(groups) if g > 1]
    text = f"palettized {nbits}-bit, {dtype_name(lut.dtype)} LUT"
    text += f"s: {', '.join(layout)}" if layout else ""
    if vector_axis is not None:
        text += f", vectors of {lut.shape[-1]} along axis {vector_axis}"
    return text


def _scaled_lut(value) -> str:
    text = describe(value.palettized)
    if value.lut_scale is not None:
        text = text.replace(" LUT", " (quantized) LUT", 1)
    if value.scale is not None:
        block = tuple(d // s for d, s in zip(value.shape, value.scale.shape))
        text += f", {dtype_name(value.scale.dtype)} scale {_layout(value.scale.shape, block)}"
    return text


def _layout(scale_shape, block) -> str:
    """'per tensor', 'per channel (axis a)' or 'per block AxB' for a scale of ``scale_shape``."""
    varying = [a for a, n in enumerate(scale_shape) if n > 1]
    if not varying:
        return "per tensor"
    if len(varying) == 1 and block[varying[0]] == 1 and all(scale_shape[a] == 1 for a in range(len(block)) if a != varying[0]):
        return f"per channel (axis {varying[0]})"
    return f"per block {'x'.join(map(str, block))}"


def _quantized(data_type: str, scale: np.ndarray, offset, block) -> str:
    text = f"quantized {data_type}, {dtype_name(scale.dtype)} scale {_layout(scale.shape, block)}"
    if offset is not None:
        text += f", {_type_name(offset)} offset"
    return text


def _type_name(array) -> str:
    return array.dtype_name if isinstance(array, NBitArray) else dtype_name(array.dtype)


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"
