/* One instruction set's kernel table. Included by fx_isa_<name>.c after the
 * target pragma, with FX_ISA (table suffix) and FX_ISA_NAME (string) defined:
 * every function here, the fx_math.h helpers included, is compiled for that ISA,
 * and GCC vectorises the loops at its width.
 *
 * Where each kernel lives (one family a file, the same stems as the Numba backend):
 *   fx_softmax.h  sparse_from_logits, categorical_from_logits
 *   fx_probs.h    categorical_from_probs, sparse_from_probs with label smoothing
 *   fx_gather.h   sparse_from_probs without label smoothing (the gather-log)
 *   fx_binary.h   binary_from_logits, binary_from_probs
 * and what they share: fx_math.h (scalar math), fx_lanesum.h (lane sums),
 * fx_pairwise.h (NumPy's pairwise sum), fx_labels.h (the compiled call's label
 * check), fx_load.h (loads and stores),
 * fx_weights.h (target weights of the softmax and probability kernels).
 * The family headers are templates, included below once per compute type. */
#include "fx_math.h"
#include "fx_lanesum.h"
#include "fx_pairwise.h"
#include "fx_labels.h"

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define FX_HAVE_STREAM 1
#endif

/* Hints to fetch memory read soon into L2 (the exp passes' next block) or L1
 * (the gather-log's later rows). A prefetch never faults: any address will do. */
#if defined(__GNUC__) || defined(__clang__)
#define FX_PREFETCH_L2(p) __builtin_prefetch((const void *)(p), 0, 2)
#define FX_PREFETCH_L1(p) __builtin_prefetch((const void *)(p), 0, 3)
#else
#define FX_PREFETCH_L1(p) ((void)(p))
#define FX_PREFETCH_L2(p) ((void)(p))
#endif

/* Row r's (o, i): r = o * n_i + i. */
static inline void fx_row_of(const fx_call *k, fx_ssize r, fx_ssize *o, fx_ssize *i)
{
    if (k->n_o == 1) {
        *o = 0;
        *i = r;
    } else {
        *o = r / k->n_i;
        *i = r - *o * k->n_i;
    }
}

/* A sparse label of any integer dtype as int64_t: unsigned values wrap as C's
 * (int64_t)v does, so a uint64 label 2^64 - 1 compares equal to ignore_index -1. */
static inline int64_t fx_label(const char *p, int dtype)
{
    switch (dtype) {
    case FX_I8: return *(const int8_t *)p;
    case FX_U8: return *(const uint8_t *)p;
    case FX_I16: { int16_t v; memcpy(&v, p, 2); return v; }
    case FX_U16: { uint16_t v; memcpy(&v, p, 2); return v; }
    case FX_I32: { int32_t v; memcpy(&v, p, 4); return v; }
    case FX_U32: { uint32_t v; memcpy(&v, p, 4); return v; }
    case FX_U64: { uint64_t v; memcpy(&v, p, 8); return (int64_t)v; }
    default: { int64_t v; memcpy(&v, p, 8); return v; }
    }
}

/* Where row (o, i)'s successor starts, from row's own start: (o, i + 1), or
 * (o + 1, 0) after the last inner index (strides si and so, in bytes). */
static inline const char *fx_next_row(const char *row, fx_ssize i, fx_ssize n_i, fx_ssize si, fx_ssize so)
{
    return i + 1 < n_i ? row + si : row + so - i * si;
}

/* The per-row losses of a column task. When loss_out is much larger than the
 * caches (stream_loss), non-temporal stores skip the read-for-ownership a plain
 * store does (for a binary loss over many rows, a third of the memory traffic). */
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

/* Per-row outputs at a byte address (any alignment): the X kernels' lse and rank. */
static inline void fx_put_f64(char *p, double v) { memcpy(p, &v, 8); }
static inline void fx_put_i64(char *p, int64_t v) { memcpy(p, &v, 8); }

#ifdef FX_AVX512_MASKS
#include <immintrin.h>
/* The first min(n, 16) of 16 float32 lanes (n >= 0). */
static inline __mmask16 fx_live16(fx_ssize n)
{
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}

