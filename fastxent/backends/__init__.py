"""Backends: modules that implement the kernel table of ``KERNELS.md``.

Each backend module exposes ``NAME``, ``KERNELS`` (kernel name -> function, loaded
on first access for compiled backends), ``unavailable_reason()`` (None when the
backend can run), ``unsupported_reason(problem)`` (None when it can run that
problem) and ``info()`` (a dict for ``show_config``). Importing this package imports
no backend: ``numba`` in particular is loaded on first use.
"""

from __future__ import annotations

import importlib
import os

NAMES = ("numpy", "numba", "cython")
_MODULES = {"numpy": "numpy_backend", "numba": "numba_backend", "cython": "cython_backend"}


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


#: y_pred dtypes the compiled kernels read (float16 is computed in float32).
COMPILED_X_DTYPES = ("float16", "float32", "float64")


def compiled_dtype_reason(problem, backend_label: str) -> str | None:
    """Why a compiled backend cannot read ``problem``'s y_pred dtype, or None."""
    if problem.x.dtype.name not in COMPILED_X_DTYPES or not problem.x.dtype.isnative:
        return f"y_pred dtype {problem.x.dtype} (the {backend_label} kernels read float16, float32 and float64)"
    return None


_imported: dict = {}


def module(name: str):
    """The backend's module (imported on first call; a dict lookup afterwards)."""
    mod = _imported.get(name)
    if mod is None:
        mod = _imported[name] = importlib.import_module(f"{__name__}.{_MODULES[name]}")
    return mod


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run in this process, or None if it can."""
    if name not in _MODULES:
        return f"no {name} backend in this version"
    try:
        mod = module(name)
    except ImportError as exc:  # the module itself failed (e.g. a broken build)
        return f"the {name} backend failed to import: {exc}"
    return mod.unavailable_reason()


def unsupported_reason(name: str, problem) -> str | None:
    """Why backend ``name`` cannot run ``problem``, or None if it can."""
    reason = unavailable_reason(name)
    if reason is not None:
        return reason
    return module(name).unsupported_reason(problem)
