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
