"""The backend issues' target table in about two minutes: each compiled backend on the
target workloads, as a ratio to a read pass over the same bytes measured in the same
run, and as a speed-up over torch when it is installed. Medians; 2 threads.

    python benchmarks/targets.py [--threads 2] [--repeats 7]

The pytest-benchmark suite (``python -m pytest benchmarks -n0``) covers every
workload, backend and thread count; this script is the short version for a closing
note or a quick check after a kernel change.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastxent
from fastxent import backends
from fastxent.backends import _cython_ext


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (and JIT compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_pass(arrays, threads: int):
    words = [np.ascontiguousarray(a).reshape(-1).view(np.float32) for a in arrays]
    return lambda: [_cython_ext._read_sum(w, threads) for w in words]


def torch_fn(kind: str, y_pred, y_true, threads: int, grad: bool = False):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(threads)
    x, t = torch.from_numpy(y_pred), torch.from_numpy(y_true)
    loss = {"sparse": F.cross_entropy, "binary": F.binary_cross_entropy_with_logits}[kind]
    if grad:
        def run():
            xg = x.detach().requires_grad_()
            loss(xg, t).backward()
        return run
    return lambda: loss(x, t)


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

    def timed(fn, inner):
        return median_seconds(lambda: [fn() for _ in range(inner)], rep) / inner

    def row(workload, reference, ref_name, calls, torch_call=None, inner=1):
        ref = timed(reference, inner) if reference else None
        mine = [(name, timed(fn, inner)) for name, fn in calls]
        # torch last: its OpenMP threads keep spinning after a call and would steal
        # the cores from the next kernel timed
        torch_s = timed(torch_call, inner) if torch_call else None
        for name, s in mine:
            ratio = f"{s / ref:.2f} × {ref_name}" if ref else "–"
            vs_torch = f"{torch_s / s:.1f}×" if torch_s else "–"
            shown = f"{s * 1e6:.2f} µs" if s < 1e-3 else f"{s * 1e3:.2f} ms"
            rows.append(f"| {workload} | {name} | {shown} | {ratio} | {vs_torch} |")

    z = rng.standard_normal((65_536, 1_000), dtype=np.float32)
    y = rng.integers(0, 1_000, 65_536)
    row("sparse logits 65,536 × 1,000 f32", read_pass([z], th), "read", [
        (b, lambda b=b: scce(y, z, from_logits=True, backend=b, threads=th)) for b in names
    ], torch_fn("sparse", z, y, th))
    scratch = z.copy()
    row("  + gradient in place", read_pass([z], th), "read", [
        (b, lambda b=b: scce(y, scratch, from_logits=True, backend=b, threads=th, return_grad=True, grad_out=scratch))
        for b in names
    ], torch_fn("sparse", z, y, th, grad=True))
    big = rng.standard_normal((2_048, 128_256), dtype=np.float32)
    yb = rng.integers(0, 128_256, 2_048)
    row("sparse logits 2,048 × 128,256 f32", read_pass([big], th), "read", [
        (b, lambda b=b: scce(yb, big, from_logits=True, backend=b, threads=th)) for b in names
    ], torch_fn("sparse", big, yb, th))
    zb = rng.standard_normal(10_000_000, dtype=np.float32)
    tb = (rng.random(10_000_000) < 0.5).astype(np.float32)
    row("binary logits 10M f32", read_pass([zb, tb], th), "read", [
        (b, lambda b=b: fastxent.binary_crossentropy(tb, zb, from_logits=True, backend=b, threads=th))
        for b in names
    ], torch_fn("binary", zb, tb, th))
    for c in (1_000, 10_000):
        p = np.full((200_000, c), 1.0 / c, dtype=np.float32)
        yp = rng.integers(0, c, 200_000)
        index = np.arange(200_000)
        row(f"sparse probs 200,000 × {c:,}", lambda: p[index, yp], "numpy gather", [
            (b, lambda b=b: scce(yp, p, backend=b, threads=th)) for b in names
        ])
        del p
    y32, z32 = rng.integers(0, 10, 32), rng.standard_normal((32, 10)).astype(np.float32)
    row("32 × 10 sparse logits, public call", None, "", [
        ("auto", lambda: scce(y32, z32, from_logits=True))
    ], torch_fn("sparse", z32, y32, 1), inner=2000)
    print("| workload | backend | median | ratio | vs torch |\n| --- | --- | ---: | ---: | ---: |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
