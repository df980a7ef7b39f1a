"""The command line: ``fastxent info`` and ``fastxent bench``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fastxent import bench
from fastxent.cli import main


def test_info_prints_the_configuration(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fastxent ") and "backends:" in out


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_names_the_backends_and_instruction_set(flag, capsys):
    import fastxent

    with pytest.raises(SystemExit) as stop:
        main([flag])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"fastxent {fastxent.__version__} (python ")
    for name in ("numpy:", "numba:", "cython:"):
        assert name in out
    if "cython: unavailable" not in out:
        from fastxent.backends import _cython_ext

        assert f"cython: {_cython_ext.simd_info()['active']} kernels" in out


def test_python_dash_m_runs_the_same_cli():
    out = subprocess.run([sys.executable, "-m", "fastxent", "info"], capture_output=True, text=True, check=True)
    assert "backends:" in out.stdout


def test_bench_writes_table_json_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    code = main(["bench", "--classes", "10,200", "--rows", "64,128", "--repeats", "1", "--backends",
                 "numpy,plain-numpy", "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "sparse time" in out and "one-hot memory" in out
    payload = json.loads((tmp_path / "results.json").read_text())
    results = payload["results"]
    assert {r["implementation"] for r in results} == {"fastxent-numpy", "numpy"}
    assert {r["variant"] for r in results} == set(bench.VARIANTS)
    assert {(r["rows"], r["classes"]) for r in results} == {(64, 10), (64, 200), (128, 10), (128, 200)}
    assert payload["machine"]["numpy"] and payload["machine"]["threads"] >= 1 and payload["machine"]["processor"]
    for r in results:  # the spread of every timing, not only its median
        assert r["q1_seconds"] <= r["seconds"] <= r["q3_seconds"] and r["samples"] >= 1
    assert "(interquartile range)" in out
    assert (tmp_path / "results.png").stat().st_size > 10_000
    # every implementation computes the same mean loss on the same data
    for rows, classes in {(r["rows"], r["classes"]) for r in results}:
        for variant in ("probs", "logits"):
            losses = [r["loss"] for r in results if (r["rows"], r["classes"]) == (rows, classes)
                      and r["variant"].endswith(variant)]  # fmt: skip
            assert max(losses) - min(losses) < 1e-4 * max(losses)


def test_one_hot_memory_grows_with_classes_and_sparse_does_not(tmp_path):
    config = bench.BenchConfig(classes=(10, 2_000), rows=(512,), backends=("numpy",), repeats=1)
    results = bench.run_bench(config)
    peak = {(m.variant, m.classes): m.peak_bytes for m in results}
    growth = peak[("onehot-probs", 2_000)] - peak[("onehot-probs", 10)]
    assert growth >= 512 * (2_000 - 10) * 4  # at least the one-hot matrix itself
    assert peak[("sparse-probs", 2_000)] < peak[("onehot-probs", 2_000)] / 10


@pytest.mark.parametrize("argv, message", [
    (["bench", "--classes", "10,x"], "comma-separated integers"),
    (["bench", "--threads", "0"], "integer >= 1"),
    (["bench", "--dtype", "int8"], "invalid choice"),
])  # fmt: skip
def test_bench_rejects_bad_options(capsys, argv, message):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_a_ratio_is_flagged_when_the_spread_exceeds_the_difference():
    fast = bench.Measurement("x", "sparse-logits", 10, 10, 1.0, 0, q1_seconds=0.9, q3_seconds=1.5)
    slow = bench.Measurement("x", "onehot-logits", 10, 10, 1.2, 0, q1_seconds=1.1, q3_seconds=1.3)
    assert bench.noisy(fast, slow)  # spread 0.6 > difference 0.2
    steady = bench.Measurement("x", "sparse-logits", 10, 10, 1.0, 0, q1_seconds=0.99, q3_seconds=1.01)
    assert not bench.noisy(steady, slow)


def test_bench_llm_writes_table_json_and_plot(tmp_path, capsys):
    pytest.importorskip("ml_dtypes")
    pytest.importorskip("matplotlib")
    code = main(["bench", "--llm", "--tokens", "96", "--hidden", "8", "--vocab", "700", "--repeats", "1",
                 "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "bf16 logits from disk" in out and "fused linear + loss" in out
    payload = json.loads((tmp_path / "llm.json").read_text())
    names = {(r["name"], r["gradient"]) for r in payload["results"]}
    assert {("materialised logits", True), ("fused linear + loss", True), ("bf16 logits from disk", False)} <= names
    losses = [r["loss"] for r in payload["results"] if not r["name"].startswith("bf16")]
    assert max(losses) - min(losses) < 1e-4 * max(losses)  # every way computes the same loss
    fused = next(r for r in payload["results"] if r["name"] == "fused linear + loss" and not r["gradient"])
    assert fused["peak_bytes"] >= 0 and payload["machine"]["threads"] >= 1
    assert (tmp_path / "llm.png").stat().st_size > 5_000
