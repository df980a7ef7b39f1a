"""Call-time percentiles of mid-sized calls while another process keeps a core busy.

A call split over two threads ends when both halves are done; when another process
holds one of the two cores, the half given to a thread that is not scheduled used to
wait for it (a scheduler time slice, milliseconds). This prints, per setting, the
median, 90th and 99th percentile of single calls (sparse loss from logits, float32,
1,000 / 4,096 / 16,384 x 100) with ``threads`` None (the dispatcher's choice), 1 and 2:

    python benchmarks/busy_core.py [--calls 2000] [--busy both] [--torch auto]
    PYTHONPATH=<checkout> python benchmarks/busy_core.py   # another checkout

Settings: a quiet machine, and one core kept busy by a ``while True: pass`` process
(started before and killed after each measurement); each without and with torch
imported (``--torch-python``: the interpreter that has torch, default this one;
``auto`` skips torch where it is missing). With torch, the measuring process first
runs torch's cross-entropy on two threads, so torch's OpenMP threads exist as they
would in an application. Every setting is a fresh process. The target: p90 within
3x of the median with a busy core, and the quiet medians unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SHAPES = ((1_000, 100), (4_096, 100), (16_384, 100))
THREADS = (None, 1, 2)


def percentiles(fn, calls: int, warm_seconds: float = 0.3) -> tuple[float, float, float]:
    """Median, 90th and 99th percentile of single calls, in µs, after a warm-up long
    enough for the scheduler to have placed the threads (a new thread may share its
    parent's core for tens of milliseconds)."""
    end = time.perf_counter() + warm_seconds
    while time.perf_counter() < end:
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    pick = lambda q: times[min(int(len(times) * q), len(times) - 1)] * 1e6  # noqa: E731
    return pick(0.5), pick(0.9), pick(0.99)


def measure(calls: int, with_torch: bool) -> dict:
    """Runs in the child: where fastxent came from, and one row per (shape, threads)."""
    if with_torch:
        import torch

        torch.set_num_threads(2)
        x = torch.randn(4_096, 100)
        torch.nn.functional.cross_entropy(x, torch.randint(0, 100, (4_096,)))  # torch's threads start
    import numpy as np

    import fastxent

    rng = np.random.default_rng(0)
    loss = fastxent.sparse_categorical_crossentropy
    rows = []
    for n, c in SHAPES:
        x = rng.standard_normal((n, c)).astype(np.float32)
        y = rng.integers(0, c, n)
        for threads in THREADS:
            median, p90, p99 = percentiles(lambda: loss(y, x, from_logits=True, threads=threads), calls)
            rows.append([f"{n}x{c}", threads, median, p90, p99])
    return {"fastxent": os.path.dirname(fastxent.__file__), "rows": rows}


def has_torch(python: str) -> bool:
    return subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0


def run_setting(python: str, calls: int, busy: bool, with_torch: bool) -> dict:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        if spinner is not None:
            time.sleep(0.5)  # let the scheduler settle the spinner on a core
        out = subprocess.run(
            [python, os.path.abspath(__file__), "--child", "--calls", str(calls)] + (["--with-torch"] if with_torch else []),
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        if spinner is not None:
            spinner.kill()  # this script's own spinner, by its pid
            spinner.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2_000, help="timed calls per shape and thread count")
    parser.add_argument("--busy", choices=("both", "no", "yes"), default="both")
    parser.add_argument("--torch", choices=("auto", "no", "yes"), default="auto")
    parser.add_argument("--torch-python", default=sys.executable, help="the interpreter that has torch")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--with-torch", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.calls, args.with_torch)))
        return
    torch_runs = {"no": [False], "yes": [True], "auto": [False] + ([True] if has_torch(args.torch_python) else [])}
    busy_runs = {"both": [False, True], "no": [False], "yes": [True]}[args.busy]
    print(f"{os.cpu_count()} CPUs; {args.calls} calls each; set PYTHONPATH to measure a checkout")
    print("| setting | shape | threads | median µs | p90 µs | p99 µs | p90 / median |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    seen = None
    for with_torch in torch_runs[args.torch]:
        for busy in busy_runs:
            python = args.torch_python if with_torch else sys.executable
            setting = ("busy core" if busy else "quiet") + (", torch imported" if with_torch else "")
            result = run_setting(python, args.calls, busy, with_torch)
            setting += f" ({result['fastxent']})" if result["fastxent"] != seen else ""
            seen = result["fastxent"]
            for shape, threads, median, p90, p99 in result["rows"]:
                print(f"| {setting} | {shape} | {threads} | {median:.1f} | {p90:.1f} | {p99:.1f} | {p90 / median:.1f} |",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
