"""The benchmark suite: every workload x backend x thread count, with same-run references.

Run:   python -m pytest benchmarks -n0 --benchmark-json=benchmarks/results.json
       (-n0: pytest-benchmark times nothing under xdist, which the test suite uses)
Table: python benchmarks/report.py benchmarks/results.json

Each benchmark's ``extra_info`` records its workload, role (fastxent / read pass /
torch), backend and threads, so the report pairs every fastxent median with the read
pass and torch medians of the same run.
"""

from __future__ import annotations

import os

import pytest
from workloads import WORKLOADS, Workload, fastxent_call, fastxent_plan, read_pass_calls, reference_call, torch_call

from fastxent import backends

BACKENDS = [b for b in backends.NAMES if backends.unavailable_reason(b) is None]
THREADS = (1, 2)
ONLY = os.environ.get("FASTXENT_BENCH_ONLY")  # a substring of workload names, to run a subset
SELECTED = [w for w in WORKLOADS if not ONLY or ONLY in w.name]


def rounds_for(w: Workload) -> int:
    return 200 if w.rows * w.classes < 10_000 else 15


def run(benchmark, fn, w: Workload, **info):
    benchmark.extra_info.update(workload=w.name, bytes=w.nbytes, **info)
    benchmark.pedantic(fn, rounds=rounds_for(w), iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("backend", BACKENDS + ["auto"])
@pytest.mark.parametrize("w", SELECTED, ids=lambda w: w.name)
def test_fastxent(benchmark, w, backend, threads):
    if backend == "numpy" and w.rows * w.classes > 70_000_000:
        pytest.skip("the NumPy backend is the reference path, not a contender at this size")
    if backend == "auto" and threads != THREADS[-1]:
        pytest.skip("auto chooses its own thread count")
    fn = fastxent_call(w, backend, None if backend == "auto" else threads)
    try:
        fn()
    except RuntimeError as exc:  # the backend cannot run this workload
        pytest.skip(str(exc))
    benchmark.group = w.name
    if backend == "auto":
        benchmark.extra_info["chosen"] = fastxent_plan(w)
    run(benchmark, fn, w, role="fastxent", backend=backend, threads=threads)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("w", SELECTED, ids=lambda w: w.name)
def test_read_pass(benchmark, w, threads):
    calls = read_pass_calls(w, threads)
    benchmark.group = w.name
    name = "parallel stream sum" if "parallel stream sum" in calls and threads > 1 else "np.add.reduce"
    if threads > 1 and name == "np.add.reduce":
        pytest.skip("np.add.reduce is single-threaded")
    run(benchmark, calls[name], w, role="read pass", backend=name, threads=threads)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("w", SELECTED, ids=lambda w: w.name)
def test_torch(benchmark, w, threads):
    fn = torch_call(w, threads)
    if fn is None:
        pytest.skip("torch is not installed, or its temporaries would not fit in memory")
    benchmark.group = w.name
    run(benchmark, fn, w, role="torch", backend="torch", threads=threads)


@pytest.mark.parametrize("w", [w for w in SELECTED if w.kind == "sparse" and not w.from_logits], ids=lambda w: w.name)
@pytest.mark.parametrize("reference", ["numpy gather", "one-hot categorical"])
def test_sparse_references(benchmark, w, reference):
    """What sparse labels save: NumPy's gather alone, and the categorical loss on
    one-hot targets of the same data (built outside the timing)."""
    fn = reference_call(w, reference)
    if fn is None:
        pytest.skip(f"{reference}: the one-hot matrix would take {w.rows * w.classes * 4 / 2**30:.0f} GiB")
    benchmark.group = w.name
    run(benchmark, fn, w, role="reference", backend=reference, threads=2)
