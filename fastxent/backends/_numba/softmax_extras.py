"""``sparse_from_logits`` with its optional keywords (KERNELS.md): ``z_loss``,
``softcap``, ``lse_out`` and ``rank_out``.

These drivers are separate from :mod:`.softmax`'s: a plain call never runs, nor
compiles, any of this, so its machine code, speed and bits stay what they were.
They are built from the same row and column helpers, with:

* softcap: each row (or block of columns) is first written, capped, into a scratch
  buffer of the compute dtype (``cap * tanh(x / cap)``, and ``1 - tanh**2`` when a
  gradient is asked for); the softmax then reads the buffer and writes its gradient
  there in place, and the capped gradient times ``1 - tanh**2`` goes to the caller's
  array at the end. Without softcap (``cap`` None: a type, so the other code is not
  even compiled) the rows are read where they are.
* z_loss: ``z * lse**2`` joins each counted row's loss, and ``2 z lse`` the softmax
  term's weight A of its gradient (``_label_grad``: exact at a dominant label).
* lse_out: every row's logsumexp, ignored rows included; rank_out: the number of
  classes ranked above the label (-1 ignored, C for a row holding NaN). Each is an
  (O, I) array, or an empty one when not asked for.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange, types
from numba.extending import overload

from .jit import _OPTS, _driver, _helper
from .math import _compute_scalar, _exp_neg, _inf_like, _one_like, _tanh, _x_value
from .schedule import _block, _claim, _claims, _next_item
from .softmax import (_CHUNK, _cols_exp_sum, _cols_gap_sum, _cols_max, _cols_softmax_grad, _finite, _grad_coefs,
                      _label_gap, _rows_follow, _softmax_loss, _softmax_row, _softmax_row_grad, _sparse_logits_arguments,
                      _special_grad)
from .views import (_col_view_c, _compute_empty, _compute_zeros, _exps_store, _fill, _fill_col, _grad_array,
                    _grad_rview, _keeps_exps, _put, _put3, _rview, _set, _set3)

# --------------------------------------------------------------------------- softcap, by the type of ``cap``


def _uncapped(cap):
    """True when cap is None (no softcap): a constant of the specialization."""


@overload(_uncapped, jit_options=_OPTS)
def _uncapped_ol(cap):
    if isinstance(cap, types.NoneType):
        return lambda cap: True
    return lambda cap: False


def _cap_scratch(x, cap, n, grad):
    """None without softcap, else a worker's (capped row, 1 - tanh**2 row) of n
    elements of the compute dtype (the second empty without a gradient)."""


@overload(_cap_scratch, jit_options=_OPTS)
def _cap_scratch_ol(x, cap, n, grad):
    if isinstance(cap, types.NoneType):
        return lambda x, cap, n, grad: None

    return lambda x, cap, n, grad: (_compute_empty(x, n), _compute_empty(x, n if grad else 0))


def _capped_row(xr, cap, zs, grad):
    """The row the softmax reads: ``xr`` itself without softcap, else the scratch
    row filled with cap * tanh(x / cap) (and 1 - tanh**2 when ``grad``)."""


@overload(_capped_row, jit_options=_OPTS)
def _capped_row_ol(xr, cap, zs, grad):
    if isinstance(cap, types.NoneType):
        return lambda xr, cap, zs, grad: xr

    def capped(xr, cap, zs, grad):
        z, d = zs
        c_cap = _compute_scalar(z, cap)
        if grad:
            for c in range(z.shape[0]):
                t = _tanh(_x_value(xr[c]) / c_cap)
                z[c] = c_cap * t
                d[c] = _one_like(t) - t * t
        else:
            for c in range(z.shape[0]):
                z[c] = c_cap * _tanh(_x_value(xr[c]) / c_cap)
        return z
    return capped


def _cap_g(g, cap):
    """The gradient mode the softmax runs with: ``g`` without softcap; with it, in
    place on the scratch row (True), or None without a gradient."""


@overload(_cap_g, jit_options=_OPTS)
def _cap_g_ol(g, cap):
    if isinstance(cap, types.NoneType) or isinstance(g, types.NoneType):
        return lambda g, cap: g
    return lambda g, cap: True


def _cap_glayout(glayout, cap):
    """The gradient views' layout the softmax runs with: the scratch is contiguous."""


