/* Softmax cross-entropy from logits: sparse_from_logits and categorical_from_logits.
 * Row form (logits_row: class axis at any stride, blocks of FX_BLOCK classes with an
 * online max) and column form (logits_cols: inner axis contiguous, one lane per row).
 * A template for one compute type, included by fx_kernels_isa.h once per type with
 * FX_T (float/double), FX_S (f32/f64), FX_K (int32_t/int64_t: ordering keys) and
 * FX_CODE (FX_F32/FX_F64) defined; T, FXN(name) (this type's functions: name_f32)
 * and FXM(name) (fx_math.h helpers) follow from them. */

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

/* block_range over n contiguous bfloat16 values, from their bits: the same max,
 * min and NaN answer as on the widened values, at twice the lanes a vector. */
static int FXN(bf16_range)(const uint16_t *h, fx_ssize n, T *mx, T *mn)
{
    int16_t hi = INT16_MIN, lo = INT16_MAX;
    for (fx_ssize c = 0; c < n; c++) {
        const int16_t key = fx_key_bf16(h[c]);
        hi = key > hi ? key : hi;
        lo = key < lo ? key : lo;
    }
    *mx = (T)fx_unkey_bf16(hi);
    *mn = (T)fx_unkey_bf16(lo);
    return *mx != *mx || *mn != *mn;
}

#ifdef FX_AVX512_MASKS
/* First index holding v, or -1. AVX-512: a compare into a mask register tests a
 * vector (16 float32, 8 float64) and the mask's lowest set bit is the index: per
 * vector one compare and one test, where the portable version takes an
 * any-equal and a first-index reduction. */
FX_INLINE fx_ssize FXN(find_first)(const T *x, fx_ssize n, T v)
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
FX_INLINE fx_ssize FXN(find_first)(const T *x, fx_ssize n, T v)
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


#define FX_IOTA8_(b) b, b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7
#define FX_IOTA32_(b) FX_IOTA8_(b), FX_IOTA8_(b + 8), FX_IOTA8_(b + 16), FX_IOTA8_(b + 24)
/* 0, 1, ..., FX_RUN - 1 (the index of each element of a run), for masks */
static const T FXN(run_iota)[FX_RUN] = {
    FX_IOTA32_(0), FX_IOTA32_(32), FX_IOTA32_(64), FX_IOTA32_(96)
};
#undef FX_IOTA8_
#undef FX_IOTA32_

/* exp_sum (below) for n <= FX_RUN: short rows and a long row's last block. A
 * function of its own: it keeps a small frame, and inlined into the short-row
 * kernel GCC left its loops scalar. */
static FX_NOINLINE double FXN(exp_sum_short)(const T *x, fx_ssize n, T m, fx_ssize skip, int near, T *e)
{
    double s1 = 0;
    /* short rows: a padded copy keeps every exp in vector steps instead of
     * scalar tails (the padding is m, in range for fx_exp_near); the padding
     * and the argmax are masked out of the sum inside those vector steps
     * (index compares against run_iota: no scalar stores for a vector load to
     * wait on), and the exps add in T lanes as one run (FX_RUNSUM1). With e,
     * the exps go through a buffer first; either way the same exps add in the
     * same order, so a loss has the same bits with or without a gradient. */
    T xb[FX_RUN + FX_RUNW];
    const fx_ssize np = (n + FX_RUNW - 1) / FX_RUNW * FX_RUNW;
    const T tn = (T)n;
    for (fx_ssize c = 0; c < np; c++) xb[c] = c < n ? x[c] : m;
#define FX_LIVE(c0, j) (FXN(run_iota)[(c0) + (j)] < tn)
#define FX_EB(c0, j) SEL(FX_LIVE(c0, j), FX_EXPFN(FX_SRC(c0, j)), (T)0)
#define FX_EB_M(c0, j) SEL(FX_LIVE(c0, j) & (FXN(run_iota)[(c0) + (j)] != (T)skr), FX_EXPFN(FX_SRC(c0, j)), (T)0)
#define FX_SHORT_SUM                                                          \
    if (e) {                                                                  \
        T eb[FX_RUN + FX_RUNW];                                               \
        for (fx_ssize c = 0; c < np; c++) eb[c] = FX_EXPFN(xb[c] - m);        \
        FX_RUNSUM1(s1, np, FX_EB_E, FX_EB_EM, skip);                          \
        for (fx_ssize c = 0; c < n; c++) e[c] = eb[c];                        \
        if (skip >= 0) e[skip] = (T)1;                                        \
    } else {                                                                  \
        FX_RUNSUM1(s1, np, FX_EB, FX_EB_M, skip);                             \
    }
#define FX_SRC(c0, j) (xb[(c0) + (j)] - m)
#define FX_EB_E(c0, j) SEL(FX_LIVE(c0, j), eb[(c0) + (j)], (T)0)
#define FX_EB_EM(c0, j) SEL(FX_LIVE(c0, j) & (FXN(run_iota)[(c0) + (j)] != (T)skr), eb[(c0) + (j)], (T)0)
    if (near) {
#define FX_EXPFN FXM(fx_exp_near)
        FX_SHORT_SUM
#undef FX_EXPFN
    } else {
#define FX_EXPFN FXM(fx_exp_neg)
        FX_SHORT_SUM
#undef FX_EXPFN
    }
#undef FX_SHORT_SUM
#undef FX_SRC
#undef FX_EB_E
#undef FX_EB_EM
#undef FX_EB
#undef FX_EB_M
#undef FX_LIVE
    return s1;
}

/* sum_{c in [0, n), c != skip} exp(x_c - m) in float64 (skip: the row's first
 * argmax when it lies in this block, else -1). Leaving the argmax's exp(0) = 1 out
 * of the sum keeps R = S - 1 exact when one class dominates; other classes equal
 * to the max count 1 each, as they should. With e non-NULL also stores every
 * exp(x_c - m) (the gradient pass reuses them). near: every x_c - m lies in
 * fx_exp_near's range (no -inf), so the cheaper exp serves. The block holds no
 * NaN (block_range). pf: where the block after the next one starts
 * (asked for while this one computes). */
