"""bfloat16 (ml_dtypes) y_pred in the Cython kernels, on every kernel table this CPU
runs: read in place as bits (<< 16 is the float32 value), computed in float32 as
float16 is, the gradient written in float32 or, into a bfloat16 grad_out (y_pred
itself included), rounded to nearest even.

References: the NumPy backend's kernels (float64, through ml_dtypes), with the float16
tolerances of the kernel tests (1e-5 of a result's scale); a bfloat16 gradient within
one bfloat16 rounding (2^-8 relative) of the reference. And an exact one: bfloat16
input gives the bits float32 input of the same values gives, except where the
softmax rows read the bits themselves (their sums run in another order).
"""

from __future__ import annotations

import numpy as np
import pytest

ext = pytest.importorskip("fastxent.backends._cython_ext")
ml_dtypes = pytest.importorskip("ml_dtypes")

import fastxent as fx  # noqa: E402
from fastxent._reduce import BLOCK_ROWS, block_sums  # noqa: E402
from fastxent.backends import numpy_backend  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
ISAS = ext.simd_info()["cpu_supports"]
KERNELS = ["sparse_from_logits", "sparse_from_probs", "categorical_from_logits", "categorical_from_probs",
           "binary_from_logits", "binary_from_probs"]
LAYOUTS = ["rows", "cols", "nchw", "odd", "negative", "unaligned"]
TOL = 1e-5  # float32 compute, as float16
BF16_TOL = 2.0**-8  # one rounding to bfloat16 (8 significant bits)


@pytest.fixture(params=ISAS)
def isa(request):
    ext._set_simd(request.param)
    yield request.param
    ext._set_simd("auto")


