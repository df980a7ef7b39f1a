"""Process-wide and context-local settings: backend choice and thread count.

Precedence, highest first: the call's own ``backend=``/``threads=`` arguments (other
than the defaults ``"auto"`` and ``None``), an enclosing :func:`config` block, the
``FASTXENT_BACKEND`` / ``FASTXENT_NUM_THREADS`` environment variables, then ``"auto"``
and every core the process may use (see ``_threads``). This module only holds and
checks the settings; it imports nothing else of fastxent.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import numpy as np

BACKENDS = ("auto", "numpy", "numba", "cython")

_backend_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fastxent_backend", default=None
)
_threads_var: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "fastxent_threads", default=None
)


def check_backend(backend, where: str = "backend") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"{where}: expected one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    return backend


#: The most threads a call may ask for (more than any machine fastxent runs on has).
MAX_THREADS = 4096


def check_threads(threads, where: str = "threads") -> int:
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"{where}: expected None or an int in [1, {MAX_THREADS}], got {threads!r}")
    if not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"{where}: expected None or an int in [1, {MAX_THREADS}], got {threads!r}")
    return int(threads)


@contextlib.contextmanager
def config(*, backend: str | None = None, threads: int | None = None):
    """Set the default backend and/or thread count inside a ``with`` block.

    Settings are context-local (each thread and asyncio task sees its own), and a
    call's explicit ``backend=``/``threads=`` still wins.

    >>> import numpy as np, fastxent
    >>> with fastxent.config(backend="numpy", threads=1):
    ...     float(fastxent.sparse_categorical_crossentropy([0], [[0.9, 0.1]]))
    0.10536051565782628
    """
    tokens = []
    if backend is not None:
        tokens.append((_backend_var, _backend_var.set(check_backend(backend))))
    if threads is not None:
        tokens.append((_threads_var, _threads_var.set(check_threads(threads))))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def resolve_backend(backend: str | None) -> tuple[str, str]:
    """The backend to use and where that choice came from."""
    if backend is not None and backend != "auto":
        return check_backend(backend), "argument"
    # "auto" (the default) defers to a config() block or the environment, if any.
    from_context = _backend_var.get()
    if from_context is not None:
        return from_context, "fastxent.config()"
    env = os.environ.get("FASTXENT_BACKEND")
    if env:
        return check_backend(env.strip().lower(), "FASTXENT_BACKEND"), "FASTXENT_BACKEND"
    return "auto", "default"


def env_threads(value: str, name: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{name}: expected an int in [1, {MAX_THREADS}], got {value!r}") from None
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"{name}: expected an int in [1, {MAX_THREADS}], got {value!r}")
    return n
