"""The Numba backend: the kernel table JIT-compiled by Numba, threads by ``prange``.

The kernels live in the package :mod:`._numba`, which imports numba; this module
does not. ``import fastxent`` and :func:`unavailable_reason` only look for the
package (``importlib.util.find_spec``); numba is imported on the first access to a
kernel (``KERNELS[name]``), and each kernel is compiled for the argument types of
its first call and cached on disk in the user's cache directory (see
:func:`fastxent._paths.numba_cache_root`; no cache when none is writable).
:func:`is_ready` and :func:`compiling_hint` tell whether calls would have to
compile (or load) first; neither imports numba. :func:`on_compile` registers what
to do once a call has compiled something new.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping

from . import _common
from ._common import compiled_dtype_reason

NAME = "numba"

KERNEL_NAMES = (
    "sparse_from_logits",
    "sparse_from_probs",
    "categorical_from_logits",
    "categorical_from_probs",
    "binary_from_logits",
    "binary_from_probs",
)

_MIN_VERSION = (0, 60)
_PACKAGE = f"{__package__}._numba"

def on_compile(callback) -> None:
    """Call ``callback()`` (no arguments) after any kernel call that compiled, or
    loaded from the disk cache, a new specialization (the dispatcher forgets its
    remembered choices there: ``backend="auto"`` may now take Numba). The registry is
    shared by every backend (``backends.on_compile``).

    >>> from fastxent.backends import numba_backend
    >>> numba_backend.on_compile(lambda: None)
    """
    _common.on_compile(callback)


def _kernels_module():
    """The compiled-kernel package (imports numba on first call)."""
    loaded = sys.modules.get(_PACKAGE)
    if loaded is not None:
        return loaded
    reason = _version_reason()  # numba is imported here
    if reason is not None:
        _unavailable[:] = [reason]
        raise RuntimeError(reason)
    module = importlib.import_module(_PACKAGE)
    return module


class _LazyKernels(Mapping):
    """``KERNELS``: the kernel table, importing numba on the first lookup only."""

    def __getitem__(self, name):
        if name not in KERNEL_NAMES:
            raise KeyError(name)
        return _kernels_module().KERNELS[name]

    def __iter__(self):
        return iter(KERNEL_NAMES)

    def __len__(self):
        return len(KERNEL_NAMES)

    def __repr__(self):
        loaded = "loaded" if _loaded() else "not loaded yet"
        return f"<numba kernels {', '.join(KERNEL_NAMES)} ({loaded})>"


KERNELS = _LazyKernels()


def _loaded() -> bool:
    return _PACKAGE in sys.modules


_unavailable: list = []  # memo: [reason] once computed (find_spec reads the disk)


def unavailable_reason() -> str | None:
    """Why the Numba backend cannot run in this process, or None. Looks for the
    package only (its version is checked once numba is imported)."""
    if not _unavailable:
        if importlib.util.find_spec("numba") is None:
            _unavailable.append("numba is not installed (pip install numba)")
        else:
            _unavailable.append(_version_reason() if "numba" in sys.modules else None)
    return _unavailable[0]


def _version_reason() -> str | None:
    """Why the installed numba is too old, or None (imports numba)."""
    import numba

    found = numba.__version__
    parts = tuple(int(p) for p in found.split(".")[:2] if p.isdigit())
    if len(parts) == 2 and parts < _MIN_VERSION:
        return f"numba {found} is too old (fastxent needs numba >= {'.'.join(map(str, _MIN_VERSION))})"
    return None


#: y_pred dtypes the kernels read (float16 and bfloat16 widened to float32 as they read).
_X_DTYPES = ("float16", "float32", "float64", "bfloat16")


def unsupported_reason(problem) -> str | None:
    return compiled_dtype_reason(problem, "Numba", _X_DTYPES)


def is_ready(calls) -> bool:
    """Whether every driver ``calls`` would run is compiled in this process for their
    argument types. ``calls`` lists ``(kernel name, args, block_sums, keywords)``, as
    ``fastxent._execute.kernel_calls`` makes them: ``args`` the positional arguments
    of the kernel (without ``threads``), ``block_sums`` and ``keywords`` (z_loss,
    softcap, lse_out, rank_out: those the call uses) its keywords.

    False means a call would first import numba and compile or load from the disk
    cache (far longer than a call), which ``backend="auto"`` never makes a
    call wait for when another compiled backend can serve it. Never imports numba.
    """
    if not _loaded():
        return False
    try:
        return _kernels_module().is_ready(calls)
    except Exception:  # noqa: BLE001 - a readiness probe never breaks a call
        return False


def compiling_hint(calls) -> str | None:
    """A short message when running ``calls`` (as for :func:`is_ready`) would first
    compile or load a kernel (for a progress display), else None. Never imports numba."""
    if not _loaded():
        return "importing numba and loading or compiling its kernel (first use in this process)"
    try:
        return _kernels_module().compiling_hint(calls)
    except Exception:  # noqa: BLE001 - a hint never breaks a call
        return None


def info() -> dict:
    if not _loaded():
        out = {"version": _version(), "kernels": "not loaded yet (numba is imported on first use)"}
        out.update(_config_without_import())
        return out
    return _kernels_module().info()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("numba")
    except Exception:  # noqa: BLE001
        return "unknown"


def _config_without_import() -> dict:
    """What can be said before numba is imported: the environment's settings."""
    from .._paths import numba_cache_root

    layer = os.environ.get("NUMBA_THREADING_LAYER", "default")
    threads = os.environ.get("NUMBA_NUM_THREADS") or f"{os.cpu_count()} (all cores; numba's default)"
    cache = "off (FASTXENT_NUMBA_CACHE=0)" if os.environ.get("FASTXENT_NUMBA_CACHE") == "0" else (
        f"{numba_cache_root()}/<version of the kernels>")
    return {
        "threading layer": f"{layer} (requested; chosen when the first parallel kernel runs)",
        "NUMBA_NUM_THREADS": threads,
        "cache dir": cache,
    }
