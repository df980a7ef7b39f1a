"""Softmax rows and columns: ``sparse_from_logits`` and ``categorical_from_logits``.

One sweep per row with an online max (``_softmax_row``), the loss written so that
a dominant class, masked (-inf) classes, NaN and infinities come out exact, and the
gradient from the exps kept in the gradient row when it fits.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from .intrinsics import _acc, _key, _maximum, _prefetch, _unkey
from .jit import _driver, _helper
from .layout import _compute_weights, _int64, _Layout, _small_input, _zero_weights
from .math import _compute_scalar, _exp, _exp_near, _exp_neg, _inf_like, _NEAR, _one_like, _x_value, _zero_like
from .schedule import _block, _claim, _claims, _next_item
from .sums import _BLOCK, _flush
from .views import (_col_view_c, _compute_zeros, _exps_dest, _exps_store, _fill, _fill_col, _grad_array, _grad_cview,
                    _grad_rview, _exps_row, _keep_exp, _keeps_exps, _part, _put, _put3, _rview, _set, _t_cview, _weight)


@_helper(inline=True)
def _softmax_grad(v, m, a, big_a, a_over_s, ar_over_s):
    """dl/dx_c = A q_c - a_c with q_c = exp(x_c - m) / S. At the row max of a row
    where it dominates (R < 1, so the max is unique; ``ar_over_s >= 0``, see
    ``_grad_coefs``) it is formed as (A - a) - A R / S, exact however small R is."""
    # v - m <= 0 wherever the result is kept: callers overwrite the rows whose max is
    # not finite. Computed unconditionally, then selected (a branch blocks vectorisation).
    e = _exp_neg(v - m)
    return (big_a - a) - ar_over_s if (v == m) & (ar_over_s >= 0) else a_over_s * e - a


@_helper
def _grad_coefs(rest, big_a):
    """(A / S, A R / S) with S = 1 + R; the second is -1 when R >= 1 (the max does
    not dominate, or is tied): then (A - a) - A R / S, in float32, would cancel
    to ~1e-3 relative error at a class holding 1/S, so A / S - a is used."""
    s = 1.0 + rest
    return big_a / s, (big_a * rest / s if rest < 1.0 else -1.0)


@_helper
def _softmax_loss(m, rest, gap, big_a):
    """Row loss: sum_{a_c != 0} a_c (m - x_c) + A log1p(R) (``gap`` is the sum).
    NaN or +inf in the row: NaN. Every logit -inf: A * inf (-inf for a negative A
    from negative class weights), and 0 when A == 0."""
    if not m < _inf_like(m):
        return np.nan
    if m == -_inf_like(m):
        return big_a * np.inf if big_a != 0.0 else 0.0
    return gap + big_a * math.log1p(rest)


@_helper
def _special_grad(m, big_a):
    """The gradient of a row whose max is not finite: NaN, or 0 for an all -inf row
    without target weight (A == 0)."""
    return 0.0 if (m == -_inf_like(m)) & (big_a == 0.0) else np.nan


@_helper
def _label_gap(a, m, x_y):
    """a (m - x_y), exactly 0 when a == 0 (even if x_y = -inf)."""
    return a * (np.float64(m) - np.float64(x_y)) if a != 0.0 else 0.0


@_helper
def _finite(m):
    return (m > -_inf_like(m)) & (m < _inf_like(m))


# --------------------------------------------------------------------------- row building blocks
# A row is a 1-D view ``xr`` of C elements (contiguous on the fast path). Loops run
# over views from index 0: with `for c in range(c0, c1)` numba's negative-index
# wraparound cannot be proven dead and LLVM turns every load into a gather.

#: Elements per chunk of a long row: the chunk's max is taken while it streams in
#: from memory, then its exp-sum re-reads it from L1 (16 KiB of float32).
_CHUNK = 4096


#: The same for the softmax exp sums: 16 terms per float32 lane (two 8-lane
#: accumulators), as in the Cython kernels' runs, so that each block's horizontal
#: sum and conversion to float64 is a small share of its work.
_SUM_BLOCK = 256


@_helper
def _row_range(xr):
    """(max, min) of a row, through integer keys: the max is a NaN when the row
    holds a positive NaN, the min when it holds a negative one."""
    v = _x_value(xr[0])
    hi = lo = _key(v)
    for c in range(1, xr.shape[0]):
        k = _key(_x_value(xr[c]))
        hi = max(hi, k)
        lo = min(lo, k)
    return _unkey(hi, v), _unkey(lo, v)


@_helper
def _row_exp_sum(xr, m, near, er, ahead):
    """(sum of exp(x_c - m) over x_c != m, count of x_c == m); near: every x_c - m
    lies in _exp_near's range, the cheaper exp serves; er: None, or where to store
    every exp(x_c - m) for the gradient (may be xr itself); ahead: 0, or the byte
    distance to the data read next (the next chunk or row), whose lines each block
    asks for while its exps compute. Terms are added in the compute dtype over
    blocks of _SUM_BLOCK elements, each block sum then into a float64 total: a
    vector lane adds at most 16 terms per block, so a float32 partial sum errs by a
    few ulp (the size of exp's own error), and the loop keeps 8 float32 lanes (a
    float64 accumulator in it halves the width). The loops sit in this one
    function: a separate, already vectorised block function is too big for LLVM to
    inline, and a call per block is not small next to one block's exps (the
    sparse-logits workloads of benchmarks/test_bench.py time this loop)."""
    zero, one = _zero_like(m), _one_like(m)
    n = xr.shape[0]
    rest = 0.0
    ties = 0.0
    for b0 in range(0, n, _SUM_BLOCK):
        b1 = min(n, b0 + _SUM_BLOCK)
        xb = xr[b0:b1]  # indexed from 0 (see the section comment)
        if ahead:  # (a loop of its own: a prefetch in the exp loop keeps it scalar)
            for k in range(0, xb.shape[0] * xb.itemsize, 64):
                _prefetch(xb, ahead + k)
        part = zero
        count = zero
        eb = _exps_dest(xb, er, b0, b1)  # None: the exps are not kept
        # two loops (in range or not): each a straight vector loop; an exp chosen per
        # element would be a select in both (and LLVM does not unswitch a loop on
        # an invariant branch)
        if near:
            for c in range(xb.shape[0]):
                v = _x_value(xb[c])
                e = _exp_near(v - m)
                _keep_exp(eb, c, e)
                part = _acc(part, e if v != m else zero)
                count = _acc(count, one if v == m else zero)
        else:
            for c in range(xb.shape[0]):
                v = _x_value(xb[c])
                e = _exp_neg(v - m)  # v <= m, no NaN: the max pass stopped at one
                _keep_exp(eb, c, e)
                part = _acc(part, e if v != m else zero)
                count = _acc(count, one if v == m else zero)
        rest += np.float64(part)
        ties += np.float64(count)
    return rest, ties


@_helper
def _row_gap_sum(xr, tr, w, ref, keep, ls_c):
    """(sum of b_c (ref - x_c) over b_c != 0, sum of b_c), float64, with b_c from
    ``_weight`` (only with label smoothing or dense targets)."""
    gap = 0.0
    total = 0.0
    for c in range(xr.shape[0]):
        b = _weight(tr, c, w[c], keep, ls_c)
        d = ref - np.float64(_x_value(xr[c]))
        gap = _acc(gap, b * d if b != 0.0 else 0.0)
        total = _acc(total, b)
    return gap, total


@_helper
def _rows_follow(x):
    """Row (o + 1, :, 0) starts where row (o, :, 0) ends: an (N, C) C-contiguous x."""
    n_o, n_c, n_i = x.shape
    return n_i == 1 and x.strides[1] == x.itemsize and x.strides[0] == n_c * x.itemsize


@_helper
def _softmax_row(xr, tr, w, keep, ls_c, dense, er, ahead):
    """Statistics of one logit row in one sweep over chunks (online max):
    (m, R, gap, total, near) with m the row max, R = S - 1 (S = sum_c exp(x_c - m),
    the first argmax excluded exactly, ties included), gap = sum_{b_c != 0} b_c
    (m - x_c) and total = sum_c b_c when ``dense`` (b_c from ``_weight``), near:
    every x_c - m in _exp_near's range. A NaN or +inf stops the sweep and returns
    m = NaN or +inf. er: None, or (rows of one chunk only) where to store every
    exp(x_c - m) for the gradient (_exps_store), perhaps xr itself: x is then read
    for the last time by the exp pass. ahead: the rows follow one another in memory,
    so each chunk's exp pass asks for the lines after the chunk (the next chunk or
    row) and the next range pass finds them in cache."""
    n = xr.shape[0]
    m = -_inf_like(_x_value(xr[0]))
    row_lo = -m
    rest = 0.0
    ties = 0.0
    gap = 0.0
    total = 0.0
    for c0 in range(0, n, _CHUNK):
        c1 = min(n, c0 + _CHUNK)
        xc = xr[c0:c1]
        mc, lo = _row_range(xc)
        if lo != lo:  # a negative NaN
            return lo, 0.0, 0.0, 0.0, False
        if not mc < _inf_like(mc):
            return mc, 0.0, 0.0, 0.0, False
        row_lo = min(row_lo, lo)
        if mc > m:
            if m > -_inf_like(m):  # rescale what was summed to the new max
                rest = (rest + ties) * math.exp(np.float64(m) - np.float64(mc))
                if total != 0.0:
                    gap += (np.float64(mc) - np.float64(m)) * total
            ties = 0.0
            m = mc
        if dense:  # a -inf chunk uses ref 0: b (0 - -inf) = inf, the right answer
            ref = np.float64(m) if m > -_inf_like(m) else 0.0
            part, weight = _row_gap_sum(xc, _part(tr, c0, c1), w[c0:c1], ref, keep, ls_c)
            gap += part
            total += weight
        if m > -_inf_like(m):  # (while m = -inf every element so far is -inf: exp = 0)
            dist = (c1 - c0) * xc.itemsize if ahead else 0
            part, count = _row_exp_sum(xc, m, np.float64(lo) - np.float64(m) >= _NEAR, er, dist)
            rest += part
            ties += count
    return m, rest + (ties - 1.0), gap, total, np.float64(row_lo) - np.float64(m) >= _NEAR


@_helper
def _softmax_grad_from_exps(er, tr, wc, keep, ls_c, scale, big_a, a_over_s, ar_over_s, gw):
    """_softmax_grad_row from the exps that _softmax_row stored in ``er`` (the
    gradient row), in place: no second exp pass. e == 1 stands for x_c == m in the
    dominant-max formula: where e rounds to 1 without being the max, (A - a) - A R / S
    is the same value as A e / S - a, only more exact."""
    if ar_over_s < _zero_like(ar_over_s):
        for c in range(er.shape[0]):
            a = scale * _weight(tr, c, wc[c], keep, ls_c)
            er[c] = gw * (a_over_s * er[c] - a)
        return
    one = _one_like(big_a)
    for c in range(er.shape[0]):
        a = scale * _weight(tr, c, wc[c], keep, ls_c)
        e = er[c]
        er[c] = gw * ((big_a - a) - ar_over_s if e == one else a_over_s * e - a)


@_helper
def _softmax_grad_row(xr, g, o, i, layout, tr, wc, keep, ls_c, scale, m, big_a, a_over_s, ar_over_s, gw, near):
    """Row (o, i) of the gradient: gw * dl/dx_c with a_c = scale * b_c (the sparse
    label is fixed up by the caller); every argument in the compute dtype. With
    ``near`` (_softmax_row's) and no dominant max (ar_over_s < 0: no exact-max
    select to make), the usual case, a loop with _exp_near and no select.

    The destination view is made here, from the gradient mode ``g``: in place it
    is ``xr`` itself, the same value, so LLVM vectorises the read-then-write loop.
    Passed in as a second parameter, it would be a possibly-overlapping pointer:
    the runtime overlap check fails in place and the scalar loop runs."""
    gr = _grad_rview(xr, g, o, i, xr.shape[0], layout)
    if near and ar_over_s < _zero_like(ar_over_s):
        for c in range(xr.shape[0]):
            a = scale * _weight(tr, c, wc[c], keep, ls_c)
            _set(gr, c, gw * (a_over_s * _exp_near(_x_value(xr[c]) - m) - a))
        return
    for c in range(xr.shape[0]):
        a = scale * _weight(tr, c, wc[c], keep, ls_c)
        _set(gr, c, gw * _softmax_grad(_x_value(xr[c]), m, a, big_a, a_over_s, ar_over_s))


@_helper(inline=True)
def _softmax_row_grad(x, xr, g, gr, o, i, layout, tr, wc, keep, ls_c, scale, m, rest, big_a, gw, near, stored):
    """Row (o, i)'s gradient from _softmax_row's statistics (m finite): from the exps
    it stored in ``gr`` when ``stored``, else with an exp pass over ``xr``; the
    weights and coefficients as in _softmax_grad_row. Returns the float64
    (A / S, A R / S) (_grad_coefs) for the caller's exact values."""
    a_over_s, ar_over_s = _grad_coefs(rest, big_a)
    coefs = (_compute_scalar(x, big_a), _compute_scalar(x, a_over_s), _compute_scalar(x, ar_over_s),
             _compute_scalar(x, gw))
    if stored:
        _softmax_grad_from_exps(_exps_row(gr), tr, wc, keep, ls_c, scale, *coefs)
    else:
        _softmax_grad_row(xr, g, o, i, layout, tr, wc, keep, ls_c, scale, m, *coefs, near)
    return a_over_s, ar_over_s


