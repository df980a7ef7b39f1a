"""Identities between the losses, and gradients checked by finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import call

import fastxent

scce = fastxent.sparse_categorical_crossentropy
cce = fastxent.categorical_crossentropy
bce = fastxent.binary_crossentropy

REDUCTIONS = ("none", "sum", "mean", "weighted_mean")


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_sparse_equals_categorical_with_one_hot(backend, rng, from_logits, reduction, smoothing):
    z = rng.standard_normal((3, 7, 5))  # class axis 1
    y_pred = z if from_logits else np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 7, (3, 5))
    one_hot = np.moveaxis(np.eye(7)[labels], -1, 1)
    opts = dict(from_logits=from_logits, reduction=reduction, label_smoothing=smoothing, axis=1,
                class_weight=rng.uniform(0.1, 3, 7), sample_weight=rng.random((3, 5)), return_grad=True)  # fmt: skip
    sparse_loss, sparse_grad = call(scce, labels, y_pred, backend=backend, **opts)
    cat_loss, cat_grad = call(cce, one_hot, y_pred, backend=backend, **opts)
    np.testing.assert_allclose(sparse_loss, cat_loss, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sparse_grad, cat_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_equals_two_class_softmax(backend, rng, reduction):
    """BCE on logit z is categorical CE on logits (-z/2, z/2) with targets (1-y, y)."""
    z = rng.standard_normal(11) * 5
    y = rng.random(11)  # soft targets
    w = rng.random(11)
    b_loss, b_grad = call(bce, y, z, backend=backend, from_logits=True, reduction=reduction,
                          sample_weight=w, return_grad=True)  # fmt: skip
    pair = np.stack([-z / 2, z / 2], axis=1)
    targets = np.stack([1 - y, y], axis=1)
    c_loss, c_grad = call(cce, targets, pair, backend=backend, from_logits=True, reduction=reduction,
                          sample_weight=w, return_grad=True)  # fmt: skip
    np.testing.assert_allclose(b_loss, c_loss, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(b_grad, (c_grad[:, 1] - c_grad[:, 0]) / 2, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("kind", ["sparse", "categorical"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adding_a_constant_to_a_logit_row_changes_nothing(backend, rng, kind, dtype):
    z = (rng.standard_normal((8, 6)) * 3).astype(dtype)
    shifts = np.array([0, 1, -1, 100, -100, 1e3, 0.5, -37], dtype=dtype)[:, None]
    y = rng.integers(0, 6, 8)
    y_true = y if kind == "sparse" else rng.dirichlet(np.ones(6), 8)
    fn = scce if kind == "sparse" else cce
    opts = dict(from_logits=True, reduction="none", return_grad=True, label_smoothing=0.1)
    base_loss, base_grad = call(fn, y_true, z, backend=backend, **opts)
    moved_loss, moved_grad = call(fn, y_true, z + shifts, backend=backend, **opts)
    # Shifting rounds the logits themselves (by up to ulp(1e3) in float32): compare
    # with that error, not the kernels' own.
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == np.float64 else dict(rtol=1e-3, atol=2e-4)
    np.testing.assert_allclose(moved_loss, base_loss, **tol)
    np.testing.assert_allclose(moved_grad, base_grad, **tol)


def finite_difference(fn, y_pred, index, step):
    plus, minus = y_pred.copy(), y_pred.copy()
    plus[index] += step
    minus[index] -= step
    return (float(np.sum(fn(plus))) - float(np.sum(fn(minus)))) / (2 * step)


CASES = {
    "sparse-logits": (scce, True, {"label_smoothing": 0.1, "class_weight": "c", "ignore_index": 2}),
    "sparse-probs": (scce, False, {"class_weight": "c"}),
    "sparse-probs-smoothed": (scce, False, {"label_smoothing": 0.2}),
    "categorical-logits": (cce, True, {"label_smoothing": 0.1, "class_weight": "c"}),
    "categorical-probs": (cce, False, {"class_weight": "c", "label_smoothing": 0.05}),
    "binary-logits": (bce, True, {"pos_weight": "c", "label_smoothing": 0.1}),
    "binary-probs": (bce, False, {"pos_weight": "c"}),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradient_matches_finite_differences(backend, rng, case, reduction):
    fn, from_logits, extra = CASES[case]
    n, c = 6, 4
    z = rng.standard_normal((n, c))
    if from_logits:
        y_pred = z
    elif fn is bce:
        y_pred = 0.1 + 0.8 * rng.random((n, c))  # far from the clip bounds
    else:
        y_pred = 0.05 + 0.9 * np.exp(z) / np.exp(z).sum(1, keepdims=True)
    if fn is scce:
        y_true = np.array([0, 1, 2, 3, 2, 1])
    elif fn is cce:
        y_true = rng.dirichlet(np.ones(c), n)
    else:
        y_true = rng.random((n, c))
    opts = {k: (rng.uniform(0.5, 2, c) if v == "c" else v) for k, v in extra.items()}
    opts.update(from_logits=from_logits, reduction=reduction, sample_weight=rng.uniform(0.5, 2, n))

    def loss(p):
        return call(fn, y_true, p, backend=backend, **opts)

    _, grad = call(fn, y_true, y_pred, backend=backend, return_grad=True, **opts)
    for index in [(0, 0), (1, 1), (2, 3), (3, 2), (5, 0)]:
        fd = finite_difference(loss, y_pred, index, step=1e-6)
        np.testing.assert_allclose(grad[index], fd, rtol=1e-6, atol=1e-8, err_msg=f"at {index}")
