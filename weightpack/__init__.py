"""weightpack: compressed neural-network weights, byte-compatible with Apple Core ML.

>>> import numpy as np, weightpack as wp
>>> w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)
>>> p = wp.palettize(w, nbits=2)
>>> p.decompress().shape, p.nbytes
((8, 8), 32)

Importing weightpack is cheap: the encoders load on first use, and their loops are C compiled at
install (nothing is compiled when they first run); numba loads only for ``backend="numba"``.
"""
from importlib import import_module

from .bits import NBitArray, pack_bits, unpack_bits
from .errors import BackendError, FormatError, WeightpackError
from .formats import (
    CompressedTensor,
    PalettizedTensor,
    QuantizedTensor,
    SparsePalettizedTensor,
    SparseQuantizedTensor,
    SparseTensor,
)

__version__ = "0.1.0"

# name -> submodule that defines it, imported on first access
_LAZY = {
    "prune": ".compress",
    "palettize": ".compress",
    "quantize": ".compress",
    "palettize_rd_curve": ".compress",
    "compress_all": ".compress",
    "CompressionConfig": ".compress",
    "ScaledLUTTensor": ".compress",
    "snr_db": ".metrics",
    "matvec": ".ops",
    "matmul": ".ops",
    "ActivationStats": ".calibration",
    "gptq_palettize": ".calibration",
    "gptq_quantize": ".calibration",
    "sparsegpt_prune": ".calibration",
    "wanda_prune": ".calibration",
    "allocate_bits": ".calibration",
    "threads": ".parallelism",
    "blas_sleep_when_idle": ".parallelism",
}


# submodules importable as attributes (``wp.runtime.Model``) without loading them at import
_SUBMODULES = ("runtime", "coreml", "calibration", "compress", "kernels")


def __getattr__(name):
    if name in _SUBMODULES:
        module = import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'weightpack' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


__all__ = [
    "NBitArray",
    "pack_bits",
    "unpack_bits",
    "WeightpackError",
    "FormatError",
    "BackendError",
    "CompressedTensor",
    "SparseTensor",
    "PalettizedTensor",
    "QuantizedTensor",
    "SparsePalettizedTensor",
    "SparseQuantizedTensor",
    *_LAZY,
]
