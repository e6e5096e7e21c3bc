"""Palettization: each weight (or each short vector of weights) becomes an n-bit index into a LUT.

Rules (normative; SPEC.md §9.2 states them too):

- Groups: one LUT per tensor, or (``group_size=g``) one per run of g consecutive slices along
  ``axis``; the LUT has shape ``[1.., G, 1.., 2**n, V]`` with ``G = S[axis] / g`` on ``axis``.
- ``mode="kmeans"``: the LUT holds optimal k-means centroids (least sum of ``importance * error**2``,
  importance 1 by default), each the float64 mean of its cluster rounded once to the LUT dtype,
  ascending. float16 weights are solved exactly (DP on the histogram of their bit patterns, +0 and
  -0 merged); float32 groups of at most 8,192 elements exactly on their sorted distinct values;
  larger float32 groups by the same DP on bins of binary16 precision (exact when no bin holds two
  values), then Lloyd passes on the raw values until moving the centroids gains less than 1e-7 of
  the error (at most 12): measured 1e-7 above the optimum at 4 and 16 entries, 2e-6 at 64, 2e-5 at
  256. See :mod:`.lut1d`.
- ``mode="uniform"``: ``lut[i] = lo + i * (hi - lo) / (2**n - 1)`` in float64 (lo, hi: the group's
  minimum and maximum), rounded to the LUT dtype.
- ``mode="unique"``: the LUT is the sorted distinct values (+0 and -0 are one value) and ``nbits``
  the smallest of 1, 2, 3, 4, 6, 8 that holds every group's; more than 256 is an error.
- ``mode="custom"``: ``lut_function(values)`` gets each group's values (a read-only array of the
  group's shape) and returns ``(lut, indices)``: ``lut`` of K <= 256 entries (``[K]``, or ``[K, V]``
  with ``cluster_dim=V``), ``indices`` in ``[0, K)`` of the group's index shape. ``nbits`` is the
  smallest supported width for the largest K; shorter LUTs repeat their last entry.
- Vectors (``cluster_dim=V > 1``): V consecutive elements along ``axis`` form one vector (Core ML's
  ``vector_axis``); k-means++ and Lloyd (:mod:`.vector_kmeans`), seeded by ``seed``.
- With fewer distinct values than entries, the unused entries repeat the largest centroid.
- Indices: every element (vector) takes the nearest entry of the *stored* LUT (after rounding to
  its dtype, or dequantizing an int8 LUT), ties to the lower index; custom mode keeps the
  function's indices. Distances are float64 (weighted by importance for vectors).
- ``lut_dtype``: the weights' dtype by default; ``"fp16"``/``"fp32"``; ``"int8"`` (symmetric,
  [-127, 127], no offset) or ``"uint8"`` ([0, 254], offset 127) with one scale per LUT
  (``max |entry| / 127`` rounded to the weights' dtype): a :class:`.ScaledLUTTensor` whose
  ``lut_scale`` Core ML applies with ``constexpr_blockwise_shift_scale`` before the lookup.
- ``per_channel_scale=True`` (coremltools' ``enable_per_channel_scale``): ``s = max |w|`` over
  ``axis`` (so ``[1, C_in]`` for a linear weight: per *input* channel), 1 where that is 0; the
  weights are divided by s (in float32, rounded to their dtype; the caller's array is untouched),
  palettized with importance multiplied by ``s**2`` (the error of ``s * lut``), and s is the
  ``scale`` of a :class:`.ScaledLUTTensor`. The LUT keeps its size. With ``scale_axis=a`` the
  scale is one per slice along axis a instead (``max |w|`` over every other axis; shape ``S[a]``
  on a, 1 elsewhere), independent of the LUT grouping: ``scale_axis=0`` with ``group_size=16``
  gives a scale per output row and a LUT per 16 rows.
- A SparseTensor input palettizes its nonzeros: groups and vectors lie over the dense shape, the
  pruned zeros take no part in the fit; a vector is stored if any of its elements is.

coremltools differs: its kmeans mode is exact only for float16 groups of at least 10,000 weights
(scikit-learn's Lloyd otherwise), keeps the DP's cluster ids instead of the nearest stored entry,
fills unused entries with 0, and its per-channel scale rescales the caller's array in place and
(below iOS 26) repeats the LUT once per input channel.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..bits import SUPPORTED_NBITS, check_nbits
from ..errors import WeightpackError, describe
from ..formats import PalettizedTensor, QuantizedTensor, SparsePalettizedTensor, SparseTensor
from ._common import (
    check_axis,
    check_bool,
    check_choice,
    dtype_name_of,
    float_weights,
    fp16_order,
    fp16_values,
    importance_array,
    positive_int,
    sparse_values,
)

MODES = ("kmeans", "uniform", "unique", "custom")
LUT_DTYPES = {"fp16": "float16", "float16": "float16", "fp32": "float32", "float32": "float32", "int8": "int8", "uint8": "uint8"}
MAX_UNIQUE = 256

_fp16_values = fp16_values  # kept for weightpack.calibration
_fp16_order = fp16_order


def palettize(w, nbits=None, *, mode="kmeans", group_size=None, axis=0, cluster_dim=1, lut_dtype=None,
              per_channel_scale=False, scale_axis=None, importance=None, lut_function=None, seed=0):
    """Replace the weights by n-bit indices into LUTs (one per tensor or per group of channels).

    ``w``: float16/float32 array (float64 is cast to float32) or a SparseTensor (its nonzeros are
    palettized). ``nbits``: 1, 2, 3, 4, 6 or 8 (default 4) for ``mode`` "kmeans" or "uniform";
    chosen by the data for "unique" and "custom". ``group_size``/``axis``: one LUT per
    ``group_size`` slices along ``axis`` (also the axis of the per-channel scale's reduction and of
    vectors). ``cluster_dim``: vector length. ``lut_dtype``: None (the weights' dtype), "fp16",
    "fp32", "int8", "uint8". ``scale_axis``: with ``per_channel_scale``, one scale per slice along
    this axis (default: coremltools' scale, constant along ``axis``). ``importance``: per-element
    weights of the k-means objective (the
    weights' shape, or 1 on some axes). ``lut_function``: for mode "custom". ``seed``: for vectors.

    Returns a PalettizedTensor (SparsePalettizedTensor for sparse input), or a ScaledLUTTensor
    around it for an int8/uint8 LUT or a per-channel scale. Rules: the module docstring.

    >>> import numpy as np
    >>> w = np.array([[0.0, 0.1, 0.2, 0.3], [1.0, 1.1, 1.2, 1.3]], np.float32)
    >>> p = palettize(w, nbits=1)
    >>> p.lut.ravel().tolist(), p.indices.values().tolist()
    ([0.15000000596046448, 1.149999976158142], [[0, 0, 0, 0], [1, 1, 1, 1]])
    >>> palettize(w, nbits=2, group_size=1).lut.shape
    (2, 1, 4, 1)
    >>> palettize(w, mode="unique").nbits, palettize(w, nbits=2, cluster_dim=2).lut.shape
    (3, (1, 1, 4, 2))
    >>> t = palettize(w, nbits=1, group_size=2, per_channel_scale=True, scale_axis=0)
    >>> t.scale.ravel().tolist(), t.palettized.lut.shape
    ([0.30000001192092896, 1.2999999523162842], (1, 1, 2, 1))
    """
    mode = check_choice(mode, "mode", MODES)
    if mode in ("kmeans", "uniform"):
        nbits = 4 if nbits is None else check_nbits(nbits)
    elif nbits is not None:
        raise WeightpackError(f"nbits={describe(nbits)} must be None with mode={mode!r}: the data decide it")
    if (mode == "custom") != (lut_function is not None):
        raise WeightpackError(
            f"lut_function={describe(lut_function)}: it is required with mode='custom' and only allowed there"
        )
    if mode == "custom" and not callable(lut_function):
        raise WeightpackError(f"lut_function={describe(lut_function)} must be callable: values -> (lut, indices)")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise WeightpackError(f"seed={describe(seed)} must be a non-negative integer")
    job = Job.create(w, mode=mode, group_size=group_size, axis=axis, cluster_dim=cluster_dim, lut_dtype=lut_dtype,
                     per_channel_scale=per_channel_scale, scale_axis=scale_axis, importance=importance)
    if job.V > 1:
        luts, codes = _vector(job, nbits, lut_function, int(seed))
    elif mode == "custom":
        luts, codes = _custom(job, lut_function)
    else:
        luts, codes = _scalar(job, nbits)
    return job.build(luts, codes)


@dataclasses.dataclass
class Job:
    """A validated palettization problem: what :func:`palettize` and the RD curve share."""

    dense: np.ndarray  # the values to palettize (divided by the per-channel scale), float16/float32
    mask: object  # the SparseTensor's mask (NBitArray) or None
    nonzeros: int  # how many values the SparseTensor stores (0 for dense input)
    mode: str
    axis: int
    groups: int
    V: int
    importance: np.ndarray | None  # float32, the dense shape
    scale: np.ndarray | None  # per-channel scale, the weights' dtype, dimensions 1 or the weights'
    lut_float: np.dtype  # dtype of the float LUT (before int8 quantization)
    lut_int: str | None  # "int8", "uint8" or None

    @classmethod
    def create(cls, w, *, mode="kmeans", group_size=None, axis=0, cluster_dim=1, lut_dtype=None,
               per_channel_scale=False, scale_axis=None, importance=None) -> "Job":
        mode = check_choice(mode, "mode", MODES)
        mask, nonzeros = None, 0
        if isinstance(w, SparseTensor):
            nonzeros = sparse_values(w).shape[0]
            mask = w.mask
            dense = w.decompress()
        else:
            dense = float_weights(w)
        axis = check_axis(axis, dense.ndim)
        V = positive_int(cluster_dim, "cluster_dim")
        groups = 1
        if group_size is not None:
            group_size = positive_int(group_size, "group_size")
            if dense.shape[axis] % group_size:
                raise WeightpackError(
                    f"group_size={group_size} does not divide w.shape[{axis}]={dense.shape[axis]} (w has shape "
                    f"{dense.shape}); allowed: a divisor of {dense.shape[axis]}"
                )
            groups = dense.shape[axis] // group_size
        span = dense.shape[axis] // groups
        if V > 1:
            if mode in ("uniform", "unique"):
                raise WeightpackError(f"cluster_dim={V} is not supported with mode={mode!r}; allowed: 'kmeans', 'custom'")
            if span % V:
                where = f"group_size={group_size}" if group_size is not None else f"w.shape[{axis}]={dense.shape[axis]}"
                raise WeightpackError(f"cluster_dim={V} does not divide {where}; vectors must not straddle a group")
        lut_float, lut_int = _lut_dtypes(lut_dtype, dense.dtype)
        if importance is not None:
            if mode != "kmeans":
                raise WeightpackError(f"importance is only used by mode='kmeans', not mode={mode!r}")
            importance = importance_array(importance, dense.shape)
        scale = None
        if check_bool(per_channel_scale, "per_channel_scale"):
            if scale_axis is None:
                scale, dense = _per_channel_scale(dense, (axis,))
            else:
                kept = check_axis(scale_axis, dense.ndim, "scale_axis")
                scale, dense = _per_channel_scale(dense, tuple(a for a in range(dense.ndim) if a != kept))
            if scale.shape[axis] > 1:  # the scale varies inside the LUT groups: it weighs each element
                weight = np.square(scale.astype(np.float32))
                importance = weight if importance is None else importance * weight
                importance = importance_array(importance, dense.shape)
        elif scale_axis is not None:
            raise WeightpackError(f"scale_axis={describe(scale_axis)} needs per_channel_scale=True")
        return cls(dense, mask, nonzeros, mode, axis, groups, V, importance, scale, lut_float, lut_int)

    @property
    def sparse(self) -> bool:
        return self.mask is not None

    @property
    def scale_in_importance(self) -> bool:
        """Whether the scale varies along ``axis`` and so its square is part of ``importance``."""
        return self.scale is not None and self.scale.shape[self.axis] > 1

    def layout(self):
        """(x3, imp3, sw, inner): the (outer, G, L) views :mod:`.lut1d` works on."""
        from . import lut1d

        shape = self.dense.shape
        grouped = self.groups > 1 or self.scale is not None
        axis = self.axis if grouped else 0
        outer = int(np.prod(shape[:axis], dtype=np.int64))
        inner = int(np.prod(shape[axis + 1:], dtype=np.int64)) if grouped else 1
        view = (outer, self.groups, -1)
        x = self.dense.view(np.uint16) if self.dense.dtype == np.float16 else self.dense
        imp3 = lut1d.NO_IMP if self.importance is None else self.importance.reshape(view)
        sw = lut1d.NO_SW
        if self.scale is not None and not self.scale_in_importance:
            across = [1 if a == self.axis else d for a, d in enumerate(shape)]
            sw = np.square(np.broadcast_to(self.scale, across).astype(np.float64)).reshape(-1)
        return x.reshape(view), imp3, sw, inner

    def lut_shape(self, entries: int, V: int) -> tuple[int, ...]:
        return tuple(self.groups if a == self.axis else 1 for a in range(self.dense.ndim)) + (entries, V)

    def store(self, luts: np.ndarray):
        """(stored LUT array, its float values for the nearest-entry search, lut_scale, lut_offset)
        from float64 centroids ``luts`` [G, K, V]."""
        stored = luts.astype(self.lut_float)
        if not np.isfinite(stored).all():
            raise WeightpackError(f"a LUT entry is beyond the range of lut_dtype {self.lut_float.name}")
        stored = stored.reshape(self.lut_shape(*luts.shape[1:]))
        if self.lut_int is None:
            return stored, stored.astype(np.float64).reshape(luts.shape), None, None
        from .quantization import quantize_blocks

        block = (1,) * self.dense.ndim + stored.shape[-2:]
        q, scale, offset = quantize_blocks(stored.astype(self.dense.dtype), block, 8, self.lut_int == "int8", "symmetric")
        offset = None if offset is None else offset.astype(q.dtype)
        entries = QuantizedTensor(q, scale, offset).decompress(backend="numpy")
        return q, entries.astype(np.float64).reshape(luts.shape), scale, offset

    def build(self, stored, codes: np.ndarray):
        """The tensor: ``stored`` = (LUT array, lut_scale, lut_offset); ``codes`` uint8 of the index shape."""
        from .packing import nbit_array, select
        from .scaled import ScaledLUTTensor

        lut, lut_scale, lut_offset, nbits = stored
        vector_axis = self.axis if self.V > 1 else None
        if self.sparse and self.V == 1:  # the stored codes are those at the mask's set bits
            kept = select(codes, self.mask, self.nonzeros)
            t = SparsePalettizedTensor(self.mask, nbit_array(kept, nbits), lut, vector_axis)
        elif self.sparse:
            keep = self.index_mask()
            t = SparsePalettizedTensor(keep, nbit_array(codes[keep], nbits), lut, vector_axis)
        else:
            t = PalettizedTensor(nbit_array(codes, nbits), lut, vector_axis)
        if lut_scale is None and self.scale is None:
            return t
        return ScaledLUTTensor(t, lut_scale=lut_scale, lut_offset=lut_offset, scale=self.scale)

    def index_mask(self) -> np.ndarray:
        """The mask over the index shape: the dense mask, with a vector kept if any element is."""
        mask = self.mask.values().view(bool)
        if self.V == 1:
            return mask
        moved = np.moveaxis(mask, self.axis, 0)
        kept = moved.reshape(moved.shape[0] // self.V, self.V, *moved.shape[1:]).any(axis=1)
        return np.moveaxis(kept, 0, self.axis)


def _per_channel_scale(dense: np.ndarray, axes: tuple[int, ...]):
    """(s = max |w| over ``axes``, 1 where 0; the weights divided by s in float32, rounded to their
    dtype), a block of rows at a time so no float32 copy of the whole tensor is made."""
    scale = np.empty([1 if a in axes else d for a, d in enumerate(dense.shape)], dense.dtype)
    out = np.empty_like(dense)
    step = max(1, (1 << 20) // max(1, dense[0].size))
    rows = range(0, dense.shape[0], step)
    if 0 in axes:
        np.max(np.abs(dense), axis=axes, keepdims=True, out=scale)
    else:
        for r in rows:
            np.max(np.abs(dense[r:r + step]), axis=axes, keepdims=True, out=scale[r:r + step])
    scale[scale == 0] = 1
    s32 = scale.astype(np.float32)
    for r in rows:
        part = s32 if 0 in axes else s32[r:r + step]
        out[r:r + step] = dense[r:r + step].astype(np.float32) / part
    return scale, out


def _lut_dtypes(lut_dtype, weight_dtype) -> tuple[np.dtype, str | None]:
    if lut_dtype is None:
        return np.dtype(weight_dtype), None
    name = dtype_name_of(lut_dtype)
    if name not in LUT_DTYPES:
        raise WeightpackError(f"lut_dtype={describe(lut_dtype)} is unknown; allowed: None, 'fp16', 'fp32', 'int8', 'uint8'")
    name = LUT_DTYPES[name]
    if name in ("int8", "uint8"):
        return np.dtype(weight_dtype), name
    return np.dtype(name), None


def _scalar(job: Job, nbits):
    from . import lut1d

    x3, imp3, sw, inner = job.layout()
    fit = None
    if job.mode == "kmeans":
        k = 1 << nbits
        fused = job.lut_int is None and job.lut_float == job.dense.dtype  # the kernel rounds and assigns itself
        fit = lut1d.kmeans(x3, imp3, sw, inner, k, skip_zero=job.sparse, codes=fused)
        cent = fit.centroids
    elif job.mode == "uniform":
        k = 1 << nbits
        lo, hi = lut1d.minmax(x3, skip_zero=job.sparse)
        cent = lo[:, None] + np.arange(k) * ((hi - lo) / (k - 1))[:, None]
    else:
        values, counts = lut1d.distinct(x3, MAX_UNIQUE, skip_zero=job.sparse)
        most = int(counts.max())
        if most > MAX_UNIQUE:
            raise WeightpackError(
                f"mode='unique': a group has more than {MAX_UNIQUE} distinct values; allowed: at most {MAX_UNIQUE} "
                "(8-bit indices). Use mode='kmeans' instead"
            )
        nbits = next(n for n in SUPPORTED_NBITS if most <= 1 << n)
        k = 1 << nbits
        cent = np.stack([_padded(values[g, : counts[g]], k) for g in range(values.shape[0])])
    lut, entries, lut_scale, lut_offset = job.store(cent[:, :, None])
    if fit is not None and fit.codes3 is not None:
        codes = fit.codes3.reshape(job.dense.shape)
    else:
        codes = lut1d.assign(x3, entries[:, :, 0], fit).reshape(job.dense.shape)
    return (lut, lut_scale, lut_offset, nbits), codes


def _padded(values: np.ndarray, k: int) -> np.ndarray:
    return np.concatenate((values, np.repeat(values[-1:], k - values.shape[0], axis=0)))


def _group_slices(job: Job):
    """Each group's values in the dense layout (read-only copies), along ``axis``."""
    span = job.dense.shape[job.axis] // job.groups
    for g in range(job.groups):
        part = np.take(job.dense, range(g * span, (g + 1) * span), axis=job.axis)
        part.flags.writeable = False
        yield part


def _custom(job: Job, lut_function):
    """Call ``lut_function`` per group; validate and pad its LUTs; keep its indices."""
    luts, codes = [], []
    for g, part in enumerate(_group_slices(job)):
        index_shape = list(part.shape)
        index_shape[job.axis] //= job.V
        lut, idx = _checked_custom(lut_function(part), tuple(index_shape), job.V, g)
        luts.append(lut)
        codes.append(idx)
    most = max(lut.shape[0] for lut in luts)
    nbits = next(n for n in SUPPORTED_NBITS if most <= 1 << n)
    cent = np.stack([_padded(lut, 1 << nbits) for lut in luts])
    lut, _, lut_scale, lut_offset = job.store(cent)
    return (lut, lut_scale, lut_offset, nbits), np.concatenate(codes, axis=job.axis)


def _checked_custom(result, index_shape, V: int, g: int):
    where = f"lut_function's result for group {g}"
    if not isinstance(result, tuple) or len(result) != 2:
        raise WeightpackError(f"{where} must be a tuple (lut, indices), got {describe(result)}")
    lut = np.asarray(result[0])
    idx = np.asarray(result[1])
    if lut.dtype.kind not in "fiu" or lut.dtype == np.bool_:
        raise WeightpackError(f"{where}: lut has dtype {lut.dtype}; allowed: numbers")
    if V == 1 and lut.ndim == 2 and lut.shape[1] == 1:
        lut = lut[:, 0]
    want = "[K]" if V == 1 else f"[K, {V}]"
    if lut.ndim != (1 if V == 1 else 2) or (V > 1 and lut.shape[1] != V) or not 1 <= lut.shape[0] <= 256:
        raise WeightpackError(f"{where}: lut has shape {lut.shape}; allowed: {want} with 1 <= K <= 256")
    lut = lut.astype(np.float64).reshape(lut.shape[0], V)
    if not np.isfinite(lut).all():
        raise WeightpackError(f"{where}: lut contains NaN or infinity")
    if idx.dtype.kind not in "iu" or idx.size != int(np.prod(index_shape)):
        raise WeightpackError(
            f"{where}: indices have dtype {idx.dtype} and shape {idx.shape}; allowed: integers, "
            f"{int(np.prod(index_shape))} of them (shape {index_shape})"
        )
    if idx.size and (idx.min() < 0 or idx.max() >= lut.shape[0]):
        bad = idx.min() if idx.min() < 0 else idx.max()
        raise WeightpackError(f"{where}: indices hold {bad}; allowed: [0, {lut.shape[0] - 1}] (the LUT has {lut.shape[0]} entries)")
    return lut, idx.astype(np.uint8).reshape(index_shape)


def _vector(job: Job, nbits, lut_function, seed: int):
    if job.mode == "custom":
        return _custom(job, lut_function)
    from . import vector_kmeans

    V = job.V
    k = 1 << nbits
    bits = job.dense.view(np.uint16) if job.dense.dtype == np.float16 else job.dense
    X = _vectors(bits, job.axis, V, job.groups, bits.dtype)  # float16 stays 2 bytes: kernels read it through a table
    wt = np.empty((0, 0, 0), np.float32)
    if job.importance is not None or job.scale is not None:
        full = np.ones(job.dense.shape, np.float32) if job.importance is None else job.importance
        if job.scale is not None and not job.scale_in_importance:
            full = full * np.square(job.scale.astype(np.float32))
        wt = _vectors(full, job.axis, V, job.groups, np.float32)
    keep = None
    if job.sparse:
        keep = _vectors(job.index_mask(), job.axis, 1, job.groups, bool)[..., 0]
    fits = []
    for g in range(job.groups):
        Xg, wtg = X[g], wt[g] if wt.size else wt.reshape(0, 0)
        if keep is not None:
            Xg = Xg[keep[g]]
            wtg = wtg[keep[g]] if wtg.size else wtg
            if Xg.shape[0] == 0:
                fits.append(np.zeros((1, V)))
                continue
        fits.append(vector_kmeans.fit(Xg, wtg, k, seed + g))
    cent = np.stack([_padded(c, k) for c in fits])
    lut, entries, lut_scale, lut_offset = job.store(cent)
    flat = vector_kmeans.assign_groups(X, wt, entries)
    moved_shape = list(np.moveaxis(job.dense, job.axis, 0).shape)
    moved_shape[0] //= V
    codes = np.moveaxis(flat.reshape(moved_shape), 0, job.axis)
    return (lut, lut_scale, lut_offset, nbits), np.ascontiguousarray(codes)


def _vectors(a: np.ndarray, axis: int, V: int, groups: int, dtype) -> np.ndarray:
    """[G, N, V]: V consecutive elements along ``axis`` per vector, vectors of group g in index order
    (index rows of the group, then the other axes in order)."""
    moved = np.moveaxis(a, axis, 0)
    rows = moved.shape[0] // V
    vec = moved.reshape(rows, V, -1).transpose(0, 2, 1)
    return np.ascontiguousarray(vec, dtype=dtype).reshape(groups, -1, V)


def kmeans_lut(values: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """(LUT [2**nbits] of values' dtype, uint8 indices): optimal k-means of 1-D float16/float32 values,
    exactly as :func:`palettize` fits a per-tensor LUT."""
    p = palettize(np.ascontiguousarray(values).reshape(-1), nbits)
    return p.lut.reshape(-1), p.indices.values()


def nearest_entry(lut: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of the sorted ``lut`` for each value; ties to the lower index
    (the numpy reference of the compiled search)."""
    entries = lut.astype(np.float64)
    first = np.searchsorted(entries, entries, side="left")  # lowest index holding each entry's value
    mids = (entries[:-1] + entries[1:]) * 0.5
    return first[np.searchsorted(mids, values, side="left")].astype(np.uint8)
