"""Losses from whole rows of probabilities: ``categorical_from_probs`` and
``sparse_from_probs`` with label smoothing (every class then carries weight).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .intrinsics import _acc
from .jit import _driver, _helper
from .layout import _bounds, _compute_weights, _int64, _Layout, _small_input
from .math import _compute_scalar, _neg_log_clip, _one_like, _x_value, _xent_prob_grad, _zero_like
from .ranges import _count_out_of_range, _first_bad_in_block, _lower, _out_of_range, _slot
from .schedule import _block, _claim, _claims, _next_item
from .sums import _BLOCK, _flush
from .views import (_col_view_c, _compute_zeros, _fill, _fill_col, _grad_array, _grad_cview, _grad_rview, _part, _put,
                    _put3, _rview, _set, _t_cview, _weight)


@_helper
def _xent_probs_row(xr, tr, wc, keep, ls_c, lo, hi):
    """(sum_c b_c * -log(clip(p_c)), count of p_c outside [0, 1]); block partial
    sums in the compute dtype as in _row_exp_sum."""
    n = xr.shape[0]
    loss = 0.0
    bad = 0.0
    for b0 in range(0, n, _BLOCK):
        b1 = min(n, b0 + _BLOCK)
        xb, tb, wb = xr[b0:b1], _part(tr, b0, b1), wc[b0:b1]  # indexed from 0
        part = _zero_like(lo)
        count = _zero_like(lo)
        for c in range(xb.shape[0]):
            p = _x_value(xb[c])
            part = _acc(part, _weight(tb, c, wb[c], keep, ls_c) * _neg_log_clip(p, lo, hi))
            count = _acc(count, _one_like(p) if _out_of_range(p) else _zero_like(p))
        loss += np.float64(part)
        bad += np.float64(count)  # (counts in float: an int64 lane halves the width)
    return loss, bad


@_helper
def _xent_probs_grad_row(xr, g, o, i, layout, tr, wc, keep, ls_c, scale, lo, hi, gw):
    gr = _grad_rview(xr, g, o, i, xr.shape[0], layout)  # (see _softmax_grad_row)
    for c in range(xr.shape[0]):
        a = scale * _weight(tr, c, wc[c], keep, ls_c)
        _set(gr, c, gw * _xent_prob_grad(_x_value(xr[c]), a, lo, hi))


@_helper
def _cols_xent_probs(x, t, wc, o, i0, keep, ls_c, lo, hi, loss, bad, p_loss, p_bad):
    nb, n_c = loss.shape[0], x.shape[1]
    for c0 in range(0, n_c, _BLOCK):
        for c in range(c0, min(n_c, c0 + _BLOCK)):
            xv = _col_view_c(x, o, c, i0, nb)
            tv = _t_cview(t, o, c, i0, nb)
            w_c = wc[c]
            for j in range(nb):
                p_loss[j] += _weight(tv, j, w_c, keep, ls_c) * _neg_log_clip(_x_value(xv[j]), lo, hi)
            _count_out_of_range(xv, p_bad)
        _flush(loss, p_loss)
        _flush(bad, p_bad)


@_helper
def _cols_xent_probs_grad(x, g, glayout, t, wc, o, i0, keep, ls_c, scale, lo, hi, gw):
    nb = gw.shape[0]
    for c in range(x.shape[1]):
        xv = _col_view_c(x, o, c, i0, nb)
        gv = _grad_cview(xv, g, o, c, i0, nb, glayout)
        tv = _t_cview(t, o, c, i0, nb)
        w_c = wc[c]
        for j in range(nb):
            a = scale * _weight(tv, j, w_c, keep, ls_c)
            _set(gv, j, gw[j] * _xent_prob_grad(_x_value(xv[j]), a, lo, hi))


@_driver("sparse_from_probs")
def _sparse_probs_rows(x, labels, w, wc, keep, ls_c, ignore, lo, hi, gw, loss, g, glayout, layout, workers):
    n_o, n_c, n_i = x.shape
    n = n_o * n_i
    first = _slot(n)  # lowered by _lower: the first bad row
    keep_c, ls_cc = _compute_scalar(x, keep), _compute_scalar(x, ls_c)
    lo64, hi64 = np.float64(lo), np.float64(hi)
    claims = _claims(n, n_c, workers)
    for worker in prange(min(workers, n)):  # one worker a thread (see _claims)
        r, end = _claim(claims)
        while r < end:
            o = r // n_i
            i = r - o * n_i
            y = np.int64(labels[o, i])
            xr = _rview(x, o, i, n_c, layout)
            gr = _grad_rview(xr, g, o, i, n_c, glayout)
            if y == ignore:
                loss[o, i] = 0.0
                if g is not None:
                    _fill(gr, 0.0)
            else:
                smooth, bad = _xent_probs_row(xr, None, wc, keep_c, ls_cc, lo, hi)
                if bad != 0:
                    _lower(first, r)
                p_y = _x_value(xr[y])
                w_y = w[y]
                loss[o, i] = ls_c * smooth + keep * w_y * np.float64(_neg_log_clip(p_y, lo, hi))
                if g is not None:
                    gw_r = gw[o, i]
                    _xent_probs_grad_row(xr, g, o, i, glayout, None, wc, keep_c, ls_cc, ls_cc,
                                         lo, hi, _compute_scalar(x, gw_r))
                    _put(gr, y, gw_r * _xent_prob_grad(np.float64(p_y), (keep + ls_c) * w_y, lo64, hi64))
            r, end = _next_item(claims, r, end)
    return first[0] if first[0] < n else -1


@_driver("sparse_from_probs")
def _sparse_probs_cols(x, labels, w, wc, keep, ls_c, ignore, lo, hi, gw, loss, g, glayout, block, workers):
    n_o, n_c, n_i = x.shape
    n_blocks = (n_i + block - 1) // block
    none = n_o * n_i
    first = _slot(none)  # lowered by _lower: the first bad row
    keep_c, ls_cc = _compute_scalar(x, keep), _compute_scalar(x, ls_c)
    lo64, hi64 = np.float64(lo), np.float64(hi)
    ga = _grad_array(x, g)
    n_items = n_o * n_blocks
    claims = _claims(n_items, block * n_c, workers)
    for worker in prange(min(workers, n_items)):  # one worker a thread (see _claims)
        q, end = _claim(claims)
        while q < end:
            o, i0, nb = _block(q, n_blocks, block, n_i)
            y = np.empty(nb, np.int64)
            s = np.zeros((2, nb))
            smooth, bad = s[0], s[1]
            cs = _compute_zeros(x, 4, nb)
            p_y, p_smooth, p_bad, gw_c = cs[0], cs[1], cs[2], cs[3]
            _cols_xent_probs(x, None, wc, o, i0, keep_c, ls_cc, lo, hi, smooth, bad, p_smooth, p_bad)
            for j in range(nb):
                i = i0 + j
                y[j] = np.int64(labels[o, i])
                gw_c[j] = gw[o, i]
                if y[j] == ignore:
                    loss[o, i] = 0.0
                    bad[j] = 0.0  # an ignored row is not read
                else:
                    p_y[j] = _x_value(x[o, y[j], i])
                    loss[o, i] = ls_c * smooth[j] + keep * w[y[j]] * np.float64(_neg_log_clip(p_y[j], lo, hi))
            _lower(first, _first_bad_in_block(bad, o, i0, n_i, none))
            if g is not None:
                _cols_xent_probs_grad(x, g, glayout, None, wc, o, i0, keep_c, ls_cc, ls_cc, lo, hi, gw_c)
                for j in range(nb):
                    gw_r = gw[o, i0 + j]
                    if y[j] == ignore:
                        _fill_col(ga, o, i0 + j, 0.0)
                    else:
                        a_y = (keep + ls_c) * w[y[j]]
                        _put3(ga, o, y[j], i0 + j, gw_r * _xent_prob_grad(np.float64(p_y[j]), a_y, lo64, hi64))
            q, end = _next_item(claims, q, end)
    return first[0] if first[0] < none else -1


@_driver("categorical_from_probs")
def _categorical_probs_rows(x, t, wc, keep, ls_c, lo, hi, gw, loss, g, glayout, layout, workers):
    n_o, n_c, n_i = x.shape
    n = n_o * n_i
    first = _slot(n)  # lowered by _lower: the first bad row
    keep_c, ls_cc, one = _compute_scalar(x, keep), _compute_scalar(x, ls_c), _compute_scalar(x, 1.0)
    claims = _claims(n, n_c, workers)
    for worker in prange(min(workers, n)):  # one worker a thread (see _claims)
        r, end = _claim(claims)
        while r < end:
            o = r // n_i
            i = r - o * n_i
            xr = _rview(x, o, i, n_c, layout)
            tr = _rview(t, o, i, n_c, layout)
            total, bad = _xent_probs_row(xr, tr, wc, keep_c, ls_cc, lo, hi)
            if bad != 0:
                _lower(first, r)
            loss[o, i] = total
            if g is not None:
                _xent_probs_grad_row(xr, g, o, i, glayout, tr, wc, keep_c, ls_cc, one,
                                     lo, hi, _compute_scalar(x, gw[o, i]))
            r, end = _next_item(claims, r, end)
    return first[0] if first[0] < n else -1


@_driver("categorical_from_probs")
def _categorical_probs_cols(x, t, wc, keep, ls_c, lo, hi, gw, loss, g, glayout, block, workers):
    n_o, n_c, n_i = x.shape
    n_blocks = (n_i + block - 1) // block
    none = n_o * n_i
    first = _slot(none)  # lowered by _lower: the first bad row
    keep_c, ls_cc, one = _compute_scalar(x, keep), _compute_scalar(x, ls_c), _compute_scalar(x, 1.0)
    n_items = n_o * n_blocks
    claims = _claims(n_items, block * n_c, workers)
    for worker in prange(min(workers, n_items)):  # one worker a thread (see _claims)
        q, end = _claim(claims)
        while q < end:
            o, i0, nb = _block(q, n_blocks, block, n_i)
            s = np.zeros((2, nb))
            total, bad = s[0], s[1]
            cs = _compute_zeros(x, 3, nb)
            p_total, p_bad, gw_c = cs[0], cs[1], cs[2]
            _cols_xent_probs(x, t, wc, o, i0, keep_c, ls_cc, lo, hi, total, bad, p_total, p_bad)
            for j in range(nb):
                loss[o, i0 + j] = total[j]
                gw_c[j] = gw[o, i0 + j]
            _lower(first, _first_bad_in_block(bad, o, i0, n_i, none))
            if g is not None:
                _cols_xent_probs_grad(x, g, glayout, t, wc, o, i0, keep_c, ls_cc, one, lo, hi, gw_c)
            q, end = _next_item(claims, q, end)
    return first[0] if first[0] < none else -1


def _prepare_sparse_from_probs(x, labels, class_weight, label_smoothing, ignore_index, epsilon,
                               grad_weight, loss_out, grad_out, threads=1):  # fmt: skip
    """sparse_from_probs with label smoothing (> 0): whole rows are read."""
    n_c = x.shape[1]
    lo, hi = _bounds(x, epsilon)
    p = _Layout(x, grad_out, flat=(labels, grad_weight, loss_out), threads=threads)
    labels, grad_weight, loss_out = p.flat
    labels, grad_weight = _small_input(labels, np.int64), _small_input(grad_weight, np.float64)
    class_weight = _small_input(class_weight, np.float64)
    ls = float(label_smoothing)
    return p.driver(_sparse_probs_rows, _sparse_probs_cols), (
        p.x, labels, class_weight, _compute_weights(x, class_weight), 1.0 - ls, ls / n_c, _int64(ignore_index),
        lo, hi, grad_weight, loss_out, p.g, p.glayout, p.last)  # fmt: skip


def _prepare_categorical_from_probs(x, targets, class_weight, label_smoothing, epsilon,
                                    grad_weight, loss_out, grad_out, threads=1):  # fmt: skip
    lo, hi = _bounds(x, epsilon)
    p = _Layout(x, grad_out, dense=targets, flat=(grad_weight, loss_out), threads=threads)
    grad_weight, loss_out = p.flat
    grad_weight = _small_input(grad_weight, np.float64)
    ls = float(label_smoothing)
    return p.driver(_categorical_probs_rows, _categorical_probs_cols), (
        p.x, p.dense, _compute_weights(x, class_weight), 1.0 - ls, ls / x.shape[1], lo, hi,
        grad_weight, loss_out, p.g, p.glayout, p.last)  # fmt: skip
