"""The three public losses and the pipeline they share.

validate (``_validate``) -> plan (``_dispatch``) -> kernel arguments and run
(``_execute``) -> kernel (``backends``) -> reduce (``_reduce``). A plain sparse call
whose signature is already planned runs the same plan compiled (``_fastcall.pyx``).
Formulas and options are documented in the README and in ``backends/KERNELS.md``.
"""

from __future__ import annotations

import inspect

import numpy as np

from . import _reduce
from ._dispatch import choose
from ._execute import execute, kernel_sums
from ._validate import Problem, build_problem

try:  # the compiled form of plain sparse calls (see _fastcall.pyx)
    from ._fastcall import sparse_call as _fast_sparse
except ImportError:  # a source tree without the extension: the general path only
    _fast_sparse = None

_PARAMETERS = """
    Parameters
    ----------
    y_true, y_pred : array_like
        Targets and predictions (``y_true`` first, as Keras). Anything
        ``np.asarray`` accepts; inputs are never modified.
    from_logits : bool
        ``y_pred`` holds logits (True) or probabilities (False, range-checked).
    label_smoothing : float in [0, 1]
    sample_weight : None, scalar, or array of the per-sample shape
        (``y_pred``'s shape without ``axis``; a trailing size-1 axis is squeezed).
    axis : int
        The class axis (label axis for binary). Any axis works without a copy.
    reduction : {"mean", "sum", "none", "weighted_mean"} or None
        ``"mean"`` (alias ``"sum_over_batch_size"``) divides by the number of
        non-ignored samples (Keras); ``"weighted_mean"`` (alias
        ``"mean_with_sample_weight"``) by their total weight (PyTorch, scikit-learn);
        ``"none"``/None returns per-sample losses times ``sample_weight``.
    epsilon : float in (0, 0.5)
        Clip bound for probabilities, formed in the compute dtype.
    return_grad : bool
        Also return the gradient of the returned loss (for ``"none"``, of its sum)
        with respect to ``y_pred``.
    grad_out : ndarray, optional
        Where to write the gradient (``y_pred``'s shape, float32 or float64 as the
        result). Pass ``y_pred`` itself to overwrite the logits in place.
    backend : {"auto", "numpy", "numba", "cython"}
    threads : int >= 1, optional
        Defaults to every core the process may use.

    Returns
    -------
    loss : NumPy scalar, or ndarray for ``reduction="none"``
        float64 for float64 ``y_pred``, float32 otherwise.
    grad : ndarray, only with ``return_grad=True``

    Raises
    ------
    ValueError, TypeError
        Before any work, for any bad input; the message names the argument, what
        was expected and what was given.
    RuntimeError
        When the requested backend cannot run the call.
"""


def _document(extra: str):
    """Append the shared parameter docs, with the loss's own ``extra`` entries."""

    def decorate(fn):
        head, sep, tail = _PARAMETERS.partition("    from_logits : bool")
        fn.__doc__ = fn.__doc__.rstrip() + "\n" + head + extra + sep + tail
        return fn

    return decorate


@_document(
    """    ignore_index : int, optional
        Samples whose label equals it give loss 0, gradient 0, and are left out of
        the mean (any integer, e.g. -100 as PyTorch).
    class_weight : array of length C, or dict {class: weight}, optional
        Weight ``w_c`` of each class (classes a dict leaves out weigh 1).
    z_loss : float >= 0
        From logits: adds ``z_loss * logsumexp(x)**2`` to each sample's loss (PaLM's
        z-loss, e.g. 1e-4), and its gradient.
    logit_softcap : float > 0, optional
        From logits: the loss reads ``cap * tanh(x / cap)`` (Gemma's soft cap) in place
        of each logit ``x``; the gradient is with respect to ``x``.
    return_lse : bool
        From logits: also return each sample's ``logsumexp`` (of the capped logits),
        after the loss and the gradient: ``(loss, lse)`` or ``(loss, grad, lse)``.
"""
)
def sparse_categorical_crossentropy(
    y_true,
    y_pred,
    *,
    from_logits=False,
    label_smoothing=0.0,
    ignore_index=None,
    class_weight=None,
    sample_weight=None,
    axis=-1,
    reduction="mean",
    epsilon=1e-7,
    return_grad=False,
    grad_out=None,
    z_loss=0.0,
    logit_softcap=None,
    return_lse=False,
    backend="auto",
    threads=None,
):
    """Cross-entropy of integer class labels against softmax outputs or logits.

    Never builds a one-hot matrix: from probabilities it reads one value per sample
    (``-w_y * log(clip(p[y]))``), from logits one pass per row
    (``w_y * (logsumexp(x) - x[y])``).

    >>> import numpy as np, fastxent
    >>> y_true = np.array([0, 2])
    >>> y_pred = np.array([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6]])
    >>> print(round(float(fastxent.sparse_categorical_crossentropy(y_true, y_pred)), 6))
    0.366985
    >>> logits = np.log(y_pred)
    >>> loss, grad = fastxent.sparse_categorical_crossentropy(
    ...     y_true, logits, from_logits=True, return_grad=True)
    >>> print(np.round(grad, 3))
    [[-0.1   0.05  0.05]
     [ 0.1   0.1  -0.2 ]]
    """
    if _fast_sparse is not None and z_loss == 0 and logit_softcap is None and return_lse is False:
        # a plain call already planned: the same plan, compiled (see _fastcall.pyx)
        result = _fast_sparse(y_true, y_pred, from_logits, label_smoothing, ignore_index, class_weight,
                              sample_weight, axis, reduction, epsilon, return_grad, grad_out, backend, threads)
        if result is not None:
            return result
    problem = build_problem(
        "sparse", y_true, y_pred,
        from_logits=from_logits, label_smoothing=label_smoothing, ignore_index=ignore_index,
        class_weight=class_weight, sample_weight=sample_weight, axis=axis, reduction=reduction,
        epsilon=epsilon, return_grad=return_grad, grad_out=grad_out, backend=backend, threads=threads,
        z_loss=z_loss, logit_softcap=logit_softcap, return_lse=return_lse,
    )  # fmt: skip
    return run(problem)


