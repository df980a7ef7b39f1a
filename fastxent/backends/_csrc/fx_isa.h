/* Whether this build has per-ISA kernel tables: x86-64 with GCC or clang (target
 * pragmas and __builtin_cpu_supports). Elsewhere only the default table exists. */
#ifndef FX_ISA_H
#define FX_ISA_H
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) && !defined(FX_NO_ISA_TABLES)
#define FX_HAVE_ISA_TABLES 1
#else
#define FX_HAVE_ISA_TABLES 0
#endif
#endif
