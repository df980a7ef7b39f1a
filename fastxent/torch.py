"""PyTorch's cross-entropy losses on fastxent's fused kernels, for CPU tensors.

``import fastxent.torch`` explicitly (``import fastxent`` never imports torch). The
functions take ``torch.nn.functional``'s names, argument order (``input, target``),
defaults and semantics, and the modules ``torch.nn``'s:

- :func:`cross_entropy` / :class:`CrossEntropyLoss`: logits against class indices
  (an integer ``target``) or class probabilities (a floating ``target`` of
  ``input``'s shape); ``weight``, ``ignore_index``, ``label_smoothing``; the class
  axis is 1 for ``(N, C, d1, ...)`` input and 0 for unbatched ``(C,)`` input.
- :func:`binary_cross_entropy_with_logits` / :class:`BCEWithLogitsLoss`: with
  ``weight`` (element-wise, broadcast to ``input``) and ``pos_weight``.
- :func:`binary_cross_entropy` / :class:`BCELoss`: from probabilities, with PyTorch's
  log clamp at -100 (see its docstring for how that is kept).

Each call is a ``torch.autograd.Function``: its forward runs the fused kernel once,
for the loss and the gradient together (only the loss when no gradient is needed),
and keeps the gradient; its backward returns ``grad_output`` times that gradient
(for ``reduction="none"``, each sample's gradient scaled by its own
``grad_output``). CPU tensors of dtype float32, float64, float16 and bfloat16
(bfloat16 through ``ml_dtypes``) reach the kernels without a copy (see
``fastxent._interop``); a tensor on another device or of another dtype raises an
error naming the argument. There is no ``nll_loss``: on log-probabilities it is a
gather, which torch does as fast.

Where these differ from torch (all documented in the functions' docstrings):
``target`` may be any integer dtype (torch: int64 or uint8); binary targets outside
[0, 1] are an error (torch computes the formula); ``pos_weight`` may vary along one
axis only; no second derivatives; no gradient for ``weight``/``pos_weight``.

>>> import torch, fastxent.torch
>>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], requires_grad=True)
>>> loss = fastxent.torch.cross_entropy(logits, torch.tensor([0, 2]))
>>> loss.backward()
>>> print(round(loss.item(), 6), logits.grad.abs().sum().item() > 0)
0.205579 True
"""

from __future__ import annotations

import functools
import re

import numpy as np

try:
    import torch
except ImportError as exc:  # an optional dependency
    raise ImportError("fastxent.torch needs PyTorch: pip install torch") from exc
from torch.autograd.function import once_differentiable

import fastxent as _fx

from ._interop import as_array

__all__ = [
    "cross_entropy",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy",
    "CrossEntropyLoss",
    "BCEWithLogitsLoss",
    "BCELoss",
]

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_OUR_REDUCTION = {"none": "none", "sum": "sum", "mean": "mean"}

#: binary_cross_entropy: inside [_BCE_EPS, 1 - _BCE_EPS] the kernel's clip does nothing
#: and torch's clamps neither (log p > -100) nor its gradient's max(p(1-p), 1e-12):
#: the two agree there. Both bounds are exact in float32 and float64.
_BCE_EPS = 2.0**-24
#: torch's floor of p(1 - p) in binary_cross_entropy's gradient: 1e-12 held in a float.
_TORCH_BCE_FLOOR = float(np.float32(1e-12))


# --------------------------------------------------------------------------- the Function


class _FusedLoss(torch.autograd.Function):
    """A loss whose forward runs the fused kernel once and keeps the gradient.

    ``plan`` (a :class:`_Plan`) holds NumPy views of the tensors and runs the kernel;
    ``backward`` scales the kept gradient by ``grad_output`` in place and hands it
    over (no second N x C array; not even a pass when ``grad_output`` is 1, as after
    ``loss.backward()``). A later backward through the same graph
    (``retain_graph=True``) computes the gradient again, from the saved inputs.
    """

    @staticmethod
    def forward(ctx, input, target, plan):
        value, grad = plan.run(need_grad=ctx.needs_input_grad[0])
        ctx.plan, ctx.grad = plan, grad
        ctx.save_for_backward(input, target)  # no copy; torch checks they are not modified
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        plan = ctx.plan
        grad_input = grad_target = None
        if ctx.needs_input_grad[0]:
            grad = ctx.grad
            ctx.grad = None  # handed over: autograd may keep it as the leaf's .grad
            if grad is None:
                ctx.saved_tensors  # raises if an input was modified in place since forward
                grad = plan.run(need_grad=True)[1]
            if grad_output.dim() or grad_output.item() != 1.0:
                grad.mul_(plan.per_element(grad_output))
            grad_input = grad.to(plan.input_dtype)
        if ctx.needs_input_grad[1]:
            input, target = ctx.saved_tensors
            grad_target = plan.target_grad(input, target, grad_output)
        return grad_input, grad_target, None


