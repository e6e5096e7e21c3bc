"""Test vectors for the C kernels built for another architecture (tests/aarch64/driver.c replays them).

Every vector is one call of a C kernel exactly as weightpack's C backend makes it on this machine
(recorded from the real calls on tensors hypothesis draws), with what the call must produce:

- decompression: the numpy reference's bytes (an IEEE invalid result, the only NaN finite inputs
  can make, is the aarch64 default NaN: +qNaN without payload, where x86 makes -qNaN);
- exact products: the float64 product of the reference's decoded weights and the activations,
  and ops.error_bound's float32 summation bound per output;
- fast mode: its documented relative error (ops.FAST_RTOL) and this machine's kernel output;
- bad sizes: masked streams one code short, which every decoder must refuse writing nothing.

    python tests/aarch64/make_vectors.py OUT [--examples N] [--seed S]
"""
from __future__ import annotations

import argparse
import struct
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

import weightpack as wp  # noqa: E402
from weightpack import NBitArray  # noqa: E402
from weightpack._c import ffi, lib, status  # noqa: E402
from weightpack.kernels import backend_c  # noqa: E402
from weightpack.ops import FAST_RTOL, UNDERFLOW, error_bound  # noqa: E402

import strategies  # noqa: E402
import test_fast_mode  # noqa: E402
from test_decode_levels import large_tensors  # noqa: E402

KINDS = ("wp_lut_decode", "wp_sparse_decode", "wp_shift_scale_decode", "wp_lut_matvec", "wp_quant_matvec",
         "wp_sparse_matvec", "wp_fast_matvec")
OUT_ARG = dict(zip(KINDS, (19, 7, 14, 17, 18, 11, 15)))
DECODERS, PRODUCTS = KINDS[:3], KINDS[3:6]


class Call:
    def __init__(self, name, inputs, status, output):
        self.name, self.inputs, self.status, self.output = name, inputs, status, output


def _snapshot(value):
    """A kernel argument as bytes (buffers), None (NULL) or int."""
    if isinstance(value, ffi.CData):
        return None if value == ffi.NULL else bytes(ffi.buffer(value))
    return int(value)


class Recorder:
    """Stands in for the C library: records every call of the kernels in KINDS, then makes it."""

    def __init__(self, real):
        self._real, self.calls = real, []

    def __getattr__(self, name):
        function = getattr(self._real, name)
        if name not in KINDS:
            return function

        def recorded(*args):
            inputs = [_snapshot(a) for a in args]
            result = function(*args)
            self.calls.append(Call(name, inputs, result, _snapshot(args[OUT_ARG[name]])))
            return result

        return recorded


class VectorFile:
    def __init__(self, path: Path):
        self._file = open(path, "wb")
        self._file.write(b"WPV1")
        self.counts = Counter()

    def add(self, name, inputs, x86_status, expect_status, label, blobs):
        w = self._file.write
        w(struct.pack("<iii", KINDS.index(name), x86_status, expect_status))
        text = label.encode()[:90]
        w(struct.pack("<Q", len(text)) + text)
        w(struct.pack("<i", len(inputs)))
        for a in inputs:
            if a is None:
                w(struct.pack("<i", 1))
            elif isinstance(a, bytes):
                w(struct.pack("<iQ", 2, len(a)) + a)
            else:
                w(struct.pack("<iq", 0, a))
        w(struct.pack("<i", len(blobs)))
        for b in blobs:
            w(struct.pack("<Q", len(b)) + b)
        self.counts[name if expect_status == 0 else name + " (refused)"] += 1

    def close(self):
        self._file.close()


def aarch64_nan(values: np.ndarray) -> np.ndarray:
    """``values`` with every NaN made the aarch64 default NaN."""
    if values.dtype.kind != "f":
        return values
    values = values.copy()
    values.view(f"u{values.itemsize}")[np.isnan(values)] = 0x7E00 if values.itemsize == 2 else 0x7FC00000
    return values


def _popcount(mask: bytes) -> int:
    return int(np.unpackbits(np.frombuffer(mask, np.uint8)).sum())


# (stream arg, its length arg, nbits arg or element size arg, mask arg) per decoder
_STREAM_ARGS = {"wp_lut_decode": (0, 1, 2, 3), "wp_shift_scale_decode": (0, 1, 2, 4), "wp_sparse_decode": (3, 4, 5, 0)}


def one_code_short(call: Call):
    """The inputs of a masked decoder call with a stream that holds one code fewer than the
    mask's popcount (None when the mask is empty or absent)."""
    stream, length, width, mask = _STREAM_ARGS[call.name]
    if call.inputs[mask] is None or (stored := _popcount(call.inputs[mask])) == 0:
        return None
    inputs = list(call.inputs)
    if call.name == "wp_sparse_decode":  # values of elem_size bytes, counted in values
        inputs[length] = stored - 1
        inputs[stream] = inputs[stream][: (stored - 1) * inputs[width]]
    else:  # the longest n-bit stream holding fewer than `stored` codes
        nbytes = (stored * inputs[width] + 7) // 8 - 1
        inputs[length], inputs[stream] = nbytes, inputs[stream][:nbytes]
    return inputs


