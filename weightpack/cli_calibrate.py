"""``weightpack compress`` with calibration inputs, a size budget or a held-out evaluation.

- ``--calibrate X.npz``: the calibrated encoders of :func:`weightpack.coreml.compress` (sequential
  unless ``--no-sequential``; each layer also compensates the error of its compressed inputs
  unless ``--no-correct-inputs``); one progress line per weight on stderr.
- ``--bits-per-weight B`` / ``--size MB``: palettization with each layer's width (and, with
  ``--group-size G`` on iOS18, its granularity) chosen under the budget by
  :func:`weightpack.calibration.plan_program` from the model's statistics (``--sensitivity``:
  from each layer's measured effect on the outputs). The budget counts the planned weights'
  indices and LUTs; the plan is printed on stderr.
- ``--eval Y.npz``: after writing the result, the outputs of the original and the result on these
  held-out inputs are compared (SNR, cosine, max abs error, top-1, as ``weightpack diff``); with
  ``--calibrate`` the data-free result of the same options is compared too.

Every input file is validated against the model's inputs before any work; a problem is one line
on stderr and exit status 2, nothing written.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

from .errors import WeightpackError


def run(args, steps) -> None:
    from .calibration.collect import as_program, batches, collect
    from .cli import _existing
    from .coreml.calibrated import compress
    from .coreml.inspection import rows, table
    from .coreml.package import check_output, read_weights

    budget = args.bits_per_weight is not None or args.size is not None
    if args.bits_per_weight is not None and args.size is not None:
        raise WeightpackError("give --bits-per-weight or --size, not both")
    if budget and (len(steps) != 1 or steps[0][0] != "palettize" or args.config is not None):
        raise WeightpackError("--bits-per-weight/--size plan a palettization: combine them with --palettize/--group-size only")
    for flag in ("sensitivity", "no_sequential", "no_correct_inputs", "refit", "no_prune_refit"):
        if getattr(args, flag) and not args.calibrate:
            raise WeightpackError(f"--{flag.replace('_', '-')} needs --calibrate")
    if args.sensitivity and not budget:
        raise WeightpackError("--sensitivity needs a budget: --bits-per-weight or --size")
    check_output(args.output)
    read_weights(_existing(args.input))
    program = as_program(args.input)
    calibration = _inputs(args.calibrate, program, "--calibrate") if args.calibrate else None
    held_out = _inputs(args.eval, program, "--eval") if args.eval else None
    configs = [cfg for _, cfg in steps]
    say = _stderr
    plan = None
    if budget:
        plan = _plan(args, program, calibration, collect, say)
    start = time.perf_counter()
    compress(args.input, configs, calibration=calibration, output=args.output, sequential=not args.no_sequential,
             correct_inputs=not (args.no_correct_inputs or args.no_sequential), refit=args.refit, prune_refit=not args.no_prune_refit,
             target=args.target, plan=plan,
             report=lambda line: say(line))  # fmt: skip
    say(f"compressed in {time.perf_counter() - start:.1f} s{' (calibrated)' if calibration is not None else ''}")
    print(table(rows(args.output)))
    if held_out is None:
        return
    results = [("result", args.output)]
    with tempfile.TemporaryDirectory() as scratch:
        if calibration is not None:
            free = os.path.join(scratch, "data-free.mlpackage")
            compress(args.input, configs, output=free, target=args.target, plan=plan)
            results.insert(0, ("data-free", free))
        print(evaluation_table(program, results, held_out, batches))


def _inputs(path: str, program, flag: str):
    """The stacked inputs of ``path`` (an .npz), validated against the program's inputs."""
    from .calibration.collect import batches
    from .cli_programs import load_inputs

    try:
        arrays = load_inputs(path)
        batches(arrays, program)
    except WeightpackError as err:
        raise WeightpackError(f"{flag} {path}: {err}") from None
    return arrays


def _plan(args, program, calibration, collect, say):
    from .calibration.plan import plan_options, plan_program
    from .coreml.targets import at_least

    target = args.target or _model_target(args.input)
    ios18 = at_least(target, "iOS18")
    nbits = (2, 3, 4, 6, 8) if ios18 else (2, 4, 6, 8)
    groups = (None,) if args.group_size is None or not ios18 else (None, args.group_size)
    stats = None
    if calibration is not None:
        stats = collect(program, calibration)
    nbytes = None if args.size is None else int(args.size * 1e6)
    plan = plan_program(program, stats, calibration, bits_per_weight=args.bits_per_weight, nbytes=nbytes, nbits=nbits,
                        group_sizes=groups, weight_threshold=args.weight_threshold, sensitivity=args.sensitivity,
                        report=say)  # fmt: skip
    for line in plan.table().splitlines():
        say(line)
    return plan_options(plan)


def _model_target(path: str) -> str:
    import coremltools as ct

    from .coreml.targets import SPEC_VERSIONS, target_for_spec

    own = ct.models.MLModel(path, skip_model_load=True).get_spec().specificationVersion
    return target_for_spec(max(own, SPEC_VERSIONS["iOS16"]))


def evaluation_table(program, results, held_out, batches) -> str:
    """Per output: SNR, cosine, max abs error and top-1 of each result against ``program``."""
    import numpy as np

    from .calibration.collect import as_program
    from .cli_programs import compare

    reference = [program.predict(b) for b in batches(held_out, program)]
    lines = [f"{'model':<10} {'output':<24} {'SNR dB':>8} {'cosine':>10} {'max abs err':>12} {'top-1':>7}"]
    for label, path in results:
        candidate = as_program(path)
        outputs = [candidate.predict(b) for b in batches(held_out, candidate)]
        for name in reference[0]:
            ref = np.concatenate([np.asarray(r[name]).reshape(1, -1) if r[name].ndim == 0 else r[name] for r in reference])
            out = np.concatenate([np.asarray(o[name]).reshape(1, -1) if o[name].ndim == 0 else o[name] for o in outputs])
            row = compare(ref, out)
            snr = "inf" if row["snr_db"] is None else f"{row['snr_db']:.2f}"
            cosine = "-" if row["cosine"] is None else f"{row['cosine']:.6f}"
            top1 = "-" if row["top1_agreement"] is None else f"{row['top1_agreement']:.1%}"
            lines.append(f"{label:<10} {name:<24} {snr:>8} {cosine:>10} {row['max_abs_error']:>12.4g} {top1:>7}")
    return "\n".join(lines)


def _stderr(line: str) -> None:
    print(f"weightpack: {line}", file=sys.stderr, flush=True)