@_helper
def _cols_max(x, o, i0, m):
    nb = m.shape[0]
    xv = _col_view_c(x, o, 0, i0, nb)
    for j in range(nb):
        m[j] = _x_value(xv[j])
    for c in range(1, x.shape[1]):
        xv = _col_view_c(x, o, c, i0, nb)
        for j in range(nb):
            m[j] = _maximum(m[j], _x_value(xv[j]))


@_helper
def _cols_exp_sum(x, o, i0, m, rest, ties, p_rest, p_ties):
    """rest[j] += sum of exp(x - m[j]) over x != m[j], ties[j] += count of x == m[j]."""
    nb, n_c = m.shape[0], x.shape[1]
    zero, one = _zero_like(m[0]), _one_like(m[0])
    for c0 in range(0, n_c, _BLOCK):
        for c in range(c0, min(n_c, c0 + _BLOCK)):
            xv = _col_view_c(x, o, c, i0, nb)
            for j in range(nb):
                v = _x_value(xv[j])
                mj = m[j]
                e = _exp(v - mj)  # unconditionally: an exp under `if` stays a branch, never vectorised
                p_rest[j] += e if v != mj else zero
                p_ties[j] += one if v == mj else zero
        _flush(rest, p_rest)
        _flush(ties, p_ties)