class _CrossEntropy(_FusedLoss):
    pass


class _BinaryCrossEntropyWithLogits(_FusedLoss):
    pass


class _BinaryCrossEntropy(_FusedLoss):
    pass


def _apply(function, input, target, plan):
    """Record the Function when a gradient is wanted; otherwise just the loss."""
    wants_grad = torch.is_grad_enabled() and (input.requires_grad or target.requires_grad)
    if wants_grad:
        return function.apply(input, target, plan)
    return plan.run(need_grad=False)[0]


class _Plan:
    """One call's arrays and options; ``run`` calls the kernel, the rest serve backward."""

    input_dtype: torch.dtype
    reduction: str
    class_dim: int | None  # None: element-wise losses

    def run(self, need_grad: bool):
        raise NotImplementedError

    def per_element(self, grad_output):
        """``grad_output`` broadcastable to ``input``'s shape."""
        if self.reduction == "none" and self.class_dim is not None:
            return grad_output.unsqueeze(self.class_dim)
        return grad_output

    def target_grad(self, input, target, grad_output):
        raise RuntimeError(f"{type(self).__name__}: target does not take a gradient")

    def _scale(self, grad_output, count):
        """``grad_output`` as the factor of each element's loss in the returned value."""
        g = self.per_element(grad_output)
        return g / count if self.reduction == "mean" else g


def _result(value, dtype) -> torch.Tensor:
    result = torch.from_numpy(np.asarray(value))
    return result if result.dtype == dtype else result.to(dtype)


# --------------------------------------------------------------------------- cross_entropy


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """``torch.nn.functional.cross_entropy`` on the fused kernels (CPU tensors).

    ``input``: logits, ``(C,)`` or ``(N, C, d1, ...)``, class axis 0 or 1.
    ``target``: class indices (an integer tensor of ``input``'s shape without the
    class axis) or class probabilities (a floating tensor of ``input``'s shape).

    - ``weight`` (length C) weighs each class. ``reduction="mean"`` divides by the
      sum of the weights of the non-ignored targets, as torch does (so 0 of them
      gives NaN, as torch); with probability targets it divides by the number of
      samples (``N * d1 * ...``), whatever the weights, as torch does.
    - ``ignore_index`` (any integer, default -100): targets equal to it give loss 0,
      gradient 0 and leave the mean. With probability targets only the default is
      accepted, as in torch.
    - ``label_smoothing`` mixes the target with the uniform distribution: torch's
      formula, also for probability targets.

    Differences from torch: ``target`` may be of any integer dtype (torch takes
    int64 and uint8); a ``target`` that requires a gradient gets one with
    probability targets (as torch), ``weight`` never (torch neither).

    >>> import torch, fastxent.torch
    >>> x = torch.tensor([[1.0, 2.0, 0.5], [0.3, 0.2, 2.0]], requires_grad=True)
    >>> y = torch.tensor([1, -100])
    >>> loss = fastxent.torch.cross_entropy(x, y, label_smoothing=0.1)
    >>> loss.backward()
    >>> print(round(loss.item(), 5), x.grad[1].tolist())
    0.5477 [0.0, 0.0, 0.0]
    """
    _check_reduction(reduction)
    _check_input(input)
    _check_tensor("target", target)
    _check_option_tensor("weight", weight)
    class_dim = 0 if input.dim() == 1 else 1
    if target.dtype.is_floating_point:
        plan = _ProbabilityTargets(input, target, weight, ignore_index, reduction, label_smoothing, class_dim)
    else:
        plan = _ClassIndices(input, target, weight, ignore_index, reduction, label_smoothing, class_dim)
    return _apply(_CrossEntropy, input, target, plan)


