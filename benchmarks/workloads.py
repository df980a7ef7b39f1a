"""The benchmark workloads, shared by the pytest-benchmark suite and the report.

Each workload names the data it needs and a function that runs one loss call on it.
Every timed call has a same-run reference: a *read pass* over the same bytes (the
faster of ``np.add.reduce`` and a parallel streaming sum) and, when installed,
PyTorch's ``torch.nn.functional`` doing the same job.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

import fastxent


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # binary | categorical | sparse
    from_logits: bool
    rows: int
    classes: int
    dtype: str = "float32"
    grad: str = "none"  # "none" | "in_place"
    smoothing: float = 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of y_pred: what a read pass reads."""
        return self.rows * self.classes * np.dtype(self.dtype).itemsize


WORKLOADS = [
    Workload("tiny-sparse-logits-32x10", "sparse", True, 32, 10),
    Workload("tiny-sparse-logits-32x10-grad", "sparse", True, 32, 10, grad="in_place"),
    Workload("sparse-logits-1000x100", "sparse", True, 1_000, 100),
    Workload("sparse-logits-1000x100-f64-grad", "sparse", True, 1_000, 100, dtype="float64", grad="in_place"),
    # short rows (issue 26): the per-row cost, not the bytes, sets the time
    Workload("sparse-logits-1000x100-grad", "sparse", True, 1_000, 100, grad="in_place"),
    Workload("sparse-logits-4096x32", "sparse", True, 4_096, 32),
    Workload("sparse-logits-4096x32-grad", "sparse", True, 4_096, 32, grad="in_place"),
    Workload("sparse-logits-4096x100", "sparse", True, 4_096, 100),
    Workload("sparse-logits-4096x100-grad", "sparse", True, 4_096, 100, grad="in_place"),
    Workload("sparse-logits-16384x100", "sparse", True, 16_384, 100),
    Workload("sparse-logits-16384x100-grad", "sparse", True, 16_384, 100, grad="in_place"),
    Workload("sparse-logits-65536x1000", "sparse", True, 65_536, 1_000),
    Workload("sparse-logits-65536x1000-f64", "sparse", True, 65_536, 1_000, dtype="float64"),
    Workload("sparse-logits-65536x1000-grad", "sparse", True, 65_536, 1_000, grad="in_place"),
    Workload("sparse-logits-65536x1000-smooth", "sparse", True, 65_536, 1_000, smoothing=0.1),
    Workload("sparse-logits-2048x128256", "sparse", True, 2_048, 128_256),
    Workload("sparse-logits-2048x128256-grad", "sparse", True, 2_048, 128_256, grad="in_place"),
    Workload("sparse-probs-200000x1000", "sparse", False, 200_000, 1_000),
    Workload("sparse-probs-200000x10000", "sparse", False, 200_000, 10_000),
    Workload("categorical-logits-65536x1000", "categorical", True, 65_536, 1_000),
    Workload("categorical-probs-65536x1000", "categorical", False, 65_536, 1_000),
    Workload("binary-logits-10M", "binary", True, 10_000_000, 1),
    Workload("binary-probs-10M", "binary", False, 10_000_000, 1),
    Workload("binary-logits-10M-grad", "binary", True, 10_000_000, 1, grad="in_place"),
    Workload("binary-logits-4096-f64", "binary", True, 4_096, 1, dtype="float64"),
]
BY_NAME = {w.name: w for w in WORKLOADS}


@cache
def data(rows: int, classes: int, dtype: str, from_logits: bool, kind: str):
    """y_pred and y_true for a workload (cached: big arrays are built once per run)."""
    rng = np.random.default_rng(0)
    shape = (rows,) if kind == "binary" and classes == 1 else (rows, classes)
    if from_logits:
        y_pred = rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
    elif kind == "binary":
        y_pred = rng.random(shape, dtype=np.float32).astype(dtype, copy=False)
    else:
        y_pred = np.full(shape, 1.0 / classes, dtype=dtype)  # valid probabilities, cheap to make
    if kind == "sparse":
        y_true = rng.integers(0, classes, rows)
    elif kind == "binary":
        y_true = (rng.random(shape, dtype=np.float32) < 0.5).astype(dtype)
    else:
        y_true = np.zeros(shape, dtype=dtype)
        y_true[np.arange(rows), rng.integers(0, classes, rows)] = 1
    return y_pred, y_true


