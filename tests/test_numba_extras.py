"""The Numba ``sparse_from_logits`` kernel's optional keywords -- z_loss, softcap,
lse_out, rank_out -- on every layout path, against the NumPy backend's kernel (the
readable statement of their formulas), 50-digit references and plain argsort ranks.

Each case below is one Numba compilation (a few seconds), so the cases are few and
chosen to cover each path (rows, columns, any strides), dtype, gradient mode and
softcap state at least once; ``tests/test_llm_options.py`` runs the public options
on Numba too.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from fastxent import backends
from test_numba_kernels import PATHS, per_row, place

pytestmark = pytest.mark.skipif(backends.unavailable_reason("numba") is not None, reason="numba unavailable")

F16, F32, F64 = np.float16, np.float32, np.float64
KERNEL = "sparse_from_logits"


@pytest.fixture(scope="module")
def nk():
    from fastxent.backends import _numba

    return _numba


def special_rows(rng, n=24, c=7):
    """(logits (n, c) float64, labels): random rows and the hard ones."""
    z = rng.standard_normal((n, c)) * 3
    y = rng.integers(0, c, n)
    z[0, (y[0] + 1) % c] = -np.inf  # a masked class
    z[1, y[1]] = 40.0  # a dominant label
    z[2] = np.round(z[2] / 2)  # ties, the label among them
    z[2, y[2]] = z[2, (y[2] + 3) % c] = z[2].max()
    y[3] = -100  # ignored
    y[4] = -100  # ignored, holding NaN: loss 0, gradient 0, lse NaN
    z[4, 2] = np.nan
    z[5, 3] = np.nan  # a NaN row
    z[6] = -np.inf  # every class masked
    z[7, 1] = np.inf  # +inf
    z[8, ::2] = 1e4  # beyond any softcap
    z[9, (y[9] + 2) % c] = 40.0  # a dominant class that is not the label
    return z, y


def kernel_call(module, args, grad, extras, threads=2, block_sums=False):
    """(loss_out, gradient, lse_out, rank_out) of one sparse_from_logits call."""
    args = list(args)
    x = args[0]
    o, _, i = x.shape
    loss = np.full((o, i), 7.0)
    if grad == "none":
        g = None
    elif grad == "inplace":
        args[0] = g = x.copy()
    else:
        g = np.full(x.shape, 7.0, F64 if x.dtype == F64 else F32)
    extras = dict(extras)
    if extras.pop("lse", False):
        extras["lse_out"] = np.full((o, i), 7.0)
    if extras.pop("rank", False):
        extras["rank_out"] = np.full((o, i), 7, np.int64)
    if block_sums:
        loss = np.full(-(-o * i // 16384), 7.0)
    if block_sums:
        extras["block_sums"] = True
    assert module.KERNELS[KERNEL](*args, loss, g, threads, **extras) == -1
    extras.pop("block_sums", None)
    return loss, g, extras.get("lse_out"), extras.get("rank_out")


def tolerances(dtype):
    return {"rtol": 1e-12, "atol": 1e-14} if dtype == F64 else {"rtol": 2e-6, "atol": 1e-7}


#: (layout, dtype, gradient, softcap): one compilation each.
CASES = [
    ("rows", F32, "out", None),
    ("rows", F64, "none", 2.5),
    ("cols", F32, "inplace", 3.0),
    ("nchw", F64, "out", None),
    ("strided", F16, "out", 2.5),
]


@pytest.mark.parametrize("layout, dtype, grad, cap", CASES, ids=["-".join(map(str, c[:1] + (np.dtype(c[1]).name,) + c[2:]))
                                                                  for c in CASES])  # fmt: skip
def test_extras_agree_with_numpy(nk, layout, dtype, grad, cap):
    z, y = special_rows(np.random.default_rng(1))
    x = place(z, layout, dtype)
    assert nk.layout._Layout(x, None).path == PATHS[layout]
    gw = per_row(np.random.default_rng(2).uniform(0.5, 2, len(y)), x, layout)
    w = np.random.default_rng(3).uniform(0.5, 2, z.shape[1])
    extras = dict(z_loss=1e-2, softcap=cap or 0.0, lse=True, rank=True)
    for ls in (0.0, 0.1):
        args = [x, per_row(y, x, layout), w, ls, -100, gw]
        want = kernel_call(backends.module("numpy"), args, grad, extras)
        got = kernel_call(nk, args, grad, extras)
        tol = tolerances(dtype)
        np.testing.assert_allclose(got[0], want[0], **tol)
        np.testing.assert_allclose(got[2], want[2], **tol)
        np.testing.assert_array_equal(got[3], want[3])
        if grad != "none":
            got_g, want_g = got[1].copy(), want[1].copy()
            # an ignored row's gradient is 0 whatever it holds (KERNELS.md); the NumPy
            # backend multiplies it by the softcap's factor, NaN at the NaN logit
            ignored = per_row(y == -100, x, layout)
            assert (np.moveaxis(got_g, 1, 2)[ignored] == 0).all()
            np.moveaxis(want_g, 1, 2)[ignored] = 0.0
            np.testing.assert_allclose(got_g, want_g, **tol)
    rank = got[3].reshape(-1) if layout in ("rows", "cols") else None
    if rank is not None:  # (the flat row order of these two layouts is the rows' order)
        assert rank[3] == rank[4] == -1 and rank[5] == z.shape[1]


@pytest.mark.parametrize("dtype", [F64, F32])
def test_z_loss_gradient_at_a_dominant_label_is_exact(nk, dtype):
    """The label 40 above every other class: q_y - 1 = -R / S is ~1e-17, far below
    float64's resolution of q_y; the gradient (1 + 2 z lse) q_y - 1 must keep it
    (against 50 digits), and so must the loss and lse."""
    mpmath.mp.dps = 50
    z = np.array([[40.0, 1.0, -2.0, 0.5], [-3.0, 0.0, 41.5, 2.0], [0.3, 0.1, -0.2, 0.0]])
    y = np.array([0, 2, 1])
    zl = 1e-2
    x = z.astype(dtype)[:, :, None]
    loss, g, lse, _ = kernel_call(nk, [x, y[:, None], np.ones(4), 0.0, -100, np.ones((3, 1))], "out",
                                  dict(z_loss=zl, lse=True))  # fmt: skip
    for r in range(3):
        xs = [mpmath.mpf(float(v)) for v in x[r, :, 0]]
        s = mpmath.fsum(mpmath.exp(v) for v in xs)
        want_lse = mpmath.log(s)
        want_loss = want_lse - xs[y[r]] + zl * want_lse**2
        for c in range(4):
            q = mpmath.exp(xs[c] - want_lse)
            want_g = (1 + 2 * zl * want_lse) * q - (1 if c == y[r] else 0)
            rtol = 1e-14 if dtype == F64 else 2e-6
            assert abs(float(g[r, c, 0]) - float(want_g)) <= rtol * abs(float(want_g)), (r, c, g[r, c, 0], want_g)
        assert float(loss[r, 0]) == pytest.approx(float(want_loss), rel=1e-14 if dtype == F64 else 1e-6)
        assert float(lse[r, 0]) == pytest.approx(float(want_lse), rel=1e-15 if dtype == F64 else 1e-6)


@pytest.mark.parametrize("layout", ["rows", "cols"])
def test_rank_breaks_ties_as_argmax(nk, layout):
    """Many ties (logits rounded to a few values): the rank of the label is its
    position in a stable argsort of -z (the lower index first, as np.argmax)."""
    rng = np.random.default_rng(5)
    z = np.round(rng.standard_normal((300, 9)))
    y = rng.integers(0, 9, 300)
    y[::7] = -100
    z[11, 4] = np.nan
    y[11] = 2
    x = place(z, layout, F32)
    args = [x, per_row(y, x, layout), np.ones(9), 0.0, -100, per_row(np.ones(300), x, layout)]
    _, _, _, rank = kernel_call(nk, args, "out" if layout == "rows" else "inplace",
                                dict(rank=True, softcap=0.0 if layout == "rows" else 3.0))  # fmt: skip
    order = np.argsort(-z, axis=1, kind="stable")
    want = np.argmax(order == np.where(y == -100, 0, y)[:, None], axis=1)
    want[y == -100] = -1
    want[11] = 9
    np.testing.assert_array_equal(rank.reshape(-1) if layout == "rows" else rank[0], want)


def test_asking_for_lse_or_ranks_changes_no_loss_bits(nk):
    """The same loss and gradient bits with or without lse_out / rank_out (and z_loss
    0, no softcap), as the plain kernel's, on 1 or 2 threads; block sums are the
    NumPy sums of those rows, and lse and ranks come out the same alongside."""
    from fastxent import _reduce

    z, y = special_rows(np.random.default_rng(6), n=40_000, c=5)
    x = place(z, "rows", F32)
    args = [x, y[:, None], np.ones(5), 0.0, -100, np.ones((len(y), 1))]
    plain = kernel_call(nk, args, "out", {}, threads=1)
    for threads in (1, 2):
        got = kernel_call(nk, args, "out", dict(lse=True, rank=True), threads=threads)
        assert got[0].tobytes() == plain[0].tobytes() and got[1].tobytes() == plain[1].tobytes()
        summed = kernel_call(nk, args, "out", dict(lse=True, rank=True), threads=threads, block_sums=True)
        assert summed[0].tobytes() == _reduce.block_sums(plain[0]).tobytes()
        assert summed[2].tobytes() == got[2].tobytes() and summed[3].tobytes() == got[3].tobytes()


def test_one_class_rows_are_flattened_with_their_lse_and_ranks(nk):
    """C == 1 (the rows become one long inner axis): the lse of the capped logit is the
    capped logit itself, the rank 0 (C for NaN), the gradient 0 (or NaN)."""
    z = np.array([[0.5], [-2.0], [np.nan], [40.0]], F32)
    loss, g, lse, rank = kernel_call(nk, [z[:, :, None], np.array([[0], [0], [0], [-100]]), np.ones(1), 0.0, -100,
                                          np.ones((4, 1))], "inplace", dict(softcap=3.0, lse=True, rank=True))  # fmt: skip
    capped = 3.0 * np.tanh(z[:, 0].astype(F64) / 3.0)
    np.testing.assert_allclose(lse[:, 0], capped, rtol=1e-6)
    np.testing.assert_array_equal(rank[:, 0], [0, 0, 1, -1])
    np.testing.assert_array_equal(loss[:, 0], [0.0, 0.0, np.nan, 0.0])
    np.testing.assert_array_equal(g[:, 0, 0], [0.0, 0.0, np.nan, 0.0])


def test_tanh_accuracy(nk):
    """The softcap's tanh: within 1.5 ulp of float64's in float32, within 2 ulp of
    NumPy's in float64 (each within 1 of the truth); limits and NaN."""
    import numba

    @numba.njit(fastmath={"contract"})
    def tanh(x):
        out = np.empty_like(x)
        for k in range(x.shape[0]):
            out[k] = nk.math._tanh(x[k])
        return out

    def ulp(got, want, dtype):
        spacing = np.spacing(np.abs(want).astype(dtype)).astype(F64)
        return np.abs(got.astype(F64) - want) / spacing

    x32 = np.concatenate([np.linspace(-12, 12, 1_000_001, dtype=F32), np.geomspace(1e-38, 12, 100_000, dtype=F32)])
    assert ulp(tanh(x32), np.tanh(x32.astype(F64)), F32).max() <= 1.5
    x64 = np.concatenate([np.linspace(-22, 22, 1_000_001), np.geomspace(1e-300, 22, 100_000)])
    assert ulp(tanh(x64), np.tanh(x64), F64).max() <= 2.0
    for dt in (F32, F64):
        got = tanh(np.array([np.inf, -np.inf, 800.0, -800.0, 0.0, np.nan], dt))
        np.testing.assert_array_equal(got, [1.0, -1.0, 1.0, -1.0, 0.0, np.nan])
