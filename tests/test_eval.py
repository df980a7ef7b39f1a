"""``fastxent eval``: streamed ``.npy`` files give the in-memory call's bits; errors; memory."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import fastxent
from fastxent import _reduce, backends
from fastxent.cli import main
from fastxent.evaluate import evaluate_files, parse_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 3 * _reduce.BLOCK_ROWS + 777  # not a whole number of blocks
C = 7
#: Budgets giving chunks of a few hundred rows (not whole blocks), about a block, and one chunk.
BUDGETS = ("4.05MiB", "5.1MiB", "512MiB")

LOSS = {"binary": fastxent.binary_crossentropy, "categorical": fastxent.categorical_crossentropy,
        "sparse": fastxent.sparse_categorical_crossentropy}  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every input as a .npy file, and the arrays themselves."""
    folder = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(7)
    z = rng.standard_normal((N, C)).astype(np.float32)
    labels = rng.integers(0, C, N)
    labels[::5] = -100
    arrays = {
        "logits": z,
        "probs": (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).astype(np.float32),
        "sigmoid": (1 / (1 + np.exp(-z.astype(np.float64)))),
        "labels": labels,
        "one_hot": np.eye(C, dtype=np.float32)[np.where(labels < 0, 0, labels)],
        "multi": rng.random((N, C)) < 0.3,
        "weights": rng.random(N),
        "images": rng.standard_normal((37, 5, 12, 9)).astype(np.float32),
        "pixels": rng.integers(0, 5, (37, 12, 9)).astype(np.int16),
        "pixel_weights": rng.random((37, 12, 9)).astype(np.float32),
    }
    paths = {}
    for name, a in arrays.items():
        paths[name] = str(folder / f"{name}.npy")
        np.save(paths[name], a)
    return paths, arrays


CLASS_WEIGHT = np.linspace(0.5, 2.0, C)
CASES = {
    "sparse-logits": ("sparse", "labels", "logits", dict(from_logits=True, ignore_index=-100, class_weight=CLASS_WEIGHT,
                                                         label_smoothing=0.1)),
    "sparse-probs": ("sparse", "labels", "probs", dict(ignore_index=-100, class_weight=CLASS_WEIGHT)),
    "categorical-logits": ("categorical", "one_hot", "logits", dict(from_logits=True, class_weight=CLASS_WEIGHT)),
    "categorical-probs": ("categorical", "one_hot", "probs", dict(label_smoothing=0.2)),
    "binary-logits": ("binary", "multi", "logits", dict(from_logits=True, pos_weight=np.linspace(1, 3, C))),
    "binary-probs": ("binary", "multi", "sigmoid", dict(label_smoothing=0.05)),
}  # fmt: skip


@pytest.fixture(autouse=True)
def one_backend():
    """Eval gives the in-memory call's bits on the backend it runs. Which one ``auto``
    takes can change within a process -- Numba joins once it has compiled a
    signature, and a memory-mapped chunk's (read-only) signature is not the in-memory
    array's -- and Numba's gather-log rounds differently, so both sides run one
    backend here."""
    with fastxent.config(backend="cython" if backends.unavailable_reason("cython") is None else "numpy"):
        yield


def same_bits(a, b) -> bool:
    return np.asarray(a).dtype == np.asarray(b).dtype and np.asarray(a).tobytes() == np.asarray(b).tobytes()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "weighted_mean"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
def test_same_bits_as_the_in_memory_call_for_any_budget(files, case, reduction, weighted):
    paths, arrays = files
    kind, t, p, options = CASES[case]
    sw = arrays["weights"] if weighted else None
    expected = LOSS[kind](arrays[t], arrays[p], sample_weight=sw, reduction=reduction, **options)
    chunk_sizes = set()
    for budget in BUDGETS:
        result = evaluate_files(kind, paths[t], paths[p], sample_weight=paths["weights"] if weighted else None,
                                reduction=reduction, memory=budget, **options)  # fmt: skip
        assert same_bits(result.loss, expected), (budget, result.chunk_size)
        assert result.rows == N
        chunk_sizes.add(result.chunk_size)
    assert len(chunk_sizes) == len(BUDGETS)  # the budgets did cut different chunks
    assert min(chunk_sizes) < _reduce.BLOCK_ROWS  # including chunks smaller than a block


