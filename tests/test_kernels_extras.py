"""The kernel matrix, continued (see test_kernels.py): sparse_from_logits' optional
keywords (z_loss, softcap, lse_out, rank_out) and bfloat16 y_pred, on every
implementation (the ``impl`` fixture), against the same float64 reference.

Tolerances: ``kernel_impls.tol`` (float64 1e-12 of a result's scale, float32-computed
2e-6 relative and 1e-7 absolute); a bfloat16 gradient within one bfloat16 rounding (2**-8 relative) of the
reference. Ranks are integers and compared exactly, except where float32 softcap
may merge two logits the float64 reference keeps apart (then the rank must lie
between the counts of the logits clearly above the label's and of those not clearly
below it).
"""

from __future__ import annotations

import numpy as np
import pytest

from fastxent._reduce import BLOCK_ROWS, block_sums
from helpers import place
from kernel_impls import BF16, IGNORE, KERNELS, assert_close, assert_matches, expect, run, tol
from test_kernels import mp_softmax

F16, F32, F64 = np.float16, np.float32, np.float64
BF16_TOL = 2.0**-8  # one rounding to bfloat16 (8 significant bits)
needs_bf16 = pytest.mark.skipif(BF16 is None, reason="ml_dtypes is not installed")


def dname(dtype):
    return np.dtype(dtype).name


