"""The implementations of the kernel table (KERNELS.md) that tests/test_kernels.py
runs, one call helper for all of them, and the reference's answer to the same call.

An implementation is a backend's ``KERNELS`` table: ``numpy``, ``numba``, and the
Cython extension with each of its instruction-set tables (``cython-default``,
``cython-avx2``, ``cython-avx512``; ``_set_simd`` forces one for the test).
"""

from __future__ import annotations

import numpy as np
import pytest

import reference as ref
from fastxent import backends
from fastxent._reduce import BLOCK_ROWS
from helpers import layout_shape, per_row, place, rows_of

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is a test dependency
    BF16 = None

KERNELS = ("sparse_from_logits", "sparse_from_probs", "categorical_from_logits", "categorical_from_probs",
           "binary_from_logits", "binary_from_probs")  # fmt: skip
IGNORE = -100


def _cython_tables():
    try:
        from fastxent.backends import _cython_ext
    except ImportError:
        return ["cython"]  # skipped by the fixture, saying why
    return [f"cython-{isa}" for isa in _cython_ext.simd_info()["compiled"]]


IMPL_NAMES = ["numpy", "numba"] + _cython_tables()


class Impl:
    """One implementation of the kernel table."""

    def __init__(self, name):
        self.name = name
        self.backend, _, self.isa = name.partition("-")
        self.kernels = backends.module(self.backend).KERNELS
        #: KERNELS.md: ``block_sums`` is a keyword of the Cython and Numba kernels only
        self.block_sums = self.backend != "numpy"

    def __call__(self, kernel, *args, block_sums=False, **keywords):
        if block_sums:
            if not self.block_sums:
                pytest.skip(f"{self.name}: no block_sums keyword (KERNELS.md)")
            keywords["block_sums"] = True
        return self.kernels[kernel](*args, **keywords)

    def __repr__(self):
        return self.name


def make_impl(name):
    """The implementation ``name``, or a skip saying why it cannot run here."""
    backend, _, isa = name.partition("-")
    reason = backends.unavailable_reason(backend)
    if reason is not None:
        pytest.skip(f"{name}: {reason}")
    if isa:
        from fastxent.backends import _cython_ext

        if isa not in _cython_ext.simd_info()["cpu_supports"]:
            pytest.skip(f"{name}: this CPU cannot run the {isa} table")
    return Impl(name)