/* Bit j set where x[j] == v, for j < min(n, lanes): one masked compare. */
static inline unsigned fx_eq_mask_f32(const float *x, float v, fx_ssize n)
{
    const __mmask16 live = fx_live16(n);
    return _mm512_mask_cmp_ps_mask(live, _mm512_maskz_loadu_ps(live, x), _mm512_set1_ps(v), _CMP_EQ_OQ);
}
static inline unsigned fx_eq_mask_f64(const double *x, double v, fx_ssize n)
{
    const __mmask8 live = n >= 8 ? (__mmask8)0xff : (__mmask8)((1u << n) - 1);
    return _mm512_mask_cmp_pd_mask(live, _mm512_maskz_loadu_pd(live, x), _mm512_set1_pd(v), _CMP_EQ_OQ);
}
/* r[q] = column q of the 16 x 16 floats whose row j was r[j]: in registers. */
static inline void fx_transpose16(__m512 *r)
{
    __m512 t[16];
    for (int j = 0; j < 16; j += 2) {
        t[j] = _mm512_unpacklo_ps(r[j], r[j + 1]);
        t[j + 1] = _mm512_unpackhi_ps(r[j], r[j + 1]);
    }
    for (int j = 0; j < 16; j += 4) {
        r[j] = _mm512_shuffle_ps(t[j], t[j + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[j + 1] = _mm512_shuffle_ps(t[j], t[j + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[j + 2] = _mm512_shuffle_ps(t[j + 1], t[j + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[j + 3] = _mm512_shuffle_ps(t[j + 1], t[j + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int h = 0; h < 16; h += 8)
        for (int j = 0; j < 4; j++) {
            t[h + j] = _mm512_shuffle_f32x4(r[h + j], r[h + j + 4], 0x88);
            t[h + j + 4] = _mm512_shuffle_f32x4(r[h + j], r[h + j + 4], 0xdd);
        }
    for (int j = 0; j < 8; j++) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
        r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
    }
}

/* Columns (classes) 0 .. nc - 1 (nc <= 16) of 16 rows at src (byte stride rs,
 * classes contiguous float32) into dst + c * ds, 16 floats each (one per row).
 * Masked loads past nc: never read, so never fault. */
static inline void fx_rows_to_columns16(const char *src, fx_ssize rs, int nc, float *dst, fx_ssize ds)
{
    const __mmask16 live = fx_live16(nc);
    __m512 r[16];
    for (int j = 0; j < 16; j++) r[j] = _mm512_maskz_loadu_ps(live, src + j * rs);
    fx_transpose16(r);
    for (int c = 0; c < nc; c++) _mm512_storeu_ps(dst + c * ds, r[c]);
}

/* The inverse: columns src + c * ds (c < nc, 16 floats each) into the first nc
 * classes of 16 rows at dst (byte stride rs); masked stores leave the rest. */
static inline void fx_columns_to_rows16(const float *src, fx_ssize ds, int nc, char *dst, fx_ssize rs)
{
    const __mmask16 live = fx_live16(nc);
    __m512 r[16];
    for (int c = 0; c < 16; c++) r[c] = c < nc ? _mm512_loadu_ps(src + c * ds) : _mm512_setzero_ps();
    fx_transpose16(r);
    for (int j = 0; j < 16; j++) _mm512_mask_storeu_ps(dst + j * rs, live, r[j]);
}

/* fx_exp_near_f32 on 16 lanes, operation for operation as GCC compiles the scalar
 * form (its multiply-adds contracted), hence the same bits. */
static inline __m512 fx_exp_near_ps(__m512 x)
{
    const __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(FX_LOG2E_F32), _mm512_set1_ps(FX_EXP_SHIFT_F32));
    const __m512 n = _mm512_sub_ps(t, _mm512_set1_ps(FX_EXP_SHIFT_F32));
    const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(FX_LN2_F32), x);
    const __m512 r2 = _mm512_mul_ps(r, r);
    const __m512 a = _mm512_fmadd_ps(_mm512_set1_ps(FX_EXP5_C3_F32), r, _mm512_set1_ps(FX_EXP5_C2_F32));
    const __m512 b = _mm512_fmadd_ps(_mm512_set1_ps(FX_EXP5_C5_F32), r, _mm512_set1_ps(FX_EXP5_C4_F32));
    const __m512 p = _mm512_fmadd_ps(r2, _mm512_fmadd_ps(r2, b, a), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), _mm512_slli_epi32(_mm512_castps_si512(t), 23)));
}

/* A contiguous float32 row of n <= FX_SHORT_C classes, held in registers (one
 * masked load a vector): its max *m and first argmax *skip, and
 * R = sum_{c != skip} exp(x_c - m) as exp_sum_short_f32 adds it (16 float32 lanes,
 * each summing its classes in order, then float64 lanes folded j + 8, j + 4, j + 2,
 * j + 1): the same bits. Returns 0 then; 1 for a row holding a NaN or +inf, 2 for
 * a row of -inf only, 3 for a row wider than fx_exp_near's range (*m and *skip set:
 * exp_sum_short_f32 with near = 0 takes it). The short-row loop inlines this: with
 * no copy, no frame and no call, consecutive rows overlap in the core.
 * nv = ceil(n / 16) is a constant in each copy (fx_short_row_ps picks one): its loops
 * unroll, the vectors stay in registers and only the last one is masked. */
FX_INLINE int fx_short_row_nv_ps(const float *x, fx_ssize n, const int nv, float *m, fx_ssize *skip, double *R,
                                  float *g, double gwA, float beta)
{
    __m512 v[FX_SHORT_C / 16];
    __m512i hi = _mm512_set1_epi32(INT32_MIN), lo = _mm512_set1_epi32(INT32_MAX);
#pragma GCC unroll 8
    for (int j = 0; j < nv; j++) {
        const __mmask16 live = j + 1 < nv ? (__mmask16)0xffff : fx_live16(n - 16 * j);
        v[j] = _mm512_maskz_loadu_ps(live, x + 16 * j);
        const __m512i b = _mm512_castps_si512(v[j]); /* fx_key_f32 */
        const __m512i key = _mm512_xor_si512(b, _mm512_and_si512(_mm512_srai_epi32(b, 31), _mm512_set1_epi32(0x7fffffff)));
        hi = _mm512_mask_max_epi32(hi, live, hi, key);
        lo = _mm512_mask_min_epi32(lo, live, lo, key);
    }
    const float mx = fx_unkey_f32(_mm512_reduce_max_epi32(hi)), mn = fx_unkey_f32(_mm512_reduce_min_epi32(lo));
    if (mx != mx || mn != mn || mx == INFINITY) return 1;
    if (mx == -INFINITY) return 2;
    const __m512 vm = _mm512_set1_ps(mx);
    *m = mx;
    /* the first argmax without a branch (its vector is random: a branch on it
     * would be mispredicted and end the overlap with the next row): the hits of
     * vectors 0-3 and 4-7 as two 64-bit masks, their lowest set bit kept */
    uint64_t hit[2] = {0, 0};
#pragma GCC unroll 8
    for (int j = 0; j < nv; j++)
        hit[j >> 2] |= (uint64_t)_mm512_cmp_ps_mask(v[j], vm, _CMP_EQ_OQ) << (16 * (j & 3));
    const uint64_t first0 = hit[0] & (0 - hit[0]), first1 = hit[0] ? 0 : hit[1] & (0 - hit[1]);
    *skip = first0 ? __builtin_ctzll(first0) : 64 + __builtin_ctzll(first1); /* the max is in the row */
    if (!(mn - mx >= (float)FX_EXP_NEAR)) return 3;
    __m512 s = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int j = 0; j < nv; j++) {
        const __mmask16 argmax = (__mmask16)((j < 4 ? first0 : first1) >> (16 * (j & 3)));
        const __mmask16 live = j + 1 < nv ? (__mmask16)0xffff : fx_live16(n - 16 * j);
        v[j] = fx_exp_near_ps(_mm512_sub_ps(v[j], vm)); /* kept for the gradient */
        s = _mm512_add_ps(s, _mm512_maskz_mov_ps(live & (__mmask16)~argmax, v[j]));
    }
    const __m512d s8 = _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(s)),
                                     _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1))));
    const __m256d s4 = _mm256_add_pd(_mm512_castpd512_pd256(s8), _mm512_extractf64x4_pd(s8, 1));
    const __m128d s2 = _mm_add_pd(_mm256_castpd256_pd128(s4), _mm256_extractf128_pd(s4, 1));
    *R = _mm_cvtsd_f64(s2) + _mm_cvtsd_f64(_mm_unpackhi_pd(s2, s2));
    if (g) { /* g_c = alpha e_c - beta, as logits_row's gradient pass (its fix-ups at
              * the label and the argmax are the caller's) */
        const __m512 alpha = _mm512_set1_ps((float)(gwA / (1.0 + *R))), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 8
        for (int j = 0; j < nv; j++) {
            const __m512 gj = _mm512_fmsub_ps(alpha, v[j], vb);
            if (j + 1 < nv) _mm512_storeu_ps(g + 16 * j, gj);
            else _mm512_mask_storeu_ps(g + 16 * j, fx_live16(n - 16 * j), gj);
        }
    }
    return 0;
}
/* The register row for any n <= FX_SHORT_C (a predictable switch to its copy).
 * With g (row-contiguous float32, may be x itself: every store follows every load),
 * also the gradient's softmax part alpha e_c - beta, alpha = (float)(gwA / (1 + R)):
 * logits_row's gradient pass; g is written only when it returns 0. NULL: the loss
 * alone (the constant removes the gradient's code where inlined). */
