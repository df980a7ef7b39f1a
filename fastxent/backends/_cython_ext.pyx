# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython kernels of the fastxent kernel table (see KERNELS.md).

The six ``def`` kernels take the canonical ``(O, C, I)`` views and return the flat
index of the first row holding a probability outside [0, 1], or -1. Inputs are
validated by the public layer first: bounds and wrap-around checks are off.

How a call runs:

* The arguments are read through the NumPy C API (data pointer, byte strides,
  type number): no buffer or memoryview is acquired, so a small call costs little
  more than its arithmetic. Read-only and memory-mapped arrays are only read
  (nothing asks for a writable buffer); float16 and bfloat16 (ml_dtypes) are
  read as their bits and converted in the kernel.
* The layout is normalised (``I == 1`` and mergeable ``(O, I)`` become one long
  inner axis), then one of two forms runs: **rows** (class axis at any stride;
  contiguous rows are used in place, anything else goes through a per-block
  buffer) or **columns** (inner axis contiguous, e.g. Fortran ``(1, C, N)`` or
  ``(N, C, H*W)``: vectorised across rows).
* The numeric kernels are C (``_csrc/``, one file per kernel family), compiled
  once per ISA (SSE2, AVX2+FMA, AVX-512) and picked at import. Threads come from
  the extension's own pool (``_csrc/fx_pool.c``, not OpenMP regions): the rows
  are cut into items of whole tasks (or fixed blocks, for block sums) that the
  calling thread and ``threads - 1`` pool threads claim one at a time, and a call
  returns once every item has run, never waiting for a thread that had not
  started (another process may hold its core). Outputs are per row, so the
  thread count never changes a result; the first bad row is the lowest found.
* The sparse gather-log (from probabilities, no label smoothing) runs over flat
  row ranges (``_csrc/fx_gather.h``): one read per row, whatever C is.
