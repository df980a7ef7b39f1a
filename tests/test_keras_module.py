"""fastxent.keras: Keras 3's function forms and classes, exactly.

The first part checks the documented formulas and Keras's reduction rules with plain
NumPy (it runs without Keras); the second compares against Keras 3 itself on its JAX
backend (the reference: its NumPy backend drops ignore_class's mask and computes
binary losses from logits through sigmoid and a clip) and skips where Keras or JAX is
missing.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import fastxent
import fastxent.keras as fk

EPS = 1e-7


def _clip(p, dtype=np.float64):
    return np.clip(p, dtype(EPS), dtype(1) - dtype(EPS))


# --------------------------------------------------------------------------- formulas (no Keras)


def test_sparse_probabilities_are_renormalised_then_clipped():
    p = np.array([[0.5, 0.5, 0.5], [0.2, 0.2, 0.0], [0.0, 3.0, 0.0], [0.3, 0.3, 0.4]])
    y = np.array([0, 2, 1, 2])
    want = -np.log(_clip(p[np.arange(4), y] / p.sum(1)))
    np.testing.assert_allclose(fk.sparse_categorical_crossentropy(y, p), want, rtol=1e-12)
    assert want[2] == pytest.approx(-np.log(1 - EPS))  # 3.0 / 3.0 = 1, clipped to 1 - eps


def test_categorical_probabilities_are_renormalised_then_clipped():
    p = np.array([[1.0, 1.0, 2.0], [0.1, 0.0, 0.3]])
    t = np.array([[0.2, 0.3, 0.5], [0.0, 1.0, 0.0]])
    want = -(t * np.log(_clip(p / p.sum(1, keepdims=True)))).sum(1)
    np.testing.assert_allclose(fk.categorical_crossentropy(t, p), want, rtol=1e-12)


def test_normalised_rows_are_not_copied(monkeypatch):
    seen = []
    original = fastxent.sparse_categorical_crossentropy
    monkeypatch.setattr(fastxent, "sparse_categorical_crossentropy", lambda y, x, **kw: seen.append(x) or original(y, x, **kw))
    p = np.array([[0.25, 0.75], [0.5, 0.5]])
    logits = np.log(p)
    fk.sparse_categorical_crossentropy(np.array([0, 1]), p)  # rows sum to 1: used as they are
    fk.sparse_categorical_crossentropy(np.array([0, 1]), logits, from_logits=True)
    half = p * 0.5
    fk.sparse_categorical_crossentropy(np.array([0, 1]), half)  # renormalised into a copy
    assert seen[0] is p and seen[1] is logits
    assert not np.shares_memory(seen[2], half)
    np.testing.assert_array_equal(seen[2], p)


def test_categorical_label_smoothing_spreads_over_the_last_dimension():
    """Keras smooths with ls / y_true.shape[-1] even when the class axis is another."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 3, 4))  # classes along axis 1, last dimension 4
    t = np.zeros((2, 3, 4))
    t[:, 1, :] = 1.0
    ls = 0.2
    log_q = z - np.log(np.exp(z).sum(1, keepdims=True))
    want = -((t * (1 - ls) + ls / 4) * log_q).sum(1)
    np.testing.assert_allclose(fk.categorical_crossentropy(t, z, from_logits=True, label_smoothing=ls, axis=1), want,
                               rtol=1e-12)  # fmt: skip
    want_last = -((t * (1 - ls) + ls / 4) * (z - np.log(np.exp(z).sum(2, keepdims=True)))).sum(2)
    np.testing.assert_allclose(fk.categorical_crossentropy(t, z, from_logits=True, label_smoothing=ls), want_last,
                               rtol=1e-12)  # fmt: skip


