"""Measure this machine's crossover points: ``fastxent.calibrate()``.

Times each kernel family at each size of the calibration table (``_calibration``) on
every available compiled backend, one thread and all cores, and writes the table
where the dispatcher reads it. Above the public API: it runs kernels exactly as a call
runs them (``_execute.kernel_runner``).
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import _calibration, _dispatch, backends
from ._execute import kernel_runner
from ._dispatch import this_host
from ._threads import available_cores
from ._validate import build_problem

#: Samples per point (at least; more while the point's time budget lasts).
MIN_SAMPLES = 7
#: Classes per row while measuring the row families.
CALIBRATION_CLASSES = 256
#: Classes per row for the gather family: one 64-byte cache line per float32 row, as
#: with any wide row, without allocating gigabytes for millions of rows.
GATHER_CLASSES = 16
#: ``quick=True``: every other size of the table, a shorter time budget per point, and
#: (unless asked for) no Numba, whose first compilation alone takes longer than the rest.
QUICK_SIZES = _calibration.SIZES[::2]
QUICK_BUDGET = 0.04
POINT_BUDGET = 0.25
#: Passes over the whole table (one with ``quick``): each point keeps its median over
#: the passes, so that a burst of load during one pass, which the interleaved rounds
#: of a point cannot spread over backends measured at other times, does not decide.
PASSES = 3

def _problem_for(family: str, work: int, backend: str):
    rng = np.random.default_rng(0)
    c = {"binary": 1, "gather": GATHER_CLASSES}.get(family, CALIBRATION_CLASSES)
    rows = max(1, work if family == "gather" else work // c)
    shape = (rows,) if family == "binary" else (rows, c)
    if family in ("logits", "binary"):
        y_pred = rng.standard_normal(shape, dtype=np.float32)
    else:
        y_pred = np.full(shape, 1.0 / c, dtype=np.float32)
    if family == "binary":
        kind, y_true = "binary", (rng.random(shape) < 0.5).astype(np.float32)
    elif family == "probs":
        kind, y_true = "categorical", np.eye(c, dtype=np.float32)[rng.integers(0, c, rows)]
    else:
        kind, y_true = "sparse", rng.integers(0, c, rows)
    return build_problem(
        kind, y_true, y_pred, from_logits=family in ("logits", "binary"), label_smoothing=0.0,
        reduction="mean", epsilon=1e-7, return_grad=False, grad_out=None, backend=backend, threads=None,
        axis=-1,
    )  # fmt: skip


def _median_times(runners: list, budget: float) -> list[float]:
    """Median seconds of each zero-argument function, timed in interleaved rounds
    (one call of each per round), so that a load spike on a shared machine falls on
    every candidate of the point rather than on one of them."""
    for fn in runners:
        fn()  # warm-up (and JIT compilation)
    times: list[list[float]] = [[] for _ in runners]
    deadline = time.perf_counter() + budget
    while len(times[0]) < MIN_SAMPLES or (time.perf_counter() < deadline and len(times[0]) < 50):
        for fn, samples in zip(runners, times):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    return [float(np.median(samples)) for samples in times]


def measure(backends_: list[str] | None = None, progress=None, quick: bool = False) -> dict:
    """Measure every (backend, family, threads, size): the calibration table.

    The thread counts of a point are timed against each other in interleaved
    rounds. The NumPy backend is left out when a compiled one is available
    (``auto`` only falls back to it when none is); ``quick`` measures fewer sizes
    for less time each, and leaves Numba out unless ``backends_`` names it.
    """
    names = [b for b in (backends_ or backends.NAMES) if backends.unavailable_reason(b) is None]
    if backends_ is None and len(names) > 1:
        names.remove("numpy")
        if quick and len(names) > 1:
            names.remove("numba")
    sizes = QUICK_SIZES if quick else _calibration.SIZES
    cores = available_cores()
    thread_counts = sorted({1, cores})
    passes = 1 if quick else PASSES
    samples: dict = {}  # (backend, family, threads) -> one list of per-size medians per pass
    steps = [(p, b, f, s) for p in range(passes) for b in names for f in _calibration.FAMILIES for s in sizes]
    for step, (pass_, backend, family, size) in enumerate(steps):
        if progress:
            progress(step, len(steps), f"{backend} {family} {size:,}" + (f" (pass {pass_ + 1})" if passes > 1 else ""))
        problem = _problem_for(family, size, backend)
        if backends.unsupported_reason(backend, problem) is not None:
            continue
        runners = [kernel_runner(problem, backend, threads) for threads in thread_counts]
        budget = QUICK_BUDGET if quick else POINT_BUDGET
        for threads, seconds in zip(thread_counts, _median_times(runners, budget=budget)):
            per_pass = samples.setdefault((backend, family, str(threads)), [[] for _ in range(passes)])
            per_pass[pass_].append(seconds)
    times: dict = {}
    for (backend, family, threads), per_pass in samples.items():
        point_medians = np.median(np.array(per_pass), axis=0)  # per size, across passes
        times.setdefault(backend, {}).setdefault(family, {})[threads] = [float(t) for t in point_medians]
    if progress:
        progress(len(steps), len(steps), "done")
    return {
        "version": _calibration.FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": dict(this_host(), processor=_calibration.cpu_name(), machine=platform.machine()),
        "sizes": list(sizes),
        "threads": thread_counts,
        "times": times,
    }


def calibrate(path: str | os.PathLike | None = None, *, backends: list[str] | None = None, progress=None,
              quick: bool = False) -> Path:
    """Measure this machine's crossover points and save them for the dispatcher.

    Takes well under a minute; ``quick=True`` a few seconds (half the sizes, less
    time per point, Cython only unless ``backends`` says otherwise). The file goes to the user's cache directory
    (``$XDG_CACHE_HOME/fastxent/calibration.json``) unless ``path`` is given; the
    dispatcher of this process uses it at once, and every new process reads it.
    ``progress(done, total, text)`` is called before each measurement.

    >>> import fastxent
    >>> path = fastxent.calibrate()  # doctest: +SKIP
    >>> fastxent.show_config()  # doctest: +SKIP
    ...
    thresholds: user calibration (/home/me/.cache/fastxent/calibration.json)
      logits  (elements): cython x1 from 256; cython x2 from 65,536
    """
    table = measure(backends, progress=progress, quick=quick)
    target = Path(path) if path is not None else _calibration.cache_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1))
    os.replace(tmp, target)  # readers never see a half-written file
    _dispatch.reload_calibration()
    return target
