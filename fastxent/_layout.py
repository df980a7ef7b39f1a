"""Views of arrays in the kernels' canonical ``(O, C, I)`` layout.

A loss treats one axis of ``y_pred`` as the class axis (the label axis for binary
losses); every other position is a *row* (one sample). Kernels see ``y_pred`` as a
3-D view ``(O, C, I)``: ``O`` is the product of the dimensions before the class
axis, ``I`` the product of those after it, and row ``(o, i)`` has the flat index
``o * I + i`` -- its C-order position in the per-sample shape. Getting there needs
no copy for C-ordered, Fortran-ordered and most strided arrays; a layout whose
dimensions cannot be merged is copied once, in its own dtype (see :func:`_reshape`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RowLayout:
    """How an array with a class axis maps onto ``(O, C, I)``.

    ``swap`` marks a 2-D ``(N, C)`` array whose row axis is the faster one
    (Fortran order, or a transposed view): it is viewed as ``(1, C, N)`` so kernels
    stream along rows. ``virtual`` marks a binary loss without a label axis
    (``axis=None``, or 1-D ``y_pred``): every element is a row, viewed as
    ``(prod(shape[:-1]), 1, shape[-1])``.
    """

    sample_shape: tuple  # the per-sample shape: y_pred's shape without the class axis
    outer: int  # O
    classes: int  # C
    inner: int  # I
    swap: bool = False
    virtual: bool = False

    @property
    def n_rows(self) -> int:
        return self.outer * self.inner

    def view3(self, a: np.ndarray) -> np.ndarray:
        """``a`` (shaped like ``y_pred``) as ``(O, C, I)``."""
        if self.swap:
            return a[:, :, None].transpose(2, 1, 0)
        return _reshape(a, (self.outer, self.classes, self.inner))

    def view2(self, a: np.ndarray) -> np.ndarray:
        """``a`` (shaped like :attr:`sample_shape`) as the ``(O, I)`` grid of rows."""
        return _reshape(a, (self.outer, self.inner))

    def position(self, row: int) -> tuple:
        """The index into :attr:`sample_shape` of flat row ``row``."""
        return tuple(int(k) for k in np.unravel_index(row, self.sample_shape))


def class_axis_layout(a: np.ndarray, axis: int) -> RowLayout:
    """Layout of ``a`` with class axis ``axis`` (non-negative)."""
    shape = a.shape
    sample_shape = shape[:axis] + shape[axis + 1 :]
    outer, classes, inner = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])
    if a.ndim == 2 and axis == 1 and outer > 1 and abs(a.strides[0]) < abs(a.strides[1]):
        return RowLayout(sample_shape, 1, classes, outer, swap=True)
    return RowLayout(sample_shape, outer, classes, inner)


def elementwise_layout(a: np.ndarray) -> RowLayout:
    """Layout of ``a`` when every element is its own row (binary, no label axis)."""
    shape = a.shape
    last = shape[-1] if shape else 1
    return RowLayout(shape, math.prod(shape[:-1]), 1, last, virtual=True)


def _reshape(a: np.ndarray, shape: tuple) -> np.ndarray:
    """Reshape as a view, falling back to one copy for layouts that need it."""
    try:
        return a.reshape(shape, copy=False)
    except ValueError:
        # Dimensions whose strides cannot merge (e.g. a stepped slice of a
        # non-class axis of a 3-D array): one copy in the array's own dtype.
        return np.ascontiguousarray(a).reshape(shape)
