"""A palettized tensor with Core ML's float stages: an integer LUT's scale and an output scale.

Core ML (iOS 18) expresses both with ``constexpr_blockwise_shift_scale``, chained around the LUT op::

    lut     = constexpr_blockwise_shift_scale(data=lut_int8, scale=lut_scale, offset=lut_offset)  # int8/uint8 LUT
    dense   = constexpr_lut_to_dense(indices, lut)         # or lut_to_sparse + sparse_to_dense
    weight  = constexpr_blockwise_shift_scale(data=dense, scale=scale)                           # output scale

:class:`ScaledLUTTensor` holds exactly those arrays, Core ML-shaped: ``palettized`` (a
PalettizedTensor or SparsePalettizedTensor; its ``lut`` is the int8/uint8 data when ``lut_scale``
is given), ``lut_scale`` and ``lut_offset`` with the LUT's rank and dimensions dividing its shape (the
encoder writes ``[G0..G(K-1), 1, 1]``: one per LUT; coremltools' joint compression one per
tensor), and ``scale`` with the tensor's rank whose dimensions divide its shape, e.g.
``[1, C_in]`` for coremltools' ``enable_per_channel_scale`` on a linear weight (it is per *input*
channel) or ``[C_out, 1]`` per output channel. Decoding follows Core ML's reference arithmetic:
each shift-scale stage converts its data to the scale's dtype T, and rounds the difference and
the product to T.
"""
from __future__ import annotations

import numpy as np

from ..errors import WeightpackError
from ..formats import PalettizedTensor, QuantizedTensor, SparsePalettizedTensor
from ..formats.base import (
    BYTE_INT_DTYPES,
    FLOAT_DTYPES,
    CompressedTensor,
    check_block_shape,
    dtype_name,
    frozen_array,
    output_array,
)


