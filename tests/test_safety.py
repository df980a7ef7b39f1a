"""Hostile inputs: no write to memory that is not ours, no wrong number, a clear error.

Each test here was a crash, a silently wrong number or an unhelpful error before the
fix that it guards; every backend runs each one (``backend`` fixture). Expected
values come from float64 arithmetic written out in the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastxent as fx
from helpers import call

SPARSE, CAT, BIN = fx.sparse_categorical_crossentropy, fx.categorical_crossentropy, fx.binary_crossentropy
#: A small call (the compiled fast path's size) and a large one (the general path's).
SIZES = [(4, 3), (5000, 40)]


def _raises_untouched(fn, arrays, match, *args, **kwargs):
    """``fn`` raises ValueError matching ``match`` and leaves ``arrays`` as they were."""
    before = [a.copy() for a in arrays]
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- grad_out


@pytest.mark.parametrize("shape", SIZES)
def test_read_only_y_pred_as_grad_out_is_refused(backend, shape):
    n, c = shape
    labels = np.arange(n) % c
    x = np.zeros(shape, np.float32)
    x.flags.writeable = False
    with pytest.raises(ValueError, match="grad_out: expected a writeable array"):
        SPARSE(labels, x, from_logits=True, return_grad=True, grad_out=x, backend=backend)
    frozen = np.frombuffer(bytes(n * c * 4), dtype=np.float32).reshape(shape)
    with pytest.raises(ValueError, match="read-only"):
        SPARSE(labels, frozen, from_logits=True, return_grad=True, grad_out=frozen, backend=backend)
    assert not frozen.any()


@pytest.mark.parametrize("shape", SIZES)
def test_read_only_memory_map_as_grad_out_is_refused(backend, shape, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(shape, np.float32))
    x = np.asarray(np.load(path, mmap_mode="r"))
    labels = np.arange(shape[0]) % shape[1]
    with pytest.raises(ValueError, match="read-only"):
        SPARSE(labels, x, from_logits=True, return_grad=True, grad_out=x, backend=backend)
    assert not np.load(path).any()


@pytest.mark.parametrize("shape", SIZES)
def test_labels_inside_y_pred_with_grad_out_y_pred_is_refused(backend, shape):
    x = np.full(shape, 0.5, np.float32)
    x[:, 0] = 0.0
    labels = x.view(np.int32)[:, 0]  # the bits of 0.0: label 0, read from y_pred's memory
    _raises_untouched(SPARSE, [x], "overlap y_true", labels, x, from_logits=True, return_grad=True,
                      grad_out=x, backend=backend)


def test_big_endian_y_pred_and_grad_out_on_its_bytes_is_refused(backend):
    x = np.random.default_rng(0).random((4, 3)).astype(">f4")
    g = np.ndarray((4, 3), dtype="=f4", buffer=x)  # y_pred's bytes read as native floats
    _raises_untouched(SPARSE, [x], "overlap", np.array([0, 1, 2, 0]), x, from_logits=True,
                      return_grad=True, grad_out=g, backend=backend)


def test_class_weight_inside_grad_out_is_refused(backend):
    g = np.zeros((4, 3))
    _raises_untouched(SPARSE, [g], "overlap class_weight", np.array([0, 1, 2, 0]), np.zeros((4, 3)),
                      from_logits=True, class_weight=g[:, 0][:3], return_grad=True, grad_out=g, backend=backend)


def test_self_overlapping_grad_out_is_refused(backend):
    g = np.lib.stride_tricks.as_strided(np.zeros(3, np.float32), (4, 3), (0, 4))
    with pytest.raises(ValueError, match="do not overlap"):
        SPARSE(np.array([0, 1, 2, 0]), np.zeros((4, 3), np.float32), from_logits=True, return_grad=True,
               grad_out=g, backend=backend)


def test_interleaved_grad_out_that_does_not_overlap_is_accepted():
    base = np.zeros(12)
    g = np.lib.stride_tricks.as_strided(base, (3, 4), (8, 24))  # a transposed view: no overlap
    loss, grad = SPARSE(np.array([0, 1, 2]), np.zeros((3, 4)), from_logits=True, return_grad=True,
                        grad_out=g, backend="numpy")
    assert grad is g and np.isfinite(grad).all()


# --------------------------------------------------------------------------- wrong numbers


def test_ignored_row_holding_nan_gives_zero(backend):
    p = np.array([[0.5, 0.5], [np.nan, 0.5], [0.25, 0.75]])
    labels = np.array([0, -1, 1])
    kw = dict(ignore_index=-1, label_smoothing=0.1, backend=backend)
    got = call(SPARSE, labels, p, reduction="none", **kw)
    assert got[1] == 0 and np.isfinite(got).all()
    mean = call(SPARSE, labels, p, **kw)
    np.testing.assert_allclose(float(mean), (got[0] + got[2]) / 2, rtol=1e-12)
    loss, grad = call(SPARSE, labels, p, return_grad=True, **kw)
    assert np.isfinite(loss) and (grad[1] == 0).all()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_epsilon_the_compute_dtype_cannot_hold_is_refused(dtype):
    compute = np.float64 if dtype == np.float64 else np.float32
    eps = float(np.finfo(compute).epsneg) / 4  # 1 - eps rounds to 1
    with pytest.raises(ValueError, match=r"epsilon: .* smallest usable epsilon is"):
        CAT(np.array([[1, 0]]), np.array([[1.0, 0.0]], dtype), epsilon=eps)
    smallest = float(np.nextafter(compute(np.finfo(compute).epsneg / 2), compute(1)))
    loss = CAT(np.array([[1, 0], [0, 1]]), np.array([[1.0, 0.0], [1.0, 0.0]], dtype), epsilon=smallest,
               reduction="none")
    assert np.isfinite(loss).all() and loss[0] > 0 and loss[1] > loss[0]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64])
def test_ignore_index_at_the_edge_of_every_label_dtype(backend, dtype):
    info = np.iinfo(dtype)
    for ignore in (int(info.max), int(info.min)) if info.min < 0 else (int(info.max),):
        labels = np.array([0, ignore, 1], dtype=dtype)
        p = np.array([[0.5, 0.5], [0.9, 0.1], [0.25, 0.75]])
        for from_logits, x in ((False, p), (True, np.log(p))):
            got = call(SPARSE, labels, x, from_logits=from_logits, ignore_index=ignore, reduction="none",
                       backend=backend)
            np.testing.assert_allclose(got, [np.log(2), 0.0, -np.log(0.75)], rtol=1e-12)


def test_infinite_sample_weight_multiplies_as_given(backend):
    z = np.array([100.0, -1.0, 0.0])
    got = call(BIN, np.array([1.0, 0.0, 1.0]), z, from_logits=True, axis=None, reduction="none",
               sample_weight=[np.inf, np.inf, 1.0], backend=backend)
    assert got[0] == np.inf  # inf times a tiny positive loss
    assert got[1] == np.inf and np.isclose(got[2], np.log(2))
    exact_zero = call(SPARSE, np.array([0]), np.array([[0.0, -np.inf]]), from_logits=True,
                      sample_weight=[np.inf], reduction="none", backend=backend)
    assert np.isnan(exact_zero[0])  # inf * 0


# --------------------------------------------------------------------------- kernels: every backend alike
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_soft_target_near_one_is_exact(backend, dtype):
    # (1 - y) * x for y = 1 - 1e-9 and x = 1e4: 1e-5 (a float32 target rounds y to 1: 0)
    loss = call(BIN, np.array([1 - 1e-9]), np.array([1e4], dtype), from_logits=True, backend=backend)
    np.testing.assert_allclose(float(loss), 1e-5, rtol=1e-6)
    loss = call(BIN, np.array([1.0]), np.array([1e4], dtype), from_logits=True, label_smoothing=1e-9,
                backend=backend)
    np.testing.assert_allclose(float(loss), 0.5e-9 * 1e4, rtol=1e-6)


@pytest.mark.parametrize("from_logits", [False, True])
def test_binary_soft_target_from_a_teacher_keeps_its_digits(backend, from_logits):
    y = np.array([1 - 1e-6, 1e-6, 0.3])
    p = np.array([0.999, 0.001, 0.4], np.float32)
    pc = p.astype(np.float64)
    one_minus = (np.float32(1) - p).astype(np.float64)  # 1 - p formed in the compute dtype
    if from_logits:
        z = np.log(pc / one_minus).astype(np.float32)
        zz = z.astype(np.float64)
        expected = (1 - y) * zz + np.log1p(np.exp(-zz))
        got = call(BIN, y, z, from_logits=True, reduction="none", axis=None, backend=backend)
    else:
        expected = -(y * np.log(pc) + (1 - y) * np.log(one_minus))
        got = call(BIN, y, p, reduction="none", axis=None, backend=backend)
    np.testing.assert_allclose(got, expected, rtol=2e-6)


@pytest.mark.parametrize("weight", [np.inf, np.nan, 1e308])
@pytest.mark.parametrize("kind", ["sparse", "categorical"])
@pytest.mark.parametrize("reduction", ["mean", "weighted_mean", "none"])
def test_weight_of_an_absent_class_does_not_matter(backend, weight, kind, reduction):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    labels = np.array([0, 1, 0, 1, 1, 0])  # class 2 never occurs
    y = labels if kind == "sparse" else np.eye(3)[labels]
    fn = SPARSE if kind == "sparse" else CAT
    kw = dict(from_logits=True, reduction=reduction, return_grad=True, backend=backend)
    loss, grad = call(fn, y, x, class_weight=[1.0, 2.0, weight], **kw)
    ref_loss, ref_grad = call(fn, y, x, class_weight=[1.0, 2.0, 1.0], **kw)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("weight", [np.inf, np.nan])
def test_weight_of_an_absent_class_from_probabilities(backend, weight):
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    labels = np.array([0, 1])
    for fn, y in ((SPARSE, labels), (CAT, np.eye(3)[labels])):
        got = call(fn, y, p, class_weight=[1.0, 1.0, weight], reduction="weighted_mean", backend=backend)
        np.testing.assert_allclose(float(got), -(np.log(0.7) + np.log(0.8)) / 2, rtol=1e-12)


@pytest.mark.parametrize("from_logits", [False, True])
def test_same_loss_bits_with_and_without_gradient(backend, from_logits):
    rng = np.random.default_rng(3)
    x = rng.random((257, 5)).astype(np.float32)
    x = np.log(x / (1 - x)) if from_logits else x
    y = rng.random((257, 5))
    kw = dict(from_logits=from_logits, pos_weight=[0.5, 1.0, 2.0, 3.0, 1.5], label_smoothing=0.05,
              sample_weight=rng.random(257), reduction="none", backend=backend)
    plain = call(BIN, y, x, **kw)
    with_grad, _ = call(BIN, y, x, return_grad=True, **kw)
    np.testing.assert_array_equal(plain.view(np.uint32), with_grad.view(np.uint32))


def test_every_class_masked_with_a_negative_weight(backend):
    x = np.array([[-np.inf, -np.inf, -np.inf], [-np.inf, -np.inf, -np.inf], [-np.inf] * 3])
    loss, grad = call(SPARSE, np.array([0, 1, 2]), x, from_logits=True, class_weight=[-1.0, 2.0, 0.0],
                      reduction="none", return_grad=True, backend=backend)
    assert loss[0] == -np.inf and loss[1] == np.inf and loss[2] == 0
    assert np.isnan(grad[:2]).all() and (grad[2] == 0).all()


def test_float64_losses_keep_gradual_underflow(backend):
    got = call(BIN, np.array([1.0]), np.array([745.0]), from_logits=True, reduction="none", backend=backend)
    assert got[0] == np.log1p(np.exp(-745.0)) and got[0] > 0  # 5e-324
    got = call(SPARSE, np.array([0]), np.array([[0.0, -740.0]]), from_logits=True, reduction="none",
               backend=backend)
    np.testing.assert_allclose(got[0], np.exp(-740.0), rtol=1e-6)  # a subnormal
    assert got[0] > 0


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("targets, hint", [([-1.0, 1.0], r"\(y_true \+ 1\) / 2"), ([0, 255], "y_true / 255"),
                                           ([0.5, 1.5], "y_true / 255")])
def test_binary_targets_outside_unit_interval_are_refused(backend, from_logits, targets, hint):
    x = np.array([0.2, 0.9], np.float32)
    y = np.array(targets, dtype=np.float32 if isinstance(targets[0], float) else np.int64)
    with pytest.raises(ValueError, match=f"y_true: expected binary targets in \\[0, 1\\].*{hint}"):
        call(BIN, y, x, from_logits=from_logits, backend=backend)
    big = np.tile(x, 20000)
    big_y = np.tile(y, 20000)
    _raises_untouched(call, [big], "binary targets", BIN, big_y, big, from_logits=from_logits,
                      return_grad=True, grad_out=big, backend=backend)


def test_binary_float32_targets_outside_with_huge_logits_are_refused(backend):
    with pytest.raises(ValueError, match="binary targets"):
        call(BIN, np.array([2.0], np.float32), np.array([3e38], np.float32), from_logits=True, backend=backend)


# --------------------------------------------------------------------------- clear errors


def test_integer_arguments_out_of_range_are_one_value_error(backend):
    p = np.array([[0.5, 0.5]])
    with pytest.raises(ValueError, match=r"threads: expected None or an int in \[1, 4096\]"):
        SPARSE(np.array([0]), p, threads=2**40, backend=backend)
    with pytest.raises(ValueError, match=r"ignore_index: expected an int in \[-2\*\*63, 2\*\*64\)"):
        SPARSE(np.array([0]), p, ignore_index=2**70, backend=backend)
    with pytest.raises(ValueError, match="y_true: expected labels in"):
        SPARSE(np.array([2.0**63]), p, backend=backend)
    with pytest.raises(ValueError, match="y_true: expected integral class labels"):
        SPARSE(np.array([0.5]), p, backend=backend)
    with pytest.raises(ValueError, match="y_true: expected labels in"):  # 2**60 + 1 as a float is 2**60
        SPARSE(np.array([2.0**60]), p, ignore_index=2**60 + 1, backend=backend)
    with pytest.raises(ValueError, match="y_true: expected labels in"):
        SPARSE(np.array([2.0**62]), p, ignore_index=-1, backend=backend)


def test_matrix_and_masked_arrays(backend):
    p = np.array([[0.5, 0.5], [0.2, 0.8]])
    expected = call(SPARSE, np.array([0, 1]), p, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # np.matrix's own
        matrix = np.matrix(p)
    assert call(SPARSE, np.array([0, 1]), matrix, backend=backend) == expected
    assert call(SPARSE, np.array([0, 1]), np.ma.masked_array(p), backend=backend) == expected
    with pytest.raises(TypeError, match="y_pred: expected an array without masked values"):
        SPARSE(np.array([0, 1]), np.ma.masked_array(p, mask=[[0, 1], [0, 0]]), backend=backend)
    with pytest.raises(TypeError, match="y_true: expected an array without masked values"):
        SPARSE(np.ma.masked_array([0, 1], mask=[0, 1]), p, backend=backend)


def test_swapped_arguments_are_named():
    logits = np.random.default_rng(0).standard_normal((4, 3))
    labels = np.array([0, 1, 2, 0])
    with pytest.raises(TypeError, match="look swapped"):
        SPARSE(logits, labels, from_logits=True)
    with pytest.raises(TypeError, match="look swapped"):
        BIN(np.array([0.2, 0.9]), np.array([0, 1]))
    with pytest.raises(TypeError, match="look swapped"):
        CAT(np.array([[0.2, 0.8]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="look swapped"):
        SPARSE(np.zeros((4, 3), dtype=int), logits[:, 0], from_logits=True)


def test_probabilities_passed_as_logits_warn_once_and_can_be_silenced():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    with pytest.warns(fx.ProbabilitiesAsLogitsWarning, match="from_logits=False"):
        SPARSE(np.array([0, 1]), p, from_logits=True)
    with pytest.warns(fx.ProbabilitiesAsLogitsWarning):
        SPARSE(np.tile([0, 1], 3000), np.tile(p, (3000, 1)), from_logits=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SPARSE(np.array([0, 1]), np.log(p), from_logits=True)  # real logits: no warning
        warnings.simplefilter("ignore", fx.ProbabilitiesAsLogitsWarning)
        SPARSE(np.array([0, 1]), p, from_logits=True)


def test_class_weight_as_a_keras_dict(backend):
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1]])
    labels = np.array([0, 1])
    got = call(SPARSE, labels, p, class_weight={1: 3.0}, reduction="none", backend=backend)
    np.testing.assert_allclose(got, [-np.log(0.5), -3 * np.log(0.8)], rtol=1e-12)
    with pytest.raises(ValueError, match=r"class_weight: expected dict keys in \[0, 3\), got key 3"):
        SPARSE(labels, p, class_weight={3: 1.0})
    with pytest.raises(TypeError, match="class_weight: expected int class indices"):
        SPARSE(labels, p, class_weight={"cat": 1.0})


def test_loss_class_with_a_bad_option_fails_when_built():
    with pytest.raises(ValueError, match="reduction: expected one of"):
        fx.SparseCategoricalCrossentropy(reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        fx.BinaryCrossentropy(label_smoothing=2)
    with pytest.raises(ValueError, match="ignore_index"):
        fx.SparseCategoricalCrossentropy(ignore_index=2**70)


def _run(code: str, **env):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, cwd=root)


def test_invalid_backend_setting_is_one_line_in_info():
    out = _run("import fastxent; fastxent.show_config()", FASTXENT_BACKEND="gpu")
    assert out.returncode == 0, out.stderr
    assert "default backend: INVALID (FASTXENT_BACKEND: expected one of" in out.stdout
    assert "Traceback" not in out.stderr


def test_corrupt_calibration_file_is_named(tmp_path):
    (tmp_path / "fastxent").mkdir()
    (tmp_path / "fastxent" / "calibration.json").write_text("{not json")
    code = ("import warnings, numpy as np, fastxent\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    fastxent.sparse_categorical_crossentropy([0], np.array([[0.5, 0.5]] * 40000)[:1])\n"
            "    print([str(x.message) for x in w if issubclass(x.category, fastxent.CalibrationWarning)])\n")
    out = _run(code, XDG_CACHE_HOME=str(tmp_path), FASTXENT_CACHE_DIR=str(tmp_path / "fastxent"))
    assert out.returncode == 0, out.stderr
    assert "ignoring the calibration file" in out.stdout and "not valid JSON" in out.stdout


def test_bfloat16_targets_and_weights_are_accepted_as_float16_is(backend):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = ml_dtypes.bfloat16
    y = np.array([[1.0, 0.0], [0.0, 1.0]])
    p = np.array([[0.75, 0.25], [0.5, 0.5]])
    for fn in (BIN, CAT):
        expected = call(fn, y.astype(np.float16), p, sample_weight=np.array([1.0, 2.0], np.float16),
                        backend=backend)
        got = call(fn, y.astype(bf16), p, sample_weight=np.array([1.0, 2.0], bf16), backend=backend)
        assert got == expected
    got = call(SPARSE, np.array([0, 1]), p, class_weight=np.array([1.0, 3.0], bf16), reduction="none",
               backend=backend)
    np.testing.assert_allclose(got, [-np.log(0.75), -3 * np.log(0.5)], rtol=1e-12)
