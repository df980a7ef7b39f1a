"""Turn a pytest-benchmark JSON file into the README's performance table (Markdown).

    python benchmarks/report.py benchmarks/results.json > benchmarks/results.md

For every workload: the median of each fastxent backend and thread count, its ratio
to the same run's read pass (the faster of np.add.reduce and a parallel streaming sum
over the same bytes) and its speed-up over PyTorch (best of 1 and 2 threads). Numbers
are never typed by hand: the README table is this script's output.
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
    rows = defaultdict(lambda: {"fastxent": [], "read pass": [], "torch": []})
    for bench in payload["benchmarks"]:
        info = bench["extra_info"]
        rows[info["workload"]][info["role"]].append((info["backend"], info["threads"], bench["stats"]["median"]))
    return payload["machine_info"], rows


def render(machine: dict, rows: dict) -> str:
    cpu = machine.get("cpu", {}).get("brand_raw", "unknown CPU")
    lines = [
        f"Medians from `pytest benchmarks` on {cpu}, {machine.get('cpu', {}).get('count', '?')} cores, "
        f"Python {machine.get('python_version', '?')}.",
        "",
        "| workload | fastxent (backend, threads) | median | × read pass | torch (best) | speed-up vs torch |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for workload, roles in rows.items():
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
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    print(render(*load(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
