# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled form of a plain public sparse call.

``sparse_categorical_crossentropy`` asks :func:`sparse_call` first. It runs the call
the general path would run -- the dispatcher's plan, the same checks, the same kernel,
the same reduction -- without Python in between, or returns None and the general
path runs (and raises, for a bad input). It serves a call when:

* its arguments are plain: a C-contiguous, aligned, native float32/float64 2-D
  ``y_pred`` with its class axis last, C-contiguous 1-D int32/int64 labels, no class
  or sample weights, no label smoothing, the default epsilon, ``reduction``
  mean/sum, and ``grad_out`` None or, from logits, a plain array of y_pred's shape
  and dtype, writeable, that is y_pred itself or shares no byte with y_pred or the
  labels (``check_grad_out``'s rules, which for C-contiguous arrays come down to
  address ranges; anything else goes to the general path, which decides). For such
  a call every check of ``_validate`` comes down to the labels' range (checked
  here, with the same rule), the probabilities' range (the kernel's, as in the
  general path; a ``grad_out`` must be left untouched by a refused call, so
  probabilities with one go to the general path) and the probabilities-as-logits
  hint (a first row that could trigger it goes to the general path, which decides);
* the dispatcher has already planned a call with the same signature and chose Cython
  (``_dispatch`` memoises every plan): its thread count is used. The first call of a
  signature therefore always takes the general path, and ``fastxent.explain`` reports
  exactly what this runs.

