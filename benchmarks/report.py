"""Turn a pytest-benchmark JSON file into the README's performance table (Markdown).

    python benchmarks/report.py benchmarks/results.json > benchmarks/results.md

For every workload: the median of each fastxent backend and thread count, its ratio
to the same run's read pass (the faster of np.add.reduce and a parallel streaming sum
over the same bytes) and its speed-up over PyTorch (best of 1 and 2 threads); then
``backend="auto"`` against the best forced (backend, threads); then fixed costs.
Numbers are never typed by hand: the README tables are this script's output.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def _fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def load(path: str) -> tuple[dict, dict]:
    with open(path) as f:
        payload = json.load(f)
    rows = defaultdict(lambda: {"fastxent": [], "read pass": [], "torch": [], "overhead": [], "reference": [],
                                "other": [], "chosen": None})  # fmt: skip
    for bench in payload["benchmarks"]:
        info = bench["extra_info"]
        median = bench["stats"]["median"]
        if "backend" in info:
            rows[info["workload"]][info["role"]].append((info["backend"], info["threads"], median))
        else:  # fused linear + cross-entropy and its references: one call each
            rows[info["workload"]]["other"].append((info["role"], bench["name"], median))
        if "chosen" in info:
            rows[info["workload"]]["chosen"] = info["chosen"]
    return payload["machine_info"], rows


def render(machine: dict, rows: dict) -> str:
    cpu = machine.get("cpu", {}).get("brand_raw", "unknown CPU")
    lines = [
        f"Medians from `python -m pytest benchmarks -n0` on {cpu}, {machine.get('cpu', {}).get('count', '?')} cores, "
        f"Python {machine.get('python_version', '?')}.",
        "",
        "| workload | fastxent (backend, threads) | median | × read pass | torch (best) | speed-up vs torch |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for workload, roles in rows.items():
        if not roles["fastxent"]:
            continue
        read = min((m for _, _, m in roles["read pass"]), default=None)
        torch = min((m for _, _, m in roles["torch"]), default=None)
        for backend, threads, median in sorted(roles["fastxent"], key=lambda r: (r[0] != "auto", r[0], r[1])):
            label = f"{backend}, {threads}" if backend != "auto" else "auto"
            ratio = f"{median / read:.2f}" if read else "–"
            vs_torch = f"{torch / median:.1f}×" if torch else "–"
            lines.append(f"| {workload} | {label} | {_fmt(median)} | {ratio} | "
                         f"{_fmt(torch) if torch else '–'} | {vs_torch} |")  # fmt: skip
        if read:
            lines.append(f"| {workload} | *read pass* | {_fmt(read)} | 1.00 | | |")
        for name, _, median in roles["reference"]:
            ratio = f"{median / read:.2f}" if read else "–"
            lines.append(f"| {workload} | *{name}* | {_fmt(median)} | {ratio} | | |")
    return "\n".join(lines + [""] + render_auto(rows) + [""] + render_linear(rows) + [""] + render_overheads(rows))


def render_auto(rows: dict) -> list[str]:
    """backend="auto" against the best forced backend and thread count."""
    lines = [
        "| workload | auto chose | auto | best forced | best | auto ÷ best |",
        "| --- | --- | ---: | --- | ---: | ---: |",
    ]
    for workload, roles in rows.items():
        auto = [m for b, _, m in roles["fastxent"] if b == "auto"]
        forced = [(m, f"{b}, {t}") for b, t, m in roles["fastxent"] if b != "auto"]
        if auto and forced:
            best, label = min(forced)
            lines.append(f"| {workload} | {roles['chosen'] or '?'} | {_fmt(auto[0])} | {label} | {_fmt(best)} | "
                         f"{auto[0] / best:.2f} |")  # fmt: skip
    return lines


def render_linear(rows: dict) -> list[str]:
    """linear_cross_entropy and its references against the bare ``hidden @ weight.T``."""
    lines = []
    for workload, roles in rows.items():
        matmul = [m for role, _, m in roles["other"] if role == "matmul"]
        if not matmul:
            continue
        if not lines:
            lines = ["| workload | call | median | ÷ bare matmul |", "| --- | --- | ---: | ---: |"]
        for role, name, median in roles["other"]:
            what = f"{role} + gradients" if "[grad" in name else role
            lines.append(f"| {workload} | {what} | {_fmt(median)} | {median / matmul[0]:.2f} |")
    return lines


def render_overheads(rows: dict) -> list[str]:
    costs = {w: roles["overhead"][0][2] for w, roles in rows.items() if roles["overhead"]}
    if not costs:
        return []
    lines = ["| fixed cost | median |", "| --- | ---: |"]
    lines += [f"| {name} | {_fmt(seconds)} |" for name, seconds in costs.items()]
    bare, loaded = costs.get("process: import numpy"), costs.get("process: import numpy, fastxent")
    if bare and loaded:  # two fresh-process medians: their difference can drown in noise
        extra = _fmt(loaded - bare) if loaded > bare else "below the noise of the two timings"
        lines.append(f"| import fastxent beyond import numpy | {extra} |")
    return lines


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    print(render(*load(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
