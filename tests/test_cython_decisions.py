"""The lead's kernel decisions (helper brief, decisions 1-9) on the Cython kernels.

Each test below failed on the kernels before the decision was carried out. The
references are plain float64 formulas (NumPy, SciPy); every test runs with each
kernel table this CPU can execute (the ``isa`` fixture), and in the row form and
the column form of the kernels (``rows``: class axis contiguous; ``cols``: inner
axis contiguous, a Fortran-ordered ``(N, C)``).
"""

from __future__ import annotations

import numpy as np
import pytest

ext = pytest.importorskip("fastxent.backends._cython_ext")

from fastxent._reduce import BLOCK_ROWS  # noqa: E402

ISAS = ext.simd_info()["cpu_supports"]
RNG = np.random.default_rng(20250301)


@pytest.fixture(params=ISAS)
def isa(request):
    ext._set_simd(request.param)
    yield request.param
    ext._set_simd("auto")


def view3(a2, layout):
    """An (N, C) array as the kernels' (O, C, I) view: (N, C, 1) C-ordered ("rows"),
    or (1, C, N) over a Fortran-ordered copy ("cols")."""
    a2 = np.asarray(a2)
    if layout == "rows":
        return np.ascontiguousarray(a2)[:, :, None]
    return np.asfortranarray(a2).T[None, :, :]


def view2(a1, layout):
    """Per-row values (N,) as the (O, I) array matching ``view3``."""
    a1 = np.asarray(a1)
    return a1[:, None].copy() if layout == "rows" else a1[None, :].copy()


