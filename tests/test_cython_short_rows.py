"""The Cython backend's short-row softmax kernels (logits_short: rows of at most
FX_SHORT_C classes, contiguous or strided along the class axis, that do not run as
columns), against a float64 reference written out here, on every kernel table.

Rows are processed in groups whose losses are finished together, so the tests
also check that a row's bits do not depend on its place in a group: where the
range starts, the thread count, a gradient or block sums."""

from __future__ import annotations

import numpy as np
import pytest

ext = pytest.importorskip("fastxent.backends._cython_ext")

from fastxent._reduce import BLOCK_ROWS, block_sums  # noqa: E402

ISAS = ext.simd_info()["cpu_supports"]
SIZES = [1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129]
IGNORE = -100
try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    BF16 = None
DTYPES = [np.float64, np.float32, np.float16] + ([BF16] if BF16 is not None else [])


@pytest.fixture(params=ISAS)
def isa(request):
    ext._set_simd(request.param)
    yield request.param
    ext._set_simd("auto")


def reference(z, a):
    """Per row: loss sum_c a_c (logsumexp(z) - z_c) over a_c != 0 and gradient
    A softmax(z) - a, in float64, one row at a time."""
    N, C = z.shape
    loss, grad = np.zeros(N), np.zeros((N, C))
    for r in range(N):
        row, w = z[r].astype(np.float64), a[r]
        A = w.sum()
        if np.isnan(row).any() or np.isposinf(row).any():
            loss[r], grad[r] = np.nan, np.nan
            continue
        if np.isneginf(row).all():
            loss[r] = 0.0 if A == 0 else A * np.inf
            grad[r] = np.nan if A != 0 else 0.0
            continue
        m = row.max()
        e = np.exp(row - m)
        lse = m + np.log(e.sum())
        loss[r] = sum(w[c] * (lse - row[c]) for c in range(C) if w[c] != 0)
        grad[r] = A * e / e.sum() - w
    return loss, grad


def problem(N, C, dtype, rng, ls=0.0, weighted=False):
    """Logits (N, C) of dtype with the rows the kernels treat specially, labels with
    ignored rows, class weights and the per-class target weights a."""
    z = rng.standard_normal((N, C)) * 3
    y = rng.integers(0, C, N)
    y[::7] = IGNORE
    special = [r for r in range(N) if y[r] != IGNORE][:7]
    if len(special) == 7:
        z[special[0], y[special[0]]] = np.nan
        z[special[1]] = -np.inf
        z[special[2], (y[special[2]] + 1) % C] = np.inf if C > 1 else -np.inf
        z[special[3], y[special[3]]] = 40.0  # a dominant class
        if C > 1:
            z[special[4], (y[special[4]] + 1) % C] = -np.inf  # masked, not the label
            z[special[5], [1, C - 1]] = 9.0  # the max twice (in two vectors from C = 18)
            z[special[6], 0] = -120.0  # finite, farther below the max than exp's fast range
    x = z.astype(dtype)
    cw = rng.uniform(0.5, 2.0, C) if weighted else np.ones(C)
    valid = y != IGNORE
    a = np.zeros((N, C)) + ls / C * cw
    a[np.arange(N), np.where(valid, y, 0)] += (1 - ls) * cw[np.where(valid, y, 0)]
    a[~valid] = 0
    return x, y, cw, a


