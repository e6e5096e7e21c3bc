"""Small numba helpers the kernels share."""
from __future__ import annotations

import math

import numba
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


@numba.njit(nogil=True, cache=True)
def round_f16(x):
    """``x`` rounded to the nearest binary16 value, ties to even, as float64 (what
    ``numpy.float16(x)`` stores); beyond the largest finite binary16, infinity."""
    a = abs(x)
    if a == 0.0:
        return x
    e = math.frexp(a)[1]  # a in [2**(e-1), 2**e)
    step = 2.0 ** (11 - e) if e >= -13 else 2.0**24  # 11 significant bits; subnormals: multiples of 2**-24
    r = np.rint(a * step) / step
    r = r if r <= 65504.0 else np.inf
    return r if x > 0.0 else -r
