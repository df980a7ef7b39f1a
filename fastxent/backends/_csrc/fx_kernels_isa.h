/* One instruction set's kernel table. Included by fx_isa_<name>.c after the
 * target pragma, with FX_ISA (table suffix) and FX_ISA_NAME (string) defined:
 * every function here, the fx_math.h helpers included, is compiled for that ISA,
 * and GCC vectorises the loops at its width. */
#include "fx_math.h"

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define FX_HAVE_STREAM 1
#endif

/* Where row (o, i)'s successor starts, from row's own start: (o, i + 1), or
 * (o + 1, 0) after the last inner index (strides si and so, in bytes). */
static inline const char *fx_next_row(const char *row, fx_ssize i, fx_ssize n_i, fx_ssize si, fx_ssize so)
{
    return i + 1 < n_i ? row + si : row + so - i * si;
}

/* The per-row losses of a column task. When loss_out is much larger than the
 * caches (stream_loss), non-temporal stores skip the read-for-ownership a plain
 * store does: for a binary loss over 10M rows that read is a third of the memory
 * traffic. */
static inline void fx_store_losses(double *dst, const double *src, fx_ssize n, int stream)
{
    fx_ssize j = 0;
#ifdef FX_HAVE_STREAM
    if (stream) {
        if (((uintptr_t)dst & 15) != 0 && n > 0) { dst[0] = src[0]; j = 1; }
        for (; j + 2 <= n; j += 2) _mm_stream_pd(dst + j, _mm_loadu_pd(src + j));
        for (; j < n; j++) dst[j] = src[j];
        _mm_sfence();
        return;
    }
#else
    (void)stream;
#endif
    for (; j < n; j++) dst[j] = src[j];
}

#ifdef FX_AVX512_MASKS
#include <immintrin.h>
/* Bit j set where x[j] == v, for j < min(n, lanes): one masked compare. (The same
 * in the AVX2 table, a compare and movemask a vector at a time, was 1.02x slower
 * than the portable find_first.) */
static inline unsigned fx_eq_mask_f32(const float *x, float v, fx_ssize n)
{
    const __mmask16 live = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
    return _mm512_mask_cmp_ps_mask(live, _mm512_maskz_loadu_ps(live, x), _mm512_set1_ps(v), _CMP_EQ_OQ);
}
static inline unsigned fx_eq_mask_f64(const double *x, double v, fx_ssize n)
{
    const __mmask8 live = n >= 8 ? (__mmask8)0xff : (__mmask8)((1u << n) - 1);
    return _mm512_mask_cmp_pd_mask(live, _mm512_maskz_loadu_pd(live, x), _mm512_set1_pd(v), _CMP_EQ_OQ);
}
#endif

/* NumPy's pairwise summation (pairwise_sum in its loops_utils), step for step:
 * the same bits as np.sum of a contiguous float64 array, which is what the
 * general path's reduction takes. Leaves of at most 128 values add in eight
 * lanes; compiled per ISA, the lanes become two AVX2 vectors (the block sums of a
 * binary loss add one value per element: in SSE2 scalar code, 15% of its time). */
static inline double pairwise_sum_f64(const double *a, fx_ssize n)
{
    if (n < 8) {
        double res = 0.0;
        for (fx_ssize i = 0; i < n; i++) res += a[i];
        return res;
    }
    if (n <= 128) {
        double r0 = a[0], r1 = a[1], r2 = a[2], r3 = a[3];
        double r4 = a[4], r5 = a[5], r6 = a[6], r7 = a[7];
        fx_ssize i = 8;
        for (; i < n - n % 8; i += 8) {
            r0 += a[i];     r1 += a[i + 1]; r2 += a[i + 2]; r3 += a[i + 3];
            r4 += a[i + 4]; r5 += a[i + 5]; r6 += a[i + 6]; r7 += a[i + 7];
        }
        double res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7));
        for (; i < n; i++) res += a[i];
        return res;
    }
    fx_ssize n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum_f64(a, n2) + pairwise_sum_f64(a + n2, n - n2);
}

/* The pairwise sums of s[0 .. n)'s leaves (n a multiple of FX_LEAF), one per leaf
 * into leaf[]: what a binary column task writes in block-sums mode (the block's
 * sum is then the pairwise tree over its leaves). */
static inline void fx_leaf_sums(const double *s, fx_ssize n, double *leaf)
{
    for (fx_ssize j0 = 0; j0 < n; j0 += FX_LEAF) leaf[j0 / FX_LEAF] = pairwise_sum_f64(s + j0, FX_LEAF);
}

#ifndef FX_REPORT_F64_ONLY
#define FX_T float
#define FX_S f32
#define FX_K int32_t
#define FX_CODE FX_F32
#include "fx_kernels_t.h"
#undef FX_T
#undef FX_S
#undef FX_K
#undef FX_CODE
#endif

#ifndef FX_REPORT_F32_ONLY
#define FX_T double
#define FX_S f64
#define FX_K int64_t
#define FX_CODE FX_F64
#include "fx_kernels_t.h"
#undef FX_T
#undef FX_S
#undef FX_K
#undef FX_CODE
#endif

#if !defined(FX_REPORT_F32_ONLY) && !defined(FX_REPORT_F64_ONLY)
/* The benchmark's read pass: a float64 sum of float32 data, lane accumulators
 * like the kernels', so it reads memory at the kernels' width. */
static double read_sum_f32(const float *x, fx_ssize n)
{
    double acc[16] = {0};
    fx_ssize c = 0;
    for (; c + 16 <= n; c += 16)
        for (int j = 0; j < 16; j++) acc[j] += (double)x[c + j];
    double s = 0;
    for (int j = 0; j < 16; j++) s += acc[j];
    for (; c < n; c++) s += (double)x[c];
    return s;
}

#define FX_TABLE_NAME FX_CAT(fx_table, FX_ISA)
#define FX_PAIR(name) {name##_f32, name##_f64}

const fx_table FX_TABLE_NAME = {
    FX_ISA_NAME,
    FX_PAIR(logits_row), FX_PAIR(logits_cols),
    FX_PAIR(probs_row), FX_PAIR(probs_cols),
    FX_PAIR(bce_logits_row), FX_PAIR(bce_logits_cols),
    FX_PAIR(bce_probs_row), FX_PAIR(bce_probs_cols),
    vexp_f32, vexp_f64, vlog_f32, vlog_f64,
    read_sum_f32, pairwise_sum_f64,
};
#endif

#if defined(FX_REPORT_F32_ONLY) || defined(FX_REPORT_F64_ONLY)
/* tools/vec_report.py builds one compute type at a time: keep its kernels alive */
#ifdef FX_REPORT_F32_ONLY
#define FX_RS(name) name##_f32
#else
#define FX_RS(name) name##_f64
#endif
void *fx_report_keep[] = {
    (void *)FX_RS(logits_row), (void *)FX_RS(logits_cols), (void *)FX_RS(probs_row),
    (void *)FX_RS(probs_cols), (void *)FX_RS(bce_logits_row), (void *)FX_RS(bce_logits_cols),
    (void *)FX_RS(bce_probs_row), (void *)FX_RS(bce_probs_cols), (void *)FX_RS(vexp),
    (void *)FX_RS(vlog),
};
#endif
