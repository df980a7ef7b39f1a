"""Extreme values: huge logits, infinities, NaN, saturated probabilities, 1 / 2 / 50,000
classes, and a target class so dominant that only careful arithmetic sees its loss."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from helpers import call, tolerances
from oracle import expected

import fastxent

scce = fastxent.sparse_categorical_crossentropy
cce = fastxent.categorical_crossentropy
bce = fastxent.binary_crossentropy


def exact_sparse_from_logits(row, y):
    """-log softmax(row)[y] and its gradient, to 50 digits (mpmath)."""
    mpmath.mp.dps = 50
    xs = [mpmath.mpf(float(v)) for v in row]
    s = mpmath.fsum(mpmath.exp(v) for v in xs)
    loss = mpmath.log(s) - xs[y]
    grad = [mpmath.exp(v) / s - (1 if c == y else 0) for c, v in enumerate(xs)]
    return float(loss), np.array([float(g) for g in grad])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_classes", [2, 10, 1000])
@pytest.mark.parametrize("gap", [20.0, 40.0, 80.0])
def test_dominant_target_class_is_exact(backend, dtype, n_classes, gap):
    """loss = log1p(sum of the others), gradient at y = -(sum of other probabilities):
    tiny, and exact to the dtype's precision rather than rounded to 0."""
    row = np.zeros(n_classes, dtype=dtype)
    row[1] = gap
    row[2 % n_classes] = gap / 2 if n_classes > 2 else row[0]
    loss, grad = call(scce, np.array([1]), row[None], backend=backend, from_logits=True, return_grad=True)
    want_loss, want_grad = exact_sparse_from_logits(row, 1)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    # float32 cannot hold exp(-gap) once it underflows (about e^-87): no value to check there.
    np.testing.assert_allclose(loss, want_loss, rtol=rtol, atol=1e-300)
    assert loss > 0
    np.testing.assert_allclose(grad[0], want_grad, rtol=rtol, atol=1e-300)
    assert grad[0, 1] < 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_huge_logits_give_large_exact_losses(backend, dtype):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype=dtype)
    y = np.array([1, 0])
    losses, grad = call(scce, y, z, backend=backend, from_logits=True, reduction="none", return_grad=True)
    np.testing.assert_allclose(losses, [2e4, 2e4 + np.log(2)], rtol=1e-7)
    np.testing.assert_allclose(grad, [[1, -1, 0], [-1, 0.5, 0.5]], atol=1e-7)
    b = call(bce, np.array([0.0, 1.0, 1.0, 0.0]), np.array([1e4, -1e4, 1e4, -1e4], dtype), backend=backend,
             from_logits=True, reduction="none")  # fmt: skip
    np.testing.assert_allclose(b, [1e4, 1e4, 0.0, 0.0], rtol=1e-7, atol=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["sparse", "categorical"])
def test_masked_classes_give_finite_losses_and_gradients(backend, dtype, kind):
    z = np.array([[2.0, -np.inf, 0.5, -np.inf], [-np.inf, -np.inf, 1.0, 3.0]], dtype=dtype)
    y = np.array([0, 3])
    y_true = y if kind == "sparse" else np.eye(4)[y]
    fn = scce if kind == "sparse" else cce
    losses, grad = call(fn, y_true, z, backend=backend, from_logits=True, reduction="none", return_grad=True)
    want_loss, want_grad = expected(kind, y_true, z, from_logits=True, reduction="none")
    assert np.isfinite(losses).all() and np.isfinite(grad).all()
    np.testing.assert_allclose(losses, want_loss, **tolerances(dtype))
    np.testing.assert_allclose(grad, want_grad, **tolerances(dtype))
    assert (grad[np.isneginf(z)] == 0).all()


