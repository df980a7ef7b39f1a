"""Evaluation metrics from the loss pass: loss, accuracy, top-k accuracy, perplexity.

From logits, the kernel that computes each row's loss also counts the classes ranked
above the row's label (its *rank*: larger logits, and equal ones at a lower index, as
``np.argmax`` breaks ties), so accuracy (rank 0) and top-k accuracy (rank < k) come
without reading ``y_pred`` again. From probabilities the loss reads one value per
row, so the ranks take one more pass over the rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import _reduce
from ._api import row_outputs
from ._validate import build_problem

#: Rows of probabilities ranked at a time (a bounded temporary).
_RANK_BLOCK_ELEMENTS = 1 << 20


@dataclass
class Metrics:
    """What :func:`sparse_metrics` returns.

    >>> import numpy as np, fastxent
    >>> m = fastxent.sparse_metrics([1], np.array([[0.2, 0.8]]))
    >>> sorted(m.as_dict())
    ['accuracy', 'count', 'loss', 'perplexity', 'top5']
    """

    loss: float  # the mean loss (reduction "mean": sum of s_i * l_i over the count)
    accuracy: float  # share of (sample-weighted) counted rows whose label ranks first
    top_k: dict = field(default_factory=dict)  # k -> share of rows whose label is in the top k
    perplexity: float = math.nan  # exp(loss)
    count: int = 0  # rows counted (not ignored)

    def as_dict(self) -> dict:
        out = {"loss": self.loss, "accuracy": self.accuracy, "perplexity": self.perplexity, "count": self.count}
        out.update({f"top{k}": v for k, v in self.top_k.items()})
        return out


def sparse_metrics(
    y_true,
    y_pred,
    *,
    from_logits=False,
    top_k=(5,),
    ignore_index=None,
    class_weight=None,
    sample_weight=None,
    label_smoothing=0.0,
    logit_softcap=None,
    axis=-1,
    epsilon=1e-7,
    backend="auto",
    threads=None,
) -> Metrics:
    """Loss, accuracy, top-k accuracy and perplexity of integer labels in one pass.

    The loss is :func:`sparse_categorical_crossentropy`'s mean (same options, same
    value); accuracy counts rows whose label has the largest logit or probability
    (ties broken as ``np.argmax``: the lowest index wins; a row holding NaN never
    counts as correct); ``top_k`` is an int or a tuple of ints; perplexity is
    ``exp(loss)``. Ignored rows are left out of every metric; ``sample_weight``
    weighs rows in the accuracies as in the loss.

    >>> import numpy as np, fastxent
    >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.0], [1.0, 0.2, 3.0]])
    >>> m = fastxent.sparse_metrics([0, 2, 2], logits, from_logits=True, top_k=(1, 2))
    >>> round(m.loss, 4), round(m.accuracy, 4), round(m.top_k[2], 4), round(m.perplexity, 4), m.count
    (1.0976, 0.6667, 0.6667, 2.997, 3)
    """
    ks = _check_top_k(top_k)
    problem = build_problem(
        "sparse", y_true, y_pred,
        from_logits=from_logits, label_smoothing=label_smoothing, ignore_index=ignore_index,
        class_weight=class_weight, sample_weight=sample_weight, axis=axis, reduction="mean",
        epsilon=epsilon, return_grad=False, grad_out=None, backend=backend, threads=threads,
        logit_softcap=logit_softcap, want_rank=from_logits,
    )  # fmt: skip
    out = row_outputs(problem)
    rank = out.rank if from_logits else probability_ranks(problem)
    count, _ = _reduce.denominator_parts(problem)
    sums = _reduce.block_sums(out.loss, problem.sample_weight)
    loss = float(_reduce.finish(_reduce.Partial(sums, count, None), "mean", np.dtype(np.float64)))
    weights = _row_weights(problem.sample_weight, rank.shape)
    counted = rank >= 0
    total = float(np.sum(np.where(counted, weights, 0.0)))

    def share(hit) -> float:
        return 0.0 if total == 0 else float(np.sum(np.where(counted & hit, weights, 0.0))) / total

    return Metrics(loss=loss, accuracy=share(rank == 0), top_k={k: share(rank < k) for k in ks},
                   perplexity=math.exp(loss) if loss < 709.0 else math.inf, count=int(count))  # fmt: skip


def _check_top_k(top_k) -> tuple:
    values = (top_k,) if isinstance(top_k, (int, np.integer)) else tuple(top_k)
    for k in values:
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"top_k: expected an int >= 1 or a tuple of them, got {top_k!r}")
    return tuple(int(k) for k in values)


def _row_weights(sample_weight, shape) -> np.ndarray:
    if sample_weight is None:
        return np.ones(shape)
    return np.broadcast_to(np.asarray(sample_weight, dtype=np.float64), shape)


def probability_ranks(problem) -> np.ndarray:
    """The label rank of every row of a problem's probabilities, a block of rows at
    a time (-1 for ignored rows; C for rows holding NaN)."""
    x, labels = problem.x, problem.aux
    outer, n_classes, inner = x.shape
    ranks = np.empty((outer, inner), dtype=np.int64)
    ignore = problem.kernel_ignore
    step = max(1, _RANK_BLOCK_ELEMENTS // max(1, n_classes * inner))
    for o in range(0, outer, step):
        block = np.moveaxis(x[o : o + step], 1, 2).astype(np.float64)  # (rows, inner, C)
        y = labels[o : o + step]
        valid = y.astype(np.int64) != ignore
        safe = np.where(valid, y, 0).astype(np.intp)
        p_y = np.take_along_axis(block, safe[..., None], axis=-1)
        before = np.arange(n_classes) < safe[..., None]
        with np.errstate(invalid="ignore"):
            rank = ((block > p_y) | ((block == p_y) & before)).sum(axis=-1)
        rank = np.where(np.isnan(block).any(axis=-1), n_classes, rank)
        ranks[o : o + step] = np.where(valid, rank, -1)
    return ranks
