"""Sums: compute-dtype block partial sums and NumPy's pairwise summation.

``_pairwise_sum`` and its balanced-tree shortcut give the bits of ``np.sum`` (what
``_reduce.block_sums`` takes), so a driver that sums a block of BLOCK_ROWS losses
itself returns exactly what the per-row losses would have given.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload
from numba.np.arrayobj import make_array

from ... import _constants
from .jit import _OPTS, _helper


#: Terms per compute-dtype partial sum (then added into a float64 sum).
_BLOCK = 64
#: Values per leaf of NumPy's pairwise sum (its PW_BLOCKSIZE, 128): leaves add in 8 lanes.
_LEAF = _constants.PAIRWISE_LEAF


@_helper
def _flush(total, part):
    """total += part (float64); part = 0."""
    for j in range(total.shape[0]):
        total[j] += np.float64(part[j])
        part[j] = 0.0


@intrinsic
def _full_leaf(typingctx, a, lo):
    """The pairwise leaf of a full run a[lo:lo+_LEAF] (contiguous; float32 values
    summed as float64): the eight running sums as one <8 x double> vector, added in
    NumPy's order. Numba runs no SLP vectoriser, so written as eight scalars they
    stay scalar, in the hot loop of a flat binary loss (a leaf per 128 losses); lane j adds a[lo + j],
    a[lo + 8 + j], ... in turn: the bits of NumPy's sum of a.astype(float64)."""
    sig = types.float64(a, lo)

    def codegen(context, builder, signature, args):
        data = make_array(signature.args[0])(context, builder, args[0]).data
        item = context.get_value_type(signature.args[0].dtype)
        vec, wide = ir.VectorType(item, 8), ir.VectorType(ir.DoubleType(), 8)
        run = builder.bitcast(builder.gep(data, [args[1]]), vec.as_pointer())

        def load(q):
            v = builder.load(builder.gep(run, [ir.Constant(ir.IntType(64), q)]), align=4)
            return v if item == ir.DoubleType() else builder.fpext(v, wide)

        lanes = load(0)
        for q in range(1, _LEAF // 8):
            lanes = builder.fadd(lanes, load(q))
        r = [builder.extract_element(lanes, ir.Constant(ir.IntType(32), j)) for j in range(8)]
        add = builder.fadd
        return add(add(add(r[0], r[1]), add(r[2], r[3])), add(add(r[4], r[5]), add(r[6], r[7])))

    return sig, codegen


@_helper
def _pairwise_leaf(a, lo, n):
    """NumPy's pairwise summation of a[lo:lo+n] for n <= _LEAF: eight running sums.
    Over a view from 0 with range loops: with ``a[lo + k]`` in a while loop numba's
    negative-index wraparound stays in and every load is scalar."""
    if n == _LEAF:
        return _full_leaf(a, lo)
    v = a[lo : lo + n]
    if n < 8:
        res = 0.0
        for k in range(n):
            res += v[k]
        return res
    r0, r1, r2, r3 = v[0], v[1], v[2], v[3]
    r4, r5, r6, r7 = v[4], v[5], v[6], v[7]
    for q in range(1, n // 8):
        w = v[q * 8 : q * 8 + 8]  # constant indices: no wraparound select per load
        r0 += w[0]
        r1 += w[1]
        r2 += w[2]
        r3 += w[3]
        r4 += w[4]
        r5 += w[5]
        r6 += w[6]
        r7 += w[7]
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for k in range(n - n % 8, n):
        res += v[k]
    return res


#: Frames of _pairwise_sum's stack: n halves at every level down to _LEAF, so 2**64
#: elements need fewer than 64.
_PAIRWISE_DEPTH = 64


@_helper
def _pairwise_sum(a, lo, n):
    """NumPy's pairwise summation of a[lo:lo+n], step for step: the same bits as
    ``np.sum`` of a contiguous float64 array (what ``_reduce.block_sums`` takes).
    NumPy's recursion (n <= _LEAF: a leaf; else the first n2 = n / 2 rounded down to a
    multiple of 8, plus the rest) with a stack of its own: numba's recursion crashed
    inside a parallel driver, and one function per level would multiply the compile
    time by the depth."""
    if n <= _LEAF:
        return _pairwise_leaf(a, lo, n)
    f_lo = np.empty(_PAIRWISE_DEPTH, np.int64)
    f_n = np.empty(_PAIRWISE_DEPTH, np.int64)
    f_left = np.empty(_PAIRWISE_DEPTH)  # the left half's sum, once it is known
    top = 0
    f_lo[0], f_n[0] = lo, n
    while True:
        while f_n[top] > _LEAF:  # descend into left halves
            n2 = f_n[top] // 2
            f_lo[top + 1], f_n[top + 1] = f_lo[top], n2 - n2 % 8
            top += 1
        v = _pairwise_leaf(a, f_lo[top], f_n[top])
        # a right half (it starts after its parent's start) completes its parent
        while top > 0 and f_lo[top] != f_lo[top - 1]:
            top -= 1
            v = f_left[top] + v
        if top == 0:
            return v
        # a left half: keep its sum, then sum the right half (the rest of the parent)
        top -= 1
        f_left[top] = v
        f_lo[top + 1], f_n[top + 1] = f_lo[top] + f_n[top + 1], f_n[top] - f_n[top + 1]
        top += 1


@_helper
def _pairwise_sum_all(a):
    """_pairwise_sum(a, 0, a.size) of a contiguous 1-D float64 array, without its
    call per leaf when the size is _LEAF * 2**k, as in every full block
    of BLOCK_ROWS rows: NumPy's tree is then balanced, its leaves the consecutive
    runs of _LEAF. The leaves are summed in one loop, then added level by level, left
    + right, as the recursion adds them: the same bits."""
    n = a.shape[0]
    n_leaves = n // _LEAF
    if not _whole_leaves(n):
        return _pairwise_sum(a, 0, n)
    sums = np.empty(n_leaves)
    for k in range(n_leaves):
        sums[k] = _full_leaf(a, k * _LEAF)
    return _leaf_tree(sums, n_leaves)


@_helper
def _leaf_tree(sums, n_leaves):
    """The pairwise sum above the leaves (n_leaves a power of two), in place: added
    level by level, left + right, as NumPy's recursion adds them."""
    while n_leaves > 1:
        n_leaves //= 2
        for k in range(n_leaves):
            sums[k] = sums[2 * k] + sums[2 * k + 1]  # (reads 2k, 2k + 1 >= k: in place)
    return sums[0]


@_helper
def _whole_leaves(n):
    """n rows make a balanced pairwise tree of leaves (_LEAF * 2**k, k >= 1)."""
    n_leaves = n // _LEAF
    return n >= 2 * _LEAF and n % _LEAF == 0 and n_leaves & (n_leaves - 1) == 0


def _store_leaf_tree(loss, q, leaf_sums):
    """loss[q] = the pairwise sum of block q from its leaf sums (block-sums mode, a
    1-D loss; never called with per-row losses)."""


@overload(_store_leaf_tree, jit_options=_OPTS)
def _store_leaf_tree_ol(loss, q, leaf_sums):
    if loss.ndim == 1:
        def store(loss, q, leaf_sums):
            loss[q] = _leaf_tree(leaf_sums, leaf_sums.shape[0])
        return store
    return lambda loss, q, leaf_sums: None


def _store_losses(loss, q, o, i, di, rows, n_c):
    """The losses ``rows[j] / n_c`` of work item q: into the per-row ``loss`` (2-D)
    at rows (o + j, i) when di == 0, else (o, i + j); or, when ``loss`` is 1-D, as
    their pairwise sum into ``loss[q]`` (block-sums mode: work item q is then block
    q of BLOCK_ROWS rows)."""


@overload(_store_losses, jit_options=_OPTS)
def _store_losses_ol(loss, q, o, i, di, rows, n_c):
    if loss.ndim == 1:
        def block_sum(loss, q, o, i, di, rows, n_c):
            if n_c != 1:  # (x / 1 is x: no pass for binary outputs of one column)
                for j in range(rows.shape[0]):
                    rows[j] = rows[j] / n_c
            loss[q] = _pairwise_sum_all(rows)
        return block_sum

    def per_row(loss, q, o, i, di, rows, n_c):
        if di == 0:
            for j in range(rows.shape[0]):
                loss[o + j, i] = rows[j] / n_c
        else:
            for j in range(rows.shape[0]):
                loss[o, i + j] = rows[j] / n_c
    return per_row
