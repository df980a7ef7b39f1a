/* Runtime choice of the kernel table, and the fork guard.
 *
 * Each ISA's kernels are compiled in their own translation unit (fx_isa_*.c) with
 * a target pragma; this file, compiled for the baseline, picks the widest table
 * the CPU runs at import (or the one FASTXENT_SIMD / _set_simd names, lower ones
 * only: that is how the tests reach the SSE2 table on an AVX2 machine). */
#include <stdlib.h>
#include <string.h>
#include "fx_common.h"
#include "fx_isa.h"

#if !defined(_WIN32)
#include <pthread.h>
#endif

extern const fx_table fx_table_default;
#if FX_HAVE_ISA_TABLES
extern const fx_table fx_table_avx2;
extern const fx_table fx_table_avx512;
#endif

int fx_cpu_has(const char *name)
{
    if (strcmp(name, "default") == 0) return 1;
#if FX_HAVE_ISA_TABLES
    __builtin_cpu_init();
    /* the same feature sets as the target pragmas (x86-64-v3 / -v4) */
    int v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi") &&
             __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
    if (strcmp(name, "avx2") == 0) return v3;
    if (strcmp(name, "avx512") == 0)
        return v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vl");
#endif
    return 0;
}

const char *fx_compiled_isas(void)
{
#if FX_HAVE_ISA_TABLES
    return "default,avx2,avx512";
#else
    return "default";
#endif
}

static const fx_table *table_named(const char *name)
{
    if (strcmp(name, "default") == 0) return &fx_table_default;
#if FX_HAVE_ISA_TABLES
    if (strcmp(name, "avx2") == 0) return &fx_table_avx2;
    if (strcmp(name, "avx512") == 0) return &fx_table_avx512;
#endif
    return NULL;
}

static const fx_table *active_table = NULL;

static const fx_table *best_table(void)
{
    if (fx_cpu_has("avx512")) return table_named("avx512");
    if (fx_cpu_has("avx2")) return table_named("avx2");
    return &fx_table_default;
}

const fx_table *fx_active(void)
{
    if (!active_table) active_table = best_table();
    return active_table;
}

/* 0: selected; -1: unknown or not compiled; -2: this CPU cannot run it. */
int fx_select(const char *name)
{
    if (strcmp(name, "auto") == 0) { active_table = best_table(); return 0; }
    const fx_table *t = table_named(name);
    if (!t) return -1;
    if (!fx_cpu_has(name)) return -2;
    active_table = t;
    return 0;
}

/* Fork guard: GNU OpenMP's thread pool does not survive fork(); a child that
 * enters a parallel region after its parent used one hangs. The kernels note
 * each parallel use, and a child forked after one runs serially. */
static volatile int omp_used = 0;
static volatile int forked_after_omp = 0;

static void on_fork_child(void) { forked_after_omp = omp_used; }

void fx_fork_guard_install(void)
{
#if !defined(_WIN32)
    static int done = 0;
    if (!done) { pthread_atfork(NULL, NULL, on_fork_child); done = 1; }
#endif
}

void fx_note_parallel_use(void) { omp_used = 1; }
int fx_in_forked_child(void) { return forked_after_omp; }
