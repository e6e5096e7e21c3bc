"""The ``weightpack`` command line."""
from __future__ import annotations

import argparse
import sys

from .errors import WeightpackError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weightpack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="compress a built-in ResNet50-shaped weight set every way and print a table"
    )
    demo.add_argument("--json", action="store_true", help="print the rows as JSON")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated weights (default 0)")
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (2 on bad input, with one line on stderr)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from . import demo

            demo.main(as_json=args.json, seed=args.seed)
    except WeightpackError as exc:
        print(f"weightpack {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