class _ClassIndices(_Plan):
    def __init__(self, input, target, weight, ignore_index, reduction, label_smoothing, class_dim):
        if target.dtype == torch.bool or target.is_complex():
            raise TypeError(
                f"target: expected class indices (an integer tensor) or class probabilities "
                f"(a floating tensor of input's shape), got dtype {target.dtype}"
            )
        expected = input.shape[:class_dim] + input.shape[class_dim + 1 :]
        if target.shape != expected:
            raise ValueError(
                f"target: expected class indices of shape {tuple(expected)} (input's shape "
                f"{tuple(input.shape)} without its class axis {class_dim}), got shape {tuple(target.shape)}"
            )
        self.input_dtype, self.reduction, self.class_dim = input.dtype, reduction, class_dim
        self.x = as_array(input, "input")
        self.labels = as_array(target, "target")
        self.weight = None if weight is None else as_array(weight, "weight")
        self.ignore = _ignore_value(self.labels.dtype, ignore_index)
        self.label_smoothing = label_smoothing

    def _call(self, reduction, need_grad):
        with _torch_names():
            return _fx.sparse_categorical_crossentropy(
                self.labels, self.x, from_logits=True, axis=self.class_dim, ignore_index=self.ignore,
                class_weight=self.weight, label_smoothing=self.label_smoothing, reduction=reduction,
                return_grad=need_grad,
            )  # fmt: skip

    def run(self, need_grad):
        # torch's mean is fastxent's weighted_mean (the total weight of the targets
        # kept); without weights that is the plain mean, which has a compiled fast path.
        if self.reduction == "mean" and self.weight is not None:
            reduction = "weighted_mean"
        else:
            reduction = _OUR_REDUCTION[self.reduction]
        value, grad = _split(self._call(reduction, need_grad), need_grad)
        if self.reduction == "mean" and value == 0 and self._total_weight() == 0:
            value, grad = self._divide_by_zero(need_grad)
        return _result(value, self.input_dtype), _tensor_or_none(grad)

    def _kept(self) -> np.ndarray:
        if self.ignore is None:
            return np.ones(self.labels.shape, dtype=bool)
        return self.labels != self.ignore

    def _total_weight(self) -> float:
        kept = self._kept()
        if self.weight is None:
            return float(np.count_nonzero(kept))
        return float(np.take(self.weight.astype(np.float64), self.labels[kept]).sum())

    def _divide_by_zero(self, need_grad):
        """torch's mean when the kept targets weigh 0 in total (all ignored, an empty
        batch, zero weights): the sum divided by 0 (NaN, or +-inf), and the gradient of
        the kept rows divided by 0 (ignored rows keep 0)."""
        total, grad = _split(self._call("sum", need_grad), need_grad)
        with np.errstate(divide="ignore", invalid="ignore"):
            value = np.float64(total) / 0.0
            if grad is not None:
                grad = grad / 0.0
                kept = np.expand_dims(self._kept(), self.class_dim)
                grad = np.where(kept, grad, 0.0).astype(grad.dtype)
        return value, grad


class _ProbabilityTargets(_Plan):
    def __init__(self, input, target, weight, ignore_index, reduction, label_smoothing, class_dim):
        if target.shape != input.shape:
            raise ValueError(
                f"target: expected class probabilities of input's shape {tuple(input.shape)} "
                f"(or an integer tensor of class indices), got a floating tensor of shape {tuple(target.shape)}"
            )
        if ignore_index != -100:
            raise ValueError(
                f"ignore_index: not supported with class probabilities (a floating target), as in torch; "
                f"got {ignore_index!r}"
            )
        _check_dtype("target", target)
        self.input_dtype, self.reduction, self.class_dim = input.dtype, reduction, class_dim
        self.x = as_array(input, "input")
        self.t = _targets(target)
        self.weight = None if weight is None else as_array(weight, "weight")
        self.weight_tensor = weight
        self.label_smoothing = label_smoothing
        self.count = input.numel() // max(input.shape[class_dim], 1)

    def run(self, need_grad):
        with _torch_names():
            out = _fx.categorical_crossentropy(
                self.t, self.x, from_logits=True, axis=self.class_dim, class_weight=self.weight,
                label_smoothing=self.label_smoothing, reduction=_OUR_REDUCTION[self.reduction],
                return_grad=need_grad,
            )  # fmt: skip
        value, grad = _split(out, need_grad)
        if self.reduction == "mean" and self.count == 0:
            value = np.nan  # torch's mean of no samples
        return _result(value, self.input_dtype), _tensor_or_none(grad)

    def target_grad(self, input, target, grad_output):
        # d loss / d t_c = -(1 - ls) * w_c * log_softmax(x)_c, times each sample's factor.
        log_q = torch.log_softmax(input.detach().to(_compute_dtype(input.dtype)), self.class_dim)
        if self.weight_tensor is not None:
            shape = [1] * input.dim()
            shape[self.class_dim] = -1
            log_q = log_q * self.weight_tensor.detach().to(log_q.dtype).reshape(shape)
        grad = -(1.0 - self.label_smoothing) * log_q * self._scale(grad_output, self.count)
        return grad.to(target.dtype)


