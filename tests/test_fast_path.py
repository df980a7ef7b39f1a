"""The compiled form of plain sparse calls (``fastxent/_fastcall.pyx``).

It must be invisible: it serves a call only once the dispatcher has planned the same
signature, runs that plan (backend and threads, so ``explain`` tells the truth), gives
the same bits and dtype as the general path, and hands back every call it does not
do -- including every one the general path would refuse -- so the error is the
general path's.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from fastxent import _api, _dispatch
from fastxent._validate import build_problem

pytestmark = pytest.mark.skipif(_api._fast_sparse is None, reason="compiled extension not built")

sparse = fastxent.sparse_categorical_crossentropy
DEFAULTS = _api.keyword_defaults(sparse)


def general_path(y, x, **options):
    """The same call through validate -> plan -> kernel -> reduce."""
    return _api.run(build_problem("sparse", y, x, **{**DEFAULTS, **options}))


#: Options the public function takes before it asks the compiled call (which never
#: sees them: a call that uses them is not plain).
NOT_PLAIN = ("z_loss", "logit_softcap", "return_lse")


def fast(y, x, **options):
    """What the compiled call returns for ``sparse(y, x, **options)`` (None: not served)."""
    options = {**DEFAULTS, **options}
    return _api._fast_sparse(y, x, **{k: v for k, v in options.items() if k not in NOT_PLAIN})


def served(y, x, **options) -> bool:
    return fast(y, x, **options) is not None


def planned(y, x, **options):
    """Make the dispatcher plan the call (a public call does), return its (backend, threads)."""
    sparse(y, x, **options)
    problem = build_problem("sparse", y, x, **{**DEFAULTS, **options})
    return _dispatch.choose(problem)


@pytest.fixture(autouse=True)
def no_plans():
    """Each test starts with the dispatcher's memo empty, and leaves it so."""
    _dispatch.forget_choices()
    yield
    _dispatch.forget_choices()


def _data(rng, shape, dtype, from_logits, label_dtype=np.int64):
    n, c = shape
    y = rng.integers(0, c, size=n).astype(label_dtype)
    x = (rng.standard_normal(shape) * 4).astype(dtype) if from_logits else rng.dirichlet(np.ones(c), n).astype(dtype)
    return y, x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "sum_over_batch_size"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (129, 5), (4096, 8), (4097, 3), (32, 1024), (40000, 3)])
