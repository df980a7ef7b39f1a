"""fastxent.torch against torch.nn.functional: forward + backward through autograd.

    python benchmarks/torch_autograd.py [--threads 2] [--rounds 21]

Each row times one training step's loss work on CPU tensors -- the loss's forward
and ``backward()`` into a leaf's ``.grad`` -- with ``fastxent.torch`` and with
``torch.nn.functional``, in alternating rounds (so a slow phase of the machine hits
both), and prints the medians and their ratio. ``inference`` rows time the forward
alone under ``torch.no_grad()``. torch runs with ``--threads`` intra-op threads and
fastxent with its default (every core the process may use).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch
import torch.nn.functional as F

import fastxent.torch as fxt

WORKLOADS = [
    # name, (rows, classes), kind, options
    ("sparse 32 x 10", (32, 10), "sparse", {}),
    ("sparse 1,000 x 100", (1_000, 100), "sparse", {}),
    ("sparse 16,384 x 1,000", (16_384, 1_000), "sparse", {}),
    ("sparse 16,384 x 1,000, smoothing + weights", (16_384, 1_000), "sparse", {"label_smoothing": 0.1, "weight": True}),
    ("sparse 2,048 x 32,000", (2_048, 32_000), "sparse", {}),
    ("segmentation 8 x 21 x 128 x 128", (8, 21, 128, 128), "sparse", {"ignore_index": 255}),
    ("binary logits 4,096 x 256", (4_096, 256), "binary", {}),
]


def make(shape, kind, options, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if kind == "binary":
        return x, torch.rand(shape, generator=g), {}
    target_shape = shape[:1] + shape[2:]
    y = torch.randint(0, shape[1], target_shape, generator=g)
    kwargs = dict(options)
    if kwargs.pop("weight", False):
        kwargs["weight"] = torch.rand(shape[1], generator=g) + 0.5
    if "ignore_index" in kwargs:
        y.view(-1)[::10] = kwargs["ignore_index"]
    return x, y, kwargs


def step(fn, x, target, kwargs, train: bool):
    if train:
        leaf = x.detach().requires_grad_()
        fn(leaf, target, **kwargs).backward()
        return lambda: _train(fn, leaf, target, kwargs)
    return lambda: _infer(fn, x, target, kwargs)


def _train(fn, leaf, target, kwargs):
    leaf.grad = None
    fn(leaf, target, **kwargs).backward()


def _infer(fn, x, target, kwargs):
    with torch.no_grad():
        fn(x, target, **kwargs)


def paired_medians(a, b, rounds: int, budget: float = 0.05):
    """Median seconds of ``a`` and ``b``, timed in alternating rounds of about ``budget``."""
    inner = max(1, int(budget / max(_once(a), 1e-7)))
    times = ([], [])
    gc.disable()
    try:
        for _ in range(rounds):
            for k, fn in enumerate((a, b)):
                start = time.perf_counter()
                for _ in range(inner):
                    fn()
                times[k].append((time.perf_counter() - start) / inner)
    finally:
        gc.enable()
    return statistics.median(times[0]), statistics.median(times[1])


def _once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} torch thread(s), {args.rounds} paired rounds")
    print("| workload | step | fastxent.torch | torch | torch / fastxent |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, shape, kind, options in WORKLOADS:
        x, target, kwargs = make(shape, kind, options)
        ours_fn = fxt.cross_entropy if kind == "sparse" else fxt.binary_cross_entropy_with_logits
        torch_fn = F.cross_entropy if kind == "sparse" else F.binary_cross_entropy_with_logits
        for train in (True, False):
            ours, theirs = paired_medians(step(ours_fn, x, target, kwargs, train),
                                          step(torch_fn, x, target, kwargs, train), args.rounds)  # fmt: skip
            label = "forward + backward" if train else "inference"
            print(f"| {name} | {label} | {_fmt(ours)} | {_fmt(theirs)} | {theirs / ours:.2f}× |")


if __name__ == "__main__":
    main()
