/* Per-class target weights of the softmax and probability kernels (fx_softmax.h,
 * fx_probs.h): sparse labels with label smoothing, and dense targets.
 * A template for one compute type, included by fx_kernels_isa.h once per type with
 * FX_T (float/double), FX_S (f32/f64), FX_K (int32_t/int64_t: ordering keys) and
 * FX_CODE (FX_F32/FX_F64) defined; T, FXN(name) (this type's functions: name_f32)
 * and FXM(name) (fx_math.h helpers) follow from them. */


/* Per-class target weights beyond a sparse label's own term:
 *   sparse:       u_c = (ls/C) w_c      (the label adds (1-ls) w_y at c = y)
 *   categorical:  u_c = w_c (t_c (1-ls) + ls/C)
 * U_NONE: all zero (sparse, ls = 0); U_CONST: all equal to u0 (sparse, uniform
 * class weights); U_VEC: a vector per block.
 * A weight the formula does not use changes nothing (it may be inf or NaN): u_c
 * is exactly 0 where the target coefficient is 0, and with ls == 0 the smoothing
 * term (ls/C) sum_c w_c is not formed at all (no 0 * inf). */
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

/* w (t keep + add): a dense target's class weight, 0 where the coefficient is 0. */
FX_INLINE T FXN(dense_weight)(T w, T t, T keep, T add)
{
    const T coef = t * keep + add;
    return SEL(coef != 0, w * coef, (T)0);
}

static FXN(weights) FXN(weights_for)(const fx_call *k, fx_ssize y)
{
    FXN(weights) w;
    double per = k->ls_per_c;
    if (k->dense) {
        w.kind = U_VEC; w.u0 = 0; w.lab = 0; w.A = 0;
    } else {
        w.lab = (1.0 - k->ls) * k->cw[y];
        w.A = k->ls == 0 ? w.lab : w.lab + per * k->cw_sum;
        w.kind = k->ls == 0 ? U_NONE : (k->cw_uniform ? U_CONST : U_VEC);
        w.u0 = k->ls == 0 ? (T)0 : (T)(per * k->cw0);
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
        if (k->cw_uniform) { /* no float64 weight read and narrowed per element */
            const T w0 = (T)k->cw0;
            for (fx_ssize c = 0; c < n; c++) buf[c] = FXN(dense_weight)(w0, t[c], keep, add);
        } else {
            for (fx_ssize c = 0; c < n; c++) buf[c] = FXN(dense_weight)((T)k->cw[c0 + c], t[c], keep, add);
        }
    } else {
        for (fx_ssize c = 0; c < n; c++) buf[c] = (T)(per * k->cw[c0 + c]);
    }
    return buf;
}

/* The same weight for one class (fix-ups at the label and at the argmax). */
FX_INLINE double FXN(u_at)(const fx_call *k, const char *trow, fx_ssize c)
{
    const double per = k->ls_per_c;
    if (k->dense) {
        T t = FXN(load1)(trow + c * k->t.sc, k->t.dtype);
        return (double)FXN(dense_weight)((T)k->cw[c], t, (T)(1.0 - k->ls), (T)per);
    }
    const double w = k->ls == 0 ? 0.0 : k->cw[c]; /* per == 0: no 0 * inf */
    return (double)(T)(per * w);
}
