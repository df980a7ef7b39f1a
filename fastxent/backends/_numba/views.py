"""Views and small building blocks shared by the kernel families.

Rows and columns of the canonical (O, C, I) arrays as 1-D views without reference
counting, the argument kinds that select compiled code by their type (gradient
mode, dense or sparse targets, strides, pos_weight shape), and the tiny writers and
scratch allocators the drivers use.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload
from numba.np.arrayobj import make_array, populate_array

from .intrinsics import _float_to_bfloat16
from .jit import _OPTS, _helper
from .math import _as, _is_bfloat16


def _make_view(axis: int, layout: str):
    """An intrinsic ``view(a, o, c, i, n)``: the n elements of the 3-D array ``a``
    from ``a[o, c, i]`` along ``axis``, as a 1-D array of ``layout`` ('C' only when
    the caller checked that this axis has stride == itemsize). The view has no
    meminfo: no atomic reference counting per row (both threads would fight over
    the parent's counter), and the parent outlives the kernel call anyway."""

    @intrinsic
    def view(typingctx, a, o, c, i, n):
        ret = types.Array(a.dtype, 1, layout, readonly=not a.mutable, aligned=a.aligned)
        sig = ret(a, o, c, i, n)

        def codegen(context, builder, signature, args):
            aryty = signature.args[0]
            ary = make_array(aryty)(context, builder, args[0])
            idx = [context.cast(builder, v, t, types.intp) for v, t in zip(args[1:4], signature.args[1:4])]
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, idx)
            strides = cgutils.unpack_tuple(builder, ary.strides, 3)
            out = make_array(signature.return_type)(context, builder)
            count = context.cast(builder, args[4], signature.args[4], types.intp)
            populate_array(out, data=ptr, shape=[count], strides=[strides[axis]],
                           itemsize=ary.itemsize, meminfo=None)  # fmt: skip
            return out._getvalue()

        return sig, codegen

    return view


_row_view_c = _make_view(1, "C")  # a[o, c:c+n, i], contiguous
_row_view_a = _make_view(1, "A")  # a[o, c:c+n, i], any stride
_col_view_c = _make_view(2, "C")  # a[o, c, i:i+n], contiguous
_col_view_a = _make_view(2, "A")  # a[o, c, i:i+n], any stride


# --------------------------------------------------------------------------- argument kinds
# A few arguments change the compiled code through their *type* (numba specialises
# per type and prunes `is None` branches):
#   g       None (loss only) | array (grad_out) | True (in place: write into x)
#   t       None (sparse: target weights from class weights) | array (dense targets)
#   layout  True (x and target views with stride == itemsize) | None (any stride)
#   glayout the same for the gradient's views, chosen apart from x's: the loss's
#           path (and so its bits) never depends on where the gradient goes
#   pw      1-D (C,) pos_weight constant over the inner axis | 2-D (C, I)


def _grad_array(x, g):
    """The array the gradient is written to: g, or x itself in place."""


@overload(_grad_array, jit_options=_OPTS)
def _grad_array_ol(x, g):
    if isinstance(g, types.Array):
        return lambda x, g: g
    return lambda x, g: x


def _rview(a, o, i, n, layout):
    """Row (o, i) of a 3-D array as a 1-D view along the class axis."""


@overload(_rview, jit_options=_OPTS)
def _rview_ol(a, o, i, n, layout):
    if isinstance(layout, types.NoneType):
        return lambda a, o, i, n, layout: _row_view_a(a, o, 0, i, n)
    return lambda a, o, i, n, layout: _row_view_c(a, o, 0, i, n)


def _grad_rview(xr, g, o, i, n, layout):
    """The gradient row matching the x row ``xr`` (``xr`` itself in place)."""


@overload(_grad_rview, jit_options=_OPTS)
def _grad_rview_ol(xr, g, o, i, n, layout):
    if isinstance(g, types.Array):
        return lambda xr, g, o, i, n, layout: _rview(g, o, i, n, layout)
    return lambda xr, g, o, i, n, layout: xr


def _exps_store(gr, g):
    """Where _softmax_row stores a row's exps for the gradient: the gradient row, or
    True in place (the x row itself, see _exps_dest); None without a gradient."""


