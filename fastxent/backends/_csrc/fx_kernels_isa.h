/* One instruction set's kernel table. Included by fx_isa_<name>.c after the
 * target pragma, with FX_ISA (table suffix) and FX_ISA_NAME (string) defined:
 * every function here, the fx_math.h helpers included, is compiled for that ISA,
 * and GCC vectorises the loops at its width. */
#include "fx_math.h"

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define FX_HAVE_STREAM 1
#endif

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
    read_sum_f32,
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
