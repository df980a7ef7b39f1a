"""How many threads a call may use, and the settings its plan depends on.

The call's ``threads=`` argument, else a :func:`fastxent.config` block, else
``FASTXENT_NUM_THREADS``, else every core the process may run on, capped by
``OMP_NUM_THREADS`` and by the OpenMP runtime's own limit (which is how a
``threadpoolctl.threadpool_limits`` block reaches us).
"""

from __future__ import annotations

import os

from .backends import cython_backend
from ._config import _backend_var, _threads_var, check_threads, env_threads


def resolve_threads(threads: int | None) -> tuple[int, str]:
    """The thread count to use and where it came from."""
    if threads is not None:
        return check_threads(threads), "argument"
    from_context = _threads_var.get()
    if from_context is not None:
        return from_context, "fastxent.config()"
    env = os.environ.get("FASTXENT_NUM_THREADS")
    if env:
        return env_threads(env, "FASTXENT_NUM_THREADS"), "FASTXENT_NUM_THREADS"
    return default_threads()


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads() -> tuple[int, str]:
    n = available_cores()
    source = "available cores"
    omp = os.environ.get("OMP_NUM_THREADS")
    if omp:
        limit = env_threads(omp.split(",")[0], "OMP_NUM_THREADS")
        if limit < n:
            n, source = limit, "OMP_NUM_THREADS"
    limit = cython_backend.openmp_limit()
    if limit is not None and limit < n:
        n, source = limit, "OpenMP runtime limit (threadpoolctl)"
    return n, source


_compiled_settings_key = cython_backend.settings_key_function()


def settings_key():
    """Everything the default backend and thread count depend on besides the call's
    arguments (``config()`` and the environment) as a hashable value, cheap to get
    and to hash: a small int from the compiled extension, else a tuple."""
    if _compiled_settings_key is not None:
        return _compiled_settings_key(_backend_var, _threads_var)
    env = os.environ
    return (_backend_var.get(), _threads_var.get(), env.get("FASTXENT_BACKEND"), env.get("FASTXENT_NUM_THREADS"),
            env.get("OMP_NUM_THREADS"))
