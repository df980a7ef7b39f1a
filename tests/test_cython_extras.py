"""sparse_from_logits' optional keywords on the Cython kernels (KERNELS.md): z_loss,
softcap, lse_out and rank_out, on every kernel table this CPU runs.

The reference is the NumPy backend's kernel (the readable statement of each formula,
computed in float64), called with the same arguments; edge cases whose exact values
float64 cannot produce (a dominant class under z_loss) are checked against mpmath.

Tolerances: float64 1e-12 of a result's scale; float32/float16 input 1e-5 (the
kernels compute in float32: ~1e-7 per operation). Ranks are integers and compared
exactly, except where float32 softcap may merge two logits the float64 reference
keeps apart (then the rank must lie between the counts of the logits clearly above
the label's and of those not clearly below it).
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

ext = pytest.importorskip("fastxent.backends._cython_ext")

from fastxent._reduce import BLOCK_ROWS, block_sums  # noqa: E402
from fastxent.backends import numpy_backend  # noqa: E402

ISAS = ext.simd_info()["cpu_supports"]
IGNORE = -100
DTYPES = [np.float64, np.float32, np.float16]
LAYOUTS = ["rows", "cols", "nchw", "odd"]


@pytest.fixture(params=ISAS)
def isa(request):
    ext._set_simd(request.param)
    yield request.param
    ext._set_simd("auto")


def view3(z, layout):
    """Rows z (N, C) as the kernels' (O, C, I) view in a memory layout: "rows" (N, C, 1)
    C-ordered, "cols" (1, C, N) over a Fortran-ordered copy, "nchw" (N/4, C, 4), "odd"
    (N, C, 1) with a class stride of 3 elements."""
    N, C = z.shape
    if layout == "rows":
        return np.ascontiguousarray(z)[:, :, None]
    if layout == "cols":
        return np.asfortranarray(z).T[None]
    if layout == "nchw":
        return np.ascontiguousarray(z.reshape(N // 4, 4, C).transpose(0, 2, 1))
    big = np.zeros((N, 3 * C, 1), z.dtype)
    big[:, ::3, 0] = z
    return big[:, ::3]


def view2(v, layout):
    """Per-row values (N,) as the (O, I) array matching ``view3``."""
    N = v.shape[0]
    if layout == "cols":
        return np.ascontiguousarray(v)[None, :]
    if layout == "nchw":
        return np.ascontiguousarray(v.reshape(N // 4, 4))
    return np.ascontiguousarray(v)[:, None]


def rows3(a3):
    """(O, C, I) -> (O*I, C) in flat row order."""
    return np.moveaxis(np.asarray(a3), 1, 2).reshape(-1, a3.shape[1])


def run(kernel, z, y, *, layout="rows", cw=None, ls=0.0, gw=None, grad=False, threads=1, block_sums=False,
        grad_dtype=None, **extras):
    """One sparse_from_logits call on rows z (N, C) and labels y (N,) through ``kernel``
    (the Cython extension or the NumPy backend); returns (per-row losses or block
    sums, gradient rows or None, lse, rank), outputs as float64/int64 rows."""
    N, C = z.shape
    x3 = view3(z, layout)
    labels = view2(y, layout)
    gwv = view2(np.ones(N) if gw is None else gw, layout)
    loss = np.full(-(-N // BLOCK_ROWS) if block_sums else gwv.shape, -12345.0)
    g = None
    if grad:
        gdt = grad_dtype or (np.float64 if z.dtype == np.float64 else np.float32)
        g = view3(np.full((N, C), np.nan, gdt), layout)
    kw = {}
    lse = rank = None
    if "z_loss" in extras:
        kw["z_loss"] = extras["z_loss"]
    if "softcap" in extras:
        kw["softcap"] = extras["softcap"]
    if extras.get("lse"):
        lse = kw["lse_out"] = np.full(gwv.shape, -777.0)
    if extras.get("rank"):
        rank = kw["rank_out"] = np.full(gwv.shape, -777, np.int64)
    cw = np.ones(C) if cw is None else cw
    if kernel is ext:
        r = ext.sparse_from_logits(x3, labels, cw, ls, IGNORE, gwv, loss, g, threads, block_sums=block_sums, **kw)
    else:
        r = kernel.sparse_from_logits(x3, labels, cw, ls, IGNORE, gwv, loss, g, threads, **kw)
    assert r == -1
    out = (loss.reshape(-1), None if g is None else rows3(g).astype(np.float64),
           None if lse is None else lse.reshape(-1), None if rank is None else rank.reshape(-1))
    return out


def special_rows(rng, N, C, dtype):
    """Random logits and labels with the rows every kernel must get right: an ignored
    row holding a NaN, a NaN row, a +inf row, an all -inf row, masked (-inf) classes,
    a dominant label, ties at the label, an all-equal row and an ignored plain row."""
    z = rng.standard_normal((N, C)) * 3
    y = rng.integers(0, C, N)
    inf = np.inf
    z[0, C // 2] = np.nan
    y[0] = IGNORE
    z[1, C - 1] = np.nan
    z[2, C // 3] = inf
    z[3] = -inf
    z[4, ::3] = -inf
    y[4] = 1
    y[5] = C // 2
    z[5, y[5]] = 60.0 if dtype == np.float64 else 30.0
    z[6] = np.round(z[6] / 2)
    y[6] = int(np.argmax(z[6] == z[6].max()))  # one of the top ties
    z[6, -1] = z[6].max()  # a tie after it
    z[7] = 0.5
    y[7] = C - 1
    y[8] = IGNORE
    return z.astype(dtype), y


def tol(dtype):
    return 1e-12 if dtype == np.float64 else 1e-5


def assert_close(got, want, rtol, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    finite = np.isfinite(want)
    scale = max(1.0, float(np.max(np.abs(want[finite])))) if finite.any() else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


def rank_window(z, y, cap, dtype):
    """For float32/16 with softcap: the rank is between the classes clearly above the
    label's capped logit and those not clearly below it (float32 rounding may merge
    neighbours the float64 reference keeps apart)."""
    zc = cap * np.tanh(z.astype(np.float64) / cap)
    valid = y != IGNORE
    zy = zc[np.arange(len(y)), np.where(valid, y, 0)][:, None]
    slack = 4e-7 * cap
    lo = (zc > zy + slack).sum(axis=1)
    hi = (zc >= zy - slack).sum(axis=1) - 1  # not the label itself
    nan = np.isnan(zc).any(axis=1)
    return np.where(valid, np.where(nan, z.shape[1], lo), -1), np.where(valid, np.where(nan, z.shape[1], hi), -1)


OPTIONS = [
    dict(z_loss=1e-2),
    dict(softcap=5.0),
    dict(lse=True),
    dict(rank=True),
    dict(z_loss=1e-3, softcap=3.0, lse=True, rank=True),
    dict(z_loss=2e-2, softcap=30.0, lse=True, rank=True, ls=0.1, cw="random"),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_extras_match_the_numpy_backend(isa, dtype, layout):
    """Loss, gradient, lse and rank of every option alone and together, loss only and
    with a gradient, on short rows (column tasks, the copied tile), rows of a few
    hundred classes (column tasks without the tile) and rows of several blocks."""
    for C in (7, 37, 300, 3000):
        rng = np.random.default_rng(C)
        N = 24
        z, y = special_rows(rng, N, C, dtype)
        gw = rng.uniform(0.5, 1.5, N)
        for opts in OPTIONS:
            opts = dict(opts)
            cw = rng.uniform(0.2, 2.0, C) if opts.pop("cw", None) else None
            ls = opts.pop("ls", 0.0)
            for grad in (False, True):
                what = f"{isa} {np.dtype(dtype).name} {layout} C={C} {opts} ls={ls} grad={grad}"
                got = run(ext, z, y, layout=layout, cw=cw, ls=ls, gw=gw, grad=grad, **opts)
                want = run(numpy_backend, z, y, layout=layout, cw=cw, ls=ls, gw=gw, grad=grad,
                           grad_dtype=np.float64, **opts)
                if grad:  # an ignored row's gradient is 0 whatever x holds (the NumPy backend
                    want[1][y == IGNORE] = 0.0  # multiplies softcap's factor, NaN there, after)
                assert_close(got[0], want[0], tol(dtype), what + " loss")
                if grad:
                    assert_close(got[1], want[1], tol(dtype), what + " grad")
                if opts.get("lse"):
                    assert_close(got[2], want[2], tol(dtype), what + " lse")
                if opts.get("rank"):
                    if dtype != np.float64 and "softcap" in opts:
                        lo, hi = rank_window(z, y, opts["softcap"], dtype)
                        assert ((lo <= got[3]) & (got[3] <= hi)).all(), what + " rank"
                    else:
                        np.testing.assert_array_equal(got[3], want[3], err_msg=what + " rank")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_ranks_with_ties(isa, dtype, layout):
    """Integer logits (many ties, exact in every dtype, after softcap too): a class
    equal to the label's counts only at a lower index, as np.argmax breaks ties; a
    NaN anywhere gives C, +inf is counted like any larger logit, ignored rows -1."""
    rng = np.random.default_rng(3)
    for C in (5, 37, 3000):
        z = rng.integers(-3, 4, (48, C)).astype(np.float64)
        y = rng.integers(0, C, 48)
        z[1, 2] = np.nan
        z[2, 0] = np.inf
        z[3, :] = -np.inf
        y[4] = IGNORE
        z = z.astype(dtype)
        for cap in (None, 4.0):
            zc = z.astype(np.float64) if cap is None else cap * np.tanh(z.astype(np.float64) / cap)
            want = np.array([
                -1 if yy == IGNORE else C if np.isnan(row).any()
                else int((row > row[yy]).sum() + (row[:yy] == row[yy]).sum())
                for row, yy in zip(zc, y)
            ])
            kw = dict(rank=True) if cap is None else dict(rank=True, softcap=cap)
            for grad in (False, True):
                got = run(ext, z, y, layout=layout, grad=grad, **kw)[3]
                np.testing.assert_array_equal(got, want, err_msg=f"{isa} {layout} C={C} cap={cap} grad={grad}")


def test_softcap_limits(isa):
    """softcap turns +-inf into +-cap (finite rows), leaves NaN NaN, and the
    gradient's factor 1 - tanh^2 is exactly 0 where tanh rounds to 1."""
    for dtype in DTYPES:
        for layout in ("rows", "cols", "odd"):
            z = np.array([[1e4, -1e4, 0.0, 1.0], [np.inf, 0.0, -np.inf, 2.0], [np.nan, 0.0, 1.0, 1.0],
                          [-np.inf, -np.inf, -np.inf, -np.inf]] * 2, dtype)
            y = np.array([1, 0, 2, 3] * 2)
            loss, g, lse, rank = run(ext, z, y, layout=layout, grad=True, softcap=30.0, lse=True, rank=True)
            want_lse = 30.0 + np.log1p(np.exp(-30.0) + np.exp(-30 * (1 - np.tanh(1 / 30))) + np.exp(-60.0))
            np.testing.assert_allclose(lse[0], want_lse, rtol=tol(dtype))
            np.testing.assert_allclose(loss[0], want_lse + 30.0, rtol=tol(dtype))
            assert np.isfinite(loss[[0, 1, 3]]).all() and np.isnan(loss[2]) and np.isnan(lse[2])
            assert g[0, 0] == 0 and g[0, 1] == 0 and g[1, 0] == 0 and g[1, 2] == 0
            assert np.isfinite(g[[0, 1, 3]]).all() and np.isnan(g[2]).all()
            np.testing.assert_array_equal(rank[:4], [3, 0, 4, 3])
            np.testing.assert_allclose(lse[3], -30.0 + np.log(4), rtol=tol(dtype))  # all -inf: all -30


