"""The ``weightpack`` command line.

- ``weightpack demo``: compress a ResNet50-shaped weight set every way and print a table;
- ``weightpack inspect MODEL.mlpackage [--json]``: how every weight of a Core ML model is stored;
- ``weightpack compress IN.mlpackage OUT.mlpackage [...]``: compress a Core ML model's weights
  with weightpack's encoders (coremltools' post-training options, or its OptimizationConfig yaml);
  with ``--calibrate X.npz`` the error-feedback encoders on the model's own activations,
  ``--bits-per-weight B`` / ``--size MB`` bits per layer, ``--eval Y.npz`` a table of the outputs
  (:mod:`weightpack.cli_calibrate`).
- ``weightpack run MODEL --inputs x.npz [--out y.npz] [--policy jit]``: run a Core ML ML program
  on Linux (:class:`weightpack.coreml.Program`);
- ``weightpack diff REF CAND --inputs x.npz [--json]``: run two programs on the same inputs and
  compare their outputs (SNR, cosine, max abs error, top-1 agreement).

Bad input (a missing path, not an ML program, a corrupted weight.bin, a config the target cannot
express, an option weightpack does not support) prints one line on stderr and exits with status
2; nothing is written.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .errors import WeightpackError

QUANT_DTYPES = ("int8", "uint8", "int4", "uint4")
TARGETS = ("iOS16", "iOS17", "iOS18")


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="weightpack", description="Compressed neural-network weights, byte-compatible with Core ML.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="compress a built-in ResNet50-shaped weight set every way and print a table"
    )
    demo.add_argument("--json", action="store_true", help="print the rows as JSON")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated weights (default 0)")

    inspect = commands.add_parser("inspect", help="list the weights of a Core ML model and how each is stored")
    inspect.add_argument("model", metavar="MODEL.mlpackage")
    inspect.add_argument("--json", action="store_true", help="print the rows and totals as JSON")

    compress = commands.add_parser(
        "compress",
        help="compress a Core ML model's weights with weightpack",
        description="Prune, palettize and/or quantize (in that order; several at once make a joint "
        "compression, which needs iOS18) every weight larger than --weight-threshold elements.",
    )
    compress.add_argument("input", metavar="IN.mlpackage")
    compress.add_argument("output", metavar="OUT.mlpackage")
    compress.add_argument("--prune", type=float, metavar="SPARSITY", help="magnitude-prune this fraction of each weight")
    compress.add_argument("--n-m", metavar="N:M", help="with --prune: n:m pruning, N of every M weights (N/M = SPARSITY)")
    compress.add_argument("--palettize", type=int, metavar="NBITS", choices=(1, 2, 3, 4, 6, 8), help="palettize to NBITS-bit indices")
    compress.add_argument("--group-size", type=int, metavar="G", help="with --palettize: one LUT per G output channels (iOS18)")
    compress.add_argument("--mode", choices=("kmeans", "uniform"), default="kmeans", help="with --palettize: how LUTs are chosen")
    compress.add_argument("--quantize", choices=QUANT_DTYPES, metavar="DTYPE", help=f"linear quantization to {'|'.join(QUANT_DTYPES)}")
    compress.add_argument("--block-size", type=int, metavar="B", help="with --quantize: one scale per B input channels (iOS18)")
    compress.add_argument("--target", choices=TARGETS, help="deployment target (default: the model's own, at least iOS16)")
    compress.add_argument("--config", metavar="FILE.yaml", help="a coremltools OptimizationConfig in yaml, instead of the flags above")
    compress.add_argument("--weight-threshold", type=int, default=2048, metavar="N",
                          help="compress only weights with more than N elements (default 2048, as coremltools)")  # fmt: skip
    compress.add_argument("--per-channel-scale", action="store_true",
                          help="with --palettize: a scale per channel (iOS18); calibrated: one searched scale per output row")  # fmt: skip
    calibration = compress.add_argument_group("calibration (weightpack.calibration)")
    calibration.add_argument("--calibrate", metavar="X.npz", help="calibration inputs (one stacked array per input): error-feedback encoders")
    calibration.add_argument("--no-sequential", action="store_true", help="with --calibrate: statistics of the original model for every layer")
    calibration.add_argument("--no-correct-inputs", action="store_true",
                             help="with --calibrate: do not make each layer compensate the error of its compressed inputs")  # fmt: skip
    calibration.add_argument("--refit", action="store_true",
                             help="with --calibrate and --palettize: refit each LUT (and per-row scale) on the layer's statistics")  # fmt: skip
    calibration.add_argument("--no-prune-refit", action="store_true",
                             help="with --calibrate and --prune: plain SparseGPT, without the least-squares refit of the kept weights")  # fmt: skip
    calibration.add_argument("--bits-per-weight", type=float, metavar="B", help="palettize with bits per layer chosen for this average")
    calibration.add_argument("--size", type=float, metavar="MB", help="palettize with bits per layer chosen for this total (MB of the planned weights)")
    calibration.add_argument("--sensitivity", action="store_true", help="with a budget: measure each layer's effect on the outputs at each width")
    calibration.add_argument("--eval", metavar="Y.npz", help="held-out inputs: print the outputs of the result (and of the data-free one) against the original")
    _program_parsers(commands)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (2 on bad input, with one line on stderr)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit:  # usage errors (status 2, one line) and --help (status 0)
        return exit.code
    try:
        if args.command == "demo":
            from . import demo

            demo.main(as_json=args.json, seed=args.seed)
        elif args.command == "inspect":
            _inspect(args)
        elif args.command in ("run", "diff"):
            from . import cli_programs

            cli_programs.run(args) if args.command == "run" else cli_programs.diff(args)
        else:
            _compress(args)
    except BrokenPipeError:  # e.g. `weightpack inspect M | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (WeightpackError, OSError) as exc:
        print(f"weightpack {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    return 0


def _one_line(exc) -> str:
    text = str(exc) if not isinstance(exc, OSError) or not exc.filename else f"{exc.filename}: {exc.strerror}"
    return " ".join(text.split())


def _quiet_coremltools() -> None:
    """Import coremltools without its import-time warnings and progress bars (a CLI wants neither);
    weightpack's own warnings (a weight left uncompressed, and why) go to stderr."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # read only where tqdm is imported after this
    _silence_tqdm()
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    log = logging.getLogger("weightpack")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler(logging.WARNING))
    try:
        import coremltools  # noqa: F401
    except ImportError:
        raise WeightpackError("this command needs coremltools: pip install 'weightpack[coreml]'") from None


