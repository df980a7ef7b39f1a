"""What every backend module shares: fork detection, the dtypes compiled kernels read,
and the news that a JIT backend compiled a kernel (which upper layers subscribe to)."""

from __future__ import annotations

import os

_forked = False


def _mark_forked() -> None:
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_mark_forked)


def forked_child() -> bool:
    """True in a process forked (``os.fork``, multiprocessing's "fork") from one that
    had imported fastxent. Thread pools do not survive a fork, and GNU OpenMP hangs in
    a child whose parent used it (through any library), so backends that cannot tell
    whether that happened run serially here."""
    return _forked


#: y_pred dtypes the compiled kernels read by default (float16 is computed in float32);
#: a backend passes its own tuple to :func:`compiled_dtype_reason`.
COMPILED_X_DTYPES = ("float16", "float32", "float64")


def compiled_dtype_reason(problem, backend_label: str, dtypes: tuple = COMPILED_X_DTYPES) -> str | None:
    """Why a compiled backend that reads ``dtypes`` cannot read ``problem``'s y_pred
    (and gradient buffer), or None."""
    if problem.x.dtype.name not in dtypes or not problem.x.dtype.isnative:
        return f"y_pred dtype {problem.x.dtype} (the {backend_label} kernels read {', '.join(dtypes)})"
    if problem.grad_out is not None and problem.grad_out.dtype.name not in ("float32", "float64", *dtypes):
        return f"grad_out dtype {problem.grad_out.dtype} (the {backend_label} kernels write float32 and float64)"
    return None


_compile_listeners: list = []


def on_compile(callback) -> None:
    """Call ``callback()`` whenever a backend compiles (or loads) a new kernel
    specialization: the dispatcher forgets its plans then, as ``auto`` may now take it."""
    if callback not in _compile_listeners:
        _compile_listeners.append(callback)


def notify_compiled() -> None:
    for callback in _compile_listeners:
        callback()
