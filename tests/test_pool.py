"""The Cython extension's own thread pool (``_csrc/fx_pool.c``): what the kernels'
drivers run their items on.

What the pool adds as risk, tested here: every item runs exactly once and on a
slot below the thread count asked for; a run never touches its job after it
returned; several Python threads calling at once (mixed thread counts) neither
hang nor mix up their jobs; a child forked after the pool started runs serially
and gets the right answer, even when the fork happens mid-call in another thread;
the interpreter exits with pool threads alive; results keep their bits for 1 to 4
threads (decision 8) and the lowest bad row is reported whatever item found it
first.
"""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

ext = pytest.importorskip("fastxent.backends._cython_ext")

from helpers import run_forked_child, run_in_threads  # noqa: E402
from kernel_impls import KERNELS, Impl, run  # noqa: E402

from fastxent import _reduce  # noqa: E402
from fastxent._reduce import BLOCK_ROWS  # noqa: E402

RNG = np.random.default_rng(26)
CYTHON = Impl("cython")  # the instruction-set table this CPU runs


def _problem(kernel, n_rows, n_classes):
    """Rows (R, C), their labels or targets, and smoothing: a call of ``kernel``."""
    x = RNG.standard_normal((n_rows, n_classes))
    if kernel.endswith("probs"):
        x = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    if kernel.startswith("sparse"):
        aux = RNG.integers(0, n_classes, n_rows)
    elif kernel.startswith("binary"):
        aux = (RNG.random((n_rows, n_classes)) < 0.5).astype(np.float32)
    else:
        aux = RNG.dirichlet(np.ones(n_classes), n_rows)
    return x, aux


def call(kernel, x, aux, *, layout="rows", grad=True, threads=1, block_sums=False):
    """(bad row, losses or block sums, gradient bytes) of one float32 call on Cython."""
    out = run(CYTHON, kernel, x, aux, layout=layout, dtype=np.float32, ls=0.1, grad=True if grad else None,
              threads=threads, block_sums=block_sums)  # fmt: skip
    return out.bad, out.loss, None if out.grad is None else out.grad.tobytes()

needs_threads = pytest.mark.skipif(not ext.pool_info()["parallel"], reason="built without threads")
needs_fork = pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="no fork here")


def _spread(counts, slots, workers):
    assert counts.min() == 1 and counts.max() == 1, "an item ran twice or never"
    assert slots.min() >= 0 and slots.max() < workers, "an item ran on a slot beyond the threads asked for"


# ---------------------------------------------------------------------------- the pool itself


@needs_threads
@pytest.mark.parametrize("n_items, workers", [(0, 2), (1, 4), (2, 2), (3, 4), (64, 2), (64, 4), (1000, 3), (5, 1)])
def test_every_item_runs_once_on_a_slot_below_workers(n_items, workers):
    for spin in (0, 2_000):
        for _ in range(50):
            counts, slots, ran, _ = ext._pool_probe(n_items, workers, spin)
            if n_items:
                _spread(counts, slots, min(workers, n_items))
            assert 1 <= ran <= max(1, min(workers, n_items))


@needs_threads
def test_fewer_workers_after_more_use_only_their_slots():
    """Pool threads started for a 4-thread call stay; a later 2-thread call still
    runs on 2 threads (its items only see slots 0 and 1)."""
    ext._pool_probe(256, 4, 20_000)
    assert ext.pool_info()["threads"] >= 3
    for _ in range(200):
        counts, slots, ran, _ = ext._pool_probe(256, 2, 2_000)
        _spread(counts, slots, 2)
        assert ran <= 2


@needs_threads
def test_no_pool_thread_touches_a_finished_job():
    """Back-to-back runs of tiny items: a pool thread that arrives after a run
    returned must find the job closed (the probe counts any late touch)."""
    _, _, _, late_before = ext._pool_probe(1, 1)
    for workers in (2, 3, 4):
        for _ in range(2_000):
            ext._pool_probe(workers * 2, workers)
    _, _, _, late = ext._pool_probe(1, 1)
    assert late == late_before


