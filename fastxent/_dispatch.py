"""Choose the backend, kernel and thread count for a validated problem.

:func:`make_plan` is the single place where that decision is made;
:func:`explain` returns it to the user without running anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import backends
from ._config import resolve_backend, resolve_threads

#: Preference order of ``backend="auto"`` among the backends that can run a call.
_AUTO_ORDER = ("cython", "numpy")

#: Below this many elements of y_pred read per call, one thread is faster than two
#: (thread start-up costs a few microseconds).
PARALLEL_MIN_ELEMENTS = 1 << 15


@dataclass(frozen=True)
class Plan:
    """What a call runs: backend, kernel, threads, and why."""

    backend: str
    kernel: str
    threads: int
    reason: str

    def __str__(self) -> str:
        return f"{self.backend}.{self.kernel} with {self.threads} thread(s): {self.reason}"


def make_plan(problem) -> Plan:
    requested, source = resolve_backend(problem.backend)
    size = f"{problem.n_rows} rows x {problem.n_classes} classes, {problem.x.dtype}"
    if requested != "auto":
        why_not = backends.unsupported_reason(requested, problem)
        if why_not is not None:
            raise RuntimeError(f"backend={requested!r} (from {source}) cannot run this call: {why_not}")
        threads, tsource = _threads_for(requested, problem)
        return Plan(requested, problem.kernel_name, threads, f"backend {requested!r} from {source}; {size}; threads from {tsource}")

    skipped = []
    for name in _AUTO_ORDER:
        why_not = backends.unsupported_reason(name, problem)
        if why_not is None:
            threads, tsource = _threads_for(name, problem)
            note = f"; skipped {'; '.join(skipped)}" if skipped else ""
            return Plan(name, problem.kernel_name, threads, f"auto: {name} is the first backend that runs {size}{note}; threads from {tsource}")
        skipped.append(f"{name} ({why_not})")
    raise AssertionError("the numpy backend runs every problem")  # pragma: no cover


def _threads_for(backend: str, problem) -> tuple[int, str]:
    if backend == "numpy":
        return 1, "the numpy backend (single-threaded)"
    threads, source = resolve_threads(problem.threads)
    if problem.threads is None and problem.x.size < PARALLEL_MIN_ELEMENTS:
        return 1, f"a small input (< {PARALLEL_MIN_ELEMENTS} elements)"
    return threads, source
