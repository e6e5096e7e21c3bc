"""What every compressed tensor shares: validation helpers, ``nbytes``, ``decompress``."""
from __future__ import annotations

import numpy as np

from ..bits import SIGNED_NBITS, SUPPORTED_NBITS, NBitArray, _frozen, element_count, owned, value_range
from ..errors import WeightpackError, check_allocation, describe

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
BYTE_INT_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8))
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.int64)


def dtype_name(dtype) -> str:
    """Core ML's short name of a numpy dtype: fp16, fp32, int8, uint8."""
    return {"float16": "fp16", "float32": "fp32"}.get(np.dtype(dtype).name, np.dtype(dtype).name)


def frozen_array(value, name: str, allowed_dtypes, ndim=None) -> np.ndarray:
    """``value`` as a read-only numpy array of one of ``allowed_dtypes`` (copied if writeable)."""
    if isinstance(value, NBitArray):
        raise WeightpackError(f"{name} must be a numpy array of {_names(allowed_dtypes)}, got {value!r}")
    arr = np.asarray(value)
    if arr.dtype not in allowed_dtypes:
        raise WeightpackError(f"{name} has dtype {arr.dtype}; allowed: {_names(allowed_dtypes)}")
    if ndim is not None and arr.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise WeightpackError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    check_allocation(arr.nbytes, f"{name} of shape {arr.shape} as a contiguous array")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise WeightpackError(f"{name} contains NaN or infinity")
    return _frozen(np.ascontiguousarray(arr))


def parse_int_type(name: str) -> tuple[int, bool]:
    """('uint4' -> (4, False), 'int8' -> (8, True)); raise for names Core ML lacks."""
    signed = isinstance(name, str) and name.startswith("int")
    try:
        nbits = int(name[3 if signed else 4:]) if isinstance(name, str) and name.startswith(("int", "uint")) else 0
    except ValueError:
        nbits = 0
    if nbits not in (SIGNED_NBITS if signed else SUPPORTED_NBITS):
        raise WeightpackError(f"integer type {describe(name)} is unknown; allowed: int4, int8, uint1 ... uint8")
    return nbits, signed


def int_array(value, name: str, allowed: tuple[str, ...], as_type: str | None = None) -> NBitArray:
    """``value`` as an NBitArray whose Core ML dtype is in ``allowed`` (e.g. ('int4', 'uint8')).

    An NBitArray is taken as is. A numpy integer array is packed as ``as_type`` (e.g. 'uint4')
    when given, else as its own dtype, which must then be int8 or uint8.
    """
    if not isinstance(value, NBitArray):
        raw = np.asarray(value)
        if raw.dtype.kind not in "iu":
            raise WeightpackError(f"{name} must hold integers, got dtype {raw.dtype}")
        check_allocation(raw.size, f"{name} of shape {raw.shape} as bytes")
        if as_type is None:
            if raw.dtype not in BYTE_INT_DTYPES:
                raise WeightpackError(
                    f"{name} has dtype {raw.dtype}; pass int8/uint8 or an NBitArray (allowed: {', '.join(allowed)})"
                )
            as_type = raw.dtype.name
        nbits, signed = parse_int_type(as_type)
        lo, hi = value_range(nbits, signed)
        if raw.size and (raw.min() < lo or raw.max() > hi):
            bad = raw.min() if raw.min() < lo else raw.max()
            raise WeightpackError(f"{name} holds {bad}, outside the {as_type} range [{lo}, {hi}]")
        value = NBitArray.from_values(raw, nbits, signed=signed)
    if value.dtype_name not in allowed:
        raise WeightpackError(f"{name} has Core ML dtype {value.dtype_name}; allowed: {', '.join(allowed)}")
    return value


