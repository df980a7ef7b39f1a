"""z_loss, logit_softcap and return_lse on fastxent.linear_cross_entropy, in both of
its paths (whole-vocabulary row blocks through the kernel; vocabulary blocks with an
online log-sum-exp): against a float64 reference written out here, against the
unfused call (the materialised logits through sparse_categorical_crossentropy and
the chain rule), finite differences, special values, memory and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import MiB, assert_linear_gradients_match_finite_differences, peak_of

import fastxent
from fastxent import linear
from test_linear import assert_close as linear_assert_close
from test_linear import edge_cases, raises

lce = fastxent.linear_cross_entropy
scce = fastxent.sparse_categorical_crossentropy

N, D, V = 37, 6, 29
REDUCTIONS = ["mean", "sum", "none", "weighted_mean"]
#: None: whole rows (the kernel); 5: five rows of the whole vocabulary per block;
#: (4, 7): blocks of 4 rows and 7 classes (the online path, a shorter last block).
CHUNKS = [None, 5, (4, 7)]
CHUNK_IDS = ["rows", "rows5", "vocab-blocked"]
#: (z_loss, logit_softcap): each alone and both; caps of the logits' own size.
LLM_OPTIONS = [(1e-2, None), (0.0, 2.5), (5e-2, 3.0)]
LLM_IDS = ["z", "cap", "z+cap"]


# --------------------------------------------------------------------------- references


def logsumexp_rows(z):
    """float64 log-sum-exp of each row, from its maximum (rows of -inf give -inf)."""
    zmax = z.max(axis=1)
    shift = np.where(np.isfinite(zmax), zmax, 0.0)
    with np.errstate(divide="ignore"):
        return shift + np.log(np.exp(z - shift[:, None]).sum(axis=1))


def reference(y, hidden, weight, bias=None, *, z_loss=0.0, logit_softcap=None, ignore_index=None,
              label_smoothing=0.0, class_weight=None, sample_weight=None, reduction="mean"):  # fmt: skip
    """Loss, gradients (hidden, weight, bias) and per-row lse in float64, from the
    definitions: the logits formed whole and capped, the smoothed weighted one-hot
    target, z * lse**2 per kept row, the chain rule written out by hand."""
    h, w = hidden.astype(np.float64), weight.astype(np.float64)
    raw = h @ w.T + (0.0 if bias is None else bias.astype(np.float64))
    n, v = raw.shape
    if logit_softcap:
        z = logit_softcap * np.tanh(raw / logit_softcap)
        with np.errstate(over="ignore"):  # cosh(huge)**2 = inf: a derivative of 0
            dz_draw = 1.0 / np.cosh(raw / logit_softcap) ** 2
    else:
        z, dz_draw = raw, np.ones_like(raw)
    lse = logsumexp_rows(z)
    q = np.exp(z - lse[:, None])
    cw = np.ones(v) if class_weight is None else np.asarray(class_weight, np.float64)
    valid = np.ones(n, bool) if ignore_index is None else y != ignore_index
    target = np.zeros((n, v))
    rows = np.flatnonzero(valid)
    target[rows] = label_smoothing / v * cw
    target[rows, y[rows]] += (1 - label_smoothing) * cw[y[rows]]
    per_row = (target * (lse[:, None] - z)).sum(axis=1) + np.where(valid, z_loss * lse**2, 0.0)
    # d/dz of sum_c a_c (lse - z_c) + z lse**2: (A + 2 z lse) q - a
    d_z = (target.sum(axis=1) + np.where(valid, 2 * z_loss * lse, 0.0))[:, None] * q - target
    s = np.ones(n) if sample_weight is None else np.broadcast_to(np.asarray(sample_weight, np.float64), (n,))
    if reduction == "none":
        scale, loss = s, s * per_row
    elif reduction == "sum":
        scale, loss = s, (s * per_row).sum()
    else:
        denom = valid.sum() if reduction == "mean" else (s * cw[np.where(valid, y, 0)] * valid).sum()
        scale = s / denom if denom else 0 * s
        loss = (scale * per_row).sum() if denom else 0.0
    g = scale[:, None] * d_z * dz_draw
    return loss, g @ w, g.T @ h, g.sum(axis=0), lse


def unfused(y, hidden, weight, bias=None, **options):
    """The library's sparse loss on the materialised logits, and the chain rule."""
    z = hidden @ weight.T
    if bias is not None:
        z = z + bias
    loss, g, lse = scce(y, z, from_logits=True, return_grad=True, return_lse=True, **options)
    return loss, g @ weight, g.T @ hidden, g.sum(axis=0), lse


