"""Where the contract follows PyTorch, the numbers are PyTorch's (when torch is installed)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import call

import fastxent

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_sparse_from_logits_is_f_cross_entropy(backend, rng, smoothing, weighted, reduction):
    z = rng.standard_normal((2, 6, 3, 4))  # N, C, H, W
    y = rng.integers(0, 6, (2, 3, 4))
    y[0, 1] = -100
    w = rng.uniform(0.2, 3, 6) if weighted else None
    want = F.cross_entropy(torch.from_numpy(z), torch.from_numpy(y), weight=None if w is None else torch.from_numpy(w),
                           ignore_index=-100, label_smoothing=smoothing, reduction=reduction)  # fmt: skip
    ours_reduction = {"mean": "weighted_mean", "sum": "sum", "none": "none"}[reduction]
    loss, grad = call(fastxent.sparse_categorical_crossentropy, y, z, backend=backend, from_logits=True, axis=1,
                      ignore_index=-100, class_weight=w, label_smoothing=smoothing, reduction=ours_reduction,
                      return_grad=True)  # fmt: skip
    x = torch.from_numpy(z).requires_grad_()
    F.cross_entropy(x, torch.from_numpy(y), weight=None if w is None else torch.from_numpy(w), ignore_index=-100,
                    label_smoothing=smoothing, reduction=reduction).sum().backward()  # fmt: skip
    np.testing.assert_allclose(loss, want.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grad, x.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_categorical_soft_targets_are_f_cross_entropy_with_probabilities(backend, rng):
    z = rng.standard_normal((7, 5))
    t = rng.dirichlet(np.ones(5), 7)
    want = F.cross_entropy(torch.from_numpy(z), torch.from_numpy(t), label_smoothing=0.1)
    got = call(fastxent.categorical_crossentropy, t, z, backend=backend, from_logits=True, label_smoothing=0.1)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_from_logits_is_bce_with_logits(backend, rng, reduction):
    z = rng.standard_normal((6, 4)) * 5
    y = rng.random((6, 4))
    pw = rng.uniform(0.5, 3, 4)
    want = F.binary_cross_entropy_with_logits(torch.from_numpy(z), torch.from_numpy(y), pos_weight=torch.from_numpy(pw),
                                              reduction=reduction)  # fmt: skip
    got = call(fastxent.binary_crossentropy, y, z, backend=backend, from_logits=True, pos_weight=pw, axis=None,
               reduction=reduction)  # fmt: skip
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-12)
