"""How every function of the package is compiled: options, helpers, drivers.

A *helper* is a jitted function called from compiled code only (never cached on
its own: its callers' cached machine code contains it). A *driver* is a top-level
kernel with one ``prange`` loop, called from Python, cached on disk (:mod:`.cache`)
and run without the GIL; each has a serial twin for forked children.
"""

from __future__ import annotations

import inspect
import os
from types import FunctionType

from numba import njit, types

from . import cache as _disk

#: Options of every compiled function. error_model="numpy": a float division never
#: raises (and no zero-check branch blocks vectorisation). No fast-math.
_OPTS = dict(error_model="numpy", fastmath=False, boundscheck=False)
#: The exp/log polynomials: FMA contraction only (it changes rounding, never NaN/inf
#: semantics, and lets the polynomial steps run as fused multiply-adds).
_POLY_OPTS = dict(_OPTS, fastmath={"contract"})

#: Whether compiled drivers are cached on disk. Turned off (for the process) by
#: FASTXENT_NUMBA_CACHE=0, when no cache directory is writable, or when saving fails
#: later (OSError at a call; see ``kernels._run``).
_CACHE = os.environ.get("FASTXENT_NUMBA_CACHE", "1") != "0"
_DRIVERS: list = []
#: The kernel name (KERNELS.md) of each driver's Python function, for messages.
_KERNEL_OF: dict = {}


def _helper(fn=None, inline=False):
    """A jitted helper (never cached itself: the callers' cached code contains it).

    ``inline=True`` inlines it in numba's IR: for element formulas that, once
    optimised on their own (exp + log + a division), are too big for LLVM's
    inliner -- a call left in a loop keeps the loop scalar. All helpers share the
    same strict FP options, so inlining changes no rounding."""
    opts = dict(_OPTS, inline="always") if inline else _OPTS
    if fn is None:
        return lambda f: njit(**opts)(f)
    return njit(**opts)(fn)


def _dtype_name(dtype) -> str:
    """An array element type by its NumPy name (the record views of layout.py: float16
    as field ``bits``, bfloat16 as field ``bf16``)."""
    if isinstance(dtype, types.Record):
        return "bfloat16" if "bf16" in dtype.fields else "float16"
    return str(dtype)


def describe(fn, sig) -> str:
    """A driver's specialization in words: kernel, path, and the argument types
    that make it one (y_pred's dtype, the targets', the gradient mode, strides)."""
    args = dict(zip(inspect.signature(fn).parameters, sig))
    parts = [f"{_dtype_name(args['x'].dtype)} y_pred"]
    if isinstance(args.get("t"), types.Array):
        parts.append(f"{_dtype_name(args['t'].dtype)} targets")
    g = args.get("g")
    if isinstance(g, types.Array):
        parts.append(f"{_dtype_name(g.dtype)} gradient")
    elif g is not None and not isinstance(g, types.NoneType):
        parts.append("gradient in place")
    if isinstance(args.get("layout"), types.NoneType):
        parts.append("any strides")
    if "z_loss" in args:  # (softmax_extras)
        parts.append("z_loss, lse, ranks" + ("" if isinstance(args["cap"], types.NoneType) else ", softcap"))
    path = fn.__name__.rsplit("_", 1)[-1] + (", serial" if fn.__qualname__.endswith("_serial") else "")
    return f"{_KERNEL_OF.get(fn.__name__, fn.__name__)} ({path}) for {', '.join(parts)}"


def _jit(fn, parallel=True):
    """A driver's dispatcher: cached on disk unless caching is off or impossible
    (then every process compiles), and run without the GIL."""
    global _CACHE
    disp = njit(parallel=parallel, cache=False, nogil=True, **_OPTS)(fn)
    cache = _disk.disk_cache(fn, lambda sig: describe(fn, sig)) if _CACHE else None
    if cache is None:
        _CACHE = False
        cache = _disk.NoDiskCache(lambda sig: describe(fn, sig))
    disp._cache = cache
    return disp


def _driver(kernel: str):
    """Decorator: a parallel driver of ``kernel`` (its serial twin is made on demand:
    see ``_serial_twin``)."""

    def make(fn):
        _KERNEL_OF[fn.__name__] = kernel
        disp = _jit(fn)
        _DRIVERS.append(disp)
        return disp

    return make


def _disable_cache() -> None:
    """Stop loading/saving the disk cache for every driver (after an OSError)."""
    global _CACHE
    _CACHE = False
    for disp in _DRIVERS + list(_SERIAL.values()):
        fn = disp.py_func
        disp._cache = _disk.NoDiskCache(lambda sig, fn=fn: describe(fn, sig))


_SERIAL: dict = {}


def _serial_twin(driver):
    """The driver compiled without ``parallel`` (prange runs as range), for forked
    children. A copy of the function under another qualname: numba's cache files
    are named after it, and the two variants must not share one."""
    twin = _SERIAL.get(driver)
    if twin is None:
        fn = driver.py_func
        copy = FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        copy.__qualname__ = fn.__qualname__ + "_serial"
        copy.__doc__ = fn.__doc__
        twin = _SERIAL[driver] = _jit(copy, parallel=False)
    return twin
