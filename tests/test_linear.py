"""fastxent.linear_cross_entropy: the sparse cross-entropy of ``hidden @ weight.T + bias``
in blocks, against a plain float64 NumPy reference and against the unfused call
(materialised logits through sparse_categorical_crossentropy), for loss and every
gradient; the vocabulary-blocked path; finite differences; memory; bad inputs."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import MiB, assert_linear_gradients_match_finite_differences, peak_of

import fastxent
from fastxent import linear

lce = fastxent.linear_cross_entropy
scce = fastxent.sparse_categorical_crossentropy

N, D, V = 37, 6, 29
REDUCTIONS = ["mean", "sum", "none", "weighted_mean"]
#: None: the default budget (whole rows); 5: rows per block; (4, 7): blocks of 4 rows
#: and 7 classes, the vocabulary-blocked path (with a last, shorter vocabulary block).
CHUNKS = [None, 5, (4, 7)]


# --------------------------------------------------------------------------- references


def reference(y, hidden, weight, bias=None, *, ignore_index=None, label_smoothing=0.0,
              class_weight=None, sample_weight=None, reduction="mean"):  # fmt: skip
    """Loss and gradients in float64, written from the definition: log-softmax of the
    materialised logits, the smoothed one-hot target, the chain rule by hand."""
    h, w = hidden.astype(np.float64), weight.astype(np.float64)
    z = h @ w.T + (0.0 if bias is None else bias.astype(np.float64))
    n, v = z.shape
    zmax = z.max(axis=1, keepdims=True)
    log_q = z - (zmax + np.log(np.exp(z - zmax).sum(axis=1, keepdims=True)))
    cw = np.ones(v) if class_weight is None else np.asarray(class_weight, np.float64)
    valid = np.ones(n, bool) if ignore_index is None else y != ignore_index
    target = np.zeros((n, v))  # a_ic: the weighted, smoothed one-hot target
    rows = np.flatnonzero(valid)
    target[rows] = label_smoothing / v * cw
    target[rows, y[rows]] += (1 - label_smoothing) * cw[y[rows]]
    per_row = -(target * log_q).sum(axis=1)
    d_logits = target.sum(axis=1, keepdims=True) * np.exp(log_q) - target
    s = np.ones(n) if sample_weight is None else np.broadcast_to(np.asarray(sample_weight, np.float64), (n,))
    if reduction == "none":
        scale, loss = s, s * per_row
    elif reduction == "sum":
        scale = s
        loss = (s * per_row).sum()
    else:
        denom = valid.sum() if reduction == "mean" else (s * cw[np.where(valid, y, 0)] * valid).sum()
        scale = s / denom if denom else 0 * s
        loss = (scale * per_row).sum() if denom else 0.0
    g = scale[:, None] * d_logits
    return loss, g @ w, g.T @ h, g.sum(axis=0)


def unfused(y, hidden, weight, bias=None, **options):
    """The same through the library with the N x V logits materialised."""
    z = hidden @ weight.T
    if bias is not None:
        z = z + bias
    loss, g = scce(y, z, from_logits=True, return_grad=True, **options)
    return loss, g @ weight, g.T @ hidden, g.sum(axis=0)


def assert_close(actual, expected, dtype, what="", float32_tol=2e-5):
    """Agreement to the dtype's rounding, relative to the largest expected value."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    tol = 1e-11 if np.dtype(dtype) == np.float64 else float32_tol
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


def problem(rng, dtype, n=N, d=D, v=V):
    hidden = rng.standard_normal((n, d)).astype(dtype)
    weight = (rng.standard_normal((v, d)) / np.sqrt(d)).astype(dtype)
    bias = rng.standard_normal(v).astype(dtype)
    y = rng.integers(0, v, n)
    return y, hidden, weight, bias


#: "plain": no options; "everything": ignore_index (three rows), label_smoothing,
#: class_weight and sample_weight at once.
OPTION_SETS = ["plain", "everything"]


def options(rng, which: str, y) -> dict:
    if which == "plain":
        return {}
    y[[1, 8, 20]] = -100
    return dict(ignore_index=-100, label_smoothing=0.15, class_weight=rng.uniform(0.2, 3.0, V),
                sample_weight=rng.uniform(0.0, 2.0, len(y)))  # fmt: skip