def _ignore_value(dtype: np.dtype, ignore_index):
    """``ignore_index`` for labels of ``dtype``: None when no label of that dtype can
    equal it (torch compares the values as int64; fastxent would wrap it into the
    dtype, e.g. -100 into 156 for uint8)."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index: expected an int, got {ignore_index!r}")
    if dtype.kind not in "iu":
        return int(ignore_index)
    low, high = _integer_range(dtype)
    return int(ignore_index) if low <= ignore_index <= high else None


@functools.lru_cache(maxsize=None)
def _integer_range(dtype: np.dtype) -> tuple:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


# --------------------------------------------------------------------------- binary, logits


def binary_cross_entropy_with_logits(input, target, weight=None, pos_weight=None, reduction="mean"):
    """``torch.nn.functional.binary_cross_entropy_with_logits`` on the fused kernels.

    Element-wise ``w * ((1 - t) * x + (1 + (pw - 1) * t) * softplus(-x))``, computed
    stably (no sigmoid, no clip). ``weight`` is broadcast to ``input``'s shape;
    ``pos_weight`` is broadcast to it as well, usually one value per class along the
    last dimension. ``reduction="mean"`` divides by the number of elements (NaN for
    none, as torch).

    Differences from torch: ``target`` values outside [0, 1] are an error (torch
    evaluates the formula); ``pos_weight`` may vary along one dimension only
    (along another than the last, ``input`` is copied once); ``weight`` and
    ``pos_weight`` take no gradient.

    >>> import torch, fastxent.torch
    >>> z = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.2, 4.0]], requires_grad=True)
    >>> t = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    >>> loss = fastxent.torch.binary_cross_entropy_with_logits(z, t, pos_weight=torch.tensor([1.0, 1.0, 3.0]))
    >>> loss.backward()
    >>> print(round(loss.item(), 6), tuple(z.grad.shape))
    0.460599 (2, 3)
    """
    _check_reduction(reduction)
    _check_input(input)
    _check_option_tensor("weight", weight)
    _check_option_tensor("pos_weight", pos_weight)
    plan = _BinaryLogits(input, target, weight, pos_weight, reduction)
    return _apply(_BinaryCrossEntropyWithLogits, input, target, plan)


class _Binary(_Plan):
    """Element-wise binary losses (every element its own sample)."""

    class_dim = None

    def __init__(self, input, target, weight, reduction):
        _check_tensor("target", target)
        if target.shape != input.shape:
            raise ValueError(
                f"target: expected input's shape {tuple(input.shape)} (as torch), got shape {tuple(target.shape)}"
            )
        _check_dtype("target", target, allow_integer=True)
        self.input_dtype, self.reduction = input.dtype, reduction
        self.shape = tuple(input.shape)
        self.x = as_array(input, "input")
        self.t = _targets(target)
        self.weight = None if weight is None else _broadcast("weight", as_array(weight, "weight"), self.shape)
        self.weight_tensor = None if weight is None else weight.detach().expand(self.shape)
        self.count = input.numel()

    def _reduced(self, value):
        if self.reduction == "mean" and self.count == 0:
            return np.nan  # torch's mean of no elements
        return value


class _BinaryLogits(_Binary):
    def __init__(self, input, target, weight, pos_weight, reduction):
        super().__init__(input, target, weight, reduction)
        self.pos_weight, self.pos_axis = None, None
        if pos_weight is not None:
            self.pos_weight, self.pos_axis = _pos_weight_axis(as_array(pos_weight, "pos_weight"), self.shape)

    def run(self, need_grad):
        x, t, w, order = self.x, self.t, self.weight, None
        if self.pos_axis is not None and self.pos_axis != len(self.shape) - 1:
            # fastxent takes a per-label pos_weight along the last axis: move that axis there.
            order = [a for a in range(len(self.shape)) if a != self.pos_axis] + [self.pos_axis]
            x, t = x.transpose(order), t.transpose(order)
            w = None if w is None else w.transpose(order)
        with _torch_names():
            out = _fx.binary_crossentropy(
                t, x, from_logits=True, pos_weight=self.pos_weight, sample_weight=w, axis=None,
                reduction=_OUR_REDUCTION[self.reduction], return_grad=need_grad,
            )  # fmt: skip
        value, grad = _split(out, need_grad)
        if order is not None:
            back = np.argsort(order)
            grad = None if grad is None else grad.transpose(back)
            value = value.transpose(back) if self.reduction == "none" else value
        return _result(self._reduced(value), self.input_dtype), _tensor_or_none(grad)

    def target_grad(self, input, target, grad_output):
        # d/dt of (1 - t) x + (1 + (pw - 1) t) softplus(-x), times w and the factor.
        x = input.detach().to(_compute_dtype(input.dtype))
        grad = -x
        if self.pos_weight is not None:
            pw = torch.as_tensor(np.asarray(self.pos_weight), dtype=x.dtype)
            if pw.dim():
                shape = [1] * x.dim()
                shape[self.pos_axis] = -1
                pw = pw.reshape(shape)
            grad = grad + (pw - 1) * torch.nn.functional.softplus(-x)
        return _weighted_target_grad(self, grad, grad_output, target.dtype)


def _pos_weight_axis(pw: np.ndarray, shape: tuple):
    """``pos_weight`` as fastxent takes it: a scalar, or a vector along one axis of
    ``input`` (returned with that axis). torch broadcasts it to ``input``'s shape."""
    if pw.ndim > len(shape) or _broadcast_shape(pw.shape, shape) != shape:
        raise ValueError(
            f"pos_weight: expected a tensor broadcastable to input's shape {shape}, got shape {pw.shape}"
        )
    pw = pw.astype(np.float64)
    offset = len(shape) - pw.ndim
    varying = [offset + k for k, n in enumerate(pw.shape) if n != 1]
    if not varying:
        return pw.reshape(()), None
    if len(varying) > 1:
        raise ValueError(
            f"pos_weight: expected values that vary along one dimension of input (e.g. shape "
            f"({shape[-1]},) for the last); got shape {pw.shape} against input's shape {shape}"
        )
    return pw.reshape(-1), varying[0]


