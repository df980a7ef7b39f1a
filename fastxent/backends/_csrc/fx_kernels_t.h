/* Kernel bodies for one compute type, included by fx_kernels_isa.h twice per ISA:
 *   FX_T   float / double        (compute dtype)
 *   FX_S   f32 / f64             (suffix of the helpers in fx_math.h)
 *   FX_K   int32_t / int64_t     (ordering keys for the max)
 *   FX_CODE FX_F32 / FX_F64      (dtype code of FX_T)
 *
 * Layout: every kernel has a row form (class axis at any stride; rows
 * contiguous in memory are used in place, anything else -- strided, unaligned,
 * float16 -- goes through a per-block buffer) and a column form (inner axis
 * contiguous: vectorised across rows, one lane per row).
 *
 * Vectorisation notes: sums over a row are float64 and are written with eight
 * independent lane accumulators (FX_LANESUM), because GCC does not reassociate a
 * single float accumulator without -ffast-math; each lane adds in a fixed
 * order, so results do not depend on the thread count. The softmax exp sums
 * (FX_RUNSUM) add float32 exps in float32 lanes over short runs first.
 */

#define FX_CAT_(a, b) a##_##b
#define FX_CAT(a, b) FX_CAT_(a, b)
#define FXN(name) FX_CAT(name, FX_S)     /* this file's functions: name_f32 */
#define FXM(name) FX_CAT(name, FX_S)     /* fx_math.h helpers: fx_exp_neg_f32 */
#define T FX_T
#define SEL FXM(fx_sel)

#ifndef FX_LANESUM
/* RESULT = sum_{c < N} (double)F(c) with 8 independent float64 lane accumulators,
 * in every table (with 16 in the AVX-512 table, so that a float32 step would fill
 * a zmm register, GCC left the loop scalar: categorical from probabilities took
 * 5.7x the time of 8 lanes). GCC
 * vectorises the loop as one reduction group, accumulators in registers, without
 * reassociating anything: each lane adds in a fixed order, so the result depends
 * on neither the thread count nor the call. Scalars rather than an array: with an
 * array GCC vectorises only the inner lane loop and keeps the sums in memory.
 * PRE(c) runs once per step (hooks); prefetches there would stop vectorisation. */
#define FX_NOPRE(c) ((void)0)
#define FX_LANESUM8_(F, c_) \
    a0_ += (double)F(c_);     a1_ += (double)F(c_ + 1); a2_ += (double)F(c_ + 2); \
    a3_ += (double)F(c_ + 3); a4_ += (double)F(c_ + 4); a5_ += (double)F(c_ + 5); \
    a6_ += (double)F(c_ + 6); a7_ += (double)F(c_ + 7);
#define FX_LANESUM(RESULT, N, F, PRE)                                                      \
    do {                                                                                   \
        double a0_ = 0, a1_ = 0, a2_ = 0, a3_ = 0, a4_ = 0, a5_ = 0, a6_ = 0, a7_ = 0;     \
        fx_ssize c_ = 0;                                                                   \
        for (; c_ + 8 <= (N); c_ += 8) {                                                   \
            PRE(c_);                                                                       \
            FX_LANESUM8_(F, c_)                                                            \
        }                                                                                  \
        double s_ = ((a0_ + a1_) + (a2_ + a3_)) + ((a4_ + a5_) + (a6_ + a7_));             \
        for (; c_ < (N); c_++) s_ += (double)F(c_);                                        \
        RESULT = s_;                                                                       \
    } while (0)

/* RESULT = sum_{c < N} (double)F(c0, j), c = c0 + j, for the exp sums: T lanes (8,
 * or 16 with FX_LANES16) add FX_RUN elements at a time (16 or 8 terms a lane), and
 * only each run's lane sums are converted and added into float64 lanes. Summing
 * float32 exps straight into float64 costs a conversion, an extract and a float64
 * add per 4 elements, more than a third of the exp's own operations; a run's
 * float32 lane sum of at most 16 positive terms is off by < 1e-6 relative (the
 * float32 tolerance is 1e-5), and the sum over runs, hence over a 128k-class
 * row, stays float64. FM(c0, j) is F with the element at j == skr left out: the
 * one run holding it (skr = SKIP - c0 in [0, run length)) uses FM, every other
 * run F, so the other vector steps carry no mask. PRE(c0) runs once per run.
 * Each lane adds in a fixed order: no dependence on the thread count. */
#define FX_RUN 128
#define FX_RUN8_(F, j_) \
    f0_ += F(c0_, j_);     f1_ += F(c0_, j_ + 1); f2_ += F(c0_, j_ + 2); \
    f3_ += F(c0_, j_ + 3); f4_ += F(c0_, j_ + 4); f5_ += F(c0_, j_ + 5); \
    f6_ += F(c0_, j_ + 6); f7_ += F(c0_, j_ + 7);
#ifdef FX_LANES16
#define FX_RUNW 16
#define FX_RUNSTEP_(F, j_) FX_RUN8_(F, j_) \
    g0_ += F(c0_, j_ + 8);  g1_ += F(c0_, j_ + 9);  g2_ += F(c0_, j_ + 10); \
    g3_ += F(c0_, j_ + 11); g4_ += F(c0_, j_ + 12); g5_ += F(c0_, j_ + 13); \
    g6_ += F(c0_, j_ + 14); g7_ += F(c0_, j_ + 15);
#define FX_RUNG_DECL T g0_ = 0, g1_ = 0, g2_ = 0, g3_ = 0, g4_ = 0, g5_ = 0, g6_ = 0, g7_ = 0;
#define FX_RUNG_LANES , g0_, g1_, g2_, g3_, g4_, g5_, g6_, g7_
/* lanes j and j + 8 first, then the tree of FX_LANESUM */
#define FX_RUNG_FOLD(a_) \
    for (int q_ = 0; q_ < 8; q_++) a_[q_] += a_[q_ + 8];
#else
#define FX_RUNW 8
#define FX_RUNSTEP_(F, j_) FX_RUN8_(F, j_)
#define FX_RUNG_DECL
#define FX_RUNG_LANES
#define FX_RUNG_FOLD(a_)
#endif
#define FX_RUNSUM(RESULT, N, F, FM, SKIP, PRE)                                                \
    do {                                                                                   \
        double a_[FX_RUNW] = {0};                                                          \
        const fx_ssize nv_ = (N) - (N) % FX_RUNW; /* end of the vector steps */          \
        fx_ssize c0_ = 0;                                                                  \
        for (; c0_ < nv_; c0_ += FX_RUN) {                                                 \
            const int len_ = (int)(nv_ - c0_ < FX_RUN ? nv_ - c0_ : FX_RUN);               \
            const fx_ssize skr_ = (SKIP) - c0_;                                            \
            PRE(c0_);                                                                      \
            T f0_ = 0, f1_ = 0, f2_ = 0, f3_ = 0, f4_ = 0, f5_ = 0, f6_ = 0, f7_ = 0;      \
            FX_RUNG_DECL                                                                   \
            if (skr_ >= 0 && skr_ < len_) {                                                \
                const int skr = (int)skr_;                                                 \
                for (int j_ = 0; j_ < len_; j_ += FX_RUNW) { FX_RUNSTEP_(FM, j_) }        \
            } else {                                                                       \
                for (int j_ = 0; j_ < len_; j_ += FX_RUNW) { FX_RUNSTEP_(F, j_) }         \
            }                                                                              \
            {   /* the run's lane sums into the float64 lanes through an array and a \
                 * loop: with AVX-512 GCC makes that two vcvtps2pd and two vector adds, \
                 * where scalar variables took 16 extracts, conversions and adds (a   \
                 * quarter of the exp pass's samples; sparse 16,384 x 1,000: 0.85x   \
                 * the time). The AVX2 table stays scalar either way (same speed). */ \
                const T f_[FX_RUNW] = {f0_, f1_, f2_, f3_, f4_, f5_, f6_, f7_ FX_RUNG_LANES}; \
                for (int q_ = 0; q_ < FX_RUNW; q_++) a_[q_] += (double)f_[q_];             \
            }                                                                              \
        }                                                                                  \
        FX_RUNG_FOLD(a_)                                                                   \
        double s_ = ((a_[0] + a_[1]) + (a_[2] + a_[3])) + ((a_[4] + a_[5]) + (a_[6] + a_[7])); \
        for (c0_ = nv_; c0_ < (N); c0_++) {                                                \
            const fx_ssize skr = (SKIP) - c0_;                                             \
            s_ += (double)FM(c0_, 0);                                                      \
        }                                                                                  \
        RESULT = s_;                                                                       \
    } while (0)