@_helper
def _cols_gap_sum(x, t, w, o, i0, m, keep, ls_c, gap, total):
    """float64 (only with label smoothing or dense targets)."""
    nb = m.shape[0]
    for c in range(x.shape[1]):
        xv = _col_view_c(x, o, c, i0, nb)
        tv = _t_cview(t, o, c, i0, nb)
        w_c = w[c]
        for j in range(nb):
            b = _weight(tv, j, w_c, keep, ls_c)
            d = np.float64(m[j]) - np.float64(_x_value(xv[j]))
            gap[j] += b * d if b != 0.0 else 0.0
            total[j] += b


@_helper
def _cols_softmax_grad(x, g, glayout, t, wc, o, i0, keep, ls_c, scale, m, big_a, a_over_s, ar_over_s, gw):
    nb = m.shape[0]
    for c in range(x.shape[1]):
        xv = _col_view_c(x, o, c, i0, nb)
        gv = _grad_cview(xv, g, o, c, i0, nb, glayout)
        tv = _t_cview(t, o, c, i0, nb)
        w_c = wc[c]
        for j in range(nb):
            a = scale * _weight(tv, j, w_c, keep, ls_c)
            _set(gv, j, gw[j] * _softmax_grad(_x_value(xv[j]), m[j], a, big_a[j], a_over_s[j], ar_over_s[j]))


