"""The numeric constants of the compiled kernels, written once.

The Numba kernels import these names; ``setup.py`` writes them into the generated
C header ``_csrc/fx_constants.h`` (:func:`c_header`, a macro ``FX_<NAME>`` each),
which the C kernels include. Neither backend keeps a copy of its own, so they
cannot drift apart (``tests/test_constants.py`` checks it).

Conventions: a name ending in ``_F32`` is a float32 constant and its value is
float32-exact (emitted with an ``f`` suffix); any other float is a double; an int
is an integer (a name holding ``_BITS`` is a bit pattern, emitted in hex, unsigned).
Polynomial coefficients are written as hex floats, exact: ``_Ck`` multiplies r**k,
``_Pk`` / ``_Qk`` follow the numbering of their source (Cephes, fdlibm).
Only the standard library is imported: ``setup.py`` loads this file by path,
before anything is built.
"""

import struct

_h = float.fromhex

# --------------------------------------------------------------------------- blocks and sums
BLOCK_ROWS = 1 << 14  # rows per fixed block of the float64 loss sums (fastxent._reduce)
PAIRWISE_LEAF = 128  # leaf size of NumPy's pairwise sum (its PW_BLOCKSIZE), whose bits the sums copy
GATHER_AHEAD = 64  # rows between the sparse gather-log's prefetch of a row and its read

# --------------------------------------------------------------------------- exp: argument reduction
# x = n ln2 + r with |r| <= ln2/2; n = round(x * log2(e)) by adding and subtracting a shift
# (1.5 * 2**mantissa bits) that leaves n in the low bits of the sum.
LOG2E_F32 = _h("0x1.715476p+0")  # log2(e) rounded to float32
LN2_F32 = _h("0x1.62e430p-1")  # ln 2 rounded to float32 (one-constant reduction, exact inside an FMA)
LN2_HI_F32 = _h("0x1.630000p-1")  # 0.693359375: ln 2's leading bits, n * LN2_HI_F32 exact (Cody-Waite)
LN2_LO_F32 = _h("-0x1.bd0106p-13")  # ln 2 - LN2_HI_F32, rounded to float32
EXP_SHIFT_F32 = 1.5 * 2.0**23  # rounds x * log2(e) to the integer n in the low bits
EXP_SHIFT_BIASED_F32 = 1.5 * 2.0**23 + 127  # the same, leaving n + 127 (2**n's exponent field)
EXP_SHIFT_BITS_F32 = 0x4B400000  # the bits of EXP_SHIFT_F32 (subtracted from t's bits: n)
LOG2E = _h("0x1.71547652b82fep+0")  # log2(e) in double
LN2_HI = _h("0x1.62e4000000000p-1")  # ln 2's leading bits in double (n * LN2_HI exact)
LN2_LO = _h("0x1.7f7d1cf79abcap-20")  # ln 2 - LN2_HI, rounded to double
EXP_SHIFT = 1.5 * 2.0**52  # the double rounding shift
EXP_SHIFT_BITS = 0x4338000000000000  # the bits of EXP_SHIFT

# --------------------------------------------------------------------------- exp: ranges
EXP_NEAR = -86.5  # softmax exps of a block within this of the row max take the near-range exp
EXP_FLUSH_F32 = -88.0  # float32 exp of x <= 0: below this the result is 0 (and 2**n stays >= 0)
EXP_HI_F32 = 89.0  # full-range float32 exp: clamp above (exp(89) overflows float32)
EXP_LO_F32 = -120.0  # C full-range float32 exp: clamp below (the result rounds to 0)
EXP_CEPHES_LO_F32 = -104.0  # Numba full-range float32 exp: clamp below (exp(-104) rounds to 0)
EXP_HI = 710.0  # full-range double exp: clamp above (exp(710) overflows)
EXP_NEG_LO = -746.0  # double exp: clamp below (exp(-746) rounds to 0)
EXP_FULL_LO = -760.0  # C full-range double exp: clamp below