def test_binary_averages_over_axis_and_a_1d_input_is_one_sample():
    y = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    p = np.array([[0.1, 0.7, 1.0], [0.6, 0.2, 0.0]])
    ls = 0.1
    ys = y * (1 - ls) + ls / 2
    elem = -(ys * np.log(_clip(p)) + (1 - ys) * np.log(1 - _clip(p)))
    np.testing.assert_allclose(fk.binary_crossentropy(y, p, label_smoothing=ls), elem.mean(1), rtol=1e-12)
    np.testing.assert_allclose(fk.binary_crossentropy(y, p, label_smoothing=ls, axis=0), elem.mean(0), rtol=1e-12)
    one = fk.binary_crossentropy(y[0], p[0], label_smoothing=ls)
    assert np.ndim(one) == 0 and one == pytest.approx(elem[0].mean(), rel=1e-12)
    everything = fk.binary_crossentropy(y, p, label_smoothing=ls, axis=None)  # ops.mean(axis=None)
    assert np.ndim(everything) == 0 and everything == pytest.approx(elem.mean(), rel=1e-12)
    z = np.array([[-30.0, 30.0]])  # exact from logits, no clip
    np.testing.assert_allclose(fk.binary_crossentropy(np.array([[1.0, 0.0]]), z, from_logits=True), [30.0], rtol=1e-12)


def test_ignore_class_gives_zero_and_leaves_the_mean():
    z = np.array([[2.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 3.0], [1.0, 1.0, 1.0]])
    y = np.array([0, 255, 2, 255])
    lsm = z - np.log(np.exp(z).sum(1, keepdims=True))
    kept = np.array([-lsm[0, 0], 0.0, -lsm[2, 2], 0.0])
    np.testing.assert_allclose(fk.sparse_categorical_crossentropy(y, z, from_logits=True, ignore_class=255), kept)
    w = np.array([1.0, 2.0, 3.0, 4.0])
    cases = {
        "sum_over_batch_size": (kept.sum() / 2, (kept * w).sum() / 2, 2.0 * kept.sum() / 2),
        "sum": (kept.sum(), (kept * w).sum(), 2.0 * kept.sum()),
        "mean_with_sample_weight": (kept.sum() / 2, (kept * w).sum() / (w[0] + w[2]), kept.sum() / 2),
    }
    for reduction, (plain, weighted, scalar) in cases.items():
        loss = fk.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255, reduction=reduction, dtype="float64")
        assert loss(y, z) == pytest.approx(plain, rel=1e-12)
        assert loss(y, z, sample_weight=w) == pytest.approx(weighted, rel=1e-12)
        assert loss(y, z, sample_weight=2.0) == pytest.approx(scalar, rel=1e-12)
    every = fk.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    assert every(np.array([255, 255]), z[:2]) == 0.0


def test_keras_reduction_rules():
    z = np.array([[2.0, 0.0], [0.0, 1.5], [0.3, 0.1]])
    y = np.array([0, 1, 1])
    per = fk.sparse_categorical_crossentropy(y, z, from_logits=True)

    def make(reduction):
        return fk.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction, dtype="float64")

    # "mean_with_sample_weight" divides by sum(sample_weight) as given: a scalar divides by itself.
    assert make("mean_with_sample_weight")(y, z, sample_weight=4.0) == pytest.approx(per.sum(), rel=1e-12)
    assert make("mean_with_sample_weight")(y, z) == pytest.approx(per.mean(), rel=1e-12)
    assert make("mean")(y, z, sample_weight=[1.0, 0.0, 2.0]) == pytest.approx((per * [1, 0, 2]).sum() / 3, rel=1e-12)
    # A (N, 1) sample weight expands the (N,) losses: "none" returns (N, 1).
    got = make(None)(y, z, sample_weight=np.array([[1.0], [2.0], [3.0]]))
    np.testing.assert_allclose(got, (per * [1, 2, 3])[:, None], rtol=1e-12)
    # An empty 1-D batch comes back unreduced; a scalar per-sample loss too.
    empty = make("sum_over_batch_size")(np.zeros(0, int), np.zeros((0, 2)))
    assert isinstance(empty, np.ndarray) and empty.shape == (0,)
    assert make("sum")(np.zeros((0, 3), int), np.zeros((0, 3, 2))) == 0.0
    single = fk.CategoricalCrossentropy(from_logits=True, reduction="sum", dtype="float64")
    assert single(np.array([0.0, 1.0]), z[1], sample_weight=None) == pytest.approx(per[1], rel=1e-12)


