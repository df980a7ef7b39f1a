"""Mid-sized sparse cross-entropy next to PyTorch, in one process with torch imported.

For each shape, float32 logits: ``backend="auto"`` against
``torch.nn.functional.cross_entropy`` at its best of 1 and 2 threads, the loss alone
and with the gradient (torch: ``backward``), then the gather-log from probabilities
against ``-log(p.gather(1, y[:, None])).mean()``. Each figure is the median of
back-to-back calls (as in a training loop), and the table holds the median over
rounds, each round timing every function in turn:

    python benchmarks/mid_torch.py [--rounds 3]    # needs torch

Prints a Markdown table; numbers belong in RESULTS.md, never in a test.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastxent

SHAPES = ((1_000, 100), (4_096, 32), (4_096, 100), (16_384, 100))
GATHER = (100_000, 1_000)


def median_us(fn, calls: int) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def torch_best(torch, fn, calls: int) -> float:
    best = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        best.append(median_us(fn, calls))
    return min(best)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    import torch

    rng = np.random.default_rng(0)
    loss = fastxent.sparse_categorical_crossentropy
    print("| shape | fastxent µs | torch µs | speed-up | fastxent + grad | torch + grad | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, c in SHAPES:
        x = rng.standard_normal((n, c)).astype(np.float32)
        y = rng.integers(0, c, n)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        xg = xt.clone().requires_grad_(True)

        def torch_grad():
            torch.nn.functional.cross_entropy(xg, yt).backward()
            xg.grad = None

        rounds = {"fx": [], "fx_g": [], "t": [], "t_g": []}
        for _ in range(args.rounds):
            rounds["fx"].append(median_us(lambda: loss(y, x, from_logits=True), 200))
            rounds["fx_g"].append(median_us(lambda: loss(y, x, from_logits=True, return_grad=True), 200))
            rounds["t"].append(torch_best(torch, lambda: torch.nn.functional.cross_entropy(xt, yt), 200))
            rounds["t_g"].append(torch_best(torch, torch_grad, 200))
        m = {key: statistics.median(values) for key, values in rounds.items()}
        print(f"| {n:,} x {c} | {m['fx']:.0f} | {m['t']:.0f} | {m['t'] / m['fx']:.2f}x | "
              f"{m['fx_g']:.0f} | {m['t_g']:.0f} | {m['t_g'] / m['fx_g']:.2f}x |")  # fmt: skip
    n, c = GATHER
    p = rng.random((n, c)).astype(np.float32)
    y = rng.integers(0, c, n)
    pt, yt = torch.from_numpy(p), torch.from_numpy(y)
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(median_us(lambda: loss(y, p), 50))
        theirs.append(torch_best(torch, lambda: -torch.log(pt.gather(1, yt[:, None])).mean(), 50))
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"| gather-log {n:,} x {c:,} (probabilities) | {a:.0f} | {b:.0f} | {b / a:.2f}x | | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
