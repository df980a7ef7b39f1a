/* Sparse cross-entropy from probabilities without label smoothing: the gather-log
 * (sparse_from_probs with label_smoothing == 0). Only p_y is read and range-checked,
 * one value per row whatever C is:
 *     loss = -w_y log(clip(p_y, eps, 1 - eps)),
 *     gradient -w_y gw / p_y at the label (0 where clipped), 0 elsewhere.
 * The clip is done in the compute dtype T (the bounds rounded to it), the log in
 * float64 of the clipped value. Ignored rows: loss 0, gradient row 0.
 *
 * One cache miss per row bounds the loop by memory latency, not bandwidth: the
 * probability FX_GATHER_AHEAD rows on is prefetched (into L1 without a gradient,
 * L2 with one), which keeps misses in flight up to the core's limit. Without a
 * gradient, rows go in batches of FX_GATHER_BATCH: the batch's values are
 * gathered first, then checked, clipped and logged in vector loops (the same
 * log, hence the same bits, as the gradient path's one log per row: fx_log_normal_f64
 * whenever eps keeps every clipped value normal, as the contract's eps does).
 *
 * A template for one compute type (see fx_load.h): FX_CODE F32 serves float16,
 * bfloat16 and float32 input, F64 float64. Each (label dtype, value dtype, gradient or not)
 * gets its own loop: the helpers below are always inlined with constant codes. */

#ifndef FX_GATHER_CONSTANTS
#define FX_GATHER_CONSTANTS
#define FX_GATHER_BATCH 64 /* rows per batch of the loss-only loop */
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

/* Loss only, rows r0 .. r1-1 in batches; the first out-of-range row or -1.
 * Once the misses overlap, the loop is bound by its instruction count, so the
 * per-row loop only prefetches, reads the label and gathers the value (the call's
 * fields in locals, rows advanced by increments, flat rows by pointer steps); the
 * checks, clip, weights and logs run as vector loops over the batch. An ignored
 * row reads its row's first value instead (any in-bounds address: its loss is 0
 * whatever it holds).
 * flat: one outer index (n_o == 1, as every (N, C) call is after _normalise),
 * row r is (0, r). */
