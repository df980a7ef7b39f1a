"""NumPy views of other libraries' arrays: torch tensors, DLPack and ``__array__`` objects.

:func:`as_array` turns what a caller passes into the ``np.ndarray`` the losses read,
without a copy wherever the memory can be viewed as it is. It never imports torch
(a tensor can only exist once its library is imported), so ``import fastxent`` stays
free of optional dependencies.

=====================================================  ===========================  =====================
input                                                  how                          copied?
=====================================================  ===========================  =====================
``np.ndarray``                                         itself                       never
torch CPU tensor, NumPy dtype (float16/32/64, ints,    ``t.detach().numpy()``       never (strides kept,
bool)                                                                               non-contiguous too)
torch CPU ``bfloat16`` tensor                          ``int16`` view, seen as      never (needs
                                                       ``ml_dtypes.bfloat16``       ``ml_dtypes``)
torch tensor with its negative bit set (``_neg_view``) ``resolve_neg()``            once
torch tensor not on the CPU, or not strided (sparse)   ``ValueError``               --
other ``__dlpack__`` object on the CPU                 ``np.from_dlpack``           never
the same with a dtype NumPy's DLPack lacks (bfloat16)  ``np.asarray`` (its          as its ``__array__``
                                                       ``__array__``)               does (JAX: never)
``__dlpack__`` object on another device (CUDA, ...)    ``ValueError``               --
other object with ``__array__``                        ``np.asarray``               as its ``__array__``
                                                                                    does
anything else (lists, scalars)                         ``np.asarray``               a new array
=====================================================  ===========================  =====================

>>> import numpy as np
>>> from fastxent._interop import as_array
>>> a = np.arange(6.0).reshape(2, 3)
>>> as_array(a, "y_pred") is a
True
>>> class Wrapped:
...     def __init__(self, data):
...         self.data = data
...     def __array__(self, dtype=None, copy=None):
...         return self.data
>>> np.shares_memory(as_array(Wrapped(a), "y_pred"), a)
True
"""

from __future__ import annotations

import sys

import numpy as np

# DLPack device types whose memory the CPU reads: kDLCPU, kDLCUDAHost (pinned), kDLROCMHost.
_CPU_DEVICES = {1: "cpu", 3: "cuda_host", 11: "rocm_host"}
_DEVICE_NAMES = {2: "cuda", 4: "opencl", 7: "vulkan", 8: "metal", 9: "vpi", 10: "rocm", 13: "cuda_managed", 14: "oneapi"}


def as_array(obj, name: str) -> np.ndarray:
    """``obj`` as a NumPy array, without a copy where its layout allows (table above).

    ``name`` is the argument's name, used in error messages.
    """
    if isinstance(obj, np.ndarray):
        return obj
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return _from_torch(obj, name, torch)
    if hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__"):
        return _from_dlpack(obj, name)
    return np.asarray(obj)


def _from_torch(t, name: str, torch) -> np.ndarray:
    if t.is_cpu and t.dtype != torch.bfloat16:
        try:  # the usual case: a dense CPU tensor of a NumPy dtype
            return t.detach().numpy()
        except (RuntimeError, TypeError):
            pass  # the checks below say why
    if t.device.type != "cpu":
        raise ValueError(
            f"{name}: expected a tensor on the CPU, got one on device {t.device} "
            f"(move it with .cpu(), or use torch's own loss on that device)"
        )
    if t.layout != torch.strided:
        raise ValueError(f"{name}: expected a dense (strided) tensor, got layout {t.layout} (use .to_dense())")
    t = t.detach()
    if t.is_neg():  # a lazily negated view (torch's negative bit): NumPy cannot see it
        t = t.resolve_neg()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_bfloat16(name))
    try:
        return t.numpy()
    except TypeError as exc:  # a dtype NumPy has no counterpart for
        raise TypeError(f"{name}: expected a tensor of a NumPy dtype or bfloat16, got dtype {t.dtype}") from exc


def _bfloat16(name: str) -> np.dtype:
    try:
        import ml_dtypes
    except ImportError:
        raise TypeError(
            f"{name}: a bfloat16 tensor needs the ml_dtypes package to be read without a copy "
            "(pip install ml_dtypes), or convert it with .float()"
        ) from None
    return np.dtype(ml_dtypes.bfloat16)


def _from_dlpack(obj, name: str) -> np.ndarray:
    device_type, device_id = obj.__dlpack_device__()
    device_type = int(device_type)
    if device_type not in _CPU_DEVICES:
        where = _DEVICE_NAMES.get(device_type, f"DLPack device type {device_type}")
        raise ValueError(
            f"{name}: expected an array on the CPU, got one on device {where}:{device_id} "
            "(copy it to host memory first)"
        )
    try:
        return np.from_dlpack(obj)
    except (RuntimeError, BufferError, TypeError):
        # NumPy's DLPack import lacks some dtypes (bfloat16): ask __array__ instead.
        if hasattr(obj, "__array__"):
            return np.asarray(obj)
        raise TypeError(
            f"{name}: NumPy cannot import this {type(obj).__name__} through DLPack (its dtype?) and it has "
            "no __array__ method"
        ) from None