class ScaledLUTTensor(CompressedTensor):
    """A palettized tensor whose LUT is integer with a scale (``lut_scale``), and/or whose output is
    multiplied by ``scale``.

    >>> lut = np.array([-127, -64, 64, 127], np.int8).reshape(1, 1, 4, 1)
    >>> p = PalettizedTensor(np.array([[0, 3], [1, 2]]), lut)
    >>> t = ScaledLUTTensor(p, lut_scale=np.full((1, 1, 1, 1), 0.5, np.float16),
    ...                     scale=np.array([[1.0, 0.25]], np.float16))
    >>> t.decompress().tolist(), t.nbytes
    ([[-63.5, 15.875], [-32.0, 8.0]], 11)
    """

    __slots__ = ("palettized", "lut_scale", "lut_offset", "scale")
    op = "constexpr_lut_to_dense"

    def __init__(self, palettized, *, lut_scale=None, lut_offset=None, scale=None):
        if not isinstance(palettized, (PalettizedTensor, SparsePalettizedTensor)):
            raise WeightpackError(
                f"palettized must be a PalettizedTensor or SparsePalettizedTensor, got {type(palettized).__name__}"
            )
        lut = palettized.lut
        if (lut.dtype in BYTE_INT_DTYPES) != (lut_scale is not None):
            raise WeightpackError(
                f"palettized has a {dtype_name(lut.dtype)} LUT and lut_scale is {'given' if lut_scale is not None else 'None'}; "
                "an int8/uint8 LUT needs lut_scale, a float LUT must not have one"
            )
        if lut_scale is None and lut_offset is not None:
            raise WeightpackError("lut_offset is given without lut_scale")
        if lut_scale is None and scale is None:
            raise WeightpackError("ScaledLUTTensor needs lut_scale, scale or both (otherwise use the PalettizedTensor)")
        if lut_scale is not None:  # blocks dividing the LUT array: validated as Core ML's shift-scale data
            lut_as_data = QuantizedTensor(lut, lut_scale, lut_offset)
            lut_scale, lut_offset = lut_as_data.scale, lut_as_data.offset
        if scale is not None:
            scale = frozen_array(scale, "scale", FLOAT_DTYPES)
            check_block_shape(palettized.shape, scale.shape, "scale")
            if lut_scale is not None and scale.dtype != lut_scale.dtype:
                raise WeightpackError(
                    f"scale has dtype {dtype_name(scale.dtype)} and lut_scale {dtype_name(lut_scale.dtype)}; they must match"
                )
        self._init(palettized=palettized, lut_scale=lut_scale, lut_offset=lut_offset, scale=scale)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.palettized.shape

    @property
    def dtype(self) -> np.dtype:
        if self.scale is not None:
            return self.scale.dtype
        return self.lut_scale.dtype

    @property
    def nbits(self) -> int:
        return self.palettized.nbits

    @property
    def ops(self) -> tuple[str, ...]:
        """The Core ML ops of the chain, in order."""
        ops = ("constexpr_blockwise_shift_scale",) if self.lut_scale is not None else ()
        if isinstance(self.palettized, SparsePalettizedTensor):
            ops += ("constexpr_lut_to_sparse", "constexpr_sparse_to_dense")
        else:
            ops += ("constexpr_lut_to_dense",)
        return ops + (("constexpr_blockwise_shift_scale",) if self.scale is not None else ())

    def float_lut(self) -> np.ndarray:
        """The LUT Core ML looks up: the integer LUT dequantized (or the float LUT as is)."""
        if self.lut_scale is None:
            return self.palettized.lut
        return QuantizedTensor(self.palettized.lut, self.lut_scale, self.lut_offset).decompress(backend="numpy")

    def unscaled(self):
        """The palettized part with the float LUT: what ``constexpr_lut_to_dense`` outputs."""
        return self.palettized if self.lut_scale is None else with_lut(self.palettized, self.float_lut())

    def _constructor_args(self) -> dict:
        return {"palettized": self.palettized, "lut_scale": self.lut_scale, "lut_offset": self.lut_offset, "scale": self.scale}

    def arrays(self) -> dict:
        return {**self.palettized.arrays(), "lut_scale": self.lut_scale, "lut_offset": self.lut_offset, "scale": self.scale}

    def _attrs(self) -> tuple:
        return self.palettized._attrs()

    def decompress(self, dtype=None, backend=None, out=None) -> np.ndarray:
        """The dense tensor of the chained Core ML ops, cast to ``dtype`` (natural, fp16 or fp32);
        ``out`` as for :meth:`CompressedTensor.decompress`.

        >>> lut = np.array([-2, 2], np.int8).reshape(1, 2, 1)
        >>> t = ScaledLUTTensor(PalettizedTensor(np.array([0, 1, 1]), lut), lut_scale=np.full((1, 1, 1), 0.5, np.float16))
        >>> buf = np.empty(3, np.float32)
        >>> t.decompress(out=buf) is buf, buf.tolist()
        (True, [-1.0, 1.0, 1.0])
        """
        out = output_array(self, dtype, out)
        dense = self.unscaled().decompress(backend=backend)
        if self.scale is not None:
            dense = _shift_scale(dense, self.scale)
        out[...] = dense
        return out

    def kernel_tensor(self):
        """A tensor with a product kernel that computes the same products, or None: the LUT
        dequantized (exactly as decoding does) when there is no output scale."""
        return self.derived("kernel_tensor", self.unscaled) if self.scale is None else None


def with_lut(p, lut):
    """``p`` (a PalettizedTensor or SparsePalettizedTensor) with its LUT replaced by ``lut``."""
    if isinstance(p, SparsePalettizedTensor):
        return SparsePalettizedTensor(p.indices_mask, p.indices_nonzero_data, lut, p.vector_axis)
    return PalettizedTensor(p.indices, lut, p.vector_axis)


def _shift_scale(data: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Core ML's float ``constexpr_blockwise_shift_scale``: data cast to the scale's dtype, times the
    scale of its block, rounded once (the float32 product of two float16 values is exact)."""
    grid = [n for d, s in zip(data.shape, scale.shape) for n in (s, d // s)]
    wide = np.float32 if scale.dtype == np.float16 else scale.dtype
    x = data.astype(scale.dtype).astype(wide).reshape(grid)
    s = scale.astype(wide).reshape([n for d in scale.shape for n in (d, 1)])
    return (x * s).astype(scale.dtype).reshape(data.shape)
