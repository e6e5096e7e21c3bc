"""Extreme and hostile inputs (issue 10): element counts beyond int64, finite inputs whose results
overflow, arguments far out of range. Each gives a WeightpackError that says what is wrong, or a
correct result; never a raw numpy/numba exception, a hang or a silent inf/NaN."""
import time
import tracemalloc

import numpy as np
import pytest

import weightpack as wp

# ------------------------------------------------------------------- element counts beyond int64


@pytest.mark.parametrize("packed, nbits, shape", [
    (b"", 4, (2**32, 2**32)),  # wraps to 0 elements in int64
    (bytes(4), 4, (2**62 + 2, 4)),  # wraps to 8 elements: would match the 4 bytes
    (bytes(4), 4, (2**63 + 2, 4)),
    (bytes(4), 4, (2**64 - 9,)),  # a negative count in int64
    (bytes(1), 1, (2**21,) * 3),  # exactly 2**63
])
def test_nbitarray_refuses_element_counts_beyond_int64_fast_and_without_allocating(packed, nbits, shape):
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(wp.WeightpackError, match=r"more than 2\*\*63 - 1"):
        wp.NBitArray(packed, nbits, shape)
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 1 << 20  # a refusal, not an attempt


def unchecked_nbitarray(shape, nbits=4):
    """An NBitArray of ``shape`` over no bytes, built past its checks: stands in for a stream too
    large to allocate, to reach the checks that follow in a tensor's constructor."""
    bits = wp.NBitArray.__new__(wp.NBitArray)
    for name, value in (("packed", np.zeros(0, np.uint8)), ("nbits", nbits), ("signed", False), ("shape", shape)):
        object.__setattr__(bits, name, value)
    return bits


def test_vector_lut_whose_expanded_shape_overflows_is_refused():
    """Indices of 2**62 elements are countable; 4-vectors along axis 0 make 2**64: refused."""
    with pytest.raises(wp.WeightpackError, match=r"expanded shape.*more than 2\*\*63 - 1"):
        wp.PalettizedTensor(unchecked_nbitarray((2**31, 2**31)), np.zeros((1, 1, 16, 4), np.float16), vector_axis=0)
