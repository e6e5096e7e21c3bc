"""matvec / matmul: every backend and every SIMD level of the C backend against an exact product.

The reference is the float64 product of the decoded weights (``decompress``) and the float32
activations; every backend must stay within the dot-product error bound of ``weightpack.ops``.
Shapes include the layouts the SIMD fast paths take (columns in multiples of 64, tables per row
block or per column block) and the odd ones that fall back to scalar code.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import weightpack as wp
from weightpack import NBitArray
from weightpack.errors import WeightpackError
from weightpack.kernels import backend_c
from weightpack.ops import UNDERFLOW, error_bound, matrix_shape

from strategies import any_cases, divisors, int_range


@pytest.fixture(params=backend_c.simd_levels())
def simd(request):
    """Force each SIMD level this CPU has (restores the best level afterwards)."""
    assert backend_c.set_simd(request.param) == request.param
    yield request.param
    backend_c.set_simd()


@pytest.fixture(params=[1, 2])
def threads(request):
    backend_c.set_threads(request.param)
    yield request.param
    backend_c.set_threads()


def assert_close_to_exact(weight, x, y):
    rows, cols = matrix_shape(weight)
    w = weight.decompress(np.float32, backend="numpy").astype(np.float64).reshape(rows, cols)
    exact = x.astype(np.float64) @ w.T
    magnitude = np.abs(x.astype(np.float64)) @ np.abs(w).T
    assert y.dtype == np.float32 and y.shape == exact.shape
    excess = np.abs(y - exact) - (error_bound(cols) * magnitude + cols * UNDERFLOW)
    assert excess.max(initial=0.0) <= 0.0, f"worst excess over the bound {excess.max()}"


# Row lengths that are not whole vector steps (1, 8, 32, 64 columns) and blocks that end inside one.
ODD_COLS = [1, 3, 7, 9, 17, 31, 33, 40, 63, 65, 95, 100, 129, 136, 200, 257, 300, 520]


def pick(draw, fixed, choices):
    return fixed if fixed is not None else draw(st.sampled_from(choices))


@st.composite
def matrices(draw, kind=None, nbits=None, data_type=None, value_dtype=None, offset_kind=None, any_layout=False):
    """A compressed (rows x cols) weight and activations, in a layout the widest SIMD kernels cover
    (columns in multiples of 64, blocks of multiples of 16), or with ``any_layout`` rows and blocks
    of any length (table boundaries inside vector steps, rows starting inside a byte of the code
    stream or of the mask); the keyword arguments fix a choice (the format and its element types)
    instead of drawing it."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = draw(st.sampled_from([1, 3, 4, 5, 8, 17]))
    cols = draw(st.sampled_from(ODD_COLS)) if any_layout else 64 * draw(st.sampled_from([1, 2, 3, 4]))
    row_groups = draw(st.sampled_from(divisors(rows)))
    col_groups = draw(st.sampled_from([d for d in divisors(cols) if any_layout or (cols // d) % 16 == 0]))
    groups = (row_groups, col_groups)
    kind = pick(draw, kind, ["lut", "sparse_lut", "sparse", "quant", "sparse_quant"])
    mask = rng.random((rows, cols)) < draw(st.sampled_from([0.0, 0.3, 0.5, 0.75, 1.0]))
    nnz = int(mask.sum())
    if kind in ("lut", "sparse_lut"):
        nbits = pick(draw, nbits, [1, 2, 3, 4, 6, 8])
        lut = rng.standard_normal(groups + (1 << nbits, 1)).astype(pick(draw, value_dtype, [np.float16, np.float32]))
        if kind == "lut":
            weight = wp.PalettizedTensor(rng.integers(0, 1 << nbits, (rows, cols)), lut)
        else:
            weight = wp.SparsePalettizedTensor(mask, rng.integers(0, 1 << nbits, nnz), lut)
    elif kind == "sparse":
        weight = wp.SparseTensor(mask, rng.standard_normal(nnz).astype(pick(draw, value_dtype, [np.float16, np.float32])))
    else:
        data_type = pick(draw, data_type, ["int4", "uint4", "int8", "uint8"])
        lo, hi = int_range(data_type)
        bits, signed = int(data_type[-1]), data_type.startswith("int")
        scale = (rng.random(groups) * 0.1).astype(pick(draw, value_dtype, [np.float16, np.float32]))
        offset_kind = pick(draw, offset_kind, ["none", "int", "float"])
        offset = None
        if offset_kind == "int":
            offset = NBitArray.from_values(rng.integers(lo, hi + 1, groups), bits, signed=signed)
        elif offset_kind == "float":
            offset = (rng.standard_normal(groups) * 4).astype(scale.dtype)
        if kind == "quant":
            data = NBitArray.from_values(rng.integers(lo, hi + 1, (rows, cols)), bits, signed=signed)
            weight = wp.QuantizedTensor(data, scale, offset)
        else:
            data = NBitArray.from_values(rng.integers(lo, hi + 1, nnz), bits, signed=signed)
            weight = wp.SparseQuantizedTensor(mask, data, scale, offset)
    batch = draw(st.sampled_from([1, 2, 4, 5, 9]))
    x = rng.standard_normal((batch, cols)).astype(np.float32)
    return weight, x


# The fixtures set process-wide kernel state once per test; every generated input runs under it.
fixtures_once = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


FORMATS = (  # every kernel family the fused products have: (kind, nbits, data_type, value dtype, offset)
    [("lut", n, None, dt, None) for n in (1, 2, 3, 4, 6, 8) for dt in (np.float16, np.float32)]
    + [("sparse_lut", n, None, np.float16, None) for n in (2, 4, 8)]
    + [("sparse", None, None, dt, None) for dt in (np.float16, np.float32)]
    + [(kind, None, q, dt, off) for kind in ("quant", "sparse_quant") for q in ("int4", "uint4", "int8", "uint8")
       for dt in (np.float16, np.float32) for off in ("none", "int", "float")]
)


@pytest.mark.parametrize("kind, nbits, data_type, value_dtype, offset_kind", FORMATS)
def test_products_decode_every_weight_exactly(simd, kind, nbits, data_type, value_dtype, offset_kind):
    """With one-hot activations each output is one decoded weight times 1 plus zeros: no rounding,
    so the fused kernels must reproduce decompress() bit for bit (the binary16 arithmetic of
    shift-scale included), whatever their summation order."""

    @settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(matrices(kind, nbits, data_type, value_dtype, offset_kind))
    def check(case):
        weight, _ = case
        rows, cols = matrix_shape(weight)
        y = wp.matmul(weight, np.eye(cols, dtype=np.float32), backend="c")
        np.testing.assert_array_equal(y.T, weight.decompress(np.float32, backend="numpy").reshape(rows, cols))

    check()


@fixtures_once
@given(matrices())
def test_simd_layouts_on_every_level(simd, threads, case):
    weight, x = case
    assert_close_to_exact(weight, x, wp.matmul(weight, x, backend="c"))


@fixtures_once
@given(matrices(any_layout=True))
def test_any_layout_on_every_level(simd, threads, case):
    weight, x = case
    assert_close_to_exact(weight, x, wp.matmul(weight, x, backend="c"))


@fixtures_once
@given(case=any_cases(), batch=st.sampled_from([1, 3]), seed=st.integers(0, 2**16))
def test_every_format_and_layout(backend, case, batch, seed):
    weight = case.build()
    cols = matrix_shape(weight)[1]
    assume(np.abs(weight.decompress(np.float32)).max(initial=0) < 1e30)  # float32 sums would overflow
    x = np.random.default_rng(seed).standard_normal((batch, cols)).astype(np.float32)
    assert_close_to_exact(weight, x, wp.matmul(weight, x, backend=backend))


@pytest.mark.parametrize("offset", [None, 3])
def test_binary16_scales_at_the_edges_of_binary16_range(simd, offset):
    """int8 with fp16 scales whose products fall below binary16's normal range or round to inf:
    the rounding of scale * q must stay Core ML's (the fast path checks its range per block)."""
    rng = np.random.default_rng(3)
    scales = np.array([2**-14, 2**-15, 2**-24, 0.0, -511.5, 511.75, 65504 / 131, 1e-3], np.float16).reshape(8, 1)
    data = rng.integers(-128, 128, (8, 96)).astype(np.int8)
    data[:, :4] = [-128, 127, 1, -1]
    offsets = None if offset is None else NBitArray.from_values(np.full((8, 1), offset), 8, signed=True)
    weight = wp.QuantizedTensor(data, scales, offsets)
    x = rng.random((2, 96)).astype(np.float32) + 0.5
    y = wp.matmul(weight, x, backend="c")
    w = weight.decompress(np.float32, backend="numpy").astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        exact = x.astype(np.float64) @ w.T
    finite = np.isfinite(exact)
    np.testing.assert_array_equal(y[~finite], exact[~finite].astype(np.float32))
    bound = error_bound(96) * (np.abs(x.astype(np.float64)) @ np.abs(np.where(np.isfinite(w), w, 0)).T) + 96 * UNDERFLOW
    assert (np.abs(y[finite] - exact[finite]) <= bound[finite]).all()


def test_matvec_is_a_batch_of_one(backend):
    rng = np.random.default_rng(0)
    weight = wp.QuantizedTensor(rng.integers(-127, 128, (8, 64)).astype(np.int8), np.full((8, 1), 0.01, np.float16))
    x = rng.standard_normal(64).astype(np.float32)
    np.testing.assert_array_equal(wp.matvec(weight, x, backend=backend), wp.matmul(weight, x[None], backend=backend)[0])


def test_convolution_weights_act_as_out_by_rest():
    rng = np.random.default_rng(1)
    weight = wp.PalettizedTensor(rng.integers(0, 16, (4, 3, 2, 2)), rng.standard_normal((2, 1, 1, 1, 16, 1)).astype(np.float16))
    x = rng.standard_normal(12).astype(np.float32)
    assert_close_to_exact(weight, x[None], wp.matvec(weight, x)[None])


def test_sparse_row_index_is_kept_and_counted():
    rng = np.random.default_rng(2)
    mask = rng.random((16, 128)) < 0.5
    weight = wp.SparseTensor(mask, rng.standard_normal(int(mask.sum())).astype(np.float16))
    assert weight.derived_nbytes == 0
    wp.matvec(weight, np.ones(128, np.float32), backend="c")
    assert weight.derived_nbytes >= 17 * 8  # int64 start of each row, plus the total


@pytest.mark.parametrize(
    "x, message",
    [
        (np.ones(5, np.float32), r"shape \(5,\)"),
        (np.ones(8, np.int32), "dtype int32"),
        (np.full(8, np.nan, np.float32), "NaN"),
        (np.ones((2, 8), np.float32), r"shape \(2, 8\)"),
    ],
)
def test_bad_activations_are_clear_errors(x, message):
    weight = wp.SparseTensor(np.ones((4, 8), bool), np.ones(32, np.float16))
    with pytest.raises(WeightpackError, match=message):
        wp.matvec(weight, x)


def test_activations_in_other_layouts_are_accepted():
    weight = wp.SparseTensor(np.ones((4, 8), bool), np.arange(32, dtype=np.float16))
    x = np.arange(16, dtype=np.float64)[::2]  # float64, strided
    np.testing.assert_array_equal(wp.matvec(weight, x), wp.matvec(weight, np.ascontiguousarray(x, np.float32)))


def test_weight_must_be_compressed():
    with pytest.raises(WeightpackError, match="compressed tensor"):
        wp.matvec(np.ones((2, 2)), np.ones(2))


def test_unknown_simd_level_and_thread_count_are_errors():
    with pytest.raises(WeightpackError, match="avx9"):
        backend_c.set_simd("avx9")
    with pytest.raises(WeightpackError, match="threads"):
        backend_c.set_threads(0)


def test_concurrent_calls_from_many_threads_agree(backend):
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(7)
    lut = np.sort(rng.standard_normal((1, 1, 16, 1)), axis=2).astype(np.float16)
    weights = [wp.PalettizedTensor(rng.integers(0, 16, (96, 256)), lut),
               wp.QuantizedTensor(rng.integers(-127, 128, (96, 256)).astype(np.int8), np.full((96, 1), 0.01, np.float16))]
    xs = [rng.standard_normal((3, 256)).astype(np.float32) for _ in range(8)]
    expected = [[wp.matmul(w, x, backend=backend) for x in xs] for w in weights]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: wp.matmul(weights[i % 2], xs[i % 8], backend=backend), range(64)))
    for i, y in enumerate(results):
        np.testing.assert_array_equal(y, expected[i % 2][i % 8])