@pytest.mark.parametrize("reduction", ["mean", "sum", "weighted_mean"])
def test_images_with_class_axis_1(files, reduction):
    """(N, C, H, W) logits, (N, H, W) labels and weights: chunks of a few images."""
    paths, arrays = files
    options = dict(from_logits=True, axis=1, class_weight=[1.0, 2.0, 3.0, 4.0, 5.0], reduction=reduction)
    expected = fastxent.sparse_categorical_crossentropy(arrays["pixels"], arrays["images"],
                                                        sample_weight=arrays["pixel_weights"], **options)  # fmt: skip
    sizes = []
    for budget in ("4.05MiB", "4.2MiB", "1GiB"):
        result = evaluate_files("sparse", paths["pixels"], paths["images"], sample_weight=paths["pixel_weights"],
                                memory=budget, **options)  # fmt: skip
        assert same_bits(result.loss, expected)
        sizes.append(result.chunk_size)
    assert sizes[0] < sizes[1] < sizes[2] == 37


def test_scalar_sample_weight_and_elementwise_binary(files):
    paths, arrays = files
    expected = fastxent.binary_crossentropy(arrays["multi"], arrays["sigmoid"], axis=None, sample_weight=0.5,
                                            pos_weight=np.arange(1.0, C + 1))  # fmt: skip
    result = evaluate_files("binary", paths["multi"], paths["sigmoid"], axis=None, sample_weight=0.5,
                            pos_weight=np.arange(1.0, C + 1), memory="4.05MiB")  # fmt: skip
    assert same_bits(result.loss, expected) and result.rows == N * C and result.chunks > 1


def test_reduction_none_writes_the_per_sample_losses(files, tmp_path):
    paths, arrays = files
    out = tmp_path / "losses.npy"
    result = evaluate_files("sparse", paths["labels"], paths["logits"], from_logits=True, ignore_index=-100,
                            sample_weight=paths["weights"], reduction="none", out=out, memory="4.05MiB")  # fmt: skip
    expected = fastxent.sparse_categorical_crossentropy(arrays["labels"], arrays["logits"], from_logits=True,
                                                        ignore_index=-100, sample_weight=arrays["weights"],
                                                        reduction="none")  # fmt: skip
    written = np.load(out)
    assert same_bits(written, expected) and result.loss is None and result.out == str(out)
    assert list(tmp_path.iterdir()) == [out]  # no partial file left behind


def test_a_failing_run_leaves_no_output_file(files, tmp_path):
    paths, arrays = files
    bad = arrays["labels"].copy()
    bad[-3] = 99  # found in the last chunk
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match=rf"got 99 at position \({N - 3},\)"):
        evaluate_files("sparse", tmp_path / "bad.npy", paths["logits"], from_logits=True, ignore_index=-100,
                       reduction="none", out=tmp_path / "out.npy", memory="4.05MiB")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy"]


def test_json_output(files, capsys):
    paths, arrays = files
    code = main(["eval", "--y-true", paths["labels"], "--y-pred", paths["logits"], "--loss", "sparse",
                 "--from-logits", "--ignore-index", "-100", "--class-weight", ",".join(map(str, CLASS_WEIGHT)),
                 "--sample-weight", paths["weights"], "--reduction", "weighted_mean", "--memory", "5MiB",
                 "--json"])  # fmt: skip
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    expected = fastxent.sparse_categorical_crossentropy(
        arrays["labels"], arrays["logits"], from_logits=True, ignore_index=-100, class_weight=CLASS_WEIGHT,
        sample_weight=arrays["weights"], reduction="weighted_mean")  # fmt: skip
    assert np.float32(payload["loss"]).tobytes() == expected.tobytes()
    assert payload["rows"] == N and payload["valid_rows"] == np.count_nonzero(arrays["labels"] != -100)
    assert payload["reduction"] == "weighted_mean" and payload["dtype"] == "float32"
    assert payload["chunks"] > 1 and payload["seconds"] > 0 and payload["throughput_gb_s"] > 0
    assert payload["plan"]["kernel"] == "sparse_from_logits"


