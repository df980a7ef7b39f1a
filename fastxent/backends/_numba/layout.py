"""The Python side of a call: the canonical arguments of KERNELS.md turned into
the few argument types the drivers are compiled for, and the path each call takes.

Imports no numba.
"""

from __future__ import annotations

import functools

import numpy as np


#: float16 arrays reach numba as this one-field record view of their bits (no copy):
#: numba cannot type float16 arrays on the CPU, and a record type cannot be
#: confused with genuine uint16 targets.
_HALF = np.dtype([("bits", np.uint16)])
#: bfloat16 (ml_dtypes) arrays the same way, under a field name of their own: the
#: record type is what tells the compiled code how to widen (and round) the bits.
_BF16 = np.dtype([("bf16", np.uint16)])


def _numba_view(a):
    """``a`` as numba can type it: float16 and bfloat16 as record views of their bits."""
    if a is None or a.dtype.kind == "f" and a.dtype != np.float16:
        return a
    if a.dtype == np.float16:
        return a.view(_HALF)
    return a.view(_BF16) if a.dtype.name == "bfloat16" else a


# Numba compiles one machine-code version per argument *type*: dtype, layout (C or
# any) and read-only flag of every array. The helpers below give the small
# arguments one type each (int64 labels, float64 weights; all inputs read-only
# views), so a call's type varies only with y_pred's dtype and layout and the
# gradient mode: a few compilations serve every caller instead of dozens.


def _input(a):
    """A read-only view (no copy): inputs are typed alike whatever the caller's flags."""
    if a is None or not a.flags.writeable:
        return a
    view = a.view()
    view.flags.writeable = False
    return view


def _small_input(a, dtype):
    """An O(rows) or O(classes) input in ``dtype``, read-only; contiguous unless it is
    a broadcast scalar (zero strides, kept as is: no N-element copy of one value)."""
    if a.size > 1 and not any(a.strides):
        return _input(a.astype(dtype, copy=False) if a.dtype != dtype else a)
    return _input(np.ascontiguousarray(a, dtype=dtype))


def _same_memory(a, b) -> bool:
    """b is a itself (same first element, strides and dtype): the in-place gradient."""
    if a is b:
        return True
    return (a.dtype == b.dtype and a.shape == b.shape and a.strides == b.strides
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])  # fmt: skip


def _flatten(a):
    """(O, 1, I) -> (1, 1, O*I) or (O, I) -> (1, O*I) without a copy, or None."""
    o, i = a.shape[0], a.shape[-1]
    s_o, s_i = a.strides[0], a.strides[-1]
    if i == 1:
        s_i = s_o
    elif o != 1 and s_o != i * s_i:
        return None
    shape = (1,) * (a.ndim - 1) + (o * i,)
    return np.lib.stride_tricks.as_strided(a, shape, (0,) * (a.ndim - 1) + (s_i,))


def _block_size(n_c: int, n_i: int, threads: int) -> int:
    """Rows per block of the column path: about 256K elements (1 MiB of float32; the
    block's second pass then comes from L2/L3) and at least 64 rows, so that each
    class contributes 256 contiguous bytes -- but small enough that every thread
    gets a block. A row's results do not depend on its block."""
    block = min(n_i, max(64, min(4096, (1 << 18) // max(n_c, 1))))
    return int(max(1, min(block, -(-n_i // threads))))


def _contiguous(a, axis: int) -> bool:
    return a.shape[axis] == 1 or a.strides[axis] == a.itemsize


class _Layout:
    """Canonical arguments of one call: float16 and bfloat16 as records, the gradient
    mode, C == 1 rows flattened into one long row axis, the path with its last
    argument (the views' layout, or the column path's rows per block for ``threads``
    threads), and the gradient views' layout.

    The path depends on x and the targets only: a gradient array of another layout
    is written through strided views (``glayout`` None), so that asking for a
    gradient never changes how -- and so with which bits -- the loss is summed."""

    def __init__(self, x, grad_out, dense=None, flat=(), pos_weight=None, threads=1):
        in_place = grad_out is not None and _same_memory(x, grad_out)
        grad = None if grad_out is None or in_place else grad_out
        flat = list(flat)
        if x.shape[1] == 1 and x.shape[0] > 1 and (pos_weight is None or pos_weight.strides[1] == 0 or x.shape[2] == 1):
            views = [_flatten(a) for a in [x, dense, grad] + flat if a is not None]
            if all(v is not None for v in views):
                it = iter(views)
                x = next(it)
                dense = next(it) if dense is not None else None
                grad = next(it) if grad is not None else None
                flat = [next(it) for _ in flat]
                if pos_weight is not None:
                    pos_weight = np.broadcast_to(pos_weight[:, :1], (1, x.shape[2]))
        walked = [a for a in (x, dense) if a is not None]
        n_c, n_i = x.shape[1], x.shape[2]
        rows_ok = n_c == 1 or all(_contiguous(a, 1) for a in walked)
        cols_ok = n_i > 1 and all(_contiguous(a, 2) for a in walked)
        if cols_ok and (n_c == 1 or not rows_ok):
            self.path, self.last = "cols", _block_size(n_c, n_i, threads)
            self.glayout = True if grad is None or _contiguous(grad, 2) else None
        else:
            self.path, self.last = ("rows", True) if rows_ok else ("generic", None)
            self.glayout = True if grad is None or n_c == 1 or _contiguous(grad, 1) else None
        self.x = _numba_view(x) if in_place else _input(_numba_view(x))  # in place: the kernel writes x
        self.dense = _input(_numba_view(dense))
        self.g = True if in_place else _numba_view(grad)  # (a bfloat16 gradient is written as such)
        self.flat = flat
        if pos_weight is not None:  # small (C,) or (C, I): in the compute dtype, contiguous
            cdt = np.float64 if x.dtype == np.float64 else np.float32
            if n_i == 1 or pos_weight.strides[1] == 0:
                pos_weight = np.ascontiguousarray(pos_weight[:, 0], dtype=cdt)  # no per-row lookup
            else:
                pos_weight = np.ascontiguousarray(pos_weight, dtype=cdt)  # pw[c, i0:i0+n] contiguous
        self.pos_weight = _input(pos_weight)

    def driver(self, rows, cols):
        return cols if self.path == "cols" else rows


def _zero_weights(x, n_classes: int):
    """Zero class weights in the compute dtype: what the sparse kernels' element loops
    read when no label smoothing spreads weight over every class (so an inf or NaN
    class weight of a class no row has never reaches them)."""
    return _zeros(n_classes, np.dtype(np.float64 if x.dtype == np.float64 else np.float32))


@functools.lru_cache(maxsize=16)
def _zeros(n: int, dtype) -> np.ndarray:
    zeros = np.zeros(n, dtype)
    zeros.flags.writeable = False
    return zeros


def _int64(value) -> int:
    """An integer as the int64 of its two's complement bits, as C's (int64_t) of a
    uint64: a label is compared with ignore_index that way (KERNELS.md), so
    2**64 - 1 and -1 ignore the same uint64 label."""
    return (int(value) + 2**63) % 2**64 - 2**63


def _compute_weights(x, class_weight):
    """class_weight in the compute dtype, for the element loops (O(C)); a weight
    float32 cannot hold becomes inf there (a class no target uses adds 0 anyway)."""
    with np.errstate(over="ignore"):
        return _small_input(class_weight, np.float64 if x.dtype == np.float64 else np.float32)


def _bounds(x, epsilon):
    """(eps, 1 - eps) rounded to the compute dtype."""
    dt = np.float64 if x.dtype == np.float64 else np.float32
    return dt(epsilon), dt(1) - dt(epsilon)
