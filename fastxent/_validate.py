"""Check a call's inputs and build the :class:`Problem` the kernels run on.

Everything that can be checked without reading ``y_pred``'s values is checked
here, before any work: types, dtypes, shapes, options, weights, ``grad_out`` and the
labels' range. Probabilities are range-checked by the kernels while they read them
(see ``backends/KERNELS.md``); the public layer raises before anything is returned.

Error messages name the argument, what was expected and what was given.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from ._config import check_backend, check_threads
from ._interop import as_array
from ._layout import RowLayout, class_axis_layout, elementwise_layout

REDUCTIONS = {
    "none": "none",
    None: "none",
    "sum": "sum",
    "mean": "mean",
    "sum_over_batch_size": "mean",
    "weighted_mean": "weighted_mean",
    "mean_with_sample_weight": "weighted_mean",
}

_FLOAT_INPUTS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


@dataclass
class Problem:
    """A validated call: the arrays in kernel layout and the resolved options."""

    kind: str  # "binary" | "categorical" | "sparse"
    from_logits: bool
    layout: RowLayout
    axis: int | None  # the class axis of y_pred (None: binary without label axis)
    x: np.ndarray  # y_pred as (O, C, I)
    aux: np.ndarray  # labels (O, I) for sparse, targets (O, C, I) otherwise
    class_weight: np.ndarray | None  # (C,) float64
    pos_weight: np.ndarray | None  # (C, I) float64, possibly zero strides
    sample_weight: np.ndarray | float | None  # (O, I) float64, or a scalar
    label_smoothing: float
    ignore_index: int | None
    epsilon: float
    reduction: str  # one of "none", "sum", "mean", "weighted_mean"
    return_grad: bool
    grad_out: np.ndarray | None  # the caller's buffer (y_pred's shape), if any
    grad_view: np.ndarray | None  # grad_out as (O, C, I)
    in_place: bool  # grad_out is y_pred itself
    result_dtype: np.dtype
    backend: str | None
    threads: int | None

    @property
    def kernel_name(self) -> str:
        return f"{self.kind}_from_{'logits' if self.from_logits else 'probs'}"

    @property
    def n_rows(self) -> int:
        return self.layout.n_rows

    @property
    def n_classes(self) -> int:
        return self.layout.classes

    def element_position(self, row: int, cls: int) -> tuple:
        """Index into ``y_pred`` of class ``cls`` of flat row ``row``."""
        sample = self.layout.position(row)
        if self.axis is None:
            return sample
        return sample[: self.axis] + (cls,) + sample[self.axis :]


# --------------------------------------------------------------------------- options


def check_options(
    *,
    from_logits,
    label_smoothing,
    reduction,
    epsilon,
    return_grad,
    backend,
    threads,
) -> tuple:
    if not isinstance(from_logits, (bool, np.bool_)):
        raise TypeError(f"from_logits: expected True or False, got {from_logits!r}")
    if not isinstance(return_grad, (bool, np.bool_)):
        raise TypeError(f"return_grad: expected True or False, got {return_grad!r}")
    ls = _real("label_smoothing", label_smoothing)
    if not 0.0 <= ls <= 1.0:
        raise ValueError(f"label_smoothing: expected a number in [0, 1], got {label_smoothing!r}")
    eps = _real("epsilon", epsilon)
    if not 0.0 < eps < 0.5:
        raise ValueError(f"epsilon: expected a number in (0, 0.5), got {epsilon!r}")
    try:
        red = REDUCTIONS[reduction]
    except (KeyError, TypeError):
        names = ", ".join(repr(k) for k in REDUCTIONS if k is not None)
        raise ValueError(f"reduction: expected one of {names} or None, got {reduction!r}") from None
    if backend is not None:
        check_backend(backend)
    if threads is not None:
        threads = check_threads(threads)
    return bool(from_logits), ls, red, eps, bool(return_grad), threads


def _real(name: str, value) -> float:
    if type(value) is float or type(value) is int:  # the usual case, without the ABC check
        return float(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    return float(value)


def _describe(a: np.ndarray) -> str:
    return f"an array of shape {a.shape} and dtype {a.dtype}"


# --------------------------------------------------------------------------- y_pred


def coerce_y_pred(y_pred) -> np.ndarray:
    """``y_pred`` as an array of a dtype the kernels read (no copy when it is one)."""
    a = y_pred if isinstance(y_pred, np.ndarray) else as_array(y_pred, "y_pred")
    dt = a.dtype
    if dt in _FLOAT_INPUTS:
        return a
    if dt.kind == "f" and dt.itemsize <= 8 and not dt.isnative:
        return a.astype(dt.newbyteorder("="))  # byte-swapped input: one converting copy
    if dt.name == "bfloat16":  # ml_dtypes
        return a
    if dt.kind in "iub":
        return a.astype(np.float64)  # as NumPy would compute np.log on integers
    raise TypeError(
        "y_pred: expected a float16, float32, float64 or bfloat16 array "
        f"(integers and booleans are converted to float64), got dtype {dt}"
    )


def result_dtype_of(x: np.ndarray) -> np.dtype:
    return np.dtype(np.float64) if x.dtype == np.float64 else np.dtype(np.float32)


def normalize_axis(axis, ndim: int, name: str = "axis") -> int:
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}: expected an axis of y_pred (which has {ndim} dimensions), got {axis}")
    return int(axis) % ndim


def _class_axis(a: np.ndarray, axis, kind: str) -> int:
    if a.ndim == 0:
        raise ValueError(
            f"y_pred: expected an array with a class axis (at least 1 dimension), got a scalar"
        )
    ax = normalize_axis(axis, a.ndim)
    if a.shape[ax] == 0:
        raise ValueError(
            f"y_pred: expected at least one class along axis {axis}, got shape {a.shape}"
        )
    return ax


# --------------------------------------------------------------------------- targets


def coerce_labels(y_true, x: np.ndarray, axis: int, n_classes: int, ignore_index) -> np.ndarray:
    """Integer labels shaped like ``y_pred`` without its class axis, range-checked."""
    labels = y_true if isinstance(y_true, np.ndarray) else as_array(y_true, "y_true")
    dt = labels.dtype
    if dt.kind == "b":
        labels = labels.view(np.uint8)
    elif dt.kind not in "iuf":
        raise TypeError(f"y_true: expected integer class labels, got dtype {dt}")

    expected = x.shape[:axis] + x.shape[axis + 1 :]
    if labels.shape != expected:
        with_unit = x.shape[:axis] + (1,) + x.shape[axis + 1 :]
        if labels.shape == with_unit:  # Keras' trailing (..., 1) label axis
            labels = labels.reshape(expected)
        else:
            hint = ""
            if labels.shape == x.shape:
                hint = " (y_true has y_pred's shape: for one-hot or soft targets use categorical_crossentropy)"
            raise ValueError(
                f"y_true: expected labels of shape {expected} (y_pred's shape {x.shape} "
                f"without its class axis {axis}), got shape {labels.shape}{hint}"
            )

    if dt.kind == "f":
        _check_integral(labels)
    _check_label_range(labels, n_classes, ignore_index, axis)
    if dt.kind == "f":
        labels = labels.astype(np.int64)
    elif not dt.isnative:
        labels = labels.astype(dt.newbyteorder("="))
    return labels


def _check_integral(labels: np.ndarray) -> None:
    bad = ~np.isfinite(labels)
    bad |= labels != np.floor(np.where(bad, 0, labels))
    if bad.any():
        pos = _first(bad)
        raise ValueError(
            f"y_true: expected integral class labels (float labels must hold whole numbers), "
            f"got {labels[pos]!r} at position {pos}"
        )


def _check_label_range(labels: np.ndarray, n_classes: int, ignore_index, axis: int) -> None:
    if labels.size == 0 or _all_in_range(labels, n_classes):
        return
    bad = (labels < 0) | (labels >= n_classes)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if not bad.any():
        return
    pos = _first(bad)
    allowed = f"[0, {n_classes})"
    if ignore_index is not None:
        allowed += f" or ignore_index={ignore_index}"
    raise ValueError(
        f"y_true: expected labels in {allowed} ({n_classes} classes along y_pred's axis {axis}), "
        f"got {labels[pos]} at position {pos}"
    )


def _all_in_range(labels: np.ndarray, n_classes: int) -> bool:
    """Whether every label lies in [0, n_classes). Integers take one reduction: as
    unsigned integers of the same width, negative labels are the largest values."""
    if labels.dtype.kind in "iu":
        return int(labels.view(labels.dtype.str.replace("i", "u")).max()) < n_classes
    return labels.min() >= 0 and labels.max() < n_classes


def _first(mask: np.ndarray) -> tuple:
    flat = int(np.flatnonzero(mask.ravel())[0])
    return tuple(int(k) for k in np.unravel_index(flat, mask.shape))


def coerce_targets(y_true, x: np.ndarray, kind: str) -> np.ndarray:
    """Dense targets (float, int or bool) with ``y_pred``'s shape."""
    t = y_true if isinstance(y_true, np.ndarray) else as_array(y_true, "y_true")
    if t.dtype.kind not in "fiub" or t.dtype.itemsize > 8:
        raise TypeError(f"y_true: expected float, integer or boolean targets, got dtype {t.dtype}")
    if t.shape != x.shape:
        if kind == "binary" and _differ_by_trailing_unit(t.shape, x.shape):
            t = t.reshape(x.shape)  # e.g. labels (N,) against outputs (N, 1)
        else:
            hint = ""
            if kind == "categorical" and t.ndim == x.ndim - 1:
                hint = " (for integer class labels use sparse_categorical_crossentropy)"
            raise ValueError(
                f"y_true: expected targets of y_pred's shape {x.shape}, got shape {t.shape}{hint}"
            )
    if not t.dtype.isnative:
        t = t.astype(t.dtype.newbyteorder("="))
    return t


