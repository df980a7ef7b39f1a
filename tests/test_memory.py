"""Peak extra memory (tracemalloc): no N x C temporary in a loss from logits, in a
sparse loss, or in a gradient written in place."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import MiB, call, peak_of

import fastxent

N, C = 20_000, 1_000  # y_pred is 80 MB of float32; a single N x C temporary would show


def budget(backend: str) -> int:
    """8 bytes per row (the per-row loss buffer) plus a fixed allowance: the NumPy
    backend works through 32,768-element float64 blocks and their temporaries."""
    return 8 * N + (4 * MiB if backend == "numpy" else 1 * MiB)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((N, C), dtype=np.float32)
    p = np.full((N, C), 1.0 / C, dtype=np.float32)
    y = rng.integers(0, C, N)
    return z, p, y


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_sparse_loss_has_no_n_by_c_temporary(backend, data, from_logits, smoothing):
    z, p, y = data
    y_pred = z if from_logits else p
    peak = peak_of(lambda: call(fastxent.sparse_categorical_crossentropy, y, y_pred, backend=backend,
                                from_logits=from_logits, label_smoothing=smoothing))  # fmt: skip
    assert peak <= budget(backend), f"peak {peak / MiB:.1f} MiB"


def test_categorical_and_binary_from_logits_have_no_n_by_c_temporary(backend, data):
    z, _, y = data
    targets = np.zeros((N, C), dtype=np.float32)
    targets[np.arange(N), y] = 1
    for fn in (fastxent.categorical_crossentropy, fastxent.binary_crossentropy):
        peak = peak_of(lambda: call(fn, targets, z, backend=backend, from_logits=True))
        assert peak <= budget(backend), f"{fn.__name__}: peak {peak / MiB:.1f} MiB"


def test_gradient_in_place_adds_no_n_by_c_array(backend, data):
    z, _, y = data
    logits = z.copy()
    peak = peak_of(lambda: call(fastxent.sparse_categorical_crossentropy, y, logits, backend=backend,
                                from_logits=True, return_grad=True, grad_out=logits))  # fmt: skip
    assert peak <= budget(backend), f"peak {peak / MiB:.1f} MiB"


def test_gather_memory_does_not_grow_with_classes(backend):
    """The sparse loss from probabilities reads one value per row: C does not matter."""
    rng = np.random.default_rng(1)
    peaks = []
    for c in (10, 5_000):
        p = np.full((4_000, c), 1.0 / c, dtype=np.float32)
        y = rng.integers(0, c, 4_000)
        peaks.append(peak_of(lambda: call(fastxent.sparse_categorical_crossentropy, y, p, backend=backend)))
    assert peaks[1] <= peaks[0] + 64 * 1024
