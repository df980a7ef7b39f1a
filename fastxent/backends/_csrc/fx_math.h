/* Scalar math helpers for the kernels, written so that GCC vectorises the loops
 * that call them without -ffast-math / -ffinite-math-only (and without
 * -fno-trapping-math): IEEE semantics are kept, NaN and infinities included.
 *
 * Two rules make that work:
 *  - Selects are bit masks (fx_sel_*), never `c ? a : b` on floats. Under the
 *    default -ftrapping-math GCC turns float ternaries into branches that the
 *    if-converter refuses to flatten ("control flow in loop"); a mask keeps the
 *    loop straight-line on every ISA, SSE2 included.
 *  - Exponent bits are made with integer adds and shifts on the float's bits
 *    (no rint/ldexp calls, no int64->double conversions, which SSE2/AVX2 lack).
 *
 * Every quantity (exp, log, log1p, softplus, sigmoid, the binary element loss
 * and gradient, the end-of-row formulas) has exactly one definition here, used by
 * the vector loops, the strided fallback and the loss-only / loss+gradient paths
 * alike, so they cannot drift apart.
 */
#ifndef FX_MATH_H
#define FX_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(_MSC_VER) && !defined(__clang__)
#define FX_INLINE static __forceinline
#define FX_NOINLINE __declspec(noinline)
#define FX_MAYBE_UNUSED
#else
#define FX_INLINE static inline __attribute__((always_inline))
#define FX_NOINLINE __attribute__((noinline))
#define FX_MAYBE_UNUSED __attribute__((unused))
#endif

/* ------------------------------------------------------------------ bit casts */

FX_INLINE uint32_t fx_f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
FX_INLINE float fx_u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
FX_INLINE uint64_t fx_d2u(double f) { uint64_t u; memcpy(&u, &f, 8); return u; }
FX_INLINE double fx_u2d(uint64_t u) { double f; memcpy(&f, &u, 8); return f; }

/* c ? a : b for a 0/1 condition, as a bit mask (see the header comment). */
FX_INLINE float fx_sel_f32(int c, float a, float b)
{
    uint32_t m = (uint32_t)0 - (uint32_t)c;
    return fx_u2f((fx_f2u(a) & m) | (fx_f2u(b) & ~m));
}
FX_INLINE double fx_sel_f64(int c, double a, double b)
{
    uint64_t m = (uint64_t)0 - (uint64_t)c;
    return fx_u2d((fx_d2u(a) & m) | (fx_d2u(b) & ~m));
}

/* Integer keys that order like the floats (for -0.0 < +0.0 and NaN aside): an
 * integer max reduction vectorises everywhere, a float one only with
 * -ffinite-math-only. The key is its own inverse. */
FX_INLINE int32_t fx_key_f32(float f)
{
    int32_t b = (int32_t)fx_f2u(f);
    return b ^ ((b >> 31) & 0x7fffffff);
}
FX_INLINE float fx_unkey_f32(int32_t k) { return fx_u2f((uint32_t)(k ^ ((k >> 31) & 0x7fffffff))); }
FX_INLINE int64_t fx_key_f64(double f)
{
    int64_t b = (int64_t)fx_d2u(f);
    return b ^ ((b >> 63) & INT64_C(0x7fffffffffffffff));
}
FX_INLINE double fx_unkey_f64(int64_t k)
{
    return fx_u2d((uint64_t)(k ^ ((k >> 63) & INT64_C(0x7fffffffffffffff))));
}

/* float16 bits -> float32, exact, branch-free (vectorises without F16C):
 * normals and subnormals by rescaling the shifted bits by 2^112, inf/NaN by
 * setting the exponent. */
FX_INLINE float fx_half_to_f32(uint16_t h)
{
    uint32_t em = (uint32_t)(h & 0x7fffu) << 13;
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t finite = fx_f2u(fx_u2f(em) * 0x1p112f);
    uint32_t special = em | 0x7f800000u;
    uint32_t is_special = (uint32_t)0 - (uint32_t)(em >= (0x7c00u << 13));
    return fx_u2f(sign | (special & is_special) | (finite & ~is_special));
}