def _differ_by_trailing_unit(a: tuple, b: tuple) -> bool:
    return a + (1,) == b or b + (1,) == a


# --------------------------------------------------------------------------- weights


def _float_weights(name: str, value) -> np.ndarray:
    w = as_array(value, name)
    if w.dtype.kind not in "fiub" or w.dtype.itemsize > 8:
        raise TypeError(f"{name}: expected numbers, got dtype {w.dtype}")
    return w.astype(np.float64, copy=False)


def coerce_class_weight(class_weight, n_classes: int) -> np.ndarray | None:
    if class_weight is None:
        return None
    w = _float_weights("class_weight", class_weight)
    if w.shape != (n_classes,):
        raise ValueError(
            f"class_weight: expected one weight per class, shape ({n_classes},), got shape {w.shape}"
        )
    return np.ascontiguousarray(w)


def coerce_pos_weight(pos_weight, layout: RowLayout) -> np.ndarray | None:
    """``pos_weight`` broadcast to ``(C, I)``: per label along the label axis."""
    if pos_weight is None:
        return None
    w = _float_weights("pos_weight", pos_weight)
    c, i = layout.classes, layout.inner
    labels = i if layout.virtual else c  # without a label axis: along the last axis
    if w.ndim == 0 or w.shape == (1,):
        return np.broadcast_to(w.reshape(()), (c, i))
    if w.shape != (labels,):
        where = "the last axis" if layout.virtual else "the label axis"
        raise ValueError(
            f"pos_weight: expected a scalar or one weight per label along {where}, "
            f"shape ({labels},), got shape {w.shape}"
        )
    return np.broadcast_to(w[None, :] if layout.virtual else w[:, None], (c, i))


