"""The package surface: imports, explain, config, environment variables, show_config."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import fastxent
from fastxent import _config, _threads

scce = fastxent.sparse_categorical_crossentropy


def run_python(code: str, **env) -> str:
    import os

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, check=True
    )
    return result.stdout.strip()


def test_import_does_not_import_numba():
    assert run_python("import fastxent, sys; print('numba' in sys.modules)") == "False"


def test_public_names_have_docstrings_with_examples():
    for name in fastxent.__all__:
        obj = getattr(fastxent, name)
        assert obj.__doc__ and (">>>" in obj.__doc__ or name == "Plan"), name


def test_explain_returns_the_plan_without_running(monkeypatch):
    from fastxent.backends import numpy_backend

    def boom(*args):
        raise AssertionError("explain ran the kernel")

    monkeypatch.setitem(numpy_backend.KERNELS, "sparse_from_logits", boom)
    plan = fastxent.explain(scce, np.zeros(3, int), np.zeros((3, 4)), from_logits=True, backend="numpy")
    assert (plan.backend, plan.kernel, plan.threads) == ("numpy", "sparse_from_logits", 1)
    assert "3 rows x 4 classes" in plan.reason and "numpy" in str(plan)


def test_explain_validates_like_the_call():
    with pytest.raises(ValueError, match="y_true"):
        fastxent.explain(scce, np.array([5]), np.zeros((1, 3)))
    with pytest.raises(TypeError, match="fn"):
        fastxent.explain(np.sum, [0], [[1.0]])
    with pytest.raises(TypeError, match="no option"):
        fastxent.explain(scce, [0], [[1.0]], pos_weight=2)


def test_config_sets_defaults_and_the_call_wins():
    with fastxent.config(backend="numpy", threads=1):
        plan = fastxent.explain(scce, [0], [[1.0, 0.0]], backend=None)
        assert plan.backend == "numpy" and "fastxent.config()" in plan.reason
        assert _threads.resolve_threads(None) == (1, "fastxent.config()")
        assert _threads.resolve_threads(2) == (2, "argument")
    assert _config.resolve_backend(None) == ("auto", "default")
    with pytest.raises(ValueError, match="backend"):
        with fastxent.config(backend="gpu"):
            pass


def test_environment_variables(monkeypatch):
    monkeypatch.setenv("FASTXENT_BACKEND", "numpy")
    monkeypatch.setenv("FASTXENT_NUM_THREADS", "3")
    assert _config.resolve_backend(None) == ("numpy", "FASTXENT_BACKEND")
    assert _threads.resolve_threads(None) == (3, "FASTXENT_NUM_THREADS")
    monkeypatch.setenv("FASTXENT_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="FASTXENT_NUM_THREADS"):
        _threads.resolve_threads(None)
    monkeypatch.delenv("FASTXENT_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert _threads.resolve_threads(None) == (1, "OMP_NUM_THREADS")


def test_backend_argument_auto_still_honours_config():
    with fastxent.config(backend="numpy"):
        assert fastxent.explain(scce, [0], [[1.0, 0.0]]).backend == "numpy"


def test_show_config_lists_every_backend(capsys):
    fastxent.show_config()
    out = capsys.readouterr().out
    assert out.startswith(f"fastxent {fastxent.__version__}")
    for name in fastxent.backends.NAMES:
        assert f"  {name}:" in out


def test_threadpoolctl_limits_reach_the_default_thread_count():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if fastxent.backends.unavailable_reason("cython") is not None:
        pytest.skip("the OpenMP runtime is reached through the Cython extension")
    from fastxent.backends import _cython_ext

    if not _cython_ext.openmp_enabled():
        pytest.skip("built without OpenMP")
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert _threads.resolve_threads(None)[0] == 1