def run(x, y, cw, ls, *, grad=False, threads=1, sums=False, gw=None):
    N, C = x.shape
    x3 = x[:, :, None]
    loss = np.full(-(-N // BLOCK_ROWS) if sums else (N, 1), -1.0)
    gdt = np.float64 if x.dtype == np.float64 else np.float32
    g = np.full((N, C, 1), np.nan, gdt) if grad else None
    gw = np.ones((N, 1)) if gw is None else gw.reshape(N, 1)
    ext.sparse_from_logits(x3, y.reshape(N, 1), cw, ls, IGNORE, gw, loss, g, threads, block_sums=sums)
    return loss.reshape(-1), None if g is None else g[:, :, 0].astype(np.float64)


def close(got, want, dtype, what):
    rtol = 1e-12 if dtype == np.float64 else 1e-5 if dtype == np.float32 else 1e-5
    assert np.array_equal(np.isnan(got), np.isnan(want)), what
    ok = ~np.isnan(want)
    scale = max(1.0, float(np.abs(want[ok & np.isfinite(want)]).max(initial=0)))
    np.testing.assert_allclose(got[ok], want[ok], rtol=rtol, atol=rtol * scale, err_msg=what)


@pytest.mark.parametrize("C", SIZES)
def test_short_rows_against_the_reference(isa, C):
    rng = np.random.default_rng(C)
    N = 37  # not a multiple of the group of rows
    for dtype in DTYPES:
        for ls, weighted in ((0.0, False), (0.1, True)):
            x, y, cw, a = problem(N, C, dtype, rng, ls, weighted)
            gw = rng.uniform(0.5, 1.5, N)
            want_loss, want_grad = reference(x.astype(np.float64), a)
            loss, grad = run(x, y, cw, ls, grad=True, gw=gw)
            what = f"C={C} {np.dtype(dtype).name} ls={ls} {isa}"
            close(loss, want_loss, dtype, what)
            close(grad, want_grad * gw[:, None], dtype, what + " grad")
            alone, _ = run(x, y, cw, ls)
            assert alone.tobytes() == loss.tobytes(), what + ": loss without the gradient"


@pytest.mark.parametrize("C", [2, 17, 40, 100])
def test_a_rows_bits_do_not_depend_on_where_the_range_starts(isa, C):
    """Each start k shifts every row to another place in its group of rows. (A
    lane-dependent rounding -- GCC fusing different products into FMAs in copies of
    an unrolled loop -- showed in about one row in 30,000: many rows.)"""
    rng = np.random.default_rng(1000 + C)
    for dtype in (np.float32, np.float64):
        for ls, weighted in ((0.1, True), (0.0, False)):  # the general and the plain row
            x, y, cw, _ = problem(2053, C, dtype, rng, ls, weighted)
            full, _ = run(x, y, cw, ls)
            for k in range(1, 17):
                part, _ = run(np.ascontiguousarray(x[k:]), y[k:].copy(), cw, ls)
                assert part.tobytes() == full[k:].tobytes(), f"C={C} ls={ls} start {k} {isa}"


def test_short_rows_threads_and_block_sums(isa):
    rng = np.random.default_rng(3)
    N, C = 2 * BLOCK_ROWS + 21, 33
    for dtype in (np.float32, np.float64):
        x, y, cw, _ = problem(N, C, dtype, rng, 0.2, True)
        one, g1 = run(x, y, cw, 0.2, grad=True)
        two, g2 = run(x, y, cw, 0.2, grad=True, threads=2)
        assert one.tobytes() == two.tobytes() and g1.tobytes() == g2.tobytes()
        sums, _ = run(x, y, cw, 0.2, threads=2, sums=True)
        assert sums.tobytes() == block_sums(one).tobytes()


@pytest.mark.parametrize("C", [1, 16, 17, 64, 100, 128, 129])
def test_short_rows_categorical(isa, C):
    rng = np.random.default_rng(50 + C)
    N = 29
    for dtype in (np.float64, np.float32, np.float16):
        z = rng.standard_normal((N, C)) * 2
        z[3, 0] = np.nan
        z[4] = -np.inf
        x = z.astype(dtype)
        t = rng.dirichlet(np.ones(C), N)
        t[5] = 0.0
        t[5, C - 1] = 1.0
        cw = rng.uniform(0.5, 2.0, C)
        ls = 0.1
        a = cw * (t * (1 - ls) + ls / C)
        want_loss, want_grad = reference(x.astype(np.float64), a)
        loss = np.full((N, 1), -1.0)
        g = np.full((N, C, 1), np.nan, np.float64 if dtype == np.float64 else np.float32)
        ext.categorical_from_logits(x[:, :, None], t[:, :, None], cw, ls, np.ones((N, 1)), loss, g, 1)
        what = f"categorical C={C} {np.dtype(dtype).name} {isa}"
        close(loss.reshape(-1), want_loss, dtype, what)
        close(g[:, :, 0].astype(np.float64), want_grad, dtype, what + " grad")
