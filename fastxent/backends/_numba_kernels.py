"""Numba kernels for fastxent: the six kernels of KERNELS.md.

Importing this module imports numba; :mod:`.numba_backend` imports it on first use
only. ``KERNELS`` maps each kernel name to a thin Python wrapper that

* picks a path by layout: ``rows`` (class stride == itemsize for x, targets and
  grad_out: each row is a contiguous vector), ``cols`` (inner stride == itemsize:
  a block of adjacent rows is processed as vectors across rows, e.g. (1, C, N) or
  (N, C, H*W)), or ``generic`` (any strides, row by row);
* passes float16 arrays as a one-field record view (numba has no CPU float16)
  that the kernels widen with ``vcvtph2ps``;
* runs the driver with ``threads`` threads, one call at a time (``_CALL_LOCK``),
  and serially in a child forked after the parallel runtime started (``_run``);
* falls back to ``cache=False`` when numba cannot use an on-disk cache
  (``FASTXENT_NUMBA_CACHE=0`` turns the cache off).

Design rules: every transcendental is a polynomial written here (``_exp``, ``_log``,
``_log1p``) so that LLVM vectorises the loops that call it; sums over a row are
float64; one helper per quantity (``_bce_logit_loss``, ``_sigmoids``,
``_softmax_grad``, ...) is shared by the loss-only and loss+gradient loops.
No function uses the ``nnan``/``ninf`` fast-math flags; only the small row-reduction
helpers carry ``reassoc`` (without it LLVM keeps an FP sum sequential and the whole
loop, exp included, stays scalar).
"""

from __future__ import annotations

import importlib
import math
import os
import threading
from types import FunctionType

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload
from numba.np.arrayobj import make_array, populate_array

from .. import _reduce
from ._common import forked_child, notify_compiled

# --------------------------------------------------------------------------- jit setup

#: Options of every compiled function. error_model="numpy": a float division never
#: raises (and no zero-check branch blocks vectorisation). No fast-math.
_OPTS = dict(error_model="numpy", fastmath=False, boundscheck=False)
#: The exp/log polynomials: FMA contraction only (measured 2x on the exp loop; it
#: changes rounding, never NaN/inf semantics).
_POLY_OPTS = dict(_OPTS, fastmath={"contract"})

#: Whether compiled drivers are cached on disk. Turned off (for the process) when
#: numba has no writable cache directory (RuntimeError at decoration time) or when
#: saving fails later (OSError at the first call); see ``_run``.
_CACHE = os.environ.get("FASTXENT_NUMBA_CACHE", "1") != "0"
_DRIVERS: list = []


def _helper(fn=None, inline=False):
    """A jitted helper (never cached itself: the callers' cached code contains it).

    ``inline=True`` inlines it in numba's IR: for element formulas that, once
    optimised on their own (exp + log + a division), are too big for LLVM's
    inliner -- a call left in a loop keeps the loop scalar (binary from logits ran
    at 50 ns per element). All helpers share the same strict FP options, so
    inlining changes no rounding."""
    opts = dict(_OPTS, inline="always") if inline else _OPTS
    if fn is None:
        return lambda f: njit(**opts)(f)
    return njit(**opts)(fn)


def _jit(fn, parallel=True):
    """A top-level kernel (a "driver"): cached on disk unless numba cannot cache,
    and run without the GIL."""
    global _CACHE
    if _CACHE:
        try:
            return njit(parallel=parallel, cache=True, nogil=True, **_OPTS)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            _CACHE = False
    return njit(parallel=parallel, cache=False, nogil=True, **_OPTS)(fn)


def _driver(fn):
    """A parallel driver (its serial twin is made on demand: see ``_serial_twin``)."""
    disp = _jit(fn)
    _DRIVERS.append(disp)
    return disp


def _disable_cache() -> None:
    """Stop loading/saving the disk cache for every driver (after an OSError)."""
    global _CACHE
    from numba.core.caching import NullCache

    _CACHE = False
    for disp in _DRIVERS + list(_SERIAL.values()):
        disp._cache = NullCache()


# --------------------------------------------------------------------------- LLVM intrinsics


def _int_type(fty):
    return ir.IntType(32 if isinstance(fty, ir.FloatType) else 64)


def _float_layout(fty):
    """(mantissa bits, exponent bias, exponent mask) of an LLVM float type."""
    return (23, 127, 0xFF) if isinstance(fty, ir.FloatType) else (52, 1023, 0x7FF)


@intrinsic
def _acc(typingctx, total, term):
    """``total + term`` as one ``fadd reassoc`` instruction: the only place the
    kernels allow reassociation. LLVM vectorises an FP sum only when its adds may
    be reassociated (lanes of partial sums); with the flag on the accumulating add
    alone, every other instruction keeps strict IEEE semantics (no fast-math on any
    function). The lane split is fixed at compile time: results do not depend on
    the thread count."""
    sig = total(total, term)

    def codegen(context, builder, signature, args):
        term_value = context.cast(builder, args[1], signature.args[1], signature.return_type)
        return builder.fadd(args[0], term_value, flags=("reassoc",))

    return sig, codegen


def _binary_intrinsic(name, doc):
    """An intrinsic calling LLVM's ``name`` on two values of one (float or integer)
    type, overloaded on that type."""
    @intrinsic
    def fn(typingctx, a, b):
        sig = a(a, b)

        def codegen(context, builder, signature, args):
            ty = context.get_value_type(signature.return_type)
            f = builder.module.declare_intrinsic(name, [ty], ir.FunctionType(ty, [ty, ty]))
            return builder.call(f, args)

        return sig, codegen

    fn.__doc__ = doc
    return fn


_maximum = _binary_intrinsic("llvm.maximum", "a max that propagates NaN and that LLVM vectorises as a "
                             "reduction without fast-math flags (a `v if v > m else m` loop stays scalar)")
_maxnum = _binary_intrinsic("llvm.maxnum", "max ignoring NaN (vmaxps): clamps whose NaN case is fixed later")
_minnum = _binary_intrinsic("llvm.minnum", "min ignoring NaN (vminps)")
_imax = _binary_intrinsic("llvm.smax", "the max of two integers: a reduction LLVM vectorises "
                          "(numba's max() stayed a scalar compare and cmov)")


@intrinsic
def _half_to_float(typingctx, bits):
    """IEEE half (as its uint16 bits) -> float32, exactly (vcvtph2ps with F16C)."""
    sig = types.float32(bits)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return sig, codegen


@intrinsic
def _scale_pow2(typingctx, p, t):
    """``p * 2**n`` where ``t = n + MAGIC`` (MAGIC = 1.5 * 2**mant, so the low bits
    of ``t`` hold n). Two multiplies by ``2**(n//2)`` and ``2**(n - n//2)`` cover the
    whole range, from subnormal results to overflow, with integer vector ops only."""
    sig = p(p, t)

    def codegen(context, builder, signature, args):
        fty = context.get_value_type(signature.return_type)
        ity = _int_type(fty)
        mant, bias, _ = _float_layout(fty)
        magic_bits = (0x4B400000 if mant == 23 else 0x4338000000000000)
        n = builder.sub(builder.bitcast(args[1], ity), ir.Constant(ity, magic_bits))
        n1 = builder.ashr(n, ir.Constant(ity, 1))
        n2 = builder.sub(n, n1)

        def pow2(k):
            biased = builder.add(k, ir.Constant(ity, bias))
            return builder.bitcast(builder.shl(biased, ir.Constant(ity, mant)), fty)

        return builder.fmul(builder.fmul(args[0], pow2(n1)), pow2(n2))

    return sig, codegen


def _key_bits(builder, bits):
    """bits ^ ((bits >> (w - 1)) & INT_MAX): its own inverse."""
    ity = bits.type
    sign = builder.ashr(bits, ir.Constant(ity, ity.width - 1))
    return builder.xor(bits, builder.and_(sign, ir.Constant(ity, (1 << (ity.width - 1)) - 1)))


@intrinsic
def _key(typingctx, v):
    """An integer key that orders like the float v (-0.0 below +0.0; a positive NaN
    above +inf, a negative one below -inf). Integer max and min reductions vectorise
    at one operation a vector; llvm.maximum / minimum take five (their NaN and
    signed-zero selects)."""
    sig = (types.int32 if v == types.float32 else types.int64)(v)

    def codegen(context, builder, signature, args):
        fty = context.get_value_type(signature.args[0])
        return _key_bits(builder, builder.bitcast(args[0], _int_type(fty)))

    return sig, codegen


@intrinsic
def _unkey(typingctx, k, like):
    """The float (of like's type) whose _key is k."""
    sig = like(k, like)

    def codegen(context, builder, signature, args):
        fty = context.get_value_type(signature.return_type)
        return builder.bitcast(_key_bits(builder, args[0]), fty)

    return sig, codegen


@intrinsic
def _times_pow2_bits(typingctx, p, t):
    """``p * 2**n`` for a normal result, where ``t = n + MAGIC`` (float32; MAGIC =
    1.5 * 2**23, so the low bits of t hold n): t's bits shifted left by the mantissa
    width are n << 23 modulo 2**32, added into p's exponent bits. An integer add
    instead of a multiply on the FMA ports; p must not be NaN (its bits would
    become a number)."""
    sig = p(p, t)

    def codegen(context, builder, signature, args):
        fty = context.get_value_type(signature.return_type)
        ity = _int_type(fty)
        mant, _, _ = _float_layout(fty)
        shifted = builder.shl(builder.bitcast(args[1], ity), ir.Constant(ity, mant))
        return builder.bitcast(builder.add(builder.bitcast(args[0], ity), shifted), fty)

    return sig, codegen


@intrinsic
def _pow2_from_bits(typingctx, t):
    """``2**n`` where ``t = n + 127 + MAGIC`` (float32; MAGIC = 1.5 * 2**23, so the
    low bits of ``t`` hold the biased exponent n + 127 in [0, 255]): t's bits
    shifted left by the mantissa width. One shift, one multiply by the caller."""
    sig = t(t)

    def codegen(context, builder, signature, args):
        fty = context.get_value_type(signature.return_type)
        ity = _int_type(fty)
        mant, _, _ = _float_layout(fty)
        return builder.bitcast(builder.shl(builder.bitcast(args[0], ity), ir.Constant(ity, mant)), fty)

    return sig, codegen


@intrinsic
def _exponent(typingctx, x):
    """Unbiased binary exponent of a positive normal float, as a float."""
    sig = x(x)

    def codegen(context, builder, signature, args):
        fty = context.get_value_type(signature.return_type)
        ity = _int_type(fty)
        mant, bias, emask = _float_layout(fty)
        bits = builder.lshr(builder.bitcast(args[0], ity), ir.Constant(ity, mant))
        e = builder.sub(builder.and_(bits, ir.Constant(ity, emask)), ir.Constant(ity, bias))
        return builder.sitofp(e, fty)

    return sig, codegen


@intrinsic
def _mantissa(typingctx, x):
    """Significand of a positive normal float, in [1, 2)."""
    sig = x(x)

    def codegen(context, builder, signature, args):
        fty = context.get_value_type(signature.return_type)
        ity = _int_type(fty)
        mant, bias, _ = _float_layout(fty)
        bits = builder.and_(builder.bitcast(args[0], ity), ir.Constant(ity, (1 << mant) - 1))
        return builder.bitcast(builder.or_(bits, ir.Constant(ity, bias << mant)), fty)

    return sig, codegen


@intrinsic
def _prefetch(typingctx, a, offset):
    """Ask for the cache line ``offset`` bytes past a's first element, into L2. A
    hint: it never faults, whatever the address, and changes no value."""
    sig = types.void(a, offset)

    def codegen(context, builder, signature, args):
        ary = make_array(signature.args[0])(context, builder, args[0])
        byte = ir.IntType(8)
        base = builder.bitcast(ary.data, byte.as_pointer())
        ptr = builder.gep(base, [context.cast(builder, args[1], signature.args[1], types.intp)])
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])  # read, L2, data
        return context.get_dummy_value()

    return sig, codegen


#: Elements a thread claims at a time (``_claims``), and claims a worker has at least.
_CLAIM_ELEMENTS = 1 << 16
_CLAIMS_PER_WORKER = 16