#endif

/* ------------------------------------------------------------------ loads and stores */

static inline double FXN(rd_f64)(const char *p) { double v; memcpy(&v, p, 8); return v; }

/* One element of any supported dtype, as T. */
static inline T FXN(load1)(const char *p, int dtype)
{
    switch (dtype) {
    case FX_F32: { float v; memcpy(&v, p, 4); return (T)v; }
    case FX_F64: { double v; memcpy(&v, p, 8); return (T)v; }
    case FX_F16: { uint16_t v; memcpy(&v, p, 2); return (T)fx_half_to_f32(v); }
    case FX_BOOL: return (T)(*(const uint8_t *)p != 0);
    case FX_I8: return (T)(*(const int8_t *)p);
    case FX_U8: return (T)(*(const uint8_t *)p);
    case FX_I16: { int16_t v; memcpy(&v, p, 2); return (T)v; }
    case FX_U16: { uint16_t v; memcpy(&v, p, 2); return (T)v; }
    case FX_I32: { int32_t v; memcpy(&v, p, 4); return (T)v; }
    case FX_U32: { uint32_t v; memcpy(&v, p, 4); return (T)v; }
    case FX_I64: { int64_t v; memcpy(&v, p, 8); return (T)v; }
    case FX_U64: { uint64_t v; memcpy(&v, p, 8); return (T)v; }
    }
    return (T)NAN;
}

/* Element-wise converting copy; one loop per dtype and contiguity (the switch is
 * outside the loops). */
#define FX_CONVERT_LOOP(CT, EXPR)                                              \
    if (stride == (fx_ssize)sizeof(CT) && ((uintptr_t)base % sizeof(CT)) == 0) { \
        const CT *src = (const CT *)base;                                      \
        for (fx_ssize c = 0; c < n; c++) { CT v = src[c]; buf[c] = (T)(EXPR); } \
    } else {                                                                   \
        for (fx_ssize c = 0; c < n; c++) {                                     \
            CT v;                                                              \
            memcpy(&v, base + c * stride, sizeof(CT));                         \
            buf[c] = (T)(EXPR);                                                \
        }                                                                      \
    }                                                                          \
    break;

/* Whether load() must copy: the memory is not contiguous, aligned T. */
static inline int FXN(load_copies)(const char *base, fx_ssize stride, int dtype)
{
    return !(dtype == FX_CODE && stride == (fx_ssize)sizeof(T) && ((uintptr_t)base % sizeof(T)) == 0);
}

/* n elements at base (byte stride) as T: the memory itself when it already is
 * contiguous, aligned T, otherwise converted into buf. */
static const T *FXN(load)(const char *base, fx_ssize stride, int dtype, fx_ssize n, T *buf)
{
    if (!FXN(load_copies)(base, stride, dtype))
        return (const T *)base;
    switch (dtype) {
    case FX_F32: FX_CONVERT_LOOP(float, v)
    case FX_F64: FX_CONVERT_LOOP(double, v)
    case FX_F16: FX_CONVERT_LOOP(uint16_t, fx_half_to_f32(v))
    case FX_BOOL: FX_CONVERT_LOOP(uint8_t, v != 0)
    case FX_I8: FX_CONVERT_LOOP(int8_t, v)
    case FX_U8: FX_CONVERT_LOOP(uint8_t, v)
    case FX_I16: FX_CONVERT_LOOP(int16_t, v)
    case FX_U16: FX_CONVERT_LOOP(uint16_t, v)
    case FX_I32: FX_CONVERT_LOOP(int32_t, v)
    case FX_U32: FX_CONVERT_LOOP(uint32_t, v)
    case FX_I64: FX_CONVERT_LOOP(int64_t, v)
    case FX_U64: FX_CONVERT_LOOP(uint64_t, v)
    default:
        for (fx_ssize c = 0; c < n; c++) buf[c] = (T)NAN;
    }
    return buf;
}

/* float64 values at any stride (pos_weight) as T. */
static const T *FXN(load_f64)(const char *base, fx_ssize stride, fx_ssize n, T *buf)
{
    return FXN(load)(base, stride, FX_F64, n, buf);
}

/* Where a block of gradient goes: the output itself when contiguous and aligned. */
static inline T *FXN(gdst)(char *base, fx_ssize stride, T *buf)
{
    if (stride == (fx_ssize)sizeof(T) && ((uintptr_t)base % sizeof(T)) == 0)
        return (T *)base;
    return buf;
}
static inline void FXN(gflush)(char *base, fx_ssize stride, fx_ssize n, const T *dst)
{
    if ((const char *)dst == base) return; /* written in place */
    for (fx_ssize c = 0; c < n; c++) memcpy(base + c * stride, &dst[c], sizeof(T));
}
static inline void FXN(store1)(char *p, double v) { T w = (T)v; memcpy(p, &w, sizeof(T)); }

static void FXN(fill)(char *base, fx_ssize stride, fx_ssize n, T v)
{
    if (stride == (fx_ssize)sizeof(T) && ((uintptr_t)base % sizeof(T)) == 0) {
        T *d = (T *)base;
        for (fx_ssize c = 0; c < n; c++) d[c] = v;
    } else {
        for (fx_ssize c = 0; c < n; c++) memcpy(base + c * stride, &v, sizeof(T));
    }
}

static inline double FXN(grad_weight)(const fx_call *k, fx_ssize o, fx_ssize i)
{
    return FXN(rd_f64)(k->gw + o * k->gw_so + i * k->gw_si);
}

/* ------------------------------------------------------------------ row reductions */

/* Block max and min, for the exp pass, through integer keys that order like the
 * floats (fx_key: one key transform and two integer reductions a vector, no float
 * compare on the FMA ports). A positive NaN's key lies above +inf's and a negative
 * one's below -inf's, so the block holds a NaN exactly when the max is a NaN or
 * the min a negative NaN: returns 1 then (the row's loss is NaN), else 0 with the
 * max and min in *mx, *mn. */
static int FXN(block_range)(const T *x, fx_ssize n, T *mx, T *mn)
{
    FX_K hi = (FX_K)1 << (sizeof(FX_K) * 8 - 1); /* INT_MIN */
    FX_K lo = ~hi;                                /* INT_MAX */
    for (fx_ssize c = 0; c < n; c++) {
        const FX_K key = FXM(fx_key)(x[c]);
        hi = key > hi ? key : hi;
        lo = key < lo ? key : lo;
    }
    *mx = FXM(fx_unkey)(hi);
    *mn = FXM(fx_unkey)(lo);
    return *mx != *mx || *mn != *mn;
}

#ifdef FX_AVX512_MASKS
/* First index holding v, or -1. AVX-512: a compare into a mask register tests a
 * vector (16 float32, 8 float64) and the mask's lowest set bit is the index: per
 * vector one compare and one test, where the portable version's any-equal and
 * first-index reductions took about 15% of a 1,000-class sparse loss (0.96x the
 * time with this). */
static fx_ssize FXN(find_first)(const T *x, fx_ssize n, T v)
{
    for (fx_ssize c = 0; c < n; c += 64 / (fx_ssize)sizeof(T)) {
        const unsigned hit = FXM(fx_eq_mask)(x + c, v, n - c);
        if (hit) return c + __builtin_ctz(hit);
    }
    return -1;
}
#else
/* Index of the first element equal to v among x[0 .. n) (n < 2^31), or n: the
 * smallest index of a match, as a min-reduction that vectorises (no early exit;
 * the 8-element any-equal blocks it replaces stayed scalar compares). */
static fx_ssize FXN(first_in)(const T *x, fx_ssize n, T v)
{
    const FX_K none = (FX_K)n;
    FX_K best = none;
    for (FX_K c = 0; c < none; c++) {
        const FX_K hit = x[c] == v ? c : none;
        best = hit < best ? hit : best;
    }
    return (fx_ssize)best;
}

/* First index holding v, or -1: whole blocks of 64 are tested with a vectorised
 * any-equal; the block with the match, or the rest of the row, by first_in. */
static fx_ssize FXN(find_first)(const T *x, fx_ssize n, T v)
{
    fx_ssize c = 0;
    for (; c + 64 <= n; c += 64) {
        int hit = 0;
        for (int j = 0; j < 64; j++) hit |= x[c + j] == v;
        if (hit) return c + FXN(first_in)(x + c, 64, v);
    }
    const fx_ssize r = FXN(first_in)(x + c, n - c, v);
    return r < n - c ? c + r : -1;
}
#endif

