"""The drop-in API against coremltools' own, same model, same run: time, weight.bin size, quality.

The model is a MIL program of ``--layers`` linear layers of ``--size`` x ``--size`` weights
(default 2 x 4096 x 4096, fp16; values Student-t(4) * 0.02 with a per-row scale exp(N(0, 0.35^2)),
the heavy-tailed rows of reference/coreml-format.md §6), converted by coremltools. Each config
runs through ``coremltools.optimize.coreml.<function>`` and ``weightpack.coreml.<function>``
with the same OptimizationConfig, after one untimed warm-up of each on a small model (imports,
numba's compiled-code cache); both timings include the model round trip (MLModel -> pymil ->
passes -> MLModel), which is the same code on both sides. Reported: wall and process CPU seconds
(CPU counts every thread), the size of the weight.bin each writes, and the SNR of the decoded
weights against the originals (decoded by weightpack, which is bit-identical to coremltools).

Prints a table and writes JSON to bench/results/ (``--json PATH`` to choose). One run per config
by default (``--repeats`` for medians): coremltools' k-means takes seconds per layer.

    python bench/bench_dropin.py                                   # 2 layers of 4096 x 4096
    python bench/bench_dropin.py --layers 1 --size 1024 --configs int8 prune75
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def configs():
    """name -> (function, OptimizationConfig)."""
    import coremltools.optimize.coreml as cto

    C = cto.OptimizationConfig
    return {
        "palettize4": ("palettize_weights", C(global_config=cto.OpPalettizerConfig(nbits=4))),
        "palettize4-g16": ("palettize_weights", C(global_config=cto.OpPalettizerConfig(nbits=4, granularity="per_grouped_channel", group_size=16))),
        "prune75": ("prune_weights", C(global_config=cto.OpMagnitudePrunerConfig(target_sparsity=0.75))),
        "int8": ("linear_quantize_weights", C(global_config=cto.OpLinearQuantizerConfig(dtype="int8"))),
        "int4-b32": ("linear_quantize_weights", C(global_config=cto.OpLinearQuantizerConfig(dtype="int4", granularity="per_block", block_size=32))),
    }  # fmt: skip


def make_model(layers: int, size: int, seed: int = 0):
    """(MLModel, {const name: original fp16 weight}) of ``layers`` chained linear layers."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(seed)
    weights = [
        (rng.standard_t(4, (size, size)) * 0.02 * np.exp(rng.normal(0, 0.35, (size, 1)))).astype(np.float16)
        for _ in range(layers)
    ]

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, size), dtype=ct.converters.mil.mil.types.fp16)], opset_version=ct.target.iOS18)
    def prog(x):
        for i, w in enumerate(weights):
            x = mb.linear(x=x, weight=w, name=f"layer{i}")
        return x

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18, skip_model_load=True,
                       compute_precision=ct.precision.FLOAT16)  # fmt: skip
    return model, {f"layer{i}_weight": w for i, w in enumerate(weights)}


def snr_db(originals: dict, package: str) -> float:
    """SNR of every decoded layer weight against its original, over all layers together."""
    from weightpack.coreml import load

    signal = noise = 0.0
    for name, value in load(package).items():
        base = next((k for k in originals if name.startswith(k)), None)
        if base is None:
            continue
        w = originals[base].astype(np.float64)
        decoded = value.decompress() if hasattr(value, "decompress") else value
        signal += float(np.sum(w * w))
        noise += float(np.sum((w - decoded.astype(np.float64)) ** 2))
    return 10 * np.log10(signal / noise) if noise else float("inf")


def run_one(function, model, config):
    """(model, wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(model, config)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def measure(names, layers, size, repeats, folder) -> dict:
    import coremltools.optimize.coreml as cto

    import weightpack.coreml as wpc
    from weightpack.coreml import save_model
    from weightpack.coreml.package import package_items

    model, originals = make_model(layers, size)
    tiny, _ = make_model(1, 256)
    for name in names:  # warm-up, not timed: imports, numba compilation or its cache, sklearn
        function, config = configs()[name]
        getattr(cto, function)(tiny, config)
        getattr(wpc, function)(tiny, config)
    rows = []
    for name in names:
        function, config = configs()[name]
        row = {"config": name, "function": function}
        for side, module in (("coremltools", cto), ("weightpack", wpc)):
            walls, cpus = [], []
            for _ in range(repeats):
                result, wall, cpu = run_one(getattr(module, function), model, config)
                walls.append(wall)
                cpus.append(cpu)
            path = os.path.join(folder, f"{name}-{side}.mlpackage")
            save_model(result, path)
            weights_dir = package_items(path)[1]
            row.update({
                f"{side}_wall_s": statistics.median(walls), f"{side}_cpu_s": statistics.median(cpus),
                f"{side}_weight_bin_bytes": os.path.getsize(os.path.join(weights_dir, "weight.bin")),
                f"{side}_snr_db": snr_db(originals, path),
            })  # fmt: skip
        row["speedup_wall"] = row["coremltools_wall_s"] / row["weightpack_wall_s"]
        row["speedup_cpu"] = row["coremltools_cpu_s"] / row["weightpack_cpu_s"]
        rows.append(row)
        print(format_row(row), flush=True)
    return {"layers": layers, "size": size, "parameters": layers * size * size, "repeats": repeats, "rows": rows}


HEADER = (f"{'config':<16} {'coremltools s':>15} {'weightpack s':>14} {'speed-up':>9} "
          f"{'ct weight.bin':>14} {'wp weight.bin':>14} {'ct SNR':>7} {'wp SNR':>7}")  # fmt: skip


def format_row(r: dict) -> str:
    return (
        f"{r['config']:<16} {r['coremltools_wall_s']:>6.2f} ({r['coremltools_cpu_s']:>5.1f}) "
        f"{r['weightpack_wall_s']:>5.2f} ({r['weightpack_cpu_s']:>5.1f}) {r['speedup_wall']:>8.1f}x "
        f"{r['coremltools_weight_bin_bytes']:>14,} {r['weightpack_weight_bin_bytes']:>14,} "
        f"{r['coremltools_snr_db']:>7.2f} {r['weightpack_snr_db']:>7.2f}"
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2, help="linear layers (default 2)")
    parser.add_argument("--size", type=int, default=4096, help="each weight is SIZE x SIZE (default 4096)")
    parser.add_argument("--configs", nargs="+", default=None, help="configs to run (default: all): " + ", ".join(configs()))
    parser.add_argument("--repeats", type=int, default=1, help="runs per side and config, medians reported (default 1)")
    parser.add_argument("--json", default=None, help="JSON output path (default: bench/results/dropin-<time>.json)")
    args = parser.parse_args(argv)
    names = args.configs or list(configs())
    unknown = set(names) - set(configs())
    if unknown or args.layers < 1 or args.size % 32 or args.repeats < 1:
        parser.error(f"unknown configs {sorted(unknown)}" if unknown else "--layers >= 1, --size a multiple of 32, --repeats >= 1")
    print(f"{args.layers} linear layers of {args.size} x {args.size} fp16 (iOS18); times: wall s (process CPU s)")
    print(HEADER)
    with tempfile.TemporaryDirectory() as folder:
        result = measure(names, args.layers, args.size, args.repeats, folder)
    result.update(machine=platform.machine(), python=sys.version.split()[0], cpus=os.cpu_count(),
                  command="python bench/bench_dropin.py " + " ".join(argv if argv is not None else sys.argv[1:]))  # fmt: skip
    path = Path(args.json) if args.json else RESULTS / f"dropin-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")  # coremltools' progress bars would garble the table
    main()