"""

from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset, strcmp, strdup, strncmp
cimport numpy as cnp
from cpython.contextvars cimport get_value

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    enum:
        NPY_HALF
        NPY_USERDEF

cdef extern from "_csrc/fx_build_config.h":
    const char *FX_BUILD_OPENMP_PROBE
    const char *FX_BUILD_CFLAGS

cdef extern from "_csrc/fx_openmp.h":
    int FX_OPENMP
    int fx_omp_max_threads() nogil

cdef extern from "_csrc/fx_common.h":
    ctypedef Py_ssize_t fx_ssize
    enum:
        FX_BOOL, FX_I8, FX_U8, FX_I16, FX_U16, FX_I32, FX_U32, FX_I64, FX_U64
        FX_F16, FX_F32, FX_F64, FX_BF16
        FX_LANES
        FX_TILE
        FX_LEAF
        FX_SHORT_C
        #: Rows per fixed block of the float64 sums (fastxent._constants.BLOCK_ROWS).
        BLOCK_ROWS "FX_BLOCK_ROWS"
    ctypedef struct fx_arr3:
        char *data
        fx_ssize so, sc, si
        int dtype
    ctypedef struct fx_call:
        fx_ssize n_o, n_c, n_i
        fx_arr3 x, t, g
        int dense
        const char *gw
        fx_ssize gw_so, gw_si
        double *loss
        fx_ssize loss_r0
        const double *cw
        int cw_uniform
        double cw0, cw_sum
        const char *pw
        fx_ssize pw_sc, pw_si
        int pw_const
        double pw0
        double ls, eps
        double ls_per_c
        int stream_loss
        int leaf_sums
        const char *lab
        fx_ssize lab_so, lab_si
        int lab_dtype
        int64_t ignore
        double z_loss, softcap
        char *lse
        fx_ssize lse_so, lse_si
        char *rank
        fx_ssize rank_so, rank_si
    ctypedef int (*fx_row_fn)(const fx_call *k, fx_ssize o, fx_ssize i, fx_ssize y) noexcept nogil
    ctypedef fx_ssize (*fx_cols_fn)(const fx_call *k, fx_ssize o, fx_ssize i0, fx_ssize n) noexcept nogil
    ctypedef fx_ssize (*fx_range_fn)(const fx_call *k, fx_ssize r0, fx_ssize r1) noexcept nogil
    ctypedef struct fx_table:
        const char *name
        fx_row_fn logits_row[2]
        fx_cols_fn logits_cols[2]
        fx_row_fn logits_x_row[2]
        fx_cols_fn logits_x_cols[2]
        fx_row_fn logits_bf16_row
        fx_row_fn logits_x_bf16_row
        fx_range_fn logits_short[2]
        fx_row_fn probs_row[2]
        fx_cols_fn probs_cols[2]
        fx_row_fn bce_logits_row[2]
        fx_cols_fn bce_logits_cols[2]
        fx_row_fn bce_probs_row[2]
        fx_cols_fn bce_probs_cols[2]
        fx_range_fn gather[2]
        void (*vexp_f32)(const float *x, float *y, fx_ssize n, int kind) noexcept nogil
        void (*vexp_f64)(const double *x, double *y, fx_ssize n, int kind) noexcept nogil
        void (*vlog_f32)(const float *x, float *y, fx_ssize n) noexcept nogil
        void (*vlog_f64)(const double *x, double *y, fx_ssize n) noexcept nogil
        double (*read_sum_f32)(const float *x, fx_ssize n) noexcept nogil
        double (*pairwise_sum_f64)(const double *a, fx_ssize n) noexcept nogil
        fx_ssize (*valid_label_rows)(const char *lab, int labels64, fx_ssize n, fx_ssize c, int64_t ignore,
                                     int has_ignore) noexcept nogil
    const fx_table *fx_active() noexcept nogil
    int fx_select(const char *name) noexcept nogil
    const char *fx_compiled_isas() noexcept nogil
    int fx_cpu_has(const char *name) noexcept nogil
    void fx_fork_guard_install() noexcept nogil
    int fx_in_forked_child() noexcept nogil
    void fx_note_parallel_use() noexcept nogil

import os as _os
import numpy as np

# -------------------------------------------------------------------------- build facts

#: What setup.py's OpenMP probe found (compile, link and run a test program).
OPENMP_PROBE = FX_BUILD_OPENMP_PROBE.decode()
#: Compiler flags the extension was built with.
BUILD_CFLAGS = FX_BUILD_CFLAGS.decode()


def openmp_enabled():
    """Whether this extension was compiled with OpenMP (else its loops run serially)."""
    return bool(FX_OPENMP)


def omp_max_threads():
    """omp_get_max_threads(): follows OMP_NUM_THREADS and threadpoolctl limits (1 without OpenMP)."""
    return fx_omp_max_threads()


cdef char *_settings_seen[3]  # the environment values the cached key was built from
cdef int _settings_omp = -1
cdef object _settings_key = None  # the key returned while nothing changed
cdef object _backend_seen = None  # the config() backend and threads it was built from
cdef object _threads_seen = None
cdef object _settings_ids = {}  # settings tuple -> its key (an int never reused)
cdef Py_ssize_t _settings_next_id = 0
cdef extern from *:
    char **environ


cdef inline bint _same_text(const char *a, const char *b) noexcept nogil:
    return (a == NULL and b == NULL) or (a != NULL and b != NULL and strcmp(a, b) == 0)


cdef void _settings_env(const char **now) noexcept nogil:
    """The values of FASTXENT_BACKEND, FASTXENT_NUM_THREADS and OMP_NUM_THREADS (NULL
    when unset), found in one pass over the environment (three getenv calls would
    make three)."""
    cdef char **e = environ
    cdef const char *p
    now[0] = now[1] = now[2] = NULL
    while e[0] != NULL:
        p = e[0]
        if p[0] == b'F' and strncmp(p, b"FASTXENT_", 9) == 0:
            if strncmp(p + 9, b"BACKEND=", 8) == 0 and now[0] == NULL:
                now[0] = p + 17
            elif strncmp(p + 9, b"NUM_THREADS=", 12) == 0 and now[1] == NULL:
                now[1] = p + 21
        elif p[0] == b'O' and strncmp(p, b"OMP_NUM_THREADS=", 16) == 0 and now[2] == NULL:
            now[2] = p + 16
        e += 1


cpdef settings_key(backend_var, threads_var):
    """What the default backend and thread count depend on -- the values of the
    ``config()`` context variables given (backend, threads), ``FASTXENT_BACKEND``,
    ``FASTXENT_NUM_THREADS``, ``OMP_NUM_THREADS`` and ``omp_get_max_threads()`` -- as a
    small int: equal ints, equal settings. The dispatcher keys its memo on it, so a
    change to any of them is seen at once. Read in C; the int is cached while
    nothing changed."""
    global _settings_key, _settings_omp, _settings_next_id, _backend_seen, _threads_seen
    cdef const char *now[3]
    cdef int i, omp = fx_omp_max_threads()
    cdef object backend = get_value(backend_var)
    cdef object threads = get_value(threads_var)
    cdef bint same = (_settings_key is not None and omp == _settings_omp
                      and backend is _backend_seen and threads is _threads_seen)
    _settings_env(now)
    for i in range(3):
        same = same and _same_text(now[i], _settings_seen[i])
    if same:
        return _settings_key
    for i in range(3):
        free(_settings_seen[i])
        _settings_seen[i] = strdup(now[i]) if now[i] != NULL else NULL
    _settings_omp = omp
    _backend_seen = backend
    _threads_seen = threads
    env = [None if now[i] == NULL else <bytes>now[i] for i in range(3)]
    state = (backend, threads, env[0], env[1], env[2], omp)
    key = _settings_ids.get(state)
    if key is None:
        if len(_settings_ids) >= 4096:
            _settings_ids.clear()  # ids keep counting up: an old key never comes back
        key = _settings_ids[state] = _settings_next_id
        _settings_next_id += 1
    _settings_key = key
    return key


def simd_info():
    """Which kernel table runs (``active``), which were compiled and which this CPU can run."""
    compiled = fx_compiled_isas().decode().split(",")
    return {
        "active": fx_active().name.decode(),
        "compiled": compiled,
        "cpu_supports": [isa for isa in compiled if fx_cpu_has(isa.encode())],
        "forced": _os.environ.get("FASTXENT_SIMD", "") not in ("", "auto"),
    }


def _set_simd(name):
    """Test hook: run the ``name`` table ("default", "avx2", "avx512" or "auto").

    Raises ValueError for a table that was not compiled or that this CPU cannot run.
    """
    cdef int rc = fx_select(name.encode())
    if rc == -1:
        raise ValueError(f"no kernel table {name!r} in this build ({fx_compiled_isas().decode()})")
    if rc == -2:
        raise ValueError(f"this CPU cannot run the {name!r} kernel table")
    return fx_active().name.decode()


def _in_forked_child():
    """True in a child forked after this process used OpenMP: kernels run serially there."""
    return bool(fx_in_forked_child())


# -------------------------------------------------------------------------- array access

#: loss_out larger than this is written with non-temporal stores (column kernels).
cdef fx_ssize STREAM_LOSS_BYTES = 8 << 20

cdef int _bfloat16_num = -1  # the type number NumPy gave ml_dtypes' bfloat16, once seen


cdef inline int _dtype_code(cnp.ndarray a) except -1:
    """The fx dtype code of ``a`` (native byte order only)."""
    global _bfloat16_num
    cdef int tn = cnp.PyArray_TYPE(a)
    cdef int size = cnp.PyArray_ITEMSIZE(a)
    if not cnp.PyArray_ISNOTSWAPPED(a):
        raise ValueError("fastxent kernels read native byte order only")
    if tn == cnp.NPY_FLOAT:
        return FX_F32
    if tn == cnp.NPY_DOUBLE:
        return FX_F64
    if tn == NPY_HALF:
        return FX_F16
    if tn == _bfloat16_num:
        return FX_BF16
    if tn >= NPY_USERDEF and size == 2 and (<object>a).dtype.name == "bfloat16":  # ml_dtypes
        _bfloat16_num = tn
        return FX_BF16
    if tn == cnp.NPY_BOOL:
        return FX_BOOL
    if tn in (cnp.NPY_BYTE, cnp.NPY_SHORT, cnp.NPY_INT, cnp.NPY_LONG, cnp.NPY_LONGLONG):
        return FX_I8 if size == 1 else FX_I16 if size == 2 else FX_I32 if size == 4 else FX_I64
    if tn in (cnp.NPY_UBYTE, cnp.NPY_USHORT, cnp.NPY_UINT, cnp.NPY_ULONG, cnp.NPY_ULONGLONG):
        return FX_U8 if size == 1 else FX_U16 if size == 2 else FX_U32 if size == 4 else FX_U64
    raise TypeError(f"unsupported dtype {(<object>a).dtype}")


cdef inline int _arr3(fx_arr3 *v, cnp.ndarray a, fx_ssize O, fx_ssize C, fx_ssize I) except -1:
    if cnp.PyArray_NDIM(a) != 3 or a.shape[0] != O or a.shape[1] != C or a.shape[2] != I:
        raise ValueError(f"expected an array of shape {(O, C, I)}, got {(<object>a).shape}")
    cdef cnp.npy_intp *st = cnp.PyArray_STRIDES(a)
    v.data = <char *>cnp.PyArray_DATA(a)
    v.so = st[0]
    v.sc = st[1]
    v.si = st[2]
    v.dtype = _dtype_code(a)
    return 0


cdef inline int _arr2(cnp.ndarray a, fx_ssize O, fx_ssize I, const char **data,
                      fx_ssize *so, fx_ssize *si) except -1:
    if cnp.PyArray_NDIM(a) != 2 or a.shape[0] != O or a.shape[1] != I:
        raise ValueError(f"expected an array of shape {(O, I)}, got {(<object>a).shape}")
    cdef cnp.npy_intp *st = cnp.PyArray_STRIDES(a)
    data[0] = <const char *>cnp.PyArray_DATA(a)
    so[0] = st[0]
    si[0] = st[1]
    return 0


cdef int _setup(fx_call *k, cnp.ndarray x, object targets, object labels, object class_weight,
                object pos_weight, cnp.ndarray grad_weight, cnp.ndarray loss_out, object grad_out,
                double ls, double eps, int64_t ignore, bint block_sums=False,
                object lse_out=None, object rank_out=None) except -1:
    """Fill ``k`` from the arguments (cheap: pointers, strides and type numbers).

    ``loss_out`` holds O*I per-row losses, or with ``block_sums`` one float64 sum
    per block of BLOCK_ROWS consecutive rows (see ``_run``). ``lse_out`` and
    ``rank_out`` (sparse from logits): (O, I) float64 and int64 outputs, or None."""
    cdef fx_ssize O, C, I, c, n_out
    cdef cnp.ndarray a
    cdef const double *w
    if cnp.PyArray_NDIM(x) != 3:
        raise ValueError(f"x must be 3-D (O, C, I), got {(<object>x).ndim}-D")
    O = x.shape[0]
    C = x.shape[1]
    I = x.shape[2]
    memset(k, 0, sizeof(fx_call))
    k.n_o, k.n_c, k.n_i = O, C, I
    k.ls, k.eps, k.ignore = ls, eps, ignore
    k.ls_per_c = ls / C if C > 0 else 0.0
    _arr3(&k.x, x, O, C, I)
    if k.x.dtype != FX_F16 and k.x.dtype != FX_F32 and k.x.dtype != FX_F64 and k.x.dtype != FX_BF16:
        raise TypeError(f"x must be float16, bfloat16, float32 or float64, got {(<object>x).dtype}")
    if targets is not None:
        k.dense = 1
        _arr3(&k.t, <cnp.ndarray?>targets, O, C, I)
    if labels is not None:
        a = <cnp.ndarray?>labels
        _arr2(a, O, I, &k.lab, &k.lab_so, &k.lab_si)
        k.lab_dtype = _dtype_code(a)
        if k.lab_dtype < FX_I8 or k.lab_dtype > FX_U64:
            raise TypeError(f"labels must have an integer dtype, got {(<object>a).dtype}")
    if grad_out is not None:
        _arr3(&k.g, <cnp.ndarray?>grad_out, O, C, I)
        if k.g.dtype != (FX_F64 if k.x.dtype == FX_F64 else FX_F32) and not (
                k.x.dtype == FX_BF16 and k.g.dtype == FX_BF16):
            raise TypeError("grad_out must be float64 for float64 input, float32 otherwise "
                            "(or bfloat16 for bfloat16 input)")
        if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>grad_out):
            raise ValueError("grad_out is read-only")
    _arr2(grad_weight, O, I, &k.gw, &k.gw_so, &k.gw_si)
    if cnp.PyArray_TYPE(grad_weight) != cnp.NPY_DOUBLE:
        raise TypeError("grad_weight must be float64")
    n_out = (O * I + BLOCK_ROWS - 1) // BLOCK_ROWS if block_sums else O * I
    if (cnp.PyArray_TYPE(loss_out) != cnp.NPY_DOUBLE or not cnp.PyArray_IS_C_CONTIGUOUS(loss_out)
            or cnp.PyArray_SIZE(loss_out) != n_out or not cnp.PyArray_ISWRITEABLE(loss_out)):
        what = "block sums" if block_sums else "per-row losses"
        raise ValueError(f"loss_out must be a writeable C-contiguous float64 array of {n_out} {what}")
    k.loss = <double *>cnp.PyArray_DATA(loss_out)
    k.stream_loss = O * I * 8 > STREAM_LOSS_BYTES
    if class_weight is not None:
        a = <cnp.ndarray?>class_weight
        if (cnp.PyArray_TYPE(a) != cnp.NPY_DOUBLE or cnp.PyArray_SIZE(a) != C
                or not cnp.PyArray_IS_C_CONTIGUOUS(a)):
            raise ValueError("class_weight must be a contiguous float64 array of C values")
        w = <const double *>cnp.PyArray_DATA(a)
        k.cw = w
        k.cw0 = w[0]
        k.cw_uniform = 1
        k.cw_sum = 0
        for c in range(C):  # O(C) once per call: hoists the weights out of the rows
            k.cw_sum += w[c]
            if w[c] != w[0]:
                k.cw_uniform = 0
    if pos_weight is not None:
        a = <cnp.ndarray?>pos_weight
        if cnp.PyArray_TYPE(a) != cnp.NPY_DOUBLE or cnp.PyArray_NDIM(a) != 2 or a.shape[0] != C or a.shape[1] != I:
            raise ValueError(f"pos_weight must be float64 of shape {(C, I)}")
        _arr2(a, C, I, &k.pw, &k.pw_sc, &k.pw_si)
        k.pw_const = (k.pw_sc == 0 or C == 1) and (k.pw_si == 0 or I == 1)
        memcpy(&k.pw0, k.pw, 8)
    if lse_out is not None:
        a = <cnp.ndarray?>lse_out
        _arr2(a, O, I, <const char **>&k.lse, &k.lse_so, &k.lse_si)
        if cnp.PyArray_TYPE(a) != cnp.NPY_DOUBLE or not cnp.PyArray_ISWRITEABLE(a):
            raise ValueError(f"lse_out must be a writeable float64 array of shape {(O, I)}")
    if rank_out is not None:
        a = <cnp.ndarray?>rank_out
        _arr2(a, O, I, <const char **>&k.rank, &k.rank_so, &k.rank_si)
        if _dtype_code(a) != FX_I64 or not cnp.PyArray_ISWRITEABLE(a):
            raise ValueError(f"rank_out must be a writeable int64 array of shape {(O, I)}")
    _normalise(k)
    return 0


cdef inline void _swap_axes(fx_call *k) noexcept nogil:
    """(O, C, 1) -> (1, C, O): the same rows in the same order, one long inner axis."""
    k.x.si = k.x.so
    k.t.si = k.t.so
    k.g.si = k.g.so
    k.lab_si = k.lab_so
    k.gw_si = k.gw_so
    k.lse_si = k.lse_so
    k.rank_si = k.rank_so
    k.pw_si = 0  # pos_weight[c, 0] for every row
    k.n_i = k.n_o
    k.n_o = 1


cdef void _normalise(fx_call *k) noexcept nogil:
    """Give the kernels the longest contiguous run of rows the strides allow."""
    cdef fx_ssize I = k.n_i
    if k.n_i == 1 and k.n_o > 1:
        _swap_axes(k)
        return
    if k.n_o > 1 and k.n_i > 1:
        # (O, C, I) whose o stride is I times its i stride (e.g. (N, 1, L) binary,
        # C-ordered): rows r = o*I + i sit at r * stride -- one inner axis of O*I.
        if k.x.so != I * k.x.si:
            return
        if k.dense and k.t.so != I * k.t.si:
            return
        if k.g.data != NULL and k.g.so != I * k.g.si:
            return
        if k.lab != NULL and k.lab_so != I * k.lab_si:
            return
        if k.gw_so != I * k.gw_si:
            return
        if k.lse != NULL and k.lse_so != I * k.lse_si:
            return
        if k.rank != NULL and k.rank_so != I * k.rank_si:
            return
        if k.pw != NULL and k.pw_si != 0:
            return
        k.n_i = k.n_o * I
        k.n_o = 1


cdef inline int _contig(char *p, fx_ssize stride, fx_ssize size) noexcept nogil:
    return stride == size and (<size_t>p) % size == 0


cdef inline fx_ssize _itemsize(int dtype) noexcept nogil:
    return 2 if dtype == FX_F16 or dtype == FX_BF16 else 4 if dtype == FX_F32 else 8


#: Rows of at most this many classes run as columns even when rows are contiguous:
#: one row per vector lane beats a vector over a 10-class row.
cdef fx_ssize SMALL_C = 16


cdef inline int _short_as_columns(const fx_call *k, bint softmax_logits) noexcept nogil:
    """Whether rows short enough to run one per vector lane do: up to SMALL_C classes,
    and up to twice that where a row is not whole SMALL_C-wide vectors (its masked
    tail costs as much as the rest) or for the softmax from logits (the row form's
    max, argmax and float64 sum across a vector outweigh its exps). Measured by the
    benchmarks' sparse-logits-4096x32 workloads; a whole 32-class row of the other
    kernels ran faster as a row."""
    if k.n_i < 16:
        return 0
    if k.n_c <= SMALL_C:
        return 1
    return k.n_c <= 2 * SMALL_C and (softmax_logits or k.n_c % SMALL_C != 0)


cdef inline int _use_columns(const fx_call *k, bint softmax_logits) noexcept nogil:
    """Columns when the inner axis is contiguous and the class axis is not (or C == 1),
    and for short rows (the lane loads gather with a stride).

    Decided from y_pred's layout alone, never from the gradient's: the row and the
    column forms sum a row's terms in different orders, and a loss must have the
    same bits whether or not a gradient is asked for. Both forms write a gradient
    of any layout."""
    cdef fx_ssize xsz = _itemsize(k.x.dtype)
    if k.n_i < 2:
        return 0
    if _short_as_columns(k, softmax_logits):
        return 1
    if not _contig(k.x.data, k.x.si, xsz):
        return 0
    if k.n_c == 1:
        return 1
    return not _contig(k.x.data, k.x.sc, xsz)


cdef inline fx_ssize _lanes(const fx_call *k) noexcept nogil:
    """Rows per column task: a tile of C x lanes values stays in L2 across passes.
    Strided lanes (row-major short rows) are gathered into the kernel's tile of
    FX_TILE values, kept between its passes when the task fits: lanes are cut to
    fit, or every pass would gather them again."""
    cdef fx_ssize w = (1 << 17) // (k.n_c * 4 + 1)
    if not _contig(k.x.data, k.x.si, _itemsize(k.x.dtype)) and w > FX_TILE // k.n_c:
        w = FX_TILE // k.n_c
    w = (w // 16) * 16
    if w < 16:
        w = 16
    if w > FX_LANES:
        w = FX_LANES
    return w


# -------------------------------------------------------------------------- drivers

cdef extern from "_csrc/fx_pool.h":
    ctypedef void (*fx_pool_fn)(void *ctx, fx_ssize item, int slot) noexcept nogil
    int fx_pool_run(fx_pool_fn fn, void *ctx, fx_ssize n_items, int workers) noexcept nogil
    int fx_pool_parallel() noexcept nogil
    int fx_pool_threads() noexcept nogil
    const char *fx_pool_kind() noexcept nogil
    int fx_pool_regions() noexcept nogil
    void fx_pool_region_next(int on) noexcept nogil
    void fx_pool_min(fx_ssize *p, fx_ssize v) noexcept nogil

ctypedef fused label_t:
    int8_t
    int16_t
    int32_t
    int64_t
    uint8_t
    uint16_t
    uint32_t
    uint64_t

cdef inline void _row_of(const fx_call *k, fx_ssize r, fx_ssize *o, fx_ssize *i) noexcept nogil:
    if k.n_o == 1:
        o[0] = 0
        i[0] = r
    else:
        o[0] = r // k.n_i
        i[0] = r - o[0] * k.n_i


cdef fx_ssize _rows_sparse(const fx_call *k, fx_row_fn fn, const label_t *lab,
                           fx_ssize r0, fx_ssize r1) noexcept nogil:
    """Rows r0..r1-1 of a sparse kernel; returns the first bad row or -1."""
    cdef fx_ssize r, o, i, y
    cdef label_t v
    for r in range(r0, r1):
        _row_of(k, r, &o, &i)
        v = (<const label_t *>(<const char *>lab + o * k.lab_so + i * k.lab_si))[0]
        y = -1 if <int64_t>v == k.ignore else <fx_ssize>v
        if fn(k, o, i, y):
            return r
    return -1


cdef fx_ssize _rows_dense(const fx_call *k, fx_row_fn fn, fx_ssize r0, fx_ssize r1) noexcept nogil:
    cdef fx_ssize r, o, i
    for r in range(r0, r1):
        _row_of(k, r, &o, &i)
        if fn(k, o, i, 0):
            return r
    return -1


cdef fx_ssize _rows(const fx_call *k, fx_row_fn fn, fx_ssize r0, fx_ssize r1) noexcept nogil:
    if k.lab == NULL:
        return _rows_dense(k, fn, r0, r1)
    cdef int d = k.lab_dtype
    if d == FX_I64:
        return _rows_sparse(k, fn, <const int64_t *>k.lab, r0, r1)
    if d == FX_I32:
        return _rows_sparse(k, fn, <const int32_t *>k.lab, r0, r1)
    if d == FX_I16:
        return _rows_sparse(k, fn, <const int16_t *>k.lab, r0, r1)
    if d == FX_I8:
        return _rows_sparse(k, fn, <const int8_t *>k.lab, r0, r1)
    if d == FX_U64:
        return _rows_sparse(k, fn, <const uint64_t *>k.lab, r0, r1)
    if d == FX_U32:
        return _rows_sparse(k, fn, <const uint32_t *>k.lab, r0, r1)
    if d == FX_U16:
        return _rows_sparse(k, fn, <const uint16_t *>k.lab, r0, r1)
    return _rows_sparse(k, fn, <const uint8_t *>k.lab, r0, r1)


cdef fx_ssize _cols(const fx_call *k, fx_cols_fn fn, fx_ssize w, fx_ssize r0, fx_ssize r1) noexcept nogil:
    """Rows r0..r1-1 as column tasks: the pieces of (o, w-aligned run of w rows) that
    lie in the range. Returns the first bad row or -1."""
    cdef fx_ssize r = r0, o, i, n, b
    while r < r1:
        o = r // k.n_i
        i = r - o * k.n_i
        n = min(w - i % w, k.n_i - i, r1 - r)
        b = fn(k, o, i, n)
        if b >= 0:
            return o * k.n_i + b
        r += n
    return -1


cdef inline fx_ssize _task_row(const fx_call *k, fx_ssize w, fx_ssize t) noexcept nogil:
    """First row of column task t (w-aligned runs within each o)."""
    cdef fx_ssize nb = (k.n_i + w - 1) // w
    cdef fx_ssize o = t // nb
    return o * k.n_i + min((t - o * nb) * w, k.n_i)


cdef int _threads_for(fx_ssize tasks, int threads) noexcept nogil:
    """Threads for a call: ``threads``, capped by the number of tasks (rows, column
    tasks or blocks); one thread (no pool run) in a child forked after the pool was
    used. Whether small work is worth a second thread is the dispatcher's call."""
    cdef fx_ssize nt = threads
    if FX_OPENMP == 0 or fx_in_forked_child() or not fx_pool_parallel():
        return 1
    if nt > tasks:
        nt = tasks
    return <int>nt if nt > 1 else 1