def _silence_tqdm() -> None:
    """Disable every tqdm bar in this process, also when tqdm was imported before us."""
    try:
        from tqdm import std
    except ImportError:
        return
    if getattr(std.tqdm.__init__, "_weightpack_quiet", False):
        return
    original = std.tqdm.__init__

    def quiet_init(self, *args, **kwargs):
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    quiet_init._weightpack_quiet = True
    std.tqdm.__init__ = quiet_init


class _StderrHandler(logging.Handler):
    """Log records as ``weightpack: warning: ...`` lines on the current sys.stderr."""

    def emit(self, record):
        print(f"weightpack: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def _inspect(args) -> None:
    _quiet_coremltools()
    from .coreml.inspection import rows, table, totals

    weights = rows(_existing(args.model))
    if args.json:
        print(json.dumps({"model": args.model, "weights": weights, "totals": totals(weights)}, indent=2))
    else:
        print(table(weights))


def _existing(path: str) -> str:
    if not os.path.exists(path):
        raise WeightpackError(f"{path}: no such file or directory")
    return path


def _compress(args) -> None:
    _quiet_coremltools()
    budget = args.bits_per_weight is not None or args.size is not None
    if budget and args.palettize is None and args.config is None:
        args.palettize = 4  # the base config; the plan sets each layer's width
    steps = _steps(args)  # validate the flags before any work
    if (args.calibrate or args.eval or budget or args.no_sequential or args.sensitivity or args.no_correct_inputs or args.refit
            or args.no_prune_refit):
        from . import cli_calibrate

        cli_calibrate.run(args, steps)
        return
    from .coreml import dropin
    from .coreml.inspection import rows, table
    from .coreml.package import check_output, read_weights, save_model

    check_output(args.output)  # before any work: a path it cannot write fails now, not after the work
    read_weights(_existing(args.input))  # validates the package and every blob: clear errors before coremltools reads it
    import coremltools as ct

    model = ct.models.MLModel(args.input, skip_model_load=True)
    progress = _ProgressBar() if sys.stderr.isatty() else None
    for index, (kind, config) in enumerate(steps):
        compressor = {"prune": dropin.prune_weights, "palettize": dropin.palettize_weights, "quantize": dropin.linear_quantize_weights}[kind]
        if progress is not None:
            progress.label = kind
        model = compressor(model, config, joint_compression=index > 0, target=args.target, progress=progress)
    save_model(model, args.output)
    if progress is not None:
        progress.clear()
    print(table(rows(args.output)))


def _steps(args) -> list:
    """[(kind, OptimizationConfig)] in the order they run: prune, palettize, quantize."""
    flags = [args.prune, args.palettize, args.quantize]
    if args.config is not None:
        if any(f is not None for f in flags):
            raise WeightpackError("--config replaces --prune/--palettize/--quantize; give one or the other")
        return [_yaml_config(args.config)]
    for option, parent in (("n_m", "prune"), ("group_size", "palettize"), ("block_size", "quantize"), ("per_channel_scale", "palettize")):
        if getattr(args, option) not in (None, False) and getattr(args, parent) is None:
            raise WeightpackError(f"--{option.replace('_', '-')} needs --{parent}")
    if all(f is None for f in flags):
        raise WeightpackError("nothing to do: give --prune, --palettize, --quantize or --config")
    import coremltools.optimize.coreml as cto

    threshold = args.weight_threshold
    if threshold < 0:
        raise WeightpackError(f"--weight-threshold {threshold} must be at least 0")
    steps = []
    if args.prune is not None:
        steps.append(("prune", cto.OptimizationConfig(global_config=_prune_config(args, threshold))))
    if args.palettize is not None:
        grouped = args.group_size is not None
        config = cto.OpPalettizerConfig(
            nbits=args.palettize, mode=args.mode, weight_threshold=threshold, enable_per_channel_scale=args.per_channel_scale,
            granularity="per_grouped_channel" if grouped else "per_tensor", group_size=args.group_size if grouped else 32,
        )  # fmt: skip
        steps.append(("palettize", cto.OptimizationConfig(global_config=config)))
    if args.quantize is not None:
        blocked = args.block_size is not None
        granularity = "per_block" if blocked else "per_tensor" if args.palettize is not None else "per_channel"
        config = cto.OpLinearQuantizerConfig(
            dtype=args.quantize, weight_threshold=threshold, granularity=granularity, block_size=args.block_size if blocked else 32
        )
        steps.append(("quantize", cto.OptimizationConfig(global_config=config)))
    return steps


def _prune_config(args, threshold: int):
    import coremltools.optimize.coreml as cto

    if not 0.0 <= args.prune <= 1.0:
        raise WeightpackError(f"--prune {args.prune} must be a fraction in [0, 1]")
    if args.n_m is None:
        return cto.OpMagnitudePrunerConfig(target_sparsity=args.prune, weight_threshold=threshold)
    try:
        n, m = (int(part) for part in args.n_m.split(":"))
    except ValueError:
        raise WeightpackError(f"--n-m {args.n_m!r} must be N:M, two integers") from None
    if not 0 < n <= m or abs(n / m - args.prune) > 1e-9:
        raise WeightpackError(f"--n-m {args.n_m} must have 0 < N <= M and N/M equal to --prune {args.prune}")
    return cto.OpMagnitudePrunerConfig(n_m_ratio=(n, m), weight_threshold=threshold)


def _yaml_config(path: str):
    """(kind, OptimizationConfig) from a coremltools yaml file; the kind follows its config_type."""
    import coremltools.optimize.coreml as cto
    from .coreml.op_configs import KINDS

    _existing(path)
    try:
        config = cto.OptimizationConfig.from_yaml(path)
    except Exception as err:  # yaml, attrs and coremltools raise many kinds
        raise WeightpackError(f"{path}: not a coremltools OptimizationConfig ({type(err).__name__}: {err})") from None
    entries = [config.global_config, *config.op_type_configs.values(), *config.op_name_configs.values()]
    kinds = {kind for entry in entries if entry is not None for kind, types in KINDS.items() if isinstance(entry, types)}
    if len(kinds) != 1:
        raise WeightpackError(f"{path}: the config must hold one kind of op config (pruner, palettizer or quantizer), found {len(kinds)}")
    return kinds.pop(), config


def _program_parsers(commands) -> None:
    """The ``run`` and ``diff`` subcommands (implemented in :mod:`weightpack.cli_programs`)."""
    policies = ("jit", "load", "auto")
    run = commands.add_parser("run", help="run a Core ML ML program on inputs from an .npz file")
    run.add_argument("model", metavar="MODEL")
    run.add_argument("--inputs", required=True, metavar="X.npz", help="the inputs, one array per input name")
    run.add_argument("--out", metavar="Y.npz", help="write the outputs there (default: print a summary)")
    run.add_argument("--policy", choices=policies, default="jit", help="weight policy (default jit)")
    run.add_argument("--function", default="main", help="the program's function (default main)")
    diff = commands.add_parser("diff", help="compare the outputs of two Core ML programs on the same inputs")
    diff.add_argument("reference", metavar="REF")
    diff.add_argument("candidate", metavar="CAND")
    diff.add_argument("--inputs", required=True, metavar="X.npz", help="the inputs, one array per input name")
    diff.add_argument("--policy", choices=policies, default="jit", help="weight policy of both runs (default jit)")
    diff.add_argument("--json", action="store_true", help="print the rows as JSON")


class _ProgressBar:
    """``label [#####.....] 3/10 name`` on one line of stderr, redrawn per weight."""

    def __init__(self, width: int = 30):
        self.width, self.label = width, ""

    def __call__(self, done: int, total: int, name: str) -> None:
        filled = self.width * done // max(total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        sys.stderr.write(f"\r\033[K{self.label:<9} [{bar}] {done}/{total} {name[:40]}")
        sys.stderr.flush()

    def clear(self) -> None:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
