"""The kernel table of KERNELS.md on top of the family drivers, and how they run.

``KERNELS`` maps each kernel name to a thin Python wrapper that prepares the
driver's arguments (``_PREPARE``: the layout path, float16 and bfloat16 as
records, the small inputs in one type each), runs the driver with ``threads``
threads, one call at a time, serially in a forked child (``_run``), and, in
block-sums mode, sums per-row losses afterwards where the driver cannot
(``_prepared``). ``is_ready`` and ``compiling_hint`` tell, without running
anything, whether calls would compile.
"""

from __future__ import annotations

import importlib
import os
import threading

import numba
import numpy as np

from ... import _reduce
from .._common import forked_child, notify_compiled
from . import binary, cache, gather, jit, probs, softmax, softmax_extras


def _prepare_sparse_from_probs(x, labels, class_weight, label_smoothing, *rest, threads=1):
    """Whole rows with label smoothing (:mod:`.probs`), else the gather-log (:mod:`.gather`)."""
    family = probs if float(label_smoothing) else gather
    return family._prepare_sparse_from_probs(x, labels, class_weight, label_smoothing, *rest, threads=threads)


def _prepare_sparse_from_logits(*args, threads=1, **extras):
    """The optional keywords (z_loss, softcap, lse_out, rank_out) run the drivers of
    :mod:`.softmax_extras`; a call without them never compiles those."""
    family = softmax_extras if extras else softmax
    return family._prepare_sparse_from_logits(*args, threads=threads, **extras)


#: Per kernel: its KERNELS.md arguments (``threads`` as a keyword: it sizes the work
#: items so that every thread gets some) -> (driver, driver arguments).
_PREPARE = {
    "sparse_from_logits": _prepare_sparse_from_logits,
    "sparse_from_probs": _prepare_sparse_from_probs,
    "categorical_from_logits": softmax._prepare_categorical_from_logits,
    "categorical_from_probs": probs._prepare_categorical_from_probs,
    "binary_from_logits": binary._prepare_binary_from_logits,
    "binary_from_probs": binary._prepare_binary_from_probs,
}

#: Drivers whose work items can be the blocks of ``BLOCK_ROWS`` rows that block-sums
#: mode sums (``block``, their last argument, is then BLOCK_ROWS), and whether a
#: call's x (after the layout step) allows it.
_SUMMABLE = {**gather.SUMMABLE, **binary.SUMMABLE}


# --------------------------------------------------------------------------- running: threads, fork

#: Calls are serialised. Numba's thread count is per calling thread, and its
#: runtimes differ under concurrent launches: 'workqueue' aborts the process,
#: 'omp' survives but several callers x N threads oversubscribe the cores and spin.
#: One call at a time, each with all the threads it asked for, is both safe and as
#: fast (these kernels are memory-bound). The drivers release the GIL, so other
#: Python threads still run while a kernel does.
_CALL_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    global _CALL_LOCK
    _CALL_LOCK = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


def _forked_child() -> bool:
    """In a forked child the drivers' serial twins run: Numba's 'omp' layer terminates
    a child whose parent launched it, a child whose parent used GNU OpenMP through
    any library (the Cython backend, torch, ...) hangs at its first parallel region,
    and no thread pool survives a fork anyway."""
    return forked_child()


def _pick(driver):
    return jit._serial_twin(driver) if _forked_child() else driver


def _run(driver, args, threads) -> int:
    with _CALL_LOCK:
        driver = _pick(driver)
        workers = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
        if driver in _DRIVER_SET:  # set_num_threads is per calling thread: set it every call
            numba.set_num_threads(workers)
        compiled = len(driver.overloads)
        try:
            return int(driver(*args, workers))
        except OSError:  # the disk cache became unwritable after decoration
            if not jit._CACHE:
                raise
            jit._disable_cache()
            return int(driver(*args, workers))
        finally:
            # Told here, not through a listener set by whoever imported us first: a
            # kernel package imported directly must still wake the dispatcher.
            if len(driver.overloads) != compiled:
                notify_compiled()


