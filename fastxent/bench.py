"""``fastxent bench``: sparse labels against one-hot targets, in time and memory.

For each class count, on synthetic data, every available backend (and, as references,
plain NumPy and PyTorch when installed) computes the mean loss four ways: sparse
labels or one-hot targets, from probabilities or from logits. The one-hot variants
pay for building the one-hot matrix, in time and in memory, as a user would. Results
are printed as a table, written as JSON and drawn as a PNG (time and peak memory
against the number of classes).
"""

from __future__ import annotations

import json
import platform
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import backends
from ._calibration import cpu_name
from ._version import __version__
from ._api import categorical_crossentropy, sparse_categorical_crossentropy

DEFAULT_CLASSES = (10, 100, 1_000, 10_000, 50_000)
QUICK_CLASSES = (10, 100, 1_000, 10_000)
DEFAULT_ROWS = (2_048,)
QUICK_ROWS = (1_024,)
#: Problems larger than this many elements per array are skipped (1 GiB of float32).
MAX_ELEMENTS = 1 << 28
VARIANTS = ("sparse-probs", "onehot-probs", "sparse-logits", "onehot-logits")


@dataclass
class BenchConfig:
    classes: tuple = DEFAULT_CLASSES
    rows: tuple = DEFAULT_ROWS
    dtype: str = "float32"
    threads: int | None = None
    backends: tuple | None = None  # None: every available backend plus the references
    repeats: int = 7
    seed: int = 0

    def sizes(self) -> list[tuple[int, int]]:
        """(rows, classes) pairs to measure, smallest arrays first."""
        pairs = [(n, c) for n in self.rows for c in self.classes if n * c <= MAX_ELEMENTS]
        return sorted(pairs, key=lambda nc: (nc[0] * nc[1], nc))


@dataclass
class Measurement:
    implementation: str  # "fastxent-<backend>", "numpy" (plain NumPy) or "torch"
    variant: str  # one of VARIANTS
    classes: int
    rows: int
    seconds: float  # median
    peak_bytes: int  # peak extra memory of one call (tracemalloc); -1: not measurable
    onehot_build_seconds: float = 0.0  # included in `seconds` for one-hot variants
    loss: float = float("nan")
    extra: dict = field(default_factory=dict)
    q1_seconds: float = float("nan")  # the interquartile range of the timings
    q3_seconds: float = float("nan")
    samples: int = 0


# --------------------------------------------------------------------------- implementations


def _one_hot(labels: np.ndarray, n_classes: int, dtype) -> np.ndarray:
    """What a user does without sparse labels: an N x C matrix of zeros and ones."""
    out = np.zeros((labels.size, n_classes), dtype=dtype)
    out[np.arange(labels.size), labels] = 1
    return out


def _fastxent_impl(backend: str, threads):
    opts = {"backend": backend, "threads": threads}

    def sparse(labels, y_pred, from_logits):
        return sparse_categorical_crossentropy(labels, y_pred, from_logits=from_logits, **opts)

    def onehot(targets, y_pred, from_logits):
        return categorical_crossentropy(targets, y_pred, from_logits=from_logits, **opts)

    return sparse, onehot


def _numpy_naive_impl():
    """The loss as it is usually written in NumPy, as a reference."""

    def log_softmax(z):
        m = z.max(axis=1, keepdims=True)
        return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))

    def sparse(labels, y_pred, from_logits):
        rows = np.arange(labels.size)
        if from_logits:
            return -log_softmax(y_pred)[rows, labels].mean()
        return -np.log(np.clip(y_pred[rows, labels], 1e-7, 1 - 1e-7)).mean()

    def onehot(targets, y_pred, from_logits):
        logq = log_softmax(y_pred) if from_logits else np.log(np.clip(y_pred, 1e-7, 1 - 1e-7))
        return -(targets * logq).sum(axis=1).mean()

    return sparse, onehot


def _torch_impl(threads):
    import torch
    import torch.nn.functional as F

    if threads:
        torch.set_num_threads(threads)

    def sparse(labels, y_pred, from_logits):
        x, y = torch.from_numpy(y_pred), torch.from_numpy(labels)
        if from_logits:
            return F.cross_entropy(x, y).item()
        return F.nll_loss(torch.log(x.clamp(1e-7, 1 - 1e-7)), y).item()

    def onehot(targets, y_pred, from_logits):
        x, t = torch.from_numpy(y_pred), torch.from_numpy(targets)
        if from_logits:
            return F.cross_entropy(x, t).item()
        return -(t * torch.log(x.clamp(1e-7, 1 - 1e-7))).sum(dim=1).mean().item()

    return sparse, onehot