def grad_dtype(dtype):
    """The gradient's dtype by default: float64 for float64 input, else float32."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def exact(rows, dtype):
    """The float64 values the kernels read: rows rounded to ``dtype``."""
    return np.asarray(rows, np.float64).astype(dtype).astype(np.float64)


def pos_weight_arg(weights, shape):
    """pos_weight as the kernels take it, (C, I): ones (zero strides), one value per
    label (``(C,)``, broadcast over I) or a full (C, I) array."""
    _, c, i = shape
    if weights is None:
        return np.broadcast_to(np.ones((1, 1)), (c, i))
    weights = np.asarray(weights, np.float64)
    return np.broadcast_to(weights.reshape(c, 1), (c, i)) if weights.ndim == 1 else weights


class Out:
    """A kernel call's outputs as rows: ``bad``, ``loss`` (per row, or the block sums),
    ``grad`` (R, C) float64 or None, ``lse`` and ``rank`` or None."""

    def __init__(self, bad, loss, grad, lse, rank):
        self.bad, self.loss, self.grad, self.lse, self.rank = bad, loss, grad, lse, rank


def run(impl, kernel, rows, aux, *, layout="rows", dtype=None, weights=None, ls=0.0, ignore=-1, eps=1e-7,
        gw=None, grad=None, threads=1, block_sums=False, x3=None, grad_out=None, lse=False, rank=False,
        **extras):  # fmt: skip
    """One call of ``kernel`` through ``impl`` on rows (R, C) laid out as ``layout``.

    ``aux``: labels (R,) or dense targets (R, C) (kept in their dtype); ``weights``:
    class_weight (C,) or pos_weight (see ``pos_weight_arg``); ``gw``: grad_weight (R,);
    ``grad``: None (loss only), True (the default gradient dtype), a dtype, or
    "inplace" (grad_out = x); ``x3``/``grad_out``: arrays to use as they are;
    ``lse``/``rank``: ask for lse_out/rank_out; ``extras``: z_loss, softcap."""
    rows = np.asarray(rows)
    dtype = (rows.dtype if x3 is None else x3.dtype) if dtype is None else np.dtype(dtype)
    n, c = rows.shape
    x3 = place(rows, layout, dtype) if x3 is None else x3
    o, _, i = x3.shape
    sparse = kernel.startswith("sparse")
    if x3.shape == layout_shape(layout, n, c):
        a = per_row(np.asarray(aux), layout) if sparse else place(np.asarray(aux), layout)
        gwv = per_row(np.ones(n) if gw is None else np.asarray(gw, np.float64), layout)
    else:  # an x3 of the caller's own shape: the other arguments C-ordered in that shape
        a = np.asarray(aux).reshape(o, i) if sparse else np.asarray(aux).reshape(o, i, c).transpose(0, 2, 1)
        gwv = (np.ones(n) if gw is None else np.asarray(gw, np.float64)).reshape(o, i)
        layout = None
    loss = np.full(-(-n // BLOCK_ROWS) if block_sums else (o, i), -12345.0)
    if grad == "inplace":
        grad_out = x3
    elif grad is not None and grad_out is None:
        gdt = grad_dtype(dtype) if grad is True else grad
        if layout is None:
            grad_out = np.full(x3.shape, np.nan, gdt)
        else:
            grad_out = place(np.full((n, c), np.nan), "odd" if layout == "unaligned" else layout, gdt)
    keywords = dict(extras)
    if lse:
        keywords["lse_out"] = np.full((o, i), -777.0)
    if rank:
        keywords["rank_out"] = np.full((o, i), -777, np.int64)
    if kernel.startswith("binary"):
        args = [x3, a, pos_weight_arg(weights, x3.shape), ls]
    else:
        cw = np.ones(c) if weights is None else np.ascontiguousarray(weights, np.float64)
        args = [x3, a, cw, ls] + ([ignore] if sparse else [])
    if kernel.endswith("probs"):
        args.append(eps)
    bad = impl(kernel, *args, gwv, loss, grad_out, threads, block_sums=block_sums, **keywords)
    return Out(bad, loss.reshape(-1), None if grad_out is None else rows_of(grad_out).astype(np.float64),
               keywords["lse_out"].reshape(-1) if lse else None, keywords["rank_out"].reshape(-1) if rank else None)


def expect(kernel, rows, aux, *, layout="rows", dtype=None, weights=None, ls=0.0, ignore=-1, eps=1e-7, gw=None,
           **extras):  # fmt: skip
    """The reference's answer (reference.KernelResult) to the call ``run`` makes."""
    rows = np.asarray(rows)
    dtype = rows.dtype if dtype is None else np.dtype(dtype)
    x = exact(rows, dtype)
    if kernel.startswith("binary"):
        o, c, i = layout_shape(layout, *rows.shape)
        pw = np.broadcast_to(pos_weight_arg(weights, (o, c, i))[None], (o, c, i))
        weights = rows_of(pw)
    aux = np.asarray(aux)
    if aux.dtype == BF16:
        aux = aux.astype(np.float32)
    extras = {k: v for k, v in extras.items() if k in ("z_loss", "softcap")}
    return ref.kernel(kernel, x, aux, weights=weights, ls=ls, ignore=ignore, eps=eps, gw=gw, dtype=dtype, **extras)


#: float32-computed results: 2e-6 relative, 1e-7 absolute (at most 1e-5 of the scale)
F32_RTOL = 2e-6


def tol(dtype):
    """Tolerance against the float64 reference: float64 input 1e-12 of a result's scale
    (the kernels' exp/log are ~1 ulp, their sums in another order); float16, bfloat16
    and float32 input (computed in float32, ~6e-8 an operation, summed in float64)
    2e-6 relative and 1e-7 absolute, at most 1e-5 of the scale."""
    return 1e-12 if np.dtype(dtype) == np.float64 else F32_RTOL


def assert_close(got, want, rtol, what="", atol=None):
    """got == want within rtol (and, absolutely, rtol of the result's scale, at least 1;
    for float32-computed results, 1e-7 at most); NaN and inf where want has them."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    finite = np.isfinite(want)
    scale = max(1.0, float(np.max(np.abs(want[finite])))) if finite.any() else 1.0
    if atol is None:
        atol = min(1e-7, 1e-5 * scale) if rtol == F32_RTOL else rtol * scale
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def assert_matches(out, want, rtol, what="", grad=True):
    """A call's outputs against the reference's: status, loss, gradient, lse, rank."""
    assert out.bad == want.bad, f"{what}: first bad row {out.bad}, want {want.bad}"
    if want.bad >= 0:
        return
    assert_close(out.loss, want.loss, rtol, what + " loss")
    if grad and out.grad is not None:
        assert_close(out.grad, want.grad, rtol, what + " gradient")
    if out.lse is not None:
        assert_close(out.lse, want.lse, rtol, what + " lse")
    if out.rank is not None:
        np.testing.assert_array_equal(out.rank, want.rank, err_msg=what + " rank")
