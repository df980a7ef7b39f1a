"""The three losses for ``dask.array`` inputs: lazy, on any Dask scheduler, same bits.

``import fastxent.dask`` explicitly (``import fastxent`` never imports Dask; install
it with ``pip install 'fastxent[dask]'``). The functions take the in-memory losses'
arguments, without ``return_grad``/``grad_out``, and return lazy dask arrays: a 0-d
array for a reduction, the per-sample losses for ``reduction="none"``. Nothing is
computed until ``.compute()``; shapes, dtypes and options are checked at once, label
values and probabilities when their chunk runs (with their position in the array).

How the bits stay those of one in-memory call: each chunk of rows yields one float64
term per row (its loss times its sample weight, and for ``"weighted_mean"`` its
weight). Only these 8-byte-per-row arrays are rechunked, into runs of whole
``BLOCK_ROWS`` blocks aligned to the global row index; their block sums, concatenated
in row order, are exactly the ``Partial`` that one call forms, and ``_reduce.finish``
ends both the same way. ``y_pred`` itself is never rechunked along the batch axes, so
any chunking there works; chunks along the class axis are merged first (each task
needs whole rows), with a ``dask.array.PerformanceWarning``.

Every function shipped to workers is a module-level function of this module, so the
graphs run on ``dask.distributed`` clusters too; each chunk runs the backend that the
in-memory call would choose (resolved when the graph is built), so workers need the
same fastxent build as the client.

Example (``y_pred`` an ``(N, C)`` dask array of logits chunked along rows)::

    import fastxent.dask
    loss = fastxent.dask.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    loss.compute()  # a NumPy scalar, the bits of the in-memory call
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from . import _api, _reduce
from .evaluate import check_call, chunk_options, row_terms, row_weights, shift_positions
from ._validate import REDUCTIONS, build_problem


def _dask_array():
    try:
        import dask.array as da
    except ImportError as exc:  # an optional extra
        raise ImportError("fastxent.dask needs dask[array]: pip install 'fastxent[dask]'") from exc
    return da


# --------------------------------------------------------------------------- public functions


def sparse_categorical_crossentropy(
    y_true,
    y_pred,
    *,
    from_logits=False,
    label_smoothing=0.0,
    ignore_index=None,
    class_weight=None,
    sample_weight=None,
    axis=-1,
    reduction="mean",
    epsilon=1e-7,
    backend="auto",
    threads=None,
):
    """:func:`fastxent.sparse_categorical_crossentropy` for dask arrays, lazily.

    ``y_true`` holds integer labels of ``y_pred``'s shape without ``axis``;
    ``sample_weight`` is None, a number, or an array of that per-sample shape. NumPy
    arrays are accepted and wrapped with ``dask.array.asarray``. Returns a 0-d dask
    array, or for ``reduction="none"`` a dask array of per-sample losses chunked as
    ``y_pred`` without its class axis.
    """
    options = dict(from_logits=from_logits, label_smoothing=label_smoothing, ignore_index=ignore_index,
                   class_weight=class_weight, axis=axis, reduction=reduction, epsilon=epsilon,
                   backend=backend, threads=threads)  # fmt: skip
    return _loss("sparse", y_true, y_pred, sample_weight, options)


def categorical_crossentropy(
    y_true,
    y_pred,
    *,
    from_logits=False,
    label_smoothing=0.0,
    class_weight=None,
    sample_weight=None,
    axis=-1,
    reduction="mean",
    epsilon=1e-7,
    backend="auto",
    threads=None,
):
    """:func:`fastxent.categorical_crossentropy` for dask arrays, lazily.

    ``y_true`` holds targets of ``y_pred``'s shape (it is rechunked to ``y_pred``'s
    chunks if they differ). Returns as :func:`sparse_categorical_crossentropy`.
    """
    options = dict(from_logits=from_logits, label_smoothing=label_smoothing, class_weight=class_weight,
                   axis=axis, reduction=reduction, epsilon=epsilon, backend=backend, threads=threads)  # fmt: skip
    return _loss("categorical", y_true, y_pred, sample_weight, options)


def binary_crossentropy(
    y_true,
    y_pred,
    *,
    from_logits=False,
    label_smoothing=0.0,
    pos_weight=None,
    sample_weight=None,
    axis=-1,
    reduction="mean",
    epsilon=1e-7,
    backend="auto",
    threads=None,
):
    """:func:`fastxent.binary_crossentropy` for dask arrays, lazily.

    The label ``axis`` is merged into one chunk like a class axis; with ``axis=None``
    (or a 1-D ``y_pred``) every element is a sample and any chunking works.
    Returns as :func:`sparse_categorical_crossentropy`.
    """
    options = dict(from_logits=from_logits, label_smoothing=label_smoothing, pos_weight=pos_weight,
                   axis=axis, reduction=reduction, epsilon=epsilon, backend=backend, threads=threads)  # fmt: skip
    return _loss("binary", y_true, y_pred, sample_weight, options)


# --------------------------------------------------------------------------- graph construction


def _loss(kind: str, y_true, y_pred, sample_weight, options: dict):
    da = _dask_array()
    y_pred, y_true = _as_dask(da, y_pred, "y_pred"), _as_dask(da, y_true, "y_true")
    sw = sample_weight
    if sw is not None and np.ndim(sw) == 0:
        sw = float(sw) if isinstance(sw, np.ndarray) else sw
    elif sw is not None:
        sw = _as_dask(da, sw, "sample_weight")
    sw_spec = (sw.shape, sw.dtype) if isinstance(sw, da.Array) else sw
    problem, plan = check_call(kind, (y_true.shape, y_true.dtype), (y_pred.shape, y_pred.dtype), sw_spec, options)
    reduction = REDUCTIONS[options["reduction"]]
    ax = problem.axis  # None: binary, every element a sample
    sample_shape = problem.layout.sample_shape

    if ax is not None and y_pred.numblocks[ax] > 1:
        warnings.warn(
            f"y_pred is chunked along its class axis {ax} ({y_pred.numblocks[ax]} chunks): fastxent.dask merges "
            "them (every task needs whole rows), which rechunks y_pred; chunk along the other axes only to avoid it",
            da.PerformanceWarning,
            stacklevel=3,
        )
        y_pred = y_pred.rechunk({ax: -1})
    # Labels and weights follow y_pred's chunks, with a size-1 axis where y_pred's class
    # axis is (so that blocks line up); dense targets take y_pred's chunks as they are.
    if kind == "sparse":
        y_true = _along(y_true.reshape(sample_shape), y_pred, ax)
    else:
        y_true = y_true.reshape(y_pred.shape).rechunk(y_pred.chunks)
    if isinstance(sw, da.Array):
        # A lazy scalar becomes one weight per sample: the same products, the same bits.
        sw = da.broadcast_to(sw, sample_shape) if sw.ndim == 0 else sw.reshape(sample_shape)
        sw = _along(sw, y_pred, ax)

    common = dict(kind=kind, options=chunk_options(problem, plan, options, "sum"), ax=ax,
                  slice_pos_weight=_slices_pos_weight(problem, options))  # fmt: skip
    drop = () if ax is None else (ax,)
    if reduction == "none":
        common["options"] = chunk_options(problem, plan, options, "none")
        return da.map_blocks(_none_block, y_true, y_pred, sw, **common, drop_axis=drop,
                             dtype=problem.result_dtype, meta=np.empty((0,) * len(sample_shape), problem.result_dtype))  # fmt: skip

    meta = np.empty((0,) * len(sample_shape), np.float64)
    numerators = da.map_blocks(_numerator_block, y_true, y_pred, sw, **common, drop_axis=drop, dtype=np.float64, meta=meta)
    args = [_block_sums(da, numerators), "i"]
    if reduction == "weighted_mean":
        # The denominator needs labels or targets and weights, not the predictions.
        weights = da.map_blocks(_weight_block, y_true, sw, **common, n_classes=problem.n_classes,
                                pred_dtype=y_pred.dtype, dtype=np.float64, meta=meta,
                                drop_axis=() if ax is None or kind == "sparse" else (ax,))  # fmt: skip
        if kind == "sparse" and ax is not None:
            weights = weights.squeeze(axis=ax)
        args += [_block_sums(da, weights), "j"]
    else:
        args += [None, None]
    if reduction == "mean" and kind == "sparse" and problem.ignore_index is not None:
        args += [da.count_nonzero(y_true != problem.ignore_index), ""]
    else:
        args += [problem.n_rows, None]
    return da.blockwise(_finish, "", *args, reduction=reduction, result_dtype=problem.result_dtype,
                        dtype=problem.result_dtype, concatenate=True, meta=np.empty((), problem.result_dtype))  # fmt: skip


def _as_dask(da, value, name: str):
    if isinstance(value, da.Array):
        a = value
    else:  # chunks along the first axis only: a class axis elsewhere stays whole
        value = np.asarray(value)
        a = da.from_array(value, chunks=("auto",) + (-1,) * (value.ndim - 1) if value.ndim else ())
    if any(math.isnan(s) for s in a.shape):
        raise ValueError(f"{name}: expected known chunk sizes, got unknown ones (call {name}.compute_chunk_sizes())")
    return a


def _along(a, y_pred, ax):
    """``a`` (per-sample shape) chunked as ``y_pred``, with a size-1 axis at ``ax``."""
    if ax is None:
        return a.rechunk(y_pred.chunks)
    chunks = y_pred.chunks[:ax] + y_pred.chunks[ax + 1 :]
    return a.rechunk(chunks)[(slice(None),) * ax + (None,)]


def _slices_pos_weight(problem, options) -> bool:
    """Binary without a label axis: pos_weight holds one value per index of the last axis."""
    pw = options.get("pos_weight")
    return problem.kind == "binary" and problem.layout.virtual and np.ndim(pw) == 1 and np.size(pw) > 1


def _block_sums(da, per_sample):
    """Block sums of per-sample float64 terms, in row order, in the blocks one call forms."""
    flat = per_sample.reshape(-1)
    flat = flat.rechunk((_aligned(flat.chunks[0]),))
    blocks = tuple(-(-c // _reduce.BLOCK_ROWS) for c in flat.chunks[0])
    return flat.map_blocks(_reduce.block_sums, chunks=(blocks,), dtype=np.float64)


def _aligned(chunks: tuple) -> tuple:
    """Chunk sizes whose boundaries are the given ones rounded down to whole blocks."""
    total = sum(chunks)
    bounds, edge = [0], 0
    for c in chunks[:-1]:
        edge += c
        b = edge - edge % _reduce.BLOCK_ROWS
        if b > bounds[-1]:
            bounds.append(b)
    if total > bounds[-1] or total == 0:
        bounds.append(total)
    return tuple(b - a for a, b in zip(bounds[:-1], bounds[1:]))


# --------------------------------------------------------------------------- tasks (run on workers)


def _block_problem(y_true, y_pred, sample_weight, kind, options, ax, slice_pos_weight, location):
    opts = dict(options)
    if ax is not None:
        if kind == "sparse":
            y_true = np.squeeze(y_true, axis=ax)
        if isinstance(sample_weight, np.ndarray):
            sample_weight = np.squeeze(sample_weight, axis=ax)
    if sample_weight is not None:
        opts["sample_weight"] = sample_weight
    if slice_pos_weight:
        start, stop = location[-1]
        opts["pos_weight"] = np.asarray(opts["pos_weight"])[start:stop]
    return build_problem(kind, y_true, y_pred, **opts)


def _offsets(location, ax) -> tuple:
    """Where a block starts, in y_pred's indices and in the per-sample indices."""
    starts = tuple(start for start, _ in location)
    return starts, starts if ax is None else starts[:ax] + starts[ax + 1 :]