FX_INLINE fx_ssize FXN(gather_losses)(const fx_call *k, fx_ssize r0, fx_ssize r1, int ld, int xd,
                                      double lo, double hi, const int flat)
{
    const char *const xd0 = k->x.data, *const lab = k->lab;
    const fx_ssize so = k->x.so, sc = k->x.sc, si = k->x.si, lso = k->lab_so, lsi = k->lab_si;
    const fx_ssize n_i = k->n_i;
    const int64_t ignore = k->ignore;
    const double *const cw = k->cw, cw0 = k->cw0;
    const int normal_log = fx_log_normal_ok_f64(lo); /* every clipped value is normal */
    double pv[FX_GATHER_BATCH], lg[FX_GATHER_BATCH], wy[FX_GATHER_BATCH];
    int64_t yv[FX_GATHER_BATCH];
    fx_ssize o, i, po, pi; /* this row, and the row FX_GATHER_AHEAD on (fetched now) */
    if (k->n_c == 0) { /* every label is ignored (validated): no value to read */
        for (fx_ssize r = r0; r < r1; r++) k->loss[r - k->loss_r0] = 0.0;
        return -1;
    }
    fx_row_of(k, r0, &o, &i);
    fx_row_of(k, r0 + FX_GATHER_AHEAD, &po, &pi);
    for (fx_ssize b0 = r0; b0 < r1; b0 += FX_GATHER_BATCH) {
        const fx_ssize nb = r1 - b0 < FX_GATHER_BATCH ? r1 - b0 : FX_GATHER_BATCH;
        if (flat) { /* row pointers advanced by their strides: no multiply a row */
            const char *lp = lab + i * lsi, *xp = xd0 + i * si;
            const char *plp = lab + pi * lsi, *pxp = xd0 + pi * si;
            const fx_ssize jp = r1 - FX_GATHER_AHEAD - b0; /* rows j < jp have a row to fetch */
            for (fx_ssize j = 0; j < nb; j++) {
                if (j < jp) {
                    const int64_t yp = fx_label(plp, ld);
                    FX_PREFETCH_L1(pxp + (yp == ignore ? 0 : yp) * sc);
                }
                const int64_t y = fx_label(lp, ld);
                yv[j] = y;
                pv[j] = FXN(gather_value)(xp + (y == ignore ? 0 : y) * sc, xd);
                lp += lsi; xp += si; plp += lsi; pxp += si;
            }
            i += nb;
            pi += nb;
        } else {
            for (fx_ssize j = 0; j < nb; j++) {
                if (b0 + j + FX_GATHER_AHEAD < r1) {
                    const int64_t yp = fx_label(lab + po * lso + pi * lsi, ld);
                    FX_PREFETCH_L1(xd0 + po * so + (yp == ignore ? 0 : yp) * sc + pi * si);
                }
                const int64_t y = fx_label(lab + o * lso + i * lsi, ld);
                yv[j] = y;
                pv[j] = FXN(gather_value)(xd0 + o * so + (y == ignore ? 0 : y) * sc + i * si, xd);
                if (++i == n_i) { i = 0; o++; }
                if (++pi == n_i) { pi = 0; po++; }
            }
        }
        uint64_t bad = 0; /* all in 64-bit lanes: mixed widths keep GCC from vectorising */
        for (fx_ssize j = 0; j < nb; j++) {
            const int64_t y = yv[j];
            const double p = pv[j];
            const uint64_t on = (uint64_t)(y != ignore);
            bad |= on & (uint64_t)((p < 0) | (p > 1)); /* NaN is not a range error */
            pv[j] = on ? (p < lo ? lo : (p > hi ? hi : p)) : 1.0; /* by comparison: NaN stays NaN */
        }
        /* the label's weight (ignored: 0 - 0 * log(1) = 0), in a loop of its own: a
         * gather from cw would keep the check loop above scalar */
        if (k->cw_uniform)
            for (fx_ssize j = 0; j < nb; j++) wy[j] = yv[j] != ignore ? cw0 : 0.0;
        else
            for (fx_ssize j = 0; j < nb; j++) wy[j] = yv[j] != ignore ? cw[yv[j]] : 0.0;
        if (bad) /* the batch's first bad row, read again */
            for (fx_ssize j = 0; j < nb; j++) {
                if (yv[j] == ignore) continue;
                fx_ssize ro, ri;
                fx_row_of(k, b0 + j, &ro, &ri);
                const double p = FXN(gather_value)(xd0 + ro * so + yv[j] * sc + ri * si, xd);
                if (p < 0 || p > 1) return b0 + j;
            }
        if (normal_log) /* the same log, fewer selects */
            for (fx_ssize j = 0; j < nb; j++) lg[j] = fx_log_normal_f64(pv[j]);
        else
            for (fx_ssize j = 0; j < nb; j++) lg[j] = fx_log_f64(pv[j]);
        double *out = &k->loss[b0 - k->loss_r0]; /* row r's loss is at r - loss_r0 */
        for (fx_ssize j = 0; j < nb; j++) out[j] = 0.0 - wy[j] * lg[j];
    }
    return -1;
}

/* Loss and gradient, row by row; the first out-of-range row or -1. */
FX_INLINE fx_ssize FXN(gather_grads)(const fx_call *k, fx_ssize r0, fx_ssize r1, int ld, int xd,
                                     double lo, double hi)
{
    const int normal_log = fx_log_normal_ok_f64(lo);
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
        *loss = 0.0 - wy * (normal_log ? fx_log_normal_f64(pc) : fx_log_f64(pc));
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
#define FX_GATHER_LOSSES(xd) (k->n_o == 1 ? FXN(gather_losses)(k, r0, r1, ld, xd, lo, hi, 1) \
                                          : FXN(gather_losses)(k, r0, r1, ld, xd, lo, hi, 0))
    if (FX_CODE == FX_F64) {
        if (k->g.data) return FXN(gather_grads)(k, r0, r1, ld, FX_F64, lo, hi);
        return FX_GATHER_LOSSES(FX_F64);
    }
    if (k->x.dtype == FX_F16) {
        if (k->g.data) return FXN(gather_grads)(k, r0, r1, ld, FX_F16, lo, hi);
        return FX_GATHER_LOSSES(FX_F16);
    }
    if (k->x.dtype == FX_BF16) {
        if (k->g.data) return FXN(gather_grads)(k, r0, r1, ld, FX_BF16, lo, hi);
        return FX_GATHER_LOSSES(FX_BF16);
    }
    if (k->g.data) return FXN(gather_grads)(k, r0, r1, ld, FX_F32, lo, hi);
    return FX_GATHER_LOSSES(FX_F32);
#undef FX_GATHER_LOSSES
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
