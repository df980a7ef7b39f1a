"""The gather-log: ``sparse_from_probs`` without label smoothing.

One probability is read per row (``p[y]``), so neither the time nor the bytes read
depend on the number of classes; only that value is range-checked.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ... import _constants
from .intrinsics import _prefetch
from .jit import _driver, _helper
from .layout import _bounds, _int64, _Layout, _small_input
from .math import _neg_log_clip, _x_value, _xent_prob_grad
from .ranges import _lower, _out_of_range, _slot
from .schedule import _claim, _claims, _next_item
from .sums import _store_losses
from .views import _compute_zeros, _fill, _grad_array, _put, _rview


#: Rows per work item of the gather-log (block-sums mode: BLOCK_ROWS).
_GATHER_ROWS = 512
#: Rows ahead whose probability the gather asks for (the Cython gather-log's too).
_GATHER_AHEAD = _constants.GATHER_AHEAD


@_helper(inline=True)
def _gather_prefetch(xb, lb, ignore, j):
    """Ask for row j's gathered probability (class 0 for an ignored row)."""
    y = np.int64(lb[j])
    _prefetch(xb, j * xb.strides[0] + (y if y != ignore else 0) * xb.strides[1])


@_helper
def _gather_log(xb, lb, w, ignore, lo, hi, losses, p):
    """-w_y log(clip(p_y)) of one block of rows: xb (rows, C), labels lb, into
    losses; the probabilities are kept in p. Returns the block's first row with p_y
    outside [0, 1], or -1.

    The probabilities are fetched first, in a loop that does nothing else, so that
    dozens of cache misses are in flight at once (with the log in the same loop only
    a few are). The logs are then taken in a loop of their own, which vectorises
    (with the class-weight lookup in it, it does not), and weighted in a third."""
    nb = lb.shape[0]
    for j in range(min(_GATHER_AHEAD, nb)):  # the block's first rows: all at once
        _gather_prefetch(xb, lb, ignore, j)
    for j in range(nb):  # an ignored row reads class 0 and never uses it
        if j + _GATHER_AHEAD < nb:  # start a later row's cache miss now
            _gather_prefetch(xb, lb, ignore, j + _GATHER_AHEAD)
        y = np.int64(lb[j])
        p[j] = _x_value(xb[j, y if y != ignore else 0])
    for j in range(nb):
        losses[j] = np.float64(_neg_log_clip(p[j], lo, hi))
    for j in range(nb):
        y = np.int64(lb[j])
        losses[j] = w[y] * losses[j] if y != ignore else 0.0
    for j in range(nb):
        if np.int64(lb[j]) != ignore and _out_of_range(p[j]):
            return j
    return -1


@_driver("sparse_from_probs")
def _sparse_probs_gather(x, labels, w, ignore, lo, hi, gw, layout, loss, g, block, workers):
    """ls == 0: one probability per row is read (and range-checked). Work items are
    blocks of rows along the outer axis (I == 1) or the inner axis."""
    n_o, n_c, n_i = x.shape
    n = n_o * n_i
    first = _slot(n)  # lowered by _lower: the first bad row
    ga = _grad_array(x, g)
    lo64, hi64 = np.float64(lo), np.float64(hi)
    per_o = (n_i + block - 1) // block  # work items per outer index
    n_items = (n_o + block - 1) // block if n_i == 1 else n_o * per_o
    row_size = n_c if g is not None else 16  # a gradient row, or the cache line read
    claims = _claims(n_items, block * row_size, workers)
    for worker in prange(min(workers, n_items)):  # one worker a thread (see _claims)
        q, end = _claim(claims)
        while q < end:
            if n_i == 1:  # rows (o0 + j, 0)
                o0, i0 = q * block, 0
                nb = min(block, n_o - o0)
                xb, lb = x[o0 : o0 + nb, :, 0], labels[o0 : o0 + nb, 0]
            else:  # rows (o0, i0 + j)
                o0 = q // per_o
                i0 = (q - o0 * per_o) * block
                nb = min(block, n_i - i0)
                xb, lb = x[o0, :, i0 : i0 + nb].T, labels[o0, i0 : i0 + nb]
            p = _compute_zeros(x, 1, nb)[0]
            losses = np.empty(nb)
            bad = _gather_log(xb, lb, w, ignore, lo, hi, losses, p)
            if bad >= 0:
                _lower(first, o0 * n_i + i0 + bad)
            if g is not None:
                for j in range(nb):
                    o, i = (o0 + j, 0) if n_i == 1 else (o0, i0 + j)
                    y = np.int64(lb[j])
                    gr = _rview(ga, o, i, n_c, layout)
                    _fill(gr, 0.0)
                    if y != ignore:
                        _put(gr, y, gw[o, i] * _xent_prob_grad(np.float64(p[j]), w[y], lo64, hi64))
            _store_losses(loss, q, o0, i0, 0 if n_i == 1 else 1, losses, 1)
            q, end = _next_item(claims, q, end)
    return first[0] if first[0] < n else -1


def _prepare_sparse_from_probs(x, labels, class_weight, label_smoothing, ignore_index, epsilon,
                               grad_weight, loss_out, grad_out, threads=1):  # fmt: skip
    """sparse_from_probs without label smoothing: one value per row; contiguous
    gradient rows when possible."""
    n_c = x.shape[1]
    lo, hi = _bounds(x, epsilon)
    p = _Layout(x, grad_out, flat=(labels, grad_weight, loss_out), threads=threads)
    labels, grad_weight, loss_out = p.flat
    labels, grad_weight = _small_input(labels, np.int64), _small_input(grad_weight, np.float64)
    class_weight = _small_input(class_weight, np.float64)
    rows = p.x if p.g is True else p.g  # where the gradient rows are
    layout = None if rows is not None and n_c > 1 and rows.strides[1] != rows.itemsize else True
    return _sparse_probs_gather, (p.x, labels, class_weight, _int64(ignore_index), lo, hi,
                                  grad_weight, layout, loss_out, p.g, _gather_rows(p.x.shape[0], p.x.shape[2], threads))


def _gather_rows(n_o: int, n_i: int, threads: int) -> int:
    """Rows per work item: _GATHER_ROWS, or fewer when every thread would not get one
    (the work items are runs along the inner axis when I > 1, else the outer)."""
    if n_i == 1:
        return max(1, min(_GATHER_ROWS, -(-n_o // threads)))
    per_o = -(-threads // max(n_o, 1))  # work items each outer index must provide
    return max(1, min(_GATHER_ROWS, -(-n_i // per_o)))


def _few_rows_axes(x) -> bool:
    """One work item per block of BLOCK_ROWS rows needs the rows along one axis."""
    return x.shape[0] == 1 or x.shape[2] == 1


#: Drivers whose work items can be block-sums mode's blocks (see ``kernels._prepared``).
SUMMABLE = {_sparse_probs_gather: _few_rows_axes}