@overload(_cap_glayout, jit_options=_OPTS)
def _cap_glayout_ol(glayout, cap):
    if isinstance(cap, types.NoneType):
        return lambda glayout, cap: glayout
    return lambda glayout, cap: True


def _uncap_row(gr, zr, zs, cap):
    """gr = the capped gradient (in ``zr``) times 1 - tanh**2; nothing without softcap."""


@overload(_uncap_row, jit_options=_OPTS)
def _uncap_row_ol(gr, zr, zs, cap):
    if isinstance(cap, types.NoneType):
        return lambda gr, zr, zs, cap: None

    def uncap(gr, zr, zs, cap):
        d = zs[1]
        for c in range(gr.shape[0]):
            _set(gr, c, zr[c] * d[c])
    return uncap


def _cap_cols_scratch(x, cap, n_c, block, grad):
    """None without softcap, else a worker's (capped block, 1 - tanh**2 block), each
    (1, C, block) in the compute dtype (the second (1, C, 0) without a gradient)."""


@overload(_cap_cols_scratch, jit_options=_OPTS)
def _cap_cols_scratch_ol(x, cap, n_c, block, grad):
    if isinstance(cap, types.NoneType):
        return lambda x, cap, n_c, block, grad: None

    def scratch(x, cap, n_c, block, grad):
        z = _compute_zeros(x, n_c, block).reshape((1, n_c, block))
        d = _compute_zeros(x, n_c, block if grad else 0).reshape((1, n_c, block if grad else 0))
        return z, d
    return scratch


def _capped_cols(x, o, i0, nb, cap, zs, grad):
    """(array, o, i0) where the softmax reads rows i0..i0+nb-1 of x[o]: x itself
    without softcap, else the scratch block (at 0, 0) filled as _capped_row fills."""


@overload(_capped_cols, jit_options=_OPTS)
def _capped_cols_ol(x, o, i0, nb, cap, zs, grad):
    if isinstance(cap, types.NoneType):
        return lambda x, o, i0, nb, cap, zs, grad: (x, o, i0)

    def capped(x, o, i0, nb, cap, zs, grad):
        z3, d3 = zs
        c_cap = _compute_scalar(z3, cap)
        for c in range(x.shape[1]):
            xv = _col_view_c(x, o, c, i0, nb)
            zv = _col_view_c(z3, 0, c, 0, nb)
            if grad:
                dv = _col_view_c(d3, 0, c, 0, nb)
                for j in range(nb):
                    t = _tanh(_x_value(xv[j]) / c_cap)
                    zv[j] = c_cap * t
                    dv[j] = _one_like(t) - t * t
            else:
                for j in range(nb):
                    zv[j] = c_cap * _tanh(_x_value(xv[j]) / c_cap)
        return z3, np.int64(0), np.int64(0)
    return capped


def _uncap_cols(ga, o, i0, nb, zs, cap):
    """ga[o, :, i0:i0+nb] = the capped gradient block times 1 - tanh**2; nothing
    without softcap."""


@overload(_uncap_cols, jit_options=_OPTS)
def _uncap_cols_ol(ga, o, i0, nb, zs, cap):
    if isinstance(cap, types.NoneType):
        return lambda ga, o, i0, nb, zs, cap: None

    def uncap(ga, o, i0, nb, zs, cap):
        z3, d3 = zs
        for c in range(ga.shape[1]):
            for j in range(nb):
                _set3(ga, o, c, i0 + j, z3[0, c, j] * d3[0, c, j])
    return uncap


# --------------------------------------------------------------------------- lse, z-loss, rank


@_helper
def _row_lse(m, rest):
    """logsumexp of a row from _softmax_row's (m, R): m + log1p(R); NaN for a row
    holding NaN or +inf, -inf for a row of -inf."""
    if not m < _inf_like(m):
        return np.nan
    if m == -_inf_like(m):
        return -np.inf
    return np.float64(m) + math.log1p(rest)


