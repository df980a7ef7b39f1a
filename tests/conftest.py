"""Shared fixtures: the backend matrix, random data, tolerances."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import fastxent
from fastxent import backends

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("FASTXENT_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
    database=None,
)
settings.load_profile("ci")

ALL_BACKENDS = backends.NAMES


@pytest.fixture(params=ALL_BACKENDS, scope="session")
def backend(request):
    """Every backend in turn; the test matrix runs unchanged on each."""
    reason = backends.unavailable_reason(request.param)
    if reason is not None:
        pytest.skip(f"{request.param}: {reason}")
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