/* bfloat16 bits -> float32: they are its upper half (exact, one shift). */
FX_INLINE float fx_bf16_to_f32(uint16_t h) { return fx_u2f((uint32_t)h << 16); }

/* fx_key for bfloat16 bits, as int16 (a 512-bit vector holds 32): the keys order
 * like the float32 keys of the widened values, NaN included. */
FX_INLINE int16_t fx_key_bf16(uint16_t h)
{
    int16_t b = (int16_t)h;
    return (int16_t)(b ^ ((b >> 15) & 0x7fff));
}
FX_INLINE float fx_unkey_bf16(int16_t k) { return fx_bf16_to_f32((uint16_t)fx_key_bf16((uint16_t)k)); }

/* float32 -> bfloat16 bits, rounded to nearest even (an overflow rounds to inf);
 * NaN stays NaN (quieted: rounding could carry its low payload into inf). */
FX_INLINE uint16_t fx_f32_to_bf16(float f)
{
    uint32_t u = fx_f2u(f);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

/* ------------------------------------------------------------------ exp */

/* e^r for |r| <= ln2/2: 1 + r + r^2 q(r), degree 6, Horner to the end (max
 * 0.94 ulp with FMA, 1.24 without, over every float in [-87.3, 0]). Six
 * multiply-adds where Estrin takes eight (r^2, r^4 and a final add): the exp loops
 * are bound by the FMA ports, not by latency (their iterations are independent),
 * so the longer chain costs nothing. */
FX_INLINE float fx_exp_poly_f32(float r)
{
    float q = 0x1.6d10fcp-10f * r + 0x1.120b62p-7f;
    q = q * r + 0x1.55551ap-5f;
    q = q * r + 0x1.5554dep-3f;
    q = q * r + 0x1.0p-1f;
    q = q * r + 1.0f;
    return q * r + 1.0f;
}

/* e^r for |r| <= ln2/2 to degree 5, for the kernels' exps: 1 + r + r^2 q(r), five
 * multiply-adds; fx_exp_neg_f32 with it errs by at most 2.17 ulp over [-87.3, 0]
 * (with FMA; the tests allow 2.5). One multiply-add less than fx_exp_poly_f32,
 * which counts where an exp pass is bound by the FMA ports. */
FX_INLINE float fx_exp_poly5_f32(float r)
{
    float q = 0x1.106252p-7f * r + 0x1.572a66p-5f;
    q = q * r + 0x1.5557b0p-3f;
    q = q * r + 0x1.fffdfcp-2f;
    q = q * r + 1.0f;
    return q * r + 1.0f;
}
/* e^r - 1 for |r| <= ln2/2 with a small relative error at every r (fx_tanh): Taylor
 * to degree 7, r + r^2 (1/2 + r/6 + ...). (The exp's minimax polynomials less their
 * constant err by up to 15 ulp relative near r = 0.1: their r^2 coefficient is not
 * exactly 1/2.) */
FX_INLINE float fx_expm1_poly_f32(float r)
{
    float q = r * (1.0f / 5040) + (1.0f / 720);
    q = q * r + (1.0f / 120);
    q = q * r + (1.0f / 24);
    q = q * r + (1.0f / 6);
    q = q * r + 0.5f;
    return (r * r) * q + r;
}

/* The same polynomial as (1 + r) + r^2 ((c2 + c3 r) + r^2 (c4 + c5 r)) (Estrin):
 * the same five FMA-port operations (and one add), but three of them in a row
 * instead of five. A softmax exp pass is bound by latency, not by the ports: each
 * element's chain (subtract, reduce, polynomial, scale, add into the run's sum)
 * is some 35 cycles long, and the scheduler holds too few elements' operations
 * to cover it; a shorter chain lets more elements overlap. (With the final "+ 1"
 * last in the chain, for better rounding, that gain is lost.) One rounding more
 * than Horner: at most 2.51 ulp over [-10, 0] (Horner 2.27); fx_exp_neg_f32,
 * whose results are losses themselves, keeps Horner (2.62 ulp with Estrin, over
 * the tests' 2.5). */
FX_INLINE float fx_exp_poly5_short_f32(float r)
{
    float r2 = r * r;
    float a = 0x1.fffdfcp-2f + 0x1.5557b0p-3f * r;
    float b = 0x1.572a66p-5f + 0x1.106252p-7f * r;
    return (r + 1.0f) + r2 * (a + r2 * b);
}

/* exp for x <= 0 (or NaN) -- every exponential the kernels take is of that form
 * (x - rowmax, -|x|), so the hot loops skip overflow handling.
 * Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, fx_exp_poly5_f32 for e^r, 2^n
 * from the exponent bits. exp(-inf) = 0, NaN -> NaN, results below FLT_MIN/2
 * underflow to 0. */
FX_INLINE float fx_exp_neg_f32(float x)
{
    /* No clamp in front (it would lengthen the dependency chain every element
     * waits on): x < -88 (and -inf) is replaced by 0 at the end instead; NaN fails
     * that comparison and propagates through the arithmetic.
     * The rounding constant 1.5*2^23 + 127 leaves n + 127 in the low bits of t, so
     * t's bits shifted left by 23 are the scale 2^n itself (n + 127 in [0, 255]
     * for x >= -88; n = -127 gives a zero scale): one shift, no integer add.
     * The scale is multiplied, not added to p's exponent bits: an integer add
     * would turn a NaN with a payload in its low bits into a number. */
    float t = x * 1.44269504088896341f + 12583039.0f;       /* 1.5*2^23 + 127 */
    float n = t - 12583039.0f;
    float r = x - n * 0.693359375f;                           /* ln2 hi: n*hi exact */
    r = r - n * -2.12194440e-4f;                              /* ln2 lo */
    float p = fx_exp_poly5_f32(r);
    return fx_sel_f32(x < -88.0f, 0.0f, p * fx_u2f(fx_f2u(t) << 23));
}

/* exp(x) for x in [FX_EXP_NEAR, 0] only (no -inf, no NaN): the exps of a softmax
 * sum whose block lies within 86.5 of the row max (block_range checks it), which
 * are most. Three FMA-port operations fewer than fx_exp_neg_f32, whose exp pass is
 * bound by those ports:
 *  - one-constant reduction r = x - n*ln2 (with FMA, where n*ln2 is exact inside
 *    the multiply-add; without, the two-constant one): float(ln2) errs by 1.9e-9,
 *    so the result errs by |n| * 1.9e-9 relative more (<= 2.4e-7 at n = -125: 2
 *    ulp, on terms below 2^-124 of the row's largest);
 *  - 2^n added into p's exponent bits instead of multiplied: p * 2^n is normal
 *    for n >= -125, and no NaN reaches here (an integer add would make a number
 *    of one);
 *  - no select for x below the range. */
#define FX_EXP_NEAR -86.5
FX_INLINE float fx_exp_near_f32(float x)
{
    float t = x * 1.44269504088896341f + 12582912.0f;       /* 1.5*2^23: n in the low bits */
    float n = t - 12582912.0f;
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
    float p = fx_exp_poly5_short_f32(x - n * 0.693147182f);
#else /* n * ln2 rounded before the subtraction: up to 68 ulp; n * ln2_hi is exact */
    float p = fx_exp_poly5_short_f32((x - n * 0.693359375f) - n * -2.12194440e-4f);
#endif
    return fx_u2f(fx_f2u(p) + (fx_f2u(t) << 23));
}
/* The same exp as a product p * 2^n, for sums `s += exp` that keep no exp: the
 * compiler contracts s + p * 2^n into one FMA, an operation less a term than the
 * integer add and the float add. The same bits: 2^n scales exactly in this range. */
FX_INLINE float fx_exp_near_sum_f32(float x)
{
    float t = x * 1.44269504088896341f + 12583039.0f;       /* 1.5*2^23 + 127: n + 127 in the low bits */
    float n = t - 12583039.0f;
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
    float p = fx_exp_poly5_short_f32(x - n * 0.693147182f);
#else
    float p = fx_exp_poly5_short_f32((x - n * 0.693359375f) - n * -2.12194440e-4f);
#endif
    return p * fx_u2f(fx_f2u(t) << 23);
}

/* e^x = (pm1 + 1) * 2^n in double: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2,
 * and pm1 = e^r - 1 by Taylor to degree 13 (truncation < 5e-18), Estrin. Returns
 * pm1 (exact for tiny r: fx_tanh), n in *ni. */
FX_INLINE double fx_exp_parts_m1_f64(double x, int64_t *ni)
{
    double t = x * 1.4426950408889634074 + 6755399441055744.0;  /* 1.5*2^52 */
    double n = t - 6755399441055744.0;
    *ni = (int64_t)(fx_d2u(t) - UINT64_C(0x4338000000000000));
    double r = x - n * 6.93145751953125E-1;
    r = r - n * 1.42860682030941723212E-6;
    double r2 = r * r, r4 = r2 * r2;
    double p23 = 1.0 / 2 + r * (1.0 / 6);
    double p45 = 1.0 / 24 + r * (1.0 / 120);
    double p67 = 1.0 / 720 + r * (1.0 / 5040);
    double p89 = 1.0 / 40320 + r * (1.0 / 362880);
    double p1011 = 1.0 / 3628800 + r * (1.0 / 39916800);
    double p1213 = 1.0 / 479001600 + r * (1.0 / 6227020800.0);
    double p03 = p23 * r2 + r;                                 /* r + r^2(...) */
    double p47 = p45 + p67 * r2;
    double p811 = p89 + p1011 * r2;
    double p8_13 = p811 + p1213 * r4;
    double hi = p47 + p8_13 * r4;                              /* terms 4.. / r^4 */
    return p03 + hi * r4;
}
/* e^x = p * 2^n: returns p, n in *ni. */
FX_INLINE double fx_exp_parts_f64(double x, int64_t *ni)
{
    return fx_exp_parts_m1_f64(x, ni) + 1.0;
}

/* exp for x <= 0 (or NaN) in double, with gradual underflow as libm's exp: below
 * -708.4 the result is subnormal. 2^n is applied as 2^(n+64) * 2^-64: the first
 * factor stays normal down to n = -1086 and the product rounds once into the
 * subnormals (for a normal result both factors scale exactly: the bits of
 * p * 2^n). x < -746 (and -inf) is clamped to -746, whose exp rounds to 0. */
FX_INLINE double fx_exp_neg_f64(double x)
{
    int64_t ni;
    double p = fx_exp_parts_f64(fx_sel_f64(x < -746.0, -746.0, x), &ni);
    return p * fx_u2d((uint64_t)(ni + 1023 + 64) << 52) * 0x1p-64;
}

/* exp(x) for x in [FX_EXP_NEAR, 0] only (no -inf, no NaN), in double: the exps of a
 * softmax sum whose block lies near its row max. The results are normal: 2^n
 * scales directly, without fx_exp_neg_f64's clamp and second factor. */
FX_INLINE double fx_exp_near_f64(double x)
{
    int64_t ni;
    double p = fx_exp_parts_f64(x, &ni);
    return p * fx_u2d((uint64_t)(ni + 1023) << 52);
}

FX_INLINE double fx_exp_near_sum_f64(double x) { return fx_exp_near_f64(x); }

/* Full-range exp (used by the tests and the "simd exp" hook; the kernels only
 * need fx_exp_neg_*): two-factor scaling keeps subnormal results and overflows to
 * +inf exactly where expf does. */
FX_INLINE float fx_exp_f32(float x)
{
    float xc = fx_sel_f32(x < -120.0f, -120.0f, x);
    xc = fx_sel_f32(xc > 89.0f, 89.0f, xc);
    float t = xc * 1.44269504088896341f + 12582912.0f;
    float n = t - 12582912.0f;
    int32_t ni = (int32_t)(fx_f2u(t) - 0x4B400000u);
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = fx_exp_poly_f32(r);
    int32_t n1 = ni >> 1, n2 = ni - n1;
    return p * fx_u2f((uint32_t)(n1 + 127) << 23) * fx_u2f((uint32_t)(n2 + 127) << 23);
}

FX_INLINE double fx_exp_f64(double x)
{
    double xc = fx_sel_f64(x < -760.0, -760.0, x);
    xc = fx_sel_f64(xc > 710.0, 710.0, xc);
    double t = xc * 1.4426950408889634074 + 6755399441055744.0;
    double n = t - 6755399441055744.0;
    int64_t ni = (int64_t)(fx_d2u(t) - UINT64_C(0x4338000000000000));
    /* n1 = round(n/2) by the same trick: no 64-bit arithmetic shift needed */
    double t1 = n * 0.5 + 6755399441055744.0;
    int64_t n1 = (int64_t)(fx_d2u(t1) - UINT64_C(0x4338000000000000));
    int64_t n2 = ni - n1;
    double r = xc - n * 6.93145751953125E-1;
    r = r - n * 1.42860682030941723212E-6;
    double r2 = r * r, r4 = r2 * r2;
    double p23 = 1.0 / 2 + r * (1.0 / 6);
    double p45 = 1.0 / 24 + r * (1.0 / 120);
    double p67 = 1.0 / 720 + r * (1.0 / 5040);
    double p89 = 1.0 / 40320 + r * (1.0 / 362880);
    double p1011 = 1.0 / 3628800 + r * (1.0 / 39916800);
    double p1213 = 1.0 / 479001600 + r * (1.0 / 6227020800.0);
    double p03 = p23 * r2 + r;
    double p47 = p45 + p67 * r2;
    double p8_13 = (p89 + p1011 * r2) + p1213 * r4;
    double hi = p47 + p8_13 * r4;
    double p = (p03 + hi * r4) + 1.0;
    return p * fx_u2d((uint64_t)(n1 + 1023) << 52) * fx_u2d((uint64_t)(n2 + 1023) << 52);
}

/* ------------------------------------------------------------------ log */

/* log(x): x = 2^e m with m in [sqrt(1/2), sqrt(2)); Cephes' logf polynomial
 * (~1 ulp). 0 -> -inf, x < 0 -> NaN, NaN -> NaN, +inf -> +inf, subnormals exact. */
FX_INLINE float fx_log_f32(float x)
{
    int sub = x < 1.17549435e-38f;                         /* subnormal, 0, < 0 */
    float xs = fx_sel_f32(sub, x * 8388608.0f, x);          /* * 2^23 */
    uint32_t u = fx_f2u(xs) + (0x3f800000u - 0x3f3504f3u);  /* m into [sqrt.5, sqrt2) */
    int32_t e = (int32_t)(u >> 23) - 127 - (sub ? 23 : 0);
    float m = fx_u2f((u & 0x007fffffu) + 0x3f3504f3u);
    float f = m - 1.0f;
    float z = f * f;
    float y = 7.0376836292E-2f;
    y = y * f - 1.1514610310E-1f;
    y = y * f + 1.1676998740E-1f;
    y = y * f - 1.2420140846E-1f;
    y = y * f + 1.4249322787E-1f;
    y = y * f - 1.6668057665E-1f;
    y = y * f + 2.0000714765E-1f;
    y = y * f - 2.4999993993E-1f;
    y = y * f + 3.3333331174E-1f;
    y = y * f * z;
    float ef = (float)e;
    y = y + -2.12194440e-4f * ef;
    y = y + -0.5f * z;
    float res = (f + y) + 0.693359375f * ef;
    res = fx_sel_f32(x == 0.0f, -INFINITY, res);
    res = fx_sel_f32(x < 0.0f, NAN, res);
    res = fx_sel_f32(x == INFINITY, INFINITY, res);
    return fx_sel_f32(x != x, x, res);
}

/* log(x) in double: fdlibm's e_log.c reduction and minimax polynomial (< 1 ulp).
 * The exponent is turned into a double through the 2^52 bit trick (no int64 ->
 * double conversion, which SSE2/AVX2 cannot vectorise). */
FX_INLINE double fx_log_f64(double x)
{
    int sub = x < 2.2250738585072014e-308;
    double xs = fx_sel_f64(sub, x * 18014398509481984.0, x);  /* * 2^54 */
    uint64_t u = fx_d2u(xs) + (UINT64_C(0x3ff0000000000000) - UINT64_C(0x3fe6a09e667f3bcd));
    double ef = fx_u2d((u >> 52) | UINT64_C(0x4330000000000000)) - 4503599627370496.0;
    ef = ef - 1023.0 - fx_sel_f64(sub, 54.0, 0.0);
    double m = fx_u2d((u & UINT64_C(0x000fffffffffffff)) + UINT64_C(0x3fe6a09e667f3bcd));
    double f = m - 1.0;
    double s = f / (2.0 + f);
    double z = s * s, w = z * z;
    double t1 = w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01));
    double t2 = z * (6.666666666666735130e-01 + w * (2.857142874366239149e-01 + w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)));
    double R = t2 + t1;
    double hfsq = 0.5 * f * f;
    double res = ef * 6.93147180369123816490e-01 - ((hfsq - (s * (hfsq + R) + ef * 1.90821492927058770002e-10)) - f);
    res = fx_sel_f64(x == 0.0, -INFINITY, res);
    res = fx_sel_f64(x < 0.0, NAN, res);
    res = fx_sel_f64(x == INFINITY, INFINITY, res);
    return fx_sel_f64(x != x, x, res);
}

