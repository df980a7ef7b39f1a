# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython kernels (OpenMP when the build has it).

Inputs are validated by the public layer before they reach these functions, so
bounds and wrap-around checks are off. Indices are Py_ssize_t: N x C can pass 2^31.
"""

from cython.parallel cimport prange
from libc.math cimport log
from libc.stdint cimport int64_t

import numpy as np

cdef extern from "_csrc/fx_openmp.h":
    int FX_OPENMP
    int fx_omp_max_threads() nogil

ctypedef fused real:
    float
    double

ctypedef fused label_t:
    signed char
    short
    int
    long long
    unsigned char
    unsigned short
    unsigned int
    unsigned long long


def openmp_enabled():
    """Whether this extension was compiled with OpenMP (else its loops run serially)."""
    return bool(FX_OPENMP)


def omp_max_threads():
    """omp_get_max_threads(): follows OMP_NUM_THREADS and threadpoolctl limits."""
    return fx_omp_max_threads()


def sparse_gather_log(const real[:, :, :] x, const label_t[:, :] labels,
                      const double[:] class_weight, int64_t ignore_index, double epsilon,
                      double[:, ::1] loss_out, int threads):
    """Sparse loss from probabilities without label smoothing: one read per row.

    ``loss_out[o, i] = -w_y * log(clip(x[o, y, i], eps, 1 - eps))`` with the clip in
    the input's dtype. Returns the flat index of the first row whose gathered
    probability lies outside [0, 1] (NaN is not), or -1.
    """
    cdef Py_ssize_t inner = x.shape[2], n = x.shape[0] * inner
    cdef Py_ssize_t chunks = max(1, threads), chunk, start, stop, r, o, i
    cdef Py_ssize_t[::1] first_bad = np.full(chunks, -1, dtype=np.intp)
    cdef int64_t y
    cdef real p
    cdef real lo = <real>epsilon
    cdef real hi = <real>1 - lo
    # One contiguous range of rows per chunk: each chunk records its own first bad
    # row, so the answer is the same whatever the thread count.
    for chunk in prange(chunks, nogil=True, schedule="static", num_threads=threads):
        start = chunk * n // chunks
        stop = (chunk + 1) * n // chunks
        for r in range(start, stop):
            o = r // inner
            i = r - o * inner
            y = <int64_t>labels[o, i]
            if y == ignore_index:
                loss_out[o, i] = 0.0
                continue
            p = x[o, y, i]
            if p < 0 or p > 1:
                if first_bad[chunk] < 0:
                    first_bad[chunk] = r
                continue
            if p < lo:  # comparisons, not fmin/fmax: NaN must stay NaN
                p = lo
            elif p > hi:
                p = hi
            loss_out[o, i] = -class_weight[y] * log(<double>p)
    for chunk in range(chunks):
        if first_bad[chunk] >= 0:
            return first_bad[chunk]
    return -1
