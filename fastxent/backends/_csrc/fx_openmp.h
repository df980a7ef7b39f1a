/* OpenMP when the build has it, a serial stand-in when it does not. */
#ifndef FX_OPENMP_H
#define FX_OPENMP_H
#ifdef _OPENMP
#include <omp.h>
#define FX_OPENMP 1
static inline int fx_omp_max_threads(void) { return omp_get_max_threads(); }
#else
#define FX_OPENMP 0
static inline int fx_omp_max_threads(void) { return 1; }
#endif
#endif