/* log1p(u) for u in [0, 1] (or NaN): log1p(u) = 2 atanh(s), s = u / (2 + u) in
 * [0, 1/3], as 2s (1 + z P(z)), z = s^2, with a degree-3 minimax P (0.3 ulp before
 * rounding). No range reduction, exact for tiny u (2s = u), one division. */
FX_INLINE float fx_log1p_unit_f32(float u)
{
    float s = u / (2.0f + u);
    float z = s * s;
    float p = (0x1.12f598p-3f * z + 0x1.21249ap-3f) * (z * z) + (0x1.99ad6cp-3f * z + 0x1.55554cp-2f);
    float t = s + s;
    return t + t * (z * p);
}
/* The same for double, accurate for tiny u: log(1+u) * u / ((1+u)-1) (Goldberg),
 * u itself when 1+u rounds to 1. */
FX_INLINE double fx_log1p_unit_f64(double u)
{
    double w = 1.0 + u;
    double d = w - 1.0;
    return fx_sel_f64(d == 0.0, u, fx_log_f64(w) * (u / fx_sel_f64(d == 0.0, 1.0, d)));
}

/* log1p(u) for u >= 0 (or NaN), scalar per row: inline, much cheaper than libm's
 * for short rows, and exact for tiny u (the dominant-class case). */
