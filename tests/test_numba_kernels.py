"""Tests specific to the Numba backend: lazy import, readiness, compilation and the
disk cache, the path each layout takes, float16 and bfloat16 as records of their
bits, block sums summed by the drivers themselves, work items and claims, threads
and fork, and the compiled exp, log, tanh and bfloat16 conversions.

The kernel table itself (every rule of KERNELS.md and the lead's decisions) runs on
Numba, as on the other backends, in tests/test_kernels.py and
tests/test_kernels_extras.py. Compilation dominates a cold run (seconds per new
signature; the on-disk cache makes later runs fast).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastxent import backends
from helpers import place
from kernel_impls import BF16, Impl, run

pytestmark = pytest.mark.skipif(backends.unavailable_reason("numba") is not None, reason="numba unavailable")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F16, F32, F64 = np.float16, np.float32, np.float64
#: The path each layout of tests/helpers.py must take.
PATHS = {"rows": "rows", "padded": "rows", "chlast": "rows", "unaligned": "rows", "cols": "cols", "nchw": "cols",
         "negative": "generic", "odd": "generic", "cols_negative": "generic"}  # fmt: skip


@pytest.fixture(scope="module")
def nk():
    from fastxent.backends import _numba

    return _numba


def _run_python(code: str, env=None, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


# --------------------------------------------------------------------------- lazy import


def test_import_fastxent_does_not_import_numba():
    out = _run_python(
        """
        import sys, fastxent
        from fastxent import backends
        assert backends.unavailable_reason("numba") is None
        mod = backends.module("numba")
        assert "sparse_from_logits" in list(mod.KERNELS) and len(mod.KERNELS) == 6
        mod.info(); fastxent.show_config()
        assert "numba" not in sys.modules, "numba imported"
        mod.KERNELS["sparse_from_logits"]
        assert "numba" in sys.modules
        """
    )
    assert out.returncode == 0, out.stderr


# --------------------------------------------------------------------------- readiness and the cache

READY_PROBE = """
import sys, numpy as np, fastxent
from fastxent import backends
from fastxent._execute import kernel_calls
from fastxent._validate import build_problem
y = np.array([0, 2, 1]); z = np.array([[1.0, 2.0, 3.0], [0.5, 0.1, -1.0], [2.0, 2.0, 2.0]])
problem = build_problem("sparse", y, z, from_logits=True, label_smoothing=0.0, ignore_index=None,
                        class_weight=None, sample_weight=None, axis=-1, reduction="mean", epsilon=1e-7,
                        return_grad=False, grad_out=None, backend="numba", threads=None)
mod = backends.module("numba")
before = mod.is_ready(kernel_calls(problem, "numba"))
imported = "numba" in sys.modules
if {call!r}:
    fastxent.sparse_categorical_crossentropy(y, z, from_logits=True, backend="numba")
print("ready", before, mod.is_ready(kernel_calls(problem, "numba")), "imported-before-call", imported)
"""


def test_is_ready_before_and_after_compiling(tmp_path):
    """Not ready, and numba not even imported to say so; after a call: ready. A new
    process with that disk cache is still not ready before a call (loading costs the
    numba import, which ``auto`` does not make a call wait for)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    first = _run_python(READY_PROBE.format(call=True), env)
    assert first.returncode == 0, first.stderr
    assert "ready False True imported-before-call False" in first.stdout
    second = _run_python(READY_PROBE.format(call=False), env)
    assert second.returncode == 0, second.stderr
    assert "ready False False imported-before-call False" in second.stdout


def test_auto_does_not_wait_for_a_compile(tmp_path):
    out = _run_python(
        """
        import numpy as np, fastxent
        y = np.array([0, 2]); z = np.array([[1.0, 2.0, 3.0], [0.5, 0.1, -1.0]], np.float32)
        plan = fastxent.explain(fastxent.sparse_categorical_crossentropy, y, z, from_logits=True)
        print("auto", plan.backend)
        """,
        dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache")),
    )
    assert out.returncode == 0, out.stderr
    assert "auto numba" not in out.stdout