FX_INLINE int fx_short_row_ps(const float *x, fx_ssize n, float *m, fx_ssize *skip, double *R, float *g,
                              double gwA, float beta)
{
    switch ((n + 15) / 16) {
    case 1: return fx_short_row_nv_ps(x, n, 1, m, skip, R, g, gwA, beta);
    case 2: return fx_short_row_nv_ps(x, n, 2, m, skip, R, g, gwA, beta);
    case 3: return fx_short_row_nv_ps(x, n, 3, m, skip, R, g, gwA, beta);
    case 4: return fx_short_row_nv_ps(x, n, 4, m, skip, R, g, gwA, beta);
    case 5: return fx_short_row_nv_ps(x, n, 5, m, skip, R, g, gwA, beta);
    case 6: return fx_short_row_nv_ps(x, n, 6, m, skip, R, g, gwA, beta);
    case 7: return fx_short_row_nv_ps(x, n, 7, m, skip, R, g, gwA, beta);
    default: return fx_short_row_nv_ps(x, n, 8, m, skip, R, g, gwA, beta);
    }
}
#endif

/* The template headers' names: T is the compute type, FXN(name) a function of this
 * type (name_f32), FXM(name) an fx_math.h helper of it (fx_exp_neg_f32). */
#define FX_CAT_(a, b) a##_##b
#define FX_CAT(a, b) FX_CAT_(a, b)
#define FXN(name) FX_CAT(name, FX_S)
#define FXM(name) FX_CAT(name, FX_S)
#define T FX_T
#define SEL FXM(fx_sel)

