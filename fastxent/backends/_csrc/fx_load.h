/* Loads and stores: any supported dtype at any byte stride, read as T; gradients
 * written in place when contiguous, through a buffer otherwise.
 * A template for one compute type, included by fx_kernels_isa.h once per type with
 * FX_T (float/double), FX_S (f32/f64), FX_K (int32_t/int64_t: ordering keys) and
 * FX_CODE (FX_F32/FX_F64) defined; T, FXN(name) (this type's functions: name_f32)
 * and FXM(name) (fx_math.h helpers) follow from them. */

static inline double FXN(rd_f64)(const char *p) { double v; memcpy(&v, p, 8); return v; }

/* One element of any supported dtype, as T. */
static inline T FXN(load1)(const char *p, int dtype)
{
    switch (dtype) {
    case FX_F32: { float v; memcpy(&v, p, 4); return (T)v; }
    case FX_F64: { double v; memcpy(&v, p, 8); return (T)v; }
    case FX_F16: { uint16_t v; memcpy(&v, p, 2); return (T)fx_half_to_f32(v); }
    case FX_BF16: { uint16_t v; memcpy(&v, p, 2); return (T)fx_bf16_to_f32(v); }
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
    case FX_BF16: FX_CONVERT_LOOP(uint16_t, fx_bf16_to_f32(v))
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

/* Gradient stores. The gradient's dtype is T's, or bfloat16 (FX_BF16) in the
 * float32 kernels when the caller's grad_out is bfloat16 (grad_out = x included):
 * values are computed in T and rounded to nearest even as they are written. */
#undef FX_G_BF16
#define FX_G_BF16(dtype) (FX_CODE == FX_F32 && (dtype) == FX_BF16)

/* Where a block of gradient goes: the output itself when contiguous, aligned T. */
static inline T *FXN(gdst)(char *base, fx_ssize stride, int dtype, T *buf)
{
    if (!FX_G_BF16(dtype) && stride == (fx_ssize)sizeof(T) && ((uintptr_t)base % sizeof(T)) == 0)
        return (T *)base;
    return buf;
}
static inline void FXN(gflush)(char *base, fx_ssize stride, int dtype, fx_ssize n, const T *dst)
{
    if ((const char *)dst == base) return; /* written in place */
    if (FX_G_BF16(dtype)) {
        if (stride == 2 && ((uintptr_t)base % 2) == 0) {
            uint16_t *d = (uint16_t *)base;
            for (fx_ssize c = 0; c < n; c++) d[c] = fx_f32_to_bf16((float)dst[c]);
        } else {
            for (fx_ssize c = 0; c < n; c++) {
                const uint16_t h = fx_f32_to_bf16((float)dst[c]);
                memcpy(base + c * stride, &h, 2);
            }
        }
        return;
    }
    for (fx_ssize c = 0; c < n; c++) memcpy(base + c * stride, &dst[c], sizeof(T));
}
static inline void FXN(store1)(char *p, int dtype, double v)
{
    if (FX_G_BF16(dtype)) {
        const uint16_t h = fx_f32_to_bf16((float)v);
        memcpy(p, &h, 2);
        return;
    }
    T w = (T)v;
    memcpy(p, &w, sizeof(T));
}

static void FXN(fill)(char *base, fx_ssize stride, int dtype, fx_ssize n, T v)
{
    if (FX_G_BF16(dtype)) {
        const uint16_t h = fx_f32_to_bf16((float)v);
        for (fx_ssize c = 0; c < n; c++) memcpy(base + c * stride, &h, 2);
    } else if (stride == (fx_ssize)sizeof(T) && ((uintptr_t)base % sizeof(T)) == 0) {
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
