/* Binary cross-entropy: binary_from_logits and binary_from_probs, row and column
 * forms. Element j of a row: y = t_j (1 - ls) + ls/2, pw = pos_weight[j, i];
 *   from logits:        l_j = (1-y) softplus(x) + pw y softplus(-x)
 *   from probabilities: l_j = -(pw y log(p) + (1-y) log(1-p)), p = clip(x)
 * the row's loss their mean. y and 1 - y are formed in float64 from the target as
 * given (in the float32 kernels too: a target 1 - 1e-9 keeps its 1 - y = 1e-9,
 * and label smoothing 1e-9 is not rounded away), then rounded to the compute type.
 * A target outside [0, 1] is reported like an out-of-range probability (the
 * kernel's first bad row); NaN is not out of range.
 * A template for one compute type, included by fx_kernels_isa.h once per type with
 * FX_T (float/double), FX_S (f32/f64), FX_K (int32_t/int64_t: ordering keys) and
 * FX_CODE (FX_F32/FX_F64) defined; T, FXN(name) (this type's functions: name_f32)
 * and FXM(name) (fx_math.h helpers) follow from them. */

/* A block of targets as y and neg = 1 - y in T (y may point at the targets
 * themselves), and out-of-range flags: *bad |= any, and with out, out[c] |= each.
 * float32 holds every value of the narrow target dtypes (float16, float32, bool,
 * 8- and 16-bit integers) exactly: the float32 kernels read those as float32, and
 * without label smoothing take y = t and 1.0f - t, which rounds 1 - t once, to
 * the value the float64 route rounds to. */
static const T *FXN(bce_targets)(const fx_call *k, const char *base, fx_ssize stride, int dtype, fx_ssize n,
                                 T *ybuf, T *neg, double *dbuf, int32_t *out, int *bad)
{
    int any = 0;
    const double keep = 1.0 - k->ls, half_ls = k->ls / 2;
    const int narrow = FX_CODE == FX_F32 && dtype != FX_F64 && dtype != FX_I32 && dtype != FX_U32 &&
                       dtype != FX_I64 && dtype != FX_U64;
#define FX_RANGE(t) (((t) < 0) | ((t) > 1))
    if (narrow && k->ls == 0) {
        const T *t = FXN(load)(base, stride, dtype, n, ybuf);
        for (fx_ssize c = 0; c < n; c++) neg[c] = (T)1 - t[c];
        if (out) for (fx_ssize c = 0; c < n; c++) out[c] |= FX_RANGE(t[c]);
        else for (fx_ssize c = 0; c < n; c++) any |= FX_RANGE(t[c]);
        *bad |= any;
        return t;
    }
    /* one loop: the flag of t[c] is taken before y[c] may overwrite it (in place) */
#define FX_WIDE_LOOP(t, FLAG)                                         \
    for (fx_ssize c = 0; c < n; c++) {                                \
        const double tc = (double)(t)[c];                             \
        const double y = tc * keep + half_ls;                         \
        FLAG;                                                         \
        ybuf[c] = (T)y;                                               \
        neg[c] = (T)(1.0 - y);                                        \
    }
    if (narrow) {
        const T *t = FXN(load)(base, stride, dtype, n, ybuf);
        if (out) { FX_WIDE_LOOP(t, out[c] |= FX_RANGE(tc)) }
        else { FX_WIDE_LOOP(t, any |= FX_RANGE(tc)) }
    } else {
        const double *t = load_f64(base, stride, dtype, n, dbuf);
        if (out) { FX_WIDE_LOOP(t, out[c] |= FX_RANGE(tc)) }
        else { FX_WIDE_LOOP(t, any |= FX_RANGE(tc)) }
    }
#undef FX_WIDE_LOOP
#undef FX_RANGE
    *bad |= any;
    return ybuf;
}

/* From probabilities: p = clip(x), 1 - p formed in T; gradient 0 where clipped.
 * `probs` is 1, or 2 when p and 1 - p are normal for every x (bce_normal_logs):
 * the log without its zero, subnormal, negative and infinite cases then. */