@pytest.mark.parametrize("kind", ["sparse", "categorical"])
def test_neg_inf_at_a_positive_target_gives_inf(backend, kind):
    z = np.array([[-np.inf, 1.0, 0.0], [-np.inf, -np.inf, -np.inf], [0.0, 1.0, 2.0]])
    y = np.array([0, 1, 2])
    y_true = y if kind == "sparse" else np.eye(3)[y]
    fn = scce if kind == "sparse" else cce
    losses, grad = call(fn, y_true, z, backend=backend, from_logits=True, reduction="none", return_grad=True)
    assert losses[0] == np.inf and np.isfinite(grad[0]).all()
    np.testing.assert_allclose(grad[0], [-1.0, np.e / (np.e + 1), 1 / (np.e + 1)])
    assert losses[1] == np.inf and np.isnan(grad[1]).all()  # every class masked: undefined softmax
    assert np.isfinite(losses[2])
    # with label smoothing every class has a positive target, so a masked class costs +inf
    smoothed = call(fn, y_true[2:], z[2:] - np.array([np.inf, 0, 0]), backend=backend, from_logits=True,
                    label_smoothing=0.1, reduction="none")  # fmt: skip
    assert smoothed[0] == np.inf


@pytest.mark.parametrize("kind", ["sparse", "categorical", "binary"])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_nan_stays_in_its_row(backend, rng, kind, from_logits):
    z = rng.standard_normal((4, 3))
    y_pred = z if from_logits else np.full((4, 3), 1 / 3)
    y_pred[2, 1] = np.nan
    y = np.array([0, 1, 1, 2])
    y_true = {"sparse": y, "categorical": np.eye(3)[y], "binary": np.eye(3)[y]}[kind]
    fn = {"sparse": scce, "categorical": cce, "binary": bce}[kind]
    losses, grad = call(fn, y_true, y_pred, backend=backend, from_logits=from_logits, reduction="none",
                        return_grad=True)  # fmt: skip
    assert np.isnan(losses[2]) and np.isfinite(np.delete(losses, 2)).all()
    assert np.isfinite(np.delete(grad, 2, axis=0)).all()
    if kind == "binary" or not from_logits:
        assert np.isnan(grad[2, 1])  # element-wise: the NaN element's own gradient
    else:
        assert np.isnan(grad[2]).all()  # softmax couples the row
    assert np.isnan(call(fn, y_true, y_pred, backend=backend, from_logits=from_logits))


def test_nan_off_the_label_is_not_read_by_the_gather(backend):
    """Sparse from probabilities reads p[y] only; a NaN elsewhere cannot matter."""
    p = np.array([[0.7, np.nan, 0.3]])
    assert np.isfinite(call(scce, [0], p, backend=backend))
    assert np.isnan(call(scce, [0], p, backend=backend, label_smoothing=0.1))


