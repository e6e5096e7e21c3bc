"""Small numba helpers the kernels share."""
from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload


def value(x, table):  # pragma: no cover - replaced by the overload inside numba
    """The float64 value of one element: float16 bits through ``table``, other numbers as they are."""
    raise NotImplementedError


@overload(value, inline="always")
def _value_impl(x, table):
    if isinstance(x, types.Integer):
        return lambda x, table: table[x]
    return lambda x, table: np.float64(x)