/* Memory is read by the max pass, then the exp pass computes on data in L1: the
 * exp pass prefetches the next block (pf, same length) so that both overlap. A
 * prefetch never faults, so pf may point anywhere (NULL + offsets included). */
#if defined(__GNUC__) || defined(__clang__)
#define FX_PREFETCH_L2(p) __builtin_prefetch((const void *)(p), 0, 2)
#else
#define FX_PREFETCH_L2(p) ((void)(p))
#endif

#define FX_IOTA8_(b) b, b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7
#define FX_IOTA32_(b) FX_IOTA8_(b), FX_IOTA8_(b + 8), FX_IOTA8_(b + 16), FX_IOTA8_(b + 24)
/* 0, 1, ..., FX_RUN - 1 (the index of each element of a run), for masks */
static const T FXN(run_iota)[FX_RUN] = {
    FX_IOTA32_(0), FX_IOTA32_(32), FX_IOTA32_(64), FX_IOTA32_(96)
};
#undef FX_IOTA8_
#undef FX_IOTA32_

/* sum_{c in [0, n), c != skip} exp(x_c - m) in float64 (skip: the row's first
 * argmax when it lies in this block, else -1). Leaving the argmax's exp(0) = 1 out
 * of the sum keeps R = S - 1 exact when one class dominates; other classes equal
 * to the max count 1 each, as they should. With e non-NULL also stores every
 * exp(x_c - m) (the gradient pass reuses them). near: every x_c - m lies in
 * fx_exp_near's range (no -inf), so the cheaper exp serves. The block holds no
 * NaN (block_range). pf: the block read next. */
static double FXN(exp_sum)(const T *x, fx_ssize n, T m, fx_ssize skip, int near, T *e, const char *pf)
{
    double s1 = 0;
    if (n <= FX_RUN) {
        /* short rows: a padded copy keeps every exp in vector steps instead of
         * scalar tails (the padding is m, in range for fx_exp_near; its exps and
         * the argmax's are then set to 0); the exps add in T lanes as one run
         * (FX_RUNSUM) */
        T xb[FX_RUN + FX_RUNW], eb[FX_RUN + FX_RUNW];
        const fx_ssize np = (n + FX_RUNW - 1) / FX_RUNW * FX_RUNW;
        for (fx_ssize c = 0; c < np; c++) xb[c] = c < n ? x[c] : m;
        if (near)
            for (fx_ssize c = 0; c < np; c++) eb[c] = FXM(fx_exp_near)(xb[c] - m);
        else
            for (fx_ssize c = 0; c < np; c++) eb[c] = FXM(fx_exp_neg)(xb[c] - m);
        for (fx_ssize c = n; c < np; c++) eb[c] = 0;
        if (skip >= 0) eb[skip] = 0;
#define FX_EB(c0, j) eb[(c0) + (j)]
#define FX_EB_M(c0, j) ((void)skr, eb[(c0) + (j)]) /* nothing masked: skip is -1 */
        FX_RUNSUM(s1, np, FX_EB, FX_EB_M, -1, FX_NOPRE);
#undef FX_EB
#undef FX_EB_M
        if (e) {
            for (fx_ssize c = 0; c < n; c++) e[c] = eb[c];
            if (skip >= 0) e[skip] = (T)1;
        }
        return s1;
    }
    /* the next block into cache while this one computes, a run's worth (FX_RUN
     * elements) per run: spread over the pass, the prefetches overlap the exps
     * and never queue up on the outstanding-miss limit (all at once up front, the
     * 63 lines of a 1000-class float32 row were slower: ~0.9 vs ~0.67 ns/element
     * streaming 2 threads). Prefetches stay out of the vector loop (they would stop
     * its vectorisation). */
#define FX_PF_RUN(c0)                                                              \
    for (int b_ = 0; b_ < FX_RUN * (int)sizeof(T); b_ += 64)                       \
        FX_PREFETCH_L2(pf + (c0) * (fx_ssize)sizeof(T) + b_)
    /* one sweep: the argmax is left out by the masked run (FX_RUNSUM); its stored
     * exp is exp(0) = 1 either way */
#define FX_EXP(c0, j) FX_EXPFN(x[(c0) + (j)] - m)
#define FX_EXP_ST(c0, j) (e[(c0) + (j)] = FX_EXPFN(x[(c0) + (j)] - m))
#define FX_EXP_IP(c0, j) (e[(c0) + (j)] = FX_EXPFN(e[(c0) + (j)] - m))
    /* the mask compares a table of indices (a vector load): GCC does not build
     * the vector {j, j+1, ...} from the scalar index and would leave the run scalar */
#define FX_EXP_M(c0, j) SEL(FXN(run_iota)[j] == (T)skr, (T)0, FX_EXP(c0, j))
#define FX_EXP_STM(c0, j) SEL(FXN(run_iota)[j] == (T)skr, (T)0, FX_EXP_ST(c0, j))
#define FX_EXP_IPM(c0, j) SEL(FXN(run_iota)[j] == (T)skr, (T)0, FX_EXP_IP(c0, j))
    /* in place (grad_out is x): one pointer, or GCC's overlap check sends the loop
     * to its scalar version */
#define FX_EXP_RUNS                                                  \
    if (e && (const T *)e == x) {                                    \
        FX_RUNSUM(s1, n, FX_EXP_IP, FX_EXP_IPM, skip, FX_PF_RUN);    \
    } else if (e) {                                                  \
        FX_RUNSUM(s1, n, FX_EXP_ST, FX_EXP_STM, skip, FX_PF_RUN);    \
    } else {                                                         \
        FX_RUNSUM(s1, n, FX_EXP, FX_EXP_M, skip, FX_PF_RUN);         \
    }
    if (near) {
#define FX_EXPFN FXM(fx_exp_near)
        FX_EXP_RUNS
#undef FX_EXPFN
    } else {
#define FX_EXPFN FXM(fx_exp_neg)
        FX_EXP_RUNS
#undef FX_EXPFN
    }
#undef FX_EXP_RUNS
#undef FX_EXP
#undef FX_EXP_ST
#undef FX_EXP_IP
#undef FX_EXP_M
#undef FX_EXP_STM
#undef FX_EXP_IPM
#undef FX_PF_RUN
    if (e && skip >= 0) e[skip] = (T)1;
    return s1;
}

/* sum_{u_c != 0} u_c (m - x_c): a zero weight contributes exactly 0 even where
 * x_c = -inf. u == NULL: every u_c = 1. */
static double FXN(lin_sum)(const T *x, const T *u, fx_ssize n, T m)
{
    double s;
#define FX_LW(c) SEL(u[c] != 0, u[c] * (m - x[c]), (T)0)
#define FX_L1(c) (m - x[c])
    if (u) FX_LANESUM(s, n, FX_LW, FX_NOPRE);
    else FX_LANESUM(s, n, FX_L1, FX_NOPRE);
#undef FX_LW
#undef FX_L1
    return s;
}

static double FXN(sum)(const T *u, fx_ssize n)
{
    double s;
#define FX_U(c) u[c]
    FX_LANESUM(s, n, FX_U, FX_NOPRE);
#undef FX_U
    return s;
}

/* ------------------------------------------------------------------ target weights */

/* Per-class target weights beyond a sparse label's own term:
 *   sparse:       u_c = (ls/C) w_c      (the label adds (1-ls) w_y at c = y)
 *   categorical:  u_c = w_c (t_c (1-ls) + ls/C)
 * U_NONE: all zero (sparse, ls = 0); U_CONST: all equal to u0 (sparse, uniform
 * class weights); U_VEC: a vector per block. */
#ifndef FX_U_KINDS
#define FX_U_KINDS
enum { U_NONE = 0, U_CONST = 1, U_VEC = 2 };
#endif

typedef struct {
    int kind;
    T u0;         /* U_CONST */
    double lab;   /* sparse: (1-ls) w_y; categorical: 0 */
    double A;     /* sparse: sum_c a_c, known up front; categorical: from the sums */
} FXN(weights);

static FXN(weights) FXN(weights_for)(const fx_call *k, fx_ssize y)
{
    FXN(weights) w;
    double per = k->ls_per_c;
    if (k->dense) {
        w.kind = U_VEC; w.u0 = 0; w.lab = 0; w.A = 0;
    } else {
        w.lab = (1.0 - k->ls) * k->cw[y];
        w.A = w.lab + per * k->cw_sum;
        w.kind = k->ls == 0 ? U_NONE : (k->cw_uniform ? U_CONST : U_VEC);
        w.u0 = (T)(per * k->cw0);
    }
    return w;
}