@pytest.mark.parametrize("kind", ["sparse", "categorical"])
def test_pos_inf_logit_in_a_softmax_row_is_nan(backend, kind):
    z = np.array([[np.inf, 0.0, 0.0], [0.0, 1.0, 2.0]])
    y_true = np.array([0, 1]) if kind == "sparse" else np.eye(3)[[0, 1]]
    fn = scce if kind == "sparse" else cce
    losses, grad = call(fn, y_true, z, backend=backend, from_logits=True, reduction="none", return_grad=True)
    assert np.isnan(losses[0]) and np.isnan(grad[0]).all() and np.isfinite(losses[1])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_binary_infinite_logits_take_the_limit(backend, dtype):
    z = np.array([np.inf, np.inf, -np.inf, -np.inf], dtype=dtype)
    y = np.array([1.0, 0.0, 0.0, 1.0])
    losses, grad = call(bce, y, z, backend=backend, from_logits=True, reduction="none", return_grad=True)
    np.testing.assert_array_equal(losses, [0.0, np.inf, 0.0, np.inf])
    np.testing.assert_array_equal(grad, [0.0, 1.0, 0.0, -1.0])
    weighted = call(bce, y, z, backend=backend, from_logits=True, reduction="none", pos_weight=3.0, label_smoothing=0.2)
    assert np.isinf(weighted).all()  # smoothed targets disagree with every infinite logit


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(5_000,), (300, 7), (2, 3_000)], ids=str)
@pytest.mark.parametrize("pos_weight", [1.0, 1.5])
def test_an_infinite_logit_changes_no_other_bit(backend, rng, dtype, shape, pos_weight):
    """The compiled kernels take a select-free loss for blocks of finite logits (with
    pos_weight 1 a shorter form). +inf and 1e30, each with target 1, both cost
    exactly 0 with gradient 0: swapping one for the other must leave every loss and
    gradient bit as it was."""
    y = (rng.random(shape) < 0.5).astype(dtype)
    y.flat[::3] = rng.random(y.flat[::3].shape)
    z = (rng.standard_normal(shape) * 4).astype(dtype)
    spots = [0, z.size // 2, z.size - 1]
    y.flat[spots] = 1
    out = []
    for big in (1e30, np.inf):
        z.flat[spots] = big
        out.append(call(bce, y, z, backend=backend, from_logits=True, reduction="none", return_grad=True,
                        pos_weight=pos_weight))
    (loss_f, grad_f), (loss_i, grad_i) = out
    assert np.isfinite(loss_f).all()
    np.testing.assert_array_equal(loss_i, loss_f)
    np.testing.assert_array_equal(grad_i, grad_f)


def test_keras_clipping_numbers_in_float32(backend):
    """p = 0 with target 1 and p = 1 with target 0, float32, eps = 1e-7 (as Keras)."""
    losses = call(bce, np.array([1.0, 0.0]), np.array([0.0, 1.0], np.float32), backend=backend, reduction="none")
    np.testing.assert_allclose(losses, [16.118095, 15.942385], rtol=1e-6)
    p = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    sparse = call(scce, np.array([0, 0]), p, backend=backend, reduction="none")
    np.testing.assert_allclose(sparse, [16.118095, 1.1920929e-07], rtol=1e-6)
    cat, grad = call(cce, np.eye(2)[[0, 0]], p, backend=backend, reduction="none", return_grad=True)
    np.testing.assert_allclose(cat, sparse, rtol=1e-6)
    np.testing.assert_array_equal(grad, 0.0)  # every probability was clipped


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_saturated_probabilities(backend, dtype):
    """Probabilities one ulp away from 0 and 1 clip exactly as their dtype's bounds say."""
    one_below = np.nextafter(dtype(1), dtype(0))
    tiny = np.finfo(dtype).tiny
    p = np.array([one_below, tiny, 0.5], dtype)
    y = np.array([0.0, 1.0, 1.0])
    losses, grad = call(bce, y, p, backend=backend, reduction="none", return_grad=True)
    want_loss, want_grad = expected("binary", y, p, reduction="none")
    np.testing.assert_allclose(losses, want_loss, **tolerances(dtype))
    np.testing.assert_allclose(grad, want_grad, **tolerances(dtype))
    assert grad[0] == 0 and grad[1] == 0 and grad[2] != 0


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_one_class(backend, rng, from_logits):
    y_pred = rng.standard_normal((5, 1)) if from_logits else np.ones((5, 1))
    losses, grad = call(scce, np.zeros(5, int), y_pred, backend=backend, from_logits=from_logits,
                        reduction="none", return_grad=True)  # fmt: skip
    want = 0.0 if from_logits else -np.log(1 - 1e-7)
    np.testing.assert_allclose(losses, want, atol=1e-15)
    np.testing.assert_array_equal(grad, 0.0)
    cat = call(cce, np.ones((5, 1)), y_pred, backend=backend, from_logits=from_logits, reduction="none")
    np.testing.assert_allclose(cat, losses, atol=1e-15)


@pytest.mark.parametrize("n_classes", [2, 50_000])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_two_and_fifty_thousand_classes(backend, rng, n_classes, from_logits, dtype):
    z = rng.standard_normal((6, n_classes)) * 4
    y_pred = z if from_logits else np.exp(z - np.log(np.exp(z).sum(1, keepdims=True)))
    y_pred = y_pred.astype(dtype)
    y = rng.integers(0, n_classes, 6)
    for ls in (0.0, 0.1):
        loss, grad = call(scce, y, y_pred, backend=backend, from_logits=from_logits, label_smoothing=ls,
                          return_grad=True, reduction="none")  # fmt: skip
        want_loss, want_grad = expected("sparse", y, y_pred, from_logits=from_logits, label_smoothing=ls,
                                        reduction="none")  # fmt: skip
        np.testing.assert_allclose(loss, want_loss, **tolerances(dtype))
        np.testing.assert_allclose(grad, want_grad, **tolerances(dtype))