# --------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("chunk", CHUNKS, ids=["default", "rows5", "vocab-blocked"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("which", OPTION_SETS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_reference_and_unfused(rng, dtype, reduction, which, with_bias, chunk):
    y, hidden, weight, bias = problem(rng, dtype)
    opts = options(rng, which, y)
    if not with_bias:
        bias = None
    result = lce(y, hidden, weight, bias, reduction=reduction, return_grad=True, chunk=chunk, **opts)
    assert len(result) == (4 if with_bias else 3)
    loss = result[0]
    expected_dtype = np.dtype(dtype)
    assert loss.dtype == expected_dtype and all(g.dtype == expected_dtype for g in result[1:])
    assert result[1].shape == hidden.shape and result[2].shape == weight.shape
    if reduction == "none":
        assert isinstance(loss, np.ndarray) and loss.shape == (N,)
    else:
        assert np.ndim(loss) == 0 and isinstance(loss, np.generic)
    names = ("loss", "grad_hidden", "grad_weight", "grad_bias")
    for name, got, ref in zip(names, result, reference(y, hidden, weight, bias, reduction=reduction, **opts)):
        assert_close(got, ref, dtype, f"{name} vs float64 reference")
    for name, got, ref in zip(names, result, unfused(y, hidden, weight, bias, reduction=reduction, **opts)):
        assert_close(got, ref, dtype, f"{name} vs unfused")


@pytest.mark.parametrize("alias, same_as", [("sum_over_batch_size", "mean"), ("mean_with_sample_weight", "weighted_mean"), (None, "none")])
def test_reduction_aliases(rng, alias, same_as):
    y, hidden, weight, bias = problem(rng, np.float64)
    sw = rng.uniform(0.5, 1.5, N)
    a = lce(y, hidden, weight, bias, reduction=alias, sample_weight=sw, return_grad=True)
    b = lce(y, hidden, weight, bias, reduction=same_as, sample_weight=sw, return_grad=True)
    for x, z in zip(a, b):
        assert np.asarray(x).tobytes() == np.asarray(z).tobytes()


def test_every_backend_agrees(backend, rng):
    y, hidden, weight, bias = problem(rng, np.float32)
    opts = options(rng, "everything", y)
    result = lce(y, hidden, weight, bias, return_grad=True, backend=backend, chunk=8, **opts)
    for got, ref in zip(result, reference(y, hidden, weight, bias, **opts)):
        assert_close(got, ref, np.float32)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_scalar_sample_weight_and_trailing_unit_axes(rng, reduction):
    y, hidden, weight, bias = problem(rng, np.float64)
    got = lce(y[:, None], hidden, weight, bias, sample_weight=2.5, reduction=reduction, return_grad=True, chunk=(6, 10))
    ref = reference(y, hidden, weight, bias, sample_weight=2.5, reduction=reduction)
    for g, r in zip(got, ref):
        assert_close(g, r, np.float64)
    per_row = lce(y, hidden, weight, bias, sample_weight=np.full((N, 1), 2.5), reduction=reduction)
    assert_close(per_row, ref[0], np.float64)


def test_leading_axes_of_hidden_are_rows(rng):
    """hidden (batch, sequence, d) with labels (batch, sequence), as a language model has them."""
    y, hidden, weight, bias = problem(rng, np.float32, n=24)
    loss, gh, gw, gb = lce(y.reshape(4, 6), hidden.reshape(4, 6, D), weight, bias, reduction="none", return_grad=True)
    ref = reference(y, hidden, weight, bias, reduction="none")
    assert loss.shape == (4, 6) and gh.shape == (4, 6, D)
    assert_close(loss.reshape(-1), ref[0], np.float32)
    assert_close(gh.reshape(24, D), ref[1], np.float32)
    assert_close(gw, ref[2], np.float32)


def test_layouts_and_read_only_inputs_are_not_modified(rng):
    y, hidden, weight, bias = problem(rng, np.float64)
    expected = reference(y, hidden, weight, bias)
    h_f, w_f = np.asfortranarray(hidden), np.asfortranarray(weight)
    w_strided = np.repeat(weight, 2, axis=1)[:, ::2]  # neither C- nor F-contiguous
    for h, w in [(h_f, w_f), (hidden, w_strided), (hidden[::-1][::-1], weight)]:
        for a in (h, w, bias, y):
            a.flags.writeable = False
        copies = [a.copy() for a in (h, w, bias, y)]
        got = lce(y, h, w, bias, return_grad=True, chunk=(5, 11))
        for g, r in zip(got, expected):
            assert_close(g, r, np.float64)
        for a, c in zip((h, w, bias, y), copies):
            assert np.array_equal(a, c)


