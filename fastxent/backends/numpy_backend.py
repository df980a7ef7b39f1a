"""The NumPy backend: the kernel table written plainly, in float64, block by block.

This is the readable statement of every formula in ``KERNELS.md``, the fallback
when no compiled backend is available, and the fastest path for tiny inputs. Rows
are processed in blocks of about :data:`BLOCK_ELEMENTS` elements, so no temporary
grows with N x C. Each block is computed in float64 after the probabilities are
clipped in the compute dtype (float32 for float16/bfloat16/float32 input).
"""

from __future__ import annotations

import functools

import numpy as np

NAME = "numpy"

#: Elements per block of rows: big enough to amortise NumPy's per-call cost,
#: small enough for the temporaries to stay in cache.
BLOCK_ELEMENTS = 1 << 15


def unavailable_reason() -> str | None:
    return None


def unsupported_reason(problem) -> str | None:
    return None  # every layout, dtype and option


def info() -> dict:
    return {"version": np.__version__, "threads": "1 (NumPy runs these kernels single-threaded)"}


# --------------------------------------------------------------------------- blocks


def _blocks(outer: int, classes: int, inner: int):
    """Yield ``(o_slice, i_slice)`` blocks of rows, in increasing row order."""
    if outer * inner == 0:
        return
    rows = max(1, BLOCK_ELEMENTS // classes)
    if inner <= rows:
        per_o = max(1, rows // inner)
        for o in range(0, outer, per_o):
            yield slice(o, min(outer, o + per_o)), slice(0, inner)
    else:
        for o in range(outer):
            for i in range(0, inner, rows):
                yield slice(o, o + 1), slice(i, min(inner, i + rows))


def _compute_dtype(x: np.ndarray):
    return np.float64 if x.dtype == np.float64 else np.float32


def _read(a3: np.ndarray, os: slice, is_: slice, dtype) -> np.ndarray:
    """Rows ``(os, is_)`` of an ``(O, C, I)`` array as a new ``(rows, C)`` array."""
    block = np.moveaxis(a3[os, :, is_], 1, 2)
    return np.array(block, dtype=dtype, order="C").reshape(-1, a3.shape[1])


def _write(a3: np.ndarray, os: slice, is_: slice, rows: np.ndarray) -> None:
    block = np.moveaxis(a3[os, :, is_], 1, 2)
    block[...] = rows.reshape(block.shape)


def _pos_weight_rows(pos_weight: np.ndarray, os: slice, is_: slice) -> np.ndarray:
    """``pos_weight`` (C, I) repeated for the rows of a block, as (rows, C)."""
    per_i = np.array(pos_weight[:, is_].T, dtype=np.float64)
    return np.tile(per_i, (os.stop - os.start, 1))


def _row_values(a2: np.ndarray, os: slice, is_: slice) -> np.ndarray:
    return a2[os, is_].reshape(-1)


def _valid_labels(labels: np.ndarray, os: slice, is_: slice, ignore_index: int):
    """A block's labels as intp (ignored ones replaced by 0) and the valid-row mask.
    Labels are compared with ``ignore_index`` as int64, as every kernel does."""
    y = _row_values(labels, os, is_)
    valid = y.astype(np.int64) != ignore_index
    return np.where(valid, y, 0).astype(np.intp), valid


def _first_bad(bad_rows: np.ndarray, os: slice, is_: slice, inner: int) -> int:
    """Global flat index of the first True in a block's per-row flags, or -1."""
    hits = np.flatnonzero(bad_rows)
    if hits.size == 0:
        return -1
    width = is_.stop - is_.start
    j = int(hits[0])
    return (os.start + j // width) * inner + is_.start + j % width


def _out_of_range(p: np.ndarray) -> np.ndarray:
    """Probabilities (or binary targets) outside [0, 1]; NaN is not a range error."""
    return (p < 0) | (p > 1)


def _clip(p: np.ndarray, epsilon: float):
    """Probabilities clipped in their compute dtype, as float64, and the clip mask."""
    dtype = p.dtype.type
    lo, hi = dtype(epsilon), dtype(1) - dtype(epsilon)
    clipped = (p < lo) | (p > hi)
    pc = np.clip(p, lo, hi)  # keeps NaN
    one_minus = (dtype(1) - pc).astype(np.float64)  # 1 - p formed in the compute dtype
    return pc.astype(np.float64), one_minus, clipped


# --------------------------------------------------------------------------- logits


def _softmax_parts(z: np.ndarray):
    """Row-wise pieces of a stable log-softmax of float64 logits ``z`` (rows, C).

    Returns ``m`` (row max, finite-shifted), ``k`` (first argmax), ``e`` (exp(z - m)),
    ``rest`` (sum of ``e`` over every class but ``k``), ``nan_rows`` (a NaN or a
    +inf logit: no defined softmax) and ``dead_rows`` (every logit -inf). With
    ``S = 1 + rest``: ``log S = log1p(rest)`` and ``q_k - 1 = -rest / S`` stay exact
    when one class dominates.
    """
    n = z.shape[0]
    m = z.max(axis=1)
    nan_rows = np.isnan(m) | np.isposinf(m)
    dead_rows = np.isneginf(m)
    m = np.where(dead_rows | nan_rows, 0.0, m)
    k = np.argmax(z, axis=1)
    e = np.exp(z - m[:, None])
    idx = np.arange(n)
    e[idx, k] = 0.0
    rest = e.sum(axis=1)
    e[idx, k] = 1.0
    return m, k, e, rest, nan_rows, dead_rows


def _logit_loss_and_grad(z, a, want_grad, z_loss=0.0, valid=None):
    """Loss and gradient of ``sum_c a_c * (-log_softmax(z)_c)`` per row, plus
    ``z_loss * lse**2`` for the rows in ``valid``; and each row's ``lse``.

    ``a`` (rows, C) holds the per-class target weights ``a_c`` (float64).
    """
    n = z.shape[0]
    m, k, e, rest, nan_rows, dead_rows = _softmax_parts(z)
    lse = np.where(nan_rows, np.nan, np.where(dead_rows, -np.inf, m + np.log1p(rest)))
    big_a = a.sum(axis=1)
    # a_c * (m - z_c), with a_c == 0 contributing exactly 0 even where z_c = -inf.
    shifted = np.where(a != 0, a * (m[:, None] - z), 0.0)
    loss = shifted.sum(axis=1) + big_a * np.log1p(rest)
    # every class masked: A * (+inf), i.e. +inf, -inf (negative weights) or 0 when A == 0
    loss = np.where(dead_rows, np.where(big_a == 0, 0.0, np.copysign(np.inf, big_a)), loss)
    loss[nan_rows] = np.nan
    extra = 0.0
    if z_loss:
        # d(z * lse**2)/dz_c = 2 z lse q_c: the softmax term's weight A grows by 2 z lse
        zl = np.where(valid, z_loss, 0.0)
        loss = loss + np.where(zl != 0, zl * lse * lse, 0.0)
        extra = np.where(zl != 0, 2.0 * zl * lse, 0.0)
        big_a = big_a + extra
    if not want_grad:
        return loss, None, lse
    s = 1.0 + rest
    q = e / s[:, None]
    grad = big_a[:, None] * q - a
    idx = np.arange(n)
    a_rest = np.where(np.arange(a.shape[1]) == k[:, None], 0.0, a).sum(axis=1) + extra  # A - a_k
    grad[idx, k] = big_a * (-rest / s) + a_rest  # A*(q_k - 1) + (A - a_k), exactly
    grad[dead_rows & (big_a != 0)] = np.nan
    grad[dead_rows & (big_a == 0)] = 0.0
    grad[nan_rows] = np.nan
    return loss, grad, lse


def _label_rank(z, y, valid):
    """Classes ranked above each row's label: larger logits, and equal ones at a lower
    index (as ``np.argmax`` picks the first); -1 for ignored rows, C for a row holding
    NaN (never counted correct)."""
    zy = z[np.arange(z.shape[0]), y][:, None]
    before = np.arange(z.shape[1])[None, :] < y[:, None]
    rank = ((z > zy) | ((z == zy) & before)).sum(axis=1)
    rank = np.where(np.isnan(z).any(axis=1), z.shape[1], rank)
    return np.where(valid, rank, -1)


def _sparse_target_weights(y, valid, class_weight, label_smoothing, n_classes):
    """``a_c = (1-ls) * w_y * [c == y] + (ls/C) * w_c`` for a block of labels."""
    n = y.shape[0]
    a = np.zeros((n, n_classes))
    if label_smoothing:
        a += (label_smoothing / n_classes) * class_weight
    idx = np.arange(n)
    a[idx, y] += (1.0 - label_smoothing) * class_weight[y]
    a[~valid] = 0.0
    return a


def _dense_target_weights(t, class_weight, label_smoothing, n_classes):
    """``a_c = w_c * (t_c * (1-ls) + ls/C)`` for a block of dense targets: 0 where the
    target coefficient is 0, whatever the weight (an unused class weight may be inf)."""
    coef = t * (1.0 - label_smoothing) + label_smoothing / n_classes
    return np.where(coef != 0, class_weight * coef, 0.0)


def _finish(loss_out, grad_out, grad_weight, os, is_, loss, grad):
    loss_out[os, is_] = loss.reshape(loss_out[os, is_].shape)
    if grad_out is not None:
        gw = _row_values(grad_weight, os, is_)
        _write(grad_out, os, is_, grad * gw[:, None])


def _quiet(kernel):
    """Run a kernel with NumPy's floating-point warnings off: inf and NaN are data here."""

    @functools.wraps(kernel)
    def run(*args, **kwargs):
        with np.errstate(all="ignore"):
            return kernel(*args, **kwargs)

    return run


@_quiet
def sparse_from_logits(
    x, labels, class_weight, label_smoothing, ignore_index, grad_weight, loss_out, grad_out, threads,
    *, z_loss=0.0, softcap=0.0, lse_out=None, rank_out=None,
) -> int:  # fmt: skip
    outer, n_classes, inner = x.shape
    for os, is_ in _blocks(outer, n_classes, inner):
        z = _read(x, os, is_, np.float64)
        if softcap:
            t = np.tanh(z / softcap)
            z = softcap * t
        y, valid = _valid_labels(labels, os, is_, ignore_index)
        a = _sparse_target_weights(y, valid, class_weight, label_smoothing, n_classes)
        loss, grad, lse = _logit_loss_and_grad(z, a, grad_out is not None, z_loss, valid)
        loss[~valid] = 0.0
        if grad is not None:
            if softcap:
                grad *= 1.0 - t * t  # d(cap tanh(x / cap))/dx
            grad[~valid] = 0.0  # after the product: an ignored row's NaN logits stay out
        if lse_out is not None:
            lse_out[os, is_] = lse.reshape(lse_out[os, is_].shape)
        if rank_out is not None:
            rank_out[os, is_] = _label_rank(z, y, valid).reshape(rank_out[os, is_].shape)
        _finish(loss_out, grad_out, grad_weight, os, is_, loss, grad)
    return -1


@_quiet
def categorical_from_logits(
    x, targets, class_weight, label_smoothing, grad_weight, loss_out, grad_out, threads
) -> int:
    outer, n_classes, inner = x.shape
    for os, is_ in _blocks(outer, n_classes, inner):
        z = _read(x, os, is_, np.float64)
        t = _read(targets, os, is_, np.float64)
        a = _dense_target_weights(t, class_weight, label_smoothing, n_classes)
        loss, grad, _ = _logit_loss_and_grad(z, a, grad_out is not None)
        _finish(loss_out, grad_out, grad_weight, os, is_, loss, grad)
    return -1


def _softplus(z):
    """log(1 + exp(z)) without overflow: max(z, 0) + log1p(exp(-|z|))."""
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def _times(coef, value, x):
    """``coef * value``, exactly 0 where ``coef == 0`` (even if value is inf), NaN if x is."""
    return np.where(coef != 0, coef * value, np.where(np.isnan(x), np.nan, 0.0))


@_quiet
def binary_from_logits(x, targets, pos_weight, label_smoothing, grad_weight, loss_out, grad_out, threads) -> int:
    outer, n_labels, inner = x.shape
    for os, is_ in _blocks(outer, n_labels, inner):
        z = _read(x, os, is_, np.float64)
        t = _read(targets, os, is_, np.float64)
        bad = _first_bad(_out_of_range(t).any(axis=1), os, is_, inner)
        if bad >= 0:
            return bad
        y = t * (1.0 - label_smoothing) + label_smoothing / 2
        pw = _pos_weight_rows(pos_weight, os, is_)
        neg, pos = 1.0 - y, pw * y
        elem = _times(neg, _softplus(z), z) + _times(pos, _softplus(-z), z)
        loss = elem.sum(axis=1) / n_labels
        grad = None
        if grad_out is not None:
            e = np.exp(-np.abs(z))
            sig_abs, sig_neg_abs = 1.0 / (1.0 + e), e / (1.0 + e)  # sigmoid(|z|), sigmoid(-|z|)
            sig = np.where(z >= 0, sig_abs, sig_neg_abs)
            sig_neg = np.where(z >= 0, sig_neg_abs, sig_abs)
            grad = (neg * sig - pos * sig_neg) / n_labels
        _finish(loss_out, grad_out, grad_weight, os, is_, loss, grad)
    return -1


# --------------------------------------------------------------------------- probabilities


@_quiet
def sparse_from_probs(
    x, labels, class_weight, label_smoothing, ignore_index, epsilon, grad_weight, loss_out, grad_out, threads
) -> int:
    outer, n_classes, inner = x.shape
    dtype = _compute_dtype(x)
    if label_smoothing:  # every class carries target weight: read whole rows
        for os, is_ in _blocks(outer, n_classes, inner):
            p = _read(x, os, is_, dtype)
            y, valid = _valid_labels(labels, os, is_, ignore_index)
            bad = _first_bad(valid & _out_of_range(p).any(axis=1), os, is_, inner)
            if bad >= 0:
                return bad
            a = _sparse_target_weights(y, valid, class_weight, label_smoothing, n_classes)
            _probs_loss_and_grad(p, a, epsilon, os, is_, loss_out, grad_out, grad_weight, valid)
        return -1
    # The gather-log: one value per row, whatever C is.
    for os, is_ in _blocks(outer, 1, inner):
        y, valid = _valid_labels(labels, os, is_, ignore_index)
        o_idx, i_idx = np.divmod(np.arange(y.size), is_.stop - is_.start)
        py = x[o_idx + os.start, y, i_idx + is_.start].astype(dtype)
        bad = _first_bad(valid & _out_of_range(py), os, is_, inner)
        if bad >= 0:
            return bad
        pc, _, clipped = _clip(py, epsilon)
        wy = np.where(valid, class_weight[y], 0.0)
        loss_out[os, is_] = (np.where(valid, -np.log(pc), 0.0) * wy).reshape(loss_out[os, is_].shape)
        if grad_out is not None:
            gw = _row_values(grad_weight, os, is_)
            g_y = np.where(clipped | ~valid, 0.0, -wy / pc) * gw
            rows = np.zeros((y.size, n_classes))
            rows[np.arange(y.size), y] = g_y
            _write(grad_out, os, is_, rows)
    return -1


@_quiet
def categorical_from_probs(
    x, targets, class_weight, label_smoothing, epsilon, grad_weight, loss_out, grad_out, threads
) -> int:
    outer, n_classes, inner = x.shape
    dtype = _compute_dtype(x)
    for os, is_ in _blocks(outer, n_classes, inner):
        p = _read(x, os, is_, dtype)
        bad = _first_bad(_out_of_range(p).any(axis=1), os, is_, inner)
        if bad >= 0:
            return bad
        t = _read(targets, os, is_, np.float64)
        a = _dense_target_weights(t, class_weight, label_smoothing, n_classes)
        _probs_loss_and_grad(p, a, epsilon, os, is_, loss_out, grad_out, grad_weight)
    return -1


def _probs_loss_and_grad(p, a, epsilon, os, is_, loss_out, grad_out, grad_weight, valid=None):
    """Rows of ``sum_c a_c * (-log clip(p_c))`` and their gradient (0 where clipped);
    rows outside ``valid`` (ignored) give 0 whatever they hold."""
    pc, _, clipped = _clip(p, epsilon)
    loss = (a * -np.log(pc)).sum(axis=1)
    grad = None if grad_out is None else np.where(clipped, 0.0, -a / pc)
    if valid is not None:
        loss[~valid] = 0.0
        if grad is not None:
            grad[~valid] = 0.0
    _finish(loss_out, grad_out, grad_weight, os, is_, loss, grad)


@_quiet
def binary_from_probs(
    x, targets, pos_weight, label_smoothing, epsilon, grad_weight, loss_out, grad_out, threads
) -> int:
    outer, n_labels, inner = x.shape
    dtype = _compute_dtype(x)
    for os, is_ in _blocks(outer, n_labels, inner):
        p = _read(x, os, is_, dtype)
        t = _read(targets, os, is_, np.float64)
        bad = _first_bad((_out_of_range(p) | _out_of_range(t)).any(axis=1), os, is_, inner)
        if bad >= 0:
            return bad
        y = t * (1.0 - label_smoothing) + label_smoothing / 2
        pw = _pos_weight_rows(pos_weight, os, is_)
        pc, one_minus, clipped = _clip(p, epsilon)
        elem = -(pw * y * np.log(pc) + (1.0 - y) * np.log(one_minus))
        loss = elem.sum(axis=1) / n_labels
        grad = None
        if grad_out is not None:
            grad = np.where(clipped, 0.0, -pw * y / pc + (1.0 - y) / one_minus) / n_labels
        _finish(loss_out, grad_out, grad_weight, os, is_, loss, grad)
    return -1


KERNELS = {
    "sparse_from_logits": sparse_from_logits,
    "sparse_from_probs": sparse_from_probs,
    "categorical_from_logits": categorical_from_logits,
    "categorical_from_probs": categorical_from_probs,
    "binary_from_logits": binary_from_logits,
    "binary_from_probs": binary_from_probs,
}
