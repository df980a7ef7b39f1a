"""Keras 3's cross-entropy losses, with Keras's exact behaviour, on fastxent's kernels.

``import fastxent.keras`` (Keras itself is not needed: inputs are anything
``fastxent._interop.as_array`` reads -- NumPy arrays, lists, JAX arrays, torch
tensors -- and results are NumPy). Function forms return per-sample losses as
``keras.losses.*`` do; the classes take Keras's constructor arguments and reduce as
``keras.losses.Loss`` does.

What is Keras's and not ``fastxent``'s plain behaviour here:

- Probabilities (``from_logits=False``, categorical and sparse) are divided by their
  sum along ``axis`` before the clip to ``[1e-7, 1 - 1e-7]``, as Keras's JAX, NumPy
  and torch backends do. Rows whose sum is exactly 1 are used as they are (dividing
  by 1 changes nothing); otherwise one renormalised copy is made.
- ``categorical_crossentropy``'s ``label_smoothing`` spreads ``ls`` over
  ``y_true.shape[-1]`` classes, even when ``axis`` is another axis (Keras's formula).
- ``binary_crossentropy`` averages over ``axis``: a 1-D ``y_pred`` gives one number,
  the mean (``fastxent.binary_crossentropy`` treats it as one output per sample).
- ``ignore_class`` samples give 0 and, in the classes, leave the mean.
- Class reductions follow ``keras.src.losses.loss.reduce_weighted_values``: a
  per-sample shape of ``()`` or ``(0,)`` is returned unreduced;
  ``"mean_with_sample_weight"`` divides by ``sum(sample_weight)`` as given (a
  scalar weight divides by itself); a sample weight whose rank differs by one from
  the losses' is squeezed or expanded as Keras does.

Where this differs from Keras (on purpose): bad input raises (labels out of range,
probabilities or binary targets outside [0, 1], non-integral float labels), where
Keras clips, wraps or silently returns 0; losses are computed at ``y_pred``'s
precision (float64 stays float64) and only the classes' result is cast to their
``dtype``; function forms return float64 for float64 ``y_pred`` and float32
otherwise (Keras's JAX backend without x64 always returns float32); ``axis`` works
for sparse labels on every axis (Keras: only on the torch backend); binary losses
from logits are exact (Keras's NumPy backend goes through sigmoid and the clip).

>>> import numpy as np, fastxent.keras
>>> y_true = np.array([1, 2])
>>> y_pred = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
>>> print(fastxent.keras.sparse_categorical_crossentropy(y_true, y_pred).round(4))
[0.0513 2.3026]
>>> scce = fastxent.keras.SparseCategoricalCrossentropy()
>>> print(round(float(scce(y_true, y_pred)), 4), round(float(scce(y_true, y_pred, sample_weight=[0.3, 0.7])), 4))
1.1769 0.8136
"""

from __future__ import annotations

import re
import warnings

import numpy as np

import fastxent as _fx

from ._interop import as_array

__all__ = [
    "sparse_categorical_crossentropy",
    "categorical_crossentropy",
    "binary_crossentropy",
    "SparseCategoricalCrossentropy",
    "CategoricalCrossentropy",
    "BinaryCrossentropy",
]

#: Keras's reductions; "mean" is an alias of "sum_over_batch_size".
REDUCTIONS = ("sum_over_batch_size", "sum", None, "none", "mean", "mean_with_sample_weight")


# --------------------------------------------------------------------------- function forms


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, ignore_class=None, axis=-1):
    """Keras's ``sparse_categorical_crossentropy``: per-sample losses of integer labels.

    ``y_pred``'s shape without ``axis`` (a size-1 label axis at ``axis`` is
    squeezed). Samples labelled ``ignore_class`` give 0.

    >>> import numpy as np, fastxent.keras
    >>> fastxent.keras.sparse_categorical_crossentropy(
    ...     np.array([0, -1]), np.array([[2.0, 0.0], [0.0, 1.0]]), from_logits=True, ignore_class=-1).round(4)
    array([0.1269, 0.    ])
    """
    return _sparse(y_true, y_pred, from_logits, ignore_class, axis, "none")


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    """Keras's ``categorical_crossentropy``: per-sample losses of one-hot or soft targets.

    >>> import numpy as np, fastxent.keras
    >>> y_true = np.array([[0, 1, 0], [0, 0, 1]])
    >>> y_pred = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
    >>> fastxent.keras.categorical_crossentropy(y_true, y_pred).round(4)
    array([0.0513, 2.3026])
    """
    return _categorical(y_true, y_pred, from_logits, label_smoothing, axis, "none")