def fastxent_call(w: Workload, backend: str, threads: int | None):
    """A zero-argument function running the workload through the public API."""
    y_pred, y_true = data(w.rows, w.classes, w.dtype, w.from_logits, w.kind)
    fn = {"sparse": fastxent.sparse_categorical_crossentropy, "categorical": fastxent.categorical_crossentropy,
          "binary": fastxent.binary_crossentropy}[w.kind]  # fmt: skip
    opts = dict(from_logits=w.from_logits, backend=backend, threads=threads, label_smoothing=w.smoothing)
    if w.grad == "in_place":
        # Each call overwrites the logits with their gradient, and the next call reads
        # those: still valid logits, the same work, and no copy inside the timing.
        scratch = y_pred.copy()
        return lambda: fn(y_true, scratch, return_grad=True, grad_out=scratch, **opts)
    return lambda: fn(y_true, y_pred, **opts)


def fastxent_plan(w: Workload) -> str:
    """What ``backend="auto"`` runs for the workload (``fastxent.explain``)."""
    y_pred, y_true = data(w.rows, w.classes, w.dtype, w.from_logits, w.kind)
    fn = {"sparse": fastxent.sparse_categorical_crossentropy, "categorical": fastxent.categorical_crossentropy,
          "binary": fastxent.binary_crossentropy}[w.kind]  # fmt: skip
    plan = fastxent.explain(fn, y_true, y_pred, from_logits=w.from_logits, label_smoothing=w.smoothing,
                            return_grad=w.grad != "none")  # fmt: skip
    return f"{plan.backend}, {plan.threads}"


def torch_call(w: Workload, threads: int):
    """The same job in torch.nn.functional, or None when torch is missing."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    if not w.from_logits and w.nbytes > 1 << 30:
        return None  # clamp + log make two full-size temporaries: beyond this machine's memory
    torch.set_num_threads(threads)
    y_pred, y_true = data(w.rows, w.classes, w.dtype, w.from_logits, w.kind)
    x, t = torch.from_numpy(y_pred), torch.from_numpy(y_true)
    if w.kind == "binary":
        loss = F.binary_cross_entropy_with_logits if w.from_logits else F.binary_cross_entropy
    elif w.from_logits:
        loss = lambda a, b: F.cross_entropy(a, b, label_smoothing=w.smoothing)  # noqa: E731
    elif w.kind == "sparse":
        loss = lambda a, b: F.nll_loss(torch.log(a.clamp(1e-7, 1 - 1e-7)), b)  # noqa: E731
    else:
        loss = lambda a, b: -(b * torch.log(a.clamp(1e-7, 1 - 1e-7))).sum(1).mean()  # noqa: E731
    if w.grad == "in_place":
        def run():
            xg = x.detach().requires_grad_()
            loss(xg, t).backward()
            return xg.grad
        return run
    return lambda: loss(x, t)


def read_pass_calls(w: Workload, threads: int) -> dict:
    """Reference passes over the bytes the workload must read: name -> function."""
    y_pred, y_true = data(w.rows, w.classes, w.dtype, w.from_logits, w.kind)
    arrays = [y_pred] + ([y_true] if w.kind == "binary" else [])
    calls = {"np.add.reduce": lambda: [np.add.reduce(a, axis=None) for a in arrays]}
    try:
        from fastxent.backends import _cython_ext

        # Summed as float32 words: the same bytes, whatever the array's dtype.
        words = [np.ascontiguousarray(a).reshape(-1).view(np.float32) for a in arrays]
        calls["parallel stream sum"] = lambda: [_cython_ext._read_sum(w, threads) for w in words]
    except ImportError:
        pass
    return calls


def reference_call(w: Workload, name: str):
    """Sparse-label references: ``p[np.arange(N), y]`` alone, or the categorical loss
    on one-hot targets (None when the one-hot matrix would exceed 2 GiB)."""
    y_pred, y_true = data(w.rows, w.classes, w.dtype, w.from_logits, w.kind)
    if name == "numpy gather":
        rows = np.arange(w.rows)
        return lambda: y_pred[rows, y_true]
    if w.rows * w.classes * y_pred.itemsize > 2 << 30:
        return None
    one_hot = np.zeros_like(y_pred)
    one_hot[np.arange(w.rows), y_true] = 1
    return lambda: fastxent.categorical_crossentropy(one_hot, y_pred)