@pytest.mark.parametrize("source", ["logits", "probs"])
@pytest.mark.parametrize("memory", ["5MiB", "512MiB"])
def test_metrics_in_the_same_pass_equal_the_in_memory_ones(files, capsys, source, memory):
    paths, arrays = files
    code = main(["eval", "--y-true", paths["labels"], "--y-pred", paths[source], "--loss", "sparse",
                 "--ignore-index", "-100", "--sample-weight", paths["weights"], "--memory", memory, "--json",
                 "--metrics", "loss,accuracy,top3,perplexity"] + (["--from-logits"] if source == "logits" else []))  # fmt: skip
    assert code == 0
    got = json.loads(capsys.readouterr().out)["metrics"]
    want = fastxent.sparse_metrics(arrays["labels"], arrays[source], from_logits=source == "logits", top_k=3,
                                   ignore_index=-100, sample_weight=arrays["weights"])  # fmt: skip
    assert list(got) == ["loss", "accuracy", "top3", "perplexity"]
    assert got["accuracy"] == pytest.approx(want.accuracy, rel=1e-12)
    assert got["top3"] == pytest.approx(want.top_k[3], rel=1e-12)
    assert got["loss"] == pytest.approx(want.loss, rel=1e-12)
    assert got["perplexity"] == pytest.approx(want.perplexity, rel=1e-12)
    valid = arrays["labels"] != -100
    top1 = np.argmax(arrays[source], axis=1) == arrays["labels"]
    w = arrays["weights"]
    assert got["accuracy"] == pytest.approx(np.sum(w[valid & top1]) / np.sum(w[valid]), rel=1e-12)


def test_metrics_need_sparse_labels_and_known_names(files, run_cli):
    paths, _ = files
    code, err = run_cli("--y-true", paths["one_hot"], "--y-pred", paths["probs"], "--loss", "categorical",
                        "--metrics", "accuracy")  # fmt: skip
    assert code == 2 and "--metrics: accuracy, top-k and perplexity need integer labels" in err
    code, err = run_cli("--y-true", paths["labels"], "--y-pred", paths["probs"], "--loss", "sparse",
                        "--ignore-index", "-100", "--metrics", "loss,top0")  # fmt: skip
    assert code == 2 and "expected names among loss, accuracy, topK" in err