def record_decompress(vectors: VectorFile, recorder: Recorder, tensor, dtype, label: str, refusals: bool) -> None:
    recorder.calls.clear()
    tensor.decompress(dtype, backend="c")
    calls = [c for c in recorder.calls if c.name in DECODERS]
    if len(calls) != 1:
        return
    call = calls[0]
    expected = aarch64_nan(tensor.decompress(dtype, backend="numpy"))
    assert len(call.output) == expected.nbytes, (call.name, len(call.output), expected.nbytes)
    vectors.add(call.name, call.inputs, call.status, 0, label, [expected.tobytes()])
    if refusals and (short := one_code_short(call)) is not None:
        vectors.add(call.name, short, status.SIZE, status.SIZE, label + " one code short", [])


def reference_product(tensor, x: np.ndarray):
    """(exact, bound): x @ W.T in float64 with the reference's decoded W, and the float32 bound."""
    w = tensor.decompress(np.float32, backend="numpy").astype(np.float64).reshape(tensor.shape[0], -1)
    x64 = x.astype(np.float64)
    exact = x64 @ w.T
    bound = error_bound(w.shape[1]) * (np.abs(x64) @ np.abs(w).T) + w.shape[1] * UNDERFLOW
    return exact.reshape(-1), bound.reshape(-1)


def record_product(vectors: VectorFile, recorder: Recorder, tensor, x: np.ndarray, label: str, rtol=None) -> None:
    recorder.calls.clear()
    wp.matmul(tensor, x, backend="c", mode="exact" if rtol is None else "fast")
    exact, bound = reference_product(tensor, x)
    for call in recorder.calls:
        if call.name in PRODUCTS:
            vectors.add(call.name, call.inputs, call.status, call.status, label, [exact.tobytes(), bound.tobytes()])
        elif call.name == "wp_fast_matvec":
            ran = call.status == status.OK
            expect = call.status if call.status in (status.OK, status.ARG) else status.NOT_AVAILABLE  # unknown here
            x86 = call.output if ran else b""
            vectors.add(call.name, call.inputs, call.status, expect, label, [exact.tobytes(), struct.pack("<d", rtol), x86])


# ---- what to draw ------------------------------------------------------------------------------

def _float_lut(rng, shape, style):
    values = rng.standard_normal(shape) * 10.0 ** rng.integers(-2, 2)
    if style == "fp16":
        return values.astype(np.float16)
    if style == "fp32 of fp16":  # float32 values that are all binary16: the kernels' plane path
        return values.astype(np.float16).astype(np.float32)
    return values.astype(np.float32)


# The structural kinds of weight a product can have; hypothesis draws each one's layout and values.
PRODUCT_KINDS = (
    [(kind, nbits, style) for kind in ("lut", "sparse_lut") for nbits in (1, 2, 3, 4, 6, 8)
     for style in ("fp16", "fp32 of fp16", "fp32", "int8")]
    + [(kind, data_type, scale_dtype, offset) for kind in ("quant", "sparse_quant") for data_type in strategies.QUANT_TYPES
       for scale_dtype in ("float16", "float32") for offset in ("none", "int", "float")]
    + [("sparse", dtype) for dtype in ("float16", "float32", "int8")]
)


@st.composite
def product_tensors(draw, kind):
    """A (rows, cols) compressed weight of one of PRODUCT_KINDS in any layout, activations, a label."""
    rng = draw(strategies.generators())
    big = draw(st.integers(0, 7)) == 0  # enough work to split over threads
    rows = 64 if big else draw(st.sampled_from([1, 2, 3, 4, 5, 7, 8, 9, 16, 33]))
    cols = 2048 if big else draw(st.sampled_from([8, 16, 24, 32, 48, 64, 96, 100, 128, 192, 256, 320, 512, 1024]))
    groups = (draw(st.sampled_from(strategies.divisors(rows))),
              draw(st.sampled_from([d for d in strategies.divisors(cols) if d <= 64])))
    mask = rng.random((rows, cols)) < draw(st.sampled_from([0.3, 0.7, 0.0, 1.0]))
    nnz = int(mask.sum())
    if kind[0] in ("lut", "sparse_lut"):
        _, nbits, style = kind
        shape = groups + (1 << nbits, 1)
        lut = rng.integers(-128, 128, shape).astype(np.int8) if style == "int8" else _float_lut(rng, shape, style)
        if kind[0] == "lut":
            tensor = wp.PalettizedTensor(NBitArray.from_values(rng.integers(0, 1 << nbits, (rows, cols)), nbits), lut)
        else:
            tensor = wp.SparsePalettizedTensor(mask, NBitArray.from_values(rng.integers(0, 1 << nbits, nnz), nbits), lut)
    elif kind[0] == "sparse":
        tensor = wp.SparseTensor(mask, (rng.standard_normal(nnz) * 30).astype(kind[1]))
    else:
        _, data_type, scale_dtype, offset_kind = kind
        lo, hi = strategies.int_range(data_type)
        bits, signed = int(data_type[-1]), data_type.startswith("int")
        scale = (rng.random(groups) * 0.1).astype(scale_dtype)
        offset = None
        if offset_kind == "int":
            offset = NBitArray.from_values(rng.integers(lo, hi + 1, groups), bits, signed=signed)
        elif offset_kind == "float":
            offset = rng.uniform(lo, hi, groups).astype(scale_dtype)
        if kind[0] == "quant":
            data = NBitArray.from_values(rng.integers(lo, hi + 1, (rows, cols)), bits, signed=signed)
            tensor = wp.QuantizedTensor(data, scale, offset)
        else:
            data = NBitArray.from_values(rng.integers(lo, hi + 1, nnz), bits, signed=signed)
            tensor = wp.SparseQuantizedTensor(mask, data, scale, offset)
    batch = draw(st.sampled_from([1, 2, 3, 5]))
    x = rng.standard_normal((batch, cols)).astype(np.float32)
    label = " ".join(str(part) for part in kind)
    return tensor, x, f"{label}, {rows}x{cols} groups {groups}, density {mask.mean():.2f}, batch {batch}"