def test_same_bits_as_general_path_once_planned(rng, dtype, label_dtype, from_logits, reduction, shape):
    y, x = _data(rng, shape, dtype, from_logits, label_dtype)
    options = dict(from_logits=from_logits, reduction=reduction)
    assert not served(y, x, **options)  # nothing planned yet: the general path runs first
    backend, _ = planned(y, x, **options)
    if backend != "cython":
        pytest.skip(f"the dispatcher chose {backend} here")
    got = fast(y, x, **options)
    want = general_path(y, x, **options)
    assert type(got) is type(want) and got.dtype == np.dtype(dtype)
    assert got.tobytes() == want.tobytes(), (got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("threads", [None, 1, 2])
@pytest.mark.parametrize("shape", [(40, 6), (64, 1000), (40000, 3)])
def test_gradient_and_ignored_rows_same_bits(rng, dtype, from_logits, threads, shape):
    y, x = _data(rng, shape, dtype, from_logits)
    y[::7] = -100
    options = dict(from_logits=from_logits, ignore_index=-100, return_grad=True, threads=threads)
    planned(y, x, **options)
    key = next(iter(_dispatch._choices))
    _dispatch._choices[key] = ("cython", threads or 2)  # whatever auto chose, run Cython's plan
    loss, grad = fast(y, x, **options)
    want_loss, want_grad = general_path(y, x, **options)
    assert loss.tobytes() == want_loss.tobytes()
    assert grad.dtype == want_grad.dtype and grad.tobytes() == want_grad.tobytes()


def test_runs_the_plan_and_explain_says_so(rng):
    y, x = _data(rng, (1000, 100), np.float32, True)
    planned(y, x, from_logits=True)
    (key, _), = _dispatch._choices.items()
    for plan in (("cython", 1), ("cython", 2)):
        _dispatch._choices[key] = plan
        assert served(y, x, from_logits=True)
    _dispatch._choices[key] = ("numpy", 1)  # another backend planned: the general path runs it
    assert not served(y, x, from_logits=True)
    _dispatch.forget_choices()
    sparse(y, x, from_logits=True)
    explained = fastxent.explain(sparse, y, x, from_logits=True)
    assert (explained.backend, explained.threads) == _dispatch._choices[key]
    assert not served(y, x.astype(np.float64), from_logits=True)  # another signature: not planned
    with fastxent.config(threads=1):  # the settings are part of the signature
        assert not served(y, x, from_logits=True)


def test_config_and_environment_are_part_of_the_signature(rng, monkeypatch):
    y, x = _data(rng, (6, 4), np.float64, True)
    planned(y, x, from_logits=True)
    assert served(y, x, from_logits=True)
    with fastxent.config(backend="cython"):
        assert not served(y, x, from_logits=True)
    monkeypatch.setenv("FASTXENT_BACKEND", "numpy")
    assert not served(y, x, from_logits=True)
    assert sparse(y, x, from_logits=True) == general_path(y, x, from_logits=True)
    assert fastxent.explain(sparse, y, x, from_logits=True).backend == "numpy"
    monkeypatch.delenv("FASTXENT_BACKEND")
    assert served(y, x, from_logits=True)


@pytest.mark.parametrize(
    "options",
    [
        {"class_weight": np.ones(4)},
        {"sample_weight": np.ones(6)},
        {"label_smoothing": 0.1},
        {"reduction": "none"},
        {"epsilon": 1e-6},
    ],
    ids=lambda o: next(iter(o)),
)
def test_hands_back_what_it_does_not_do(rng, options):
    y, x = _data(rng, (6, 4), np.float64, True)
    planned(y, x, from_logits=True)
    assert not served(y, x, from_logits=True, **options)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("where", ["new", "in place"])
@pytest.mark.parametrize("shape", [(32, 10), (40000, 3)])
def test_grad_out_same_bits_as_general_path(rng, dtype, where, shape):
    y, x = _data(rng, shape, dtype, True)
    y[::5] = -1
    options = dict(from_logits=True, ignore_index=-1, return_grad=True)
    planned(y, x, **options)
    if _dispatch.choose(build_problem("sparse", y, x, **{**DEFAULTS, **options}))[0] != "cython":
        pytest.skip("the dispatcher chose another backend here")
    x_fast, x_general = x.copy(), x.copy()
    out_fast = x_fast if where == "in place" else np.full_like(x, np.nan)
    out_general = x_general if where == "in place" else np.full_like(x, np.nan)
    got = fast(y, x_fast, grad_out=out_fast, **options)
    want = general_path(y, x_general, grad_out=out_general, **options)
    assert got is not None and got[1] is out_fast
    assert got[0].tobytes() == want[0].tobytes()
    assert out_fast.tobytes() == out_general.tobytes()


def _grad_out_cases(x, y):
    """grad_out buffers the compiled call must hand back (name, y, x, grad_out, options)."""
    read_only = x.copy()
    read_only.flags.writeable = False
    shared = np.empty(x.size + 8, x.dtype)
    labels_in_grad = np.empty(x.nbytes + y.nbytes, np.uint8)
    grad_over_labels = labels_in_grad[: x.nbytes].view(x.dtype).reshape(x.shape)
    labels = labels_in_grad[x.nbytes - y.nbytes // 2 :][: y.nbytes].view(y.dtype)
    labels[:] = y
    x_read_only = x.copy()
    x_read_only.flags.writeable = False
    return [
        ("read-only", y, x, read_only, {}),
        ("y_pred read-only, in place", y, x_read_only, x_read_only, {}),
        ("another dtype", y, x, np.empty(x.shape, np.float64 if x.dtype == np.float32 else np.float32), {}),
        ("another shape", y, x, np.empty((x.shape[0] + 1, x.shape[1]), x.dtype), {}),
        ("Fortran order", y, x, np.empty(x.shape, x.dtype, order="F"), {}),
        ("a list", y, x, x.tolist(), {}),
        ("overlapping y_pred", y, shared[: x.size].reshape(x.shape), shared[8:].reshape(x.shape), {}),
        ("overlapping the labels", labels, x, grad_over_labels, {}),
        ("without return_grad", y, x, np.empty_like(x), {"return_grad": False}),
        ("from probabilities", y, np.full(x.shape, 1 / x.shape[1], x.dtype), np.empty_like(x),
         {"from_logits": False}),
    ]


@pytest.mark.parametrize("case", range(10))
def test_grad_out_that_the_checks_refuse_is_handed_back(rng, case):
    """Every grad_out the general path refuses (or must leave untouched when it
    refuses the call) goes back to it: the compiled call never writes one."""
    y, x = _data(rng, (6, 4), np.float32, True)
    name, y, x, grad_out, options = _grad_out_cases(x, y)[case]
    options = {"from_logits": True, "return_grad": True, **options}
    planned(y, np.ascontiguousarray(x), **{k: v for k, v in options.items()})
    before = np.array(grad_out, copy=True)
    assert not served(y, x, grad_out=grad_out, **options), name
    np.testing.assert_array_equal(np.asarray(grad_out), before)


def test_hands_back_unplain_arrays(rng):
    y, x = _data(rng, (100, 20), np.float64, True)
    planned(y, x, from_logits=True)
    assert served(y, x, from_logits=True)
    assert not served(y, np.asfortranarray(x), from_logits=True)
    assert not served(y, x[:, ::2], from_logits=True)
    assert not served(y.astype(np.uint8), x, from_logits=True)
    assert not served(list(y), x, from_logits=True)
    assert not served(y, np.asarray(x, dtype=">f8"), from_logits=True)


def test_more_classes_than_the_unit_weights_take_the_general_path(rng):
    """The compiled call's unit class weights hold 32,768 values: a planned call with
    more classes must not read past them (a label or argmax beyond would)."""
    c = 40_000
    x = rng.standard_normal((3, c)).astype(np.float32)
    x[:, -1] = 30.0  # the argmax, and a label, beyond 32,768
    y = np.array([c - 1, 5, c - 2])
    for return_grad in (False, True):
        planned(y, x, from_logits=True, return_grad=return_grad)
        assert not served(y, x, from_logits=True, return_grad=return_grad)


@pytest.mark.parametrize(
    "y, x, match",
    [
        (np.array([0, 3]), np.zeros((2, 3)), "y_true"),  # label out of range
        (np.array([0, -1]), np.zeros((2, 3)), "y_true"),
        (np.array([0, 1]), np.full((2, 3), 1.5), "y_pred"),  # probability above 1
        (np.array([0, 1]), np.full((2, 3), -0.5), "y_pred"),
    ],
)
def test_bad_inputs_are_handed_back_for_the_general_errors(y, x, match):
    planned(np.array([0, 1]), np.full((2, 3), 1 / 3))  # the same signature, planned
    assert not served(y, x)
    with pytest.raises(ValueError, match=match):
        sparse(y, x)


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 16, 1003])
def test_label_scan_finds_every_bad_label_and_counts_ignored_rows(rng, label_dtype, n):
    """The compiled call's label check is one vectorised pass (``fx_labels.h``): a
    bad label in any lane of a vector or in the tail is handed back, a label equal
    to -100 is bad unless it is the ignore_index, and ignored rows leave the mean."""
    c = 5
    x = rng.standard_normal((n, c)).astype(np.float32)
    y = rng.integers(0, c, n).astype(label_dtype)
    planned(y, x, from_logits=True)
    planned(y, x, from_logits=True, ignore_index=-100)
    for at in sorted({0, n // 2, n - 1}):
        for value in (c, -1, -100, np.iinfo(label_dtype).max, np.iinfo(label_dtype).min):
            bad = y.copy()
            bad[at] = value
            assert not served(bad, x, from_logits=True), (at, value)
            if value != -100:
                assert not served(bad, x, from_logits=True, ignore_index=-100), (at, value)
    ignored = y.copy()
    ignored[:: max(n // 3, 1)] = -100
    got = fast(ignored, x, from_logits=True, ignore_index=-100)
    assert got is not None
    np.testing.assert_array_equal(got, general_path(ignored, x, from_logits=True, ignore_index=-100))


def test_logits_that_look_like_probabilities_take_the_general_path_and_warn(rng):
    p = rng.dirichlet(np.ones(5), 10)
    y = rng.integers(0, 5, 10)
    with pytest.warns(fastxent.ProbabilitiesAsLogitsWarning):
        planned(y, p, from_logits=True)
    assert not served(y, p, from_logits=True)
    with pytest.warns(fastxent.ProbabilitiesAsLogitsWarning):
        sparse(y, p, from_logits=True)
    assert served(y, np.log(p), from_logits=True)


def test_all_ignored_mean_is_zero():
    y = np.full(4, -100)
    planned(y, np.ones((4, 3)), ignore_index=-100, from_logits=True)
    assert fast(y, np.ones((4, 3)), ignore_index=-100, from_logits=True) == 0.0


def test_extremes_same_as_general_path():
    x = np.array([[1e4, -1e4, 0.0], [np.nan, 0.0, 1.0], [-np.inf, 0.0, 1.0], [np.inf, 0.0, 0.0]])
    y = np.array([0, 1, 2, 1])
    for rows in ([0], [1], [2], [3], [0, 2]):
        planned(y[rows], x[rows], from_logits=True)
        np.testing.assert_array_equal(fast(y[rows], x[rows], from_logits=True),
                                      general_path(y[rows], x[rows], from_logits=True))


def test_inputs_not_modified(rng):
    y, x = _data(rng, (20, 5), np.float32, True)
    y0, x0 = y.copy(), x.copy()
    planned(y, x, from_logits=True, return_grad=True)
    fast(y, x, from_logits=True, return_grad=True)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(x, x0)