/* u_c for classes c0 .. c0+n-1 of row (o, i) into buf (U_VEC only). */
static const T *FXN(u_block)(const fx_call *k, const char *trow, fx_ssize c0, fx_ssize n, T *buf, T *tmp)
{
    const double per = k->ls_per_c;
    if (k->dense) {
        const T *t = FXN(load)(trow + c0 * k->t.sc, k->t.sc, k->t.dtype, n, tmp);
        const T keep = (T)(1.0 - k->ls), add = (T)per;
        for (fx_ssize c = 0; c < n; c++) buf[c] = (T)k->cw[c0 + c] * (t[c] * keep + add);
    } else {
        for (fx_ssize c = 0; c < n; c++) buf[c] = (T)(per * k->cw[c0 + c]);
    }
    return buf;
}

/* The same weight for one class (fix-ups at the label and at the argmax). */
static double FXN(u_at)(const fx_call *k, const char *trow, fx_ssize c)
{
    const double per = k->ls_per_c;
    if (k->dense) {
        T t = FXN(load1)(trow + c * k->t.sc, k->t.dtype);
        return (double)((T)k->cw[c] * (t * (T)(1.0 - k->ls) + (T)per));
    }
    return (double)(T)(per * k->cw[c]);
}

/* ------------------------------------------------------------------ softmax rows */

/* Sparse or categorical cross-entropy from logits, one row, one sweep per block:
 * per block a max pass and an exp pass over data that is in L1; blocks update a
 * running max (online softmax), so a 128k-class row is read from memory once. */
static int FXN(logits_row)(const fx_call *k, fx_ssize o, fx_ssize i, fx_ssize y)
{
    const fx_ssize C = k->n_c;
    const char *xrow = k->x.data + o * k->x.so + i * k->x.si;
    const char *trow = k->dense ? k->t.data + o * k->t.so + i * k->t.si : NULL;
    char *grow = k->g.data ? k->g.data + o * k->g.so + i * k->g.si : NULL;
    double *loss = &k->loss[o * k->n_i + i - k->loss_r0];
    const fx_ssize xs = k->x.sc, gs = k->g.sc;
    /* where the next row starts (its data is read next) */
    const char *xnext = fx_next_row(xrow, i, k->n_i, k->x.si, k->x.so);
    const char *tnext = trow ? fx_next_row(trow, i, k->n_i, k->t.si, k->t.so) : NULL;

    if (!k->dense && y < 0) { /* ignored row */
        *loss = 0.0;
        if (grow) FXN(fill)(grow, gs, C, (T)0);
        return 0;
    }
    const FXN(weights) w = FXN(weights_for)(k, y);
    const int single = C <= FX_BLOCK; /* one block: keep exp(x - m) for the gradient */
    T xbuf[FX_BLOCK], ubuf[FX_BLOCK], tbuf[FX_BLOCK], ebuf[FX_BLOCK];
    T *ework = NULL;

    /* the label's own logit, read before anything is written (in-place gradient) */
    const T xy = k->dense ? (T)0 : FXN(load1)(xrow + y * xs, k->x.dtype);

    T m = (T)-INFINITY;
    double R = 0, lin = 0, usum = 0;
    fx_ssize kmax = -1;
    int bad = 0;
    for (fx_ssize c0 = 0; c0 < C && !bad; c0 += FX_BLOCK) {
        const fx_ssize n = C - c0 < FX_BLOCK ? C - c0 : FX_BLOCK;
        const T *xv = FXN(load)(xrow + c0 * xs, xs, k->x.dtype, n, xbuf);
        const T *uv = w.kind == U_VEC ? FXN(u_block)(k, trow, c0, n, ubuf, tbuf) : NULL;
        T bmax, bmin;
        if (FXN(block_range)(xv, n, &bmax, &bmin) || bmax == (T)INFINITY) { bad = 1; break; } /* NaN / +inf: NaN row */
        fx_ssize skip = -1; /* the first argmax, when this block holds it */
        if (bmax > m) {
            if (m > (T)-INFINITY) {
                /* rescale what was summed against the old max; the old argmax,
                 * left out so far, now counts exp(m - bmax) */
                R = (R + 1.0) * exp((double)m - (double)bmax);
                lin += usum * ((double)bmax - (double)m);
            } else if (usum > 0) {
                lin = INFINITY; /* a_c > 0 on a -inf logit */
            }
            m = bmax;
            skip = FXN(find_first)(xv, n, m);
            kmax = c0 + skip;
        }
        if (m == (T)-INFINITY) { /* everything so far is -inf: only weights count */
            usum += w.kind == U_VEC ? FXN(sum)(uv, n) : (w.kind == U_CONST ? (double)w.u0 * (double)n : 0.0);
            continue;
        }
        /* weighted (m - x) before the exp pass: in place, that pass overwrites x */
        if (w.kind == U_VEC) {
            lin += FXN(lin_sum)(xv, uv, n, m);
            usum += FXN(sum)(uv, n);
        } else if (w.kind == U_CONST) {
            lin += (double)w.u0 * FXN(lin_sum)(xv, NULL, n, m);
            usum += (double)w.u0 * (double)n;
        }
        /* the block read next: the rest of this row, or the next row's start */
        const char *pf = c0 + n < C ? xrow + (c0 + n) * xs : xnext;
        if (trow && k->t.sc > 0 && k->t.sc <= 8) {
            /* dense targets: the next block's are asked for too (the exp pass
             * prefetches only the logits), or u_block waits on memory for them */
            const char *tn = c0 + n < C ? trow + (c0 + n) * k->t.sc : tnext;
            for (fx_ssize b = 0; b < n * k->t.sc; b += 64) FX_PREFETCH_L2(tn + b);
        }
        const int near = bmin - m >= (T)FX_EXP_NEAR; /* every x - m in fx_exp_near's range */
        if (grow && single) {
            ework = FXN(gdst)(grow, gs, ebuf);
            R += FXN(exp_sum)(xv, n, m, skip, near, ework, pf);
        } else {
            R += FXN(exp_sum)(xv, n, m, skip, near, NULL, pf);
        }
    }

    const double A = k->dense ? usum : w.A;
    if (bad) {
        *loss = NAN;
        if (grow) FXN(fill)(grow, gs, C, (T)NAN);
        return 0;
    }
    if (m == (T)-INFINITY) { /* every logit -inf */
        *loss = A > 0 ? INFINITY : 0.0;
        if (grow) FXN(fill)(grow, gs, C, A > 0 ? (T)NAN : (T)0);
        return 0;
    }
    if (w.lab != 0) lin += w.lab * ((double)m - (double)xy);
    *loss = fx_softmax_row_loss(lin, A, R);
    if (!grow) return 0;

    /* gradient: gw * (A q_c - a_c), q_c = e_c / S, then exact values at y and k */
    const double gw = FXN(grad_weight)(k, o, i);
    const double S = 1.0 + R;
    const T alpha = (T)(gw * A / S);
    const T beta = (T)(gw * (double)w.u0);
    for (fx_ssize c0 = 0; c0 < C; c0 += FX_BLOCK) {
        const fx_ssize n = C - c0 < FX_BLOCK ? C - c0 : FX_BLOCK;
        T *gd = FXN(gdst)(grow + c0 * gs, gs, ebuf);
        const T *uv = w.kind == U_VEC ? FXN(u_block)(k, trow, c0, n, ubuf, tbuf) : NULL;
        if (single) { /* gd (== ework) holds exp(x - m) */
            if (uv) { const T gwt = (T)gw; for (fx_ssize c = 0; c < n; c++) gd[c] = alpha * gd[c] - gwt * uv[c]; }
            else for (fx_ssize c = 0; c < n; c++) gd[c] = alpha * gd[c] - beta;
        } else {
            const T *xv = FXN(load)(xrow + c0 * xs, xs, k->x.dtype, n, xbuf);
            if (uv) { const T gwt = (T)gw; for (fx_ssize c = 0; c < n; c++) gd[c] = alpha * FXM(fx_exp_neg)(xv[c] - m) - gwt * uv[c]; }
            else for (fx_ssize c = 0; c < n; c++) gd[c] = alpha * FXM(fx_exp_neg)(xv[c] - m) - beta;
        }
        FXN(gflush)(grow + c0 * gs, gs, n, gd);
    }
    if (!k->dense && y != kmax) {
        const double ey = (double)FXM(fx_exp_neg)(xy - m);
        FXN(store1)(grow + y * gs, gw * (A * ey / S - (w.lab + FXN(u_at)(k, trow, y))));
    }
    const double a_k = FXN(u_at)(k, trow, kmax) + (kmax == y && !k->dense ? w.lab : 0.0);
    FXN(store1)(grow + kmax * gs, gw * fx_softmax_grad_at_max(A, a_k, R, S));
    return 0;
}

