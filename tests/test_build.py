"""Building the extension without OpenMP: serial, working, and saying so.

A copy of the source tree is built in a temporary directory with
``FASTXENT_DISABLE_OPENMP=1`` (what a compiler without OpenMP gives), then imported
from there in a fresh interpreter. ``FASTXENT_REQUIRE_OPENMP=1`` must turn the same
situation into a build error.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("Cython", reason="building the extension needs Cython (in the test extra)")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ROOT / "setup.py").exists(), reason="needs the source tree"),
]


def _source_copy(tmp_path: Path) -> Path:
    tree = tmp_path / "src"
    tree.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    ignore = shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "_cython_ext.c", "fx_build_config.h", "fx_constants.h")
    shutil.copytree(ROOT / "fastxent", tree / "fastxent", ignore=ignore)
    return tree


def _build(tree: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=tree, env={**os.environ, **env}, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def test_serial_build_works_and_says_so(tmp_path):
    tree = _source_copy(tmp_path)
    build = _build(tree, FASTXENT_DISABLE_OPENMP="1", FASTXENT_REQUIRE_OPENMP="0")
    assert build.returncode == 0, build.stderr[-3000:]
    assert "OpenMP" in build.stdout + build.stderr  # the loud warning
    check = subprocess.run(
        [sys.executable, "-c", (
            "import numpy as np, fastxent\n"
            "from fastxent.backends import _cython_ext\n"
            "assert _cython_ext.__file__.startswith(%r), _cython_ext.__file__\n"
            "assert not _cython_ext.openmp_enabled()\n"
            "fastxent.show_config()\n"
            "x = np.log(np.array([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6]]))\n"
            "print(float(fastxent.sparse_categorical_crossentropy([0, 2], x, from_logits=True, "
            "backend='cython', threads=2, reduction='sum')))\n"
        ) % str(tree)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert "OpenMP: NO" in check.stdout
    loss = float(check.stdout.strip().splitlines()[-1])
    assert loss == pytest.approx(-math.log(0.8) - math.log(0.6), rel=1e-12)


def test_require_openmp_fails_the_build_without_it(tmp_path):
    tree = _source_copy(tmp_path)
    build = _build(tree, FASTXENT_DISABLE_OPENMP="1", FASTXENT_REQUIRE_OPENMP="1")
    assert build.returncode != 0
    assert "FASTXENT_REQUIRE_OPENMP=1" in build.stdout + build.stderr
