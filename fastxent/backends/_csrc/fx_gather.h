/* Sparse cross-entropy from probabilities without label smoothing: the gather-log
 * (sparse_from_probs with label_smoothing == 0). Only p_y is read and range-checked,
 * one value per row whatever C is:
 *     loss = -w_y log(clip(p_y, eps, 1 - eps)),
 *     gradient -w_y gw / p_y at the label (0 where clipped), 0 elsewhere.
 * The clip is done in the compute dtype T (the bounds rounded to it), the log in
 * float64 of the clipped value. Ignored rows: loss 0, gradient row 0.
 *
 * One cache miss per row bounds the loop by memory latency, not bandwidth: the
 * probability FX_GATHER_AHEAD rows on is prefetched (into L2, as the exp passes'
 * blocks are), which keeps that many misses in flight. Without a gradient, rows
 * go in batches of FX_GATHER_BATCH: the batch's clipped values are gathered
 * first, then their logs taken in one vector loop (the same fx_log_f64, hence the
 * same bits, as the gradient path's one log per row).
 *
 * A template for one compute type (see fx_load.h): FX_CODE F32 serves float16,
 * bfloat16 and float32 input, F64 float64. Each (label dtype, value dtype, gradient or not)
 * gets its own loop: the helpers below are always inlined with constant codes. */

#ifndef FX_GATHER_CONSTANTS
#define FX_GATHER_CONSTANTS
#define FX_GATHER_BATCH 128 /* rows per batch of the loss-only loop */
#endif

/* p[0] of x dtype xd (a constant after inlining), as double: float16 and bfloat16
 * through float32. */
FX_INLINE double FXN(gather_value)(const char *p, int xd)
{
    if (xd == FX_F16) { uint16_t v; memcpy(&v, p, 2); return (double)fx_half_to_f32(v); }
    if (xd == FX_BF16) { uint16_t v; memcpy(&v, p, 2); return (double)fx_bf16_to_f32(v); }
    if (xd == FX_F32) { float v; memcpy(&v, p, 4); return (double)v; }
    double v; memcpy(&v, p, 8); return v;
}

/* Start the cache miss of row r + FX_GATHER_AHEAD (if in [r, r1)) now. */
FX_INLINE void FXN(gather_prefetch)(const fx_call *k, fx_ssize r, fx_ssize r1, int ld)
{
    if (r + FX_GATHER_AHEAD >= r1) return;
    fx_ssize o, i;
    fx_row_of(k, r + FX_GATHER_AHEAD, &o, &i);
    const int64_t y = fx_label(k->lab + o * k->lab_so + i * k->lab_si, ld);
    if (y != k->ignore) FX_PREFETCH_L2(k->x.data + o * k->x.so + y * k->x.sc + i * k->x.si);
}

/* Loss only, rows r0 .. r1-1 in batches; the first out-of-range row or -1. */
FX_INLINE fx_ssize FXN(gather_losses)(const fx_call *k, fx_ssize r0, fx_ssize r1, int ld, int xd,
                                      double lo, double hi)
{
    double pc[FX_GATHER_BATCH], wy[FX_GATHER_BATCH], lg[FX_GATHER_BATCH];
    for (fx_ssize b0 = r0; b0 < r1; b0 += FX_GATHER_BATCH) {
        const fx_ssize nb = r1 - b0 < FX_GATHER_BATCH ? r1 - b0 : FX_GATHER_BATCH;
        for (fx_ssize j = 0; j < nb; j++) {
            const fx_ssize r = b0 + j;
            fx_ssize o, i;
            FXN(gather_prefetch)(k, r, r1, ld);
            fx_row_of(k, r, &o, &i);
            const int64_t y = fx_label(k->lab + o * k->lab_so + i * k->lab_si, ld);
            if (y == k->ignore) { /* loss 0 - 0 * log(1) = 0 */
                pc[j] = 1.0;
                wy[j] = 0.0;
                continue;
            }
            const double p = FXN(gather_value)(k->x.data + o * k->x.so + y * k->x.sc + i * k->x.si, xd);
            if (p < 0 || p > 1) return r; /* NaN is not a range error */
            pc[j] = p < lo ? lo : (p > hi ? hi : p); /* by comparison: NaN stays NaN */
            wy[j] = k->cw[y];
        }
        for (fx_ssize j = 0; j < nb; j++) lg[j] = fx_log_f64(pc[j]);
        double *out = &k->loss[b0 - k->loss_r0]; /* row r's loss is at r - loss_r0 */
        for (fx_ssize j = 0; j < nb; j++) out[j] = 0.0 - wy[j] * lg[j];
    }
    return -1;
}

