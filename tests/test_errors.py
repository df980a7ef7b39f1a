"""Every bad input in the contract raises before any work, with a message that names
the argument, what was expected and what was given."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent

scce = fastxent.sparse_categorical_crossentropy
cce = fastxent.categorical_crossentropy
bce = fastxent.binary_crossentropy

P = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
Y = np.array([0, 2])


def raises(exc, *patterns):
    """pytest.raises that also checks every pattern appears in the message."""

    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(exc)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc_info):
            suppressed = self.ctx.__exit__(*exc_info)
            message = str(self.info.value)
            for pattern in patterns:
                assert pattern in message, f"{pattern!r} not in {message!r}"
            return suppressed

    return _Check()


# ------------------------------------------------------------------ shapes and labels


def test_sparse_labels_of_the_wrong_shape():
    with raises(ValueError, "y_true", "(2,)", "(3,)"):
        scce([0, 1, 2], P)


def test_one_hot_passed_to_sparse_points_to_categorical():
    with raises(ValueError, "y_true", "categorical_crossentropy"):
        scce(np.eye(3)[Y], P)


def test_labels_passed_to_categorical_point_to_sparse():
    with raises(ValueError, "y_true", "sparse_categorical_crossentropy"):
        cce(Y, P)


def test_binary_shape_mismatch():
    with raises(ValueError, "y_true", "(2, 3)", "(3, 2)"):
        bce(np.zeros((3, 2)), P)


@pytest.mark.parametrize("bad, position", [(3, "(1,)"), (-1, "(1,)"), (7, "(1,)")])
def test_label_out_of_range_names_value_and_position(bad, position):
    with raises(ValueError, "y_true", "[0, 3)", f"got {bad}", position):
        scce(np.array([0, bad]), P)


def test_label_out_of_range_with_ignore_index_mentions_it():
    with raises(ValueError, "ignore_index=-100", "got -1"):
        scce(np.array([-100, -1]), P, ignore_index=-100)
    assert scce(np.array([-100, 2]), P, ignore_index=-100) > 0  # -100 itself is fine


def test_label_out_of_range_in_a_segmentation_map():
    logits = np.zeros((2, 3, 4, 5))
    labels = np.zeros((2, 4, 5), int)
    labels[1, 2, 3] = 9
    with raises(ValueError, "got 9", "(1, 2, 3)"):
        scce(labels, logits, axis=1, from_logits=True)


@pytest.mark.parametrize("bad", [0.5, np.nan, np.inf])
def test_non_integral_float_labels(bad):
    with raises(ValueError, "y_true", "integral", "(1,)"):
        scce(np.array([1.0, bad]), P)
    assert scce(np.array([1.0, 2.0]), P) > 0  # integral floats are accepted


# ------------------------------------------------------------------ probabilities


@pytest.mark.parametrize("fn, y", [(bce, np.zeros((2, 3))), (cce, np.eye(3)[Y]), (scce, Y)])
@pytest.mark.parametrize("bad", [-0.25, 1.5, np.inf, -np.inf])
def test_probabilities_out_of_range_suggest_from_logits(fn, y, bad):
    p = P.copy()
    p[1, 2] = bad
    with raises(ValueError, "y_pred", "[0, 1]", "(1, 2)", "from_logits=True"):
        fn(y, p)


def test_sparse_checks_only_what_it_reads():
    p = P.copy()
    p[1, 0] = 3.0  # not the label's class
    assert np.isfinite(scce(Y, p))
    with raises(ValueError, "(1, 0)", "3.0"):
        scce(Y, p, label_smoothing=0.1)  # smoothing reads the whole row
    with raises(ValueError, "(1, 0)"):
        scce(np.array([0, 0]), p)


def test_nan_probabilities_are_not_a_range_error():
    p = P.copy()
    p[0, 0] = np.nan
    assert np.isnan(cce(np.eye(3)[Y], p))


# ------------------------------------------------------------------ options


@pytest.mark.parametrize("epsilon", [0.0, 0.5, -1e-7, 1.0])
def test_epsilon_outside_open_interval(epsilon):
    with raises(ValueError, "epsilon", "(0, 0.5)", repr(epsilon)):
        scce(Y, P, epsilon=epsilon)


@pytest.mark.parametrize("ls", [-0.1, 1.1, np.nan])
def test_label_smoothing_outside_unit_interval(ls):
    with raises(ValueError, "label_smoothing", "[0, 1]"):
        cce(np.eye(3)[Y], P, label_smoothing=ls)


@pytest.mark.parametrize("name, value", [("epsilon", "1e-7"), ("label_smoothing", None), ("from_logits", 1),
                                         ("return_grad", "yes")])  # fmt: skip
def test_option_types(name, value):
    with raises(TypeError, name):
        scce(Y, P, **{name: value})


def test_unknown_reduction_lists_the_choices():
    with raises(ValueError, "reduction", "'mean'", "'weighted_mean'", "'avg'"):
        bce(np.zeros((2, 3)), P, reduction="avg")


def test_unknown_backend():
    with raises(ValueError, "backend", "'cuda'"):
        scce(Y, P, backend="cuda")


@pytest.mark.parametrize("threads, exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_threads(threads, exc):
    with raises(exc, "threads"):
        scce(Y, P, threads=threads)


@pytest.mark.parametrize("axis, exc", [(2, ValueError), (-3, ValueError), (1.0, TypeError)])
def test_bad_axis(axis, exc):
    with raises(exc, "axis"):
        scce(Y, P, axis=axis)


def test_ignore_index_must_be_an_int():
    with raises(TypeError, "ignore_index", "1.5"):
        scce(Y, P, ignore_index=1.5)


# ------------------------------------------------------------------ weights


def test_class_weight_of_the_wrong_length():
    with raises(ValueError, "class_weight", "(3,)", "(2,)"):
        scce(Y, P, class_weight=[1.0, 2.0])
    with raises(ValueError, "class_weight", "(3,)"):
        cce(np.eye(3)[Y], P, class_weight=np.ones((3, 1)))


def test_pos_weight_of_the_wrong_length():
    with raises(ValueError, "pos_weight", "(3,)", "(2,)"):
        bce(np.zeros((2, 3)), P, pos_weight=[1.0, 2.0])


def test_sample_weight_of_the_wrong_shape():
    with raises(ValueError, "sample_weight", "(2,)", "(3,)"):
        scce(Y, P, sample_weight=[1.0, 2.0, 3.0])


@pytest.mark.parametrize("name", ["class_weight", "sample_weight"])
def test_non_numeric_weights(name):
    with raises(TypeError, name, "dtype"):
        scce(Y, P, **{name: np.array(["a", "b", "c"][: 3 if name == "class_weight" else 2])})


# ------------------------------------------------------------------ dtypes


@pytest.mark.parametrize("y_pred", [np.array([["a", "b"]]), np.array([[1 + 1j, 0j]]), np.array([[None, 1.0]]),
                                    np.zeros((1, 2), np.longdouble)])  # fmt: skip
def test_non_numeric_y_pred(y_pred):
    with raises(TypeError, "y_pred", "dtype"):
        scce([0], y_pred)


@pytest.mark.parametrize("fn", [scce, cce, bce])
def test_non_numeric_targets(fn):
    y_true = np.array(["0", "1"]) if fn is scce else np.full((2, 3), "x")
    with raises(TypeError, "y_true", "dtype"):
        fn(y_true, P)


def test_scalar_y_pred_has_no_class_axis():
    with raises(ValueError, "y_pred", "class axis"):
        scce(0, 0.5)


def test_zero_classes():
    with raises(ValueError, "y_pred", "at least one class"):
        scce(np.zeros(2, int), np.zeros((2, 0)))


# ------------------------------------------------------------------ grad_out


def test_grad_out_wrong_shape_dtype_and_flags():
    y = np.eye(3)[Y]
    with raises(ValueError, "grad_out", "(2, 3)", "(3, 2)"):
        cce(y, P, return_grad=True, grad_out=np.empty((3, 2)))
    with raises(ValueError, "grad_out", "float64", "float32"):
        cce(y, P, return_grad=True, grad_out=np.empty((2, 3), np.float32))
    with raises(ValueError, "grad_out", "float32"):
        cce(y, P.astype(np.float16), return_grad=True, grad_out=P.astype(np.float16))
    read_only = np.empty((2, 3))
    read_only.setflags(write=False)
    with raises(ValueError, "grad_out", "writeable"):
        cce(y, P, return_grad=True, grad_out=read_only)
    with raises(TypeError, "grad_out", "list"):
        cce(y, P, return_grad=True, grad_out=[[0.0] * 3] * 2)
    with raises(ValueError, "grad_out", "return_grad=True"):
        cce(y, P, grad_out=np.empty((2, 3)))


def test_grad_out_may_not_overlap_inputs_partially():
    big = np.zeros((3, 3))
    big[:2] = P
    with raises(ValueError, "grad_out", "overlap"):
        cce(np.eye(3)[Y], big[:2], return_grad=True, grad_out=big[1:])
    y = np.eye(3)[Y]
    with raises(ValueError, "grad_out", "y_true"):
        cce(y, P, return_grad=True, grad_out=y)


def test_nothing_is_written_when_the_input_is_bad():
    """An error leaves grad_out, and y_pred used in place, exactly as they were."""
    p = P.copy()
    p[1, 1] = 2.0
    before = p.copy()
    with raises(ValueError, "y_pred"):
        cce(np.eye(3)[Y], p, return_grad=True, grad_out=p)
    np.testing.assert_array_equal(p, before)
    sentinel = np.full((2, 3), 123.0)
    with raises(ValueError, "y_pred"):
        bce(np.zeros((2, 3)), p, return_grad=True, grad_out=sentinel)
    assert (sentinel == 123.0).all()
    with raises(ValueError, "y_true"):
        scce(np.array([0, 5]), P.copy(), return_grad=True, grad_out=sentinel)
    assert (sentinel == 123.0).all()


def test_forced_backend_that_cannot_run_says_why(monkeypatch):
    from fastxent import _dispatch, backends

    monkeypatch.setattr(backends, "unavailable_reason", lambda name: "not built here" if name != "numpy" else None)
    _dispatch.forget_choices()  # plans made before the backend "went away"
    monkeypatch.setattr(_dispatch, "_choices", {})
    with raises(RuntimeError, "backend='cython'", "not built here"):
        scce(Y, P, backend="cython", reduction="none")  # (a small mean takes the compiled fast path)
    assert scce(Y, P, reduction="none").sum() > 0  # auto still finds a backend
