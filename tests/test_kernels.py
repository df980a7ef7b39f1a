"""The kernel table of fastxent/backends/KERNELS.md, one matrix for every implementation.

Every test takes the ``impl`` fixture: the NumPy backend's kernels, the Numba kernels
and the Cython kernels with each instruction-set table this CPU runs. All of them are
checked against the same independent float64 reference (``reference.kernel``,
written from the formulas of KERNELS.md), against mpmath where float64 cannot give
the exact value (a dominant class), and against themselves where the contract asks
for identical bits (across thread counts, with or without a gradient, block sums).
Backend-specific tests (Numba compilation and caching, Cython table selection,
OpenMP, fork) stay in test_numba_kernels.py and test_cython_kernels.py.

Numba compiles each new combination of argument types (y_pred's dtype, whether
arrays are contiguous, the gradient mode, the targets' dtype) once, in seconds: the
dtype x layout cases below are chosen so that Numba's distinct signatures stay few
(float32 meets every layout; the other dtypes meet one layout of each of Numba's
array kinds: contiguous rows, contiguous columns, any strides).

Tolerances: see ``kernel_impls.tol`` (float64 1e-12 of a result's scale,
float32-computed 2e-6 relative and 1e-7 absolute).
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

import reference as ref
from fastxent import _reduce
from fastxent._reduce import BLOCK_ROWS
from helpers import LAYOUTS, layout_shape, place
from kernel_impls import BF16, IGNORE, KERNELS, assert_close, assert_matches, expect, run, tol

RNG = np.random.default_rng(20240611)
F16, F32, F64 = np.float16, np.float32, np.float64
LOGIT_KERNELS = ("sparse_from_logits", "categorical_from_logits")


def dname(dtype):
    return np.dtype(dtype).name


# ---------------------------------------------------------------------------- problems


def problem(kernel, n, c, rng, *, dtype=F64, ls=0.0, cw=False, pw=None, ignore=False, soft=True):
    """Random rows (n, c) for ``kernel`` with what ``run``/``expect`` take besides:
    (rows, aux, keywords). Probabilities include a 0 (clipped) and, for binary, a 1;
    dense targets are given in the compute dtype."""
    probs = kernel.endswith("probs")
    binary = kernel.startswith("binary")
    if probs:
        rows = rng.uniform(0.001, 1.0, (n, c))
        if not binary:
            rows /= rows.sum(axis=1, keepdims=True)
        rows[0, 0] = 0.0
        if binary and c > 1:
            rows[0, 1] = 1.0
    else:
        rows = rng.standard_normal((n, c)) * 3
    kw = dict(dtype=dtype, ls=ls, gw=rng.uniform(0.5, 1.5, n))
    if kernel.startswith("sparse"):
        aux = rng.integers(0, c, n)
        if ignore:
            aux[::5] = IGNORE
            kw["ignore"] = IGNORE
    elif binary:
        aux = rng.integers(0, 2, (n, c)).astype(np.float64)
        if soft:
            aux.flat[::3] = rng.uniform(0, 1, aux.flat[::3].shape)
        aux = aux.astype(F64 if dtype == F64 else F32)
    else:
        aux = rng.dirichlet(np.ones(c), n).astype(F64 if dtype == F64 else F32)
    if binary:
        kw["weights"] = None if pw is None else rng.uniform(0.5, 3.0, c if pw == "per_label" else pw)
    elif cw:
        kw["weights"] = rng.uniform(0.2, 2.0, c)
    return rows, aux, kw


# ---------------------------------------------------------------------------- the matrix

OPTIONS = {
    "sparse_from_logits": [{}, {"cw": True}, {"ls": 0.2}, {"ignore": True}, {"cw": True, "ls": 0.3, "ignore": True}],
    "sparse_from_probs": [{}, {"cw": True}, {"ls": 0.2}, {"ignore": True}, {"eps": 1e-3},
                          {"cw": True, "ls": 0.1, "ignore": True}],  # fmt: skip
    "categorical_from_logits": [{}, {"cw": True}, {"ls": 0.25}],
    "categorical_from_probs": [{}, {"cw": True}, {"ls": 0.25, "eps": 1e-3}],
    "binary_from_logits": [{}, {"pw": "per_label"}, {"pw": "full"}, {"ls": 0.1}],
    "binary_from_probs": [{}, {"pw": "per_label"}, {"ls": 0.1, "eps": 1e-3}],
}
#: y_pred dtype -> layouts. float32 meets every layout; the others one layout of each
#: array kind Numba compiles apart (contiguous rows; contiguous columns, nchw alike;
#: any strides, negative and odd alike), which the Cython kernels run apart too.
MATRIX = {F32: list(LAYOUTS), F64: ["rows", "cols", "nchw", "negative", "odd", "cols_negative"],
          F16: ["rows", "cols", "odd"]}  # fmt: skip
if BF16 is not None:
    MATRIX[BF16] = ["rows", "cols", "nchw", "negative"]  # (more in test_kernels_extras.py)
MATRIX_CASES = [(d, l) for d, layouts in MATRIX.items() for l in layouts]


@pytest.mark.parametrize("dtype, layout", MATRIX_CASES, ids=[f"{dname(d)}-{l}" for d, l in MATRIX_CASES])
@pytest.mark.parametrize("kernel", KERNELS)
def test_matrix(impl, kernel, dtype, layout):
    """Every kernel, option, dtype and layout against the reference, loss only and
    with a gradient; the loss has the same bits either way (decision 8)."""
    n, c = 24, 7
    for opts in OPTIONS[kernel]:
        pw = opts.get("pw")
        pw = (c, layout_inner(layout, n)) if pw == "full" else pw
        rows, aux, kw = problem(kernel, n, c, np.random.default_rng(len(str(opts))), dtype=dtype,
                                ls=opts.get("ls", 0.0), cw=opts.get("cw", False), pw=pw,
                                ignore=opts.get("ignore", False))  # fmt: skip
        kw["eps"] = opts.get("eps", 1e-7)
        want = expect(kernel, rows, aux, layout=layout, **kw)
        what = f"{impl} {kernel} {dname(dtype)} {layout} {opts}"
        loss_only = run(impl, kernel, rows, aux, layout=layout, **kw)
        with_grad = run(impl, kernel, rows, aux, layout=layout, grad=True, **kw)
        assert_matches(loss_only, want, tol(dtype), what)
        assert_matches(with_grad, want, tol(dtype), what + " grad=True")
        assert loss_only.loss.tobytes() == with_grad.loss.tobytes(), what


def layout_inner(layout, n):
    return layout_shape(layout, n, 1)[2]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("c", [1, 2, 3, 2047, 2048, 2049, 50_000])
def test_class_counts(impl, kernel, c):
    """C = 1, 2, and rows longer than one block (2048): the online max path."""
    n = 8 if c > 3000 else 16
    for dtype in (F64, F32):
        for layout in ("rows", "cols"):
            binary = kernel.startswith("binary")
            rows, aux, kw = problem(kernel, n, c, np.random.default_rng(c), dtype=dtype, ls=0.0 if binary else 0.1,
                                    cw=not binary, pw="per_label" if binary else None)  # fmt: skip
            out = run(impl, kernel, rows, aux, layout=layout, grad=True, **kw)
            assert_matches(out, expect(kernel, rows, aux, layout=layout, **kw), tol(dtype),
                           f"{impl} {kernel} C={c} {dname(dtype)} {layout}")  # fmt: skip


@pytest.mark.parametrize("kernel", LOGIT_KERNELS)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_long_rows_online_max(impl, kernel, where):
    """The running max of a 50,000-class row grows in a late block, with ties and -inf."""
    c, n = 50_000, 6
    z = RNG.standard_normal((n, c)) * 2
    pos = {"first": 5, "middle": 25_000, "last": c - 3}[where]
    z[:, pos] = 30.0
    z[1, pos + 1] = 30.0  # a tie with the max (counts in R as exp(0) = 1)
    z[2, :1000] = -np.inf  # a masked first block
    z[3] = -np.inf
    z[3, c - 1] = 0.0  # the only finite logit in the last block
    for dtype in (F64, F32):
        if kernel.startswith("sparse"):
            aux = np.full(n, pos)
            aux[3] = c - 1
            weights = np.ones(c)
            weights[:1000] = 0.0  # masked classes carry no weight
            kw = dict(weights=weights, ls=0.1)
        else:
            aux = np.zeros((n, c), dtype)
            aux[:, pos], aux[:, c - 1] = 0.7, 0.3
            kw = {}
        out = run(impl, kernel, z, aux, dtype=dtype, grad=True, **kw)
        want = expect(kernel, z, aux, dtype=dtype, **kw)
        if kernel.startswith("sparse"):
            assert out.loss[3] == np.inf  # the label's class holds weight and -inf elsewhere
        assert_matches(out, want, tol(dtype), f"{impl} {kernel} {where} {dname(dtype)}")


# ---------------------------------------------------------------------------- edge cases


def mp_softmax(z, k, z_loss=0.0):
    """(loss, gradient) of -log softmax(z)_k + z_loss * lse**2 at 400 digits (a loss of
    1e-300 next to a log-sum-exp of 700 needs that many)."""
    with mpmath.workdps(400):
        zz = [mpmath.mpf(float(v)) for v in z]
        m = max(zz)
        lse = m + mpmath.log(mpmath.fsum(mpmath.e ** (v - m) for v in zz))
        loss = lse - zz[k] + z_loss * lse**2
        grad = [(1 + 2 * z_loss * lse) * mpmath.e ** (v - lse) - (1 if c == k else 0) for c, v in enumerate(zz)]
        return float(loss), np.array([float(g) for g in grad])


@pytest.mark.parametrize("layout", ["rows", "cols", "odd"])
def test_dominant_class_accuracy(impl, layout):
    """A target far above the others: tiny but exact loss and gradient, not 0 -- through
    the sparse kernel and the categorical one with a one-hot target."""
    cases = [
        (F64, [100.0, 0.0, -5.0, 3.0], 0, 1e-12),
        (F64, [0.0, 700.0, 690.0], 1, 1e-12),
        (F32, [30.0, 0.0, -2.0], 0, 1e-5),
        (F32, [0.0, 40.0, 25.0, 25.0], 1, 1e-5),
    ]
    for dtype, z, k, rt in cases:
        rows = np.array([z] * 4, dtype)
        want_loss, want_grad = mp_softmax(rows[0], k)
        assert want_loss > 0
        onehot = np.zeros(rows.shape, F64 if dtype == F64 else F32)
        onehot[:, k] = 1
        for kernel, aux in (("sparse_from_logits", np.full(4, k)), ("categorical_from_logits", onehot)):
            out = run(impl, kernel, rows, aux, layout=layout, grad=True)
            np.testing.assert_allclose(out.loss, want_loss, rtol=rt, err_msg=f"{impl} {kernel}")
            for g in out.grad:
                np.testing.assert_allclose(g, want_grad, rtol=rt, atol=0)  # relative on every entry


@pytest.mark.parametrize("dtype", [F64, F32], ids=dname)
@pytest.mark.parametrize("c", [37, 300])
def test_first_argmax_at_every_position(impl, dtype, c):
    """Row k's max sits at class k (every lane of every vector, the tail included),
    20 above the rest, so its loss is a tiny sum left over after the max's own
    exp(0) = 1 is taken out: finding the wrong first argmax, or none, is off by up to
    log 2. Rows with a second, later max (a tie) count it as 1 in the sum."""
    rng = np.random.default_rng(c)
    z = rng.uniform(-21.0, -20.0, (c, c))
    z[np.arange(c), np.arange(c)] = 0.0
    ties = np.arange(c - 1)
    zt = z[ties].copy()
    zt[ties, ties + 1 + (ties * 7) % (c - 1 - ties)] = 0.0  # a later class equal to the max
    z = np.concatenate([z, zt]).astype(dtype)
    labels = np.concatenate([np.arange(c), ties])
    want = expect("sparse_from_logits", z, labels)
    loss_only = run(impl, "sparse_from_logits", z, labels)
    out = run(impl, "sparse_from_logits", z, labels, grad=True)
    np.testing.assert_allclose(loss_only.loss, want.loss, rtol=tol(dtype))
    np.testing.assert_array_equal(out.loss, loss_only.loss)
    assert_close(out.grad, want.grad, tol(dtype), f"{impl} C={c} gradient")


@pytest.mark.parametrize("c", [40, 1000])
@pytest.mark.parametrize("gap", [20.0, 60.0, 86.2, 86.8])
def test_exp_switch_keeps_tiny_losses(impl, c, gap):
    """float32 rows whose other logits sit about ``gap`` below the target, on both
    sides of 86.5 (where the compiled kernels switch exps), keep their tiny losses to
    float32 accuracy, and loss-only calls give the loss-and-gradient bits."""
    rng = np.random.default_rng(int(gap * 10) + c)
    z = (-gap + rng.uniform(-0.3, 0.3, c)).astype(F32)
    z[3] = 0.0
    want_loss, want_grad = mp_softmax(z, 3)
    out = run(impl, "sparse_from_logits", z[None], np.array([3]), grad=True)
    np.testing.assert_allclose(out.loss[0], want_loss, rtol=1e-5)
    np.testing.assert_allclose(out.grad[0, 3], want_grad[3], rtol=1e-5)
    assert run(impl, "sparse_from_logits", z[None], np.array([3])).loss[0] == out.loss[0]


def one_row(impl, kernel, z, *, y=0, t=None, cw=None, dtype=F64, layout="rows", grad=True, **kw):
    """One row (repeated 4 times, so that every layout holds it) through ``kernel``;
    returns the first row's (status, loss, gradient)."""
    rows = np.array([z] * 4, dtype)
    if kernel.startswith("sparse"):
        aux = np.full(4, y)
    else:
        aux = np.array([t] * 4, F64 if dtype == F64 else F32)
    out = run(impl, kernel, rows, aux, layout=layout, weights=cw, grad=grad or None, **kw)
    return out.bad, out.loss[0], None if out.grad is None else out.grad[0]