# --------------------------------------------------------------------------- binary, probabilities


def binary_cross_entropy(input, target, weight=None, reduction="mean"):
    """``torch.nn.functional.binary_cross_entropy`` (from probabilities) on the fused kernels.

    Element-wise ``-w * (t * log p + (1 - t) * log(1 - p))`` with torch's clamp of each
    log at -100, and torch's gradient ``w * (p - t) / max(p * (1 - p), 1e-12)``.
    ``weight`` is broadcast to ``input``'s shape; ``reduction="mean"`` divides by the
    number of elements.

    How torch's clamp is kept: fastxent clips probabilities to ``[eps, 1 - eps]``
    instead. Inside ``[2**-24, 1 - 2**-24]`` neither the clip nor torch's clamps
    act, so the kernel runs with that ``eps`` and gives torch's numbers. When any
    probability lies outside (found by one ``aminmax`` pass), the kernel's
    per-element losses and gradient are replaced there by torch's formulas and
    reduced here (the call then writes per-element losses). So ``p = 0`` with
    target 1 costs 100, as in torch, not ``-log(1e-7)`` as in
    ``fastxent.binary_crossentropy``.

    Errors as torch: probabilities and targets outside [0, 1], and NaN
    probabilities, raise (a ``ValueError`` naming the argument and a position).

    >>> import torch, fastxent.torch
    >>> p = torch.tensor([0.9, 0.2, 0.0], requires_grad=True)
    >>> t = torch.tensor([1.0, 0.0, 1.0])
    >>> loss = fastxent.torch.binary_cross_entropy(p, t, reduction="none")
    >>> print([round(v, 4) for v in loss.tolist()])
    [0.1054, 0.2231, 100.0]
    """
    _check_reduction(reduction)
    _check_input(input)
    _check_option_tensor("weight", weight)
    plan = _BinaryProbabilities(input, target, weight, reduction)
    return _apply(_BinaryCrossEntropy, input, target, plan)


