"""The Numba backend: the kernel table JIT-compiled by Numba, threads by ``prange``.

The kernels live in :mod:`._numba_kernels`, which imports numba; this module does
not. ``import fastxent`` and :func:`unavailable_reason` only look for the package
(``importlib.util.find_spec``); numba is imported on the first access to a kernel
(``KERNELS[name]``), and each kernel is compiled for the argument types of its
first call, ``cache=True`` (Numba's on-disk cache; no cache when no directory is
writable). :func:`is_ready` tells the dispatcher whether a call would have to
compile (or load) first; it never imports numba.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping

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


def _kernels_module():
    """The compiled-kernel module (imports numba on first call)."""
    from . import _numba_kernels

    return _numba_kernels


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
    return f"{__package__}._numba_kernels" in sys.modules


_unavailable: list = []  # memo: [reason] once computed (find_spec reads the disk)


def unavailable_reason() -> str | None:
    if not _unavailable:
        _unavailable.append(_find_numba())
    return _unavailable[0]


def _find_numba() -> str | None:
    if importlib.util.find_spec("numba") is None:
        return "numba is not installed (pip install numba)"
    try:
        from importlib.metadata import version

        found = version("numba")
    except Exception:  # noqa: BLE001 - metadata missing: let the import decide
        return None
    parts = tuple(int(p) for p in found.split(".")[:2] if p.isdigit())
    if len(parts) == 2 and parts < _MIN_VERSION:
        return f"numba {found} is too old (fastxent needs numba >= {'.'.join(map(str, _MIN_VERSION))})"
    return None


def unsupported_reason(problem) -> str | None:
    if problem.row_extras:
        return "z_loss, logit_softcap, return_lse and label ranks run on the numpy backend in this version"
    return compiled_dtype_reason(problem, "Numba")


def is_ready(calls) -> bool:
    """Whether the kernel calls ``calls`` -- ``(kernel name, arguments, block_sums)``, as
    ``fastxent._execute.kernel_calls`` lists them -- are compiled in this process for
    their argument types.

    False means the call would first import numba and compile or load from the disk
    cache (from half a second to seconds), which ``backend="auto"`` never makes a call
    wait for when another compiled backend can serve it. Never imports numba.
    """
    if not _loaded():
        return False
    try:
        return _kernels_module().is_ready(calls)
    except Exception:  # noqa: BLE001 - a readiness probe never breaks a call
        return False


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
    layer = os.environ.get("NUMBA_THREADING_LAYER", "default")
    threads = os.environ.get("NUMBA_NUM_THREADS") or f"{os.cpu_count()} (all cores; numba's default)"
    cache = os.environ.get("NUMBA_CACHE_DIR") or "numba's default (__pycache__ next to the kernels)"
    return {
        "threading layer": f"{layer} (requested; chosen when the first parallel kernel runs)",
        "NUMBA_NUM_THREADS": threads,
        "cache dir": cache,
    }