# --------------------------------------------------------------------------- drivers
# One prange loop each, over one worker a thread; each worker claims work items
# (``_claims``) until none are left: rows (``*_rows``: contiguous views when layout
# is True, strided views when it is None) or blocks of rows (``*_cols``). Each
# returns the KERNELS.md int. ``_lower(first, r)`` is an atomic min: the same
# answer whatever the number of threads. ``w`` is class_weight (float64, for the
# loss), ``wc`` the same in the compute dtype (for element loops). ``workers``,
# the last argument, is the thread count (``_run`` adds it).


@_driver("sparse_from_logits")
def _sparse_logits_rows(x, labels, w, wc, w_sum, keep, ls_c, ignore, gw, loss, g, glayout, layout, workers):
    n_o, n_c, n_i = x.shape
    ahead = _rows_follow(x)
    dense = ls_c != 0.0  # label smoothing: every class carries weight
    keep_c, ls_cc = _compute_scalar(x, keep), _compute_scalar(x, ls_c)
    n_items = n_o * n_i
    claims = _claims(n_items, n_c, workers)
    for worker in prange(min(workers, n_items)):  # one worker a thread (see _claims)
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
                x_y = _x_value(xr[y])  # read before an in-place gradient overwrites it
                # exps kept in a contiguous gradient row (of float32 or float64)
                stored = g is not None and glayout is not None and n_c <= _CHUNK and _keeps_exps(gr)
                if stored:
                    m, rest, gap, _, near = _softmax_row(xr, None, w, keep, ls_c, dense, _exps_store(gr, g), ahead)
                else:
                    m, rest, gap, _, near = _softmax_row(xr, None, w, keep, ls_c, dense, None, ahead)
                w_y = w[y]
                big_a = keep * w_y + ls_c * w_sum
                loss[o, i] = _softmax_loss(m, rest, _label_gap(keep * w_y, m, x_y) + ls_c * gap, big_a)
                if g is not None:
                    gw_r = gw[o, i]
                    if _finite(m):
                        a_over_s, ar_over_s = _softmax_row_grad(
                            x, xr, g, gr, o, i, glayout, None, wc, keep_c, ls_cc, ls_cc,
                            m, rest, big_a, gw_r, near, stored)
                        # the label's own weight, in float64
                        g_y = _softmax_grad(np.float64(x_y), np.float64(m),
                                            (keep + ls_c) * w_y, big_a, a_over_s, ar_over_s)
                        _put(gr, y, gw_r * g_y)
                    else:
                        _fill(gr, gw_r * _special_grad(m, big_a))
            r, end = _next_item(claims, r, end)
    return -1


