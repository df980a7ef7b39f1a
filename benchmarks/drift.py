"""Which side of a read-pass ratio moved: the kernel or the read pass?

On a shared VM both drift. Per round this times, 2 threads unless said otherwise:

- the sparse loss from logits, 65,536 × 1,000 float32 (the target workload);
- the read pass over the same 262 MB (``targets.py``'s reference);
- the same loss on a 256 × 1,000 slice that stays in L2 (compute only), on 1 and on
  2 threads: their quotient is what the second core delivers.

    python benchmarks/drift.py [--rounds 25] [--backend cython]

One line per round, then the medians. A ratio that moves while the kernel's time
holds was moved by the read pass (memory bandwidth), and the other way round.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastxent
from targets import read_pass  # the same read pass as targets.py's (run from benchmarks/)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--backend", default="cython")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((65_536, 1_000), dtype=np.float32)
    y = rng.integers(0, 1_000, 65_536)
    x_small, y_small = x[:256].copy(), y[:256].copy()

    def loss(xs, ys, threads):
        return lambda: fastxent.sparse_categorical_crossentropy(
            ys, xs, from_logits=True, backend=args.backend, threads=threads)

    kernel, read = loss(x, y, 2), read_pass([x], 2)
    small_1, small_2 = loss(x_small, y_small, 1), loss(x_small, y_small, 2)
    for fn in (kernel, read, small_1, small_2):
        fn()  # warm-up (and JIT compilation)
    rows = []
    for r in range(args.rounds):
        speed_up = median_time(small_1, 200) / median_time(small_2, 200)
        k, p = median_time(kernel, 7), median_time(read, 7)
        rows.append((speed_up, k, p, k / p))
        print(f"round {r:2d}: second core {speed_up:.2f}x   kernel {k * 1e3:6.2f} ms   "
              f"read pass {p * 1e3:5.2f} ms   ratio {k / p:.2f}", flush=True)
    speed_up, k, p, ratio = (statistics.median(col) for col in zip(*rows))
    print(f"medians:  second core {speed_up:.2f}x   kernel {k * 1e3:6.2f} ms   "
          f"read pass {p * 1e3:5.2f} ms   ratio {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