def coerce_sample_weight(sample_weight, layout: RowLayout):
    """A float scalar, or the ``(O, I)`` row grid of weights in float64."""
    if sample_weight is None:
        return None
    w = _float_weights("sample_weight", sample_weight)
    if w.ndim == 0:
        return float(w)
    shape = layout.sample_shape
    if w.shape != shape:
        if w.shape == shape + (1,):  # Keras' trailing (..., 1)
            w = w.reshape(shape)
        else:
            raise ValueError(
                f"sample_weight: expected a scalar or one weight per sample, shape {shape} "
                f"(y_pred's shape without its class axis), got shape {w.shape}"
            )
    return layout.view2(w)


# --------------------------------------------------------------------------- grad_out


def check_grad_out(grad_out, y_pred: np.ndarray, dtype: np.dtype, others: tuple):
    """Check the caller's gradient buffer; return ``(buffer, in_place)``."""
    if not isinstance(grad_out, np.ndarray):
        raise TypeError(f"grad_out: expected a NumPy array, got {type(grad_out).__name__}")
    if grad_out.shape != y_pred.shape:
        raise ValueError(f"grad_out: expected y_pred's shape {y_pred.shape}, got shape {grad_out.shape}")
    if grad_out.dtype != dtype:
        raise ValueError(
            f"grad_out: expected dtype {dtype} (the gradient's dtype for {y_pred.dtype} y_pred), "
            f"got dtype {grad_out.dtype}"
        )
    if not grad_out.flags.writeable:
        raise ValueError("grad_out: expected a writeable array, got a read-only one")
    in_place = _same_view(grad_out, y_pred)
    if not in_place and np.may_share_memory(grad_out, y_pred):
        raise ValueError(
            "grad_out: expected y_pred itself (in place) or memory that does not overlap it, "
            "got a different view of y_pred's memory"
        )
    for name, other in others:
        if isinstance(other, np.ndarray) and np.may_share_memory(grad_out, other):
            raise ValueError(f"grad_out: expected memory that does not overlap {name}, got an overlapping array")
    return grad_out, in_place