@_driver("sparse_from_logits")
def _sparse_logits_cols(x, labels, w, wc, w_sum, keep, ls_c, ignore, gw, loss, g, glayout, block, workers):
    n_o, n_c, n_i = x.shape
    n_blocks = (n_i + block - 1) // block
    dense = ls_c != 0.0
    keep_c, ls_cc = _compute_scalar(x, keep), _compute_scalar(x, ls_c)
    ga = _grad_array(x, g)
    n_items = n_o * n_blocks
    claims = _claims(n_items, block * n_c, workers)
    for worker in prange(min(workers, n_items)):  # one worker a thread (see _claims)
        q, end = _claim(claims)
        while q < end:
            o, i0, nb = _block(q, n_blocks, block, n_i)
            y = np.empty(nb, np.int64)
            s = np.zeros((6, nb))
            rest, ties, gap, big_a, a_over_s, ar_over_s = s[0], s[1], s[2], s[3], s[4], s[5]
            cs = _compute_zeros(x, 7, nb)  # compute-dtype per-row state
            m, x_y, p_rest, p_ties = cs[0], cs[1], cs[2], cs[3]
            big_a_c, a_over_s_c, ar_over_s_c = cs[4], cs[5], cs[6]
            gw_c = _compute_zeros(x, 1, nb)[0]
            _cols_max(x, o, i0, m)
            _cols_exp_sum(x, o, i0, m, rest, ties, p_rest, p_ties)
            if dense:
                _cols_gap_sum(x, None, w, o, i0, m, keep, ls_c, gap, s[5])
            for j in range(nb):
                i = i0 + j
                y[j] = np.int64(labels[o, i])
                gw_c[j] = gw[o, i]
                if y[j] == ignore:
                    loss[o, i] = 0.0
                else:
                    w_y = w[y[j]]
                    x_y[j] = _x_value(x[o, y[j], i])
                    big_a[j] = keep * w_y + ls_c * w_sum
                    rest[j] += ties[j] - 1.0
                    lgap = _label_gap(keep * w_y, m[j], x_y[j]) + ls_c * gap[j]
                    loss[o, i] = _softmax_loss(m[j], rest[j], lgap, big_a[j])
                    a_over_s[j], ar_over_s[j] = _grad_coefs(rest[j], big_a[j])
                    big_a_c[j], a_over_s_c[j], ar_over_s_c[j] = big_a[j], a_over_s[j], ar_over_s[j]
            if g is not None:
                _cols_softmax_grad(x, g, glayout, None, wc, o, i0, keep_c, ls_cc, ls_cc,
                                   m, big_a_c, a_over_s_c, ar_over_s_c, gw_c)
                for j in range(nb):  # the label's own weight (float64), ignored and special rows
                    gw_r = gw[o, i0 + j]
                    if y[j] == ignore:
                        _fill_col(ga, o, i0 + j, 0.0)
                    elif not _finite(m[j]):
                        _fill_col(ga, o, i0 + j, gw_r * _special_grad(m[j], big_a[j]))
                    else:
                        a_y = (keep + ls_c) * w[y[j]]
                        g_y = _softmax_grad(np.float64(x_y[j]), np.float64(m[j]),
                                            a_y, big_a[j], a_over_s[j], ar_over_s[j])
                        _put3(ga, o, y[j], i0 + j, gw_r * g_y)
            q, end = _next_item(claims, q, end)
    return -1


