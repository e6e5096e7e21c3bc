"""A palettized tensor followed by a per-output-channel scale.

Core ML (iOS 18) expresses it as two chained ops, the chain coremltools' own
``palettize_weights(..., enable_per_channel_scale=True)`` writes (coremltools takes the max over
the output axis, so its scale is ``[1, C_in, ...]``; here it is one per output channel, i.e. per
row of the weight matrix, in the same op)::

    lut_out = constexpr_lut_to_dense(indices, lut)                   # PalettizedTensor
    weight  = constexpr_blockwise_shift_scale(data=lut_out, scale)  # scale [C_out, 1, ...], no offset

so a :class:`ScaledPalettizedTensor` exports as its ``palettized`` part plus one
``constexpr_blockwise_shift_scale`` whose ``data`` is that op's output (float data is allowed
there: SrcT includes fp16/fp32). Decoding follows Core ML's shift-scale arithmetic in the
scale's dtype T: ``out = T(scale[c] * lut_value)``, each product correctly rounded.
"""
from __future__ import annotations

import numpy as np

from ..bits import owned
from ..errors import WeightpackError, describe
from ..formats import PalettizedTensor
from ..formats.base import FLOAT_DTYPES, dtype_name, frozen_array


class ScaledPalettizedTensor:
    """``palettized`` (a PalettizedTensor) times ``scale``, one value per slice along axis 0.

    >>> lut = np.array([-1, -0.5, 0.5, 1], np.float16).reshape(1, 1, 4, 1)
    >>> p = PalettizedTensor(np.array([[0, 3], [1, 2]]), lut)
    >>> t = ScaledPalettizedTensor(p, np.array([[2.0], [0.25]], np.float16))
    >>> t.decompress().tolist(), t.nbytes
    ([[-2.0, 2.0], [-0.125, 0.125]], 13)
    """

    __slots__ = ("palettized", "scale")
    ops = ("constexpr_lut_to_dense", "constexpr_blockwise_shift_scale")

    def __init__(self, palettized, scale):
        if not isinstance(palettized, PalettizedTensor):
            raise WeightpackError(f"palettized must be a PalettizedTensor, got {type(palettized).__name__}")
        if palettized.dtype not in FLOAT_DTYPES:
            raise WeightpackError(f"palettized has a {dtype_name(palettized.dtype)} LUT; allowed: fp16, fp32")
        scale = frozen_array(scale, "scale", (palettized.dtype,))
        want = (palettized.shape[0],) + (1,) * (palettized.ndim - 1)
        if scale.shape != want:
            raise WeightpackError(f"scale has shape {scale.shape}; it must be {want} (one value per output channel)")
        object.__setattr__(self, "palettized", palettized)
        object.__setattr__(self, "scale", scale)

    def __setattr__(self, name, value):
        raise AttributeError(f"ScaledPalettizedTensor is immutable; cannot set {name!r}")

    def __reduce_ex__(self, protocol):
        """Pickling: as the compressed tensors (the scale travels out of band with protocol 5)."""
        return _unpickle, (self.palettized, self.scale)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.palettized.shape

    @property
    def ndim(self) -> int:
        return self.palettized.ndim

    @property
    def size(self) -> int:
        return self.palettized.size

    @property
    def dtype(self) -> np.dtype:
        return self.scale.dtype

    @property
    def nbits(self) -> int:
        return self.palettized.nbits

    @property
    def nbytes(self) -> int:
        """Stored bytes: indices, LUTs and the scales."""
        return self.palettized.nbytes + int(self.scale.nbytes)

    def decompress(self, dtype=None, backend=None) -> np.ndarray:
        """The dense tensor of the two chained Core ML ops, cast to ``dtype`` (natural, fp16 or fp32)."""
        if dtype is not None:
            try:
                ok = np.dtype(dtype) in FLOAT_DTYPES
            except TypeError:
                ok = False
            if not ok:
                raise WeightpackError(f"dtype={describe(dtype)} is not available; allowed: fp16, fp32")
        out = self.palettized.decompress(backend=backend) * self.scale
        return out if dtype is None else out.astype(dtype)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self.palettized == other.palettized and self.scale.tobytes() == other.scale.tobytes()

    __hash__ = None

    def __repr__(self):
        return f"ScaledPalettizedTensor({self.palettized!r}, scale={dtype_name(self.dtype)}{list(self.scale.shape)})"


def _unpickle(palettized, scale):
    return ScaledPalettizedTensor(palettized, owned(scale))