cdef enum:
    FORM_ROWS = 0    # one row kernel call per row
    FORM_COLS = 1    # column kernels: one vector lane per row
    FORM_GATHER = 2  # the sparse gather-log: one value read per row
    FORM_SHORT = 3   # short softmax rows: a range kernel over flat rows (ru.range_fn)
    #: Elements (classes x rows) per work item of a split: a thread that starts late
    #: or is preempted holds back at most an item, and claiming one costs little.
    ITEM_ELEMENTS = 1 << 14
    #: At most this many items per thread: a large call's items grow past ITEM_ELEMENTS.
    ITEMS_PER_THREAD = 64
    #: Rows per item of the gather-log (one read per row; its prefetch restarts per item).
    GATHER_ITEM_ROWS = 1 << 12


ctypedef struct _runner:
    int form
    fx_row_fn row_fn
    fx_cols_fn col_fn
    fx_range_fn range_fn  # FORM_SHORT
    fx_ssize w  # rows per column task
    bint leaves  # the column kernel can write leaf sums (fx_call.leaf_sums)


cdef fx_ssize _range(const fx_call *k, const _runner *ru, fx_ssize r0, fx_ssize r1) noexcept nogil:
    """Rows r0..r1-1 in the runner's form; the first bad row or -1."""
    if ru.form == FORM_GATHER:
        return fx_active().gather[_ct(k)](k, r0, r1)
    if ru.form == FORM_COLS:
        return _cols(k, ru.col_fn, ru.w, r0, r1)
    if ru.form == FORM_SHORT:
        return ru.range_fn(k, r0, r1)
    return _rows(k, ru.row_fn, r0, r1)


