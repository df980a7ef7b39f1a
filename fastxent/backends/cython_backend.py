"""The Cython backend: C kernels with OpenMP threads and a SIMD table per instruction set.

The numeric code lives in ``_csrc/`` (one definition per quantity in ``fx_math.h``,
one file per kernel family -- ``fx_softmax.h``, ``fx_probs.h``, ``fx_gather.h``,
``fx_binary.h`` -- compiled for SSE2, AVX2 and AVX-512, the widest table the CPU
runs chosen at import; ``FASTXENT_SIMD=default|avx2|avx512`` forces one). ``_cython_ext.pyx`` reads the arrays through the NumPy C API (no buffer
acquisition: a call's fixed cost is a fraction of a microsecond), normalises the
layout and runs the rows or columns in an OpenMP ``prange``.
"""

from __future__ import annotations

from ._common import compiled_dtype_reason

NAME = "cython"

try:
    from . import _cython_ext
except ImportError as exc:  # a source checkout that was never built
    _cython_ext = None
    _IMPORT_ERROR = str(exc)



def unavailable_reason() -> str | None:
    if _cython_ext is None:
        return f"the compiled extension is missing ({_IMPORT_ERROR}); reinstall with `pip install .`"
    return None


#: y_pred dtypes the kernels read (float16 and bfloat16 in float32, never copied whole).
X_DTYPES = ("float16", "bfloat16", "float32", "float64")


def unsupported_reason(problem) -> str | None:
    return compiled_dtype_reason(problem, "Cython", X_DTYPES)


def simd_active() -> str | None:
    """The instruction-set table the kernels run here ("avx512", "avx2", "default"),
    or None without the extension."""
    return None if _cython_ext is None else _cython_ext.simd_info()["active"]


def openmp_limit() -> int | None:
    """``omp_get_max_threads()`` of the extension's OpenMP runtime (it follows
    ``OMP_NUM_THREADS`` and threadpoolctl limits), or None without one."""
    if _cython_ext is None or not _cython_ext.openmp_enabled():
        return None
    return _cython_ext.omp_max_threads()


def settings_key_function():
    """The extension's ``settings_key(backend_var, threads_var)`` (a settings
    fingerprint read in C), or None in a source tree without the extension."""
    return None if _cython_ext is None else _cython_ext.settings_key


def info() -> dict:
    simd = _cython_ext.simd_info()
    openmp = "yes" if _cython_ext.openmp_enabled() else "NO (built without OpenMP: kernels run serially)"
    return {
        "OpenMP": openmp,
        "OpenMP probe": _cython_ext.OPENMP_PROBE,
        "SIMD": f"{simd['active']} (compiled: {', '.join(simd['compiled'])}; "
        f"this CPU runs: {', '.join(simd['cpu_supports'])})",
        "flags": _cython_ext.BUILD_CFLAGS,
    }


KERNELS = (
    {}
    if _cython_ext is None
    else {
        name: getattr(_cython_ext, name)
        for name in (
            "sparse_from_logits",
            "sparse_from_probs",
            "categorical_from_logits",
            "categorical_from_probs",
            "binary_from_logits",
            "binary_from_probs",
        )
    }
)
