"""Fixed costs: the dispatcher's decision, ``import fastxent``, and a fresh process's
first call. Recorded with role "overhead" for ``report.py``'s overhead table.

The import benchmarks time whole fresh interpreters (``python -c ...``); the report
subtracts the ``import numpy`` process from the ``import numpy, fastxent`` one.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import fastxent
from fastxent import _dispatch
from fastxent._api import keyword_defaults
from fastxent._validate import build_problem


def _overhead(benchmark, name: str, fn, rounds: int, iterations: int = 1):
    benchmark.group = "overhead"
    benchmark.extra_info.update(workload=name, role="overhead", backend="-", threads=0, bytes=0)
    benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=1)


def test_decision(benchmark):
    """make_plan's remembered decision for a 1,000 x 100 call (what each call pays)."""
    defaults = keyword_defaults(fastxent.sparse_categorical_crossentropy)
    x = np.zeros((1000, 100), dtype=np.float32)
    problem = build_problem("sparse", np.zeros(1000, dtype=np.int64), x, **{**defaults, "from_logits": True})
    _overhead(benchmark, "decision (dispatcher, per call)", lambda: _dispatch.choose(problem), 200, 1000)


def _python(code: str):
    return lambda: subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "name, code",
    [
        ("process: import numpy", "import numpy"),
        ("process: import numpy, fastxent", "import numpy, fastxent"),
        (
            "process: import fastxent + first 1000x100 call",
            "import numpy as np, fastxent; fastxent.sparse_categorical_crossentropy("
            "np.zeros(1000, dtype=np.int64), np.ones((1000, 100), dtype=np.float32), from_logits=True)",
        ),
    ],
)
def test_fresh_process(benchmark, name, code):
    _overhead(benchmark, name, _python(code), 11)