@pytest.mark.parametrize("dtype", [F64, F32], ids=dname)
@pytest.mark.parametrize("layout", ["rows", "cols", "odd"])
def test_masked_logits(impl, dtype, layout):
    inf = np.inf
    # a_c == 0 on a -inf logit: contributes exactly 0; its gradient is exactly 0
    _, loss, g = one_row(impl, "sparse_from_logits", [1.0, -inf, 2.0], y=0, dtype=dtype, layout=layout)
    want = expect("sparse_from_logits", np.array([[1.0, -inf, 2.0]]), np.array([0]))
    assert_close(loss, want.loss[0], tol(dtype), "masked loss")
    assert g[1] == 0.0 and np.isfinite(g).all()
    # smoothing puts weight on the masked class unless its class weight is 0
    _, loss, g = one_row(impl, "sparse_from_logits", [1.0, -inf, 2.0], y=0, ls=0.1, dtype=dtype, layout=layout)
    assert loss == inf and np.isfinite(g).all()
    _, loss, g = one_row(impl, "sparse_from_logits", [1.0, -inf, 2.0], y=0, ls=0.1, cw=[1, 0, 1], dtype=dtype,
                         layout=layout)  # fmt: skip
    assert np.isfinite(loss) and g[1] == 0.0
    # a_c > 0 on a -inf logit: +inf loss, finite gradient
    _, loss, g = one_row(impl, "sparse_from_logits", [1.0, -inf, 2.0], y=1, dtype=dtype, layout=layout)
    assert loss == inf and np.isfinite(g).all()
    assert_close(g, [1 / (1 + np.e), -1.0, np.e / (1 + np.e)], tol(dtype), "masked label grad")
    _, loss, g = one_row(impl, "categorical_from_logits", [-inf, 1.0, 2.0], t=[0, 0.5, 0.5], dtype=dtype,
                         layout=layout)  # fmt: skip
    assert np.isfinite(loss) and g[0] == 0.0