cdef fx_ssize _items(const fx_call *k, const _runner *ru, fx_ssize tasks, int nt) noexcept nogil:
    """How many items a split cuts its tasks into: about ITEM_ELEMENTS elements each
    (GATHER_ITEM_ROWS rows for the gather-log), at most ITEMS_PER_THREAD per thread,
    at least one per thread and at most one per task."""
    cdef fx_ssize per_task, n
    if ru.form == FORM_GATHER:
        n = (tasks + GATHER_ITEM_ROWS - 1) // GATHER_ITEM_ROWS
    else:
        per_task = max(k.n_c, 1) * (ru.w if ru.form == FORM_COLS else 1)
        n = (tasks * per_task + ITEM_ELEMENTS - 1) // ITEM_ELEMENTS
    n = min(n, ITEMS_PER_THREAD * nt)
    return min(max(n, nt), tasks)


ctypedef struct _split_job:
    const fx_call *k
    const _runner *ru
    fx_ssize tasks, n_items
    fx_ssize bad  # the lowest bad row any item found, or -1 (fx_pool_min)


cdef void _split_item(void *ctx, fx_ssize item, int slot) noexcept nogil:
    """Item ``item`` of a split: a run of whole tasks (a column task is never cut,
    so its rows see the same vector steps however the tasks are split)."""
    cdef _split_job *j = <_split_job *>ctx
    cdef fx_ssize r0 = item * j.tasks // j.n_items, r1 = (item + 1) * j.tasks // j.n_items
    if j.ru.form == FORM_COLS:
        r0 = _task_row(j.k, j.ru.w, r0)
        r1 = _task_row(j.k, j.ru.w, r1)
    fx_pool_min(&j.bad, _range(j.k, j.ru, r0, r1))