def implementations(config: BenchConfig) -> dict:
    """name -> (sparse, onehot) callables, for what is available here."""
    wanted = config.backends
    found = {}
    for name in backends.NAMES:
        if (wanted is None or name in wanted) and backends.unavailable_reason(name) is None:
            found[f"fastxent-{name}"] = _fastxent_impl(name, config.threads)
    if wanted is None or "plain-numpy" in wanted:
        found["numpy"] = _numpy_naive_impl()
    if wanted is None or "torch" in wanted:
        try:
            found["torch"] = _torch_impl(config.threads)
        except ImportError:
            pass
    return found


# --------------------------------------------------------------------------- measuring


def synthetic_data(n_rows: int, n_classes: int, dtype, seed: int):
    """Logits, the matching softmax probabilities and integer labels."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n_rows, n_classes), dtype=np.float32).astype(dtype, copy=False)
    probs = np.empty_like(logits)
    step = max(1, (1 << 20) // n_classes)
    for start in range(0, n_rows, step):  # softmax in blocks: no second N x C temporary
        block = logits[start : start + step].astype(np.float64)
        block = np.exp(block - block.max(axis=1, keepdims=True))
        probs[start : start + step] = block / block.sum(axis=1, keepdims=True)
    labels = rng.integers(0, n_classes, n_rows)
    return logits, probs, labels


#: Each measurement takes at least ``repeats`` samples, and more while this many
#: seconds last (short calls get enough samples for a stable median on a busy machine).
SAMPLE_BUDGET = 0.1
MAX_SAMPLES = 200


def timing(fn, repeats: int) -> tuple[np.ndarray, object]:
    """Wall times of ``fn()`` (at least ``repeats``, more within :data:`SAMPLE_BUDGET`)
    and its result, after one untimed warm-up call (JIT compilation and first-touch
    page faults stay out of the timing)."""
    result = fn()
    times = []
    deadline = time.perf_counter() + SAMPLE_BUDGET
    while len(times) < repeats or (time.perf_counter() < deadline and len(times) < MAX_SAMPLES):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return np.array(times), result


def median_seconds(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of ``fn()`` and its result (see :func:`timing`)."""
    times, result = timing(fn, repeats)
    return float(np.median(times)), result


def peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return int(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()


def measure_one(name, impl, variant, logits, probs, labels, repeats) -> Measurement:
    sparse, onehot = impl
    from_logits = variant.endswith("logits")
    y_pred = logits if from_logits else probs
    n_rows, n_classes = y_pred.shape
    build_seconds = 0.0
    if variant.startswith("sparse"):
        run = lambda: sparse(labels, y_pred, from_logits)  # noqa: E731
    else:
        run = lambda: onehot(_one_hot(labels, n_classes, y_pred.dtype), y_pred, from_logits)  # noqa: E731
        build_seconds, _ = median_seconds(lambda: _one_hot(labels, n_classes, y_pred.dtype), repeats)
    times, loss = timing(run, repeats)
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    # tracemalloc sees NumPy's allocations, not PyTorch's own allocator: no figure there.
    peak = -1 if name == "torch" else peak_bytes(run)
    return Measurement(name, variant, n_classes, n_rows, float(median), peak, build_seconds, float(loss),
                       q1_seconds=float(q1), q3_seconds=float(q3), samples=int(times.size))


def noisy(a: Measurement, b: Measurement) -> bool:
    """Whether the timings' spread (the wider interquartile range) exceeds the
    difference of the medians: their ratio is then not to be trusted."""
    spread = max(a.q3_seconds - a.q1_seconds, b.q3_seconds - b.q1_seconds)
    return spread > abs(a.seconds - b.seconds)


def run_bench(config: BenchConfig, progress=None) -> list[Measurement]:
    """Measure every (size, implementation, variant); ``progress(step, total, text)``."""
    impls = implementations(config)
    sizes = config.sizes()
    total = len(sizes) * len(impls) * len(VARIANTS)
    done = 0
    results = []
    for n_rows, n_classes in sizes:
        logits, probs, labels = synthetic_data(n_rows, n_classes, config.dtype, config.seed)
        for name, impl in impls.items():
            for variant in VARIANTS:
                if progress:
                    progress(done, total, f"{n_rows:,} x {n_classes:,} {name} {variant}")
                try:
                    results.append(measure_one(name, impl, variant, logits, probs, labels, config.repeats))
                except RuntimeError:
                    pass  # a backend that cannot run this variant (`fastxent info` says why)
                done += 1
        del logits, probs, labels
    if progress:
        progress(total, total, "done")
    return results


# --------------------------------------------------------------------------- reporting


def machine_info(config: BenchConfig) -> dict:
    from ._threads import resolve_threads

    info = {
        "fastxent": __version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": cpu_name(),
        "threads": config.threads or resolve_threads(None)[0],
        "dtype": config.dtype,
    }
    for name in ("numba", "cython"):
        if backends.unavailable_reason(name) is None:
            details = backends.module(name).info()
            info[name] = details.get("version") or details["SIMD"].split(" (")[0] + " kernels"
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def ratios(results: list[Measurement]) -> dict:
    """(rows, implementation, classes, 'probs'|'logits') -> sparse/one-hot (time, memory)."""
    index = {(m.rows, m.implementation, m.classes, m.variant): m for m in results}
    out = {}
    for (n, impl, c, variant), m in index.items():
        if variant.startswith("sparse"):
            kind = variant.split("-")[1]
            other = index.get((n, impl, c, f"onehot-{kind}"))
            if other is not None:
                memory = m.peak_bytes / max(1, other.peak_bytes) if m.peak_bytes >= 0 else float("nan")
                out[(n, impl, c, kind)] = (m.seconds / other.seconds, memory)
    return out


def write_json(results, config, path: Path) -> None:
    payload = {
        "machine": machine_info(config),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
        "results": [asdict(m) for m in results],
    }
    path.write_text(json.dumps(payload, indent=2))


def plot(results: list[Measurement], config: BenchConfig, path: Path) -> None:
    """Time and peak extra memory against the number of classes, log-log: one colour
    per implementation, solid for sparse labels, dashed for one-hot targets, one
    marker per row count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5), sharex=True)
    impls = sorted({m.implementation for m in results})
    colors = dict(zip(impls, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    row_counts = sorted({m.rows for m in results})
    markers = dict(zip(row_counts, "osD^v"))
    for col, kind in enumerate(("probs", "logits")):
        for impl in impls:
            for n_rows in row_counts:
                for variant, style in ((f"sparse-{kind}", "-"), (f"onehot-{kind}", "--")):
                    pts = sorted(
                        (m for m in results if (m.implementation, m.variant, m.rows) == (impl, variant, n_rows)),
                        key=lambda m: m.classes,
                    )
                    if not pts:
                        continue
                    label = f"{impl}, {'sparse labels' if variant.startswith('sparse') else 'one-hot'}"
                    if len(row_counts) > 1:
                        label += f", {n_rows:,} rows"
                    style_kw = dict(color=colors[impl], marker=markers[n_rows], linestyle=style, label=label)
                    xs = [m.classes for m in pts]
                    med = np.array([m.seconds for m in pts]) * 1e3
                    iqr = np.array([[m.seconds - m.q1_seconds, m.q3_seconds - m.seconds] for m in pts]).T * 1e3
                    axes[0, col].errorbar(xs, med, yerr=np.nan_to_num(iqr), capsize=2, **style_kw)
                    if pts[0].peak_bytes >= 0:
                        axes[1, col].plot(xs, [max(m.peak_bytes, 1024) / 2**20 for m in pts], **style_kw)
        source = "probabilities" if kind == "probs" else "logits"
        axes[0, col].set_title(f"from {source}: median time per call")
        axes[1, col].set_title(f"from {source}: peak extra memory per call")
        axes[0, col].set_ylabel("time (ms)")
        axes[1, col].set_ylabel("peak extra memory (MiB, tracemalloc)")
        axes[1, col].set_xlabel("number of classes C")
        for ax in axes[:, col]:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
    legend = {}
    for ax in axes.flat:  # every implementation, once, whichever panel it appears in
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=min(4, len(legend)), fontsize=8,
               frameon=False)  # fmt: skip
    info = machine_info(config)
    rows = ", ".join(f"{n:,}" for n in row_counts)
    fig.suptitle(
        f"fastxent {info['fastxent']}: mean cross-entropy, sparse labels (solid) vs one-hot targets (dashed, "
        f"building the one-hot matrix included)\n{rows} rows, {config.dtype}, {info['threads']} threads; "
        f"{info['processor']}; numpy {info['numpy']}" + "".join(
            f", {k} {info[k]}" for k in ("numba", "cython", "torch") if k in info) + "; medians (IQR bars)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
