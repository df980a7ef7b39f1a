"""z_loss, logit_softcap, return_lse and the evaluation metrics, against float64
formulas written out here (scipy's logsumexp, numpy's argmax/argsort) and finite
differences, on every backend that runs them."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp

import fastxent as fx
from helpers import call

SPARSE = fx.sparse_categorical_crossentropy


def reference(labels, x, *, z_loss=0.0, cap=None, ignore=None, class_weight=None):
    """Per-row float64 loss and logsumexp of the (capped) logits, from the formulas."""
    z = x.astype(np.float64)
    if cap:
        z = cap * np.tanh(z / cap)
    lse = logsumexp(z, axis=1)
    valid = np.ones(len(labels), bool) if ignore is None else labels != ignore
    safe = np.where(valid, labels, 0)
    w = np.ones(x.shape[1]) if class_weight is None else np.asarray(class_weight, float)
    loss = w[safe] * (lse - z[np.arange(len(labels)), safe]) + z_loss * lse**2
    return np.where(valid, loss, 0.0), lse


def _data(rng, n=37, c=11, dtype=np.float64):
    x = (rng.standard_normal((n, c)) * 3).astype(dtype)
    y = rng.integers(0, c, n)
    y[::5] = -100
    return y, x


@pytest.mark.parametrize("z_loss, cap", [(1e-2, None), (0.0, 2.5), (1e-3, 5.0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_and_lse_against_the_formulas(backend, z_loss, cap, dtype):
    rng = np.random.default_rng(4)
    y, x = _data(rng, dtype=dtype)
    kw = dict(from_logits=True, ignore_index=-100, z_loss=z_loss, logit_softcap=cap, return_lse=True,
              reduction="none", backend=backend)
    loss, lse = call(SPARSE, y, x, **kw)
    want_loss, want_lse = reference(y, x, z_loss=z_loss, cap=cap, ignore=-100)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(loss, want_loss, **tol)
    np.testing.assert_allclose(lse, want_lse, **tol)  # every row, ignored ones included
    assert lse.dtype == loss.dtype == np.dtype(dtype)


@pytest.mark.parametrize("z_loss, cap", [(1e-2, None), (0.0, 2.5), (5e-2, 3.0)])
def test_gradient_is_the_derivative_of_the_loss(backend, z_loss, cap):
    rng = np.random.default_rng(5)
    y, x = _data(rng, n=6, c=5)
    kw = dict(from_logits=True, ignore_index=-100, z_loss=z_loss, logit_softcap=cap, reduction="sum",
              class_weight=np.linspace(0.5, 2.0, 5), backend=backend)
    _, grad = call(SPARSE, y, x, return_grad=True, **kw)
    numeric = np.zeros_like(x)
    h = 1e-6
    for idx in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        numeric[idx] = (float(SPARSE(y, up, **kw)) - float(SPARSE(y, down, **kw))) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_gradient_formula_with_z_loss(backend):
    rng = np.random.default_rng(6)
    y = rng.integers(0, 7, 9)
    x = rng.standard_normal((9, 7))
    _, grad, lse = call(SPARSE, y, x, from_logits=True, z_loss=0.1, reduction="sum", return_grad=True,
                        return_lse=True, backend=backend)
    q = np.exp(x - logsumexp(x, axis=1, keepdims=True))
    want = q - np.eye(7)[y] + 2 * 0.1 * lse[:, None] * q
    np.testing.assert_allclose(grad, want, rtol=1e-12, atol=1e-14)


def test_softcap_saturates_extreme_logits(backend):
    x = np.array([[1e4, -1e4, 0.0], [np.inf, 0.0, -np.inf]])
    loss, grad, lse = call(SPARSE, np.array([1, 0]), x, from_logits=True, logit_softcap=30.0, reduction="none",
                           return_grad=True, return_lse=True, backend=backend)
    # capped: [30, -30, 0] and [30, 0, -30]; written without cancellation
    want_lse = 30.0 + np.log1p(np.exp(-30.0) + np.exp(-60.0))
    np.testing.assert_allclose(lse, [want_lse, want_lse], rtol=1e-15)
    np.testing.assert_allclose(loss, [want_lse + 30.0, np.log1p(np.exp(-30.0) + np.exp(-60.0))], rtol=1e-12)
    assert np.isfinite(grad).all() and grad[0, 0] == 0 and grad[1, 0] == 0  # tanh' = 0 there


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_ignored_row_of_nan_stays_out_under_the_cap(backend, dtype):
    x = np.array([[0.5, -1.0, 2.0], [np.nan, np.nan, np.nan], [1.0, 0.0, -1.0]], dtype)
    loss, grad = call(SPARSE, np.array([2, -100, 0]), x, from_logits=True, logit_softcap=4.0, z_loss=1e-3,
                      ignore_index=-100, reduction="none", return_grad=True, backend=backend)
    assert loss[1] == 0 and np.isfinite(loss).all()
    assert (grad[1] == 0).all() and np.isfinite(grad).all()


def test_defaults_change_nothing(backend):
    rng = np.random.default_rng(7)
    y, x = _data(rng)
    plain = call(SPARSE, y, x, from_logits=True, ignore_index=-100, backend=backend)
    same = call(SPARSE, y, x, from_logits=True, ignore_index=-100, z_loss=0.0, logit_softcap=None,
                backend=backend)
    assert plain.tobytes() == same.tobytes()


def test_bad_options_are_named():
    y, x = np.array([0]), np.array([[0.3, 0.7]])
    with pytest.raises(ValueError, match="z_loss: expected a finite number >= 0"):
        SPARSE(y, x, from_logits=True, z_loss=-1)
    with pytest.raises(ValueError, match="logit_softcap: expected None or a finite number > 0"):
        SPARSE(y, x, from_logits=True, logit_softcap=0)
    with pytest.raises(ValueError, match="return_lse: needs logits"):
        SPARSE(y, x, return_lse=True)
    with pytest.raises(ValueError, match="z_loss: needs logits"):
        SPARSE(y, x, z_loss=1e-4)
    with pytest.raises(TypeError, match="return_lse"):
        SPARSE(y, x, from_logits=True, return_lse=1)


# --------------------------------------------------------------------------- metrics


def _metrics_reference(labels, scores, ks, ignore=-100):
    valid = labels != ignore
    order = np.argsort(-scores, axis=1, kind="stable")  # ties: the lower index first, as argmax
    pos = np.argmax(order == np.where(valid, labels, 0)[:, None], axis=1)
    acc = float(np.mean((np.argmax(scores, axis=1) == labels)[valid]))
    return acc, {k: float(np.mean((pos < k)[valid])) for k in ks}


@pytest.mark.parametrize("from_logits", [True, False])
def test_metrics_against_argmax_and_argsort(backend, from_logits):
    rng = np.random.default_rng(8)
    y, x = _data(rng, n=200, c=12)
    x = np.round(x)  # many ties
    scores = x if from_logits else np.exp(x - logsumexp(x, axis=1, keepdims=True))
    try:
        m = fx.sparse_metrics(y, scores, from_logits=from_logits, top_k=(1, 3, 5), ignore_index=-100,
                              backend=backend)
    except RuntimeError as exc:  # a backend that cannot run this call says so
        pytest.skip(str(exc))
    acc, top = _metrics_reference(y, scores, (1, 3, 5))
    assert m.accuracy == pytest.approx(acc) and m.top_k[1] == pytest.approx(acc)
    for k in (3, 5):
        assert m.top_k[k] == pytest.approx(top[k])
    loss = SPARSE(y, scores, from_logits=from_logits, ignore_index=-100, backend=backend)
    assert m.loss == pytest.approx(float(loss), rel=1e-12)
    assert m.perplexity == pytest.approx(np.exp(float(loss)), rel=1e-12)
    assert m.count == int(np.sum(y != -100))


def test_metrics_rows_with_nan_never_count_and_weights_weigh():
    x = np.array([[np.nan, 0.0], [2.0, 1.0], [0.0, 3.0]])
    m = fx.sparse_metrics([0, 0, 0], x, from_logits=True, top_k=2)
    assert m.accuracy == pytest.approx(1 / 3) and m.top_k[2] == pytest.approx(2 / 3)
    w = fx.sparse_metrics([0, 0, 0], x, from_logits=True, sample_weight=[1.0, 3.0, 0.0])
    assert w.accuracy == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="top_k"):
        fx.sparse_metrics([0], np.array([[1.0, 0.0]]), top_k=0)