def run(kernel, x, aux, *, layout="rows", cw=None, pw=None, ls=0.0, ignore=-1, eps=1e-7, gw=None,
        grad=False, threads=1, block_sums=False):
    """One kernel call on (N, C) inputs; returns (status, per-row losses or block
    sums, gradient as (N, C) or None)."""
    x = np.asarray(x)
    N, C = x.shape
    x3 = view3(x, layout)
    sparse = kernel.startswith("sparse")
    a = view2(aux, layout) if sparse else view3(aux, layout)
    gw = view2(np.ones(N) if gw is None else gw, layout)
    loss = np.full(-(-N // BLOCK_ROWS) if block_sums else gw.shape, -12345.0)
    g = None
    if grad:
        g = view3(np.full((N, C), np.nan, np.float64 if x.dtype == np.float64 else np.float32), layout)
    cw = np.ones(C) if cw is None else np.asarray(cw, np.float64)
    if pw is None:
        pw = np.ones(C)
    pw = np.broadcast_to(np.asarray(pw, np.float64).reshape(C, 1), (C, x3.shape[2]))
    kw = dict(block_sums=block_sums)
    if kernel == "sparse_from_logits":
        r = ext.sparse_from_logits(x3, a, cw, ls, ignore, gw, loss, g, threads, **kw)
    elif kernel == "sparse_from_probs":
        r = ext.sparse_from_probs(x3, a, cw, ls, ignore, eps, gw, loss, g, threads, **kw)
    elif kernel == "categorical_from_logits":
        r = ext.categorical_from_logits(x3, a, cw, ls, gw, loss, g, threads, **kw)
    elif kernel == "categorical_from_probs":
        r = ext.categorical_from_probs(x3, a, cw, ls, eps, gw, loss, g, threads, **kw)
    elif kernel == "binary_from_logits":
        r = ext.binary_from_logits(x3, a, pw, ls, gw, loss, g, threads, **kw)
    else:
        r = ext.binary_from_probs(x3, a, pw, ls, eps, gw, loss, g, threads, **kw)
    grad_rows = None if g is None else (g[:, :, 0] if layout == "rows" else g[0].T).astype(np.float64)
    return r, loss.reshape(-1), grad_rows


LAYOUTS = ["rows", "cols"]


# ---------------------------------------------------------------------- decision 1


def sigmoid(z):
    """Logistic sigmoid without flushing to 0 (scipy's expit(-740) is 0)."""
    z = np.asarray(z, np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z < 0, e / (1 + e), 1 / (1 + e))


def ref_bce_logits(z, t, ls=0.0, pw=1.0):
    """Element losses and gradients (mean over C) in float64, targets smoothed in float64."""
    z = np.asarray(z, np.float64)
    y = np.asarray(t, np.float64) * (1 - ls) + ls / 2
    loss = (1 - y) * np.logaddexp(0, z) + pw * y * np.logaddexp(0, -z)
    grad = (1 - y) * sigmoid(z) - pw * y * sigmoid(-z)
    C = z.shape[1]
    return loss.mean(axis=1), grad / C


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_binary_targets_formed_in_float64(isa, layout, dtype):
    """y = t(1-ls) + ls/2 and 1 - y in float64: a target 1 - 1e-9 on a logit of 1e4
    costs (1 - t) * 1e4 = 1e-5 (not 0, nor 1e-5 to 7 digits); 1 - 1e-6 is not
    rounded to float32 first (1.2% off); label_smoothing=1e-9 is not dropped."""
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    t = np.array([[1 - 1e-9, 1e-9, 1 - 1e-6, 0.3], [1 - 1e-9, 1e-9, 1 - 1e-6, 0.7]] * 10)
    z = np.array([[1e4, -1e4, 20.0, 7.0], [3e3, -3e3, 9.0, -11.0]] * 10).astype(dtype)
    zf = z.astype(np.float64)
    for pw in (1.0, 1.7):  # the short form of pos_weight 1 and the general one
        for C in (1, 4):  # one label (flat) and four
            want_loss, want_grad = ref_bce_logits(zf[:, :C], t[:, :C], pw=pw)
            for grad in (False, True):
                r, loss, g = run("binary_from_logits", z[:, :C], t[:, :C], layout=layout, pw=np.full(C, pw),
                                 grad=grad)
                assert r == -1
                np.testing.assert_allclose(loss, want_loss, rtol=rtol, err_msg=f"pw={pw} C={C}")
                if grad:
                    np.testing.assert_allclose(g, want_grad, rtol=rtol, atol=1e-300)
    # label_smoothing = 1e-9 on hard targets: y = 1 - 5e-10 and 5e-10, never rounded away
    t = np.array([[1.0, 0.0]] * 20)
    z = np.array([[1e4, -1e4]] * 20).astype(dtype)
    want_loss, _ = ref_bce_logits(z.astype(np.float64), t, ls=1e-9)
    _, loss, _ = run("binary_from_logits", z, t, layout=layout, ls=1e-9)
    np.testing.assert_allclose(loss, want_loss, rtol=rtol)
    assert abs(want_loss[0] - 5e-6) < 1e-12


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_binary_probs_targets_formed_in_float64(isa, layout, dtype):
    """From probabilities: the (1 - y) log(1 - p) term of a target 1 - 1e-9 survives
    in float32 too (1.4% and 0.7% of these losses)."""
    ct = np.float64 if dtype == np.float64 else np.float32
    p = np.array([[0.999999, 0.99999], [0.999, 1e-3]] * 10).astype(dtype)
    t = np.array([[1 - 1e-9, 1 - 1e-9], [1 - 1e-6, 1e-6]] * 10)
    pc = p.astype(np.float64)
    one_minus = (ct(1) - p.astype(ct)).astype(np.float64)  # 1 - p in the compute dtype
    want = (-(t * np.log(pc) + (1 - t) * np.log(one_minus))).mean(axis=1)
    for grad in (False, True):
        r, loss, _ = run("binary_from_probs", p, t, layout=layout, grad=grad)
        assert r == -1
        np.testing.assert_allclose(loss, want, rtol=1e-12 if dtype == np.float64 else 2e-6)


# ---------------------------------------------------------------------- decision 2


@pytest.mark.parametrize("block_sums", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernel", ["binary_from_logits", "binary_from_probs"])
def test_binary_target_out_of_range_is_reported(isa, kernel, layout, threads, block_sums):
    """A target outside [0, 1] is reported as the first such row, as an
    out-of-range probability is; NaN is not out of range; float64 targets just
    above 1 are seen as such with float32 input."""
    N, C = 3000, 3
    x = RNG.uniform(0.01, 0.99, (N, C)).astype(np.float32)
    t = RNG.integers(0, 2, (N, C)).astype(np.float64)
    t[5, 1] = np.nan
    for bad in ([N - 2], [2000, 17], [0]):
        tb = t.copy()
        for j, row in enumerate(bad):
            tb[row, j % C] = (-0.25, 1 + 1e-12, 7.0)[j % 3]
        for grad in (False, True):
            r, _, _ = run(kernel, x, tb, layout=layout, threads=threads, grad=grad, block_sums=block_sums)
            assert r == min(bad), (bad, grad)
    r, _, _ = run(kernel, x, t, layout=layout, threads=threads)
    assert r == -1  # NaN targets are not range errors


@pytest.mark.parametrize("kernel", ["binary_from_logits", "binary_from_probs"])
def test_binary_target_dtypes_range(kernel):
    x = np.full((40, 2), 0.5, np.float32)
    for dtype, bad_value in (("uint8", 2), ("int8", -1), ("int64", 2), ("uint64", 3), ("float16", 1.001)):
        t = np.zeros((40, 2), dtype)
        t[33, 1] = bad_value
        for layout in LAYOUTS:
            assert run(kernel, x, t, layout=layout)[0] == 33, dtype
    for layout in LAYOUTS:
        assert run(kernel, x, np.ones((40, 2), bool), layout=layout)[0] == -1  # bool never fails


# ---------------------------------------------------------------------- decision 3


UNUSED_WEIGHTS = [np.inf, -np.inf, np.nan, 1e308]


@pytest.mark.parametrize("layout", LAYOUTS + ["short"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_unused_class_weights_do_not_matter(isa, layout, dtype):
    """An inf, NaN or 1e308 class weight on a class whose target coefficient is 0
    changes nothing: the same bits as a weight of 1 there (sparse without label
    smoothing: every class but the label; categorical: zero targets, ls = 0)."""
    N, C = 48 if layout == "short" else 40, 6 if layout == "short" else 37
    layout = "rows" if layout == "short" else layout  # 6 classes: the column form
    probs = RNG.dirichlet(np.ones(C), N)
    logits = RNG.standard_normal((N, C)) * 3
    labels = RNG.integers(0, C - 1, N)  # the last class is never a label
    onehot = np.eye(C)[labels]
    cases = [("sparse_from_logits", logits, labels), ("sparse_from_probs", probs, labels),
             ("categorical_from_logits", logits, onehot), ("categorical_from_probs", probs, onehot)]
    for kernel, x, aux in cases:
        x = x.astype(dtype)
        cw_ok = RNG.uniform(0.5, 2, C)
        cw_ok[-1] = 1.0
        for grad in (False, True):
            _, want_loss, want_g = run(kernel, x, aux, layout=layout, cw=cw_ok, grad=grad)
            for w in UNUSED_WEIGHTS:
                cw = cw_ok.copy()
                cw[-1] = w
                _, loss, g = run(kernel, x, aux, layout=layout, cw=cw, grad=grad)
                assert np.isfinite(loss).all(), (kernel, w)
                assert loss.tobytes() == want_loss.tobytes(), (kernel, w, grad)
                assert not grad or g.tobytes() == want_g.tobytes(), (kernel, w)


# ---------------------------------------------------------------------- decision 4


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_all_masked_row_takes_the_sign_of_A(isa, layout, dtype):
    """Every logit -inf: loss A * inf (-inf for A < 0, +inf for A > 0, 0 for A == 0),
    gradient row NaN when A != 0, 0 when A == 0."""
    inf = np.inf
    C = 5
    z = np.full((20, C), -inf, dtype)
    z[1::2] = RNG.standard_normal((10, C))  # other rows finite
    lay = layout
    for cw, want in (([-1.0, 2, 3, 4, 5], -inf), ([1.0, 2, 3, 4, 5], inf), ([0.0, 2, 3, 4, 5], 0.0)):
        sparse = run("sparse_from_logits", z, np.zeros(20, np.int64), layout=lay, cw=cw, grad=True)
        dense = run("categorical_from_logits", z, np.eye(C)[np.zeros(20, int)], layout=lay, cw=cw, grad=True)
        for _, loss, g in (sparse, dense):
            assert (loss[::2] == want).all(), (cw, loss[::2])
            assert np.isfinite(loss[1::2]).all()
            if want == 0:
                assert (g[::2] == 0).all()
            else:
                assert np.isnan(g[::2]).all()
    # a long row (several blocks of the row form) with mixed signs among its masked classes
    C = 5000
    z = np.full((1, C), -inf, dtype)
    z[0, 4000] = 0.0
    t = np.zeros((1, C))
    t[0, [10, 20, 4000]] = [0.5, 0.25, 0.25]
    for cw10, cw20, want in ((1.0, 1.0, inf), (-1.0, -1.0, -inf), (1.0, -1.0, np.nan)):
        cw = np.ones(C)
        cw[[10, 20]] = cw10, cw20
        _, loss, _ = run("categorical_from_logits", z, t, cw=cw)
        assert np.array_equal(loss, [want], equal_nan=True), (cw10, cw20, loss)


# ---------------------------------------------------------------------- decision 6


def within_ulp(got, want):
    """Within one unit in the last place of want (subnormal units included)."""
    got, want = np.broadcast_arrays(np.asarray(got, np.float64), np.asarray(want, np.float64))
    return bool((np.abs(got - want) <= np.spacing(np.abs(want))).all())


@pytest.mark.parametrize("layout", LAYOUTS + ["short"])
def test_float64_subnormal_losses(isa, layout):
    """float64 keeps gradual underflow: the losses and gradients NumPy gives."""
    short = layout == "short"
    lay = "rows" if short else layout
    n = 32
    # binary: softplus(-745) = exp(-745) = 5e-324, softplus(-740) = 4.2e-322
    for x, t in ((745.0, 1.0), (-745.0, 0.0), (740.0, 1.0), (-708.9, 0.0)):
        z = np.full((n, 1), x)
        for grad in (False, True):
            _, loss, g = run("binary_from_logits", z, np.full((n, 1), t), layout=lay, grad=grad)
            want = np.logaddexp(0.0, -abs(x))
            assert want > 0 and within_ulp(loss, want), (x, loss[0], want)
            if grad:
                assert within_ulp(g[:, 0], (1 - t) * sigmoid(x) - t * sigmoid(-x))
    # softmax: [0, -740] with label 0: log1p(exp(-740)) = 4.2e-322
    C = 3 if short else 40
    z = np.full((n, C), -800.0)
    z[:, 0], z[:, 1] = 0.0, -740.0
    want = np.log1p(np.exp(-740.0))
    assert want > 0
    for kernel, aux in (("sparse_from_logits", np.zeros(n, np.int64)), ("categorical_from_logits", np.eye(C)[[0] * n])):
        for grad in (False, True):
            _, loss, g = run(kernel, z, aux, layout=lay, grad=grad)
            assert within_ulp(loss, want), (kernel, loss[0])
            if grad:
                assert within_ulp(g[:, 1], np.exp(-740.0)) and (g[:, 2] == 0).all()


def test_float64_exp_keeps_subnormals(isa):
    """The vector exp of the kernels (kind 1: x <= 0) against NumPy's down to the
    last subnormal, and 0 beyond."""
    x = -np.concatenate([np.linspace(700, 746, 4001), [708.39, 708.4, 744.44, 745.13, 745.14, 800, np.inf]])
    got = ext._vexp(x, 1)
    want = np.exp(x)
    ulp = np.spacing(np.maximum(want, 5e-324))
    assert (np.abs(got - want) <= ulp).all()
    assert (got[want > 0] > 0).all()


# ---------------------------------------------------------------------- decision 7


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernel,ls", [("sparse_from_logits", 0.0), ("sparse_from_logits", 0.1),
                                       ("sparse_from_probs", 0.0), ("sparse_from_probs", 0.1)])
def test_ignore_index_compares_labels_as_int64(kernel, ls, layout, dtype):
    """uint64 labels 2**64 - 1 equal ignore_index -1 ((int64_t)v wraps); uint32 labels
    2**32 - 1 equal 4294967295 and not -1. Ignored rows: loss 0, gradient 0. (The
    column form read labels through the compute type: float32 turned 2**32 - 1 into
    2**32, which was then used as a class index.)"""
    N, C = 64, 5
    x = RNG.dirichlet(np.ones(C), N) if kernel.endswith("probs") else RNG.standard_normal((N, C))
    x = x.astype(dtype)
    for dtype, ignore in ((np.uint64, -1), (np.uint32, 2**32 - 1)):
        y = RNG.integers(0, C, N).astype(dtype)
        y[::3] = np.iinfo(dtype).max
        want_y = y.astype(np.int64)
        want_y[::3] = 0
        _, want, _ = run(kernel, x, want_y, layout=layout, ls=ls)
        want[::3] = 0.0
        for grad in (False, True):
            r, loss, g = run(kernel, x, y, layout=layout, ls=ls, ignore=ignore, grad=grad)
            assert r == -1
            np.testing.assert_allclose(loss, want, rtol=1e-12)
            assert not grad or (g[::3] == 0).all()


# ---------------------------------------------------------------------- decision 8


KERNELS = ["sparse_from_logits", "sparse_from_probs", "categorical_from_logits", "categorical_from_probs",
           "binary_from_logits", "binary_from_probs"]


def problem(kernel, N, C, dtype, rng):
    if kernel.endswith("probs"):
        x = rng.uniform(0.0, 1.0, (N, C))
        if not kernel.startswith("binary"):
            x /= x.sum(axis=1, keepdims=True)
    else:
        x = rng.standard_normal((N, C)) * 4
    x = x.astype(dtype)
    if kernel.startswith("sparse"):
        return x, rng.integers(0, C, N)
    if kernel.startswith("categorical"):
        return x, rng.dirichlet(np.ones(C), N)
    return x, rng.uniform(0, 1, (N, C))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("kernel", KERNELS)
def test_loss_bits_do_not_depend_on_return_grad(isa, kernel, dtype, layout):
    """The per-row losses of a call with the gradient have the bits of the loss-only
    call, for short rows too (which the kernels run as columns), with pos_weight per
    label, class weights, label smoothing and per-row gradient weights."""
    rng = np.random.default_rng(8)
    for C in (1, 3, 7, 10, 16, 17, 40):
        if C == 1 and not kernel.startswith("binary"):
            continue
        N = 300
        x, aux = problem(kernel, N, C, dtype, rng)
        opts = dict(ls=0.1, cw=rng.uniform(0.5, 2, C), pw=rng.uniform(0.5, 3, C), gw=rng.uniform(0.5, 2, N))
        _, loss_only, _ = run(kernel, x, aux, layout=layout, **opts)
        _, loss_grad, _ = run(kernel, x, aux, layout=layout, grad=True, **opts)
        assert loss_only.tobytes() == loss_grad.tobytes(), (C, np.flatnonzero(loss_only != loss_grad)[:5])
        _, loss_2, _ = run(kernel, x, aux, layout=layout, grad=True, threads=2, **opts)
        assert loss_2.tobytes() == loss_grad.tobytes(), C


@pytest.mark.parametrize("kernel", KERNELS)
def test_gradient_into_any_layout(isa, kernel):
    """A gradient laid out unlike y_pred (Fortran y_pred, C-ordered grad_out and the
    reverse) has the same values and leaves the losses' bits alone."""
    N, C = 64, 9
    x, aux = problem(kernel, N, C, np.float32, np.random.default_rng(3))
    for layout in LAYOUTS:
        _, want_loss, want_g = run(kernel, x, aux, layout=layout, grad=True, ls=0.1)
        x3 = view3(x, layout)
        a = view2(aux, layout) if kernel.startswith("sparse") else view3(aux, layout)
        g2 = np.full((N, C), np.nan, np.float32, order="F" if layout == "rows" else "C")
        g3 = g2[:, :, None] if layout == "rows" else g2.T[None, :, :]  # x3's shape, the other order
        loss = np.empty(view2(np.ones(N), layout).shape)
        gw, cw, pw = view2(np.ones(N), layout), np.ones(C), np.ones((C, x3.shape[2]))
        args = {"sparse_from_logits": (x3, a, cw, 0.1, -1, gw, loss, g3, 1),
                "sparse_from_probs": (x3, a, cw, 0.1, -1, 1e-7, gw, loss, g3, 1),
                "categorical_from_logits": (x3, a, cw, 0.1, gw, loss, g3, 1),
                "categorical_from_probs": (x3, a, cw, 0.1, 1e-7, gw, loss, g3, 1),
                "binary_from_logits": (x3, a, pw, 0.1, gw, loss, g3, 1),
                "binary_from_probs": (x3, a, pw, 0.1, 1e-7, gw, loss, g3, 1)}[kernel]
        assert getattr(ext, kernel)(*args) == -1
        g = g2.astype(np.float64)
        assert loss.reshape(-1).tobytes() == want_loss.tobytes()
        np.testing.assert_allclose(g, want_g, rtol=1e-6, atol=1e-12)


# ---------------------------------------------------------------------- decision 9


def test_kernels_use_the_threads_they_are_given():
    """No serial cut-off of the kernel's own: 2 threads for 2 threads' worth of work
    items however small, capped by the work items (rows, or column tasks)."""
    assert ext._thread_plan(np.zeros((1000, 10, 1), np.float32), 2) == 2
    assert ext._thread_plan(np.zeros((2, 10, 1), np.float32), 2) == 2
    assert ext._thread_plan(np.zeros((1, 10, 1), np.float32), 2) == 1  # one row
    assert ext._thread_plan(np.zeros((1, 100, 200), np.float32), 2) == 1  # one column task
    assert ext._thread_plan(np.zeros((1000, 10, 1), np.float32), 1) == 1
