"""An independent float64 oracle, written from the contract (README / API), not from
the kernels: whole arrays at once, class axis moved last, scipy for log-softmax and
numpy's logaddexp for softplus. It is slow and simple on purpose.

Conventions taken from the contract and spelled out here:
- a term whose target weight is 0 contributes 0 (0 * log 0 = 0, masked classes);
- a -inf logit where the target weight is positive gives +inf;
- NaN in a row's inputs makes that sample's loss NaN (sparse from probabilities
  without smoothing only reads p[y]).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, log_softmax, logsumexp

RED_ALIASES = {"sum_over_batch_size": "mean", "mean_with_sample_weight": "weighted_mean", None: "none"}


def compute_dtype(y_pred: np.ndarray):
    return np.float64 if np.asarray(y_pred).dtype == np.float64 else np.float32


def _clip(p, eps, dtype):
    """Clip in the compute dtype; 1 - p also formed there. Returns float64 arrays."""
    p = np.asarray(p).astype(dtype)
    lo, hi = dtype(eps), dtype(1) - dtype(eps)
    with np.errstate(invalid="ignore"):
        clipped = (p < lo) | (p > hi)
    pc = np.clip(p, lo, hi)
    return pc.astype(np.float64), (dtype(1) - pc).astype(np.float64), clipped


def _weighted_terms(a, neg_logq):
    """sum over the last axis of a * (-log q), with 0 where a == 0."""
    with np.errstate(invalid="ignore"):
        terms = np.where(a == 0, 0.0, a * neg_logq)
    return terms.sum(axis=-1)


def _neg_log_q(x, from_logits, eps):
    """-log q for the class axis last, float64."""
    if from_logits:
        x64 = np.asarray(x, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            logq = log_softmax(x64, axis=-1) if x64.shape[-1] else x64
        logq = np.where(np.isneginf(x64), -np.inf, logq)  # masked classes
        return -logq, None
    pc, _, clipped = _clip(x, eps, compute_dtype(x))
    return -np.log(pc), (pc, clipped)


def categorical(y_true, y_pred, *, from_logits=False, label_smoothing=0.0, class_weight=None,
                axis=-1, eps=1e-7):  # fmt: skip
    """Per-sample losses (float64) and the per-class target weights ``a``."""
    x = np.moveaxis(np.asarray(y_pred), axis, -1)
    t = np.moveaxis(np.asarray(y_true, dtype=np.float64), axis, -1)
    c = x.shape[-1]
    w = np.ones(c) if class_weight is None else np.asarray(class_weight, dtype=np.float64)
    a = w * (t * (1 - label_smoothing) + label_smoothing / c)
    neg_logq, _ = _neg_log_q(x, from_logits, eps)
    losses = _weighted_terms(a, neg_logq)
    losses = np.where(np.isnan(np.asarray(x, dtype=np.float64)).any(axis=-1), np.nan, losses)
    return losses, a


def sparse(y_true, y_pred, *, from_logits=False, label_smoothing=0.0, class_weight=None,
           ignore_index=None, axis=-1, eps=1e-7):  # fmt: skip
    """Per-sample losses through a one-hot target (the contract's definition)."""
    x = np.moveaxis(np.asarray(y_pred), axis, -1)
    labels = np.asarray(y_true)
    c = x.shape[-1]
    valid = np.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    onehot = (np.arange(c) == np.where(valid, labels, 0)[..., None]).astype(np.float64)
    w = np.ones(c) if class_weight is None else np.asarray(class_weight, dtype=np.float64)
    a = w * (onehot * (1 - label_smoothing) + label_smoothing / c)
    a[~valid] = 0.0
    neg_logq, _ = _neg_log_q(x, from_logits, eps)
    losses = _weighted_terms(a, neg_logq)
    x64 = np.asarray(x, dtype=np.float64)
    if from_logits or label_smoothing:
        nan_rows = np.isnan(x64).any(axis=-1)
    else:  # only p[y] is read
        nan_rows = np.isnan(np.take_along_axis(x64, np.where(valid, labels, 0)[..., None].astype(np.intp), -1)[..., 0])
    losses = np.where(nan_rows & valid, np.nan, losses)
    return losses, a, valid


def binary_elements(y_true, y_pred, *, from_logits=False, label_smoothing=0.0, pos_weight=None, eps=1e-7,
                    pos_weight_axis=-1):  # fmt: skip
    """Element losses (float64), the smoothed targets and the broadcast pos_weight."""
    y = np.asarray(y_true, dtype=np.float64) * (1 - label_smoothing) + label_smoothing / 2
    x = np.asarray(y_pred)
    pw = np.ones(()) if pos_weight is None else np.asarray(pos_weight, dtype=np.float64)
    if pw.ndim == 1 and x.ndim > 1:
        shape = [1] * x.ndim
        shape[pos_weight_axis] = pw.size
        pw = pw.reshape(shape)
    pw = np.broadcast_to(pw, x.shape)
    if from_logits:
        x64 = x.astype(np.float64)
        neg_log_sig = np.logaddexp(0.0, -x64)  # -log sigmoid(x)
        neg_log_one_minus = np.logaddexp(0.0, x64)  # -log(1 - sigmoid(x))
    else:
        pc, one_minus, _ = _clip(x, eps, compute_dtype(x))
        neg_log_sig, neg_log_one_minus = -np.log(pc), -np.log(one_minus)
    with np.errstate(invalid="ignore"):
        pos = np.where(pw * y == 0, 0.0, pw * y * neg_log_sig)
        neg = np.where(1 - y == 0, 0.0, (1 - y) * neg_log_one_minus)
    elem = np.where(np.isnan(x.astype(np.float64)), np.nan, pos + neg)
    return elem, y, pw


def binary(y_true, y_pred, *, axis=-1, **kw):
    """Per-sample losses: the mean of the element losses over ``axis`` (None: none)."""
    x = np.asarray(y_pred)
    elem, _, _ = binary_elements(y_true, y_pred, pos_weight_axis=-1 if axis is None else axis, **kw)
    if axis is None or x.ndim <= 1:
        return elem
    return elem.mean(axis=axis)


def reduce(losses, reduction, sample_weight=None, valid=None, c=None):
    """The contract's reductions table, plainly."""
    reduction = RED_ALIASES.get(reduction, reduction)
    s = np.ones(losses.shape) if sample_weight is None else np.broadcast_to(np.asarray(sample_weight, float), losses.shape)
    v = np.ones(losses.shape) if valid is None else valid.astype(float)
    c = np.ones(losses.shape) if c is None else c
    weighted = np.where(v > 0, s * losses, 0.0)
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    denom = v.sum() if reduction == "mean" else (v * s * c).sum()
    return 0.0 if denom == 0 else weighted.sum() / denom


# ----------------------------------------------------------------- gradients (plain)


def softmax_grad(x, a):
    """d/dx of sum_c a_c * (-log softmax(x)_c), class axis last: A * softmax - a."""
    x64 = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        q = np.exp(log_softmax(x64, axis=-1))
    return a.sum(axis=-1, keepdims=True) * q - a


def probs_grad(p, a, eps):
    pc, _, clipped = _clip(p, eps, compute_dtype(p))
    return np.where(clipped, 0.0, -a / pc)


def binary_grad_elements(y_true, y_pred, *, from_logits, label_smoothing=0.0, pos_weight=None, eps=1e-7,
                         pos_weight_axis=-1):  # fmt: skip
    _, y, pw = binary_elements(y_true, y_pred, from_logits=from_logits, label_smoothing=label_smoothing,
                               pos_weight=pos_weight, eps=eps, pos_weight_axis=pos_weight_axis)  # fmt: skip
    x = np.asarray(y_pred)
    if from_logits:
        x64 = x.astype(np.float64)
        return (1 - y) * expit(x64) - pw * y * expit(-x64)
    pc, one_minus, clipped = _clip(x, eps, compute_dtype(x))
    return np.where(clipped, 0.0, -pw * y / pc + (1 - y) / one_minus)


# ----------------------------------------------------------------- kernel level
# The kernel table of fastxent/backends/KERNELS.md, row by row: ``x`` holds the rows
# (R, C) of the kernel's (O, C, I) input in flat row order r = o * I + i, as the
# float64 values of the input's elements; ``dtype`` is the input's own dtype (it sets
# the compute dtype of the clip bounds and of 1 - p). Everything else is float64,
# written from the formulas of KERNELS.md and the lead's decisions, not from any
# kernel: logsumexp over the whole row, softplus as logaddexp, no row max, no
# log1p(R) decomposition, no lane sums.


class KernelResult:
    """What a kernel call gives: ``bad`` (the first bad row, or -1), per-row ``loss``,
    ``grad`` rows (already times grad_weight), ``lse`` and ``rank`` (sparse from
    logits), each float64 / int64 over the R rows."""

    def __init__(self, bad, loss=None, grad=None, lse=None, rank=None):
        self.bad, self.loss, self.grad, self.lse, self.rank = bad, loss, grad, lse, rank


def as_int64(labels):
    """Labels as the int64 of their two's complement bits (decision 7: (int64_t)v)."""
    labels = np.asarray(labels)
    return labels.view(np.int64) if labels.dtype == np.uint64 else labels.astype(np.int64)


def _first(bad_rows) -> int:
    hits = np.flatnonzero(bad_rows)
    return int(hits[0]) if hits.size else -1


def _out_of_range(v):
    """v < 0 or v > 1; NaN is not out of range."""
    with np.errstate(invalid="ignore"):
        return (v < 0) | (v > 1)


def sigmoid(z):
    """The logistic function in float64 down to subnormal results (expit(-740) is 0)."""
    z = np.asarray(z, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(-np.abs(z))
        return np.where(z < 0, e / (1 + e), 1 / (1 + e))


def _times(coef, value, x):
    """coef * value, exactly 0 where coef == 0 (value may be inf), NaN where x is NaN."""
    with np.errstate(invalid="ignore"):
        return np.where(coef != 0, coef * value, np.where(np.isnan(x), np.nan, 0.0))


def softmax_rows(z, a, *, z_loss=0.0, counted=None):
    """Loss, gradient (with respect to z) and lse of sum_c a_c * (-log softmax(z)_c)
    + z_loss * lse**2 (on the ``counted`` rows), float64 rows.

    Conventions of KERNELS.md: a term with a_c == 0 is 0 (masked classes); a -inf
    logit with a_c > 0 costs +inf; a NaN or +inf logit makes the row's loss, lse and
    gradient NaN; a row of -inf has loss A * inf (0 when A == 0) and a NaN gradient
    unless the softmax term's weight is 0."""
    z = np.asarray(z, np.float64)
    rows, n_c = z.shape
    counted = np.ones(rows, bool) if counted is None else counted
    with np.errstate(all="ignore"):
        nan_rows = np.isnan(z).any(axis=1) | np.isposinf(z).any(axis=1)
        dead = np.isneginf(z).all(axis=1) & ~nan_rows
        lse = logsumexp(np.where(nan_rows[:, None], 0.0, z), axis=1)
        lse = np.where(nan_rows, np.nan, np.where(dead, -np.inf, lse))
        big_a = a.sum(axis=1)
        terms = np.where(a != 0, a * (lse[:, None] - z), 0.0)
        loss = terms.sum(axis=1)
        loss = np.where(dead, np.where(big_a == 0, 0.0, big_a * np.inf), loss)
        zl = np.where(counted, z_loss, 0.0)
        if z_loss:
            loss = loss + np.where(zl != 0, zl * lse * lse, 0.0)
        weight = big_a + (np.where(zl != 0, 2 * zl * lse, 0.0) if z_loss else 0.0)  # the softmax term's
        q = np.exp(z - np.where(dead, 0.0, lse)[:, None])
        grad = weight[:, None] * q - a
        grad[dead & (weight != 0)] = np.nan
        grad[dead & (weight == 0)] = 0.0
        loss[nan_rows] = np.nan
        grad[nan_rows] = np.nan
    return loss, grad, lse


def sparse_weights(labels, valid, class_weight, ls, n_c):
    """a_c = (1-ls) * w_y * [c == y] + (ls/C) * w_c; the smoothing term is left out
    when ls == 0 (decision 3: an unused weight never enters), ignored rows all 0."""
    rows = labels.shape[0]
    a = np.zeros((rows, n_c))
    if ls:
        a += ls / n_c * np.asarray(class_weight, np.float64)
    y = np.where(valid, labels, 0)
    a[np.arange(rows), y] += (1 - ls) * np.asarray(class_weight, np.float64)[y]
    a[~valid] = 0.0
    return a


def dense_weights(t, class_weight, ls):
    """a_c = w_c * (t_c * (1-ls) + ls/C), exactly 0 where the coefficient is 0."""
    coef = np.asarray(t, np.float64) * (1 - ls) + ls / t.shape[1]
    with np.errstate(invalid="ignore"):
        return np.where(coef != 0, np.asarray(class_weight, np.float64) * coef, 0.0)


def label_rank(z, labels, valid):
    """Classes above the label: a larger z, or an equal one at a lower index (the
    first argmax wins); C for a row holding NaN, -1 for ignored rows."""
    rows, n_c = z.shape
    out = np.full(rows, -1, np.int64)
    for r in range(rows):
        if not valid[r]:
            continue
        row, y = z[r], int(labels[r])
        if np.isnan(row).any():
            out[r] = n_c
        else:
            out[r] = int((row > row[y]).sum() + (row[:y] == row[y]).sum())
    return out


def clip_rows(p, eps, dtype):
    """(clip(p) as float64, 1 - clip(p) formed in the compute dtype, clipped mask)."""
    ct = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    pc = np.asarray(p, np.float64).astype(ct)
    lo, hi = ct(eps), ct(1) - ct(eps)
    with np.errstate(invalid="ignore"):
        clipped = (pc < lo) | (pc > hi)
    pc = np.where(pc < lo, lo, np.where(pc > hi, hi, pc))  # comparisons: NaN stays NaN
    return pc.astype(np.float64), (ct(1) - pc).astype(np.float64), clipped


def probs_rows(p, a, eps, dtype):
    """Loss sum_c a_c * (-log clip(p_c)) and gradient -a_c / p_c (0 where clipped)."""
    pc, _, clipped = clip_rows(p, eps, dtype)
    with np.errstate(all="ignore"):
        loss = (a * -np.log(pc)).sum(axis=1)
        grad = np.where(clipped, 0.0, -a / pc)
    return loss, grad


def kernel(name, x, aux, *, weights=None, ls=0.0, ignore=-1, eps=1e-7, gw=None, dtype=np.float64,
           z_loss=0.0, softcap=0.0):  # fmt: skip
    """The reference answer to a kernel call (a KernelResult). ``aux``: labels (R,) of
    any integer dtype, or dense targets (R, C); ``weights``: class_weight (C,), or for
    the binary kernels pos_weight as rows (R, C) (None: all ones)."""
    x = np.asarray(x, np.float64)
    rows, n_c = x.shape
    gw = np.ones(rows) if gw is None else np.asarray(gw, np.float64).reshape(rows)
    w = np.ones(n_c) if weights is None else np.asarray(weights, np.float64)
    if name.startswith("binary"):
        return _binary(name, x, aux, w, ls, eps, gw, dtype)
    if name.startswith("sparse"):
        labels = as_int64(aux).reshape(rows)
        valid = labels != int(ignore)
        a = sparse_weights(labels, valid, w, ls, n_c)
    else:
        t = np.asarray(aux, np.float64)
        valid = np.ones(rows, bool)
        a = dense_weights(t, w, ls)
    if name.endswith("logits"):
        z, factor = x, None
        if softcap:
            with np.errstate(invalid="ignore"):
                th = np.tanh(x / softcap)
            z, factor = softcap * th, 1 - th * th
        loss, grad, lse = softmax_rows(z, a, z_loss=z_loss, counted=valid)
        if factor is not None:
            grad = grad * factor
        loss[~valid], grad[~valid] = 0.0, 0.0
        rank = label_rank(z, labels, valid) if name.startswith("sparse") else None
        return KernelResult(-1, loss, grad * gw[:, None], lse, rank)
    if name == "sparse_from_probs" and not ls:  # the gather-log: only p_y is read
        y = np.where(valid, labels, 0)
        py = x[np.arange(rows), y]
        bad = _first(valid & _out_of_range(py))
        pc, _, clipped = clip_rows(py, eps, dtype)
        wy = np.where(valid, w[y], 0.0)
        with np.errstate(all="ignore"):
            loss = np.where(valid, wy * -np.log(pc), 0.0)
            gy = np.where(clipped | ~valid, 0.0, -wy / pc)
        grad = np.zeros((rows, n_c))
        grad[np.arange(rows), y] = gy
        return KernelResult(bad, loss, grad * gw[:, None])
    bad = _first(valid & _out_of_range(x).any(axis=1))
    loss, grad = probs_rows(x, a, eps, dtype)
    loss[~valid], grad[~valid] = 0.0, 0.0
    return KernelResult(bad, loss, grad * gw[:, None])


def _binary(name, x, t, pw, ls, eps, gw, dtype):
    t = np.asarray(t)
    bad_target = _out_of_range(t.astype(np.float64)).any(axis=1) if t.dtype != bool else np.zeros(len(t), bool)
    t = t.astype(np.float64)
    n_c = x.shape[1]
    y = t * (1 - ls) + ls / 2  # and 1 - y: both in float64 (decision 1)
    neg, pos = 1 - y, np.broadcast_to(pw, x.shape) * y
    if name.endswith("logits"):
        with np.errstate(all="ignore"):
            elem = _times(neg, np.logaddexp(0.0, x), x) + _times(pos, np.logaddexp(0.0, -x), x)
            grad = neg * sigmoid(x) - pos * sigmoid(-x)
        return KernelResult(_first(bad_target), elem.mean(axis=1), grad / n_c * gw[:, None])
    bad = _first(bad_target | _out_of_range(x).any(axis=1))
    pc, one_minus, clipped = clip_rows(x, eps, dtype)
    with np.errstate(all="ignore"):
        elem = -(pos * np.log(pc) + neg * np.log(one_minus))
        grad = np.where(clipped, 0.0, -pos / pc + neg / one_minus)
    return KernelResult(bad, elem.mean(axis=1), grad / n_c * gw[:, None])