COMPILE_PROBE = """
import io, logging, sys, numpy as np, fastxent
from fastxent.backends import numba_backend as nb
from fastxent._execute import kernel_calls
from fastxent._validate import build_problem
log = io.StringIO()
logging.getLogger("fastxent").addHandler(logging.StreamHandler(log))
logging.getLogger("fastxent").setLevel(logging.INFO)
events = []
nb.on_compile(lambda: events.append(len(log.getvalue())))
y = np.array([0, 2, 1]); z = np.array([[1.0, 2.0, 3.0], [0.5, 0.1, -1.0], [2.0, 2.0, 2.0]])
problem = build_problem("sparse", y, z, from_logits=True, label_smoothing=0.0, ignore_index=None,
                        class_weight=None, sample_weight=None, axis=-1, reduction="mean", epsilon=1e-7,
                        return_grad=False, grad_out=None, backend="numba", threads=None)
calls = kernel_calls(problem, "numba")
print("before import:", nb.compiling_hint(calls), "| numba imported:", "numba" in sys.modules)
nb.KERNELS["sparse_from_logits"]
print("before call:", nb.compiling_hint(calls))
fastxent.sparse_categorical_crossentropy(y, z, from_logits=True, backend="numba")
print("after call:", nb.compiling_hint(calls), "| ready:", nb.is_ready(calls))
fastxent.sparse_categorical_crossentropy(y, z, from_logits=True, backend="numba")
print("events:", len(events), "| logged before the callback:", bool(events) and events[0] > 0)
print("log:", log.getvalue().strip().replace(chr(10), " / "))
"""


def test_first_call_logs_the_compile_and_tells_the_listener(tmp_path):
    """The first call of a specialization logs, once and before compiling, what it
    compiles; compiling_hint says so beforehand and nothing afterwards; on_compile
    callbacks run once. A second process loads from the disk cache: the hint says
    so, nothing is logged, and the callbacks still run (a new kernel in memory)."""
    env = {k: v for k, v in os.environ.items() if k != "FASTXENT_NUMBA_CACHE"}
    env["FASTXENT_CACHE_DIR"] = str(tmp_path / "cache")
    first = _run_python(COMPILE_PROBE, env)
    assert first.returncode == 0, first.stderr
    lines = dict(line.split(": ", 1) for line in first.stdout.splitlines())
    assert lines["before import"].startswith("importing numba") and lines["before import"].endswith("numba imported: False")
    assert lines["before call"].startswith("compiling numba kernel sparse_from_logits (rows) for float64 y_pred")
    assert lines["after call"] == "None | ready: True"
    assert lines["events"] == "1 | logged before the callback: True"
    assert lines["log"].count("compiling numba kernel sparse_from_logits") == 1
    assert "first use; cached on disk afterwards" in lines["log"]
    second = _run_python(COMPILE_PROBE, env)
    assert second.returncode == 0, second.stderr
    lines = dict(line.split(": ", 1) for line in second.stdout.splitlines())
    assert lines["before call"].startswith("loading numba kernel sparse_from_logits (rows)")
    assert lines["events"] == "1 | logged before the callback: False" and lines["log"] == ""


