"""Concurrency and processes: many Python threads at once, multiprocessing children
(spawn, forkserver, fork), and flat memory over many calls."""

from __future__ import annotations

import multiprocessing
import os
import time

import numpy as np
import pytest
from helpers import call, run_in_threads

import fastxent

scce = fastxent.sparse_categorical_crossentropy


def _problem(seed: int, n: int = 3_000, c: int = 50):
    rng = np.random.default_rng(seed)
    return rng.integers(0, c, n), rng.standard_normal((n, c)).astype(np.float32)


def test_eight_threads_at_once_give_correct_results(backend):
    """8 Python threads calling the same backend for a while: no abort, no deadlock,
    every result equal to the single-threaded answer."""
    cases = [_problem(seed) for seed in range(8)]
    want = [call(scce, y, z, backend=backend, from_logits=True, return_grad=True) for y, z in cases]
    errors = []
    stop = time.monotonic() + 3.0

    def worker(k):
        y, z = cases[k]
        try:
            while time.monotonic() < stop:
                loss, grad = scce(y, z, from_logits=True, return_grad=True, backend=backend, threads=2)
                if loss != want[k][0] or not np.array_equal(grad, want[k][1]):
                    errors.append(f"thread {k}: wrong result")
                    return
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"thread {k}: {exc!r}")

    run_in_threads(worker, 8)
    assert not errors, errors


def _child(backend, conn):
    y, z = _problem(1)
    try:
        conn.send(("ok", float(scce(y, z, from_logits=True, backend=backend, threads=2))))
    except Exception as exc:  # noqa: BLE001 - sent to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_multiprocessing_children(backend, method):
    """Children compute the parent's answer; with fork they may instead fail with a
    clear message, but never hang (the parent has used its thread pools first)."""
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{method} is not available here")
    y, z = _problem(1)
    want = float(call(scce, y, z, from_logits=True, backend=backend, threads=2))
    ctx = multiprocessing.get_context(method)
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(backend, child))
    proc.start()
    try:
        assert parent.poll(120), f"{method} child hung"
        status, value = parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    if status == "error":
        assert method == "fork" and "fork" in value, value
    else:
        assert value == want


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_ten_thousand_calls_leave_rss_flat(backend):
    y, z = _problem(2, n=64, c=10)
    p = np.full((64, 10), 0.1)
    t = np.eye(10)[y]
    calls = [
        lambda: call(scce, y, z, backend=backend, from_logits=True, return_grad=True),
        lambda: call(scce, y, p, backend=backend),
        lambda: call(fastxent.categorical_crossentropy, t, z, backend=backend, from_logits=True),
        lambda: call(fastxent.binary_crossentropy, t, z, backend=backend, from_logits=True, return_grad=True),
    ]
    for fn in calls:  # warm up: compilation, caches, first allocations
        for _ in range(200):
            fn()
    before = _rss_bytes()
    for _ in range(2_500):
        for fn in calls:
            fn()
    grown = _rss_bytes() - before
    assert grown < 8 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 10,000 calls"
