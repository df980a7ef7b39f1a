"""The ``fastxent`` command line: ``info`` and ``bench``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _int_list(text: str) -> tuple:
    try:
        values = tuple(int(v.replace("_", "")) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastxent", description="Fast cross-entropy losses on the CPU.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    commands.add_parser("info", help="backends, build flags, threads and thresholds (as fastxent.show_config())")

    bench = commands.add_parser(
        "bench",
        help="sparse labels vs one-hot targets: time and peak memory across class counts and backends",
        description="Measure sparse labels against one-hot targets on synthetic data: a table on the "
        "terminal, results.json and results.png in the output folder.",
    )
    bench.add_argument("--quick", action="store_true", help="fewer classes, rows and repeats (under 30 s)")
    bench.add_argument("--classes", type=_int_list, help="comma-separated class counts (default 10,100,1000,10000,50000)")
    bench.add_argument("--rows", type=_int_list, help="comma-separated row counts (default 2048; quick 1024)")
    bench.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    bench.add_argument("--threads", type=_positive_int, help="threads (default: every available core)")
    bench.add_argument(
        "--backends",
        type=lambda s: tuple(v.strip() for v in s.split(",") if v.strip()),
        help="comma-separated subset of numpy,numba,cython (fastxent backends), plain-numpy, torch "
        "(default: all available)",
    )
    bench.add_argument("--repeats", type=_positive_int, help="timed repeats per measurement (median; default 7, quick 3)")
    bench.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder (default bench-results)")
    bench.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        from ._introspect import show_config

        show_config()
        return 0
    if args.command == "bench":
        from ._bench_cli import run

        return run(args)
    raise AssertionError(args.command)  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