def test_listener_is_told_when_the_kernel_package_was_imported_directly(tmp_path):
    """Importing ``backends._numba`` before the backend module (as kernel tests and
    tools do) once left the dispatcher unaware of compiled kernels: ``auto`` kept
    another backend for the rest of the process."""
    out = _run_python(
        """
        import importlib, numpy as np, fastxent
        importlib.import_module("fastxent.backends._numba.math")
        from fastxent import backends
        events = []
        backends.on_compile(lambda: events.append(1))
        y, z = np.array([0, 1]), np.array([[0.5, 1.5], [2.0, -1.0]])
        fastxent.sparse_categorical_crossentropy(y, z, from_logits=True, backend="numba")
        print(len(events))
        """,
        dict(os.environ, FASTXENT_CACHE_DIR=str(tmp_path / "cache")),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1"]


def test_unavailable_reason_reads_no_package_metadata():
    """Asking whether numba can run costs a find_spec, not importlib.metadata (~30 ms)."""
    out = _run_python(
        """
        import importlib.metadata, sys
        def refuse(*args, **kwargs):
            raise AssertionError("importlib.metadata read")
        importlib.metadata.version = importlib.metadata.distribution = refuse
        from fastxent.backends import numba_backend
        assert numba_backend.unavailable_reason() is None
        assert "numba" not in sys.modules
        """
    )
    assert out.returncode == 0, out.stderr


def test_numba_code_imports_neither_the_api_nor_the_dispatcher():
    """Imports point down: the backend is handed what it needs (calls, a callback)."""
    import ast
    import pathlib

    backend = pathlib.Path(ROOT, "fastxent", "backends")
    for path in [backend / "numba_backend.py", *sorted((backend / "_numba").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
                assert not any(n.split(".")[-1] in ("_api", "_dispatch") for n in names), (path.name, names)


CACHE_PROBE = """
import numpy as np, fastxent
from fastxent.backends._numba import jit as K
{before}
z = np.random.default_rng(0).standard_normal((50, 6))
y = np.arange(50) % 6
got = fastxent.sparse_categorical_crossentropy(y, z, from_logits=True, backend="numba")
want = fastxent.sparse_categorical_crossentropy(y, z, from_logits=True, backend="numpy")
assert abs(got - want) < 1e-12 * abs(want), (got, want)
print("cache", K._CACHE)
"""


def _copy_package(tmp_path):
    import shutil

    dst = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "fastxent"), dst / "fastxent",
                    ignore=shutil.ignore_patterns("__pycache__", "*.c"))  # fmt: skip
    return dst


@pytest.fixture
def package_copy(tmp_path):
    """A copy of the fastxent package whose backends/__pycache__ cannot be created."""
    dst = _copy_package(tmp_path)
    (dst / "fastxent" / "backends" / "__pycache__").write_text("a file: no cache directory here")
    return dst


def _run_copy(package_copy, code, env):
    env = dict(env, PYTHONPATH=str(package_copy), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=str(package_copy),
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_no_writable_cache_directory_falls_back(package_copy):
    """No locator can write (NUMBA_CACHE_DIR, __pycache__ and ~/.cache impossible, even
    for root): numba refuses cache=True; the kernels compile with cache=False."""
    env = dict(os.environ, NUMBA_CACHE_DIR="/dev/null/numba", XDG_CACHE_HOME="/dev/null/xdg", HOME="/dev/null")
    out = _run_copy(package_copy, CACHE_PROBE.format(before=""), env)
    assert out.returncode == 0, out.stderr
    assert "cache False" in out.stdout


def _files(top):
    return {str(p.relative_to(top)): (p.stat().st_size, p.stat().st_mtime_ns) for p in top.rglob("*")}


def test_compiled_kernels_are_cached_outside_the_package(tmp_path):
    """A kernel's first call with an empty cache writes nothing inside the package
    (a folder there outlives ``pip uninstall`` and shadows another install) and
    its compiled code into $FASTXENT_CACHE_DIR, whatever NUMBA_CACHE_DIR says."""
    src = _copy_package(tmp_path)
    package = src / "fastxent"
    before = _files(package)
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k not in ("FASTXENT_NUMBA_CACHE", "XDG_CACHE_HOME")}
    env.update(FASTXENT_CACHE_DIR=str(cache), NUMBA_CACHE_DIR=str(tmp_path / "numba-own"))
    out = _run_copy(src, CACHE_PROBE.format(before=""), env)
    assert out.returncode == 0, out.stderr
    assert "cache True" in out.stdout
    assert _files(package) == before
    written = [p.name for p in cache.rglob("*")]
    assert any(n.endswith(".nbi") for n in written) and any(n.endswith(".nbc") for n in written), written
    assert not (tmp_path / "numba-own").exists()


@pytest.mark.slow
def test_cache_directory_lost_after_import_falls_back(package_copy, tmp_path):
    """The cache directory is fine at import but gone at the first compile: numba
    raises OSError from the call; the wrapper turns the cache off and retries."""
    cache = tmp_path / "cache"
    before = f"import shutil; shutil.rmtree({str(cache)!r}, True); open({str(cache)!r}, 'w').close()"
    out = _run_copy(package_copy, CACHE_PROBE.format(before=before), dict(os.environ, NUMBA_CACHE_DIR=str(cache)))
    assert out.returncode == 0, out.stderr
    assert "cache False" in out.stdout


# --------------------------------------------------------------------------- layout paths


@pytest.mark.parametrize("layout", sorted(PATHS))
def test_each_layout_takes_its_path(nk, layout):
    """The layouts of the kernel matrix (tests/test_kernels.py) take the path they are
    meant to exercise: a fast path cannot silently go away."""
    rows = np.random.default_rng(0).standard_normal((24, 7))
    for dtype in (F64, F32, F16):
        x = place(rows, layout, dtype)
        assert nk.layout._Layout(x, None).path == PATHS[layout], dtype
        dense = place(rows, layout, F32)
        assert nk.layout._Layout(x, None, dense=dense).path == PATHS[layout], dtype


def test_float16_is_read_through_a_record_view_without_a_copy(nk):
    x = np.linspace(-4, 4, 60, dtype=F16).reshape(10, 6, 1)
    view = nk.layout._numba_view(x)
    assert view.dtype == nk.layout._HALF and np.shares_memory(view, x)


def test_pairwise_sum_is_numpys(nk):
    """_pairwise_sum (NumPy's recursion, on a stack of its own) and _pairwise_sum_all
    give np.sum's bits for every size up to 2,000, around each power of two, and for
    random sizes and offsets, on terms spread over 16 decades (where the order of the
    additions shows)."""
    from numba import njit

    part = njit(lambda a, lo, n: nk.sums._pairwise_sum(a, lo, n))
    whole = njit(lambda a: nk.sums._pairwise_sum_all(a))
    rng = np.random.default_rng(11)
    a = rng.standard_normal(300_000) * 10.0 ** rng.uniform(-8, 8, 300_000)
    sizes = list(range(2_000)) + [2**k + d for k in range(11, 18) for d in (-8, -1, 0, 1, 8)]
    sizes += [int(n) for n in rng.integers(2_000, 300_000, 60)]
    for n in sizes:
        lo = int(rng.integers(0, a.size - n + 1))
        want = np.sum(a[lo : lo + n])
        assert part(a, lo, n) == want, n
        assert whole(np.ascontiguousarray(a[lo : lo + n])) == want, n


def _block_sum_case(kernel, shape, rng):
    """KERNELS.md arguments up to grad_weight (inclusive) for a float32 case."""
    o, c, i = shape
    gw = rng.uniform(0.5, 2, (o, i))
    if kernel == "sparse_from_probs":
        x = rng.dirichlet(np.ones(c), o * i).astype(F32).reshape(o, i, c).transpose(0, 2, 1)
        labels = rng.integers(0, c, (o, i))
        labels.reshape(-1)[::5] = -100
        return [x, labels, rng.uniform(0.5, 2, c), 0.0, -100, 1e-7, gw]
    if kernel == "sparse_from_logits":
        return [rng.standard_normal(shape).astype(F32), rng.integers(0, c, (o, i)), np.ones(c), 0.0, -100, gw]
    probs = kernel == "binary_from_probs"
    x = (rng.uniform(0, 1, shape) if probs else rng.standard_normal(shape) * 4).astype(F32)
    args = [x, rng.integers(0, 2, shape).astype(F32), rng.uniform(0.5, 2, (c, i)), 0.1]
    return args + ([1e-7] if probs else []) + [gw]


@pytest.mark.parametrize("kernel, shape, in_kernel, pos_weight", [
    ("binary_from_logits", (1, 1, 2 * 16384 + 123), True, None),  # binary (N,): flat
    ("binary_from_logits", (1, 1, 3 * 16384 + 77), True, 1.0),  # one pos_weight: 1 (the short form)
    ("binary_from_logits", (1, 1, 3 * 16384 + 77), True, 1.7),  # or another value
    ("binary_from_logits", (1, 3, 2 * 16384 + 123), True, None),  # Fortran-ordered (N, 3)
    ("binary_from_probs", (1, 1, 2 * 16384 + 123), True, None),
    ("sparse_from_probs", (2 * 16384 + 123, 7, 1), True, None),  # the gather along rows
    ("sparse_from_probs", (1, 7, 2 * 16384 + 123), True, None),  # along the inner axis
    ("sparse_from_probs", (3, 7, 16384 + 5), False, None),  # blocks would cut work items
    ("sparse_from_logits", (2 * 16384 + 123, 5, 1), False, None),
])  # fmt: skip
def test_block_sums_are_numpy_sums_of_the_rows(nk, kernel, shape, in_kernel, pos_weight):
    """block_sums=True gives, for every block of BLOCK_ROWS rows, exactly what
    ``_reduce.block_sums`` (NumPy's pairwise sum) gives for the per-row losses --
    summed by the driver itself where its work items can be the blocks (a flat
    binary loss from the float32 losses of its 128-row leaves), else afterwards --
    and the same gradient. With one pos_weight for the class, infinities and NaN
    among the logits too."""
    from fastxent import _reduce

    args = _block_sum_case(kernel, shape, np.random.default_rng(4))
    if pos_weight is not None:
        args[0].reshape(-1)[[3, 20_000, 40_000]] = [np.inf, -np.inf, np.nan]
        args[2] = np.broadcast_to(np.full((1, 1), pos_weight), shape[1:])
    o, _, i = shape
    rows = np.empty((o, i))
    assert nk.KERNELS[kernel](*args, rows, None, 1) == -1
    want = _reduce.block_sums(rows)
    sums = np.full(want.shape, np.nan)
    _, _, after = nk.kernels._prepared(nk.kernels._PREPARE[kernel], args + [sums, None], True)
    assert (after is None) == in_kernel
    grads = [None, np.empty(shape, F32)] if kernel == "binary_from_logits" and shape[1] == 1 else [None]
    for g in grads:
        for threads in (1, 2):
            sums[:] = np.nan
            assert nk.KERNELS[kernel](*args, sums, g, threads, block_sums=True) == -1
            assert sums.tobytes() == want.tobytes()  # (NaN compares by its bits too)
            if g is not None:
                g_rows = np.empty_like(g)
                nk.KERNELS[kernel](*args, rows, g_rows, threads)
                assert g.tobytes() == g_rows.tobytes()



# --------------------------------------------------------------------------- threads and processes


@pytest.mark.parametrize("n_items, item_size, workers", [(1, 1, 2), (7, 1000, 2), (611, 16384, 2),
                                                          (65536, 1000, 2), (100_003, 1, 3)])  # fmt: skip
def test_claims_hand_out_every_work_item_once(nk, n_items, item_size, workers):
    from numba import njit, prange

    make_claims, claim, next_item = nk.schedule._claims, nk.schedule._claim, nk.schedule._next_item

    @njit(parallel=True)
    def times_claimed(n_items, item_size, workers):  # the drivers' loop
        seen = np.zeros(n_items, np.int64)
        claims = make_claims(n_items, item_size, workers)
        for worker in prange(workers):
            q, end = claim(claims)
            while q < end:
                seen[q] += 1
                q, end = next_item(claims, q, end)
        return seen, claims[8]

    seen, step = times_claimed(n_items, item_size, workers)
    assert (seen == 1).all()
    # claims of at most ~_CLAIM_ELEMENTS elements, at least _CLAIMS_PER_WORKER a worker
    assert step == 1 or (step * item_size <= nk.schedule._CLAIM_ELEMENTS
                         and step * nk.schedule._CLAIMS_PER_WORKER * workers <= n_items)  # fmt: skip


def test_more_threads_than_numba_has_is_capped(nk):
    import numba

    z = np.random.default_rng(6).standard_normal((24, 7)).astype(F32)
    y = np.arange(24) % 7
    want = run(Impl("numba"), "sparse_from_logits", z, y, threads=1)
    got = run(Impl("numba"), "sparse_from_logits", z, y, threads=numba.config.NUMBA_NUM_THREADS + 7)
    np.testing.assert_array_equal(got.loss, want.loss)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_is_detected_and_uses_serial_twins(nk):
    """In a forked child the drivers are swapped for serial twins (no thread pool)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            ok = backends.forked_child() and nk.kernels._pick(nk.softmax._sparse_logits_rows) is not nk.softmax._sparse_logits_rows
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert not backends.forked_child()


def test_info_reports_layer_threads_cache_and_compiled(nk):
    z = np.random.default_rng(7).standard_normal((24, 7)).astype(F32)
    run(Impl("numba"), "sparse_from_logits", z, np.arange(24) % 7, threads=2)
    info = backends.module("numba").info()
    for key in ("version", "threading layer", "NUMBA_NUM_THREADS", "cache dir", "compiled"):
        assert key in info
    assert info["threading layer"] in ("omp", "tbb", "workqueue")
    assert "_sparse_logits_rows" in info["compiled"]



# --------------------------------------------------------------------------- exp / log / tanh / bfloat16


def _ulp_error(got, want, dtype):
    want = np.asarray(want, np.float64)
    spacing = np.spacing(np.abs(want).astype(dtype)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / spacing


@pytest.fixture(scope="module")
def elementwise(nk):
    """The kernels' exp, exp of x <= 0, log and log1p of u in [0, 1], applied to an array."""
    import numba

    @numba.njit(fastmath={"contract"})
    def apply(which, x):
        out = np.empty_like(x)
        for k in range(x.shape[0]):
            if which == 0:
                out[k] = nk.math._exp(x[k])
            elif which == 1:
                out[k] = nk.math._exp_neg(x[k])
            elif which == 2:
                out[k] = nk.math._log(x[k])
            else:
                out[k] = nk.math._log1p_unit(x[k])
        return out

    return lambda which, x: apply({"exp": 0, "exp_neg": 1, "log": 2, "log1p_unit": 3}[which], x)


def test_exp_log_accuracy(elementwise):
    x32 = np.linspace(-87.3, 88.7, 2_000_001, dtype=np.float32)
    assert _ulp_error(elementwise("exp", x32), np.exp(x32.astype(np.float64)), F32).max() <= 2.0
    # exp of x <= 0: degree 5 in float32 (measured 2.16 ulp), the softmax sums' exp
    neg = x32[x32 <= 0]
    assert _ulp_error(elementwise("exp_neg", neg), np.exp(neg.astype(np.float64)), F32).max() <= 2.5
    x64 = np.linspace(-708.0, 709.0, 2_000_001)
    assert _ulp_error(elementwise("exp", x64), np.exp(x64), F64).max() <= 2.0
    assert _ulp_error(elementwise("exp_neg", x64[x64 <= 0]), np.exp(x64[x64 <= 0]), F64).max() <= 2.0
    p32 = np.concatenate([np.geomspace(1e-37, 1e38, 1_000_000, dtype=np.float32),
                          np.linspace(0.5, 2.0, 1_000_000, dtype=np.float32)])  # fmt: skip
    assert _ulp_error(elementwise("log", p32), np.log(p32.astype(np.float64)), F32).max() <= 2.0
    u32 = np.concatenate([np.linspace(0, 1, 1_000_001, dtype=np.float32), np.geomspace(1e-38, 1, 100_000, dtype=np.float32)])
    assert _ulp_error(elementwise("log1p_unit", u32), np.log1p(u32.astype(np.float64)), F32).max() <= 2.0
    u64 = np.concatenate([np.linspace(0, 1, 1_000_001), np.geomspace(1e-300, 1, 100_000)])
    assert _ulp_error(elementwise("log1p_unit", u64), np.log1p(u64), F64).max() <= 3.0  # measured 3
    assert np.isnan(elementwise("log1p_unit", np.array([np.nan], F32))[0])


def test_exp_neg_specials(elementwise):
    for dt in (F32, F64):
        got = elementwise("exp_neg", np.array([-np.inf, 0.0, -0.0, -1e4, -50.0], dt))
        assert got[0] == 0 and got[1] == 1 and got[2] == 1 and got[3] == 0
        np.testing.assert_allclose(got[4], np.exp(-50.0), rtol=1e-6)
    # float32: NaN propagates (the softmax sums rely on it to find a negative NaN)
    assert np.isnan(elementwise("exp_neg", np.array([np.nan], F32))[0])
    # a NaN with payload bits where the exponent scale is built stays NaN
    payload = np.array([0x7FC001FF, 0xFFC000FF], np.uint32).view(F32)
    assert np.isnan(elementwise("exp_neg", payload)).all()
    assert np.isnan(elementwise("exp", np.array([np.nan], F32))[0])


def test_tanh_accuracy(nk):
    """The softcap's tanh: within 1.5 ulp of float64's in float32, within 2 ulp of
    NumPy's in float64 (each within 1 of the truth); limits and NaN."""
    import numba

    @numba.njit(fastmath={"contract"})
    def tanh(x):
        out = np.empty_like(x)
        for k in range(x.shape[0]):
            out[k] = nk.math._tanh(x[k])
        return out

    def ulp(got, want, dtype):
        spacing = np.spacing(np.abs(want).astype(dtype)).astype(F64)
        return np.abs(got.astype(F64) - want) / spacing

    x32 = np.concatenate([np.linspace(-12, 12, 1_000_001, dtype=F32), np.geomspace(1e-38, 12, 100_000, dtype=F32)])
    assert ulp(tanh(x32), np.tanh(x32.astype(F64)), F32).max() <= 1.5
    x64 = np.concatenate([np.linspace(-22, 22, 1_000_001), np.geomspace(1e-300, 22, 100_000)])
    assert ulp(tanh(x64), np.tanh(x64), F64).max() <= 2.0
    for dt in (F32, F64):
        got = tanh(np.array([np.inf, -np.inf, 800.0, -800.0, 0.0, np.nan], dt))
        np.testing.assert_array_equal(got, [1.0, -1.0, 1.0, -1.0, 0.0, np.nan])


@pytest.mark.skipif(BF16 is None, reason="ml_dtypes is not installed")
def test_bfloat16_is_read_through_a_record_view_without_a_copy(nk):
    x = np.linspace(-4, 4, 60).astype(BF16).reshape(10, 6, 1)
    view = nk.layout._numba_view(x)
    assert view.dtype == nk.layout._BF16 and np.shares_memory(view, x)
    layout = nk.layout._Layout(x, x)  # in place: the gradient goes into y_pred's own bits
    assert layout.g is True and np.shares_memory(layout.x, x)
    grad = np.empty(x.shape, BF16)
    assert np.shares_memory(nk.layout._Layout(x, grad).g, grad)


@pytest.mark.skipif(BF16 is None, reason="ml_dtypes is not installed")
def test_bfloat16_rounding_and_widening_are_ml_dtypes(nk):
    """float32 and float64 -> bfloat16 bits as ml_dtypes rounds them (nearest even,
    float64 rounded once; ties, overflow to inf, subnormals, quiet NaN of each sign),
    and bfloat16 -> float32 exactly, over random bit patterns and the edge cases."""
    import numba

    from fastxent.backends._numba.intrinsics import _bfloat16_to_float, _float_to_bfloat16

    @numba.njit
    def narrow(a, out):
        for k in range(a.shape[0]):
            out[k] = _float_to_bfloat16(a[k])

    @numba.njit
    def widen(b, out):
        for k in range(b.shape[0]):
            out[k] = _bfloat16_to_float(b[k])

    rng = np.random.default_rng(7)
    f32 = rng.integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32).view(F32)
    ties = (rng.integers(0, 2**16, 1000, dtype=np.uint32) << 16 | 0x8000).view(F32)  # exactly halfway
    edges = np.array([np.inf, -np.inf, np.nan, -np.nan, 0.0, -0.0, 3.4e38, 3.3961e38, 1e-40, -1e-45], F32)
    f64 = np.concatenate([rng.standard_normal(300_000) * 10.0 ** rng.uniform(-45, 40, 300_000),
                          1 + 2.0**-8 + rng.integers(-2**20, 2**20, 100_000) * 2.0**-48,  # near a tie
                          [1 + 2**-8 + 2**-40, 1e300, -1e300, 3.3961e38, np.nan, 1e-300, -1e-300]])  # fmt: skip
    with np.errstate(all="ignore"):
        for a in (np.concatenate([f32, ties, edges]), f64):
            got = np.empty(a.size, np.uint16)
            narrow(a, got)
            np.testing.assert_array_equal(got, a.astype(BF16).view(np.uint16))
    bits = np.arange(2**16, dtype=np.uint16)  # every bfloat16 value
    got = np.empty(bits.size, F32)
    widen(bits, got)
    np.testing.assert_array_equal(got.view(np.uint32), bits.view(BF16).astype(F32).view(np.uint32))



def test_every_thread_gets_a_work_item(nk):
    """Decision 9: work items are sized so that a call given T threads has at least T
    of them whenever its rows allow (no serial run of small inputs decided here)."""
    from fastxent.backends._numba.gather import _gather_rows

    for n_c, n_i, threads in [(1000, 100, 2), (1000, 3, 2), (10, 5000, 4), (1, 7, 8)]:
        block = nk.layout._block_size(n_c, n_i, threads)
        assert -(-n_i // block) >= min(threads, n_i)
    for n_o, n_i, threads in [(500, 1, 2), (1, 700, 2), (3, 40, 8), (1, 5, 8)]:
        rows = _gather_rows(n_o, n_i, threads)
        items = -(-n_o // rows) if n_i == 1 else n_o * -(-n_i // rows)
        assert items >= min(threads, n_o * n_i)
    x = np.asfortranarray(np.random.default_rng(1).standard_normal((100, 1000)).astype(F32)).T[None]
    assert nk.layout._Layout(x, None, threads=2).last == 50
