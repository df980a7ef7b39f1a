"""bfloat16 y_pred (ml_dtypes) in every Numba kernel: read where it lies (a record
view of its bits, widened to float32 as float16 is), the gradient written in float32,
or in bfloat16 (rounded to nearest even) when the gradient buffer holds bfloat16 --
y_pred itself in place included. Against the NumPy backend's kernels, with the
float16 tolerances for float32 results and one bfloat16 step for bfloat16 ones.

Each case is a Numba compilation (a few seconds): per kernel, the rows path with a
float32 gradient and the column path with a bfloat16 gradient in place.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastxent import backends
from test_numba_kernels import KERNEL_NAMES, PATHS, make_case, per_row, place, run

pytestmark = pytest.mark.skipif(backends.unavailable_reason("numba") is not None, reason="numba unavailable")
ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F32, F64 = np.float32, np.float64


@pytest.fixture(scope="module")
def nk():
    from fastxent.backends import _numba

    return _numba


def bfloat16_case(kernel, layout, seed, ls):
    """make_case's arguments with y_pred in bfloat16, in the same layout."""
    args = make_case(kernel, F32, layout, "out", np.random.default_rng(seed), ls=ls)
    x = args[0]
    rows = np.moveaxis(x, 1, 2).reshape(-1, x.shape[1]).astype(np.float64)  # the rows, in order
    args[0] = place(rows, layout, BF16)
    return args


def kernel_run(module, kernel, args, grad, threads=2):
    """(return value, loss_out, gradient) with ``grad`` "f32" (a float32 gradient
    array), "bf16" (a bfloat16 one) or "inplace" (y_pred itself)."""
    args = list(args)
    x = args[0]
    loss = np.full((x.shape[0], x.shape[2]), np.nan)
    if grad == "inplace":
        args[0] = g = x.copy(order="K")
    else:
        g = np.full(x.shape, np.nan, F32 if grad == "f32" else BF16)
    r = module.KERNELS[kernel](*args, loss, g, threads)
    return r, loss, g


CASES = [(k, "rows", "f32") for k in KERNEL_NAMES] + [(k, "cols", "inplace") for k in KERNEL_NAMES]
CASES += [("sparse_from_logits", "strided", "bf16"), ("binary_from_logits", "nchw", "bf16")]


@pytest.mark.parametrize("kernel, layout, grad", CASES, ids=["-".join(c) for c in CASES])
def test_bfloat16_agrees_with_numpy(nk, kernel, layout, grad):
    for ls, seed in ((0.1, 0), (0.0, 1)):
        args = bfloat16_case(kernel, layout, seed, ls)
        assert nk.layout._Layout(args[0], None).path == PATHS[layout]
        want = kernel_run(backends.module("numpy"), kernel, args, grad)
        got = kernel_run(nk, kernel, args, grad)
        assert got[0] == want[0] == -1
        np.testing.assert_allclose(got[1], want[1], rtol=2e-6, atol=1e-7)
        assert got[2].dtype == want[2].dtype == (F32 if grad == "f32" else BF16)
        if grad == "f32":
            np.testing.assert_allclose(got[2], want[2], rtol=2e-6, atol=1e-7)
        else:  # float32 against float64 results, each rounded once to bfloat16: one step apart at most
            g, w = got[2].astype(F64), want[2].astype(F64)
            np.testing.assert_allclose(g, w, rtol=2.0**-7, atol=0)
            assert np.mean(g == w) > 0.95


def test_a_bfloat16_gradient_is_the_float32_one_rounded(nk):
    """The same kernel and path with a bfloat16 and a float32 gradient buffer: the
    bfloat16 gradient is the float32 one rounded to nearest even (ml_dtypes' rounding),
    bit for bit, NaN and infinities included; the loss bits do not change."""
    rng = np.random.default_rng(4)
    z = rng.standard_normal((500, 9)) * 4
    z[3, 2], z[4, :], z[5, 1] = np.nan, -np.inf, np.inf
    x = place(z, "strided", BF16)
    labels = per_row(rng.integers(0, 9, 500), x, "strided")
    args = [x, labels, np.ones(9), 0.1, -100, per_row(rng.uniform(0.5, 2, 500), x, "strided")]
    # (a float32 gradient with strided rows: like a bfloat16 one, computed in a pass of
    # its own; a contiguous one keeps the exps of the loss pass instead)
    g32, g16 = np.full(x.shape, np.nan, F32, order="F"), np.full(x.shape, np.nan, BF16)
    loss32, loss16 = np.empty((500, 1)), np.empty((500, 1))
    nk.KERNELS["sparse_from_logits"](*args, loss32, g32, 2)
    nk.KERNELS["sparse_from_logits"](*args, loss16, g16, 2)
    assert loss16.tobytes() == loss32.tobytes()
    assert g16.view(np.uint16).tobytes() == g32.astype(BF16).view(np.uint16).tobytes()
    assert np.isnan(g16[3].astype(F32)).all() and np.isnan(g16[4].astype(F32)).all()


