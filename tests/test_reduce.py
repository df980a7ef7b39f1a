"""Reductions: the table of the contract, fixed-block float64 sums, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import call

import fastxent
from fastxent import _reduce

scce = fastxent.sparse_categorical_crossentropy


def test_aliases_match_their_reductions(backend, rng):
    z = rng.standard_normal((9, 4))
    y = rng.integers(0, 4, 9)
    w = rng.random(9)
    for alias, name in [("sum_over_batch_size", "mean"), ("mean_with_sample_weight", "weighted_mean"), (None, "none")]:
        a = call(scce, y, z, backend=backend, from_logits=True, sample_weight=w, reduction=alias)
        b = call(scce, y, z, backend=backend, from_logits=True, sample_weight=w, reduction=name)
        np.testing.assert_array_equal(a, b)


def test_weighted_mean_is_pytorch_mean_with_class_weights(backend, rng):
    """PyTorch: sum_i w_{y_i} l_i / sum_i w_{y_i} over non-ignored rows."""
    z = rng.standard_normal((12, 5))
    y = rng.integers(0, 5, 12)
    y[[1, 7]] = -100
    w = rng.uniform(0.1, 3.0, 5)
    got = call(scce, y, z, backend=backend, from_logits=True, class_weight=w, ignore_index=-100,
               reduction="weighted_mean")  # fmt: skip
    keep = y != -100
    logq = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    nll = -logq[keep, y[keep]]
    np.testing.assert_allclose(got, (w[y[keep]] * nll).sum() / w[y[keep]].sum(), rtol=1e-12)


def test_weighted_mean_is_sklearn_log_loss_with_sample_weight(backend, rng):
    """scikit-learn: sum_i s_i l_i / sum_i s_i, probabilities clipped."""
    p = rng.dirichlet(np.ones(3), 10)
    y = rng.integers(0, 3, 10)
    s = rng.random(10)
    got = call(scce, y, p, backend=backend, sample_weight=s, reduction="weighted_mean")
    np.testing.assert_allclose(got, (s * -np.log(p[np.arange(10), y])).sum() / s.sum(), rtol=1e-12)


def test_keras_mean_divides_by_the_batch_size_whatever_the_weights(backend, rng):
    p = rng.dirichlet(np.ones(3), 10)
    y = rng.integers(0, 3, 10)
    s = rng.random(10)
    got = call(scce, y, p, backend=backend, sample_weight=s)
    np.testing.assert_allclose(got, (s * -np.log(p[np.arange(10), y])).sum() / 10, rtol=1e-12)


def test_zero_total_weight_reduces_to_zero(backend):
    got = call(scce, [0, 1], [[0.5, 0.5], [0.5, 0.5]], backend=backend, sample_weight=[0.0, 0.0],
               reduction="weighted_mean", return_grad=True)  # fmt: skip
    assert got[0] == 0.0 and (got[1] == 0).all()


@pytest.mark.parametrize("n", [1, 1000, _reduce.BLOCK_ROWS, 3 * _reduce.BLOCK_ROWS + 17, 300_001])
def test_block_sums_do_not_depend_on_chunking(rng, n):
    """Chunks of whole blocks (what `fastxent eval` streams) give the same bits."""
    values = rng.standard_normal(n) * 10.0 ** rng.integers(-5, 5, n)
    weights = rng.random(n)
    whole = _reduce.total(_reduce.block_sums(values, weights))
    for blocks_per_chunk in (1, 3, 8):
        step = blocks_per_chunk * _reduce.BLOCK_ROWS
        parts = [_reduce.block_sums(values[i : i + step], weights[i : i + step]) for i in range(0, n, step)]
        assert _reduce.total(np.concatenate(parts)) == whole
    np.testing.assert_allclose(whole, np.sum(values * weights), rtol=1e-12)


def test_scalar_and_array_weights_agree(rng):
    values = rng.standard_normal(200_000)
    a = _reduce.total(_reduce.block_sums(values, 0.3))
    b = _reduce.total(_reduce.block_sums(values, np.full(values.shape, 0.3)))
    assert a == b


@pytest.mark.parametrize("kind", ["sparse", "categorical", "binary"])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_same_bits_for_any_thread_count(backend, rng, kind, from_logits):
    n, c = 20_000, 7
    z = rng.standard_normal((n, c)).astype(np.float32)
    y = rng.integers(0, c, n)
    if from_logits:
        y_pred = z
    elif kind == "binary":
        y_pred = 1 / (1 + np.exp(-z))
    else:
        y_pred = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y_true = {"sparse": y, "categorical": np.eye(c, dtype=np.float32)[y], "binary": np.eye(c, dtype=np.float32)[y]}
    fn = {"sparse": scce, "categorical": fastxent.categorical_crossentropy, "binary": fastxent.binary_crossentropy}
    results = [
        call(fn[kind], y_true[kind], y_pred, backend=backend, from_logits=from_logits, threads=t,
             return_grad=True, sample_weight=np.linspace(0, 1, n))  # fmt: skip
        for t in (1, 2, 3)
    ]
    for loss, grad in results[1:]:
        assert loss.tobytes() == results[0][0].tobytes()
        assert grad.tobytes() == results[0][1].tobytes()


@pytest.mark.parametrize("reduction", ["sum", "mean", "weighted_mean"])
def test_chunks_of_any_size_give_the_same_bits_as_one_call(backend, rng, reduction):
    """What `fastxent eval` and `fastxent.dask` rely on: per-row terms of each chunk,
    summed into the global blocks by BlockSums, finish to one call's bits."""
    from fastxent._validate import build_problem
    from fastxent.evaluate import row_terms

    n = 3 * _reduce.BLOCK_ROWS + 123
    z = rng.standard_normal((n, 5)).astype(np.float32)
    y = rng.integers(0, 5, n)
    y[::7] = -1
    s = rng.random(n)
    opts = dict(from_logits=True, label_smoothing=0.1, reduction=reduction, epsilon=1e-7, return_grad=False,
                grad_out=None, backend=backend, threads=None, axis=-1, ignore_index=-1,
                class_weight=rng.random(5))  # fmt: skip
    try:
        whole = scce(y, z, sample_weight=s, **opts)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    weighted = reduction == "weighted_mean"
    for step in (1_000, _reduce.BLOCK_ROWS, 20_001):
        numerator, weight, count = _reduce.BlockSums(), _reduce.BlockSums(), 0
        for i in range(0, n, step):
            chunk = build_problem("sparse", y[i : i + step], z[i : i + step], sample_weight=s[i : i + step], **opts)
            terms = row_terms(chunk, weighted)
            numerator.add(terms.numerator)
            if weighted:
                weight.add(terms.weight)
            count += terms.count
        part = _reduce.Partial(numerator.result(), count, weight.result() if weighted else None)
        assert _reduce.finish(part, reduction, np.dtype(np.float32)).tobytes() == whole.tobytes()