@overload(_exps_store, jit_options=_OPTS)
def _exps_store_ol(gr, g):
    if isinstance(gr, types.Array) and _is_bfloat16(gr.dtype):  # (see _keeps_exps)
        return lambda gr, g: None
    if isinstance(g, types.Array):
        return lambda gr, g: gr
    if isinstance(g, types.NoneType):
        return lambda gr, g: None
    return lambda gr, g: True


def _exps_dest(xb, er, b0, b1):
    """The block of ``er`` matching the x block ``xb`` = x_row[b0:b1]: ``xb`` itself
    in place (er True), None without a gradient (er None). The same view, not a
    second one of the same memory: LLVM's overlap check would fail and send the
    read-then-write loop to its scalar copy."""


@overload(_exps_dest, jit_options=_OPTS)
def _exps_dest_ol(xb, er, b0, b1):
    if isinstance(er, types.Array):
        return lambda xb, er, b0, b1: er[b0:b1]
    if isinstance(er, types.NoneType):
        return lambda xb, er, b0, b1: None
    return lambda xb, er, b0, b1: xb


def _keep_exp(eb, c, e):
    """eb[c] = e, or nothing when eb is None: chosen by type, no select in the loop."""


@overload(_keep_exp, jit_options=_OPTS)
def _keep_exp_ol(eb, c, e):
    if isinstance(eb, types.NoneType):
        return lambda eb, c, e: None

    def keep(eb, c, e):
        eb[c] = e
    return keep


def _grad_cview(xv, g, o, c, i0, n, glayout):
    """The gradient column block matching ``xv`` (``xv`` itself in place); glayout:
    True when the gradient's inner axis is contiguous, None for any stride."""


@overload(_grad_cview, jit_options=_OPTS)
def _grad_cview_ol(xv, g, o, c, i0, n, glayout):
    if not isinstance(g, types.Array):
        return lambda xv, g, o, c, i0, n, glayout: xv
    if isinstance(glayout, types.NoneType):
        return lambda xv, g, o, c, i0, n, glayout: _col_view_a(g, o, c, i0, n)
    return lambda xv, g, o, c, i0, n, glayout: _col_view_c(g, o, c, i0, n)


def _t_rview(t, o, i, n, layout):
    """Target row, or None for sparse kernels."""


@overload(_t_rview, jit_options=_OPTS)
def _t_rview_ol(t, o, i, n, layout):
    if isinstance(t, types.NoneType):
        return lambda t, o, i, n, layout: None
    return lambda t, o, i, n, layout: _rview(t, o, i, n, layout)


def _t_cview(t, o, c, i0, n):
    """Target column block, or None for sparse kernels."""


@overload(_t_cview, jit_options=_OPTS)
def _t_cview_ol(t, o, c, i0, n):
    if isinstance(t, types.NoneType):
        return lambda t, o, c, i0, n: None
    return lambda t, o, c, i0, n: _col_view_c(t, o, c, i0, n)


def _weight(t, j, w_c, keep, ls_c):
    """Target weight of one class: w_c (sparse smoothing part, t None) or, for a
    dense target t[j], a_c = w_c (t keep + ls/C) -- exactly 0 where t keep + ls/C is
    0, whatever w_c holds (a weight the formula does not use: inf, NaN)."""


@overload(_weight, jit_options=_OPTS)
def _weight_ol(t, j, w_c, keep, ls_c):
    if isinstance(t, types.NoneType):
        return lambda t, j, w_c, keep, ls_c: w_c

    def dense(t, j, w_c, keep, ls_c):
        coef = _as(t[j], w_c) * keep + ls_c
        return w_c * coef if coef != 0 else coef
    return dense


def _pw_row(pw, i):
    """pos_weight[:, i]: the (C,) vector itself when it does not depend on i."""


@overload(_pw_row, jit_options=_OPTS)
def _pw_row_ol(pw, i):
    if pw.ndim == 1:
        return lambda pw, i: pw
    return lambda pw, i: pw[:, i]


def _pw_col(pw, c, i0, n):
    """pos_weight[c, i0:i0+n]: a scalar when it does not depend on i."""


