/* Kernels for the baseline ISA of the target (SSE2 on x86-64): always built, the
 * fallback on any CPU and the only table on other architectures. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "fx_common.h"

#define FX_ISA default
#define FX_ISA_NAME "default"
#include "fx_kernels_isa.h"
