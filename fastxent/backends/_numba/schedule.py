"""The dynamic claim scheduler shared by every driver.

A driver runs one prange worker a thread; each worker claims work items (rows or
blocks of rows) from an atomic counter until none are left (``_claims``, ``_claim``,
``_next_item``). Which thread takes an item never changes a result: every item
writes outputs of its own.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import intrinsic
from numba.np.arrayobj import make_array

from .jit import _helper


#: Elements a thread claims at a time (``_claims``), and claims a worker has at least.
_CLAIM_ELEMENTS = 1 << 16
_CLAIMS_PER_WORKER = 16


@_helper
def _claims(n_items, item_size, workers):
    """The shared state of a driver's claims, for ``n_items`` work items of about
    ``item_size`` elements each: an int64 array with the claim counter at [0] and,
    a cache line further, the items a claim takes at [8] and n_items at [9].

    Drivers schedule dynamically: one worker a thread takes its items a claim at a
    time (``_claim``, ``_next_item``) until none are left, as OpenMP's dynamic
    schedule does for the Cython kernels: Numba's 'omp' layer splits a prange
    statically, so one thread slowed by another process held up the whole call.
    Claims are about _CLAIM_ELEMENTS elements (an atomic add on a shared cache line
    is not free) and at least _CLAIMS_PER_WORKER a worker, so the last claims even
    out the threads' finishing times. Which thread takes an item never changes a result:
    every item writes outputs of its own."""
    claims = np.zeros(16, np.int64)
    claims[8] = max(1, min(_CLAIM_ELEMENTS // max(item_size, 1), n_items // (_CLAIMS_PER_WORKER * workers)))
    claims[9] = n_items
    return claims


@intrinsic
def _fetch_add(typingctx, counter, n):
    """Add n to counter[0] atomically and return its value before (an int64 array
    shared by the threads)."""
    sig = types.int64(counter, n)

    def codegen(context, builder, signature, args):
        ary = make_array(signature.args[0])(context, builder, args[0])
        step = context.cast(builder, args[1], signature.args[1], types.int64)
        return builder.atomic_rmw("add", ary.data, step, "monotonic")

    return sig, codegen


@_helper(inline=True)
def _claim(claims):
    """(first item, end) of the next claim of ``_claims``' items; (n, n) once every
    item is taken."""
    step, n = claims[8], claims[9]
    start = _fetch_add(claims, step)
    return min(start, n), min(start + step, n)


@_helper(inline=True)
def _next_item(claims, q, end):
    """The work item after q and the end of its claim: q + 1 while the claim lasts,
    then the start of a new one (see _claim)."""
    if q + 1 < end:
        return q + 1, end
    return _claim(claims)


@_helper
def _block(q, n_blocks, block, n_i):
    """(o, i0, nb) of work item q of the column path."""
    o = q // n_blocks
    i0 = (q - o * n_blocks) * block
    return o, i0, min(block, n_i - i0)