@overload(_pw_col, jit_options=_OPTS)
def _pw_col_ol(pw, c, i0, n):
    if pw.ndim == 1:
        return lambda pw, c, i0, n: pw[c]
    return lambda pw, c, i0, n: pw[c, i0 : i0 + n]


def _part(a, c0, c1):
    """a[c0:c1] for an array; None and scalars (a broadcast weight) as they are."""


@overload(_part, jit_options=_OPTS)
def _part_ol(a, c0, c1):
    if isinstance(a, types.Array):
        return lambda a, c0, c1: a[c0:c1]
    return lambda a, c0, c1: a


def _set(a, k, value):
    """a[k] = value, a gradient element: rounded to nearest even when ``a`` holds
    bfloat16 (a record view of its bits, see layout._BF16), else as numba assigns."""


@overload(_set, jit_options=_OPTS, inline="always")
def _set_ol(a, k, value):
    if _is_bfloat16(a.dtype):
        def set_bfloat16(a, k, value):
            a[k].bf16 = _float_to_bfloat16(value)
        return set_bfloat16

    def set_float(a, k, value):
        a[k] = value
    return set_float


def _set3(a, o, c, i, value):
    """a[o, c, i] = value, as _set."""


@overload(_set3, jit_options=_OPTS, inline="always")
def _set3_ol(a, o, c, i, value):
    if _is_bfloat16(a.dtype):
        def set_bfloat16(a, o, c, i, value):
            a[o, c, i].bf16 = _float_to_bfloat16(value)
        return set_bfloat16

    def set_float(a, o, c, i, value):
        a[o, c, i] = value
    return set_float


def _keeps_exps(gr):
    """Whether a gradient row may hold a row's exps between the softmax's passes
    (_exps_store): not when it holds bfloat16, whose rounding would reach the
    gradient twice (and make a class whose exp rounds to 1 look like the max)."""


@overload(_keeps_exps, jit_options=_OPTS)
def _keeps_exps_ol(gr):
    if isinstance(gr, types.Array) and _is_bfloat16(gr.dtype):
        return lambda gr: False
    return lambda gr: True


def _exps_row(gr):
    """The gradient row holding a row's exps: ``gr`` itself; for a bfloat16 row, which
    never holds them (_keeps_exps), an empty float32 row, so that the code reading
    them is typed for floats only."""


@overload(_exps_row, jit_options=_OPTS, inline="always")
def _exps_row_ol(gr):
    if _is_bfloat16(gr.dtype):
        return lambda gr: np.empty(0, np.float32)
    return lambda gr: gr


@_helper
def _put(a, k, value):
    """a[k] = value (_set). Drivers write into views through this call: numba's parfor
    dead-code elimination does not know that a view made by an intrinsic aliases
    an argument, and silently drops a plain `view[k] = value` in a prange body."""
    _set(a, k, value)


@_helper
def _put3(a, o, c, i, value):
    _set3(a, o, c, i, value)


@_helper
def _fill(gr, value):
    for c in range(gr.shape[0]):
        _set(gr, c, value)


def _compute_zeros(x, k, n):
    """A zeroed (k, n) array of x's compute dtype."""


@overload(_compute_zeros, jit_options=_OPTS)
def _compute_zeros_ol(x, k, n):
    if isinstance(x.dtype, types.Record) or x.dtype == types.float32:
        return lambda x, k, n: np.zeros((k, n), np.float32)
    return lambda x, k, n: np.zeros((k, n), np.float64)


def _compute_empty(x, n):
    """An uninitialised (n,) array of x's compute dtype."""


@overload(_compute_empty, jit_options=_OPTS)
def _compute_empty_ol(x, n):
    if isinstance(x.dtype, types.Record) or x.dtype == types.float32:
        return lambda x, n: np.empty(n, np.float32)
    return lambda x, n: np.empty(n, np.float64)


@_helper
def _fill_col(ga, o, i, value):
    """Gradient of row (o, i) set to ``value`` (special rows of the column path)."""
    for c in range(ga.shape[1]):
        _set3(ga, o, c, i, value)
