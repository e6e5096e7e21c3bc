"""Kernel benchmarks: fused products and decompression against baselines measured in the same run.

Every figure is a ratio to a baseline timed in the same process, right beside it:

- products: numpy's dense float32 product (OpenBLAS) on the same shape and batch;
- decompression: a numpy copy of as many bytes as the output (memcpy), and coremltools' own numpy
  decompression of the same arrays (its iOS 18 ops' ``decompress``).

Medians over many repetitions; every timed call takes the next of several copies of its input,
so the working set is at least twice the last-level cache as this CPU reports it (``--llc-mb``
overrides) and the weights come from memory, as in a real model. Products are timed with numpy's
BLAS calls in between (each weightpack call follows a numpy call and each numpy call a weightpack
call: both orders, as a model alternates them; OpenBLAS's workers spin after each call) and,
with ``--standalone``, back to back as well; ``--threads 1 2`` repeats everything per thread
count (numpy's BLAS limited to the same count through threadpoolctl, or to each of
``--blas-threads``). Each product line says
how much CPU other processes used while it was measured (``--wait-quiet S`` waits for a quiet
second first). The output starts with
the CPU model, its flags and its cache. Prints a table, writes JSON (``--json``).

    python bench/bench_kernels.py                      # everything (several minutes)
    python bench/bench_kernels.py --only matvec --shapes 4096x4096 --batches 1 --threads 1 2 --standalone
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import weightpack as wp
from weightpack import NBitArray
from weightpack.kernels import backend_c

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import OtherLoad, describe, info, wait_until_quiet  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def median_seconds(fn, inputs, repeats: int) -> float:
    """Median wall time of fn(inputs[i % len(inputs)]) over ``repeats`` calls (after one warm-up)."""
    fn(inputs[0])
    times = []
    for i in range(repeats):
        arg = inputs[(i + 1) % len(inputs)]
        start = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def copies_for(nbytes: int, llc_bytes: int) -> int:
    """How many copies of an input of ``nbytes`` make a working set of at least 2x the LLC."""
    return max(2, -(-2 * llc_bytes // max(nbytes, 1)))


def interleaved_medians(first, second, inputs_first, inputs_second, repeats: int) -> tuple[float, float]:
    """Median wall times of first(a_i) and second(b_i) called alternately (after one warm-up each):
    every call of one follows a call of the other."""
    first(inputs_first[0]), second(inputs_second[0])
    times_first, times_second = [], []
    for i in range(repeats):
        for fn, inputs, times in ((first, inputs_first, times_first), (second, inputs_second, times_second)):
            arg = inputs[(i + 1) % len(inputs)]
            start = time.perf_counter()
            fn(arg)
            times.append(time.perf_counter() - start)
    return float(np.median(times_first)), float(np.median(times_second))


def standalone_medians(first, second, inputs_first, inputs_second, repeats: int) -> tuple[float, float]:
    """Median wall times of first's calls back to back, then of second's once BLAS's worker
    threads have stopped spinning (OpenBLAS: ~0.1 s after its last call), so second runs alone."""
    before = median_seconds(first, inputs_first, repeats)
    time.sleep(0.25)
    return before, median_seconds(second, inputs_second, repeats)


def thread_limits(count: int, blas: int | None = None):
    """weightpack's and (through threadpoolctl, when installed) the BLAS's thread count (default: the same)."""
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return wp.threads(count)
    return wp.threads(count, blas=blas or count)


def random_lut(rng, nbits: int, groups: int = 1) -> np.ndarray:
    return np.sort(rng.standard_normal((groups, 1, 1 << nbits, 1)) * 0.02, axis=2).astype(np.float16)


def make_weight(kind: str, rows: int, cols: int, rng) -> wp.CompressedTensor:
    """The weight formats the issue names, with random (not trained) values."""
    if kind.startswith("lut"):  # lut4, lut4-g16, lut2, lut6, lut8
        nbits = int(kind[3])
        groups = rows // 16 if kind.endswith("g16") else 1
        codes = NBitArray(rng.integers(0, 256, rows * cols * nbits // 8, dtype=np.uint8), nbits, (rows, cols))
        return wp.PalettizedTensor(codes, random_lut(rng, nbits, groups))
    if kind in ("int8", "int8-f32"):  # binary16 scales (Core ML's fp16(scale * q)) or float32 scales
        data = rng.integers(-127, 128, (rows, cols)).astype(np.int8)
        return wp.QuantizedTensor(data, (rng.random((rows, 1)) * 1e-3).astype(np.float16 if kind == "int8" else np.float32))
    if kind == "int4-b32":
        data = NBitArray(rng.integers(0, 256, rows * cols // 2, dtype=np.uint8), 4, (rows, cols), signed=True)
        return wp.QuantizedTensor(data, (rng.random((rows, cols // 32)) * 1e-2).astype(np.float16))
    if kind.startswith("sparse"):  # sparse50, sparse75, sparse50-lut4
        keep = rng.random((rows, cols)) >= int(kind[6:8]) / 100
        count = int(keep.sum())
        if kind.endswith("lut4"):
            return wp.SparsePalettizedTensor(keep, NBitArray.from_values(rng.integers(0, 16, count), 4), random_lut(rng, 4))
        return wp.SparseTensor(keep, (rng.standard_normal(count) * 0.02).astype(np.float16))
    raise ValueError(kind)


FAST_KINDS = ("lut4", "lut4-g16", "lut2", "int8", "int8-f32", "int4-b32")  # layouts fast mode covers
PRODUCT_KINDS = ("lut4", "lut4-g16", "lut2", "lut6", "lut8", "int8", "int8-f32", "int4-b32", "sparse50", "sparse75", "sparse50-lut4")


def bench_products(args, rng) -> list[dict]:
    rows_out = []
    for shape in args.shapes:
        rows, cols = shape
        dense = [rng.standard_normal((rows, cols)).astype(np.float32) for _ in range(copies_for(rows * cols * 4, args.llc))]
        for batch in args.batches:
            x = rng.standard_normal((batch, cols)).astype(np.float32)
            for kind in args.kinds:
                weights = [make_weight(kind, rows, cols, rng)]
                weights += [make_weight(kind, rows, cols, rng) for _ in range(copies_for(weights[0].nbytes, args.llc) - 1)]
                modes = [m for m in args.modes if m == "exact" or kind in FAST_KINDS]
                for w in weights:  # derived data (sparse row starts, tables) is part of loading, not of the product
                    for mode in modes:
                        wp.matmul(w, x[:1], backend="c", mode=mode)
                for mode in modes:
                    product = lambda w: wp.matmul(w, x, backend="c", mode=mode)  # noqa: E731
                    numpy = lambda d: x @ d.T  # noqa: E731
                    for threads, blas in [(t, b or t) for t in args.threads for b in (args.blas_threads or [None])]:
                        with thread_limits(threads, blas):
                            orders = [("beside BLAS", lambda: interleaved_medians(numpy, product, dense, weights, args.repeats))]
                            if args.standalone:
                                orders.append(("standalone", lambda: standalone_medians(numpy, product, dense, weights, args.repeats)))
                            for order, measure in orders:
                                if args.wait_quiet:
                                    wait_until_quiet(patience=args.wait_quiet)
                                with OtherLoad() as others:
                                    baseline, seconds = measure()
                                row = dict(test="matmul", kind=kind, mode=mode, shape=f"{rows}x{cols}", batch=batch,
                                           threads=threads, blas_threads=blas, order=order, seconds=seconds, numpy_fp32_seconds=baseline,
                                           speedup=baseline / seconds, bits_per_weight=8 * weights[0].nbytes / (rows * cols),
                                           others_cpu_share=others.share)
                                rows_out.append(row)
                                busy = "" if others.share is None else f" (others used {100 * others.share:3.0f}% of the CPUs)"
                                print(f"matmul {kind:14s} {mode:5s} {rows}x{cols} batch {batch:2d} {threads}T{'' if blas == threads else f' (BLAS {blas}T)'} {order:11s}: "
                                      f"{seconds * 1e3:8.3f} ms, numpy fp32 {baseline * 1e3:8.3f} ms, "
                                      f"speedup {baseline / seconds:5.2f}x{busy}", flush=True)
                del weights
    return rows_out


DECOMPRESS_KINDS = ("lut2", "lut4", "lut6", "lut8", "int8", "int4-b32", "sparse50", "sparse50-lut4")


def coremltools_decompress(weight):
    """coremltools' own (numpy) decompression of the same arrays, as its iOS 18 ops define it."""
    from coremltools.converters.mil.mil.ops.defs.iOS18 import compression as ops

    if isinstance(weight, wp.PalettizedTensor):
        indices, lut = weight.indices.values(), weight.lut
        return lambda: ops.constexpr_lut_to_dense.decompress(indices, lut, None)
    if isinstance(weight, wp.QuantizedTensor):
        data, scale = weight.data.values(), weight.scale
        return lambda: ops.constexpr_blockwise_shift_scale.decompress(data, scale, None)
    if isinstance(weight, wp.SparseTensor):
        mask, values = weight.mask.values(), weight.nonzero_data
        return lambda: ops.constexpr_sparse_to_dense.decompress(values, mask)
    mask, indices, lut = weight.indices_mask.values(), weight.indices_nonzero_data.values(), weight.lut

    def lut_to_sparse():
        m, values = ops.constexpr_lut_to_sparse.decompress(mask, indices, lut, None)
        return ops.constexpr_sparse_to_dense.decompress(values, m)

    return lut_to_sparse