class _BinaryProbabilities(_Binary):
    def __init__(self, input, target, weight, reduction):
        super().__init__(input, target, weight, reduction)
        self.input, self.target = input.detach(), target.detach()

    def _call(self, reduction, need_grad):
        with _torch_names():
            out = _fx.binary_crossentropy(
                self.t, self.x, sample_weight=self.weight, axis=None, epsilon=_BCE_EPS,
                reduction=reduction, return_grad=need_grad,
            )  # fmt: skip
        return _split(out, need_grad)

    def run(self, need_grad):
        outside = self._outside_clip()
        if outside is None:
            value, grad = self._call(_OUR_REDUCTION[self.reduction], need_grad)
            return _result(self._reduced(value), self.input_dtype), _tensor_or_none(grad)
        losses, grad = self._call("none", need_grad)  # checks the ranges first
        losses, grad = torch.from_numpy(losses), _tensor_or_none(grad)
        if grad is not None and self.reduction == "mean":
            grad.div_(self.count)  # the kernel's gradient is of the sum
        p, t = self._compute(self.input)[outside], self._compute(self.target)[outside]
        w = None if self.weight_tensor is None else self._compute(self.weight_tensor)[outside]
        # torch's formulas: each log clamped at -100, the gradient's denominator at 1e-12.
        loss = -(t * torch.clamp(torch.log(p), min=-100) + (1 - t) * torch.clamp(torch.log(1 - p), min=-100))
        losses[outside] = (loss if w is None else loss * w).to(losses.dtype)
        if grad is not None:
            g = (p - t) / torch.clamp((1 - p) * p, min=_TORCH_BCE_FLOOR)
            g = g if w is None else g * w
            grad[outside] = (g / self.count if self.reduction == "mean" else g).to(grad.dtype)
        if self.reduction == "none":
            value = losses
        else:
            value = losses.sum(dtype=torch.float64)
            value = value / self.count if self.reduction == "mean" else value
        return value.to(self.input_dtype), grad

    def _compute(self, tensor):
        return tensor.to(_compute_dtype(self.input_dtype))

    def _outside_clip(self):
        """The mask of probabilities outside ``[eps, 1 - eps]``, or None when there is
        none (one min/max pass; the mask only when one is found). NaN raises, as torch."""
        if self.count == 0:
            return None
        lo, hi = torch.aminmax(self.input)
        lo, hi = float(lo), float(hi)
        if lo != lo or hi != hi:
            where = tuple(int(k) for k in torch.nonzero(torch.isnan(self.input))[0])
            raise ValueError(f"input: expected probabilities in [0, 1] (as torch), got nan at position {where}")
        if lo >= _BCE_EPS and hi <= 1.0 - _BCE_EPS:
            return None
        return (self.input < _BCE_EPS) | (self.input > 1.0 - _BCE_EPS)

    def target_grad(self, input, target, grad_output):
        # d/dt of -(t log p + (1 - t) log(1 - p)); torch leaves these logs unclamped.
        p = input.detach().to(_compute_dtype(input.dtype))
        grad = torch.log(1 - p) - torch.log(p)
        return _weighted_target_grad(self, grad, grad_output, target.dtype)


def _weighted_target_grad(plan: _Binary, grad, grad_output, dtype):
    if plan.weight_tensor is not None:
        grad = grad * plan.weight_tensor.to(grad.dtype)
    return (grad * plan._scale(grad_output, plan.count)).to(dtype)


# --------------------------------------------------------------------------- modules