FX_INLINE T FXN(bce_probs_loss)(int probs, T v, T y, T neg, T w, T lo, T hi)
{
    T p = FXM(fx_clip)(v, lo, hi);
    if (probs == 2) return -(w * y * FXM(fx_log_normal)(p) + neg * FXM(fx_log_normal)((T)1 - p));
    return -(w * y * FXM(fx_log)(p) + neg * FXM(fx_log)((T)1 - p));
}

/* 2 when every clipped p and 1 - p is normal (eps is: the API's smallest always
 * is; 1 - hi, the smallest 1 - p, is lo up to rounding), else 1. */
FX_INLINE int FXN(bce_normal_logs)(const fx_call *k)
{
    const T lo = (T)k->eps, hi = (T)1 - lo;
    return FXM(fx_log_normal_ok)(lo) && FXM(fx_log_normal_ok)((T)1 - hi) ? 2 : 1;
}
FX_INLINE T FXN(bce_probs_grad)(T v, T y, T neg, T w, T lo, T hi)
{
    return SEL((v < lo) | (v > hi), (T)0, -w * y / v + neg / ((T)1 - v));
}

/* e = exp(-|x|) and the softplus tails l = log1p(e) over a block, for the logits
 * loss and gradient, each in a loop of its own: in one loop, exp, log1p (a
 * division) and the loss make one long dependency chain per vector, longer than
 * the out-of-order window can overlap. Returns whether every x is finite: the
 * loss may then take its select-free _fin form. */
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
FX_INLINE double FXN(bce_block_w)(int probs, int unit, const T *x, const T *y, const T *neg, const T *pw,
                                  T pw0, fx_ssize n, T lo, T hi, int *bad, T *g, T gscale)
{
    double s;
    T e[FX_BLOCK], l[FX_BLOCK];
    const int fin = probs ? 0 : FXN(bce_tails)(x, n, e, l);
#define FX_BL(c) (probs  ? FXN(bce_probs_loss)(probs, x[c], y[c], neg[c], pw ? pw[c] : pw0, lo, hi) \
                  : unit ? FXM(fx_bce_logits_loss_unit)(x[c], l[c], y[c], neg[c])        \
                         : FXM(fx_bce_logits_loss)(x[c], l[c], y[c], neg[c], pw ? pw[c] : pw0))
#define FX_BL_FIN(c) (unit ? FXM(fx_bce_logits_loss_unit_fin)(x[c], l[c], y[c], neg[c]) \
                           : FXM(fx_bce_logits_loss_fin)(x[c], l[c], y[c], neg[c], pw ? pw[c] : pw0))
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
            const T w = pw ? pw[c] : pw0;
            g[c] = gscale * (probs ? FXN(bce_probs_grad)(x[c], y[c], neg[c], w, lo, hi)
                                   : FXM(fx_bce_logits_grad_e)(x[c], e[c], y[c], neg[c], w));
        }
    return s;
}

/* pw == NULL: every pos_weight is pw0 (the usual case), no per-element load;
 * unit: pw0 is 1 (the default), from logits: the short form of the loss */
FX_INLINE double FXN(bce_block)(int probs, const T *x, const T *y, const T *neg, const T *pw, T pw0,
                                fx_ssize n, T lo, T hi, int *bad, T *g, T gscale)
{
    if (pw) return FXN(bce_block_w)(probs, 0, x, y, neg, pw, 0, n, lo, hi, bad, g, gscale);
    if (!probs && pw0 == (T)1) return FXN(bce_block_w)(0, 1, x, y, neg, NULL, 1, n, lo, hi, bad, g, gscale);
    return FXN(bce_block_w)(probs, 0, x, y, neg, NULL, pw0, n, lo, hi, bad, g, gscale);
}

/* pos_weight values as T, or NULL when every one is k->pw0. */
static const T *FXN(pw_block)(const fx_call *k, const char *base, fx_ssize stride, fx_ssize n, T *buf)
{
    if (k->pw_const) return NULL;
    return FXN(load)(base, stride, FX_F64, n, buf);
}

