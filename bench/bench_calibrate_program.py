"""Calibrating a whole Core ML program: data-free vs calibrated vs calibrated + sequential vs bit plans.

For each fixture program (tests/fixtures/programs: the BERT-family encoder and the LLaMA-family
decoder, fp32, compressed for iOS18) and each compression, the held-out output SNR against the
uncompressed program:

    SNR = 10 log10( sum over outputs and held-out inputs of y**2 / sum of (y - y_hat)**2 )

with y the uncompressed program's outputs and y_hat the compressed program's, both run by
weightpack's executor. Calibration and held-out inputs are disjoint random token sequences
(uniform over the fixtures' 64-token vocabulary; the fixtures carry no text corpus): the BERT
takes batches of 2 x 16 tokens, the decoder sequences of 32 tokens.

Rows: LUT 8/6/4/3 bits per tensor and per 16 output channels (with a per-row scale where the
column says so), int8 per channel, int4 per block of 32, 30%/50% sparsity and 2:4, and LUTs with
the embedding tables (weights only ``gather`` reads, which no calibrated op reads: they are
compressed data-free in every column) left dense. Columns:
data-free (the drop-in compressors), calibrated (statistics of the original model for every
layer), calibrated + sequential (each layer's statistics gathered with the earlier layers already
compressed), + corrected (sequential, and each layer aims at the original model's outputs from its
compressed inputs: ``correct_inputs=True``), and the seconds each took (calibration included). The data-free per-channel scale
is coremltools' (one per input channel, max |w|), the calibrated one is per output row, searched.

Bit plans at the size of the uniform 4-bit and 3-bit plans (one LUT per tensor; choices among
2, 3, 4, 6, 8 bits and one LUT per tensor or per 16 rows; the budget counts indices + LUTs of the
planned weights): uniform calibrated + sequential GPTQ, ``allocate_bits`` on the model's real
statistics (proxy), and the sensitivity plan (each layer quantized alone at each option, the
program's output error measured on the calibration inputs; never worse than the best uniform
plan there), each compressed with sequential statistics; then the sensitivity plan compressed
with ``correct_inputs=True``.

Usage:
    python bench/bench_calibrate_program.py                 # bert and llama
    python bench/bench_calibrate_program.py --models bert   # one model
    python bench/bench_calibrate_program.py --quick         # fewer rows, fewer samples
    python bench/bench_calibrate_program.py --rows sparse   # only the rows whose label holds "sparse", no bit plans
    python bench/bench_calibrate_program.py --model my.mlpackage --calibrate x.npz --held-out y.npz
                                                            # your model and inputs (.npz: one array per input,
                                                            # stacked on the first axis), instead of the fixtures

Prints the CPU, a table per model and writes JSON to bench/results/.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from machine import describe, info  # noqa: E402
from program_oracle import package_path  # noqa: E402

RESULTS = HERE / "results"
MODELS = {"bert": "bert-iOS16-fp32", "llama": "llama-iOS16-fp32"}


def inputs(model: str, samples: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    if model == "bert":
        shape = (samples * 2, 16)
        return {"input_ids": rng.integers(0, 64, shape).astype(np.int32), "attention_mask": np.ones(shape, np.int32),
                "token_type_ids": rng.integers(0, 2, shape).astype(np.int32)}  # fmt: skip
    return {"input_ids": rng.integers(0, 64, (samples, 1, 32)).astype(np.int32)}


def configs(quick: bool, tables: list) -> list:
    """(label, [OptimizationConfig]) per row; ``tables``: the weights ``gather`` reads (embeddings)."""
    import coremltools.optimize.coreml as cto

    def lut(nbits, group=None, scale=False, keep=()):
        granularity = "per_tensor" if group is None else "per_grouped_channel"
        op = cto.OpPalettizerConfig(nbits=nbits, granularity=granularity, group_size=group or 32, enable_per_channel_scale=scale)
        return [cto.OptimizationConfig(op, op_name_configs={name: None for name in keep})]

    rows = [("LUT 4-bit", lut(4)), ("LUT 3-bit", lut(3)), ("LUT 4-bit, per 16 rows + scale", lut(4, 16, True)),
            ("int4 per block 32", [cto.OptimizationConfig(cto.OpLinearQuantizerConfig(dtype="int4", granularity="per_block", block_size=32))]),
            ("50% sparse", [cto.OptimizationConfig(cto.OpMagnitudePrunerConfig(target_sparsity=0.5))])]  # fmt: skip
    if quick:
        return rows
    return [("LUT 8-bit", lut(8)), ("LUT 6-bit", lut(6)), *rows[:2], ("LUT 4-bit, per 16 rows", lut(4, 16)),
            ("LUT 3-bit, per 16 rows", lut(3, 16)), rows[2], ("LUT 3-bit, per 16 rows + scale", lut(3, 16, True)),
            ("int8 per channel", [cto.OptimizationConfig(cto.OpLinearQuantizerConfig(dtype="int8", granularity="per_channel"))]),
            rows[3], ("30% sparse", [cto.OptimizationConfig(cto.OpMagnitudePrunerConfig(target_sparsity=0.3))]), rows[4],
            ("2:4 sparse", [cto.OptimizationConfig(cto.OpMagnitudePrunerConfig(n_m_ratio=(2, 4)))]),
            ("LUT 4-bit, embedding tables dense", lut(4, keep=tables)), ("LUT 3-bit, embedding tables dense", lut(3, keep=tables))]  # fmt: skip


class Evaluator:
    """Held-out output SNR of a compressed package against the uncompressed program."""

    def __init__(self, path: str, held_out: dict):
        from weightpack.calibration.collect import as_program, batches

        self.batches = list(batches(held_out, as_program(path)))
        reference = as_program(path)
        self.reference = [reference.predict(b) for b in self.batches]

    def __call__(self, path: str) -> float:
        from weightpack.calibration.collect import as_program

        program = as_program(path)
        signal = noise = 0.0
        for batch, ref in zip(self.batches, self.reference):
            out = program.predict(batch)
            for name, y in ref.items():
                y = y.astype(np.float64)
                signal += float(np.sum(y**2))
                noise += float(np.sum((y - out[name]) ** 2))
        return 10 * np.log10(signal / noise) if noise > 0 else float("inf")


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def fixture_run(model: str, quick: bool) -> tuple:
    """(name, package, calibration inputs, held-out inputs) of a fixture program."""
    return model, package_path(MODELS[model]), inputs(model, 32 if quick else 128, seed=1), inputs(model, 16 if quick else 64, seed=2)


def user_run(path: str, calibration: str, held_out: str) -> tuple:
    """The same for a user's package and .npz files (checked as ``weightpack compress`` checks them)."""
    from weightpack.calibration.collect import as_program, batches
    from weightpack.cli_programs import load_inputs

    program = as_program(path)
    arrays = [load_inputs(npz) for npz in (calibration, held_out)]
    for stacked in arrays:
        next(iter(batches(stacked, program)))  # names, shapes and dtypes fit the program, or a WeightpackError
    return Path(path).stem, path, arrays[0], arrays[1]


