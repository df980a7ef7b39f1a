"""The Cython backend: OpenMP kernels compiled with the package.

This build carries the batched sparse gather-log (sparse loss from probabilities,
no label smoothing, loss only); calls it cannot run go to another backend.
"""

from __future__ import annotations

import numpy as np

NAME = "cython"

try:
    from . import _cython_ext
except ImportError as exc:  # a source checkout that was never built
    _cython_ext = None
    _IMPORT_ERROR = str(exc)

_X_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def unavailable_reason() -> str | None:
    if _cython_ext is None:
        return f"the compiled extension is missing ({_IMPORT_ERROR}); reinstall with `pip install .`"
    return None


def unsupported_reason(problem) -> str | None:
    if problem.kernel_name != "sparse_from_probs" or problem.label_smoothing or problem.return_grad:
        return "this build's Cython backend only has the sparse gather-log (from probabilities, no label smoothing, loss only)"
    if problem.x.dtype not in _X_DTYPES:
        return f"y_pred dtype {problem.x.dtype} (the Cython kernels read float32 and float64)"
    return None


def info() -> dict:
    openmp = _cython_ext.openmp_enabled()
    return {"OpenMP": "yes" if openmp else "NO (built without OpenMP: kernels run serially)"}


def _labels(labels: np.ndarray) -> np.ndarray:
    return labels.view(np.uint8) if labels.dtype == np.bool_ else labels


def sparse_from_probs(x, labels, class_weight, label_smoothing, ignore_index, epsilon,
                      grad_weight, loss_out, grad_out, threads) -> int:  # fmt: skip
    return _cython_ext.sparse_gather_log(x, _labels(labels), class_weight, ignore_index, epsilon, loss_out, threads)


KERNELS = {"sparse_from_probs": sparse_from_probs}