FX_INLINE int FXN(bce_row)(int probs, const fx_call *k, fx_ssize o, fx_ssize i)
{
    const fx_ssize C = k->n_c;
    const char *xrow = k->x.data + o * k->x.so + i * k->x.si;
    const char *trow = k->t.data + o * k->t.so + i * k->t.si;
    const char *pwrow = k->pw + i * k->pw_si;
    char *grow = k->g.data ? k->g.data + o * k->g.so + i * k->g.si : NULL;
    const T lo = (T)k->eps, hi = (T)1 - lo;
    const T gscale = grow ? (T)(FXN(grad_weight)(k, o, i) / (double)C) : (T)0;
    T xbuf[FX_BLOCK], ybuf[FX_BLOCK], nbuf[FX_BLOCK], pbuf[FX_BLOCK], gbuf[FX_BLOCK];
    double dbuf[FX_BLOCK];
    double s = 0;
    int bad = 0;
    for (fx_ssize c0 = 0; c0 < C; c0 += FX_BLOCK) {
        const fx_ssize n = C - c0 < FX_BLOCK ? C - c0 : FX_BLOCK;
        const T *xv = FXN(load)(xrow + c0 * k->x.sc, k->x.sc, k->x.dtype, n, xbuf);
        const T *yv = FXN(bce_targets)(k, trow + c0 * k->t.sc, k->t.sc, k->t.dtype, n, ybuf, nbuf, dbuf, NULL, &bad);
        const T *pv = FXN(pw_block)(k, pwrow + c0 * k->pw_sc, k->pw_sc, n, pbuf);
        T *gd = grow ? FXN(gdst)(grow + c0 * k->g.sc, k->g.sc, k->g.dtype, gbuf) : NULL;
        s += FXN(bce_block)(probs, xv, yv, nbuf, pv, (T)k->pw0, n, lo, hi, &bad, gd, gscale);
        if (gd) FXN(gflush)(grow + c0 * k->g.sc, k->g.sc, k->g.dtype, n, gd);
    }
    k->loss[o * k->n_i + i - k->loss_r0] = s / (double)C;
    return bad;
}

/* Columns: lanes are rows, so the sum over labels is a lane-wise add (no
 * reduction across lanes); for C = 1 (axis=None) it is a flat element loop.
 * One class of a column task: lane-wise loss sums (pw == NULL: pw0 for all; unit:
 * pw0 is 1, from logits) and, with `grad`, the gradient times gsc in the same
 * pass: the logits loss and gradient share the exps e and tails l of bce_tails,
 * and x, t are read once. g may be x itself (in place): x[j] is read before g[j]
 * is written. */
FX_INLINE void FXN(bce_lanes)(int probs, int fin, int unit, int first, int grad, const T *x,
                              const T *e, const T *l, const T *y, const T *neg, const T *pw, T pw0, fx_ssize n,
                              T lo, T hi, double *s, int32_t *out, const T *gsc, T *g)
{
    for (fx_ssize j = 0; j < n; j++) {
        const T v = x[j], w = pw ? pw[j] : pw0;
        double loss = probs ? (double)FXN(bce_probs_loss)(probs, v, y[j], neg[j], w, lo, hi)
                    : unit  ? (double)(fin ? FXM(fx_bce_logits_loss_unit_fin)(v, l[j], y[j], neg[j])
                                           : FXM(fx_bce_logits_loss_unit)(v, l[j], y[j], neg[j]))
                    : fin   ? (double)FXM(fx_bce_logits_loss_fin)(v, l[j], y[j], neg[j], w)
                            : (double)FXM(fx_bce_logits_loss)(v, l[j], y[j], neg[j], w);
        s[j] = first ? loss : s[j] + loss;
        if (probs) out[j] |= (v < 0) | (v > 1);
        if (grad)
            g[j] = gsc[j] * (probs ? FXN(bce_probs_grad)(v, y[j], neg[j], w, lo, hi)
                                   : FXM(fx_bce_logits_grad_e)(v, e[j], y[j], neg[j], w));
    }
}

/* i0 + the first j with out[j] set, or -1. The early-exit search is a scalar loop
 * (an element's worth of time in a flat binary loss), so it runs only when the
 * vectorised OR of the flags finds a bad row. */
