/* Kernels for x86-64-v3 (AVX2, FMA, F16C, BMI2), chosen at import when the CPU
 * has them. The pragma applies to everything below it, inlined helpers included. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "fx_common.h"
#include "fx_isa.h"

#if FX_HAVE_ISA_TABLES
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx,avx2,fma,f16c,bmi,bmi2,lzcnt,movbe,popcnt"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx,avx2,fma,f16c,bmi,bmi2,lzcnt,movbe,popcnt")
#endif

#define FX_ISA avx2
#define FX_ISA_NAME "avx2"
#include "fx_kernels_isa.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
