"""Predicted cycles per 64 weights of the AVX2 hot loops (llvm-mca), one column per CPU model.

Compiles bench/mca_avx2.c (which includes the AVX2 kernel sources) with clang and -DWP_MCA, so
that each hot loop body is marked; every function of the harness named ``mca_<what>_w<N>``
instantiates one loop whose body (one pass) handles N weights. The loop around each marker is
fed to llvm-mca on its own (llvm-mca repeats it) for each CPU model.

    python bench/mca_avx2.py                       # haswell skylake icelake-client znver2 znver3
    python bench/mca_avx2.py --cpus haswell znver3 --only product
    python bench/mca_avx2.py --show product_lut4_planes --cpus haswell   # llvm-mca's full report
    python bench/mca_avx2.py --measure          # and the same formats timed here (AVX2 forced)

--measure times the C backend at the avx2 level on one thread, per format of bench_kernels.py,
on a 256 x 4096 weight (1 M weights: the codes stay in L2, so the figure is the loop's, not the
memory's): the best of 5 medians of 100 calls, in nanoseconds per 64 weights (decompression: per
64 elements written to float32).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CPUS = ["haswell", "skylake", "icelake-client", "znver2", "znver3"]


def compile_harness(compiler: str) -> str:
    flags = ["-O3", "-std=c11", "-ffp-contract=off", "-fno-strict-aliasing", "-DWP_MCA", f"-I{HERE.parent / 'csrc'}"]
    return subprocess.run([compiler, *flags, "-S", "-o", "-", str(HERE / "mca_avx2.c")],
                          check=True, capture_output=True, text=True).stdout


def innermost_loop(lines: list[str], anchor: int) -> list[str] | None:
    """The instructions of the smallest loop (a label and a later jump back to it) around line anchor."""
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"(\.LBB\w+):", line))}
    best = None
    for i, line in enumerate(lines):
        m = re.match(r"\s+j\w+\s+(\.LBB\w+)", line)
        if m and m.group(1) in labels and labels[m.group(1)] <= anchor <= i:
            if best is None or i - labels[m.group(1)] < best[1] - best[0]:
                best = (labels[m.group(1)], i)
    if best is None:
        return None
    return [line for line in lines[best[0] + 1:best[1] + 1] if not re.match(r"\s*(#|\.|$)", line)]


def regions(asm: str) -> dict[str, tuple[int, str]]:
    """{harness name: (weights per pass, loop body)}: the loop around the marked body inside each
    harness function (the whole loop: the compiler may move code across the markers; of several
    copies of the body, the tightest loop)."""
    found = {}
    for chunk in asm.split("-- Begin function ")[1:]:
        match = re.match(r"mca_(\w+)_w(\d+)\s", chunk)
        lines = chunk.splitlines()
        markers = [(i, line.split("LLVM-MCA-BEGIN")[1].strip()) for i, line in enumerate(lines) if "LLVM-MCA-BEGIN" in line]
        if not match or not markers:
            continue
        named = [i for i, marker in markers if marker.split("_")[-1] in match.group(1).split("_")]
        # a marked body may be copied (loop versions, peeled passes): take its tightest loop
        loops = [loop for i in (named or [markers[0][0]]) if (loop := innermost_loop(lines, i))]
        if loops:
            found[match.group(1)] = (int(match.group(2)), "\n".join(min(loops, key=len)) + "\n")
    return found


def mca(body: str, cpu: str, full: bool = False) -> float | str:
    out = subprocess.run(["llvm-mca-14", f"-mcpu={cpu}", "-iterations=200", *([] if full else ["-summary-view"])],
                         input=body, capture_output=True, text=True, check=True).stdout
    if full:
        return out
    return int(re.search(r"Total Cycles:\s+(\d+)", out).group(1)) / 200


MEASURED = {  # bench_kernels.py format -> the loop it runs (and what is timed)
    "lut4": "product_lut4_planes", "lut2": "product_lut2_vpermps", "lut6": "product_lut6_halfplanes",
    "lut8": "product_lut8_gather", "int8": "product_int8_f16scale_split", "int4-b32": "product_int4_block32_split",
    "sparse50": "product_sparse_fp16_expand_aligned", "sparse50-lut4": "product_sparse_lut4_expand_aligned",
    "decode lut4": "decode_lut4_f32", "decode lut6": "decode_lut6_halfplanes_f32", "decode lut8": "decode_lut8_f32",
    "decode int8": "decode_int8_f16scale_f32", "decode int4-b32": "decode_int4_f16scale_f32",
}


def measure(rows: int = 256, cols: int = 4096) -> dict[str, float]:
    """ns per 64 weights of each format of MEASURED, one thread, AVX2."""
    import time

    import numpy as np

    import weightpack as wp
    from weightpack.kernels import backend_c

    sys.path.insert(0, str(HERE))
    from bench_kernels import make_weight

    backend_c.set_simd("avx2")
    backend_c.set_threads(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, cols)).astype(np.float32)
    out = np.empty((rows, cols), np.float32)
    figures = {}
    for name in MEASURED:
        weight = make_weight(name.split()[-1], rows, cols, rng)
        if name.startswith("decode"):
            def call():
                weight.decompress(np.float32, backend="c", out=out)
        else:
            def call():
                wp.matmul(weight, x, backend="c")
        call()
        best = min(float(np.median([_time(call, time) for _ in range(100)])) for _ in range(5))
        figures[name] = best / (rows * cols) * 64 * 1e9
    return figures


def _time(call, time) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpus", nargs="+", default=CPUS)
    parser.add_argument("--only", help="regions whose name contains this")
    parser.add_argument("--show", help="print llvm-mca's full report of this region (first --cpus entry)")
    parser.add_argument("--compiler", default="clang-14")
    parser.add_argument("--measure", action="store_true", help="also time the formats here (AVX2 forced, one thread)")
    args = parser.parse_args(argv)
    found = regions(compile_harness(args.compiler))
    if args.show:
        print(mca(found[args.show][1], args.cpus[0], full=True))
        return 0
    print(f"llvm-mca-14 cycles per 64 weights ({args.compiler} -O3, AVX2 kernels of csrc/)")
    print(f"{'loop':36s}" + "".join(f"{c:>15s}" for c in args.cpus))
    for name, (weights, body) in found.items():
        if args.only and args.only not in name:
            continue
        print(f"{name:36s}" + "".join(f"{mca(body, cpu) * 64 / weights:15.1f}" for cpu in args.cpus), flush=True)
    if args.measure:
        import os

        load = os.getloadavg()[0]
        print(f"\nmeasured here, ns per 64 weights (AVX2 forced, 1 thread, 256 x 4096, load {load:.2f}):")
        for name, ns in measure().items():
            print(f"{name:18s} {ns:7.1f}   ({MEASURED[name]})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
