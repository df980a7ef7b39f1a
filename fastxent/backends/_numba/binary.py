"""Binary cross-entropy kernels: ``binary_from_logits`` and ``binary_from_probs``.

Element formulas (softplus from logits, clipped logs from probabilities), row and
column building blocks, the drivers and their argument preparation.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .intrinsics import _acc, _imax, _key
from .jit import _OPTS, _POLY_OPTS, _driver, _helper
from .layout import _bounds, _Layout, _small_input
from .math import (_as, _at, _clip, _compute_scalar, _exp_neg, _inf_like, _log, _log1p_unit, _one_like, _sigmoids,
                   _x_value, _zero_like)
from .ranges import _count_out_of_range, _first_bad_in_block, _lower, _out_of_range, _slot
from .schedule import _block, _claim, _claims, _next_item
from .sums import _BLOCK, _LEAF, _flush, _full_leaf, _store_leaf_tree, _store_losses, _whole_leaves
from .views import (_col_view_c, _compute_empty, _compute_zeros, _grad_cview, _grad_rview, _part, _pw_col, _pw_row,
                    _rview, _set)


def _bad_target(t):
    """A binary target outside [0, 1] (NaN is not; bool never is; unsigned only
    above 1): KERNELS.md reports its row like an out-of-range probability."""


@overload(_bad_target, jit_options=_OPTS)
def _bad_target_ol(t):
    if isinstance(t, types.Boolean):
        return lambda t: False
    if isinstance(t, types.Integer) and not t.signed:
        return lambda t: t > 1
    if isinstance(t, types.Record):  # float16 bits
        return lambda t: _out_of_range(_x_value(t))
    return lambda t: (t < 0) | (t > 1)


@_helper(inline=True)
def _smoothed(t, keep, half_ls, like):
    """(y, 1 - y) in like's type, for the smoothed target y = t keep + half_ls formed
    in float64 (keep = 1 - ls, half_ls = ls / 2): a target 1 - 1e-9, or ls = 1e-9,
    leaves 1 - y = 1e-9 where float32 arithmetic would make it 0."""
    y = _as(t, 1.0) * keep + half_ls
    return _as(y, like), _as(1.0 - y, like)


@_helper(inline=True)
def _bce_logit_loss(v, y, neg, pw):
    """(1-y) softplus(v) + pw y softplus(-v) with neg = 1 - y: a zero coefficient gives
    exactly 0 even where its softplus is inf; a NaN logit gives NaN."""
    return _bce_logit_loss_l(v, _log1p_unit(_exp_neg(-abs(v))), y, neg, pw)


@_helper(inline=True)
def _bce_logit_loss_l(v, tail, y, neg, pw):
    """_bce_logit_loss with the softplus tail log1p(exp(-|v|)) given (taken in loops
    of their own, see _bce_tails); the tail may be anything where v is NaN."""
    zero = _zero_like(v)
    pos = pw * y
    sp_pos = ((v if v > zero else zero) + tail) if neg != zero else zero  # softplus(v)
    sp_neg = ((-v if v < zero else zero) + tail) if pos != zero else zero  # softplus(-v)
    loss = neg * sp_pos + pos * sp_neg
    return loss if v == v else v


@_helper(inline=True)
def _bce_logit_loss_fin(v, tail, y, neg, pw):
    """_bce_logit_loss_l for a finite v: every softplus is finite, so the selects that
    keep 0 * inf from making NaN have nothing to do. The same operations otherwise,
    hence the same bits (no contraction: these helpers carry no fast-math flag)."""
    zero = _zero_like(v)
    return neg * ((v if v > zero else zero) + tail) + pw * y * ((-v if v < zero else zero) + tail)


@njit(**_POLY_OPTS)
def _bce_logit_loss_unit_fin(v, tail, y, neg):
    """_bce_logit_loss_fin with pos_weight 1 (the default): (1-y) softplus(v) +
    y softplus(-v) = (1-y) v + tail for v > 0, -y v + tail otherwise -- one multiply-add
    where the general form takes about ten, and no cancellation (both terms >= 0
    for y in [0, 1], and 1 - y comes formed)."""
    return (neg if v > _zero_like(v) else -y) * v + tail


@njit(**_POLY_OPTS)
def _bce_logit_loss_unit(v, tail, y, neg):
    """_bce_logit_loss_unit_fin's bits for a finite v, _bce_logit_loss_l's values (with
    pos_weight 1) for an infinite or NaN one."""
    if v - v != _zero_like(v):
        return _bce_logit_loss_l(v, tail, y, neg, _one_like(v))
    return _bce_logit_loss_unit_fin(v, tail, y, neg)


@_helper
def _bce_tails(xv, tail):
    """tail[j] = log1p(exp(-|x_j|)), the softplus tails of a block; returns whether
    every x_j is finite (the loss may then take _bce_logit_loss_fin). The exps and
    the log1p each run in a loop of their own: in one loop with the loss they make
    one long dependency chain per vector, and the CPU's out-of-order window holds
    too few of them to overlap."""
    zero = _compute_scalar(tail, 0.0)
    big = _key(zero)  # the largest |x_j| by its bits: one integer max a vector
    for j in range(tail.shape[0]):
        a = abs(_x_value(xv[j]))
        tail[j] = _exp_neg(-a)
        big = _imax(big, _key(a))
    for j in range(tail.shape[0]):
        tail[j] = _log1p_unit(tail[j])
    return big < _key(_inf_like(zero))  # NaN's bits are above inf's


@_helper(inline=True)
def _bce_logit_grad(v, y, neg, pw):
    """(1-y) sigmoid(v) - pw y sigmoid(-v)."""
    s_pos, s_neg = _sigmoids(v)
    return neg * s_pos - pw * y * s_neg


@_helper(inline=True)
def _bce_prob_loss(p, y, neg, pw, lo, hi):
    """-(pw y log p + (1-y) log(1-p)), p clipped, 1 - p formed in the compute dtype."""
    pc, _ = _clip(p, lo, hi)
    return -(pw * y * _log(pc) + neg * _log(_one_like(p) - pc))


@_helper(inline=True)
def _bce_prob_grad(p, y, neg, pw, lo, hi):
    """-pw y / p + (1-y) / (1-p); 0 where p was clipped."""
    pc, clipped = _clip(p, lo, hi)
    g = -pw * y / pc + neg / (_one_like(p) - pc)
    return _zero_like(p) if clipped else g


@_helper
def _bce_logits_row(xr, tr, pwr, keep, half_ls):
    """(sum_c of the row's element losses, count of its targets outside [0, 1])."""
    n = xr.shape[0]
    loss = 0.0
    bad = 0.0
    for b0 in range(0, n, _BLOCK):
        b1 = min(n, b0 + _BLOCK)
        xb, tb, pb = xr[b0:b1], tr[b0:b1], _part(pwr, b0, b1)  # indexed from 0
        part = _zero_like(_x_value(xb[0]))
        count = _zero_like(part)
        for c in range(xb.shape[0]):
            v = _x_value(xb[c])
            y, neg = _smoothed(tb[c], keep, half_ls, v)
            part = _acc(part, _bce_logit_loss(v, y, neg, _as(_at(pb, c), v)))
            count = _acc(count, _one_like(v) if _bad_target(tb[c]) else _zero_like(v))
        loss += np.float64(part)
        bad += np.float64(count)  # (counts in float: an int64 lane halves the width)
    return loss, bad


@_helper
def _bce_logits_grad_row(xr, g, o, i, layout, tr, pwr, keep, half_ls, scale):
    gr = _grad_rview(xr, g, o, i, xr.shape[0], layout)  # (see _softmax_grad_row)
    for c in range(xr.shape[0]):
        v = _x_value(xr[c])
        y, neg = _smoothed(tr[c], keep, half_ls, v)
        _set(gr, c, scale * _bce_logit_grad(v, y, neg, _as(_at(pwr, c), v)))


@_helper
def _bce_probs_row(xr, tr, pwr, keep, half_ls, lo, hi):
    """(sum_c of the row's element losses, count of its probabilities and targets
    outside [0, 1])."""
    n = xr.shape[0]
    loss = 0.0
    bad = 0.0
    for b0 in range(0, n, _BLOCK):
        b1 = min(n, b0 + _BLOCK)
        xb, tb, pb = xr[b0:b1], tr[b0:b1], _part(pwr, b0, b1)  # indexed from 0
        part = _zero_like(lo)
        count = _zero_like(lo)
        for c in range(xb.shape[0]):
            p = _x_value(xb[c])
            y, neg = _smoothed(tb[c], keep, half_ls, p)
            part = _acc(part, _bce_prob_loss(p, y, neg, _as(_at(pb, c), p), lo, hi))
            count = _acc(count, _one_like(p) if _out_of_range(p) | _bad_target(tb[c]) else _zero_like(p))
        loss += np.float64(part)
        bad += np.float64(count)
    return loss, bad


@_helper
def _bce_probs_grad_row(xr, g, o, i, layout, tr, pwr, keep, half_ls, lo, hi, scale):
    gr = _grad_rview(xr, g, o, i, xr.shape[0], layout)  # (see _softmax_grad_row)
    for c in range(xr.shape[0]):
        p = _x_value(xr[c])
        y, neg = _smoothed(tr[c], keep, half_ls, p)
        _set(gr, c, scale * _bce_prob_grad(p, y, neg, _as(_at(pwr, c), p), lo, hi))


@_helper
def _count_bad_targets(tv, bad):
    """bad[j] += 1 where the target tv[j] is outside [0, 1] (a loop of its own, as
    _count_out_of_range)."""
    for j in range(bad.shape[0]):
        bad[j] += _one_like(bad[0]) if _bad_target(tv[j]) else _zero_like(bad[0])


@_helper
def _first_bad_target(tv):
    """The index of the first target of tv outside [0, 1], or -1: a counting loop
    (vectorised) first, the scan only when one is found."""
    count = 0.0
    for j in range(tv.shape[0]):
        count = _acc(count, 1.0 if _bad_target(tv[j]) else 0.0)
    if count != 0.0:
        for j in range(tv.shape[0]):
            if _bad_target(tv[j]):
                return j
    return -1


def _put_loss(acc, tail, j, loss):
    """acc[j] += loss, or with acc None tail[j] = loss (over the tail it was made
    from): the choice is made by type, so the loop keeps no select."""


@overload(_put_loss, jit_options=_OPTS)
def _put_loss_ol(acc, tail, j, loss):
    if isinstance(acc, types.NoneType):
        def put_in_place(acc, tail, j, loss):
            tail[j] = loss
        return put_in_place

    def add(acc, tail, j, loss):
        acc[j] += loss
    return add


def _unit_weight(w):
    """Whether a class's pos_weight is one value, 1 (per-element weights: False)."""


@overload(_unit_weight, jit_options=_OPTS)
def _unit_weight_ol(w):
    if isinstance(w, types.Array):
        return lambda w: False
    return lambda w: w == 1.0


@_helper
def _bce_logits_class(x, t, pw, o, c, i0, keep, half_ls, acc, tail):
    """acc[j] += the losses of class c of rows i0..i0+nb-1 or, with acc None, tail[j]
    = those losses (in place of the tails): the softplus tails first (_bce_tails),
    then the losses."""
    nb = tail.shape[0]
    xv = _col_view_c(x, o, c, i0, nb)
    tv = _col_view_c(t, o, c, i0, nb)
    pwv = _pw_col(pw, c, i0, nb)
    fin = _bce_tails(xv, tail)
    if _unit_weight(pwv):
        if fin:
            for j in range(nb):
                v = _x_value(xv[j])
                y, neg = _smoothed(tv[j], keep, half_ls, v)
                _put_loss(acc, tail, j, _bce_logit_loss_unit_fin(v, tail[j], y, neg))
        else:
            for j in range(nb):
                v = _x_value(xv[j])
                y, neg = _smoothed(tv[j], keep, half_ls, v)
                _put_loss(acc, tail, j, _bce_logit_loss_unit(v, tail[j], y, neg))
    elif fin:
        for j in range(nb):
            v = _x_value(xv[j])
            y, neg = _smoothed(tv[j], keep, half_ls, v)
            _put_loss(acc, tail, j, _bce_logit_loss_fin(v, tail[j], y, neg, _as(_at(pwv, j), v)))
    else:
        for j in range(nb):
            v = _x_value(xv[j])
            y, neg = _smoothed(tv[j], keep, half_ls, v)
            _put_loss(acc, tail, j, _bce_logit_loss_l(v, tail[j], y, neg, _as(_at(pwv, j), v)))


#: Elements per run of a flat binary loss: its x, t, tails and float64 losses stay in L1
#: between the loops (whole blocks would go through L2).
_TAIL_RUN = 1024


@_helper
def _cols_bce_logits(x, t, pw, o, i0, nb, keep, half_ls, loss, p_loss, tail, leaves, bad):
    """loss[j] (float64) = the summed losses of rows i0..i0+nb-1: in compute-dtype
    partial sums of _BLOCK classes (loss and p_loss zeroed), or with one class (a
    flat binary loss) the losses themselves, run by run (nothing zeroed); with
    ``leaves`` (one class, nb whole leaves) only the pairwise leaf sums of every _LEAF
    losses, loss[k] for rows _LEAF k .. _LEAF (k + 1) - 1, taken from the run's float32 losses
    without storing them as float64. Returns the first row (j) whose targets are
    outside [0, 1], or -1 (``bad``: a zeroed (nb,) scratch, unused for one class)."""
    n_c = x.shape[1]
    if n_c == 1:
        for s0 in range(0, nb, _TAIL_RUN):
            tr = tail[: min(nb - s0, _TAIL_RUN)]
            _bce_logits_class(x, t, pw, o, 0, i0 + s0, keep, half_ls, None, tr)
            if leaves:
                for k in range(tr.shape[0] // _LEAF):
                    loss[s0 // _LEAF + k] = _full_leaf(tr, k * _LEAF)
            else:
                lr = loss[s0 : s0 + tr.shape[0]]
                for j in range(lr.shape[0]):
                    lr[j] = np.float64(tr[j])
            j = _first_bad_target(_col_view_c(t, o, 0, i0 + s0, tr.shape[0]))
            if j >= 0:
                return s0 + j
        return -1
    for c0 in range(0, n_c, _BLOCK):
        for c in range(c0, min(n_c, c0 + _BLOCK)):
            _bce_logits_class(x, t, pw, o, c, i0, keep, half_ls, p_loss, tail)
            _count_bad_targets(_col_view_c(t, o, c, i0, nb), bad)
        _flush(loss, p_loss)
    return _first_bad_in_block(bad, 0, 0, 0, -1)


@_helper
def _cols_bce_logits_grad(x, g, glayout, t, pw, o, i0, keep, half_ls, gw):
    nb = gw.shape[0]
    for c in range(x.shape[1]):
        xv = _col_view_c(x, o, c, i0, nb)
        gv = _grad_cview(xv, g, o, c, i0, nb, glayout)
        tv = _col_view_c(t, o, c, i0, nb)
        pwv = _pw_col(pw, c, i0, nb)
        for j in range(nb):
            v = _x_value(xv[j])
            y, neg = _smoothed(tv[j], keep, half_ls, v)
            _set(gv, j, gw[j] * _bce_logit_grad(v, y, neg, _as(_at(pwv, j), v)))


@_helper
def _cols_bce_probs(x, t, pw, o, i0, keep, half_ls, lo, hi, loss, bad, p_loss, p_bad):
    nb, n_c = loss.shape[0], x.shape[1]
    for c0 in range(0, n_c, _BLOCK):
        for c in range(c0, min(n_c, c0 + _BLOCK)):
            xv = _col_view_c(x, o, c, i0, nb)
            tv = _col_view_c(t, o, c, i0, nb)
            pwv = _pw_col(pw, c, i0, nb)
            for j in range(nb):
                p = _x_value(xv[j])
                y, neg = _smoothed(tv[j], keep, half_ls, p)
                p_loss[j] += _bce_prob_loss(p, y, neg, _as(_at(pwv, j), p), lo, hi)
            _count_out_of_range(xv, p_bad)
            _count_bad_targets(tv, p_bad)
        _flush(loss, p_loss)
        _flush(bad, p_bad)


@_helper
def _cols_bce_probs_grad(x, g, glayout, t, pw, o, i0, keep, half_ls, lo, hi, gw):
    nb = gw.shape[0]
    for c in range(x.shape[1]):
        xv = _col_view_c(x, o, c, i0, nb)
        gv = _grad_cview(xv, g, o, c, i0, nb, glayout)
        tv = _col_view_c(t, o, c, i0, nb)
        pwv = _pw_col(pw, c, i0, nb)
        for j in range(nb):
            p = _x_value(xv[j])
            y, neg = _smoothed(tv[j], keep, half_ls, p)
            _set(gv, j, gw[j] * _bce_prob_grad(p, y, neg, _as(_at(pwv, j), p), lo, hi))


@_driver("binary_from_logits")
def _binary_logits_rows(x, t, pw, keep, half_ls, gw, loss, g, glayout, layout, workers):
    n_o, n_c, n_i = x.shape
    n = n_o * n_i
    first = _slot(n)  # lowered by _lower: the first row with a bad target
    claims = _claims(n, n_c, workers)
    for worker in prange(min(workers, n)):  # one worker a thread (see _claims)
        r, end = _claim(claims)
        while r < end:
            o = r // n_i
            i = r - o * n_i
            xr = _rview(x, o, i, n_c, layout)
            tr = _rview(t, o, i, n_c, layout)
            pwr = _pw_row(pw, i)
            total, bad = _bce_logits_row(xr, tr, pwr, keep, half_ls)
            if bad != 0:
                _lower(first, r)
            loss[o, i] = total / n_c
            if g is not None:
                _bce_logits_grad_row(xr, g, o, i, glayout, tr, pwr, keep, half_ls,
                                     _compute_scalar(x, gw[o, i] / n_c))
            r, end = _next_item(claims, r, end)
    return first[0] if first[0] < n else -1


@_driver("binary_from_logits")
def _binary_logits_cols(x, t, pw, keep, half_ls, gw, loss, g, glayout, block, workers):
    n_o, n_c, n_i = x.shape
    n_blocks = (n_i + block - 1) // block
    none = n_o * n_i
    first = _slot(none)  # lowered by _lower: the first row with a bad target
    n_items = n_o * n_blocks
    claims = _claims(n_items, block * n_c, workers)
    for worker in prange(min(workers, n_items)):  # one worker a thread (see _claims)
        q, end = _claim(claims)
        while q < end:
            o, i0, nb = _block(q, n_blocks, block, n_i)
            flat = n_c == 1  # (then _cols_bce_logits writes total without reading it)
            leaves = flat and loss.ndim == 1 and _whole_leaves(nb)  # a block's sum from its leaves
            total = np.empty(nb // _LEAF if leaves else nb) if flat else np.zeros(nb)
            p_total = _compute_zeros(x, 1, 0 if flat else nb)[0]
            tail = _compute_empty(x, min(nb, _TAIL_RUN) if flat else nb)  # written before read
            bad = np.zeros(0 if flat else nb)
            j = _cols_bce_logits(x, t, pw, o, i0, nb, keep, half_ls, total, p_total, tail, leaves, bad)
            if j >= 0:
                _lower(first, o * n_i + i0 + j)
            if leaves:
                _store_leaf_tree(loss, q, total)
            else:
                _store_losses(loss, q, o, i0, 1, total, n_c)
            if g is not None:
                gw_c = _compute_empty(x, nb)  # (a loss-only call allocates no gradient weights)
                for j in range(nb):
                    gw_c[j] = gw[o, i0 + j] / n_c
                _cols_bce_logits_grad(x, g, glayout, t, pw, o, i0, keep, half_ls, gw_c)
            q, end = _next_item(claims, q, end)
    return first[0] if first[0] < none else -1


@_driver("binary_from_probs")
def _binary_probs_rows(x, t, pw, keep, half_ls, lo, hi, gw, loss, g, glayout, layout, workers):
    n_o, n_c, n_i = x.shape
    n = n_o * n_i
    first = _slot(n)  # lowered by _lower: the first bad row
    claims = _claims(n, n_c, workers)
    for worker in prange(min(workers, n)):  # one worker a thread (see _claims)
        r, end = _claim(claims)
        while r < end:
            o = r // n_i
            i = r - o * n_i
            xr = _rview(x, o, i, n_c, layout)
            tr = _rview(t, o, i, n_c, layout)
            pwr = _pw_row(pw, i)
            total, bad = _bce_probs_row(xr, tr, pwr, keep, half_ls, lo, hi)
            if bad != 0:
                _lower(first, r)
            loss[o, i] = total / n_c
            if g is not None:
                _bce_probs_grad_row(xr, g, o, i, glayout, tr, pwr, keep, half_ls,
                                    lo, hi, _compute_scalar(x, gw[o, i] / n_c))
            r, end = _next_item(claims, r, end)
    return first[0] if first[0] < n else -1


@_driver("binary_from_probs")
def _binary_probs_cols(x, t, pw, keep, half_ls, lo, hi, gw, loss, g, glayout, block, workers):
    n_o, n_c, n_i = x.shape
    n_blocks = (n_i + block - 1) // block
    none = n_o * n_i
    first = _slot(none)  # lowered by _lower: the first bad row
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
            _cols_bce_probs(x, t, pw, o, i0, keep, half_ls, lo, hi, total, bad, p_total, p_bad)
            _store_losses(loss, q, o, i0, 1, total, n_c)
            _lower(first, _first_bad_in_block(bad, o, i0, n_i, none))
            if g is not None:
                for j in range(nb):
                    gw_c[j] = gw[o, i0 + j] / n_c
                _cols_bce_probs_grad(x, g, glayout, t, pw, o, i0, keep, half_ls, lo, hi, gw_c)
            q, end = _next_item(claims, q, end)
    return first[0] if first[0] < none else -1


def _prepare_binary_from_logits(x, targets, pos_weight, label_smoothing, grad_weight, loss_out, grad_out, threads=1):
    p = _Layout(x, grad_out, dense=targets, flat=(grad_weight, loss_out), pos_weight=pos_weight, threads=threads)
    grad_weight, loss_out = p.flat
    grad_weight = _small_input(grad_weight, np.float64)
    ls = float(label_smoothing)
    return p.driver(_binary_logits_rows, _binary_logits_cols), (
        p.x, p.dense, p.pos_weight, 1.0 - ls, ls / 2, grad_weight, loss_out, p.g, p.glayout, p.last)


def _prepare_binary_from_probs(x, targets, pos_weight, label_smoothing, epsilon, grad_weight, loss_out, grad_out, threads=1):
    lo, hi = _bounds(x, epsilon)
    p = _Layout(x, grad_out, dense=targets, flat=(grad_weight, loss_out), pos_weight=pos_weight, threads=threads)
    grad_weight, loss_out = p.flat
    grad_weight = _small_input(grad_weight, np.float64)
    ls = float(label_smoothing)
    return p.driver(_binary_probs_rows, _binary_probs_cols), (
        p.x, p.dense, p.pos_weight, 1.0 - ls, ls / 2, lo, hi, grad_weight, loss_out, p.g, p.glayout, p.last)


def _few_outputs_along_one_axis(x) -> bool:
    """One work item per block of BLOCK_ROWS rows needs the rows along one axis, and
    few enough outputs a row for a block to stay in cache."""
    return x.shape[0] == 1 and x.shape[1] <= 16


#: Drivers whose work items can be block-sums mode's blocks (see ``kernels._prepared``).
SUMMABLE = {_binary_logits_cols: _few_outputs_along_one_axis, _binary_probs_cols: _few_outputs_along_one_axis}
