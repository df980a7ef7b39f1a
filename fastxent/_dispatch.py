"""Choose the backend, kernel and thread count for a validated problem.

:func:`make_plan` is the single place where that decision is made, and
:func:`fastxent.explain` returns it without running anything. The choice comes from
measurements (see ``_calibration``): for the problem's kernel family and work size,
the fastest available (backend, threads) pair, with two rules on top:

- ``backend="auto"`` never makes a call wait for a Numba JIT compilation when another
  compiled backend can serve it (Numba joins once it has run that kernel);
- with no measurement at all, compiled backends are preferred in the order
  cython, numba, numpy, and inputs below :data:`PARALLEL_MIN_WORK` run on one thread.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from . import backends
from ._calibration import cpu_vendor, family_of, load, work_of
from ._config import resolve_backend
from ._execute import kernel_calls
from ._threads import available_cores, resolve_threads, settings_key
from .backends import cython_backend

_AUTO_ORDER = ("cython", "numba", "numpy")

#: Without a calibration: below this much work one thread is faster than several
#: (starting threads costs a few microseconds).
PARALLEL_MIN_WORK = 1 << 15


@dataclass(frozen=True)
class Plan:
    """What a call runs: backend, kernel, threads, and why."""

    backend: str
    kernel: str
    threads: int
    reason: str

    def __str__(self) -> str:
        return f"{self.backend}.{self.kernel} with {self.threads} thread(s): {self.reason}"


class _Table:
    """A calibration as lookups: median seconds per (backend, family, threads, size)."""

    def __init__(self, calibration: dict | None, source: str):
        self.source = source
        self.times = calibration["times"] if calibration else {}
        self.log_sizes = [math.log(s) for s in calibration["sizes"]] if calibration else []
        self.max_threads = max(calibration["threads"]) if calibration else None

    def seconds(self, backend: str, family: str, threads: int, work: int) -> float | None:
        """Measured time at the size nearest to ``work`` (in log scale), or None."""
        rows = self.times.get(backend, {}).get(family)
        if not rows or not self.log_sizes:
            return None
        row = rows.get("1" if threads == 1 else str(self.max_threads))
        if row is None:
            return None
        return row[min(self._nearest(work), len(row) - 1)]

    def next_size(self, work: int) -> int | None:
        """The measured size after the one nearest to ``work``, or None."""
        k = self._nearest(work) + 1
        return round(math.exp(self.log_sizes[k])) if k < len(self.log_sizes) else None

    def _nearest(self, work: int) -> int:
        x = math.log(max(work, 1))
        k = bisect.bisect_left(self.log_sizes, x)
        if k == len(self.log_sizes) or (k > 0 and x - self.log_sizes[k - 1] < self.log_sizes[k] - x):
            k -= 1
        return k


_table: _Table | None = None


def this_host() -> dict:
    """What picks a calibration table: CPU vendor, the instruction set the compiled
    kernels use here, and the cores this process may use."""
    isa = cython_backend.simd_active() or "none"
    return {"vendor": cpu_vendor(), "isa": isa, "cores": available_cores()}


def table() -> _Table:
    global _table
    if _table is None:
        _table = _Table(*load(this_host()))
    return _table


def describe_thresholds() -> list[str]:
    """Lines for ``show_config``: where the measurements come from and, per kernel
    family, the fastest (backend, threads) across the measured sizes."""
    t = table()
    lines = [f"thresholds: {t.source}"]
    if not t.log_sizes:
        lines.append(f"  {', '.join(_AUTO_ORDER)} by preference; 1 thread below {PARALLEL_MIN_WORK:,} elements")
        return lines
    sizes = [round(math.exp(v)) for v in t.log_sizes]
    names = [name for name in _AUTO_ORDER if name in t.times and backends.unavailable_reason(name) is None]
    for family in ("logits", "probs", "gather", "binary"):
        steps, previous = [], None
        for size in sizes:
            name, threads, seconds, _ = _fastest([n for n in names if n != "numpy"] or names, family, size, None)
            best = f"{name} x{threads}" if seconds is not None else None
            if best is not None and best != previous:
                steps.append(f"{best} from {size:,}")
                previous = best
        unit = "rows" if family == "gather" else "elements"
        lines.append(f"  {family:<7} ({unit}): {'; '.join(steps) or 'not measured'}")
    return lines


def reload_calibration() -> None:
    """Forget the loaded calibration (after ``fastxent.calibrate()`` wrote a new one)."""
    global _table
    _table = None
    forget_choices()


#: (backend, threads) per call signature; see :func:`choose`.
_choices: dict[tuple, tuple[str, int]] = {}
_MAX_CHOICES = 4096


def _signature(backend, threads, kind, from_logits, label_smoothing, return_grad, shape, dtype, extras) -> tuple:
    """The memo key of a call: everything the decision reads (the call's options,
    ``config()`` blocks, the environment and OpenMP limit as one int). The compiled
    call (``_fastcall.pyx``) builds the same tuple for plain calls."""
    return (backend, threads, settings_key(), kind, from_logits, label_smoothing == 0, return_grad, shape, dtype,
            extras)  # fmt: skip


def choose(problem) -> tuple[str, int]:
    """The (backend, threads) of :func:`make_plan`, remembered per call signature.

    A loop calling the same shapes pays for the decision once; afterwards it costs a
    tuple and a dict lookup. The key holds everything the decision reads: the call's
    arguments, ``config()`` blocks, the environment and OpenMP limit (one int,
    ``settings_key``), the kernel family, shape and dtype. Events that change
    decisions for every key -- a new calibration, Numba compiling a kernel -- call
    :func:`forget_choices`.
    """
    key = _signature(problem.backend, problem.threads, problem.kind, problem.from_logits,
                     problem.label_smoothing, problem.return_grad, problem.x.shape, problem.x.dtype,
                     problem.row_extras)  # fmt: skip
    choice = _choices.get(key)
    if choice is None:
        plan = make_plan(problem)
        choice = (plan.backend, plan.threads)
        if len(_choices) >= _MAX_CHOICES:
            _choices.clear()
        _choices[key] = choice
    return choice


def forget_choices() -> None:
    """Drop the remembered decisions (a backend became ready, or the table changed)."""
    _choices.clear()


backends.on_compile(forget_choices)  # Numba compiled a kernel: auto may now choose it


def make_plan(problem) -> Plan:
    requested, source = resolve_backend(problem.backend)
    family, work = family_of(problem), work_of(problem)
    size = f"{problem.n_rows} rows x {problem.n_classes} classes, {problem.x.dtype}, {family} family, work {work:,}"
    if requested != "auto":
        why_not = backends.unsupported_reason(requested, problem)
        if why_not is not None:
            raise RuntimeError(f"backend={requested!r} (from {source}) cannot run this call: {why_not}")
        threads, why = _threads(requested, family, work, problem.threads)
        return Plan(requested, problem.kernel_name, threads, f"backend {requested!r} from {source}; {size}; {why}")

    candidates, notes = [], []
    for name in _AUTO_ORDER:
        why_not = backends.unsupported_reason(name, problem)
        if why_not is None:
            candidates.append(name)
        else:
            notes.append(f"{name} cannot ({why_not})")
    if "numba" in candidates and len(candidates) > 1 and not _numba_ready(problem):
        candidates.remove("numba")
        notes.append("numba would compile first (it joins once it has run this kernel)")
    compiled = [c for c in candidates if c != "numpy"] or candidates
    name, threads, seconds, why = _fastest(compiled, family, work, problem.threads)
    basis = f"measured {seconds * 1e6:.0f} µs ({table().source})" if seconds is not None else "preference order"
    note = f"; {'; '.join(notes)}" if notes else ""
    return Plan(name, problem.kernel_name, threads, f"auto: {name} by {basis}; {size}; {why}{note}")


#: A backend later in the preference order must be measured this much faster to be
#: chosen: calibrations are noisy, and near-ties should not flip between backends.
SWITCH_MARGIN = 0.9


def _fastest(names, family: str, work: int, requested: int | None):
    """(backend, threads, seconds or None, why) of the fastest of ``names`` (in
    preference order) for ``work`` units of ``family``."""
    best = None
    for name in names:
        threads, why = _threads(name, family, work, requested)
        seconds = table().seconds(name, family, threads, work)
        if best is None or (seconds is not None and (best[2] is None or seconds < SWITCH_MARGIN * best[2])):
            best = (name, threads, seconds, why)
    return best


def _threads(backend: str, family: str, work: int, requested: int | None) -> tuple[int, str]:
    """Thread count for ``backend``: the caller's, else 1 or all by measurement."""
    if backend == "numpy":
        return 1, "1 thread (the numpy backend is single-threaded)"
    if backends.forked_child():
        return 1, "1 thread: a forked child (thread pools do not survive a fork)"
    if requested is not None:
        return requested, f"{requested} thread(s) from the argument"
    most, source = resolve_threads(None)
    if most == 1:
        return 1, f"1 thread (from {source})"
    # The rule of thumb (one thread below PARALLEL_MIN_WORK) holds unless the table
    # measured the other choice SWITCH_MARGIN faster: a noisy point does not flip it.
    # Below it, more threads must also win at the next measured size: a lone point
    # of a few microseconds where they won is noise.
    t = table()
    if work < PARALLEL_MIN_WORK:
        if _many_win(t, backend, family, most, work) and _many_win(t, backend, family, most, t.next_size(work)):
            return most, f"{most} threads (from {source}): measured faster than 1 at this size and the next"
        return 1, f"1 thread: work below {PARALLEL_MIN_WORK:,}"
    one, many = t.seconds(backend, family, 1, work), t.seconds(backend, family, most, work)
    if one is not None and many is not None and one < SWITCH_MARGIN * many:
        return 1, f"1 thread: measured faster than {most} at this size"
    return most, f"{most} threads (from {source})"


def _many_win(t: _Table, backend: str, family: str, most: int, work: int | None) -> bool:
    """Whether ``most`` threads were measured SWITCH_MARGIN faster than 1 at the size
    nearest to ``work`` (None: no such size, no)."""
    if work is None:
        return False
    one, many = t.seconds(backend, family, 1, work), t.seconds(backend, family, most, work)
    return one is not None and many is not None and many < SWITCH_MARGIN * one


def _numba_ready(problem) -> bool:
    """Whether Numba has this call's kernels compiled in this process already."""
    return backends.module("numba").is_ready(kernel_calls(problem, "numba"))