# --------------------------------------------------------------------------- exp: polynomials
# e**r = 1 + r + C2 r**2 + ... + C5 r**5 on |r| <= ln2/2, float32 minimax (the kernels' exps)
EXP5_C2_F32 = _h("0x1.fffdfcp-2")
EXP5_C3_F32 = _h("0x1.5557b0p-3")
EXP5_C4_F32 = _h("0x1.572a66p-5")
EXP5_C5_F32 = _h("0x1.106252p-7")
# e**r to degree 6, float32 minimax (the C full-range exp)
EXP6_C2_F32 = 0.5
EXP6_C3_F32 = _h("0x1.5554dep-3")
EXP6_C4_F32 = _h("0x1.55551ap-5")
EXP6_C5_F32 = _h("0x1.120b62p-7")
EXP6_C6_F32 = _h("0x1.6d10fcp-10")
# e**r to degree 7, Cephes expf (the Numba full-range float32 exp)
EXP_CEPHES_C2_F32 = _h("0x1.000000p-1")  # 5.0000001201e-1 in Cephes
EXP_CEPHES_C3_F32 = _h("0x1.555554p-3")  # 1.6666665459e-1
EXP_CEPHES_C4_F32 = _h("0x1.555382p-5")  # 4.1665795894e-2
EXP_CEPHES_C5_F32 = _h("0x1.111210p-7")  # 8.3334519073e-3
EXP_CEPHES_C6_F32 = _h("0x1.6e879cp-10")  # 1.3981999507e-3
EXP_CEPHES_C7_F32 = _h("0x1.a0d2cep-13")  # 1.9875691500e-4
# e**r - 1 = r + C2 r**2 + ... + C7 r**7, Taylor 1/k! in float32 (the C float32 tanh)
EXPM1_C2_F32 = 0.5
EXPM1_C3_F32 = _h("0x1.555556p-3")
EXPM1_C4_F32 = _h("0x1.555556p-5")
EXPM1_C5_F32 = _h("0x1.111112p-7")
EXPM1_C6_F32 = _h("0x1.6c16c2p-10")
EXPM1_C7_F32 = _h("0x1.a01a02p-13")
# e**r = 1 + r + C2 r**2 + ... + C13 r**13, Taylor 1/k! in double (both backends' double exp)
EXP_C2 = 1 / 2
EXP_C3 = 1 / 6
EXP_C4 = 1 / 24
EXP_C5 = 1 / 120
EXP_C6 = 1 / 720
EXP_C7 = 1 / 5040
EXP_C8 = 1 / 40320
EXP_C9 = 1 / 362880
EXP_C10 = 1 / 3628800
EXP_C11 = 1 / 39916800
EXP_C12 = 1 / 479001600
EXP_C13 = 1 / 6227020800

# --------------------------------------------------------------------------- log
LOG_TINY_F32 = _h("0x1p-126")  # FLT_MIN: a smaller float32 input is scaled by 2**23 first
LOG_TINY = _h("0x1p-1022")  # DBL_MIN: a smaller double input is scaled first
LOG_SQRT2_F32 = _h("0x1.6a09e6p+0")  # Numba float32 log: a mantissa above sqrt(2) is halved
LOG_SQRT2 = _h("0x1.6a09e667f3bcdp+0")  # Numba double log: the same
LOG_SQRT_HALF_BITS_F32 = 0x3F3504F3  # C float32 log: the bits of sqrt(1/2), the mantissa range's start
LOG_SQRT_HALF_BITS = 0x3FE6A09E667F3BCD  # C double log: the same in double
# log(1 + f) = f - f**2/2 + f**3 (P0 f**8 + ... + P8), Cephes logf (both float32 logs)
LOG_P0_F32 = _h("0x1.204376p-4")  # 7.0376836292e-2
LOG_P1_F32 = _h("-0x1.d7a370p-4")  # -1.1514610310e-1
LOG_P2_F32 = _h("0x1.de4a34p-4")  # 1.1676998740e-1
LOG_P3_F32 = _h("-0x1.fcba9ep-4")  # -1.2420140846e-1
LOG_P4_F32 = _h("0x1.23d37ep-3")  # 1.4249322787e-1
LOG_P5_F32 = _h("-0x1.555ca0p-3")  # -1.6668057665e-1
LOG_P6_F32 = _h("0x1.999d58p-3")  # 2.0000714765e-1
LOG_P7_F32 = _h("-0x1.fffff8p-3")  # -2.4999993993e-1
LOG_P8_F32 = _h("0x1.555554p-2")  # 3.3333331174e-1
# log(1 + f) = 2s + s (Lg1 s**2 + ... + Lg7 s**14) - ..., s = f / (2 + f): fdlibm e_log.c (C double log)
LOG_LG1 = _h("0x1.5555555555593p-1")  # 6.666666666666735130e-01
LOG_LG2 = _h("0x1.999999997fa04p-2")  # 3.999999999940941908e-01
LOG_LG3 = _h("0x1.2492494229359p-2")  # 2.857142874366239149e-01
LOG_LG4 = _h("0x1.c71c51d8e78afp-3")  # 2.222219843214978396e-01
LOG_LG5 = _h("0x1.7466496cb03dep-3")  # 1.818357216161805012e-01
LOG_LG6 = _h("0x1.39a09d078c69fp-3")  # 1.531383769920937332e-01
LOG_LG7 = _h("0x1.2f112df3e5244p-3")  # 1.479819860511658591e-01
LOG_LN2_HI = _h("0x1.62e42feep-1")  # fdlibm's ln2_hi (e * LOG_LN2_HI exact)
LOG_LN2_LO = _h("0x1.a39ef35793c76p-33")  # fdlibm's ln2_lo
# log(1 + f) = 2 atanh(s) = 2s (1 + s**2/3 + s**4/5 + ... + s**20/21) (Numba double log)
LOG_ATANH_C3 = 1 / 3
LOG_ATANH_C5 = 1 / 5
LOG_ATANH_C7 = 1 / 7
LOG_ATANH_C9 = 1 / 9
LOG_ATANH_C11 = 1 / 11
LOG_ATANH_C13 = 1 / 13
LOG_ATANH_C15 = 1 / 15
LOG_ATANH_C17 = 1 / 17
LOG_ATANH_C19 = 1 / 19
LOG_ATANH_C21 = 1 / 21
# log1p(u) = 2s (1 + z (P1 + P2 z + P3 z**2 + P4 z**3)), s = u / (2 + u), z = s**2: float32
# minimax on u in [0, 1] (both backends' softplus tail)
LOG1P_P1_F32 = _h("0x1.55554cp-2")
LOG1P_P2_F32 = _h("0x1.99ad6cp-3")
LOG1P_P3_F32 = _h("0x1.21249ap-3")
LOG1P_P4_F32 = _h("0x1.12f598p-3")

