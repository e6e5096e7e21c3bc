"""Calibrated against data-free compression: per-layer output SNR on held-out activations, and the sweep's speed.

Quality: for a layer W and activations X never used for calibration, the output SNR in dB is
``10 log10(sum (X W^T)**2 / sum (X W^T - X W_hat^T)**2)``. Each row compares a data-free encoder
with calibrated ones at the same stored size (same format, same bytes; the per-row-scale variant
adds one scale per output channel). Calibration statistics come from a separate set of rows.

Activations: by default a deterministic synthetic set with the structure of transformer layer
inputs (correlated channels with a power-law spectrum, per-channel gains and means, a few
channels 10x louder with large means, per-token norm variation; see ``transformer_like``), or a
user's own ``--activations x.npy`` (rows x in_features; a seeded quarter of the rows is held out)
with optional ``--weights w.npy`` (out x in). LUT rows also show the gain over plain GPTQ with one
LUT per tensor at the same width ("vs GPTQ": the refit, the per-row scale, grouped LUTs).

Bits per layer: on layers shaped like a small encoder (``encoder_stack``: 6 blocks of q, k, v, o
384 x 384, ff1 1536 x 384, ff2 384 x 1536, each with its own synthetic inputs), at the sizes of the
uniform 4-bit and 3-bit plans, the held-out error of ``allocate_bits`` plans (both objectives, with
and without the measured curves) against the uniform GPTQ plan; then, on the same layers, the gain
of grouped LUTs, per-row scales and the refit over plain GPTQ.

Speed: the 4096 x 4096 layer with its 4096 x 4096 Gram matrix (float16 weights, correlated
inputs with outlier channels), the least of two runs per encoder after a warm-up (numba
compiles on first use), wall and CPU seconds; the machine's load average and the process's peak
memory beside it. On a shared machine the wall time depends on the other jobs: CPU time well
below twice the wall time means this process was waiting for a core.

Usage:
    python bench/bench_calibration.py                       # synthetic 1024 x 1024 layer + timing
    python bench/bench_calibration.py --activations x.npy [--weights w.npy] [--no-timing]
    python bench/bench_calibration.py --quick               # smaller layer and stack, no timing
    python bench/bench_calibration.py --no-allocation       # skip the bits-per-layer comparison

Prints a table and writes JSON to bench/results/.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

import weightpack as wp
from weightpack.calibration import ActivationStats, gptq_palettize, gptq_quantize, sparsegpt_prune, wanda_prune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NBITS = (8, 6, 4, 3, 2)
GROUPED_NBITS = (4, 3, 2)
SPARSITIES = (0.3, 0.5, 0.75)


def transformer_like(d: int, seed: int = 0, alpha: float = 0.5):
    """A sampler ``draw(n, seed)`` of (n, d) float32 activations shaped like a transformer layer's input.

    ``x = ((z * s) @ Q^T + mu) * gamma * t`` with z standard normal, ``s_k ~ k**-alpha`` (a
    power-law spectrum in a random orthonormal basis Q), per-channel means ``mu ~ 0.2 N(0, 1)``
    and gains ``gamma = exp(0.3 N(0, 1))``; ``max(2, d // 400)`` outlier channels get 10x the gain
    and twice the mean; ``t = exp(0.25 N(0, 1))`` varies the norm per row (token).
    """
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    spectrum = np.arange(1, d + 1) ** -alpha
    spectrum /= np.sqrt(np.mean(spectrum**2))
    gain = np.exp(0.3 * rng.standard_normal(d))
    mean = 0.2 * rng.standard_normal(d)
    outliers = rng.choice(d, max(2, d // 400), replace=False)
    gain[outliers] *= 10
    mean[outliers] *= 2

    def draw(n: int, draw_seed: int) -> np.ndarray:
        r = np.random.default_rng([seed, draw_seed])
        x = (r.standard_normal((n, d)) * spectrum) @ basis.T
        x = (x + mean) * gain
        return (x * np.exp(0.25 * r.standard_normal((n, 1)))).astype(np.float32)

    return draw


def encoder_stack(n_layers: int = 6, d: int = 384, ff: int = 1536, n_cal: int = 16384, n_test: int = 4096, seed: int = 0):
    """Layers shaped like a small BERT encoder: per block q, k, v, o (d x d), ff1 (ff x d), ff2 (d x ff).

    Returns ``[(name, w, stats, x_test)]``: float16 weights (:func:`layer_weights`), the
    ActivationStats of ``n_cal`` calibration rows and ``n_test`` held-out rows of each layer's
    inputs. q, k and v share the input of a LayerNorm (:func:`transformer_like`); o reads the
    attention context (a steeper spectrum, alpha 1, at 0.3 of the scale); ff1 another LayerNorm
    output; ff2 the GELU of a wide transformer-like pre-activation. The output energies differ
    from layer to layer as in a trained encoder (o and ff2 small, ff1 large).
    """
    def gelu(x):
        return 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))

    out = []
    for i in range(n_layers):
        base = 100 * (i + 1) + seed
        sources = {
            "ln1": (transformer_like(d, base), 1.0, None),
            "ctx": (transformer_like(d, base + 1, alpha=1.0), 0.3, None),
            "ln2": (transformer_like(d, base + 2), 1.0, None),
            "act": (transformer_like(ff, base + 3, alpha=0.3), 0.5, gelu),
        }
        inputs = {}
        for key, (draw, gain, f) in sources.items():
            cal, test = gain * draw(n_cal, 1), gain * draw(n_test, 2)
            if f is not None:
                cal, test = f(cal), f(test)
            stats = ActivationStats(cal.shape[1])
            for start in range(0, n_cal, 4096):
                stats.update(cal[start : start + 4096])
            inputs[key] = (stats, test.astype(np.float32))
        for j, (name, rows, key) in enumerate((("q", d, "ln1"), ("k", d, "ln1"), ("v", d, "ln1"), ("o", d, "ctx"),
                                               ("ff1", ff, "ln2"), ("ff2", d, "act"))):
            stats, test = inputs[key]
            out.append((f"{i}.{name}", layer_weights(rows, stats.in_features, seed=1000 * i + j + seed), stats, test))
    return out


def layer_weights(rows: int, cols: int, seed: int = 1) -> np.ndarray:
    """float16 weights: Student-t(5) * 0.02 with a log-normal scale per output channel."""
    rng = np.random.default_rng(seed)
    w = rng.standard_t(5, (rows, cols)) * 0.02 * np.exp(0.2 * rng.standard_normal((rows, 1)))
    return w.astype(np.float16)


def cases(w, stats):
    """(target, method, calibrated?, thunk) for every comparison.

    LUT rows: "GPTQ" is the plain column sweep (no refit, no scale); "+ refit" alternates it with
    the least-squares refits on H; "+ per-row scale" searches a scale per output row first
    (``scale_method="max"``: the largest magnitude, as before). Grouped targets keep one LUT per
    16 output rows. The encoders' defaults otherwise (act_order, damp 0.01).
    """
    h = stats.gram
    diag_h = np.diag(np.diag(h))  # importance-weighted LUT without error feedback
    m2 = stats.second_moments
    out = []
    for b in NBITS:
        t = f"LUT {b}-bit"
        out += [
            (t, "k-means (data-free)", False, lambda b=b: wp.palettize(w, b)),
            (t, "importance k-means", True, lambda b=b: gptq_palettize(w, diag_h, b)),
            (t, "GPTQ", True, lambda b=b: gptq_palettize(w, h, b)),
            (t, "GPTQ + refit", True, lambda b=b: gptq_palettize(w, h, b, refit=True)),
            (t, "GPTQ + per-row scale (max)", True,
             lambda b=b: gptq_palettize(w, h, b, per_row_scale=True, scale_method="max")),
            (t, "GPTQ + per-row scale", True, lambda b=b: gptq_palettize(w, h, b, per_row_scale=True)),
            (t, "GPTQ + per-row scale + refit", True, lambda b=b: gptq_palettize(w, h, b, per_row_scale=True, refit=True)),
        ]
    for b in GROUPED_NBITS:
        t = f"LUT {b}-bit, 1 per 16 rows"
        out += [
            (t, "k-means (data-free)", False, lambda b=b: wp.palettize(w, b, group_size=16)),
            (t, "k-means + per-row scale", False,
             lambda b=b: wp.palettize(w, b, group_size=16, per_channel_scale=True, scale_axis=0)),
            (t, "GPTQ", True, lambda b=b: gptq_palettize(w, h, b, group_size=16)),
            (t, "GPTQ + refit", True, lambda b=b: gptq_palettize(w, h, b, group_size=16, refit=True)),
            (t, "GPTQ + per-row scale", True, lambda b=b: gptq_palettize(w, h, b, group_size=16, per_row_scale=True)),
            (t, "GPTQ + per-row scale + refit", True,
             lambda b=b: gptq_palettize(w, h, b, group_size=16, per_row_scale=True, refit=True)),
        ]
    for dtype, gran, block in (("int8", "per_channel", None), ("int4", "per_channel", None), ("int4", "per_block", 32)):
        t = f"{dtype} {gran.replace('_', ' ')}" + (f" {block}" if block else "")
        kw = dict(granularity=gran, block_size=block)
        out += [
            (t, "round to nearest (data-free)", False, lambda d=dtype, kw=kw: wp.quantize(w, d, **kw)),
            (t, "GPTQ", True, lambda d=dtype, kw=kw: gptq_quantize(w, h, d, **kw)),
            (t, "GPTQ, MSE scales", True, lambda d=dtype, kw=kw: gptq_quantize(w, h, d, scale_method="mse", **kw)),
        ]
    for s in SPARSITIES:
        t = f"{round(s * 100)}% sparse"
        out += [
            (t, "magnitude (data-free)", False, lambda s=s: wp.prune(w, s)),
            (t, "Wanda", True, lambda s=s: wanda_prune(w, m2, s)),
            (t, "SparseGPT", True, lambda s=s: sparsegpt_prune(w, h, s)),
        ]
    t = "2:4 sparse"
    ones = np.ones(w.shape[1])  # Wanda with uniform moments = magnitude within each run of 4
    out += [
        (t, "magnitude (data-free)", False, lambda: wanda_prune(w, ones, n_m=(2, 4))),
        (t, "Wanda", True, lambda: wanda_prune(w, m2, n_m=(2, 4))),
        (t, "SparseGPT", True, lambda: sparsegpt_prune(w, h, n_m=(2, 4))),
    ]
    return out


def quality(w, x_cal, x_test):
    stats = ActivationStats(x_cal.shape[1])
    for start in range(0, len(x_cal), 4096):
        stats.update(x_cal[start : start + 4096])
    y = x_test @ w.astype(np.float32).T
    rows, baseline, plain = [], {}, {}
    for target, method, calibrated, make in cases(w, stats):
        start = time.perf_counter()
        t = make()
        seconds = time.perf_counter() - start
        snr = wp.snr_db(y, x_test @ t.decompress(np.float32).T)
        if not calibrated and target not in baseline:
            baseline[target] = snr
        nbits = target.split("-bit")[0].removeprefix("LUT ") if target.startswith("LUT ") else None
        if nbits is not None and method == "GPTQ" and "per 16" not in target:
            plain[nbits] = snr  # plain GPTQ with one LUT per tensor: the item-5 baseline
        rows.append(dict(target=target, method=method, calibrated=calibrated, nbytes=t.nbytes, bits_per_weight=8 * t.nbytes / w.size,
                         snr_db=snr, gain_db=snr - baseline[target] if target in baseline else None,
                         gain_over_gptq_db=snr - plain[nbits] if nbits in plain else None, seconds=seconds))
    return rows


def timing(n: int = 4096, repeat: int = 2):
    """Wall seconds (the least of ``repeat`` runs) of each encoder on an n x n layer and n x n H."""
    import resource

    from weightpack.calibration import hessian

    w = layer_weights(n, n, seed=2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, n), np.float32) * (np.arange(1, n + 1, dtype=np.float32) ** -0.5)
    x = x @ rng.standard_normal((n, n), np.float32) / np.float32(np.sqrt(n))  # correlated channels
    x[:, rng.choice(n, n // 400, replace=False)] *= 10  # outlier channels
    h = (x.T @ x / n).astype(np.float64)
    del x
    small = slice(0, 256)
    for f in (gptq_palettize, gptq_quantize, sparsegpt_prune):  # compile the kernels
        f(w[small, small], h[small, small])
    out = {"load_average_before": os.getloadavg()[0]}
    runs = {
        "inverse_cholesky (float32)": lambda: hessian.inverse_cholesky(h, dtype=np.float32),
        "gptq_palettize 4-bit": lambda: gptq_palettize(w, h, 4),
        "gptq_palettize 4-bit + refit": lambda: gptq_palettize(w, h, 4, refit=True),
        "gptq_palettize 4-bit + per-row scale": lambda: gptq_palettize(w, h, 4, per_row_scale=True),
        "gptq_palettize 4-bit + per-row scale + refit": lambda: gptq_palettize(w, h, 4, per_row_scale=True, refit=True),
        "gptq_quantize int4 per channel": lambda: gptq_quantize(w, h, "int4"),
        "sparsegpt_prune 50%": lambda: sparsegpt_prune(w, h, 0.5),
    }
    for name, f in runs.items():
        best = (math.inf, 0.0)
        for _ in range(repeat):
            start, cpu = time.perf_counter(), time.process_time()
            f()
            best = min(best, (time.perf_counter() - start, time.process_time() - cpu))
        out[name + " s"], out[name + " cpu s"] = best
    out["load_average_after"] = os.getloadavg()[0]
    out["peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def print_table(rows, title):
    print(title)
    head = (f"{'target':<26} {'method':<30} {'bytes':>11} {'bits/w':>7} {'SNR dB':>8} {'vs data-free':>13} "
            f"{'vs GPTQ':>8} {'time s':>7}")
    print(head)
    print("-" * len(head))
    last = None
    for r in rows:
        if last is not None and r["target"] != last:
            print()
        last = r["target"]
        gain = "" if r["gain_db"] is None or r["method"].endswith("(data-free)") else f"{r['gain_db']:+.2f}"
        plain = r["method"] == "GPTQ" and "per 16" not in r["target"]
        vs_gptq = "" if r["gain_over_gptq_db"] is None or plain or not r["calibrated"] else f"{r['gain_over_gptq_db']:+.2f}"
        print(f"{r['target']:<26} {r['method']:<30} {r['nbytes']:>11,} {r['bits_per_weight']:>7.3f} {r['snr_db']:>8.2f} "
              f"{gain:>13} {vs_gptq:>8} {r['seconds']:>7.2f}")


def allocation(blocks: int, d: int, ff: int):
    """Bits per layer on an encoder-shaped stack at the size of the uniform 4-bit and 3-bit plans:
    held-out quality of each plan's tensors (``BitPlan.compress``) against the uniform GPTQ plan."""
    from weightpack.calibration import allocate_bits

    start = time.perf_counter()
    layers = encoder_stack(blocks, d, ff, n_cal=16 * d, n_test=4096)
    items = [(name, w, stats) for name, w, stats, _ in layers]
    print(f"\n{len(items)} layers shaped like a {blocks}-block encoder (d={d}, ff={ff}), {16 * d} calibration rows "
          f"and 4096 held-out rows per layer ({time.perf_counter() - start:.0f} s to make)")
    plans = (("uniform (GPTQ)", None), ("allocate_bits, relative (default)", {}),
             ("allocate_bits, absolute", {"objective": "absolute"}),
             ("allocate_bits, relative, proxy only", {"measure": False}),
             ("allocate_bits, absolute, proxy only", {"objective": "absolute", "measure": False}))
    out = []
    head = (f"{'budget':<14} {'plan':<38} {'bytes':>11} {'relative dB':>11} {'absolute dB':>11} {'mean layer':>10} "
            f"{'min layer':>9} {'time s':>7}  o-proj bits")
    print(head)
    print("-" * len(head))
    for nbits in (4, 3):
        budget = sum(wp.palettize(w, nbits).nbytes for _, w, _ in items)
        for label, options in plans:
            start = time.perf_counter()
            if options is None:
                tensors = {name: gptq_palettize(w, stats, nbits) for name, w, stats in items}
                chosen = {name: nbits for name in tensors}
            else:
                plan = allocate_bits(items, nbytes=budget, group_sizes=(None, 16), **options)
                tensors = plan.compress(items)
                chosen = {p.name: p.choice.nbits for p in plan.layers}
            seconds = time.perf_counter() - start
            signal, noise, ratios = 0.0, 0.0, []
            for name, w, _, x in layers:
                y = x @ w.astype(np.float32).T
                e = y - x @ tensors[name].decompress(np.float32).T
                s2, n2 = float(np.sum(y.astype(np.float64) ** 2)), float(np.sum(e.astype(np.float64) ** 2))
                signal, noise = signal + s2, noise + n2
                ratios.append(n2 / s2)
            nbytes = sum(t.nbytes for t in tensors.values())
            row = dict(budget_bits=nbits, budget_nbytes=budget, plan=label, nbytes=nbytes,
                       relative_db=-10 * math.log10(np.mean(ratios)), absolute_db=10 * math.log10(signal / noise),
                       mean_layer_snr_db=float(np.mean(-10 * np.log10(ratios))),
                       min_layer_snr_db=float(np.min(-10 * np.log10(ratios))), seconds=seconds,
                       o_proj_bits=[chosen[n] for n in chosen if n.endswith(".o")])
            out.append(row)
            print(f"{nbits}-bit size{'':<5} {label:<38} {nbytes:>11,} {row['relative_db']:>11.2f} {row['absolute_db']:>11.2f} "
                  f"{row['mean_layer_snr_db']:>10.2f} {row['min_layer_snr_db']:>9.2f} {seconds:>7.1f}  {row['o_proj_bits']}")
    print("relative dB: -10 log10 of the mean over layers of held-out error / signal; absolute dB: all layers' "
          "output signal over all their error")
    return {"plans": out, "item5_gains": stack_gains(layers)}


def stack_gains(layers):
    """Held-out output SNR of each layer of the stack with grouped LUTs, a per-row scale, both, and
    both with the refit, against plain GPTQ with one LUT per tensor at the same width: mean and
    least gain over the layers, and the mean per kind of layer."""
    variants = {"LUT per 16 rows": dict(group_size=16), "per-row scale": dict(per_row_scale=True),
                "per 16 rows + per-row scale": dict(group_size=16, per_row_scale=True),
                "per 16 rows + per-row scale + refit": dict(group_size=16, per_row_scale=True, refit=True)}
    print("\nHeld-out output SNR over plain GPTQ (one LUT per tensor) on the same layers, mean (least) over layers:")
    out = []
    for nbits in (4, 3):
        snr = {k: [] for k in ("GPTQ", *variants)}
        extra = {k: 0 for k in variants}
        for name, w, stats, x in layers:
            y = x @ w.astype(np.float32).T
            plain = gptq_palettize(w, stats, nbits)
            snr["GPTQ"].append(wp.snr_db(y, x @ plain.decompress(np.float32).T))
            for key, options in variants.items():
                t = gptq_palettize(w, stats, nbits, **options)
                snr[key].append(wp.snr_db(y, x @ t.decompress(np.float32).T))
                extra[key] += t.nbytes - plain.nbytes
        base = np.array(snr["GPTQ"])
        weights = sum(w.size for _, w, _, _ in layers)
        for key in variants:
            gain = np.array(snr[key]) - base
            kinds = {kind: float(np.mean([g for (n, *_), g in zip(layers, gain) if n.endswith("." + kind)]))
                     for kind in ("q", "k", "v", "o", "ff1", "ff2")}
            row = dict(nbits=nbits, variant=key, mean_gain_db=float(gain.mean()), least_gain_db=float(gain.min()),
                       extra_bits_per_weight=8 * extra[key] / weights, by_kind=kinds)
            out.append(row)
            print(f"  {nbits}-bit {key:<38} {row['mean_gain_db']:+6.2f} dB ({row['least_gain_db']:+.2f})  "
                  f"+{row['extra_bits_per_weight']:.3f} bits/weight  "
                  + " ".join(f"{k} {v:+.2f}" for k, v in kinds.items()))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--activations", help=".npy of activations (rows x in_features); default: synthetic")
    ap.add_argument("--weights", help=".npy of the layer weight (out x in); default: synthetic float16")
    ap.add_argument("--size", type=int, default=1024, help="synthetic layer size (in = out), default 1024")
    ap.add_argument("--calibration-rows", type=int, default=None, help="synthetic calibration rows (default 16 x size)")
    ap.add_argument("--test-rows", type=int, default=8192, help="synthetic held-out rows")
    ap.add_argument("--quick", action="store_true", help="a 256 x 256 layer and no timing")
    ap.add_argument("--no-timing", action="store_true", help="skip the 4096 x 4096 timing")
    ap.add_argument("--no-allocation", action="store_true", help="skip the bits-per-layer comparison")
    ap.add_argument("--blocks", type=int, default=6, help="encoder blocks of the bits-per-layer comparison (default 6)")
    args = ap.parse_args(argv)
    meta = info()
    print(describe(meta))
    allocation_shape = (args.blocks, 384, 1536)
    if args.quick:
        args.size, args.no_timing, args.test_rows = 256, True, 4096
        allocation_shape = (min(args.blocks, 2), 64, 256)
    if args.activations:
        x = np.load(args.activations, mmap_mode="r")
        if x.ndim != 2 or x.dtype.kind != "f":
            raise SystemExit(f"{args.activations}: expected a 2-D float array (rows x in_features), got {x.shape} {x.dtype}")
        order = np.random.default_rng(0).permutation(len(x))
        test = np.sort(order[: len(x) // 4])
        cal = np.sort(order[len(x) // 4 :])
        x_cal, x_test = np.asarray(x[cal], np.float32), np.asarray(x[test], np.float32)
        source = f"{args.activations} ({len(cal)} calibration rows, {len(test)} held out)"
        w = np.load(args.weights) if args.weights else layer_weights(x.shape[1], x.shape[1])
        if w.ndim != 2 or w.shape[1] != x.shape[1]:
            raise SystemExit(f"weights have shape {w.shape}; they must be (out, {x.shape[1]})")
        name = Path(args.activations).stem
    else:
        d = args.size
        n_cal = args.calibration_rows or 16 * d
        draw = transformer_like(d)
        x_cal, x_test = draw(n_cal, 1), draw(args.test_rows, 2)
        w = layer_weights(d, d)
        source = f"synthetic transformer-like, {d} x {d} float16 layer, {n_cal} calibration rows, {args.test_rows} held out"
        name = f"synthetic{d}"
    rows = quality(w, x_cal, x_test)
    print_table(rows, f"Layer-output SNR on held-out activations: {source}")
    result = dict(source=source, weight_shape=list(w.shape), weight_dtype=str(w.dtype), rows=rows, machine=meta,
                  time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if not args.no_timing:
        t = timing()
        result["timing_4096"] = t
        print("\n4096 x 4096 layer, 4096 x 4096 H (the least of two runs after a warm-up; wall and CPU")
        print("seconds of this process, whose two BLAS threads share the machine with other jobs):")
        for key, value in t.items():
            print(f"  {key:<50} {value:8.2f}")
    if not args.no_allocation:
        result["allocation"] = allocation(*allocation_shape)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"calibration_{name}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