def test_results_dtypes():
    z32 = np.array([[2.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    y = np.array([0, 1])
    assert fk.sparse_categorical_crossentropy(y, z32.astype(np.float64), from_logits=True).dtype == np.float64
    assert fk.sparse_categorical_crossentropy(y, z32.astype(np.float16), from_logits=True).dtype == np.float32
    assert fk.SparseCategoricalCrossentropy(from_logits=True)(y, z32.astype(np.float64)).dtype == np.float32
    assert fk.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")(y, z32).dtype == np.float64
    assert fk.SparseCategoricalCrossentropy(from_logits=True, dtype="mixed_float16")(y, z32).dtype == np.float16
    assert fk.BinaryCrossentropy(reduction=None)(np.eye(2), np.full((2, 2), 0.5)).dtype == np.float32


def test_config_round_trip_and_names():
    loss = fk.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1, axis=1, reduction="sum", name="s")
    config = loss.get_config()
    assert config == {"name": "s", "reduction": "sum", "from_logits": True, "ignore_class": -1, "axis": 1,
                      "dtype": None}  # fmt: skip
    again = fk.SparseCategoricalCrossentropy.from_config(config)
    assert again.get_config() == config
    assert fk.BinaryCrossentropy().name == "binary_crossentropy"
    first, second = fk.CategoricalCrossentropy(name=None).name, fk.CategoricalCrossentropy(name=None).name
    assert first.startswith("categorical_crossentropy") and first != second
    positional = fk.SparseCategoricalCrossentropy(True, 3, "sum", 1)  # Keras's argument order
    assert (positional.from_logits, positional.ignore_class, positional.reduction, positional.axis) == (True, 3, "sum", 1)


def test_bad_input():
    with pytest.raises(ValueError, match="^reduction: expected one of"):
        fk.BinaryCrossentropy(reduction="auto")
    with pytest.raises(TypeError, match="^dtype: expected a floating dtype"):
        fk.BinaryCrossentropy(dtype="int32")
    with pytest.raises(ValueError, match=r"^y_true: expected labels in \[0, 2\) or ignore_class=-1.*got 5"):
        fk.sparse_categorical_crossentropy(np.array([0, 5]), np.zeros((2, 2)), from_logits=True, ignore_class=-1)
    with pytest.raises(ValueError, match="^y_pred: expected probabilities in"):
        fk.binary_crossentropy(np.array([[1.0]]), np.array([[1.5]]))
    with pytest.raises(TypeError, match="^axis"):
        fk.categorical_crossentropy(np.eye(2), np.eye(2), axis=True)
    with pytest.raises(ValueError, match="^label_smoothing"):  # also where Keras's smoothing is done here
        fk.categorical_crossentropy(np.ones((2, 3, 4)) / 3, np.ones((2, 3, 4)) / 3, label_smoothing=1.5, axis=1)


# --------------------------------------------------------------------------- against Keras 3


@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("jax")
    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip(f"Keras runs on its {keras.backend.backend()} backend here; these tests compare with JAX's")
    return keras


def _k(value):
    return np.asarray(value)


def _close(got, want, rtol=2e-6, atol=2e-7):
    want = np.asarray(want)
    assert np.shape(got) == want.shape, (np.shape(got), want.shape)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def _data(seed=0, shape=(6, 5)):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape).astype(np.float32) * 2
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    y = rng.integers(0, shape[-1], shape[:-1])
    return z, p.astype(np.float32), y


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("ignore_class", [None, 1, -1])
@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 5)])
def test_sparse_function_matches_keras(keras, from_logits, ignore_class, shape):
    z, p, y = _data(1, shape)
    if ignore_class == -1:
        y.flat[::3] = -1
    x = z if from_logits else p
    x.flat[:3] = 0.0 if not from_logits else x.flat[:3]  # clipped probabilities
    want = keras.losses.sparse_categorical_crossentropy(y, x, from_logits=from_logits, ignore_class=ignore_class)
    _close(fk.sparse_categorical_crossentropy(y, x, from_logits=from_logits, ignore_class=ignore_class), want)
    _close(fk.sparse_categorical_crossentropy(y[..., None], x, from_logits=from_logits, ignore_class=ignore_class), want)


