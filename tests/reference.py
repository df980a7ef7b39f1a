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
from scipy.special import expit, log_softmax

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