cdef fx_ssize _split(const fx_call *k, const _runner *ru, fx_ssize tasks, int nt) noexcept nogil:
    """Every row, as items of whole tasks run on nt threads of the pool (claimed one
    at a time). Rows are computed alone, so the split never changes a result; the
    first bad row is the lowest any item found."""
    cdef _split_job j
    if nt == 1:
        return _range(k, ru, 0, k.n_o * k.n_i)
    j.k = k
    j.ru = ru
    j.tasks = tasks
    j.n_items = _items(k, ru, tasks, nt)
    j.bad = -1
    fx_note_parallel_use()
    fx_pool_run(_split_item, &j, j.n_items, nt)
    return j.bad


cdef inline fx_ssize _range_into(const fx_call *k, const _runner *ru, fx_ssize r0, fx_ssize r1, double *buf,
                                 bint leaf_sums) noexcept nogil:
    """Rows r0..r1-1 with their losses (or, leaf_sums, their leaves' sums) from buf[0]
    on, in cache; the first bad row or -1."""
    cdef fx_call kc = k[0]
    kc.loss = buf
    kc.loss_r0 = r0
    kc.stream_loss = 0
    kc.leaf_sums = leaf_sums
    return _range(&kc, ru, r0, r1)


cdef inline fx_ssize _block(const fx_call *k, const _runner *ru, fx_ssize b, double *buf,
                            double *sums) noexcept nogil:
    """Block b's rows with their losses in buf, and their pairwise sum in sums[b].

    A whole block of a kernel that can (``_runner.leaves``), cut into column tasks
    of whole leaves, leaves only the sums of its leaves in buf: NumPy's pairwise
    sum halves BLOCK_ROWS exactly down to leaves of FX_LEAF, so the block's sum
    is the pairwise tree over them."""
    cdef fx_ssize r0 = b * BLOCK_ROWS, r1 = min(r0 + BLOCK_ROWS, k.n_o * k.n_i)
    cdef bint leaves = (ru.leaves and r1 - r0 == BLOCK_ROWS and ru.w % FX_LEAF == 0
                        and (k.n_o == 1 or k.n_i % FX_LEAF == 0))
    cdef fx_ssize bad = _range_into(k, ru, r0, r1, buf, leaves)
    sums[b] = _leaf_tree(buf, BLOCK_ROWS // FX_LEAF) if leaves else _pairwise_sum(buf, r1 - r0)
    return bad


cdef inline double _leaf_tree(double *a, fx_ssize n) noexcept nogil:
    """Pairwise sum of n (a power of two) leaf sums, in place: left half + right half,
    as NumPy's recursion adds them."""
    cdef fx_ssize j
    while n > 1:
        n //= 2
        for j in range(n):
            a[j] = a[2 * j] + a[2 * j + 1]
    return a[0]


ctypedef struct _blocks_job:
    const fx_call *k
    const _runner *ru
    double *sums
    double *bufs  # one block-sized loss buffer per pool slot, buf_len apart
    fx_ssize buf_len
    fx_ssize bad  # the lowest bad row any block found, or -1 (fx_pool_min)


cdef void _block_item(void *ctx, fx_ssize b, int slot) noexcept nogil:
    cdef _blocks_job *j = <_blocks_job *>ctx
    fx_pool_min(&j.bad, _block(j.k, j.ru, b, j.bufs + slot * j.buf_len, j.sums))


cdef fx_ssize _blocks(const fx_call *k, const _runner *ru, int nt, double *sums) except -2 nogil:
    """Every row, block by block (the pool's items), each thread with one block-sized
    loss buffer (in cache): only the block sums reach memory. Blocks are claimed one
    at a time: a late or preempted thread holds back at most a block."""
    cdef fx_ssize n_rows = k.n_o * k.n_i, b
    cdef fx_ssize n_blocks = (n_rows + BLOCK_ROWS - 1) // BLOCK_ROWS
    cdef _blocks_job j
    j.k = k
    j.ru = ru
    j.sums = sums
    j.buf_len = min(n_rows, BLOCK_ROWS)
    j.bad = -1
    j.bufs = <double *>malloc(nt * j.buf_len * sizeof(double))
    if j.bufs == NULL:
        with gil:
            raise MemoryError()
    if nt == 1:
        for b in range(n_blocks):
            fx_pool_min(&j.bad, _block(k, ru, b, j.bufs, sums))
    else:
        fx_note_parallel_use()
        fx_pool_run(_block_item, &j, n_blocks, nt)
    free(j.bufs)
    return j.bad


def pool_info():
    """The threads the kernels run on: the extension's own pool (``kind``: how its
    threads wait -- "futex", "condition variable" -- or "openmp"/"serial" where it
    has no threads of its own), whether calls can use more than one thread here
    (not in a child forked after the pool ran), how many pool threads exist, and
    whether this thread's jobs may run as OpenMP regions while another OpenMP team
    of the process is awake (``regions``: fx_pool.h)."""
    return {"kind": fx_pool_kind().decode(), "parallel": bool(FX_OPENMP and fx_pool_parallel()
            and not fx_in_forked_child()), "threads": fx_pool_threads(),
            "regions": bool(fx_pool_regions())}


ctypedef struct _probe_job:
    int64_t *count  # per item: how many times it ran
    int32_t *slot  # per item: the slot that ran it
    fx_ssize spin  # busy-work steps per item
    int finished  # set once the run returned: an item that sees it came late


cdef _probe_job _probe_ring[4096]
cdef Py_ssize_t _probe_next = 0
cdef int64_t _probe_late = 0


cdef void _probe_item(void *ctx, fx_ssize item, int slot) noexcept nogil:
    global _probe_late
    cdef _probe_job *j = <_probe_job *>ctx
    cdef fx_ssize s
    cdef double acc = 0
    if j.finished:
        _probe_late += 1
        return
    for s in range(j.spin):
        acc = acc * 0.5 + <double>s
    j.count[item] += 1 if acc >= 0 else 2
    j.slot[item] = slot


def _pool_region_next(bint on=True):
    """Test hook: this thread's next parallel job runs as an OpenMP region (``on``)
    or on the pool, where its jobs may be regions (``pool_info()["regions"]``)."""
    fx_pool_region_next(on)


def _pool_probe(fx_ssize n_items, int workers, fx_ssize spin=0, bint region=False):
    """Test hook: run ``n_items`` items on the pool with up to ``workers`` threads
    (``region``: as an OpenMP region, else on the pool, where this thread's jobs
    may be regions);
    each item counts its runs, notes the slot that ran it and busies itself for
    ``spin`` steps. Its job record is never freed and is marked finished when the
    run returns, so a pool thread touching a finished job is seen. Returns
    (per-item run counts, per-item slots, threads that ran items, late touches seen
    so far in this process)."""
    global _probe_next
    counts = np.zeros(n_items, np.int64)
    slots = np.full(n_items, -1, np.int32)
    cdef _probe_job *j = &_probe_ring[_probe_next % 4096]
    cdef int ran
    _probe_next += 1
    j.count = <int64_t *>cnp.PyArray_DATA(counts)
    j.slot = <int32_t *>cnp.PyArray_DATA(slots)
    j.spin = spin
    j.finished = 0
    with nogil:
        fx_pool_region_next(region)
        ran = fx_pool_run(_probe_item, j, n_items, workers)
        j.finished = 1
    return counts, slots, ran, _probe_late


ctypedef struct _quarters_job:
    const fx_call *k
    const _runner *ru
    double *sums
    double *quarter_sums  # the pairwise sum of each quarter of every whole block
    double *bufs  # one loss buffer of BLOCK_ROWS per pool slot
    fx_ssize n_quarters
    fx_ssize bad  # the lowest bad row any item found, or -1 (fx_pool_min)


cdef void _quarter_item(void *ctx, fx_ssize q, int slot) noexcept nogil:
    """Quarter q of the whole blocks (its losses' pairwise sum into quarter_sums[q]),
    or, past them, the last partial block (its sum into sums)."""
    cdef _quarters_job *j = <_quarters_job *>ctx
    cdef fx_ssize n_rows = j.k.n_o * j.k.n_i
    cdef fx_ssize r0 = q * (BLOCK_ROWS // 4), r1 = min(r0 + BLOCK_ROWS // 4, n_rows)
    if q == j.n_quarters:
        r1 = n_rows
    cdef double *buf = j.bufs + slot * BLOCK_ROWS
    fx_pool_min(&j.bad, _range_into(j.k, j.ru, r0, r1, buf, False))
    if q < j.n_quarters:
        j.quarter_sums[q] = _pairwise_sum(buf, r1 - r0)
    else:
        j.sums[q // 4] = _pairwise_sum(buf, r1 - r0)


cdef fx_ssize _quarter_blocks(const fx_call *k, const _runner *ru, int nt, double *sums) except -2 nogil:
    """The block sums of a call with too few blocks to share among nt threads, from
    quarter blocks: NumPy's pairwise sum of BLOCK_ROWS values is
    (pw(q0) + pw(q1)) + (pw(q2) + pw(q3)) over its quarters (its halves split at
    multiples of 8), so quarters can run on any thread and keep the block's bits.
    No per-row temporary and no serial pass over it: the gather-log, whose rows cost
    a read each, measured both."""
    cdef fx_ssize n_rows = k.n_o * k.n_i, b
    cdef fx_ssize n_whole = n_rows // BLOCK_ROWS
    cdef _quarters_job j
    j.k = k
    j.ru = ru
    j.sums = sums
    j.n_quarters = 4 * n_whole
    j.bad = -1
    j.quarter_sums = <double *>malloc((j.n_quarters + nt * BLOCK_ROWS) * sizeof(double))
    if j.quarter_sums == NULL:
        with gil:
            raise MemoryError()
    j.bufs = j.quarter_sums + j.n_quarters
    fx_note_parallel_use()
    fx_pool_run(_quarter_item, &j, j.n_quarters + (1 if n_rows % BLOCK_ROWS else 0), nt)
    for b in range(n_whole):
        sums[b] = ((j.quarter_sums[4 * b] + j.quarter_sums[4 * b + 1])
                   + (j.quarter_sums[4 * b + 2] + j.quarter_sums[4 * b + 3]))
    free(j.quarter_sums)
    return j.bad


cdef inline bint _blocks_keep_vectors(const fx_call *k, const _runner *ru) noexcept nogil:
    """Whether cutting the rows at multiples of BLOCK_ROWS leaves every column task
    piece a multiple of 16 rows (but at the end of the inner axis). Lanes compute
    alike, but a loop's scalar tail may round differently from its vector steps:
    pieces of whole vectors keep each row's bits those of the uncut tasks."""
    return ru.form != FORM_COLS or k.n_o == 1 or k.n_i % 16 == 0 or BLOCK_ROWS % k.n_i == 0


cdef inline fx_ssize _tasks(const fx_call *k, _runner *ru) noexcept nogil:
    """The work items a call splits among threads: rows, or column tasks (setting
    ru.w, the rows per column task)."""
    if ru.form == FORM_COLS:
        ru.w = _lanes(k)
        return k.n_o * ((k.n_i + ru.w - 1) // ru.w)
    return k.n_o * k.n_i


cdef fx_ssize _run(fx_call *k, _runner *ru, int threads, double *sums) except -2 nogil:
    """Run a kernel over every row; returns the first bad row or -1.

    sums == NULL: per-row losses go to k.loss. Otherwise sums receives the float64
    sum of every block of BLOCK_ROWS consecutive rows -- NumPy's pairwise sum, so
    the same bits as ``_reduce.block_sums`` of the per-row losses -- and the
    per-row losses never reach memory: with many rows each thread works through
    whole blocks; with few, the rows are split as usual into a temporary.
    """
    cdef fx_ssize n_rows = k.n_o * k.n_i, tasks, n_blocks, b, result
    cdef int nt
    cdef double *tmp
    if n_rows == 0:
        return -1
    tasks = _tasks(k, ru)
    nt = _threads_for(tasks, threads)
    if sums == NULL:
        return _split(k, ru, tasks, nt)
    n_blocks = (n_rows + BLOCK_ROWS - 1) // BLOCK_ROWS
    if (nt == 1 or n_blocks >= 4 * nt) and _blocks_keep_vectors(k, ru):
        return _blocks(k, ru, nt, sums)
    if ru.form == FORM_GATHER and n_rows >= BLOCK_ROWS:
        return _quarter_blocks(k, ru, nt, sums)
    # fewer blocks than would keep every thread busy (at most 4 * nt * BLOCK_ROWS
    # rows), or an inner axis that blocks would cut mid-vector: the losses of
    # every row into a temporary, then the sums of its blocks
    tmp = <double *>malloc(n_rows * sizeof(double))
    if tmp == NULL:
        with gil:
            raise MemoryError()
    k.loss = tmp
    k.loss_r0 = 0
    result = _split(k, ru, tasks, nt)
    for b in range(n_blocks):
        sums[b] = _pairwise_sum(tmp + b * BLOCK_ROWS, min(BLOCK_ROWS, n_rows - b * BLOCK_ROWS))
    free(tmp)
    return result


cdef inline _runner _rows_or_cols(fx_row_fn row_fn, fx_cols_fn col_fn, const fx_call *k,
                                  bint softmax_logits) noexcept nogil:
    cdef _runner ru
    ru.form = FORM_COLS if _use_columns(k, softmax_logits) else FORM_ROWS
    ru.row_fn = row_fn
    ru.col_fn = col_fn
    ru.range_fn = NULL
    ru.w = 0
    ru.leaves = False
    return ru


cdef fx_ssize _run_kernel(fx_call *k, fx_row_fn row_fn, fx_cols_fn col_fn, int threads,
                          double *sums, bint leaves=False, bint softmax_logits=False) except -2 nogil:
    """A C kernel (rows or columns by layout) over every row; ``leaves``: its column
    form writes leaf sums when one class is all there is (the binary kernels);
    ``softmax_logits``: the softmax from logits (see _short_as_columns)."""
    cdef _runner ru = _rows_or_cols(row_fn, col_fn, k, softmax_logits)
    ru.leaves = leaves and ru.form == FORM_COLS and k.n_c == 1
    return _run(k, &ru, threads, sums)


cdef inline double *_sums(fx_call *k, bint block_sums) noexcept nogil:
    """Where a kernel's block sums go (loss_out), or NULL for per-row losses."""
    return k.loss if block_sums else NULL


cdef inline int _ct(const fx_call *k) noexcept nogil:
    """Compute-type index of the kernel tables: 0 float32 (float16/bfloat16/float32
    input), 1 float64."""
    return 1 if k.x.dtype == FX_F64 else 0


cdef inline fx_row_fn _logits_row(const fx_table *tb, const fx_call *k, bint extras=False) noexcept nogil:
    """The softmax row kernel (``extras``: its X form): bfloat16 rows at a class
    stride of 2 bytes, every row 2-aligned, have their own (they read the bits)."""
    if (k.x.dtype == FX_BF16 and k.x.sc == 2 and (<size_t>k.x.data) % 2 == 0
            and k.x.so % 2 == 0 and k.x.si % 2 == 0):
        return tb.logits_x_bf16_row if extras else tb.logits_bf16_row
    return tb.logits_x_row[_ct(k)] if extras else tb.logits_row[_ct(k)]


cdef fx_ssize _run_softmax(fx_call *k, const fx_table *tb, int threads, double *sums) except -2 nogil:
    """The plain softmax kernels over every row: rows of at most FX_SHORT_C classes
    that do not run as columns go to the short-row kernel (chosen from C and the
    layout alone, so a loss keeps its bits whatever else is asked for)."""
    cdef _runner ru = _rows_or_cols(_logits_row(tb, k), tb.logits_cols[_ct(k)], k, True)
    if ru.form == FORM_ROWS and k.n_c <= FX_SHORT_C:
        ru.form = FORM_SHORT
        ru.range_fn = tb.logits_short[_ct(k)]
    return _run(k, &ru, threads, sums)


# -------------------------------------------------------------------------- the kernel table

def sparse_from_logits(cnp.ndarray x, cnp.ndarray labels, cnp.ndarray class_weight,
                       double label_smoothing, int64_t ignore_index, cnp.ndarray grad_weight,
                       cnp.ndarray loss_out, grad_out, int threads, bint block_sums=False, *,
                       double z_loss=0.0, double softcap=0.0, lse_out=None, rank_out=None):
    """The optional keywords (KERNELS.md) run the kernels' X form (logits_x_*);
    a call without them runs the plain kernels."""
    cdef fx_call k
    _setup(&k, x, None, labels, class_weight, None, grad_weight, loss_out, grad_out,
           label_smoothing, 0.0, ignore_index, block_sums, lse_out, rank_out)
    cdef const fx_table *tb = fx_active()
    cdef int ct = _ct(&k)
    cdef bint extras = z_loss != 0 or softcap != 0 or lse_out is not None or rank_out is not None
    k.z_loss = z_loss
    k.softcap = softcap
    with nogil:
        if extras:
            _run_kernel(&k, _logits_row(tb, &k, True), tb.logits_x_cols[ct], threads, _sums(&k, block_sums),
                        False, True)  # (leaves, softmax_logits)
        else:
            _run_softmax(&k, tb, threads, _sums(&k, block_sums))
    return -1


def categorical_from_logits(cnp.ndarray x, cnp.ndarray targets, cnp.ndarray class_weight,
                            double label_smoothing, cnp.ndarray grad_weight, cnp.ndarray loss_out,
                            grad_out, int threads, bint block_sums=False):
    cdef fx_call k
    _setup(&k, x, targets, None, class_weight, None, grad_weight, loss_out, grad_out,
           label_smoothing, 0.0, -1, block_sums)
    cdef const fx_table *tb = fx_active()
    with nogil:
        _run_softmax(&k, tb, threads, _sums(&k, block_sums))
    return -1


def categorical_from_probs(cnp.ndarray x, cnp.ndarray targets, cnp.ndarray class_weight,
                           double label_smoothing, double epsilon, cnp.ndarray grad_weight,
                           cnp.ndarray loss_out, grad_out, int threads, bint block_sums=False):
    cdef fx_call k
    cdef fx_ssize r
    _setup(&k, x, targets, None, class_weight, None, grad_weight, loss_out, grad_out,
           label_smoothing, epsilon, -1, block_sums)
    cdef const fx_table *tb = fx_active()
    cdef int ct = _ct(&k)
    with nogil:
        r = _run_kernel(&k, tb.probs_row[ct], tb.probs_cols[ct], threads, _sums(&k, block_sums))
    return r


def binary_from_logits(cnp.ndarray x, cnp.ndarray targets, cnp.ndarray pos_weight,
                       double label_smoothing, cnp.ndarray grad_weight, cnp.ndarray loss_out,
                       grad_out, int threads, bint block_sums=False):
    cdef fx_call k
    _setup(&k, x, targets, None, None, pos_weight, grad_weight, loss_out, grad_out,
           label_smoothing, 0.0, -1, block_sums)
    cdef const fx_table *tb = fx_active()
    cdef int ct = _ct(&k)
    cdef fx_ssize r
    with nogil:
        r = _run_kernel(&k, tb.bce_logits_row[ct], tb.bce_logits_cols[ct], threads, _sums(&k, block_sums), True)
    return r


def binary_from_probs(cnp.ndarray x, cnp.ndarray targets, cnp.ndarray pos_weight,
                      double label_smoothing, double epsilon, cnp.ndarray grad_weight,
                      cnp.ndarray loss_out, grad_out, int threads, bint block_sums=False):
    cdef fx_call k
    cdef fx_ssize r
    _setup(&k, x, targets, None, None, pos_weight, grad_weight, loss_out, grad_out,
           label_smoothing, epsilon, -1, block_sums)
    cdef const fx_table *tb = fx_active()
    cdef int ct = _ct(&k)
    with nogil:
        r = _run_kernel(&k, tb.bce_probs_row[ct], tb.bce_probs_cols[ct], threads, _sums(&k, block_sums), True)
    return r


def sparse_from_probs(cnp.ndarray x, cnp.ndarray labels, cnp.ndarray class_weight,
                      double label_smoothing, int64_t ignore_index, double epsilon,
                      cnp.ndarray grad_weight, cnp.ndarray loss_out, grad_out, int threads, bint block_sums=False):
    cdef fx_call k
    cdef fx_ssize r
    _setup(&k, x, None, labels, class_weight, None, grad_weight, loss_out, grad_out,
           label_smoothing, epsilon, ignore_index, block_sums)
    cdef const fx_table *tb = fx_active()
    cdef int ct = _ct(&k)
    if label_smoothing != 0:  # every class carries weight: whole rows, C kernel
        with nogil:
            r = _run_kernel(&k, tb.probs_row[ct], tb.probs_cols[ct], threads, _sums(&k, block_sums))
        return r
    with nogil:
        r = _gather_log_run(&k, threads, _sums(&k, block_sums))
    return r


# -------------------------------------------------------------------------- gather-log

cdef fx_ssize _gather_log_run(fx_call *k, int threads, double *sums) except -2 nogil:
    cdef _runner ru
    ru.form = FORM_GATHER
    ru.leaves = False
    return _run(k, &ru, threads, sums)


# -------------------------------------------------------------------------- the compiled call API

# What fastxent/_fastcall.pyx, the compiled form of a plain public sparse call, runs
# (declared in _cython_ext.pxd): the sparse kernel on a C-contiguous (n, c) y_pred
# and 1-D labels, with the thread count the dispatcher planned.

cdef double *_unit_weights = NULL  # PLAIN_MAX_CLASSES ones: class_weight=None


cdef inline double _pairwise_sum(const double *a, fx_ssize n) noexcept nogil:
    """NumPy's pairwise summation, step for step: the same bits as ``np.sum`` of a
    contiguous float64 array, which is what the general path's reduction takes
    (in C, vectorised for the active instruction set)."""
    return fx_active().pairwise_sum_f64(a, n)


cdef double pairwise_sum(const double *a, Py_ssize_t n) noexcept nogil:
    return _pairwise_sum(a, n)


cdef Py_ssize_t valid_label_rows(const char *labels, bint labels64, Py_ssize_t n, Py_ssize_t c,
                                 int64_t ignore, bint has_ignore) noexcept nogil:
    """How many of the n C-contiguous int64 (labels64) or int32 labels are not
    ``ignore`` (when has_ignore), or -1 when one outside [0, c) is not ignored:
    ``_validate._check_label_range``'s rule, in one vectorised pass."""
    return fx_active().valid_label_rows(labels, labels64, n, c, ignore, has_ignore)


cdef Py_ssize_t run_plain_sparse(const char *x, bint float64, Py_ssize_t n, Py_ssize_t c,
                                 const char *labels, bint labels64, int64_t ignore, double epsilon,
                                 bint from_logits, double *grad_scale, char *grad, int threads,
                                 double *block_sums) except -2 nogil:
    """The sparse kernel (``sparse_from_logits`` or ``sparse_from_probs`` without label
    smoothing or class weights) on a C-contiguous (n, c) float32/float64 ``x`` and
    C-contiguous int32/int64 ``labels`` (all in [0, c) or equal to ``ignore``; c at
    most PLAIN_MAX_CLASSES). ``block_sums`` receives the float64 sum of every block
    of BLOCK_ROWS rows; with ``grad`` (laid out as ``x``), the gradient times
    ``*grad_scale``. Returns the first row with a probability out of range, or -1."""
    cdef fx_call k
    cdef Py_ssize_t isz = 8 if float64 else 4
    cdef Py_ssize_t lsz = 8 if labels64 else 4
    memset(&k, 0, sizeof(fx_call))  # as _setup fills it from the general path's arrays
    k.n_o, k.n_c, k.n_i = n, c, 1
    k.eps, k.ignore = epsilon, ignore
    k.x.data = <char *>x
    k.x.so, k.x.sc, k.x.si = c * isz, isz, isz
    k.x.dtype = FX_F64 if float64 else FX_F32
    k.lab = labels
    k.lab_so, k.lab_si = lsz, lsz
    k.lab_dtype = FX_I64 if labels64 else FX_I32
    k.gw = <const char *>grad_scale  # a constant: every row's stride is 0
    k.loss = block_sums
    k.cw, k.cw0, k.cw_uniform, k.cw_sum = _unit_weights, 1.0, 1, <double>c
    if grad != NULL:
        k.g.data = grad
        k.g.dtype = k.x.dtype
        k.g.so, k.g.sc, k.g.si = k.x.so, k.x.sc, k.x.si
    _normalise(&k)
    if n > PLAIN_STACK_ROWS or threads > 1:
        return _plain_kernel(&k, from_logits, threads, block_sums)
    # few rows on one thread: per-row losses on the stack and their pairwise sum (a
    # block's sum, the same bits) save the block machinery's allocations
    cdef double losses[PLAIN_STACK_ROWS]
    k.loss = losses
    cdef Py_ssize_t bad = _plain_kernel(&k, from_logits, 1, NULL)
    block_sums[0] = _pairwise_sum(losses, n)
    return bad


cdef inline Py_ssize_t _plain_kernel(fx_call *k, bint from_logits, int threads, double *sums) except -2 nogil:
    cdef const fx_table *tb = fx_active()
    if from_logits:
        return _run_softmax(k, tb, threads, sums)
    return _gather_log_run(k, threads, sums)


cdef void _init_unit_weights() except *:
    global _unit_weights
    cdef Py_ssize_t j
    _unit_weights = <double *>malloc(PLAIN_MAX_CLASSES * sizeof(double))
    if _unit_weights == NULL:
        raise MemoryError()
    for j in range(PLAIN_MAX_CLASSES):
        _unit_weights[j] = 1.0


# -------------------------------------------------------------------------- test and bench hooks

def _vexp(cnp.ndarray x, int kind=0):
    """This ISA's vector exp over a contiguous float32/float64 array (test hook): kind 0
    the full-range exp, 1 the kernels' exp of x <= 0, 2 their exp of a softmax sum
    (x in [-86.5, 0])."""
    import numpy as np
    x = np.ascontiguousarray(x)
    cdef cnp.ndarray y = np.empty_like(x)
    cdef fx_ssize n = x.size
    if x.dtype == np.float32:
        fx_active().vexp_f32(<const float *>cnp.PyArray_DATA(x), <float *>cnp.PyArray_DATA(y), n, kind)
    elif x.dtype == np.float64:
        fx_active().vexp_f64(<const double *>cnp.PyArray_DATA(x), <double *>cnp.PyArray_DATA(y), n, kind)
    else:
        raise TypeError("float32 or float64")
    return y


def _vlog(cnp.ndarray x):
    """This ISA's vector log over a contiguous float32/float64 array (test hook)."""
    import numpy as np
    x = np.ascontiguousarray(x)
    cdef cnp.ndarray y = np.empty_like(x)
    cdef fx_ssize n = x.size
    if x.dtype == np.float32:
        fx_active().vlog_f32(<const float *>cnp.PyArray_DATA(x), <float *>cnp.PyArray_DATA(y), n)
    elif x.dtype == np.float64:
        fx_active().vlog_f64(<const double *>cnp.PyArray_DATA(x), <double *>cnp.PyArray_DATA(y), n)
    else:
        raise TypeError("float32 or float64")
    return y


cdef enum:
    READ_ITEM = 1 << 18  # floats per item of _read_sum


ctypedef struct _read_job:
    const float *p
    fx_ssize n
    double *parts


cdef void _read_item(void *ctx, fx_ssize item, int slot) noexcept nogil:
    cdef _read_job *j = <_read_job *>ctx
    cdef fx_ssize i0 = item * READ_ITEM, i1 = min(i0 + READ_ITEM, j.n)
    j.parts[item] = fx_active().read_sum_f32(j.p + i0, i1 - i0)


def _read_sum(cnp.ndarray x, int threads):
    """Parallel streaming float64 sum over a contiguous float32 array's bytes (the
    benchmark's read pass: what reading the data once costs on this machine), in
    items of READ_ITEM values on the pool, as the kernels run."""
    if cnp.PyArray_TYPE(x) != cnp.NPY_FLOAT or not cnp.PyArray_IS_C_CONTIGUOUS(x):
        raise TypeError("a C-contiguous float32 array")
    cdef _read_job j
    cdef fx_ssize n_items, item
    cdef double s = 0
    j.p = <const float *>cnp.PyArray_DATA(x)
    j.n = cnp.PyArray_SIZE(x)
    n_items = max((j.n + READ_ITEM - 1) // READ_ITEM, 1)
    cdef int nt = _threads_for(n_items, threads)
    j.parts = <double *>malloc(n_items * sizeof(double))
    if j.parts == NULL:
        raise MemoryError()
    with nogil:
        if nt > 1:
            fx_note_parallel_use()
        fx_pool_run(_read_item, &j, n_items, nt)
    for item in range(n_items):
        s += j.parts[item]
    free(j.parts)
    return s


def _layout_plan(cnp.ndarray x, grad_out=None):
    """Test hook: the form a call on ``x`` runs ("rows" or "columns") and the
    normalised (O, C, I)."""
    cdef fx_call k
    _setup(&k, x, None, None, None, None, np.ones((x.shape[0], x.shape[2])),
           np.empty(x.shape[0] * x.shape[2]), grad_out, 0.0, 0.0, -1)
    return ("columns" if _use_columns(&k, False) else "rows"), (k.n_o, k.n_c, k.n_i)


def _thread_plan(cnp.ndarray x, int threads):
    """Test hook: the threads a loss-only call on ``x`` runs with."""
    cdef fx_call k
    _setup(&k, x, None, None, None, None, np.ones((x.shape[0], x.shape[2])),
           np.empty(x.shape[0] * x.shape[2]), None, 0.0, 0.0, -1)
    cdef _runner ru = _rows_or_cols(NULL, NULL, &k, False)
    return _threads_for(_tasks(&k, &ru), threads)


def _init():
    fx_fork_guard_install()
    _init_unit_weights()
    name = _os.environ.get("FASTXENT_SIMD", "auto").strip().lower() or "auto"
    rc = fx_select(name.encode())
    if rc != 0:
        import warnings
        warnings.warn(f"FASTXENT_SIMD={name!r} is not available here; using {fx_active().name.decode()!r}",
                      RuntimeWarning, stacklevel=2)
    if not FX_OPENMP:
        import warnings
        warnings.warn("fastxent's Cython extension was built WITHOUT OpenMP: its kernels run on one "
                      f"thread ({OPENMP_PROBE})", RuntimeWarning, stacklevel=2)


_init()
