"""The backend issues' target table in about two minutes: each compiled backend on the
target workloads, as a ratio to a read pass over the same bytes and as a speed-up over
torch (best of 1 and ``--threads`` threads) when it is installed. Every function is
timed once per round, in turn; ratios are medians of per-round ratios. 2 threads.

    python benchmarks/targets.py [--threads 2] [--repeats 7]

The first rows time public calls of small and mid-sized inputs against torch. The
Cython kernels run on the extension's own thread pool, so torch's libgomp (whose
workers sleep between parallel calls once it manages more threads than there are
cores) no longer slows them when torch is in the same process; see RESULTS.md,
"The extension's thread pool".

The pytest-benchmark suite (``python -m pytest benchmarks -n0``) covers every
workload, backend and thread count; this script is the short version for a closing
note or a quick check after a kernel change.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import numpy as np

import fastxent
from fastxent import backends
from fastxent.backends import _cython_ext


def runs(fn, *args, **kwargs) -> bool:
    """Whether the call's backend can run it (explain raises when it cannot)."""
    try:
        fastxent.explain(fn, *args, **kwargs)
    except RuntimeError:
        return False
    return True


def read_pass(arrays, threads: int):
    words = [np.ascontiguousarray(a).reshape(-1).view(np.float32) for a in arrays]
    return lambda: [_cython_ext._read_sum(w, threads) for w in words]