def test_same_loss_bits_with_or_without_gradient_and_any_thread_count(rng):
    y, hidden, weight, bias = problem(rng, np.float32)
    opts = options(rng, "everything", y)
    for chunk in (None, 4, (4, 7)):
        alone = lce(y, hidden, weight, bias, chunk=chunk, threads=1, **opts)
        with_grad = lce(y, hidden, weight, bias, chunk=chunk, return_grad=True, threads=2, **opts)
        assert alone.tobytes() == with_grad[0].tobytes()


def test_integral_float_bool_and_unsigned_labels(rng):
    y, hidden, weight, bias = problem(rng, np.float64, v=2)
    expected = lce(y, hidden, weight, bias)
    for labels in (y.astype(np.float32), y.astype(bool), y.astype(np.uint8), y.astype(">i4")):
        assert lce(labels, hidden, weight, bias) == expected


# --------------------------------------------------------------------------- dtypes


def test_float16_and_bfloat16_compute_in_float32(rng):
    y, hidden, weight, bias = problem(rng, np.float32)
    dtypes = [np.float16]
    try:
        import ml_dtypes

        dtypes.append(ml_dtypes.bfloat16)
    except ImportError:
        pass
    for dt in dtypes:
        h, w, b = hidden.astype(dt), weight.astype(dt), bias.astype(dt)
        got = lce(y, h, w, b, return_grad=True, chunk=(5, 9))
        assert got[0].dtype == np.float32 and all(g.dtype == np.float32 for g in got[1:])
        ref = reference(y, h.astype(np.float32), w.astype(np.float32), b.astype(np.float32))
        for g, r in zip(got, ref):
            assert_close(g, r, np.float32)


# --------------------------------------------------------------------------- blocking


def test_default_budget_blocks_rows_then_the_vocabulary():
    f32 = 4
    assert linear.block_shape(2048, 32_000, f32, None, False) == (342, 32_000)  # 6 even blocks
    assert linear.block_shape(2048, 32_000, f32, None, False, budget=16 << 20) == (128, 32_000)
    assert linear.block_shape(2048, 32_000, f32, None, False, budget=64 << 20) == (512, 32_000)
    assert linear.block_shape(10, 32_000, f32, None, False) == (10, 32_000)  # fewer rows than a block
    rows, cols = linear.block_shape(2048, 1_000_000, f32, None, False)  # 16 rows would be 64 MB
    assert rows == linear.VOCAB_BLOCK_ROWS and cols * rows * f32 <= linear.BLOCK_BYTES and cols < 1_000_000
    rows_s, cols_s = linear.block_shape(2048, 1_000_000, f32, None, True)  # + a float64 scratch
    assert rows_s == rows and cols_s * rows_s * (f32 + 8) <= linear.BLOCK_BYTES
    # a soft cap's gradient keeps tanh of the block: one more value per element
    rows_c, cols_c = linear.block_shape(2048, 1_000_000, f32, None, True, capped_gradient=True)
    assert rows_c == rows and cols_c * rows_c * (f32 + 8 + f32) <= linear.BLOCK_BYTES < (cols_c + 1) * rows_c * 16
    assert linear.block_shape(2048, 32_000, f32, None, True, capped_gradient=True) == (342, 32_000)
    assert linear.block_shape(2048, 100, f32, 7, False) == (7, 100)
    assert linear.block_shape(3, 100, f32, (7, 30), False) == (3, 30)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_tiny_budget_takes_the_vocabulary_blocked_path(rng, monkeypatch, reduction):
    """With a budget smaller than MIN_BLOCK_ROWS rows of the vocabulary, the default
    plan cuts the vocabulary; the online log-sum-exp gives the unfused result."""
    y, hidden, weight, bias = problem(rng, np.float32, n=40, v=300)
    cw = rng.uniform(0.5, 2.0, 300)
    monkeypatch.setattr(linear, "BLOCK_BYTES", 4096)
    assert linear.block_shape(40, 300, 4, None, True, budget=4096)[1] < 300
    calls = []
    monkeypatch.setattr(linear._Blocks, "row_block", lambda *a: calls.append(a))  # must not run
    got = lce(y, hidden, weight, bias, label_smoothing=0.1, class_weight=cw, reduction=reduction, return_grad=True)
    assert calls == []
    ref = unfused(y, hidden, weight, bias, label_smoothing=0.1, class_weight=cw, reduction=reduction)
    for g, r in zip(got, ref):
        assert_close(g, r, np.float32)


