# The extension's compiled API for fastxent/_fastcall.pyx (cimported from there):
# what a plain public sparse call runs without Python in between. See the
# definitions in _cython_ext.pyx.
from libc.stdint cimport int64_t

cdef enum:
    PLAIN_MAX_CLASSES = 32768  # classes run_plain_sparse accepts (its unit class weights)
    PLAIN_STACK_ROWS = 4096  # up to this many rows on one thread: losses on the stack

cpdef settings_key(backend_var, threads_var)

cdef double pairwise_sum(const double *a, Py_ssize_t n) noexcept nogil

cdef Py_ssize_t valid_label_rows(const char *labels, bint labels64, Py_ssize_t n, Py_ssize_t c,
                                 int64_t ignore, bint has_ignore) noexcept nogil

cdef Py_ssize_t run_plain_sparse(const char *x, bint float64, Py_ssize_t n, Py_ssize_t c,
                                 const char *labels, bint labels64, int64_t ignore, double epsilon,
                                 bint from_logits, double *grad_scale, char *grad, int threads,
                                 double *block_sums) except -2 nogil