def torch_fns(kind: str, y_pred, y_true, threads: int, grad: bool = False):
    """``{torch threads: call}`` for 1 and ``threads`` threads (the best counts), or
    ``{}`` when torch is not installed."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return {}
    x, t = torch.from_numpy(y_pred), torch.from_numpy(y_true)
    loss = {"sparse": F.cross_entropy, "binary": F.binary_cross_entropy_with_logits}[kind]
    if grad:
        def run():
            xg = x.detach().requires_grad_()
            loss(xg, t).backward()
        return {k: run for k in sorted({1, threads})}
    return {k: (lambda: loss(x, t)) for k in sorted({1, threads})}


def paired_rounds(calls: dict, torch_calls: dict, rounds: int, inner: int) -> dict:
    """Seconds per call of every function, one timing of each per round, in turn.

    The machine's speed drifts (a noisy neighbour can halve it for seconds), so a
    ratio is taken between timings of the same round and the median of the
    per-round ratios reported. Each timing is followed by a pause, because pool and
    OpenMP threads keep spinning after a parallel call and would steal the next one's
    cores (torch's, which go last in a round, for longest).
    """
    def once(fn):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - start) / inner

    times = {name: [] for name in list(calls) + [("torch", k) for k in torch_calls]}
    for fn in calls.values():
        fn()  # warm-up (and JIT compilation)
    # No garbage collection while timing, as in timeit: with torch imported a full
    # collection walks ~170,000 objects, and one landing inside a timing of small
    # calls would be charged to them.
    gc.collect()
    gc.disable()
    try:
        _timed_rounds(calls, torch_calls, rounds, once, times)
    finally:
        gc.enable()
    return times


def _timed_rounds(calls, torch_calls, rounds, once, times):
    for _ in range(rounds):
        for name, fn in calls.items():
            times[name].append(once(fn))
            time.sleep(0.01)  # pool threads spin briefly after a parallel call
        for k, fn in torch_calls.items():
            import torch

            torch.set_num_threads(k)
            fn()
            times[("torch", k)].append(once(fn))
            time.sleep(0.05)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e6:.2f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def median_ratio(a, b) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    th, rep = args.threads, args.repeats
    rng = np.random.default_rng(0)
    names = [b for b in ("cython", "numba") if backends.unavailable_reason(b) is None]
    scce = fastxent.sparse_categorical_crossentropy
    rows = []

    def row(workload, reference, ref_name, calls, torch_calls=None, inner=1):
        named = dict(calls)
        if reference:
            named["reference"] = reference
        times = paired_rounds(named, torch_calls or {}, rep, inner)
        torch_best = [min(ts) for ts in zip(*(times[("torch", k)] for k in torch_calls or {}))]
        # the reference's own median: its speed drifts too (a read pass between about
        # 4 and 9 ms on the same 262 MB), and a ratio alone hides which side moved
        ref_time = statistics.median(times["reference"]) if reference else None
        for name, _ in calls:
            s = statistics.median(times[name])
            ratio = f"{median_ratio(times[name], times['reference']):.2f} × {ref_name} ({_ms(ref_time)})" if reference else "–"
            vs_torch = f"{median_ratio(torch_best, times[name]):.1f}×" if torch_best else "–"
            shown = _ms(s)
            rows.append(f"| {workload} | {name} | {shown} | {ratio} | {vs_torch} |")

    # public calls, small and mid-sized: fixed costs against torch's (inner: a few ms a
    # timing). First, before the large arrays: freeing gigabytes leaves the VM busy
    for n, c, inner in ((32, 10, 2000), (64, 1_000, 50), (1_000, 100, 50), (4_096, 100, 20)):
        ys, zs = rng.integers(0, c, n), rng.standard_normal((n, c)).astype(np.float32)
        row(f"{n:,} × {c:,} sparse logits, public call", None, "", [
            ("auto", lambda ys=ys, zs=zs: scce(ys, zs, from_logits=True))
        ], torch_fns("sparse", zs, ys, th), inner=inner)
    z = rng.standard_normal((65_536, 1_000), dtype=np.float32)
    y = rng.integers(0, 1_000, 65_536)
    row("sparse logits 65,536 × 1,000 f32", read_pass([z], th), "read", [
        (b, lambda b=b: scce(y, z, from_logits=True, backend=b, threads=th)) for b in names
    ], torch_fns("sparse", z, y, th))
    scratch = z.copy()
    row("  + gradient in place", read_pass([z], th), "read", [
        (b, lambda b=b: scce(y, scratch, from_logits=True, backend=b, threads=th, return_grad=True, grad_out=scratch))
        for b in names
    ], torch_fns("sparse", z, y, th, grad=True))
    big = rng.standard_normal((2_048, 128_256), dtype=np.float32)
    yb = rng.integers(0, 128_256, 2_048)
    row("sparse logits 2,048 × 128,256 f32", read_pass([big], th), "read", [
        (b, lambda b=b: scce(yb, big, from_logits=True, backend=b, threads=th)) for b in names
    ], torch_fns("sparse", big, yb, th))
    try:  # bfloat16 read in place by the kernels: the read pass covers half the bytes
        import ml_dtypes
    except ImportError:
        ml_dtypes = None
    if ml_dtypes is not None:
        big16 = big.astype(ml_dtypes.bfloat16)
        del big
        row("sparse logits 2,048 × 128,256 bf16", read_pass([big16], th), "read", [
            (b, lambda b=b: scce(yb, big16, from_logits=True, backend=b, threads=th))
            for b in names if runs(scce, yb, big16, from_logits=True, backend=b)
        ])
        del big16
    zb = rng.standard_normal(10_000_000, dtype=np.float32)
    tb = (rng.random(10_000_000) < 0.5).astype(np.float32)
    row("binary logits 10M f32", read_pass([zb, tb], th), "read", [
        (b, lambda b=b: fastxent.binary_crossentropy(tb, zb, from_logits=True, backend=b, threads=th))
        for b in names
    ], torch_fns("binary", zb, tb, th))
    for c in (1_000, 10_000):
        p = np.full((200_000, c), 1.0 / c, dtype=np.float32)
        yp = rng.integers(0, c, 200_000)
        index = np.arange(200_000)
        row(f"sparse probs 200,000 × {c:,}", lambda: p[index, yp], "numpy gather", [
            (b, lambda b=b: scce(yp, p, backend=b, threads=th)) for b in names
        ])
        del p
    print("| workload | backend | median | ratio | vs torch |\n| --- | --- | ---: | ---: | ---: |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