def assert_close(actual, expected, dtype, what=""):
    """test_linear's check, with the float32 tolerance of these option tests (3e-5)."""
    linear_assert_close(actual, expected, dtype, what, float32_tol=3e-5)


def problem(rng, dtype, n=N, d=D, v=V, scale=3.0):
    """Logits of about ``scale`` standard deviations: a cap of 2.5 bends most of them."""
    hidden = rng.standard_normal((n, d)).astype(dtype)
    weight = (rng.standard_normal((v, d)) * scale / np.sqrt(d)).astype(dtype)
    bias = rng.standard_normal(v).astype(dtype)
    return rng.integers(0, v, n), hidden, weight, bias


def options(rng, which: str, y) -> dict:
    """"plain": none; "everything": ignore_index (three rows), label_smoothing,
    class_weight and sample_weight at once."""
    if which == "plain":
        return {}
    y[[1, 8, 20]] = -100
    return dict(ignore_index=-100, label_smoothing=0.15, class_weight=rng.uniform(0.2, 3.0, V),
                sample_weight=rng.uniform(0.0, 2.0, len(y)))  # fmt: skip


NAMES = ("loss", "grad_hidden", "grad_weight", "grad_bias", "lse")


# --------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("z_loss, cap", LLM_OPTIONS, ids=LLM_IDS)
@pytest.mark.parametrize("chunk", CHUNKS, ids=CHUNK_IDS)
@pytest.mark.parametrize("which", ["plain", "everything"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_reference_and_unfused(rng, dtype, reduction, which, chunk, z_loss, cap):
    y, hidden, weight, bias = problem(rng, dtype)
    opts = dict(options(rng, which, y), z_loss=z_loss, logit_softcap=cap, reduction=reduction)
    result = lce(y, hidden, weight, bias, return_grad=True, return_lse=True, chunk=chunk, **opts)
    assert len(result) == 5
    assert all(r.dtype == np.dtype(dtype) for r in result)
    assert result[-1].shape == y.shape and isinstance(result[-1], np.ndarray)
    for name, got, ref in zip(NAMES, result, reference(y, hidden, weight, bias, **opts)):
        assert_close(got, ref, dtype, f"{name} vs float64 reference")
    for name, got, ref in zip(NAMES, result, unfused(y, hidden, weight, bias, **opts)):
        assert_close(got, ref, dtype, f"{name} vs unfused")


@pytest.mark.parametrize("chunk", CHUNKS, ids=CHUNK_IDS)
def test_result_order_and_shapes(rng, chunk):
    """lse is always the last item, y_true's shape, the loss's dtype (float32 for float16)."""
    y, hidden, weight, bias = problem(rng, np.float16, n=24)
    kw = dict(z_loss=1e-3, logit_softcap=2.0)
    loss, lse = lce(y.reshape(4, 6), hidden.reshape(4, 6, D), weight, bias, return_lse=True, chunk=chunk, **kw)
    assert np.ndim(loss) == 0 and lse.shape == (4, 6) and lse.dtype == loss.dtype == np.float32
    ref = reference(y, hidden, weight, bias, **kw)
    assert_close(loss, ref[0], np.float32)
    assert_close(lse.reshape(-1), ref[4], np.float32)
    out = lce(y, hidden, weight, return_grad=True, return_lse=True, reduction="none", chunk=chunk, **kw)
    assert len(out) == 4 and out[0].shape == out[3].shape == (24,) and out[2].shape == weight.shape
    ref = reference(y, hidden, weight, None, reduction="none", **kw)
    for name, got, want in zip(("loss", "grad_hidden", "grad_weight", "lse"), out, ref[:3] + ref[4:]):
        assert_close(got, want, np.float32, name)


@pytest.mark.parametrize("z_loss, cap", LLM_OPTIONS, ids=LLM_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_two_paths_agree(rng, dtype, z_loss, cap):
    """The kernel's whole rows and the online vocabulary blocks, several block shapes."""
    y, hidden, weight, bias = problem(rng, dtype, n=40, v=50)
    cw = rng.uniform(0.5, 2.0, 50)
    y[::7] = -1
    kw = dict(z_loss=z_loss, logit_softcap=cap, ignore_index=-1, label_smoothing=0.1, class_weight=cw,
              reduction="none", return_grad=True, return_lse=True)  # fmt: skip
    rows = lce(y, hidden, weight, bias, chunk=None, **kw)
    for chunk in [(40, 49), (16, 7), (3, 1), (256, 25)]:
        blocked = lce(y, hidden, weight, bias, chunk=chunk, **kw)
        for name, a, b in zip(NAMES, blocked, rows):
            assert_close(a, b, dtype, f"{name}, chunk {chunk}")


@pytest.mark.parametrize("chunk", [(4, 7), (5, 1)], ids=["4x7", "5x1"])
def test_a_maximum_that_moves_across_vocabulary_blocks(rng, chunk):
    """Rows whose maximum grows block after block (the bias rises with the class) and
    a row whose label dominates a later block: the running maximum and sum are moved
    at each block boundary, the z-loss reads the final lse, to float64 rounding."""
    y, hidden, weight, _ = problem(rng, np.float64, scale=0.5)
    bias = np.linspace(-6.0, 6.0, V)
    bias[3] = 5.0  # an early high class the later ones overtake
    y[0] = 27
    hidden[0] *= 0.0  # row 0: the bias alone, its label near the top
    kw = dict(z_loss=1e-2, logit_softcap=8.0, label_smoothing=0.05, reduction="none")
    got = lce(y, hidden, weight, bias, return_grad=True, return_lse=True, chunk=chunk, **kw)
    ref = reference(y, hidden, weight, bias, **kw)
    for name, g, r in zip(NAMES, got, ref):
        assert_close(g, r, np.float64, name)
    moved = np.argmax(hidden @ weight.T + bias, axis=1) >= chunk[1]
    assert moved.mean() > 0.9  # past the first block, which holds the early high class


@pytest.mark.parametrize("chunk", CHUNKS, ids=CHUNK_IDS)
def test_the_loss_bits_do_not_depend_on_what_else_is_returned(rng, chunk):
    """Decision 8: the same loss with or without the gradient and the lse; the same
    gradients with or without the lse; the lse alike with or without the gradient."""
    y, hidden, weight, bias = problem(rng, np.float32)
    kw = dict(options(rng, "everything", y), z_loss=1e-3, logit_softcap=2.5, chunk=chunk)
    alone = lce(y, hidden, weight, bias, **kw)
    with_lse = lce(y, hidden, weight, bias, return_lse=True, **kw)
    with_grad = lce(y, hidden, weight, bias, return_grad=True, **kw)
    everything = lce(y, hidden, weight, bias, return_grad=True, return_lse=True, threads=2, **kw)
    for loss in (with_lse[0], with_grad[0], everything[0]):
        assert loss.tobytes() == alone.tobytes()
    for a, b in zip(with_grad[1:], everything[1:4]):
        assert a.tobytes() == b.tobytes()
    assert with_lse[1].tobytes() == everything[4].tobytes()


@pytest.mark.parametrize("chunk", CHUNKS, ids=CHUNK_IDS)
def test_defaults_change_nothing(rng, chunk):
    y, hidden, weight, bias = problem(rng, np.float32)
    plain = lce(y, hidden, weight, bias, return_grad=True, chunk=chunk)
    same = lce(y, hidden, weight, bias, return_grad=True, chunk=chunk, z_loss=0.0, logit_softcap=None,
               return_lse=False)  # fmt: skip
    assert len(same) == 4
    for a, b in zip(plain, same):
        assert a.tobytes() == b.tobytes()


def test_every_backend_agrees(backend, rng):
    y, hidden, weight, bias = problem(rng, np.float32)
    kw = dict(options(rng, "everything", y), z_loss=1e-3, logit_softcap=2.5)
    result = lce(y, hidden, weight, bias, return_grad=True, return_lse=True, backend=backend, chunk=8, **kw)
    for name, got, ref in zip(NAMES, result, reference(y, hidden, weight, bias, **kw)):
        assert_close(got, ref, np.float32, name)


# --------------------------------------------------------------------------- ignored rows


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("chunk", CHUNKS, ids=CHUNK_IDS)
def test_every_row_ignored_still_gives_every_lse(rng, reduction, chunk):
    """A mean over no rows is 0 without running the blocks, but the lse of every
    row (ignored ones included) is still asked for."""
    _, hidden, weight, bias = problem(rng, np.float64)
    y = np.full(N, -1)
    loss, lse = lce(y, hidden, weight, bias, ignore_index=-1, reduction=reduction, z_loss=1e-2,
                    logit_softcap=2.5, return_lse=True, chunk=chunk)  # fmt: skip
    assert not np.any(loss)
    assert_close(lse, reference(y, hidden, weight, bias, ignore_index=-1, logit_softcap=2.5)[4], np.float64)


def test_z_loss_leaves_ignored_rows_out(rng):
    y, hidden, weight, bias = problem(rng, np.float64)
    y[::4] = -100
    keep = y != -100
    for chunk in CHUNKS:
        full = lce(y, hidden, weight, bias, ignore_index=-100, z_loss=0.1, return_grad=True, chunk=chunk)
        kept = lce(y[keep], hidden[keep], weight, bias, z_loss=0.1, return_grad=True, chunk=chunk)
        assert_close(full[0], kept[0], np.float64)
        assert not full[1][~keep].any()
        for a, b in zip(full[2:], kept[2:]):
            assert_close(a, b, np.float64)


def test_empty_batch(rng):
    _, _, weight, bias = problem(rng, np.float32)
    out = lce(np.zeros(0, np.int64), np.zeros((0, D), np.float32), weight, bias, return_grad=True,
              return_lse=True, z_loss=1e-3, logit_softcap=2.0)  # fmt: skip
    assert len(out) == 5 and out[0] == 0 and out[4].shape == (0,) and out[4].dtype == np.float32


# --------------------------------------------------------------------------- finite differences


@pytest.mark.parametrize("chunk", [None, (2, 3)], ids=["rows", "vocab-blocked"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradients_match_finite_differences(rng, reduction, chunk):
    n, d, v = 5, 3, 4
    hidden, weight, bias = rng.standard_normal((n, d)), rng.standard_normal((v, d)) * 2, rng.standard_normal(v)
    y = np.array([0, 3, -1, 2, 3])
    opts = dict(ignore_index=-1, label_smoothing=0.1, class_weight=[1.0, 2.0, 0.5, 1.5], z_loss=0.05,
                logit_softcap=1.5, sample_weight=[1.0, 0.5, 2.0, 1.5, 0.7], reduction=reduction, chunk=chunk)
    assert_linear_gradients_match_finite_differences(lce, y, hidden, weight, bias, **opts)


# --------------------------------------------------------------------------- special values


@pytest.mark.parametrize("z_loss, cap", [(1e-2, None), (0.0, 3.0), (1e-2, 30.0)], ids=["z", "cap", "z+cap"])
@pytest.mark.parametrize("chunk", [(3, 2), (4, 4), (2, 1), (10, 9)], ids=["3x2", "4x4", "2x1", "whole"])
def test_special_values_match_the_kernel(rng, chunk, z_loss, cap):
    """Masked classes (-inf bias: -cap under a cap), dominant labels, NaN in hidden,
    +inf logits (NaN rows without a cap, saturated with one), every class masked,
    large logits, negative class weights: loss, gradients and lse as the unfused
    NumPy kernel gives them, NaN for NaN."""
    for name, h, w, b, y, opts in edge_cases(rng):
        kw = dict(opts, z_loss=z_loss, logit_softcap=cap, reduction="none", backend="numpy")
        with np.errstate(invalid="ignore", over="ignore"):
            ref = unfused(y, h, w, b, **kw)
        got = lce(y, h, w, b, return_grad=True, return_lse=True, chunk=chunk, **kw)
        for what, g, r in zip(NAMES, got, ref):
            np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-300, equal_nan=True, err_msg=f"{name}: {what}")


@pytest.mark.parametrize("chunk", [None, (4, 5)], ids=["rows", "vocab-blocked"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_in_one_row_of_hidden_stays_in_its_row(rng, dtype, chunk):
    y, hidden, weight, bias = problem(rng, dtype, n=10, v=13)
    hidden[4, 2] = np.nan
    kw = dict(z_loss=1e-2, logit_softcap=2.0, reduction="none")
    loss, gh, gw, gb, lse = lce(y, hidden, weight, bias, return_grad=True, return_lse=True, chunk=chunk, **kw)
    others = np.arange(10) != 4
    assert np.isnan(loss[4]) and np.isnan(lse[4]) and np.isnan(gh[4]).all()
    assert np.isfinite(loss[others]).all() and np.isfinite(lse[others]).all() and np.isfinite(gh[others]).all()
    assert np.isnan(gb).all()  # a NaN gradient row reaches every class's bias
    ref = reference(y[others], hidden[others], weight, bias, **kw)
    for name, g, r in zip(("loss", "grad_hidden", "lse"), (loss, gh, lse), ref[:2] + ref[4:]):
        assert_close(g[others], r, dtype, name)
    # ignored, the row's NaN stays out of everything but its lse (and grad_weight:
    # its zero gradient row times the NaN hidden row)
    y[4] = -100
    loss, gh, gw, gb, lse = lce(y, hidden, weight, bias, ignore_index=-100, return_grad=True, return_lse=True,
                                chunk=chunk, **kw)  # fmt: skip
    assert loss[4] == 0 and not gh[4].any() and np.isnan(lse[4])
    assert np.isfinite(loss).all() and np.isfinite(gh).all() and np.isfinite(gb).all()


@pytest.mark.parametrize("chunk", [None, (3, 4)], ids=["rows", "vocab-blocked"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_cap_saturates_huge_and_infinite_logits(rng, dtype, chunk):
    """Logits of +-1e4 and -inf bias entries under a cap of 30: everything finite; a
    saturated logit (tanh' = 0 in the dtype) passes no gradient."""
    y, hidden, weight, bias = problem(rng, dtype, n=8, v=10)
    bias[[2, 7]] = -np.inf
    bias[5] = 1e4
    y = np.where(np.isin(y, [2, 7]), 0, y)
    loss, gh, gw, gb, lse = lce(y, hidden * dtype(1e3), weight, bias, z_loss=1e-4, logit_softcap=30.0,
                                reduction="none", return_grad=True, return_lse=True, chunk=chunk)  # fmt: skip
    for a in (loss, gh, gw, gb, lse):
        assert np.isfinite(a).all()
    assert gb[2] == gb[7] == gb[5] == 0
    assert (lse <= 30.0 + np.log(10) + 1e-5).all()
    ref = reference(y, hidden * dtype(1e3), weight, bias, z_loss=1e-4, logit_softcap=30.0, reduction="none")
    assert_close(loss, ref[0], dtype, "loss")
    assert_close(lse, ref[4], dtype, "lse")


def test_every_class_masked_without_a_cap(rng):
    """lse -inf; z * lse**2 makes the loss +inf and the gradient NaN, even where the
    label's weight is 0; an ignored row stays 0 with its lse -inf."""
    _, hidden, weight, _ = problem(rng, np.float64, n=4, v=5)
    bias = np.full(5, -np.inf)
    y = np.array([0, 1, 2, -100])
    cw = np.array([0.0, 1.0, 1.0, 1.0, 1.0])
    for chunk in (None, (2, 2)):
        with np.errstate(invalid="ignore"):
            loss, gh, gw, gb, lse = lce(y, hidden, weight, bias, z_loss=1e-3, class_weight=cw, ignore_index=-100,
                                        reduction="none", return_grad=True, return_lse=True, chunk=chunk)
        assert (lse == -np.inf).all()
        assert loss.tolist()[:3] == [np.inf] * 3 and loss[3] == 0
        assert np.isnan(gh[:3]).all() and not gh[3].any()


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["plain", "smoothing"])
def test_the_caps_scratch_stays_within_the_budget(rng, monkeypatch, smoothing):
    """Vocabulary blocks under a cap keep tanh of the block for the gradient: the
    budget counts it (without counting it, the plain case would hold twice the budget)."""
    n, d, v = 300, 32, 20_000
    hidden = rng.standard_normal((n, d), dtype=np.float32)
    weight = rng.standard_normal((v, d), dtype=np.float32) * np.float32(d**-0.5)
    y = rng.integers(0, v, n)
    budget = 1 * MiB
    monkeypatch.setattr(linear, "BLOCK_BYTES", budget)
    rows, classes = linear.block_shape(n, v, 4, None, smoothing > 0, capped_gradient=True)
    assert classes < v and rows * classes * (4 + 4 + (8 if smoothing else 0)) <= budget

    def call():
        return lce(y, hidden, weight, label_smoothing=smoothing, z_loss=1e-4, logit_softcap=30.0,
                   return_grad=True, return_lse=True)  # fmt: skip

    results = call()
    returned = sum(a.nbytes for a in results[1:])
    internal = v * 8  # grad_bias's float64 sums
    peak = peak_of(call)
    assert peak - returned - internal <= budget + MiB // 4, f"peak {peak / MiB:.2f} MiB"


# --------------------------------------------------------------------------- bad input


Y = np.array([0, 2, 1])
H = np.ones((3, 4), np.float32)
W = np.ones((5, 4), np.float32)

BAD_OPTIONS = [
    (ValueError, ["z_loss: expected a finite number >= 0", "-1"], {"z_loss": -1}),
    (ValueError, ["z_loss: expected a finite number >= 0", "inf"], {"z_loss": float("inf")}),
    (TypeError, ["z_loss", "real number"], {"z_loss": "0.1"}),
    (ValueError, ["logit_softcap: expected None or a finite number > 0", "0"], {"logit_softcap": 0}),
    (ValueError, ["logit_softcap: expected None or a finite number > 0", "nan"], {"logit_softcap": float("nan")}),
    (TypeError, ["return_lse", "True or False", "1"], {"return_lse": 1}),
]  # fmt: skip


@pytest.mark.parametrize("exc, parts, kwargs", BAD_OPTIONS, ids=[str(k) for _, _, k in BAD_OPTIONS])
def test_bad_options_raise_before_any_work_as_the_sparse_loss_does(monkeypatch, exc, parts, kwargs):
    def no_work(*_):
        raise AssertionError("ran before the input was checked")

    monkeypatch.setattr(linear, "run", no_work)
    with raises(exc, *parts):
        lce(Y, H, W, **kwargs)
    with raises(exc, *parts):
        scce(Y, H @ W.T, from_logits=True, **kwargs)
