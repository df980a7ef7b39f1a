"""The ``fastxent`` command line: ``info``, ``bench``, ``eval`` and ``calibrate``."""

from __future__ import annotations

import argparse
import os
import sys
import time
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


class _Version(argparse.Action):
    """``--version``: computed only when asked (it looks at the backends)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from ._introspect import version_report

        print(version_report())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastxent", description="Fast cross-entropy losses on the CPU.")
    parser.add_argument("-V", "--version", action=_Version,
                        help="the version, the backends this installation can run and the instruction set in use")  # fmt: skip
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
    bench.add_argument("--repeats", type=_positive_int,
                       help="timed repeats per measurement, at least (median; default 9, quick 5)")  # fmt: skip
    bench.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder (default bench-results)")
    bench.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    bench.add_argument("--llm", action="store_true",
                       help="a language model's loss instead: bfloat16 logits from disk, materialised logits, "
                            "fused linear + loss, torch (time and peak memory)")  # fmt: skip
    bench.add_argument("--tokens", type=_positive_int, help="--llm: hidden states (default 2048; quick 1024)")
    bench.add_argument("--hidden", type=_positive_int, help="--llm: their width (default 256; quick 128)")
    bench.add_argument("--vocab", type=_positive_int, help="--llm: vocabulary size (default 32000; quick 8192)")
    _add_eval(commands)
    cal = commands.add_parser(
        "calibrate",
        help="measure this machine's backend and thread crossovers for backend='auto' (under a minute)",
        description="Time every compiled backend on 1 and all threads across sizes, and save the table where "
        "the dispatcher reads it ($XDG_CACHE_HOME/fastxent/calibration.json unless --out is given).",
    )
    cal.add_argument("--out", type=Path, help="write the table here instead of the user cache")
    cal.add_argument("--quick", action="store_true",
                     help="a few seconds: half the sizes, less time per point, Cython only unless --backends says")  # fmt: skip
    cal.add_argument(
        "--backends",
        type=lambda s: [v.strip() for v in s.split(",") if v.strip()],
        help="comma-separated backends to measure (default: the compiled ones)",
    )
    return parser


def _add_eval(commands) -> None:
    # Values are parsed by _run_eval, so that every bad input gets the same one-line error.
    ev = commands.add_parser(
        "eval",
        help="the loss of predictions in .npy files of any size, streamed through memory maps",
        description="Compute a loss over .npy files of any size: the files are memory-mapped in chunks of rows "
        "sized to --memory, and the result has the same bits as the in-memory call on the loaded arrays. "
        "Exit status 2 on bad input, with a one-line message.",
    )
    ev.add_argument("--y-true", required=True, metavar="FILE", help="labels (sparse) or targets (.npy)")
    ev.add_argument("--y-pred", required=True, metavar="FILE", help="probabilities or logits (.npy, C-ordered)")
    ev.add_argument("--loss", required=True, choices=["binary", "categorical", "sparse"])
    ev.add_argument("--from-logits", action="store_true", help="--y-pred holds logits")
    ev.add_argument("--reduction", default="mean", choices=["mean", "sum", "weighted_mean", "none"],
                    help="default mean; none writes per-sample losses to --out")  # fmt: skip
    ev.add_argument("--out", metavar="FILE.npy", help="with --reduction none: where to write the per-sample losses")
    ev.add_argument("--class-weight", metavar="FILE_OR_LIST", help="one weight per class: 1,2.5,1 or a .npy file")
    ev.add_argument("--pos-weight", metavar="FILE_OR_LIST", help="binary: a number, one per label, or a .npy file")
    ev.add_argument("--sample-weight", metavar="FILE", help="per-sample weights (.npy), or one number")
    ev.add_argument("--ignore-index", metavar="N", help="sparse: label of samples to leave out (e.g. -100)")
    ev.add_argument("--label-smoothing", metavar="X", default="0", help="in [0, 1] (default 0)")
    ev.add_argument("--epsilon", metavar="X", default="1e-7", help="clip bound for probabilities (default 1e-7)")
    ev.add_argument("--axis", metavar="N", default="-1", help="class axis (default -1; binary: none for elementwise)")
    ev.add_argument("--memory", metavar="SIZE", default="512MiB",
                    help="budget for the data held at once, e.g. 512MiB (default), 2GB, 1g")  # fmt: skip
    ev.add_argument("--backend", default="auto", choices=["auto", "numpy", "numba", "cython"])
    ev.add_argument("--threads", metavar="N", help="threads (default: every available core)")
    ev.add_argument("--metrics", metavar="LIST",
                    help="sparse: also compute, in the same pass, any of loss,accuracy,topK (e.g. top5),perplexity")  # fmt: skip
    ev.add_argument("--json", action="store_true", help="print a JSON object instead of a line of text")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        from ._introspect import show_config

        show_config()
        return 0
    if args.command == "bench":
        from ._bench_cli import run

        return run(args)
    if args.command == "eval":
        return _run_eval(args)
    if args.command == "calibrate":
        return _run_calibrate(args)
    raise AssertionError(args.command)  # pragma: no cover


def _run_calibrate(args) -> int:
    from . import _dispatch, backends
    from ._bench_cli import _plain_progress
    from ._measure import calibrate

    for name in args.backends or ():
        if name not in backends.NAMES:
            print(f"fastxent calibrate: error: --backends: expected some of {','.join(backends.NAMES)}, got {name!r}",
                  file=sys.stderr)  # fmt: skip
            return 2
    start = time.perf_counter()
    path = calibrate(args.out, backends=args.backends, progress=_plain_progress, quick=args.quick)
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    if args.out is None:
        print("\n".join(_dispatch.describe_thresholds()))
    return 0


# --------------------------------------------------------------------------- eval

#: Options of ``fastxent eval`` by the name of the argument they set.
_EVAL_OPTIONS = {
    "y_true": "--y-true", "y_pred": "--y-pred", "sample_weight": "--sample-weight", "loss": "--loss",
    "from_logits": "--from-logits", "reduction": "--reduction", "out": "--out", "class_weight": "--class-weight",
    "pos_weight": "--pos-weight", "ignore_index": "--ignore-index", "label_smoothing": "--label-smoothing",
    "epsilon": "--epsilon", "axis": "--axis", "memory": "--memory", "backend": "--backend", "threads": "--threads",
    "metrics": "--metrics",
}  # fmt: skip


class _BadOption(ValueError):
    pass


def _run_eval(args) -> int:
    import json

    from .evaluate import evaluate_files

    try:
        kwargs = _eval_kwargs(args)
        with _progress_bar(not args.no_progress) as progress:
            result = evaluate_files(args.loss, args.y_true, args.y_pred, progress=progress, **kwargs)
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        print(f"fastxent eval: error: {_cli_message(exc, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastxent eval: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(result.to_dict()) if args.json else str(result))
    return 0


def _eval_kwargs(args) -> dict:
    kwargs = dict(
        from_logits=args.from_logits, reduction=args.reduction, out=args.out, memory=args.memory,
        backend=args.backend, label_smoothing=_number(args.label_smoothing, "--label-smoothing", float),
        epsilon=_number(args.epsilon, "--epsilon", float),
        axis=None if args.axis.strip().lower() == "none" else _number(args.axis, "--axis", int),
    )  # fmt: skip
    if args.threads is not None:
        kwargs["threads"] = _number(args.threads, "--threads", int)
    if args.metrics is not None:
        kwargs["metrics"] = args.metrics
    if args.ignore_index is not None:
        kwargs["ignore_index"] = _number(args.ignore_index, "--ignore-index", int)
    if args.sample_weight is not None:
        kwargs["sample_weight"] = _number_or(args.sample_weight)
    for name in ("class_weight", "pos_weight"):
        text = getattr(args, name)
        if text is not None:
            kwargs[name] = _weights(text, _EVAL_OPTIONS[name])
    return kwargs


def _number(text: str, option: str, kind):
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise _BadOption(f"{option}: expected {what}, got {text!r}") from None


def _number_or(text: str):
    """A number, or the text itself (a file name)."""
    try:
        return float(text)
    except ValueError:
        return text


def _weights(text: str, option: str):
    """Comma-separated numbers, or the array in a .npy file."""
    import numpy as np

    try:
        values = [float(v) for v in text.split(",")]
        return values[0] if len(values) == 1 and "," not in text else values
    except ValueError:
        pass
    if not os.path.isfile(text):
        raise _BadOption(f"{option}: expected comma-separated numbers or a .npy file, got {text!r} (no such file)")
    try:
        return np.load(text, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise _BadOption(f"{option} {text}: expected comma-separated numbers or a .npy file, got {exc}") from None


def _cli_message(exc: Exception, args) -> str:
    """The library's message, with arguments named as the options that set them."""
    message = " ".join(str(exc).split())  # one line
    if isinstance(exc, _BadOption):
        return message
    for name in ("y_true", "y_pred", "sample_weight", "out"):  # "y_pred (preds.npy): ..."
        path = getattr(args, name)
        prefix = f"{name} ({path}): "
        if path is not None and message.startswith(prefix):
            message = f"{_EVAL_OPTIONS[name]} {path}: " + message[len(prefix) :]
            break
    else:
        name, sep, rest = message.partition(": ")
        if sep and name in _EVAL_OPTIONS:
            message = _EVAL_OPTIONS[name] + sep + rest
    return message.replace("pass from_logits=True", "pass --from-logits")


class _progress_bar:
    """A ``progress(done, total, note=None)`` callback drawing a bar on stderr (rich if
    installed); ``note`` says what the evaluation is doing (e.g. compiling a kernel)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar = None
        self._last = 0.0

    def __enter__(self):
        if not (self.enabled and sys.stderr.isatty()):
            return None
        try:
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)  # fmt: skip
        except ImportError:
            return self._plain
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn())  # fmt: skip
        self._bar = Progress(*columns, console=Console(stderr=True), transient=True)
        self._bar.start()
        self._task = self._bar.add_task("eval", total=None)
        return self._rich

    def _rich(self, done: int, total: int, note: str | None = None) -> None:
        self._bar.update(self._task, completed=done, total=total, description=note or "eval")

    def _plain(self, done: int, total: int, note: str | None = None) -> None:
        if note:
            print(f"\reval: {note}", file=sys.stderr, flush=True)
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.2:
            return
        self._last = now
        pct = 100.0 * done / total if total else 100.0
        end = "\n" if done >= total else ""
        print(f"\reval: {pct:5.1f}% of {total / 1e9:.2f} GB", end=end, file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()
        return False


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