@_driver("categorical_from_logits")
def _categorical_logits_rows(x, t, w, wc, keep, ls_c, gw, loss, g, glayout, layout, workers):
    n_o, n_c, n_i = x.shape
    ahead = _rows_follow(x)
    keep_c, ls_cc, one = _compute_scalar(x, keep), _compute_scalar(x, ls_c), _compute_scalar(x, 1.0)
    n_items = n_o * n_i
    claims = _claims(n_items, n_c, workers)
    for worker in prange(min(workers, n_items)):  # one worker a thread (see _claims)
        r, end = _claim(claims)
        while r < end:
            o = r // n_i
            i = r - o * n_i
            xr = _rview(x, o, i, n_c, layout)
            tr = _rview(t, o, i, n_c, layout)
            gr = _grad_rview(xr, g, o, i, n_c, glayout)
            # exps kept in a contiguous gradient row (of float32 or float64)
            stored = g is not None and glayout is not None and n_c <= _CHUNK and _keeps_exps(gr)
            if stored:
                m, rest, gap, big_a, near = _softmax_row(xr, tr, w, keep, ls_c, True, _exps_store(gr, g), ahead)
            else:
                m, rest, gap, big_a, near = _softmax_row(xr, tr, w, keep, ls_c, True, None, ahead)
            loss[o, i] = _softmax_loss(m, rest, gap, big_a)
            if g is not None:
                gw_r = gw[o, i]
                if _finite(m):
                    _softmax_row_grad(x, xr, g, gr, o, i, glayout, tr, wc, keep_c, ls_cc, one,
                                      m, rest, big_a, gw_r, near, stored)
                else:
                    _fill(gr, gw_r * _special_grad(m, big_a))
            r, end = _next_item(claims, r, end)
    return -1