/* Loads first for both types: the float32 kernels read binary targets as float64. */
#define FX_T float
#define FX_S f32
#define FX_K int32_t
#define FX_CODE FX_F32
#include "fx_load.h"
#undef FX_T
#undef FX_S
#undef FX_K
#undef FX_CODE

#define FX_T double
#define FX_S f64
#define FX_K int64_t
#define FX_CODE FX_F64
#include "fx_load.h"
#undef FX_T
#undef FX_S
#undef FX_K
#undef FX_CODE

#define FX_T float
#define FX_S f32
#define FX_K int32_t
#define FX_CODE FX_F32
#include "fx_weights.h"
#include "fx_softmax.h"
#include "fx_probs.h"
#include "fx_gather.h"
#include "fx_binary.h"
#include "fx_hooks.h"
#undef FX_T
#undef FX_S
#undef FX_K
#undef FX_CODE

#define FX_T double
#define FX_S f64
#define FX_K int64_t
#define FX_CODE FX_F64
#include "fx_weights.h"
#include "fx_softmax.h"
#include "fx_probs.h"
#include "fx_gather.h"
#include "fx_binary.h"
#include "fx_hooks.h"
#undef FX_T
#undef FX_S
#undef FX_K
#undef FX_CODE

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
    FX_PAIR(logits_x_row), FX_PAIR(logits_x_cols), logits_bf16_row_f32, logits_x_bf16_row_f32,
    FX_PAIR(logits_short),
    FX_PAIR(probs_row), FX_PAIR(probs_cols),
    FX_PAIR(bce_logits_row), FX_PAIR(bce_logits_cols),
    FX_PAIR(bce_probs_row), FX_PAIR(bce_probs_cols),
    FX_PAIR(gather),
    vexp_f32, vexp_f64, vlog_f32, vlog_f64,
    read_sum_f32, pairwise_sum_f64, valid_label_rows,
};
