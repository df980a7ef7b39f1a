"""What would run, and what this installation has: ``explain`` and ``show_config``."""

from __future__ import annotations

import platform
import sys

import numpy as np

from . import backends
from ._version import __version__
from ._api import LOSSES, keyword_defaults
from ._config import resolve_backend
from ._threads import resolve_threads
from ._dispatch import Plan, describe_thresholds, make_plan
from ._validate import build_problem

_KINDS = {fn: kind for kind, fn in LOSSES.items()}


def explain(fn, *args, **kwargs) -> Plan:
    """The plan a call would run (backend, kernel, threads, reason), without running it.

    ``fn`` is one of the three loss functions; the other arguments are the call's.
    Inputs are validated as the call would validate them (probabilities are only
    range-checked when the loss runs).

    >>> import numpy as np, fastxent
    >>> plan = fastxent.explain(fastxent.sparse_categorical_crossentropy,
    ...                         np.zeros(4, dtype=int), np.zeros((4, 3)),
    ...                         from_logits=True, backend="numpy")
    >>> plan.backend, plan.kernel, plan.threads
    ('numpy', 'sparse_from_logits', 1)
    """
    kind = _KINDS.get(fn) or _KINDS.get(getattr(fn, "_function", None))
    if kind is None:
        raise TypeError(
            "fn: expected fastxent.binary_crossentropy, categorical_crossentropy or "
            f"sparse_categorical_crossentropy, got {fn!r}"
        )
    if len(args) != 2:
        raise TypeError(f"explain: expected y_true and y_pred after fn, got {len(args)} positional arguments")
    options = keyword_defaults(LOSSES[kind])
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise TypeError(f"explain: {LOSSES[kind].__name__} has no option(s) {unknown}")
    options.update(kwargs)
    return make_plan(build_problem(kind, *args, **options))


def config_report() -> str:
    """The text printed by :func:`show_config` and ``fastxent info``."""
    lines = [
        f"fastxent {__version__}",
        f"python {sys.version.split()[0]} ({platform.machine()}), numpy {np.__version__}",
        f"default backend: {_setting(resolve_backend)}; default threads: {_setting(resolve_threads)}",
        "backends:",
    ]
    for name in backends.NAMES:
        reason = backends.unavailable_reason(name)
        if reason is not None:
            lines.append(f"  {name}: unavailable: {reason}")
            continue
        details = ", ".join(f"{k}: {v}" for k, v in backends.module(name).info().items())
        lines.append(f"  {name}: available; {details}")
    lines += describe_thresholds()
    return "\n".join(lines)


def version_report() -> str:
    """What ``fastxent --version`` prints: the version, the backends this installation
    can run, and the instruction set the compiled kernels use here."""
    lines = [f"fastxent {__version__} (python {sys.version.split()[0]}, numpy {np.__version__})"]
    for name in backends.NAMES:
        reason = backends.unavailable_reason(name)
        if reason is not None:
            lines.append(f"  {name}: unavailable ({reason})")
            continue
        info = backends.module(name).info()
        if name == "cython":
            lines.append(f"  cython: {info['SIMD'].split(' (')[0]} kernels, OpenMP {info['OpenMP'].split(' ')[0].lower()}")
        elif name == "numba":
            lines.append(f"  numba: {info['version']} (compiles for this CPU on first use)")
        else:
            lines.append(f"  numpy: {np.__version__}")
    return "\n".join(lines)


def _setting(resolve) -> str:
    """A default and where it comes from, or why the environment's value is refused
    (every call would raise the same error until it is fixed)."""
    try:
        value, source = resolve(None)
    except ValueError as exc:
        return f"INVALID ({exc}; every call raises this until it is fixed)"
    return f"{value} (from {source})"


def show_config() -> None:
    """Print the backends, build flags (OpenMP, SIMD), threading layer and defaults.

    >>> import fastxent
    >>> fastxent.show_config()  # doctest: +ELLIPSIS
    fastxent ...
    """
    print(config_report())
