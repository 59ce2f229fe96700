"""Command line: ``python -m fastconv [demo|train|bench|config] ...``.

``python -m fastconv`` with no subcommand runs ``demo`` with its defaults. Each subcommand is
registered by one ``_add_<name>`` function that sets ``func`` to a handler taking the parsed
arguments and returning the exit status, so new subcommands (``bench``, ``train``) slot in by
adding one such function to :data:`SUBCOMMANDS`. ``train`` and ``bench`` keep their options
and handlers in their own modules (``_train``, ``_bench``): ``add_arguments(parser)``,
``run(args) -> int``, ``HELP`` and ``DESCRIPTION``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Optional, Sequence

PROG = "python -m fastconv"


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _run_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(num_threads=args.threads, dtype=args.dtype, seed=args.seed,
                    repeats=args.repeats, art=not args.no_art)


def _run_config(args: argparse.Namespace) -> int:
    import fastconv

    fastconv.show_config()
    return 0


def _add_demo(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="check every op against fastconv.reference on built-in data and time it (default)",
        description="Run edge detection, ReLU and pooling on a synthetic test image and a random "
                    "batch, check every result against fastconv.reference, print a timing "
                    "table and an ASCII edge map. Exit status 1 if any check fails.",
    )
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="threads for every fastconv call (default: fastconv.get_num_threads())")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="dtype of the test data (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random data (default: 0)")
    p.add_argument("--repeats", type=positive_int, default=5, metavar="R",
                   help="timed runs per op; the table shows the median (default: %(default)s)")
    p.add_argument("--no-art", action="store_true", help="skip the ASCII edge map")
    p.set_defaults(func=_run_demo)


def _add_config(subparsers) -> None:
    p = subparsers.add_parser(
        "config", help="print the version, build options and thread settings",
        description="Print fastconv.show_config(): version, OpenMP, threads, build flags.",
    )
    p.set_defaults(func=_run_config)


def _add_bench(subparsers) -> None:
    from . import _bench

    p = subparsers.add_parser("bench", help=_bench.HELP, description=_bench.DESCRIPTION)
    _bench.add_arguments(p)
    p.set_defaults(func=_bench.run)


def _add_train(subparsers) -> None:
    from . import _train

    p = subparsers.add_parser("train", help=_train.HELP, description=_train.DESCRIPTION)
    _train.add_arguments(p)
    p.set_defaults(func=_train.run)


SUBCOMMANDS: List[Callable] = [_add_demo, _add_train, _add_bench, _add_config]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand of :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="fastconv: fast CPU convolution, pooling and ReLU for NumPy.",
        epilog=f"With no subcommand, runs 'demo' with its defaults. "
               f"'{PROG} <command> --help' shows a command's options.",
    )
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"fastconv {__version__}")
    subparsers = parser.add_subparsers(dest="command", title="commands", metavar="<command>")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # plain `python -m fastconv`: the demo with its defaults
        args = parser.parse_args(["demo"])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