def edge_cases(rng):
    """(name, hidden, weight, bias, labels, options): values that test the online
    log-sum-exp's special rows against the kernel's."""
    n, d, v = 10, 3, 9
    h, w, b = rng.standard_normal((n, d)), rng.standard_normal((v, d)), rng.standard_normal(v)
    y = rng.integers(0, v, n)
    masked = b.copy()
    masked[[1, 5]] = -np.inf  # masked classes, e.g. tokens that may not follow
    y_masked = np.where(np.isin(y, [1, 5]), 2, y)
    y_on_mask = y_masked.copy()
    y_on_mask[0] = 1  # a label on a masked class: +inf
    cw = rng.uniform(0.5, 2.0, v)
    cw_zero_masked = np.where(np.isin(np.arange(v), [1, 5]), 0.0, cw)
    dominant = b.copy()
    dominant[y[0]] = 60.0  # row 0's label far above the rest: a tiny, exact loss
    nan_h = h.copy()
    nan_h[2, 1] = np.nan
    inf_b = b.copy()
    inf_b[4] = np.inf
    all_masked = np.full(v, -np.inf)
    label_weight_zero = np.where(np.arange(v) == y[0], 0.0, 1.0)
    return [
        ("masked classes", h, w, masked, y_masked, {}),
        ("label on a masked class", h, w, masked, y_on_mask, {}),
        ("masked classes, smoothing", h, w, masked, y_masked, {"label_smoothing": 0.1}),
        ("masked classes of weight 0, smoothing", h, w, masked, y_masked,
         {"label_smoothing": 0.1, "class_weight": cw_zero_masked}),
        ("dominant labels", h, w, dominant, y, {}),
        ("dominant labels, smoothing", h, w, dominant, y, {"label_smoothing": 0.3}),
        ("label_smoothing 1", h, w, dominant, y, {"label_smoothing": 1.0}),
        ("negative class weights", h, w, b, y, {"class_weight": rng.uniform(-1, 1, v), "label_smoothing": 0.2}),
        ("NaN in hidden", nan_h, w, b, y, {}),
        ("NaN in hidden, label weight 0", nan_h, w, b, y, {"class_weight": label_weight_zero}),
        ("+inf logit", h, w, inf_b, y, {}),
        ("every class masked", h, w, all_masked, y, {}),
        ("every class masked, label weight 0", h, w, all_masked, y, {"class_weight": label_weight_zero}),
        ("every class masked, ignored row", h, w, all_masked, y, {"ignore_index": int(y[3])}),
        ("large logits", h * 1e3, w, b, y, {"label_smoothing": 0.1}),
    ]  # fmt: skip


@pytest.mark.parametrize("chunk", [(3, 2), (4, 4), (2, 1), (10, 9)], ids=["3x2", "4x4", "2x1", "whole"])
def test_special_values_match_the_kernel(rng, chunk):
    for name, h, w, b, y, opts in edge_cases(rng):
        with np.errstate(invalid="ignore", over="ignore"):
            ref = unfused(y, h, w, b, reduction="none", backend="numpy", **opts)
        got = lce(y, h, w, b, reduction="none", return_grad=True, chunk=chunk, backend="numpy", **opts)
        for what, g, r in zip(("loss", "grad_hidden", "grad_weight", "grad_bias"), got, ref):
            np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-300, equal_nan=True, err_msg=f"{name}: {what}")
        if name == "dominant labels":
            assert 0 < got[0][0] < 1e-20  # about exp(-60), not rounded to 0
            assert got[1][0].any()