def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    """Keras's ``binary_crossentropy``: the mean over ``axis`` of the element losses.

    >>> import numpy as np, fastxent.keras
    >>> y_true = np.array([[0, 1], [0, 0]])
    >>> y_pred = np.array([[0.6, 0.4], [0.4, 0.6]])
    >>> fastxent.keras.binary_crossentropy(y_true, y_pred).round(4)
    array([0.9163, 0.7136])
    >>> print(fastxent.keras.binary_crossentropy(np.array([0, 1]), np.array([0.1, 0.7])).round(4))
    0.231
    """
    return _binary(y_true, y_pred, from_logits, label_smoothing, axis, "none")


# --------------------------------------------------------------------------- shared computation


def _sparse(y_true, y_pred, from_logits, ignore_class, axis, reduction):
    """The sparse loss with Keras's preprocessing, reduced by fastxent's ``reduction``."""
    x = as_array(y_pred, "y_pred")
    axis = _check_axis(axis, x)
    if not from_logits:
        x = _renormalized(x, axis)
    with _keras_names():
        return _fx.sparse_categorical_crossentropy(
            as_array(y_true, "y_true"), x, from_logits=from_logits, ignore_index=ignore_class, axis=axis,
            reduction=reduction,
        )  # fmt: skip


def _categorical(y_true, y_pred, from_logits, label_smoothing, axis, reduction):
    x = as_array(y_pred, "y_pred")
    t = as_array(y_true, "y_true")
    axis = _check_axis(axis, x)
    if x.ndim and x.shape[-1] == 1:
        warnings.warn(
            "In loss categorical_crossentropy, expected y_pred.shape to be (batch_size, num_classes) with "
            f"num_classes > 1. Received: y_pred.shape={x.shape}. Consider using 'binary_crossentropy' if you "
            "only have 2 classes.",
            SyntaxWarning,
            stacklevel=3,
        )
    smoothing = isinstance(label_smoothing, (int, float)) and 0 < label_smoothing <= 1  # else fastxent refuses it
    if smoothing and isinstance(axis, int) and x.ndim and t.ndim and axis % x.ndim != x.ndim - 1:
        # Keras smooths over y_true.shape[-1] classes whatever the axis: do it here.
        ls = float(label_smoothing)
        t = t.astype(np.float64) * (1.0 - ls) + ls / t.shape[-1]
        label_smoothing = 0.0
    if not from_logits:
        x = _renormalized(x, axis)
    with _keras_names():
        return _fx.categorical_crossentropy(
            t, x, from_logits=from_logits, label_smoothing=label_smoothing, axis=axis, reduction=reduction,
        )  # fmt: skip


def _binary(y_true, y_pred, from_logits, label_smoothing, axis, reduction):
    x = as_array(y_pred, "y_pred")
    t = as_array(y_true, "y_true")
    axis = _check_axis(axis, x)
    # Keras averages a 1-D y_pred over its only axis, and any y_pred over all of it
    # for axis=None: one sample.
    one_sample = x.ndim == 1 or axis is None
    if one_sample:
        x, t, axis = x.reshape(1, -1), t.reshape(1, -1), -1
    with _keras_names():
        out = _fx.binary_crossentropy(
            t, x, from_logits=from_logits, label_smoothing=label_smoothing, axis=axis, reduction=reduction,
        )  # fmt: skip
    return out[0] if one_sample and reduction == "none" else out