def special_rows(rng, n, c, dtype):
    """Random logits and labels with the rows every kernel must get right: an ignored
    row holding a NaN, a NaN row, a +inf row, an all -inf row, masked (-inf) classes,
    a dominant label, ties at the label, an all-equal row, an ignored plain row, logits
    beyond any softcap and a dominant class that is not the label."""
    z = rng.standard_normal((n, c)) * 3
    y = rng.integers(0, c, n)
    inf = np.inf
    z[0, c // 2] = np.nan
    y[0] = IGNORE
    z[1, c - 1] = np.nan
    z[2, c // 3] = inf
    z[3] = -inf
    z[4, ::3] = -inf
    y[4] = 1
    y[5] = c // 2
    z[5, y[5]] = 60.0 if dtype == F64 else 30.0
    z[6] = np.round(z[6] / 2)
    y[6] = int(np.argmax(z[6] == z[6].max()))  # one of the top ties
    z[6, -1] = z[6].max()  # a tie after it
    z[7] = 0.5
    y[7] = c - 1
    y[8] = IGNORE
    z[9, ::2] = 1e4
    z[10, (y[10] + 2) % c] = 40.0
    return z.astype(dtype), y


def rank_window(z, y, cap):
    """For float32/16 with softcap: the rank lies between the classes clearly above the
    label's capped logit and those not clearly below it."""
    zc = cap * np.tanh(z.astype(F64) / cap)
    valid = y != IGNORE
    zy = zc[np.arange(len(y)), np.where(valid, y, 0)][:, None]
    slack = 4e-7 * cap
    lo = (zc > zy + slack).sum(axis=1)
    hi = (zc >= zy - slack).sum(axis=1) - 1  # not the label itself
    nan = np.isnan(zc).any(axis=1)
    c = z.shape[1]
    return np.where(valid, np.where(nan, c, lo), -1), np.where(valid, np.where(nan, c, hi), -1)


def check_extras(out, want, z, y, dtype, opts, what):
    assert_close(out.loss, want.loss, tol(dtype), what + " loss")
    if out.grad is not None:
        # float32 softcap: tanh is rounded to float32 before 1 - tanh**2 takes its
        # complement, ~1e-7 absolute on gradients of scale 1 (Cython's test allowed 1e-5)
        atol = 1e-6 if opts.get("softcap") and dtype != F64 else None
        assert_close(out.grad, want.grad, tol(dtype), what + " gradient", atol=atol)
    if out.lse is not None:
        assert_close(out.lse, want.lse, tol(dtype), what + " lse")
    if out.rank is not None:
        if dtype != F64 and opts.get("softcap"):
            lo, hi = rank_window(z, y, opts["softcap"])
            assert ((lo <= out.rank) & (out.rank <= hi)).all(), what + " rank"
        else:
            np.testing.assert_array_equal(out.rank, want.rank, err_msg=what + " rank")


EXTRA_OPTIONS = [
    dict(z_loss=1e-2),
    dict(softcap=5.0),
    dict(lse=True),
    dict(rank=True),
    dict(z_loss=1e-3, softcap=3.0, lse=True, rank=True),
    dict(z_loss=2e-2, softcap=30.0, lse=True, rank=True, ls=0.1, cw=True),
]
#: dtype x layout: float32 in each of Numba's array kinds (nchw: columns with O > 1),
#: float64 and float16 in fewer (Numba compiles each kind, with and without softcap).
EXTRA_CASES = [(F32, "rows"), (F32, "cols"), (F32, "nchw"), (F32, "odd"), (F64, "rows"), (F64, "odd"), (F16, "nchw")]


@pytest.mark.parametrize("dtype, layout", EXTRA_CASES, ids=[f"{dname(d)}-{l}" for d, l in EXTRA_CASES])
def test_extras_match_the_reference(impl, dtype, layout):
    """Loss, gradient, lse and rank of every option alone and together, loss only and
    with a gradient, on short rows, rows of a few hundred classes and rows of several
    blocks; asking for lse and ranks changes no bit of the loss or gradient, and
    z_loss = 0, softcap = 0 are the plain call (decision 8)."""
    for c in (7, 37, 300, 3000):
        rng = np.random.default_rng(c)
        n = 24
        z, y = special_rows(rng, n, c, dtype)
        gw = rng.uniform(0.5, 1.5, n)
        for grad in (None, True):
            plain = run(impl, "sparse_from_logits", z, y, layout=layout, ignore=IGNORE, gw=gw, grad=grad)
            for opts in EXTRA_OPTIONS + [dict(lse=True, rank=True), dict(z_loss=0.0, softcap=0.0)]:
                opts = dict(opts)
                weights = rng.uniform(0.2, 2.0, c) if opts.pop("cw", False) else None
                kw = dict(layout=layout, ignore=IGNORE, gw=gw, weights=weights, ls=opts.pop("ls", 0.0), **opts)
                what = f"{impl} {dname(dtype)} {layout} C={c} {kw} grad={grad}"
                out = run(impl, "sparse_from_logits", z, y, grad=grad, **kw)
                check_extras(out, expect("sparse_from_logits", z, y, **kw), z, y, dtype, opts, what)
                if not opts.get("z_loss") and not opts.get("softcap") and weights is None:
                    assert out.loss.tobytes() == plain.loss.tobytes(), what
                    assert grad is None or out.grad.tobytes() == plain.grad.tobytes(), what


@pytest.mark.parametrize("layout", ["rows", "cols", "nchw", "odd"])
@pytest.mark.parametrize("dtype", [F64, F32, F16], ids=dname)
def test_ranks_with_ties(impl, dtype, layout):
    """Integer logits (many ties, exact in every dtype, after softcap too): a class
    equal to the label's counts only at a lower index, as np.argmax breaks ties; a
    NaN anywhere gives C, +inf is counted like any larger logit, ignored rows -1."""
    rng = np.random.default_rng(3)
    for c in (5, 9, 37, 3000):
        z = rng.integers(-3, 4, (48, c)).astype(F64)
        y = rng.integers(0, c, 48)
        z[1, 2] = np.nan
        z[2, 0] = np.inf
        z[3, :] = -np.inf
        y[4] = y[11] = IGNORE
        z[11, 1] = np.nan  # ignored: -1 all the same
        z = z.astype(dtype)
        for cap in (0.0, 4.0):
            zc = z.astype(F64) if not cap else cap * np.tanh(z.astype(F64) / cap)
            want = np.array([-1 if yy == IGNORE else c if np.isnan(row).any()
                             else int((row > row[yy]).sum() + (row[:yy] == row[yy]).sum())
                             for row, yy in zip(zc, y)])  # fmt: skip
            for grad in (None, True):
                out = run(impl, "sparse_from_logits", z, y, layout=layout, ignore=IGNORE, grad=grad, rank=True,
                          softcap=cap)  # fmt: skip
                np.testing.assert_array_equal(out.rank, want, err_msg=f"{impl} {layout} C={c} cap={cap} grad={grad}")


def test_softcap_limits(impl):
    """softcap turns +-inf into +-cap (finite rows), leaves NaN NaN, and the
    gradient's factor 1 - tanh^2 is exactly 0 where tanh rounds to 1."""
    for dtype in (F64, F32, F16):
        for layout in ("rows", "cols", "odd"):
            z = np.array([[1e4, -1e4, 0.0, 1.0], [np.inf, 0.0, -np.inf, 2.0], [np.nan, 0.0, 1.0, 1.0],
                          [-np.inf, -np.inf, -np.inf, -np.inf]] * 2, dtype)  # fmt: skip
            y = np.array([1, 0, 2, 3] * 2)
            out = run(impl, "sparse_from_logits", z, y, layout=layout, grad=True, softcap=30.0, lse=True, rank=True)
            want_lse = 30.0 + np.log1p(np.exp(-30.0) + np.exp(-30 * (1 - np.tanh(1 / 30))) + np.exp(-60.0))
            np.testing.assert_allclose(out.lse[0], want_lse, rtol=tol(dtype))
            np.testing.assert_allclose(out.loss[0], want_lse + 30.0, rtol=tol(dtype))
            assert np.isfinite(out.loss[[0, 1, 3]]).all() and np.isnan(out.loss[2]) and np.isnan(out.lse[2])
            g = out.grad
            assert g[0, 0] == 0 and g[0, 1] == 0 and g[1, 0] == 0 and g[1, 2] == 0
            assert np.isfinite(g[[0, 1, 3]]).all() and np.isnan(g[2]).all()
            np.testing.assert_array_equal(out.rank[:4], [3, 0, 4, 3])
            np.testing.assert_allclose(out.lse[3], -30.0 + np.log(4), rtol=tol(dtype))  # all -inf: all -30


def test_tanh_against_numpy(impl):
    """The kernels' tanh (through softcap with cap 1 and one class: the lse is tanh(x)),
    at every scale: within 4 ulp of float64's / float32's tanh, with its sign."""
    x = np.concatenate([np.geomspace(1e-300, 40, 2000), [0.0, 1e-320, 0.3, 0.34657, 0.35, 0.5493, 0.55, 20.5]])
    x = np.concatenate([x, -x])
    for dtype in (F64, F32):
        xd = x.astype(dtype)
        xd = xd[np.abs(xd) < np.finfo(dtype).max]
        out = run(impl, "sparse_from_logits", xd[:, None], np.zeros(len(xd), int), layout="cols", lse=True,
                  softcap=1.0)  # fmt: skip
        want = np.tanh(xd.astype(F64)).astype(dtype)
        err = np.abs(out.lse.astype(dtype).astype(F64) - want) / np.spacing(np.abs(want).astype(dtype))
        assert err.max() <= 4, (dtype, xd[np.argmax(err)], err.max())
        nonzero = xd != 0  # (lse = m + log1p(0) turns -0 into +0)
        assert np.array_equal(np.signbit(out.lse[nonzero]), np.signbit(xd[nonzero]))


@pytest.mark.parametrize("layout", ["rows", "cols", "odd"])
def test_dominant_class_with_z_loss(impl, layout):
    """A label far above the others: the gradient at it is -(A + 2 z lse) R / S + 2 z lse
    with R / S tiny, exact on every entry (against 400 digits), including where
    2 z lse is tiny itself; the loss and lse too."""
    cases = [
        (F64, [100.0, 0.0, -5.0, 3.0], 0, 1e-4, 1e-12),
        (F64, [0.0, -100.0, -105.0, -97.0], 0, 1e-2, 1e-12),
        (F64, [0.0, 700.0, 690.0], 1, 1e-5, 1e-12),
        (F64, [40.0, 1.0, -2.0, 0.5], 0, 1e-2, 1e-14),
        (F64, [-3.0, 0.0, 41.5, 2.0], 2, 1e-2, 1e-14),
        (F32, [30.0, 0.0, -2.0], 0, 1e-3, 1e-5),
        (F32, [0.0, -40.0, -25.0, -25.0], 0, 1e-2, 1e-5),
        (F32, [40.0, 1.0, -2.0, 0.5], 0, 1e-2, 2e-6),
    ]
    for dtype, z, k, zl, rt in cases:
        rows = np.array([z] * 4, dtype)
        want_loss, want_grad = mp_softmax(rows[0], k, zl)
        out = run(impl, "sparse_from_logits", rows, np.full(4, k), layout=layout, grad=True, z_loss=zl, lse=True)
        np.testing.assert_allclose(out.loss, want_loss, rtol=rt)
        np.testing.assert_allclose(out.lse, mp_softmax(rows[0], k)[0] + rows[0, k].astype(F64), rtol=rt)
        for g in out.grad:
            np.testing.assert_allclose(g, want_grad, rtol=rt, atol=0)


@pytest.mark.parametrize("layout", ["rows", "cols", "nchw"])
def test_extras_threads_and_block_sums_keep_the_bits(impl, layout):
    """Two threads give the bits of one (loss, gradient, lse, rank); block sums are
    NumPy's sums of the rows; and asking for lse and ranks changes no loss bits."""
    n, c = 2 * BLOCK_ROWS + 8, 9
    z, y = special_rows(np.random.default_rng(11), n, c, F32)
    y[::7] = IGNORE
    kw = dict(layout=layout, ignore=IGNORE, z_loss=1e-3, softcap=6.0, lse=True, rank=True)
    one = run(impl, "sparse_from_logits", z, y, grad=True, **kw)
    two = run(impl, "sparse_from_logits", z, y, grad=True, threads=2, **kw)
    for a, b in zip((one.loss, one.grad, one.lse, one.rank), (two.loss, two.grad, two.lse, two.rank)):
        assert a.tobytes() == b.tobytes()
    plain = run(impl, "sparse_from_logits", z, y, layout=layout, ignore=IGNORE, grad=True)
    for threads in (1, 2):
        ranked = run(impl, "sparse_from_logits", z, y, layout=layout, ignore=IGNORE, grad=True, threads=threads,
                     lse=True, rank=True)  # fmt: skip
        assert ranked.loss.tobytes() == plain.loss.tobytes() and ranked.grad.tobytes() == plain.grad.tobytes()
        if impl.block_sums:
            sums = run(impl, "sparse_from_logits", z, y, threads=threads, block_sums=True, **kw)
            assert sums.loss.tobytes() == block_sums(one.loss).tobytes()
            assert sums.lse.tobytes() == one.lse.tobytes() and sums.rank.tobytes() == one.rank.tobytes()


def test_in_place_gradient_with_extras(impl):
    """grad_out = x: the derivative factors come from x before it is overwritten; the
    same bits as into a separate gradient."""
    for layout in ("rows", "cols"):
        for c in (7, 300, 3000):
            z, y = special_rows(np.random.default_rng(c + 2), 24, c, F32)
            kw = dict(layout=layout, ignore=IGNORE, softcap=4.0, z_loss=1e-3, lse=True, rank=True)
            want = run(impl, "sparse_from_logits", z, y, grad=True, **kw)
            got = run(impl, "sparse_from_logits", z, y, grad="inplace", x3=place(z, layout), **kw)
            for a, b in zip((got.loss, got.grad, got.lse, got.rank), (want.loss, want.grad, want.lse, want.rank)):
                assert a.tobytes() == b.tobytes(), (layout, c)


def test_one_class_rows_with_lse_and_ranks(impl):
    """C == 1: the lse of the capped logit is the capped logit itself, the rank 0 (C for
    NaN), the loss and gradient 0 (or NaN); an ignored row -1 and 0."""
    z = np.array([[0.5], [-2.0], [np.nan], [40.0]], F32)
    out = run(impl, "sparse_from_logits", z, np.array([0, 0, 0, IGNORE]), ignore=IGNORE, grad="inplace",
              x3=place(z, "rows"), softcap=3.0, lse=True, rank=True)  # fmt: skip
    np.testing.assert_allclose(out.lse, 3.0 * np.tanh(z[:, 0].astype(F64) / 3.0), rtol=1e-6)
    np.testing.assert_array_equal(out.rank, [0, 0, 1, -1])
    np.testing.assert_array_equal(out.loss, [0.0, 0.0, np.nan, 0.0])
    np.testing.assert_array_equal(out.grad[:, 0], [0.0, 0.0, np.nan, 0.0])


# ---------------------------------------------------------------------------- bfloat16


def bf16_problem(kernel, n, c, rng, ls=0.0):
    """(rows as bfloat16, aux, weights): random data with the values each kernel family
    must treat specially."""
    binary = kernel.startswith("binary")
    if kernel.endswith("logits"):
        z = rng.standard_normal((n, c)) * 3
        z[1, 0] = np.nan
        z[2, c // 2] = -np.inf
        if not binary:
            z[3] = -np.inf
        z[5, 0] = 40.0  # a dominant class
    else:
        z = rng.uniform(0.001, 1.0, (n, c))
        if not binary:
            z /= z.sum(axis=1, keepdims=True)
        z[0, 0] = 0.0
        z[1, c - 1] = 1.0
        z[2, 0] = np.nan
    if kernel.startswith("sparse"):
        aux = rng.integers(0, c, n)
        aux[::5] = IGNORE
        aux[1] = aux[5] = 0
        weights = rng.uniform(0.5, 2.0, c)
    elif binary:
        aux = rng.integers(0, 2, (n, c)).astype(F32)
        aux.flat[::3] = rng.uniform(0, 1, aux.flat[::3].shape)
        weights = rng.uniform(0.5, 2.0, c)
    else:
        aux = rng.dirichlet(np.ones(c), n).astype(F32)
        weights = rng.uniform(0.5, 2.0, c)
    return z.astype(BF16), aux, dict(weights=weights, ls=ls, ignore=IGNORE, gw=np.linspace(0.5, 1.5, n))


BF16_LAYOUTS = ["rows", "cols", "nchw", "odd", "negative"]


@needs_bf16
@pytest.mark.parametrize("layout", BF16_LAYOUTS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_bfloat16_matches_the_reference(impl, kernel, layout):
    """Loss, float32 gradient and bfloat16 gradient of every kernel, with and without
    label smoothing, short rows, a few hundred classes and rows of several blocks; the
    same loss bits with a gradient of either dtype (decision 8)."""
    for c in (7, 300, 3000):
        for ls in (0.0, 0.1):
            x, aux, kw = bf16_problem(kernel, 24, c, np.random.default_rng(c + int(ls * 10)), ls)
            what = f"{impl} {kernel} {layout} C={c} ls={ls}"
            want = expect(kernel, x, aux, **kw)
            loss_only = run(impl, kernel, x, aux, layout=layout, **kw)
            if want.bad >= 0:  # an out-of-range probability: the same row reported
                assert loss_only.bad == want.bad, what
                continue
            got32 = run(impl, kernel, x, aux, layout=layout, grad=F32, **kw)
            got16 = run(impl, kernel, x, aux, layout=layout, grad=BF16, **kw)
            assert_matches(loss_only, want, tol(F32), what)
            assert_matches(got32, want, tol(F32), what + " float32 gradient")
            assert got16.bad == -1
            assert_close(got16.grad, want.grad, BF16_TOL, what + " bfloat16 gradient")
            assert loss_only.loss.tobytes() == got32.loss.tobytes() == got16.loss.tobytes(), what


@needs_bf16
@pytest.mark.parametrize("layout", BF16_LAYOUTS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_bfloat16_gives_the_bits_of_float32_input(impl, kernel, layout):
    """bfloat16 is widened exactly and then computed as float32 input is: the same
    bits (the Cython softmax row kernels, which sum bfloat16 rows from their bits in
    another order, within float32 rounding); the bfloat16 gradient is the float32 one
    rounded to nearest even (ml_dtypes' rounding), NaN kept. (The NumPy backend computes
    in float64 from the same values: the same bits too, its bfloat16 gradient one
    rounding away.)"""
    for c in (7, 300, 3000):
        x, aux, kw = bf16_problem(kernel, 24, c, np.random.default_rng(c))
        a = run(impl, kernel, x.astype(F32), aux, layout=layout, grad=F32, **kw)
        b = run(impl, kernel, x, aux, layout=layout, grad=F32, **kw)
        c16 = run(impl, kernel, x, aux, layout=layout, grad=BF16, **kw)
        what = f"{impl} {kernel} {layout} C={c}"
        assert a.bad == b.bad == c16.bad, what
        if a.bad >= 0:
            continue
        reads_bits = impl.backend == "cython" and kernel in ("sparse_from_logits", "categorical_from_logits") \
            and layout in ("rows", "negative") and c > 16  # fmt: skip
        if reads_bits:
            assert_close(b.loss, a.loss, tol(F32), what + " loss")
            assert_close(b.grad, a.grad, tol(F32), what + " gradient")
            a = b  # the bfloat16 gradient is the rounding of this one
        else:
            assert b.loss.tobytes() == a.loss.tobytes(), what + " loss"
            assert b.grad.tobytes() == a.grad.tobytes(), what + " gradient"
        if impl.backend == "numpy":  # (its float64 gradient is rounded to bfloat16 once)
            assert_close(c16.grad, a.grad, BF16_TOL, what + " bfloat16 gradient")
            continue
        want16 = a.grad.astype(F32).astype(BF16)
        assert c16.grad.astype(BF16).tobytes() == want16.tobytes(), what + " bfloat16 gradient"


@needs_bf16
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("layout", ["rows", "cols", "nchw", "negative"])
def test_bfloat16_gradient_in_place(impl, kernel, layout):
    """grad_out = y_pred (bfloat16): the same bits as a separate bfloat16 gradient."""
    for c in (7, 300, 3000):
        x, aux, kw = bf16_problem(kernel, 24, c, np.random.default_rng(c + 7))
        if kernel.endswith("probs"):
            x[2, 0] = 0.5  # in range: an out-of-range row leaves grad_out undefined
        want = run(impl, kernel, x, aux, layout=layout, grad=BF16, **kw)
        got = run(impl, kernel, x, aux, layout=layout, grad="inplace", x3=place(x, layout), **kw)
        assert got.bad == want.bad == -1
        assert got.loss.tobytes() == want.loss.tobytes()
        assert got.grad.tobytes() == want.grad.tobytes(), f"{impl} {kernel} {layout} C={c}"


@needs_bf16
def test_rounding_to_bfloat16(impl):
    """The gradient's rounding: to nearest, ties to even, overflow to inf, subnormals,
    signed zero, NaN kept -- as ml_dtypes rounds float32."""
    vals = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20, -(1.0 + 2**-8), 3.3895314e38,
                     3.4e38, -3.4e38, 1e-40, -1.5e-39, 0.0, -0.0, np.inf, -np.inf, np.nan], F32)  # fmt: skip
    # sparse_from_probs with C = 1 writes -w_y gw / p at the label; p = 0.5, w_y = 1 and
    # gw = -v / 2 route each value v (exact in float64) to the bfloat16 store
    p = np.full((len(vals), 1), 0.5, BF16)
    out = run(impl, "sparse_from_probs", p, np.zeros(len(vals), np.int64), gw=-0.5 * vals.astype(F64), grad=BF16)
    got = out.grad[:, 0].astype(BF16)
    finite = ~np.isnan(vals)
    assert got[finite].tobytes() == vals[finite].astype(BF16).tobytes()
    assert np.isnan(got[~finite].astype(F32)).all()


@needs_bf16
@pytest.mark.parametrize("layout", ["rows", "cols", "nchw"])
def test_bfloat16_threads_and_block_sums(impl, layout):
    """One and two threads give the same bits; block sums are NumPy's sums of the rows."""
    n, c = 2 * BLOCK_ROWS + 8, 40
    rng = np.random.default_rng(5)
    for kernel in ("sparse_from_logits", "binary_from_logits", "sparse_from_probs"):
        x, aux, kw = bf16_problem(kernel, n, c, rng)
        if kernel.endswith("probs"):
            x[2, 0] = 0.5
        one = run(impl, kernel, x, aux, layout=layout, grad=BF16, **kw)
        two = run(impl, kernel, x, aux, layout=layout, grad=BF16, threads=2, **kw)
        assert one.loss.tobytes() == two.loss.tobytes() and one.grad.tobytes() == two.grad.tobytes()
        if impl.block_sums:
            sums = run(impl, kernel, x, aux, layout=layout, threads=2, block_sums=True, **kw)
            assert sums.loss.tobytes() == block_sums(one.loss).tobytes()


@needs_bf16
def test_bfloat16_targets(impl):
    """Dense targets in bfloat16 are read as float32 targets of the same values are."""
    for kernel in ("categorical_from_logits", "categorical_from_probs", "binary_from_logits", "binary_from_probs"):
        for layout in ("rows", "cols"):
            x, aux, kw = bf16_problem(kernel, 24, 37, np.random.default_rng(3), ls=0.1)
            aux16 = aux.astype(BF16)
            a = run(impl, kernel, x, aux16.astype(F32), layout=layout, grad=F32, **kw)
            b = run(impl, kernel, x, aux16, layout=layout, grad=F32, **kw)
            assert a.bad == b.bad and a.loss.tobytes() == b.loss.tobytes() and a.grad.tobytes() == b.grad.tobytes()


@needs_bf16
def test_bfloat16_with_the_sparse_extras(impl):
    """z_loss, softcap, lse and rank on bfloat16 logits against the reference, the
    gradient in float32 and in place; asking for lse changes no loss bit."""
    rng = np.random.default_rng(9)
    for layout in ("rows", "cols"):
        for c in (7, 3000):
            x = (rng.standard_normal((24, c)) * 5).astype(BF16)
            x[1, 2] = np.nan
            y = rng.integers(0, c, 24)
            y[::5] = IGNORE
            for opts in (dict(z_loss=1e-3), dict(z_loss=1e-3, softcap=4.0)):
                kw = dict(layout=layout, ignore=IGNORE, lse=True, rank=True, **opts)
                want = expect("sparse_from_logits", x, y, **kw)
                out = run(impl, "sparse_from_logits", x, y, grad=F32, **kw)
                check_extras(out, want, x.astype(F32), y, F32, opts, f"{impl} {layout} C={c} {opts}")
                inplace = run(impl, "sparse_from_logits", x, y, grad="inplace", x3=place(x, layout), **kw)
                assert inplace.loss.tobytes() == out.loss.tobytes()
                np.testing.assert_array_equal(inplace.rank, out.rank)
                assert_close(inplace.grad, want.grad, BF16_TOL, f"{impl} {layout} C={c} {opts} in place", atol=BF16_TOL)
            plain = run(impl, "sparse_from_logits", x, y, layout=layout, ignore=IGNORE)
            with_lse = run(impl, "sparse_from_logits", x, y, layout=layout, ignore=IGNORE, lse=True)
            assert plain.loss.tobytes() == with_lse.loss.tobytes()