def test_unnormalised_probabilities_match_keras(keras):
    _, p, y = _data(2)
    p = p * np.linspace(0.5, 2.0, 6, dtype=np.float32)[:, None]
    _close(fk.sparse_categorical_crossentropy(y, p), keras.losses.sparse_categorical_crossentropy(y, p))
    t = np.eye(5, dtype=np.float32)[y]
    _close(fk.categorical_crossentropy(t, p), keras.losses.categorical_crossentropy(t, p))


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("axis", [-1, 1])
def test_categorical_function_matches_keras(keras, from_logits, label_smoothing, axis):
    """(3, 4, 5) inputs; with axis=1 the 4 classes lie along axis 1 (and Keras's
    smoothing spreads over the last dimension's 5)."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal((3, 4, 5)).astype(np.float32)
    p = np.exp(z) / np.exp(z).sum(axis, keepdims=True)
    t = np.moveaxis(rng.dirichlet(np.ones(z.shape[axis]), (3, 5) if axis == 1 else (3, 4)), -1, axis)
    x, t = (z if from_logits else p.astype(np.float32)), t.astype(np.float32)
    want = keras.losses.categorical_crossentropy(t, x, from_logits=from_logits, label_smoothing=label_smoothing, axis=axis)
    _close(fk.categorical_crossentropy(t, x, from_logits=from_logits, label_smoothing=label_smoothing, axis=axis), want)


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("shape, axis", [((6, 3), -1), ((2, 3, 4), 1), ((7,), -1)])
def test_binary_function_matches_keras(keras, from_logits, label_smoothing, shape, axis):
    rng = np.random.default_rng(5)
    z = (rng.standard_normal(shape) * 3).astype(np.float32)
    x = z if from_logits else (1 / (1 + np.exp(-z))).astype(np.float32)
    if not from_logits:
        x.flat[:2] = [0.0, 1.0]
    t = rng.integers(0, 2, shape).astype(np.float32)
    want = keras.losses.binary_crossentropy(t, x, from_logits=from_logits, label_smoothing=label_smoothing, axis=axis)
    _close(fk.binary_crossentropy(t, x, from_logits=from_logits, label_smoothing=label_smoothing, axis=axis), want,
           rtol=1e-5, atol=1e-6)  # fmt: skip


SAMPLE_WEIGHTS = {
    "none": None,
    "per-sample": np.array([0.5, 2.0, 0.0, 1.0, 3.0, 1.5], dtype=np.float32),
    "column": np.array([[0.5], [2.0], [0.0], [1.0], [3.0], [1.5]], dtype=np.float32),
    "scalar": 2.5,
}


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", None, "none"])
@pytest.mark.parametrize("weights", list(SAMPLE_WEIGHTS))
@pytest.mark.parametrize("ignore_class", [None, 4])
def test_sparse_class_matches_keras(keras, reduction, weights, ignore_class):
    z, _, y = _data(6)
    y[[1, 3]] = 4
    sw = SAMPLE_WEIGHTS[weights]
    ours = fk.SparseCategoricalCrossentropy(from_logits=True, ignore_class=ignore_class, reduction=reduction)
    theirs = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=ignore_class, reduction=reduction)
    got, want = ours(y, z, sample_weight=sw), theirs(y, z, sample_weight=sw)
    assert got.dtype == _k(want).dtype == np.float32
    _close(got, want, rtol=1e-5)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean_with_sample_weight", None])
@pytest.mark.parametrize("weights", list(SAMPLE_WEIGHTS))
def test_categorical_and_binary_classes_match_keras(keras, reduction, weights):
    z, p, y = _data(7)
    t = np.eye(5, dtype=np.float32)[y]
    sw = SAMPLE_WEIGHTS[weights]
    for ours, theirs, args in [
        (fk.CategoricalCrossentropy(label_smoothing=0.1, reduction=reduction),
         keras.losses.CategoricalCrossentropy(label_smoothing=0.1, reduction=reduction), (t, p)),
        (fk.BinaryCrossentropy(from_logits=True, label_smoothing=0.1, reduction=reduction),
         keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.1, reduction=reduction), (t, z)),
        (fk.BinaryCrossentropy(reduction=reduction), keras.losses.BinaryCrossentropy(reduction=reduction),
         (t[:, 0], p[:, 0:1])),  # (N,) targets against (N, 1) outputs
    ]:  # fmt: skip
        _close(ours(*args, sample_weight=sw), theirs(*args, sample_weight=sw), rtol=1e-5)


def test_one_dimensional_binary_class_matches_keras(keras):
    t = np.array([0.0, 1.0, 0.0, 0.0], dtype=np.float32)
    x = np.array([-18.6, 0.51, 2.94, -12.8], dtype=np.float32)
    for sw in (None, np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)):
        for reduction in ("sum_over_batch_size", "sum", None):
            ours = fk.BinaryCrossentropy(from_logits=True, reduction=reduction)
            theirs = keras.losses.BinaryCrossentropy(from_logits=True, reduction=reduction)
            _close(ours(t, x, sample_weight=sw), theirs(t, x, sample_weight=sw), rtol=1e-5)


def test_empty_batch_matches_keras(keras):
    for reduction in ("sum_over_batch_size", "sum"):
        got = fk.SparseCategoricalCrossentropy(reduction=reduction)(np.zeros(0, int), np.zeros((0, 3), np.float32))
        want = keras.losses.SparseCategoricalCrossentropy(reduction=reduction)(np.zeros(0, int), np.zeros((0, 3), np.float32))
        assert got.shape == _k(want).shape == (0,)


def test_configs_load_both_ways(keras):
    pairs = [
        (fk.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1, reduction="sum", name="s"),
         keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1, reduction="sum", name="s")),
        (fk.CategoricalCrossentropy(label_smoothing=0.2, axis=1), keras.losses.CategoricalCrossentropy(label_smoothing=0.2, axis=1)),
        (fk.BinaryCrossentropy(from_logits=True, reduction=None), keras.losses.BinaryCrossentropy(from_logits=True, reduction=None)),
    ]  # fmt: skip
    for ours, theirs in pairs:
        theirs_config = theirs.get_config()
        assert {k: v for k, v in ours.get_config().items() if k in theirs_config} == theirs_config
        assert type(ours).from_config(theirs_config).get_config() == ours.get_config()
        assert type(theirs).from_config(ours.get_config()).get_config() == theirs_config


def test_keras_tensors_are_read_as_they_are(keras):
    """JAX arrays (Keras's tensors here) go in directly; results are NumPy."""
    import jax.numpy as jnp

    z, p, y = _data(8)
    want = fk.sparse_categorical_crossentropy(y, z, from_logits=True, ignore_class=2)
    got = fk.sparse_categorical_crossentropy(jnp.asarray(y), jnp.asarray(z), from_logits=True, ignore_class=2)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, want)
    loss = fk.CategoricalCrossentropy()
    assert loss(jnp.asarray(np.eye(5)[y]), jnp.asarray(p)) == loss(np.eye(5)[y], p)