def _check_axis(axis, x: np.ndarray):
    if isinstance(axis, (bool, np.bool_)):
        raise TypeError(f"axis: expected an int, got {axis!r}")  # Keras refuses bools too
    return axis


def _renormalized(x: np.ndarray, axis) -> np.ndarray:
    """``x / sum(x, axis)`` in ``x``'s dtype, as Keras divides probabilities before
    clipping; ``x`` itself when every sum is exactly 1 (the division would change no
    bit)."""
    if x.dtype.kind in "iub":
        x = x.astype(np.float64)  # as fastxent reads integer y_pred
    if x.size == 0:
        return x
    sums = np.sum(x, axis=axis, keepdims=True)
    if np.all(sums == 1):
        return x
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero row gives NaN, as in Keras
        return x / sums


_RENAMES = {"ignore_index": "ignore_class"}
_NAME_PATTERN = re.compile(r"\b(" + "|".join(_RENAMES) + r")\b")


class _keras_names:
    """Re-raise fastxent's errors with Keras's argument names (``ignore_class``)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind not in (ValueError, TypeError) or not _NAME_PATTERN.search(str(exc)):
            return False
        raise kind(_NAME_PATTERN.sub(lambda m: _RENAMES[m.group(1)], str(exc))) from None


# --------------------------------------------------------------------------- classes


class _KerasLoss:
    """``keras.losses.Loss``: options at construction, ``loss(y_true, y_pred, sample_weight)``."""

    _defaults: dict = {}  # the loss's own options and their defaults, in Keras's order
    _default_name = ""

    def __init__(self, *, reduction="sum_over_batch_size", name=None, dtype=None, **options):
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction: expected one of {REDUCTIONS} (as Keras), got {reduction!r}")
        self.reduction = reduction
        self.name = name or _auto_name(self._default_name)
        self._dtype_argument = dtype
        self._dtype = _compute_dtype(dtype)
        for key, value in options.items():
            setattr(self, key, value)

    @property
    def dtype(self) -> str:
        """The dtype the result is cast to (Keras's ``compute_dtype``; float32 by default)."""
        return self._dtype.name

    def __call__(self, y_true, y_pred, sample_weight=None):
        """The reduced loss of ``y_pred`` against ``y_true`` (Keras's semantics)."""
        y_true, y_pred = _squeeze_or_expand_to_same_rank(as_array(y_true, "y_true"), as_array(y_pred, "y_pred"))
        if sample_weight is None and self.reduction not in (None, "none"):
            result = self._fused(y_true, y_pred)
        else:
            losses = self._losses(y_true, y_pred, "none")
            mask = self._mask(y_true, y_pred)
            weights = None if sample_weight is None else as_array(sample_weight, "sample_weight")
            result = _reduce_weighted_values(losses, weights, mask, self.reduction)
        return _cast(result, self._dtype)

    def call(self, y_true, y_pred):
        """Per-sample losses, as Keras's ``Loss.call`` (after its rank adjustment)."""
        y_true, y_pred = _squeeze_or_expand_to_same_rank(as_array(y_true, "y_true"), as_array(y_pred, "y_pred"))
        return self._losses(y_true, y_pred, "none")

    def _fused(self, y_true, y_pred):
        """Without sample weights every Keras reduction is fastxent's sum or mean (over
        the samples that are not ignored), in the kernel's pass; except where Keras
        returns the losses unreduced."""
        if _sample_shape(y_pred, self._label_axis(y_pred)) == (0,):
            return self._losses(y_true, y_pred, "none")
        return self._losses(y_true, y_pred, "sum" if self.reduction == "sum" else "mean")

    def _label_axis(self, y_pred):
        return self.axis

    def _losses(self, y_true, y_pred, reduction):
        raise NotImplementedError

    def _mask(self, y_true, y_pred):
        return None

    def get_config(self) -> dict:
        """Keras's keys (``name``, ``reduction`` and the loss's options), plus ``dtype``
        (and ``axis`` for the sparse loss), which Keras leaves out."""
        config = {"name": self.name, "reduction": self.reduction}
        config.update({key: getattr(self, key) for key in self._defaults})
        config["dtype"] = self._dtype_argument
        return config

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SparseCategoricalCrossentropy(_KerasLoss):
    """Keras's ``SparseCategoricalCrossentropy`` on :func:`sparse_categorical_crossentropy`.

    With ``ignore_class``, ignored samples give 0 and are left out of
    ``"sum_over_batch_size"`` and ``"mean_with_sample_weight"`` (Keras's mask).

    >>> import numpy as np, fastxent.keras
    >>> scce = fastxent.keras.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    >>> print(round(float(scce(np.array([0, -1, 1]), np.array([[2.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))), 4))
    0.41
    """

    _defaults = {"from_logits": False, "ignore_class": None, "axis": -1}
    _default_name = "SparseCategoricalCrossentropy"

    def __init__(self, from_logits=False, ignore_class=None, reduction="sum_over_batch_size", axis=-1,
                 name="sparse_categorical_crossentropy", dtype=None):  # fmt: skip
        super().__init__(reduction=reduction, name=name, dtype=dtype, from_logits=from_logits,
                         ignore_class=ignore_class, axis=axis)  # fmt: skip

    def _losses(self, y_true, y_pred, reduction):
        return _sparse(y_true, y_pred, self.from_logits, self.ignore_class, self.axis, reduction)

    def _mask(self, y_true, y_pred):
        if self.ignore_class is None:
            return None
        axis = self.axis % y_pred.ndim
        if y_true.ndim == y_pred.ndim and y_true.shape[axis] == 1:
            y_true = np.squeeze(y_true, axis)
        return y_true != self.ignore_class


class CategoricalCrossentropy(_KerasLoss):
    """Keras's ``CategoricalCrossentropy`` on :func:`categorical_crossentropy`.

    >>> import numpy as np, fastxent.keras
    >>> cce = fastxent.keras.CategoricalCrossentropy(reduction="sum")
    >>> print(round(float(cce(np.array([[0, 1, 0], [0, 0, 1]]), np.array([[0.05, 0.95, 0], [0.1, 0.8, 0.1]]))), 3))
    2.354
    """

    _defaults = {"from_logits": False, "label_smoothing": 0.0, "axis": -1}
    _default_name = "CategoricalCrossentropy"

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1, reduction="sum_over_batch_size",
                 name="categorical_crossentropy", dtype=None):  # fmt: skip
        super().__init__(reduction=reduction, name=name, dtype=dtype, from_logits=from_logits,
                         label_smoothing=label_smoothing, axis=axis)  # fmt: skip

    def _losses(self, y_true, y_pred, reduction):
        return _categorical(y_true, y_pred, self.from_logits, self.label_smoothing, self.axis, reduction)