@_helper
def _claims(n_items, item_size, workers):
    """The shared state of a driver's claims, for ``n_items`` work items of about
    ``item_size`` elements each: an int64 array with the claim counter at [0] and,
    a cache line further, the items a claim takes at [8] and n_items at [9].

    Drivers schedule dynamically: one worker a thread takes its items a claim at a
    time (``_claim``, ``_next_item``) until none are left. Numba's 'omp' layer
    splits a prange statically, so one thread slowed by another process (or a busy
    neighbour on a VM) held up the whole call: 10M binary losses, 2 threads, next to
    a process busy on one core, took a median 7.5 ms that way and 6.0 ms with
    claims (the Cython kernel, scheduled dynamically by OpenMP: 5.7 ms). Claims are
    about _CLAIM_ELEMENTS elements (an atomic add on a shared line costs ~0.1 µs)
    and at least _CLAIMS_PER_WORKER a worker, so the last claims even out the
    threads' finishing times. Which thread takes an item never changes a result:
    every item writes outputs of its own."""
    claims = np.zeros(16, np.int64)
    claims[8] = max(1, min(_CLAIM_ELEMENTS // max(item_size, 1), n_items // (_CLAIMS_PER_WORKER * workers)))
    claims[9] = n_items
    return claims


@intrinsic
def _fetch_add(typingctx, counter, n):
    """Add n to counter[0] atomically and return its value before (an int64 array
    shared by the threads)."""
    sig = types.int64(counter, n)

    def codegen(context, builder, signature, args):
        ary = make_array(signature.args[0])(context, builder, args[0])
        step = context.cast(builder, args[1], signature.args[1], types.int64)
        return builder.atomic_rmw("add", ary.data, step, "monotonic")

    return sig, codegen


@_helper(inline=True)
def _claim(claims):
    """(first item, end) of the next claim of ``_claims``' items; (n, n) once every
    item is taken."""
    step, n = claims[8], claims[9]
    start = _fetch_add(claims, step)
    return min(start, n), min(start + step, n)


@_helper(inline=True)
def _next_item(claims, q, end):
    """The work item after q and the end of its claim: q + 1 while the claim lasts,
    then the start of a new one (see _claim)."""
    if q + 1 < end:
        return q + 1, end
    return _claim(claims)


@_helper
def _slot(value):
    """A one-element int64 array holding ``value``, for _lower. (Made in a helper of
    its own: where the parfor pass saw the ``np.full``, the kernel's updates were
    lost and the driver read the initial value.)"""
    return np.full(1, value, np.int64)


@intrinsic
def _lower(typingctx, smallest, value):
    """smallest[0] = min(smallest[0], value), atomically (an int64 array shared by
    the threads): the first bad row whatever thread finds which."""
    sig = types.void(smallest, value)

    def codegen(context, builder, signature, args):
        ary = make_array(signature.args[0])(context, builder, args[0])
        v = context.cast(builder, args[1], signature.args[1], types.int64)
        builder.atomic_rmw("min", ary.data, v, "monotonic")
        return context.get_dummy_value()

    return sig, codegen


def _make_view(axis: int, layout: str):
    """An intrinsic ``view(a, o, c, i, n)``: the n elements of the 3-D array ``a``
    from ``a[o, c, i]`` along ``axis``, as a 1-D array of ``layout`` ('C' only when
    the caller checked that this axis has stride == itemsize). The view has no
    meminfo: no atomic reference counting per row (both threads would fight over
    the parent's counter), and the parent outlives the kernel call anyway."""

    @intrinsic
    def view(typingctx, a, o, c, i, n):
        ret = types.Array(a.dtype, 1, layout, readonly=not a.mutable, aligned=a.aligned)
        sig = ret(a, o, c, i, n)

        def codegen(context, builder, signature, args):
            aryty = signature.args[0]
            ary = make_array(aryty)(context, builder, args[0])
            idx = [context.cast(builder, v, t, types.intp) for v, t in zip(args[1:4], signature.args[1:4])]
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, idx)
            strides = cgutils.unpack_tuple(builder, ary.strides, 3)
            out = make_array(signature.return_type)(context, builder)
            count = context.cast(builder, args[4], signature.args[4], types.intp)
            populate_array(out, data=ptr, shape=[count], strides=[strides[axis]],
                           itemsize=ary.itemsize, meminfo=None)  # fmt: skip
            return out._getvalue()

        return sig, codegen

    return view


_row_view_c = _make_view(1, "C")  # a[o, c:c+n, i], contiguous
_row_view_a = _make_view(1, "A")  # a[o, c:c+n, i], any stride
_col_view_c = _make_view(2, "C")  # a[o, c, i:i+n], contiguous


# --------------------------------------------------------------------------- element types


def _x_value(v):
    """An element of x in the compute dtype (float32 for float16/float32)."""


@overload(_x_value, jit_options=_OPTS)
def _x_value_ol(v):
    if isinstance(v, types.Record):  # float16 passed as a record view of its bits
        return lambda v: _half_to_float(v.bits)
    if isinstance(v, types.Float):
        return lambda v: v


def _compute_scalar(x, v):
    """``v`` converted to x's compute dtype."""


@overload(_compute_scalar, jit_options=_OPTS)
def _compute_scalar_ol(x, v):
    if isinstance(x.dtype, types.Record) or x.dtype == types.float32:
        return lambda x, v: np.float32(v)
    return lambda x, v: np.float64(v)


def _at(w, j):
    """``w[j]`` for an array, ``w`` itself for a scalar (a broadcast weight)."""


@overload(_at, jit_options=_OPTS)
def _at_ol(w, j):
    if isinstance(w, types.Array):
        return lambda w, j: w[j]
    return lambda w, j: w


# --------------------------------------------------------------------------- exp and log

_F32 = np.float32
# exp: Cephes expf. n = round(x / ln2) by the 1.5 * 2**23 trick, r = x - n ln2 in two
# pieces (Cody-Waite; n * LN2_HI is exact), exp(r) by a degree-7 polynomial, then
# 2**n from integer bits. |error| <= 1-2 ulp (tests measure it).
_E32_LO, _E32_HI = _F32(-104.0), _F32(89.0)  # exp(-104) rounds to 0, exp(89) overflows
_E32_LOG2E, _E32_MAGIC = _F32(1.44269504088896341), _F32(12582912.0)
_E32_LN2_HI, _E32_LN2_LO = _F32(0.693359375), _F32(-2.12194440e-4)
# (scalar globals, not tuples: numba freezes a scalar as an immediate constant that
# LLVM hoists out of the loop; a tuple global is reloaded from memory per element)
_E32_P0, _E32_P1, _E32_P2 = _F32(1.9875691500e-4), _F32(1.3981999507e-3), _F32(8.3334519073e-3)
_E32_P3, _E32_P4, _E32_P5 = _F32(4.1665795894e-2), _F32(1.6666665459e-1), _F32(5.0000001201e-1)
_F32_ONE, _F32_HALF, _F32_ZERO = _F32(1.0), _F32(0.5), _F32(0.0)

# exp of x <= 0 in float32 (_exp_neg): the same reduction with the exponent bias
# folded into the rounding constant, e^r to degree 5 (at most 2.16 ulp over
# [-87.3, 0]; the tests allow 2.5), results below exp(-88) flushed to 0: about a
# third fewer operations than _exp32 per element of a softmax sum, where the exp is
# most of the work.
_EN32_MAGIC, _EN32_FLUSH = _F32(12583039.0), _F32(-88.0)  # 1.5 * 2**23 + 127
_EN32_P2, _EN32_P3 = _F32(float.fromhex("0x1.fffdfcp-2")), _F32(float.fromhex("0x1.5557b0p-3"))
_EN32_P4, _EN32_P5 = _F32(float.fromhex("0x1.572a66p-5")), _F32(float.fromhex("0x1.106252p-7"))
# exp of x in [_NEAR, 0] (_exp_near): a chunk of a softmax row within 86.5 of its max,
# which most are. One-constant reduction (float32(ln2) errs by 1.9e-9: |n| * 1.9e-9
# relative more, at most 2.4e-7 at n = -125) and 2**n added into the exponent bits
# (p * 2**n is normal for n >= -125): three operations on the FMA ports fewer.
_NEAR, _E32_LN2 = -86.5, _F32(0.693147182)

_E64_LO, _E64_HI = -746.0, 710.0
_E64_LOG2E, _E64_MAGIC = 1.4426950408889634, 6755399441055744.0
_E64_LN2_HI, _E64_LN2_LO = 0.693145751953125, 1.4286068203094173e-06
# Taylor series of exp to degree 13: on |r| <= ln2/2 the truncation is 4e-18 relative.
_E64_P13, _E64_P12, _E64_P11, _E64_P10, _E64_P9, _E64_P8, _E64_P7 = (1.0 / math.factorial(k) for k in range(13, 6, -1))
_E64_P6, _E64_P5, _E64_P4, _E64_P3, _E64_P2 = (1.0 / math.factorial(k) for k in range(6, 1, -1))

# log: Cephes logf for float32 (f = m - 1, m in [sqrt(1/2), sqrt(2))), and for
# float64 log(m) = 2 atanh(s), s = f / (2 + f), |s| <= 0.1716, to s**21.
_L32_P0, _L32_P1, _L32_P2 = _F32(7.0376836292e-2), _F32(-1.1514610310e-1), _F32(1.1676998740e-1)
_L32_P3, _L32_P4, _L32_P5 = _F32(-1.2420140846e-1), _F32(1.4249322787e-1), _F32(-1.6668057665e-1)
_L32_P6, _L32_P7, _L32_P8 = _F32(2.0000714765e-1), _F32(-2.4999993993e-1), _F32(3.3333331174e-1)
_L32_Q1, _L32_Q2 = _F32(-2.12194440e-4), _F32(0.693359375)
_L32_SQRT2, _L32_TINY, _L32_SUB = _F32(1.4142135623730951), _F32(1.1754944e-38), _F32(2.0**23)
_L64_P21, _L64_P19, _L64_P17, _L64_P15, _L64_P13, _L64_P11 = (1.0 / k for k in (21, 19, 17, 15, 13, 11))
_L64_P9, _L64_P7, _L64_P5, _L64_P3 = (1.0 / k for k in (9, 7, 5, 3))
_L64_SQRT2, _L64_TINY, _L64_SUB = 1.4142135623730951, 2.2250738585072014e-308, 2.0**52
_F32_INF, _F64_INF, _F32_NAN = _F32(np.inf), np.inf, _F32(np.nan)


def _per_float(stub, f32_impl, f64_impl):
    """Give ``stub`` (a documented placeholder) its float32 and float64 versions: a
    numba overload compiled with the polynomial options (contracted multiply-adds)."""

    @overload(stub, jit_options=_POLY_OPTS)
    def by_dtype(x):
        if x == types.float32:
            return f32_impl
        if x == types.float64:
            return f64_impl

    return by_dtype


def _exp(x):
    """exp in x's own precision, vectorisable. exp(-inf) = 0, exp(NaN) = NaN,
    exp(+inf) = inf, subnormal results are produced (not flushed)."""


@njit(**_POLY_OPTS)
def _exp32_in_range(xc):
    """exp of xc in [_E32_LO, _E32_HI]."""
    t = xc * _E32_LOG2E + _E32_MAGIC
    n = t - _E32_MAGIC
    r = (xc - n * _E32_LN2_HI) - n * _E32_LN2_LO
    poly = (((((_E32_P0 * r + _E32_P1) * r + _E32_P2) * r + _E32_P3) * r + _E32_P4) * r + _E32_P5) * (r * r)
    poly = poly + r + _F32_ONE
    return _scale_pow2(poly, t)


def _exp32(x):
    y = _exp32_in_range(_minnum(_maxnum(x, _E32_LO), _E32_HI))  # NaN (fixed below) and -inf into range
    return x if x != x else y


@njit(**_POLY_OPTS)
def _exp64_in_range(xc):
    """exp of xc in [_E64_LO, _E64_HI]."""
    t = xc * _E64_LOG2E + _E64_MAGIC
    n = t - _E64_MAGIC
    r = (xc - n * _E64_LN2_HI) - n * _E64_LN2_LO
    poly = ((((((_E64_P13 * r + _E64_P12) * r + _E64_P11) * r + _E64_P10) * r + _E64_P9) * r + _E64_P8) * r
            + _E64_P7) * r + _E64_P6  # fmt: skip
    poly = ((((poly * r + _E64_P5) * r + _E64_P4) * r + _E64_P3) * r + _E64_P2) * (r * r) + r + 1.0
    return _scale_pow2(poly, t)


def _exp64(x):
    y = _exp64_in_range(_minnum(_maxnum(x, _E64_LO), _E64_HI))
    return x if x != x else y


_per_float(_exp, _exp32, _exp64)


def _exp_neg(x):
    """exp of x <= 0 or -inf (not NaN): _exp without the overflow clamp and the NaN
    fix-up; in float32 also a shorter polynomial (``_exp32_neg``)."""


@njit(**_POLY_OPTS)
def _exp32_poly5(r):
    """e**r for |r| <= ln2 / 2, degree 5 (the x <= 0 exps' polynomial)."""
    q = (((_EN32_P5 * r + _EN32_P4) * r + _EN32_P3) * r + _EN32_P2) * r + _F32_ONE
    return q * r + _F32_ONE


def _exp32_neg(x):
    """exp of x <= 0 (NaN -> NaN; below -88, -inf included, 0). The scale 2**n is
    multiplied in (no clamp: n + 127 >= 0 for x >= -88), so a NaN's payload bits
    never reach the exponent."""
    t = x * _E32_LOG2E + _EN32_MAGIC
    n = t - _EN32_MAGIC
    y = _exp32_poly5((x - n * _E32_LN2_HI) - n * _E32_LN2_LO) * _pow2_from_bits(t)
    return _F32_ZERO if x < _EN32_FLUSH else y


def _exp_near(x):
    """exp of x in [_NEAR, 0] only (no -inf, no NaN); float64 takes _exp_neg's."""


def _exp32_near(x):
    t = x * _E32_LOG2E + _E32_MAGIC
    n = t - _E32_MAGIC
    return _times_pow2_bits(_exp32_poly5(_reduce_near(x, n)), t)


if llvm_binding.get_host_cpu_features().get("fma", False):
    def _reduce_near(x, n):
        """x - n ln2 in one step: n * ln2 is exact inside the multiply-add."""
        return x - n * _E32_LN2
else:
    def _reduce_near(x, n):
        """x - n ln2 in two steps: without FMA, n * ln2 rounded first would cost up
        to 68 ulp; n times the short ln2_hi is exact."""
        return (x - n * _E32_LN2_HI) - n * _E32_LN2_LO
_reduce_near = njit(**_POLY_OPTS)(_reduce_near)


def _exp64_neg(x):
    return _exp64_in_range(_maxnum(x, _E64_LO))


_per_float(_exp_near, _exp32_near, _exp64_neg)
_per_float(_exp_neg, _exp32_neg, _exp64_neg)


def _log(x):
    """log in x's own precision, vectorisable: log(0) = -inf, log(<0) = NaN,
    log(inf) = inf, log(NaN) = NaN, subnormal inputs handled."""


def _log32(x):
    sub = x < _L32_TINY  # subnormal (or <= 0: fixed at the end)
    xs = x * _L32_SUB if sub else x
    e = _exponent(xs) - (_F32(23.0) if sub else _F32_ZERO)
    m = _mantissa(xs)
    big = m > _L32_SQRT2
    m = m * _F32_HALF if big else m
    e = e + _F32_ONE if big else e
    f = m - _F32_ONE
    z = f * f
    y = (((_L32_P0 * f + _L32_P1) * f + _L32_P2) * f + _L32_P3) * f + _L32_P4
    y = ((((y * f + _L32_P5) * f + _L32_P6) * f + _L32_P7) * f + _L32_P8) * f * z
    y = y + e * _L32_Q1 - _F32_HALF * z
    r = f + y + e * _L32_Q2
    r = r if x > _F32_ZERO else (-_F32_INF if x == _F32_ZERO else _F32_NAN)
    return r if x < _F32_INF else x


def _log64(x):
    sub = x < _L64_TINY
    xs = x * _L64_SUB if sub else x
    e = _exponent(xs) - (52.0 if sub else 0.0)
    m = _mantissa(xs)
    big = m > _L64_SQRT2
    m = m * 0.5 if big else m
    e = e + 1.0 if big else e
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    poly = ((((_L64_P21 * z + _L64_P19) * z + _L64_P17) * z + _L64_P15) * z + _L64_P13) * z + _L64_P11
    poly = ((((poly * z + _L64_P9) * z + _L64_P7) * z + _L64_P5) * z + _L64_P3) * z + 1.0
    r = e * _E64_LN2_HI + (e * _E64_LN2_LO + 2.0 * s * poly)
    r = r if x > 0.0 else (-_F64_INF if x == 0.0 else np.nan)
    return r if x < _F64_INF else x


_per_float(_log, _log32, _log64)


def _log1p_unit(u):
    """log(1 + u) for u in [0, 1] or NaN (the softplus tail log1p(exp(-|v|))),
    accurate for tiny u."""


# float32: 2 atanh(s), s = u / (2 + u) in [0, 1/3], by a degree-4 polynomial in s**2
# (the Cython kernels' fx_log1p_unit_f32): one division and no exponent handling,
# about half the operations of log(1 + u) through _log.
_L1P_P1, _L1P_P2 = _F32(float.fromhex("0x1.55554cp-2")), _F32(float.fromhex("0x1.99ad6cp-3"))
_L1P_P3, _L1P_P4 = _F32(float.fromhex("0x1.21249ap-3")), _F32(float.fromhex("0x1.12f598p-3"))
_F32_TWO = _F32(2.0)


def _log1p_unit32(u):
    s = u / (_F32_TWO + u)
    z = s * s
    p = (_L1P_P4 * z + _L1P_P3) * (z * z) + (_L1P_P2 * z + _L1P_P1)
    t = s + s
    return t + t * (z * p)


def _log1p_unit64(u):
    """log(w) + (u - (w - 1)) / w, w = 1 + u rounded: the second term restores what
    the rounding of w lost."""
    w = u + 1.0
    return _log(w) + (u - (w - 1.0)) / w


@overload(_log1p_unit, jit_options=_POLY_OPTS)  # (its argument is u: not _per_float's x)
def _log1p_unit_ol(u):
    if u == types.float32:
        return _log1p_unit32
    if u == types.float64:
        return _log1p_unit64


def _one_like(u):
    """1 in u's float type."""


@overload(_one_like, jit_options=_OPTS)
def _one_like_ol(u):
    if u == types.float32:
        return lambda u: _F32_ONE
    return lambda u: 1.0


def _zero_like(u):
    """0 in u's float type."""


@overload(_zero_like, jit_options=_OPTS)
def _zero_like_ol(u):
    if u == types.float32:
        return lambda u: _F32_ZERO
    return lambda u: 0.0


def _inf_like(u):
    """+inf in u's float type."""


@overload(_inf_like, jit_options=_OPTS)
def _inf_like_ol(u):
    if u == types.float32:
        return lambda u: _F32_INF
    return lambda u: _F64_INF


# --------------------------------------------------------------------------- element formulas
# Every element formula computes in the type of its first argument, the compute
# dtype, with coefficients rounded to it once per row or block: one float64 value in
# a loop makes LLVM use 4 lanes (ymm of float64) for the whole loop instead of 8.


def _as(v, like):
    """``v`` (any x / target / weight element) converted to ``like``'s float type."""


@overload(_as, jit_options=_OPTS)
def _as_ol(v, like):
    single = like == types.float32
    if isinstance(v, types.Record):  # float16 bits
        if single:
            return lambda v, like: _half_to_float(v.bits)
        return lambda v, like: np.float64(_half_to_float(v.bits))
    if isinstance(v, types.Boolean):
        if single:
            return lambda v, like: _F32_ONE if v else _F32_ZERO
        return lambda v, like: 1.0 if v else 0.0
    if single:
        return lambda v, like: np.float32(v)
    return lambda v, like: np.float64(v)


@_helper(inline=True)
def _sigmoids(v):
    """(sigmoid(v), sigmoid(-v)), each computed directly from e = exp(-|v|)."""
    e = _exp(-abs(v))
    d = _one_like(v) + e
    big, small = _one_like(v) / d, e / d  # sigmoid(|v|), sigmoid(-|v|)
    nonneg = v >= _zero_like(v)
    return (big if nonneg else small), (small if nonneg else big)


@_helper(inline=True)
def _bce_logit_loss(v, y, pw):
    """(1-y) softplus(v) + pw y softplus(-v): a zero coefficient gives exactly 0 even
    where its softplus is inf; a NaN logit gives NaN."""
    return _bce_logit_loss_l(v, _log1p_unit(_exp_neg(-abs(v))), y, pw)


@_helper(inline=True)
def _bce_logit_loss_l(v, tail, y, pw):
    """_bce_logit_loss with the softplus tail log1p(exp(-|v|)) given (taken in loops
    of their own, see _bce_tails); the tail may be anything where v is NaN."""
    zero, one = _zero_like(v), _one_like(v)
    neg, pos = one - y, pw * y
    sp_pos = ((v if v > zero else zero) + tail) if neg != zero else zero  # softplus(v)
    sp_neg = ((-v if v < zero else zero) + tail) if pos != zero else zero  # softplus(-v)
    loss = neg * sp_pos + pos * sp_neg
    return loss if v == v else v


@_helper(inline=True)
def _bce_logit_loss_fin(v, tail, y, pw):
    """_bce_logit_loss_l for a finite v: every softplus is finite, so the selects that
    keep 0 * inf from making NaN have nothing to do. The same operations otherwise,
    hence the same bits (no contraction: these helpers carry no fast-math flag)."""
    zero, one = _zero_like(v), _one_like(v)
    neg, pos = one - y, pw * y
    return neg * ((v if v > zero else zero) + tail) + pos * ((-v if v < zero else zero) + tail)


@njit(**_POLY_OPTS)
def _bce_logit_loss_unit_fin(v, tail, t, keep, half_ls):
    """_bce_logit_loss_fin with pos_weight 1 (the default), for the target t smoothed
    to y = t keep + half_ls: (1-y) softplus(v) + y softplus(-v) = (max(v, 0) - y v) +
    tail, three operations where the general form takes about ten, and no
    cancellation for y in [0, 1] (both terms are >= 0). Its two multiply-adds are
    contracted, as in the Cython kernels (one product each: no choice of which)."""
    zero = _zero_like(v)
    return ((v if v > zero else zero) - (t * keep + half_ls) * v) + tail


@njit(**_POLY_OPTS)
def _bce_logit_loss_unit(v, tail, t, keep, half_ls):
    """_bce_logit_loss_unit_fin's bits for a finite v, _bce_logit_loss_l's values (with
    pos_weight 1) for an infinite or NaN one."""
    if v - v != _zero_like(v):
        return _bce_logit_loss_l(v, tail, t * keep + half_ls, _one_like(v))
    return _bce_logit_loss_unit_fin(v, tail, t, keep, half_ls)


@_helper
def _bce_tails(xv, tail):
    """tail[j] = log1p(exp(-|x_j|)), the softplus tails of a block; returns whether
    every x_j is finite (the loss may then take _bce_logit_loss_fin). The exps and
    the log1p each run in a loop of their own: in one loop with the loss they make
    one long dependency chain per vector, and the CPU's out-of-order window holds
    too few of them to overlap."""
    zero = _compute_scalar(tail, 0.0)
    big = _key(zero)  # the largest |x_j| by its bits: one integer max a vector
    for j in range(tail.shape[0]):
        a = abs(_x_value(xv[j]))
        tail[j] = _exp_neg(-a)
        big = _imax(big, _key(a))
    for j in range(tail.shape[0]):
        tail[j] = _log1p_unit(tail[j])
    return big < _key(_inf_like(zero))  # NaN's bits are above inf's


@_helper(inline=True)
def _bce_logit_grad(v, y, pw):
    """(1-y) sigmoid(v) - pw y sigmoid(-v)."""
    s_pos, s_neg = _sigmoids(v)
    return (_one_like(v) - y) * s_pos - pw * y * s_neg


@_helper(inline=True)
def _clip(p, lo, hi):
    """(p clipped to [lo, hi], whether it was clipped). NaN stays NaN, unclipped."""
    return (lo if p < lo else (hi if p > hi else p)), (p < lo) | (p > hi)


@_helper(inline=True)
def _out_of_range(p):
    """p outside [0, 1] (NaN is not)."""
    return (p < _zero_like(p)) | (p > _one_like(p))


@_helper(inline=True)
def _bce_prob_loss(p, y, pw, lo, hi):
    """-(pw y log p + (1-y) log(1-p)), p clipped, 1 - p formed in the compute dtype."""
    one = _one_like(p)
    pc, _ = _clip(p, lo, hi)
    return -(pw * y * _log(pc) + (one - y) * _log(one - pc))


@_helper(inline=True)
def _bce_prob_grad(p, y, pw, lo, hi):
    """-pw y / p + (1-y) / (1-p); 0 where p was clipped."""
    one = _one_like(p)
    pc, clipped = _clip(p, lo, hi)
    g = -pw * y / pc + (one - y) / (one - pc)
    return _zero_like(p) if clipped else g


@_helper(inline=True)
def _neg_log_clip(p, lo, hi):
    """-log(clip(p))."""
    pc, _ = _clip(p, lo, hi)
    return -_log(pc)


@_helper(inline=True)
def _xent_prob_grad(p, a, lo, hi):
    """-a / p; 0 where p was clipped."""
    pc, clipped = _clip(p, lo, hi)
    g = -a / pc
    return _zero_like(p) if clipped else g


@_helper(inline=True)
def _softmax_grad(v, m, a, big_a, a_over_s, ar_over_s):
    """dl/dx_c = A q_c - a_c with q_c = exp(x_c - m) / S. At the row max of a row
    where it dominates (R < 1, so the max is unique; ``ar_over_s >= 0``, see
    ``_grad_coefs``) it is formed as (A - a) - A R / S, exact however small R is."""
    # v - m <= 0 wherever the result is kept: callers overwrite the rows whose max is
    # not finite. Computed unconditionally, then selected (a branch blocks vectorisation).
    e = _exp_neg(v - m)
    return (big_a - a) - ar_over_s if (v == m) & (ar_over_s >= 0) else a_over_s * e - a


@_helper
def _grad_coefs(rest, big_a):
    """(A / S, A R / S) with S = 1 + R; the second is -1 when R >= 1 (the max does
    not dominate, or is tied): then (A - a) - A R / S, in float32, would cancel
    to ~1e-3 relative error at a class holding 1/S, so A / S - a is used."""
    s = 1.0 + rest
    return big_a / s, (big_a * rest / s if rest < 1.0 else -1.0)


@_helper
def _softmax_loss(m, rest, gap, big_a):
    """Row loss: sum_{a_c != 0} a_c (m - x_c) + A log1p(R) (``gap`` is the sum).
    NaN or +inf in the row: NaN. Every logit -inf: +inf if A > 0, else 0."""
    if not m < _inf_like(m):
        return np.nan
    if m == -_inf_like(m):
        return np.inf if big_a > 0.0 else 0.0
    return gap + big_a * math.log1p(rest)


@_helper
def _special_grad(m, big_a):
    """The gradient of a row whose max is not finite: NaN, or 0 for an all -inf row
    without target weight."""
    return 0.0 if (m == -_inf_like(m)) & (big_a <= 0.0) else np.nan


@_helper
def _label_gap(a, m, x_y):
    """a (m - x_y), exactly 0 when a == 0 (even if x_y = -inf)."""
    return a * (np.float64(m) - np.float64(x_y)) if a != 0.0 else 0.0


@_helper
def _finite(m):
    return (m > -_inf_like(m)) & (m < _inf_like(m))


# --------------------------------------------------------------------------- argument kinds
# A few arguments change the compiled code through their *type* (numba specialises
# per type and prunes `is None` branches):
#   g       None (loss only) | array (grad_out) | True (in place: write into x)
#   t       None (sparse: target weights from class weights) | array (dense targets)
#   layout  True (views with stride == itemsize) | None (any stride)
#   pw      1-D (C,) pos_weight constant over the inner axis | 2-D (C, I)


def _grad_array(x, g):
    """The array the gradient is written to: g, or x itself in place."""


@overload(_grad_array, jit_options=_OPTS)
def _grad_array_ol(x, g):
    if isinstance(g, types.Array):
        return lambda x, g: g
    return lambda x, g: x


def _rview(a, o, i, n, layout):
    """Row (o, i) of a 3-D array as a 1-D view along the class axis."""


@overload(_rview, jit_options=_OPTS)
def _rview_ol(a, o, i, n, layout):
    if isinstance(layout, types.NoneType):
        return lambda a, o, i, n, layout: _row_view_a(a, o, 0, i, n)
    return lambda a, o, i, n, layout: _row_view_c(a, o, 0, i, n)


def _grad_rview(xr, g, o, i, n, layout):
    """The gradient row matching the x row ``xr`` (``xr`` itself in place)."""


@overload(_grad_rview, jit_options=_OPTS)
def _grad_rview_ol(xr, g, o, i, n, layout):
    if isinstance(g, types.Array):
        return lambda xr, g, o, i, n, layout: _rview(g, o, i, n, layout)
    return lambda xr, g, o, i, n, layout: xr


def _exps_store(gr, g):
    """Where _softmax_row stores a row's exps for the gradient: the gradient row, or
    True in place (the x row itself, see _exps_dest); None without a gradient."""


@overload(_exps_store, jit_options=_OPTS)
def _exps_store_ol(gr, g):
    if isinstance(g, types.Array):
        return lambda gr, g: gr
    if isinstance(g, types.NoneType):
        return lambda gr, g: None
    return lambda gr, g: True


def _exps_dest(xb, er, b0, b1):
    """The block of ``er`` matching the x block ``xb`` = x_row[b0:b1]: ``xb`` itself
    in place (er True), None without a gradient (er None). The same view, not a
    second one of the same memory: LLVM's overlap check would fail and send the
    read-then-write loop to its scalar copy."""


@overload(_exps_dest, jit_options=_OPTS)
def _exps_dest_ol(xb, er, b0, b1):
    if isinstance(er, types.Array):
        return lambda xb, er, b0, b1: er[b0:b1]
    if isinstance(er, types.NoneType):
        return lambda xb, er, b0, b1: None
    return lambda xb, er, b0, b1: xb


def _keep_exp(eb, c, e):
    """eb[c] = e, or nothing when eb is None: chosen by type, no select in the loop."""


@overload(_keep_exp, jit_options=_OPTS)
def _keep_exp_ol(eb, c, e):
    if isinstance(eb, types.NoneType):
        return lambda eb, c, e: None

    def keep(eb, c, e):
        eb[c] = e
    return keep


def _grad_cview(xv, g, o, c, i0, n):
    """The gradient column block matching ``xv`` (``xv`` itself in place)."""


@overload(_grad_cview, jit_options=_OPTS)
def _grad_cview_ol(xv, g, o, c, i0, n):
    if isinstance(g, types.Array):
        return lambda xv, g, o, c, i0, n: _col_view_c(g, o, c, i0, n)
    return lambda xv, g, o, c, i0, n: xv


def _t_rview(t, o, i, n, layout):
    """Target row, or None for sparse kernels."""


@overload(_t_rview, jit_options=_OPTS)
def _t_rview_ol(t, o, i, n, layout):
    if isinstance(t, types.NoneType):
        return lambda t, o, i, n, layout: None
    return lambda t, o, i, n, layout: _rview(t, o, i, n, layout)


def _t_cview(t, o, c, i0, n):
    """Target column block, or None for sparse kernels."""


@overload(_t_cview, jit_options=_OPTS)
def _t_cview_ol(t, o, c, i0, n):
    if isinstance(t, types.NoneType):
        return lambda t, o, c, i0, n: None
    return lambda t, o, c, i0, n: _col_view_c(t, o, c, i0, n)


def _weight(t, j, w_c, keep, ls_c):
    """Target weight of one class: w_c (sparse smoothing part, t None) or, for a
    dense target t[j], a_c = w_c (t keep + ls/C)."""


@overload(_weight, jit_options=_OPTS)
def _weight_ol(t, j, w_c, keep, ls_c):
    if isinstance(t, types.NoneType):
        return lambda t, j, w_c, keep, ls_c: w_c
    return lambda t, j, w_c, keep, ls_c: w_c * (_as(t[j], w_c) * keep + ls_c)


def _pw_row(pw, i):
    """pos_weight[:, i]: the (C,) vector itself when it does not depend on i."""


@overload(_pw_row, jit_options=_OPTS)
def _pw_row_ol(pw, i):
    if pw.ndim == 1:
        return lambda pw, i: pw
    return lambda pw, i: pw[:, i]


def _pw_col(pw, c, i0, n):
    """pos_weight[c, i0:i0+n]: a scalar when it does not depend on i."""


@overload(_pw_col, jit_options=_OPTS)
def _pw_col_ol(pw, c, i0, n):
    if pw.ndim == 1:
        return lambda pw, c, i0, n: pw[c]
    return lambda pw, c, i0, n: pw[c, i0 : i0 + n]


# --------------------------------------------------------------------------- row building blocks
# A row is a 1-D view ``xr`` of C elements (contiguous on the fast path). Loops run
# over views from index 0: with `for c in range(c0, c1)` numba's negative-index
# wraparound cannot be proven dead and LLVM turns every load into a gather.

#: Elements per chunk of a long row: the chunk's max is taken while it streams in
#: from memory, then its exp-sum re-reads it from L1 (16 KiB of float32).
_CHUNK = 4096
#: Terms per compute-dtype partial sum (then added into a float64 sum).
_BLOCK = 64
#: The same for the softmax exp sums: 16 terms per float32 lane (two 8-lane
#: accumulators), as in the Cython kernels' runs; each block's horizontal sum and
#: conversion cost ~5% of a 64-element block.
_SUM_BLOCK = 256


def _part(a, c0, c1):
    """a[c0:c1] for an array; None and scalars (a broadcast weight) as they are."""


@overload(_part, jit_options=_OPTS)
def _part_ol(a, c0, c1):
    if isinstance(a, types.Array):
        return lambda a, c0, c1: a[c0:c1]
    return lambda a, c0, c1: a


@_helper
def _row_range(xr):
    """(max, min) of a row, through integer keys: the max is a NaN when the row
    holds a positive NaN, the min when it holds a negative one."""
    v = _x_value(xr[0])
    hi = lo = _key(v)
    for c in range(1, xr.shape[0]):
        k = _key(_x_value(xr[c]))
        hi = max(hi, k)
        lo = min(lo, k)
    return _unkey(hi, v), _unkey(lo, v)


@_helper
def _row_exp_sum(xr, m, near, er, ahead):
    """(sum of exp(x_c - m) over x_c != m, count of x_c == m); near: every x_c - m
    lies in _exp_near's range, the cheaper exp serves; er: None, or where to store
    every exp(x_c - m) for the gradient (may be xr itself); ahead: 0, or the byte
    distance to the data read next (the next chunk or row), whose lines each block
    asks for while its exps compute. Terms are added in the compute dtype over
    blocks of _SUM_BLOCK elements, each block sum then into a float64 total: a
    vector lane adds at most 16 terms per block, so a float32 partial sum errs by a
    few ulp (the size of exp's own error), and the loop keeps 8 float32 lanes (a
    float64 accumulator in it halves the width). The loops sit in this one
    function: a separate, already vectorised block function is too big for LLVM to
    inline, and the call per block cost as much as the exps."""
    zero, one = _zero_like(m), _one_like(m)
    n = xr.shape[0]
    rest = 0.0
    ties = 0.0
    for b0 in range(0, n, _SUM_BLOCK):
        b1 = min(n, b0 + _SUM_BLOCK)
        xb = xr[b0:b1]  # indexed from 0 (see the section comment)
        if ahead:  # (a loop of its own: a prefetch in the exp loop keeps it scalar)
            for k in range(0, xb.shape[0] * xb.itemsize, 64):
                _prefetch(xb, ahead + k)
        part = zero
        count = zero
        eb = _exps_dest(xb, er, b0, b1)  # None: the exps are not kept
        # two loops (in range or not): each a straight vector loop; an exp chosen per
        # element would be a select in both (and LLVM does not unswitch a loop on
        # an invariant branch)
        if near:
            for c in range(xb.shape[0]):
                v = _x_value(xb[c])
                e = _exp_near(v - m)
                _keep_exp(eb, c, e)
                part = _acc(part, e if v != m else zero)
                count = _acc(count, one if v == m else zero)
        else:
            for c in range(xb.shape[0]):
                v = _x_value(xb[c])
                e = _exp_neg(v - m)  # v <= m, no NaN: the max pass stopped at one
                _keep_exp(eb, c, e)
                part = _acc(part, e if v != m else zero)
                count = _acc(count, one if v == m else zero)
        rest += np.float64(part)
        ties += np.float64(count)
    return rest, ties


@_helper
def _row_gap_sum(xr, tr, w, ref, keep, ls_c):
    """(sum of b_c (ref - x_c) over b_c != 0, sum of b_c), float64, with b_c from
    ``_weight`` (only with label smoothing or dense targets)."""
    gap = 0.0
    total = 0.0
    for c in range(xr.shape[0]):
        b = _weight(tr, c, w[c], keep, ls_c)
        d = ref - np.float64(_x_value(xr[c]))
        gap = _acc(gap, b * d if b != 0.0 else 0.0)
        total = _acc(total, b)
    return gap, total


@_helper
def _rows_follow(x):
    """Row (o + 1, :, 0) starts where row (o, :, 0) ends: an (N, C) C-contiguous x."""
    n_o, n_c, n_i = x.shape
    return n_i == 1 and x.strides[1] == x.itemsize and x.strides[0] == n_c * x.itemsize


@_helper
def _softmax_row(xr, tr, w, keep, ls_c, dense, er, ahead):
    """Statistics of one logit row in one sweep over chunks (online max):
    (m, R, gap, total, near) with m the row max, R = S - 1 (S = sum_c exp(x_c - m),
    the first argmax excluded exactly, ties included), gap = sum_{b_c != 0} b_c
    (m - x_c) and total = sum_c b_c when ``dense`` (b_c from ``_weight``), near:
    every x_c - m in _exp_near's range. A NaN or +inf stops the sweep and returns
    m = NaN or +inf. er: None, or (rows of one chunk only) where to store every
    exp(x_c - m) for the gradient (_exps_store), perhaps xr itself: x is then read
    for the last time by the exp pass. ahead: the rows follow one another in memory,
    so each chunk's exp pass asks for the lines after the chunk (the next chunk or
    row) and the next range pass finds them in cache."""
    n = xr.shape[0]
    m = -_inf_like(_x_value(xr[0]))
    row_lo = -m
    rest = 0.0
    ties = 0.0
    gap = 0.0
    total = 0.0
    for c0 in range(0, n, _CHUNK):
        c1 = min(n, c0 + _CHUNK)
        xc = xr[c0:c1]
        mc, lo = _row_range(xc)
        if lo != lo:  # a negative NaN
            return lo, 0.0, 0.0, 0.0, False
        if not mc < _inf_like(mc):
            return mc, 0.0, 0.0, 0.0, False
        row_lo = min(row_lo, lo)
        if mc > m:
            if m > -_inf_like(m):  # rescale what was summed to the new max
                rest = (rest + ties) * math.exp(np.float64(m) - np.float64(mc))
                if total != 0.0:
                    gap += (np.float64(mc) - np.float64(m)) * total
            ties = 0.0
            m = mc
        if dense:  # a -inf chunk uses ref 0: b (0 - -inf) = inf, the right answer
            ref = np.float64(m) if m > -_inf_like(m) else 0.0
            part, weight = _row_gap_sum(xc, _part(tr, c0, c1), w[c0:c1], ref, keep, ls_c)
            gap += part
            total += weight
        if m > -_inf_like(m):  # (while m = -inf every element so far is -inf: exp = 0)
            dist = (c1 - c0) * xc.itemsize if ahead else 0
            part, count = _row_exp_sum(xc, m, np.float64(lo) - np.float64(m) >= _NEAR, er, dist)
            rest += part
            ties += count
    return m, rest + (ties - 1.0), gap, total, np.float64(row_lo) - np.float64(m) >= _NEAR


@_helper
def _softmax_grad_from_exps(er, tr, wc, keep, ls_c, scale, big_a, a_over_s, ar_over_s, gw):
    """_softmax_grad_row from the exps that _softmax_row stored in ``er`` (the
    gradient row), in place: no second exp pass. e == 1 stands for x_c == m in the
    dominant-max formula: where e rounds to 1 without being the max, (A - a) - A R / S
    is the same value as A e / S - a, only more exact."""
    if ar_over_s < _zero_like(ar_over_s):
        for c in range(er.shape[0]):
            a = scale * _weight(tr, c, wc[c], keep, ls_c)
            er[c] = gw * (a_over_s * er[c] - a)
        return
    one = _one_like(big_a)
    for c in range(er.shape[0]):
        a = scale * _weight(tr, c, wc[c], keep, ls_c)
        e = er[c]
        er[c] = gw * ((big_a - a) - ar_over_s if e == one else a_over_s * e - a)


@_helper
def _softmax_grad_row(xr, g, o, i, layout, tr, wc, keep, ls_c, scale, m, big_a, a_over_s, ar_over_s, gw, near):
    """Row (o, i) of the gradient: gw * dl/dx_c with a_c = scale * b_c (the sparse
    label is fixed up by the caller); every argument in the compute dtype. With
    ``near`` (_softmax_row's) and no dominant max (ar_over_s < 0: no exact-max
    select to make), the usual case, a loop with _exp_near and no select.

    The destination view is made here, from the gradient mode ``g``: in place it
    is ``xr`` itself, the same value, so LLVM vectorises the read-then-write loop.
    Passed in as a second parameter, it would be a possibly-overlapping pointer:
    the runtime overlap check fails in place and the scalar loop runs (4x slower)."""
    gr = _grad_rview(xr, g, o, i, xr.shape[0], layout)
    if near and ar_over_s < _zero_like(ar_over_s):
        for c in range(xr.shape[0]):
            a = scale * _weight(tr, c, wc[c], keep, ls_c)
            gr[c] = gw * (a_over_s * _exp_near(_x_value(xr[c]) - m) - a)
        return
    for c in range(xr.shape[0]):
        a = scale * _weight(tr, c, wc[c], keep, ls_c)
        gr[c] = gw * _softmax_grad(_x_value(xr[c]), m, a, big_a, a_over_s, ar_over_s)


@_helper(inline=True)
def _softmax_row_grad(x, xr, g, gr, o, i, layout, tr, wc, keep, ls_c, scale, m, rest, big_a, gw, near, stored):
    """Row (o, i)'s gradient from _softmax_row's statistics (m finite): from the exps
    it stored in ``gr`` when ``stored``, else with an exp pass over ``xr``; the
    weights and coefficients as in _softmax_grad_row. Returns the float64
    (A / S, A R / S) (_grad_coefs) for the caller's exact values."""
    a_over_s, ar_over_s = _grad_coefs(rest, big_a)
    coefs = (_compute_scalar(x, big_a), _compute_scalar(x, a_over_s), _compute_scalar(x, ar_over_s),
             _compute_scalar(x, gw))
    if stored:
        _softmax_grad_from_exps(gr, tr, wc, keep, ls_c, scale, *coefs)
    else:
        _softmax_grad_row(xr, g, o, i, layout, tr, wc, keep, ls_c, scale, m, *coefs, near)
    return a_over_s, ar_over_s


@_helper
def _put(a, k, value):
    """a[k] = value. Drivers write into views through this call: numba's parfor
    dead-code elimination does not know that a view made by an intrinsic aliases
    an argument, and silently drops a plain `view[k] = value` in a prange body."""
    a[k] = value


@_helper
def _put3(a, o, c, i, value):
    a[o, c, i] = value


@_helper
def _fill(gr, value):
    for c in range(gr.shape[0]):
        gr[c] = value


@_helper
def _xent_probs_row(xr, tr, wc, keep, ls_c, lo, hi):
    """(sum_c b_c * -log(clip(p_c)), count of p_c outside [0, 1]); block partial
    sums in the compute dtype as in _row_exp_sum."""
    n = xr.shape[0]
    loss = 0.0
    bad = 0.0
    for b0 in range(0, n, _BLOCK):
        b1 = min(n, b0 + _BLOCK)
        xb, tb, wb = xr[b0:b1], _part(tr, b0, b1), wc[b0:b1]  # indexed from 0
        part = _zero_like(lo)
        count = _zero_like(lo)
        for c in range(xb.shape[0]):
            p = _x_value(xb[c])
            part = _acc(part, _weight(tb, c, wb[c], keep, ls_c) * _neg_log_clip(p, lo, hi))
            count = _acc(count, _one_like(p) if _out_of_range(p) else _zero_like(p))
        loss += np.float64(part)
        bad += np.float64(count)  # (counts in float: an int64 lane halves the width)
    return loss, bad


@_helper
def _xent_probs_grad_row(xr, g, o, i, layout, tr, wc, keep, ls_c, scale, lo, hi, gw):
    gr = _grad_rview(xr, g, o, i, xr.shape[0], layout)  # (see _softmax_grad_row)
    for c in range(xr.shape[0]):
        a = scale * _weight(tr, c, wc[c], keep, ls_c)
        gr[c] = gw * _xent_prob_grad(_x_value(xr[c]), a, lo, hi)


@_helper
def _bce_logits_row(xr, tr, pwr, keep, half_ls):
    n = xr.shape[0]
    loss = 0.0
    for b0 in range(0, n, _BLOCK):
        b1 = min(n, b0 + _BLOCK)
        xb, tb, pb = xr[b0:b1], tr[b0:b1], _part(pwr, b0, b1)  # indexed from 0
        part = _zero_like(keep)
        for c in range(xb.shape[0]):
            v = _x_value(xb[c])
            y = _as(tb[c], v) * keep + half_ls
            part = _acc(part, _bce_logit_loss(v, y, _as(_at(pb, c), v)))
        loss += np.float64(part)
    return loss


@_helper
def _bce_logits_grad_row(xr, g, o, i, layout, tr, pwr, keep, half_ls, scale):
    gr = _grad_rview(xr, g, o, i, xr.shape[0], layout)  # (see _softmax_grad_row)
    for c in range(xr.shape[0]):
        v = _x_value(xr[c])
        y = _as(tr[c], v) * keep + half_ls
        gr[c] = scale * _bce_logit_grad(v, y, _as(_at(pwr, c), v))


@_helper
def _bce_probs_row(xr, tr, pwr, keep, half_ls, lo, hi):
    n = xr.shape[0]
    loss = 0.0
    bad = 0.0
    for b0 in range(0, n, _BLOCK):
        b1 = min(n, b0 + _BLOCK)
        xb, tb, pb = xr[b0:b1], tr[b0:b1], _part(pwr, b0, b1)  # indexed from 0
        part = _zero_like(lo)
        count = _zero_like(lo)
        for c in range(xb.shape[0]):
            p = _x_value(xb[c])
            y = _as(tb[c], p) * keep + half_ls
            part = _acc(part, _bce_prob_loss(p, y, _as(_at(pb, c), p), lo, hi))
            count = _acc(count, _one_like(p) if _out_of_range(p) else _zero_like(p))
        loss += np.float64(part)
        bad += np.float64(count)  # (counts in float: an int64 lane halves the width)
    return loss, bad


@_helper
def _bce_probs_grad_row(xr, g, o, i, layout, tr, pwr, keep, half_ls, lo, hi, scale):
    gr = _grad_rview(xr, g, o, i, xr.shape[0], layout)  # (see _softmax_grad_row)
    for c in range(xr.shape[0]):
        p = _x_value(xr[c])
        y = _as(tr[c], p) * keep + half_ls
        gr[c] = scale * _bce_prob_grad(p, y, _as(_at(pwr, c), p), lo, hi)


# --------------------------------------------------------------------------- column building blocks
# A block is rows (o, i0 .. i0+nb) of an array whose inner axis is contiguous: for each
# class c, x[o, c, i0:i0+nb] is a contiguous vector, so the loops run across rows.
# Per-row state lives in small (nb,) scratch arrays. Sums over classes go into
# compute-dtype partial arrays, flushed into float64 every _BLOCK classes.


def _compute_zeros(x, k, n):
    """A zeroed (k, n) array of x's compute dtype."""


@overload(_compute_zeros, jit_options=_OPTS)
def _compute_zeros_ol(x, k, n):
    if isinstance(x.dtype, types.Record) or x.dtype == types.float32:
        return lambda x, k, n: np.zeros((k, n), np.float32)
    return lambda x, k, n: np.zeros((k, n), np.float64)


def _compute_empty(x, n):
    """An uninitialised (n,) array of x's compute dtype."""


@overload(_compute_empty, jit_options=_OPTS)
def _compute_empty_ol(x, n):
    if isinstance(x.dtype, types.Record) or x.dtype == types.float32:
        return lambda x, n: np.empty(n, np.float32)
    return lambda x, n: np.empty(n, np.float64)


@_helper
def _flush(total, part):
    """total += part (float64); part = 0."""
    for j in range(total.shape[0]):
        total[j] += np.float64(part[j])
        part[j] = 0.0


@_helper
def _count_out_of_range(xv, bad):
    """bad[j] += 1 where xv[j] is outside [0, 1]. A loop of its own: two accumulator
    arrays updated in one loop need more runtime overlap checks than LLVM will
    emit, and the whole loop stayed scalar."""
    for j in range(bad.shape[0]):
        p = _x_value(xv[j])
        bad[j] += _one_like(p) if _out_of_range(p) else _zero_like(p)


@_helper
def _cols_max(x, o, i0, m):
    nb = m.shape[0]
    xv = _col_view_c(x, o, 0, i0, nb)
    for j in range(nb):
        m[j] = _x_value(xv[j])
    for c in range(1, x.shape[1]):
        xv = _col_view_c(x, o, c, i0, nb)
        for j in range(nb):
            m[j] = _maximum(m[j], _x_value(xv[j]))


@_helper
def _cols_exp_sum(x, o, i0, m, rest, ties, p_rest, p_ties):
    """rest[j] += sum of exp(x - m[j]) over x != m[j], ties[j] += count of x == m[j]."""
    nb, n_c = m.shape[0], x.shape[1]
    zero, one = _zero_like(m[0]), _one_like(m[0])
    for c0 in range(0, n_c, _BLOCK):
        for c in range(c0, min(n_c, c0 + _BLOCK)):
            xv = _col_view_c(x, o, c, i0, nb)
            for j in range(nb):
                v = _x_value(xv[j])
                mj = m[j]
                e = _exp(v - mj)  # unconditionally: an exp under `if` stays a branch, never vectorised
                p_rest[j] += e if v != mj else zero
                p_ties[j] += one if v == mj else zero
        _flush(rest, p_rest)
        _flush(ties, p_ties)


@_helper
def _cols_gap_sum(x, t, w, o, i0, m, keep, ls_c, gap, total):
    """float64 (only with label smoothing or dense targets)."""
    nb = m.shape[0]
    for c in range(x.shape[1]):
        xv = _col_view_c(x, o, c, i0, nb)
        tv = _t_cview(t, o, c, i0, nb)
        w_c = w[c]
        for j in range(nb):
            b = _weight(tv, j, w_c, keep, ls_c)
            d = np.float64(m[j]) - np.float64(_x_value(xv[j]))
            gap[j] += b * d if b != 0.0 else 0.0
            total[j] += b


@_helper
def _cols_softmax_grad(x, g, t, wc, o, i0, keep, ls_c, scale, m, big_a, a_over_s, ar_over_s, gw):
    nb = m.shape[0]
    for c in range(x.shape[1]):
        xv = _col_view_c(x, o, c, i0, nb)
        gv = _grad_cview(xv, g, o, c, i0, nb)
        tv = _t_cview(t, o, c, i0, nb)
        w_c = wc[c]
        for j in range(nb):
            a = scale * _weight(tv, j, w_c, keep, ls_c)
            gv[j] = gw[j] * _softmax_grad(_x_value(xv[j]), m[j], a, big_a[j], a_over_s[j], ar_over_s[j])


@_helper
def _cols_xent_probs(x, t, wc, o, i0, keep, ls_c, lo, hi, loss, bad, p_loss, p_bad):
    nb, n_c = loss.shape[0], x.shape[1]
    for c0 in range(0, n_c, _BLOCK):
        for c in range(c0, min(n_c, c0 + _BLOCK)):
            xv = _col_view_c(x, o, c, i0, nb)
            tv = _t_cview(t, o, c, i0, nb)
            w_c = wc[c]
            for j in range(nb):
                p_loss[j] += _weight(tv, j, w_c, keep, ls_c) * _neg_log_clip(_x_value(xv[j]), lo, hi)
            _count_out_of_range(xv, p_bad)
        _flush(loss, p_loss)
        _flush(bad, p_bad)


@_helper
def _cols_xent_probs_grad(x, g, t, wc, o, i0, keep, ls_c, scale, lo, hi, gw):
    nb = gw.shape[0]
    for c in range(x.shape[1]):
        xv = _col_view_c(x, o, c, i0, nb)
        gv = _grad_cview(xv, g, o, c, i0, nb)
        tv = _t_cview(t, o, c, i0, nb)
        w_c = wc[c]
        for j in range(nb):
            a = scale * _weight(tv, j, w_c, keep, ls_c)
            gv[j] = gw[j] * _xent_prob_grad(_x_value(xv[j]), a, lo, hi)


def _put_loss(acc, tail, j, loss):
    """acc[j] += loss, or with acc None tail[j] = loss (over the tail it was made
    from): the choice is made by type, so the loop keeps no select."""


@overload(_put_loss, jit_options=_OPTS)
def _put_loss_ol(acc, tail, j, loss):
    if isinstance(acc, types.NoneType):
        def put_in_place(acc, tail, j, loss):
            tail[j] = loss
        return put_in_place

    def add(acc, tail, j, loss):
        acc[j] += loss
    return add


def _unit_weight(w):
    """Whether a class's pos_weight is one value, 1 (per-element weights: False)."""


@overload(_unit_weight, jit_options=_OPTS)
def _unit_weight_ol(w):
    if isinstance(w, types.Array):
        return lambda w: False
    return lambda w: w == 1.0


@_helper
def _bce_logits_class(x, t, pw, o, c, i0, keep, half_ls, acc, tail):
    """acc[j] += the losses of class c of rows i0..i0+nb-1 or, with acc None, tail[j]
    = those losses (in place of the tails): the softplus tails first (_bce_tails),
    then the losses."""
    nb = tail.shape[0]
    xv = _col_view_c(x, o, c, i0, nb)
    tv = _col_view_c(t, o, c, i0, nb)
    pwv = _pw_col(pw, c, i0, nb)
    fin = _bce_tails(xv, tail)
    if _unit_weight(pwv):
        if fin:
            for j in range(nb):
                v = _x_value(xv[j])
                _put_loss(acc, tail, j, _bce_logit_loss_unit_fin(v, tail[j], _as(tv[j], v), keep, half_ls))
        else:
            for j in range(nb):
                v = _x_value(xv[j])
                _put_loss(acc, tail, j, _bce_logit_loss_unit(v, tail[j], _as(tv[j], v), keep, half_ls))
    elif fin:
        for j in range(nb):
            v = _x_value(xv[j])
            y = _as(tv[j], v) * keep + half_ls
            _put_loss(acc, tail, j, _bce_logit_loss_fin(v, tail[j], y, _as(_at(pwv, j), v)))
    else:
        for j in range(nb):
            v = _x_value(xv[j])
            y = _as(tv[j], v) * keep + half_ls
            _put_loss(acc, tail, j, _bce_logit_loss_l(v, tail[j], y, _as(_at(pwv, j), v)))


#: Elements per run of a flat binary loss: its x, t, tails and float64 losses stay in L1
#: between the loops (measured: whole 16,384-element blocks through L2 were 10% slower).
_TAIL_RUN = 1024


@_helper
def _cols_bce_logits(x, t, pw, o, i0, nb, keep, half_ls, loss, p_loss, tail, leaves):
    """loss[j] (float64) = the summed losses of rows i0..i0+nb-1: in compute-dtype
    partial sums of _BLOCK classes (loss and p_loss zeroed), or with one class (a
    flat binary loss) the losses themselves, run by run (nothing zeroed: a zeroing
    pass over the block cost ~10%); with ``leaves`` (one class, nb whole leaves) only
    the pairwise leaf sums of every 128 losses, loss[k] for rows 128k..128k+127,
    taken from the run's float32 losses without storing them as float64."""
    n_c = x.shape[1]
    if n_c == 1:
        for s0 in range(0, nb, _TAIL_RUN):
            tr = tail[: min(nb - s0, _TAIL_RUN)]
            _bce_logits_class(x, t, pw, o, 0, i0 + s0, keep, half_ls, None, tr)
            if leaves:
                for k in range(tr.shape[0] // 128):
                    loss[s0 // 128 + k] = _leaf128(tr, k * 128)
            else:
                lr = loss[s0 : s0 + tr.shape[0]]
                for j in range(lr.shape[0]):
                    lr[j] = np.float64(tr[j])
        return
    for c0 in range(0, n_c, _BLOCK):
        for c in range(c0, min(n_c, c0 + _BLOCK)):
            _bce_logits_class(x, t, pw, o, c, i0, keep, half_ls, p_loss, tail)
        _flush(loss, p_loss)


@_helper
def _cols_bce_logits_grad(x, g, t, pw, o, i0, keep, half_ls, gw):
    nb = gw.shape[0]
    for c in range(x.shape[1]):
        xv = _col_view_c(x, o, c, i0, nb)
        gv = _grad_cview(xv, g, o, c, i0, nb)
        tv = _col_view_c(t, o, c, i0, nb)
        pwv = _pw_col(pw, c, i0, nb)
        for j in range(nb):
            v = _x_value(xv[j])
            y = _as(tv[j], v) * keep + half_ls
            gv[j] = gw[j] * _bce_logit_grad(v, y, _as(_at(pwv, j), v))


@_helper
def _cols_bce_probs(x, t, pw, o, i0, keep, half_ls, lo, hi, loss, bad, p_loss, p_bad):
    nb, n_c = loss.shape[0], x.shape[1]
    for c0 in range(0, n_c, _BLOCK):
        for c in range(c0, min(n_c, c0 + _BLOCK)):
            xv = _col_view_c(x, o, c, i0, nb)
            tv = _col_view_c(t, o, c, i0, nb)
            pwv = _pw_col(pw, c, i0, nb)
            for j in range(nb):
                p = _x_value(xv[j])
                y = _as(tv[j], p) * keep + half_ls
                p_loss[j] += _bce_prob_loss(p, y, _as(_at(pwv, j), p), lo, hi)
            _count_out_of_range(xv, p_bad)
        _flush(loss, p_loss)
        _flush(bad, p_bad)


@_helper
def _cols_bce_probs_grad(x, g, t, pw, o, i0, keep, half_ls, lo, hi, gw):
    nb = gw.shape[0]
    for c in range(x.shape[1]):
        xv = _col_view_c(x, o, c, i0, nb)
        gv = _grad_cview(xv, g, o, c, i0, nb)
        tv = _col_view_c(t, o, c, i0, nb)
        pwv = _pw_col(pw, c, i0, nb)
        for j in range(nb):
            p = _x_value(xv[j])
            y = _as(tv[j], p) * keep + half_ls
            gv[j] = gw[j] * _bce_prob_grad(p, y, _as(_at(pwv, j), p), lo, hi)


@_helper
def _fill_col(ga, o, i, value):
    """Gradient of row (o, i) set to ``value`` (special rows of the column path)."""
    for c in range(ga.shape[1]):
        ga[o, c, i] = value


@_helper
def _block(q, n_blocks, block, n_i):
    """(o, i0, nb) of work item q of the column path."""
    o = q // n_blocks
    i0 = (q - o * n_blocks) * block
    return o, i0, min(block, n_i - i0)


@_helper
def _first_bad_in_block(bad, o, i0, n_i, none):
    """Flat index of the first row of a block with a probability outside [0, 1]."""
    for j in range(bad.shape[0]):
        if bad[j] != 0.0:
            return o * n_i + i0 + j
    return none


@intrinsic
def _leaf128(typingctx, a, lo):
    """The pairwise leaf of a full run a[lo:lo+128] (contiguous; float32 values
    summed as float64): the eight running sums as one <8 x double> vector, added in
    NumPy's order. Numba runs no SLP vectoriser, so written as eight scalars they
    stay scalar (0.25 ns an element, with the leaf sums of a binary loss's
    16,384-row blocks a fifth of its time); lane j still adds a[lo + j],
    a[lo + 8 + j], ... in turn: the bits of NumPy's sum of a.astype(float64)."""
    sig = types.float64(a, lo)

    def codegen(context, builder, signature, args):
        data = make_array(signature.args[0])(context, builder, args[0]).data
        item = context.get_value_type(signature.args[0].dtype)
        vec, wide = ir.VectorType(item, 8), ir.VectorType(ir.DoubleType(), 8)
        run = builder.bitcast(builder.gep(data, [args[1]]), vec.as_pointer())

        def load(q):
            v = builder.load(builder.gep(run, [ir.Constant(ir.IntType(64), q)]), align=4)
            return v if item == ir.DoubleType() else builder.fpext(v, wide)

        lanes = load(0)
        for q in range(1, 16):
            lanes = builder.fadd(lanes, load(q))
        r = [builder.extract_element(lanes, ir.Constant(ir.IntType(32), j)) for j in range(8)]
        add = builder.fadd
        return add(add(add(r[0], r[1]), add(r[2], r[3])), add(add(r[4], r[5]), add(r[6], r[7])))

    return sig, codegen


@_helper
def _pairwise_leaf(a, lo, n):
    """NumPy's pairwise summation of a[lo:lo+n] for n <= 128: eight running sums.
    Over a view from 0 with range loops: with ``a[lo + k]`` in a while loop numba's
    negative-index wraparound stayed in, every load was scalar (0.7 ns an element)."""
    if n == 128:
        return _leaf128(a, lo)
    v = a[lo : lo + n]
    if n < 8:
        res = 0.0
        for k in range(n):
            res += v[k]
        return res
    r0, r1, r2, r3 = v[0], v[1], v[2], v[3]
    r4, r5, r6, r7 = v[4], v[5], v[6], v[7]
    for q in range(1, n // 8):
        w = v[q * 8 : q * 8 + 8]  # constant indices: no wraparound select per load
        r0 += w[0]
        r1 += w[1]
        r2 += w[2]
        r3 += w[3]
        r4 += w[4]
        r5 += w[5]
        r6 += w[6]
        r7 += w[7]
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for k in range(n - n % 8, n):
        res += v[k]
    return res


#: Frames of _pairwise_sum's stack: n halves at every level down to 128, so 2**64
#: elements need fewer than 64.
_PAIRWISE_DEPTH = 64


@_helper
def _pairwise_sum(a, lo, n):
    """NumPy's pairwise summation of a[lo:lo+n], step for step: the same bits as
    ``np.sum`` of a contiguous float64 array (what ``_reduce.block_sums`` takes).
    NumPy's recursion (n <= 128: a leaf; else the first n2 = n / 2 rounded down to a
    multiple of 8, plus the rest) with a stack of its own: numba's recursion crashed
    inside a parallel driver, and one function per level took ~10 s to compile."""
    if n <= 128:
        return _pairwise_leaf(a, lo, n)
    f_lo = np.empty(_PAIRWISE_DEPTH, np.int64)
    f_n = np.empty(_PAIRWISE_DEPTH, np.int64)
    f_left = np.empty(_PAIRWISE_DEPTH)  # the left half's sum, once it is known
    top = 0
    f_lo[0], f_n[0] = lo, n
    while True:
        while f_n[top] > 128:  # descend into left halves
            n2 = f_n[top] // 2
            f_lo[top + 1], f_n[top + 1] = f_lo[top], n2 - n2 % 8
            top += 1
        v = _pairwise_leaf(a, f_lo[top], f_n[top])
        # a right half (it starts after its parent's start) completes its parent
        while top > 0 and f_lo[top] != f_lo[top - 1]:
            top -= 1
            v = f_left[top] + v
        if top == 0:
            return v
        # a left half: keep its sum, then sum the right half (the rest of the parent)
        top -= 1
        f_left[top] = v
        f_lo[top + 1], f_n[top + 1] = f_lo[top] + f_n[top + 1], f_n[top] - f_n[top + 1]
        top += 1


@_helper
def _pairwise_sum_all(a):
    """_pairwise_sum(a, 0, a.size) of a contiguous 1-D float64 array, without its
    call per leaf (~15 ns each) when the size is 128 * 2**k, as in every full block
    of BLOCK_ROWS rows: NumPy's tree is then balanced, its leaves the consecutive
    runs of 128. The leaves are summed in one loop, then added level by level, left
    + right, as the recursion adds them: the same bits."""
    n = a.shape[0]
    n_leaves = n // 128
    if not _whole_leaves(n):
        return _pairwise_sum(a, 0, n)
    sums = np.empty(n_leaves)
    for k in range(n_leaves):
        sums[k] = _leaf128(a, k * 128)
    return _leaf_tree(sums, n_leaves)


@_helper
def _leaf_tree(sums, n_leaves):
    """The pairwise sum above the leaves (n_leaves a power of two), in place: added
    level by level, left + right, as NumPy's recursion adds them."""
    while n_leaves > 1:
        n_leaves //= 2
        for k in range(n_leaves):
            sums[k] = sums[2 * k] + sums[2 * k + 1]  # (reads 2k, 2k + 1 >= k: in place)
    return sums[0]


@_helper
def _whole_leaves(n):
    """n rows make a balanced pairwise tree of leaves (128 * 2**k, k >= 1)."""
    n_leaves = n // 128
    return n >= 256 and n % 128 == 0 and n_leaves & (n_leaves - 1) == 0


def _store_leaf_tree(loss, q, leaf_sums):
    """loss[q] = the pairwise sum of block q from its leaf sums (block-sums mode, a
    1-D loss; never called with per-row losses)."""


@overload(_store_leaf_tree, jit_options=_OPTS)
def _store_leaf_tree_ol(loss, q, leaf_sums):
    if loss.ndim == 1:
        def store(loss, q, leaf_sums):
            loss[q] = _leaf_tree(leaf_sums, leaf_sums.shape[0])
        return store
    return lambda loss, q, leaf_sums: None


def _store_losses(loss, q, o, i, di, rows, n_c):
    """The losses ``rows[j] / n_c`` of work item q: into the per-row ``loss`` (2-D)
    at rows (o + j, i) when di == 0, else (o, i + j); or, when ``loss`` is 1-D, as
    their pairwise sum into ``loss[q]`` (block-sums mode: work item q is then block
    q of BLOCK_ROWS rows)."""


@overload(_store_losses, jit_options=_OPTS)
def _store_losses_ol(loss, q, o, i, di, rows, n_c):
    if loss.ndim == 1:
        def block_sum(loss, q, o, i, di, rows, n_c):
            if n_c != 1:  # (x / 1 is x: no pass for binary outputs of one column)
                for j in range(rows.shape[0]):
                    rows[j] = rows[j] / n_c
            loss[q] = _pairwise_sum_all(rows)
        return block_sum

    def per_row(loss, q, o, i, di, rows, n_c):
        if di == 0:
            for j in range(rows.shape[0]):
                loss[o + j, i] = rows[j] / n_c
        else:
            for j in range(rows.shape[0]):
                loss[o, i + j] = rows[j] / n_c
    return per_row


# --------------------------------------------------------------------------- drivers
# One prange loop each, over one worker a thread; each worker claims work items
# (``_claims``) until none are left: rows (``*_rows``: contiguous views when layout
# is True, strided views when it is None) or blocks of rows (``*_cols``). Each
# returns the KERNELS.md int. ``_lower(first, r)`` is an atomic min: the same
# answer whatever the number of threads. ``w`` is class_weight (float64, for the
# loss), ``wc`` the same in the compute dtype (for element loops). ``workers``,
# the last argument, is the thread count (``_run`` adds it).


@_driver
def _sparse_logits_rows(x, labels, w, wc, w_sum, keep, ls_c, ignore, gw, loss, g, layout, workers):
    n_o, n_c, n_i = x.shape
    ahead = _rows_follow(x)
    dense = ls_c != 0.0  # label smoothing: every class carries weight
    keep_c, ls_cc = _compute_scalar(x, keep), _compute_scalar(x, ls_c)
    n_items = n_o * n_i
    claims = _claims(n_items, n_c, workers)
    for worker in prange(min(workers, n_items)):  # one worker a thread (see _claims)
        r, end = _claim(claims)
        while r < end:
            o = r // n_i
            i = r - o * n_i
            y = np.int64(labels[o, i])
            xr = _rview(x, o, i, n_c, layout)
            gr = _grad_rview(xr, g, o, i, n_c, layout)
            if y == ignore:
                loss[o, i] = 0.0
                if g is not None:
                    _fill(gr, 0.0)
            else:
                x_y = _x_value(xr[y])  # read before an in-place gradient overwrites it
                stored = g is not None and n_c <= _CHUNK  # the exps kept in the gradient row
                if stored:
                    m, rest, gap, _, near = _softmax_row(xr, None, w, keep, ls_c, dense, _exps_store(gr, g), ahead)
                else:
                    m, rest, gap, _, near = _softmax_row(xr, None, w, keep, ls_c, dense, None, ahead)
                w_y = w[y]
                big_a = keep * w_y + ls_c * w_sum
                loss[o, i] = _softmax_loss(m, rest, _label_gap(keep * w_y, m, x_y) + ls_c * gap, big_a)
                if g is not None:
                    gw_r = gw[o, i]
                    if _finite(m):
                        a_over_s, ar_over_s = _softmax_row_grad(
                            x, xr, g, gr, o, i, layout, None, wc, keep_c, ls_cc, ls_cc,
                            m, rest, big_a, gw_r, near, stored)
                        # the label's own weight, in float64
                        g_y = _softmax_grad(np.float64(x_y), np.float64(m),
                                            (keep + ls_c) * w_y, big_a, a_over_s, ar_over_s)
                        _put(gr, y, gw_r * g_y)
                    else:
                        _fill(gr, gw_r * _special_grad(m, big_a))
            r, end = _next_item(claims, r, end)
    return -1


@_driver
def _sparse_logits_cols(x, labels, w, wc, w_sum, keep, ls_c, ignore, gw, loss, g, block, workers):
    n_o, n_c, n_i = x.shape
    n_blocks = (n_i + block - 1) // block
    dense = ls_c != 0.0
    keep_c, ls_cc = _compute_scalar(x, keep), _compute_scalar(x, ls_c)
    ga = _grad_array(x, g)
    n_items = n_o * n_blocks
    claims = _claims(n_items, block * n_c, workers)
    for worker in prange(min(workers, n_items)):  # one worker a thread (see _claims)
        q, end = _claim(claims)
        while q < end:
            o, i0, nb = _block(q, n_blocks, block, n_i)
            y = np.empty(nb, np.int64)
            s = np.zeros((6, nb))
            rest, ties, gap, big_a, a_over_s, ar_over_s = s[0], s[1], s[2], s[3], s[4], s[5]
            cs = _compute_zeros(x, 7, nb)  # compute-dtype per-row state
            m, x_y, p_rest, p_ties = cs[0], cs[1], cs[2], cs[3]
            big_a_c, a_over_s_c, ar_over_s_c = cs[4], cs[5], cs[6]
            gw_c = _compute_zeros(x, 1, nb)[0]
            _cols_max(x, o, i0, m)
            _cols_exp_sum(x, o, i0, m, rest, ties, p_rest, p_ties)
            if dense:
                _cols_gap_sum(x, None, w, o, i0, m, keep, ls_c, gap, s[5])
            for j in range(nb):
                i = i0 + j
                y[j] = np.int64(labels[o, i])
                gw_c[j] = gw[o, i]
                if y[j] == ignore:
                    loss[o, i] = 0.0
                else:
                    w_y = w[y[j]]
                    x_y[j] = _x_value(x[o, y[j], i])
                    big_a[j] = keep * w_y + ls_c * w_sum
                    rest[j] += ties[j] - 1.0
                    lgap = _label_gap(keep * w_y, m[j], x_y[j]) + ls_c * gap[j]
                    loss[o, i] = _softmax_loss(m[j], rest[j], lgap, big_a[j])
                    a_over_s[j], ar_over_s[j] = _grad_coefs(rest[j], big_a[j])
                    big_a_c[j], a_over_s_c[j], ar_over_s_c[j] = big_a[j], a_over_s[j], ar_over_s[j]
            if g is not None:
                _cols_softmax_grad(x, g, None, wc, o, i0, keep_c, ls_cc, ls_cc,
                                   m, big_a_c, a_over_s_c, ar_over_s_c, gw_c)
                for j in range(nb):  # the label's own weight (float64), ignored and special rows
                    gw_r = gw[o, i0 + j]
                    if y[j] == ignore:
                        _fill_col(ga, o, i0 + j, 0.0)
                    elif not _finite(m[j]):
                        _fill_col(ga, o, i0 + j, gw_r * _special_grad(m[j], big_a[j]))
                    else:
                        a_y = (keep + ls_c) * w[y[j]]
                        g_y = _softmax_grad(np.float64(x_y[j]), np.float64(m[j]),
                                            a_y, big_a[j], a_over_s[j], ar_over_s[j])
                        _put3(ga, o, y[j], i0 + j, gw_r * g_y)
            q, end = _next_item(claims, q, end)
    return -1


@_driver
def _categorical_logits_rows(x, t, w, wc, keep, ls_c, gw, loss, g, layout, workers):
    n_o, n_c, n_i = x.shape
    ahead = _rows_follow(x)
    keep_c, ls_cc, one = _compute_scalar(x, keep), _compute_scalar(x, ls_c), _compute_scalar(x, 1.0)
    n_items = n_o * n_i
    claims = _claims(n_items, n_c, workers)
    for worker in prange(min(workers, n_items)):  # one worker a thread (see _claims)
        r, end = _claim(claims)
        while r < end:
            o = r // n_i
            i = r - o * n_i
            xr = _rview(x, o, i, n_c, layout)
            tr = _rview(t, o, i, n_c, layout)
            gr = _grad_rview(xr, g, o, i, n_c, layout)
            stored = g is not None and n_c <= _CHUNK  # the exps kept in the gradient row
            if stored:
                m, rest, gap, big_a, near = _softmax_row(xr, tr, w, keep, ls_c, True, _exps_store(gr, g), ahead)
            else:
                m, rest, gap, big_a, near = _softmax_row(xr, tr, w, keep, ls_c, True, None, ahead)
            loss[o, i] = _softmax_loss(m, rest, gap, big_a)
            if g is not None:
                gw_r = gw[o, i]
                if _finite(m):
                    _softmax_row_grad(x, xr, g, gr, o, i, layout, tr, wc, keep_c, ls_cc, one,
                                      m, rest, big_a, gw_r, near, stored)
                else:
                    _fill(gr, gw_r * _special_grad(m, big_a))
            r, end = _next_item(claims, r, end)
    return -1


@_driver
def _categorical_logits_cols(x, t, w, wc, keep, ls_c, gw, loss, g, block, workers):
    n_o, n_c, n_i = x.shape
    n_blocks = (n_i + block - 1) // block
    keep_c, ls_cc, one = _compute_scalar(x, keep), _compute_scalar(x, ls_c), _compute_scalar(x, 1.0)
    ga = _grad_array(x, g)
    n_items = n_o * n_blocks
    claims = _claims(n_items, block * n_c, workers)
    for worker in prange(min(workers, n_items)):  # one worker a thread (see _claims)
        q, end = _claim(claims)
        while q < end:
            o, i0, nb = _block(q, n_blocks, block, n_i)
            s = np.zeros((4, nb))
            rest, ties, gap, big_a = s[0], s[1], s[2], s[3]
            cs = _compute_zeros(x, 7, nb)
            m, p_rest, p_ties = cs[0], cs[1], cs[2]
            big_a_c, a_over_s_c, ar_over_s_c, gw_c = cs[3], cs[4], cs[5], cs[6]
            _cols_max(x, o, i0, m)
            _cols_exp_sum(x, o, i0, m, rest, ties, p_rest, p_ties)
            _cols_gap_sum(x, t, w, o, i0, m, keep, ls_c, gap, big_a)
            for j in range(nb):
                i = i0 + j
                gw_c[j] = gw[o, i]
                rest[j] += ties[j] - 1.0
                loss[o, i] = _softmax_loss(m[j], rest[j], gap[j], big_a[j])
                a_over_s, ar_over_s = _grad_coefs(rest[j], big_a[j])
                big_a_c[j], a_over_s_c[j], ar_over_s_c[j] = big_a[j], a_over_s, ar_over_s
            if g is not None:
                _cols_softmax_grad(x, g, t, wc, o, i0, keep_c, ls_cc, one,
                                   m, big_a_c, a_over_s_c, ar_over_s_c, gw_c)
                for j in range(nb):
                    if not _finite(m[j]):
                        _fill_col(ga, o, i0 + j, gw[o, i0 + j] * _special_grad(m[j], big_a[j]))
            q, end = _next_item(claims, q, end)
    return -1


#: Rows per work item of the gather-log (block-sums mode: BLOCK_ROWS).
_GATHER_ROWS = 512
#: Rows ahead whose probability the gather asks for (as the Cython gather-log does).
_GATHER_AHEAD = 64


@_helper(inline=True)
def _gather_prefetch(xb, lb, ignore, j):
    """Ask for row j's gathered probability (class 0 for an ignored row)."""
    y = np.int64(lb[j])
    _prefetch(xb, j * xb.strides[0] + (y if y != ignore else 0) * xb.strides[1])


@_helper
def _gather_log(xb, lb, w, ignore, lo, hi, losses, p):
    """-w_y log(clip(p_y)) of one block of rows: xb (rows, C), labels lb, into
    losses; the probabilities are kept in p. Returns the block's first row with p_y
    outside [0, 1], or -1.

    The probabilities are fetched first, in a loop that does nothing else, so that
    dozens of cache misses are in flight at once (with the log in the same loop only
    a few were: 4x slower on 200,000 x 1,000). The logs are then taken in a loop of
    their own, which vectorises (with the class-weight lookup in it, it did not: 4x
    slower), and weighted in a third."""
    nb = lb.shape[0]
    for j in range(min(_GATHER_AHEAD, nb)):  # the block's first rows: all at once
        _gather_prefetch(xb, lb, ignore, j)
    for j in range(nb):  # an ignored row reads class 0 and never uses it
        if j + _GATHER_AHEAD < nb:  # start a later row's cache miss now
            _gather_prefetch(xb, lb, ignore, j + _GATHER_AHEAD)
        y = np.int64(lb[j])
        p[j] = _x_value(xb[j, y if y != ignore else 0])
    for j in range(nb):
        losses[j] = np.float64(_neg_log_clip(p[j], lo, hi))
    for j in range(nb):
        y = np.int64(lb[j])
        losses[j] = w[y] * losses[j] if y != ignore else 0.0
    for j in range(nb):
        if np.int64(lb[j]) != ignore and _out_of_range(p[j]):
            return j
    return -1


@_driver
def _sparse_probs_gather(x, labels, w, ignore, lo, hi, gw, layout, loss, g, block, workers):
    """ls == 0: one probability per row is read (and range-checked). Work items are
    blocks of rows along the outer axis (I == 1) or the inner axis."""
    n_o, n_c, n_i = x.shape
    n = n_o * n_i
    first = _slot(n)  # lowered by _lower: the first bad row
    ga = _grad_array(x, g)
    lo64, hi64 = np.float64(lo), np.float64(hi)
    per_o = (n_i + block - 1) // block  # work items per outer index
    n_items = (n_o + block - 1) // block if n_i == 1 else n_o * per_o
    row_size = n_c if g is not None else 16  # a gradient row, or the cache line read
    claims = _claims(n_items, block * row_size, workers)
    for worker in prange(min(workers, n_items)):  # one worker a thread (see _claims)
        q, end = _claim(claims)
        while q < end:
            if n_i == 1:  # rows (o0 + j, 0)
                o0, i0 = q * block, 0
                nb = min(block, n_o - o0)
                xb, lb = x[o0 : o0 + nb, :, 0], labels[o0 : o0 + nb, 0]
            else:  # rows (o0, i0 + j)
                o0 = q // per_o
                i0 = (q - o0 * per_o) * block
                nb = min(block, n_i - i0)
                xb, lb = x[o0, :, i0 : i0 + nb].T, labels[o0, i0 : i0 + nb]
            p = _compute_zeros(x, 1, nb)[0]
            losses = np.empty(nb)
            bad = _gather_log(xb, lb, w, ignore, lo, hi, losses, p)
            if bad >= 0:
                _lower(first, o0 * n_i + i0 + bad)
            if g is not None:
                for j in range(nb):
                    o, i = (o0 + j, 0) if n_i == 1 else (o0, i0 + j)
                    y = np.int64(lb[j])
                    gr = _rview(ga, o, i, n_c, layout)
                    _fill(gr, 0.0)
                    if y != ignore:
                        _put(gr, y, gw[o, i] * _xent_prob_grad(np.float64(p[j]), w[y], lo64, hi64))
            _store_losses(loss, q, o0, i0, 0 if n_i == 1 else 1, losses, 1)
            q, end = _next_item(claims, q, end)
    return first[0] if first[0] < n else -1


@_driver
def _sparse_probs_rows(x, labels, w, wc, keep, ls_c, ignore, lo, hi, gw, loss, g, layout, workers):
    n_o, n_c, n_i = x.shape
    n = n_o * n_i
    first = _slot(n)  # lowered by _lower: the first bad row
    keep_c, ls_cc = _compute_scalar(x, keep), _compute_scalar(x, ls_c)
    lo64, hi64 = np.float64(lo), np.float64(hi)
    claims = _claims(n, n_c, workers)
    for worker in prange(min(workers, n)):  # one worker a thread (see _claims)
        r, end = _claim(claims)
        while r < end:
            o = r // n_i
            i = r - o * n_i
            y = np.int64(labels[o, i])
            xr = _rview(x, o, i, n_c, layout)
            gr = _grad_rview(xr, g, o, i, n_c, layout)
            if y == ignore:
                loss[o, i] = 0.0
                if g is not None:
                    _fill(gr, 0.0)
            else:
                smooth, bad = _xent_probs_row(xr, None, wc, keep_c, ls_cc, lo, hi)
                if bad != 0:
                    _lower(first, r)
                p_y = _x_value(xr[y])
                w_y = w[y]
                loss[o, i] = ls_c * smooth + keep * w_y * np.float64(_neg_log_clip(p_y, lo, hi))
                if g is not None:
                    gw_r = gw[o, i]
                    _xent_probs_grad_row(xr, g, o, i, layout, None, wc, keep_c, ls_cc, ls_cc,
                                         lo, hi, _compute_scalar(x, gw_r))
                    _put(gr, y, gw_r * _xent_prob_grad(np.float64(p_y), (keep + ls_c) * w_y, lo64, hi64))
            r, end = _next_item(claims, r, end)
    return first[0] if first[0] < n else -1


@_driver
def _sparse_probs_cols(x, labels, w, wc, keep, ls_c, ignore, lo, hi, gw, loss, g, block, workers):
    n_o, n_c, n_i = x.shape
    n_blocks = (n_i + block - 1) // block
    none = n_o * n_i
    first = _slot(none)  # lowered by _lower: the first bad row
    keep_c, ls_cc = _compute_scalar(x, keep), _compute_scalar(x, ls_c)
    lo64, hi64 = np.float64(lo), np.float64(hi)
    ga = _grad_array(x, g)
    n_items = n_o * n_blocks
    claims = _claims(n_items, block * n_c, workers)
    for worker in prange(min(workers, n_items)):  # one worker a thread (see _claims)
        q, end = _claim(claims)
        while q < end:
            o, i0, nb = _block(q, n_blocks, block, n_i)
            y = np.empty(nb, np.int64)
            s = np.zeros((2, nb))
            smooth, bad = s[0], s[1]
            cs = _compute_zeros(x, 4, nb)
            p_y, p_smooth, p_bad, gw_c = cs[0], cs[1], cs[2], cs[3]
            _cols_xent_probs(x, None, wc, o, i0, keep_c, ls_cc, lo, hi, smooth, bad, p_smooth, p_bad)
            for j in range(nb):
                i = i0 + j
                y[j] = np.int64(labels[o, i])
                gw_c[j] = gw[o, i]
                if y[j] == ignore:
                    loss[o, i] = 0.0
                    bad[j] = 0.0  # an ignored row is not read
                else:
                    p_y[j] = _x_value(x[o, y[j], i])
                    loss[o, i] = ls_c * smooth[j] + keep * w[y[j]] * np.float64(_neg_log_clip(p_y[j], lo, hi))
            _lower(first, _first_bad_in_block(bad, o, i0, n_i, none))
            if g is not None:
                _cols_xent_probs_grad(x, g, None, wc, o, i0, keep_c, ls_cc, ls_cc, lo, hi, gw_c)
                for j in range(nb):
                    gw_r = gw[o, i0 + j]
                    if y[j] == ignore:
                        _fill_col(ga, o, i0 + j, 0.0)
                    else:
                        a_y = (keep + ls_c) * w[y[j]]
                        _put3(ga, o, y[j], i0 + j, gw_r * _xent_prob_grad(np.float64(p_y[j]), a_y, lo64, hi64))
            q, end = _next_item(claims, q, end)
    return first[0] if first[0] < none else -1


@_driver
def _categorical_probs_rows(x, t, wc, keep, ls_c, lo, hi, gw, loss, g, layout, workers):
    n_o, n_c, n_i = x.shape
    n = n_o * n_i
    first = _slot(n)  # lowered by _lower: the first bad row
    keep_c, ls_cc, one = _compute_scalar(x, keep), _compute_scalar(x, ls_c), _compute_scalar(x, 1.0)
    claims = _claims(n, n_c, workers)
    for worker in prange(min(workers, n)):  # one worker a thread (see _claims)
        r, end = _claim(claims)
        while r < end:
            o = r // n_i
            i = r - o * n_i
            xr = _rview(x, o, i, n_c, layout)
            tr = _rview(t, o, i, n_c, layout)
            total, bad = _xent_probs_row(xr, tr, wc, keep_c, ls_cc, lo, hi)
            if bad != 0:
                _lower(first, r)
            loss[o, i] = total
            if g is not None:
                _xent_probs_grad_row(xr, g, o, i, layout, tr, wc, keep_c, ls_cc, one,
                                     lo, hi, _compute_scalar(x, gw[o, i]))
            r, end = _next_item(claims, r, end)
    return first[0] if first[0] < n else -1


@_driver
def _categorical_probs_cols(x, t, wc, keep, ls_c, lo, hi, gw, loss, g, block, workers):
    n_o, n_c, n_i = x.shape
    n_blocks = (n_i + block - 1) // block
    none = n_o * n_i
    first = _slot(none)  # lowered by _lower: the first bad row
    keep_c, ls_cc, one = _compute_scalar(x, keep), _compute_scalar(x, ls_c), _compute_scalar(x, 1.0)
    n_items = n_o * n_blocks
    claims = _claims(n_items, block * n_c, workers)
    for worker in prange(min(workers, n_items)):  # one worker a thread (see _claims)
        q, end = _claim(claims)
        while q < end:
            o, i0, nb = _block(q, n_blocks, block, n_i)
            s = np.zeros((2, nb))
            total, bad = s[0], s[1]
            cs = _compute_zeros(x, 3, nb)
            p_total, p_bad, gw_c = cs[0], cs[1], cs[2]
            _cols_xent_probs(x, t, wc, o, i0, keep_c, ls_cc, lo, hi, total, bad, p_total, p_bad)
            for j in range(nb):
                loss[o, i0 + j] = total[j]
                gw_c[j] = gw[o, i0 + j]
            _lower(first, _first_bad_in_block(bad, o, i0, n_i, none))
            if g is not None:
                _cols_xent_probs_grad(x, g, t, wc, o, i0, keep_c, ls_cc, one, lo, hi, gw_c)
            q, end = _next_item(claims, q, end)
    return first[0] if first[0] < none else -1


@_driver
def _binary_logits_rows(x, t, pw, keep, half_ls, gw, loss, g, layout, workers):
    n_o, n_c, n_i = x.shape
    keep_c, half_c = _compute_scalar(x, keep), _compute_scalar(x, half_ls)
    n_items = n_o * n_i
    claims = _claims(n_items, n_c, workers)
    for worker in prange(min(workers, n_items)):  # one worker a thread (see _claims)
        r, end = _claim(claims)
        while r < end:
            o = r // n_i
            i = r - o * n_i
            xr = _rview(x, o, i, n_c, layout)
            tr = _rview(t, o, i, n_c, layout)
            pwr = _pw_row(pw, i)
            loss[o, i] = _bce_logits_row(xr, tr, pwr, keep_c, half_c) / n_c
            if g is not None:
                _bce_logits_grad_row(xr, g, o, i, layout, tr, pwr, keep_c, half_c,
                                     _compute_scalar(x, gw[o, i] / n_c))
            r, end = _next_item(claims, r, end)
    return -1


@_driver
def _binary_logits_cols(x, t, pw, keep, half_ls, gw, loss, g, block, workers):
    n_o, n_c, n_i = x.shape
    n_blocks = (n_i + block - 1) // block
    keep_c, half_c = _compute_scalar(x, keep), _compute_scalar(x, half_ls)
    n_items = n_o * n_blocks
    claims = _claims(n_items, block * n_c, workers)
    for worker in prange(min(workers, n_items)):  # one worker a thread (see _claims)
        q, end = _claim(claims)
        while q < end:
            o, i0, nb = _block(q, n_blocks, block, n_i)
            flat = n_c == 1  # (then _cols_bce_logits writes total without reading it)
            leaves = flat and loss.ndim == 1 and _whole_leaves(nb)  # a block's sum from its leaves
            total = np.empty(nb // 128 if leaves else nb) if flat else np.zeros(nb)
            p_total = _compute_zeros(x, 1, 0 if flat else nb)[0]
            tail = _compute_empty(x, min(nb, _TAIL_RUN) if flat else nb)  # written before read
            _cols_bce_logits(x, t, pw, o, i0, nb, keep_c, half_c, total, p_total, tail, leaves)
            if leaves:
                _store_leaf_tree(loss, q, total)
            else:
                _store_losses(loss, q, o, i0, 1, total, n_c)
            if g is not None:
                gw_c = _compute_empty(x, nb)  # (a loss-only call allocates no gradient weights)
                for j in range(nb):
                    gw_c[j] = gw[o, i0 + j] / n_c
                _cols_bce_logits_grad(x, g, t, pw, o, i0, keep_c, half_c, gw_c)
            q, end = _next_item(claims, q, end)
    return -1


@_driver
def _binary_probs_rows(x, t, pw, keep, half_ls, lo, hi, gw, loss, g, layout, workers):
    n_o, n_c, n_i = x.shape
    n = n_o * n_i
    first = _slot(n)  # lowered by _lower: the first bad row
    keep_c, half_c = _compute_scalar(x, keep), _compute_scalar(x, half_ls)
    claims = _claims(n, n_c, workers)
    for worker in prange(min(workers, n)):  # one worker a thread (see _claims)
        r, end = _claim(claims)
        while r < end:
            o = r // n_i
            i = r - o * n_i
            xr = _rview(x, o, i, n_c, layout)
            tr = _rview(t, o, i, n_c, layout)
            pwr = _pw_row(pw, i)
            total, bad = _bce_probs_row(xr, tr, pwr, keep_c, half_c, lo, hi)
            if bad != 0:
                _lower(first, r)
            loss[o, i] = total / n_c
            if g is not None:
                _bce_probs_grad_row(xr, g, o, i, layout, tr, pwr, keep_c, half_c,
                                    lo, hi, _compute_scalar(x, gw[o, i] / n_c))
            r, end = _next_item(claims, r, end)
    return first[0] if first[0] < n else -1


@_driver
def _binary_probs_cols(x, t, pw, keep, half_ls, lo, hi, gw, loss, g, block, workers):
    n_o, n_c, n_i = x.shape
    n_blocks = (n_i + block - 1) // block
    none = n_o * n_i
    first = _slot(none)  # lowered by _lower: the first bad row
    keep_c, half_c = _compute_scalar(x, keep), _compute_scalar(x, half_ls)
    n_items = n_o * n_blocks
    claims = _claims(n_items, block * n_c, workers)
    for worker in prange(min(workers, n_items)):  # one worker a thread (see _claims)
        q, end = _claim(claims)
        while q < end:
            o, i0, nb = _block(q, n_blocks, block, n_i)
            s = np.zeros((2, nb))
            total, bad = s[0], s[1]
            cs = _compute_zeros(x, 3, nb)
            p_total, p_bad, gw_c = cs[0], cs[1], cs[2]
            _cols_bce_probs(x, t, pw, o, i0, keep_c, half_c, lo, hi, total, bad, p_total, p_bad)
            _store_losses(loss, q, o, i0, 1, total, n_c)
            _lower(first, _first_bad_in_block(bad, o, i0, n_i, none))
            if g is not None:
                for j in range(nb):
                    gw_c[j] = gw[o, i0 + j] / n_c
                _cols_bce_probs_grad(x, g, t, pw, o, i0, keep_c, half_c, lo, hi, gw_c)
            q, end = _next_item(claims, q, end)
    return first[0] if first[0] < none else -1


# --------------------------------------------------------------------------- Python wrappers

#: float16 arrays reach numba as this one-field record view of their bits (no copy):
#: numba cannot type float16 arrays on the CPU, and a record type cannot be
#: confused with genuine uint16 targets.
_HALF = np.dtype([("bits", np.uint16)])


def _numba_view(a):
    return a.view(_HALF) if a is not None and a.dtype == np.float16 else a


# Numba compiles one machine-code version per argument *type*: dtype, layout (C or
# any) and read-only flag of every array. The helpers below give the small
# arguments one type each (int64 labels, float64 weights; all inputs read-only
# views), so a call's type varies only with y_pred's dtype and layout and the
# gradient mode: a few compilations serve every caller instead of dozens.


def _input(a):
    """A read-only view (no copy): inputs are typed alike whatever the caller's flags."""
    if a is None or not a.flags.writeable:
        return a
    view = a.view()
    view.flags.writeable = False
    return view


def _small_input(a, dtype):
    """An O(rows) or O(classes) input in ``dtype``, read-only; contiguous unless it is
    a broadcast scalar (zero strides, kept as is: no N-element copy of one value)."""
    if a.size > 1 and not any(a.strides):
        return _input(a.astype(dtype, copy=False) if a.dtype != dtype else a)
    return _input(np.ascontiguousarray(a, dtype=dtype))


def _same_memory(a, b) -> bool:
    """b is a itself (same first element, strides and dtype): the in-place gradient."""
    if a is b:
        return True
    return (a.dtype == b.dtype and a.shape == b.shape and a.strides == b.strides
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])  # fmt: skip


def _flatten(a):
    """(O, 1, I) -> (1, 1, O*I) or (O, I) -> (1, O*I) without a copy, or None."""
    o, i = a.shape[0], a.shape[-1]
    s_o, s_i = a.strides[0], a.strides[-1]
    if i == 1:
        s_i = s_o
    elif o != 1 and s_o != i * s_i:
        return None
    shape = (1,) * (a.ndim - 1) + (o * i,)
    return np.lib.stride_tricks.as_strided(a, shape, (0,) * (a.ndim - 1) + (s_i,))


def _block_size(n_c: int, n_i: int) -> int:
    """Rows per block of the column path: about 256K elements (1 MiB of float32; the
    block's second pass then comes from L2/L3) and at least 64 rows, so that each
    class contributes 256 contiguous bytes. Measured on (1, 1000, 65536) float32,
    1 thread: 16 rows 400 ms, 32 226, 64 137, 256 101, 1024 93."""
    return int(min(n_i, max(64, min(4096, (1 << 18) // max(n_c, 1)))))


class _Layout:
    """Canonical arguments of one call: float16 as records, the gradient mode, C == 1
    rows flattened into one long row axis, and the path with its last argument."""

    def __init__(self, x, grad_out, dense=None, flat=(), pos_weight=None):
        in_place = grad_out is not None and _same_memory(x, grad_out)
        grad = None if grad_out is None or in_place else grad_out
        flat = list(flat)
        if x.shape[1] == 1 and x.shape[0] > 1 and (pos_weight is None or pos_weight.strides[1] == 0 or x.shape[2] == 1):
            views = [_flatten(a) for a in [x, dense, grad] + flat if a is not None]
            if all(v is not None for v in views):
                it = iter(views)
                x = next(it)
                dense = next(it) if dense is not None else None
                grad = next(it) if grad is not None else None
                flat = [next(it) for _ in flat]
                if pos_weight is not None:
                    pos_weight = np.broadcast_to(pos_weight[:, :1], (1, x.shape[2]))
        walked = [a for a in (x, dense, grad) if a is not None]
        n_c, n_i = x.shape[1], x.shape[2]
        rows_ok = n_c == 1 or all(a.strides[1] == a.itemsize for a in walked)
        cols_ok = n_i > 1 and all(a.strides[2] == a.itemsize for a in walked)
        if cols_ok and (n_c == 1 or not rows_ok):
            self.path, self.last = "cols", _block_size(n_c, n_i)
        else:
            self.path, self.last = ("rows", True) if rows_ok else ("generic", None)
        self.x = _numba_view(x) if in_place else _input(_numba_view(x))  # in place: the kernel writes x
        self.dense = _input(_numba_view(dense))
        self.g = True if in_place else grad
        self.flat = flat
        if pos_weight is not None:  # small (C,) or (C, I): in the compute dtype, contiguous
            cdt = np.float64 if x.dtype == np.float64 else np.float32
            if n_i == 1 or pos_weight.strides[1] == 0:
                pos_weight = np.ascontiguousarray(pos_weight[:, 0], dtype=cdt)  # no per-row lookup
            else:
                pos_weight = np.ascontiguousarray(pos_weight, dtype=cdt)  # pw[c, i0:i0+n] contiguous
        self.pos_weight = _input(pos_weight)

    def driver(self, rows, cols):
        return cols if self.path == "cols" else rows


def _compute_weights(x, class_weight):
    """class_weight in the compute dtype, for the element loops (O(C))."""
    return _small_input(class_weight, np.float64 if x.dtype == np.float64 else np.float32)


def _bounds(x, epsilon):
    """(eps, 1 - eps) rounded to the compute dtype."""
    dt = np.float64 if x.dtype == np.float64 else np.float32
    return dt(epsilon), dt(1) - dt(epsilon)


# Each _prepare_* takes a kernel's KERNELS.md arguments (without ``threads``) and
# returns (driver, driver arguments): shared by the kernels and by is_ready().


def _prepare_sparse_from_logits(x, labels, class_weight, label_smoothing, ignore_index,
                                grad_weight, loss_out, grad_out):  # fmt: skip
    p = _Layout(x, grad_out, flat=(labels, grad_weight, loss_out))
    labels, grad_weight, loss_out = p.flat
    labels, grad_weight = _small_input(labels, np.int64), _small_input(grad_weight, np.float64)
    class_weight = _small_input(class_weight, np.float64)
    ls = float(label_smoothing)
    w_sum = float(class_weight.sum()) if ls else 0.0
    return p.driver(_sparse_logits_rows, _sparse_logits_cols), (
        p.x, labels, class_weight, _compute_weights(x, class_weight), w_sum, 1.0 - ls, ls / x.shape[1],
        int(ignore_index), grad_weight, loss_out, p.g, p.last)  # fmt: skip


def _prepare_sparse_from_probs(x, labels, class_weight, label_smoothing, ignore_index, epsilon,
                               grad_weight, loss_out, grad_out):  # fmt: skip
    n_c = x.shape[1]
    lo, hi = _bounds(x, epsilon)
    p = _Layout(x, grad_out, flat=(labels, grad_weight, loss_out))
    labels, grad_weight, loss_out = p.flat
    labels, grad_weight = _small_input(labels, np.int64), _small_input(grad_weight, np.float64)
    class_weight = _small_input(class_weight, np.float64)
    ls = float(label_smoothing)
    if not ls:  # the gather-log: one value per row; contiguous gradient rows when possible
        layout = None if p.path == "generic" or (p.path == "cols" and n_c > 1) else True
        if p.g is not None and p.g is not True and p.g.strides[1] != p.g.itemsize and n_c > 1:
            layout = None
        return _sparse_probs_gather, (p.x, labels, class_weight, int(ignore_index), lo, hi,
                                      grad_weight, layout, loss_out, p.g, _GATHER_ROWS)  # fmt: skip
    return p.driver(_sparse_probs_rows, _sparse_probs_cols), (
        p.x, labels, class_weight, _compute_weights(x, class_weight), 1.0 - ls, ls / n_c, int(ignore_index),
        lo, hi, grad_weight, loss_out, p.g, p.last)  # fmt: skip


def _prepare_categorical_from_logits(x, targets, class_weight, label_smoothing, grad_weight, loss_out, grad_out):
    p = _Layout(x, grad_out, dense=targets, flat=(grad_weight, loss_out))
    grad_weight, loss_out = p.flat
    grad_weight = _small_input(grad_weight, np.float64)
    ls = float(label_smoothing)
    return p.driver(_categorical_logits_rows, _categorical_logits_cols), (
        p.x, p.dense, _small_input(class_weight, np.float64), _compute_weights(x, class_weight), 1.0 - ls, ls / x.shape[1],
        grad_weight, loss_out, p.g, p.last)  # fmt: skip


def _prepare_categorical_from_probs(x, targets, class_weight, label_smoothing, epsilon,
                                    grad_weight, loss_out, grad_out):  # fmt: skip
    lo, hi = _bounds(x, epsilon)
    p = _Layout(x, grad_out, dense=targets, flat=(grad_weight, loss_out))
    grad_weight, loss_out = p.flat
    grad_weight = _small_input(grad_weight, np.float64)
    ls = float(label_smoothing)
    return p.driver(_categorical_probs_rows, _categorical_probs_cols), (
        p.x, p.dense, _compute_weights(x, class_weight), 1.0 - ls, ls / x.shape[1], lo, hi,
        grad_weight, loss_out, p.g, p.last)  # fmt: skip


def _prepare_binary_from_logits(x, targets, pos_weight, label_smoothing, grad_weight, loss_out, grad_out):
    p = _Layout(x, grad_out, dense=targets, flat=(grad_weight, loss_out), pos_weight=pos_weight)
    grad_weight, loss_out = p.flat
    grad_weight = _small_input(grad_weight, np.float64)
    ls = float(label_smoothing)
    return p.driver(_binary_logits_rows, _binary_logits_cols), (
        p.x, p.dense, p.pos_weight, 1.0 - ls, ls / 2, grad_weight, loss_out, p.g, p.last)


def _prepare_binary_from_probs(x, targets, pos_weight, label_smoothing, epsilon, grad_weight, loss_out, grad_out):
    lo, hi = _bounds(x, epsilon)
    p = _Layout(x, grad_out, dense=targets, flat=(grad_weight, loss_out), pos_weight=pos_weight)
    grad_weight, loss_out = p.flat
    grad_weight = _small_input(grad_weight, np.float64)
    ls = float(label_smoothing)
    return p.driver(_binary_probs_rows, _binary_probs_cols), (
        p.x, p.dense, p.pos_weight, 1.0 - ls, ls / 2, lo, hi, grad_weight, loss_out, p.g, p.last)


_PREPARE = {
    "sparse_from_logits": _prepare_sparse_from_logits,
    "sparse_from_probs": _prepare_sparse_from_probs,
    "categorical_from_logits": _prepare_categorical_from_logits,
    "categorical_from_probs": _prepare_categorical_from_probs,
    "binary_from_logits": _prepare_binary_from_logits,
    "binary_from_probs": _prepare_binary_from_probs,
}


# --------------------------------------------------------------------------- running: threads, fork

#: Calls are serialised. Numba's thread count is per calling thread, and its
#: runtimes differ under concurrent launches: 'workqueue' aborts the process,
#: 'omp' survives but 8 callers x N threads oversubscribe the cores and spin. One
#: call at a time, each with all the threads it asked for, is both safe and as fast
#: (these kernels are memory-bound). Uncontended, the lock costs ~0.1 us. The drivers
#: release the GIL, so other Python threads still run while a kernel does.
_CALL_LOCK = threading.Lock()

def _after_fork_in_child() -> None:
    global _CALL_LOCK
    _CALL_LOCK = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


def _forked_child() -> bool:
    """In a forked child the drivers' serial twins run: Numba's 'omp' layer terminates
    a child whose parent launched it, and a child whose parent used GNU OpenMP through
    any library (the Cython backend, torch, ...) hangs at its first parallel region;
    no thread pool survives a fork anyway. (Measured: parent ran the Cython backend
    with 2 threads, fork, the child's first 'omp' launch never returned.)"""
    return forked_child()


_SERIAL: dict = {}


def _serial_twin(driver):
    """The driver compiled without ``parallel`` (prange runs as range), for forked
    children. A copy of the function under another qualname: numba's cache files
    are named after it, and the two variants must not share one."""
    twin = _SERIAL.get(driver)
    if twin is None:
        fn = driver.py_func
        copy = FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        copy.__qualname__ = fn.__qualname__ + "_serial"
        copy.__doc__ = fn.__doc__
        twin = _SERIAL[driver] = _jit(copy, parallel=False)
    return twin


def _pick(driver):
    return _serial_twin(driver) if _forked_child() else driver


def _run(driver, args, threads) -> int:
    with _CALL_LOCK:
        driver = _pick(driver)
        workers = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
        if driver in _DRIVER_SET:  # set_num_threads is per calling thread: set it every call
            numba.set_num_threads(workers)
        compiled = len(driver.overloads)
        try:
            return int(driver(*args, workers))
        except OSError:  # the disk cache became unwritable after decoration
            if not _CACHE:
                raise
            _disable_cache()
            return int(driver(*args, workers))
        finally:
            if len(driver.overloads) != compiled:  # a new kernel: backend="auto" may now take it
                notify_compiled()


def _few_outputs_along_one_axis(x) -> bool:
    return x.shape[0] == 1 and x.shape[1] <= 16


#: Drivers whose work items can be the blocks of ``BLOCK_ROWS`` rows that block-sums
#: mode sums (its ``loss`` argument third from last, ``block`` last), and whether a
#: call's x (after the layout step) allows it: one work item per block needs the
#: rows along one axis, and few enough classes for a block to stay in cache.
_SUMMABLE = {
    _sparse_probs_gather: lambda x: x.shape[0] == 1 or x.shape[2] == 1,
    _binary_logits_cols: _few_outputs_along_one_axis,
    _binary_probs_cols: _few_outputs_along_one_axis,
}


def _prepared(prepare, call_args, block_sums: bool):
    """(driver, its arguments, per-row losses to block-sum after the run or None).

    With ``block_sums``, ``loss_out`` (``call_args[-2]``) receives the float64 sum of
    every block of ``BLOCK_ROWS`` rows (``_reduce.block_sums``' bits): summed by the
    driver itself where its work items are those blocks -- 10M binary losses then
    never reach memory -- else from per-row losses afterwards."""
    if not block_sums:
        return (*prepare(*call_args), None)
    call_args = list(call_args)
    x, sums = call_args[0], call_args[-2]
    rows = call_args[-2] = np.empty((x.shape[0], x.shape[2]))  # pages untouched unless used
    driver, driver_args = prepare(*call_args)
    allowed = _SUMMABLE.get(driver)
    if allowed is not None and allowed(driver_args[0]):
        return driver, (*driver_args[:-3], sums, driver_args[-2], _reduce.BLOCK_ROWS), None
    return driver, driver_args, rows


def _kernel(name):
    prepare = _PREPARE[name]

    def kernel(*args, block_sums=False):
        *call_args, threads = args
        driver, driver_args, rows = _prepared(prepare, call_args, block_sums)
        first_bad = _run(driver, driver_args, threads)
        if rows is not None and first_bad == -1:
            call_args[-2][:] = _reduce.block_sums(rows)
        return first_bad

    kernel.__name__ = kernel.__qualname__ = name
    kernel.__doc__ = (f"``{name}`` of KERNELS.md (arguments as documented there, ``threads`` last; "
                      "``block_sums=True``: loss_out gets one sum per block of BLOCK_ROWS rows).")
    return kernel


KERNELS = {name: _kernel(name) for name in _PREPARE}


# --------------------------------------------------------------------------- introspection


def is_ready(calls) -> bool:
    """Whether every driver the kernel ``calls`` (``(kernel name, arguments,
    block_sums)``, ``threads`` left out) run is compiled, in this process, for their
    argument types (a signature only in the disk cache still costs a load)."""
    for name, args, summed in calls:
        driver, driver_args, _ = _prepared(_PREPARE[name], args, summed)
        driver = _pick(driver)
        # (with _run's last argument, the worker count: an int)
        if tuple(driver.typeof_pyval(a) for a in (*driver_args, 1)) not in driver.overloads:
            return False
    return True


def _threading_layer() -> str:
    try:
        return numba.threading_layer()
    except ValueError:  # the parallel runtime has not started yet
        pass
    requested = numba.config.THREADING_LAYER
    available = []
    for layer in ("tbb", "omp", "workqueue"):
        try:
            importlib.import_module(f"numba.np.ufunc.{layer}pool" if layer != "workqueue" else "numba.np.ufunc.workqueue")
            available.append(layer)
        except ImportError:
            pass
    return f"not started yet (requested: {requested}; loadable: {', '.join(available) or 'none'})"


def info() -> dict:
    compiled = []
    for name, driver in sorted(_DRIVER_NAMES.items()):
        n = len(driver.overloads) + len(getattr(_SERIAL.get(driver), "overloads", {}))
        if n:
            compiled.append(f"{name} x{n}")
    if _CACHE:
        locator = _DRIVERS[0]._cache._cache_path if _DRIVERS else "?"
        cache = f"{locator}" + (" (NUMBA_CACHE_DIR)" if numba.config.CACHE_DIR else "")
    else:
        cache = "off (no writable cache directory, or FASTXENT_NUMBA_CACHE=0)"
    return {
        "version": numba.__version__,
        "threading layer": _threading_layer(),
        "NUMBA_NUM_THREADS": numba.config.NUMBA_NUM_THREADS,
        "cache dir": cache,
        "compiled": ", ".join(compiled) or "none yet (each kernel compiles on first use)",
        "forked child": "yes: kernels run serially" if _forked_child() else "no",
    }


_DRIVER_NAMES = {d.py_func.__name__: d for d in _DRIVERS}
_DRIVER_SET = frozenset(_DRIVERS)
