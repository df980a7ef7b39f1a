"""Helpers shared by the test modules."""

from __future__ import annotations

import multiprocessing as mp
import threading
import tracemalloc

import numpy as np
import pytest

import fastxent


def call(fn, *args, backend, **kwargs):
    """Call a loss on ``backend``; skip (saying why) if that backend cannot run it."""
    try:
        plan = fastxent.explain(fn, *args, backend=backend, **kwargs)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    result = fn(*args, backend=backend, **kwargs)
    assert plan.backend == backend
    return result


def tolerances(dtype) -> dict:
    """rtol/atol for results of ``dtype`` against the float64 oracle.

    float64: 1e-12 relative (accumulation order differs from the oracle's).
    float32: the kernels may compute exp/log in float32 (about 1e-7 relative per
    operation), accumulated over a row: 1e-5 relative leaves room for C = 50,000.
    """
    if np.dtype(dtype) == np.float64:
        return {"rtol": 1e-12, "atol": 1e-13}
    return {"rtol": 1e-5, "atol": 1e-6}


# ----------------------------------------------------------------- kernel layouts
# The kernels take (O, C, I) views (KERNELS.md, "Canonical layout"); a row is (o, i),
# its flat index r = o * I + i. ``place`` lays rows out in memory as each layout does.

#: name -> what it exercises
LAYOUTS = {
    "rows": "(R, C, 1) C-ordered: class axis contiguous",
    "padded": "(R, C, 1), contiguous rows with a padded row stride",
    "chlast": "(2, C, R/2): class axis contiguous and I > 1",
    "cols": "(1, C, R) from a Fortran-ordered (R, C): inner axis contiguous",
    "nchw": "(R/4, C, 4) C-ordered: inner axis contiguous, O > 1",
    "negative": "(R, C, 1) with every stride negative, rows 2 apart",
    "odd": "(R, C, 1) with a class stride of 3 elements",
    "cols_negative": "(1, C, R) with an inner stride of minus one element",
    "unaligned": "(R, C, 1) C-ordered, one byte off the itemsize alignment",
}


def layout_shape(layout, n_rows, n_classes):
    """The (O, C, I) shape of R rows in ``layout``."""
    if layout in ("cols", "cols_negative"):
        return (1, n_classes, n_rows)
    if layout == "chlast":
        assert n_rows % 2 == 0
        return (2, n_classes, n_rows // 2)
    if layout == "nchw":
        assert n_rows % 4 == 0
        return (n_rows // 4, n_classes, 4)
    return (n_rows, n_classes, 1)


def place(rows, layout, dtype=None):
    """An (O, C, I) array laid out as ``layout`` whose rows, in flat order, are
    ``rows`` (R, C) converted to ``dtype`` (default: rows' own)."""
    rows = np.asarray(rows)
    dtype = rows.dtype if dtype is None else np.dtype(dtype)
    n, c = rows.shape
    o, _, i = shape = layout_shape(layout, n, c)
    a3 = rows.astype(dtype).reshape(o, i, c).transpose(0, 2, 1)  # (O, C, I) values
    if layout in ("rows", "nchw"):
        return np.ascontiguousarray(a3)
    if layout == "padded":
        big = np.zeros((n, c + 3, 1), dtype)
        big[:, :c] = a3
        return big[:, :c]
    if layout == "chlast":
        return np.ascontiguousarray(a3.transpose(0, 2, 1)).transpose(0, 2, 1)
    if layout == "cols":
        return np.ascontiguousarray(a3[0])[None]
    if layout == "cols_negative":
        return np.ascontiguousarray(a3[0, :, ::-1])[None, :, ::-1]
    if layout == "negative":
        big = np.zeros((2 * o, c, i), dtype)
        view = big[::-2, ::-1, ::-1]
        view[...] = a3
        return view
    if layout == "odd":
        big = np.zeros((o, 3 * c, i), dtype)
        big[:, ::3] = a3
        return big[:, ::3]
    if layout == "unaligned":
        buf = bytearray(a3.nbytes + 1)
        out = np.frombuffer(buf, dtype=dtype, count=a3.size, offset=1).reshape(shape)
        out[...] = a3
        return out
    raise ValueError(layout)


def per_row(values, layout):
    """Per-row values (R,) as the (O, I) array of ``layout``, strided like it."""
    values = np.asarray(values)
    o, _, i = layout_shape(layout, values.shape[0], 1)
    v = values.reshape(o, i)
    if layout == "negative":
        return np.ascontiguousarray(v[::-1])[::-1]
    if layout == "cols_negative":
        return np.ascontiguousarray(v[:, ::-1])[:, ::-1]
    return np.ascontiguousarray(v)


def rows_of(a3):
    """(O, C, I) -> its rows (O*I, C) in flat order r = o * I + i."""
    a3 = np.asarray(a3)
    return np.moveaxis(a3, 1, 2).reshape(-1, a3.shape[1])


def _check_layouts():
    rows = np.arange(24.0 * 3).reshape(24, 3)
    for layout in LAYOUTS:
        a3 = place(rows, layout, np.float32)
        assert np.array_equal(rows_of(a3), rows), layout
        assert np.array_equal(per_row(np.arange(24), layout).reshape(-1), np.arange(24)), layout
    assert place(rows, "negative").strides[0] < 0 and place(rows, "odd").strides[1] == 3 * 8
    assert place(rows, "cols").strides[2] == 8 and place(rows, "cols_negative").strides[2] == -8
    assert place(rows, "unaligned").ctypes.data % 8 == 1 and place(rows, "chlast").strides[1] == 8


_check_layouts()


MiB = 1 << 20


def peak_of(fn) -> int:
    """Peak traced allocation of a call, after one untraced call: the first call may
    compile (Numba) or load code, which is not a per-call temporary."""
    fn()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def run_in_threads(worker, count: int) -> None:
    """Run ``worker(k)`` for k in range(count) on threads at once; fail if one hangs."""
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"


def run_forked_child(target, args=(), items: int = 1):
    """Run ``target(queue, *args)`` in a forked child; return what it put on the queue
    (``items`` values: one value, or a list). Fails if the child hangs or fails."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=target, args=(q, *args))
    proc.start()
    proc.join(60)
    if proc.is_alive():
        proc.kill()
        pytest.fail("the forked child hung")
    assert proc.exitcode == 0
    got = [q.get(timeout=5) for _ in range(items)]
    return got[0] if items == 1 else got


def assert_linear_gradients_match_finite_differences(lce, y, hidden, weight, bias, **opts):
    """``lce``'s gradients of hidden, weight and bias against central differences of
    the summed loss (the gradient of reduction "none" is that of the sum)."""

    def total(h, w, b):
        return float(np.sum(lce(y, h, w, b, **opts)))

    _, gh, gw, gb = lce(y, hidden, weight, bias, return_grad=True, **opts)
    step = 1e-6
    for analytic, array in ((gh, hidden), (gw, weight), (gb, bias)):
        numeric = np.zeros_like(array)
        for idx in np.ndindex(array.shape):
            plus, minus = array.copy(), array.copy()
            plus[idx] += step
            minus[idx] -= step
            args = [a if a is not array else plus for a in (hidden, weight, bias)]
            f_plus = total(*args)
            args = [a if a is not array else minus for a in (hidden, weight, bias)]
            numeric[idx] = (f_plus - total(*args)) / (2 * step)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)