static double FXN(exp_sum)(const T *x, fx_ssize n, T m, fx_ssize skip, int near, T *e, const char *pf)
{
    double s1 = 0;
    if (n <= FX_RUN) return FXN(exp_sum_short)(x, n, m, skip, near, e);
    /* the next block into cache while this one computes, a run's worth (FX_RUN
     * elements) per run: spread over the pass, the prefetches overlap the exps
     * and never queue up on the outstanding-miss limit, as all of a row's lines
     * asked for up front do. Prefetches stay out of the vector loop (they would
     * stop its vectorisation). */
#define FX_PF_RUN(c0)                                                              \
    for (int b_ = 0; b_ < FX_RUN * (int)sizeof(T); b_ += 64)                       \
        FX_PREFETCH_L2(pf + (c0) * (fx_ssize)sizeof(T) + b_)
    /* one sweep: the argmax is left out by the masked run (FX_RUNSUM); its stored
     * exp is exp(0) = 1 either way */
#define FX_EXP(c0, j) FX_EXPSUM(x[(c0) + (j)] - m) /* kept nowhere: the product form */
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
#define FX_EXPSUM FXM(fx_exp_near_sum)
        FX_EXP_RUNS
#undef FX_EXPFN
#undef FX_EXPSUM
    } else {
#define FX_EXPFN FXM(fx_exp_neg)
#define FX_EXPSUM FXM(fx_exp_neg)
        FX_EXP_RUNS
#undef FX_EXPFN
#undef FX_EXPSUM
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

/* ------------------------------------------------------------------ bfloat16 rows */

/* Unaligned 32-bit words of bfloat16 pairs (a 2-aligned row). */
#ifndef FX_U32_PAIRS
#define FX_U32_PAIRS
typedef uint32_t fx_u32_pairs __attribute__((aligned(2), may_alias));
#endif

/* The first index whose bfloat16 value equals v (as floats: -0 == +0), or -1
 * (n < 2^31): a min-reduction over the whole block, which vectorises (a loop with
 * an early exit stays scalar, and costs more than the block's exps). */
static fx_ssize FXN(bf16_find_first)(const uint16_t *h, fx_ssize n, T v)
{
    const int32_t none = (int32_t)n;
    int32_t best = none;
    for (int32_t c = 0; c < none; c++) {
        const int32_t hit = (T)fx_bf16_to_f32(h[c]) == v ? c : none;
        best = hit < best ? hit : best;
    }
    return best < none ? (fx_ssize)best : -1;
}

/* exp_sum (loss only) of n bfloat16 logits read straight from their bits, 2-aligned:
 * each 32-bit word holds two, w << 16 the first and w & 0xffff0000 the second, as
 * float32 -- one integer operation a value, where widening them into a buffer takes
 * two (the exp pass is bound by the vector ports). Firsts and seconds are summed in
 * passes of their own (the words are in L1 for the second), each as exp_sum sums:
 * float32 runs into float64 lanes, the argmax's exp(0) left out. */
static double FXN(bf16_exp_sum)(const uint16_t *h, fx_ssize n, T m, fx_ssize skip, int near, const char *pf)
{
    const fx_u32_pairs *w = (const fx_u32_pairs *)h;
    const fx_ssize nw = n / 2;
    const fx_ssize skip_lo = skip >= 0 && skip % 2 == 0 && skip < 2 * nw ? skip / 2 : -1;
    const fx_ssize skip_hi = skip >= 0 && skip % 2 == 1 ? skip / 2 : -1;
    double lo, hi, tail = 0;
#define FX_PF_RUN(c0)                                                              \
    for (int b_ = 0; b_ < FX_RUN * 4; b_ += 64)                                    \
        FX_PREFETCH_L2(pf + (c0) * 4 + b_)
#define FX_LO(c0, j) FX_EXPFN((T)fx_u2f(w[(c0) + (j)] << 16) - m)
#define FX_HI(c0, j) FX_EXPFN((T)fx_u2f(w[(c0) + (j)] & 0xffff0000u) - m)
#define FX_LO_M(c0, j) SEL(FXN(run_iota)[j] == (T)skr, (T)0, FX_LO(c0, j))
#define FX_HI_M(c0, j) SEL(FXN(run_iota)[j] == (T)skr, (T)0, FX_HI(c0, j))
#define FX_BF16_RUNS                                                 \
    FX_RUNSUM(lo, nw, FX_LO, FX_LO_M, skip_lo, FX_PF_RUN);           \
    FX_RUNSUM(hi, nw, FX_HI, FX_HI_M, skip_hi, FX_NOPRE);            \
    if (n % 2 && n - 1 != skip) tail = (double)FX_EXPFN((T)fx_bf16_to_f32(h[n - 1]) - m);
    if (near) {
#define FX_EXPFN FXM(fx_exp_near_sum)
        FX_BF16_RUNS
#undef FX_EXPFN
    } else {
#define FX_EXPFN FXM(fx_exp_neg)
        FX_BF16_RUNS
#undef FX_EXPFN
    }
#undef FX_BF16_RUNS
#undef FX_LO
#undef FX_HI
#undef FX_LO_M
#undef FX_HI_M
#undef FX_PF_RUN
    return (lo + hi) + tail;
}

/* sum_{u_c != 0} u_c (m - x_c): a zero weight contributes exactly 0 even where
 * x_c = -inf. u == NULL: every u_c = 1. */
FX_INLINE double FXN(lin_sum)(const T *x, const T *u, fx_ssize n, T m)
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

/* sum_{u_c != 0} u_c * inf: the IEEE sum of the weighted (m - x_c) of classes whose
 * logit is -inf, m finite (+inf, -inf, NaN or 0). */
FX_INLINE double FXN(inf_sum)(const T *u, fx_ssize n)
{
    double s;
#define FX_UI(c) SEL(u[c] != 0, u[c] * (T)INFINITY, (T)0)
    FX_LANESUM(s, n, FX_UI, FX_NOPRE);
#undef FX_UI
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

/* ------------------------------------------------------------------ extras */

/* The X kernels (logits_x_row, logits_x_cols) are the softmax kernels below with
 * their X flag set: sparse_from_logits with z_loss, softcap, lse_out or rank_out
 * (KERNELS.md; the NumPy backend states each formula). X is a constant of each
 * instantiation, so the plain kernels (X = 0) carry none of this code, and the
 * options are looked up once a row, never in a class loop:
 *  - softcap: every logit is replaced by z = cap tanh(x / cap) as its block is read
 *    (loss, max, lse and rank all see z); the gradient is multiplied by
 *    1 - tanh(x / cap)^2, kept per element where the exps are kept;
 *  - z_loss: z lse^2 joins a counted row's loss, and 2 z lse the softmax term's
 *    weight A in the gradient (at the argmax too: A - a_k gains it);
 *  - lse: m + log1p(R) of every row, ignored ones included (NaN: NaN; all -inf:
 *    -inf); rank: the classes above the label (larger, or equal at a lower index;
 *    C in a row holding a NaN; -1 when ignored). */

/* z = cap tanh(x / cap) over a block (z may be x) and, with d, the derivative
 * factors 1 - tanh(x / cap)^2 as (1 - t)(1 + t): 0 where tanh rounds to +-1. */
static void FXN(cap_block)(const T *x, T *z, T *d, fx_ssize n, T cap)
{
    const T rcap = (T)1 / cap; /* x / cap by a product (a vector division per element
                                * cost as much as the tanh): within an ulp of it */
    if (d) {
        for (fx_ssize c = 0; c < n; c++) {
            const T t = FXM(fx_tanh)(x[c] * rcap);
            z[c] = cap * t;
            d[c] = ((T)1 - t) * ((T)1 + t);
        }
    } else {
        for (fx_ssize c = 0; c < n; c++) z[c] = cap * FXM(fx_tanh)(x[c] * rcap);
    }
}

/* One capped logit, through cap_block itself: the same bits as in its block. */
static T FXN(cap1)(T x, T cap, T *d)
{
    T z, dd;
    FXN(cap_block)(&x, &z, &dd, 1, cap);
    if (d) *d = dd;
    return z;
}

/* How many of x[0 .. n) rank above the label's logit v, the label at index ly of
 * this block (outside [0, n): in another block): larger, or equal at a lower index,
 * as np.argmax breaks ties. The label's own entry is never counted. */
static fx_ssize FXN(rank_block)(const T *x, fx_ssize n, T v, fx_ssize ly)
{
    const fx_ssize before = ly < 0 ? 0 : (ly > n ? n : ly);
    const fx_ssize after = before + (ly >= 0 && ly < n);
    FX_K cnt = 0;
    for (fx_ssize c = 0; c < before; c++) cnt += x[c] >= v;
    for (fx_ssize c = after; c < n; c++) cnt += x[c] > v;
    return (fx_ssize)cnt;
}

/* A logits block as the X kernels see it: capped into buf (with the derivative
 * factors into d when d is not NULL) under softcap, else as load() gives it. */
static const T *FXN(x_block)(const fx_call *k, const char *base, fx_ssize stride, fx_ssize n, T *buf, T *d)
{
    const T *xv = FXN(load)(base, stride, k->x.dtype, n, buf);
    if (k->softcap == 0) return xv;
    FXN(cap_block)(xv, buf, d, n, (T)k->softcap);
    return buf;
}

/* The derivative factor 1 - tanh(x / cap)^2 of the logit at p. */
static T FXN(cap_factor)(const fx_call *k, const char *p)
{
    T d;
    FXN(cap1)(FXN(load1)(p, k->x.dtype), (T)k->softcap, &d);
    return d;
}

/* The rank of a row the softmax pass gave up on (a NaN or +inf logit): C when a
 * NaN is anywhere in it, else counted over every block. x is still unwritten. */
static fx_ssize FXN(rank_row)(const fx_call *k, const char *xrow, T v, fx_ssize y, T *buf)
{
    const fx_ssize C = k->n_c;
    fx_ssize above = 0;
    for (fx_ssize c0 = 0; c0 < C; c0 += FX_BLOCK) {
        const fx_ssize n = C - c0 < FX_BLOCK ? C - c0 : FX_BLOCK;
        const T *xv = FXN(x_block)(k, xrow + c0 * k->x.sc, k->x.sc, n, buf, NULL);
        int nan = 0;
        for (fx_ssize c = 0; c < n; c++) nan |= xv[c] != xv[c];
        if (nan) return C;
        above += FXN(rank_block)(xv, n, v, y - c0);
    }
    return above;
}

/* The logsumexp of a row alone (an ignored row whose lse is asked for), as the
 * softmax pass forms it: NaN with a NaN or +inf logit, -inf when all are -inf. */
static double FXN(row_lse)(const fx_call *k, const char *xrow, T *buf)
{
    const fx_ssize C = k->n_c;
    T m = (T)-INFINITY;
    double R = 0;
    for (fx_ssize c0 = 0; c0 < C; c0 += FX_BLOCK) {
        const fx_ssize n = C - c0 < FX_BLOCK ? C - c0 : FX_BLOCK;
        const T *xv = FXN(x_block)(k, xrow + c0 * k->x.sc, k->x.sc, n, buf, NULL);
        T bmax, bmin;
        if (FXN(block_range)(xv, n, &bmax, &bmin) || bmax == (T)INFINITY) return NAN;
        fx_ssize skip = -1;
        if (bmax > m) {
            if (m > (T)-INFINITY) R = (R + 1.0) * exp((double)m - (double)bmax);
            m = bmax;
            skip = FXN(find_first)(xv, n, m);
        }
        if (m == (T)-INFINITY) continue;
        R += FXN(exp_sum)(xv, n, m, skip, bmin - m >= (T)FX_EXP_NEAR, NULL, xrow);
    }
    return m == (T)-INFINITY ? -INFINITY : (double)m + fx_log1p_f64(R);
}

/* ------------------------------------------------------------------ softmax rows */

/* A row's loss lin + A log1p(R), left to the caller (on = 1; special rows -- ignored,
 * NaN, all -inf -- write their loss themselves and leave on = 0). */
#ifndef FX_DEFERRED
#define FX_DEFERRED
typedef struct { double lin, A, R; int on; } fx_deferred;
#endif

/* Sparse or categorical cross-entropy from logits, one row, one sweep per block:
 * per block a max pass and an exp pass over data that is in L1; blocks update a
 * running max (online softmax), so a 128k-class row is read from memory once.
 * X: the extras above (sparse only). */
FX_INLINE int FXN(logits_row_t)(const fx_call *k, fx_ssize o, fx_ssize i, fx_ssize y, const int X, const int B,
                                const int G, fx_deferred *later)
{
    const int gdt = G ? FX_BF16 : FX_CODE; /* G: a bfloat16 gradient (float32 kernels) */
    const fx_ssize C = k->n_c;
    const int dense = X ? 0 : k->dense;
    const char *xrow = k->x.data + o * k->x.so + i * k->x.si;
    const char *trow = dense ? k->t.data + o * k->t.so + i * k->t.si : NULL;
    char *grow = k->g.data ? k->g.data + o * k->g.so + i * k->g.si : NULL;
    double *loss = &k->loss[o * k->n_i + i - k->loss_r0];
    const fx_ssize xs = k->x.sc, gs = k->g.sc;
    /* where the next row starts (its data is read next) */
    const char *xnext = fx_next_row(xrow, i, k->n_i, k->x.si, k->x.so);
    const char *tnext = trow ? fx_next_row(trow, i, k->n_i, k->t.si, k->t.so) : NULL;
    /* X: softcap, and where the row's lse and rank go (NULL: not asked for) */
    const int capped = X && k->softcap != 0;
    char *lse_at = X && k->lse ? k->lse + o * k->lse_so + i * k->lse_si : NULL;
    char *rank_at = X && k->rank ? k->rank + o * k->rank_so + i * k->rank_si : NULL;
    T xbuf[FX_BLOCK], ubuf[FX_BLOCK], tbuf[FX_BLOCK], ebuf[FX_BLOCK], dbuf[FX_BLOCK];

    if (!dense && y < 0) { /* ignored row */
        if (lse_at) fx_put_f64(lse_at, FXN(row_lse)(k, xrow, xbuf)); /* before an in-place gradient */
        if (rank_at) fx_put_i64(rank_at, -1);
        *loss = 0.0;
        if (grow) FXN(fill)(grow, gs, gdt, C, (T)0);
        return 0;
    }
    const FXN(weights) w = FXN(weights_for)(k, y);
    /* B without softcap: the exp sums read the bits (bf16_exp_sum), with or without
     * a gradient (a loss has the same bits either way); the gradient pass then takes
     * the exps again, as for long rows */
    const int bits = B && !capped;
    const int single = C <= FX_BLOCK && !bits; /* one block: keep exp(x - m) for the gradient */
    const int need_xv = !bits || w.kind != U_NONE || rank_at; /* the logits as T */
    T *ework = NULL;

    /* the label's own logit, read before anything is written (in-place gradient) */
    T xy = dense ? (T)0 : FXN(load1)(xrow + y * xs, k->x.dtype);
    T dy = 1, dk = 1; /* X, softcap: the derivative factors at the label and the argmax */
    if (capped) xy = FXN(cap1)(xy, (T)k->softcap, &dy);
    fx_ssize above = 0; /* X, rank: classes above the label so far */

    T m = (T)-INFINITY;
    double R = 0, lin = 0, usum = 0;
    fx_ssize kmax = -1;
    int bad = 0;
    for (fx_ssize c0 = 0; c0 < C && !bad; c0 += FX_BLOCK) {
        const fx_ssize n = C - c0 < FX_BLOCK ? C - c0 : FX_BLOCK;
        const uint16_t *hv = (const uint16_t *)(xrow + c0 * xs); /* B: the bits */
        const T *xv = !need_xv ? NULL
                    : X        ? FXN(x_block)(k, xrow + c0 * xs, xs, n, xbuf, capped && grow && single ? dbuf : NULL)
                               : FXN(load)(xrow + c0 * xs, xs, k->x.dtype, n, xbuf);
        const T *uv = w.kind == U_VEC ? FXN(u_block)(k, trow, c0, n, ubuf, tbuf) : NULL;
        T bmax, bmin;
        if ((bits ? FXN(bf16_range)(hv, n, &bmax, &bmin) : FXN(block_range)(xv, n, &bmax, &bmin))
            || bmax == (T)INFINITY) { bad = 1; break; } /* NaN / +inf: NaN row */
        if (rank_at) above += FXN(rank_block)(xv, n, xy, y - c0);
        fx_ssize skip = -1; /* the first argmax, when this block holds it */
        if (bmax > m) {
            if (m > (T)-INFINITY) {
                /* rescale what was summed against the old max; the old argmax,
                 * left out so far, now counts exp(m - bmax) */
                R = (R + 1.0) * exp((double)m - (double)bmax);
                lin += usum * ((double)bmax - (double)m);
            }
            m = bmax;
            skip = bits ? FXN(bf16_find_first)(hv, n, m) : FXN(find_first)(xv, n, m);
            kmax = c0 + skip;
            if (capped && grow) /* x at kmax is unwritten yet (in place, the exps follow) */
                dk = single ? dbuf[skip] : FXN(cap_factor)(k, xrow + kmax * xs);
        }
        if (m == (T)-INFINITY) { /* everything so far is -inf: a_c (m - x_c) is a_c * inf */
            usum += w.kind == U_VEC ? FXN(sum)(uv, n) : (w.kind == U_CONST ? (double)w.u0 * (double)n : 0.0);
            if (w.kind == U_VEC) lin += FXN(inf_sum)(uv, n);
            else if (w.kind == U_CONST && w.u0 != 0) lin += (double)w.u0 * INFINITY;
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
        /* the block after the next one in reading order (in this row, or the next
         * row's): with only the next one asked for, its range pass still waited on
         * memory on some hosts (KERNELS.md, "Memory access") */
        const fx_ssize left = c0 + n < C ? C - c0 - n : C; /* after this block, in this row or the next */
        const fx_ssize ahead = c0 + n + (left < FX_BLOCK ? left : FX_BLOCK);
        const char *pf = ahead < C ? xrow + ahead * xs : xnext + (ahead - C) * xs;
        if (trow && k->t.sc > 0 && k->t.sc <= 8) {
            /* dense targets: the next block's are asked for too (the exp pass
             * prefetches only the logits), or u_block waits on memory for them */
            const char *tn = c0 + n < C ? trow + (c0 + n) * k->t.sc : tnext;
            for (fx_ssize b = 0; b < n * k->t.sc; b += 64) FX_PREFETCH_L2(tn + b);
        }
        const int near = bmin - m >= (T)FX_EXP_NEAR; /* every x - m in fx_exp_near's range */
        if (grow && single) {
            ework = FXN(gdst)(grow, gs, gdt, ebuf);
            R += FXN(exp_sum)(xv, n, m, skip, near, ework, pf);
        } else if (bits) {
            R += FXN(bf16_exp_sum)(hv, n, m, skip, near, pf);
        } else {
            R += FXN(exp_sum)(xv, n, m, skip, near, NULL, pf);
        }
    }

    const double A = dense ? usum : w.A;
    if (bad) {
        if (lse_at) fx_put_f64(lse_at, NAN);
        if (rank_at) fx_put_i64(rank_at, FXN(rank_row)(k, xrow, xy, y, xbuf)); /* before the NaN fill */
        *loss = NAN;
        if (grow) FXN(fill)(grow, gs, gdt, C, (T)NAN);
        return 0;
    }
    double lse = 0, zx = 0; /* X: the row's logsumexp; z_loss's term 2 z lse of A */
    if (X) {
        lse = m == (T)-INFINITY ? -INFINITY : (double)m + fx_log1p_f64(R);
        if (lse_at) fx_put_f64(lse_at, lse);
        if (rank_at) fx_put_i64(rank_at, above);
        if (k->z_loss != 0) zx = 2.0 * k->z_loss * lse;
    }
    const double Az = X ? A + zx : A; /* the softmax term's weight, with z_loss's part */
    if (m == (T)-INFINITY) { /* every logit -inf: A * inf (0 when A == 0), NaN gradient */
        *loss = A == 0 ? 0.0 : A * INFINITY;
        if (X && k->z_loss != 0) *loss += k->z_loss * lse * lse;
        if (grow) FXN(fill)(grow, gs, gdt, C, Az != 0 ? (T)NAN : (T)0);
        return 0;
    }
    if (w.lab != 0) lin += w.lab * ((double)m - (double)xy);
    if (later) { /* short rows: the caller takes the log1p for a group of rows at once */
        later->lin = lin; later->A = A; later->R = R; later->on = 1;
    } else {
        *loss = fx_softmax_row_loss(lin, A, R);
    }
    if (X && k->z_loss != 0) *loss += k->z_loss * lse * lse;
    if (!grow) return 0;

    /* gradient: gw * (A q_c - a_c), q_c = e_c / S, then exact values at y and k */
    const double gw = FXN(grad_weight)(k, o, i);
    const double S = 1.0 + R;
    const T alpha = (T)(gw * Az / S);
    const T beta = (T)(gw * (double)w.u0);
    for (fx_ssize c0 = 0; c0 < C; c0 += FX_BLOCK) {
        const fx_ssize n = C - c0 < FX_BLOCK ? C - c0 : FX_BLOCK;
        T *gd = FXN(gdst)(grow + c0 * gs, gs, gdt, ebuf);
        const T *uv = w.kind == U_VEC ? FXN(u_block)(k, trow, c0, n, ubuf, tbuf) : NULL;
        if (single) { /* gd (== ework) holds exp(x - m) */
            if (uv) { const T gwt = (T)gw; for (fx_ssize c = 0; c < n; c++) gd[c] = alpha * gd[c] - gwt * uv[c]; }
            else for (fx_ssize c = 0; c < n; c++) gd[c] = alpha * gd[c] - beta;
        } else {
            const T *xv = X ? FXN(x_block)(k, xrow + c0 * xs, xs, n, xbuf, capped ? dbuf : NULL)
                            : FXN(load)(xrow + c0 * xs, xs, k->x.dtype, n, xbuf);
            if (uv) { const T gwt = (T)gw; for (fx_ssize c = 0; c < n; c++) gd[c] = alpha * FXM(fx_exp_neg)(xv[c] - m) - gwt * uv[c]; }
            else for (fx_ssize c = 0; c < n; c++) gd[c] = alpha * FXM(fx_exp_neg)(xv[c] - m) - beta;
        }
        if (capped) for (fx_ssize c = 0; c < n; c++) gd[c] *= dbuf[c];
        FXN(gflush)(grow + c0 * gs, gs, gdt, n, gd);
    }
    if (!dense && y != kmax) {
        const double ey = (double)FXM(fx_exp_neg)(xy - m);
        const double g_y = gw * (Az * ey / S - (w.lab + FXN(u_at)(k, trow, y)));
        FXN(store1)(grow + y * gs, gdt, capped ? g_y * (double)dy : g_y);
    }
    const double a_k = FXN(u_at)(k, trow, kmax) + (kmax == y && !dense ? w.lab : 0.0);
    if (X) /* A (q_k - 1) + (A - a_k), A gaining 2 z lse in both */
        FXN(store1)(grow + kmax * gs, gdt, gw * (Az * (-R / S) + ((A - a_k) + zx)) * (double)dk);
    else
        FXN(store1)(grow + kmax * gs, gdt, gw * fx_softmax_grad_at_max(A, a_k, R, S));
    return 0;
}

/* The instantiations: X (the optional terms), B (bfloat16 rows read as bits), G
 * (a bfloat16 gradient), each a constant. G = 1 lives in a function of its own,
 * entered once a row, so that the float32 gradient's code (G = 0) is compiled
 * without it (benchmarks/test_bench.py's sparse-logits gradient workloads time it). */
#define FX_ROW_KERNEL(name, X, B)                                                          \
    static FX_NOINLINE int FXN(name##_g)(const fx_call *k, fx_ssize o, fx_ssize i, fx_ssize y) \
    {                                                                                      \
        return FXN(logits_row_t)(k, o, i, y, X, B, 1, NULL);                                     \
    }                                                                                      \
    static FX_MAYBE_UNUSED int FXN(name)(const fx_call *k, fx_ssize o, fx_ssize i, fx_ssize y) \
    {                                                                                      \
        if (FX_G_BF16(k->g.dtype)) return FXN(name##_g)(k, o, i, y);                       \
        return FXN(logits_row_t)(k, o, i, y, X, B, 0, NULL);                                     \
    }
FX_ROW_KERNEL(logits_row, 0, 0)
FX_ROW_KERNEL(logits_x_row, 1, 0)
/* B: bfloat16 logits at a class stride of 2 bytes, every row 2-aligned (the driver
 * checks): block ranges and exp sums straight from the bits (bf16_range,
 * bf16_exp_sum); the table holds the float32 ones only */
FX_ROW_KERNEL(logits_bf16_row, 0, 1)
FX_ROW_KERNEL(logits_x_bf16_row, 1, 1)
#undef FX_ROW_KERNEL

/* ------------------------------------------------------------------ short rows */

/* Flat rows r0 .. r1-1 of at most FX_SHORT_C classes (the plain kernels, any class
 * stride): each row as logits_row computes it, but the loss's log1p -- a scalar
 * float64 log, as much as the rest of a short row -- is taken for FX_GROUP rows at
 * once in one vector loop over all FX_GROUP lanes (unused ones hold R = 0), so a
 * row's bits depend neither on its group nor on where the range starts. */
#define FX_GROUP 16
/* l = lin + A log1p(R) over n lanes, n a multiple of every table's float64 vector
 * width (FX_GROUP): one vector loop body serves every lane. Not inlined, nor
 * specialised for the constant n (noipa): unrolled into copies, the loop gets
 * different products fused into FMAs in each copy, and a row's bits would
 * depend on its lane, hence on where its range starts. */
#ifndef FX_NOIPA
#if defined(__GNUC__) && !defined(__clang__)
#define FX_NOIPA __attribute__((noipa))
#else
#define FX_NOIPA FX_NOINLINE
#endif
#if defined(_MSC_VER)
#define FX_RESTRICT __restrict
#else
#define FX_RESTRICT __restrict__
#endif
#endif
/* (restrict: no run-time overlap check sending the loop to a scalar version) */
static FX_NOIPA void FXN(group_losses)(const double *FX_RESTRICT lin, const double *FX_RESTRICT A,
                                       const double *FX_RESTRICT R, double *FX_RESTRICT l, fx_ssize n)
{
    for (fx_ssize j = 0; j < n; j++) l[j] = lin[j] + A[j] * fx_log1p_unit_f64(R[j]);
}
/* A plain loss-only row (sparse, no label smoothing, the class axis contiguous,
 * aligned, of the compute dtype, no gradient): logits_row_t's steps for such a row
 * -- the same helpers in the same order, hence the same bits -- without the
 * general row's setup, which costs as much as a short row's exps. Ignored, NaN and
 * all -inf rows write their loss and leave later->on = 0. */
/* A plain row's loss, deferred: lin = lab (m - x_y), A = lab (no smoothing). */
FX_INLINE void FXN(defer_plain)(fx_deferred *later, double lab, double m, double xy, double R)
{
    later->lin = lab != 0 ? lab * (m - xy) : 0.0;
    later->A = lab;
    later->R = R;
    later->on = 1;
}

FX_INLINE void FXN(short_plain_row)(const fx_call *k, const T *xv, fx_ssize y, fx_deferred *later, double *loss)
{
    if (y < 0) { /* ignored row */
        *loss = 0.0;
        return;
    }
    const double lab = (1.0 - k->ls) * k->cw[y], A = lab; /* weights_for, ls == 0 */
    T m;
    double R = 0; /* set for row 0 */
    int row; /* 0, or 1: a NaN or +inf in the row, 2: every logit -inf */
#ifdef FX_AVX512_MASKS
    if (FX_CODE == FX_F32) { /* the same steps in registers */
        float mf;
        fx_ssize skip;
        row = fx_short_row_ps((const float *)xv, k->n_c, &mf, &skip, &R, NULL, 0.0, 0.0f);
        m = (T)mf;
        if (row == 3) { /* wider than fx_exp_near's range */
            R = FXN(exp_sum_short)(xv, k->n_c, m, skip, 0, NULL);
            row = 0;
        }
    } else
#endif
    {
        T bmin;
        row = FXN(block_range)(xv, k->n_c, &m, &bmin) || m == (T)INFINITY ? 1 : m == (T)-INFINITY ? 2 : 0;
        if (row == 0) {
            const fx_ssize skip = FXN(find_first)(xv, k->n_c, m);
            const int near = bmin - m >= (T)FX_EXP_NEAR;
            /* exp_sum's own choice for C <= FX_SHORT_C <= FX_RUN, called directly: a
             * new call of exp_sum changed how GCC compiled it for long rows (scalar
             * lane sums) */
            R = FXN(exp_sum_short)(xv, k->n_c, m, skip, near, NULL);
        }
    }
    if (row == 1) { /* NaN row */
        *loss = NAN;
        return;
    }
    if (row == 2) { /* every logit -inf: A * inf (0 when A == 0) */
        *loss = A == 0 ? 0.0 : A * INFINITY;
        return;
    }
    FXN(defer_plain)(later, lab, (double)m, (double)xv[y], R);
}

/* The same row with its gradient, g row-contiguous in the compute dtype (it may be
 * x itself): on AVX-512 in float32, the register row with logits_row's gradient
 * steps (alpha e_c - beta, then exact values at the label and the argmax; the same
 * bits); any other row, or a row the register form does not take, as logits_row. */
FX_INLINE void FXN(short_grad_row)(const fx_call *k, fx_ssize o, fx_ssize i, fx_ssize y, fx_deferred *later)
{
#ifdef FX_AVX512_MASKS
    if (FX_CODE == FX_F32 && y >= 0) {
        const float *xv = (const float *)(k->x.data + o * k->x.so + i * k->x.si);
        float *gv = (float *)(k->g.data + o * k->g.so + i * k->g.si);
        const double lab = (1.0 - k->ls) * k->cw[y], A = lab; /* weights_for, ls == 0: u = 0 */
        const double gw = FXN(grad_weight)(k, o, i);
        const float xy = xv[y]; /* before the gradient overwrites it (in place) */
        float m;
        fx_ssize kmax;
        double R;
        if (fx_short_row_ps(xv, k->n_c, &m, &kmax, &R, gv, gw * A, (float)(gw * 0.0)) == 0) {
            const double S = 1.0 + R;
            if (y != kmax) gv[y] = (float)(gw * (A * (double)fx_exp_neg_f32(xy - m) / S - (lab + 0.0)));
            gv[kmax] = (float)(gw * fx_softmax_grad_at_max(A, 0.0 + (kmax == y ? lab : 0.0), R, S));
            FXN(defer_plain)(later, lab, (double)m, (double)xy, R);
            return;
        }
    }
#endif
    FXN(logits_row_t)(k, o, i, y, 0, 0, 0, later);
}

FX_INLINE fx_ssize FXN(logits_short_t)(const fx_call *k, fx_ssize r0, fx_ssize r1, const int G)
{
    const fx_ssize z = (fx_ssize)sizeof(T);
    const int rows = !k->dense && k->ls == 0 && k->x.dtype == FX_CODE && k->x.sc == z
                     && (uintptr_t)k->x.data % z == 0 && k->x.so % z == 0 && k->x.si % z == 0;
    const int plain = rows && !k->g.data;
    const int grad = rows && !G && k->g.data && k->g.dtype == FX_CODE && k->g.sc == z
                     && (uintptr_t)k->g.data % z == 0 && k->g.so % z == 0 && k->g.si % z == 0;
    fx_ssize o, i;
    fx_row_of(k, r0, &o, &i);
    for (fx_ssize g0 = r0; g0 < r1; g0 += FX_GROUP) {
        const int n = r1 - g0 < FX_GROUP ? (int)(r1 - g0) : FX_GROUP;
        fx_deferred part[FX_GROUP];
        double lin[FX_GROUP], A[FX_GROUP], R[FX_GROUP], l[FX_GROUP];
        fx_ssize at[FX_GROUP];
        for (int j = 0; j < FX_GROUP; j++) { lin[j] = 0; A[j] = 0; R[j] = 0; }
        for (int j = 0; j < n; j++) {
            fx_ssize y = 0;
            if (!k->dense) {
                const int64_t v = fx_label(k->lab + o * k->lab_so + i * k->lab_si, k->lab_dtype);
                y = v == k->ignore ? -1 : (fx_ssize)v;
            }
            part[j].on = 0;
            at[j] = o * k->n_i + i - k->loss_r0;
            if (plain)
                FXN(short_plain_row)(k, (const T *)(k->x.data + o * k->x.so + i * k->x.si), y, &part[j], &k->loss[at[j]]);
            else if (grad)
                FXN(short_grad_row)(k, o, i, y, &part[j]);
            else
                FXN(logits_row_t)(k, o, i, y, 0, 0, G, &part[j]);
            if (part[j].on) { lin[j] = part[j].lin; A[j] = part[j].A; R[j] = part[j].R; }
            if (++i == k->n_i) { i = 0; o++; }
        }
        FXN(group_losses)(lin, A, R, l, FX_GROUP);
        for (int j = 0; j < n; j++)
            if (part[j].on) k->loss[at[j]] = l[j];
    }
    return -1;
}
static FX_NOINLINE fx_ssize FXN(logits_short_g)(const fx_call *k, fx_ssize r0, fx_ssize r1)
{
    return FXN(logits_short_t)(k, r0, r1, 1);
}
static fx_ssize FXN(logits_short)(const fx_call *k, fx_ssize r0, fx_ssize r1)
{
    if (FX_G_BF16(k->g.dtype)) return FXN(logits_short_g)(k, r0, r1);
    return FXN(logits_short_t)(k, r0, r1, 0);
}

#ifndef FX_COL_RUN
#define FX_COL_RUN 16 /* classes whose exps a column lane sums in T before float64 */
#endif
/* Rows (o, i0 .. i0+n-1) with a contiguous inner axis: one lane per row, the class
 * loop outside, so every pass is a unit-stride vector loop across rows.
 * X: the extras (sparse only). */
FX_INLINE fx_ssize FXN(logits_cols_t)(const fx_call *k, fx_ssize o, fx_ssize i0, fx_ssize n, const int X,
                                      const int G)
{
    const int gdt = G ? FX_BF16 : FX_CODE; /* G: a bfloat16 gradient (float32 kernels) */
    const fx_ssize C = k->n_c;
    const int dense = X ? 0 : k->dense;
    const char *xo = k->x.data + o * k->x.so + i0 * k->x.si;
    const char *to = dense ? k->t.data + o * k->t.so + i0 * k->t.si : NULL;
    char *go = k->g.data ? k->g.data + o * k->g.so + i0 * k->g.si : NULL;
    double loss[FX_LANES];
    const double per = k->ls_per_c;
    const int capped = X && k->softcap != 0;
    const T cap = (T)k->softcap;

    T m[FX_LANES], msafe[FX_LANES], xy[FX_LANES], xbuf[FX_LANES], ubuf[FX_LANES], tbuf[FX_LANES];
    double R[FX_LANES], lin[FX_LANES], usum[FX_LANES], lab[FX_LANES], A[FX_LANES], gwv[FX_LANES];
    int32_t nan[FX_LANES], ties[FX_LANES];
    fx_ssize y[FX_LANES], kmax[FX_LANES];
    /* X: softcap's derivative factors at the label and the argmax, rank counts,
     * lse, the softmax term's weight with z_loss (Az) and z_loss's part of it */
    T dy[FX_LANES], dk[FX_LANES], dbuf[FX_LANES];
    int32_t above[FX_LANES];
    double lse[FX_LANES], Az[FX_LANES], zx[FX_LANES];

    for (fx_ssize j = 0; j < n; j++) {
        m[j] = (T)-INFINITY; nan[j] = 0; kmax[j] = 0; R[j] = 0; lin[j] = 0; usum[j] = 0; ties[j] = 0;
        y[j] = 0; lab[j] = 0;
    }
    if (X)
        for (fx_ssize j = 0; j < n; j++) { xy[j] = 0; dy[j] = 1; dk[j] = 1; above[j] = 0; }
    /* Columns that must be copied (a strided lane axis: row-major (N, C) with few
     * classes; or another dtype) are kept from pass 1 for pass 2 when the tile
     * fits: the strided copy costs more than the arithmetic of short rows.
     * Capped logits are always kept there when it fits (and their derivative
     * factors in dtile, with a gradient). */
    T tile[FX_TILE], dtile[FX_TILE];
    const int keep_tile = C * n <= FX_TILE;
#define FX_COLUMN_BUF(c) (keep_tile ? tile + (c) * n : xbuf)
    int filled = 0; /* the tile holds every column already */
#ifdef FX_AVX512_MASKS
    /* float32 rows with contiguous classes: the tile by 16 x 16 transposes in
     * registers, where load() gathers one strided element at a time (the same
     * values: every later pass reads the tile as before) */
    if (FX_CODE == FX_F32 && keep_tile && k->x.dtype == FX_F32 && k->x.sc == 4 && n % 16 == 0
        && FXN(load_copies)(xo, k->x.si, k->x.dtype)) {
        for (fx_ssize j0 = 0; j0 < n; j0 += 16)
            for (fx_ssize c0 = 0; c0 < C; c0 += 16)
                fx_rows_to_columns16(xo + j0 * k->x.si + c0 * 4, k->x.si, C - c0 < 16 ? (int)(C - c0) : 16,
                                     (float *)tile + c0 * n + j0, n);
        filled = 1;
    }
#endif
    if (!dense) { /* x_y from the tile when it holds every column: no strided load */
        for (fx_ssize j = 0; j < n; j++) {
            const int64_t v = fx_label(k->lab + o * k->lab_so + (i0 + j) * k->lab_si, k->lab_dtype);
            y[j] = v == k->ignore ? -1 : (fx_ssize)v;
            if (y[j] >= 0) {
                lab[j] = (1.0 - k->ls) * k->cw[y[j]];
                xy[j] = filled ? tile[y[j] * n + j] : FXN(load1)(xo + y[j] * k->x.sc + j * k->x.si, k->x.dtype);
                if (capped) xy[j] = FXN(cap1)(xy[j], cap, &dy[j]);
            }
        }
    }
    /* pass 1: max, NaN, and the first argmax when a gradient is wanted */
    for (fx_ssize c = 0; c < C; c++) {
        const T *xv = filled ? tile + c * n : FXN(load)(xo + c * k->x.sc, k->x.si, k->x.dtype, n, FX_COLUMN_BUF(c));
        T *dc = keep_tile ? dtile + c * n : dbuf;
        if (capped) {
            FXN(cap_block)(xv, FX_COLUMN_BUF(c), go ? dc : NULL, n, cap);
            xv = FX_COLUMN_BUF(c);
        }
        if (go && capped) { /* and the derivative factor at the argmax */
            for (fx_ssize j = 0; j < n; j++) {
                T v = xv[j];
                int gt = v > m[j];
                m[j] = SEL(gt, v, m[j]);
                kmax[j] = gt ? c : kmax[j];
                dk[j] = SEL(gt, dc[j], dk[j]);
                nan[j] |= v != v;
            }
        } else if (go) {
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
        if (X && k->rank) /* larger, or equal at a lower index; never the label itself */
            for (fx_ssize j = 0; j < n; j++)
                above[j] += ((fx_ssize)c != y[j]) & ((xv[j] > xy[j]) | ((xv[j] == xy[j]) & ((fx_ssize)c < y[j])));
    }
    if (X && k->rank) /* the rank of a row holding a NaN is C (a +inf is not a NaN) */
        for (fx_ssize j = 0; j < n; j++)
            fx_put_i64(k->rank + o * k->rank_so + (i0 + j) * k->rank_si, y[j] < 0 ? -1 : nan[j] ? C : above[j]);
    for (fx_ssize j = 0; j < n; j++) {
        nan[j] |= m[j] == (T)INFINITY;
        msafe[j] = (m[j] == (T)-INFINITY || nan[j]) ? (T)0 : m[j];
    }
    /* pass 2: exp sums, weighted (m - x); with a gradient, the exps are kept for
     * pass 3: in a tile when it fits (then pass 3 writes the gradient once), else
     * in the gradient itself (through a buffer where its lane axis is strided).
     * Where the gradient cannot hold them -- bfloat16 would round them; with
     * softcap, in place, x would be gone for the factors -- and the tile is too
     * small, pass 3 takes the exps again from x. */
    const int kind = dense ? U_VEC : (k->ls == 0 ? U_NONE : U_CONST);
    T etile[FX_TILE], ebuf[FX_LANES], gbuf[FX_LANES];
    /* each lane's exps add in T over runs of FX_COL_RUN classes, and only the
     * runs' sums in float64 (the row form's FX_RUNSUM, across lanes): a float64
     * add per element cost two conversions and a load and store of R per vector */
    T Rrun[FX_LANES];
    for (fx_ssize j = 0; j < n; j++) Rrun[j] = 0;
    const int e_in_tile = C * n <= FX_TILE;
    const int recompute = !e_in_tile && (capped || G);
    for (fx_ssize c = 0; c < C; c++) {
        const char *xc = xo + c * k->x.sc;
        const T *xv;
        if (capped)
            xv = keep_tile ? tile + c * n : FXN(x_block)(k, xc, k->x.si, n, xbuf, NULL);
        else
            xv = keep_tile && FXN(load_copies)(xc, k->x.si, k->x.dtype)
                     ? tile + c * n
                     : FXN(load)(xc, k->x.si, k->x.dtype, n, xbuf);
        T *ev = !go || recompute ? NULL : e_in_tile ? etile + c * n : FXN(gdst)(go + c * k->g.sc, k->g.si, gdt, ebuf);
        const T *uv = NULL;
        T uc = kind == U_CONST ? (T)(per * k->cw[c]) : (T)0;
        if (kind == U_VEC) {
            const T *t = FXN(load)(to + c * k->t.sc, k->t.si, k->t.dtype, n, tbuf);
            const T wc = (T)k->cw[c], keep = (T)(1.0 - k->ls), add = (T)per;
            for (fx_ssize j = 0; j < n; j++) ubuf[j] = FXN(dense_weight)(wc, t[j], keep, add);
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
                Rrun[j] += SEL(d == 0, (T)0, e);
                ties[j] += d == 0;
                ev[j] = e;
            }
            if (!e_in_tile) FXN(gflush)(go + c * k->g.sc, k->g.si, gdt, n, ev);
        } else {
            for (fx_ssize j = 0; j < n; j++) {
                T d = xv[j] - msafe[j];
                T e = FXM(fx_exp_neg)(d);
                Rrun[j] += SEL(d == 0, (T)0, e);
                ties[j] += d == 0;
            }
        }
        if (c % FX_COL_RUN == FX_COL_RUN - 1 || c == C - 1) /* a run's T sums into float64 */
            for (fx_ssize j = 0; j < n; j++) {
                R[j] += (double)Rrun[j];
                Rrun[j] = 0;
            }
    }
    /* R = S - 1 and its log1p for every lane, in one vector loop (a scalar log per
     * row would cost as much as the rest of a short row); lanes of the special
     * rows below get values nobody reads */
    double l1p[FX_LANES];
    for (fx_ssize j = 0; j < n; j++) {
        R[j] += (double)(ties[j] - 1);
        l1p[j] = fx_log1p_unit_f64(R[j]);
    }
    if (X) { /* every lane's lse (ignored rows too) and z_loss's 2 z lse */
        for (fx_ssize j = 0; j < n; j++) {
            lse[j] = nan[j] ? NAN : m[j] == (T)-INFINITY ? -INFINITY : (double)m[j] + l1p[j];
            zx[j] = k->z_loss != 0 && y[j] >= 0 ? 2.0 * k->z_loss * lse[j] : 0.0;
        }
        if (k->lse)
            for (fx_ssize j = 0; j < n; j++) fx_put_f64(k->lse + o * k->lse_so + (i0 + j) * k->lse_si, lse[j]);
    }
    /* per row: loss and the gradient's scale, first for every lane in one vector
     * loop (fx_softmax_row_loss, its log1p taken above: (lin + lab (m - x_y)) +
     * A log1p(R), the same operations as one row at a time), then the special
     * rows' lanes overwritten; a label weight of 0 adds nothing, as in the row
     * form (its product with an infinite m - x_y would be NaN) */
    for (fx_ssize j = 0; j < n; j++) {
        A[j] = dense ? usum[j] : (k->ls == 0 ? lab[j] : lab[j] + per * k->cw_sum);
        if (X) Az[j] = A[j] + zx[j];
        const double ly = lin[j] + lab[j] * ((double)m[j] - (double)xy[j]);
        const double l = dense ? lin[j] : fx_sel_f64(lab[j] != 0, ly, lin[j]);
        loss[j] = l + A[j] * l1p[j];
        if (X && k->z_loss != 0) loss[j] += k->z_loss * lse[j] * lse[j];
    }
    for (fx_ssize j = 0; j < n; j++) {
        gwv[j] = go ? FXN(grad_weight)(k, o, i0 + j) : 0.0;
        if (!dense && y[j] < 0) {
            loss[j] = 0.0;
        } else if (nan[j]) {
            loss[j] = NAN;
        } else if (m[j] == (T)-INFINITY) {
            loss[j] = A[j] == 0 ? 0.0 : A[j] * INFINITY;
            if (X && k->z_loss != 0) loss[j] += k->z_loss * lse[j] * lse[j];
        }
    }
    fx_store_losses(&k->loss[o * k->n_i + i0 - k->loss_r0], loss, n, k->stream_loss);
    if (!go) return -1;
    /* pass 3: gradient gw (A e / S - u); exact values at y and k; special rows */
    const double *Aw = X ? Az : A;
    T alpha[FX_LANES], gwt[FX_LANES], beta[FX_LANES];
    for (fx_ssize j = 0; j < n; j++) {
        alpha[j] = (T)(gwv[j] * Aw[j] / (1.0 + R[j]));
        gwt[j] = (T)gwv[j];
    }
    int rows_out = 0; /* the gradient columns stay in etile, then go out as rows */
#ifdef FX_AVX512_MASKS
    /* float32 gradient rows with contiguous classes (the tile's layout, written
     * back): 16 x 16 transposes in registers instead of one strided store an element */
    rows_out = FX_CODE == FX_F32 && e_in_tile && !recompute && gdt == FX_F32 && k->g.sc == 4 && n % 16 == 0
               && FXN(load_copies)(go, k->g.si, FX_F32);
#endif
    for (fx_ssize c = 0; c < C; c++) {
        char *gc = go + c * k->g.sc;
        const T *ev;
        T *gd;
        const T *dc = dtile + c * n; /* capped: the derivative factors */
        if (rows_out) {
            ev = gd = etile + c * n; /* each element read before it is written */
        } else if (recompute) { /* the exps again from x (unwritten: in place, column c is next) */
            const char *xc = xo + c * k->x.sc;
            const T *zv = capped ? FXN(x_block)(k, xc, k->x.si, n, xbuf, dbuf) : FXN(load)(xc, k->x.si, k->x.dtype, n, xbuf);
            for (fx_ssize j = 0; j < n; j++) ebuf[j] = FXM(fx_exp_neg)(zv[j] - msafe[j]);
            ev = ebuf;
            dc = dbuf;
            gd = FXN(gdst)(gc, k->g.si, gdt, gbuf);
        } else {
            ev = e_in_tile ? etile + c * n : FXN(load)(gc, k->g.si, FX_CODE, n, ebuf);
            gd = FXN(gdst)(gc, k->g.si, gdt, xbuf);
        }
        if (kind == U_VEC) {
            const T *t = FXN(load)(to + c * k->t.sc, k->t.si, k->t.dtype, n, tbuf);
            const T wc = (T)k->cw[c], keep = (T)(1.0 - k->ls), add = (T)per;
            for (fx_ssize j = 0; j < n; j++) gd[j] = alpha[j] * ev[j] - gwt[j] * FXN(dense_weight)(wc, t[j], keep, add);
        } else {
            const T uc = kind == U_CONST ? (T)(per * k->cw[c]) : (T)0;
            for (fx_ssize j = 0; j < n; j++) beta[j] = gwt[j] * uc;
            for (fx_ssize j = 0; j < n; j++) gd[j] = alpha[j] * ev[j] - beta[j];
        }
        if (capped) for (fx_ssize j = 0; j < n; j++) gd[j] *= dc[j];
        if (!rows_out) FXN(gflush)(gc, k->g.si, gdt, n, gd);
    }
#ifdef FX_AVX512_MASKS
    if (rows_out)
        for (fx_ssize j0 = 0; j0 < n; j0 += 16)
            for (fx_ssize c0 = 0; c0 < C; c0 += 16)
                fx_columns_to_rows16((const float *)etile + c0 * n + j0, n, C - c0 < 16 ? (int)(C - c0) : 16,
                                     go + j0 * k->g.si + c0 * 4, k->g.si);
#endif
    for (fx_ssize j = 0; j < n; j++) {
        char *gj = go + j * k->g.si;
        const char *tj = to ? to + j * k->t.si : NULL;
        if (!dense && y[j] < 0) { FXN(fill)(gj, k->g.sc, gdt, C, (T)0); continue; }
        if (nan[j]) { FXN(fill)(gj, k->g.sc, gdt, C, (T)NAN); continue; }
        if (m[j] == (T)-INFINITY) { FXN(fill)(gj, k->g.sc, gdt, C, Aw[j] != 0 ? (T)NAN : (T)0); continue; }
        const double S = 1.0 + R[j];
        if (!dense && y[j] != kmax[j]) {
            const double ey = (double)FXM(fx_exp_neg)(xy[j] - m[j]);
            const double g_y = gwv[j] * (Aw[j] * ey / S - (lab[j] + FXN(u_at)(k, tj, y[j])));
            FXN(store1)(gj + y[j] * k->g.sc, gdt, capped ? g_y * (double)dy[j] : g_y);
        }
        const double a_k = FXN(u_at)(k, tj, kmax[j]) + (!dense && kmax[j] == y[j] ? lab[j] : 0.0);
        if (X) /* A (q_k - 1) + (A - a_k), A gaining 2 z lse in both */
            FXN(store1)(gj + kmax[j] * k->g.sc, gdt,
                        gwv[j] * (Az[j] * (-R[j] / S) + ((A[j] - a_k) + zx[j])) * (double)dk[j]);
        else
            FXN(store1)(gj + kmax[j] * k->g.sc, gdt, gwv[j] * fx_softmax_grad_at_max(A[j], a_k, R[j], S));
    }
    return -1;
}

#define FX_COLS_KERNEL(name, X)                                                                \
    static FX_NOINLINE fx_ssize FXN(name##_g)(const fx_call *k, fx_ssize o, fx_ssize i0, fx_ssize n) \
    {                                                                                          \
        return FXN(logits_cols_t)(k, o, i0, n, X, 1);                                          \
    }                                                                                          \
    static fx_ssize FXN(name)(const fx_call *k, fx_ssize o, fx_ssize i0, fx_ssize n)           \
    {                                                                                          \
        if (FX_G_BF16(k->g.dtype)) return FXN(name##_g)(k, o, i0, n);                          \
        return FXN(logits_cols_t)(k, o, i0, n, X, 0);                                          \
    }
FX_COLS_KERNEL(logits_cols, 0)
FX_COLS_KERNEL(logits_x_cols, 1)
#undef FX_COLS_KERNEL
