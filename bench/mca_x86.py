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
         "lut6": "product_lut6_bytes", "lut8": "product_lut8_bytes", "lut8-f32": "product_lut8_f32lut_gather",
         "int8": "product_int8_f16scale_convert",
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


INSTRUCTION = re.compile(r"\s+[a-z]")  # not a label, directive or comment
JUMP = re.compile(r"\s+(j\w+)\s+(\S+)")


def basic_blocks(lines: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """A function's basic blocks (their line numbers, in layout order) and each one's successors."""
    blocks, current = [], []
    for i, line in enumerate(lines):
        if re.match(r"\.L\w+:", line) and any(INSTRUCTION.match(lines[j]) or lines[j].endswith(":") for j in current):
            blocks.append(current)
            current = []
        current.append(i)
        if JUMP.match(line) or re.match(r"\s+ret", line):
            blocks.append(current)
            current = []
    blocks.append(current)
    labels = {m.group(1): b for b, block in enumerate(blocks) for i in block if (m := re.match(r"(\.L\w+):", lines[i]))}
    successors = []
    for b, block in enumerate(blocks):
        last = next((lines[i] for i in reversed(block) if INSTRUCTION.match(lines[i])), "")
        jump = JUMP.match(last)
        falls = not re.match(r"\s+(jmp|ret)", last) and b + 1 < len(blocks)
        successors.append(([labels[jump.group(2)]] if jump and jump.group(2) in labels else []) + ([b + 1] if falls else []))
    return blocks, successors


def natural_loops(successors: list[list[int]]) -> dict[int, set[int]]:
    """{header: the blocks of its loop} for every natural loop (back edges to a block that
    dominates their source; several back edges to one header make one loop)."""
    count = len(successors)
    predecessors = [[] for _ in range(count)]
    for b, succ in enumerate(successors):
        for s in succ:
            predecessors[s].append(b)
    reached, stack = {0}, [0]
    while stack:
        for s in successors[stack.pop()]:
            if s not in reached:
                reached.add(s)
                stack.append(s)
    dominators = [set(reached) if b in reached else set() for b in range(count)]
    dominators[0] = {0}
    changed = True
    while changed:
        changed = False
        for b in sorted(reached - {0}):
            new = set.intersection(*(dominators[p] for p in predecessors[b] if p in reached)) | {b}
            if new != dominators[b]:
                dominators[b], changed = new, True
    loops: dict[int, set[int]] = {}
    for source, succ in enumerate(successors):
        for header in succ:
            if header in dominators[source]:  # back edge: the loop is what reaches source without header
                body, stack = loops.setdefault(header, {header}), [source]
                while stack:
                    b = stack.pop()
                    if b not in body:
                        body.add(b)
                        stack.extend(predecessors[b])
    return loops


def hot_path(lines: list[str], anchor: int, depth: int = 0) -> list[str] | None:
    """The instructions of one pass through the smallest natural loop around line anchor that holds
    vector instructions (depth 1: the smallest loop around that one, inner loops passed once), in
    the order they run: of the paths from the loop's header through the anchor's block back to
    the header, the one with the most vector (ymm / zmm) instructions and, among those, the
    fewest instructions, i.e. without detours that add only scalar work (a prefetch every few
    steps, the clamp at a row's end).  Blocks of the loop that the compiler laid out away from the
    anchor's run of blocks (scalar tails, lane-by-lane fallbacks at table boundaries) are cold
    paths and take no part."""
    blocks, successors = basic_blocks(lines)
    home = next(b for b, block in enumerate(blocks) if anchor in block)
    instructions = [[lines[i] for i in block if INSTRUCTION.match(lines[i])] for block in blocks]
    weight = [(sum(bool(re.search(r"%[yz]mm", line)) for line in block), -len(block)) for block in instructions]
    loops = natural_loops(successors)
    around = sorted((h for h, loop in loops.items() if home in loop and any(weight[b][0] for b in loop)),
                    key=lambda h: len(loops[h]))
    if depth >= len(around):
        return None
    header, found = around[depth], loops[around[depth]]
    first, last = home, home  # the blocks laid out in one run with the anchor's: the rest are cold
    while first - 1 in found:
        first -= 1
    while last + 1 in found:
        last += 1
    if first <= header <= last:
        found = set(range(first, last + 1))
    # the loop as a DAG: its back edges and those of the loops inside it cut
    back_edges = {(u, h) for h, loop in loops.items() if h in found for u in loop if h in successors[u]}
    edges = {b: [s for s in successors[b] if s in found and (b, s) not in back_edges] for b in found}
    add = lambda w, b: (w[0] + weight[b][0], w[1] + weight[b][1])
    order, seen = [], set()

    def visit(b):  # depth-first post-order: reversed, a topological order of the DAG
        seen.add(b)
        for s in edges[b]:
            if s not in seen:
                visit(s)
        order.append(b)

    visit(header)
    into = {header: (weight[header], [header])}  # best path from the header into each block
    for b in reversed(order):
        for s in edges[b]:
            if b in into and (s not in into or add(into[b][0], s) > into[s][0]):
                into[s] = (add(into[b][0], s), into[b][1] + [s])
    back = {}  # best path from each block back to the header
    for b in order:
        tails = [((0, 0), [])] if header in successors[b] else []
        tails += [back[s] for s in edges[b] if s in back]
        if tails:
            w, path = max(tails, key=lambda t: t[0])
            back[b] = (add(w, b), [b] + path)
    if home not in into or home not in back:
        return None
    return [line for b in into[home][1] + back[home][1][1:] for line in instructions[b]]


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
        loops = [loop for i in (named or [markers[0][0]]) if (loop := hot_path(lines, i, depth))]
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
    """bench_kernels.py's weight of this kind, or one of the kinds it lacks: lut8-f32 (an 8-bit
    LUT of float32 values that binary16 cannot hold), int8-f32 (float32 scales per row) and
    sparse50-int8 (50% sparse, int8 nonzeros, binary16 scales per row)."""
    import numpy as np

    import weightpack as wp
    from bench_kernels import make_weight
    from weightpack import NBitArray

    if kind == "lut8-f32":
        codes = NBitArray(rng.integers(0, 256, rows * cols, dtype=np.uint8), 8, (rows, cols))
        return wp.PalettizedTensor(codes, np.sort(rng.standard_normal((1, 1, 256, 1)) * 0.02, axis=2).astype(np.float32))
    if kind == "int8-f32":
        data = rng.integers(-127, 128, (rows, cols)).astype(np.int8)
        return wp.QuantizedTensor(data, (rng.random((rows, 1)) * 1e-3).astype(np.float32))
    if kind == "sparse50-int8":
        keep = rng.random((rows, cols)) >= 0.5
        values = rng.integers(-127, 128, int(keep.sum())).astype(np.int8)
        return wp.SparseQuantizedTensor(keep, values, (rng.random((rows, 1)) * 1e-3).astype(np.float16))
    return make_weight(kind, rows, cols, rng)


def measure(isa: Isa, only: str | None = None, rows: int = 256, cols: int = 4096) -> dict[str, float]:
    """ns per 64 weights of each format of isa.measured (whose loop's name contains `only`), one
    thread, at the ISA's level (or the level the format names)."""
    import numpy as np

    import weightpack as wp
    from weightpack.kernels import backend_c

    sys.path.insert(0, str(HERE))
    backend_c.set_threads(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, cols)).astype(np.float32)
    out = np.empty((rows, cols), np.float32)
    figures = {}
    for name in (name for name, loop in isa.measured.items() if not only or only in loop):
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
        for name, ns in measure(isa, args.only).items():
            print(f"{name:22s} {ns:7.1f}   ({isa.measured[name]})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