@_driver("categorical_from_logits")
def _categorical_logits_cols(x, t, w, wc, keep, ls_c, gw, loss, g, glayout, block, workers):
    n_o, n_c, n_i = x.shape
    n_blocks = (n_i + block - 1) // block
    keep_c, ls_cc, one = _compute_scalar(x, keep), _compute_scalar(x, ls_c), _compute_scalar(x, 1.0)
    ga = _grad_array(x, g)
    n_items = n_o * n_blocks
    claims = _claims(n_items, block * n_c, workers)
    for worker in prange(min(workers, n_items)):  # one worker a thread (see _claims)
        q, end = _claim(claims)
        while q < end:
            o, i0, nb = _block(q, n_blocks, block, n_i)
            s = np.zeros((4, nb))
            rest, ties, gap, big_a = s[0], s[1], s[2], s[3]
            cs = _compute_zeros(x, 7, nb)
            m, p_rest, p_ties = cs[0], cs[1], cs[2]
            big_a_c, a_over_s_c, ar_over_s_c, gw_c = cs[3], cs[4], cs[5], cs[6]
            _cols_max(x, o, i0, m)
            _cols_exp_sum(x, o, i0, m, rest, ties, p_rest, p_ties)
            _cols_gap_sum(x, t, w, o, i0, m, keep, ls_c, gap, big_a)
            for j in range(nb):
                i = i0 + j
                gw_c[j] = gw[o, i]
                rest[j] += ties[j] - 1.0
                loss[o, i] = _softmax_loss(m[j], rest[j], gap[j], big_a[j])
                a_over_s, ar_over_s = _grad_coefs(rest[j], big_a[j])
                big_a_c[j], a_over_s_c[j], ar_over_s_c[j] = big_a[j], a_over_s, ar_over_s
            if g is not None:
                _cols_softmax_grad(x, g, glayout, t, wc, o, i0, keep_c, ls_cc, one,
                                   m, big_a_c, a_over_s_c, ar_over_s_c, gw_c)
                for j in range(nb):
                    if not _finite(m[j]):
                        _fill_col(ga, o, i0 + j, gw[o, i0 + j] * _special_grad(m[j], big_a[j]))
            q, end = _next_item(claims, q, end)
    return -1


def _prepare_sparse_from_logits(x, labels, class_weight, label_smoothing, ignore_index,
                                grad_weight, loss_out, grad_out, threads=1):  # fmt: skip
    p, args, _ = _sparse_logits_arguments(x, labels, class_weight, label_smoothing, ignore_index,
                                          grad_weight, loss_out, grad_out, threads)  # fmt: skip
    return p.driver(_sparse_logits_rows, _sparse_logits_cols), (*args, p.last)


def _sparse_logits_arguments(x, labels, class_weight, label_smoothing, ignore_index,
                             grad_weight, loss_out, grad_out, threads, outs=()):  # fmt: skip
    """(layout, the sparse softmax drivers' arguments up to glayout, ``outs``): ``outs``
    are more (O, I) outputs, flattened with the per-row arrays when C == 1 is."""
    p = _Layout(x, grad_out, flat=(labels, grad_weight, loss_out, *outs), threads=threads)
    labels, grad_weight, loss_out, *outs = p.flat
    labels, grad_weight = _small_input(labels, np.int64), _small_input(grad_weight, np.float64)
    class_weight = _small_input(class_weight, np.float64)
    ls = float(label_smoothing)
    w_sum = float(class_weight.sum()) if ls else 0.0
    return p, (
        p.x, labels, class_weight, _compute_weights(x, class_weight) if ls else _zero_weights(x, x.shape[1]), w_sum, 1.0 - ls, ls / x.shape[1],
        _int64(ignore_index), grad_weight, loss_out, p.g, p.glayout), outs  # fmt: skip


def _prepare_categorical_from_logits(x, targets, class_weight, label_smoothing, grad_weight, loss_out, grad_out, threads=1):
    p = _Layout(x, grad_out, dense=targets, flat=(grad_weight, loss_out), threads=threads)
    grad_weight, loss_out = p.flat
    grad_weight = _small_input(grad_weight, np.float64)
    ls = float(label_smoothing)
    return p.driver(_categorical_logits_rows, _categorical_logits_cols), (
        p.x, p.dense, _small_input(class_weight, np.float64), _compute_weights(x, class_weight), 1.0 - ls, ls / x.shape[1],
        grad_weight, loss_out, p.g, p.glayout, p.last)  # fmt: skip
