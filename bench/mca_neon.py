"""Predicted cycles per 64 weights of the NEON inner loops (llvm-mca, Apple M1) beside the AVX-512 ones.

The kernels are compiled exactly as the build compiles them (clang -O3, the build's flags) to
assembly; each inner loop is found in its worker function by the instructions it must contain
(e.g. 32 fmla: 4 rows x 2 phases x 16 bytes of 4-bit codes), cut out from its loop label to its
backward branch, and handed to llvm-mca, which predicts its steady-state cycles per iteration.

    python bench/mca_neon.py [--json OUT]

Needs clang (any version that targets aarch64 and x86_64) and llvm-mca-14 (Debian's llvm-14);
llvm-mca-16 (Debian's llvm-16) adds the Zen 4 model, which llvm-14 lacks.  Predictions are not
measurements: llvm-14's apple-m1 model is Apple's Cyclone model (3 vector pipes, fmla on 2 of
them, 8-cycle fmla latency); real M1 cores have 4 vector pipes and 4-cycle fmla.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CFLAGS = ["-O3", "-std=c11", "-ffp-contract=off", "-fno-strict-aliasing", "-fno-asynchronous-unwind-tables", "-I", str(ROOT / "csrc")]
ARM = ("aarch64-linux-gnu", "arm")
X86 = ("x86_64-linux-gnu", "x86")

# name, (target, source, function), mnemonic counts that identify the loop, weights per iteration,
# the AVX-512 loop it corresponds to (same fields), and the loop depth (0 = innermost; 1 = the loop
# around it, when the inner one runs once per outer iteration, e.g. one table per 32 columns).
LOOPS = [
    ("4-bit LUT (binary16 entries)",
     (ARM, "matvec_neon.c", "phase_lut4_half"), {"fmla": 32, "fcvtl": 32}, 128, 0,
     (X86, "matvec_avx512.c", "lut_rows_4bit"), {"vfmadd": 8, "vpermps": 8}, 128, 0),
    ("4-bit LUT (float32 entries)",
     (ARM, "matvec_neon.c", "phase_lut4_float"), {"fmla": 16, "tbl": 16}, 64, 0,
     (X86, "matvec_avx512.c", "lut_rows_4bit"), {"vfmadd": 8, "vpermps": 8}, 128, 0),
    ("2-bit LUT",
     (ARM, "matvec_neon.c", "phase_lut2_half"), {"fmla": 64, "fcvtl": 64}, 256, 0,
     (X86, "matvec_avx512.c", "lut_rows_2bit"), {"vfmadd": 16, "vpermps": 16}, 256, 0),
    ("6-bit LUT",
     (ARM, "matvec_neon.c", "d_lut6_half"), {"fmla": 4, "fcvtl": 4}, 16, 0,
     (X86, "matvec_avx512.c", "bytes_lut6"), {"vfmadd": 4}, 64, 0),
    ("int8 per channel, binary16 scale (fp16 level)",
     (ARM, "matvec_neon.c", "d_quant8_fp16"), {"fmla": 8, "fcvtl": 8}, 32, 0,
     (X86, "matvec_avx512.c", "bytes_quant8_table"), {"vfmadd": 4}, 64, 0),
    ("int4 per block of 32, binary16 scale (fp16 level; without the table built per block)",
     (ARM, "matvec_neon.c", "phase_quant4_fp16"), {"fmla": 32, "fcvtl": 32}, 128, 0,
     (X86, "matvec_avx512.c", "quant_rows_4bit"), {"vfmadd": 8, "vpermps": 8}, 128, 0),
    ("sparse binary16 values (per 16 columns with a set bit)",
     (ARM, "matvec_neon.c", "m_values_half"), {"fmla": 8, "fcvtl": 8}, 32, 1,
     (X86, "matvec_avx512.c", "bytes_half"), {"vfmadd": 4}, 64, 0),
    ("fast mode: 4-bit LUT (SDOT / VNNI)",
     (ARM, "fast_dotprod.c", "wp_fast_rows_dotprod"), {"sdot": 4, "tbl": 4}, 64, 0,
     (X86, "fast_avx512.c", "wp_fast_rows_avx512"), {"vpdpbusd": 2, "vpshufb": 2}, 128, 0),
    ("fast mode: int8 per channel (SDOT / VNNI)",
     (ARM, "fast_dotprod.c", "wp_fast_rows_dotprod"), {"sdot": 2, "fmul": 0}, 32, 0,
     (X86, "fast_avx512.c", "wp_fast_rows_avx512"), {"vpdpbusd": 1, "vmulps": 0}, 64, 0),
]
# bench/bench_kernels.py's weight (kind, mode) each loop's product is measured with on x86 (--measure)
MEASURED = {
    "4-bit LUT (binary16 entries)": ("lut4", "exact"), "2-bit LUT": ("lut2", "exact"), "6-bit LUT": ("lut6", "exact"),
    "int8 per channel, binary16 scale (fp16 level)": ("int8", "exact"),
    "int4 per block of 32, binary16 scale (fp16 level; without the table built per block)": ("int4-b32", "exact"),
    "sparse binary16 values (per 16 columns with a set bit)": ("sparse50", "exact"),
    "fast mode: 4-bit LUT (SDOT / VNNI)": ("lut4", "fast"), "fast mode: int8 per channel (SDOT / VNNI)": ("int8", "fast"),
    "8-bit LUT (binary16 entries; 3 passes per 256 columns)": ("lut8", "exact"),
}
EIGHT_BIT = ("8-bit LUT (binary16 entries; 3 passes per 256 columns)", (ARM, "matvec_neon.c", "lut8_half"),
             (X86, "matvec_avx512.c", "bytes_lut8"), {"vfmadd": 4}, 64)

BRANCH = re.compile(r"^\s+(b|b\.\w+|cbz|cbnz|tbz|tbnz|j\w+)\s+(?:[^,]*,\s*)*(\.L\w+)\s*$")


def find(*names):
    for name in names:
        if shutil.which(name):
            return name
    return None


def assembly(target, source: str) -> str:
    """clang for aarch64 (as macOS builds it); gcc for x86_64 (as Linux builds, and measures, it)."""
    triple, arch = target
    command = [find("clang-14", "clang"), f"--target={triple}"] if arch == "arm" else [find("gcc")]
    return subprocess.run([*command, *CFLAGS, "-S", "-o", "-", str(ROOT / "csrc" / source)],
                          check=True, capture_output=True, text=True).stdout


def functions(asm: str) -> dict[str, list[str]]:
    """Each function's lines, from its label to its end marker."""
    out, current = {}, None
    for line in asm.splitlines():
        if current is None:
            if re.match(r"^[A-Za-z_]\w*:", line):
                current = line.split(":")[0]
                out[current] = []
            continue
        if line.startswith(".Lfunc_end") or line.startswith(f"\t.size\t{current},"):
            current = None
            continue
        out[current].append(line)
    return out


