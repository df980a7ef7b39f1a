"""Terminal side of ``fastxent bench``: progress bar, table and files."""

from __future__ import annotations

import sys

from .bench import (
    DEFAULT_CLASSES,
    DEFAULT_ROWS,
    QUICK_CLASSES,
    QUICK_ROWS,
    BenchConfig,
    machine_info,
    noisy,
    plot,
    ratios,
    run_bench,
    write_json,
)


def config_from_args(args) -> BenchConfig:
    config = BenchConfig(
        classes=args.classes or (QUICK_CLASSES if args.quick else DEFAULT_CLASSES),
        rows=args.rows or (QUICK_ROWS if args.quick else DEFAULT_ROWS),
        dtype=args.dtype,
        threads=args.threads,
        backends=args.backends,
        repeats=args.repeats or (5 if args.quick else 9),
    )
    return config


def run(args) -> int:
    if args.llm:
        return run_llm(args)
    config = config_from_args(args)
    args.out.mkdir(parents=True, exist_ok=True)
    results = _with_progress(config)
    info = machine_info(config)
    print(f"{info['processor']}, {info['threads']} thread(s), {config.dtype}; fastxent {info['fastxent']}, "
          f"numpy {info['numpy']}" + "".join(f", {k} {info[k]}" for k in ("numba", "cython", "torch") if k in info))
    print(render_table(results))
    json_path = args.out / "results.json"
    write_json(results, config, json_path)
    written = [str(json_path)]
    if not args.no_plot:
        try:
            png_path = args.out / "results.png"
            plot(results, config, png_path)
            written.append(str(png_path))
        except ImportError:
            print("(no plot: matplotlib is not installed; pip install 'fastxent[bench]')", file=sys.stderr)
    print("wrote " + ", ".join(written))
    return 0


def run_llm(args) -> int:
    """``fastxent bench --llm``: the language-model scenario (see ``_bench_llm``)."""
    try:
        import ml_dtypes  # noqa: F401 (the scenario's logits are stored in bfloat16)
    except ImportError:
        print("fastxent bench --llm: error: needs ml_dtypes for bfloat16 (pip install 'fastxent[bench]')",
              file=sys.stderr)  # fmt: skip
        return 2
    from ._bench_llm import DEFAULT, QUICK, LlmConfig, plot as plot_llm, render, run_llm as measure, write_json as dump

    sizes = QUICK if args.quick else DEFAULT
    config = LlmConfig(tokens=args.tokens or sizes["tokens"], hidden=args.hidden or sizes["hidden"],
                       vocab=args.vocab or sizes["vocab"], repeats=args.repeats or (3 if args.quick else 5),
                       threads=args.threads)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    results = measure(config, progress=_plain_progress)
    print(render(results, config))
    written = [args.out / "llm.json"]
    dump(results, config, written[0])
    if not args.no_plot:
        try:
            plot_llm(results, config, args.out / "llm.png")
            written.append(args.out / "llm.png")
        except ImportError:
            print("(no plot: matplotlib is not installed; pip install 'fastxent[bench]')", file=sys.stderr)
    print("wrote " + ", ".join(map(str, written)))
    return 0


def _with_progress(config: BenchConfig):
    try:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        return run_bench(config, progress=_plain_progress)
    columns = (TextColumn("{task.description:<40}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def progress(done, total, text):
            bar.update(task, completed=done, total=total, description=text)

        return run_bench(config, progress=progress)


def _plain_progress(done, total, text):
    print(f"\r[{done}/{total}] {text:<50}", end="" if done < total else "\n", file=sys.stderr, flush=True)


def _fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _fmt_bytes(n: int) -> str:
    if n < 0:
        return "n/a"
    if n < 1 << 20:
        return f"{n / 1024:.0f} KiB"
    return f"{n / (1 << 20):.1f} MiB"


def _fmt_timing(m) -> str:
    """The median and the interquartile range, e.g. ``1.20 ms (1.18-1.31)``."""
    if m.q1_seconds != m.q1_seconds:
        return _fmt_time(m.seconds)
    low, high = _fmt_time(m.q1_seconds), _fmt_time(m.q3_seconds)
    unit = low.split(" ")[1]
    same_unit = high.endswith(unit)
    return f"{_fmt_time(m.seconds)} ({low.split(' ')[0] if same_unit else low}-{high})"


def table_rows(results):
    """One row per (classes, implementation, probs|logits): sparse vs one-hot side by
    side; a time ratio whose spread exceeds the difference is marked ``~``."""
    by_key = {(m.rows, m.classes, m.implementation, m.variant): m for m in results}
    rat = ratios(results)
    rows = []
    for (n, c, impl, variant), sparse in sorted(by_key.items()):
        if not variant.startswith("sparse"):
            continue
        kind = variant.split("-")[1]
        onehot = by_key.get((n, c, impl, f"onehot-{kind}"))
        t_ratio, m_ratio = rat.get((n, impl, c, kind), (float("nan"), float("nan")))
        rows.append([
            f"{c:,}", f"{sparse.rows:,}", impl, kind,
            _fmt_timing(sparse), _fmt_timing(onehot) if onehot else "-",
            ("~" if onehot and noisy(sparse, onehot) else "") + f"{t_ratio:.3f}", _fmt_bytes(sparse.peak_bytes), _fmt_bytes(onehot.peak_bytes) if onehot else "-",
            "n/a" if m_ratio != m_ratio else f"{m_ratio:.4f}",
        ])  # fmt: skip
    return rows


HEADERS = ["classes", "rows", "implementation", "from", "sparse time", "one-hot time", "time ratio",
           "sparse memory", "one-hot memory", "memory ratio"]  # fmt: skip


def render_table(results) -> str:
    rows = table_rows(results)
    title = ("Mean loss: sparse labels vs one-hot targets (one-hot includes building the matrix; ratio = sparse / "
             "one-hot). Times: median (interquartile range); ~: the spread exceeds the difference")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
        lines = [title, "  ".join(h.rjust(w) for h, w in zip(HEADERS, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
        return "\n".join(lines)
    table = Table(title=title)
    for h in HEADERS:
        table.add_column(h, justify="left" if h in ("implementation", "from") else "right")
    for r in rows:
        table.add_row(*r)
    console = Console(record=True, width=max(150, Console().width))
    with console.capture() as capture:
        console.print(table)
    return capture.get()