The loss is the pairwise sum of the kernel's block sums (``_reduce.total``'s bits),
divided by the count of non-ignored rows for the mean; the gradient is scaled by
``1 / count`` (mean) or 1 (sum), as ``_reduce.grad_weight``.
"""

from libc.stdint cimport int64_t
cimport numpy as cnp

from fastxent.backends._cython_ext cimport PLAIN_MAX_CLASSES, pairwise_sum, run_plain_sparse, settings_key
from fastxent.backends._cython_ext cimport valid_label_rows

import numpy as np

from . import _config, _dispatch, _reduce

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    object PyArray_Scalar(void *data, cnp.dtype descr, object base)

cdef enum:
    MAX_BLOCKS = 256  # block sums kept on the stack: 256 * BLOCK_ROWS rows at most

cdef Py_ssize_t BLOCK_ROWS = _reduce.BLOCK_ROWS
cdef double DEFAULT_EPSILON = 1e-7
cdef dict _choices = _dispatch._choices  # the dispatcher's plans, by call signature
cdef object _backend_var = _config._backend_var
cdef object _threads_var = _config._threads_var
cdef object _dtype_f32 = np.dtype(np.float32)
cdef object _dtype_f64 = np.dtype(np.float64)


cdef inline bint _plain_array(object a, int ndim) noexcept:
    """An exact ndarray of ``ndim`` dimensions, C-contiguous, aligned, native order."""
    return (cnp.PyArray_CheckExact(a) and cnp.PyArray_NDIM(<cnp.ndarray>a) == ndim
            and cnp.PyArray_ISCARRAY_RO(<cnp.ndarray>a) and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>a))


cdef inline bint _disjoint(cnp.ndarray a, cnp.ndarray b) noexcept:
    """Whether two C-contiguous arrays share no byte."""
    cdef size_t a0 = <size_t>cnp.PyArray_DATA(a), b0 = <size_t>cnp.PyArray_DATA(b)
    return a0 + <size_t>cnp.PyArray_NBYTES(a) <= b0 or b0 + <size_t>cnp.PyArray_NBYTES(b) <= a0


cdef bint _plain_grad_out(object g, cnp.ndarray x, cnp.ndarray lab) noexcept:
    """Whether ``grad_out`` passes ``check_grad_out`` as a plain array: y_pred's shape
    and dtype, writeable, and y_pred itself or apart from it and from the labels (a
    C-contiguous array cannot overlap itself)."""
    if not _plain_array(g, 2):
        return False
    cdef cnp.ndarray ga = <cnp.ndarray>g
    if not (cnp.PyArray_ISWRITEABLE(ga) and cnp.PyArray_TYPE(ga) == cnp.PyArray_TYPE(x)
            and ga.shape[0] == x.shape[0] and ga.shape[1] == x.shape[1]):
        return False
    if not _disjoint(ga, lab):
        return False
    return cnp.PyArray_DATA(ga) == cnp.PyArray_DATA(x) or _disjoint(ga, x)


cdef int _planned_threads(object backend, object threads, object from_logits, object return_grad,
                          cnp.ndarray x, Py_ssize_t n, Py_ssize_t c) except -1:
    """The threads of the dispatcher's plan for this call's signature if it chose
    Cython, else 0. The key is ``_dispatch._signature``'s: the raw arguments stand
    for the validated ones the general path keys on, as they are the same objects
    for the calls that reach here (exact bools, label smoothing 0, a C-ordered 2-D
    y_pred seen as (n, c, 1))."""
    key = (backend, threads, settings_key(_backend_var, _threads_var), "sparse", from_logits, True,
           return_grad, (n, c, 1), (<object>x).dtype, False)
    choice = _choices.get(key)
    if choice is None or choice[0] != "cython":
        return 0
    return <int>choice[1]


cdef bint _may_be_probabilities(cnp.ndarray x, Py_ssize_t c) noexcept:
    """Whether the first row lies in [0, 1] and sums to 1 within 1e-3: the necessary
    condition of ``_validate.warn_if_probabilities``, which then decides."""
    cdef Py_ssize_t j
    cdef double v, total = 0
    if c < 2:
        return False
    for j in range(c):
        if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT:
            v = (<const float *>cnp.PyArray_DATA(x))[j]
        else:
            v = (<const double *>cnp.PyArray_DATA(x))[j]
        if not (0 <= v <= 1):
            return False
        total += v
    return -1e-3 <= total - 1 <= 1e-3


def sparse_call(y_true, y_pred, from_logits, label_smoothing, ignore_index, class_weight, sample_weight,
                axis, reduction, epsilon, return_grad, grad_out, backend, threads):
    """The result of a plain sparse call (see the module docstring), or None."""
    cdef cnp.ndarray x, lab
    cdef Py_ssize_t n, c, count, n_blocks
    cdef int64_t ignore = -1
    cdef int xt, lt, nt
    cdef bint mean, float64, labels64, logits, grad_wanted
    cdef double total, grad_scale
    cdef float f
    cdef double sums[MAX_BLOCKS]
    cdef Py_ssize_t bad
    cdef char *grad_data = NULL
    cdef cnp.ndarray g = None
    if not (_plain_array(y_pred, 2) and _plain_array(y_true, 1)):
        return None
    if class_weight is not None or sample_weight is not None:
        return None
    if grad_out is not None and not (return_grad is True and from_logits is True):
        return None
    if not ((return_grad is False or return_grad is True) and (from_logits is True or from_logits is False)):
        return None
    if not ((type(label_smoothing) is float or type(label_smoothing) is int) and label_smoothing == 0):
        return None
    if not (type(axis) is int and (axis == -1 or axis == 1)):
        return None
    if not (type(epsilon) is float and epsilon == DEFAULT_EPSILON):
        return None
    if type(reduction) is not str:
        return None
    mean = reduction == "mean" or reduction == "sum_over_batch_size"
    if not (mean or reduction == "sum"):
        return None
    if ignore_index is not None:
        if not (type(ignore_index) is int and -(1 << 62) < ignore_index < (1 << 62)):
            return None
        ignore = ignore_index
    x = <cnp.ndarray>y_pred
    lab = <cnp.ndarray>y_true
    if grad_out is not None and not _plain_grad_out(grad_out, x, lab):
        return None
    xt = cnp.PyArray_TYPE(x)
    lt = cnp.PyArray_TYPE(lab)
    n = x.shape[0]
    c = x.shape[1]
    if not (xt == cnp.NPY_FLOAT or xt == cnp.NPY_DOUBLE) or n < 1 or c < 1 or lab.shape[0] != n:
        return None
    if c > PLAIN_MAX_CLASSES or (n + BLOCK_ROWS - 1) // BLOCK_ROWS > MAX_BLOCKS:
        return None
    labels64 = cnp.PyArray_ITEMSIZE(lab) == 8
    if not ((lt == cnp.NPY_LONG or lt == cnp.NPY_LONGLONG or lt == cnp.NPY_INT)
            and (labels64 or cnp.PyArray_ITEMSIZE(lab) == 4)):
        return None
    nt = _planned_threads(backend, threads, from_logits, return_grad, x, n, c)
    if nt < 1:
        return None
    count = valid_label_rows(<const char *>cnp.PyArray_DATA(lab), labels64, n, c, ignore, ignore_index is not None)
    if count < 0:
        return None  # a label out of range: the general path raises
    logits = from_logits is True
    if logits and _may_be_probabilities(x, c):
        return None
    float64 = xt == cnp.NPY_DOUBLE
    grad_wanted = return_grad is True
    if grad_wanted:
        g = <cnp.ndarray>np.empty((n, c), dtype=x.dtype) if grad_out is None else <cnp.ndarray>grad_out
        grad_data = <char *>cnp.PyArray_DATA(g)
    grad_scale = (0.0 if count == 0 else 1.0 / <double>count) if mean else 1.0
    n_blocks = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
    with nogil:
        bad = run_plain_sparse(<const char *>cnp.PyArray_DATA(x), float64, n, c,
                               <const char *>cnp.PyArray_DATA(lab), labels64, ignore, DEFAULT_EPSILON,
                               logits, &grad_scale, grad_data, nt, sums)
        total = pairwise_sum(sums, n_blocks)
    if bad >= 0:
        return None  # a probability out of range: the general path raises
    if mean:
        total = 0.0 if count == 0 else total / <double>count
    if float64:
        loss = PyArray_Scalar(&total, _dtype_f64, None)
    else:
        f = <float>total
        loss = PyArray_Scalar(&f, _dtype_f32, None)
    return (loss, g) if grad_wanted else loss
