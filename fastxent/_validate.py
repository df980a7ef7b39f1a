"""Check a call's inputs and build the :class:`Problem` the kernels run on.

Everything that can be checked without reading ``y_pred``'s values is checked
here, before any work: types, dtypes, shapes, options, weights, ``grad_out`` and the
labels' range. Probabilities and binary targets are range-checked by the kernels
while they read them (see ``backends/KERNELS.md``); the public layer raises before
anything is returned.

Error messages name the argument, what was expected and what was given, and add a
hint where the mistake is a common one (swapped arguments, ±1 binary labels, a Keras
``class_weight`` dict).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ._config import check_backend, check_threads
from ._interop import as_array as interop_as_array
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

#: ignore_index may be any value some integer label dtype can hold.
IGNORE_INDEX_RANGE = (-(1 << 63), 1 << 64)
#: Float labels must be whole numbers this small, so that int64 holds them exactly.
_FLOAT_LABEL_LIMIT = float(1 << 63)
#: Rows that the probabilities-as-logits hint looks at (a handful: it costs microseconds).
HINT_ROWS = 8


class ProbabilitiesAsLogitsWarning(UserWarning):
    """``from_logits=True`` was given values that look like probabilities: every
    value of the first rows lies in [0, 1] and each of those rows sums to 1.

    >>> import warnings, numpy as np, fastxent
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = fastxent.sparse_categorical_crossentropy([0], np.array([[0.9, 0.1]]), from_logits=True)
    >>> caught[0].category.__name__
    'ProbabilitiesAsLogitsWarning'
    >>> warnings.simplefilter("ignore", fastxent.ProbabilitiesAsLogitsWarning)  # to silence it
    >>> warnings.resetwarnings()
    """


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
    z_loss: float = 0.0  # sparse from logits: z_loss * logsumexp(x)**2 added to each row's loss
    softcap: float = 0.0  # sparse from logits: logits taken as softcap * tanh(x / softcap); 0: off
    return_lse: bool = False  # sparse from logits: also return each row's logsumexp
    want_rank: bool = False  # sparse: each row's label rank (for accuracy and top-k metrics)

    @property
    def row_extras(self) -> bool:
        """Whether the call asks the kernel for more than the plain loss and gradient."""
        return bool(self.z_loss or self.softcap or self.return_lse or self.want_rank)

    @property
    def kernel_name(self) -> str:
        return f"{self.kind}_from_{'logits' if self.from_logits else 'probs'}"

    @property
    def n_rows(self) -> int:
        return self.layout.n_rows

    @property
    def n_classes(self) -> int:
        return self.layout.classes

    @property
    def kernel_ignore(self) -> int:
        """``ignore_index`` as the int64 the kernels compare each label with (every
        label read as int64, two's complement): the caller's value wrapped into
        int64, or -1 -- which no label that passed validation holds -- without one."""
        ii = self.ignore_index
        if ii is None:
            return -1
        return ii - (1 << 64) if ii >= 1 << 63 else ii

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
    """The call's scalar options, checked; also what a loss class checks when built."""
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


def check_logit_options(from_logits: bool, z_loss, logit_softcap, return_lse) -> tuple:
    """``z_loss``, ``logit_softcap`` and ``return_lse`` (sparse loss from logits):
    ``(z_loss, softcap, return_lse)``, softcap 0.0 for None."""
    z = _real("z_loss", z_loss)
    if not (z >= 0 and math.isfinite(z)):
        raise ValueError(f"z_loss: expected a finite number >= 0, got {z_loss!r}")
    cap = 0.0
    if logit_softcap is not None:
        cap = _real("logit_softcap", logit_softcap)
        if not (cap > 0 and math.isfinite(cap)):
            raise ValueError(f"logit_softcap: expected None or a finite number > 0, got {logit_softcap!r}")
    if not isinstance(return_lse, (bool, np.bool_)):
        raise TypeError(f"return_lse: expected True or False, got {return_lse!r}")
    for name, used in (("z_loss", z > 0), ("logit_softcap", cap > 0), ("return_lse", bool(return_lse))):
        if used and not from_logits:
            raise ValueError(f"{name}: needs logits; pass from_logits=True (got from_logits=False)")
    return z, cap, bool(return_lse)


def check_ignore_index(ignore_index) -> int | None:
    if ignore_index is None:
        return None
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index: expected None or an int, got {ignore_index!r}")
    lo, hi = IGNORE_INDEX_RANGE
    if not lo <= ignore_index < hi:
        raise ValueError(
            f"ignore_index: expected an int in [-2**63, 2**64) (a value some integer label "
            f"dtype can hold), got {ignore_index}"
        )
    return int(ignore_index)


def check_epsilon_fits(epsilon: float, y_pred_dtype: np.dtype) -> None:
    """Refuse an ``epsilon`` the compute dtype rounds away (``1 - eps`` == 1)."""
    dtype = np.float64 if y_pred_dtype == np.float64 else np.float32
    eps = dtype(epsilon)
    if dtype(1) - eps < 1:
        return
    smallest = np.nextafter(dtype(np.finfo(dtype).epsneg / 2), dtype(1))
    raise ValueError(
        f"epsilon: expected a clip bound that {np.dtype(dtype)} (the compute dtype of "
        f"{y_pred_dtype} y_pred) can tell apart from 0 and 1, got {epsilon!r}: 1 - epsilon "
        f"rounds to 1. The smallest usable epsilon is {float(smallest):.6g}"
        + ("" if dtype is np.float64 else "; or pass float64 y_pred")
    )


def _real(name: str, value) -> float:
    if type(value) is float or type(value) is int:  # the usual case, without the ABC check
        return float(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- arrays


def as_array(value, name: str) -> np.ndarray:
    """``value`` as a plain ndarray, without a copy when it is one.

    Subclasses (``np.matrix``) become base-class views. A masked array with masked
    values is refused: dropping its mask would silently use the values behind it.
    Other libraries' arrays (torch tensors, DLPack, ``__array__``) go through
    ``_interop.as_array``: viewed without a copy where their layout allows.
    """
    if type(value) is np.ndarray:
        return value
    if isinstance(value, np.ma.MaskedArray):
        if np.ma.getmaskarray(value).any():
            raise TypeError(
                f"{name}: expected an array without masked values, got a masked array with "
                f"{int(np.ma.count_masked(value))} masked value(s). Pass {name}.filled(...) with a "
                "value of your choice, or leave samples out with sample_weight=0 or ignore_index"
            )
        return np.asarray(value.data)
    if isinstance(value, np.ndarray):
        return np.asarray(value)  # a subclass (np.matrix): its base-class view
    return interop_as_array(value, name)  # torch tensors, DLPack and __array__ objects


def _is_bfloat16(dt: np.dtype) -> bool:
    return dt.name == "bfloat16"  # ml_dtypes


def _numeric_kind(dt: np.dtype) -> str:
    """``dt.kind``, with bfloat16 (ml_dtypes, kind 'V') counted as a float."""
    return "f" if _is_bfloat16(dt) else dt.kind


# --------------------------------------------------------------------------- y_pred


def coerce_y_pred(y_pred) -> np.ndarray:
    """``y_pred`` as an array of a dtype the kernels read (no copy when it is one)."""
    a = as_array(y_pred, "y_pred")
    dt = a.dtype
    if dt in _FLOAT_INPUTS or _is_bfloat16(dt):
        return a
    if dt.kind == "f" and dt.itemsize <= 8 and not dt.isnative:
        return a.astype(dt.newbyteorder("="))  # byte-swapped input: one converting copy
    if dt.kind in "iub":
        return a.astype(np.float64)  # as NumPy would compute np.log on integers
    raise TypeError(
        "y_pred: expected a float16, float32, float64 or bfloat16 array "
        f"(integers and booleans are converted to float64), got dtype {dt}"
    )


def check_not_swapped(t: np.dtype, p: np.dtype) -> None:
    """Refuse integer predictions (dtype ``p``) next to floating-point targets (dtype
    ``t``): the usual sign of arguments given in PyTorch's order (input, target)."""
    if p.kind in "iub" and _numeric_kind(t) == "f":
        raise TypeError(
            f"y_pred: expected floating-point predictions, got dtype {p} while y_true has dtype {t}: "
            f"the arguments look swapped. fastxent takes (y_true, y_pred) as Keras does; PyTorch "
            f"takes (input, target). If y_pred really holds hard 0/1 predictions, cast it to float"
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
        raise ValueError("y_pred: expected an array with a class axis (at least 1 dimension), got a scalar")
    ax = normalize_axis(axis, a.ndim)
    if a.shape[ax] == 0:
        raise ValueError(f"y_pred: expected at least one class along axis {axis}, got shape {a.shape}")
    return ax


def warn_if_probabilities(x3: np.ndarray) -> None:
    """Warn when ``from_logits=True`` logits look like probabilities (see
    :class:`ProbabilitiesAsLogitsWarning`): up to the first :data:`HINT_ROWS` rows are
    read, row by row, without a temporary; real logits usually stop at the first row's
    negative values."""
    o, c, i = x3.shape
    if c < 2:
        return
    for r in range(min(HINT_ROWS, o * i)):
        row = x3[r // i, :, r % i]
        with np.errstate(invalid="ignore"):
            if not (row.min() >= 0 and row.max() <= 1 and abs(row.sum(dtype=np.float64) - 1.0) <= 1e-3):
                return
    if o * i == 0:
        return
    warnings.warn(
        "y_pred: from_logits=True, but its first rows look like probabilities (values in [0, 1] "
        "summing to 1). If y_pred holds probabilities, pass from_logits=False",
        ProbabilitiesAsLogitsWarning,
        stacklevel=4,
    )


# --------------------------------------------------------------------------- targets


def coerce_labels(y_true, x: np.ndarray, axis: int, n_classes: int, ignore_index, source: str | None = None,
                  classes: str | None = None) -> np.ndarray:  # fmt: skip
    """Integer labels shaped like ``y_pred`` without its class axis, range-checked.
    ``source`` and ``classes`` say, in messages, where the expected shape and the
    class count come from (``y_pred``'s shape and class axis, unless given)."""
    labels = as_array(y_true, "y_true")
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
            source = source or f"y_pred's shape {x.shape} without its class axis {axis}"
            raise ValueError(
                f"y_true: expected labels of shape {expected} ({source}), got shape {labels.shape}"
                f"{_label_shape_hint(labels, x)}"
            )

    if dt.kind == "f":
        _check_integral(labels)
        too_big = np.abs(labels) >= _FLOAT_LABEL_LIMIT  # int64 cannot hold them: never valid
        if too_big.any():
            _label_range_error(labels, _first(too_big), n_classes, ignore_index, axis, classes)
        labels = labels.astype(np.int64)  # exact; compared with ignore_index as ints below
    elif not dt.isnative:
        labels = labels.astype(dt.newbyteorder("="))
    _check_label_range(labels, n_classes, ignore_index, axis, classes)
    return labels


def _label_shape_hint(labels: np.ndarray, x: np.ndarray) -> str:
    if labels.shape == x.shape:
        return " (y_true has y_pred's shape: for one-hot or soft targets use categorical_crossentropy)"
    if labels.ndim == x.ndim + 1 and labels.shape[:-1] == x.shape:  # (N, C) labels, (N,) y_pred
        return (" (y_true has more dimensions than y_pred: the arguments look swapped; fastxent "
                "takes (y_true, y_pred) as Keras does, PyTorch takes (input, target))")  # fmt: skip
    return ""


def _check_integral(labels: np.ndarray) -> None:
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(labels)
        bad |= labels != np.floor(np.where(bad, 0, labels))
    if bad.any():
        pos = _first(bad)
        raise ValueError(
            f"y_true: expected integral class labels (float labels must hold whole numbers), "
            f"got {labels[pos]!r} at position {pos}"
        )


def _check_label_range(labels: np.ndarray, n_classes: int, ignore_index, axis: int, classes=None) -> None:
    """Every (integer) label in [0, n_classes) or equal to ``ignore_index``."""
    if labels.size == 0 or _all_in_range(labels, n_classes):
        return
    bad = (labels < 0) | (labels >= n_classes)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bad.any():
        _label_range_error(labels, _first(bad), n_classes, ignore_index, axis, classes)


def _label_range_error(labels: np.ndarray, pos: tuple, n_classes: int, ignore_index, axis: int, classes=None):
    allowed = f"[0, {n_classes})"
    if ignore_index is not None:
        allowed += f" or ignore_index={ignore_index}"
    classes = classes or f"{n_classes} classes along y_pred's axis {axis}"
    raise ValueError(f"y_true: expected labels in {allowed} ({classes}), got {labels[pos]} at position {pos}")


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
    t = as_array(y_true, "y_true")
    if _is_bfloat16(t.dtype):
        t = t.astype(np.float32)  # exact: the kernels read float16/32/64, ints and bools
    if t.dtype.kind not in "fiub" or t.dtype.itemsize > 8:
        raise TypeError(f"y_true: expected float, integer or boolean targets, got dtype {t.dtype}")
    if t.shape != x.shape:
        if kind == "binary" and _differ_by_trailing_unit(t.shape, x.shape):
            t = t.reshape(x.shape)  # e.g. labels (N,) against outputs (N, 1)
        else:
            hint = ""
            if kind == "categorical" and t.ndim == x.ndim - 1:
                hint = " (for integer class labels use sparse_categorical_crossentropy)"
            raise ValueError(f"y_true: expected targets of y_pred's shape {x.shape}, got shape {t.shape}{hint}")
    if not t.dtype.isnative:
        t = t.astype(t.dtype.newbyteorder("="))
    return t


def _differ_by_trailing_unit(a: tuple, b: tuple) -> bool:
    return a + (1,) == b or b + (1,) == a


def binary_target_message(value: float, position: tuple) -> str:
    """The error for a binary target outside [0, 1], with a hint for the usual causes."""
    if value == -1:
        hint = " Labels in {-1, 1}? Pass (y_true + 1) / 2."
    elif value == 255:
        hint = " A 0/255 mask? Pass y_true / 255."
    else:
        hint = " Labels in {-1, 1}: pass (y_true + 1) / 2; a 0/255 mask: pass y_true / 255."
    return f"y_true: expected binary targets in [0, 1], got {value!r} at position {position}.{hint}"


# --------------------------------------------------------------------------- weights


def _float_weights(name: str, value) -> np.ndarray:
    w = as_array(value, name)
    if _is_bfloat16(w.dtype):
        return w.astype(np.float64)
    if w.dtype.kind not in "fiub" or w.dtype.itemsize > 8:
        raise TypeError(f"{name}: expected numbers, got dtype {w.dtype}")
    return w.astype(np.float64, copy=False)


def coerce_class_weight(class_weight, n_classes: int) -> np.ndarray | None:
    if class_weight is None:
        return None
    if isinstance(class_weight, Mapping):
        return _class_weight_from_dict(class_weight, n_classes)
    w = _float_weights("class_weight", class_weight)
    if w.shape != (n_classes,):
        raise ValueError(f"class_weight: expected one weight per class, shape ({n_classes},), got shape {w.shape}")
    return np.ascontiguousarray(w)


def _class_weight_from_dict(mapping: Mapping, n_classes: int) -> np.ndarray:
    """Keras's ``{class: weight}``: classes left out weigh 1."""
    w = np.ones(n_classes)
    for key, value in mapping.items():
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
            raise TypeError(f"class_weight: expected int class indices as dict keys, got key {key!r}")
        if not 0 <= key < n_classes:
            raise ValueError(f"class_weight: expected dict keys in [0, {n_classes}), got key {key}")
        w[int(key)] = _real(f"class_weight[{key}]", value)
    return w


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


def coerce_sample_weight(sample_weight, layout: RowLayout, source: str = "y_pred's shape without its class axis"):
    """A float scalar, or the ``(O, I)`` row grid of weights in float64 (``source``:
    where the per-sample shape comes from, in messages)."""
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
                f"({source}), got shape {w.shape}"
            )
    return layout.view2(w)


# --------------------------------------------------------------------------- grad_out


def check_grad_out(grad_out, y_pred: np.ndarray, dtype: np.dtype, callers: tuple):
    """Check the caller's gradient buffer; return ``(buffer, in_place)``.

    ``y_pred`` and ``callers`` (``(name, value)`` pairs) are the caller's own
    arguments, before any conversion: overlap is a property of their memory, which
    a converted copy no longer shares.
    """
    if type(grad_out) is not np.ndarray:
        raise TypeError(f"grad_out: expected a NumPy array, got {type(grad_out).__name__}")
    if grad_out.shape != y_pred.shape:
        raise ValueError(f"grad_out: expected y_pred's shape {y_pred.shape}, got shape {grad_out.shape}")
    if grad_out.dtype != dtype and not (_is_bfloat16(y_pred.dtype) and grad_out.dtype == y_pred.dtype):
        also = " or bfloat16" if _is_bfloat16(y_pred.dtype) else ""
        raise ValueError(
            f"grad_out: expected dtype {dtype}{also} (the gradient's dtype for {y_pred.dtype} y_pred), "
            f"got dtype {grad_out.dtype}"
        )
    if not grad_out.flags.writeable:
        raise ValueError("grad_out: expected a writeable array, got a read-only one")
    if _overlaps_itself(grad_out):
        raise ValueError(
            "grad_out: expected an array whose elements do not overlap, got one whose strides "
            f"{grad_out.strides} make several elements share memory (e.g. a broadcast view)"
        )
    in_place = _same_view(grad_out, y_pred)
    if not in_place and np.may_share_memory(grad_out, y_pred):
        raise ValueError(
            "grad_out: expected y_pred itself (in place) or memory that does not overlap it, "
            "got a different view of y_pred's memory"
        )
    for name, value in callers:
        if value is None or isinstance(value, (numbers.Number, Mapping)):
            continue
        other = np.asarray(value.data if isinstance(value, np.ma.MaskedArray) else value)
        if np.may_share_memory(grad_out, other):
            raise ValueError(f"grad_out: expected memory that does not overlap {name}, got an overlapping array")
    return grad_out, in_place


def _same_view(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        and a.strides == b.strides
        and a.shape == b.shape
        and a.dtype == b.dtype
    )


def _overlaps_itself(a: np.ndarray) -> bool:
    """Whether two elements of ``a`` share memory (zero or interleaved strides).

    Sorted by stride, each axis must step past everything the smaller ones span:
    enough for every layout NumPy creates; a layout that fails it is checked
    element by element."""
    dims = sorted((abs(s), n) for s, n in zip(a.strides, a.shape) if n > 1)
    span = a.itemsize
    for stride, n in dims:
        if stride < span:
            break
        span += stride * (n - 1)
    else:
        return False
    if a.size > 1 << 22:
        return True  # too large to list: refuse what the quick test could not clear
    offsets = np.zeros(1, dtype=np.int64)
    for s, n in zip(a.strides, a.shape):
        offsets = (offsets[:, None] + s * np.arange(n, dtype=np.int64)).ravel()
    offsets.sort()
    return bool((np.diff(offsets) < a.itemsize).any())


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
    z_loss=0.0,
    logit_softcap=None,
    return_lse=False,
    want_rank=False,
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
    ignore_index = check_ignore_index(ignore_index)
    z_loss, softcap, return_lse = check_logit_options(from_logits, z_loss, logit_softcap, return_lse)

    y_pred = as_array(y_pred, "y_pred")
    y_true = as_array(y_true, "y_true")
    check_not_swapped(y_true.dtype, y_pred.dtype)
    x_full = coerce_y_pred(y_pred)
    if not from_logits:
        check_epsilon_fits(eps, x_full.dtype)
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
    else:
        aux = layout.view3(coerce_targets(y_true, x_full, kind))

    cw = coerce_class_weight(class_weight, layout.classes) if kind != "binary" else None
    pw = coerce_pos_weight(pos_weight, layout) if kind == "binary" else None
    sw = coerce_sample_weight(sample_weight, layout)
    rdt = result_dtype_of(x_full)

    gbuf, gview, in_place = None, None, False
    if grad_out is not None:
        if not return_grad:
            raise ValueError("grad_out: given without return_grad=True; pass return_grad=True to get the gradient")
        callers = (("y_true", y_true), ("class_weight", class_weight), ("pos_weight", pos_weight),
                   ("sample_weight", sample_weight))  # fmt: skip
        gbuf, in_place = check_grad_out(grad_out, y_pred, rdt, callers)
        gview = strict_view3(layout, gbuf)

    x = layout.view3(x_full)
    if from_logits and kind != "binary":
        warn_if_probabilities(x)
    return Problem(
        kind=kind,
        from_logits=from_logits,
        layout=layout,
        axis=ax,
        x=x,
        aux=aux,
        class_weight=cw,
        pos_weight=pw,
        sample_weight=sw,
        label_smoothing=ls,
        ignore_index=ignore_index,
        epsilon=eps,
        reduction=red,
        return_grad=return_grad,
        grad_out=gbuf,
        grad_view=gview,
        in_place=in_place,
        result_dtype=rdt,
        backend=backend,
        threads=threads,
        z_loss=z_loss,
        softcap=softcap,
        return_lse=return_lse,
        want_rank=bool(want_rank),
    )
