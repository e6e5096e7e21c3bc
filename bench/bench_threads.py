"""How weightpack's two threads fare between other calls: idle gaps and BLAS calls.

Two experiments on one fused product (default: 4-bit LUT, 4096 x 4096, batch 1; weights rotated
past twice the last-level cache), medians of ``--repeats`` calls, each reported with the share of
the CPUs other processes used meanwhile:

- gaps: calls separated by sleeps of 0-100 ms, 1 and 2 threads. A gap longer than the pool's
  spin (``WEIGHTPACK_SPIN_US``) finds the worker asleep; on a virtual machine waking it can cost
  most of a millisecond.
- BLAS: each call right after a numpy float32 GEMV, for weightpack / OpenBLAS thread counts 2/2,
  2/1, 1/2, 1/1 (threadpoolctl), 0.3 s apart so that OpenBLAS's spinning workers of one
  configuration do not leak into the next. Run it again under ``OPENBLAS_THREAD_TIMEOUT=4`` (read
  by OpenBLAS when it loads) to see its workers' spin removed.

    python bench/bench_threads.py
    WEIGHTPACK_SPIN_US=50 python bench/bench_threads.py --only gaps
    OPENBLAS_THREAD_TIMEOUT=4 python bench/bench_threads.py --only blas
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import weightpack as wp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import PRODUCT_KINDS, copies_for, make_weight  # noqa: E402
from machine import OtherLoad, describe, info, wait_until_quiet  # noqa: E402


def timed(fn, repeats: int, before=None) -> float:
    times = []
    for i in range(repeats):
        if before:
            before(i)
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default="lut4", choices=PRODUCT_KINDS)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--only", choices=["gaps", "blas"])
    args = parser.parse_args(argv)
    meta = info()
    print(describe(meta))
    rng = np.random.default_rng(0)
    n = args.size
    x = rng.standard_normal((1, n)).astype(np.float32)
    first = make_weight(args.kind, n, n, rng)
    weights = [first] + [make_weight(args.kind, n, n, rng) for _ in range(copies_for(first.nbytes, meta["llc_bytes"]) - 1)]
    for w in weights:
        wp.matmul(w, x, backend="c")
    product = lambda i: wp.matmul(weights[i % len(weights)], x, backend="c")  # noqa: E731
    if args.only in (None, "gaps"):
        for gap in (0, 1e-4, 1e-3, 1e-2, 1e-1):
            wait_until_quiet(patience=120)
            with OtherLoad() as others:
                row = {}
                for threads in (1, 2):
                    with wp.threads(threads):
                        row[threads] = timed(product, args.repeats, lambda i: gap and time.sleep(gap))
            print(f"gap {gap * 1e3:6.1f} ms: 1 thread {row[1] * 1e3:.3f} ms, 2 threads {row[2] * 1e3:.3f} ms "
                  f"(x{row[1] / row[2]:.2f}; others used {100 * (others.share or 0):.0f}% of the CPUs)", flush=True)
    if args.only in (None, "blas"):
        dense = [rng.standard_normal((n, n)).astype(np.float32) for _ in range(copies_for(4 * n * n, meta["llc_bytes"]))]
        gemv = lambda i: x @ dense[i % len(dense)].T  # noqa: E731
        for threads, blas in ((2, 2), (2, 1), (1, 2), (1, 1)):
            wait_until_quiet(patience=120)
            with OtherLoad() as others, wp.threads(threads, blas=blas):
                time.sleep(0.3)
                ours = timed(product, args.repeats, gemv)
                theirs = timed(gemv, args.repeats, product)
            print(f"weightpack {threads}T after a numpy GEMV with BLAS {blas}T: {ours * 1e3:.3f} ms "
                  f"(GEMV {theirs * 1e3:.3f} ms; others used {100 * (others.share or 0):.0f}% of the CPUs)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