class CrossEntropyLoss(torch.nn.Module):
    """``torch.nn.CrossEntropyLoss`` on :func:`cross_entropy` (``weight`` is a buffer).

    >>> import torch, fastxent.torch
    >>> loss_fn = fastxent.torch.CrossEntropyLoss(label_smoothing=0.1)
    >>> print(round(loss_fn(torch.tensor([[2.0, 0.0]]), torch.tensor([0])).item(), 6))
    0.226928
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__()
        _check_reduction(reduction)
        self.register_buffer("weight", weight)
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing

    def forward(self, input, target):
        return cross_entropy(input, target, self.weight, self.ignore_index, self.reduction, self.label_smoothing)


class BCEWithLogitsLoss(torch.nn.Module):
    """``torch.nn.BCEWithLogitsLoss`` on :func:`binary_cross_entropy_with_logits`.

    >>> import torch, fastxent.torch
    >>> loss_fn = fastxent.torch.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0]))
    >>> print(round(loss_fn(torch.tensor([[0.0]]), torch.tensor([[1.0]])).item(), 6))
    1.386294
    """

    def __init__(self, weight=None, reduction="mean", pos_weight=None):
        super().__init__()
        _check_reduction(reduction)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)
        self.reduction = reduction

    def forward(self, input, target):
        return binary_cross_entropy_with_logits(input, target, self.weight, self.pos_weight, self.reduction)


class BCELoss(torch.nn.Module):
    """``torch.nn.BCELoss`` on :func:`binary_cross_entropy`.

    >>> import torch, fastxent.torch
    >>> print(round(fastxent.torch.BCELoss()(torch.tensor([0.25]), torch.tensor([0.0])).item(), 6))
    0.287682
    """

    def __init__(self, weight=None, reduction="mean"):
        super().__init__()
        _check_reduction(reduction)
        self.register_buffer("weight", weight)
        self.reduction = reduction

    def forward(self, input, target):
        return binary_cross_entropy(input, target, self.weight, self.reduction)


# --------------------------------------------------------------------------- checks and helpers


def _check_reduction(reduction) -> None:
    if reduction not in _OUR_REDUCTION:
        raise ValueError(f"reduction: expected 'none', 'mean' or 'sum' (as torch), got {reduction!r}")


def _check_tensor(name: str, value) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if not value.is_cpu:
        raise ValueError(
            f"{name}: expected a tensor on the CPU, got one on device {value.device} "
            "(fastxent.torch runs on the CPU; use torch.nn.functional on that device)"
        )


def _check_dtype(name: str, value, allow_integer: bool = False) -> None:
    if value.dtype in _FLOAT_DTYPES:
        return
    if allow_integer and not value.dtype.is_floating_point and not value.is_complex():
        return
    raise TypeError(f"{name}: expected a float32, float64, float16 or bfloat16 tensor, got dtype {value.dtype}")


def _check_input(input) -> None:
    _check_tensor("input", input)
    _check_dtype("input", input)
    if input.dim() == 0:
        raise ValueError("input: expected at least 1 dimension, got a 0-dimensional tensor")


def _check_option_tensor(name: str, value) -> None:
    if value is None:
        return
    _check_tensor(name, value)
    if value.requires_grad:
        raise ValueError(
            f"{name}: expected a tensor that does not require a gradient (fastxent.torch computes "
            f"none for {name}); pass {name}.detach()"
        )


def _broadcast(name: str, w: np.ndarray, shape: tuple) -> np.ndarray:
    """``w`` in float64, broadcast to ``shape`` (a stride-0 view; converted first so
    the conversion copies only ``w`` itself)."""
    if w.ndim > len(shape) or _broadcast_shape(w.shape, shape) != shape:
        raise ValueError(f"{name}: expected a tensor broadcastable to input's shape {shape}, got shape {w.shape}")
    return np.broadcast_to(w.astype(np.float64, copy=False), shape)


def _broadcast_shape(a: tuple, b: tuple):
    try:
        return np.broadcast_shapes(a, b)
    except ValueError:
        return None


def _targets(target) -> np.ndarray:
    """Dense targets as an array: without a copy, except bfloat16 targets, which
    fastxent does not read yet (converted once to float32)."""
    if target.dtype == torch.bfloat16:
        target = target.float()
    return as_array(target, "target")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _split(out, need_grad: bool):
    return out if need_grad else (out, None)


def _tensor_or_none(grad):
    return None if grad is None else torch.from_numpy(grad)


_RENAMES = {"y_pred": "input", "y_true": "target", "class_weight": "weight", "sample_weight": "weight"}
_NAME_PATTERN = re.compile(r"\b(" + "|".join(_RENAMES) + r")\b")


class _torch_names:
    """Re-raise fastxent's errors about the data (label range, probability range,
    weight lengths) with torch's argument names: ``input``, ``target``, ``weight``."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind not in (ValueError, TypeError):
            return False
        message = _NAME_PATTERN.sub(lambda m: _RENAMES[m.group(1)], str(exc))
        message = message.replace(" (from_logits=False)", "")
        message = message.replace("pass from_logits=True", "use binary_cross_entropy_with_logits")
        raise kind(message) from None
