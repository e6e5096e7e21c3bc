"""SparseGPT's sweep vs ``sparsegpt_prune(refit=True)`` per layer, at 50% sparsity.

On the decoder fixture (tests/fixtures/programs/llama-iOS16-fp32) with the calibration inputs of
bench_calibrate_program.py (128 random sequences of 32 tokens; statistics of the original
program), each linear's output SNR on those statistics,
``10 log10(tr(W H W^T) / tr(E H E^T))`` with E the pruning error, for the plain sweep and for the
least-squares refit (which also says whose mask it kept: the sweep's or Wanda's).

Usage: python bench/bench_prune_refit.py   (prints the CPU and a table)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from bench_calibrate_program import MODELS, inputs  # noqa: E402
from machine import describe, info  # noqa: E402
from program_oracle import package_path  # noqa: E402


def main() -> None:
    from weightpack.calibration import collect, sparsegpt_prune, wanda_prune
    from weightpack.calibration.collect import as_program

    print(describe(info()))
    print("command: python bench/bench_prune_refit.py")
    source = package_path(MODELS["llama"])
    stats = collect(source, inputs("llama", 128, seed=1))
    weights = {op.weight_name: op.weight for op in as_program(source).weight_ops()}
    print(f"\n{'weight':<24} {'sweep dB':>9} {'refit dB':>9} {'gain':>6}  mask kept")
    gains = []
    for name, s in stats.items():
        w, h = weights[name].astype(np.float64), s.gram

        def snr(tensor):
            e = w - tensor.decompress().astype(np.float64)
            return 10 * np.log10(np.trace(w @ h @ w.T) / np.trace(e @ h @ e.T))

        plain, refit = sparsegpt_prune(weights[name], s, 0.5), sparsegpt_prune(weights[name], s, 0.5, refit=True)
        wanda = np.array_equal(refit.mask.values(), wanda_prune(weights[name], s, 0.5).mask.values())
        gains.append(snr(refit) - snr(plain))
        print(f"{name:<24} {snr(plain):>9.2f} {snr(refit):>9.2f} {gains[-1]:>+6.2f}  {'Wanda' if wanda else 'sweep'}")
    print(f"\ngain {min(gains):+.2f} to {max(gains):+.2f} dB over {len(gains)} layers")


if __name__ == "__main__":
    import logging

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    main()