@pytest.mark.parametrize("dtype", [F64, F32], ids=dname)
@pytest.mark.parametrize("layout", ["rows", "cols", "odd"])
def test_special_rows(impl, dtype, layout):
    inf, nan = np.inf, np.nan
    for kernel, kw in (("sparse_from_logits", dict(y=1)), ("categorical_from_logits", dict(t=[0, 1.0, 0]))):
        # every logit -inf: +inf and a NaN gradient when A > 0 ...
        _, loss, g = one_row(impl, kernel, [-inf, -inf, -inf], dtype=dtype, layout=layout, **kw)
        assert loss == inf and np.isnan(g).all()
        # ... loss 0 and gradient 0 when A == 0
        _, loss, g = one_row(impl, kernel, [-inf, -inf, -inf], cw=[1, 0, 1], dtype=dtype, layout=layout, **kw)
        assert loss == 0 and (g == 0).all()
        # NaN anywhere: NaN loss and a NaN row, even when A == 0 skips the products
        for cw in (None, [1, 0, 1]):
            # (-nan: the sign bit set, which orders below -inf as an integer key)
            for z in ([0.0, nan, 1.0], [nan, -inf, 1.0], [nan, nan, nan], [2.0, 1.0, nan],
                      [0.0, -nan, 1.0], [-nan, -inf, 1.0], [2.0, 1.0, -nan], [-inf, -nan, -inf]):  # fmt: skip
                _, loss, g = one_row(impl, kernel, z, cw=cw, dtype=dtype, layout=layout, **kw)
                assert np.isnan(loss) and np.isnan(g).all(), (kernel, z, cw)
        # long rows, a NaN of either sign in a later block: loss-only calls see it too
        for bad in (nan, -nan):
            z = np.zeros(5_000)
            z[4_321] = bad
            long_kw = dict(y=1) if kernel.startswith("sparse") else dict(t=np.eye(5_000)[1])
            _, loss, g = one_row(impl, kernel, z, dtype=dtype, layout=layout, **long_kw)
            assert np.isnan(loss) and np.isnan(g).all()
            _, loss, _ = one_row(impl, kernel, z, dtype=dtype, layout=layout, grad=False, **long_kw)
            assert np.isnan(loss)
        # +inf: NaN loss and gradient
        _, loss, g = one_row(impl, kernel, [0.0, inf, 1.0], dtype=dtype, layout=layout, **kw)
        assert np.isnan(loss) and np.isnan(g).all()
    # C == 1: always loss 0, gradient 0; NaN still NaN
    _, loss, g = one_row(impl, "sparse_from_logits", [3.0], y=0, dtype=dtype, layout=layout)
    assert loss == 0 and g[0] == 0
    _, loss, g = one_row(impl, "sparse_from_logits", [nan], y=0, dtype=dtype, layout=layout)
    assert np.isnan(loss) and np.isnan(g[0])
    _, loss, g = one_row(impl, "sparse_from_logits", [-inf], y=0, cw=[0.0], dtype=dtype, layout=layout)
    assert loss == 0 and g[0] == 0


@pytest.mark.parametrize("dtype", [F64, F32], ids=dname)
@pytest.mark.parametrize("layout", ["rows", "cols", "odd"])
def test_binary_limits(impl, dtype, layout):
    inf, nan = np.inf, np.nan
    # +inf with the target agreeing costs 0; disagreeing +inf; gradient finite
    _, loss, g = one_row(impl, "binary_from_logits", [inf, -inf, inf, -inf], t=[1, 0, 0, 1], dtype=dtype,
                         layout=layout)  # fmt: skip
    assert loss == inf and np.isfinite(g).all()
    assert_close(g, np.array([0.0, 0.0, 1.0, -1.0]) / 4, tol(dtype), "binary inf grad")
    _, loss, g = one_row(impl, "binary_from_logits", [inf, -inf], t=[1, 0], dtype=dtype, layout=layout)
    assert loss == 0 and (g == 0).all()
    # NaN: the row's loss NaN, only its own gradient NaN
    _, loss, g = one_row(impl, "binary_from_logits", [0.5, nan, -1.0], t=[1, 0, 1], dtype=dtype, layout=layout)
    assert np.isnan(loss) and np.isnan(g[1]) and np.isfinite(g[[0, 2]]).all()
    # large |x|: softplus stays exact (no log(1 + exp) overflow, no underflow to 0 too early)
    z, t = np.array([[60.0, -60.0, 15.0, -15.0]] * 4), np.array([[0, 1, 1, 0.0]] * 4)
    out = run(impl, "binary_from_logits", z, t.astype(F64 if dtype == F64 else F32), dtype=dtype, layout=layout,
              grad=True)  # fmt: skip
    assert_matches(out, expect("binary_from_logits", z, t, dtype=dtype), tol(dtype), "binary large")


@pytest.mark.parametrize("dtype", [F64, F32], ids=dname)
@pytest.mark.parametrize("shape, layout", [((40, 7), "rows"), ((3, 3000), "rows"), ((5000, 1), "cols"),
                                           ((700, 3), "cols")], ids=str)  # fmt: skip
