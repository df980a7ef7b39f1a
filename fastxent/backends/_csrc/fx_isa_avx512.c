/* Kernels for x86-64-v4 (AVX-512 F/CD/BW/DQ/VL on top of x86-64-v3), chosen at
 * import when the CPU has them. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "fx_common.h"
#include "fx_isa.h"

#if FX_HAVE_ISA_TABLES
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx,avx2,fma,f16c,bmi,bmi2,lzcnt,movbe,popcnt,avx512f,avx512cd,avx512bw,avx512dq,avx512vl"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx,avx2,fma,f16c,bmi,bmi2,lzcnt,movbe,popcnt,avx512f,avx512cd,avx512bw,avx512dq,avx512vl")
#endif

#define FX_ISA avx512
#define FX_ISA_NAME "avx512"
#define FX_LANES16 /* 16 float32 lanes in the exp sums' runs: a step fills one zmm */
#define FX_AVX512_MASKS /* compares into mask registers (find_first) */
#include "fx_kernels_isa.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
