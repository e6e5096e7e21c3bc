"""The weights of a running program and the policies that decide how each op uses its weight.

- ``"load"`` (iOS 16): every weight is decompressed once, at load, to dense float32; products
  are BLAS calls. Memory and speed are those of the float model.
- ``"jit"`` (iOS 17): compressed weights stay compressed (zero-copy views of the mapped
  weight.bin). A ``linear`` weight, or a ``matmul`` constant that is the (out, in) matrix of the
  product (``y`` with ``transpose_y``, or ``x`` without ``transpose_x``), runs weightpack's fused
  product (:func:`weightpack.matmul`: rows decoded in registers). Convolutions, other matmul
  constants and weight types without a fused kernel decompress into **one** scratch buffer
  shared by every op, right before the op. An embedding lookup (``gather`` along axis 0 of a
  palettized or quantized table) decodes only the rows it gathers.
- ``"auto"``: per op, the faster of the two for a linear / matmul weight, measured at load on
  the op's own weight at the batch the program declares (decisions are shared by ops of the same
  weight layout); everything else as ``"load"``.

Under every policy, weights feeding other ops (norm scales, biases, elementwise constants) are
decompressed at load: they are small, and an op may return a view of its input.
"""
from __future__ import annotations

import time
from time import perf_counter

import numpy as np

from ...errors import WeightpackError, describe
from ...formats import CompressedTensor, PalettizedTensor, QuantizedTensor
from ...ops import matmul as fused_matmul
from ...ops import prepared_product
from ..values import tensor_types

F32 = np.dtype(np.float32)

POLICIES = ("load", "jit", "auto")
PRODUCT_ROLES = ("linear", "matmul")
MODES = ("dense", "fused", "scratch", "rows")


def is_compressed(value) -> bool:
    return not isinstance(value, np.ndarray) and isinstance(value, tensor_types())


def has_fused_kernel(value) -> bool:
    """Whether :func:`weightpack.matmul` runs this tensor type (Core ML's five types do)."""
    return isinstance(value, CompressedTensor) and bool(type(value)._kernel)


def dense_float32(value, backend=None) -> np.ndarray:
    """The weight as a dense array: float32 for float weights (a view when it already is), the
    stored dtype for integer constants."""
    if is_compressed(value):
        if isinstance(value, CompressedTensor):
            return value.decompress(np.float32, backend=backend)
        return value.decompress(np.float32)
    array = np.asarray(value)
    if array.dtype.kind == "f" and array.dtype != np.float32:
        return array.astype(np.float32)
    return array


def matrix_shape(shape) -> tuple[int, int]:
    """A weight as the (rows, cols) matrix of its first axis against the others."""
    return (1, shape[0]) if len(shape) == 1 else (shape[0], int(np.prod(shape[1:], dtype=np.int64)))


def rows_supported(value) -> bool:
    """Whether :func:`take_rows` decodes rows of this tensor on their own: palettized (scalar LUTs)
    or quantized, with each row a whole number of bytes."""
    if isinstance(value, PalettizedTensor) and value.vector_axis is None:
        bits = value.indices
    elif isinstance(value, QuantizedTensor):
        bits = value.data
    else:
        return False
    return len(value.shape) >= 1 and (int(np.prod(value.shape[1:], dtype=np.int64)) * bits.nbits) % 8 == 0


def take_rows(value, rows: np.ndarray, backend=None) -> np.ndarray:
    """Rows ``rows`` (along axis 0, non-negative) of a tensor :func:`rows_supported` accepts,
    float32, decoding only those rows: their bytes and their groups' LUTs or scales."""
    from ...bits import NBitArray

    shape = value.shape
    rows = np.asarray(rows, np.int64).reshape(-1)
    if rows.size == 0:
        return np.empty((0,) + tuple(shape[1:]), np.float32)
    bits, groups = (value.indices, value.lut) if isinstance(value, PalettizedTensor) else (value.data, value.scale)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * bits.nbits // 8
    packed = np.ascontiguousarray(bits.packed.reshape(shape[0], row_bytes)[rows]).reshape(-1)
    sub_bits = NBitArray(packed, bits.nbits, (rows.size,) + tuple(shape[1:]), signed=bits.signed)
    group_rows = rows // (shape[0] // groups.shape[0])
    if isinstance(value, PalettizedTensor):
        sub = PalettizedTensor(sub_bits, groups[group_rows])
    else:
        offset = value.offset
        if isinstance(offset, NBitArray):
            offset = NBitArray.from_values(offset.values()[group_rows], offset.nbits, signed=offset.signed)
        elif offset is not None:
            offset = offset[group_rows]
        sub = QuantizedTensor(sub_bits, groups[group_rows], offset)
    return sub.decompress(np.float32, backend=backend)