/* Rows (o, i0 .. i0+n-1) with a contiguous inner axis: one lane per row, the class
 * loop outside, so every pass is a unit-stride vector loop across rows. */
static fx_ssize FXN(logits_cols)(const fx_call *k, fx_ssize o, fx_ssize i0, fx_ssize n)
{
    const fx_ssize C = k->n_c;
    const char *xo = k->x.data + o * k->x.so + i0 * k->x.si;
    const char *to = k->dense ? k->t.data + o * k->t.so + i0 * k->t.si : NULL;
    char *go = k->g.data ? k->g.data + o * k->g.so + i0 * k->g.si : NULL;
    double loss[FX_LANES];
    const double per = k->ls_per_c;

    T m[FX_LANES], msafe[FX_LANES], xy[FX_LANES], xbuf[FX_LANES], ubuf[FX_LANES], tbuf[FX_LANES];
    double R[FX_LANES], lin[FX_LANES], usum[FX_LANES], lab[FX_LANES], A[FX_LANES], gwv[FX_LANES];
    int32_t nan[FX_LANES], ties[FX_LANES];
    fx_ssize y[FX_LANES], kmax[FX_LANES];

    for (fx_ssize j = 0; j < n; j++) {
        m[j] = (T)-INFINITY; nan[j] = 0; kmax[j] = 0; R[j] = 0; lin[j] = 0; usum[j] = 0; ties[j] = 0;
        y[j] = 0; lab[j] = 0;
    }
    if (!k->dense) {
        for (fx_ssize j = 0; j < n; j++) {
            int64_t v = (int64_t)FXN(load1)(k->lab + o * k->lab_so + (i0 + j) * k->lab_si, k->lab_dtype);
            y[j] = v == k->ignore ? -1 : (fx_ssize)v;
            if (y[j] >= 0) {
                lab[j] = (1.0 - k->ls) * k->cw[y[j]];
                xy[j] = FXN(load1)(xo + y[j] * k->x.sc + j * k->x.si, k->x.dtype);
            }
        }
    }
    /* Columns that must be copied (a strided lane axis: row-major (N, C) with few
     * classes; or another dtype) are kept from pass 1 for pass 2 when the tile
     * fits: the strided copy was a third of a 4,096 x 10 call. */
    T tile[FX_TILE];
    const int keep_tile = C * n <= FX_TILE;
#define FX_COLUMN_BUF(c) (keep_tile ? tile + (c) * n : xbuf)
    /* pass 1: max, NaN, and the first argmax when a gradient is wanted */
    for (fx_ssize c = 0; c < C; c++) {
        const T *xv = FXN(load)(xo + c * k->x.sc, k->x.si, k->x.dtype, n, FX_COLUMN_BUF(c));
        if (go) {
            for (fx_ssize j = 0; j < n; j++) {
                T v = xv[j];
                int gt = v > m[j];
                m[j] = SEL(gt, v, m[j]);
                kmax[j] = gt ? c : kmax[j];
                nan[j] |= v != v;
            }
        } else {
            for (fx_ssize j = 0; j < n; j++) {
                T v = xv[j];
                m[j] = SEL(v > m[j], v, m[j]);
                nan[j] |= v != v;
            }
        }
    }
    for (fx_ssize j = 0; j < n; j++) {
        nan[j] |= m[j] == (T)INFINITY;
        msafe[j] = (m[j] == (T)-INFINITY || nan[j]) ? (T)0 : m[j];
    }
    /* pass 2: exp sums (stored into the gradient), weighted (m - x) */
    const int kind = k->dense ? U_VEC : (k->ls == 0 ? U_NONE : U_CONST);
    for (fx_ssize c = 0; c < C; c++) {
        const char *xc = xo + c * k->x.sc;
        const T *xv = keep_tile && FXN(load_copies)(xc, k->x.si, k->x.dtype)
                          ? tile + c * n
                          : FXN(load)(xc, k->x.si, k->x.dtype, n, xbuf);
        T *ev = go ? (T *)(go + c * k->g.sc) : NULL; /* contiguous: checked by the driver */
        const T *uv = NULL;
        T uc = (T)(per * k->cw[c]);
        if (kind == U_VEC) {
            const T *t = FXN(load)(to + c * k->t.sc, k->t.si, k->t.dtype, n, tbuf);
            const T wc = (T)k->cw[c], keep = (T)(1.0 - k->ls), add = (T)per;
            for (fx_ssize j = 0; j < n; j++) ubuf[j] = wc * (t[j] * keep + add);
            uv = ubuf;
        }
        /* prefetch this class's slice of the next tile: pass 1 of the next task
         * then reads from cache while this pass computes */
        if (k->x.si > 0 && k->x.si <= 8)
            for (fx_ssize off = 0; off < n * k->x.si; off += 64)
                FX_PREFETCH_L2(xo + c * k->x.sc + n * k->x.si + off);
        /* weighted (m - x) first: in place, ev is xv */
        if (kind == U_VEC) {
            for (fx_ssize j = 0; j < n; j++) {
                T wj = uv[j];
                lin[j] += (double)SEL(wj != 0, wj * (msafe[j] - xv[j]), (T)0);
                usum[j] += (double)wj;
            }
        } else if (kind == U_CONST && uc != 0) {
            for (fx_ssize j = 0; j < n; j++) lin[j] += (double)(uc * (msafe[j] - xv[j]));
        }
        if (ev) {
            for (fx_ssize j = 0; j < n; j++) {
                T d = xv[j] - msafe[j];
                T e = FXM(fx_exp_neg)(d);
                R[j] += (double)SEL(d == 0, (T)0, e);
                ties[j] += d == 0;
                ev[j] = e;
            }
        } else {
            for (fx_ssize j = 0; j < n; j++) {
                T d = xv[j] - msafe[j];
                T e = FXM(fx_exp_neg)(d);
                R[j] += (double)SEL(d == 0, (T)0, e);
                ties[j] += d == 0;
            }
        }
    }
#undef FX_COLUMN_BUF
    /* R = S - 1 and its log1p for every lane, in one vector loop (as a scalar call
     * per row, the log was a third of a 32 x 10 call); lanes of the special rows
     * below get values nobody reads */
    double l1p[FX_LANES];
    for (fx_ssize j = 0; j < n; j++) {
        R[j] += (double)(ties[j] - 1);
        l1p[j] = fx_log1p_unit_f64(R[j]);
    }
    /* per row: loss and the gradient's scale */
    for (fx_ssize j = 0; j < n; j++) {
        A[j] = k->dense ? usum[j] : lab[j] + per * k->cw_sum;
        gwv[j] = go ? FXN(grad_weight)(k, o, i0 + j) : 0.0;
        if (!k->dense && y[j] < 0) { loss[j] = 0.0; continue; }
        if (nan[j]) { loss[j] = NAN; continue; }
        if (m[j] == (T)-INFINITY) { loss[j] = A[j] > 0 ? INFINITY : 0.0; continue; }
        double l = lin[j];
        if (!k->dense && lab[j] != 0) l += lab[j] * ((double)m[j] - (double)xy[j]);
        loss[j] = l + A[j] * l1p[j]; /* fx_softmax_row_loss, its log1p taken above */
    }
    fx_store_losses(&k->loss[o * k->n_i + i0 - k->loss_r0], loss, n, k->stream_loss);
    if (!go) return -1;
    /* pass 3: gradient gw (A e / S - u); exact values at y and k; special rows */
    T alpha[FX_LANES], gwt[FX_LANES], beta[FX_LANES];
    for (fx_ssize j = 0; j < n; j++) {
        alpha[j] = (T)(gwv[j] * A[j] / (1.0 + R[j]));
        gwt[j] = (T)gwv[j];
    }
    for (fx_ssize c = 0; c < C; c++) {
        T *ev = (T *)(go + c * k->g.sc);
        if (kind == U_VEC) {
            const T *t = FXN(load)(to + c * k->t.sc, k->t.si, k->t.dtype, n, tbuf);
            const T wc = (T)k->cw[c], keep = (T)(1.0 - k->ls), add = (T)per;
            for (fx_ssize j = 0; j < n; j++) ev[j] = alpha[j] * ev[j] - gwt[j] * (wc * (t[j] * keep + add));
        } else {
            const T uc = kind == U_CONST ? (T)(per * k->cw[c]) : (T)0;
            for (fx_ssize j = 0; j < n; j++) beta[j] = gwt[j] * uc;
            for (fx_ssize j = 0; j < n; j++) ev[j] = alpha[j] * ev[j] - beta[j];
        }
    }
    for (fx_ssize j = 0; j < n; j++) {
        char *gj = go + j * k->g.si;
        const char *tj = to ? to + j * k->t.si : NULL;
        if (!k->dense && y[j] < 0) { FXN(fill)(gj, k->g.sc, C, (T)0); continue; }
        if (nan[j]) { FXN(fill)(gj, k->g.sc, C, (T)NAN); continue; }
        if (m[j] == (T)-INFINITY) { FXN(fill)(gj, k->g.sc, C, A[j] > 0 ? (T)NAN : (T)0); continue; }
        const double S = 1.0 + R[j];
        if (!k->dense && y[j] != kmax[j]) {
            const double ey = (double)FXM(fx_exp_neg)(xy[j] - m[j]);
            FXN(store1)(gj + y[j] * k->g.sc, gwv[j] * (A[j] * ey / S - (lab[j] + FXN(u_at)(k, tj, y[j]))));
        }
        const double a_k = FXN(u_at)(k, tj, kmax[j]) + (!k->dense && kmax[j] == y[j] ? lab[j] : 0.0);
        FXN(store1)(gj + kmax[j] * k->g.sc, gwv[j] * fx_softmax_grad_at_max(A[j], a_k, R[j], S));
    }
    return -1;
}

