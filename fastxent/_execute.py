"""Run a validated problem's kernel: arguments, output buffers, and what a kernel reports.

Below the dispatcher (which decides backend and threads) and above the kernels: this
module turns a :class:`~fastxent._validate.Problem` into the argument lists of the
kernel table (``backends/KERNELS.md``), runs them, and turns a kernel's "first bad row"
into the error a user reads. The dispatcher asks :func:`kernel_calls` what a call
would pass (Numba compiles per argument types), and ``fastxent.calibrate`` times
:func:`kernel_runner`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from . import _reduce, backends
from ._validate import Problem, binary_target_message


def kernel_sums(problem: Problem, backend: str) -> bool:
    """Whether the kernel returns the block sums of the losses itself (a compiled
    backend, a reduced loss without sample weights): the per-row losses -- 8 bytes a
    row, 80 MB for 10M binary outputs -- are then never written to memory nor read
    back."""
    return backend in ("cython", "numba") and problem.reduction != "none" and problem.sample_weight is None


def checks_first(problem: Problem) -> bool:
    """Whether a loss-only pass runs before the gradient pass: the caller's buffer
    (perhaps ``y_pred`` itself) must stay untouched when a probability or a binary
    target turns out to be out of range."""
    return (problem.return_grad and problem.grad_out is not None
            and (not problem.from_logits or problem.kind == "binary"))  # fmt: skip


def kernel_calls(problem: Problem, backend: str) -> list[tuple[str, tuple, bool, dict]]:
    """The ``(kernel name, arguments, block_sums, optional keywords)`` of every kernel
    call :func:`execute` would make (``threads`` left out). Buffers are fresh
    ``np.empty`` arrays that nothing touches, so asking costs no memory."""
    name, summed = problem.kernel_name, kernel_sums(problem, backend)
    rows = (problem.layout.outer, problem.layout.inner)
    extras = _extras(problem, Outputs(None, None,
                                      np.empty(rows) if problem.return_lse else None,
                                      np.empty(rows, dtype=np.int64) if problem.want_rank else None))
    loss_out = _loss_buffer(problem, summed)
    loss_only = (name, _arguments(problem, None, loss_out, None), summed, extras)
    if not problem.return_grad:
        return [loss_only]
    _, grad_view = _gradient_buffer(problem)
    with_grad = (name, _arguments(problem, _reduce.grad_weight(problem, 1.0), loss_out, grad_view), summed, extras)
    return [loss_only, with_grad] if checks_first(problem) else [with_grad]


@dataclass
class Outputs:
    """What a kernel run produced."""

    loss: np.ndarray  # per-row float64 losses (O, I), or their block sums
    grad: np.ndarray | None  # the gradient, y_pred's shape (the caller's grad_out if given)
    lse: np.ndarray | None = None  # per-row logsumexp (O, I) float64, with return_lse
    rank: np.ndarray | None = None  # per-row label rank (O, I) int64 (-1: ignored), with want_rank


def execute(problem: Problem, backend: str, threads: int, denom: float, summed: bool) -> Outputs:
    """Run the kernel: per-row float64 losses (or their block sums) and, if asked,
    the gradient (scaled by ``1 / denom`` and the sample weights), per-row
    logsumexps and label ranks."""
    kernel = backends.module(backend).KERNELS[problem.kernel_name]
    out = Outputs(_loss_buffer(problem, summed), None)
    grad_view = grad_weight = None
    if problem.return_grad:
        out.grad, grad_view = _gradient_buffer(problem)
        grad_weight = _reduce.grad_weight(problem, denom)
    rows = (problem.layout.outer, problem.layout.inner)
    if problem.return_lse:
        out.lse = np.empty(rows)
    if problem.want_rank:
        out.rank = np.empty(rows, dtype=np.int64)
    extras = _extras(problem, out)
    if problem.layout.n_rows:  # an empty batch has nothing to compute
        if checks_first(problem):
            check(problem, _call(kernel, _arguments(problem, None, out.loss, None), threads, summed, extras))
        check(problem, _call(kernel, _arguments(problem, grad_weight, out.loss, grad_view), threads, summed, extras))
    return out


def _extras(problem: Problem, out: Outputs) -> dict:
    """The kernel's optional keywords (KERNELS.md), only those the call uses: a
    kernel without them is called exactly as before."""
    extras = {}
    if problem.z_loss:
        extras["z_loss"] = problem.z_loss
    if problem.softcap:
        extras["softcap"] = problem.softcap
    if out.lse is not None:
        extras["lse_out"] = out.lse
    if out.rank is not None:
        extras["rank_out"] = out.rank
    return extras


def kernel_runner(problem: Problem, backend: str, threads: int):
    """A zero-argument function running ``problem``'s kernel on ``backend`` with
    ``threads`` threads, loss only, as a call runs it (what calibration times)."""
    kernel = backends.module(backend).KERNELS[problem.kernel_name]
    summed = kernel_sums(problem, backend)
    args = _arguments(problem, None, _loss_buffer(problem, summed), None)
    return lambda: _call(kernel, args, threads, summed)


def _call(kernel, args: tuple, threads: int, summed: bool, extras: dict | None = None) -> int:
    if summed:
        return kernel(*args, threads, block_sums=True, **(extras or {}))
    return kernel(*args, threads, **extras) if extras else kernel(*args, threads)


def _arguments(p: Problem, grad_weight, loss_out, grad_view) -> tuple:
    """A kernel's positional arguments (KERNELS.md), ``threads`` left out."""
    weights = p.pos_weight if p.kind == "binary" else p.class_weight
    if weights is None:
        weights = _unit_weights(p)
    args = [p.x, p.aux, weights, p.label_smoothing]
    if p.kind == "sparse":
        args.append(p.kernel_ignore)
    if not p.from_logits:
        args.append(p.epsilon)
    if grad_weight is None:
        grad_weight = _reduce.constant(0.0, (p.layout.outer, p.layout.inner))
    return (*args, grad_weight, loss_out, grad_view)


