"""Helpers the compressor tests share: coremltools' own iOS 18 decompressors applied to an encoder's
arrays (the oracle for every option coremltools also has), and error measures."""
import numpy as np
from coremltools.converters.mil.mil.ops.defs.iOS18 import compression as ios18

from weightpack import (
    NBitArray,
    PalettizedTensor,
    QuantizedTensor,
    ScaledLUTTensor,
    SparsePalettizedTensor,
    SparseQuantizedTensor,
    SparseTensor,
)


def raw(a):
    """A stored array as coremltools' loader hands it to the ops (sub-byte values unpacked)."""
    return a.values() if isinstance(a, NBitArray) else a


def coreml_decompress(t) -> np.ndarray:
    """What coremltools' reference decompressors compute from ``t``'s arrays (chains for ScaledLUTTensor)."""
    if isinstance(t, ScaledLUTTensor):
        lut = t.palettized.lut
        if t.lut_scale is not None:
            lut = ios18.constexpr_blockwise_shift_scale.decompress(lut, t.lut_scale, raw(t.lut_offset))
        p = t.palettized
        inner = (SparsePalettizedTensor(p.indices_mask, p.indices_nonzero_data, lut, p.vector_axis)
                 if isinstance(p, SparsePalettizedTensor) else PalettizedTensor(p.indices, lut, p.vector_axis))
        dense = coreml_decompress(inner)
        if t.scale is not None:
            dense = ios18.constexpr_blockwise_shift_scale.decompress(dense, t.scale, None)
        return dense
    if isinstance(t, PalettizedTensor):
        return ios18.constexpr_lut_to_dense.decompress(raw(t.indices), t.lut, t.vector_axis)
    if isinstance(t, SparsePalettizedTensor):
        mask, nz = ios18.constexpr_lut_to_sparse.decompress(raw(t.indices_mask), raw(t.indices_nonzero_data), t.lut, t.vector_axis)
        return ios18.constexpr_sparse_to_dense.decompress(nz, mask)
    if isinstance(t, QuantizedTensor):
        return ios18.constexpr_blockwise_shift_scale.decompress(raw(t.data), t.scale, raw(t.offset))
    if isinstance(t, SparseQuantizedTensor):
        mask, nz = ios18.constexpr_sparse_blockwise_shift_scale.decompress(raw(t.data_mask), raw(t.nonzero_data), t.scale, raw(t.offset))
        return ios18.constexpr_sparse_to_dense.decompress(nz, mask)
    if isinstance(t, SparseTensor):
        return ios18.constexpr_sparse_to_dense.decompress(raw(t.nonzero_data), raw(t.mask))
    raise TypeError(type(t))


def assert_matches_coreml(t, backend="numpy"):
    """``t.decompress()`` equals coremltools' decompression of the same arrays, bit for bit."""
    ours = t.decompress(backend=backend)
    theirs = np.ascontiguousarray(coreml_decompress(t))
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(np.ascontiguousarray(ours).view(np.uint8), theirs.view(np.uint8))


def sse(reference, approximation, weights=None) -> float:
    d = np.asarray(reference, np.float64) - np.asarray(approximation, np.float64)
    return float(np.sum(d * d if weights is None else weights * d * d))


def student_rows(shape, seed, dtype=np.float16):
    """Heavy-tailed weights with a spread of row scales (the benchmark's distribution, smaller)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_t(4, size=shape) * 0.02 * np.exp(rng.normal(0, 0.35, size=(shape[0],) + (1,) * (len(shape) - 1)))
    return w.astype(dtype)