@_helper
def _z_terms(z_loss, lse):
    """(z lse**2, 2 z lse): a row's z-loss and what it adds to the weight A of the
    softmax term of its gradient; (0, 0) when z_loss is 0 (no 0 * inf)."""
    if z_loss == 0.0:
        return 0.0, 0.0
    return z_loss * lse * lse, 2.0 * z_loss * lse


@_helper
def _label_grad(x_y, m, a_y, big_a, extra, a_over_s, ar_over_s):
    """dl/dx_y in float64 when the softmax term's weight is A + extra (a_over_s and
    ar_over_s from _grad_coefs of A + extra). At a dominant label, ((A - a_y) + extra)
    - (A + extra) R / S: with a one-hot target A - a_y is exactly 0, so the z-loss
    term is not rounded against A."""
    if (x_y == m) & (ar_over_s >= 0.0):
        return ((big_a - a_y) + extra) - ar_over_s
    return a_over_s * _exp_neg(x_y - m) - a_y


@_helper
def _row_rank(zr, y):
    """The classes ranked above class y: larger logits, and equal ones at a lower
    index (np.argmax takes the first); the row length when the row holds a NaN."""
    n = zr.shape[0]
    z_y = _x_value(zr[y])
    above = 0
    nan = 0
    head, tail = zr[:y], zr[y:]  # (views indexed from 0: see softmax's row helpers)
    for c in range(head.shape[0]):
        v = _x_value(head[c])
        above += 1 if v >= z_y else 0
        nan += 1 if v != v else 0
    for c in range(tail.shape[0]):
        v = _x_value(tail[c])
        above += 1 if v > z_y else 0
        nan += 1 if v != v else 0
    return n if nan != 0 else above


@_helper
def _cols_rank(zx, zo, zi0, y, x_y, ignore, rank, o, i0):
    """_row_rank of the rows of a block, into rank[o, i0 + j] (-1 for ignored rows)."""
    nb, n_c = y.shape[0], zx.shape[1]
    above = np.zeros(nb, np.int64)
    nan = np.zeros(nb, np.int64)
    for c in range(n_c):
        xv = _col_view_c(zx, zo, c, zi0, nb)
        for j in range(nb):
            v = _x_value(xv[j])
            above[j] += 1 if (v > x_y[j]) | ((v == x_y[j]) & (c < y[j])) else 0
            nan[j] += 1 if v != v else 0
    for j in range(nb):
        rank[o, i0 + j] = -1 if y[j] == ignore else (n_c if nan[j] != 0 else above[j])


# --------------------------------------------------------------------------- drivers
# As :mod:`.softmax`'s sparse drivers, with z_loss (float, 0: off), cap (None or the
# softcap), lse and rank ((O, I) outputs, or (0, 0) when not asked for).


