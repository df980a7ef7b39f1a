"""The oracle's answer to a whole public call: reduced loss and gradient.

Combines ``reference`` (per-sample losses, per-class target weights, plain
gradients) with the contract's reduction table.
"""

from __future__ import annotations

import numpy as np

import reference as ref

KINDS = ("binary", "categorical", "sparse")


def expected(kind, y_true, y_pred, *, from_logits=False, label_smoothing=0.0, class_weight=None,
             pos_weight=None, ignore_index=None, sample_weight=None, axis=-1, reduction="mean",
             epsilon=1e-7):  # fmt: skip
    """(loss, grad) in float64 for a call with these options."""
    x = np.asarray(y_pred)
    if x.dtype.kind in "iub":
        x = x.astype(np.float64)
    sw = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    red = ref.RED_ALIASES.get(reduction, reduction)

    if kind == "binary":
        elementwise = axis is None or x.ndim <= 1
        y = np.asarray(y_true)
        if y.shape != x.shape:
            y = y.reshape(x.shape)
        kw = dict(from_logits=from_logits, label_smoothing=label_smoothing, pos_weight=pos_weight,
                  eps=epsilon, pos_weight_axis=-1 if elementwise else axis)  # fmt: skip
        elem, _, _ = ref.binary_elements(y, x, **kw)
        losses = elem if elementwise else elem.mean(axis=axis)
        n_labels = 1 if elementwise else x.shape[axis]
        sw = _squeeze_trailing(sw, losses.shape)
        loss = ref.reduce(losses, red, sw)
        denom = _denominator(red, losses.shape, sw, None, None)
        g = ref.binary_grad_elements(y, x, **kw) / n_labels
        scale = _scale(losses.shape, sw, denom)
        grad = g * (scale if elementwise else np.expand_dims(scale, axis))
        return loss, grad

    xl = np.moveaxis(x, axis, -1)
    if kind == "categorical":
        losses, a = ref.categorical(y_true, x, from_logits=from_logits, label_smoothing=label_smoothing,
                                    class_weight=class_weight, axis=axis, eps=epsilon)  # fmt: skip
        valid = None
        t = np.moveaxis(np.asarray(y_true, dtype=np.float64), axis, -1)
        w = np.ones(xl.shape[-1]) if class_weight is None else np.asarray(class_weight, float)
        c = (t * w).sum(axis=-1) if class_weight is not None else None
    else:
        labels = np.asarray(y_true)
        if labels.ndim == x.ndim:
            labels = np.squeeze(labels, axis=axis % x.ndim)
        losses, a, valid = ref.sparse(labels, x, from_logits=from_logits, label_smoothing=label_smoothing,
                                      class_weight=class_weight, ignore_index=ignore_index, axis=axis,
                                      eps=epsilon)  # fmt: skip
        if class_weight is not None:
            w = np.asarray(class_weight, float)
            c = np.where(valid, w[np.where(valid, labels, 0)], 0.0)
        else:
            c = None
    sw = _squeeze_trailing(sw, losses.shape)
    loss = ref.reduce(losses, red, sw, valid, c)
    denom = _denominator(red, losses.shape, sw, valid, c)
    g = ref.softmax_grad(xl, a) if from_logits else ref.probs_grad(xl, a, epsilon)
    if kind == "sparse":
        g[~valid] = 0.0
    scale = _scale(losses.shape, sw, denom)
    return loss, np.moveaxis(g * scale[..., None], -1, axis)


def _squeeze_trailing(sw, shape):
    if sw is not None and sw.ndim and sw.shape != shape and sw.shape == shape + (1,):
        return sw.reshape(shape)
    return sw


def _denominator(red, shape, sw, valid, c):
    if red in ("none", "sum"):
        return 1.0
    v = np.ones(shape) if valid is None else valid.astype(float)
    if red == "mean":
        return v.sum()
    s = np.ones(shape) if sw is None else np.broadcast_to(sw, shape)
    cc = np.ones(shape) if c is None else c
    return (v * s * cc).sum()


def _scale(shape, sw, denom):
    s = np.ones(shape) if sw is None else np.broadcast_to(sw, shape)
    return s * (0.0 if denom == 0 else 1.0 / denom)
