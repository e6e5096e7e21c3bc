"""Compressor benchmark: weightpack's encoders against coremltools' on the same weight, same process.

The weight is 4096 x 4096, heavy-tailed rows: Student-t (df 4) * 0.02 * exp(N(0, 0.35**2)) per
row, seed 0, as float32 and cast to float16 (coreml-format.md §6). Each operation runs
coremltools' bare algorithm (``palettize_weights.blockwise_compress``,
``prune_weights.compress_by_magnitude``, ``linear_quantize_weights.blockwise_compress``) and
weightpack's encoder interleaved: one warm-up of weightpack (numba compile / cache load), then
ours, theirs, ours... (``--repeats`` each for weightpack, ``--theirs`` for coremltools). Printed
per operation: median process CPU time and wall time of both, their ratios (coremltools / ours),
and both errors: for k-means the SSE over the optimum (float16: the exact DP on the bit-pattern
histogram; float32: the exact DP on all distinct values, unless ``--no-exact``), otherwise SNR dB.
Also the peak memory of 4-bit per-tensor k-means on a 100M-element float16 tensor, measured in a
subprocess (VmHWM after resetting it, over the tensor's size). JSON goes to bench/results/.

    python bench/bench_compress.py                     # everything (about 5 minutes, mostly coremltools)
    python bench/bench_compress.py --only kmeans4 --dtypes fp16 --theirs 1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import weightpack as wp

RESULTS = Path(__file__).resolve().parent / "results"
OPS = ("kmeans4", "kmeans4_g16", "prune75", "int8_channel")


def make_weight(seed: int = 0, shape=(4096, 4096)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_t(4, size=shape) * 0.02 * np.exp(rng.normal(0, 0.35, size=(shape[0], 1)))
    return w.astype(np.float32)


def timed(fn):
    """(result, process CPU seconds, wall seconds)."""
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c, time.perf_counter() - t


def sse(w, approx) -> float:
    d = w.astype(np.float64) - np.asarray(approx, np.float64)
    return float(np.einsum("ij,ij->", d, d))


def snr(w, approx) -> float:
    return float(10 * np.log10(np.einsum("ij,ij->", w.astype(np.float64), w.astype(np.float64)) / sse(w, approx)))


# --- coremltools' side


def coreml_ops():
    from coremltools.converters.mil.mil.ops.defs.iOS18 import compression as ios18
    from coremltools.optimize.coreml._quantization_passes import linear_quantize_weights, palettize_weights, prune_weights

    def kmeans(w, group):
        params = palettize_weights.blockwise_compress(w, "KMEANS", 4, [group, 0])
        return ios18.constexpr_lut_to_dense.decompress(params.indices, params.lut, params.vector_axis)

    def prune(w):
        p = prune_weights.compress_by_magnitude(w, 0.75)
        keep = np.unpackbits(p.mask, bitorder="little")[: w.size].astype(bool)
        out = np.zeros(w.size, w.dtype)
        out[keep] = p.nonzero_data
        return out.reshape(w.shape)

    def int8(w):
        p = linear_quantize_weights.blockwise_compress(w, 8, "LINEAR_SYMMETRIC", True, [1, 0])
        return ios18.constexpr_blockwise_shift_scale.decompress(p.data, p.scale, p.offset)

    return {
        "kmeans4": lambda w: kmeans(w, 0),
        "kmeans4_g16": lambda w: kmeans(w, 16),
        "prune75": prune,
        "int8_channel": int8,
    }


WP_OPS = {
    "kmeans4": lambda w: wp.palettize(w, 4),
    "kmeans4_g16": lambda w: wp.palettize(w, 4, group_size=16),
    "prune75": lambda w: wp.prune(w, 0.75),
    "int8_channel": lambda w: wp.quantize(w, "int8", granularity="per_channel"),
}


def optimum(w: np.ndarray, op: str, exact: bool):
    """The least SSE of 4-bit k-means (per tensor, or per 16 rows) and how it was found."""
    group = 16 if op.endswith("g16") else None
    if w.dtype == np.float16:
        return wp.palettize_rd_curve(w, 4, group_size=group).sse_at(4), "exact DP (fp16 histogram)"
    if not exact:
        return wp.palettize_rd_curve(w, 4, group_size=group).sse_at(4), "binned DP (upper bound)"
    from weightpack.compress import kmeans

    parts = [w] if group is None else [w[i:i + 16] for i in range(0, w.shape[0], 16)]
    total = 0.0
    for part in parts:
        x, counts = np.unique(part.astype(np.float64), return_counts=True)
        total += float(kmeans.dp_solve(x, counts.astype(np.float64), 16)[1][-1])
    return total, "exact DP on every distinct value"


def measure(name: str, dtype: str, w: np.ndarray, theirs_fn, repeats: int, their_repeats: int, exact: bool) -> dict:
    ours_fn = WP_OPS[name]
    ours_fn(w[:256])  # compile or load the kernels
    ours_runs, their_runs = [], []
    t_ours = t_theirs = None
    for i in range(max(repeats, their_repeats)):
        if i < repeats:
            t_ours, cpu, wall = timed(lambda: ours_fn(w))
            ours_runs.append((cpu, wall))
        if i < their_repeats:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t_theirs, cpu, wall = timed(lambda: theirs_fn(w))
            their_runs.append((cpu, wall))
    ours_cpu, ours_wall = np.median(ours_runs, axis=0)
    their_cpu, their_wall = np.median(their_runs, axis=0)
    ours_out = t_ours.decompress()
    row = dict(op=name, dtype=dtype, ours_cpu=ours_cpu, ours_wall=ours_wall, theirs_cpu=their_cpu, theirs_wall=their_wall,
               cpu_ratio=their_cpu / ours_cpu, wall_ratio=their_wall / ours_wall)
    if name.startswith("kmeans"):
        best, how = optimum(w, name, exact)
        row.update(ours_sse_ratio=sse(w, ours_out) / best, theirs_sse_ratio=sse(w, t_theirs) / best, optimum=best, optimum_by=how)
    else:
        row.update(ours_snr_db=snr(w, ours_out), theirs_snr_db=snr(w, t_theirs))
    if name == "prune75":
        row.update(ours_pruned=int(np.count_nonzero(ours_out == 0)), theirs_pruned=int(np.count_nonzero(np.asarray(t_theirs) == 0)))
    return row


MEMORY_SCRIPT = r"""
import sys, numpy as np, weightpack as wp
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
n = int(sys.argv[1])
wp.palettize(np.random.default_rng(1).standard_normal(1 << 16).astype(np.float16), 4)  # kernels loaded
w = (np.random.default_rng(0).standard_t(4, n) * 0.02).astype(np.float16)
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
base = status("VmRSS")
p = wp.palettize(w, 4)
print(status("VmHWM") - base, w.nbytes, p.nbytes)
"""


def peak_memory(n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(n)], capture_output=True, text=True, check=True)
    extra, size, stored = (int(v) for v in out.stdout.split())
    return dict(elements=n, tensor_bytes=size, extra_peak_bytes=extra, extra_over_size=extra / size, result_bytes=stored)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=OPS, default=list(OPS))
    parser.add_argument("--dtypes", nargs="*", choices=("fp16", "fp32"), default=["fp16", "fp32"])
    parser.add_argument("--repeats", type=int, default=5, help="weightpack runs per operation (median)")
    parser.add_argument("--theirs", type=int, default=1, help="coremltools runs per operation (median)")
    parser.add_argument("--no-exact", action="store_true", help="skip the exact float32 optimum (about 30 s)")
    parser.add_argument("--memory-elements", type=int, default=100_000_000, help="0 skips the memory measurement")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    w32 = make_weight()
    weights = {"fp16": w32.astype(np.float16), "fp32": w32}
    theirs = coreml_ops()
    rows = []
    print(f"{'operation':14} {'dtype':5} {'ours cpu/wall s':>17} {'coremltools cpu/wall s':>23} {'ratio cpu/wall':>15}  error (ours vs coremltools)")
    for dtype in args.dtypes:
        for name in args.only:
            row = measure(name, dtype, weights[dtype], theirs[name], args.repeats, args.theirs, not args.no_exact)
            rows.append(row)
            if "ours_sse_ratio" in row:
                err = f"SSE/optimum {row['ours_sse_ratio']:.8f} vs {row['theirs_sse_ratio']:.8f}"
            else:
                err = f"SNR {row['ours_snr_db']:.2f} vs {row['theirs_snr_db']:.2f} dB"
            print(f"{name:14} {dtype:5} {row['ours_cpu']:8.3f}/{row['ours_wall']:<8.3f} {row['theirs_cpu']:11.3f}/{row['theirs_wall']:<11.3f}"
                  f" {row['cpu_ratio']:7.1f}/{row['wall_ratio']:<7.1f}  {err}", flush=True)
    memory = peak_memory(args.memory_elements) if args.memory_elements else None
    if memory:
        print(f"peak extra memory, 4-bit k-means of {memory['elements']:,} fp16: {memory['extra_peak_bytes'] / 1e6:.0f} MB "
              f"= {memory['extra_over_size']:.2f}x the tensor ({memory['tensor_bytes'] / 1e6:.0f} MB)")
    RESULTS.mkdir(exist_ok=True)
    path = args.json or RESULTS / f"bench_compress-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = dict(machine=platform.machine(), cpus=os.cpu_count(), python=platform.python_version(),
                numpy=np.__version__, load=os.getloadavg(), command=" ".join(sys.argv))
    path.write_text(json.dumps(dict(meta=meta, rows=rows, memory=memory), indent=1, default=float))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