@_driver("sparse_from_logits")
def _sparse_logits_extras_rows(x, labels, w, wc, w_sum, keep, ls_c, ignore, gw, loss, g, glayout,
                               z_loss, cap, lse, rank, layout, workers):  # fmt: skip
    n_o, n_c, n_i = x.shape
    ahead = _rows_follow(x) and _uncapped(cap)
    dense = ls_c != 0.0
    keep_c, ls_cc = _compute_scalar(x, keep), _compute_scalar(x, ls_c)
    want_lse, want_rank = lse.shape[0] != 0, rank.shape[0] != 0
    zg, zlayout = _cap_g(g, cap), _cap_glayout(glayout, cap)  # where the softmax writes its gradient
    n_items = n_o * n_i
    claims = _claims(n_items, n_c, workers)
    for worker in prange(min(workers, n_items)):  # one worker a thread (see _claims)
        zs = _cap_scratch(x, cap, n_c, g is not None)
        r, end = _claim(claims)
        while r < end:
            o = r // n_i
            i = r - o * n_i
            y = np.int64(labels[o, i])
            xr = _rview(x, o, i, n_c, layout)
            gr = _grad_rview(xr, g, o, i, n_c, glayout)
            if y == ignore and not want_lse:
                loss[o, i] = 0.0
                if want_rank:
                    rank[o, i] = -1
                if g is not None:
                    _fill(gr, 0.0)
            else:
                valid = y != ignore
                k = y if valid else 0  # (an ignored label is never an index)
                zr = _capped_row(xr, cap, zs, g is not None)
                zgr = _grad_rview(zr, zg, o, i, n_c, zlayout)
                if want_rank:  # (before an in-place gradient overwrites the row)
                    rank[o, i] = _row_rank(zr, k) if valid else -1
                x_y = _x_value(zr[k])
                stored = zg is not None and zlayout is not None and n_c <= _CHUNK and _keeps_exps(zgr)
                if stored:
                    m, rest, gap, _, near = _softmax_row(zr, None, w, keep, ls_c, dense, _exps_store(zgr, zg), ahead)
                else:
                    m, rest, gap, _, near = _softmax_row(zr, None, w, keep, ls_c, dense, None, ahead)
                lse_r = _row_lse(m, rest)
                if want_lse:
                    lse[o, i] = lse_r
                if not valid:
                    loss[o, i] = 0.0
                    if g is not None:
                        _fill(gr, 0.0)
                else:
                    w_y = w[y]
                    big_a = keep * w_y + ls_c * w_sum
                    z_term, extra = _z_terms(z_loss, lse_r)
                    row_loss = _softmax_loss(m, rest, _label_gap(keep * w_y, m, x_y) + ls_c * gap, big_a)
                    loss[o, i] = row_loss + z_term if z_loss != 0.0 else row_loss
                    if g is not None:
                        gw_r = gw[o, i]
                        if _finite(m):
                            a_over_s, ar_over_s = _softmax_row_grad(
                                x, zr, zg, zgr, o, i, zlayout, None, wc, keep_c, ls_cc, ls_cc,
                                m, rest, big_a + extra, gw_r, near, stored)
                            g_y = _label_grad(np.float64(x_y), np.float64(m), (keep + ls_c) * w_y, big_a, extra,
                                              a_over_s, ar_over_s)  # fmt: skip
                            _put(zgr, y, gw_r * g_y)
                        else:
                            _fill(zgr, gw_r * _special_grad(m, big_a + extra))
                        _uncap_row(gr, zr, zs, cap)
            r, end = _next_item(claims, r, end)
    return -1


