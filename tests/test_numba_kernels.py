"""Tests specific to the Numba backend: lazy import, readiness, the cache fallback,
the layout paths (each one against the NumPy backend), float16, threads and fork.

The shared matrix (every other test module) runs the public functions on numba too;
these tests call the kernels directly, so that each layout provably takes its path.
Compilation dominates a cold run (a few seconds per new signature; the on-disk
cache makes later runs fast). The full dtype x layout x gradient product is marked
slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastxent import backends

pytestmark = pytest.mark.skipif(backends.unavailable_reason("numba") is not None, reason="numba unavailable")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F16, F32, F64 = np.float16, np.float32, np.float64
KERNEL_NAMES = ("sparse_from_logits", "sparse_from_probs", "categorical_from_logits",
                "categorical_from_probs", "binary_from_logits", "binary_from_probs")  # fmt: skip
LAYOUTS = ("rows", "padded", "chlast", "cols", "nchw", "strided", "negcols")
#: The path each layout must take (checked, so that a fast path cannot silently go away).
PATHS = {"rows": "rows", "padded": "rows", "chlast": "rows", "cols": "cols", "nchw": "cols",
         "strided": "generic", "negcols": "generic"}  # fmt: skip


@pytest.fixture(scope="module")
def nk():
    from fastxent.backends import _numba_kernels

    return _numba_kernels


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


CACHE_PROBE = """
import numpy as np, fastxent
from fastxent.backends import _numba_kernels as K
{before}
z = np.random.default_rng(0).standard_normal((50, 6))
y = np.arange(50) % 6
got = fastxent.sparse_categorical_crossentropy(y, z, from_logits=True, backend="numba")
want = fastxent.sparse_categorical_crossentropy(y, z, from_logits=True, backend="numpy")
assert abs(got - want) < 1e-12 * abs(want), (got, want)
print("cache", K._CACHE)
"""


@pytest.fixture
def package_copy(tmp_path):
    """A copy of the fastxent package whose backends/__pycache__ cannot be created."""
    import shutil

    dst = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "fastxent"), dst / "fastxent",
                    ignore=shutil.ignore_patterns("__pycache__", "*.c"))  # fmt: skip
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


@pytest.mark.slow
def test_cache_directory_lost_after_import_falls_back(package_copy, tmp_path):
    """The cache directory is fine at import but gone at the first compile: numba
    raises OSError from the call; the wrapper turns the cache off and retries."""
    cache = tmp_path / "cache"
    before = f"import shutil; shutil.rmtree({str(cache)!r}, True); open({str(cache)!r}, 'w').close()"
    out = _run_copy(package_copy, CACHE_PROBE.format(before=before), dict(os.environ, NUMBA_CACHE_DIR=str(cache)))
    assert out.returncode == 0, out.stderr
    assert "cache False" in out.stdout


# --------------------------------------------------------------------------- layouts against numpy


def place(rows: np.ndarray, layout: str, dtype) -> np.ndarray:
    """An (O, C, I) array of ``layout`` whose rows r = o * I + i are ``rows``."""
    n, c = rows.shape
    h = n // 2
    if layout == "rows":
        return np.ascontiguousarray(rows, dtype)[:, :, None]
    if layout == "padded":  # contiguous rows, padded row stride
        big = np.zeros((n, c + 3), dtype)
        big[:, :c] = rows
        return big[:, :c, None]
    if layout == "chlast":  # class axis contiguous and I > 1
        return np.ascontiguousarray(rows.reshape(2, h, c), dtype).transpose(0, 2, 1)
    if layout == "cols":  # Fortran-ordered (N, C) -> (1, C, N)
        return np.ascontiguousarray(rows.T, dtype)[None]
    if layout == "nchw":  # (N, C, H*W)
        return np.ascontiguousarray(rows.reshape(2, h, c).transpose(0, 2, 1), dtype)
    if layout == "strided":  # negative, odd strides
        big = np.zeros((2 * n, 2 * c), dtype)
        view = big[::-2, ::-2]
        view[...] = rows
        return view[:, :, None]
    if layout == "negcols":  # I > 1 with a negative inner stride
        big = np.zeros((2, c, 2 * h), dtype)
        view = big[:, :, ::-2]
        view[...] = rows.reshape(2, h, c).transpose(0, 2, 1)
        return view
    raise ValueError(layout)


def per_row(values: np.ndarray, x3: np.ndarray, layout: str) -> np.ndarray:
    """An (O, I) array of per-row values, strided like ``layout``."""
    o, _, i = x3.shape
    if layout in ("strided", "negcols"):
        big = np.zeros((o, 2 * i), values.dtype)
        big[:, ::-2] = values.reshape(o, i)
        return big[:, ::-2]
    return np.ascontiguousarray(values.reshape(o, i))


def make_case(kernel: str, dtype, layout: str, grad: str, rng, n=24, c=7, ls=0.1):
    """KERNELS.md arguments (without loss_out, grad_out, threads) for one case."""
    kind, _, source = kernel.split("_")
    if source == "logits":
        rows = rng.standard_normal((n, c)) * 3
        rows[0, 1] = -np.inf  # a masked class
    elif kind == "binary":
        rows = rng.uniform(0, 1, (n, c))
    else:
        rows = rng.dirichlet(np.ones(c), n)
    rows[1, 2] = 0.0 if source == "probs" else 40.0  # clipped / dominant
    x = place(rows, layout, dtype)
    gw = per_row(rng.uniform(0.5, 2, n), x, layout)
    w = rng.uniform(0.5, 2, c)
    if kind == "sparse":
        labels = rng.integers(0, c, n)
        labels[3] = -100
        args = [x, per_row(labels, x, layout), w, ls, -100]
    elif kind == "categorical":
        args = [x, place(rng.dirichlet(np.ones(c), n), layout, F64), w, ls]
    else:
        pw = np.broadcast_to(rng.uniform(0.5, 2, (c, 1)), (c, x.shape[2]))
        args = [x, place(rng.integers(0, 2, (n, c)).astype(F32), layout, F32), pw, ls]
    if source == "probs":
        args.append(1e-7)
    return args + [gw]


def run(module, kernel, args, grad, threads=1):
    """(return value, loss_out, gradient) of one kernel call."""
    x = args[0]
    loss = np.full((x.shape[0], x.shape[2]), np.nan)
    if grad == "none":
        g = None
    elif grad == "inplace":
        x = args[0] = x.copy()
        g = x
    else:
        g = np.full(x.shape, np.nan, F64 if x.dtype == F64 else F32)
    r = module.KERNELS[kernel](*args, loss, g, threads)
    return r, loss, g


def check_against_numpy(nk, kernel, dtype, layout, grad, ls=0.1, seed=0):
    args = make_case(kernel, dtype, layout, grad, np.random.default_rng(seed), ls=ls)
    x, aux = args[0], args[1]
    dense = aux if kernel.split("_")[0] != "sparse" else None
    plan = nk._Layout(x, None, dense=dense)
    assert plan.path == PATHS[layout]
    want = run(backends.module("numpy"), kernel, list(args), grad)
    got = run(nk, kernel, list(args), grad)
    tol = {"rtol": 1e-12, "atol": 1e-14} if dtype == F64 else {"rtol": 2e-6, "atol": 1e-7}
    assert got[0] == want[0]
    np.testing.assert_allclose(got[1], want[1], **tol)
    if grad != "none":
        np.testing.assert_allclose(got[2], want[2], **tol)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_every_layout_path_agrees_with_numpy(nk, kernel, layout):
    check_against_numpy(nk, kernel, F32, layout, "out")


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_float16_agrees_with_numpy(nk, kernel):
    check_against_numpy(nk, kernel, F16, "rows", "out")


DTYPES = {"f64": F64, "f32": F32, "f16": F16}
GRADS = ("none", "out", "inplace")


def _cases() -> list:
    """(kernel, dtype, layout, grad) cases: per kernel, each dtype once, with the 7
    layouts and 3 gradient modes cycled through (shifted per kernel, so that across
    kernels every layout and mode meets every dtype). Each case can be a Numba
    compilation (~5 s): the full product (378 cases) is opt-in with
    FASTXENT_FULL_PRODUCT=1."""
    if os.environ.get("FASTXENT_FULL_PRODUCT") == "1":
        return [(k, d, l, g) for k in KERNEL_NAMES for d in DTYPES for l in LAYOUTS for g in GRADS]
    return [
        (kernel, dtype, LAYOUTS[(i + 3 * k) % len(LAYOUTS)], GRADS[(i + k) % len(GRADS)])
        for k, kernel in enumerate(KERNEL_NAMES)
        for i, dtype in enumerate(DTYPES)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("kernel, dtype, layout, grad", _cases(), ids=["-".join(c) for c in _cases()])
def test_dtype_layout_gradient_cases_agree_with_numpy(nk, kernel, dtype, layout, grad):
    if grad == "inplace" and dtype == "f16":
        pytest.skip("no float16 gradient")
    check_against_numpy(nk, kernel, DTYPES[dtype], layout, grad)
    check_against_numpy(nk, kernel, DTYPES[dtype], layout, grad, ls=0.0, seed=1)


def test_float16_is_read_through_a_record_view_without_a_copy(nk):
    x = np.linspace(-4, 4, 60, dtype=F16).reshape(10, 6, 1)
    view = nk._numba_view(x)
    assert view.dtype == nk._HALF and np.shares_memory(view, x)


def test_gather_reads_one_value_per_row(nk):
    """Sparse from probabilities, ls == 0: NaN everywhere but at the labels changes nothing."""
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(9), 40)
    y = rng.integers(0, 9, 40)
    poisoned = np.full_like(p, np.nan)
    poisoned[np.arange(40), y] = p[np.arange(40), y]
    out = [np.empty((40, 1)), np.empty((40, 1))]
    for a, loss in zip((p, poisoned), out):
        assert nk.KERNELS["sparse_from_probs"](a[:, :, None], y[:, None], np.ones(9), 0.0, -1, 1e-7,
                                               np.ones((40, 1)), loss, None, 2) == -1  # fmt: skip
    np.testing.assert_array_equal(out[0], out[1])


@pytest.mark.parametrize("shape", [(3 * 512 + 37, 5, 1), (3, 5, 1300)], ids=["rows", "inner"])
def test_gather_across_work_items_agrees_with_numpy(nk, shape):
    """The gather works on blocks of 512 rows (along the outer axis, or the inner one
    when I > 1): blocks, partial blocks, ignored rows and gradients match NumPy, and
    the first out-of-range row is found in whichever block holds it."""
    rng = np.random.default_rng(8)
    o, c, i = shape
    rows = rng.dirichlet(np.ones(c), o * i)  # row r of the flat row order (o, i)
    x = rows.reshape(o, i, c).transpose(0, 2, 1)
    labels = rng.integers(0, c, (o, i))
    labels.reshape(-1)[::7] = -100
    args = [x, labels, rng.uniform(0.5, 2, c), 0.0, -100, 1e-7, rng.uniform(0.5, 2, (o, i))]
    want = run(backends.module("numpy"), "sparse_from_probs", list(args), "out")
    for threads in (1, 2):
        got = run(nk, "sparse_from_probs", list(args), "out", threads=threads)
        assert got[0] == want[0] == -1
        np.testing.assert_allclose(got[1], want[1], rtol=1e-12)
        np.testing.assert_allclose(got[2], want[2], rtol=1e-12)
    flat_labels = labels.reshape(-1)
    for r in (1500, 1100):  # the later row first: the answer must move to 1100
        rows[r, flat_labels[r] if flat_labels[r] >= 0 else 0] = 1.5
        flat_labels[r] = max(flat_labels[r], 0)
        for threads in (1, 2):
            assert run(nk, "sparse_from_probs", list(args), "none", threads=threads)[0] == r


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


def test_pairwise_sum_is_numpys(nk):
    """_pairwise_sum (NumPy's recursion, on a stack of its own) and _pairwise_sum_all
    give np.sum's bits for every size up to 2,000, around each power of two, and for
    random sizes and offsets, on terms spread over 16 decades (where the order of the
    additions shows)."""
    from numba import njit

    part = njit(lambda a, lo, n: nk._pairwise_sum(a, lo, n))
    whole = njit(lambda a: nk._pairwise_sum_all(a))
    rng = np.random.default_rng(11)
    a = rng.standard_normal(300_000) * 10.0 ** rng.uniform(-8, 8, 300_000)
    sizes = list(range(2_000)) + [2**k + d for k in range(11, 18) for d in (-8, -1, 0, 1, 8)]
    sizes += [int(n) for n in rng.integers(2_000, 300_000, 60)]
    for n in sizes:
        lo = int(rng.integers(0, a.size - n + 1))
        want = np.sum(a[lo : lo + n])
        assert part(a, lo, n) == want, n
        assert whole(np.ascontiguousarray(a[lo : lo + n])) == want, n


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
    _, _, after = nk._prepared(nk._PREPARE[kernel], args + [sums, None], True)
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


def test_first_out_of_range_row_whatever_the_thread_count(nk):
    p = np.full((500, 4), 0.25)
    p[[137, 301], 1] = 1.5
    for threads in (1, 2):
        r = nk.KERNELS["categorical_from_probs"](p[:, :, None], np.full((500, 4, 1), 0.25), np.ones(4), 0.0, 1e-7,
                                                 np.ones((500, 1)), np.empty((500, 1)), None, threads)  # fmt: skip
        assert r == 137


# --------------------------------------------------------------------------- threads and processes


@pytest.mark.parametrize("n_items, item_size, workers", [(1, 1, 2), (7, 1000, 2), (611, 16384, 2),
                                                          (65536, 1000, 2), (100_003, 1, 3)])  # fmt: skip
def test_claims_hand_out_every_work_item_once(nk, n_items, item_size, workers):
    from numba import njit, prange

    make_claims, claim, next_item = nk._claims, nk._claim, nk._next_item

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
    assert step == 1 or (step * item_size <= nk._CLAIM_ELEMENTS
                         and step * nk._CLAIMS_PER_WORKER * workers <= n_items)  # fmt: skip


@pytest.mark.parametrize("layout", ["rows", "cols"])
def test_one_and_two_threads_give_the_same_bits(nk, layout):
    args = make_case("sparse_from_logits", F32, layout, "out", np.random.default_rng(5), n=4000)
    one = run(nk, "sparse_from_logits", list(args), "out", threads=1)
    two = run(nk, "sparse_from_logits", list(args), "out", threads=2)
    np.testing.assert_array_equal(one[1], two[1])
    np.testing.assert_array_equal(one[2], two[2])


def test_more_threads_than_numba_has_is_capped(nk):
    import numba

    args = make_case("sparse_from_logits", F32, "rows", "none", np.random.default_rng(6))
    want = run(nk, "sparse_from_logits", list(args), "none", threads=1)
    got = run(nk, "sparse_from_logits", list(args), "none", threads=numba.config.NUMBA_NUM_THREADS + 7)
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_is_detected_and_uses_serial_twins(nk):
    """In a forked child the drivers are swapped for serial twins (no thread pool)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            ok = backends.forked_child() and nk._pick(nk._sparse_logits_rows) is not nk._sparse_logits_rows
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert not backends.forked_child()


def test_info_reports_layer_threads_cache_and_compiled(nk):
    args = make_case("sparse_from_logits", F32, "rows", "none", np.random.default_rng(7))
    run(nk, "sparse_from_logits", list(args), "none", threads=2)
    info = backends.module("numba").info()
    for key in ("version", "threading layer", "NUMBA_NUM_THREADS", "cache dir", "compiled"):
        assert key in info
    assert info["threading layer"] in ("omp", "tbb", "workqueue")
    assert "_sparse_logits_rows" in info["compiled"]


# --------------------------------------------------------------------------- exp / log


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
                out[k] = nk._exp(x[k])
            elif which == 1:
                out[k] = nk._exp_neg(x[k])
            elif which == 2:
                out[k] = nk._log(x[k])
            else:
                out[k] = nk._log1p_unit(x[k])
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