/* Loss and gradient, row by row; the first out-of-range row or -1. */
FX_INLINE fx_ssize FXN(gather_grads)(const fx_call *k, fx_ssize r0, fx_ssize r1, int ld, int xd,
                                     double lo, double hi)
{
    for (fx_ssize r = r0; r < r1; r++) {
        fx_ssize o, i;
        FXN(gather_prefetch)(k, r, r1, ld);
        fx_row_of(k, r, &o, &i);
        const int64_t y = fx_label(k->lab + o * k->lab_so + i * k->lab_si, ld);
        char *grow = k->g.data + o * k->g.so + i * k->g.si;
        double *loss = &k->loss[o * k->n_i + i - k->loss_r0];
        if (y == k->ignore) {
            *loss = 0.0;
            FXN(fill)(grow, k->g.sc, k->g.dtype, k->n_c, (T)0);
            continue;
        }
        const double p = FXN(gather_value)(k->x.data + o * k->x.so + y * k->x.sc + i * k->x.si, xd);
        if (p < 0 || p > 1) return r;
        const int clipped = p < lo || p > hi;
        const double pc = p < lo ? lo : (p > hi ? hi : p);
        const double wy = k->cw[y];
        *loss = 0.0 - wy * fx_log_f64(pc);
        FXN(fill)(grow, k->g.sc, k->g.dtype, k->n_c, (T)0);
        const double gw = FXN(grad_weight)(k, o, i);
        FXN(store1)(grow + y * k->g.sc, k->g.dtype, clipped ? 0.0 : -wy * gw / p);
    }
    return -1;
}

FX_INLINE fx_ssize FXN(gather_lab)(const fx_call *k, fx_ssize r0, fx_ssize r1, int ld)
{
    const T lo_t = (T)k->eps, hi_t = (T)1 - lo_t; /* the bounds in the compute dtype */
    const double lo = lo_t, hi = hi_t;
    if (FX_CODE == FX_F64) {
        if (k->g.data) return FXN(gather_grads)(k, r0, r1, ld, FX_F64, lo, hi);
        return FXN(gather_losses)(k, r0, r1, ld, FX_F64, lo, hi);
    }
    if (k->x.dtype == FX_F16) {
        if (k->g.data) return FXN(gather_grads)(k, r0, r1, ld, FX_F16, lo, hi);
        return FXN(gather_losses)(k, r0, r1, ld, FX_F16, lo, hi);
    }
    if (k->x.dtype == FX_BF16) {
        if (k->g.data) return FXN(gather_grads)(k, r0, r1, ld, FX_BF16, lo, hi);
        return FXN(gather_losses)(k, r0, r1, ld, FX_BF16, lo, hi);
    }
    if (k->g.data) return FXN(gather_grads)(k, r0, r1, ld, FX_F32, lo, hi);
    return FXN(gather_losses)(k, r0, r1, ld, FX_F32, lo, hi);
}

/* Rows r0 .. r1-1 of the gather-log; the first row whose p_y lies outside [0, 1], or -1. */
static fx_ssize FXN(gather)(const fx_call *k, fx_ssize r0, fx_ssize r1)
{
    switch (k->lab_dtype) {
    case FX_I64: return FXN(gather_lab)(k, r0, r1, FX_I64);
    case FX_I32: return FXN(gather_lab)(k, r0, r1, FX_I32);
    case FX_I16: return FXN(gather_lab)(k, r0, r1, FX_I16);
    case FX_I8: return FXN(gather_lab)(k, r0, r1, FX_I8);
    case FX_U64: return FXN(gather_lab)(k, r0, r1, FX_U64);
    case FX_U32: return FXN(gather_lab)(k, r0, r1, FX_U32);
    case FX_U16: return FXN(gather_lab)(k, r0, r1, FX_U16);
    default: return FXN(gather_lab)(k, r0, r1, FX_U8);
    }
}
