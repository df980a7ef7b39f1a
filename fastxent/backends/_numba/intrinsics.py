"""LLVM intrinsics: single instructions numba has no Python spelling for.

Float bit tricks for the exp/log polynomials (``_scale_pow2``, ``_exponent``, ...),
NaN-aware and integer max/min that LLVM vectorises without fast-math flags, the
reassociating add that lets a sum vectorise (``_acc``), float16 and bfloat16
widening, bfloat16 rounding and a cache prefetch.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.arrayobj import make_array

from ... import _constants


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
def _bfloat16_to_float(typingctx, bits):
    """bfloat16 (as its uint16 bits) -> float32, exactly: the bits are float32's top half."""
    sig = types.float32(bits)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        wide = builder.shl(builder.zext(args[0], i32), ir.Constant(i32, 16))
        return builder.bitcast(wide, ir.FloatType())

    return sig, codegen


def _bfloat16_bits(builder, f):
    """The uint16 bits of float32 f rounded to bfloat16, to nearest even, as ml_dtypes
    rounds: overflow gives inf, a NaN the quiet NaN of its sign (0x7fc0, 0xffc0)."""
    i32 = ir.IntType(32)
    bits = builder.bitcast(f, i32)
    high = builder.lshr(bits, ir.Constant(i32, 16))
    odd = builder.and_(high, ir.Constant(i32, 1))
    rounded = builder.lshr(builder.add(builder.add(bits, ir.Constant(i32, 0x7FFF)), odd), ir.Constant(i32, 16))
    nan = builder.or_(builder.and_(high, ir.Constant(i32, 0x8000)), ir.Constant(i32, 0x7FC0))
    is_nan = builder.fcmp_unordered("uno", f, f)
    return builder.trunc(builder.select(is_nan, nan, rounded), ir.IntType(16))


@intrinsic
def _float_to_bfloat16(typingctx, v):
    """float32 or float64 -> bfloat16 bits (uint16), rounded once to nearest even
    (see _bfloat16_bits). Integer operations and selects only: loops that store it
    vectorise. A float64 goes to float32 rounded to odd first (toward zero, the last
    bit set when inexact), which makes the second rounding the correct one."""
    sig = types.uint16(v)

    def codegen(context, builder, signature, args):
        if signature.args[0] == types.float32:
            return _bfloat16_bits(builder, args[0])
        v, f32, i32 = args[0], ir.FloatType(), ir.IntType(32)
        f = builder.fptrunc(v, f32)
        back = builder.fpext(f, v.type)
        away = builder.select(builder.fcmp_ordered(">", v, ir.Constant(v.type, 0.0)),
                              builder.fcmp_ordered(">", back, v), builder.fcmp_ordered("<", back, v))  # fmt: skip
        bits = builder.bitcast(f, i32)
        toward_zero = builder.select(away, builder.sub(bits, ir.Constant(i32, 1)), bits)
        inexact = builder.fcmp_ordered("!=", back, v)
        odd = builder.select(inexact, builder.or_(toward_zero, ir.Constant(i32, 1)), bits)
        return _bfloat16_bits(builder, builder.bitcast(odd, f32))

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
        magic_bits = _constants.EXP_SHIFT_BITS_F32 if mant == 23 else _constants.EXP_SHIFT_BITS
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