FX_INLINE double fx_log1p_f64(double u)
{
    double w = 1.0 + u;
    double d = w - 1.0;
    if (d == 0.0) return u;
    return fx_log_f64(w) * (u / d);
}

/* ------------------------------------------------------------------ binary from logits */

/* |x|, max(x, 0) and max(-x, 0) from the sign bit: integer ops, no compare. */
FX_INLINE float fx_abs_f32(float x) { return fx_u2f(fx_f2u(x) & 0x7fffffffu); }
FX_INLINE float fx_relu_f32(float x)
{
    int32_t b = (int32_t)fx_f2u(x);
    return fx_u2f((uint32_t)(b & ~(b >> 31))); /* sign set: 0 (an arithmetic shift, an and-not) */
}
FX_INLINE float fx_relu_neg_f32(float x)
{
    int32_t b = (int32_t)fx_f2u(x);
    return fx_u2f((uint32_t)(b & (b >> 31)) & 0x7fffffffu); /* sign clear: 0 */
}
FX_INLINE double fx_abs_f64(double x) { return fx_u2d(fx_d2u(x) & UINT64_C(0x7fffffffffffffff)); }
FX_INLINE double fx_relu_f64(double x)
{
    int64_t b = (int64_t)fx_d2u(x);
    return fx_u2d((uint64_t)(b & ~(b >> 63)));
}
FX_INLINE double fx_relu_neg_f64(double x)
{
    int64_t b = (int64_t)fx_d2u(x);
    return fx_u2d((uint64_t)(b & (b >> 63)) & UINT64_C(0x7fffffffffffffff));
}