@pytest.mark.parametrize("pos_weight", [1.0, 1.7])
def test_binary_infinities_cost_what_1e30_costs(impl, dtype, shape, layout, pos_weight):
    """+inf and 1e30, each with target 1, cost exactly 0 and have gradient 0: swapping
    one for the other changes no bit of any loss or gradient (the compiled kernels
    take blocks of finite logits without their zero-coefficient selects)."""
    x = (RNG.standard_normal(shape) * 4).astype(dtype)
    t = RNG.integers(0, 2, shape).astype(dtype)
    t.flat[::3] = RNG.uniform(0, 1, t.flat[::3].shape)
    spots = [0, x.size - 1, x.size // 2]
    t.flat[spots] = 1
    results = []
    for big in (1e30, np.inf):
        xb = x.copy()
        xb.flat[spots] = big
        for grad in (None, True):
            out = run(impl, "binary_from_logits", xb, t, layout=layout, weights=np.full(shape[1], pos_weight),
                      grad=grad)  # fmt: skip
            results.append((out.loss, out.grad))
    for (loss_f, g_f), (loss_i, g_i) in zip(results[:2], results[2:]):
        assert np.isfinite(loss_f).all()
        assert loss_f.tobytes() == loss_i.tobytes()
        assert g_f is None or g_f.tobytes() == g_i.tobytes()


@pytest.mark.parametrize("dtype", [F64, F32, F16], ids=dname)
@pytest.mark.parametrize("layout", ["rows", "cols", "odd"])
def test_probability_clipping(impl, dtype, layout):
    eps = 1e-7
    ct = F64 if dtype == F64 else F32
    lo, hi = ct(eps), ct(1) - ct(eps)
    for kernel, kw in (("categorical_from_probs", dict(t=[1.0, 0.0, 0.0])), ("sparse_from_probs", dict(y=0)),
                       ("sparse_from_probs", dict(y=0, ls=0.2))):  # fmt: skip
        r, loss, g = one_row(impl, kernel, [0.0, 1.0, 0.0], dtype=dtype, layout=layout, eps=eps, **kw)
        assert r == -1
        ls = kw.get("ls", 0.0)
        want = (1 - ls + ls / 3) * -np.log(F64(lo)) + ls / 3 * (-np.log(F64(hi)) - np.log(F64(lo)))
        np.testing.assert_allclose(loss, want, rtol=tol(dtype))
        assert (g == 0).all()  # every value clipped: gradient 0
    # binary: p = 0 with target 1 and p = 1 with target 0 (Keras' 16.118 / 15.942 in float32)
    r, loss, g = one_row(impl, "binary_from_probs", [0.0, 1.0], t=[1, 0], dtype=dtype, layout=layout, eps=eps)
    np.testing.assert_allclose(loss, (-np.log(F64(lo)) - np.log(F64(ct(1) - hi))) / 2, rtol=tol(dtype))
    assert (g == 0).all()
    # NaN propagates through clipping (comparisons, not fmin/fmax)
    for kernel, kw in (("categorical_from_probs", dict(t=[0.0, 1.0, 0.0])), ("sparse_from_probs", dict(y=1)),
                       ("binary_from_probs", dict(t=[0, 1, 1]))):  # fmt: skip
        r, loss, g = one_row(impl, kernel, [0.2, np.nan, 0.3], dtype=dtype, layout=layout, eps=eps, **kw)
        assert r == -1 and np.isnan(loss) and np.isnan(g[1])


@pytest.mark.parametrize("block_sums", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", ["rows", "cols", "odd"])
def test_first_bad_row(impl, threads, layout, block_sums):
    """The lowest bad row, whatever the thread count (rows split across chunks, or
    blocks of BLOCK_ROWS rows when the kernel sums the losses)."""
    n, c = 40_000, 5  # 200k elements: two threads engage
    p = RNG.dirichlet(np.ones(c), n)
    cases = [
        ("categorical_from_probs", np.eye(c)[RNG.integers(0, c, n)], 0.0),
        ("binary_from_probs", RNG.integers(0, 2, (n, c)).astype(F64), 0.0),
        ("sparse_from_probs", RNG.integers(0, c, n), 0.1),
        ("sparse_from_probs", RNG.integers(0, c, n), 0.0),
    ]
    for kernel, aux, ls in cases:
        for bad_rows in ([n - 7], [n // 2 + 3, n - 2], [3, n - 3], [0]):
            pp = p.copy()
            if kernel == "sparse_from_probs" and ls == 0:
                for b in bad_rows:
                    pp[b, aux[b]] = 1.5  # only p_y is read and checked
                pp[1, (aux[1] + 1) % c] = -3.0  # not read: never reported
            else:
                for b in bad_rows:
                    pp[b, 2] = -0.5 if b % 2 else 1.0 + 1e-6
            for grad in (None, True):
                out = run(impl, kernel, pp, aux, layout=layout, ls=ls, threads=threads, grad=grad,
                          block_sums=block_sums)  # fmt: skip
                assert out.bad == min(bad_rows), (kernel, bad_rows, out.bad, grad)


@pytest.mark.parametrize("shape", [(1000, 50, 1), (3 * 512 + 37, 5, 1), (3, 5, 1300)], ids=str)
def test_gather_reads_one_value_per_row(impl, shape):
    """ls == 0: only p_y is read -- garbage (NaN, out of range) elsewhere is ignored;
    rows in batches and blocks (along the outer axis, or the inner one when I > 1),
    ignored rows, gradients and the first out-of-range row in whichever block holds it."""
    rng = np.random.default_rng(8)
    o, c, i = shape
    n = o * i
    y = rng.integers(0, c, n)
    y[::7] = IGNORE
    p = np.full((n, c), np.nan)
    p[5, 3] = -1.0
    py = rng.uniform(0.01, 1, n)
    p[np.arange(n), np.where(y == IGNORE, 0, y)] = py
    kw = dict(weights=rng.uniform(0.5, 2, c), ignore=IGNORE, gw=rng.uniform(0.5, 2, n))
    x3 = p.reshape(o, i, c).transpose(0, 2, 1)
    want = expect("sparse_from_probs", p, y, **kw)
    for threads in (1, 2):
        out = run(impl, "sparse_from_probs", p, y, x3=x3, grad=True, threads=threads, **kw)
        assert_matches(out, want, 1e-12, f"{impl} threads={threads}")
        assert run(impl, "sparse_from_probs", p, y, x3=x3, threads=threads, **kw).loss.tobytes() == out.loss.tobytes()
    for r in (n - 3, n // 2 + 1):  # the later row first: the answer must move
        y[r] = max(y[r], 0)
        p[r, y[r]] = 1.5
        x3 = p.reshape(o, i, c).transpose(0, 2, 1)
        for threads in (1, 2):
            assert run(impl, "sparse_from_probs", p, y, x3=x3, threads=threads, **kw).bad == r


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [F16, F32, F64], ids=dname)
def test_gather_batches(impl, dtype, threads):
    """The loss-only gather-log works in batches of rows: ignored rows, clipping at
    both ends, NaN and class weights across many batches and a partial last one,
    and bit for bit the gradient call's losses."""
    n, c, eps = 1000 + 77, 40, 1e-3
    y = RNG.integers(0, c, n)
    p = RNG.uniform(0, 1, (n, c))
    rows = np.arange(n)
    p[rows[::7], y[::7]] = 0.0  # clipped to eps
    p[rows[3::11], y[3::11]] = 1.0  # clipped to 1 - eps
    p[rows[5::97], y[5::97]] = np.nan
    y[RNG.random(n) < 0.1] = IGNORE
    kw = dict(dtype=dtype, weights=RNG.uniform(0.5, 2, c), ignore=IGNORE, eps=eps)
    want = expect("sparse_from_probs", p, y, **kw)
    loss_only = run(impl, "sparse_from_probs", p, y, threads=threads, **kw)
    # KERNELS.md lets float16/float32 input take its log in float32 (Numba does); the
    # NumPy and Cython gather-logs take it in float64, and stay held to 1e-12
    assert_matches(loss_only, want, tol(dtype) if impl.backend == "numba" else 1e-12, str(impl))
    assert (loss_only.loss[y == IGNORE] == 0).all()
    out = run(impl, "sparse_from_probs", p, y, threads=threads, grad=True, **kw)
    assert out.loss.tobytes() == loss_only.loss.tobytes()


@pytest.mark.parametrize("dtype", [F32, F64], ids=dname)
def test_gather_log_of_zero_and_subnormal_values(impl, dtype):
    """eps = 0, which the public API refuses (its smallest eps keeps every clipped
    value a normal float64, and the Cython gather-log then takes a log without the
    zero and subnormal cases): p_y = 0 gives inf, a subnormal p_y its finite log,
    loss only and with the gradient alike."""
    n, c = 300, 4
    y = RNG.integers(0, c, n)
    p = RNG.uniform(0.01, 1, (n, c))
    rows = np.arange(n)
    p[rows[::5], y[::5]] = 0.0
    p[rows[1::5], y[1::5]] = 5e-324 if dtype == F64 else 1e-45  # subnormal in the input dtype
    with np.errstate(divide="ignore"):
        want = -np.log(p[rows, y].astype(dtype).astype(F64))
    assert np.isinf(want[::5]).all() and np.isfinite(want[1::5]).all()
    for threads in (1, 2):
        with np.errstate(divide="ignore"):  # the NumPy backend's log(0)
            loss_only = run(impl, "sparse_from_probs", p, y, dtype=dtype, eps=0.0, threads=threads)
        np.testing.assert_allclose(loss_only.loss, want, rtol=tol(dtype) if impl.backend == "numba" else 1e-12)
        with np.errstate(divide="ignore"):
            out = run(impl, "sparse_from_probs", p, y, dtype=dtype, eps=0.0, threads=threads, grad=True)
        assert out.loss.tobytes() == loss_only.loss.tobytes()


@pytest.mark.parametrize("layout", ["rows", "cols"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=dname)
def test_probability_rows_of_zero_and_subnormal_values(impl, dtype, layout):
    """eps = 0 for whole probability rows (categorical; sparse with smoothing; binary): the
    API's smallest eps keeps every clipped value normal, and the Cython rows then
    take a log without the zero and subnormal cases; here they must take the full
    one: p_c = 0 with weight on it gives inf, a subnormal p_c its finite log."""
    n, c = 60, 40
    p = RNG.uniform(0.01, 1, (n, c))
    t = RNG.uniform(0.1, 1, (n, c))  # every class weighted: 0 * log(0) never arises
    p[::3, 5] = 0.0
    p[1::3, 7] = 5e-324 if dtype == F64 else 1e-45  # subnormal in the input dtype
    pd = p.astype(dtype).astype(F64)
    with np.errstate(divide="ignore"):
        want = -(t.astype(dtype).astype(F64) * np.log(pd)).sum(axis=1)
    assert np.isinf(want[::3]).all() and np.isfinite(want[1::3]).all()
    with np.errstate(divide="ignore", invalid="ignore"):
        got = run(impl, "categorical_from_probs", p, t, layout=layout, dtype=dtype, eps=0.0)
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got.loss.reshape(-1)[~finite], want[~finite])
    np.testing.assert_allclose(got.loss.reshape(-1)[finite], want[finite], rtol=tol(dtype))
    y = RNG.integers(0, c, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        smooth = run(impl, "sparse_from_probs", p, y, layout=layout, dtype=dtype, eps=0.0, ls=0.5)
    assert np.isinf(smooth.loss.reshape(-1)[::3]).all()
    assert np.isfinite(smooth.loss.reshape(-1)[1::3]).all()
    # binary: log p and log(1 - p), p = 0 with target 1 and p = 1 with target 0 give inf
    tb = (RNG.random((n, c)) < 0.5).astype(F64)
    pb = RNG.uniform(0.01, 0.99, (n, c))
    pb[::3, 5], tb[::3, 5] = 0.0, 1.0
    pb[1::3, 6], tb[1::3, 6] = 1.0, 0.0
    pb[2::3, 7] = 5e-324 if dtype == F64 else 1e-45
    pbd = pb.astype(dtype).astype(F64)
    with np.errstate(divide="ignore", invalid="ignore"):
        want_b = -(tb * np.log(pbd) + (1 - tb) * np.log1p(-pbd)).mean(axis=1)
        got_b = run(impl, "binary_from_probs", pb, tb, layout=layout, dtype=dtype, eps=0.0).loss.reshape(-1)
    assert np.isinf(want_b[::3]).all() and np.isinf(want_b[1::3]).all() and np.isfinite(want_b[2::3]).all()
    np.testing.assert_array_equal(got_b[~np.isfinite(want_b)], want_b[~np.isfinite(want_b)])
    np.testing.assert_allclose(got_b[np.isfinite(want_b)], want_b[np.isfinite(want_b)], rtol=tol(dtype))


# ---------------------------------------------------------------------------- argument dtypes


@pytest.mark.parametrize("ldtype", ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"])
@pytest.mark.parametrize("kernel", ["sparse_from_logits", "sparse_from_probs"])
@pytest.mark.parametrize("layout", ["rows", "cols"])
def test_label_dtypes(impl, kernel, ldtype, layout):
    signed = ldtype.startswith("int")
    for ls in (0.0, 0.2):
        rows, aux, kw = problem(kernel, 32, 6, np.random.default_rng(1), ls=ls, ignore=signed)
        aux = aux.astype(ldtype)  # the same values, a narrower type
        out = run(impl, kernel, rows, aux, layout=layout, grad=True, **kw)
        assert_matches(out, expect(kernel, rows, aux, **kw), 1e-12, f"{impl} {ldtype} ls={ls}")


#: Dense target dtypes, each in one of the two layouts (Numba compiles each dtype).
TARGET_CASES = [("bool", "rows"), ("int8", "cols"), ("uint8", "rows"), ("int32", "cols"), ("int64", "rows"),
                ("uint64", "cols"), ("float16", "rows"), ("float32", "cols"), ("float64", "rows"),
                ("float64", "cols")]  # fmt: skip


@pytest.mark.parametrize("tdtype, layout", TARGET_CASES, ids=["-".join(c) for c in TARGET_CASES])
@pytest.mark.parametrize("kernel", ["categorical_from_logits", "categorical_from_probs", "binary_from_logits",
                                    "binary_from_probs"])  # fmt: skip
def test_target_dtypes(impl, kernel, tdtype, layout):
    """Dense targets of any dtype are read directly (converted per block)."""
    n, c = 24, 5
    rows, _, kw = problem(kernel, n, c, np.random.default_rng(2))
    if kernel.startswith("binary"):
        t = RNG.integers(0, 2, (n, c))
    else:
        t = np.eye(c)[RNG.integers(0, c, n)]
    t = t.astype(tdtype)
    out = run(impl, kernel, rows, t, layout=layout, grad=True, **kw)
    assert_matches(out, expect(kernel, rows, t, **kw), 1e-12, f"{impl} {kernel} {tdtype}")


def test_every_float16_through_binary_from_logits(impl):
    """float16 is read as its bits and computed in float32: every float16 value,
    NaN, infinities and subnormals included."""
    bits = np.arange(0, 1 << 16, dtype=np.uint16).view(F16)
    out = run(impl, "binary_from_logits", bits[:, None], np.zeros((bits.size, 1), F32), layout="cols", grad=True)
    with np.errstate(invalid="ignore"):  # NaN inputs are part of the sweep
        want = np.logaddexp(0, bits.astype(F64))
    finite = np.isfinite(want)
    np.testing.assert_allclose(out.loss[finite], want[finite], rtol=1e-6, atol=1e-30)
    assert np.array_equal(np.isnan(out.loss), np.isnan(bits))


# ---------------------------------------------------------------------------- memory


IN_PLACE_CASES = [(F32, "rows"), (F32, "cols"), (F32, "nchw"), (F32, "negative"), (F32, "odd"), (F64, "rows"),
                  (F64, "cols")]  # fmt: skip


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype, layout", IN_PLACE_CASES, ids=[f"{dname(d)}-{l}" for d, l in IN_PLACE_CASES])
def test_in_place_gradient(impl, kernel, layout, dtype, request):
    """grad_out = x: the same bits as into a separate array."""
    if impl.backend == "numba" and kernel in LOGIT_KERNELS and layout in ("negative", "odd") and dtype == F32:
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            "Numba softmax kernels, any-strides path, float32: the in-place gradient differs from the one "
            "written into a separate array by an ulp in some entries (found by this matrix)")))  # fmt: skip
    for ls in (0.0, 0.2):
        rows, aux, kw = problem(kernel, 40, 11, np.random.default_rng(4), dtype=dtype, ls=ls)
        a = run(impl, kernel, rows, aux, layout=layout, grad=True, **kw)
        x3 = place(rows, layout, dtype)
        b = run(impl, kernel, rows, aux, layout=layout, grad="inplace", x3=x3, **kw)
        assert a.loss.tobytes() == b.loss.tobytes(), (kernel, layout, ls)
        assert a.grad.tobytes() == b.grad.tobytes(), (kernel, layout, ls)


def test_in_place_long_rows(impl):
    c, n = 5000, 4  # several blocks per row: the gradient pass takes exp from x again
    z = RNG.standard_normal((n, c)).astype(F32)
    y = RNG.integers(0, c, n)
    a = run(impl, "sparse_from_logits", z, y, ls=0.1, grad=True)
    x3 = place(z, "rows")
    b = run(impl, "sparse_from_logits", z, y, ls=0.1, grad="inplace", x3=x3)
    assert a.loss.tobytes() == b.loss.tobytes() and a.grad.tobytes() == b.grad.tobytes()


@pytest.mark.parametrize("c", [33, 100, 128])
def test_short_rows_with_gradient(impl, c):
    """Plain sparse rows of 33..128 float32 classes with a gradient (the register
    rows on AVX-512): the reference's loss and gradient with class and per-row
    weights, NaN, all -inf, ignored and out-of-range-wide rows among them, the
    loss-only call's bits, and the same bits in place."""
    rows, labels, kw = problem("sparse_from_logits", 60, c, np.random.default_rng(c), dtype=F32, cw=True,
                               ignore=True)  # fmt: skip
    rows[1, 3] = np.nan
    rows[2] = -np.inf
    rows[3, :2] = (-200.0, 200.0)  # wider than the near exp's range
    rows[4] = 7.0  # ties: the first argmax takes the exact value
    labels[3], labels[4] = 1, 2
    want = expect("sparse_from_logits", rows, labels, **kw)
    for threads in (1, 2):
        a = run(impl, "sparse_from_logits", rows, labels, grad=True, threads=threads, **kw)
        assert_matches(a, want, 1e-5, f"{impl} c={c} threads={threads}")
        loss_only = run(impl, "sparse_from_logits", rows, labels, threads=threads, **kw)
        assert a.loss.tobytes() == loss_only.loss.tobytes()
        b = run(impl, "sparse_from_logits", rows, labels, grad="inplace", x3=place(rows, "rows", F32),
                threads=threads, **kw)  # fmt: skip
        assert a.loss.tobytes() == b.loss.tobytes() and a.grad.tobytes() == b.grad.tobytes()


def test_read_only_and_memmap(impl, tmp_path):
    for kernel in KERNELS:
        rows, aux, kw = problem(kernel, 64, 9, np.random.default_rng(5), dtype=F32, ls=0.1)
        x3 = place(rows, "rows", F32)
        path = tmp_path / f"{kernel}.bin"
        mm = np.memmap(path, dtype=F32, mode="w+", shape=x3.shape)
        mm[...] = x3
        mm.flush()
        ro = np.memmap(path, dtype=F32, mode="r", shape=x3.shape)  # a read-only mapping
        assert not ro.flags.writeable
        aux = aux.copy()
        aux.setflags(write=False)
        if kw.get("weights") is not None:
            kw["weights"] = kw["weights"].copy()
            kw["weights"].setflags(write=False)
        out = run(impl, kernel, rows, aux, x3=ro, grad=True, **kw)
        assert_matches(out, expect(kernel, rows, aux, **kw), 1e-5, kernel)
        del ro, mm


@pytest.mark.parametrize("kernel", KERNELS)
def test_gradient_into_any_layout(impl, kernel, request):
    """A gradient laid out unlike y_pred (Fortran y_pred, C-ordered grad_out and the
    reverse) has the same values and leaves the losses' bits alone."""
    if impl.backend == "numba" and kernel == "sparse_from_logits":
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            "Numba sparse_from_logits, float32, ls=0.1: a gradient array of the other memory order gets "
            "entries 2e-6 relative (1e-9 absolute) away from the same-order one (found by this matrix)")))
    rows, aux, kw = problem(kernel, 64, 9, np.random.default_rng(3), dtype=F32, ls=0.1)
    for layout, other in (("rows", "cols"), ("cols", "rows")):
        want = run(impl, kernel, rows, aux, layout=layout, grad=True, **kw)
        g2 = np.full((64, 9), np.nan, F32, order="F" if layout == "rows" else "C")
        g3 = g2[:, :, None] if layout == "rows" else g2.T[None]  # x's shape, the other order
        got = run(impl, kernel, rows, aux, layout=layout, grad_out=g3, **kw)
        assert got.loss.tobytes() == want.loss.tobytes()
        np.testing.assert_allclose(got.grad, want.grad, rtol=1e-6, atol=1e-12)


