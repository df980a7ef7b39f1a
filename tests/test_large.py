"""Arrays with more than 2^31 elements: every index computed in 64 bits.

70,000 x 32,000 float32 logits (8.96 GB, 2.24e9 elements). The array starts as
zeros (cheap: untouched pages) with two known logits per row, so the exact loss and
gradient of every row are known in closed form; rows past element 2^31 are checked
in particular.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import call

import fastxent

N, C = 70_000, 32_000
FIRST_ROW_PAST_2_31 = 2**31 // C + 1
# One worker runs these in turn: two 9 GB arrays at once would not fit in memory.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("large-arrays")]


def structured_logits():
    """Zeros, plus v_i at the label and w_i at one other class of each row."""
    rows = np.arange(N)
    labels = (rows * 7_919) % C
    other = (labels + 1 + rows % (C - 1)) % C
    v = (rows % 13 - 6).astype(np.float32)
    w = (rows % 5 - 2).astype(np.float32)
    z = np.empty((N, C), dtype=np.float32)
    fill(z, labels, other, v, w)
    return z, labels, other, v.astype(np.float64), w.astype(np.float64)


def fill(z, labels, other, v, w):
    z.fill(0)
    rows = np.arange(N)
    z[rows, labels] = v
    z[rows, other] = w


def exact(v, w):
    """Per-row loss, and softmax at the label, at the other class and at a zero class."""
    s = (C - 2) + np.exp(v) + np.exp(w)
    return np.log(s) - v, np.exp(v) / s, np.exp(w) / s, 1.0 / s


@pytest.fixture(scope="module")
def case():
    assert N * C > 2**31
    return structured_logits()


def test_loss_past_two_to_the_31(backend, case):
    z, labels, _, v, w = case
    want_rows, *_ = exact(v, w)
    losses = call(fastxent.sparse_categorical_crossentropy, labels, z, backend=backend, from_logits=True,
                  reduction="none")  # fmt: skip
    np.testing.assert_allclose(losses, want_rows, rtol=1e-5)
    np.testing.assert_allclose(losses[FIRST_ROW_PAST_2_31:], want_rows[FIRST_ROW_PAST_2_31:], rtol=1e-5)


def test_gradient_in_place_past_two_to_the_31(backend, case):
    z, labels, other, v, w = case
    try:  # the gradient overwrites the shared 9 GB logits (a copy would double the peak): restored after
        loss, grad = call(fastxent.sparse_categorical_crossentropy, labels, z, backend=backend, from_logits=True,
                          return_grad=True, grad_out=z)  # fmt: skip
        check_gradient(loss, grad, labels, other, v, w)
    finally:
        fill(z, labels, other, v.astype(np.float32), w.astype(np.float32))


def check_gradient(loss, grad, labels, other, v, w):
    want_rows, q_label, q_other, q_zero = exact(v, w)
    np.testing.assert_allclose(loss, want_rows.mean(), rtol=1e-6)
    rows = np.r_[0:10, FIRST_ROW_PAST_2_31 - 5 : FIRST_ROW_PAST_2_31 + 5, N - 10 : N]
    zero_col = (other[rows] + 1) % C
    zero_col = np.where(zero_col == labels[rows], (zero_col + 1) % C, zero_col)
    np.testing.assert_allclose(grad[rows, labels[rows]], (q_label[rows] - 1) / N, rtol=1e-5)
    np.testing.assert_allclose(grad[rows, other[rows]], q_other[rows] / N, rtol=1e-5)
    np.testing.assert_allclose(grad[rows, zero_col], q_zero[rows] / N, rtol=1e-5)
    np.testing.assert_allclose(grad[-1].sum(dtype=np.float64), 0.0, atol=1e-9)
