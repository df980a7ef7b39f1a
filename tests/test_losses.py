"""The main matrix: every loss x layout x dtype x option set x reduction, with gradients,
against the float64 oracle. Runs unchanged on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import call, tolerances
from oracle import expected

import fastxent

LOSS_FN = {
    "binary": fastxent.binary_crossentropy,
    "categorical": fastxent.categorical_crossentropy,
    "sparse": fastxent.sparse_categorical_crossentropy,
}
REDUCTIONS = ("none", "sum", "mean", "weighted_mean")


def softmax(z, axis):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def make_y_pred(rng, shape, axis, from_logits, dtype, kind):
    z = rng.standard_normal(shape) * 2.0
    if from_logits:
        return z.astype(dtype)
    if kind == "binary":
        return (1.0 / (1.0 + np.exp(-z))).astype(dtype)
    return softmax(z, axis).astype(dtype)


def layout(name, a):
    """Present array ``a`` (C-ordered, class axis per LAYOUTS) in memory layout ``name``."""
    if name == "fortran":
        return np.asfortranarray(a)
    if name == "strided":
        big = np.zeros(tuple(2 * n for n in a.shape), dtype=a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if name == "reversed":  # the same values through negative strides
        flip = tuple(slice(None, None, -1) for _ in a.shape)
        return a[flip].copy()[flip]
    return a


# shape, class axis, memory layout
LAYOUTS = {
    "2d": ((13, 5), -1, "c"),
    "2d-fortran": ((13, 5), -1, "fortran"),
    "2d-strided": ((13, 5), -1, "strided"),
    "2d-reversed": ((13, 5), -1, "reversed"),
    "2d-axis0": ((5, 13), 0, "c"),
    "nchw": ((3, 5, 4, 2), 1, "c"),
    "nchw-strided": ((3, 5, 4, 2), 1, "strided"),
    "3d-last": ((4, 3, 6), 2, "fortran"),
}

OPTION_SETS = {
    "plain": {},
    "smoothing": {"label_smoothing": 0.2},
    "weights": {"class_weight": "per-class", "sample_weight": "per-sample"},
    "all": {"label_smoothing": 0.1, "class_weight": "per-class", "sample_weight": "per-sample", "epsilon": 1e-3},
}


def make_call(kind, rng, layout_name, dtype, from_logits, option_set, ignore_index=None):
    shape, axis, mem = LAYOUTS[layout_name]
    n_classes = shape[axis]
    sample_shape = shape[: axis % len(shape)] + shape[axis % len(shape) + 1 :]
    y_pred = layout(mem, make_y_pred(rng, shape, axis, from_logits, dtype, kind))
    if kind == "sparse":
        y_true = rng.integers(0, n_classes, sample_shape)
        if ignore_index is not None:
            y_true.flat[:: 3] = ignore_index
    elif kind == "categorical":
        y_true = softmax(rng.standard_normal(shape) * 3, axis)  # soft targets
        y_true[(slice(None),) * (axis % len(shape)) + (0,)] = 0.0  # a zero-target class
    else:
        y_true = (rng.random(shape) < 0.5).astype(np.float32)
    opts = dict(OPTION_SETS[option_set])
    if opts.get("class_weight") == "per-class":
        if kind == "binary":
            del opts["class_weight"]
            opts["pos_weight"] = rng.uniform(0.5, 3.0, n_classes)
        else:
            opts["class_weight"] = rng.uniform(0.2, 2.0, n_classes)
    if opts.get("sample_weight") == "per-sample":
        opts["sample_weight"] = rng.uniform(0.0, 2.0, sample_shape)
    if ignore_index is not None:
        opts["ignore_index"] = ignore_index
    return y_true, y_pred, dict(opts, from_logits=from_logits, axis=axis)


def check_call(kind, backend, y_true, y_pred, opts):
    tol = tolerances(y_pred.dtype)
    for reduction in REDUCTIONS:
        want_loss, want_grad = expected(kind, y_true, y_pred, reduction=reduction, **opts)
        loss, grad = call(LOSS_FN[kind], y_true, y_pred, backend=backend, reduction=reduction,
                          return_grad=True, **opts)  # fmt: skip
        result_dtype = np.float64 if y_pred.dtype == np.float64 else np.float32
        assert np.asarray(loss).dtype == result_dtype and grad.dtype == result_dtype
        assert grad.shape == y_pred.shape
        np.testing.assert_allclose(loss, want_loss, **tol, err_msg=f"loss, reduction={reduction}")
        np.testing.assert_allclose(grad, want_grad, **tol, err_msg=f"grad, reduction={reduction}")
        loss_only = call(LOSS_FN[kind], y_true, y_pred, backend=backend, reduction=reduction, **opts)
        np.testing.assert_array_equal(loss_only, loss)  # loss-only and loss+grad agree


@pytest.mark.parametrize("kind", ["sparse", "categorical", "binary"])
@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("option_set", list(OPTION_SETS))
def test_matches_oracle(backend, rng, kind, layout_name, from_logits, dtype, option_set):
    y_true, y_pred, opts = make_call(kind, rng, layout_name, dtype, from_logits, option_set)
    check_call(kind, backend, y_true, y_pred, opts)


@pytest.mark.parametrize("layout_name", ["2d", "2d-fortran", "nchw"])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("ignore_index", [-100, 0, 4])
@pytest.mark.parametrize("option_set", ["plain", "all"])
def test_sparse_ignore_index(backend, rng, layout_name, from_logits, ignore_index, option_set):
    y_true, y_pred, opts = make_call("sparse", rng, layout_name, np.float64, from_logits, option_set, ignore_index)
    check_call("sparse", backend, y_true, y_pred, opts)


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("shape", [(7,), (4, 6), (2, 3, 5)])
def test_binary_without_label_axis(backend, rng, from_logits, shape):
    """axis=None (and any 1-D y_pred): every element is its own sample."""
    y_pred = make_y_pred(rng, shape, -1, from_logits, np.float64, "binary")
    y_true = (rng.random(shape) < 0.5).astype(np.float64)
    pos_weight = rng.uniform(0.5, 2.0, shape[-1])
    opts = dict(from_logits=from_logits, axis=None, pos_weight=pos_weight, sample_weight=rng.random(shape))
    check_call("binary", backend, y_true, y_pred, opts)
    losses = call(fastxent.binary_crossentropy, y_true, y_pred, backend=backend, reduction="none",
                  from_logits=from_logits, axis=None)  # fmt: skip
    assert losses.shape == shape


@pytest.mark.parametrize("kind", ["sparse", "categorical", "binary"])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_float16_and_bfloat16_compute_in_float32(backend, rng, kind, from_logits):
    for dtype in [np.float16, pytest.importorskip("ml_dtypes").bfloat16]:
        y_true, y_pred, opts = make_call(kind, rng, "2d", dtype, from_logits, "all")
        tol = tolerances(np.float32)
        want_loss, want_grad = expected(kind, y_true, y_pred, reduction="none", **opts)
        loss, grad = call(LOSS_FN[kind], y_true, y_pred, backend=backend, reduction="none",
                          return_grad=True, **opts)  # fmt: skip
        assert loss.dtype == np.float32 and grad.dtype == np.float32
        np.testing.assert_allclose(loss, want_loss, **tol)
        np.testing.assert_allclose(grad, want_grad, **tol)


def test_integer_y_pred_is_float64(backend):
    loss = call(fastxent.binary_crossentropy, [1, 0, 1], np.array([1, 0, 0]), backend=backend, reduction="none")
    assert loss.dtype == np.float64
    hi = 1.0 - 1e-7  # the upper clip bound, formed in float64
    np.testing.assert_allclose(loss, [-np.log(hi), -np.log(hi), -np.log(1e-7)], rtol=1e-12)


@pytest.mark.parametrize("label_dtype", ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                                         "uint64", "bool", "float32", "float64", ">i4"])  # fmt: skip
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_every_label_dtype(backend, rng, label_dtype, from_logits):
    y_pred = make_y_pred(rng, (9, 2), -1, from_logits, np.float32, "sparse")
    labels = rng.integers(0, 2, 9)
    loss = call(fastxent.sparse_categorical_crossentropy, labels.astype(label_dtype), y_pred,
                backend=backend, from_logits=from_logits, reduction="none")  # fmt: skip
    want, _ = expected("sparse", labels, y_pred, from_logits=from_logits, reduction="none")
    np.testing.assert_allclose(loss, want, **tolerances(np.float32))


@pytest.mark.parametrize("target_dtype", ["bool", "int8", "int64", "uint8", "float16", "float32", "float64"])
@pytest.mark.parametrize("kind", ["categorical", "binary"])
def test_every_target_dtype(backend, rng, kind, target_dtype):
    y_pred = make_y_pred(rng, (6, 4), -1, True, np.float64, kind)
    targets = np.eye(4)[rng.integers(0, 4, 6)] if kind == "categorical" else rng.random((6, 4)) < 0.5
    y_true = targets.astype(target_dtype)
    loss, grad = call(LOSS_FN[kind], y_true, y_pred, backend=backend, from_logits=True, return_grad=True)
    want_loss, want_grad = expected(kind, targets, y_pred, from_logits=True)
    np.testing.assert_allclose(loss, want_loss, **tolerances(np.float64))
    np.testing.assert_allclose(grad, want_grad, **tolerances(np.float64))


def test_keras_style_classes_match_functions(rng):
    y = rng.integers(0, 3, 8)
    z = rng.standard_normal((8, 3))
    opts = dict(from_logits=True, label_smoothing=0.1, ignore_index=2)
    obj = fastxent.SparseCategoricalCrossentropy(**opts)
    w = rng.random(8)
    assert obj(y, z, sample_weight=w) == fastxent.sparse_categorical_crossentropy(y, z, sample_weight=w, **opts)
    assert obj.get_config()["label_smoothing"] == 0.1
    t = np.eye(3)[y]
    assert fastxent.CategoricalCrossentropy(from_logits=True)(t, z) == fastxent.categorical_crossentropy(
        t, z, from_logits=True
    )
    b = (rng.random((8, 3)) < 0.5).astype(float)
    assert fastxent.BinaryCrossentropy(pos_weight=2.0, from_logits=True)(b, z) == fastxent.binary_crossentropy(
        b, z, pos_weight=2.0, from_logits=True
    )
    with pytest.raises(TypeError, match="pos_weight"):
        fastxent.SparseCategoricalCrossentropy(pos_weight=2.0)
