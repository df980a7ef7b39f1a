"""The compiled fast path for plain sparse losses (``_cython_ext.fast_sparse``).

It must be invisible: the same bits and dtype as the general path (loss and
gradient), the same errors (it hands every doubtful call back), and off whenever
the user asked for something it does not do (another backend, weights, a gradient
buffer that overlaps an input...). Small calls run on one thread; larger ones only
once the dispatcher has chosen Cython for their signature, with its threads.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from fastxent import _api, _dispatch

pytestmark = pytest.mark.skipif(_api._fast_sparse is None, reason="compiled extension not built")

sparse = fastxent.sparse_categorical_crossentropy


def general_path(y, x, **options):
    """The same call through validate -> plan -> kernel -> reduce (the fast path declines
    when a backend is set by ``fastxent.config``)."""
    with fastxent.config(backend="cython"):
        return sparse(y, x, **options)


def served_by_fast_path(y, x, **options) -> bool:
    return fast_threads(y, x, **options) is not None


def fast_threads(y, x, **options):
    """The threads the fast path would run ``sparse(y, x, **options)`` on, or None."""
    return _api._fast_sparse(y, x, **{**_api.keyword_defaults(sparse), **options}, plan_only=True)


@pytest.fixture(autouse=True)
def no_remembered_decisions():
    """Each test starts with the dispatcher's memo empty (larger calls are served only
    after it decided), and leaves it so."""
    _dispatch.forget_choices()
    yield
    _dispatch.forget_choices()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "sum_over_batch_size"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (8, 2), (129, 5), (1000, 32), (4096, 8), (32, 1024)])
def test_same_bits_as_general_path(rng, dtype, label_dtype, from_logits, reduction, shape):
    n, c = shape
    y = rng.integers(0, c, size=n).astype(label_dtype)
    if from_logits:
        x = (rng.standard_normal(shape) * 4).astype(dtype)
    else:
        x = rng.dirichlet(np.ones(c), size=n).astype(dtype)
    assert served_by_fast_path(y, x, from_logits=from_logits, reduction=reduction)
    fast = sparse(y, x, from_logits=from_logits, reduction=reduction)
    slow = general_path(y, x, from_logits=from_logits, reduction=reduction)
    assert type(fast) is type(slow) and fast.dtype == np.dtype(dtype)
    assert fast.tobytes() == slow.tobytes(), (fast, slow)


@pytest.mark.parametrize("ignore_index", [-100, 0, 2])
def test_ignore_index_same_bits(rng, ignore_index):
    y = rng.integers(0, 3, size=50)
    y[::4] = ignore_index
    x = rng.standard_normal((50, 3))
    assert served_by_fast_path(y, x, from_logits=True, ignore_index=ignore_index)
    fast = sparse(y, x, from_logits=True, ignore_index=ignore_index)
    assert fast.tobytes() == general_path(y, x, from_logits=True, ignore_index=ignore_index).tobytes()


def test_all_ignored_mean_is_zero():
    y = np.full(4, -100)
    assert sparse(y, np.ones((4, 3)), ignore_index=-100, from_logits=True) == 0.0


def test_extremes_same_as_general_path():
    x = np.array([[1e4, -1e4, 0.0], [np.nan, 0.0, 1.0], [-np.inf, 0.0, 1.0], [np.inf, 0.0, 0.0]])
    y = np.array([0, 1, 2, 1])
    for rows in ([0], [1], [2], [3], [0, 2]):
        fast = sparse(y[rows], x[rows], from_logits=True)
        slow = general_path(y[rows], x[rows], from_logits=True)
        np.testing.assert_array_equal(fast, slow)
    probs = np.array([[np.nan, 0.5, 0.5], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    for labels in ([1, 2, 0], [0, 2, 0], [1, 0, 1]):
        fast = sparse(np.array(labels), probs)
        np.testing.assert_array_equal(fast, general_path(np.array(labels), probs))


@pytest.mark.parametrize(
    "options",
    [
        {"threads": 2},
        {"backend": "numpy"},
        {"class_weight": np.ones(4)},
        {"sample_weight": np.ones(6)},
        {"label_smoothing": 0.1},
        {"reduction": "none"},
        {"axis": 0},
    ],
    ids=lambda o: next(iter(o)),
)
def test_declines_what_it_does_not_do(rng, options):
    y = rng.integers(0, 4, size=6)
    x = rng.standard_normal((6, 4))
    if options.get("axis") == 0:
        x = np.ascontiguousarray(x.T)
    assert not served_by_fast_path(y, x, from_logits=True, **options)
    plan = fastxent.explain(sparse, y, x, from_logits=True, **options)
    assert "fast path" not in plan.reason


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("where", ["new", "in_place", "separate"])
def test_gradient_same_bits_as_general_path(rng, dtype, from_logits, reduction, where):
    n, c = 40, 6
    y = rng.integers(0, c, size=n)
    y[::7] = -100
    x = (rng.standard_normal((n, c)) * 4).astype(dtype) if from_logits else rng.dirichlet(np.ones(c), n).astype(dtype)
    options = dict(from_logits=from_logits, reduction=reduction, ignore_index=-100, return_grad=True)
    want_loss, want_grad = general_path(y, x, **options)
    buffer = {"new": None, "in_place": x.copy(), "separate": np.full_like(x, np.nan)}[where]
    inputs = buffer if where == "in_place" else x
    # a caller's grad_out takes the general path (and its checks): same bits either way
    assert served_by_fast_path(y, inputs, **options, grad_out=buffer) == (buffer is None)
    loss, grad = sparse(y, inputs, **options, grad_out=buffer)
    assert loss.tobytes() == want_loss.tobytes()
    assert grad.dtype == want_grad.dtype and grad.tobytes() == want_grad.tobytes()
    assert buffer is None or grad is buffer


def test_gradient_declines_overlapping_or_odd_buffers(rng):
    y = rng.integers(0, 4, size=6)
    memory = rng.standard_normal((7, 4))
    x = memory[:-1]
    overlapping = memory[1:]
    for bad in (overlapping, x.astype(np.float32), np.zeros((6, 4), order="F"), np.zeros((6, 4))[:, ::-1]):
        assert not served_by_fast_path(y, x, from_logits=True, return_grad=True, grad_out=bad)
    with pytest.raises(ValueError, match="grad_out"):
        sparse(y, x, from_logits=True, return_grad=True, grad_out=overlapping)
    with pytest.raises(ValueError, match="grad_out"):
        sparse(y, x, from_logits=True, return_grad=True, grad_out=x[::-1])  # y_pred's memory, reversed
    assert not served_by_fast_path(y, x, from_logits=True, grad_out=np.zeros_like(x))  # grad_out without return_grad


def test_gradient_in_place_probabilities_out_of_range_leave_the_buffer(rng):
    y = np.array([0, 1, 2])
    p = np.full((3, 3), 1 / 3)
    p[2, 2] = 1.5
    before = p.copy()
    with pytest.raises(ValueError, match="y_pred"):
        sparse(y, p, return_grad=True, grad_out=p)
    np.testing.assert_array_equal(p, before)


def test_declines_large_strided_and_other_dtypes(rng):
    y = rng.integers(0, 10, size=4097)
    # larger calls before the dispatcher decided for them
    assert not served_by_fast_path(y, rng.standard_normal((4097, 10)), from_logits=True)  # rows
    assert not served_by_fast_path(y[:100], rng.standard_normal((100, 400)), from_logits=True)  # elements
    huge = np.zeros((1, (1 << 22) + 1), dtype=np.float32)  # above the 4M-element limit, even decided
    sparse(np.array([0]), huge, from_logits=True)
    assert not served_by_fast_path(np.array([0]), huge, from_logits=True)


def test_more_classes_than_the_unit_weights_take_the_general_path(rng):
    """The compiled path's unit class weights hold 32,768 values: a decided call with
    more classes must not read past them (a label or argmax beyond would)."""
    c = 40_000
    x = rng.standard_normal((3, c)).astype(np.float32)
    x[:, -1] = 30.0  # the argmax, and a label, beyond 32,768
    y = np.array([c - 1, 5, c - 2])
    for return_grad in (False, True):
        first = sparse(y, x, from_logits=True, return_grad=return_grad)
        assert _dispatch._choices  # decided
        assert not served_by_fast_path(y, x, from_logits=True, return_grad=return_grad)
        want = general_path(y, x, from_logits=True, return_grad=return_grad)
        again = sparse(y, x, from_logits=True, return_grad=return_grad)
        for got in (first, again):
            got_loss = got[0] if return_grad else got
            want_loss = want[0] if return_grad else want
            assert got_loss.tobytes() == want_loss.tobytes()
            if return_grad:
                assert got[1].tobytes() == want[1].tobytes()
    x = rng.standard_normal((100, 20))
    assert not served_by_fast_path(y[:100], x[:, ::2], from_logits=True)  # strided
    assert not served_by_fast_path(y[:100], x.astype(np.float16), from_logits=True)
    assert not served_by_fast_path(y[:100].astype(np.uint8), x, from_logits=True)
    assert not served_by_fast_path(list(y[:100]), x, from_logits=True)


def test_config_and_environment_turn_it_off(rng, monkeypatch):
    y = rng.integers(0, 4, size=6)
    x = rng.standard_normal((6, 4))
    assert served_by_fast_path(y, x, from_logits=True)
    assert "fast path" in fastxent.explain(sparse, y, x, from_logits=True).reason
    with fastxent.config(backend="cython"):
        assert not served_by_fast_path(y, x, from_logits=True)
    monkeypatch.setenv("FASTXENT_BACKEND", "numpy")
    assert not served_by_fast_path(y, x, from_logits=True)
    assert fastxent.explain(sparse, y, x, from_logits=True).backend == "numpy"
    monkeypatch.setenv("FASTXENT_BACKEND", "cython")
    assert served_by_fast_path(y, x, from_logits=True)


@pytest.mark.parametrize(
    "y, x, match",
    [
        (np.array([0, 3]), np.zeros((2, 3)), "y_true"),  # label out of range
        (np.array([0, -1]), np.zeros((2, 3)), "y_true"),
        (np.array([0, 1, 2]), np.zeros((2, 3)), "y_true"),  # wrong length
        (np.array([0, 1]), np.full((2, 3), 1.5), "y_pred"),  # probability above 1
        (np.array([0, 1]), np.full((2, 3), -0.5), "y_pred"),
    ],
)
def test_bad_inputs_raise_the_general_errors(y, x, match):
    with pytest.raises(ValueError, match=match):
        sparse(y, x)


def test_bad_options_raise_the_general_errors():
    y, x = np.array([0, 1]), np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="reduction"):
        sparse(y, x, reduction="average")
    with pytest.raises(ValueError, match="epsilon"):
        sparse(y, x, epsilon=0.7)
    with pytest.raises(TypeError, match="from_logits"):
        sparse(y, x, from_logits="yes")


def test_inputs_not_modified(rng):
    y = rng.integers(0, 5, size=20)
    x = rng.standard_normal((20, 5)).astype(np.float32)
    y0, x0 = y.copy(), x.copy()
    sparse(y, x, from_logits=True)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("threads", [None, 1, 2])
@pytest.mark.parametrize("shape", [(64, 1000), (5000, 12), (40000, 3)])  # 1 block; 1; 3 blocks of rows
def test_larger_calls_after_the_dispatcher_decided(rng, dtype, from_logits, threads, shape):
    n, c = shape
    y = rng.integers(0, c, size=n)
    y[::9] = -100
    if from_logits:
        x = (rng.standard_normal(shape) * 4).astype(dtype)
    else:
        x = rng.dirichlet(np.ones(c), size=n).astype(dtype)
    for return_grad in (False, True):
        options = dict(from_logits=from_logits, threads=threads, ignore_index=-100, return_grad=return_grad)
        assert not served_by_fast_path(y, x, **options)
        results = [sparse(y, x, **options)]  # the general path: the dispatcher decides and remembers
        (key, (backend, decided)), = _dispatch._choices.items()
        if backend != "cython":  # Numba, once compiled in this process, may win: take Cython
            _dispatch._choices[key] = ("cython", threads or 2)
            results = []
        assert fast_threads(y, x, **options) == _dispatch._choices[key][1]
        results.append(sparse(y, x, **options))  # the fast path
        want = general_path(y, x, **options)
        for got in results:
            if return_grad:
                assert got[0].tobytes() == want[0].tobytes()
                assert got[1].dtype == want[1].dtype and got[1].tobytes() == want[1].tobytes()
            else:
                assert type(got) is type(want) and got.tobytes() == want.tobytes(), (got, want)
        _dispatch.forget_choices()


def test_larger_calls_follow_the_dispatchers_choice(rng):
    y = rng.integers(0, 100, size=1000)
    x = rng.standard_normal((1000, 100)).astype(np.float32)
    sparse(y, x, from_logits=True)
    (key, _), = _dispatch._choices.items()
    _dispatch._choices[key] = ("cython", 1)
    assert fast_threads(y, x, from_logits=True) == 1
    plan = fastxent.explain(sparse, y, x, from_logits=True)
    assert "fast path" in plan.reason and plan.threads == 1
    _dispatch._choices[key] = ("numpy", 1)  # another backend chosen: the general path runs it
    assert not served_by_fast_path(y, x, from_logits=True)
    _dispatch._choices[key] = ("cython", 2)
    assert fast_threads(y, x, from_logits=True) == 2
    assert fast_threads(y, x.astype(np.float64), from_logits=True) is None  # another signature
    with fastxent.config(threads=1):  # the settings are part of the signature
        assert not served_by_fast_path(y, x, from_logits=True)