def bench_decompression(args, rng) -> list[dict]:
    rows_out = []
    rows, cols = args.shapes[0]
    for dtype in (np.float32, np.float16):
        out_bytes = rows * cols * np.dtype(dtype).itemsize
        sources = [np.empty(out_bytes, np.uint8) for _ in range(copies_for(out_bytes, args.llc))]
        target = np.empty(out_bytes, np.uint8)
        memcpy = median_seconds(lambda s: np.copyto(target, s), sources, args.repeats)
        for kind in args.decompress_kinds:
            weights = [make_weight(kind, rows, cols, rng) for _ in range(copies_for(rows * cols, args.llc))]
            out = np.empty((rows, cols), dtype)
            for backend in args.backends:
                seconds = median_seconds(lambda w: w.decompress(dtype, backend=backend, out=out), weights, args.repeats)
                row = dict(test="decompress", kind=kind, dtype=np.dtype(dtype).name, backend=backend,
                           shape=f"{rows}x{cols}", seconds=seconds, memcpy_seconds=memcpy,
                           vs_memcpy=memcpy / seconds)
                if backend == "c" and dtype == np.float32:
                    oracle = coremltools_decompress(weights[0])
                    ct = median_seconds(lambda _: oracle(), [None], max(3, args.repeats // 10))
                    row.update(coremltools_seconds=ct, vs_coremltools=ct / seconds)
                rows_out.append(row)
                extra = f", coremltools x{row['vs_coremltools']:.1f}" if "vs_coremltools" in row else ""
                print(f"decompress {kind:14s} -> {np.dtype(dtype).name:7s} {backend:5s}: {seconds * 1e3:8.3f} ms, "
                      f"memcpy {memcpy * 1e3:7.3f} ms, x{memcpy / seconds:5.2f}{extra}", flush=True)
    return rows_out


def transformer_layers(rng, nbits: int, hidden: int = 2048, mlp: int = 8192, blocks: int = 6):
    """12 linear layers (6 blocks of up- and down-projection), palettized at nbits."""
    from weightpack.runtime import Linear

    layers = []
    for _ in range(blocks):
        for shape in ((mlp, hidden), (hidden, mlp)):
            codes = NBitArray(rng.integers(0, 256, shape[0] * shape[1] * nbits // 8, dtype=np.uint8), nbits, shape)
            layers.append(Linear(wp.PalettizedTensor(codes, random_lut(rng, nbits)), activation="relu" if shape[0] == mlp else None))
    return layers


def bench_runtime(args, rng) -> list[dict]:
    from weightpack.runtime import Model

    rows_out = []
    layers = transformer_layers(rng, 4)
    for batch in (1, 32):
        x = rng.standard_normal((batch, 2048)).astype(np.float32)
        results = {}
        for policy in ("load", "jit", "auto"):
            model = Model(layers, policy=policy, batch_size=batch)
            time.sleep(0.5)  # BLAS worker threads spin ~0.1 s after a call (auto's cost model makes some)
            latency = median_seconds(lambda _: model(x), [None], max(5, args.repeats // 4))
            results[policy] = dict(load_seconds=model.report.load_seconds, latency_seconds=latency,
                                   resident_weight_bytes=model.report.resident_weight_bytes,
                                   scratch_bytes=model.report.scratch_bytes, modes=model.report.layer_modes)
            del model
        for policy, r in results.items():
            row = dict(test="runtime", policy=policy, batch=batch, **r,
                       latency_vs_load=r["latency_seconds"] / results["load"]["latency_seconds"],
                       resident_vs_load=r["resident_weight_bytes"] / results["load"]["resident_weight_bytes"],
                       load_time_vs_load=r["load_seconds"] / results["load"]["load_seconds"])
            rows_out.append(row)
            print(f"runtime 12x(2048<->8192) 4-bit batch {batch:2d} {policy:4s}: load {r['load_seconds'] * 1e3:8.1f} ms "
                  f"(x{row['load_time_vs_load']:.3f}), resident {r['resident_weight_bytes'] / 1e6:7.1f} MB "
                  f"(x{row['resident_vs_load']:.3f}), latency {r['latency_seconds'] * 1e3:7.2f} ms "
                  f"(x{row['latency_vs_load']:.3f})", flush=True)
    return rows_out


def parse_shape(text: str) -> tuple[int, int]:
    rows, cols = text.lower().split("x")
    return int(rows), int(cols)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["matvec", "decompress", "runtime"], action="append")
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=[(4096, 4096), (11008, 4096)])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--kinds", nargs="+", default=list(PRODUCT_KINDS), choices=PRODUCT_KINDS)
    parser.add_argument("--modes", nargs="+", default=["exact", "fast"], choices=["exact", "fast"])
    parser.add_argument("--decompress-kinds", nargs="+", default=list(DECOMPRESS_KINDS), choices=DECOMPRESS_KINDS)
    parser.add_argument("--backends", nargs="+", default=["c", "numba", "numpy"])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, nargs="+", default=[backend_c.set_threads()],
                        help="thread counts to measure products with (default: all CPUs)")
    parser.add_argument("--blas-threads", type=int, nargs="+", metavar="N",
                        help="BLAS thread counts to pair with each of --threads (default: the same count)")
    parser.add_argument("--standalone", action="store_true", help="also time products back to back, no BLAS between")
    parser.add_argument("--llc-mb", dest="llc", type=lambda v: int(float(v) * 2**20), default=None,
                        help="last-level cache to rotate inputs past (default: the size the CPU reports)")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before each product measurement, wait up to SECONDS for a second in which other "
                             "processes use < 5%% of the CPUs (two-thread figures mean little otherwise)")
    parser.add_argument("--blas-sleep", action="store_true",
                        help="wp.blas_sleep_when_idle() first: OpenBLAS's idle workers sleep after each call")
    parser.add_argument("--json", type=Path, default=RESULTS / "kernels.json")
    parser.add_argument("--simd", default=os.environ.get("WEIGHTPACK_SIMD") or None,
                        help="SIMD level of the C backend (default: WEIGHTPACK_SIMD, else the best this CPU has)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    sections = args.only or ["matvec", "decompress", "runtime"]
    backend_c.set_simd(args.simd)
    meta = dict(info(), numpy=np.__version__, python=sys.version.split()[0], argv=sys.argv[1:] if argv is None else argv)
    if args.blas_sleep:
        np.ones((64, 64), np.float32) @ np.ones(64, np.float32)  # loads BLAS and starts its workers
        meta["openblas_thread_timeout"] = f"4 (wp.blas_sleep_when_idle(): {len(wp.blas_sleep_when_idle())} libraries)"
    args.llc = args.llc or meta["llc_bytes"]
    print(describe(meta))
    print(f"weightpack {wp.__version__}, numpy {meta['numpy']}; inputs rotated past {2 * args.llc / 2**20:.0f} MiB")
    results = []
    if "matvec" in sections:
        results += bench_products(args, rng)
    if "decompress" in sections:
        results += bench_decompression(args, rng)
    if "runtime" in sections:
        results += bench_runtime(args, rng)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(dict(meta=meta, results=results), indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
