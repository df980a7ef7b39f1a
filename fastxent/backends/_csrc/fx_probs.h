/* Cross-entropy from probabilities over whole rows: categorical_from_probs, and
 * sparse_from_probs with label smoothing (without it, fx_gather.h).
 * A template for one compute type, included by fx_kernels_isa.h once per type with
 * FX_T (float/double), FX_S (f32/f64), FX_K (int32_t/int64_t: ordering keys) and
 * FX_CODE (FX_F32/FX_F64) defined; T, FXN(name) (this type's functions: name_f32)
 * and FXM(name) (fx_math.h helpers) follow from them. */


/* sum_c a_c (-log clip(p_c)) over a block, its gradient gw * (-a_c / p_c) (0 where
 * clipped), and whether a value lies outside [0, 1]. u == NULL: u_c = u0. NaN
 * propagates (no select on the weight: 0 * NaN is NaN, as it should be). */
static double FXN(probs_block)(const T *p, const T *u, T u0, fx_ssize n, T lo, T hi, int *bad,
                               T *g, T gw)
{
    double s;
    int o = 0;
    /* the terms a_c (-log p_c) into an L1 buffer first, then their float64 lane
     * sums: the same bits as summing each term as it is computed, and the log
     * loop vectorises at the full float width, apart from the float64 sums.
     * (GCC leaves a float32 run sum, FX_RUNSUM, over the terms scalar.) */
    T terms[FX_BLOCK];
#define FX_TERMS(LOG)                                                                          \
    if (u) for (fx_ssize c = 0; c < n; c++) terms[c] = u[c] * -LOG(FXM(fx_clip)(p[c], lo, hi)); \
    else for (fx_ssize c = 0; c < n; c++) terms[c] = u0 * -LOG(FXM(fx_clip)(p[c], lo, hi));
    if (FXM(fx_log_normal_ok)(lo)) { /* the same log without its zero/negative/inf selects */
        FX_TERMS(FXM(fx_log_normal))
    } else {
        FX_TERMS(FXM(fx_log))
    }
#undef FX_TERMS
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
        if (grow) FXN(fill)(grow, gs, k->g.dtype, C, (T)0);
        return 0;
    }
    const FXN(weights) w = FXN(weights_for)(k, y);
    const T lo = (T)k->eps, hi = (T)1 - lo;
    const double gw = grow ? FXN(grad_weight)(k, o, i) : 0.0;
    T xbuf[FX_BLOCK], ubuf[FX_BLOCK], tbuf[FX_BLOCK], gbuf[FX_BLOCK];
    const T py = k->dense ? (T)0 : FXN(load1)(xrow + y * xs, k->x.dtype); /* before any write */
    double s = 0;
    int bad = 0;
    if (w.kind == U_NONE && grow) FXN(fill)(grow, gs, k->g.dtype, C, (T)0); /* only p_y counts */
    for (fx_ssize c0 = 0; c0 < C && w.kind != U_NONE; c0 += FX_BLOCK) {
        const fx_ssize n = C - c0 < FX_BLOCK ? C - c0 : FX_BLOCK;
        const T *pv = FXN(load)(xrow + c0 * xs, xs, k->x.dtype, n, xbuf);
        const T *uv = w.kind == U_VEC ? FXN(u_block)(k, trow, c0, n, ubuf, tbuf) : NULL;
        T *gd = grow ? FXN(gdst)(grow + c0 * gs, gs, k->g.dtype, gbuf) : NULL;
        s += FXN(probs_block)(pv, uv, w.u0, n, lo, hi, &bad, gd, (T)gw);
        if (gd) FXN(gflush)(grow + c0 * gs, gs, k->g.dtype, n, gd);
    }
    if (!k->dense) { /* the label's own term (1-ls) w_y */
        const T pc = FXM(fx_clip)(py, lo, hi);
        s += w.lab * -(double)FXM(fx_log)(pc);
        bad |= (py < 0) | (py > 1);
        if (grow) {
            const double a_y = w.lab + FXN(u_at)(k, trow, y);
            FXN(store1)(grow + y * gs, k->g.dtype, ((py < lo) | (py > hi)) ? 0.0 : gw * (-a_y / (double)py));
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
    T xbuf[FX_LANES], tbuf[FX_LANES], gbuf[FX_LANES], py[FX_LANES], gwt[FX_LANES], a[FX_LANES];
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
            const int64_t v = fx_label(k->lab + o * k->lab_so + (i0 + j) * k->lab_si, k->lab_dtype);
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
            for (fx_ssize j = 0; j < n; j++) a[j] = FXN(dense_weight)(wc, t[j], keep, add);
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
            T *gv = FXN(gdst)(go + c * k->g.sc, k->g.si, k->g.dtype, gbuf);
            for (fx_ssize j = 0; j < n; j++) {
                T v = pv[j];
                gv[j] = SEL((v < lo) | (v > hi), (T)0, gwt[j] * (-a[j] / v));
            }
            FXN(gflush)(go + c * k->g.sc, k->g.si, k->g.dtype, n, gv);
        }
    }
    fx_ssize first_bad = -1;
    for (fx_ssize j = 0; j < n; j++) {
        if (!k->dense) {
            if (y[j] < 0) { /* ignored: loss 0, gradient 0, not range-checked */
                s[j] = 0;
                out[j] = 0;
                if (go) FXN(fill)(go + j * k->g.si, k->g.sc, k->g.dtype, C, (T)0);
            } else {
                const T pc = FXM(fx_clip)(py[j], lo, hi);
                s[j] += lab[j] * -(double)FXM(fx_log)(pc);
                out[j] |= (py[j] < 0) | (py[j] > 1);
                if (go) {
                    const double a_y = lab[j] + FXN(u_at)(k, NULL, y[j]);
                    FXN(store1)(go + j * k->g.si + y[j] * k->g.sc, k->g.dtype,
                                ((py[j] < lo) | (py[j] > hi)) ? 0.0 : gwv[j] * (-a_y / (double)py[j]));
                }
            }
        }
        if (out[j] && first_bad < 0) first_bad = i0 + j;
    }
    fx_store_losses(&k->loss[o * k->n_i + i0 - k->loss_r0], s, n, k->stream_loss);
    return first_bad;
}
