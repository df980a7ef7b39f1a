"""Fuzzing: hostile calls to every public function on every backend.

A call either raises one of the contract's errors (ValueError or TypeError naming an
argument) or returns what the NumPy backend returns for the same call (which the
oracle tests pin down); it never crashes, hangs or returns garbage.
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import fastxent

FNS = {
    "binary": fastxent.binary_crossentropy,
    "categorical": fastxent.categorical_crossentropy,
    "sparse": fastxent.sparse_categorical_crossentropy,
}
ARGUMENT_NAMES = ("y_true", "y_pred", "axis", "epsilon", "label_smoothing", "reduction", "class_weight", "pos_weight",
                  "sample_weight", "ignore_index", "grad_out", "threads", "from_logits", "return_grad")  # fmt: skip
DTYPES = ["float16", "float32", "float64", ">f4", ">f8", "int8", "uint8", "int32", "uint64", "int64", "bool",
          "complex64", "object", "U1", "longdouble"]  # fmt: skip
SPECIAL = [0.0, -0.0, 1.0, 0.5, -1.0, 2.0, 1e4, -1e4, 1e30, -1e30, np.inf, -np.inf, np.nan, 1e-45, 1 - 1e-8]


def _array(draw, shape, dtype, values):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = rng.choice(np.array(values, dtype=object), size=shape) if values else rng.standard_normal(shape)
    if dtype == "object":
        return base.astype(object)
    if dtype == "U1":
        return np.full(shape, "a")
    with np.errstate(all="ignore"):
        as_float = np.asarray(base, dtype=np.float64)
        if np.dtype(dtype).kind in "iub":
            as_float = np.nan_to_num(np.clip(as_float, -100, 100), nan=0, posinf=3, neginf=-3)
        a = as_float.astype(dtype)
    if draw(st.booleans()) and a.ndim >= 1 and a.size:
        big = np.zeros(tuple(2 * n for n in a.shape), dtype=a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        a = view
    if draw(st.booleans()) and a.ndim >= 2:
        a = np.asfortranarray(a)
    return a


def usually_dtype(draw, good, bad):
    return draw(st.sampled_from(list(good) * 2 + list(bad)))  # hypothesis favours the front


@st.composite
def hostile_calls(draw):
    kind = draw(st.sampled_from(sorted(FNS)))
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim)))
    pred_values = draw(st.one_of(st.none(), st.lists(st.sampled_from(SPECIAL), min_size=1, max_size=5)))
    y_pred = _array(draw, shape, usually_dtype(draw, DTYPES[:5], DTYPES[5:]), pred_values)
    if draw(st.booleans()) and y_pred.dtype.kind == "f":
        y_pred = np.abs(np.nan_to_num(y_pred)) % 1 if not draw(st.booleans()) else y_pred  # often valid probabilities

    axis = draw(st.sampled_from([-1, -1, 0, 1, 2, -3, None] if kind == "binary" else [-1, -1, -1, 0, 1, 2, -3]))
    if kind == "sparse":
        label_shape = shape[:-1] if shape and draw(st.sampled_from([True, True, False])) else tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        label_values = draw(st.lists(st.sampled_from([0, 1, 2, 3, 0, 1, -1, -100, 7, 2**40, 0.5, np.nan]), min_size=1,
                                     max_size=4))  # fmt: skip
        label_dtype = usually_dtype(draw, ["int64", "int8", "uint8", "uint64", "float64", "bool", ">i4"], ["U1", "object"])
        y_true = _array(draw, label_shape, label_dtype, label_values)
    else:
        true_shape = shape if draw(st.sampled_from([True, True, False])) else tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        y_true = _array(draw, true_shape, usually_dtype(draw, ["float32", "float64", "int8", "bool"], ["complex64", "U1"]),
                        draw(st.lists(st.sampled_from([0.0, 1.0, 0.5, -1.0, 2.0, np.nan, np.inf]), min_size=1, max_size=3)))  # fmt: skip

    def usually(good, bad):
        """A valid value nine times in ten, so most calls get past validation."""
        return draw(st.sampled_from(list(good) * 6 + list(bad)))  # hypothesis favours the front

    opts = {
        "from_logits": usually([True, False], [1, "yes"]),
        "axis": axis,
        "reduction": usually(["mean", "sum", "none", "weighted_mean", "sum_over_batch_size", None], ["avg"]),
        "label_smoothing": usually([0.0, 0.0, 0.1, 1.0], [-0.5, 2.0, np.nan]),
        "epsilon": usually([1e-7, 0.25], [0.0, 0.5, -1.0]),
        "return_grad": draw(st.booleans()),
        "threads": usually([None, 1, 2], [0, 1.5]),
    }
    n_classes = draw(st.integers(0, 5))
    weight = draw(st.sampled_from([None, "right", "wrong", "negative", "nan", "scalar"]))
    if weight is not None:
        values = {"right": np.linspace(0.5, 2, n_classes), "wrong": np.ones(n_classes + 1),
                  "negative": -np.ones(n_classes), "nan": np.full(n_classes, np.nan), "scalar": 2.0}[weight]  # fmt: skip
        opts["pos_weight" if kind == "binary" else "class_weight"] = values
    if draw(st.booleans()):
        opts["sample_weight"] = draw(st.sampled_from([0.5, -1.0, np.nan, np.ones(3), np.ones(shape[:-1]) if shape else 1.0]))
    if kind == "sparse" and draw(st.booleans()):
        opts["ignore_index"] = draw(st.sampled_from([-100, 0, -1, 2**40]))
    if opts["return_grad"] and draw(st.booleans()):
        opts["grad_out"] = draw(st.sampled_from(["self", "float32", "float64", "wrong-shape"]))
    return kind, y_true, y_pred, opts


def _materialise_grad_out(y_pred, opts):
    kind = opts.get("grad_out")
    if kind is None:
        return opts
    if kind == "self":
        return dict(opts, grad_out=y_pred)
    if kind == "wrong-shape":
        return dict(opts, grad_out=np.zeros(y_pred.shape + (1,)))
    return dict(opts, grad_out=np.zeros(y_pred.shape, dtype=kind))


def _outcome(kind, y_true, y_pred, opts, backend):
    """('error', type, message) or ('value', loss, grad) for one call, on copies."""
    y_true_c = y_true.copy() if isinstance(y_true, np.ndarray) else y_true
    y_pred_c = y_pred.copy(order="K") if isinstance(y_pred, np.ndarray) else y_pred
    call_opts = _materialise_grad_out(y_pred_c, opts)
    try:
        result = FNS[kind](y_true_c, y_pred_c, backend=backend, **call_opts)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        assert any(name in message for name in ARGUMENT_NAMES), f"message names no argument: {message!r}"
        return ("error", type(exc), message)
    if opts["return_grad"]:
        loss, grad = result
        return ("value", np.asarray(loss), np.asarray(grad))
    return ("value", np.asarray(result), None)


FUZZ = settings(max_examples=int(os.environ.get("FASTXENT_FUZZ_EXAMPLES", "300")))


@FUZZ
@given(hostile_calls())
def test_hostile_calls_raise_the_contract_error_or_match_numpy(backend, case):
    kind, y_true, y_pred, opts = case
    try:
        fastxent.explain(FNS[kind], y_true, y_pred, **{k: v for k, v in _materialise_grad_out(y_pred, opts).items()},
                         backend=backend)  # fmt: skip
    except RuntimeError:
        return  # this backend cannot run the call (the dispatcher would not pick it)
    except (ValueError, TypeError):
        pass  # the call itself must raise the same below
    got = _outcome(kind, y_true, y_pred, opts, backend)
    want = _outcome(kind, y_true, y_pred, opts, "numpy")
    assert got[0] == want[0], (got, want)
    if got[0] == "error":
        assert got[1] is want[1] and got[2] == want[2]
        return
    tol = dict(rtol=1e-5, atol=1e-6) if got[1].dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    assert got[1].dtype == want[1].dtype and got[1].shape == want[1].shape
    np.testing.assert_allclose(got[1], want[1], **tol)
    if got[2] is not None:
        assert got[2].dtype == want[2].dtype and got[2].shape == want[2].shape
        np.testing.assert_allclose(got[2], want[2], **tol)


@FUZZ
@given(hostile_calls())
def test_hostile_calls_never_modify_their_inputs(case):
    kind, y_true, y_pred, opts = case
    opts = {k: v for k, v in opts.items() if k != "grad_out"}
    before = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in (y_true, y_pred)]
    weights = {k: np.array(v, copy=True) for k, v in opts.items() if isinstance(v, np.ndarray)}
    try:
        FNS[kind](y_true, y_pred, **opts)
    except (ValueError, TypeError):
        pass
    for b, a in zip(before, (y_true, y_pred)):
        assert _same(b, a)
    for k, v in weights.items():
        assert _same(v, opts[k])


def _same(a, b) -> bool:
    """Bit-for-bit equality (NaN included); object arrays element by element."""
    if not isinstance(a, np.ndarray):
        return a is b or a == b
    if a.dtype == object:
        return [repr(v) for v in a.flat] == [repr(v) for v in b.flat]
    return a.dtype == b.dtype and a.shape == b.shape and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
