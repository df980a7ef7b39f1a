"""fastxent.linear_cross_entropy against the bare matrix product, the unfused fastxent
path and torch: time and peak memory, one table.

    python benchmarks/linear.py [--rows 2048] [--features 256] [--vocab 32000]
                                [--repeats 7] [--budgets 32MiB,48MiB] [--threads N]
                                [--no-memory]

Run it from the repository root (the ``fastxent`` beside this folder is imported).
Every function runs once per round, in turn, so a slow phase of a shared machine
falls on all of them; a time is the median over rounds and a ratio the median of
the per-round ratios to ``hidden @ weight.T`` (the bare product, whose N x V result
the fused call never holds; it allocates and touches that result every call, as a
user's code does) and to the same product into a preallocated array (BLAS alone).
torch rows appear when torch imports (e.g. run with a Python that has it).
``OPENBLAS_NUM_THREADS=1`` with ``--threads 1`` times one core.

Peak memory is measured per function in a fresh child process: ``tracemalloc``'s
peak for the NumPy paths (it sees NumPy's allocations, not torch's), and for every
path the growth of the resident set's high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs`` just before the call) over the resident size before it,
during the child's first call (which includes first-call costs such as torch's lazy
initialisation; a repeat would reuse memory the allocator already holds). The
inputs are made first and do not count.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import fastxent  # noqa: E402
from fastxent import linear  # noqa: E402

MiB = 1 << 20


def make_inputs(rows: int, features: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((rows, features), dtype=np.float32)
    weight = rng.standard_normal((vocab, features), dtype=np.float32) * np.float32(features**-0.5)
    labels = rng.integers(0, vocab, rows)
    return labels, hidden, weight


def calls(labels, hidden, weight, budgets: list[int], threads: int | None = None) -> dict:
    """``{name: zero-argument function}``; torch's when torch imports."""

    def fused(grad: bool, budget: int):
        def fn():
            linear.BLOCK_BYTES = budget
            return fastxent.linear_cross_entropy(labels, hidden, weight, return_grad=grad, threads=threads)

        return fn

    def unfused(grad: bool):
        def fn():
            logits = hidden @ weight.T
            if not grad:
                return fastxent.sparse_categorical_crossentropy(labels, logits, from_logits=True, threads=threads)
            loss, g = fastxent.sparse_categorical_crossentropy(
                labels, logits, from_logits=True, return_grad=True, grad_out=logits, threads=threads
            )
            return loss, g @ weight, g.T @ hidden

        return fn

    buffer = np.empty((hidden.shape[0], weight.shape[0]), np.float32)
    out = {
        "hidden @ weight.T": lambda: hidden @ weight.T,
        "the same into a preallocated array": lambda: np.matmul(hidden, weight.T, out=buffer),
    }
    for budget in budgets:
        suffix = "" if len(budgets) == 1 else f" [{budget // MiB} MiB]"
        out["linear_cross_entropy" + suffix] = fused(False, budget)
    out["unfused: matmul + sparse_categorical_crossentropy"] = unfused(False)
    out.update(torch_calls(labels, hidden, weight, grad=False, threads=threads))
    for budget in budgets:
        suffix = "" if len(budgets) == 1 else f" [{budget // MiB} MiB]"
        out["linear_cross_entropy, return_grad" + suffix] = fused(True, budget)
    out["unfused + grad (in place) + 2 matmuls"] = unfused(True)
    out.update(torch_calls(labels, hidden, weight, grad=True, threads=threads))
    return out


def torch_calls(labels, hidden, weight, grad: bool, threads: int | None = None) -> dict:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return {}
    if threads is not None:
        torch.set_num_threads(threads)
    y = torch.from_numpy(labels)
    if not grad:
        h, w = torch.from_numpy(hidden), torch.from_numpy(weight)

        def loss():
            with torch.no_grad():
                return F.cross_entropy(F.linear(h, w), y)

        return {"torch: F.linear + F.cross_entropy": loss}
    h = torch.from_numpy(hidden).requires_grad_()
    w = torch.from_numpy(weight).requires_grad_()

    def loss_and_grad():
        h.grad = w.grad = None
        F.cross_entropy(F.linear(h, w), y).backward()
        return h.grad, w.grad

    return {"torch: the same + backward": loss_and_grad}


def time_rounds(fns: dict, repeats: int) -> dict:
    """``{name: [seconds per round]}``: every function once per round, in turn."""
    for fn in fns.values():  # warm-up: first-call costs (imports, page faults)
        fn()
    times = {name: [] for name in fns}
    gc.disable()
    try:
        for _ in range(repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return times


def peak_memory(name: str, args) -> dict:
    """Run ``name`` once in a child process and return its peaks (bytes)."""
    cmd = [sys.executable, __file__, "--child", name, "--rows", str(args.rows), "--features",
           str(args.features), "--vocab", str(args.vocab), "--budgets", args.budgets]  # fmt: skip
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(name: str, args) -> None:
    fns = calls(*make_inputs(args.rows, args.features, args.vocab), parse_budgets(args.budgets), args.threads)
    fn = fns[name]
    gc.collect()
    # The resident set's growth over the first call: a warmed-up allocator would
    # serve a repeat from memory that is already resident and show nothing.
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    fn()
    result = {"rss": (_status_kib("VmHWM") - before) * 1024}
    if not name.startswith("torch"):
        gc.collect()
        tracemalloc.start()
        fn()
        result["tracemalloc"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    print(json.dumps(result))


def parse_budgets(text: str) -> list[int]:
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if part.endswith("MiB"):
            sizes.append(int(float(part[:-3]) * MiB))
        elif part.endswith("KiB"):
            sizes.append(int(float(part[:-3]) * 1024))
        else:
            sizes.append(int(part))
    return sizes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--budgets", default=f"{linear.BLOCK_BYTES // MiB}MiB",
                        help="block budgets for the fused call, comma-separated (default: the library's)")
    parser.add_argument("--threads", type=int, help="threads of the fastxent kernels and torch (default: theirs)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-function memory runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args)

    labels, hidden, weight = make_inputs(args.rows, args.features, args.vocab)
    fns = calls(labels, hidden, weight, parse_budgets(args.budgets), args.threads)
    times = time_rounds(fns, args.repeats)
    base = times["hidden @ weight.T"]
    floor = times["the same into a preallocated array"]
    logits_bytes = args.rows * args.vocab * 4
    print(f"{args.rows:,} x {args.features} hidden, {args.vocab:,} vocabulary, float32; "
          f"N x V logits = {logits_bytes / MiB:.0f} MiB; {args.repeats} rounds; "
          f"numpy {np.__version__}" + (f", torch {sys.modules['torch'].__version__}" if "torch" in sys.modules else "")
          + f"; kernel threads {args.threads or 'default'}, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")  # fmt: skip
    print()
    print("| call | median | ÷ matmul | ÷ matmul into buffer | peak (tracemalloc) | peak (RSS growth) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base))
        ratio_floor = statistics.median(t / b for t, b in zip(ts, floor))
        peaks = {} if args.no_memory else peak_memory(name, args)
        traced = f"{peaks['tracemalloc'] / MiB:,.1f} MiB" if "tracemalloc" in peaks else "–"
        rss = f"{peaks['rss'] / MiB:,.1f} MiB" if "rss" in peaks else "–"
        print(f"| {name} | {statistics.median(ts) * 1e3:,.1f} ms | {ratio:.2f} | {ratio_floor:.2f} | {traced} | {rss} |")


if __name__ == "__main__":
    main()