def _loss_buffer(problem: Problem, summed: bool) -> np.ndarray:
    """Per-row losses ``(O, I)``, or one sum per block of ``BLOCK_ROWS`` rows."""
    layout = problem.layout
    if summed:
        return np.empty(-(-layout.n_rows // _reduce.BLOCK_ROWS), dtype=np.float64)
    return np.empty((layout.outer, layout.inner), dtype=np.float64)


def _unit_weights(p: Problem) -> np.ndarray:
    c = p.n_classes
    if p.kind == "binary":
        return _reduce.constant(1.0, (c, p.layout.inner))
    return _unit_class_weights(c)


@functools.lru_cache(maxsize=64)
def _unit_class_weights(c: int) -> np.ndarray:
    """``np.ones(c)``, read-only and made once per class count (the kernels read
    class weights through a contiguous pointer, so not a stride-0 constant)."""
    ones = np.ones(c)
    ones.flags.writeable = False
    return ones


def _gradient_buffer(p: Problem):
    """The caller's ``grad_out`` or a new array, and its ``(O, C, I)`` view."""
    if p.grad_out is not None:
        return p.grad_out, p.grad_view
    s = p.layout.sample_shape
    shape = s if p.axis is None else s[: p.axis] + (p.n_classes,) + s[p.axis :]
    grad = np.empty(shape, dtype=p.result_dtype, order="F" if p.layout.swap else "C")
    return grad, p.layout.view3(grad)


def check(p: Problem, bad_row: int) -> None:
    """Raise for the out-of-range probability (or binary target) a kernel reported
    in row ``bad_row`` (-1: nothing to report)."""
    if bad_row < 0:
        return
    o, i = divmod(bad_row, p.layout.inner)
    if p.kind == "binary":
        targets = p.aux[o, :, i].astype(np.float64)
        bad = np.flatnonzero((targets < 0) | (targets > 1))
        if bad.size:
            cls = int(bad[0])
            raise ValueError(binary_target_message(float(targets[cls]), p.element_position(bad_row, cls)))
    if p.kind == "sparse" and p.label_smoothing == 0:
        cls = int(p.aux[o, i])
    else:
        row = p.x[o, :, i].astype(np.float64)
        cls = int(np.flatnonzero((row < 0) | (row > 1))[0])
    value = float(p.x[o, cls, i])
    raise ValueError(
        f"y_pred: expected probabilities in [0, 1] (from_logits=False), got {value!r} at "
        f"position {p.element_position(bad_row, cls)}. If y_pred holds logits, pass from_logits=True."
    )
