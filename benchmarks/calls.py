"""Public calls of small and mid-sized inputs, where fixed costs decide: the minimum
over repeats of each call's mean time, for this checkout (or torch's, with --torch).

    python benchmarks/calls.py [--torch] [--runs 3]

To compare two checkouts, run it once with each on ``PYTHONPATH`` (alternating, since
the machine's speed drifts) and compare the columns; the README's mid-sized table
was made that way. Each run is a fresh process, so the dispatcher decides once per
shape, as in an application.
"""

from __future__ import annotations

import argparse
import statistics
import timeit

import numpy as np
from targets import torch_fns

SPARSE_SHAPES = ((32, 10), (64, 1_000), (1_000, 100), (4_096, 32), (4_096, 100), (256, 1_000), (16_384, 100))


def best_mean_us(fn, number: int, repeat: int = 7) -> float:
    fn()
    fn()  # warm: the first call of a shape decides (and may compile)
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def calls_per_timing(elements: int) -> int:
    return max(20, int(2e6 / elements))


def fastxent_calls(rng) -> dict:
    import fastxent

    sparse = fastxent.sparse_categorical_crossentropy
    out = {}
    for n, c in SPARSE_SHAPES:
        x = (rng.standard_normal((n, c)) * 3).astype(np.float32)
        y = rng.integers(0, c, n)
        out[f"sparse {n:,} × {c:,}"] = (lambda x=x, y=y: sparse(y, x, from_logits=True), n * c)
        out[f"  + gradient {n:,} × {c:,}"] = (
            lambda x=x, y=y: sparse(y, x, from_logits=True, return_grad=True), n * c)
    x, t = rng.standard_normal(4_096), (rng.random(4_096) < 0.5) * 1.0
    out["binary 4,096 float64"] = (lambda: fastxent.binary_crossentropy(t, x, from_logits=True), 4_096)
    z = rng.standard_normal((1_000, 100)).astype(np.float32)
    onehot = np.eye(100, dtype=np.float32)[rng.integers(0, 100, 1_000)]
    out["categorical 1,000 × 100"] = (
        lambda: fastxent.categorical_crossentropy(onehot, z, from_logits=True), 100_000)
    return out


def torch_calls(rng) -> dict:
    """The sparse calls in torch, each as {threads: call} (``targets.torch_fns``)."""
    out = {}
    for n, c in SPARSE_SHAPES:
        x = (rng.standard_normal((n, c)) * 3).astype(np.float32)
        y = rng.integers(0, c, n)
        out[f"sparse {n:,} × {c:,}"] = (torch_fns("sparse", x, y, 2), n * c)
        out[f"  + gradient {n:,} × {c:,}"] = (torch_fns("sparse", x, y, 2, grad=True), n * c)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", action="store_true", help="time torch (best of 1 and 2 threads)")
    parser.add_argument("--runs", type=int, default=3, help="median over this many timings")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    if args.torch:
        import torch

        def timing(fns, elements):
            best = []
            for threads, fn in fns.items():
                torch.set_num_threads(threads)
                best.append(best_mean_us(fn, calls_per_timing(elements)))
            return min(best)

        calls = torch_calls(rng)
    else:
        calls = fastxent_calls(rng)

        def timing(fn, elements):
            return best_mean_us(fn, calls_per_timing(elements))

    print("| call | µs |\n| --- | ---: |")
    for name, (fn, elements) in calls.items():
        print(f"| {name} | {statistics.median(timing(fn, elements) for _ in range(args.runs)):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
