"""The on-disk cache of compiled drivers: where it lives and when it is stale.

Numba's own cache goes next to the source (``__pycache__`` inside the installed
package, which outlives ``pip uninstall``) and checks only the decorated function's
own file, while a driver's machine code also holds every helper it calls from the
other files of this package. Here every driver is cached under
``numba_cache_root()/<version>`` (see :mod:`fastxent._paths`), where ``<version>``
hashes every ``.py`` file of this package and ``fastxent/_constants.py``
(whose values the kernels freeze into their machine code) with the numba and
llvmlite versions: editing any helper or constant, or upgrading numba, starts a
fresh directory.

:func:`disk_cache` returns the cache object a dispatcher uses (``None`` when no
directory is writable: then nothing is cached). Both it and :class:`NoDiskCache`
log, at INFO on the ``fastxent`` logger, the compilation a miss is about to start.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import sys
from pathlib import Path

import llvmlite
import numba
from numba.core.caching import CompileResultCacheImpl, FunctionCache, NullCache, _CacheLocator

from ..._paths import numba_cache_root

_HERE = Path(__file__).resolve().parent
_CONSTANTS = _HERE.parent.parent / "_constants.py"
_log = logging.getLogger("fastxent")


def hashed_sources() -> list:
    """The files whose contents the cache directory's name hashes."""
    return sorted(_HERE.glob("*.py")) + [_CONSTANTS]


def sources_version() -> str:
    """A short hash of the kernels' sources and of the numba and llvmlite versions."""
    digest = hashlib.sha256(f"numba {numba.__version__} llvmlite {llvmlite.__version__}".encode())
    for path in hashed_sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


_VERSION = sources_version()


def cache_path() -> Path:
    """The directory this version of the kernels is cached in (perhaps not created yet)."""
    return numba_cache_root() / _VERSION


class _Locator(_CacheLocator):
    """Numba's cache locator for the drivers of this package: one directory for all
    of them, a source stamp that changes with any file of the package."""

    def __init__(self, py_func):
        self._py_file = inspect.getfile(py_func)  # (numba's warnings cite it)
        self._lineno = py_func.__code__.co_firstlineno
        self._path = str(cache_path())

    def get_cache_path(self):
        return self._path

    def get_source_stamp(self):
        return _VERSION

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        return cls(py_func)


class _CacheImpl(CompileResultCacheImpl):
    """Numba's cache implementation with our locator, whatever numba's own locator
    list (or ``NUMBA_CACHE_LOCATOR_CLASSES``) says."""

    def __init__(self, py_func):
        self._lineno = py_func.__code__.co_firstlineno
        self._locator = _Locator(py_func)
        self._locator.ensure_cache_path()  # OSError when the directory is not writable
        module = os.path.splitext(os.path.basename(inspect.getfile(py_func)))[0]
        self._filename_base = self.get_filename_base(f"{module}.{py_func.__qualname__}", getattr(sys, "abiflags", ""))


class _DiskCache(FunctionCache):
    _impl_class = _CacheImpl

    def __init__(self, py_func, describe):
        super().__init__(py_func)
        self._describe = describe

    def load_overload(self, sig, target_context):
        found = super().load_overload(sig, target_context)
        if found is None:
            _log.info("compiling numba kernel %s (first use; cached on disk afterwards)", self._describe(sig))
        return found

    def holds(self, sig, codegen) -> bool:
        """Whether the disk cache has a compiled ``sig`` (a load, not a compile)."""
        try:
            return self._index_key(sig, codegen) in self._cache_file._load_index()
        except Exception:  # noqa: BLE001 - an unreadable index: a compile is coming
            return False


class NoDiskCache(NullCache):
    """No disk cache (none writable, or ``FASTXENT_NUMBA_CACHE=0``): every process compiles."""

    def __init__(self, describe):
        self._describe = describe

    def load_overload(self, sig, target_context):
        _log.info("compiling numba kernel %s (first use in this process; no disk cache)", self._describe(sig))

    def holds(self, sig, codegen) -> bool:
        return False


def disk_cache(py_func, describe):
    """The disk cache of the driver ``py_func``, or None when its directory cannot
    be created or written. ``describe(sig)`` names a specialization for the log."""
    try:
        return _DiskCache(py_func, describe)
    except OSError:
        return None