def _same_view(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        and a.strides == b.strides
        and a.shape == b.shape
    )


def strict_view3(layout: RowLayout, a: np.ndarray) -> np.ndarray:
    """``layout.view3(a)`` that refuses to copy (for buffers the kernels write)."""
    v = layout.view3(a)
    if a.size and not np.shares_memory(v, a):
        raise ValueError(
            "grad_out: expected an array whose dimensions can be merged around the class axis "
            "without a copy (e.g. C- or Fortran-ordered), got one with incompatible strides"
        )
    return v


# --------------------------------------------------------------------------- problems


def build_problem(
    kind: str,
    y_true,
    y_pred,
    *,
    from_logits,
    label_smoothing,
    reduction,
    epsilon,
    return_grad,
    grad_out,
    backend,
    threads,
    axis,
    class_weight=None,
    pos_weight=None,
    sample_weight=None,
    ignore_index=None,
) -> Problem:
    from_logits, ls, red, eps, return_grad, threads = check_options(
        from_logits=from_logits,
        label_smoothing=label_smoothing,
        reduction=reduction,
        epsilon=epsilon,
        return_grad=return_grad,
        backend=backend,
        threads=threads,
    )
    if ignore_index is not None and (
        isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer))
    ):
        raise TypeError(f"ignore_index: expected None or an int, got {ignore_index!r}")

    x_full = coerce_y_pred(y_pred)
    if kind == "binary":
        if axis is None or x_full.ndim <= 1:
            ax, layout = None, elementwise_layout(x_full)
        else:
            ax = normalize_axis(axis, x_full.ndim)
            if x_full.shape[ax] == 0:
                raise ValueError(f"y_pred: expected at least one label along axis {axis}, got shape {x_full.shape}")
            layout = class_axis_layout(x_full, ax)
    else:
        ax = _class_axis(x_full, axis, kind)
        layout = class_axis_layout(x_full, ax)

    if kind == "sparse":
        labels = coerce_labels(y_true, x_full, ax, layout.classes, ignore_index)
        aux = layout.view2(labels)
        others = (("y_true", labels),)
    else:
        targets = coerce_targets(y_true, x_full, kind)
        aux = layout.view3(targets)
        others = (("y_true", targets),)

    cw = coerce_class_weight(class_weight, layout.classes) if kind != "binary" else None
    pw = coerce_pos_weight(pos_weight, layout) if kind == "binary" else None
    sw = coerce_sample_weight(sample_weight, layout)
    rdt = result_dtype_of(x_full)

    gbuf, gview, in_place = None, None, False
    if grad_out is not None:
        if not return_grad:
            raise ValueError("grad_out: given without return_grad=True; pass return_grad=True to get the gradient")
        weights = (("class_weight", cw), ("pos_weight", pw), ("sample_weight", sw))
        gbuf, in_place = check_grad_out(grad_out, x_full, rdt, others + weights)
        gview = strict_view3(layout, gbuf)

    return Problem(
        kind=kind,
        from_logits=from_logits,
        layout=layout,
        axis=ax,
        x=layout.view3(x_full),
        aux=aux,
        class_weight=cw,
        pos_weight=pw,
        sample_weight=sw,
        label_smoothing=ls,
        ignore_index=None if ignore_index is None else int(ignore_index),
        epsilon=eps,
        reduction=red,
        return_grad=return_grad,
        grad_out=gbuf,
        grad_view=gview,
        in_place=in_place,
        result_dtype=rdt,
        backend=backend,
        threads=threads,
    )
