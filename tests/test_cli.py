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
    assert payload["machine"]["numpy"]
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
