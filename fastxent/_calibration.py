"""Measured crossover points: which backend and thread count is fastest at which size.

A calibration is a table of median kernel times per backend, *kernel family*, thread
count (1 and all cores) and work size. The dispatcher turns it into a step function
per family: for each measured size, the fastest (backend, threads). Defaults measured
on the machine kind fastxent is developed on ship with the package
(``calibration_default.json``); :func:`calibrate` re-measures on the user's machine
in well under a minute and saves the result in the user's cache directory
(``$FASTXENT_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastxent``, else ``~/.cache/fastxent``),
which is read from then on.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ._paths import cache_dir

#: Work sizes measured: elements of y_pred read (rows for the gather family). Larger
#: calls take the largest size's choice: past a few million elements every kernel
#: streams memory, and measuring there would cost seconds per point.
SIZES = tuple(4 ** k for k in range(4, 12))  # 256 .. 4,194,304
#: Samples per point (at least; more while the point's time budget lasts).
MIN_SAMPLES = 7
#: Classes per row while measuring the row families.
CALIBRATION_CLASSES = 256
#: Classes per row for the gather family: one 64-byte cache line per float32 row, as
#: with any wide row, without allocating gigabytes for millions of rows.
GATHER_CLASSES = 16
FAMILIES = ("logits", "probs", "gather", "binary")
FORMAT_VERSION = 1
_DEFAULT_FILE = Path(__file__).with_name("calibration_default.json")


def family_of(problem) -> str:
    """The kernel family of a problem, and so which row of the table applies."""
    if problem.kind == "binary":
        return "binary" if problem.from_logits else "probs"
    if problem.from_logits:
        return "logits"
    if problem.kind == "sparse" and problem.label_smoothing == 0:
        return "gather"
    return "probs"


def work_of(problem) -> int:
    """The work a call does, in the units of :data:`SIZES`: elements read, doubled
    when a gradient is written, and rows for the gather (one read per row)."""
    if family_of(problem) == "gather":
        work = problem.n_rows
    else:
        work = problem.x.size
    return 2 * work if problem.return_grad else work


def cache_file() -> Path:
    return cache_dir() / "calibration.json"


def load() -> tuple[dict | None, str]:
    """The calibration in force and where it came from (user cache, shipped default)."""
    for path, source in ((cache_file(), "user calibration"), (_DEFAULT_FILE, "shipped defaults")):
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if table.get("version") == FORMAT_VERSION:
            return table, f"{source} ({path})"
    return None, "no calibration (built-in thresholds)"


# --------------------------------------------------------------------------- measuring


def _problem_for(family: str, work: int, backend: str):
    from ._validate import build_problem

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


def measure(backends_: list[str] | None = None, progress=None) -> dict:
    """Measure every (backend, family, threads, size): the calibration table.

    The thread counts of a point are timed against each other in interleaved
    rounds. The NumPy backend is left out when a compiled one is available
    (``auto`` only falls back to it when none is).
    """
    from . import backends
    from ._api import kernel_runner
    from ._config import available_cores

    names = [b for b in (backends_ or backends.NAMES) if backends.unavailable_reason(b) is None]
    if backends_ is None and len(names) > 1:
        names.remove("numpy")
    cores = available_cores()
    thread_counts = sorted({1, cores})
    times: dict = {}
    steps = [(b, f, s) for b in names for f in FAMILIES for s in SIZES]
    for step, (backend, family, size) in enumerate(steps):
        if progress:
            progress(step, len(steps), f"{backend} {family} {size:,}")
        problem = _problem_for(family, size, backend)
        if backends.unsupported_reason(backend, problem) is not None:
            continue
        runners = [kernel_runner(problem, backend, threads) for threads in thread_counts]
        for threads, seconds in zip(thread_counts, _median_times(runners, budget=0.25)):
            times.setdefault(backend, {}).setdefault(family, {}).setdefault(str(threads), []).append(seconds)
    if progress:
        progress(len(steps), len(steps), "done")
    return {
        "version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"processor": _cpu_name(), "cores": cores, "machine": platform.machine()},
        "sizes": list(SIZES),
        "threads": thread_counts,
        "times": times,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def calibrate(path: str | os.PathLike | None = None, *, backends: list[str] | None = None, progress=None) -> Path:
    """Measure this machine's crossover points and save them for the dispatcher.

    Takes well under a minute. The file goes to the user's cache directory
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
    table = measure(backends, progress=progress)
    target = Path(path) if path is not None else cache_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1))
    os.replace(tmp, target)  # readers never see a half-written file
    from . import _dispatch

    _dispatch.reload_calibration()
    return target
