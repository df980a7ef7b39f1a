"""Helpers shared by the test modules."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent


def call(fn, *args, backend, **kwargs):
    """Call a loss on ``backend``; skip (saying why) if that backend cannot run it."""
    try:
        plan = fastxent.explain(fn, *args, backend=backend, **kwargs)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    result = fn(*args, backend=backend, **kwargs)
    assert plan.backend == backend
    return result


def tolerances(dtype) -> dict:
    """rtol/atol for results of ``dtype`` against the float64 oracle.

    float64: 1e-12 relative (accumulation order differs from the oracle's).
    float32: the kernels may compute exp/log in float32 (about 1e-7 relative per
    operation), accumulated over a row: 1e-5 relative leaves room for C = 50,000.
    """
    if np.dtype(dtype) == np.float64:
        return {"rtol": 1e-12, "atol": 1e-13}
    return {"rtol": 1e-5, "atol": 1e-6}