/* ------------------------------------------------------------------ from probabilities */

/* sum_c a_c (-log clip(p_c)) over a block, its gradient gw * (-a_c / p_c) (0 where
 * clipped), and whether a value lies outside [0, 1]. u == NULL: u_c = u0. NaN
 * propagates (no select on the weight: 0 * NaN is NaN, as it should be). */
static double FXN(probs_block)(const T *p, const T *u, T u0, fx_ssize n, T lo, T hi, int *bad,
                               T *g, T gw)
{
    double s;
    int o = 0;
    /* the terms a_c (-log p_c) into an L1 buffer first, then their float64 lane
     * sums: the same bits as summing each term as it is computed, but 0.85x the
     * time (AVX2; 0.69x AVX-512) for categorical from probabilities. (Float32
     * run sums, FX_RUNSUM, over the terms: GCC left that loop scalar.) */
    T terms[FX_BLOCK];
    if (u) for (fx_ssize c = 0; c < n; c++) terms[c] = u[c] * -FXM(fx_log)(FXM(fx_clip)(p[c], lo, hi));
    else for (fx_ssize c = 0; c < n; c++) terms[c] = u0 * -FXM(fx_log)(FXM(fx_clip)(p[c], lo, hi));
#define FX_PT(c) terms[c]
    FX_LANESUM(s, n, FX_PT, FX_NOPRE);
#undef FX_PT
    for (fx_ssize c = 0; c < n; c++) o |= (p[c] < 0) | (p[c] > 1); /* NaN is not out of range */
    *bad |= o;
    if (g) {
        for (fx_ssize c = 0; c < n; c++) {
            T v = p[c];
            T a = u ? u[c] : u0;
            g[c] = SEL((v < lo) | (v > hi), (T)0, gw * (-a / v));
        }
    }
    return s;
}

/* Sparse (label smoothing > 0) and categorical cross-entropy from probabilities.
 * (Sparse without smoothing is the gather-log in the Cython driver.) */
static int FXN(probs_row)(const fx_call *k, fx_ssize o, fx_ssize i, fx_ssize y)
{
    const fx_ssize C = k->n_c;
    const char *xrow = k->x.data + o * k->x.so + i * k->x.si;
    const char *trow = k->dense ? k->t.data + o * k->t.so + i * k->t.si : NULL;
    char *grow = k->g.data ? k->g.data + o * k->g.so + i * k->g.si : NULL;
    double *loss = &k->loss[o * k->n_i + i - k->loss_r0];
    const fx_ssize xs = k->x.sc, gs = k->g.sc;
    if (!k->dense && y < 0) {
        *loss = 0.0;
        if (grow) FXN(fill)(grow, gs, C, (T)0);
        return 0;
    }
    const FXN(weights) w = FXN(weights_for)(k, y);
    const T lo = (T)k->eps, hi = (T)1 - lo;
    const double gw = grow ? FXN(grad_weight)(k, o, i) : 0.0;
    T xbuf[FX_BLOCK], ubuf[FX_BLOCK], tbuf[FX_BLOCK], gbuf[FX_BLOCK];
    const T py = k->dense ? (T)0 : FXN(load1)(xrow + y * xs, k->x.dtype); /* before any write */
    double s = 0;
    int bad = 0;
    if (w.kind == U_NONE && grow) FXN(fill)(grow, gs, C, (T)0); /* only p_y counts */
    for (fx_ssize c0 = 0; c0 < C && w.kind != U_NONE; c0 += FX_BLOCK) {
        const fx_ssize n = C - c0 < FX_BLOCK ? C - c0 : FX_BLOCK;
        const T *pv = FXN(load)(xrow + c0 * xs, xs, k->x.dtype, n, xbuf);
        const T *uv = w.kind == U_VEC ? FXN(u_block)(k, trow, c0, n, ubuf, tbuf) : NULL;
        T *gd = grow ? FXN(gdst)(grow + c0 * gs, gs, gbuf) : NULL;
        s += FXN(probs_block)(pv, uv, w.u0, n, lo, hi, &bad, gd, (T)gw);
        if (gd) FXN(gflush)(grow + c0 * gs, gs, n, gd);
    }
    if (!k->dense) { /* the label's own term (1-ls) w_y */
        const T pc = FXM(fx_clip)(py, lo, hi);
        s += w.lab * -(double)FXM(fx_log)(pc);
        bad |= (py < 0) | (py > 1);
        if (grow) {
            const double a_y = w.lab + FXN(u_at)(k, trow, y);
            FXN(store1)(grow + y * gs, ((py < lo) | (py > hi)) ? 0.0 : gw * (-a_y / (double)py));
        }
    }
    *loss = s;
    return bad;
}

static fx_ssize FXN(probs_cols)(const fx_call *k, fx_ssize o, fx_ssize i0, fx_ssize n)
{
    const fx_ssize C = k->n_c;
    const char *xo = k->x.data + o * k->x.so + i0 * k->x.si;
    const char *to = k->dense ? k->t.data + o * k->t.so + i0 * k->t.si : NULL;
    char *go = k->g.data ? k->g.data + o * k->g.so + i0 * k->g.si : NULL;
    const double per = k->ls_per_c;
    const T lo = (T)k->eps, hi = (T)1 - lo;
    T xbuf[FX_LANES], tbuf[FX_LANES], py[FX_LANES], gwt[FX_LANES], a[FX_LANES];
    double s[FX_LANES], lab[FX_LANES], gwv[FX_LANES];
    int32_t out[FX_LANES];
    fx_ssize y[FX_LANES];
    for (fx_ssize j = 0; j < n; j++) {
        s[j] = 0; out[j] = 0; lab[j] = 0; y[j] = 0; py[j] = 0;
        gwv[j] = go ? FXN(grad_weight)(k, o, i0 + j) : 0.0;
        gwt[j] = (T)gwv[j];
    }
    if (!k->dense) {
        for (fx_ssize j = 0; j < n; j++) {
            int64_t v = (int64_t)FXN(load1)(k->lab + o * k->lab_so + (i0 + j) * k->lab_si, k->lab_dtype);
            y[j] = v == k->ignore ? -1 : (fx_ssize)v;
            if (y[j] >= 0) {
                lab[j] = (1.0 - k->ls) * k->cw[y[j]];
                py[j] = FXN(load1)(xo + y[j] * k->x.sc + j * k->x.si, k->x.dtype);
            } else {
                gwt[j] = 0; /* ignored rows: zero gradient, zero weight */
            }
        }
    }
    for (fx_ssize c = 0; c < C; c++) {
        const T *pv = FXN(load)(xo + c * k->x.sc, k->x.si, k->x.dtype, n, xbuf);
        if (k->dense) {
            const T *t = FXN(load)(to + c * k->t.sc, k->t.si, k->t.dtype, n, tbuf);
            const T wc = (T)k->cw[c], keep = (T)(1.0 - k->ls), add = (T)per;
            for (fx_ssize j = 0; j < n; j++) a[j] = wc * (t[j] * keep + add);
        } else {
            const T uc = (T)(per * k->cw[c]);
            for (fx_ssize j = 0; j < n; j++) a[j] = SEL(y[j] < 0, (T)0, uc);
        }
        for (fx_ssize j = 0; j < n; j++) {
            T v = pv[j];
            T pc = FXM(fx_clip)(v, lo, hi);
            s[j] += (double)(a[j] * -FXM(fx_log)(pc));
            out[j] |= (v < 0) | (v > 1);
        }
        if (go) {
            T *gv = (T *)(go + c * k->g.sc);
            for (fx_ssize j = 0; j < n; j++) {
                T v = pv[j];
                gv[j] = SEL((v < lo) | (v > hi), (T)0, gwt[j] * (-a[j] / v));
            }
        }
    }
    fx_ssize first_bad = -1;
    for (fx_ssize j = 0; j < n; j++) {
        if (!k->dense) {
            if (y[j] < 0) { /* ignored: loss 0, gradient 0, not range-checked */
                s[j] = 0;
                out[j] = 0;
                if (go) FXN(fill)(go + j * k->g.si, k->g.sc, C, (T)0);
            } else {
                const T pc = FXM(fx_clip)(py[j], lo, hi);
                s[j] += lab[j] * -(double)FXM(fx_log)(pc);
                out[j] |= (py[j] < 0) | (py[j] > 1);
                if (go) {
                    const double a_y = lab[j] + FXN(u_at)(k, NULL, y[j]);
                    FXN(store1)(go + j * k->g.si + y[j] * k->g.sc,
                                ((py[j] < lo) | (py[j] > hi)) ? 0.0 : gwv[j] * (-a_y / (double)py[j]));
                }
            }
        }
        if (out[j] && first_bad < 0) first_bad = i0 + j;
    }
    fx_store_losses(&k->loss[o * k->n_i + i0 - k->loss_r0], s, n, k->stream_loss);
    return first_bad;
}