def test_unused_class_weights_do_not_reach_the_result(rng):
    """Without smoothing only the label's weight is read: NaN elsewhere changes nothing."""
    y, hidden, weight, bias = problem(rng, np.float64)
    cw = np.full(V, np.nan)
    cw[np.unique(y)] = 1.0
    for chunk in (None, (5, 7)):
        got = lce(y, hidden, weight, bias, class_weight=cw, return_grad=True, chunk=chunk, backend="numpy")
        for g, r in zip(got, reference(y, hidden, weight, bias)):
            assert_close(g, r, np.float64)


# --------------------------------------------------------------------------- ignored rows, empty batches


@pytest.mark.parametrize("chunk", CHUNKS, ids=["default", "rows5", "vocab-blocked"])
def test_ignored_rows_give_zero_gradient_and_leave_the_mean(rng, chunk):
    y, hidden, weight, bias = problem(rng, np.float32)
    y[::3] = 7_000  # any integer may be the ignore value
    loss, gh, gw, gb = lce(y, hidden, weight, bias, ignore_index=7_000, return_grad=True, chunk=chunk)
    assert not gh[::3].any()
    keep = y != 7_000
    rest = lce(y[keep], hidden[keep], weight, bias, return_grad=True)
    assert_close(loss, rest[0], np.float32)
    assert_close(gw, rest[2], np.float32)
    per_row = lce(y, hidden, weight, bias, ignore_index=7_000, reduction="none", chunk=chunk)
    assert not per_row[::3].any()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("chunk", CHUNKS, ids=["default", "rows5", "vocab-blocked"])
def test_every_row_ignored_reduces_to_zero(rng, reduction, chunk):
    _, hidden, weight, bias = problem(rng, np.float64)
    y = np.full(N, -1)
    loss, gh, gw, gb = lce(y, hidden, weight, bias, ignore_index=-1, reduction=reduction, return_grad=True, chunk=chunk)
    assert not np.any(loss) and not gh.any() and not gw.any() and not gb.any()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(rng, reduction):
    _, _, weight, bias = problem(rng, np.float32)
    hidden = np.zeros((0, D), np.float32)
    loss, gh, gw, gb = lce(np.zeros(0, np.int64), hidden, weight, bias, reduction=reduction, return_grad=True)
    if reduction == "none":
        assert loss.shape == (0,) and loss.dtype == np.float32
    else:
        assert loss == 0 and loss.dtype == np.float32
    assert gh.shape == (0, D) and gw.shape == (V, D) and gb.shape == (V,)
    assert not gw.any() and not gb.any()
    assert lce(np.zeros(0, np.int64), hidden, weight) == 0


def test_weighted_mean_of_zero_total_weight_is_zero(rng):
    y, hidden, weight, bias = problem(rng, np.float64)
    loss, gh, gw = lce(y, hidden, weight, sample_weight=np.zeros(N), reduction="weighted_mean", return_grad=True)
    assert loss == 0 and not gh.any() and not gw.any()


# --------------------------------------------------------------------------- finite differences