@needs_threads
def test_python_threads_at_once_with_mixed_thread_counts():
    """Six Python threads each run the pool and a real kernel with 1 to 4 threads
    at once: one job owns the pool at a time, the others run serially -- no hang,
    no lost or doubled item, every loss and gradient the single-thread bits."""
    x, aux = _problem("sparse_from_logits", 6_000, 40)
    _, want_loss, want_grad = call("sparse_from_logits", x, aux, threads=1)
    errors = []
    stop = time.monotonic() + 3.0

    def worker(k):
        threads = 1 + k % 4
        try:
            while time.monotonic() < stop:
                counts, slots, _, _ = ext._pool_probe(97, threads, 500)
                _spread(counts, slots, threads)
                _, loss, grad = call("sparse_from_logits", x, aux, threads=threads)
                if loss.tobytes() != want_loss.tobytes() or grad != want_grad:
                    errors.append(f"thread {k} ({threads} threads): different bits")
                    return
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"thread {k}: {exc!r}")

    run_in_threads(worker, 6)
    assert not errors, errors


# ---------------------------------------------------------------------------- regions

needs_regions = pytest.mark.skipif(not ext.pool_info()["regions"], reason="no OpenMP regions in this build")


@needs_regions
@pytest.mark.parametrize("n_items, workers", [(1, 2), (2, 2), (3, 4), (64, 2), (64, 4), (1000, 3)])
def test_region_jobs_run_every_item_once(n_items, workers):
    """A job run as an OpenMP region (while another team of the process is awake)
    keeps the pool's promises: every item once, on a slot below the threads asked
    for, the threads that ran items counted."""
    for spin in (0, 2_000):
        for _ in range(50):
            counts, slots, ran, _ = ext._pool_probe(n_items, workers, spin, region=True)
            _spread(counts, slots, min(workers, n_items))
            assert 1 <= ran <= min(workers, n_items)


@needs_regions
@pytest.mark.parametrize("kernel", KERNELS)
def test_region_jobs_keep_the_bits(kernel):
    """A kernel's job run as a region: the one-thread bits (decision 8)."""
    x, aux = _problem(kernel, 5 * BLOCK_ROWS + 12, 40)
    _, rows, grad = call(kernel, x, aux, threads=1)
    for threads in (2, 3):
        ext._pool_region_next()
        _, rows_t, grad_t = call(kernel, x, aux, threads=threads)
        assert rows_t.tobytes() == rows.tobytes() and grad_t == grad, threads


@needs_regions
def test_regions_only_from_the_main_thread():
    """Another thread would get an OpenMP team of its own: its jobs stay on the pool
    (and still run every item once when asked for a region)."""
    seen = []

    def other(_):
        seen.append(ext.pool_info()["regions"])
        counts, slots, _, _ = ext._pool_probe(64, 2, 500, region=True)
        _spread(counts, slots, 2)

    run_in_threads(other, 1)
    assert seen == [False]


def _forked_after_region(q):
    q.put(ext.pool_info()["regions"])
    _forked_call(q)


@needs_regions
@needs_fork
def test_fork_after_a_region_runs_correctly():
    """libgomp's threads do not survive fork: a child of a process that ran regions
    runs none (serially, as after the pool) and gets the right answer."""
    ext._pool_probe(256, 4, 2_000)
    ext._pool_probe(256, 2, 2_000, region=True)
    regions, (lo, hi, info, cmin, cmax, smax, ran) = run_forked_child(_forked_after_region, items=2)
    assert regions is False
    np.testing.assert_allclose([lo, hi], np.log(19 + np.e) - 1.0, rtol=1e-6)
    assert (cmin, cmax, smax, ran) == (1, 1, 0, 1)


# ---------------------------------------------------------------------------- processes


def _forked_call(q):
    N, C = 20_000, 20
    x = np.ones((N, C, 1), np.float32)
    x[:, 3] = 2.0
    loss = np.empty((N, 1))
    ext.sparse_from_logits(x, np.full((N, 1), 3, np.int64), np.ones(C), 0.0, -1, np.ones((N, 1)), loss, None, 4)
    counts, slots, ran, _ = ext._pool_probe(64, 4, 1_000)
    # a few values only: a child's queue holds its exit until the pipe is read
    q.put((float(loss.min()), float(loss.max()), ext.pool_info(), int(counts.min()), int(counts.max()),
           int(slots.max()), ran))