def is_instruction(line: str) -> bool:
    text = line.strip()
    return bool(text) and not text.startswith((".", "//", "#", ";")) and not text.endswith(":")


def loops(lines: list[str]):
    """(start, end, depth) of every loop: a label and a later branch back to it; depth 0 = innermost."""
    labels = {line.split(":")[0]: i for i, line in enumerate(lines) if re.match(r"^\.L\w+:", line)}
    spans = set()
    for i, line in enumerate(lines):
        m = BRANCH.match(line)
        if m and m.group(2) in labels and labels[m.group(2)] < i:
            spans.add((labels[m.group(2)], i))

    def depth(span):
        inner = [o for o in spans if o != span and span[0] <= o[0] and o[1] <= span[1]]
        return 0 if not inner else 1 + max(depth(o) for o in inner)

    return [(s, e, depth((s, e))) for s, e in sorted(spans)]


def family(mnemonic: str) -> str:
    """fcvtl2 counts as fcvtl, vfmadd132ps / 213 / 231 as vfmadd: compilers pick any of them."""
    if mnemonic == "fcvtl2":
        return "fcvtl"
    return "vfmadd" if mnemonic.startswith("vfmadd") else mnemonic


def mnemonics(body: list[str]) -> Counter:
    return Counter(family(line.split()[0]) for line in body if is_instruction(line))


def pick(lines, counts: dict, depth: int):
    """The loop body at `depth` whose mnemonic counts match `counts` (0 = absent); the shortest."""
    found = []
    for s, e, d in loops(lines):
        if d != depth:
            continue
        body = [line for line in lines[s:e + 1] if is_instruction(line)]
        have = mnemonics(body)
        if all(have.get(k, 0) == v for k, v in counts.items()):
            found.append(body)
    return min(found, key=len) if found else None


def mca(tool: str, triple_arch: str, cpu: str, body: list[str]) -> float | None:
    """Predicted cycles per iteration of the loop body."""
    if not tool:
        return None
    text = "\n".join(body) + "\n"
    result = subprocess.run([tool, f"-mtriple={triple_arch}", f"-mcpu={cpu}", "-iterations=200"], input=text,
                            capture_output=True, text=True)
    m = re.search(r"Total Cycles:\s+(\d+)", result.stdout)
    return int(m.group(1)) / 200 if m else None