def test_bfloat16_is_read_through_a_record_view_without_a_copy(nk):
    x = np.linspace(-4, 4, 60).astype(BF16).reshape(10, 6, 1)
    view = nk.layout._numba_view(x)
    assert view.dtype == nk.layout._BF16 and np.shares_memory(view, x)
    layout = nk.layout._Layout(x, x)  # in place: the gradient goes into y_pred's own bits
    assert layout.g is True and np.shares_memory(layout.x, x)
    grad = np.empty(x.shape, BF16)
    assert np.shares_memory(nk.layout._Layout(x, grad).g, grad)


def test_bfloat16_extras_in_place(nk):
    """sparse_from_logits with softcap, z_loss, lse and ranks on bfloat16 logits,
    the gradient written over them."""
    z = np.random.default_rng(5).standard_normal((40, 6)) * 5
    x = place(z, "rows", BF16)
    labels = np.random.default_rng(6).integers(0, 6, (40, 1))
    labels[7] = -100
    extras = dict(z_loss=1e-3, softcap=4.0)
    out = []
    for module in (backends.module("numpy"), nk):
        g = x.copy()
        loss, lse, rank = np.empty((40, 1)), np.empty((40, 1)), np.empty((40, 1), np.int64)
        module.KERNELS["sparse_from_logits"](g, labels, np.ones(6), 0.0, -100, np.ones((40, 1)), loss, g, 2,
                                             lse_out=lse, rank_out=rank, **extras)  # fmt: skip
        out.append((loss, g.astype(F64), lse, rank))
    (loss0, g0, lse0, rank0), (loss1, g1, lse1, rank1) = out
    np.testing.assert_allclose(loss1, loss0, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(lse1, lse0, rtol=2e-6, atol=1e-7)
    np.testing.assert_array_equal(rank1, rank0)
    np.testing.assert_allclose(g1, g0, rtol=2.0**-7, atol=1e-30)


def test_bfloat16_rounding_and_widening_are_ml_dtypes(nk):
    """float32 and float64 -> bfloat16 bits as ml_dtypes rounds them (nearest even,
    float64 rounded once; ties, overflow to inf, subnormals, quiet NaN of each sign),
    and bfloat16 -> float32 exactly, over random bit patterns and the edge cases."""
    import numba

    from fastxent.backends._numba.intrinsics import _bfloat16_to_float, _float_to_bfloat16

    @numba.njit
    def narrow(a, out):
        for k in range(a.shape[0]):
            out[k] = _float_to_bfloat16(a[k])

    @numba.njit
    def widen(b, out):
        for k in range(b.shape[0]):
            out[k] = _bfloat16_to_float(b[k])

    rng = np.random.default_rng(7)
    f32 = rng.integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32).view(F32)
    ties = (rng.integers(0, 2**16, 1000, dtype=np.uint32) << 16 | 0x8000).view(F32)  # exactly halfway
    edges = np.array([np.inf, -np.inf, np.nan, -np.nan, 0.0, -0.0, 3.4e38, 3.3961e38, 1e-40, -1e-45], F32)
    f64 = np.concatenate([rng.standard_normal(300_000) * 10.0 ** rng.uniform(-45, 40, 300_000),
                          1 + 2.0**-8 + rng.integers(-2**20, 2**20, 100_000) * 2.0**-48,  # near a tie
                          [1 + 2**-8 + 2**-40, 1e300, -1e300, 3.3961e38, np.nan, 1e-300, -1e-300]])  # fmt: skip
    with np.errstate(all="ignore"):
        for a in (np.concatenate([f32, ties, edges]), f64):
            got = np.empty(a.size, np.uint16)
            narrow(a, got)
            np.testing.assert_array_equal(got, a.astype(BF16).view(np.uint16))
    bits = np.arange(2**16, dtype=np.uint16)  # every bfloat16 value
    got = np.empty(bits.size, F32)
    widen(bits, got)
    np.testing.assert_array_equal(got.view(np.uint32), bits.view(BF16).astype(F32).view(np.uint32))