# --------------------------------------------------------------------------- tanh (softcap)
TANH_CLAMP_F32 = 10.0  # C float32 tanh: |u| beyond this is taken as this (tanh rounds to 1)
TANH_CLAMP = 20.0  # C double tanh: the same
TANH_SMALL = 0.625  # Numba tanh: below, the polynomial; above, 1 - 2 / (exp(2|x|) + 1) (Cephes)
# tanh(x) = x + x z (P0 z**4 + ... + P4), z = x**2, Cephes tanhf (Numba float32 tanh)
TANH_P0_F32 = _h("-0x1.75e1d4p-8")  # -5.70498872745e-3
TANH_P1_F32 = _h("0x1.52269cp-6")  # 2.06390887954e-2
TANH_P2_F32 = _h("-0x1.b83c5ap-5")  # -5.37397155531e-2
TANH_P3_F32 = _h("0x1.110726p-3")  # 1.33314422036e-1
TANH_P4_F32 = _h("-0x1.555532p-2")  # -3.33332819422e-1
# tanh(x) = x + x z P(z) / Q(z), Cephes tanh (Numba double tanh; Q's leading coefficient is 1)
TANH_P0 = _h("-0x1.edc5baafd6f4bp-1")  # -9.64399179425052238628e-1
TANH_P1 = _h("-0x1.8d26a0e26682dp+6")  # -9.92877231001918586564e1
TANH_P2 = _h("-0x1.93ac030580563p+10")  # -1.61468768441708447952e3
TANH_Q0 = _h("0x1.c33f28a581b86p+6")  # 1.12811678491632931402e2
TANH_Q1 = _h("0x1.176fa0e5535fap+11")  # 2.23548839060100448583e3
TANH_Q2 = _h("0x1.2ec102442040cp+12")  # 4.84406305325125486048e3


def names() -> list:
    """Every constant's name, in the order written above."""
    return [k for k, v in globals().items() if k.isupper() and type(v) in (int, float)]


def _c_float(value: float) -> str:
    """``value`` as an exact C hex literal without trailing zeros: 0x1.8p+23."""
    mantissa, exponent = value.hex().split("p")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}p{exponent}"


def _c_literal(name: str, value) -> str:
    """The C literal of one constant (negative values in parentheses)."""
    if type(value) is int:
        text = f"0x{value:X}u" if "_BITS" in name else str(value)
        return text if value >= 0 else f"({text})"
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, not {value!r}")
    if name.endswith("_F32"):
        if struct.unpack("f", struct.pack("f", value))[0] != value:
            raise ValueError(f"{name} = {value.hex()} is not a float32 value")
        text = _c_float(value) + "f"
    else:
        text = _c_float(value)
    return f"({text})" if value < 0 else text


def c_header() -> str:
    """The text of ``_csrc/fx_constants.h``: ``#define FX_<NAME> <exact literal>``."""
    lines = [
        "/* Generated by setup.py from fastxent/_constants.py: edit that file. */",
        "#ifndef FX_CONSTANTS_H",
        "#define FX_CONSTANTS_H",
    ]
    for name in names():
        value = globals()[name]
        shown = "" if type(value) is int else f" /* {value!r} */"
        lines.append(f"#define FX_{name} {_c_literal(name, value)}{shown}")
    lines.append("#endif")
    return "\n".join(lines) + "\n"
