"""Reductions of per-row losses: none, sum, mean and weighted mean.

Every sum is float64 and has a fixed shape: rows are cut into blocks of
:data:`BLOCK_ROWS` consecutive rows (aligned to the global row index), each block is
summed on its own, then the block sums are summed. The result therefore does not
depend on thread counts, and a stream of chunks whose sizes are multiples of
``BLOCK_ROWS`` (``fastxent eval``, ``fastxent.dask``) gives the same bits as one call.

The denominator of a mean does not depend on ``y_pred``, so it is known before the
kernel runs and the kernel can write the gradient of the final result directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._constants import BLOCK_ROWS  # (the kernels' block sums use it too)
#: Rows per temporary when products must be formed (weights times losses):
#: bounds the extra memory of a reduction to 1 MiB whatever N is.
_CHUNK_ROWS = 1 << 17


#: constant arrays already made, by (value, sign, shape): they are read-only, so
#: calls share them, and a loop of small calls pays a dict lookup, not an array.
_constants: dict = {}


def constant(value: float, shape: tuple) -> np.ndarray:
    """A read-only float64 array of ``shape`` holding ``value`` everywhere (all
    strides 0: 8 bytes whatever the shape), as ``np.broadcast_to`` makes, without
    its per-call cost, which small calls would pay several times."""
    key = (value, math.copysign(1.0, value), shape)  # the sign tells -0.0 from 0.0
    out = _constants.get(key)
    if out is None:
        out = np.ndarray(shape, np.float64, np.full(1, value, np.float64), 0, (0,) * len(shape))
        out.flags.writeable = False
        if len(_constants) >= 256:
            _constants.clear()
        _constants[key] = out
    return out


def block_sums(values: np.ndarray, weights=None) -> np.ndarray:
    """Sums of ``values * weights`` over consecutive blocks of ``BLOCK_ROWS`` rows.

    ``values`` and ``weights`` (an array of the same shape, a scalar or None) are
    indexed by rows in C order. Returns float64 block sums, the last block possibly
    partial; :func:`total` finishes the reduction.
    """
    flat = values.reshape(-1)
    n = flat.size
    if weights is not None:
        weights = float(weights) if np.ndim(weights) == 0 else weights.reshape(-1)
    out = np.empty(-(-n // BLOCK_ROWS), dtype=np.float64)
    for start in range(0, n, _CHUNK_ROWS):
        stop = min(n, start + _CHUNK_ROWS)
        chunk = flat[start:stop]
        if weights is not None:
            chunk = chunk * (weights if isinstance(weights, float) else weights[start:stop])
        _sum_blocks(chunk.astype(np.float64, copy=False), out[start // BLOCK_ROWS :])
    return out


def _sum_blocks(chunk: np.ndarray, out: np.ndarray) -> None:
    full = chunk.size // BLOCK_ROWS
    if full:
        np.sum(chunk[: full * BLOCK_ROWS].reshape(full, BLOCK_ROWS), axis=1, out=out[:full])
    if chunk.size % BLOCK_ROWS:
        out[full] = np.sum(chunk[full * BLOCK_ROWS :])


def total(block_sums_: np.ndarray) -> float:
    """The final float64 sum of block sums (pairwise, in block order)."""
    return float(np.add.reduce(block_sums_, dtype=np.float64))  # np.sum without its wrapper


def valid_mask(labels: np.ndarray, ignore_index: int | None):
    if ignore_index is None:
        return None
    return labels != ignore_index


@dataclass
class Partial:
    """The mergeable pieces of a reduction over a block-aligned run of rows.

    A single call builds one from its per-row losses; streams (``fastxent eval``,
    ``fastxent.dask``) build the same block sums with :class:`BlockSums`, so
    :func:`finish` gives the same bits either way.
    """

    numerator: np.ndarray  # block sums of s_i * l_i
    count: int  # sum_i v_i: rows that are not ignored
    weight: np.ndarray | None  # block sums of v_i * s_i * c_i (weighted_mean only)


def denominator_parts(problem) -> tuple[int, np.ndarray | None]:
    """What the denominator needs, known before the kernel runs: (count, weight blocks)."""
    count = problem.n_rows
    if problem.kind == "sparse" and problem.ignore_index is not None and problem.reduction != "none":
        count = _count_valid(problem.aux, problem.ignore_index)
    weight = None
    if problem.reduction == "weighted_mean":
        weight = block_sums(row_weights(problem), _sample_weight_factor(problem))
    return count, weight


def denominator(reduction: str, count: int, weight: np.ndarray | None) -> float:
    """The divisor of the reduction: 1, the count of valid rows, or their weight."""
    if reduction == "mean":
        return float(count)
    if reduction == "weighted_mean":
        return total(weight)
    return 1.0


def finish(part: Partial, reduction: str, dtype: np.dtype):
    """The reduced loss as a NumPy scalar of ``dtype``."""
    numerator = total(part.numerator)
    if reduction == "sum":
        return dtype.type(numerator)
    denom = denominator(reduction, part.count, part.weight)
    return dtype.type(0.0 if denom == 0 else numerator / denom)


def _count_valid(labels: np.ndarray, ignore_index: int) -> int:
    flat = labels.reshape(-1)
    ignored = 0
    for start in range(0, flat.size, _CHUNK_ROWS):
        ignored += int(np.count_nonzero(flat[start : start + _CHUNK_ROWS] == ignore_index))
    return flat.size - ignored


def _sample_weight_factor(problem):
    sw = problem.sample_weight
    return 1.0 if sw is None else sw


def row_weights(problem) -> np.ndarray:
    """``v_i * c_i`` per row, as an ``(O, I)`` float64 array (or ones)."""
    layout = problem.layout
    shape = (layout.outer, layout.inner)
    cw = problem.class_weight
    if problem.kind == "sparse":
        labels = problem.aux
        valid = valid_mask(labels, problem.ignore_index)
        if cw is None:
            if valid is None:
                return np.ones(shape)
            return valid.astype(np.float64)
        safe = labels if valid is None else np.where(valid, labels, 0)
        c = cw[safe]
        return c if valid is None else np.where(valid, c, 0.0)
    if problem.kind == "categorical" and cw is not None:
        # c_i = sum_c w_c * y_ic over the unsmoothed targets, one row block at a time.
        targets = problem.aux  # (O, C, I)
        out = np.empty(shape)
        step = max(1, _CHUNK_ROWS // max(1, layout.classes * layout.inner))
        for o in range(0, layout.outer, step):
            block = targets[o : o + step].astype(np.float64)
            # a class no target of the row uses adds 0, whatever its weight (even inf)
            with np.errstate(invalid="ignore"):
                terms = np.where(block != 0, cw[None, :, None] * block, 0.0)
            out[o : o + step] = terms.sum(axis=1)
        return out
    return np.ones(shape)


def grad_weight(problem, denom: float) -> np.ndarray:
    """Per-row multiplier of the gradient: sample weight over the denominator."""
    layout = problem.layout
    shape = (layout.outer, layout.inner)
    scale = 0.0 if denom == 0 else 1.0 / denom
    sw = problem.sample_weight
    if sw is None or np.ndim(sw) == 0:
        s = 1.0 if sw is None else sw
        return constant(s * scale, shape)
    return sw * scale


def per_sample(problem, loss_rows: np.ndarray) -> np.ndarray:
    """``reduction="none"``: per-sample losses times sample weights, in the result dtype."""
    sw = problem.sample_weight
    with np.errstate(invalid="ignore", over="ignore"):  # weights multiply as given (inf * 0 is NaN)
        out = loss_rows if sw is None else loss_rows * sw
    return out.astype(problem.result_dtype).reshape(problem.layout.sample_shape)


class BlockSums:
    """Float64 block sums of a stream of per-row values, cut as one call cuts them.

    Values arrive in row order in pieces of any size; every block of
    ``BLOCK_ROWS`` consecutive rows is summed by :func:`block_sums` on its
    own, whether it arrived whole or in pieces.
    """

    def __init__(self):
        self._sums: list[np.ndarray] = []
        self._pending = np.empty(BLOCK_ROWS)
        self._filled = 0

    def add(self, values: np.ndarray) -> None:
        values = values.reshape(-1)
        if self._filled:
            take = min(BLOCK_ROWS - self._filled, values.size)
            self._pending[self._filled : self._filled + take] = values[:take]
            self._filled += take
            values = values[take:]
            if self._filled < BLOCK_ROWS:
                return
            self._sums.append(block_sums(self._pending))
            self._filled = 0
        whole = values.size - values.size % BLOCK_ROWS
        if whole:
            self._sums.append(block_sums(values[:whole]))
        rest = values[whole:]
        self._pending[: rest.size] = rest
        self._filled = rest.size

    def result(self) -> np.ndarray:
        parts = list(self._sums)
        if self._filled:
            parts.append(block_sums(self._pending[: self._filled]))
        return np.concatenate(parts) if parts else np.zeros(0)
