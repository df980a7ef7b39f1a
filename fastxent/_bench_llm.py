"""``fastxent bench --llm``: a language model's loss on the CPU, side by side.

The scenario: ``tokens`` hidden states of width ``hidden`` and an output layer over a
``vocab``-word vocabulary. Each way of getting the mean loss (and, where marked, the
gradients) is timed and its peak extra memory measured:

* ``bf16 logits from disk``: bfloat16 logits memory-mapped from a file (as an
  evaluation job reads a model's saved outputs) straight into the sparse loss;
* ``materialised logits``: ``hidden @ weight.T`` in float32, then the sparse loss
  (and its gradient, multiplied back into hidden's and weight's);
* ``fused linear + loss``: :func:`fastxent.linear_cross_entropy`, which never holds the
  N x V logits;
* ``torch``: ``F.linear`` + ``F.cross_entropy`` (and ``backward``), when torch imports.

Peak memory is tracemalloc's (NumPy's allocations; torch's own allocator is not seen,
so its column says n/a).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ._api import sparse_categorical_crossentropy
from .bench import machine_info, peak_bytes
from .linear import linear_cross_entropy

DEFAULT = dict(tokens=2048, hidden=256, vocab=32_000)
QUICK = dict(tokens=1024, hidden=128, vocab=8_192)


@dataclass
class LlmConfig:
    tokens: int = DEFAULT["tokens"]
    hidden: int = DEFAULT["hidden"]
    vocab: int = DEFAULT["vocab"]
    repeats: int = 5
    threads: int | None = None
    dtype: str = "float32"  # what machine_info reports: the compute dtype
    seed: int = 0


@dataclass
class LlmResult:
    name: str
    gradient: bool
    seconds: float  # median
    q1_seconds: float
    q3_seconds: float
    peak_bytes: int  # -1: not measurable (torch)
    loss: float


def _timed(fn, repeats: int):
    result = fn()  # warm-up: first-touch pages, BLAS buffers, a JIT
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return float(median), float(q1), float(q3), result


def scenarios(config: LlmConfig, folder: Path) -> dict:
    """``{(name, gradient): zero-argument function returning the loss}``."""
    import ml_dtypes

    rng = np.random.default_rng(config.seed)
    n, d, v = config.tokens, config.hidden, config.vocab
    hidden = rng.standard_normal((n, d), dtype=np.float32)
    weight = rng.standard_normal((v, d), dtype=np.float32) * np.float32(d**-0.5)
    labels = rng.integers(0, v, n)
    path = folder / "logits-bf16.npy"  # stored as the raw uint16 bits (.npy has no bfloat16)
    np.save(path, (hidden @ weight.T).astype(ml_dtypes.bfloat16).view(np.uint16))
    opts = dict(from_logits=True, threads=config.threads)

    def from_disk():
        logits = np.load(path, mmap_mode="r").view(ml_dtypes.bfloat16)
        return float(sparse_categorical_crossentropy(labels, logits, **opts))

    def materialised():
        return float(sparse_categorical_crossentropy(labels, hidden @ weight.T, **opts))

    def materialised_grad():
        logits = hidden @ weight.T
        loss, g = sparse_categorical_crossentropy(labels, logits, return_grad=True, grad_out=logits, **opts)
        g @ weight, g.T @ hidden  # the gradients of hidden and weight
        return float(loss)

    def fused():
        return float(linear_cross_entropy(labels, hidden, weight, threads=config.threads))

    def fused_grad():
        return float(linear_cross_entropy(labels, hidden, weight, return_grad=True, threads=config.threads)[0])

    found = {("bf16 logits from disk", False): from_disk, ("materialised logits", False): materialised,
             ("materialised logits", True): materialised_grad, ("fused linear + loss", False): fused,
             ("fused linear + loss", True): fused_grad}  # fmt: skip
    found.update(_torch_scenarios(hidden, weight, labels, config.threads))
    return found


def _torch_scenarios(hidden, weight, labels, threads) -> dict:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return {}
    if threads:
        torch.set_num_threads(threads)
    h, y = torch.from_numpy(hidden), torch.from_numpy(labels)

    def loss():
        with torch.no_grad():
            return F.cross_entropy(F.linear(h, torch.from_numpy(weight)), y).item()

    def loss_grad():
        hg = h.clone().requires_grad_(True)
        wg = torch.from_numpy(weight).clone().requires_grad_(True)
        out = F.cross_entropy(F.linear(hg, wg), y)
        out.backward()
        return out.item()

    return {("torch F.linear + F.cross_entropy", False): loss, ("torch F.linear + F.cross_entropy", True): loss_grad}


def run_llm(config: LlmConfig, progress=None) -> list[LlmResult]:
    results = []
    with tempfile.TemporaryDirectory(prefix="fastxent-llm-") as tmp:
        found = scenarios(config, Path(tmp))
        for step, ((name, grad), fn) in enumerate(found.items()):
            if progress:
                progress(step, len(found), f"{name}{' + gradients' if grad else ''}")
            median, q1, q3, loss = _timed(fn, config.repeats)
            peak = -1 if name.startswith("torch") else peak_bytes(fn)
            results.append(LlmResult(name, grad, median, q1, q3, peak, loss))
        if progress:
            progress(len(found), len(found), "done")
    return results


def render(results: list[LlmResult], config: LlmConfig) -> str:
    logits_bytes = config.tokens * config.vocab * 4
    lines = [f"{config.tokens:,} tokens x {config.hidden} features -> {config.vocab:,} words "
             f"(float32 logits: {logits_bytes / 2**20:.0f} MiB); median (IQR), peak extra memory",
             f"{'':36} {'gradients':>9} {'time':>26} {'peak memory':>14} {'loss':>9}"]  # fmt: skip
    for r in results:
        peak = "n/a" if r.peak_bytes < 0 else f"{r.peak_bytes / 2**20:.1f} MiB"
        timing = f"{r.seconds * 1e3:.1f} ms ({r.q1_seconds * 1e3:.1f}-{r.q3_seconds * 1e3:.1f})"
        lines.append(f"{r.name:36} {'yes' if r.gradient else 'no':>9} {timing:>26} {peak:>14} {r.loss:9.4f}")
    return "\n".join(lines)


def write_json(results, config: LlmConfig, path: Path) -> None:
    payload = {"machine": machine_info(config), "config": asdict(config), "results": [asdict(r) for r in results]}
    path.write_text(json.dumps(payload, indent=2))


def plot(results, config: LlmConfig, path: Path) -> None:
    """Time and peak memory of each way, loss alone and with gradients: two bar charts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.name}{' + grad' if r.gradient else ''}" for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.5 * len(results) + 2.5))
    y = np.arange(len(results))
    axes[0].barh(y, [r.seconds * 1e3 for r in results],
                 xerr=[[(r.seconds - r.q1_seconds) * 1e3 for r in results],
                       [(r.q3_seconds - r.seconds) * 1e3 for r in results]], capsize=2)  # fmt: skip
    axes[0].set_xlabel("median time (ms), interquartile range")
    axes[1].barh(y, [max(r.peak_bytes, 0) / 2**20 for r in results])
    axes[1].set_xlabel("peak extra memory (MiB, tracemalloc; torch not measured)")
    for ax in axes:
        ax.set_yticks(y, labels if ax is axes[0] else [""] * len(y))
        ax.grid(True, axis="x", alpha=0.3)
    info = machine_info(config)
    fig.suptitle(f"fastxent {info['fastxent']}: {config.tokens:,} tokens x {config.hidden} -> {config.vocab:,} words; "
                 f"{info['processor']}, {info['threads']} threads", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
