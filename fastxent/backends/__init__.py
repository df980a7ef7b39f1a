"""Backends: modules that implement the kernel table of ``KERNELS.md``.

Each backend module exposes ``NAME``, ``KERNELS`` (kernel name -> function, loaded
on first access for compiled backends), ``unavailable_reason()`` (None when the
backend can run), ``unsupported_reason(problem)`` (None when it can run that
problem) and ``info()`` (a dict for ``show_config``). Importing this package imports
no backend: :func:`module` loads one on first use (``numba`` in particular). What the
backend modules share sits below them, in ``_common``.
"""

from __future__ import annotations

import importlib

NAMES = ("numpy", "numba", "cython")
_MODULES = {"numpy": "numpy_backend", "numba": "numba_backend", "cython": "cython_backend"}


from ._common import COMPILED_X_DTYPES, compiled_dtype_reason, forked_child, on_compile  # noqa: F401 (re-exported)

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