/* ------------------------------------------------------------------ binary */

/* From probabilities: p = clip(x), 1 - p formed in T; gradient 0 where clipped. */
FX_INLINE T FXN(bce_probs_loss)(T v, T y, T w, T lo, T hi)
{
    T p = FXM(fx_clip)(v, lo, hi);
    return -(w * y * FXM(fx_log)(p) + ((T)1 - y) * FXM(fx_log)((T)1 - p));
}
FX_INLINE T FXN(bce_probs_grad)(T v, T y, T w, T lo, T hi)
{
    return SEL((v < lo) | (v > hi), (T)0, -w * y / v + ((T)1 - y) / ((T)1 - v));
}

/* e = exp(-|x|) and the softplus tails l = log1p(e) over a block, for the logits
 * loss and gradient, each in a loop of its own: one loop computing exp, log1p (a
 * division) and the loss is one long dependency chain per vector, and the
 * out-of-order window holds too few vectors to overlap them (10M elements: the
 * exps apart ~1.5x faster, the tails apart a few % more). Returns whether every
 * x is finite: the loss may then take its select-free _fin form. */
FX_INLINE int FXN(bce_tails)(const T *x, fx_ssize n, T *e, T *l)
{
    FX_K big = 0; /* the largest |x|, by its bits: one integer max an element */
    for (fx_ssize j = 0; j < n; j++) {
        const T a = FXM(fx_abs)(x[j]);
        e[j] = FXM(fx_exp_neg)(-a);
        const FX_K b = FXM(fx_key)(a); /* |x|'s bits: keys of x >= 0 are the bits */
        big = b > big ? b : big;
    }
    for (fx_ssize j = 0; j < n; j++) l[j] = FXM(fx_log1p_unit)(e[j]);
    return big < FXM(fx_key)((T)INFINITY); /* NaN's bits are above inf's */
}

/* One block of a binary row: element losses summed in float64 lanes, gradients
 * times gscale (grad_weight / C), out-of-range probabilities flagged. */
FX_INLINE double FXN(bce_block_w)(int probs, int unit, const T *x, const T *t, const T *pw, T pw0,
                                  fx_ssize n, T keep, T half_ls, T lo, T hi, int *bad, T *g, T gscale);

/* pw == NULL: every pos_weight is pw0 (the usual case), no per-element load;
 * unit: pw0 is 1 (the default), from logits: the short form of the loss */
FX_INLINE double FXN(bce_block)(int probs, const T *x, const T *t, const T *pw, T pw0, fx_ssize n,
                                T keep, T half_ls, T lo, T hi, int *bad, T *g, T gscale)
{
    if (pw) return FXN(bce_block_w)(probs, 0, x, t, pw, 0, n, keep, half_ls, lo, hi, bad, g, gscale);
    if (!probs && pw0 == (T)1)
        return FXN(bce_block_w)(0, 1, x, t, NULL, 1, n, keep, half_ls, lo, hi, bad, g, gscale);
    return FXN(bce_block_w)(probs, 0, x, t, NULL, pw0, n, keep, half_ls, lo, hi, bad, g, gscale);
}

FX_INLINE double FXN(bce_block_w)(int probs, int unit, const T *x, const T *t, const T *pw, T pw0,
                                  fx_ssize n, T keep, T half_ls, T lo, T hi, int *bad, T *g, T gscale)
{
    double s;
    T e[FX_BLOCK], l[FX_BLOCK];
    const int fin = probs ? 0 : FXN(bce_tails)(x, n, e, l);
#define FX_BL(c) (probs  ? FXN(bce_probs_loss)(x[c], t[c] * keep + half_ls, pw ? pw[c] : pw0, lo, hi) \
                  : unit ? FXM(fx_bce_logits_loss_unit)(x[c], l[c], t[c] * keep + half_ls)          \
                         : FXM(fx_bce_logits_loss)(x[c], l[c], t[c] * keep + half_ls, pw ? pw[c] : pw0))
#define FX_BL_FIN(c) (unit ? FXM(fx_bce_logits_loss_unit_fin)(x[c], l[c], t[c] * keep + half_ls) \
                           : FXM(fx_bce_logits_loss_fin)(x[c], l[c], t[c] * keep + half_ls, pw ? pw[c] : pw0))
    if (fin)
        FX_LANESUM(s, n, FX_BL_FIN, FX_NOPRE);
    else
        FX_LANESUM(s, n, FX_BL, FX_NOPRE);
#undef FX_BL
#undef FX_BL_FIN
    if (probs) {
        int o = 0;
        for (fx_ssize c = 0; c < n; c++) o |= (x[c] < 0) | (x[c] > 1);
        *bad |= o;
    }
    if (g)
        for (fx_ssize c = 0; c < n; c++) {
            T v = x[c], y = t[c] * keep + half_ls, w = pw ? pw[c] : pw0;
            g[c] = gscale * (probs ? FXN(bce_probs_grad)(v, y, w, lo, hi) : FXM(fx_bce_logits_grad_e)(v, e[c], y, w));
        }
    return s;
}

/* pos_weight values as T, or NULL when every one is k->pw0. */
static const T *FXN(pw_block)(const fx_call *k, const char *base, fx_ssize stride, fx_ssize n, T *buf)
{
    if (k->pw_const) return NULL;
    return FXN(load_f64)(base, stride, n, buf);
}

FX_INLINE int FXN(bce_row)(int probs, const fx_call *k, fx_ssize o, fx_ssize i)
{
    const fx_ssize C = k->n_c;
    const char *xrow = k->x.data + o * k->x.so + i * k->x.si;
    const char *trow = k->t.data + o * k->t.so + i * k->t.si;
    const char *pwrow = k->pw + i * k->pw_si;
    char *grow = k->g.data ? k->g.data + o * k->g.so + i * k->g.si : NULL;
    const T keep = (T)(1.0 - k->ls), half_ls = (T)(k->ls / 2), lo = (T)k->eps, hi = (T)1 - lo;
    const T gscale = grow ? (T)(FXN(grad_weight)(k, o, i) / (double)C) : (T)0;
    T xbuf[FX_BLOCK], tbuf[FX_BLOCK], pbuf[FX_BLOCK], gbuf[FX_BLOCK];
    double s = 0;
    int bad = 0;
    for (fx_ssize c0 = 0; c0 < C; c0 += FX_BLOCK) {
        const fx_ssize n = C - c0 < FX_BLOCK ? C - c0 : FX_BLOCK;
        const T *xv = FXN(load)(xrow + c0 * k->x.sc, k->x.sc, k->x.dtype, n, xbuf);
        const T *tv = FXN(load)(trow + c0 * k->t.sc, k->t.sc, k->t.dtype, n, tbuf);
        const T *pv = FXN(pw_block)(k, pwrow + c0 * k->pw_sc, k->pw_sc, n, pbuf);
        T *gd = grow ? FXN(gdst)(grow + c0 * k->g.sc, k->g.sc, gbuf) : NULL;
        s += FXN(bce_block)(probs, xv, tv, pv, (T)k->pw0, n, keep, half_ls, lo, hi, &bad, gd, gscale);
        if (gd) FXN(gflush)(grow + c0 * k->g.sc, k->g.sc, n, gd);
    }
    k->loss[o * k->n_i + i - k->loss_r0] = s / (double)C;
    return bad;
}

