"""pytest-benchmark cases for fastxent.linear_cross_entropy on an LM head: 2,048 x 256
hidden states, a 32,000-word vocabulary, float32. The references of the same run are
the bare ``hidden @ weight.T``, the same product into a preallocated array, the
unfused fastxent path and torch (when it imports).

Run:   python -m pytest benchmarks/test_linear_bench.py -n0 --benchmark-group-by=group
The table with ratios and peak memory: python benchmarks/linear.py
"""

from __future__ import annotations

import numpy as np
import pytest

import fastxent

ROWS, FEATURES, VOCAB = 2048, 256, 32_000
GROUP = f"linear-{ROWS}x{FEATURES}x{VOCAB}"


@pytest.fixture(scope="module")
def lm_head():
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((ROWS, FEATURES), dtype=np.float32)
    weight = rng.standard_normal((VOCAB, FEATURES), dtype=np.float32) * np.float32(FEATURES**-0.5)
    return rng.integers(0, VOCAB, ROWS), hidden, weight


def run(benchmark, fn, role: str):
    benchmark.group = GROUP
    benchmark.extra_info.update(workload=GROUP, role=role)
    benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)


def test_bare_matmul(benchmark, lm_head):
    _, hidden, weight = lm_head
    run(benchmark, lambda: hidden @ weight.T, "matmul")


def test_matmul_into_preallocated_array(benchmark, lm_head):
    _, hidden, weight = lm_head
    out = np.empty((ROWS, VOCAB), np.float32)
    run(benchmark, lambda: np.matmul(hidden, weight.T, out=out), "matmul into buffer")


@pytest.mark.parametrize("return_grad", [False, True], ids=["loss", "grad"])
def test_linear_cross_entropy(benchmark, lm_head, return_grad):
    y, hidden, weight = lm_head
    run(benchmark, lambda: fastxent.linear_cross_entropy(y, hidden, weight, return_grad=return_grad),
        "fastxent fused")  # fmt: skip


#: The LLM options (z-loss, soft cap, per-row lse), alone and together: the row-block
#: path hands them to the kernel, so they should cost about the kernel's extra work.
LLM_OPTIONS = {
    "z_loss": dict(z_loss=1e-4),
    "softcap": dict(logit_softcap=30.0),
    "return_lse": dict(return_lse=True),
    "all three": dict(z_loss=1e-4, logit_softcap=30.0, return_lse=True),
}


@pytest.mark.parametrize("options", list(LLM_OPTIONS), ids=list(LLM_OPTIONS))
@pytest.mark.parametrize("return_grad", [False, True], ids=["loss", "grad"])
def test_linear_cross_entropy_with_llm_options(benchmark, lm_head, return_grad, options):
    y, hidden, weight = lm_head
    kw = LLM_OPTIONS[options]
    run(benchmark, lambda: fastxent.linear_cross_entropy(y, hidden, weight, return_grad=return_grad, **kw),
        f"fastxent fused, {options}")  # fmt: skip


@pytest.mark.parametrize("return_grad", [False, True], ids=["loss", "grad"])
def test_unfused(benchmark, lm_head, return_grad):
    y, hidden, weight = lm_head

    def fn():
        logits = hidden @ weight.T
        if not return_grad:
            return fastxent.sparse_categorical_crossentropy(y, logits, from_logits=True)
        loss, g = fastxent.sparse_categorical_crossentropy(y, logits, from_logits=True, return_grad=True, grad_out=logits)
        return loss, g @ weight, g.T @ hidden

    run(benchmark, fn, "fastxent unfused")


@pytest.mark.parametrize("return_grad", [False, True], ids=["loss", "grad"])
def test_torch(benchmark, lm_head, return_grad):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    y, hidden, weight = lm_head
    t_y = torch.from_numpy(y)
    h = torch.from_numpy(hidden).requires_grad_(return_grad)
    w = torch.from_numpy(weight).requires_grad_(return_grad)

    def fn():
        if not return_grad:
            with torch.no_grad():
                return F.cross_entropy(F.linear(h, w), t_y)
        h.grad = w.grad = None
        F.cross_entropy(F.linear(h, w), t_y).backward()

    run(benchmark, fn, "torch")