def _none_block(y_true, y_pred, sample_weight, *, kind, options, ax, slice_pos_weight, block_info=None):
    location = block_info[1]["array-location"]
    try:
        return _api.run(_block_problem(y_true, y_pred, sample_weight, kind, options, ax, slice_pos_weight, location))
    except ValueError as exc:
        raise ValueError(shift_positions(str(exc), *_offsets(location, ax))) from None


def _numerator_block(y_true, y_pred, sample_weight, *, kind, options, ax, slice_pos_weight, block_info=None):
    """``s_i * l_i`` per sample of the block, float64."""
    location = block_info[1]["array-location"]
    try:
        problem = _block_problem(y_true, y_pred, sample_weight, kind, options, ax, slice_pos_weight, location)
        return row_terms(problem, weighted=False).numerator.reshape(problem.layout.sample_shape)
    except ValueError as exc:
        raise ValueError(shift_positions(str(exc), *_offsets(location, ax))) from None


def _weight_block(y_true, sample_weight, *, kind, options, ax, slice_pos_weight, n_classes, pred_dtype,
                  block_info=None):  # fmt: skip
    """``v_i * s_i * c_i`` per sample of the block, float64 (keeps a size-1 class axis for sparse)."""
    location = block_info[0]["array-location"]
    shape = list(y_true.shape)
    if ax is not None:
        shape[ax] = n_classes
        location = location[:ax] + [(0, n_classes)] + location[ax + 1 :]
    # Predictions are not read: a zero-stride stand-in gives the layout.
    stand_in = np.broadcast_to(np.zeros((), pred_dtype), shape)
    try:
        problem = _block_problem(y_true, stand_in, sample_weight, kind, options, ax, slice_pos_weight, location)
    except ValueError as exc:
        raise ValueError(shift_positions(str(exc), *_offsets(location, ax))) from None
    weights = row_weights(problem).reshape(problem.layout.sample_shape)
    return weights if kind != "sparse" or ax is None else np.expand_dims(weights, ax)


def _finish(numerator_blocks, weight_blocks, count, *, reduction, result_dtype):
    """The reduced loss from the concatenated block sums: ``_reduce.finish`` as one call."""
    part = _reduce.Partial(numerator_blocks, int(count), weight_blocks)
    return _reduce.finish(part, reduction, np.dtype(result_dtype))