def _prepared(prepare, call_args, block_sums: bool, threads: int = 1, extras=None):
    """(driver, its arguments, per-row losses to block-sum after the run or None).

    With ``block_sums``, ``loss_out`` (``call_args[-2]``) receives the float64 sum of
    every block of ``BLOCK_ROWS`` rows (``_reduce.block_sums``' bits): summed by the
    driver itself where its work items are those blocks -- 10M binary losses then
    never reach memory -- else from per-row losses afterwards."""
    extras = extras or {}
    if not block_sums:
        return (*prepare(*call_args, threads=threads, **extras), None)
    call_args = list(call_args)
    x, sums = call_args[0], call_args[-2]
    rows = call_args[-2] = np.empty((x.shape[0], x.shape[2]))  # pages untouched unless used
    driver, driver_args = prepare(*call_args, threads=threads, **extras)
    allowed = _SUMMABLE.get(driver)
    if allowed is not None and allowed(driver_args[0]):
        driver_args = list(driver_args)
        data = rows.__array_interface__["data"][0]  # loss_out, perhaps as a flattened view
        at = next(k for k, a in enumerate(driver_args)
                  if isinstance(a, np.ndarray) and a.__array_interface__["data"][0] == data)  # fmt: skip
        driver_args[at], driver_args[-1] = sums, _reduce.BLOCK_ROWS
        return driver, tuple(driver_args), None
    return driver, driver_args, rows


def _kernel(name):
    prepare = _PREPARE[name]

    def kernel(*args, block_sums=False, **extras):
        *call_args, threads = args
        driver, driver_args, rows = _prepared(prepare, call_args, block_sums, int(threads), extras)
        first_bad = _run(driver, driver_args, threads)
        if rows is not None and first_bad == -1:
            call_args[-2][:] = _reduce.block_sums(rows)
        return first_bad

    kernel.__name__ = kernel.__qualname__ = name
    kernel.__doc__ = (f"``{name}`` of KERNELS.md (arguments as documented there, ``threads`` last; "
                      "``block_sums=True``: loss_out gets one sum per block of BLOCK_ROWS rows; "
                      "sparse_from_logits also takes z_loss, softcap, lse_out and rank_out).")
    return kernel


KERNELS = {name: _kernel(name) for name in _PREPARE}


# --------------------------------------------------------------------------- introspection


def _pending(calls):
    """(driver, signature) of every driver ``calls`` would run that is not compiled in
    this process for its argument types. ``calls``: (kernel name, args, block_sums),
    perhaps with a fourth item, the call's optional keywords (a dict)."""
    for name, args, block_sums, *extras in calls:
        driver, driver_args, _ = _prepared(_PREPARE[name], args, block_sums, extras=extras[0] if extras else None)
        driver = _pick(driver)
        # (with _run's last argument, the worker count: an int)
        sig = tuple(driver.typeof_pyval(a) for a in (*driver_args, 1))
        if sig not in driver.overloads:
            yield driver, sig


def is_ready(calls) -> bool:
    """Whether every driver ``calls`` run is compiled, in this process, for their
    argument types (a signature only in the disk cache still costs a load)."""
    return next(_pending(calls), None) is None


def compiling_hint(calls) -> str | None:
    """What the first of ``calls`` that is not ready will do first (load from the disk
    cache, or compile), or None when all are ready."""
    for driver, sig in _pending(calls):
        what = jit.describe(driver.py_func, sig)
        if driver._cache.holds(sig, driver.targetctx.codegen()):
            return f"loading numba kernel {what} from the disk cache"
        return f"compiling numba kernel {what} (first use: seconds; cached on disk afterwards)"
    return None


def _threading_layer() -> str:
    try:
        return numba.threading_layer()
    except ValueError:  # the parallel runtime has not started yet
        pass
    requested = numba.config.THREADING_LAYER
    available = []
    for layer in ("tbb", "omp", "workqueue"):
        try:
            importlib.import_module(f"numba.np.ufunc.{layer}pool" if layer != "workqueue" else "numba.np.ufunc.workqueue")
            available.append(layer)
        except ImportError:
            pass
    return f"not started yet (requested: {requested}; loadable: {', '.join(available) or 'none'})"


def info() -> dict:
    compiled = []
    for name, driver in sorted(_DRIVER_NAMES.items()):
        n = len(driver.overloads) + len(getattr(jit._SERIAL.get(driver), "overloads", {}))
        if n:
            compiled.append(f"{name} x{n}")
    if jit._CACHE:
        cache_dir = str(cache.cache_path())
    else:
        cache_dir = "off (no writable cache directory, or FASTXENT_NUMBA_CACHE=0)"
    return {
        "version": numba.__version__,
        "threading layer": _threading_layer(),
        "NUMBA_NUM_THREADS": numba.config.NUMBA_NUM_THREADS,
        "cache dir": cache_dir,
        "compiled": ", ".join(compiled) or "none yet (each kernel compiles on first use)",
        "forked child": "yes: kernels run serially" if _forked_child() else "no",
    }


_DRIVER_NAMES = {d.py_func.__name__: d for d in jit._DRIVERS}
_DRIVER_SET = frozenset(jit._DRIVERS)