@_document(
    """    class_weight : array of length C, optional
        Weight ``w_c`` of each class.
"""
)
def categorical_crossentropy(
    y_true,
    y_pred,
    *,
    from_logits=False,
    label_smoothing=0.0,
    class_weight=None,
    sample_weight=None,
    axis=-1,
    reduction="mean",
    epsilon=1e-7,
    return_grad=False,
    grad_out=None,
    backend="auto",
    threads=None,
):
    """Cross-entropy of one-hot or soft targets against softmax outputs or logits.

    ``l = -sum_c w_c * t_c * log q_c`` with ``t = y_true * (1 - ls) + ls / C`` and
    ``log q = log_softmax(y_pred)`` (logits) or ``log(clip(y_pred, eps, 1 - eps))``.

    >>> import numpy as np, fastxent
    >>> y_true = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    >>> y_pred = np.array([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6]])
    >>> print(round(float(fastxent.categorical_crossentropy(y_true, y_pred)), 6))
    0.641638
    """
    problem = build_problem(
        "categorical", y_true, y_pred,
        from_logits=from_logits, label_smoothing=label_smoothing, class_weight=class_weight,
        sample_weight=sample_weight, axis=axis, reduction=reduction, epsilon=epsilon,
        return_grad=return_grad, grad_out=grad_out, backend=backend, threads=threads,
    )  # fmt: skip
    return run(problem)


@_document(
    """    pos_weight : scalar or array, optional
        Weight of the positive term: a scalar or one value per label along ``axis``
        (along the last axis when ``axis=None``), as PyTorch's ``pos_weight``.
"""
)
def binary_crossentropy(
    y_true,
    y_pred,
    *,
    from_logits=False,
    label_smoothing=0.0,
    pos_weight=None,
    sample_weight=None,
    axis=-1,
    reduction="mean",
    epsilon=1e-7,
    return_grad=False,
    grad_out=None,
    backend="auto",
    threads=None,
):
    """Binary cross-entropy of sigmoid outputs or logits, for binary and multi-label problems.

    The per-sample loss is the mean over the label ``axis`` of
    ``-(pw * y * log p + (1 - y) * log(1 - p))``; from logits it is computed with a
    stable softplus, never through sigmoid and clip. A 1-D ``y_pred`` is one output
    per sample; ``axis=None`` makes every element its own sample.

    >>> import numpy as np, fastxent
    >>> y_true = np.array([[1, 0], [0, 1]])
    >>> y_pred = np.array([[0.9, 0.2], [0.3, 0.6]])
    >>> print(round(float(fastxent.binary_crossentropy(y_true, y_pred)), 6))
    0.299001
    >>> print(fastxent.binary_crossentropy(y_true, y_pred, reduction="none").round(6))
    [0.164252 0.43375 ]
    """
    problem = build_problem(
        "binary", y_true, y_pred,
        from_logits=from_logits, label_smoothing=label_smoothing, pos_weight=pos_weight,
        sample_weight=sample_weight, axis=axis, reduction=reduction, epsilon=epsilon,
        return_grad=return_grad, grad_out=grad_out, backend=backend, threads=threads,
    )  # fmt: skip
    return run(problem)


LOSSES = {
    "binary": binary_crossentropy,
    "categorical": categorical_crossentropy,
    "sparse": sparse_categorical_crossentropy,
}


def run(problem: Problem):
    """Plan, run the kernel, and reduce: the part of a call after validation."""
    count, weight = _reduce.denominator_parts(problem)
    backend, threads = choose(problem)
    summed = kernel_sums(problem, backend)
    out = execute(problem, backend, threads, _reduce.denominator(problem.reduction, count, weight), summed)
    if problem.reduction == "none":
        loss = _reduce.per_sample(problem, out.loss)
    else:
        numerator = out.loss if summed else _reduce.block_sums(out.loss, problem.sample_weight)
        loss = _reduce.finish(_reduce.Partial(numerator, count, weight), problem.reduction, problem.result_dtype)
    result = (loss, out.grad) if problem.return_grad else (loss,)
    if problem.return_lse:
        result += (out.lse.astype(problem.result_dtype).reshape(problem.layout.sample_shape),)
    return result if len(result) > 1 else loss


def row_outputs(problem: Problem):
    """The kernel's per-row outputs of a loss-only call (float64 losses before
    sample weights, and the logsumexps and label ranks it asks for): the terms that
    chunked evaluation and metrics sum (``_reduce.BlockSums``)."""
    return execute(problem, *choose(problem), 1.0, summed=False)


def row_losses(problem: Problem) -> np.ndarray:
    """Per-row float64 losses of a loss-only call, before sample weights."""
    return row_outputs(problem).loss


def keyword_defaults(fn) -> dict:
    """The keyword-only options of a loss function and their defaults."""
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
