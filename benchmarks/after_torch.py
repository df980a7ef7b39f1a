"""fastxent right after torch's own calls, in one process: what torch's spinning
OpenMP workers do to the next two-thread calls.

Times sparse cross-entropy from float32 logits with ``threads`` = auto, 1 and 2,
then ``torch.nn.functional.cross_entropy`` on 2 threads, then fastxent again in the
order 2, auto, 2, 1, auto (medians of back-to-back calls each):

    python benchmarks/after_torch.py [--rows 1000] [--classes 100] [--calls 300]   # needs torch

Run it once as is and once with ``OMP_WAIT_POLICY=passive`` to compare. Prints
Markdown; numbers belong in RESULTS.md, never in a test.
"""

from __future__ import annotations

import argparse

import numpy as np
from mid_torch import median_us

import fastxent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args(argv)
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.classes), dtype=np.float32)
    y = rng.integers(0, args.classes, args.rows)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def ours(threads):
        return lambda: fastxent.sparse_categorical_crossentropy(y, x, from_logits=True, threads=threads)

    print(f"| step ({args.rows:,} x {args.classes}) | median µs |")
    print("| --- | ---: |")
    for threads in (None, 1, 2):
        print(f"| fastxent, threads={threads} | {median_us(ours(threads), args.calls):.1f} |")
    torch.set_num_threads(2)
    print(f"| torch, 2 threads | {median_us(lambda: torch.nn.functional.cross_entropy(xt, yt), args.calls):.1f} |")
    for threads in (2, None, 2, 1, None):
        print(f"| then fastxent, threads={threads} | {median_us(ours(threads), args.calls):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