# ---------------------------------------------------------------------------- threads, block sums


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("layout", ["rows", "cols", "nchw"])
def test_threads_bitwise_equal(impl, kernel, layout):
    """Per-row outputs in a fixed order: 1 and 2 threads give the same bits."""
    rows, aux, kw = problem(kernel, 20_000, 12, np.random.default_rng(6), dtype=F32, ls=0.1)
    one = run(impl, kernel, rows, aux, layout=layout, grad=True, threads=1, **kw)
    two = run(impl, kernel, rows, aux, layout=layout, grad=True, threads=2, **kw)
    assert one.bad == two.bad
    assert one.loss.tobytes() == two.loss.tobytes() and one.grad.tobytes() == two.grad.tobytes()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("layout", ["rows", "cols", "nchw"])
@pytest.mark.parametrize("n", [1_000, 3 * BLOCK_ROWS + 4, 9 * BLOCK_ROWS + 4])
def test_block_sums_are_numpy_sums_of_the_rows(impl, kernel, layout, n):
    """block_sums=True returns, for every block of BLOCK_ROWS rows, exactly what
    ``_reduce.block_sums`` (NumPy's pairwise sum) gives for the per-row losses: with
    one thread and with two, loss only and with the gradient, which is unchanged."""
    if not impl.block_sums:
        pytest.skip(f"{impl}: no block_sums keyword (KERNELS.md)")
    rows, aux, kw = problem(kernel, n, 12, np.random.default_rng(n), dtype=F32, ls=0.1)
    for grad in (None, True):
        per_row_out = run(impl, kernel, rows, aux, layout=layout, grad=grad, **kw)
        want = _reduce.block_sums(per_row_out.loss)
        assert want.size == -(-n // BLOCK_ROWS)
        for threads in (1, 2):
            out = run(impl, kernel, rows, aux, layout=layout, grad=grad, threads=threads, block_sums=True, **kw)
            assert out.loss.tobytes() == want.tobytes(), (threads, grad)
            assert grad is None or out.grad.tobytes() == per_row_out.grad.tobytes()


@pytest.mark.parametrize("kernel", ["binary_from_logits", "binary_from_probs"])
@pytest.mark.parametrize("shape", [(1, 1, 9 * BLOCK_ROWS + 4), (40, 1, 4096), (30, 1, 5000)], ids=str)
@pytest.mark.parametrize("pw", ["unit", "const", "per_element"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=dname)
def test_flat_binary_block_sums_from_leaves(impl, kernel, shape, pw, dtype):
    """One class (a flat binary loss): block sums have the bits of NumPy's pairwise
    sum of the per-row losses, with pos_weight 1, another constant or per element,
    soft and smoothed targets, infinities and NaN, and with the gradient."""
    if not impl.block_sums:
        pytest.skip(f"{impl}: no block_sums keyword (KERNELS.md)")
    o, _, i = shape
    n = o * i
    rng = np.random.default_rng(9)
    probs = kernel == "binary_from_probs"
    x = rng.uniform(0, 1, (n, 1)) if probs else rng.standard_normal((n, 1)) * 5
    t = rng.integers(0, 2, (n, 1)).astype(F64)
    t[::7] = rng.uniform(0, 1, t[::7].shape)
    if not probs:
        x[[100, 20_000, 77_777 % n], 0] = [np.inf, -np.inf, np.nan]
    x3, t3 = x.astype(dtype).reshape(o, i)[:, None], t.astype(dtype).reshape(o, i)[:, None]
    weights = {"unit": np.ones((1, 1)), "const": np.full((1, 1), 1.7), "per_element": rng.uniform(0.5, 2, (1, i))}
    kw = dict(weights=np.broadcast_to(weights[pw], (1, i)), ls=0.1, gw=rng.uniform(0.5, 1.5, n))
    for grad in (None, True):
        per = run(impl, kernel, x, t3.reshape(n, 1), x3=x3, grad=grad, **kw)
        for threads in (1, 2):
            out = run(impl, kernel, x, t3.reshape(n, 1), x3=x3, grad=grad, threads=threads, block_sums=True, **kw)
            assert out.loss.tobytes() == _reduce.block_sums(per.loss).tobytes(), (threads, grad)
            assert grad is None or out.grad.tobytes() == per.grad.tobytes()


@pytest.mark.parametrize("kernel, shape", [("sparse_from_logits", (8_000, 12, 20)), ("sparse_from_probs", (3, 7, 16384 + 5)),
                                           ("sparse_from_probs", (3 * 16384 + 77, 7, 1))])  # fmt: skip
def test_block_sums_when_blocks_cut_work_items(impl, kernel, shape):
    """Blocks of BLOCK_ROWS rows that would cut column tasks or gather work items
    mid-way: the kernel sums through a temporary -- still the same bits."""
    if not impl.block_sums:
        pytest.skip(f"{impl}: no block_sums keyword (KERNELS.md)")
    o, c, i = shape
    rows, aux, kw = problem(kernel, o * i, c, np.random.default_rng(10), dtype=F32)
    x3 = rows.astype(F32).reshape(o, i, c).transpose(0, 2, 1)
    labels = aux.reshape(o, i)
    per = run(impl, kernel, rows, aux, x3=x3, **kw)
    for threads in (1, 2):
        out = run(impl, kernel, rows, aux, x3=x3, threads=threads, block_sums=True, **kw)
        assert out.loss.tobytes() == _reduce.block_sums(per.loss).tobytes()
    del labels


# ---------------------------------------------------------------------------- decision 1


@pytest.mark.parametrize("layout", ["rows", "cols"])
@pytest.mark.parametrize("dtype", [F64, F32], ids=dname)
def test_binary_targets_formed_in_float64(impl, layout, dtype):
    """y = t(1-ls) + ls/2 and 1 - y in float64: a target 1 - 1e-9 on a logit of 1e4
    costs (1 - t) * 1e4 = 1e-5 (not 0, nor 1e-5 to 7 digits); 1 - 1e-6 is not
    rounded to float32 first (1.2% off); label_smoothing=1e-9 is not dropped."""
    rtol = 1e-12 if dtype == F64 else 2e-6
    t = np.array([[1 - 1e-9, 1e-9, 1 - 1e-6, 0.3], [1 - 1e-9, 1e-9, 1 - 1e-6, 0.7]] * 10)
    z = np.array([[1e4, -1e4, 20.0, 7.0], [3e3, -3e3, 9.0, -11.0]] * 10).astype(dtype)
    for pw in (1.0, 1.7):  # the short form of pos_weight 1 and the general one
        for c in (1, 4):  # one label (flat) and four
            kw = dict(weights=np.full(c, pw))
            want = expect("binary_from_logits", z[:, :c], t[:, :c], **kw)
            for grad in (None, True):
                out = run(impl, "binary_from_logits", z[:, :c], t[:, :c], layout=layout, grad=grad, **kw)
                assert out.bad == -1
                np.testing.assert_allclose(out.loss, want.loss, rtol=rtol, err_msg=f"pw={pw} C={c}")
                if grad:
                    np.testing.assert_allclose(out.grad, want.grad, rtol=rtol, atol=1e-300)
    if dtype == F32:  # the numbers the decision names
        out = run(impl, "binary_from_logits", z[:2, :1], t[:2, :1], layout=layout)
        np.testing.assert_allclose(out.loss, [1e-5, 3e-6], rtol=1e-6)  # (1 - t) * x
    # label_smoothing = 1e-9 on hard targets: y = 1 - 5e-10 and 5e-10, never rounded away
    t = np.array([[1.0, 0.0]] * 20)
    z = np.array([[1e4, -1e4]] * 20).astype(dtype)
    want = expect("binary_from_logits", z, t, ls=1e-9)
    np.testing.assert_allclose(run(impl, "binary_from_logits", z, t, layout=layout, ls=1e-9).loss, want.loss, rtol=rtol)
    assert abs(want.loss[0] - 5e-6) < 1e-12


@pytest.mark.parametrize("layout", ["rows", "cols"])
@pytest.mark.parametrize("dtype", [F64, F32], ids=dname)
def test_binary_probs_targets_formed_in_float64(impl, layout, dtype):
    """From probabilities: the (1 - y) log(1 - p) term of a target 1 - 1e-9 survives
    in float32 too (1.4% and 0.7% of these losses), and 1 - 2**-20 is not 1."""
    p = np.array([[0.999999, 0.99999, 1 - 2.0**-20], [0.999, 1e-3, 0.25]] * 10).astype(dtype)
    t = np.array([[1 - 1e-9, 1 - 1e-9, 1 - 1e-9], [1 - 1e-6, 1e-6, 1.0]] * 10)
    for ls in (0.0, 1e-9):
        want = expect("binary_from_probs", p, t, ls=ls)
        for grad in (None, True):
            out = run(impl, "binary_from_probs", p, t, layout=layout, ls=ls, grad=grad)
            assert out.bad == -1
            np.testing.assert_allclose(out.loss, want.loss, rtol=1e-12 if dtype == F64 else 2e-6)
            if grad:
                np.testing.assert_allclose(out.grad, want.grad, rtol=1e-12 if dtype == F64 else 2e-6, atol=1e-30)


# ---------------------------------------------------------------------------- decision 2


@pytest.mark.parametrize("block_sums", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", ["rows", "cols"])
@pytest.mark.parametrize("kernel", ["binary_from_logits", "binary_from_probs"])
def test_binary_target_out_of_range_is_reported(impl, kernel, layout, threads, block_sums):
    """A target outside [0, 1] is reported as the first such row, as an
    out-of-range probability is; NaN is not out of range; float64 targets just
    above 1 are seen as such with float32 input."""
    n, c = 3000, 3
    rng = np.random.default_rng(2)
    x = rng.uniform(0.01, 0.99, (n, c)).astype(F32)
    t = rng.integers(0, 2, (n, c)).astype(F64)
    t[5, 1] = np.nan
    for bad in ([n - 2], [2000, 17], [0], [650, 2], [300, 90]):
        tb = t.copy()
        for j, row in enumerate(bad):
            tb[row, j % c] = (-0.25, 1 + 1e-12, 7.0, -1e-7)[j % 4]
        for grad in (None, True):
            out = run(impl, kernel, x, tb, layout=layout, threads=threads, grad=grad, block_sums=block_sums)
            assert out.bad == min(bad), (bad, grad)
    assert run(impl, kernel, x, t, layout=layout, threads=threads).bad == -1  # NaN targets are not range errors


@pytest.mark.parametrize("kernel", ["binary_from_logits", "binary_from_probs"])
def test_binary_target_dtypes_range(impl, kernel):
    """Bool targets never fail, unsigned ones only above 1 (each target dtype in the
    layout test_target_dtypes reads it in)."""
    x = np.full((40, 2), 0.5)
    layouts = dict(TARGET_CASES)
    for dtype, bad_value in (("uint8", 2), ("int8", -1), ("int64", 2), ("uint64", 3), ("float16", 1.001)):
        t = np.zeros((40, 2), dtype)
        t[33, 1] = bad_value
        assert run(impl, kernel, x, t, layout=layouts[dtype], grad=True).bad == 33, dtype
        assert run(impl, kernel, x, np.ones((40, 2), dtype), layout=layouts[dtype], grad=True).bad == -1, dtype
    assert run(impl, kernel, x, np.ones((40, 2), bool), layout=layouts["bool"], grad=True).bad == -1


# ---------------------------------------------------------------------------- decision 3


@pytest.mark.parametrize("layout", ["rows", "cols", "short"])
@pytest.mark.parametrize("dtype", [F64, F32], ids=dname)
def test_unused_class_weights_do_not_matter(impl, layout, dtype):
    """An inf, NaN or 1e308 class weight on a class whose target coefficient is 0
    changes nothing: the same bits as a weight of 1 there, the reference's finite
    values (sparse without label smoothing: every class but the label; categorical:
    zero targets, ls = 0)."""
    n, c = (48, 6) if layout == "short" else (40, 37)
    layout = "rows" if layout == "short" else layout  # (6 classes: Cython's column form)
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(c), n)
    logits = rng.standard_normal((n, c)) * 3
    labels = rng.integers(0, c - 1, n)  # the last class is never a label
    onehot = np.eye(c)[labels].astype(F64 if dtype == F64 else F32)
    cases = [("sparse_from_logits", logits, labels), ("sparse_from_probs", probs, labels),
             ("categorical_from_logits", logits, onehot), ("categorical_from_probs", probs, onehot)]  # fmt: skip
    for kernel, x, aux in cases:
        cw_ok = rng.uniform(0.5, 2, c)
        cw_ok[-1] = 1.0
        for grad in (None, True):
            want = run(impl, kernel, x, aux, dtype=dtype, layout=layout, weights=cw_ok, grad=grad)
            assert_matches(want, expect(kernel, x, aux, dtype=dtype, weights=cw_ok), tol(dtype), kernel)
            for w in (np.inf, -np.inf, np.nan, 1e308):
                cw = cw_ok.copy()
                cw[-1] = w
                got = run(impl, kernel, x, aux, dtype=dtype, layout=layout, weights=cw, grad=grad)
                assert np.isfinite(got.loss).all(), (kernel, w)
                assert got.loss.tobytes() == want.loss.tobytes(), (kernel, w, grad)
                assert grad is None or got.grad.tobytes() == want.grad.tobytes(), (kernel, w)


# ---------------------------------------------------------------------------- decision 4


@pytest.mark.parametrize("layout", ["rows", "cols"])
@pytest.mark.parametrize("dtype", [F64, F32], ids=dname)
def test_all_masked_row_takes_the_sign_of_A(impl, layout, dtype):
    """Every logit -inf: loss A * inf (-inf for A < 0, +inf for A > 0, 0 for A == 0),
    gradient row NaN when A != 0, 0 when A == 0."""
    inf = np.inf
    c = 5
    z = np.full((20, c), -inf)
    z[1::2] = np.random.default_rng(4).standard_normal((10, c))  # other rows finite
    onehot = np.eye(c)[np.zeros(20, int)].astype(F64 if dtype == F64 else F32)
    for cw, want in (([-1.0, 2, 3, 4, 5], -inf), ([1.0, 2, 3, 4, 5], inf), ([0.0, 2, 3, 4, 5], 0.0)):
        for kernel, aux in (("sparse_from_logits", np.zeros(20, np.int64)), ("categorical_from_logits", onehot)):
            out = run(impl, kernel, z, aux, dtype=dtype, layout=layout, weights=cw, grad=True)
            assert (out.loss[::2] == want).all(), (kernel, cw, out.loss[::2])
            assert np.isfinite(out.loss[1::2]).all()
            assert (out.grad[::2] == 0).all() if want == 0 else np.isnan(out.grad[::2]).all()
            assert_matches(out, expect(kernel, z, aux, dtype=dtype, weights=cw), tol(dtype), kernel)
    # a long row (several blocks) with mixed signs among its masked classes
    c = 5000
    z = np.full((1, c), -inf)
    z[0, 4000] = 0.0
    t = np.zeros((1, c), F64 if dtype == F64 else F32)
    t[0, [10, 20, 4000]] = [0.5, 0.25, 0.25]
    for cw10, cw20, want in ((1.0, 1.0, inf), (-1.0, -1.0, -inf), (1.0, -1.0, np.nan)):
        cw = np.ones(c)
        cw[[10, 20]] = cw10, cw20
        loss = run(impl, "categorical_from_logits", z, t, dtype=dtype, weights=cw).loss
        assert np.array_equal(loss, [want], equal_nan=True), (cw10, cw20, loss)


# ---------------------------------------------------------------------------- decision 6


def within_ulp(got, want):
    """Within one unit in the last place of want (subnormal units included)."""
    got, want = np.broadcast_arrays(np.asarray(got, F64), np.asarray(want, F64))
    return bool((np.abs(got - want) <= np.spacing(np.abs(want))).all())


@pytest.mark.parametrize("layout", ["rows", "cols", "short"])
def test_float64_subnormal_losses(impl, layout):
    """float64 keeps gradual underflow: the losses and gradients NumPy gives."""
    short = layout == "short"
    layout = "rows" if short else layout
    n = 32
    # binary: softplus(-745) = exp(-745) = 5e-324, softplus(-740) = 4.2e-322
    for x, t in ((745.0, 1.0), (-745.0, 0.0), (740.0, 1.0), (-708.9, 0.0)):
        for grad in (None, True):
            out = run(impl, "binary_from_logits", np.full((n, 1), x), np.full((n, 1), t), layout=layout, grad=grad)
            want = np.logaddexp(0.0, -abs(x))
            assert want > 0 and within_ulp(out.loss, want), (x, out.loss[0], want)
            if grad:
                assert within_ulp(out.grad[:, 0], (1 - t) * ref.sigmoid(x) - t * ref.sigmoid(-x))
    # softmax: [0, -740] with label 0: log1p(exp(-740)) = 4.2e-322
    c = 3 if short else 40
    z = np.full((n, c), -800.0)
    z[:, 0], z[:, 1] = 0.0, -740.0
    want = np.log1p(np.exp(-740.0))
    assert want > 0
    for kernel, aux in (("sparse_from_logits", np.zeros(n, np.int64)), ("categorical_from_logits", np.eye(c)[[0] * n])):
        for grad in (None, True):
            out = run(impl, kernel, z, aux, layout=layout, grad=grad)
            assert within_ulp(out.loss, want), (kernel, out.loss[0])
            if grad:
                assert within_ulp(out.grad[:, 1], np.exp(-740.0)) and (out.grad[:, 2] == 0).all()


# ---------------------------------------------------------------------------- decision 7


@pytest.mark.parametrize("dtype", [F64, F32], ids=dname)
@pytest.mark.parametrize("layout", ["rows", "cols"])
@pytest.mark.parametrize("kernel, ls", [("sparse_from_logits", 0.0), ("sparse_from_logits", 0.1),
                                        ("sparse_from_probs", 0.0), ("sparse_from_probs", 0.1)])  # fmt: skip
def test_ignore_index_compares_labels_as_int64(impl, kernel, ls, layout, dtype):
    """A label equal to ignore_index as int64 bits is ignored (loss 0, gradient 0,
    never used as an index): uint64 2**64 - 1 with -1 or 2**64 - 1 wrapped, int64 -1
    with 2**64 - 1 wrapped, uint32 2**32 - 1 with 4294967295 (not -1, and not rounded
    to 2**32 through float32), uint8 255, int8 -1, int16 -100."""
    n, c = 64, 5
    rng = np.random.default_rng(7)
    x = rng.dirichlet(np.ones(c), n) if kernel.endswith("probs") else rng.standard_normal((n, c))
    for ldtype, value, ignore in ((np.uint64, 2**64 - 1, -1), (np.uint64, 2**64 - 1, 2**64 - 1),
                                  (np.int64, -1, 2**64 - 1), (np.uint32, 2**32 - 1, 2**32 - 1), (np.uint8, 255, 255),
                                  (np.int8, -1, -1), (np.int16, -100, -100)):  # fmt: skip
        y = rng.integers(0, c, n).astype(ldtype)
        y[::3] = np.array(value).astype(ldtype)
        ignore64 = ref.as_int64(np.array([ignore % 2**64], np.uint64))[0]  # the public layer's wrap
        want = expect(kernel, x, y, dtype=dtype, ls=ls, ignore=ignore64)
        assert (want.loss[::3] == 0).all() and (want.loss[1::3] != 0).all()
        for grad in (None, True):
            out = run(impl, kernel, x, y, dtype=dtype, layout=layout, ls=ls, ignore=ignore64, grad=grad)
            assert_matches(out, want, tol(dtype), f"{impl} {kernel} {np.dtype(ldtype).name} {ignore}")
            assert grad is None or (out.grad[::3] == 0).all()
        if ldtype == np.uint32:  # 2**32 - 1 is not -1
            out = run(impl, kernel, x[1::3], y[1::3], dtype=dtype, layout=layout, ls=ls, ignore=-1)
            assert out.bad == -1 and (out.loss != 0).all()


# ---------------------------------------------------------------------------- decision 8


@pytest.mark.parametrize("layout", ["rows", "cols"])
@pytest.mark.parametrize("dtype", [F64, F32, F16], ids=dname)
@pytest.mark.parametrize("kernel", KERNELS)
def test_loss_bits_do_not_depend_on_the_gradient_or_threads(impl, kernel, dtype, layout):
    """The per-row losses of a call with the gradient (into an array of either order,
    or in place) have the bits of the loss-only call, on 1 or 2 threads, for short
    rows too (which the Cython kernels run as columns), with pos_weight per label,
    class weights, label smoothing and per-row gradient weights."""
    rng = np.random.default_rng(8)
    for c in (1, 3, 7, 10, 16, 17, 40):
        if c == 1 and not kernel.startswith("binary"):
            continue
        rows, aux, kw = problem(kernel, 300, c, rng, dtype=dtype, ls=0.1, cw=True, pw="per_label")
        want = run(impl, kernel, rows, aux, layout=layout, **kw).loss
        modes = (True, "other_order", "inplace") if dtype == F32 else (True,)
        for threads in (1, 2):
            for grad in modes:
                g = x3 = None
                if grad == "other_order":  # a gradient array of the other memory order
                    g2 = np.zeros((300, c), F32, order="F" if layout == "rows" else "C")
                    g = g2[:, :, None] if layout == "rows" else g2.T[None]
                elif grad == "inplace":
                    x3 = place(rows, layout, dtype)
                got = run(impl, kernel, rows, aux, layout=layout, grad=None if g is not None else grad, grad_out=g,
                          x3=x3, threads=threads, **kw)  # fmt: skip
                assert got.loss.tobytes() == want.tobytes(), (c, threads, grad, np.flatnonzero(got.loss != want)[:5])