def test_human_line_and_python_dash_m(files):
    paths, arrays = files
    out = subprocess.run(
        [sys.executable, "-m", "fastxent", "eval", "--y-true", paths["labels"], "--y-pred", paths["probs"],
         "--loss", "sparse", "--ignore-index", "-100", "--reduction", "sum"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    expected = fastxent.sparse_categorical_crossentropy(arrays["labels"], arrays["probs"], ignore_index=-100,
                                                        reduction="sum")  # fmt: skip
    assert out.stdout.startswith(f"sparse cross-entropy (probabilities, sum): {expected!s} over {N:,} rows")
    assert out.stdout.count("\n") == 1


def test_memory_sizes():
    assert parse_memory("512MiB") == parse_memory("512m") == 512 << 20
    assert parse_memory("2GB") == 2 * 10**9 and parse_memory("1.5GiB") == 3 << 29 and parse_memory(100) == 100


# --------------------------------------------------------------------------- errors


@pytest.fixture
def run_cli(capsys):
    """Run ``fastxent eval`` with these arguments; return (exit code, stderr)."""

    def run(*argv):
        code = main(["eval", *map(str, argv)])
        return code, capsys.readouterr().err

    return run


def _error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fastxent eval: error: ")
    return lines[0][len("fastxent eval: error: ") :]


def test_missing_file(files, run_cli, tmp_path):
    paths, _ = files
    code, err = run_cli("--y-true", paths["labels"], "--y-pred", tmp_path / "nope.npy", "--loss", "sparse")
    assert code == 2
    assert _error(err) == f"--y-pred {tmp_path / 'nope.npy'}: expected an existing .npy file, got a path that does not exist"


@pytest.mark.parametrize("content, what", [
    (b"0.1,0.9\n0.5,0.5\n", "a file that starts with b'0.1,0"),
    (b"PK\x03\x04rest of a zip", "a .npz archive"),
    (b"", "an empty file"),
])  # fmt: skip
def test_not_an_npy_file(files, run_cli, tmp_path, content, what):
    paths, _ = files
    bad = tmp_path / "preds.csv"
    bad.write_bytes(content)
    code, err = run_cli("--y-true", paths["labels"], "--y-pred", bad, "--loss", "sparse")
    message = _error(err)
    assert code == 2 and message.startswith(f"--y-pred {bad}: expected a .npy file (written by np.save), got {what}")


def test_directory_instead_of_a_file(files, run_cli, tmp_path):
    paths, _ = files
    code, err = run_cli("--y-true", tmp_path, "--y-pred", paths["logits"], "--loss", "sparse")
    assert code == 2 and _error(err) == f"--y-true {tmp_path}: expected a .npy file, got a directory"


def test_truncated_file(files, run_cli, tmp_path):
    paths, _ = files
    data = open(paths["logits"], "rb").read()
    cut = tmp_path / "cut.npy"
    cut.write_bytes(data[:-1000])
    code, err = run_cli("--y-true", paths["labels"], "--y-pred", cut, "--loss", "sparse", "--from-logits")
    assert code == 2
    assert _error(err) == (
        f"--y-pred {cut}: expected {N * C * 4:,} bytes of data after the header (shape ({N}, {C}), dtype float32), "
        f"got {N * C * 4 - 1000:,}: the file is truncated"
    )


def test_mismatched_shapes(files, run_cli):
    paths, _ = files
    code, err = run_cli("--y-true", paths["pixels"], "--y-pred", paths["logits"], "--loss", "sparse")
    assert code == 2
    assert _error(err) == (
        f"--y-true {paths['pixels']}: expected labels of shape ({N},) (y_pred's shape ({N}, {C}) without its "
        "class axis 1), got shape (37, 12, 9)"
    )
    code, err = run_cli("--y-true", paths["labels"], "--y-pred", paths["logits"], "--loss", "sparse",
                        "--sample-weight", paths["pixel_weights"])  # fmt: skip
    assert code == 2 and _error(err).startswith(f"--sample-weight {paths['pixel_weights']}: expected a scalar or one")


def test_float_labels_that_are_not_integral_get_the_library_error(files, run_cli, tmp_path):
    paths, arrays = files
    labels = np.abs(arrays["labels"]).astype(np.float64) % C
    labels[N - 10] = 2.5  # in the last chunk: the position is the file's
    np.save(tmp_path / "float_labels.npy", labels)
    code, err = run_cli("--y-true", tmp_path / "float_labels.npy", "--y-pred", paths["logits"], "--loss", "sparse",
                        "--from-logits", "--memory", "4.05MiB")  # fmt: skip
    assert code == 2
    assert _error(err) == (
        f"--y-true {tmp_path / 'float_labels.npy'}: expected integral class labels (float labels must hold whole "
        f"numbers), got np.float64(2.5) at position ({N - 10},)"
    )
    # integral float labels are fine, as in memory
    np.save(tmp_path / "float_labels.npy", np.abs(arrays["labels"]).astype(np.float64) % C)
    assert run_cli("--y-true", tmp_path / "float_labels.npy", "--y-pred", paths["logits"], "--loss", "sparse",
                   "--from-logits")[0] == 0  # fmt: skip


def test_wrong_dtypes(files, run_cli, tmp_path):
    paths, _ = files
    np.save(tmp_path / "names.npy", np.array(["cat", "dog"] * (N // 2) + ["cat"]))
    code, err = run_cli("--y-true", tmp_path / "names.npy", "--y-pred", paths["logits"], "--loss", "sparse")
    assert code == 2 and _error(err) == f"--y-true {tmp_path / 'names.npy'}: expected integer class labels, got dtype <U3"
    np.save(tmp_path / "objects.npy", np.array([{}, None], dtype=object))
    code, err = run_cli("--y-true", paths["labels"], "--y-pred", tmp_path / "objects.npy", "--loss", "sparse")
    assert code == 2 and "expected numbers, got dtype object" in _error(err)


def test_probabilities_out_of_range_suggest_from_logits(files, run_cli):
    paths, _ = files
    code, err = run_cli("--y-true", paths["labels"], "--y-pred", paths["logits"], "--loss", "sparse",
                        "--ignore-index", "-100", "--memory", "4.05MiB")  # fmt: skip
    message = _error(err)
    assert code == 2 and message.startswith(f"--y-pred {paths['logits']}: expected probabilities in [0, 1]")
    assert message.endswith("If y_pred holds logits, pass --from-logits.")


def test_memory_too_small_for_one_row(files, run_cli):
    paths, _ = files
    code, err = run_cli("--y-true", paths["labels"], "--y-pred", paths["logits"], "--loss", "sparse", "--memory", "1MiB")
    assert code == 2 and _error(err).startswith("--memory: expected at least 4.0 MiB to hold one index of y_pred's")
    assert _error(err).endswith("got 1.0 MiB")
    code, err = run_cli("--y-true", paths["labels"], "--y-pred", paths["logits"], "--loss", "sparse", "--memory", "lots")
    assert code == 2 and _error(err) == "--memory: expected a size such as 512MiB, 2GB or a number of bytes, got 'lots'"


@pytest.mark.parametrize("argv, message", [
    (["--reduction", "none"], "--reduction: 'none' gives one loss per sample, which eval writes to the .npy file"),
    (["--out", "x.npy"], "--out: expected only with reduction 'none' (per-sample losses), got reduction 'mean'"),
    (["--label-smoothing", "2"], "--label-smoothing: expected a number in [0, 1], got 2.0"),
    (["--label-smoothing", "x"], "--label-smoothing: expected a number, got 'x'"),
    (["--axis", "3"], "--axis: expected an axis of y_pred (which has 2 dimensions), got 3"),
    (["--class-weight", "1,2"], "--class-weight: expected one weight per class, shape (7,), got shape (2,)"),
    (["--class-weight", "nothing.npy"], "--class-weight: expected comma-separated numbers or a .npy file, got"),
    (["--pos-weight", "2"], "--pos-weight: expected only with loss 'binary', got loss 'sparse'"),
    (["--threads", "0"], "--threads: expected None or an int in [1, 4096], got 0"),
])  # fmt: skip
def test_bad_options(files, run_cli, argv, message):
    paths, _ = files
    code, err = run_cli("--y-true", paths["labels"], "--y-pred", paths["logits"], "--loss", "sparse", *argv)
    assert code == 2 and _error(err).startswith(message)


def test_class_axis_first_is_refused(files, run_cli, tmp_path):
    paths, arrays = files
    np.save(tmp_path / "classes_first.npy", np.ascontiguousarray(arrays["logits"].T))
    code, err = run_cli("--y-true", paths["labels"], "--y-pred", tmp_path / "classes_first.npy", "--loss", "sparse",
                        "--axis", "0", "--from-logits")  # fmt: skip
    assert code == 2 and _error(err) == (
        "--axis: eval streams y_pred along its first axis, which must not be the class axis; got class axis 0 of "
        f"y_pred's shape ({C}, {N}) (save the array with the class axis last)"
    )


def test_fortran_ordered_files_are_refused_with_a_fix(files, run_cli, tmp_path):
    paths, arrays = files
    np.save(tmp_path / "fortran.npy", np.asfortranarray(arrays["logits"]))
    code, err = run_cli("--y-true", paths["labels"], "--y-pred", tmp_path / "fortran.npy", "--loss", "sparse")
    assert code == 2 and "got a Fortran-ordered one; rewrite it with np.save(path, np.ascontiguousarray(array))" in err


# --------------------------------------------------------------------------- memory


_CHILD = """
import json, sys
from fastxent.evaluate import evaluate_files
result = evaluate_files("sparse", sys.argv[1], sys.argv[2], from_logits=sys.argv[3] == "logits", memory=sys.argv[4])
# VmHWM: this process's own peak RSS (ru_maxrss would include the parent's, inherited across fork and exec).
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"loss": float(result.loss), "chunks": result.chunks, "seconds": result.seconds, "peak_kib": peak}))
"""


def _child(*argv) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, *map(str, argv)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc/self/status")
@pytest.mark.parametrize("source, rows, budget", [("probs", 750_000, 256 << 20), ("logits", 150_000, 128 << 20)])
def test_peak_memory_of_a_large_file_stays_within_the_budget(tmp_path, source, rows, budget):
    """A 3 GB (0.6 GB) file through a 256 MiB (128 MiB) budget: peak RSS is the
    interpreter's baseline plus the budget.

    From probabilities every row reads the page of its label, so nearly every page of
    the file is touched, which one memory map of the whole file would keep resident;
    from logits every row is read whole (with read-ahead of the next chunk).
    """
    classes = 1_000
    rng = np.random.default_rng(0)
    if source == "probs":
        block = np.full((25_000, classes), 1.0 / classes, dtype=np.float32)
    else:
        block = rng.standard_normal((25_000, classes), dtype=np.float32)
    labels = rng.integers(0, classes, rows)
    try:
        with open(tmp_path / "big.npy", "wb") as fh:  # plain writes: this process's memory stays small
            header = {"descr": "<f4", "fortran_order": False, "shape": (rows, classes)}
            np.lib.format.write_array_header_1_0(fh, header)
            for _ in range(rows // len(block)):
                fh.write(block.data)
        np.save(tmp_path / "labels.npy", labels)
        np.save(tmp_path / "small.npy", block[:1000])
        np.save(tmp_path / "small_labels.npy", labels[:1000])

        baseline = _child(tmp_path / "small_labels.npy", tmp_path / "small.npy", source, budget)["peak_kib"] << 10
        result = _child(tmp_path / "labels.npy", tmp_path / "big.npy", source, budget)
        peak = result["peak_kib"] << 10
        assert result["chunks"] > 4
        if source == "probs":
            assert math.isclose(result["loss"], np.log(classes), rel_tol=1e-6)
        assert peak < baseline + budget, (peak >> 20, baseline >> 20)
        assert peak > baseline + budget // 4  # the chunks were resident: the measurement sees them
    finally:
        for path in tmp_path.iterdir():
            path.unlink()


def test_a_first_numba_call_says_so_and_stays_out_of_the_throughput(files, tmp_path):
    pytest.importorskip("numba")
    paths, _ = files
    code = (
        "import json, sys\n"
        "from fastxent.evaluate import evaluate_files\n"
        "notes = []\n"
        "r = evaluate_files('sparse', sys.argv[1], sys.argv[2], from_logits=True, ignore_index=-100,\n"
        "                   backend='numba', progress=lambda done, total, note=None: notes.append(note))\n"
        "print(json.dumps({'notes': [n for n in notes if n], 'compile': r.compile_seconds, 'seconds': r.seconds}))\n"
    )
    env = dict(os.environ, FASTXENT_CACHE_DIR=str(tmp_path / "cache"))
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code, paths["labels"], paths["logits"]], env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert len(result["notes"]) == 1 and "numba" in result["notes"][0] and "compil" in result["notes"][0]
    assert result["compile"] > result["seconds"] > 0  # compiling is not counted as reading