def test_tanh_against_numpy(isa):
    """The kernels' tanh (through softcap with cap 1: z = tanh(x)), at every scale:
    float64 within 4 ulp, float32 within 4 ulp of float32's tanh."""
    x = np.concatenate([np.geomspace(1e-300, 40, 2000), [0.0, 1e-320, 0.3, 0.34657, 0.35, 0.5493, 0.55, 20.5]])
    x = np.concatenate([x, -x])
    for dtype, ulps in ((np.float64, 4), (np.float32, 4)):
        xd = x.astype(dtype)
        xd = xd[np.abs(xd) < np.finfo(dtype).max]
        z = xd.reshape(-1, 1)
        # one class per row: the lse is the capped logit itself
        _, _, lse, _ = run(ext, z, np.zeros(len(z), int), lse=True, softcap=1.0)
        want = np.tanh(xd.astype(np.float64)).astype(dtype)
        err = np.abs(lse.astype(dtype).astype(np.float64) - want) / np.spacing(np.abs(want).astype(dtype))
        assert err.max() <= ulps, (dtype, xd[np.argmax(err)], err.max())
        nonzero = xd != 0  # (lse = m + log1p(0) turns -0 into +0)
        assert np.array_equal(np.signbit(lse[nonzero]), np.signbit(xd[nonzero]))