class BinaryCrossentropy(_KerasLoss):
    """Keras's ``BinaryCrossentropy`` on :func:`binary_crossentropy`.

    >>> import numpy as np, fastxent.keras
    >>> bce = fastxent.keras.BinaryCrossentropy(from_logits=True)
    >>> y_true, y_pred = np.array([[0, 1], [0, 0]]), np.array([[-18.6, 0.51], [2.94, -12.8]])
    >>> print(round(float(bce(y_true, y_pred)), 4), round(float(bce(y_true, y_pred, sample_weight=[0.8, 0.2])), 4))
    0.8655 0.2436
    """

    _defaults = {"from_logits": False, "label_smoothing": 0.0, "axis": -1}
    _default_name = "BinaryCrossentropy"

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1, reduction="sum_over_batch_size",
                 name="binary_crossentropy", dtype=None):  # fmt: skip
        super().__init__(reduction=reduction, name=name, dtype=dtype, from_logits=from_logits,
                         label_smoothing=label_smoothing, axis=axis)  # fmt: skip

    def _label_axis(self, y_pred):
        return self.axis if y_pred.ndim > 1 and self.axis is not None else None

    def _losses(self, y_true, y_pred, reduction):
        return _binary(y_true, y_pred, self.from_logits, self.label_smoothing, self.axis, reduction)


