"""Element math: compute-dtype helpers and vectorisable exp, log and log1p.

Every transcendental is a polynomial written here (``_exp``, ``_exp_neg``,
``_exp_near``, ``_log``, ``_log1p_unit``) so that LLVM vectorises the loops that
call it, with NaN and infinities kept (no fast-math flags). Also the shared scalar
formulas of the probability kernels: clipping, ``-log(clip(p))`` and its gradient.
"""

from __future__ import annotations

import numpy as np
from llvmlite import binding as llvm_binding
from numba import njit, types
from numba.extending import overload

from ... import _constants as K
from .intrinsics import (_bfloat16_to_float, _exponent, _half_to_float, _mantissa, _maxnum, _minnum, _pow2_from_bits,
                         _scale_pow2, _times_pow2_bits)
from .jit import _OPTS, _POLY_OPTS, _helper


def _x_value(v):
    """An element of x in the compute dtype (float32 for float16, bfloat16, float32)."""


@overload(_x_value, jit_options=_OPTS)
def _x_value_ol(v):
    if _is_bfloat16(v):  # bfloat16 and float16 come as record views of their bits
        return lambda v: _bfloat16_to_float(v.bf16)
    if isinstance(v, types.Record):
        return lambda v: _half_to_float(v.bits)
    if isinstance(v, types.Float):
        return lambda v: v


def _is_bfloat16(ty) -> bool:
    """Whether a numba type is a bfloat16 element (layout._BF16): typing time only."""
    return isinstance(ty, types.Record) and "bf16" in ty.fields


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
# Every value comes from fastxent._constants (K), which the C kernels' header
# is generated from: the two backends share one copy.
# exp: Cephes expf. n = round(x / ln2) by the 1.5 * 2**23 trick, r = x - n ln2 in two
# pieces (Cody-Waite; n * LN2_HI is exact), exp(r) by a degree-7 polynomial, then
# 2**n from integer bits. |error| <= 1-2 ulp (tests measure it).
_E32_LO, _E32_HI = _F32(K.EXP_CEPHES_LO_F32), _F32(K.EXP_HI_F32)  # exp(-104) rounds to 0, exp(89) overflows
_E32_LOG2E, _E32_MAGIC = _F32(K.LOG2E_F32), _F32(K.EXP_SHIFT_F32)
_E32_LN2_HI, _E32_LN2_LO = _F32(K.LN2_HI_F32), _F32(K.LN2_LO_F32)
# (scalar globals, not tuples: numba freezes a scalar as an immediate constant that
# LLVM hoists out of the loop; a tuple global is reloaded from memory per element)
_E32_P0, _E32_P1, _E32_P2 = _F32(K.EXP_CEPHES_C7_F32), _F32(K.EXP_CEPHES_C6_F32), _F32(K.EXP_CEPHES_C5_F32)
_E32_P3, _E32_P4, _E32_P5 = _F32(K.EXP_CEPHES_C4_F32), _F32(K.EXP_CEPHES_C3_F32), _F32(K.EXP_CEPHES_C2_F32)
_F32_ONE, _F32_HALF, _F32_ZERO = _F32(1.0), _F32(0.5), _F32(0.0)

# exp of x <= 0 in float32 (_exp_neg): the same reduction with the exponent bias
# folded into the rounding constant, e^r to degree 5 (at most 2.16 ulp over
# [-87.3, 0]; the tests allow 2.5), results below exp(-88) flushed to 0: about a
# third fewer operations than _exp32 per element of a softmax sum, where the exp is
# most of the work.
_EN32_MAGIC, _EN32_FLUSH = _F32(K.EXP_SHIFT_BIASED_F32), _F32(K.EXP_FLUSH_F32)  # 1.5 * 2**23 + 127
_EN32_P2, _EN32_P3 = _F32(K.EXP5_C2_F32), _F32(K.EXP5_C3_F32)
_EN32_P4, _EN32_P5 = _F32(K.EXP5_C4_F32), _F32(K.EXP5_C5_F32)
# exp of x in [_NEAR, 0] (_exp_near): a chunk of a softmax row within 86.5 of its max,
# which most are. One-constant reduction (float32(ln2) errs by 1.9e-9: |n| * 1.9e-9
# relative more, at most 2.4e-7 at n = -125) and 2**n added into the exponent bits
# (p * 2**n is normal for n >= -125): three operations on the FMA ports fewer.
_NEAR, _E32_LN2 = K.EXP_NEAR, _F32(K.LN2_F32)

_E64_LO, _E64_HI = K.EXP_NEG_LO, K.EXP_HI
_E64_LOG2E, _E64_MAGIC = K.LOG2E, K.EXP_SHIFT
_E64_LN2_HI, _E64_LN2_LO = K.LN2_HI, K.LN2_LO
# Taylor series of exp to degree 13: on |r| <= ln2/2 the truncation is 4e-18 relative.
_E64_P13, _E64_P12, _E64_P11, _E64_P10 = K.EXP_C13, K.EXP_C12, K.EXP_C11, K.EXP_C10
_E64_P9, _E64_P8, _E64_P7, _E64_P6 = K.EXP_C9, K.EXP_C8, K.EXP_C7, K.EXP_C6
_E64_P5, _E64_P4, _E64_P3, _E64_P2 = K.EXP_C5, K.EXP_C4, K.EXP_C3, K.EXP_C2

