"""Shared fixtures: the backend matrix, random data, tolerances."""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import fastxent
from fastxent import backends
from kernel_impls import IMPL_NAMES, make_impl

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


#: Numba compiles each new combination of argument types (dtype, contiguity, gradient
#: mode, targets' dtype) once, in seconds; the disk cache (fastxent._paths, per user)
#: is shared by the xdist workers. FASTXENT_NUMBA_MATRIX chooses what runs on Numba:
#: "sample" (the default, which keeps the suite within CI's time on 2 cores) a fixed,
#: spread-out sixteenth of the Numba cases (every test function keeps some, chosen by
#: a hash of the test id); "kernels" the whole kernel matrix (the ``impl`` fixture)
#: and a sixteenth of the public-API cases with ``backend="numba"`` (their kernels
#: are the kernel matrix's); "full" every case.
NUMBA_SHARE = 16
NUMBA_MATRIX = os.environ.get("FASTXENT_NUMBA_MATRIX", "sample")


def _numba_param(item) -> str | None:
    params = getattr(getattr(item, "callspec", None), "params", {})
    if params.get("impl") == "numba":
        return "impl"
    return "backend" if params.get("backend") == "numba" else None


def pytest_collection_modifyitems(config, items):
    if NUMBA_MATRIX == "full":
        return
    sampled = {"backend"} if NUMBA_MATRIX == "kernels" else {"backend", "impl"}
    numba_items = [i for i in items if _numba_param(i) in sampled]
    chosen = {id(i) for i in numba_items if zlib.crc32(i.nodeid.encode()) % NUMBA_SHARE == 0}
    covered = {(i.path, i.originalname) for i in numba_items if id(i) in chosen}
    for item in numba_items:  # a test function none of whose numba cases was chosen keeps its first
        if (item.path, item.originalname) not in covered:
            chosen.add(id(item))
            covered.add((item.path, item.originalname))
    numba_ids = {id(i) for i in numba_items}
    keep = [i for i in items if id(i) not in numba_ids or id(i) in chosen]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if id(i) in numba_ids and id(i) not in chosen])
        items[:] = keep


@pytest.fixture(params=IMPL_NAMES)
def impl(request):
    """Each implementation of the kernel table in turn (tests/kernel_impls.py): numpy,
    numba, and the Cython kernels with each instruction-set table this CPU runs,
    forced for the test."""
    impl = make_impl(request.param)
    if not impl.isa:
        yield impl
        return
    from fastxent.backends import _cython_ext

    _cython_ext._set_simd(impl.isa)
    try:
        yield impl
    finally:
        _cython_ext._set_simd("auto")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