@pytest.mark.parametrize("chunk", [None, (2, 3)], ids=["rows", "vocab-blocked"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradients_match_finite_differences(rng, reduction, chunk):
    n, d, v = 5, 3, 4
    hidden, weight, bias = rng.standard_normal((n, d)), rng.standard_normal((v, d)), rng.standard_normal(v)
    y = np.array([0, 3, -1, 2, 3])
    opts = dict(ignore_index=-1, label_smoothing=0.1, class_weight=[1.0, 2.0, 0.5, 1.5],
                sample_weight=[1.0, 0.5, 2.0, 1.5, 0.7], reduction=reduction, chunk=chunk)  # fmt: skip
    assert_linear_gradients_match_finite_differences(lce, y, hidden, weight, bias, **opts)


# --------------------------------------------------------------------------- memory


@pytest.fixture(scope="module")
def lm_head():
    """2,048 x 256 hidden states and a 32,000-word vocabulary: 250 MiB of float32 logits."""
    rng = np.random.default_rng(7)
    hidden = rng.standard_normal((2048, 256), dtype=np.float32)
    weight = rng.standard_normal((32_000, 256), dtype=np.float32) * np.float32(1 / 16)
    return rng.integers(0, 32_000, 2048), hidden, weight, np.zeros(32_000, np.float32)


QUARTER_OF_LOGITS = 2048 * 32_000 * 4 // 4  # 62.5 MiB


def test_peak_memory_of_the_loss_is_a_fraction_of_the_logits(lm_head):
    """At most a quarter of the N x V float32 logits: the block buffer and little else."""
    y, hidden, weight, bias = lm_head
    peak = peak_of(lambda: lce(y, hidden, weight, bias))
    assert peak <= QUARTER_OF_LOGITS, f"peak {peak / MiB:.1f} MiB"
    assert peak <= linear.BLOCK_BYTES + 2 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_peak_memory_with_gradients_is_a_fraction_of_the_logits(lm_head):
    """Besides the gradients it returns (33 MiB, mostly grad_weight: V x d), the call
    holds at most a quarter of the logits; with 16 MiB blocks everything, the
    gradients included, fits in that quarter."""
    y, hidden, weight, bias = lm_head
    grad_bytes = hidden.nbytes + weight.nbytes + bias.nbytes
    peak = peak_of(lambda: lce(y, hidden, weight, bias, return_grad=True))
    assert peak - grad_bytes <= QUARTER_OF_LOGITS, f"peak {peak / MiB:.1f} MiB"
    assert peak - grad_bytes <= linear.BLOCK_BYTES + 6 * MiB, f"peak {peak / MiB:.1f} MiB"
    peak = peak_of(lambda: lce(y, hidden, weight, bias, return_grad=True, chunk=128))
    assert peak <= QUARTER_OF_LOGITS, f"peak {peak / MiB:.1f} MiB"


def test_peak_memory_with_the_llm_options(lm_head):
    """z_loss, a soft cap and the per-row lse go to the kernel with each block of
    rows: nothing of the block's size is added (the lse is 8 KiB)."""
    y, hidden, weight, bias = lm_head
    grad_bytes = hidden.nbytes + weight.nbytes + bias.nbytes
    kw = dict(z_loss=1e-4, logit_softcap=30.0, return_lse=True)
    peak = peak_of(lambda: lce(y, hidden, weight, bias, return_grad=True, **kw))
    assert peak - grad_bytes <= linear.BLOCK_BYTES + 6 * MiB, f"peak {peak / MiB:.1f} MiB"
    peak = peak_of(lambda: lce(y, hidden, weight, bias, **kw))
    assert peak <= linear.BLOCK_BYTES + 2 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_peak_memory_follows_chunk(lm_head):
    y, hidden, weight, _ = lm_head
    peak = peak_of(lambda: lce(y, hidden, weight, chunk=16))  # 2 MB blocks
    assert peak <= 3 * MiB, f"peak {peak / MiB:.1f} MiB"
    peak = peak_of(lambda: lce(y[:64], hidden[:64], weight, chunk=(64, 1000)))  # 256 KB blocks
    assert peak <= 1 * MiB, f"peak {peak / MiB:.1f} MiB"


# --------------------------------------------------------------------------- bad input


Y = np.array([0, 2, 1])
H = np.ones((3, 4), np.float32)
W = np.ones((5, 4), np.float32)
B = np.zeros(5, np.float32)


def raises(exc, *patterns):
    """pytest.raises that also checks every pattern appears in the message."""
    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{re.escape(p)})" for p in patterns))


BAD_INPUTS = [
    # (exception, message parts, args, kwargs)
    (ValueError, ["hidden", "(N, d)", "(4,)"], (Y, np.ones(4, np.float32), W), {}),
    (TypeError, ["hidden", "float32", "int64"], (Y, np.ones((3, 4), np.int64), W), {}),
    (TypeError, ["hidden", "float32", "<U1"], (Y, np.full((3, 4), "a"), W), {}),
    (TypeError, ["weight", "hidden's dtype float32", "float64"], (Y, H, W.astype(np.float64)), {}),
    (ValueError, ["weight", "(V, 4)", "(5, 3)"], (Y, H, np.ones((5, 3), np.float32)), {}),
    (ValueError, ["weight", "(V, 4)", "(20,)"], (Y, H, np.ones(20, np.float32)), {}),
    (ValueError, ["weight", "at least one row", "(0, 4)"], (Y, H, np.ones((0, 4), np.float32)), {}),
    (TypeError, ["bias", "hidden's dtype float32", "float64"], (Y, H, W, np.zeros(5)), {}),
    (ValueError, ["bias", "(5,)", "(4,)"], (Y, H, W, np.zeros(4, np.float32)), {}),
    (ValueError, ["y_true", "(3,)", "(2,)"], (Y[:2], H, W), {}),
    (TypeError, ["y_true", "integer", "<U1"], (np.array(["a", "b", "c"]), H, W), {}),
    (ValueError, ["y_true", "[0, 5)", "5 rows", "got 5 at position (1,)"], (np.array([0, 5, 1]), H, W), {}),
    (ValueError, ["y_true", "[0, 5) or ignore_index=-100", "got -1 at position (2,)"],
     (np.array([0, -100, -1]), H, W), {"ignore_index": -100}),
    (ValueError, ["y_true", "integral", "2.5"], (np.array([0.0, 2.5, 1.0]), H, W), {}),
    (ValueError, ["class_weight", "(5,)", "(4,)"], (Y, H, W), {"class_weight": np.ones(4)}),
    (TypeError, ["class_weight", "numbers"], (Y, H, W), {"class_weight": np.array(["x"] * 5)}),
    (ValueError, ["sample_weight", "(3,)", "(4,)"], (Y, H, W), {"sample_weight": np.ones(4)}),
    (ValueError, ["label_smoothing", "[0, 1]", "1.5"], (Y, H, W), {"label_smoothing": 1.5}),
    (TypeError, ["label_smoothing", "real number"], (Y, H, W), {"label_smoothing": "0.1"}),
    (ValueError, ["reduction", "'mean'", "'avg'"], (Y, H, W), {"reduction": "avg"}),
    (TypeError, ["return_grad", "True or False", "1"], (Y, H, W), {"return_grad": 1}),
    (ValueError, ["backend", "'cython'", "'gpu'"], (Y, H, W), {"backend": "gpu"}),
    (ValueError, ["threads", "[1, 4096]", "0"], (Y, H, W), {"threads": 0}),
    (TypeError, ["ignore_index", "an int", "1.5"], (Y, H, W), {"ignore_index": 1.5}),
    (ValueError, ["ignore_index", "2**64", str(2**64)], (Y, H, W), {"ignore_index": 2**64}),
    (ValueError, ["chunk", "int >= 1", "0"], (Y, H, W), {"chunk": 0}),
    (ValueError, ["chunk", "(rows, classes)", "(4, -1)"], (Y, H, W), {"chunk": (4, -1)}),
    (TypeError, ["chunk", "int >= 1", "2.5"], (Y, H, W), {"chunk": 2.5}),
    (TypeError, ["chunk", "int >= 1", "True"], (Y, H, W), {"chunk": True}),
    (TypeError, ["chunk", "(rows, classes)", "(1, 2, 3)"], (Y, H, W), {"chunk": (1, 2, 3)}),
]  # fmt: skip


@pytest.mark.parametrize("exc, parts, args, kwargs", BAD_INPUTS, ids=[" ".join(p[:1] + [str(i)]) for i, (_, p, _, _) in enumerate(BAD_INPUTS)])
def test_bad_input_raises_before_any_work(monkeypatch, exc, parts, args, kwargs):
    def no_work(*_):
        raise AssertionError("ran before the input was checked")

    monkeypatch.setattr(linear, "run", no_work)
    with raises(exc, *parts):
        lce(*args, **kwargs)


def test_a_backend_that_cannot_run_raises_before_any_work(monkeypatch):
    from fastxent import backends

    def no_work(*_):
        raise AssertionError("ran before the backend was checked")

    monkeypatch.setattr(linear, "run", no_work)
    monkeypatch.setattr(backends, "unavailable_reason", lambda name: f"{name} is not built here")
    with raises(RuntimeError, "cython", "not built"):
        lce(Y, H, W, backend="cython")
    with fastxent.config(backend="numba"), raises(RuntimeError, "numba", "not built"):
        lce(Y, H, W)


def test_good_inputs_of_the_bad_input_table_run():
    """The table's base call is valid: each case fails for its own reason only."""
    loss = lce(Y, H, W, B, class_weight=np.ones(5), sample_weight=np.ones(3), chunk=(2, 3))
    assert np.isclose(loss, np.log(5))