# log: Cephes logf for float32 (f = m - 1, m in [sqrt(1/2), sqrt(2))), and for
# float64 log(m) = 2 atanh(s), s = f / (2 + f), |s| <= 0.1716, to s**21.
_L32_P0, _L32_P1, _L32_P2 = _F32(K.LOG_P0_F32), _F32(K.LOG_P1_F32), _F32(K.LOG_P2_F32)
_L32_P3, _L32_P4, _L32_P5 = _F32(K.LOG_P3_F32), _F32(K.LOG_P4_F32), _F32(K.LOG_P5_F32)
_L32_P6, _L32_P7, _L32_P8 = _F32(K.LOG_P6_F32), _F32(K.LOG_P7_F32), _F32(K.LOG_P8_F32)
_L32_Q1, _L32_Q2 = _F32(K.LN2_LO_F32), _F32(K.LN2_HI_F32)
_L32_SQRT2, _L32_TINY, _L32_SUB = _F32(K.LOG_SQRT2_F32), _F32(K.LOG_TINY_F32), _F32(2.0**23)
_L64_P21, _L64_P19, _L64_P17 = K.LOG_ATANH_C21, K.LOG_ATANH_C19, K.LOG_ATANH_C17
_L64_P15, _L64_P13, _L64_P11 = K.LOG_ATANH_C15, K.LOG_ATANH_C13, K.LOG_ATANH_C11
_L64_P9, _L64_P7, _L64_P5, _L64_P3 = K.LOG_ATANH_C9, K.LOG_ATANH_C7, K.LOG_ATANH_C5, K.LOG_ATANH_C3
_L64_SQRT2, _L64_TINY, _L64_SUB = K.LOG_SQRT2, K.LOG_TINY, 2.0**52
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
_L1P_P1, _L1P_P2 = _F32(K.LOG1P_P1_F32), _F32(K.LOG1P_P2_F32)
_L1P_P3, _L1P_P4 = _F32(K.LOG1P_P3_F32), _F32(K.LOG1P_P4_F32)
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


def _tanh(x):
    """tanh in x's own precision, vectorisable (the logit softcap): tanh(+-inf) =
    +-1, NaN -> NaN (tanh(-0.0) is +0.0, which no softmax can tell apart)."""


# Cephes tanhf / tanh: below 0.625 an odd polynomial (float32) or rational function
# (float64) in x**2; above, 1 - 2 / (exp(2|x|) + 1), which needs no clamp (exp
# overflows to inf, and the quotient to 0). Both branches are computed, then one is
# selected: a branch would keep the loop scalar.
_TH_SMALL = K.TANH_SMALL
_TH32_P0, _TH32_P1, _TH32_P2 = _F32(K.TANH_P0_F32), _F32(K.TANH_P1_F32), _F32(K.TANH_P2_F32)
_TH32_P3, _TH32_P4 = _F32(K.TANH_P3_F32), _F32(K.TANH_P4_F32)
_TH64_P0, _TH64_P1, _TH64_P2 = K.TANH_P0, K.TANH_P1, K.TANH_P2
_TH64_Q0, _TH64_Q1, _TH64_Q2 = K.TANH_Q0, K.TANH_Q1, K.TANH_Q2


def _tanh32(x):
    a = abs(x)
    z = x * x
    small = ((((_TH32_P0 * z + _TH32_P1) * z + _TH32_P2) * z + _TH32_P3) * z + _TH32_P4) * z * x + x
    big = _F32_ONE - _F32_TWO / (_exp(a + a) + _F32_ONE)
    return small if a < _F32(_TH_SMALL) else (big if x >= _F32_ZERO else (-big if x < _F32_ZERO else x))


def _tanh64(x):
    a = abs(x)
    z = x * x
    p = ((_TH64_P0 * z + _TH64_P1) * z + _TH64_P2) * z
    q = ((z + _TH64_Q0) * z + _TH64_Q1) * z + _TH64_Q2
    small = x + x * (p / q)
    big = 1.0 - 2.0 / (_exp(a + a) + 1.0)
    return small if a < _TH_SMALL else (big if x >= 0.0 else (-big if x < 0.0 else x))


_per_float(_tanh, _tanh32, _tanh64)


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
    if isinstance(v, types.Record):  # float16 or bfloat16 bits
        if single:
            return lambda v, like: _x_value(v)
        return lambda v, like: np.float64(_x_value(v))
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
def _clip(p, lo, hi):
    """(p clipped to [lo, hi], whether it was clipped). NaN stays NaN, unclipped."""
    return (lo if p < lo else (hi if p > hi else p)), (p < lo) | (p > hi)


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
