"""Tests specific to the Cython backend: how a layout picks the row or the column
form, the instruction-set tables (selection, forcing, agreement), the vector exp and
log of each table, OpenMP (threads, limits, fork), the extension's own argument
checks, and public calls that reach it with bfloat16.

The kernel table itself (every rule of KERNELS.md and the lead's decisions) runs on
every table this CPU runs, and on the other backends, in tests/test_kernels.py and
tests/test_kernels_extras.py.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys

import numpy as np
import pytest

ext = pytest.importorskip("fastxent.backends._cython_ext")

import fastxent as fx  # noqa: E402
from fastxent._reduce import BLOCK_ROWS  # noqa: E402
from helpers import place, run_forked_child  # noqa: E402
from kernel_impls import BF16, KERNELS, Impl, run  # noqa: E402
from test_kernels import problem  # noqa: E402

ISAS = ext.simd_info()["cpu_supports"]


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test with each kernel table this CPU can execute (SSE2 included)."""
    ext._set_simd(request.param)
    yield request.param
    ext._set_simd("auto")


def test_layouts_take_the_intended_path():
    N, C = 24, 37
    expect = {"rows": ("rows", (1, C, N)), "cols": ("columns", (1, C, N)), "nchw": ("columns", (N // 4, C, 4)),
              "negative": ("rows", (1, C, N)), "odd": ("rows", (1, C, N)), "cols_negative": ("rows", (1, C, N)),
              "unaligned": ("rows", (1, C, N))}
    for layout, want in expect.items():
        x3 = place(np.zeros((N, C)), layout, np.float32)
        g3 = place(np.zeros((N, C)), layout if layout != "unaligned" else "odd", np.float32)
        assert ext._layout_plan(x3, g3) == want, layout
    # binary axis=None (N, 1, L), C-ordered: one inner axis of N*L rows, columns
    assert ext._layout_plan(np.zeros((10, 1, 6), np.float32)) == ("columns", (1, 1, 60))
    # short contiguous rows: columns with strided lane loads, with or without a
    # gradient (the form follows y_pred alone: a loss has the same bits either way)
    assert ext._layout_plan(np.zeros((32, 10, 1), np.float32)) == ("columns", (1, 10, 32))
    assert ext._layout_plan(np.zeros((32, 10, 1), np.float32), np.zeros((32, 10, 1), np.float32))[0] == "columns"
    # a gradient laid out unlike y_pred does not change the form either
    x3 = place(np.zeros((N, C)), "cols", np.float32)
    assert ext._layout_plan(x3, np.zeros((N, C, 1), np.float32).transpose(2, 1, 0))[0] == "columns"
    assert ext._layout_plan(np.zeros((N, C, 1), np.float32), x3.transpose(2, 1, 0))[0] == "rows"


def test_read_only_grad_out_rejected():
    x = np.zeros((2, 3, 1))
    g = np.zeros((2, 3, 1))
    g.setflags(write=False)
    with pytest.raises(ValueError):
        ext.sparse_from_logits(x, np.zeros((2, 1), np.int64), np.ones(3), 0.0, -1, np.ones((2, 1)),
                               np.empty((2, 1)), g, 1)


def test_block_sums_output_size_is_checked():
    x3 = np.zeros((BLOCK_ROWS + 1, 3, 1))
    labels, gw = np.zeros((BLOCK_ROWS + 1, 1), np.int64), np.ones((BLOCK_ROWS + 1, 1))
    with pytest.raises(ValueError, match="array of 2 block sums"):
        ext.sparse_from_logits(x3, labels, np.ones(3), 0.0, -1, gw, np.empty(BLOCK_ROWS + 1), None, 1,
                               block_sums=True)



def test_isa_tables_agree():
    """Every table this CPU runs gives the same results to float rounding."""
    results = {}
    for isa_name in ISAS:
        ext._set_simd(isa_name)
        try:
            out = []
            for kernel in KERNELS:
                rows, aux, kw = problem(kernel, 64, 33, np.random.default_rng(7), dtype=np.float32, ls=0.1)
                got = run(Impl("cython"), kernel, rows, aux, grad=True, **kw)
                out.append((got.loss, got.grad))
            results[isa_name] = out
        finally:
            ext._set_simd("auto")
    base = results["default"]
    for isa_name, out in results.items():
        for (la, ga), (lb, gb) in zip(base, out):
            np.testing.assert_allclose(la, lb, rtol=2e-6)
            np.testing.assert_allclose(ga, gb, rtol=2e-6, atol=1e-7)


def test_simd_info_and_forcing():
    info = ext.simd_info()
    assert info["active"] in info["compiled"] and "default" in info["cpu_supports"]
    assert ext._set_simd("default") == "default"
    assert ext.simd_info()["active"] == "default"
    ext._set_simd("auto")
    for name in info["compiled"]:
        if name not in info["cpu_supports"]:
            with pytest.raises(ValueError):
                ext._set_simd(name)
    with pytest.raises(ValueError):
        ext._set_simd("sse9")
    # FASTXENT_SIMD picks the table at import
    code = "from fastxent.backends import _cython_ext as e; print(e.simd_info()['active'])"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "FASTXENT_SIMD": "default"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "default"


def test_openmp_build_and_thread_limits():
    assert ext.openmp_enabled(), ext.OPENMP_PROBE
    assert ext.OPENMP_PROBE.startswith("ok")
    code = "from fastxent.backends import _cython_ext as e; print(e.omp_max_threads())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = ext.omp_max_threads()
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert ext.omp_max_threads() == 1
    assert ext.omp_max_threads() == before


def _child_kernel(q):
    N, C = 20_000, 20
    x = np.ones((N, C, 1), np.float32)
    loss = np.empty((N, 1))
    ext.sparse_from_logits(x, np.zeros((N, 1), np.int64), np.ones(C), 0.0, -1, np.ones((N, 1)), loss, None, 2)
    q.put((float(loss[0, 0]), ext._in_forked_child()))


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_fork_after_openmp_does_not_hang():
    """GNU OpenMP hangs a child forked after a parallel region; the kernels run serially there."""
    _child_kernel(mp.Queue())  # use OpenMP in this process first
    loss, forked = run_forked_child(_child_kernel)
    assert forked and np.isclose(loss, np.log(20))


def ulp_error(got, want, dtype):
    want = np.asarray(want, np.float64)
    spacing = np.spacing(np.abs(want).astype(dtype)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / spacing


def test_simd_exp_log_accuracy(isa):
    x32 = np.linspace(-87.3, 88.7, 2_000_001, dtype=np.float32)
    e = ext._vexp(x32)
    assert ulp_error(e, np.exp(x32.astype(np.float64)), np.float32).max() <= 2.0
    # exp of x <= 0, the kernels' exp: degree 5 in float32 (measured 2.17 ulp)
    neg = x32[x32 <= 0]
    assert ulp_error(ext._vexp(neg, 1), np.exp(neg.astype(np.float64)), np.float32).max() <= 2.5
    # exp of a softmax sum's terms (x - max in [-86.5, 0]): Estrin's shorter chain
    # (measured 2.51 ulp over [-10, 0]); below, the one-constant reduction adds up to
    # 2 ulp more (4.79 measured). Without FMA the reduction takes two constants: a
    # rounded n * ln2 cost 8.9 ulp over [-10, 0], 68 below.
    near = neg[neg >= -86.5]
    near_err = ulp_error(ext._vexp(near, 2), np.exp(near.astype(np.float64)), np.float32)
    assert near_err[near >= -10].max() <= 2.6 and near_err.max() <= 5.0
    x64 = np.linspace(-708.0, 709.0, 2_000_001)
    assert ulp_error(ext._vexp(x64), np.exp(x64), np.float64).max() <= 2.0
    p32 = np.concatenate([np.geomspace(1e-37, 1e38, 1_000_000, dtype=np.float32),
                          np.linspace(0.5, 2.0, 1_000_000, dtype=np.float32)])
    assert ulp_error(ext._vlog(p32), np.log(p32.astype(np.float64)), np.float32).max() <= 2.0
    p64 = np.concatenate([np.geomspace(1e-300, 1e300, 1_000_000), np.linspace(0.5, 2.0, 1_000_000)])
    assert ulp_error(ext._vlog(p64), np.log(p64), np.float64).max() <= 2.0


def test_simd_exp_log_specials(isa):
    for dt in (np.float32, np.float64):
        x = np.array([-np.inf, np.inf, np.nan, 0.0, -0.0, -1e4, 1e4, -120.0, -800.0], dt)
        with np.errstate(all="ignore"):
            want = np.exp(x.astype(np.float64)).astype(dt)
        got = ext._vexp(x)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        fin = ~np.isnan(want)
        # underflow flushes to 0 (subnormal results are allowed either way)
        assert np.all((got[fin] == want[fin]) | ((want[fin] < np.finfo(dt).tiny) & (got[fin] < np.finfo(dt).tiny)))
        got = ext._vexp(np.array([-np.inf, np.nan, 0.0, -1e4, -50.0], dt), 1)
        assert got[0] == 0 and np.isnan(got[1]) and got[2] == 1 and got[3] == 0 and got[4] > 0
        p = np.array([0.0, -0.0, -1.0, np.inf, np.nan, 1.0, np.finfo(dt).smallest_subnormal], dt)
        got = ext._vlog(p)
        assert got[0] == -np.inf and got[1] == -np.inf and np.isnan(got[2]) and got[3] == np.inf
        assert np.isnan(got[4]) and got[5] == 0
        np.testing.assert_allclose(got[6], np.log(np.float64(np.finfo(dt).smallest_subnormal)), rtol=1e-6)
    # a NaN with payload bits where the exponent scale is built stays NaN
    payload = np.array([0x7FC001FF, 0xFFC000FF], np.uint32).view(np.float32)
    assert np.isnan(ext._vexp(payload, 1)).all() and np.isnan(ext._vexp(payload)).all()


@pytest.mark.skipif(os.environ.get("FASTXENT_BIG_TESTS") != "1", reason="needs ~5 GB: FASTXENT_BIG_TESTS=1")
def test_more_than_2_31_elements():
    """N x C > 2^31: every index is Py_ssize_t."""
    C, N = 1 << 16, (1 << 15) + 3
    x = np.zeros((N, C), np.float16)  # 4.3 GB
    x[-1, -1] = 5.0
    y = np.full((N, 1), C - 1, np.int64)
    loss = np.empty((N, 1))
    ext.sparse_from_logits(x[:, :, None], y, np.ones(C), 0.0, -1, np.ones((N, 1)), loss, None, 2)
    np.testing.assert_allclose(loss[:-1, 0], np.log(C), rtol=1e-6)
    np.testing.assert_allclose(loss[-1, 0], np.log1p((C - 1) * np.exp(-5.0)), rtol=1e-5)



def test_float64_exp_keeps_subnormals(isa):
    """The vector exp of the kernels (kind 1: x <= 0) against NumPy's down to the
    last subnormal, and 0 beyond."""
    x = -np.concatenate([np.linspace(700, 746, 4001), [708.39, 708.4, 744.44, 745.13, 745.14, 800, np.inf]])
    got = ext._vexp(x, 1)
    want = np.exp(x)
    ulp = np.spacing(np.maximum(want, 5e-324))
    assert (np.abs(got - want) <= ulp).all()
    assert (got[want > 0] > 0).all()


def test_kernels_use_the_threads_they_are_given():
    """No serial cut-off of the kernel's own: 2 threads for 2 threads' worth of work
    items however small, capped by the work items (rows, or column tasks)."""
    assert ext._thread_plan(np.zeros((1000, 10, 1), np.float32), 2) == 2
    assert ext._thread_plan(np.zeros((2, 10, 1), np.float32), 2) == 2
    assert ext._thread_plan(np.zeros((1, 10, 1), np.float32), 2) == 1  # one row
    assert ext._thread_plan(np.zeros((1, 100, 200), np.float32), 2) == 1  # one column task
    assert ext._thread_plan(np.zeros((1000, 10, 1), np.float32), 1) == 1



def test_bad_extra_outputs_are_refused():
    z = np.zeros((4, 3), np.float32)
    args = (z[:, :, None], np.zeros((4, 1), np.int64), np.ones(3), 0.0, -1, np.ones((4, 1)), np.empty((4, 1)), None, 1)
    with pytest.raises(ValueError, match="lse_out"):
        ext.sparse_from_logits(*args, lse_out=np.empty((4, 1), np.float32))
    with pytest.raises(ValueError, match="rank_out"):
        ext.sparse_from_logits(*args, rank_out=np.empty((4, 1), np.int32))
    with pytest.raises(ValueError, match="shape"):
        ext.sparse_from_logits(*args, lse_out=np.empty((3, 1)))


@pytest.mark.skipif(BF16 is None, reason="ml_dtypes is not installed")
def test_public_calls_run_bfloat16_on_cython():
    """The public functions send bfloat16 y_pred to the Cython kernels (no conversion
    copy) and write a bfloat16 gradient in place."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 50)).astype(BF16)
    y = rng.integers(0, 50, 64)
    plan = fx.explain(fx.sparse_categorical_crossentropy, y, x, from_logits=True, backend="cython")
    assert plan.backend == "cython"
    got = fx.sparse_categorical_crossentropy(y, x, from_logits=True, backend="cython")
    want = fx.sparse_categorical_crossentropy(y, x, from_logits=True, backend="numpy")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5)
    _, g32 = fx.sparse_categorical_crossentropy(y, x, from_logits=True, backend="cython", return_grad=True)
    assert g32.dtype == np.float32
    xin = x.copy()
    loss, g = fx.sparse_categorical_crossentropy(y, xin, from_logits=True, backend="cython", return_grad=True,
                                                 grad_out=xin)
    assert g is xin and loss == got
    assert xin.tobytes() == g32.astype(BF16).tobytes()
    t = (rng.random((64, 50)) < 0.5).astype(np.float32)
    for fn, args in ((fx.binary_crossentropy, (t, x)), (fx.categorical_crossentropy, (t / 50, x))):
        got = fn(*args, from_logits=True, backend="cython")
        want = fn(*args, from_logits=True, backend="numpy")
        np.testing.assert_allclose(got, want, rtol=1e-5)