@_driver("sparse_from_logits")
def _sparse_logits_extras_cols(x, labels, w, wc, w_sum, keep, ls_c, ignore, gw, loss, g, glayout,
                               z_loss, cap, lse, rank, block, workers):  # fmt: skip
    n_o, n_c, n_i = x.shape
    n_blocks = (n_i + block - 1) // block
    dense = ls_c != 0.0
    keep_c, ls_cc = _compute_scalar(x, keep), _compute_scalar(x, ls_c)
    want_lse, want_rank = lse.shape[0] != 0, rank.shape[0] != 0
    ga = _grad_array(x, g)
    zg, zlayout = _cap_g(g, cap), _cap_glayout(glayout, cap)
    n_items = n_o * n_blocks
    claims = _claims(n_items, block * n_c, workers)
    for worker in prange(min(workers, n_items)):  # one worker a thread (see _claims)
        zs = _cap_cols_scratch(x, cap, n_c, block, g is not None)
        q, end = _claim(claims)
        while q < end:
            o, i0, nb = _block(q, n_blocks, block, n_i)
            zx, zo, zi0 = _capped_cols(x, o, i0, nb, cap, zs, g is not None)
            za = _grad_array(zx, zg)  # where the label and special rows' gradients go
            y = np.empty(nb, np.int64)
            s = np.zeros((8, nb))
            rest, ties, gap, big_a, a_over_s, ar_over_s, extra = s[0], s[1], s[2], s[3], s[4], s[5], s[6]
            cs = _compute_zeros(x, 7, nb)  # compute-dtype per-row state
            m, x_y, p_rest, p_ties = cs[0], cs[1], cs[2], cs[3]
            big_a_c, a_over_s_c, ar_over_s_c = cs[4], cs[5], cs[6]
            gw_c = _compute_zeros(x, 1, nb)[0]
            _cols_max(zx, zo, zi0, m)
            _cols_exp_sum(zx, zo, zi0, m, rest, ties, p_rest, p_ties)
            if dense:
                _cols_gap_sum(zx, None, w, zo, zi0, m, keep, ls_c, gap, s[7])
            for j in range(nb):
                i = i0 + j
                y[j] = np.int64(labels[o, i])
                gw_c[j] = gw[o, i]
                valid = y[j] != ignore
                k = y[j] if valid else 0
                x_y[j] = _x_value(zx[zo, k, zi0 + j])
                rest[j] += ties[j] - 1.0
                lse_r = _row_lse(m[j], rest[j])
                if want_lse:
                    lse[o, i] = lse_r
                if not valid:
                    loss[o, i] = 0.0
                else:
                    w_y = w[k]
                    big_a[j] = keep * w_y + ls_c * w_sum
                    z_term, extra[j] = _z_terms(z_loss, lse_r)
                    row_loss = _softmax_loss(m[j], rest[j], _label_gap(keep * w_y, m[j], x_y[j]) + ls_c * gap[j], big_a[j])
                    loss[o, i] = row_loss + z_term if z_loss != 0.0 else row_loss
                    a_over_s[j], ar_over_s[j] = _grad_coefs(rest[j], big_a[j] + extra[j])
                    big_a_c[j], a_over_s_c[j], ar_over_s_c[j] = big_a[j] + extra[j], a_over_s[j], ar_over_s[j]
            if want_rank:
                _cols_rank(zx, zo, zi0, y, x_y, ignore, rank, o, i0)
            if g is not None:
                _cols_softmax_grad(zx, zg, zlayout, None, wc, zo, zi0, keep_c, ls_cc, ls_cc,
                                   m, big_a_c, a_over_s_c, ar_over_s_c, gw_c)  # fmt: skip
                for j in range(nb):  # the label's own weight (float64), special rows
                    gw_r = gw[o, i0 + j]
                    if y[j] == ignore:
                        continue
                    if not _finite(m[j]):
                        _fill_col(za, zo, zi0 + j, gw_r * _special_grad(m[j], big_a[j] + extra[j]))
                    else:
                        g_y = _label_grad(np.float64(x_y[j]), np.float64(m[j]), (keep + ls_c) * w[y[j]], big_a[j],
                                          extra[j], a_over_s[j], ar_over_s[j])  # fmt: skip
                        _put3(za, zo, y[j], zi0 + j, gw_r * g_y)
                _uncap_cols(ga, o, i0, nb, zs, cap)
                for j in range(nb):  # (after the softcap's factor, which is NaN at a NaN logit)
                    if y[j] == ignore:
                        _fill_col(ga, o, i0 + j, 0.0)
            q, end = _next_item(claims, q, end)
    return -1


#: lse_out and rank_out when not asked for (of the types of real ones: one specialization).
_NO_LSE = np.empty((0, 0))
_NO_RANK = np.empty((0, 0), np.int64)


def _prepare_sparse_from_logits(x, labels, class_weight, label_smoothing, ignore_index, grad_weight, loss_out,
                                grad_out, threads=1, *, z_loss=0.0, softcap=0.0, lse_out=None, rank_out=None):  # fmt: skip
    outs = [a for a in (lse_out, rank_out) if a is not None]
    p, args, outs = _sparse_logits_arguments(x, labels, class_weight, label_smoothing, ignore_index,
                                             grad_weight, loss_out, grad_out, threads, outs)  # fmt: skip
    outs = iter(outs)
    lse = next(outs) if lse_out is not None else _NO_LSE
    rank = next(outs) if rank_out is not None else _NO_RANK
    cap = float(softcap) if softcap else None
    return p.driver(_sparse_logits_extras_rows, _sparse_logits_extras_cols), (
        *args, float(z_loss), cap, lse, rank, p.last)