def mp_z_loss(z, k, zl):
    """(loss, gradient) of -log softmax(z)_k + zl * lse^2 at 400 digits."""
    with mpmath.workdps(400):
        zz = [mpmath.mpf(float(v)) for v in z]
        m = max(zz)
        lse = m + mpmath.log(mpmath.fsum(mpmath.e ** (v - m) for v in zz))
        loss = lse - zz[k] + zl * lse**2
        grad = [(1 + 2 * zl * lse) * mpmath.e ** (v - lse) - (1 if c == k else 0) for c, v in enumerate(zz)]
        return float(loss), np.array([float(g) for g in grad])


@pytest.mark.parametrize("layout", ["rows", "cols", "odd"])
def test_dominant_class_with_z_loss(isa, layout):
    """A label far above the others: the gradient at it is -(A + 2 z lse) R / S + 2 z lse
    with R / S tiny, exact on every entry, including where 2 z lse is tiny itself."""
    cases = [
        (np.float64, [100.0, 0.0, -5.0, 3.0], 0, 1e-4, 1e-12),
        (np.float64, [0.0, -100.0, -105.0, -97.0], 0, 1e-2, 1e-12),
        (np.float64, [0.0, 700.0, 690.0], 1, 1e-5, 1e-12),
        (np.float32, [30.0, 0.0, -2.0], 0, 1e-3, 1e-5),
        (np.float32, [0.0, -40.0, -25.0, -25.0], 0, 1e-2, 1e-5),
    ]
    for dtype, z, k, zl, rt in cases:
        zz = np.array([z] * 4, dtype)  # 4 rows: the nchw-style inner axis is not needed here
        want_loss, want_grad = mp_z_loss(zz[0], k, zl)
        loss, g, lse, _ = run(ext, zz, np.full(4, k), layout=layout, grad=True, z_loss=zl, lse=True)
        np.testing.assert_allclose(loss, want_loss, rtol=rt)
        for row in g:
            np.testing.assert_allclose(row, want_grad, rtol=rt, atol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_extras_do_not_change_the_loss_or_gradient(isa, layout):
    """Asking for lse and ranks changes no bit of the loss or gradient (the X kernels
    form them as the plain ones do), and z_loss = 0, softcap = 0 are the plain call."""
    for dtype in DTYPES:
        for C in (7, 300, 3000):
            z, y = special_rows(np.random.default_rng(C + 1), 24, C, dtype)
            for grad in (False, True):
                plain = run(ext, z, y, layout=layout, grad=grad)
                extra = run(ext, z, y, layout=layout, grad=grad, lse=True, rank=True)
                zeros = run(ext, z, y, layout=layout, grad=grad, z_loss=0.0, softcap=0.0)
                for got in (extra, zeros):
                    assert got[0].tobytes() == plain[0].tobytes()
                    if grad:
                        assert got[1].tobytes() == plain[1].tobytes()


@pytest.mark.parametrize("layout", ["rows", "cols", "nchw"])
def test_threads_and_block_sums_keep_the_bits(isa, layout):
    """Two threads give the same bits as one; block sums are NumPy's sums of the rows."""
    N = 2 * BLOCK_ROWS + 8
    C = 9
    rng = np.random.default_rng(11)
    z = (rng.standard_normal((N, C)) * 4).astype(np.float32)
    y = rng.integers(0, C, N)
    y[::7] = IGNORE
    opts = dict(z_loss=1e-3, softcap=6.0, lse=True, rank=True)
    one = run(ext, z, y, layout=layout, grad=True, **opts)
    two = run(ext, z, y, layout=layout, grad=True, threads=2, **opts)
    for a, b in zip(one, two):
        assert a.tobytes() == b.tobytes()
    sums = run(ext, z, y, layout=layout, threads=2, block_sums=True, **opts)[0]
    assert sums.tobytes() == block_sums(one[0]).tobytes()


def test_in_place_gradient_with_softcap(isa):
    """grad_out = x: the derivative factors come from x before it is overwritten."""
    for layout in ("rows", "cols"):
        for C in (7, 300, 3000):
            z, y = special_rows(np.random.default_rng(C + 2), 24, C, np.float32)
            want = run(ext, z, y, layout=layout, grad=True, softcap=4.0, z_loss=1e-3, lse=True, rank=True)
            x3 = view3(z, layout)
            loss = np.empty((x3.shape[0], x3.shape[2]))
            lse = np.empty_like(loss)
            rank = np.empty(loss.shape, np.int64)
            ext.sparse_from_logits(x3, view2(y, layout), np.ones(C), 0.0, IGNORE, np.ones(loss.shape), loss, x3, 1,
                                   softcap=4.0, z_loss=1e-3, lse_out=lse, rank_out=rank)
            assert loss.reshape(-1).tobytes() == want[0].tobytes()
            assert rows3(x3).astype(np.float64).tobytes() == want[1].tobytes()
            assert lse.reshape(-1).tobytes() == want[2].tobytes()
            assert rank.reshape(-1).tobytes() == want[3].tobytes()


def test_bad_extra_outputs_are_refused():
    z = np.zeros((4, 3), np.float32)
    args = (z[:, :, None], np.zeros((4, 1), np.int64), np.ones(3), 0.0, -1, np.ones((4, 1)), np.empty((4, 1)), None, 1)
    with pytest.raises(ValueError, match="lse_out"):
        ext.sparse_from_logits(*args, lse_out=np.empty((4, 1), np.float32))
    with pytest.raises(ValueError, match="rank_out"):
        ext.sparse_from_logits(*args, rank_out=np.empty((4, 1), np.int32))
    with pytest.raises(ValueError, match="shape"):
        ext.sparse_from_logits(*args, lse_out=np.empty((3, 1)))