def bench_model(run: tuple, quick: bool, scratch: Path, only=None) -> dict:
    import weightpack.coreml as wpc
    from weightpack.calibration import collect
    from weightpack.calibration.collect import as_program
    from weightpack.calibration.plan import plan_options, plan_program, program_layers

    model, source, calibration, held_out = run
    evaluate = Evaluator(source, held_out)
    rows = []
    print(f"\n{model} ({Path(source).name}, compressed for iOS18): held-out output SNR (dB) vs the uncompressed program; seconds")
    head = (f"{'compression':<34} {'data-free':>10} {'calibrated':>11} {'+ sequential':>13} {'+ corrected':>12} {'gain':>6}   "
            f"{'s free':>7} {'s cal':>6} {'s seq':>6} {'s corr':>6}")
    print(head)
    print("-" * len(head))
    tables = sorted({op.weight_name for op in as_program(source).weight_ops() if op.role == "gather"})
    for k, (label, config) in enumerate(configs(quick, tables)):
        if only is not None and only not in label:
            continue
        out = {}
        for variant, kwargs in (("data-free", {}), ("calibrated", {"calibration": calibration, "sequential": False}),
                                ("sequential", {"calibration": calibration, "correct_inputs": False}),
                                ("corrected", {"calibration": calibration, "correct_inputs": True})):  # fmt: skip
            path = str(scratch / f"{model}-{k}-{variant}.mlpackage")
            _, seconds = timed(lambda: wpc.compress(source, config, output=path, target="iOS18", **kwargs))
            out[variant] = (evaluate(path), seconds)
        gain = max(s for s, _ in out.values()) - out["data-free"][0]
        print(f"{label:<34} {out['data-free'][0]:>10.2f} {out['calibrated'][0]:>11.2f} {out['sequential'][0]:>13.2f} "
              f"{out['corrected'][0]:>12.2f} {gain:>+6.2f}   {out['data-free'][1]:>7.1f} {out['calibrated'][1]:>6.1f} "
              f"{out['sequential'][1]:>6.1f} {out['corrected'][1]:>6.1f}")  # fmt: skip
        rows.append({"compression": label, **{f"{v}_snr_db": s for v, (s, _) in out.items()}, **{f"{v}_seconds": t for v, (_, t) in out.items()}})
    plans = []
    if only is not None:
        return {"model": Path(source).name, "rows": rows, "plans": plans}
    stats, collect_seconds = timed(lambda: collect(source, calibration))
    layers = program_layers(source, stats)
    weights = sum(w.size for w, _ in layers.values())
    print(f"\n{model}: bits per layer at the size of the uniform plans ({weights:,} planned weights; statistics {collect_seconds:.1f} s)")
    head = (f"{'budget':<26} {'uniform GPTQ + seq':>19} {'allocate_bits (proxy)':>22} {'sensitivity plan':>17} "
            f"{'+ corrected':>12}   {'s proxy':>7} {'s sens':>7}")
    print(head)
    print("-" * len(head))
    import coremltools.optimize.coreml as cto

    for nbits in (4, 3):
        nbytes = sum(-(-w.size * nbits // 8) + (1 << nbits) * w.dtype.itemsize for w, _ in layers.values())
        config = [cto.OptimizationConfig(cto.OpPalettizerConfig(nbits=nbits))]
        uniform_path = str(scratch / f"{model}-uniform{nbits}.mlpackage")
        wpc.compress(source, config, calibration=calibration, output=uniform_path, target="iOS18", correct_inputs=False)
        result = {"uniform": evaluate(uniform_path)}
        seconds = {}
        for label, sensitive in (("proxy", False), ("sensitivity", True)):
            def run():
                plan = plan_program(source, stats, calibration, nbytes=nbytes, group_sizes=(None, 16), sensitivity=sensitive)
                path = str(scratch / f"{model}-{label}{nbits}.mlpackage")
                wpc.compress(source, config, calibration=calibration, output=path, target="iOS18", plan=plan_options(plan),
                             correct_inputs=False)  # fmt: skip
                return path, plan

            (path, plan), seconds[label] = timed(run)
            result[label] = evaluate(path)
            result[f"{label}_bits_per_weight"] = plan.bits_per_weight
        path = str(scratch / f"{model}-corrected{nbits}.mlpackage")
        wpc.compress(source, config, calibration=calibration, output=path, target="iOS18", plan=plan_options(plan), correct_inputs=True)
        result["corrected"] = evaluate(path)
        budget = f"{nbits}-bit size ({nbytes:,} B)"
        print(f"{budget:<26} {result['uniform']:>19.2f} {result['proxy']:>22.2f} {result['sensitivity']:>17.2f} {result['corrected']:>12.2f}   "
              f"{seconds['proxy']:>7.1f} {seconds['sensitivity']:>7.1f}")  # fmt: skip
        plans.append({"nbits": nbits, "nbytes": nbytes, **{f"{k}_snr_db" if not k.endswith("weight") else k: v for k, v in result.items()},
                      **{f"{k}_seconds": v for k, v in seconds.items()}})  # fmt: skip
    return {"model": Path(source).name, "rows": rows, "plans": plans}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["bert", "llama"])
    parser.add_argument("--quick", action="store_true", help="fewer compressions and samples")
    parser.add_argument("--rows", metavar="TEXT", help="only the rows whose label contains TEXT (and no bit plans)")
    parser.add_argument("--model", metavar="PACKAGE", help="your .mlpackage instead of the fixtures (with --calibrate and --held-out)")
    parser.add_argument("--calibrate", metavar="NPZ", help="calibration inputs of --model: one array per input, stacked on axis 0")
    parser.add_argument("--held-out", metavar="NPZ", help="held-out inputs of --model, never used for calibration")
    parser.add_argument("--json", type=Path, help="where to write the results (default: bench/results/calibrate_program*.json)")
    args = parser.parse_args(argv)
    if (args.model is None) != (args.calibrate is None) or (args.model is None) != (args.held_out is None):
        parser.error("--model, --calibrate and --held-out go together")
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")
    from weightpack.cli import _silence_tqdm

    _silence_tqdm()
    meta = info()
    print(describe(meta))
    print(f"command: python bench/bench_calibrate_program.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    results = {"machine": meta, "models": []}
    from weightpack.errors import WeightpackError

    try:
        runs = ([user_run(args.model, args.calibrate, args.held_out)] if args.model
                else [fixture_run(model, args.quick) for model in args.models])  # fmt: skip
    except (WeightpackError, OSError, ValueError) as error:
        parser.exit(2, f"bench_calibrate_program: {error}\n")
    with tempfile.TemporaryDirectory() as scratch:
        for run in runs:
            results["models"].append(bench_model(run, args.quick, Path(scratch), args.rows))
    path = args.json or RESULTS / ("calibrate_program.json" if args.rows is None and args.model is None else "calibrate_program_rows.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
