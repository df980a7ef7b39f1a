"""Sparse cross-entropy of a linear layer's outputs, without their N x V logits.

``linear_cross_entropy(y_true, hidden, weight, bias)`` is the sparse categorical
cross-entropy of ``logits = hidden @ weight.T + bias``, the last layer of a language
model or classifier, where the logits (2,048 tokens x a 128,256 vocabulary is 1 GB of
float32) would cost more memory than everything else in the step. Rows go through
in blocks: one block of logits at a time is formed by the BLAS matrix product NumPy
links into one preallocated buffer, its loss and gradient come from the library's
fused kernel (the gradient written over the logits, in place), and the gradient is
multiplied straight into ``grad_hidden``, ``grad_weight`` and ``grad_bias`` before the
buffer is reused. Nothing is computed twice.

When even a few rows of the whole vocabulary exceed the memory budget, the
vocabulary is cut into blocks too: a first pass keeps a running maximum and sum of
exponentials per row (an online log-sum-exp, the label's logit picked up in its
block), and a second pass forms each block's logits again and its gradient from
them (the one product computed twice, and only with ``return_grad``). That path
does its arithmetic in NumPy here rather than in a kernel, since a kernel sees one
whole row at a time.

Where each computation lives, so options that change the per-row math slot in:
:meth:`_Blocks.row_block` runs one block of whole rows through the kernel (an
option the kernel takes goes into ``_Blocks.kernel_options``), and
:class:`_OnlineRows` holds the vocabulary-blocked path's per-row math
(``update`` per vocabulary block, ``finish`` for the loss, ``gradient`` per block).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _reduce
from ._api import sparse_categorical_crossentropy
from ._introspect import explain
from ._layout import class_axis_layout
from ._validate import (as_array, check_ignore_index, check_logit_options, check_options, coerce_class_weight,
                        coerce_labels, coerce_sample_weight)

#: Default memory budget for one block of logits. Each block's product packs the whole
#: of ``weight`` again (BLAS copies its operands into its own panel layout), so blocks
#: of more rows cost less per row; and a multi-threaded BLAS splits the gradient's
#: ``G @ weight`` (a contraction over the vocabulary) badly when a block has few rows,
#: so the budget aims at blocks of several hundred rows. 2,048 x 32,000 float32 logits
#: (250 MiB) go through in 6 blocks of 342 rows.
#: ``benchmarks/linear.py --budgets`` compares budgets.
BLOCK_BYTES = 48 << 20
#: Fewest rows a block of the whole vocabulary may have (a float32 vocabulary above
#: 786,432 classes with the default budget): below it the vocabulary is cut into
#: blocks as well, and each block of :data:`VOCAB_BLOCK_ROWS` rows goes through the
#: vocabulary in as many classes as the budget holds (more rows per block: the
#: weight is packed fewer times).
MIN_BLOCK_ROWS = 16
VOCAB_BLOCK_ROWS = 256
#: Bytes of the scratch receiving a slice of one block's weight gradient before it
#: is added to ``grad_weight`` (NumPy has no product that accumulates into ``out``).
ACCUMULATE_BYTES = 8 << 20



@dataclass
class LinearProblem:
    """A validated call, arrays in the compute dtype, rows flattened."""

    hidden: np.ndarray  # (N, d), compute dtype
    weight: np.ndarray  # (V, d), compute dtype
    bias: np.ndarray | None  # (V,), compute dtype
    labels: np.ndarray  # (N,) integers
    valid: np.ndarray | None  # (N,) bool: not ignored (None: no ignore_index)
    class_weight: np.ndarray | None  # (V,) float64
    sample_weight: np.ndarray | float | None  # (N,) float64 or a scalar
    label_smoothing: float
    ignore_index: int | None
    reduction: str  # "none" | "sum" | "mean" | "weighted_mean"
    return_grad: bool
    z_loss: float  # z * lse**2 added to each non-ignored row's loss; 0: off
    softcap: float  # logits read as softcap * tanh(x / softcap); 0: off
    return_lse: bool  # also return each row's logsumexp (of the capped logits)
    block: tuple  # (rows, classes) of one block of logits
    backend: str
    threads: int | None
    dtype: np.dtype  # compute and result dtype: float32 or float64
    sample_shape: tuple  # hidden's shape without its last axis
    hidden_shape: tuple

    @property
    def n_rows(self) -> int:
        return self.hidden.shape[0]

    @property
    def vocab(self) -> int:
        return self.weight.shape[0]


def linear_cross_entropy(
    y_true,
    hidden,
    weight,
    bias=None,
    *,
    ignore_index=None,
    label_smoothing=0.0,
    class_weight=None,
    sample_weight=None,
    reduction="mean",
    return_grad=False,
    z_loss=0.0,
    logit_softcap=None,
    return_lse=False,
    chunk=None,
    backend="auto",
    threads=None,
):
    """Sparse categorical cross-entropy of ``hidden @ weight.T + bias``, without ever
    holding those N x V logits.

    The loss (and, with ``return_grad=True``, its gradients with respect to
    ``hidden``, ``weight`` and ``bias``) equals
    ``sparse_categorical_crossentropy(y_true, hidden @ weight.T + bias, from_logits=True, ...)``
    with the same options, to rounding. Blocks of rows go through NumPy's BLAS
    product into one preallocated buffer and the library's fused kernel, which
    writes each block's gradient over its logits; the extra memory is that buffer
    plus a few MB, and the gradients themselves.

    >>> import numpy as np, fastxent
    >>> rng = np.random.default_rng(0)
    >>> hidden = rng.standard_normal((4, 8)).astype(np.float32)
    >>> weight = rng.standard_normal((10, 8)).astype(np.float32)
    >>> bias = np.zeros(10, np.float32)
    >>> labels = np.array([1, 0, 9, -100])
    >>> loss, g_hidden, g_weight, g_bias = fastxent.linear_cross_entropy(
    ...     labels, hidden, weight, bias, ignore_index=-100, return_grad=True)
    >>> unfused = fastxent.sparse_categorical_crossentropy(
    ...     labels, hidden @ weight.T + bias, from_logits=True, ignore_index=-100)
    >>> print(loss.dtype, np.isclose(loss, unfused), g_hidden.shape, g_weight.shape, g_bias.shape)
    float32 True (4, 8) (10, 8) (10,)
    >>> g_hidden[3].tolist() == [0.0] * 8  # the ignored row
    True

    A z-loss, a soft cap and each row's log-sum-exp, as the sparse loss has them:

    >>> loss, lse = fastxent.linear_cross_entropy(
    ...     labels, hidden, weight, bias, ignore_index=-100, z_loss=1e-4, logit_softcap=30.0,
    ...     return_lse=True)
    >>> capped = 30.0 * np.tanh((hidden @ weight.T + bias) / 30.0)
    >>> print(lse.shape, lse.dtype, np.allclose(lse, np.log(np.exp(capped).sum(axis=1))))
    (4,) float32 True

    Parameters
    ----------
    y_true : array_like of int
        Class labels, ``hidden``'s shape without its last axis (a trailing size-1
        axis is squeezed), in ``[0, V)`` or equal to ``ignore_index``.
    hidden : array_like, shape (N, d) or (..., d)
        float32, float64, float16 or bfloat16 (``ml_dtypes``). float16 and bfloat16
        are computed in float32: ``hidden``, ``weight`` and ``bias`` are converted
        once (a copy of N x d and V x d values, never N x V).
    weight : array_like, shape (V, d)
        One row per class, ``hidden``'s dtype (as ``torch.nn.Linear.weight``).
    bias : array_like, shape (V,), optional
        ``hidden``'s dtype. A ``-inf`` entry masks its class (as masked logits).
    ignore_index : int, optional
        Rows with this label give loss 0 and gradient 0 and leave the mean.
    label_smoothing : float in [0, 1]
    class_weight : array of length V, optional
    sample_weight : None, scalar, or array of ``y_true``'s shape
    reduction : {"mean", "sum", "none", "weighted_mean"} or None
        As ``sparse_categorical_crossentropy`` (aliases ``"sum_over_batch_size"``,
        ``"mean_with_sample_weight"``). The denominators (rows not ignored; their
        total weight) are known before the first block, so each block's gradient is
        already that of the final loss.
    return_grad : bool
        Also return the gradients of the returned loss (for ``"none"``, of its sum).
    z_loss : float >= 0
        Adds ``z_loss * logsumexp(logits)**2`` to each non-ignored row's loss (PaLM's
        z-loss, e.g. 1e-4), and its gradient; not multiplied by ``class_weight``.
    logit_softcap : float > 0, optional
        Each logit ``x`` is read as ``cap * tanh(x / cap)`` (Gemma's soft cap): in the
        loss, the log-sum-exp and the gradients (which stay those with respect to
        ``hidden``, ``weight`` and ``bias``). A ``-inf`` bias entry becomes ``-cap``.
    return_lse : bool
        Also return each row's ``logsumexp`` of the (capped) logits, ignored rows
        included: NaN for a row holding NaN (or, without a cap, ``+inf``), ``-inf``
        for a row with every class at ``-inf`` (without a cap).
    chunk : None, int >= 1, or (rows, classes)
        The block of logits held at once. None: a budget of :data:`BLOCK_BYTES`
        (48 MiB) of logits, as many whole rows as fit; when fewer than
        :data:`MIN_BLOCK_ROWS` (16) rows of the whole vocabulary fit, blocks of
        :data:`VOCAB_BLOCK_ROWS` (256) rows and as many classes as fit (an online
        log-sum-exp over the vocabulary blocks). Larger blocks run faster (the
        weight is packed for BLAS once per block of rows); smaller ones hold less. An int: that many rows of the whole vocabulary per block. A pair
        ``(rows, classes)``: blocks of that many rows and classes (vocabulary-blocked
        whenever ``classes < V``).
    backend : {"auto", "numpy", "numba", "cython"}
        The kernel's backend (the matrix products are NumPy's BLAS, with its own
        threads; ``threadpoolctl`` limits them).
    threads : int >= 1, optional
        The kernel's thread count.

    Returns
    -------
    loss : NumPy scalar, or ndarray of ``y_true``'s shape for ``reduction="none"``
        float64 for float64 inputs, float32 otherwise.
    grad_hidden, grad_weight : ndarray, only with ``return_grad=True``
        Shapes of ``hidden`` and ``weight``; float64 for float64 inputs, float32
        otherwise (float16 and bfloat16 included: the products ran in float32).
    grad_bias : ndarray, only with ``return_grad=True`` and a ``bias``
    lse : ndarray of ``y_true``'s shape, only with ``return_lse=True``
        Always the last item: ``(loss, lse)`` or
        ``(loss, grad_hidden, grad_weight[, grad_bias], lse)``. The loss's dtype.

    Raises
    ------
    ValueError, TypeError
        Before any work, for any bad input, naming the argument, what was expected
        and what was given.
    RuntimeError
        When the requested backend cannot run the kernel.
    """
    problem = build_linear_problem(
        y_true, hidden, weight, bias,
        ignore_index=ignore_index, label_smoothing=label_smoothing, class_weight=class_weight,
        sample_weight=sample_weight, reduction=reduction, return_grad=return_grad, z_loss=z_loss,
        logit_softcap=logit_softcap, return_lse=return_lse, chunk=chunk, backend=backend, threads=threads,
    )  # fmt: skip
    return run(problem)


# --------------------------------------------------------------------------- validation


def build_linear_problem(
    y_true, hidden, weight, bias, *, ignore_index, label_smoothing, class_weight, sample_weight,
    reduction, return_grad, z_loss, logit_softcap, return_lse, chunk, backend, threads,
) -> LinearProblem:  # fmt: skip
    """Check every input (raising before any work) and bring the arrays to the
    compute dtype and to ``(N, d)`` rows."""
    _, ls, red, _, return_grad, threads = check_options(
        from_logits=True, label_smoothing=label_smoothing, reduction=reduction, epsilon=0.1,
        return_grad=return_grad, backend=backend, threads=threads,
    )  # fmt: skip
    ignore = check_ignore_index(ignore_index)
    z_loss, softcap, return_lse = check_logit_options(True, z_loss, logit_softcap, return_lse)

    h = _float_array("hidden", hidden)
    if h.ndim < 2:
        raise ValueError(f"hidden: expected an array of shape (N, d) or (..., d), got shape {h.shape}")
    d = h.shape[-1]
    w = _float_array("weight", weight)
    if w.dtype != h.dtype:
        raise TypeError(f"weight: expected hidden's dtype {h.dtype}, got dtype {w.dtype}")
    if w.ndim != 2 or w.shape[1] != d:
        raise ValueError(f"weight: expected shape (V, {d}) (one row of hidden's {d} features per class), got shape {w.shape}")
    vocab = w.shape[0]
    if vocab == 0:
        raise ValueError(f"weight: expected at least one row (one per class), got shape {w.shape}")
    b = None
    if bias is not None:
        b = _float_array("bias", bias)
        if b.dtype != h.dtype:
            raise TypeError(f"bias: expected hidden's dtype {h.dtype}, got dtype {b.dtype}")
        if b.shape != (vocab,):
            raise ValueError(f"bias: expected shape ({vocab},) (one per row of weight), got shape {b.shape}")

    sample_shape = h.shape[:-1]
    # the checks of the sparse loss, on a stand-in for the logits (no memory)
    logits = np.broadcast_to(np.zeros((), h.dtype), sample_shape + (vocab,))
    source = f"hidden's shape {h.shape} without its last axis"
    labels = coerce_labels(y_true, logits, logits.ndim - 1, vocab, ignore, source=source,
                           classes=f"weight has {vocab} rows, one per class").reshape(-1)
    cw = coerce_class_weight(class_weight, vocab)
    sw = coerce_sample_weight(sample_weight, class_axis_layout(logits, logits.ndim - 1), source=source)
    sw = sw.reshape(-1) if isinstance(sw, np.ndarray) else sw
    dtype = np.dtype(np.float64) if h.dtype == np.float64 else np.dtype(np.float32)
    n_rows = labels.size
    block = block_shape(n_rows, vocab, dtype.itemsize, _check_chunk(chunk), ls > 0,
                        capped_gradient=bool(softcap) and return_grad)

    hidden_shape = h.shape
    h = _blas_ready(h.reshape(n_rows, d).astype(dtype, copy=False))
    w = _blas_ready(w.astype(dtype, copy=False))
    if b is not None:
        b = b.astype(dtype, copy=False)
    extras = dict(z_loss=z_loss, logit_softcap=softcap or None, return_lse=return_lse)
    _check_backend_runs(backend, threads, dtype, vocab, labels.dtype, return_grad, extras)
    return LinearProblem(
        hidden=h, weight=w, bias=b, labels=labels,
        valid=None if ignore is None else labels != ignore,
        class_weight=cw, sample_weight=sw, label_smoothing=ls, ignore_index=ignore,
        reduction=red, return_grad=return_grad, z_loss=z_loss, softcap=softcap, return_lse=return_lse,
        block=block, backend=backend, threads=threads, dtype=dtype, sample_shape=sample_shape,
        hidden_shape=hidden_shape,
    )  # fmt: skip


def _check_backend_runs(backend, threads, dtype, vocab, label_dtype, return_grad, extras) -> None:
    """Raise the RuntimeError a block's kernel call would raise (a forced backend that
    cannot run, here or through ``fastxent.config`` or ``FASTXENT_BACKEND``) before
    any block is computed: plan one row of logits, with the call's ``extras``
    (z_loss, logit_softcap, return_lse)."""
    row = np.broadcast_to(np.zeros((), dtype), (1, vocab))
    explain(sparse_categorical_crossentropy, np.zeros(1, label_dtype), row, from_logits=True,
            return_grad=return_grad, backend=backend, threads=threads, **extras)  # fmt: skip


def _float_array(name: str, value) -> np.ndarray:
    """A float16/32/64 or bfloat16 array in native byte order (no copy when it is one)."""
    a = as_array(value, name)
    dt = a.dtype
    if dt.kind == "f" and dt.itemsize <= 8 and not dt.isnative:
        return a.astype(dt.newbyteorder("="))  # byte-swapped: one converting copy
    if dt.kind == "f" and dt.itemsize <= 8 or dt.name == "bfloat16":
        return a
    raise TypeError(f"{name}: expected a float32, float64, float16 or bfloat16 array, got dtype {dt}")


def _blas_ready(a: np.ndarray) -> np.ndarray:
    """``a``, or a contiguous copy when its strides would make every BLAS call copy it."""
    if a.flags.c_contiguous or a.flags.f_contiguous:
        return a
    return np.ascontiguousarray(a)


def _check_chunk(chunk):
    """None, ``rows``, or ``(rows, classes)``: ints >= 1."""
    expected = "None, an int >= 1 (rows per block) or a pair (rows, classes) of ints >= 1"
    parts = chunk if isinstance(chunk, (tuple, list)) else (chunk,)
    if chunk is None:
        return None
    if not 1 <= len(parts) <= 2 or any(
        isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) for k in parts
    ):
        raise TypeError(f"chunk: expected {expected}, got {chunk!r}")
    if any(k < 1 for k in parts):
        raise ValueError(f"chunk: expected {expected}, got {chunk!r}")
    return tuple(int(k) for k in parts)


def block_shape(n_rows: int, vocab: int, itemsize: int, chunk, smoothing: bool, budget: int | None = None,
                *, capped_gradient: bool = False) -> tuple:  # fmt: skip
    """``(rows, classes)`` of one block of logits.

    Without ``chunk``: as many whole rows as ``budget`` (default :data:`BLOCK_BYTES`,
    read at each call) holds, spread evenly over the blocks. When that is fewer than
    :data:`MIN_BLOCK_ROWS` (and fewer than the batch), blocks of
    :data:`VOCAB_BLOCK_ROWS` rows and as many classes as fit. Vocabulary blocks keep
    scratches of their size, which the budget counts: a float64 one with label
    smoothing, one of ``itemsize`` for the gradient under a soft cap
    (``capped_gradient``: the block's ``tanh``).
    """
    if isinstance(chunk, (int, np.integer)):
        chunk = (chunk,)
    if chunk is not None:
        rows = max(1, min(chunk[0], n_rows))
        return rows, min(chunk[1], vocab) if len(chunk) == 2 else vocab
    budget = BLOCK_BYTES if budget is None else budget
    n = max(1, n_rows)
    rows = budget // (vocab * itemsize)
    if rows >= min(n, MIN_BLOCK_ROWS):
        blocks = -(-n // max(1, rows))
        return -(-n // blocks), vocab
    rows = min(n, VOCAB_BLOCK_ROWS)
    per_element = itemsize + (8 if smoothing else 0) + (itemsize if capped_gradient else 0)
    return rows, max(1, min(vocab, budget // (rows * per_element)))


# --------------------------------------------------------------------------- running


def run(p: LinearProblem):
    """Run the blocks of a validated call and assemble the loss and gradients."""
    factor, denominator = _row_factors(p)
    blocks = _Blocks(p, factor)
    zero_loss = p.reduction in ("mean", "weighted_mean") and denominator == 0
    if p.n_rows and (p.return_grad or p.return_lse or not zero_loss):
        rows, classes = p.block
        for start in range(0, p.n_rows, rows):
            stop = min(p.n_rows, start + rows)
            if classes >= p.vocab:
                blocks.row_block(start, stop)
            else:
                blocks.vocab_blocked(start, stop)
    if p.reduction == "none":
        loss = blocks.loss_rows.reshape(p.sample_shape)
    else:
        loss = p.dtype.type(0.0 if zero_loss else blocks.total)
    result = (loss,)
    if p.return_grad:
        result += (blocks.grad_hidden.reshape(p.hidden_shape), blocks.grad_weight)
        if p.bias is not None:
            result += (blocks.grad_bias.astype(p.dtype),)
    if p.return_lse:
        result += (blocks.lse_rows.reshape(p.sample_shape),)
    return result if len(result) > 1 else loss


def _row_factors(p: LinearProblem):
    """Each row's multiplier of its loss and gradient (its sample weight over the
    reduction's denominator), and that denominator. None means 1 for every row."""
    sw = p.sample_weight
    if p.reduction in ("none", "sum"):
        return sw, 1.0
    if p.reduction == "mean":
        denominator = float(p.n_rows if p.valid is None else np.count_nonzero(p.valid))
    else:  # weighted_mean: sum_i v_i * s_i * w_{y_i}, summed as the library sums it
        if p.class_weight is None:
            c = np.ones(p.n_rows) if p.valid is None else p.valid.astype(np.float64)
        else:
            c = p.class_weight[p.labels if p.valid is None else np.where(p.valid, p.labels, 0)]
            if p.valid is not None:
                c = np.where(p.valid, c, 0.0)
        denominator = _reduce.total(_reduce.block_sums(c, sw))
    scale = 0.0 if denominator == 0 else 1.0 / denominator
    return (scale if sw is None else sw * scale), denominator


class _Blocks:
    """The buffers of one call and the work on one block of rows."""

    def __init__(self, p: LinearProblem, factor):
        self.p = p
        self.factor = factor
        rows, classes = p.block
        self.buffer = np.empty(rows * classes if p.n_rows else 0, dtype=p.dtype)
        self.kernel_options = dict(
            label_smoothing=p.label_smoothing, class_weight=p.class_weight,
            ignore_index=p.ignore_index, backend=p.backend, threads=p.threads,
            z_loss=p.z_loss, logit_softcap=p.softcap or None, return_lse=p.return_lse,
        )  # fmt: skip
        self.total = 0.0  # float64 sum of the blocks' reduced losses
        self.loss_rows = np.empty(p.n_rows, dtype=p.dtype) if p.reduction == "none" else None
        self.lse_rows = np.empty(p.n_rows, dtype=p.dtype) if p.return_lse else None
        if p.return_grad:
            n, d = p.hidden.shape
            self.grad_hidden = np.empty((n, d), dtype=p.dtype)
            # Written whole by the first block of rows; zeros only when there is none.
            self.grad_weight = (np.empty if n else np.zeros)(p.weight.shape, dtype=p.dtype)
            self.grad_bias = np.zeros(p.vocab) if p.bias is not None else None  # float64 sums
            acc_rows = min(classes, max(1, ACCUMULATE_BYTES // max(1, d * p.dtype.itemsize)))
            self.weight_scratch = np.empty((acc_rows, d), dtype=p.dtype) if n > rows else None
            self.hidden_scratch = np.empty((rows, d), dtype=p.dtype) if classes < p.vocab else None
            # tanh of a vocabulary block's logits, for the cap's derivative (block_shape counts it)
            capped = p.softcap and classes < p.vocab
            self.tanh_scratch = np.empty(rows * classes, dtype=p.dtype) if capped else None

    def factor_of(self, start: int, stop: int):
        f = self.factor
        return f[start:stop] if isinstance(f, np.ndarray) else f

    def logits(self, start: int, stop: int, c0: int, c1: int) -> np.ndarray:
        """Rows ``start:stop`` by classes ``c0:c1`` of the logits, in the buffer."""
        p = self.p
        tile = self.buffer[: (stop - start) * (c1 - c0)].reshape(stop - start, c1 - c0)
        np.matmul(p.hidden[start:stop], p.weight[c0:c1].T, out=tile)
        if p.bias is not None:
            np.add(tile, p.bias[c0:c1], out=tile)
        return tile

    def row_block(self, start: int, stop: int) -> None:
        """Rows ``start:stop`` with the whole vocabulary: the kernel computes the loss
        and writes the gradient over the logits."""
        p = self.p
        logits = self.logits(start, stop, 0, p.vocab)
        result = sparse_categorical_crossentropy(
            p.labels[start:stop], logits, from_logits=True,
            reduction="none" if p.reduction == "none" else "sum",
            sample_weight=self.factor_of(start, stop), return_grad=p.return_grad,
            grad_out=logits if p.return_grad else None, **self.kernel_options,
        )  # fmt: skip
        if p.return_lse:
            self.lse_rows[start:stop] = result[-1]
            result = result[:-1] if p.return_grad else result[0]
        loss, grad = result if p.return_grad else (result, None)
        self.add_loss(start, stop, loss)
        if grad is not None:
            self.backprop(start, stop, 0, p.vocab, grad)

    def vocab_blocked(self, start: int, stop: int) -> None:
        """Rows ``start:stop`` in vocabulary blocks: an online log-sum-exp over the
        blocks, then, for the gradient, a second pass that forms them again."""
        p = self.p
        classes = p.block[1]
        online = _OnlineRows(p, start, stop, self.factor_of(start, stop))
        for c0 in range(0, p.vocab, classes):
            c1 = min(p.vocab, c0 + classes)
            online.update(self.logits(start, stop, c0, c1), c0)
        self.add_loss(start, stop, online.finish())
        if self.lse_rows is not None:
            self.lse_rows[start:stop] = online.lse
        if p.return_grad:
            for c0 in range(0, p.vocab, classes):
                c1 = min(p.vocab, c0 + classes)
                tile = self.logits(start, stop, c0, c1)
                online.gradient(tile, c0, self.tanh_scratch)
                self.backprop(start, stop, c0, c1, tile)

    def add_loss(self, start: int, stop: int, loss) -> None:
        """A block's weighted losses: per row (``"none"``) or their sum."""
        if self.loss_rows is not None:
            self.loss_rows[start:stop] = loss
        else:
            self.total += float(loss)

    def backprop(self, start: int, stop: int, c0: int, c1: int, g: np.ndarray) -> None:
        """Add the gradient ``g`` of logits ``[start:stop, c0:c1]`` to the gradients of
        hidden, weight and bias. The first contribution to an output is written by
        the product itself; later ones go through a small scratch."""
        p = self.p
        h = p.hidden[start:stop]
        w = p.weight[c0:c1]
        if c0 == 0:
            np.matmul(g, w, out=self.grad_hidden[start:stop])
        else:
            scratch = self.hidden_scratch[: stop - start]
            np.matmul(g, w, out=scratch)
            self.grad_hidden[start:stop] += scratch
        if start == 0:
            np.matmul(g.T, h, out=self.grad_weight[c0:c1])
        else:
            step = self.weight_scratch.shape[0]
            for v0 in range(c0, c1, step):
                v1 = min(c1, v0 + step)
                scratch = self.weight_scratch[: v1 - v0]
                np.matmul(g[:, v0 - c0 : v1 - c0].T, h, out=scratch)
                self.grad_weight[v0:v1] += scratch
        if self.grad_bias is not None:
            self.grad_bias[c0:c1] += np.add.reduce(g, axis=0)


# --------------------------------------------------------------------------- online log-sum-exp


class _OnlineRows:
    """Per-row state of a block of rows whose vocabulary arrives in blocks.

    The loss is the kernel's (``backends/KERNELS.md``): with ``m`` the row maximum
    (its first occurrence ``k``), ``R = sum_{c != k} exp(x_c - m)`` and
    ``a_c = (1-ls) w_y [c == y] + (ls/V) w_c``, ``A = sum_c a_c``,
    ``l = sum_{a_c != 0} a_c (m - x_c) + A log1p(R)`` and
    ``dl/dx_c = A q_c - a_c`` (``A (q_k - 1) + (A - a_k)`` at ``k``, ``q_k - 1 = -R/S``).
    ``R`` leaves out the maximum itself, so a label far above the rest keeps a tiny,
    exact loss (``log1p(R)``, not ``log(1 + R)`` rounded to 0). The smoothing sum
    ``sum_c w_c (m - x_c)`` is kept relative to a fixed per-row reference (the first
    finite block maximum) and moved to ``m`` at the end.

    Under a soft cap every ``x`` above is ``cap * tanh(raw / cap)`` (each block is
    capped as it arrives) and the gradient is multiplied by ``1 - tanh(raw / cap)**2``.
    A z-loss adds ``z * lse**2`` (``lse = m + log1p(R)``) to a non-ignored row's loss
    and ``2 z lse`` to the softmax term's weight: ``A`` becomes ``A + 2 z lse`` in the
    gradient (and ``A - a_k`` at ``k`` gains as much).
    """

    def __init__(self, p: LinearProblem, start: int, stop: int, factor):
        n = stop - start
        self.p = p
        self.ls = p.label_smoothing
        self.softcap = p.softcap
        self.labels = p.labels[start:stop]
        self.valid = np.ones(n, bool) if p.valid is None else p.valid[start:stop]
        self.safe = np.where(self.valid, self.labels, 0).astype(np.intp)
        self.factor = np.broadcast_to(np.float64(1.0 if factor is None else factor), (n,))
        self.m = np.full(n, -np.inf)  # running maximum
        self.argmax = np.zeros(n, np.intp)  # its first position
        self.rest = np.zeros(n)  # R: sum of exp(x - m) over all but the maximum
        self.x_label = np.zeros(n)
        self.bad = np.zeros(n, bool)  # NaN or +inf in the row: loss and gradient NaN
        if self.ls > 0:
            self.reference = np.full(n, -np.inf)
            self.smooth = np.zeros(n)  # sum_c w_c (reference - x_c), over w_c != 0
            self.scratch = np.empty(n * p.block[1])  # float64
        cw = p.class_weight
        self.w_label = np.ones(n) if cw is None else cw[self.safe]

    def _rows_in(self, c0: int, c1: int, index: np.ndarray) -> np.ndarray:
        return np.flatnonzero(self.valid & (index >= c0) & (index < c1))

    def update(self, x: np.ndarray, c0: int) -> None:
        """Take in the block of logits ``x`` (classes ``c0:``); ``x`` is scratch."""
        c1 = c0 + x.shape[1]
        if self.softcap:
            self._cap(x, x)
        with np.errstate(invalid="ignore", over="ignore"):
            rows = self._rows_in(c0, c1, self.safe)
            self.x_label[rows] = x[rows, self.safe[rows] - c0]
            block_max = x.max(axis=1).astype(np.float64)
            block_arg = x.argmax(axis=1)
            self.bad |= np.isnan(block_max) | (block_max == np.inf)
            new = block_max > self.m  # strictly: ties keep the first maximum
            m_new = np.where(new, block_max, self.m)
            if self.ls > 0:
                self._update_smoothing(x, c0, c1, new, block_max)
            shift = np.where(np.isfinite(m_new), m_new, 0.0)  # rows still all -inf: exp(-inf) = 0
            np.subtract(x, shift.astype(x.dtype)[:, None], out=x)
            np.exp(x, out=x)
            moved = np.flatnonzero(new)
            x[moved, block_arg[moved]] = 0.0  # the new maximum is not part of R
            block_rest = np.add.reduce(x, axis=1, dtype=np.float64)
            rescaled = (self.rest + 1.0) * np.exp(self.m - m_new)  # the old maximum joins R
            self.rest = np.where(new, rescaled, self.rest) + block_rest
            self.argmax = np.where(new, c0 + block_arg, self.argmax)
            self.m = m_new

    def _cap(self, x: np.ndarray, tanh: np.ndarray) -> None:
        """Cap the logits ``x`` in place, ``tanh`` (``x``'s shape, or ``x``) receiving
        ``tanh(x / cap)``: ``x / cap`` as a product with ``1 / cap``, as the kernels."""
        np.multiply(x, x.dtype.type(1.0 / self.softcap), out=tanh)
        np.tanh(tanh, out=tanh)
        np.multiply(tanh, x.dtype.type(self.softcap), out=x)

    def _update_smoothing(self, x, c0, c1, new, block_max) -> None:
        first = new & (self.reference == -np.inf)
        self.reference = np.where(first, block_max, self.reference)
        shift = np.where(self.reference == -np.inf, 0.0, self.reference)
        diff = self.scratch[: x.size].reshape(x.shape)
        np.subtract(shift[:, None], x, out=diff)
        cw = self.p.class_weight
        if cw is None:
            self.smooth += np.add.reduce(diff, axis=1)
            return
        w = cw[c0:c1]
        zero = np.flatnonzero(w == 0)
        if zero.size:  # a class the smoothing gives no weight adds nothing, even at -inf
            diff[:, zero] = 0.0
        self.smooth += diff @ w

    def finish(self) -> np.ndarray:
        """Per-row losses times their factors (float64); sets what the gradient needs."""
        ls, vocab = self.ls, self.p.vocab
        label_coef = (1.0 - ls) * self.w_label
        total_coef = label_coef.copy()
        if ls > 0:
            cw = self.p.class_weight
            w_sum = float(vocab) if cw is None else float(np.sum(cw))
            total_coef += (ls / vocab) * w_sum
        self.label_coef, self.total_coef = label_coef, total_coef
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            # NaN for rows holding NaN or +inf (once capped: NaN only), -inf when every class is -inf
            self.lse = np.where(self.bad, np.nan, self.m + np.log1p(self.rest))
            loss = total_coef * np.log1p(self.rest)
            loss += np.where(label_coef != 0, label_coef * (self.m - self.x_label), 0.0)
            if ls > 0:
                loss += (ls / vocab) * (self.smooth + w_sum * (self.m - self.reference))
            masked = (self.m == -np.inf) & ~self.bad  # every class -inf: A * inf
            loss = np.where(masked, np.sign(total_coef) * np.inf, loss)
            loss = np.where(masked & (total_coef == 0), 0.0, loss)
            loss = np.where(self.bad, np.nan, loss)
            # d(z lse**2)/dx_c = 2 z lse q_c: the softmax term's weight grows by 2 z lse
            self.z_extra = np.zeros(len(loss))
            if self.p.z_loss:
                loss += self.p.z_loss * self.lse * self.lse
                self.z_extra = np.where(self.valid, 2.0 * self.p.z_loss * self.lse, 0.0)
            loss = np.where(self.valid, loss, 0.0)
            weighted = self.factor * loss
            self.softmax_coef = total_coef + self.z_extra
        self.nan_rows = self.valid & (self.bad | (masked & (self.softmax_coef != 0)))
        self.zero_rows = ~self.valid | (masked & (self.softmax_coef == 0))
        return weighted if self.p.reduction == "none" else np.sum(weighted)

    def gradient(self, x: np.ndarray, c0: int, scratch: np.ndarray | None = None) -> None:
        """Overwrite the block of logits ``x`` (classes ``c0:``) with its gradient;
        under a soft cap ``scratch`` (at least ``x.size`` values of its dtype) holds
        the block's ``tanh`` meanwhile."""
        c1 = c0 + x.shape[1]
        ls, vocab = self.ls, self.p.vocab
        factor = np.where(self.valid, self.factor, 0.0)
        s = 1.0 + self.rest
        tanh = None
        if self.softcap:
            tanh = scratch[: x.size].reshape(x.shape)
            self._cap(x, tanh)
        with np.errstate(invalid="ignore", over="ignore"):
            shift = np.where(np.isfinite(self.m), self.m, 0.0)
            np.subtract(x, shift.astype(x.dtype)[:, None], out=x)
            np.exp(x, out=x)
            np.multiply(x, (factor * self.softmax_coef / s).astype(x.dtype)[:, None], out=x)
            if ls > 0:
                w = np.ones(c1 - c0) if self.p.class_weight is None else self.p.class_weight[c0:c1]
                smoothing = self.scratch[: x.size].view(np.float64).reshape(x.shape)
                np.multiply((factor * ls / vocab)[:, None], w, out=smoothing)
                np.subtract(x, smoothing, out=x, casting="same_kind")
            rows = self._rows_in(c0, c1, self.safe)
            x[rows, self.safe[rows] - c0] -= (factor * self.label_coef)[rows]
            rows = self._rows_in(c0, c1, self.argmax)
            k = self.argmax[rows]
            a_k = (self.label_coef[rows] * (k == self.safe[rows])
                   + (ls / vocab) * (1.0 if self.p.class_weight is None or ls == 0 else self.p.class_weight[k]))
            A = self.softmax_coef[rows]
            A_rest = (self.total_coef[rows] - a_k) + self.z_extra[rows]
            x[rows, k - c0] = factor[rows] * (A * (-self.rest[rows] / s[rows]) + A_rest)
            if tanh is not None:  # d(cap tanh(x / cap))/dx; before the zeros: an ignored NaN row stays 0
                np.multiply(tanh, tanh, out=tanh)
                np.subtract(1, tanh, out=tanh)
                np.multiply(x, tanh, out=x)
            x[self.zero_rows] = 0.0
            x[self.nan_rows] = np.nan