def measure(shape: int, repeats: int = 200) -> dict:
    """Nanoseconds per 64 weights of each MEASURED product on this machine: AVX-512 level, one
    thread, batch 1, a shape x shape weight (medians; the weight stays in cache when small)."""
    import os
    import time

    import numpy as np

    sys.path.insert(0, str(ROOT / "bench"))
    import weightpack as wp
    from bench_kernels import make_weight
    from weightpack.kernels import backend_c

    backend_c.set_simd("avx512")
    backend_c.set_threads(1)
    rng = np.random.default_rng(0)
    out = {}
    for name, (kind, mode) in MEASURED.items():
        weight = make_weight(kind, shape, shape, rng)
        x = rng.standard_normal((1, shape)).astype(np.float32)
        wp.matmul(weight, x, mode=mode)
        times = []
        for _ in range(repeats):
            start = time.perf_counter_ns()
            wp.matmul(weight, x, mode=mode)
            times.append(time.perf_counter_ns() - start)
        out[name] = float(np.median(times)) * 64 / (shape * shape)
    out["load average"] = os.getloadavg()[0]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--show", help="print the assembly of the loops whose name contains this")
    parser.add_argument("--measure", type=int, metavar="N", default=0,
                        help="also time the AVX-512 products here (one thread, N x N weight, batch 1)")
    args = parser.parse_args(argv)
    mca14, mca16 = find("llvm-mca-14", "llvm-mca"), find("llvm-mca-16")
    if not mca14:
        sys.exit("llvm-mca-14 not found (Debian: apt-get install llvm-14)")
    cache: dict = {}

    def function(spec):
        target, source, name = spec
        if (target, source) not in cache:
            cache[target, source] = functions(assembly(target, source))
        return cache[target, source][name]

    rows = []
    for name, arm, arm_counts, arm_weights, arm_depth, x86, x86_counts, x86_weights, x86_depth in LOOPS:
        arm_body = pick(function(arm), arm_counts, arm_depth)
        x86_body = pick(function(x86), x86_counts, x86_depth)
        if arm_body is None or x86_body is None:
            sys.exit(f"{name}: loop not found ({'arm' if arm_body is None else 'x86'})")
        if args.show and args.show in name:
            print("\n".join(arm_body), "\n---\n", "\n".join(x86_body))
        per64 = lambda cycles, weights: None if cycles is None else cycles * 64 / weights  # noqa: E731
        # control flow inside a loop: llvm-mca runs every instruction of the range, so the figure is approximate
        for arch, body in (("NEON", arm_body), ("AVX-512", x86_body)):
            branches = sum(1 for line in body if BRANCH.match(line))
            if branches > 1:
                name += f" [{arch}: {branches} branches in the loop, approximate]"
        rows.append({
            "loop": name, "neon_instructions": len(arm_body), "weights_per_iteration": arm_weights,
            "m1": per64(mca(mca14, "aarch64", "apple-m1", arm_body), arm_weights),
            "m1_llvm16": per64(mca(mca16, "aarch64", "apple-m1", arm_body), arm_weights),
            "sapphirerapids": per64(mca(mca14, "x86_64", "sapphirerapids", x86_body), x86_weights),
            "znver4": per64(mca(mca16, "x86_64", "znver4", x86_body), x86_weights),
        })
    # 8-bit LUTs: three loops per 256-column segment, each 16 columns an iteration
    label, arm, x86, x86_counts, x86_weights = EIGHT_BIT
    lines = function(arm)
    parts = {"gather": {"tbl": 1, "fmla": 0}, "plane": {"tbx": 3, "fmla": 0}, "combine": {"fmla": 4}}
    bodies = {part: pick(lines, counts, 0) for part, counts in parts.items()}
    if any(b is None for b in bodies.values()):
        sys.exit(f"{label}: loop not found: {[p for p, b in bodies.items() if b is None]}")
    x86_body = pick(function(x86), x86_counts, 0)

    def lut8_cycles(tool):
        c = {p: mca(tool, "aarch64", "apple-m1", b) for p, b in bodies.items()}
        return None if None in c.values() else (c["gather"] + 2 * c["plane"] + c["combine"]) * 4

    rows.append({
        "loop": label, "neon_instructions": sum(len(b) for b in bodies.values()) + len(bodies["plane"]),
        "weights_per_iteration": 16, "m1": lut8_cycles(mca14), "m1_llvm16": lut8_cycles(mca16),
        "sapphirerapids": per64(mca(mca14, "x86_64", "sapphirerapids", x86_body), x86_weights),
        "znver4": per64(mca(mca16, "x86_64", "znver4", x86_body), x86_weights),
    })

    measured, ghz = {}, None
    if args.measure:
        measured = measure(args.measure)
        ghz = float(re.search(r"cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text()).group(1)) / 1000
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    print("| loop | M1 (llvm-mca-14) | weights/cycle | M1 (llvm-mca-16) | Sapphire Rapids AVX-512 (14) "
          "| Zen 4 AVX-512 (16) | measured AVX-512 here |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        wpc = None if r["m1"] is None else 64 / r["m1"]
        key = next((k for k in MEASURED if r["loop"].startswith(k)), None)  # the name before any [flag]
        ns = measured.get(key)
        r["measured_ns_per_64"] = ns
        here = "-" if ns is None else f"{ns:.2f} ns = {ns * ghz:.1f} cycles"
        print(f"| {r['loop']} | {fmt(r['m1'])} | {fmt(wpc)} | {fmt(r['m1_llvm16'])} | {fmt(r['sapphirerapids'])} "
              f"| {fmt(r['znver4'])} | {here} |")
    print("cycles per 64 weights, batch 1, one core; llvm-mca columns predicted, not measured")
    if measured:
        print(f"measured: {args.measure}x{args.measure} weight, one thread, AVX-512 level, {ghz:.2f} GHz nominal, "
              f"load average {measured['load average']:.1f} on {len(__import__('os').sched_getaffinity(0))} CPUs")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