/* Element loss (1-y)*softplus(x) + pw*y*softplus(-x), from x, its softplus tail
 * l = log1p(exp(-|x|)) (the kernels take exps and tails in passes of their own:
 * see bce_tails), the target y and neg = 1 - y (formed in float64 by the caller):
 * softplus(+-x) = max(+-x, 0) + l. A zero coefficient gives exactly 0 (x = +inf
 * with y = 1 costs 0, not NaN); NaN x gives NaN.
 * _fin is the same loss for finite x, where every softplus is finite and the
 * selects have nothing to do (a block of finite x skips their six operations).
 * Both end in the same expression neg * sp_pos + pos * sp_neg, which the compiler
 * contracts alike, so an element's bits do not depend on its block's other x. */
#define FX_DEFINE_BCE_LOGITS(T, SFX, SEL)                                          \
    FX_INLINE T fx_bce_logits_loss_fin_##SFX(T x, T l, T y, T neg, T pw)           \
    {                                                                              \
        T sp_pos = fx_relu_##SFX(x) + l;     /* softplus(x)  */                    \
        T sp_neg = fx_relu_neg_##SFX(x) + l; /* softplus(-x) */                    \
        T pos = pw * y;                                                            \
        return neg * sp_pos + pos * sp_neg;                                        \
    }                                                                              \
    FX_INLINE T fx_bce_logits_loss_##SFX(T x, T l, T y, T neg, T pw)               \
    {                                                                              \
        T pos = pw * y;                                                            \
        T sp_pos = SEL(neg != 0, fx_relu_##SFX(x) + l, (T)0);                     \
        T sp_neg = SEL(pos != 0, fx_relu_neg_##SFX(x) + l, (T)0);                 \
        return SEL(x != x, x, neg * sp_pos + pos * sp_neg);                        \
    }                                                                              \
    /* pos_weight 1 (the default): (1-y) softplus(x) + y softplus(-x)              \
     * = ((1-y) max(x, 0) + y max(-x, 0)) + l, with 1 - y as given: no            \
     * cancellation (max(x, 0) - y x would lose 1 - y against y x when y is near  \
     * 1). One of the two products is 0, so contracting the other into a          \
     * multiply-add changes no bit. _unit gives the same bits for finite x, the   \
     * general form's values for infinite and NaN x (x = +inf, y = 1 costs 0). */ \
    FX_INLINE T fx_bce_logits_loss_unit_fin_##SFX(T x, T l, T y, T neg)            \
    {                                                                              \
        return (neg * fx_relu_##SFX(x) + y * fx_relu_neg_##SFX(x)) + l;            \
    }                                                                              \
    FX_INLINE T fx_bce_logits_loss_unit_##SFX(T x, T l, T y, T neg)                \
    {                                                                              \
        return SEL(x - x != 0, fx_bce_logits_loss_##SFX(x, l, y, neg, (T)1),       \
                   fx_bce_logits_loss_unit_fin_##SFX(x, l, y, neg));               \
    }                                                                              \
    /* (1-y)*sigmoid(x) - pw*y*sigmoid(-x), both sigmoids from e. */               \
    FX_INLINE T fx_bce_logits_grad_e_##SFX(T x, T e, T y, T neg, T pw)             \
    {                                                                              \
        T inv = (T)1 / ((T)1 + e);           /* sigmoid(|x|)  */                   \
        T sm = e * inv;                      /* sigmoid(-|x|) */                   \
        T sig_pos = SEL(x < 0, sm, inv);     /* sigmoid(x); NaN: e*inv = NaN */     \
        T sig_neg = SEL(x < 0, inv, sm);     /* sigmoid(-x) */                      \
        return neg * sig_pos - pw * y * sig_neg;                                   \
    }

FX_DEFINE_BCE_LOGITS(float, f32, fx_sel_f32)
FX_DEFINE_BCE_LOGITS(double, f64, fx_sel_f64)

/* ------------------------------------------------------------------ tanh (softcap) */

/* tanh(u) = -em / (2 + em) with em = expm1(-2|u|), then the sign of u: no
 * cancellation at any |u| (a small |u| gets expm1's own small value, never
 * 1 - exp), NaN stays NaN, +-inf give +-1. expm1 from the exp's reduction
 * x = n ln2 + r: e^x - 1 = 2^n (e^r - 1) + (2^n - 1), e^r - 1 by a polynomial of
 * its own in float (fx_expm1_poly_f32), the exp's less its constant in double
 * (fx_exp_parts_m1_f64). |u| beyond 10 (float) or 20 (double), where tanh rounds
 * to 1, is taken as 10 or 20, which keeps 2^n normal. At most 2.5 ulp (float) and
 * 3 ulp (double) from NumPy's tanh over [-20, 20]. */
FX_INLINE float fx_tanh_f32(float u)
{
    float a = fx_abs_f32(u);
    float x = -2.0f * fx_sel_f32(a > 10.0f, 10.0f, a);  /* NaN: a > 10 is false */
    float t = x * 1.44269504088896341f + 12583039.0f;  /* 1.5*2^23 + 127: n + 127 in the low bits */
    float n = t - 12583039.0f;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float s = fx_u2f(fx_f2u(t) << 23);                  /* 2^n */
    float em = s * fx_expm1_poly_f32(r) + (s - 1.0f);
    float th = fx_abs_f32(-em / (2.0f + em));           /* em = +0 gives -0 */
    return fx_u2f(fx_f2u(th) | (fx_f2u(u) & 0x80000000u));
}
FX_INLINE double fx_tanh_f64(double u)
{
    double a = fx_abs_f64(u);
    double x = -2.0 * fx_sel_f64(a > 20.0, 20.0, a);
    int64_t ni;
    double pm1 = fx_exp_parts_m1_f64(x, &ni);
    double s = fx_u2d((uint64_t)(ni + 1023) << 52);     /* 2^n */
    double em = s * pm1 + (s - 1.0);
    double th = fx_abs_f64(-em / (2.0 + em));
    return fx_u2d(fx_d2u(th) | (fx_d2u(u) & UINT64_C(0x8000000000000000)));
}

/* ------------------------------------------------------------------ probabilities */

/* clip(p, lo, hi) by comparisons, so NaN stays NaN (fmin/fmax would drop it). */
FX_INLINE float fx_clip_f32(float p, float lo, float hi)
{
    return fx_sel_f32(p > hi, hi, fx_sel_f32(p < lo, lo, p));
}
FX_INLINE double fx_clip_f64(double p, double lo, double hi)
{
    return fx_sel_f64(p > hi, hi, fx_sel_f64(p < lo, lo, p));
}

/* ------------------------------------------------------------------ end of a logits row */

/* Loss of a softmax row from its parts: lin = sum_{a_c != 0} a_c (m - x_c),
 * A = sum_c a_c, R = sum_{c != k} exp(x_c - m) (k the first argmax):
 * l = lin + A log1p(R) -- log1p keeps a dominant class exact. */
static inline double fx_softmax_row_loss(double lin, double A, double R)
{
    return lin + A * fx_log1p_f64(R);
}

/* Gradient at the first argmax k: A q_k - a_k = A (q_k - 1) + (A - a_k) with
 * q_k - 1 = -R / S, exact for a dominant class. */
static inline double fx_softmax_grad_at_max(double A, double a_k, double R, double S)
{
    return A * (-R / S) + (A - a_k);
}

#endif /* FX_MATH_H */
