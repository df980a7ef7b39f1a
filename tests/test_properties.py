"""Property tests: random shapes, axes, dtypes and options against the oracle."""

from __future__ import annotations

import numpy as np
from helpers import call, tolerances
from hypothesis import given
from hypothesis import strategies as st
from oracle import expected

import fastxent

FNS = {
    "binary": fastxent.binary_crossentropy,
    "categorical": fastxent.categorical_crossentropy,
    "sparse": fastxent.sparse_categorical_crossentropy,
}


@st.composite
def calls(draw):
    kind = draw(st.sampled_from(sorted(FNS)))
    ndim = draw(st.integers(1 if kind == "binary" else 1, 4))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=ndim, max_size=ndim)))
    axis = draw(st.integers(-ndim, ndim - 1))
    if shape[axis] == 0:
        shape = shape[: axis % ndim] + (draw(st.integers(1, 6)),) + shape[axis % ndim + 1 :]
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    from_logits = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    c = shape[axis]
    sample_shape = shape[: axis % ndim] + shape[axis % ndim + 1 :]

    z = rng.standard_normal(shape) * draw(st.sampled_from([0.1, 3.0, 30.0]))
    if from_logits:
        y_pred = z
    elif kind == "binary":
        y_pred = 1 / (1 + np.exp(-z))
    else:
        e = np.exp(z - z.max(axis=axis, keepdims=True))
        y_pred = e / e.sum(axis=axis, keepdims=True)
    y_pred = y_pred.astype(dtype)
    if draw(st.booleans()) and y_pred.ndim >= 2:
        y_pred = np.asfortranarray(y_pred)

    opts = {"from_logits": from_logits, "axis": axis}
    opts["label_smoothing"] = draw(st.sampled_from([0.0, 0.0, 0.1, 1.0]))
    opts["reduction"] = draw(st.sampled_from(["none", "sum", "mean", "weighted_mean"]))
    if not from_logits:
        opts["epsilon"] = draw(st.sampled_from([1e-7, 1e-3]))
    if kind == "binary":
        if ndim == 1 or draw(st.booleans()):
            opts["axis"] = None
            sample_shape = shape
        y_true = (rng.random(shape) < 0.5).astype(draw(st.sampled_from([np.float32, np.int8, bool])))
        if draw(st.booleans()):
            n_labels = shape[-1] if opts["axis"] is None else c
            opts["pos_weight"] = rng.uniform(0.2, 4, n_labels)
    elif kind == "categorical":
        y_true = rng.dirichlet(np.ones(c), sample_shape)
        y_true = np.moveaxis(y_true, -1, axis)
    else:
        y_true = rng.integers(0, c, sample_shape).astype(draw(st.sampled_from([np.int64, np.int32, np.uint8])))
        if draw(st.booleans()):
            opts["ignore_index"] = int(draw(st.sampled_from([-100, 0])))
            if opts["ignore_index"] < 0:
                y_true = y_true.astype(np.int64)
            y_true = np.where(rng.random(sample_shape) < 0.3, opts["ignore_index"], y_true)
    if kind != "binary" and draw(st.booleans()):
        opts["class_weight"] = rng.uniform(0.1, 3, c)
    if draw(st.booleans()):
        opts["sample_weight"] = rng.uniform(0, 2, sample_shape) if draw(st.booleans()) else 0.5
    return kind, y_true, y_pred, opts


@given(calls())
def test_random_calls_match_the_oracle(backend, case):
    kind, y_true, y_pred, opts = case
    loss, grad = call(FNS[kind], y_true, y_pred, backend=backend, return_grad=True, **opts)
    want_loss, want_grad = expected(kind, y_true, y_pred, **opts)
    tol = tolerances(y_pred.dtype)
    np.testing.assert_allclose(loss, want_loss, **tol)
    np.testing.assert_allclose(grad, want_grad, **tol)
    assert grad.shape == y_pred.shape


@given(calls())
def test_losses_are_non_negative_and_finite_for_finite_inputs(backend, case):
    kind, y_true, y_pred, opts = case
    losses = call(FNS[kind], y_true, y_pred, backend=backend, **dict(opts, reduction="none"))
    assert np.isfinite(losses).all()
    assert (losses >= 0).all()
