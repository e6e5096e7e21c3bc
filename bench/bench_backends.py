"""The numba backend against the C backend: speed ratio per format, measured in the same run.

For each weight format (4096 x 4096 by default): decompression to float32 and the batch-1
product (matvec), on 1 and 2 threads, each backend called explicitly (``backend="c"`` /
``backend="numba"``, whatever ``WEIGHTPACK_BACKEND`` says). Every figure is the median over many
calls, each call taking the next of several copies of its input so that the working set is at
least twice the last-level cache the CPU reports (``--llc-mb`` overrides) and weights come from
memory. The two backends are called alternately (every numba call follows a C call, so both see
the same machine load). The ratio is numba time / C time (above 1: numba is slower). Compilation
and derived data (plans, tables) are made before timing, as at load.

    python bench/bench_backends.py                 # every format, 1 and 2 threads
    python bench/bench_backends.py --kinds lut4 int8 --threads 1 --repeats 20
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import weightpack as wp
from weightpack.kernels import backend_c, backend_numba

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import copies_for, interleaved_medians, make_weight  # noqa: E402
from machine import describe, info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("lut1", "lut2", "lut3", "lut4", "lut4-g16", "lut6", "lut8", "int8", "int4-b32",
         "sparse50", "sparse75", "sparse50-lut4")


def weight_kind(kind: str, rows: int, cols: int, rng):
    """The formats of bench_kernels, plus 1- and 3-bit LUTs."""
    if kind in ("lut1", "lut3"):
        nbits = int(kind[3])
        codes = wp.NBitArray(rng.integers(0, 256, rows * cols * nbits // 8, dtype=np.uint8), nbits, (rows, cols))
        lut = np.sort(rng.standard_normal((1, 1, 1 << nbits, 1)) * 0.02, axis=2).astype(np.float16)
        return wp.PalettizedTensor(codes, lut)
    return make_weight(kind, rows, cols, rng)


def timed_pair(fn, weights, repeats: int) -> dict:
    """Median seconds of ``fn(backend, weight)`` for C and numba, called alternately."""
    c, numba = interleaved_medians(lambda w: fn("c", w), lambda w: fn("numba", w), weights, weights, repeats)
    return {"c": c, "numba": numba}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--llc-mb", dest="llc", type=lambda v: int(float(v) * 2**20), default=None)
    parser.add_argument("--json", type=Path, default=RESULTS / "backends.json")
    args = parser.parse_args(argv)
    meta = dict(info(), numpy=np.__version__, numba=backend_numba.numba.__version__, python=sys.version.split()[0],
                argv=sys.argv[1:] if argv is None else argv)
    llc = args.llc or meta["llc_bytes"]
    print(describe(meta))
    print(f"numba {meta['numba']}, numpy {meta['numpy']}; inputs rotated past {2 * llc / 2**20:.0f} MiB")
    rng = np.random.default_rng(0)
    rows, cols = args.rows, args.cols
    x = rng.standard_normal((1, cols)).astype(np.float32)
    out = np.empty((rows, cols), np.float32)
    results = []
    print(f"\n{rows}x{cols}, medians of {args.repeats} calls; ratio = numba time / C time")
    print(f"{'weight':14s} {'threads':>7s} | {'decompress c':>12s} {'numba':>9s} {'ratio':>6s} | "
          f"{'matvec c':>9s} {'numba':>9s} {'ratio':>6s}")
    for kind in args.kinds:
        first = weight_kind(kind, rows, cols, rng)
        weights = [first] + [weight_kind(kind, rows, cols, rng) for _ in range(copies_for(first.nbytes, llc) - 1)]
        for w in weights:  # compile, and make the derived data (row starts, tables) as a load would
            for backend in ("c", "numba"):
                w.decompress(np.float32, backend=backend, out=out)
                wp.matmul(w, x, backend=backend)
        for threads in args.threads:
            backend_c.set_threads(threads)
            backend_numba.set_threads(threads)
            decode = timed_pair(lambda b, w: w.decompress(np.float32, backend=b, out=out), weights, args.repeats)
            matvec = timed_pair(lambda b, w: wp.matmul(w, x, backend=b), weights, args.repeats)
            row = dict(kind=kind, shape=f"{rows}x{cols}", threads=threads, copies=len(weights),
                       decompress_c=decode["c"], decompress_numba=decode["numba"],
                       decompress_ratio=decode["numba"] / decode["c"],
                       matvec_c=matvec["c"], matvec_numba=matvec["numba"], matvec_ratio=matvec["numba"] / matvec["c"])
            results.append(row)
            print(f"{kind:14s} {threads:7d} | {decode['c'] * 1e3:9.2f} ms {decode['numba'] * 1e3:6.2f} ms "
                  f"{row['decompress_ratio']:6.1f} | {matvec['c'] * 1e3:6.2f} ms {matvec['numba'] * 1e3:6.2f} ms "
                  f"{row['matvec_ratio']:6.1f}", flush=True)
        del weights, first
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(dict(meta=meta, results=results), indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