def row_reader(value, backend=None):
    """A function ``rows -> float32 rows`` for a table :func:`rows_supported` accepts. Palettized
    tables with one scalar LUT per group of rows (an embedding compressed as Core ML's
    palettizers do) skip :func:`take_rows`' per-call tensor building: the rows' bytes are unpacked
    and looked up in the stored LUTs, views made once (a one-token lookup: ~10 us, not ~100)."""
    if not isinstance(value, PalettizedTensor) or value.lut.shape[-1] != 1 or any(n != 1 for n in value.lut.shape[1:-2]):
        return lambda rows: take_rows(value, rows, backend)
    from ...bits import unpack_bits

    shape, nbits = value.shape, value.indices.nbits
    row_elements = int(np.prod(shape[1:], dtype=np.int64))
    packed = value.indices.packed.reshape(shape[0], row_elements * nbits // 8)
    luts = value.lut.reshape(value.lut.shape[0], -1)
    rows_per_lut = shape[0] // luts.shape[0]

    def read(rows):
        rows = np.asarray(rows, np.int64).reshape(-1)
        codes = unpack_bits(packed[rows].reshape(-1), nbits, rows.size * row_elements, backend=backend)
        table = luts[(rows // rows_per_lut)[:, None], codes.reshape(rows.size, row_elements)]
        return table.astype(np.float32, copy=False).reshape((rows.size,) + tuple(shape[1:]))

    return read


def _weight_bytes(value) -> int:
    if isinstance(value, CompressedTensor):
        return value.nbytes + value.derived_nbytes
    return int(value.nbytes)


class WeightSlot:
    """One weight of the program: its value (as loaded, or as set by ``set_weight``) and the dense
    float32 copy the policy keeps (None when no op needs it)."""

    __slots__ = ("name", "value", "dense", "uses", "zero")

    def __init__(self, name: str, value):
        self.name, self.value, self.dense, self.uses, self.zero = name, value, None, [], False


class WeightUse:
    """One op's use of one weight: what the op calls to compute with it.

    ``role``: ``"linear"`` (weight (out, in); ``x @ W.T``), ``"matmul"`` (a constant operand of
    matmul: ``param`` is ``"x"`` or ``"y"``, ``transpose`` the op's flag for it), ``"conv"``
    (weight (C_out, C_in / groups, *kernel)), ``"conv_transpose"`` (weight (C_in, C_out / groups,
    *kernel)), ``"gather"`` (a table whose rows are looked up), ``"other"``.
    ``matrix_side``: True when the weight, as stored, is the (out, in) matrix of a product
    ``x @ W.T`` (a linear weight; ``y`` with ``transpose_y``; ``x`` without ``transpose_x``).
    """

    __slots__ = ("store", "slot", "op", "param", "role", "transpose", "matrix_side", "rows_hint", "mode", "offset", "_value", "_prepared")

    def __init__(self, store, slot, value, op, param, role, transpose, matrix_side, rows_hint):
        self.store, self.slot, self._value = store, slot, value
        self.op, self.param, self.role, self.transpose = op, param, role, transpose
        self.matrix_side, self.rows_hint = matrix_side, rows_hint
        self.mode, self.offset = "dense", 0
        self._prepared = None  # made on first use: (weight, run, rows, cols) of the fused product, (weight, reader) of a lookup

    @property
    def value(self):
        """The weight as loaded or set (a weightpack tensor or a numpy array)."""
        return self._value if self.slot is None else self.slot.value

    @property
    def shape(self) -> tuple:
        return tuple(self.value.shape)

    # ------------------------------------------------------------------ what kernels call

    def dense(self) -> np.ndarray:
        """The dense float32 weight: kept from load, or decompressed now into the scratch buffer
        (valid until the next op runs)."""
        if self.mode == "dense":
            return self.slot.dense if self.slot is not None else self._value
        return self._decompress_into_scratch()

    def matmul_nt(self, x2d: np.ndarray) -> np.ndarray:
        """``x2d @ M.T`` for x2d (batch, cols), M the weight as its (rows, cols) matrix; float32."""
        store = self.store
        clock = store.clock
        if self.mode == "fused":
            t0 = perf_counter()
            try:
                prepared = self._prepared  # the common call inlined: each Python frame costs from cold caches
                if (prepared is not None and prepared[0] is self.slot.value and x2d.dtype == F32 and x2d.ndim == 2
                        and x2d.shape[1] == prepared[3] and x2d.flags.c_contiguous):  # fmt: skip
                    y = np.empty((x2d.shape[0], prepared[2]), F32)
                    prepared[1](x2d, y)
                else:
                    y = self._fused(x2d)
            except WeightpackError:
                if np.isfinite(x2d).all():
                    raise
                y = None  # the fused kernels refuse NaN / inf: BLAS propagates them, as a device does
            if y is not None:
                clock.seconds += perf_counter() - t0
                return y
            w = dense_float32(self.slot.value, self.store.backend)
            y = x2d @ w.reshape(w.shape[0], -1).T
            clock.seconds += time.perf_counter() - t0
            return y
        w = self.dense()
        t0 = time.perf_counter()
        y = x2d @ w.reshape(w.shape[0], -1).T
        clock.seconds += time.perf_counter() - t0
        return y

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """``W[indices]`` along axis 0 (indices already non-negative and in range)."""
        if self.mode == "rows":
            t0 = perf_counter()
            value, prepared = self.slot.value, self._prepared
            if prepared is None or prepared[0] is not value:  # first call, or set_weight replaced it
                self._prepared = prepared = (value, row_reader(value, self.store.backend))
            out = prepared[1](indices)
            self.store.clock.seconds += perf_counter() - t0
            return out.reshape(indices.shape + out.shape[1:])
        return np.take(self.dense(), indices, axis=0)

    # ------------------------------------------------------------------ internals

    def _fused(self, x2d: np.ndarray) -> np.ndarray:
        """``x2d @ W.T`` through ``wp.matmul`` and its checks (tensor type, mode, activation dtype
        and shape); after a first call that passed them, the weight's prepared product is kept:
        they hold for every later call of the program, which :meth:`matmul_nt` then makes straight
        to the kernel (~3 us less per call)."""
        value = self.slot.value
        y = fused_matmul(value, x2d, backend=self.store.backend)
        prepared = self._prepared
        if prepared is None or prepared[0] is not value:  # first call, or set_weight replaced it
            self._prepared = (value, *prepared_product(value, self.store.backend))
        return y

    def _decompress_into_scratch(self) -> np.ndarray:
        value = self.slot.value
        size = int(np.prod(value.shape, dtype=np.int64))
        view = self.store.scratch[self.offset : self.offset + size].reshape(value.shape)
        t0 = time.perf_counter()
        if isinstance(value, CompressedTensor):
            value.decompress(np.float32, backend=self.store.backend, out=view)
        else:
            view[...] = value.decompress(np.float32)
        self.store.clock.seconds += time.perf_counter() - t0
        return view


class WeightStore:
    """Every weight of a program, the policy's decision per use, and the shared scratch buffer."""

    def __init__(self, values: dict, policy: str, clock, backend=None):
        if policy not in POLICIES:
            raise WeightpackError(f"policy={describe(policy)} is unknown; allowed: {', '.join(POLICIES)}")
        self.policy, self.clock, self.backend = policy, clock, backend
        self.slots = {name: WeightSlot(name, value) for name, value in values.items()}
        self.uses = []
        self.scratch = np.empty(0, np.float32)
        self._op_scratch = {}  # op -> scratch elements its uses need at once
        self._decisions = {}  # (layout, rows) -> fused is faster

    def use(self, op, param: str, name_or_value, role: str, *, transpose=False, matrix_side=False, rows_hint=1) -> WeightUse:
        """Register that ``op`` uses a weight (a weight name, or an immediate constant) in ``role``."""
        slot = self.slots.get(name_or_value) if isinstance(name_or_value, str) else None
        value = None if slot is not None else dense_float32(name_or_value, self.backend)
        use = WeightUse(self, slot, value, op, param, role, transpose, matrix_side, rows_hint)
        if slot is not None:
            slot.uses.append(use)
            self.uses.append(use)
            self._decide(use)
        return use

    def finish(self) -> None:
        """Materialize what the decided modes need and size the scratch buffer."""
        for slot in self.slots.values():
            self._materialize(slot)
        self._size_scratch()

    def set_weight(self, name: str, value) -> None:
        slot = self.slots[name]
        slot.value = value
        for use in slot.uses:
            self._decide(use)
        self._materialize(slot)
        self._size_scratch()

    def resident_bytes(self) -> int:
        total = 0
        for slot in self.slots.values():
            if slot.dense is not None:
                total += int(slot.dense.nbytes)
            if any(u.mode != "dense" for u in slot.uses):
                total += _weight_bytes(slot.value)
        return total

    # ------------------------------------------------------------------ decisions

    def _decide(self, use: WeightUse) -> None:
        value = use.slot.value
        if not is_compressed(value) or self.policy == "load" or use.role == "other":
            use.mode = "dense"
        elif use.role == "gather":
            if self.policy == "jit":
                use.mode = "rows" if rows_supported(value) else "scratch"
            else:
                use.mode = "dense"
        elif use.role in PRODUCT_ROLES and use.matrix_side and has_fused_kernel(value):
            use.mode = "fused" if self.policy == "jit" or self._fused_faster(value, use.rows_hint) else "dense"
        else:
            use.mode = "scratch" if self.policy == "jit" else "dense"
        if use.mode == "scratch":
            ops = self._op_scratch.setdefault(id(use.op), [])
            if use not in ops:
                ops.append(use)
            offset = 0
            for other in ops:
                other.offset = offset
                offset += int(np.prod(other.slot.value.shape, dtype=np.int64))
        else:
            ops = self._op_scratch.get(id(use.op), [])
            if use in ops:
                ops.remove(use)

    def _fused_faster(self, value, rows: int, repeats: int = 7) -> bool:
        """The cost model of ``auto``: medians of warmed-up runs of each way on this weight at this
        batch (the fused kernel first, before BLAS's worker threads are awake)."""
        key = (_layout(value), rows)
        if key not in self._decisions:
            out, cols = matrix_shape(value.shape)
            x = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
            dense = dense_float32(value, self.backend).reshape(out, cols)
            fused = _median(lambda: fused_matmul(value, x, backend=self.backend), repeats)
            self._decisions[key] = fused < _median(lambda: x @ dense.T, repeats)
        return self._decisions[key]

    def _materialize(self, slot: WeightSlot) -> None:
        needs_dense = any(u.mode == "dense" for u in slot.uses)
        slot.dense = dense_float32(slot.value, self.backend) if needs_dense else None
        slot.zero = slot.dense is not None and slot.dense.dtype.kind == "f" and not slot.dense.any()
        if any(u.mode == "fused" for u in slot.uses):  # kernels build their derived data once, at load
            fused_matmul(slot.value, np.zeros((1, matrix_shape(slot.value.shape)[1]), np.float32), backend=self.backend)

    def _size_scratch(self) -> None:
        need = max((sum(int(np.prod(u.slot.value.shape)) for u in uses) for uses in self._op_scratch.values()), default=0)
        if need > self.scratch.size:
            self.scratch = np.empty(need, np.float32)


def _layout(weight) -> tuple:
    """What the kernels' speed depends on: the type, the shape and each array's type and shape."""
    if not isinstance(weight, CompressedTensor):
        return (type(weight).__name__, tuple(weight.shape))
    arrays = tuple(
        (name, getattr(a, "dtype_name", None) or str(a.dtype), a.shape) for name, a in weight.arrays().items() if a is not None
    )
    return (type(weight).__name__, weight.shape, arrays)


def _median(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
