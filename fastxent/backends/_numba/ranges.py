"""Range checks and the first bad row: the one channel through which a kernel
reports an input outside [0, 1] (KERNELS.md: the lowest flat row index, whatever
the thread count, or -1).
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import intrinsic
from numba.np.arrayobj import make_array

from .jit import _helper
from .math import _one_like, _x_value, _zero_like


@_helper(inline=True)
def _out_of_range(p):
    """p outside [0, 1] (NaN is not)."""
    return (p < _zero_like(p)) | (p > _one_like(p))


@_helper
def _slot(value):
    """A one-element int64 array holding ``value``, for _lower. (Made in a helper of
    its own: where the parfor pass saw the ``np.full``, the kernel's updates were
    lost and the driver read the initial value.)"""
    return np.full(1, value, np.int64)


@intrinsic
def _lower(typingctx, smallest, value):
    """smallest[0] = min(smallest[0], value), atomically (an int64 array shared by
    the threads): the first bad row whatever thread finds which."""
    sig = types.void(smallest, value)

    def codegen(context, builder, signature, args):
        ary = make_array(signature.args[0])(context, builder, args[0])
        v = context.cast(builder, args[1], signature.args[1], types.int64)
        builder.atomic_rmw("min", ary.data, v, "monotonic")
        return context.get_dummy_value()

    return sig, codegen


@_helper
def _count_out_of_range(xv, bad):
    """bad[j] += 1 where xv[j] is outside [0, 1]. A loop of its own: two accumulator
    arrays updated in one loop need more runtime overlap checks than LLVM will
    emit, and the whole loop stayed scalar."""
    for j in range(bad.shape[0]):
        p = _x_value(xv[j])
        bad[j] += _one_like(p) if _out_of_range(p) else _zero_like(p)


@_helper
def _first_bad_in_block(bad, o, i0, n_i, none):
    """Flat index of the first row of a block with a probability outside [0, 1]."""
    for j in range(bad.shape[0]):
        if bad[j] != 0.0:
            return o * n_i + i0 + j
    return none