def view3(z, layout):
    """Rows z (N, C) as the kernels' (O, C, I) view laid out as `layout` (a copy)."""
    N, C = z.shape
    if layout == "rows":
        return np.ascontiguousarray(z)[:, :, None]
    if layout == "cols":
        return np.asfortranarray(z).T[None]
    if layout == "nchw":
        return np.ascontiguousarray(z.reshape(N // 4, 4, C).transpose(0, 2, 1))
    if layout == "odd":  # class stride of 3 elements
        big = np.zeros((N, 3 * C, 1), z.dtype)
        big[:, ::3, 0] = z
        return big[:, ::3]
    if layout == "negative":  # every axis backwards
        big = np.zeros((2 * N, C, 1), z.dtype)
        v = big[::-2, ::-1, ::-1]
        v[...] = z[:, :, None]
        return v
    if layout == "unaligned":  # one byte off the itemsize alignment
        buf = bytearray(z.nbytes + 1)
        out = np.frombuffer(buf, dtype=z.dtype, count=z.size, offset=1).reshape(N, C, 1)
        out[...] = z[:, :, None]
        return out
    raise ValueError(layout)


def view2(v, layout):
    N = v.shape[0]
    if layout == "cols":
        return np.ascontiguousarray(v)[None, :]
    if layout == "nchw":
        return np.ascontiguousarray(v.reshape(N // 4, 4))
    return np.ascontiguousarray(v)[:, None]


def rows3(a3):
    return np.moveaxis(np.asarray(a3), 1, 2).reshape(-1, a3.shape[1])


def grad_view(N, C, dtype, layout):
    g = view3(np.full((N, C), np.nan, dtype), "odd" if layout == "unaligned" else layout)
    return g


def problem(kernel, N, C, rng, ls=0.0):
    """(x rows as bfloat16 values, aux, class/pos weights, label smoothing): random
    data with the values each kernel family must treat specially."""
    binary = kernel.startswith("binary")
    if kernel.endswith("logits"):
        z = rng.standard_normal((N, C)) * 3
        z[1, 0] = np.nan
        z[2, C // 2] = -np.inf
        if not binary:
            z[3] = -np.inf
        z[5, 0] = 40.0  # a dominant class
    else:
        z = rng.uniform(0.001, 1.0, (N, C))
        if not binary:
            z /= z.sum(axis=1, keepdims=True)
        z[0, 0] = 0.0
        z[1, C - 1] = 1.0
        z[2, 0] = np.nan
    x = z.astype(BF16)
    if kernel.startswith("sparse"):
        aux = rng.integers(0, C, N)
        aux[::5] = -100
        aux[1] = 0
        aux[5] = 0
        weights = rng.uniform(0.5, 2.0, C)
    elif binary:
        aux = rng.integers(0, 2, (N, C)).astype(np.float32)
        aux.flat[::3] = rng.uniform(0, 1, aux.flat[::3].shape)
        weights = np.broadcast_to(rng.uniform(0.5, 2.0, (C, 1)), (C, 1))
    else:
        aux = rng.dirichlet(np.ones(C), N).astype(np.float32)
        weights = rng.uniform(0.5, 2.0, C)
    return x, aux, weights, ls


def run(module, kernel, x, aux, weights, ls, layout, *, grad=None, threads=1, block_sums=False, x3=None,
        grad_out=None, gw=None):
    """One kernel call on rows; returns (status, per-row losses or block sums, gradient
    rows as float64 or None)."""
    N, C = x.shape
    x3 = view3(x, layout) if x3 is None else x3
    I = x3.shape[2]
    gwv = view2(np.linspace(0.5, 1.5, N) if gw is None else gw, layout)
    loss = np.full(-(-N // BLOCK_ROWS) if block_sums else gwv.shape, -12345.0)
    g = grad_out
    if g is None and grad is not None:
        g = grad_view(N, C, grad, layout)
    kw = dict(block_sums=block_sums) if module is ext else {}
    if kernel.startswith("sparse"):
        args = (x3, view2(aux, layout), weights, ls, -100)
    elif kernel.startswith("binary"):
        pw = np.broadcast_to(np.asarray(weights, np.float64).reshape(C, 1), (C, I))
        args = (x3, view3(aux, layout), pw, ls)
    else:
        args = (x3, view3(aux, layout), weights, ls)
    if kernel.endswith("probs"):
        args = args + (1e-7,)
    r = getattr(module, kernel)(*args, gwv, loss, g, threads, **kw)
    return r, loss.reshape(-1), None if g is None else rows3(g).astype(np.float64)


def assert_close(got, want, rtol, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    finite = np.isfinite(want)
    scale = max(1.0, float(np.max(np.abs(want[finite])))) if finite.any() else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_bfloat16_matches_the_numpy_backend(isa, kernel, layout):
    """Loss, float32 gradient and bfloat16 gradient of every kernel, with and without
    label smoothing, short rows (column tasks), a few hundred classes and rows of
    several blocks, against the NumPy backend on the same bfloat16 input."""
    for C in (7, 300, 3000):
        for ls in (0.0, 0.1):
            if kernel.endswith("probs") and C == 3000 and ls == 0.0 and layout != "rows":
                continue  # the gather-log reads one value a row: covered by the other sizes
            rng = np.random.default_rng(C + int(ls * 10))
            x, aux, weights, ls = problem(kernel, 24, C, rng, ls)
            what = f"{isa} {kernel} {layout} C={C} ls={ls}"
            want = run(numpy_backend, kernel, x, aux, weights, ls, layout, grad=np.float64)
            if want[0] >= 0:  # an out-of-range probability: both report the same row
                assert run(ext, kernel, x, aux, weights, ls, layout)[0] == want[0], what
                continue
            loss_only = run(ext, kernel, x, aux, weights, ls, layout)
            got32 = run(ext, kernel, x, aux, weights, ls, layout, grad=np.float32)
            got16 = run(ext, kernel, x, aux, weights, ls, layout, grad=BF16)
            assert loss_only[0] == got32[0] == got16[0] == -1, what
            assert_close(loss_only[1], want[1], TOL, what + " loss")
            # the same loss bits with a gradient of either dtype (decision 8)
            assert loss_only[1].tobytes() == got32[1].tobytes() == got16[1].tobytes(), what
            assert_close(got32[2], want[2], TOL, what + " float32 gradient")
            assert_close(got16[2], want[2], BF16_TOL, what + " bfloat16 gradient")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_bfloat16_gives_the_bits_of_float32_input(isa, kernel, layout):
    """bfloat16 is widened exactly and then computed as float32 input is: the same
    bits (the softmax row kernels, which sum bfloat16 rows from their bits in another
    order, within float32 rounding); the bfloat16 gradient is the float32 one rounded
    to nearest even (ml_dtypes' rounding), NaN kept."""
    for C in (7, 300, 3000):
        x, aux, weights, ls = problem(kernel, 24, C, np.random.default_rng(C))
        x32 = x.astype(np.float32)
        a = run(ext, kernel, x32, aux, weights, ls, layout, grad=np.float32)
        b = run(ext, kernel, x, aux, weights, ls, layout, grad=np.float32)
        c = run(ext, kernel, x, aux, weights, ls, layout, grad=BF16)
        what = f"{isa} {kernel} {layout} C={C}"
        assert a[0] == b[0] == c[0], what
        if a[0] >= 0:
            continue
        reads_bits = kernel.endswith("logits") and not kernel.startswith("binary") and layout in ("rows", "negative")
        if reads_bits and C > 16:
            assert_close(b[1], a[1], TOL, what + " loss")
            assert_close(b[2], a[2], TOL, what + " gradient")
            a = b  # the bfloat16 gradient is the rounding of this one
        else:
            assert b[1].tobytes() == a[1].tobytes(), what + " loss"
            assert b[2].tobytes() == a[2].tobytes(), what + " gradient"
        want16 = a[2].astype(np.float32).astype(BF16)
        assert c[2].astype(BF16).tobytes() == want16.tobytes(), what + " bfloat16 gradient"


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("layout", ["rows", "cols", "nchw", "negative"])
def test_bfloat16_gradient_in_place(isa, kernel, layout):
    """grad_out = y_pred (bfloat16): the same bits as a separate bfloat16 gradient."""
    for C in (7, 300, 3000):
        x, aux, weights, ls = problem(kernel, 24, C, np.random.default_rng(C + 7))
        if kernel.endswith("probs"):
            x[2, 0] = 0.5  # in range: an out-of-range row leaves grad_out undefined
        want = run(ext, kernel, x, aux, weights, ls, layout, grad=BF16)
        x3 = view3(x, layout)
        got = run(ext, kernel, x, aux, weights, ls, layout, x3=x3, grad_out=x3)
        assert got[0] == want[0] == -1
        assert got[1].tobytes() == want[1].tobytes()
        assert got[2].tobytes() == want[2].tobytes(), f"{isa} {kernel} {layout} C={C}"


def test_rounding_to_bfloat16():
    """The gradient's rounding: to nearest, ties to even, overflow to inf, subnormals,
    signed zero, NaN kept -- as ml_dtypes rounds float32."""
    vals = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20, -(1.0 + 2**-8), 3.3895314e38,
                     3.4e38, -3.4e38, 1e-40, -1.5e-39, 0.0, -0.0, np.inf, -np.inf, np.nan], np.float32)
    # sparse_from_probs with C = 1 writes -w_y gw / p at the label; p = 0.5, w_y = 1 and
    # gw = -v / 2 route each value v (exact in float64) to the bfloat16 store
    p = np.full((len(vals), 1, 1), 0.5, BF16)
    gw = -0.5 * vals.astype(np.float64)[:, None]
    g = np.zeros((len(vals), 1, 1), BF16)
    loss = np.empty((len(vals), 1))
    ext.sparse_from_probs(p, np.zeros((len(vals), 1), np.int64), np.ones(1), 0.0, -1, 1e-7, gw, loss, g, 1)
    got = g.reshape(-1)
    want = vals.astype(BF16)
    finite = ~np.isnan(vals)
    assert got[finite].tobytes() == want[finite].tobytes()
    assert np.isnan(got[~finite].astype(np.float32)).all()


@pytest.mark.parametrize("layout", ["rows", "cols", "nchw"])
def test_bfloat16_threads_and_block_sums(isa, layout):
    """One and two threads give the same bits; block sums are NumPy's sums of the rows."""
    N, C = 2 * BLOCK_ROWS + 8, 40
    rng = np.random.default_rng(5)
    for kernel in ("sparse_from_logits", "binary_from_logits", "sparse_from_probs"):
        x, aux, weights, ls = problem(kernel, N, C, rng)
        if kernel.endswith("probs"):
            x[2, 0] = 0.5
        one = run(ext, kernel, x, aux, weights, ls, layout, grad=BF16)
        two = run(ext, kernel, x, aux, weights, ls, layout, grad=BF16, threads=2)
        assert one[1].tobytes() == two[1].tobytes() and one[2].tobytes() == two[2].tobytes()
        sums = run(ext, kernel, x, aux, weights, ls, layout, threads=2, block_sums=True)[1]
        assert sums.tobytes() == block_sums(one[1]).tobytes()


def test_bfloat16_targets_in_the_kernels(isa):
    """Dense targets in bfloat16 are read as float32 targets of the same values are."""
    for kernel in ("categorical_from_logits", "categorical_from_probs", "binary_from_logits", "binary_from_probs"):
        for layout in ("rows", "cols"):
            x, aux, weights, ls = problem(kernel, 24, 37, np.random.default_rng(3))
            aux16 = aux.astype(BF16)
            a = run(ext, kernel, x, aux16.astype(np.float32), weights, 0.1, layout, grad=np.float32)
            b = run(ext, kernel, x, aux16, weights, 0.1, layout, grad=np.float32)
            assert a[0] == b[0] and a[1].tobytes() == b[1].tobytes() and a[2].tobytes() == b[2].tobytes()


def test_bfloat16_with_the_sparse_extras(isa):
    """z_loss, softcap, lse and rank on bfloat16 logits, against the NumPy backend."""
    rng = np.random.default_rng(9)
    for layout in ("rows", "cols"):
        for C in (7, 3000):
            x = (rng.standard_normal((24, C)) * 3).astype(BF16)
            x[1, 2] = np.nan
            y = rng.integers(0, C, 24)
            y[::5] = -100
            outs = {}
            for name, module in (("cython", ext), ("numpy", numpy_backend)):
                x3 = view3(x, layout)
                loss = np.empty((x3.shape[0], x3.shape[2]))
                lse, rank = np.empty_like(loss), np.empty(loss.shape, np.int64)
                g = grad_view(24, C, np.float32 if module is ext else np.float64, layout)
                module.sparse_from_logits(x3, view2(y, layout), np.ones(C), 0.0, -100, np.ones(loss.shape), loss, g,
                                          1, z_loss=1e-3, lse_out=lse, rank_out=rank)
                outs[name] = (loss.reshape(-1), rows3(g), lse.reshape(-1), rank.reshape(-1))
            got, want = outs["cython"], outs["numpy"]
            for a, b, what in zip(got[:3], want[:3], ("loss", "grad", "lse")):
                assert_close(a, b, TOL, f"{layout} C={C} {what}")
            np.testing.assert_array_equal(got[3], want[3])
            # asking for lse and ranks changes no bit of the loss (decision 8)
            plain = run(ext, "sparse_from_logits", x, y, np.ones(C), 0.0, layout)[1]
            x3 = view3(x, layout)
            loss = np.empty((x3.shape[0], x3.shape[2]))
            ext.sparse_from_logits(x3, view2(y, layout), np.ones(C), 0.0, -100, view2(np.linspace(0.5, 1.5, 24), layout),
                                   loss, None, 1, lse_out=np.empty_like(loss))
            assert loss.reshape(-1).tobytes() == plain.tobytes()


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
    np.testing.assert_allclose(got, want, rtol=TOL)
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
        np.testing.assert_allclose(got, want, rtol=TOL)