# --------------------------------------------------------------------------- Keras's reduction


def _squeeze_or_expand_to_same_rank(x1, x2, expand_rank_1=True):
    """``keras.src.losses.loss.squeeze_or_expand_to_same_rank``: when the ranks differ
    by one and the longer one ends in 1, squeeze it (or expand a 1-D partner)."""
    if x1.ndim == x2.ndim + 1 and x1.shape[-1] == 1:
        if x2.ndim == 1 and expand_rank_1:
            x2 = x2[..., None]
        else:
            x1 = x1[..., 0]
    if x2.ndim == x1.ndim + 1 and x2.shape[-1] == 1:
        if x1.ndim == 1 and expand_rank_1:
            x1 = x1[..., None]
        else:
            x2 = x2[..., 0]
    return x1, x2


def _reduce_weighted_values(values, sample_weight, mask, reduction):
    """``keras.src.losses.loss.reduce_weighted_values`` in float64."""
    values = np.asarray(values, dtype=np.float64)
    if sample_weight is not None:
        sample_weight = sample_weight.astype(np.float64)
    if mask is not None:
        if reduction in ("mean", "sum_over_batch_size"):
            # Kept samples weigh total/valid, ignored ones 0: the mean over the batch is
            # then the mean over the kept samples.
            valid = np.count_nonzero(mask)
            mask_weight = mask.size / valid if valid else 0.0
            float_mask = np.where(mask, mask_weight, 0.0)
        else:
            float_mask = mask.astype(np.float64)
        if sample_weight is not None:
            float_mask, sample_weight = _squeeze_or_expand_to_same_rank(float_mask, sample_weight)
            sample_weight = sample_weight * float_mask
        else:
            sample_weight = float_mask
    if sample_weight is not None:
        values, sample_weight = _squeeze_or_expand_to_same_rank(values, sample_weight)
        values = values * sample_weight
    return _reduce_values(values, sample_weight, reduction)


def _reduce_values(values, sample_weight, reduction):
    """``keras.src.losses.loss.reduce_values``: no reduction for ``"none"`` and for a
    scalar or empty 1-D batch; a divisor of 0 gives 0 (``divide_no_nan``)."""
    if reduction in (None, "none") or values.shape in ((), (0,)):
        return values
    loss = values.sum()
    if reduction == "sum":
        return loss
    if reduction == "mean_with_sample_weight" and sample_weight is not None:
        divisor = np.sum(sample_weight)
    else:
        divisor = values.size
    return loss / divisor if divisor != 0 else np.float64(0.0)


def _sample_shape(y_pred: np.ndarray, axis) -> tuple:
    if axis is None:
        return ()
    axis %= y_pred.ndim
    return y_pred.shape[:axis] + y_pred.shape[axis + 1 :]


def _cast(result, dtype: np.dtype):
    out = np.asarray(result).astype(dtype)
    return out[()] if out.ndim == 0 else out


def _compute_dtype(dtype) -> np.dtype:
    """Keras's ``dtype`` argument as a NumPy dtype: None is Keras's default floatx
    (float32), a ``DTypePolicy`` (or ``"mixed_float16"``) gives its compute dtype."""
    name = getattr(dtype, "compute_dtype", dtype) or "float32"
    name = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}.get(name, name)
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError("dtype: bfloat16 needs the ml_dtypes package (pip install ml_dtypes)") from None
        return np.dtype(ml_dtypes.bfloat16)
    try:
        result = np.dtype(name)
    except TypeError:
        raise TypeError(f"dtype: expected a float dtype name, np.dtype or DTypePolicy, got {dtype!r}") from None
    if result.kind != "f":
        raise TypeError(f"dtype: expected a floating dtype, got {dtype!r}")
    return result


_NAME_COUNTS: dict = {}


def _auto_name(class_name: str) -> str:
    """Keras's ``auto_name``: the class name in snake case, made unique by a counter."""
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
    count = _NAME_COUNTS.get(name, 0)
    _NAME_COUNTS[name] = count + 1
    return f"{name}_{count}" if count else name