/* Columns: lanes are rows, so the sum over labels is a lane-wise add (no
 * reduction across lanes); for C = 1 (axis=None) it is a flat element loop. */
/* One class of a column task: lane-wise loss sums (pw == NULL: pw0 for all; unit:
 * pw0 is 1, from logits) and, with `grad`, the gradient times gsc in the same
 * pass: the logits loss and gradient share the exps e and tails l of bce_tails,
 * and x, t are read once. g may be x itself (in place): x[j] is read before g[j]
 * is written. */
FX_INLINE void FXN(bce_lanes)(int probs, int fin, int unit, int first, int grad, const T *x,
                              const T *e, const T *l, const T *t, const T *pw, T pw0, fx_ssize n,
                              T keep, T half_ls, T lo, T hi, double *s, int32_t *out, const T *gsc, T *g)
{
    for (fx_ssize j = 0; j < n; j++) {
        T v = x[j], y = t[j] * keep + half_ls, w = pw ? pw[j] : pw0;
        double loss = probs ? (double)FXN(bce_probs_loss)(v, y, w, lo, hi)
                    : unit  ? (double)(fin ? FXM(fx_bce_logits_loss_unit_fin)(v, l[j], y)
                                           : FXM(fx_bce_logits_loss_unit)(v, l[j], y))
                    : fin   ? (double)FXM(fx_bce_logits_loss_fin)(v, l[j], y, w)
                            : (double)FXM(fx_bce_logits_loss)(v, l[j], y, w);
        s[j] = first ? loss : s[j] + loss;
        if (probs) out[j] = (first ? 0 : out[j]) | (v < 0) | (v > 1);
        if (grad)
            g[j] = gsc[j] * (probs ? FXN(bce_probs_grad)(v, y, w, lo, hi)
                                   : FXM(fx_bce_logits_grad_e)(v, e[j], y, w));
    }
}

/* i0 + the first j with out[j] set, or -1 */
FX_INLINE fx_ssize FXN(first_out)(const int32_t *out, fx_ssize i0, fx_ssize n)
{
    for (fx_ssize j = 0; j < n; j++)
        if (out[j]) return i0 + j;
    return -1;
}

FX_INLINE fx_ssize FXN(bce_cols)(int probs, const fx_call *k, fx_ssize o, fx_ssize i0, fx_ssize n)
{
    const fx_ssize C = k->n_c;
    const char *xo = k->x.data + o * k->x.so + i0 * k->x.si;
    const char *to = k->t.data + o * k->t.so + i0 * k->t.si;
    char *go = k->g.data ? k->g.data + o * k->g.so + i0 * k->g.si : NULL;
    const T keep = (T)(1.0 - k->ls), half_ls = (T)(k->ls / 2), lo = (T)k->eps, hi = (T)1 - lo;
    const T pw0 = (T)k->pw0;
    const int unit = !probs && pw0 == (T)1; /* the short loss form, where pw is NULL */
    T xbuf[FX_LANES], tbuf[FX_LANES], pbuf[FX_LANES], gsc[FX_LANES], e[FX_LANES], l[FX_LANES];
    double sbuf[FX_LANES];
    int32_t out[FX_LANES];
    double *dst = &k->loss[o * k->n_i + i0 - k->loss_r0];
    /* one class (a flat binary loss): the lane sums are the losses, written in place,
     * or with leaf_sums kept in L1 and only the sums of their leaves written. (Summed
     * from this buffer, not as the losses are computed: a summing loop would be
     * vectorised otherwise, and GCC may then fuse the other product of a loss into
     * its multiply-add, which changes the losses' bits.) */
    double *s = C == 1 && !k->stream_loss && !k->leaf_sums ? dst : sbuf;
    if (go)
        for (fx_ssize j = 0; j < n; j++) gsc[j] = (T)(FXN(grad_weight)(k, o, i0 + j) / (double)C);
    for (fx_ssize c = 0; c < C; c++) {
        const T *x = FXN(load)(xo + c * k->x.sc, k->x.si, k->x.dtype, n, xbuf);
        const T *t = FXN(load)(to + c * k->t.sc, k->t.si, k->t.dtype, n, tbuf);
        const T *pw = FXN(pw_block)(k, k->pw + c * k->pw_sc + i0 * k->pw_si, k->pw_si, n, pbuf);
        T *g = go ? (T *)(go + c * k->g.sc) : NULL;
        const int fin = probs ? 0 : FXN(bce_tails)(x, n, e, l);
        /* specialisations: first class or not (assign, no zeroing pass), pos_weight
         * per element or one value (`pw ? pw[j] : pw0` in one loop becomes a masked load,
         * which from pw == NULL takes a microcode assist on every vector), gradient or
         * not, and with one pos_weight, x all finite or not and that weight 1 or not */
#define FX_BCE_LANES_(fin, unit, first, grad, pw_, pw0_)                                              \
        FXN(bce_lanes)(probs, fin, unit, first, grad, x, e, l, t, pw_, pw0_, n, keep, half_ls, lo, hi, s, out, gsc, g)
#define FX_BCE_LANES(first, grad)                                                                     \
        if (pw) FX_BCE_LANES_(0, 0, first, grad, pw, 0);                                              \
        else if (unit && fin) FX_BCE_LANES_(1, 1, first, grad, NULL, 1);                              \
        else if (unit) FX_BCE_LANES_(0, 1, first, grad, NULL, 1);                                     \
        else if (fin) FX_BCE_LANES_(1, 0, first, grad, NULL, pw0);                                    \
        else FX_BCE_LANES_(0, 0, first, grad, NULL, pw0);
        if (c == 0) {
            if (g) { FX_BCE_LANES(1, 1) } else { FX_BCE_LANES(1, 0) }
        } else {
            if (g) { FX_BCE_LANES(0, 1) } else { FX_BCE_LANES(0, 0) }
        }
#undef FX_BCE_LANES
#undef FX_BCE_LANES_
    }
    if (k->leaf_sums) {
        fx_leaf_sums(s, n, &k->loss[(o * k->n_i + i0 - k->loss_r0) / FX_LEAF]);
        return probs ? FXN(first_out)(out, i0, n) : -1;
    }
    if (C != 1) { /* row mean (vectorised; a divide per row in a scalar loop costs more than the loss) */
        const double Cd = (double)C;
        for (fx_ssize j = 0; j < n; j++) s[j] = s[j] / Cd;
    }
    if (s != dst) fx_store_losses(dst, s, n, k->stream_loss);
    return probs ? FXN(first_out)(out, i0, n) : -1;
}

static int FXN(bce_logits_row)(const fx_call *k, fx_ssize o, fx_ssize i, fx_ssize y)
{
    (void)y;
    return FXN(bce_row)(0, k, o, i);
}
static int FXN(bce_probs_row)(const fx_call *k, fx_ssize o, fx_ssize i, fx_ssize y)
{
    (void)y;
    return FXN(bce_row)(1, k, o, i);
}
static fx_ssize FXN(bce_logits_cols)(const fx_call *k, fx_ssize o, fx_ssize i0, fx_ssize n)
{
    return FXN(bce_cols)(0, k, o, i0, n);
}
static fx_ssize FXN(bce_probs_cols)(const fx_call *k, fx_ssize o, fx_ssize i0, fx_ssize n)
{
    return FXN(bce_cols)(1, k, o, i0, n);
}

/* ------------------------------------------------------------------ test hooks, read pass */

static void FXN(vexp)(const T *x, T *y, fx_ssize n, int kind)
{
    if (kind == 2)
        for (fx_ssize c = 0; c < n; c++) y[c] = FXM(fx_exp_near)(x[c]);
    else if (kind == 1)
        for (fx_ssize c = 0; c < n; c++) y[c] = FXM(fx_exp_neg)(x[c]);
    else
        for (fx_ssize c = 0; c < n; c++) y[c] = FXM(fx_exp)(x[c]);
}
static void FXN(vlog)(const T *x, T *y, fx_ssize n)
{
    for (fx_ssize c = 0; c < n; c++) y[c] = FXM(fx_log)(x[c]);
}

#undef T
#undef SEL
#undef FXN
#undef FXM