@st.composite
def fast_tensors(draw):
    """Weights fast mode covers, drawn like tests/test_fast_mode.py's, with their relative bound."""
    rng = draw(strategies.generators())
    kind = draw(st.sampled_from(["lut4", "lut2", "lut4 per 16 rows", "int8", "uint8 offsets", "int4 blocks of 32",
                                 "uint4 offsets"]))
    if kind.startswith("lut"):
        weight = test_fast_mode.lut_weight(rng, int(kind[3]), groups=6 if "rows" in kind else 1)
    elif kind == "int8":
        weight = test_fast_mode.quantized_weight(rng, "int8")
    elif kind == "uint8 offsets":
        weight = test_fast_mode.quantized_weight(rng, "uint8", offset=True)
    elif kind == "int4 blocks of 32":
        weight = test_fast_mode.quantized_weight(rng, "int4", blocks=16)
    else:
        weight = test_fast_mode.quantized_weight(rng, "uint4", offset=True)
    batch = draw(st.sampled_from([1, 2, 3]))
    x = rng.standard_normal((batch, weight.shape[1])).astype(np.float32)
    rtol = 2 * FAST_RTOL if kind == "lut2" else FAST_RTOL
    return weight, x, rtol, f"fast {kind}, batch {batch}"


def invalid_operation_cases():
    """Shift-scale whose offset step overflows binary16 to infinity, then meets a zero scale:
    inf * 0, an IEEE invalid operation (NaN)."""
    data = NBitArray.from_values(np.array([[-128, 127, 0, 5] * 8] * 2), 8, signed=True)
    scale = np.array([[0.0], [0.5]], np.float16)
    offset = np.array([[65504.0], [-65504.0]], np.float16)
    yield wp.QuantizedTensor(data, scale, offset), "int8 fp16 inf * 0"


def draw(strategy, count: int, seed_value):
    """``count`` examples of a hypothesis strategy (deterministic unless a seed is given)."""
    examples = []

    @settings(max_examples=count, database=None, deadline=None, derandomize=seed_value is None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(strategy)
    def collect(value):
        examples.append(value)

    if seed_value is not None:
        collect = seed(seed_value)(collect)
    collect()
    return examples[:count]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--examples", type=int, default=100,
                        help="hypothesis examples of decompression; a twentieth of it for each kind of product (default 100)")
    parser.add_argument("--seed", type=int, default=None, help="vary the examples (default: the same every run)")
    args = parser.parse_args(argv)
    n = args.examples
    recorder = Recorder(lib)
    backend_c.lib = recorder
    backend_c.set_threads(2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    vectors = VectorFile(args.out)
    try:
        for i, case in enumerate(draw(strategies.any_cases(), 2 * n, args.seed)):
            tensor = case.build()
            for dtype in (None, np.float16, np.float32):
                record_decompress(vectors, recorder, tensor, dtype, f"small {tensor!r}"[:80], refusals=i % 4 == 0)
        for i, tensor in enumerate(draw(large_tensors(), n // 2, args.seed)):
            dtype = (None, np.float16, np.float32)[i % 3]
            record_decompress(vectors, recorder, tensor, dtype, f"large {type(tensor).__name__} {tensor.shape}", True)
        for tensor, label in invalid_operation_cases():
            for dtype in (np.float16, np.float32):
                record_decompress(vectors, recorder, tensor, dtype, label, False)
        for kind in PRODUCT_KINDS:
            for tensor, x, label in draw(product_tensors(kind), max(1, n // 20), args.seed):
                record_product(vectors, recorder, tensor, x, label)
        for tensor, x, rtol, label in draw(fast_tensors(), n // 4, args.seed):
            record_product(vectors, recorder, tensor, x, label, rtol)
    finally:
        vectors.close()
        backend_c.lib = lib
    for name, count in sorted(vectors.counts.items()):
        print(f"{count:6d} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