def mask_array(mask, name: str = "mask") -> NBitArray:
    """A 1-bit mask: an NBitArray of uint1, or a boolean / 0-1 integer array to pack."""
    if not isinstance(mask, NBitArray):
        raw = np.asarray(mask)
        check_allocation(raw.size, f"{name} of shape {raw.shape} as bytes")
        if raw.dtype.kind not in "biu":
            raise WeightpackError(f"{name} must be boolean or 0/1 integers, got dtype {raw.dtype}")
        if raw.dtype.kind != "b" and raw.size and (raw.min() < 0 or raw.max() > 1):
            raise WeightpackError(f"{name} must hold only 0 and 1, got values in [{raw.min()}, {raw.max()}]")
        mask = NBitArray.from_values(raw.astype(np.uint8), 1)
    if mask.dtype_name != "uint1":
        raise WeightpackError(f"{name} must be a uint1 NBitArray, got {mask.dtype_name}")
    if mask.ndim == 0:
        raise WeightpackError(f"{name} must have at least one dimension")
    return mask


def popcount(mask: NBitArray) -> int:
    """Number of set bits in a 1-bit mask (its padding bits are zero by construction)."""
    return int(_POPCOUNT[mask.packed].sum())


def check_block_shape(data_shape, scale_shape, scale_name: str) -> tuple[int, ...]:
    """Block sizes ``data_shape[i] / scale_shape[i]``; each dimension must divide evenly."""
    if len(scale_shape) != len(data_shape):
        raise WeightpackError(
            f"{scale_name} has rank {len(scale_shape)} (shape {tuple(scale_shape)}); it must have the "
            f"data's rank {len(data_shape)} (shape {tuple(data_shape)})"
        )
    blocks = []
    for axis, (d, s) in enumerate(zip(data_shape, scale_shape)):
        if s == 0 or d % s:
            raise WeightpackError(
                f"{scale_name}.shape[{axis}]={s} must divide the data's dimension {d} "
                f"(data shape {tuple(data_shape)}, {scale_name} shape {tuple(scale_shape)})"
            )
        blocks.append(d // s)
    return tuple(blocks)


def _names(dtypes) -> str:
    return ", ".join(dtype_name(d) for d in dtypes)


class CompressedTensor:
    """Base class of weightpack's compressed tensors: immutable, validated, Core ML-shaped.

    Subclasses define ``shape``, ``dtype`` (the natural output dtype), ``arrays()`` (the payload
    arrays under Core ML's names) and the name of the decompression kernel, ``_kernel``.
    """

    __slots__ = ("_cache",)
    _kernel = ""
    op = ""  # the Core ML iOS 18 op this type mirrors

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable; cannot set {name!r}")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is immutable; cannot delete {name!r}")

    def __reduce_ex__(self, protocol):
        """Pickling (process pools, Dask, Ray, caches): the constructor's arguments, arrays as numpy
        arrays, so protocol 5 sends large ones out of band without a copy; the tensor is rebuilt,
        validated and immutable, around the unpickled arrays (no copy).

        >>> import pickle, numpy as np, weightpack as wp
        >>> t = wp.palettize(np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8), nbits=2)
        >>> buffers = []
        >>> data = pickle.dumps(t, protocol=5, buffer_callback=buffers.append)
        >>> back = pickle.loads(data, buffers=buffers)
        >>> back == t, len(buffers), back.lut.flags.writeable
        (True, 2, False)
        """
        return _unpickle_tensor, (type(self), self._constructor_args())

    def _constructor_args(self) -> dict:
        args = dict(self.arrays())
        if hasattr(self, "vector_axis"):
            args["vector_axis"] = self.vector_axis
        return args

    def _init(self, **fields):
        object.__setattr__(self, "_cache", {})
        for key, value in fields.items():
            object.__setattr__(self, key, value)

    def derived(self, key, compute):
        """A value derived from the (immutable) arrays, computed once by ``compute()`` and kept.

        Kernels keep what they need beside the compressed arrays here (row indices of sparse
        tensors, LUTs converted to float32); :attr:`derived_nbytes` counts it.
        """
        cache = self._cache
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    @property
    def derived_nbytes(self) -> int:
        """Bytes of the derived data kernels keep beside the compressed arrays."""
        return sum(_nbytes(v) for v in self._cache.values())

    def arrays(self) -> dict:
        """The payload arrays under Core ML's parameter names (numpy arrays or NBitArrays)."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Payload bytes as Core ML stores them: packed bit streams, LUTs, scales, offsets."""
        return sum(int(a.nbytes) for a in self.arrays().values() if a is not None)

    @property
    def size(self) -> int:
        return element_count(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def decompress(self, dtype=None, backend=None, out=None) -> np.ndarray:
        """The dense tensor Core ML's op computes, cast to ``dtype`` (default: the natural dtype).

        ``dtype`` may be the natural dtype, float16 or float32; ``backend`` picks the kernel
        implementation (``"numpy"``, ``"c"``, ``None`` for automatic). Every backend returns the
        same bits. ``out``, a C-contiguous writeable array of the tensor's shape and ``dtype``
        (its dtype when ``dtype`` is None), receives the result instead of a new array: a scratch
        buffer reused across calls avoids the cost of fresh memory.

        >>> import numpy as np, weightpack as wp
        >>> t = wp.SparseTensor(np.array([1, 0, 1], bool), np.array([2, 3], np.float16))
        >>> buf = np.empty(3, np.float32)
        >>> t.decompress(out=buf) is buf, buf.tolist()
        (True, [2.0, 0.0, 3.0])
        """
        from .. import kernels

        out = output_array(self, dtype, out)
        kernels.kernel(backend, self._kernel)(self, out)
        return out

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        mine, theirs = self.arrays(), other.arrays()
        return self._attrs() == other._attrs() and all(
            _same(mine[k], theirs[k]) for k in mine
        )

    __hash__ = None

    def _attrs(self) -> tuple:
        return ()

    def __repr__(self):
        parts = []
        for key, arr in self.arrays().items():
            if arr is None:
                continue
            kind = arr.dtype_name if isinstance(arr, NBitArray) else dtype_name(arr.dtype)
            parts.append(f"{key}={kind}{list(arr.shape)}")
        return (
            f"{type(self).__name__}(shape={self.shape}, dtype={dtype_name(self.dtype)}, "
            f"{', '.join(parts)}, nbytes={self.nbytes})"
        )


def _unpickle_tensor(cls, args: dict):
    return cls(**{key: owned(value) for key, value in args.items()})


def output_array(tensor, dtype, out) -> np.ndarray:
    """``out`` checked for ``tensor.decompress(dtype, out=out)``, or a new array to decode into."""
    out_dtype = output_dtype(tensor, dtype, out)
    if out is None:
        return np.empty(tensor.shape, out_dtype)
    if not (
        isinstance(out, np.ndarray) and out.shape == tensor.shape and out.dtype == out_dtype
        and out.flags.c_contiguous and out.flags.writeable and out.flags.aligned
    ):
        raise WeightpackError(
            f"out must be a C-contiguous, aligned, writeable {dtype_name(out_dtype)} array of shape "
            f"{tensor.shape}, got {describe(out)}"
        )
    return out


def output_dtype(tensor, dtype, out) -> np.dtype:
    """The dtype ``decompress(dtype, out=out)`` produces: ``dtype``, else ``out``'s, else the
    tensor's natural one; it must be the natural dtype, fp16 or fp32 (the error names which
    argument brought a wrong one)."""
    given, name = (dtype, "dtype") if dtype is not None or out is None else (getattr(out, "dtype", out), "out")
    try:
        out_dtype = tensor.dtype if given is None else np.dtype(given)
    except TypeError:  # not a dtype at all, e.g. "float" misspelt
        out_dtype = None
    if out_dtype is None or out_dtype not in (tensor.dtype, *FLOAT_DTYPES):
        what = f"out has dtype {out_dtype}, which" if name == "out" and out_dtype is not None else f"{name}={describe(given)}"
        raise WeightpackError(
            f"{what} is not available for {type(tensor).__name__}; allowed: {dtype_name(tensor.dtype)} (natural), fp16, fp32"
        )
    return out_dtype


def _nbytes(value) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return sum(_nbytes(v) for v in vars(value).values()) if hasattr(value, "__dict__") else 0


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, NBitArray) or isinstance(b, NBitArray):
        return type(a) is type(b) and a == b  # an NBitArray never equals a numpy array
    # the stored bits: -0.0 is not 0.0 here (it decompresses to different bits)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
