"""Input handling: never modified, read-only / memory-mapped / strided inputs, in-place
gradients, empty and all-ignored batches, shape conveniences, result types."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import call
from oracle import expected

import fastxent

scce = fastxent.sparse_categorical_crossentropy
cce = fastxent.categorical_crossentropy
bce = fastxent.binary_crossentropy


def inputs_for(kind, rng, n=10, c=4):
    z = rng.standard_normal((n, c))
    y = rng.integers(0, c, n)
    if kind == "sparse":
        return scce, y, z
    if kind == "categorical":
        return cce, np.eye(c)[y], z
    return bce, (rng.random((n, c)) < 0.5).astype(float), z


@pytest.mark.parametrize("kind", ["sparse", "categorical", "binary"])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_inputs_are_never_modified(backend, rng, kind, from_logits):
    fn, y_true, z = inputs_for(kind, rng)
    y_pred = z if from_logits else 1 / (1 + np.exp(-z))
    weights = rng.random(4)
    sample_weight = rng.random(10)
    opts = {"pos_weight": weights} if kind == "binary" else {"class_weight": weights}
    copies = [a.copy() for a in (y_true, y_pred, weights, sample_weight)]
    loss, grad = call(fn, y_true, y_pred, backend=backend, from_logits=from_logits, return_grad=True,
                      sample_weight=sample_weight, **opts)  # fmt: skip
    for before, after in zip(copies, (y_true, y_pred, weights, sample_weight)):
        np.testing.assert_array_equal(before, after)
    for a in (y_true, y_pred, weights, sample_weight):
        assert not np.may_share_memory(grad, a)


@pytest.mark.parametrize("kind", ["sparse", "categorical", "binary"])
def test_read_only_and_memory_mapped_inputs(backend, rng, tmp_path, kind):
    fn, y_true, z = inputs_for(kind, rng)
    want = fn(y_true, z, from_logits=True, backend="numpy")
    np.save(tmp_path / "y_pred.npy", z.astype(np.float32))
    np.save(tmp_path / "y_true.npy", y_true)
    mapped_pred = np.load(tmp_path / "y_pred.npy", mmap_mode="r")
    mapped_true = np.load(tmp_path / "y_true.npy", mmap_mode="r")
    got = call(fn, mapped_true, mapped_pred, backend=backend, from_logits=True)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    ro_true, ro_pred = y_true.copy(), z.copy()
    ro_true.setflags(write=False)
    ro_pred.setflags(write=False)
    got, grad = call(fn, ro_true, ro_pred, backend=backend, from_logits=True, return_grad=True)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_broadcast_zero_stride_inputs(backend):
    z = np.broadcast_to(np.array([1.0, 2.0, 3.0]), (5, 3))  # read-only, row stride 0
    loss = call(scce, np.full(5, 2), z, backend=backend, from_logits=True, reduction="none")
    np.testing.assert_allclose(loss, np.log(np.exp([1, 2, 3]).sum()) - 3)


@pytest.mark.parametrize("kind", ["sparse", "categorical", "binary"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ["C", "F"])
def test_gradient_in_place_overwrites_the_logits(backend, rng, kind, dtype, order):
    fn, y_true, z = inputs_for(kind, rng)
    z = np.array(z, dtype=dtype, order=order)
    want_loss, want_grad = call(fn, y_true, z, backend=backend, from_logits=True, return_grad=True)
    logits = z.copy(order=order)
    loss, grad = call(fn, y_true, logits, backend=backend, from_logits=True, return_grad=True, grad_out=logits)
    assert grad is logits
    np.testing.assert_array_equal(loss, want_loss)
    np.testing.assert_array_equal(logits, want_grad)


def test_gradient_into_a_separate_buffer(backend, rng):
    fn, y_true, z = inputs_for("sparse", rng)
    out = np.full(z.shape, np.nan)
    loss, grad = call(fn, y_true, z, backend=backend, from_logits=True, return_grad=True, grad_out=out)
    assert grad is out and np.isfinite(out).all()
    np.testing.assert_array_equal(out, call(fn, y_true, z, backend=backend, from_logits=True, return_grad=True)[1])


@pytest.mark.parametrize("kind", ["sparse", "categorical", "binary"])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_empty_batch(backend, kind, from_logits):
    fn = {"sparse": scce, "categorical": cce, "binary": bce}[kind]
    y_true = np.zeros(0, int) if kind == "sparse" else np.zeros((0, 3))
    y_pred = np.zeros((0, 3))
    for reduction in ("mean", "sum", "weighted_mean"):
        loss, grad = call(fn, y_true, y_pred, backend=backend, from_logits=from_logits, reduction=reduction,
                          return_grad=True)  # fmt: skip
        assert loss == 0.0 and isinstance(loss, np.float64) and grad.shape == (0, 3)
    none = call(fn, y_true, y_pred, backend=backend, from_logits=from_logits, reduction="none")
    assert none.shape == (0,) and none.dtype == np.float64


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_all_ignored_batch(backend, rng, from_logits):
    y_pred = rng.random((4, 3))
    labels = np.full(4, -100)
    for reduction in ("mean", "sum", "weighted_mean"):
        loss, grad = call(scce, labels, y_pred, backend=backend, from_logits=from_logits, ignore_index=-100,
                          reduction=reduction, return_grad=True, class_weight=[1, 2, 3])  # fmt: skip
        assert loss == 0.0
        np.testing.assert_array_equal(grad, 0.0)


def test_nan_logits_in_an_ignored_row_are_ignored(backend):
    z = np.array([[np.nan, 0.0], [0.0, 1.0]])
    loss, grad = call(scce, np.array([-1, 1]), z, backend=backend, from_logits=True, ignore_index=-1,
                      return_grad=True)  # fmt: skip
    assert np.isfinite(loss)
    np.testing.assert_array_equal(grad[0], 0.0)


def test_reductions_return_numpy_scalars_of_the_result_dtype(backend, rng):
    z = rng.standard_normal((5, 3))
    y = rng.integers(0, 3, 5)
    for dtype, result in [(np.float64, np.float64), (np.float32, np.float32), (np.float16, np.float32)]:
        loss = call(scce, y, z.astype(dtype), backend=backend, from_logits=True)
        assert type(loss) is result


def test_trailing_unit_axes_are_squeezed(backend, rng):
    z = rng.standard_normal((6, 3))
    y = rng.integers(0, 3, 6)
    w = rng.random(6)
    base = call(scce, y, z, backend=backend, from_logits=True, sample_weight=w, reduction="none")
    keras_style = call(scce, y[:, None], z, backend=backend, from_logits=True, sample_weight=w[:, None],
                       reduction="none")  # fmt: skip
    np.testing.assert_array_equal(base, keras_style)
    b = rng.random(6)
    column = call(bce, b, z[:, :1], backend=backend, from_logits=True, reduction="none")
    np.testing.assert_array_equal(column, call(bce, b[:, None], z[:, :1], backend=backend, from_logits=True,
                                               reduction="none"))  # fmt: skip
    assert column.shape == (6,)


def test_lists_and_python_scalars(backend):
    assert np.isclose(call(scce, [0], [[0.5, 0.5]], backend=backend), np.log(2))
    assert np.isclose(call(bce, 1, 0.5, backend=backend), np.log(2))  # a 0-d binary sample


def test_class_axis_anywhere_without_transposing(backend, rng):
    z = rng.standard_normal((2, 5, 3, 4))  # N, C, H, W
    labels = rng.integers(0, 5, (2, 3, 4))
    moved = np.moveaxis(z, 1, -1)
    for axis, y_pred in [(1, z), (-1, moved), (3, moved)]:
        loss, grad = call(scce, labels, y_pred, backend=backend, from_logits=True, axis=axis,
                          reduction="none", return_grad=True)  # fmt: skip
        want_loss, want_grad = expected("sparse", labels, y_pred, from_logits=True, axis=axis, reduction="none")
        assert loss.shape == (2, 3, 4)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-15)


def test_y_pred_is_not_copied_for_common_layouts(rng):
    """C-ordered, Fortran-ordered and channels-first inputs reach the kernels as views."""
    from fastxent._validate import build_problem

    opts = dict(from_logits=True, label_smoothing=0.0, reduction="mean", epsilon=1e-7, return_grad=False,
                grad_out=None, backend="numpy", threads=None)  # fmt: skip
    for y_pred, labels, axis in [
        (rng.standard_normal((8, 5)), rng.integers(0, 5, 8), -1),
        (np.asfortranarray(rng.standard_normal((8, 5))), rng.integers(0, 5, 8), -1),
        (rng.standard_normal((2, 5, 3, 4)), rng.integers(0, 5, (2, 3, 4)), 1),
        (rng.standard_normal((20, 10))[::2, ::3], rng.integers(0, 4, 10), -1),
    ]:
        problem = build_problem("sparse", labels, y_pred, axis=axis, **opts)
        assert np.shares_memory(problem.x, y_pred)
        assert np.shares_memory(problem.aux, labels)