@needs_threads
@needs_fork
def test_fork_after_use_runs_serially_and_correctly():
    ext._pool_probe(256, 4, 2_000)  # the pool's threads exist in this process
    assert ext.pool_info()["threads"] >= 3
    lo, hi, info, cmin, cmax, smax, ran = run_forked_child(_forked_call)
    want = np.log(19 + np.e) - 1.0  # -log softmax of the 2.0 among nineteen 1.0s
    np.testing.assert_allclose([lo, hi], want, rtol=1e-6)
    assert not info["parallel"] and (cmin, cmax, smax, ran) == (1, 1, 0, 1)


def _fork_mid_call(q):
    q.put(ext.pool_info()["parallel"])
    _forked_call(q)


@needs_threads
@needs_fork
def test_fork_while_another_thread_runs_a_job():
    """A child forked while a parent thread owns the pool (mid-run) must not wait
    for that job, nor for the threads that did not come along."""
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            ext._pool_probe(512, 4, 2_000)

    t = threading.Thread(target=busy)
    t.start()
    try:
        time.sleep(0.05)
        for _ in range(5):
            parallel, (lo, hi, info, cmin, cmax, smax, ran) = run_forked_child(_fork_mid_call, items=2)
            assert parallel is False
            np.testing.assert_allclose([lo, hi], np.log(19 + np.e) - 1.0, rtol=1e-6)
            assert (cmin, cmax, smax, ran) == (1, 1, 0, 1)
    finally:
        stop.set()
        t.join(60)


@needs_threads
def test_interpreter_exits_with_pool_threads_alive():
    """Pool threads hold no Python state: a process exits normally while they wait,
    and while a daemon thread is in the middle of pool runs."""
    code = textwrap.dedent(
        """
        import threading
        from fastxent.backends import _cython_ext as e
        e._pool_probe(100, 4, 1000)
        def loop():
            while True:
                e._pool_probe(200, 3, 5000)
        threading.Thread(target=loop, daemon=True).start()
        import time; time.sleep(0.2)
        print("done", e.pool_info()["threads"])
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "done" and int(out.stdout.split()[1]) >= 3


# ---------------------------------------------------------------------------- decision 8


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("layout", ["rows", "cols", "nchw"])
def test_bits_the_same_for_one_to_four_threads(kernel, layout):
    """Losses, gradients and block sums: the same bits on 1, 2, 3 and 4 threads,
    with enough rows for many items per thread (and, with block sums, both the
    block-per-item path and the split-then-sum path)."""
    N = 5 * BLOCK_ROWS + 12
    x, aux = _problem(kernel, N, 6)
    _, rows, grad = call(kernel, x, aux, layout=layout, threads=1)
    want_sums = _reduce.block_sums(rows)
    for threads in (2, 3, 4):
        _, rows_t, grad_t = call(kernel, x, aux, layout=layout, threads=threads)
        assert rows_t.tobytes() == rows.tobytes() and grad_t == grad, threads
        for with_grad in (False, True):
            _, sums, _ = call(kernel, x, aux, layout=layout, grad=with_grad, threads=threads, block_sums=True)
            assert sums.tobytes() == want_sums.tobytes(), (threads, with_grad)


@pytest.mark.parametrize("block_sums", [False, True])
@pytest.mark.parametrize("layout", ["rows", "cols"])
def test_lowest_bad_row_whatever_item_finds_one_first(layout, block_sums):
    """Bad rows in many items (a late item may report before an early one): the
    kernel returns the lowest, on 1 to 4 threads."""
    N, C = 6 * BLOCK_ROWS, 4
    p = RNG.dirichlet(np.ones(C), N)
    labels = RNG.integers(0, C, N)
    bad = sorted(RNG.choice(np.arange(BLOCK_ROWS, N), 40, replace=False).tolist())
    p[bad, 1] = 1.5
    for threads in (1, 2, 3, 4):
        for _ in range(3):
            r, _, _ = call("sparse_from_probs", p, labels, layout=layout, grad=False, threads=threads,
                           block_sums=block_sums)
            assert r == bad[0], (threads, r)
