"""Predicted cycles per 64 weights of the x86 hot loops (llvm-mca), one column per CPU model.

Compiles a harness (bench/mca_avx2.c, or bench/mca_avx512.c once per part) that includes the
kernel sources of one instruction-set level with -DWP_MCA, so that each hot loop body is marked;
every function of the harness named ``mca_<what>_w<N>`` instantiates one loop whose body (one pass)
handles N weights. The loop around each marker is fed to llvm-mca on its own (llvm-mca repeats
it) for each CPU model.

    python bench/mca_x86.py --isa avx2             # haswell skylake icelake-client znver2 znver3
    python bench/mca_x86.py --isa avx512           # znver4 sapphirerapids skylake-avx512 icelake-server
    python bench/mca_x86.py --isa avx512 --only product --cpus znver4
    python bench/mca_x86.py --isa avx512 --show product_lut8_bytes --cpus znver4   # llvm-mca's full report
    python bench/mca_x86.py --isa avx512 --measure   # and the same formats timed here (level forced)

avx2: clang-14 and llvm-mca-14 (bench/mca_avx2.py is this with --isa avx2). avx512: gcc (the
compiler that builds the extension here; clang 14 cannot compile the AVX512-FP16 kernels) and
llvm-mca-19 (Debian 12: apt-get install llvm-19): LLVM 14 and 16 model -mcpu=sapphirerapids with
Skylake-server's tables and LLVM 14 does not know znver4; LLVM 19 has models of both. Loops of the
AVX512-FP16 level (named *_vmulph_*) are predicted only for CPUs that have the instructions.

--measure times the C backend at the ISA's level (or the level a format names after @) on one
thread, per format of bench_kernels.py, on a 256 x 4096 weight (1 M weights: the codes stay in L2,
so the figure is the loop's, not the memory's): the best of 5 medians of 100 calls, in nanoseconds
per 64 weights (decompression: per 64 elements written to float32).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Isa:
    harness: str
    cpus: tuple[str, ...]
    compiler: str
    mca: str
    level: str  # the SIMD level --measure forces
    measured: dict[str, str]  # "[decode |fast ]<bench_kernels kind>[@level]" -> the loop it runs
    parts: tuple[int | None, ...] = (None,)  # -DMCA_PART values, one compilation each
    feature_cpus: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name token -> CPUs that have it


ISAS = {
    "avx2": Isa(
        "mca_avx2.c", ("haswell", "skylake", "icelake-client", "znver2", "znver3"), "clang-14", "llvm-mca-14", "avx2",
        {"lut4": "product_lut4_planes", "lut2": "product_lut2_vpermps", "lut6": "product_lut6_halfplanes",
         "lut8": "product_lut8_gather", "int8": "product_int8_f16scale_split", "int4-b32": "product_int4_block32_split",
         "sparse50": "product_sparse_fp16_expand_aligned", "sparse50-lut4": "product_sparse_lut4_expand_aligned",
         "decode lut4": "decode_lut4_f32", "decode lut6": "decode_lut6_halfplanes_f32", "decode lut8": "decode_lut8_f32",
         "decode int8": "decode_int8_f16scale_f32", "decode int4-b32": "decode_int4_f16scale_f32"}),
    "avx512": Isa(
        "mca_avx512.c", ("znver4", "sapphirerapids", "skylake-avx512", "icelake-server"), "gcc", "llvm-mca-19", "avx512",
        {"lut4": "product_lut4_small", "lut4-g16": "product_lut4_small", "lut2": "product_lut2_small",
         "lut6": "product_lut6_bytes", "lut8": "product_lut8_bytes", "int8": "product_int8_f16scale_convert",
         "int8@avx512fp16": "product_int8_f16scale_vmulph", "int8-f32": "product_int8_f32scale",
         "int4-b32": "product_int4_block32_small_outer", "sparse50": "product_sparse_fp16_bytes",
         "sparse75": "product_sparse_fp16_bytes", "sparse50-lut4": "product_sparse_lut4_bytes",
         "sparse50-int8": "product_sparse_int8_f16scale_table_bytes",
         "fast lut4": "fast_lut4", "fast lut2": "fast_lut2", "fast int8": "fast_int8", "fast int4-b32": "fast_int4_block32",
         "decode lut4": "decode_lut4_f32", "decode lut6": "decode_lut6_f32", "decode lut8": "decode_lut8_f32",
         "decode int8": "decode_int8_f16scale_table_f32", "decode int4-b32": "decode_int4_f16scale_f32",
         "decode sparse50": "decode_sparse_fp16_f32", "decode sparse50-lut4": "decode_sparse_lut4_f32"},
        parts=(1, 2, 3, 4), feature_cpus={"vmulph": ("sapphirerapids",)}),
}


def compile_harness(isa: Isa, compiler: str) -> str:
    flags = ["-O3", "-std=c11", "-ffp-contract=off", "-fno-strict-aliasing", "-DWP_MCA", f"-I{HERE.parent / 'csrc'}"]
    return "".join(
        subprocess.run([compiler, *flags, *([] if part is None else [f"-DMCA_PART={part}"]), "-S", "-o", "-",
                        str(HERE / isa.harness)], check=True, capture_output=True, text=True).stdout
        for part in isa.parts)


def enclosing_loop(lines: list[str], anchor: int, depth: int = 0) -> list[str] | None:
    """The instructions of the smallest loop (a label and a later jump back to it) around line
    anchor that holds vector instructions; depth 1: the smallest loop around that one, and so on."""
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"(\.L\w+):", line))}
    loops = []
    for i, line in enumerate(lines):
        m = re.match(r"\s+j\w+\s+(\.L\w+)", line)
        if m and m.group(1) in labels and labels[m.group(1)] <= anchor <= i:
            body = [line for line in lines[labels[m.group(1)] + 1:i + 1] if not re.match(r"\s*(#|\.|$)", line)]
            if any(re.search(r"%[xyz]mm", line) for line in body):  # not a scalar skip loop
                loops.append((i - labels[m.group(1)], labels[m.group(1)], i, body))
    found = None
    for _ in range(depth + 1):
        inside = [loop for loop in loops if found is None or (loop[1] <= found[1] and loop[2] >= found[2] and loop[0] > found[0])]
        if not inside:
            return None
        found = min(inside)
    return found[3]


def functions(asm: str) -> dict[str, list[str]]:
    """{function name: its lines}, from clang's or gcc's assembly."""
    lines = asm.splitlines()
    starts = [(i, m.group(1)) for i, line in enumerate(lines) if (m := re.match(r"\s*\.type\s+(\w+),\s*@function", line))]
    return {name: lines[i:end] for (i, name), end in zip(starts, [s for s, _ in starts[1:]] + [len(lines)])}


def regions(asm: str) -> dict[str, tuple[int, str]]:
    """{harness name: (weights per pass, loop body)}: the loop around the marked body inside each
    harness function (the whole loop: the compiler may move code across the markers; of several
    copies of the body, the tightest loop)."""
    found = {}
    for function, lines in functions(asm).items():
        match = re.fullmatch(r"mca_(\w+)_w(\d+)", function)
        markers = [(i, line.split("LLVM-MCA-BEGIN")[1].strip()) for i, line in enumerate(lines) if "LLVM-MCA-BEGIN" in line]
        if not match or not markers:
            continue
        named = [i for i, marker in markers if marker.split("_")[-1] in match.group(1).split("_")]
        # a marked body may be copied (loop versions, peeled passes): take its tightest loop, or
        # with "outer" in the name the loop around that (one pass per table: the table's set-up counts)
        depth = 1 if "outer" in match.group(1).split("_") else 0
        loops = [loop for i in (named or [markers[0][0]]) if (loop := enclosing_loop(lines, i, depth))]
        if loops:
            found[match.group(1)] = (int(match.group(2)), "\n".join(min(loops, key=len)) + "\n")
    return found


def mca(body: str, cpu: str, tool: str, full: bool = False) -> float | str:
    out = subprocess.run([tool, f"-mcpu={cpu}", "-iterations=200", *([] if full else ["-summary-view"])],
                         input=body, capture_output=True, text=True, check=True).stdout
    if full:
        return out
    return int(re.search(r"Total Cycles:\s+(\d+)", out).group(1)) / 200


def predicts(isa: Isa, name: str, cpu: str) -> bool:
    """Whether cpu has the instructions loop `name` needs."""
    return all(cpu in cpus for token, cpus in isa.feature_cpus.items() if token in name.split("_"))


def make_measured_weight(kind: str, rows: int, cols: int, rng):
    """bench_kernels.py's weight of this kind, or one of the two kinds it lacks: int8-f32 (float32
    scales per row) and sparse50-int8 (50% sparse, int8 nonzeros, binary16 scales per row)."""
    import numpy as np

    import weightpack as wp
    from bench_kernels import make_weight

    if kind == "int8-f32":
        data = rng.integers(-127, 128, (rows, cols)).astype(np.int8)
        return wp.QuantizedTensor(data, (rng.random((rows, 1)) * 1e-3).astype(np.float32))
    if kind == "sparse50-int8":
        keep = rng.random((rows, cols)) >= 0.5
        values = rng.integers(-127, 128, int(keep.sum())).astype(np.int8)
        return wp.SparseQuantizedTensor(keep, values, (rng.random((rows, 1)) * 1e-3).astype(np.float16))
    return make_weight(kind, rows, cols, rng)


def measure(isa: Isa, rows: int = 256, cols: int = 4096) -> dict[str, float]:
    """ns per 64 weights of each format of isa.measured, one thread, at the ISA's level (or the
    level the format names)."""
    import numpy as np

    import weightpack as wp
    from weightpack.kernels import backend_c

    sys.path.insert(0, str(HERE))
    backend_c.set_threads(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, cols)).astype(np.float32)
    out = np.empty((rows, cols), np.float32)
    figures = {}
    for name in isa.measured:
        what, _, kind = name.rpartition(" ")
        kind, _, level = kind.partition("@")
        backend_c.set_simd(level or isa.level)
        weight = make_measured_weight(kind, rows, cols, rng)
        if what == "decode":
            def call():
                weight.decompress(np.float32, backend="c", out=out)
        else:
            def call(mode="fast" if what == "fast" else "exact"):
                wp.matmul(weight, x, backend="c", mode=mode)
        call()
        best = min(float(np.median([_time(call) for _ in range(100)])) for _ in range(5))
        figures[name] = best / (rows * cols) * 64 * 1e9
    backend_c.set_simd(None)
    return figures


def _time(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isa", choices=sorted(ISAS), default="avx2")
    parser.add_argument("--cpus", nargs="+", help="llvm-mca -mcpu values (default: the ISA's)")
    parser.add_argument("--only", help="regions whose name contains this")
    parser.add_argument("--show", help="print llvm-mca's full report of this region (first --cpus entry)")
    parser.add_argument("--compiler", help="C compiler (default: the ISA's)")
    parser.add_argument("--mca", help="llvm-mca binary (default: the ISA's)")
    parser.add_argument("--measure", action="store_true", help="also time the formats here (level forced, one thread)")
    args = parser.parse_args(argv)
    isa = ISAS[args.isa]
    cpus, compiler, tool = args.cpus or isa.cpus, args.compiler or isa.compiler, args.mca or isa.mca
    found = regions(compile_harness(isa, compiler))
    if args.show:
        print(mca(found[args.show][1], cpus[0], tool, full=True))
        return 0
    print(f"{tool} cycles per 64 weights ({compiler} -O3, {args.isa} kernels of csrc/)")
    print(f"{'loop':44s}" + "".join(f"{c:>15s}" for c in cpus))
    for name, (weights, body) in found.items():
        if args.only and args.only not in name:
            continue
        cells = [f"{mca(body, cpu, tool) * 64 / weights:15.1f}" if predicts(isa, name, cpu) else f"{'-':>15s}" for cpu in cpus]
        print(f"{name:44s}" + "".join(cells), flush=True)
    if args.measure:
        sys.path.insert(0, str(HERE))
        from machine import describe

        print(f"\n{describe()}")
        print(f"measured here, ns per 64 weights ({isa.level} forced unless @level, 1 thread, 256 x 4096, "
              f"load {os.getloadavg()[0]:.2f}):")
        for name, ns in measure(isa).items():
            print(f"{name:22s} {ns:7.1f}   ({isa.measured[name]})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
