/* Test hooks: this ISA's vector exp and log over an array.
 * A template for one compute type, included by fx_kernels_isa.h once per type with
 * FX_T (float/double), FX_S (f32/f64), FX_K (int32_t/int64_t: ordering keys) and
 * FX_CODE (FX_F32/FX_F64) defined; T, FXN(name) (this type's functions: name_f32)
 * and FXM(name) (fx_math.h helpers) follow from them. */

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
