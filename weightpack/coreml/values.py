"""What a weight can be in a Core ML model: a weightpack tensor or a numpy array.

The tensors are the :class:`~weightpack.CompressedTensor` types (the five Core ML op types and
:class:`~weightpack.ScaledLUTTensor`, a LUT op with shift-scale ops around it).
No coremltools import here.

>>> import numpy as np
>>> dense(np.ones(2, np.float16)).tolist(), is_weight([1.0])
([1.0, 1.0], False)
"""
from __future__ import annotations

import numpy as np

from ..formats import CompressedTensor


def tensor_types() -> tuple:
    """The weightpack types a model can hold."""
    return (CompressedTensor,)


def is_weight(value) -> bool:
    """Whether ``value`` is a weightpack tensor or a numpy array."""
    return isinstance(value, np.ndarray) or isinstance(value, tensor_types())


def dense(value) -> np.ndarray:
    """The dense values: ``decompress()`` of a tensor, the array itself otherwise."""
    return value.decompress() if isinstance(value, tensor_types()) else np.asarray(value)