FX_INLINE fx_ssize FXN(first_out)(const int32_t *out, fx_ssize i0, fx_ssize n)
{
    int32_t any = 0;
    for (fx_ssize j = 0; j < n; j++) any |= out[j];
    if (!any) return -1;
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
    const T lo = (T)k->eps, hi = (T)1 - lo;
    const T pw0 = (T)k->pw0;
    const int unit = !probs && pw0 == (T)1; /* the short loss form, where pw is NULL */
    T xbuf[FX_LANES], ybuf[FX_LANES], nbuf[FX_LANES], pbuf[FX_LANES], gbuf[FX_LANES], gsc[FX_LANES];
    T e[FX_LANES], l[FX_LANES];
    double sbuf[FX_LANES], dbuf[FX_LANES];
    int32_t out[FX_LANES];
    int any = 0;
    double *dst = &k->loss[o * k->n_i + i0 - k->loss_r0];
    /* one class (a flat binary loss): the lane sums are the losses, written in place,
     * or with leaf_sums kept in L1 and only the sums of their leaves written. (Summed
     * from this buffer, not as the losses are computed: a summing loop would be
     * vectorised otherwise, and GCC may then fuse the other product of a loss into
     * its multiply-add, which changes the losses' bits.) */
    double *s = C == 1 && !k->stream_loss && !k->leaf_sums ? dst : sbuf;
    for (fx_ssize j = 0; j < n; j++) out[j] = 0;
    if (go)
        for (fx_ssize j = 0; j < n; j++) gsc[j] = (T)(FXN(grad_weight)(k, o, i0 + j) / (double)C);
    for (fx_ssize c = 0; c < C; c++) {
        const T *x = FXN(load)(xo + c * k->x.sc, k->x.si, k->x.dtype, n, xbuf);
        const T *y = FXN(bce_targets)(k, to + c * k->t.sc, k->t.si, k->t.dtype, n, ybuf, nbuf, dbuf, out, &any);
        const T *pw = FXN(pw_block)(k, k->pw + c * k->pw_sc + i0 * k->pw_si, k->pw_si, n, pbuf);
        T *g = go ? FXN(gdst)(go + c * k->g.sc, k->g.si, k->g.dtype, gbuf) : NULL;
        const int fin = probs ? 0 : FXN(bce_tails)(x, n, e, l);
        /* specialisations: first class or not (assign, no zeroing pass), pos_weight
         * per element or one value (`pw ? pw[j] : pw0` in one loop becomes a masked load,
         * which from pw == NULL takes a microcode assist on every vector), gradient or
         * not, and with one pos_weight, x all finite or not and that weight 1 or not */
#define FX_BCE_LANES_(fin, unit, first, grad, pw_, pw0_)                                              \
        FXN(bce_lanes)(probs, fin, unit, first, grad, x, e, l, y, nbuf, pw_, pw0_, n, lo, hi, s, out, gsc, g)
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
        if (g) FXN(gflush)(go + c * k->g.sc, k->g.si, k->g.dtype, n, g);
    }
    if (k->leaf_sums) {
        fx_leaf_sums(s, n, &k->loss[(o * k->n_i + i0 - k->loss_r0) / FX_LEAF]);
        return FXN(first_out)(out, i0, n);
    }
    if (C != 1) { /* the row mean, in a loop of its own (vectorised) */
        const double Cd = (double)C;
        for (fx_ssize j = 0; j < n; j++) s[j] = s[j] / Cd;
    }
    if (s != dst) fx_store_losses(dst, s, n, k->stream_loss);
    return FXN(first_out)(out, i0, n);
}

static int FXN(bce_logits_row)(const fx_call *k, fx_ssize o, fx_ssize i, fx_ssize y)
{
    (void)y;
    return FXN(bce_row)(0, k, o, i);
}
static int FXN(bce_probs_row)(const fx_call *k, fx_ssize o, fx_ssize i, fx_ssize y)
{
    (void)y;
    if (FXN(bce_normal_logs)(k) == 2) return FXN(bce_row)(2, k, o, i);
    return FXN(bce_row)(1, k, o, i);
}
static fx_ssize FXN(bce_logits_cols)(const fx_call *k, fx_ssize o, fx_ssize i0, fx_ssize n)
{
    return FXN(bce_cols)(0, k, o, i0, n);
}
static fx_ssize FXN(bce_probs_cols)(const fx_call *k, fx_ssize o, fx_ssize i0, fx_ssize n)
{
    if (FXN(bce_normal_logs)(k) == 2) return FXN(bce_cols)(2, k, o, i0, n);
    return FXN(bce_cols)(1, k, o, i0, n);
}
