"""fastxent._interop.as_array: NumPy views of other libraries' arrays, copies only where
the table in its docstring says, clear errors for memory the CPU cannot read."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import fastxent
from fastxent._interop import as_array


class ArrayLike:
    """An object that only implements ``__array__`` (returning its own data)."""

    def __init__(self, data):
        self.data = data

    def __array__(self, dtype=None, copy=None):
        return self.data


class DLPackOnly:
    """An object that only speaks DLPack, on a device of our choosing."""

    def __init__(self, data, device=(1, 0)):
        self.data, self.device = data, device

    def __dlpack__(self, **kwargs):
        return self.data.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.device


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    return a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.strides == b.strides


def test_numpy_arrays_pass_through():
    a = np.arange(6.0).reshape(2, 3)[:, ::2]
    assert as_array(a, "y_pred") is a


def test_array_protocol_object_is_viewed():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = as_array(ArrayLike(a), "y_pred")
    assert _same_memory(got, a) and got.dtype == np.float32


def test_dlpack_object_on_the_cpu_is_viewed():
    a = np.arange(12.0).reshape(3, 4).T  # strided: DLPack carries the strides
    got = as_array(DLPackOnly(a), "y_pred")
    assert _same_memory(got, a)
    np.testing.assert_array_equal(got, a)


@pytest.mark.parametrize("device, name", [((2, 1), "cuda:1"), ((8, 0), "metal:0"), ((99, 0), "DLPack device type 99:0")])
def test_dlpack_object_elsewhere_is_refused(device, name):
    with pytest.raises(ValueError, match=f"^y_true: expected an array on the CPU, got one on device {name}"):
        as_array(DLPackOnly(np.zeros(3), device), "y_true")


def test_lists_and_scalars():
    np.testing.assert_array_equal(as_array([[1, 2], [3, 4]], "y_true"), [[1, 2], [3, 4]])
    assert as_array(2.5, "sample_weight").shape == ()


def test_import_fastxent_imports_no_optional_library():
    code = "import sys, fastxent; print(sorted(m for m in ('torch', 'keras', 'jax', 'ml_dtypes') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "torch" not in out and "keras" not in out and "jax" not in out


def test_public_losses_take_array_like_objects():
    """The public functions read ``__array__`` and DLPack objects through as_array."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4))
    y = rng.integers(0, 4, 5)
    want = fastxent.sparse_categorical_crossentropy(y, x, from_logits=True)
    assert fastxent.sparse_categorical_crossentropy(ArrayLike(y), DLPackOnly(x), from_logits=True) == want
    with pytest.raises(ValueError, match="^y_pred: expected an array on the CPU"):
        fastxent.sparse_categorical_crossentropy(y, DLPackOnly(x, (2, 0)), from_logits=True)


# --------------------------------------------------------------------------- torch


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int64", "uint8", "bool"])
def test_torch_tensors_are_viewed(torch, dtype):
    t = torch.arange(24).reshape(4, 6).to(getattr(torch, dtype))
    for view in (t, t[:, 1::2], t.t()):
        got = as_array(view, "y_pred")
        assert got.__array_interface__["data"][0] == view.data_ptr()
        assert got.strides == tuple(s * view.element_size() for s in view.stride())
        np.testing.assert_array_equal(got, view.numpy())


def test_torch_tensor_requiring_grad_is_viewed(torch):
    t = torch.randn(3, 4, requires_grad=True)
    got = as_array(t, "y_pred")
    assert got.__array_interface__["data"][0] == t.data_ptr()


def test_torch_bfloat16_is_viewed_as_ml_dtypes(torch):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    t = torch.randn(4, 6).to(torch.bfloat16)[:, ::2]
    got = as_array(t, "y_pred")
    assert got.dtype == ml_dtypes.bfloat16
    assert got.__array_interface__["data"][0] == t.data_ptr()
    np.testing.assert_array_equal(got.astype(np.float32), t.float().numpy())


def test_torch_negative_view_is_resolved(torch):
    t = torch.tensor([1.0, -2.0, 3.0])._neg_view()
    np.testing.assert_array_equal(as_array(t, "y_pred"), [-1.0, 2.0, -3.0])


def test_torch_tensor_off_the_cpu_is_refused(torch):
    with pytest.raises(ValueError, match="^y_pred: expected a tensor on the CPU, got one on device meta"):
        as_array(torch.empty(3, device="meta"), "y_pred")


def test_torch_sparse_tensor_is_refused(torch):
    with pytest.raises(ValueError, match="^y_pred: expected a dense"):
        as_array(torch.eye(3).to_sparse(), "y_pred")


def test_torch_complex_tensor_goes_through_to_the_dtype_check(torch):
    with pytest.raises(TypeError, match="^y_pred: expected a float16, float32, float64 or bfloat16"):
        fastxent.binary_crossentropy(np.zeros(2), torch.zeros(2, dtype=torch.complex64))


def test_public_losses_take_torch_tensors(torch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g, requires_grad=True)
    y = torch.randint(0, 5, (6,), generator=g)
    want = fastxent.sparse_categorical_crossentropy(y.numpy(), x.detach().numpy(), from_logits=True)
    assert fastxent.sparse_categorical_crossentropy(y, x, from_logits=True) == want
    w = torch.rand(5, generator=g)
    want = fastxent.sparse_categorical_crossentropy(y.numpy(), x.detach().numpy(), from_logits=True, class_weight=w.numpy())
    assert fastxent.sparse_categorical_crossentropy(y, x, from_logits=True, class_weight=w) == want


def test_public_losses_take_torch_bfloat16(torch):
    pytest.importorskip("ml_dtypes")
    x = torch.randn(6, 5).to(torch.bfloat16)
    y = torch.randint(0, 5, (6,))
    want = fastxent.sparse_categorical_crossentropy(y.numpy(), x.float().numpy(), from_logits=True)
    np.testing.assert_allclose(fastxent.sparse_categorical_crossentropy(y, x, from_logits=True), want, rtol=1e-6)


# --------------------------------------------------------------------------- jax


def test_jax_arrays(monkeypatch):
    jnp = pytest.importorskip("jax.numpy")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    a = jnp.arange(12.0).reshape(3, 4)
    got = as_array(a, "y_pred")
    np.testing.assert_array_equal(got, np.arange(12.0).reshape(3, 4))
    assert got.__array_interface__["data"][0] == a.unsafe_buffer_pointer()
    b = a.astype(jnp.bfloat16)  # NumPy's DLPack import has no bfloat16: through __array__
    got = as_array(b, "y_pred")
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got.astype(np.float32), np.arange(12.0).reshape(3, 4))
