/* The floor under the gather-log: how long the machine takes to read one float per
 * row of a 200,000 x C float32 matrix (a random column per row) and sum their logs,
 * with nothing else in the loop. C = 1,000 and C = 10,000, the gather-log target's
 * two sizes, on as many threads as OMP_NUM_THREADS says.
 *
 *     gcc -O2 -march=native -fopenmp benchmarks/gather_floor.c -o /tmp/gather_floor -lm
 *     OMP_NUM_THREADS=2 /tmp/gather_floor
 *
 * Each row's value is prefetched 64 rows ahead, into L1 (hint 0) or L2 (hint 2),
 * as the kernels do; 15 timings, median and best. Both sizes read the same number of
 * cache lines, so what grows with C is the address translation: rows 40 KB apart
 * each need a page-table walk whose entries are not cached with the last row's. */
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#define ROWS 200000L
#define AHEAD 64
#define TIMINGS 15

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#define GATHER(NAME, HINT)                                                         \
    static double NAME(const float *p, const int64_t *y, long cols)                \
    {                                                                              \
        double s = 0;                                                              \
        _Pragma("omp parallel for schedule(static) reduction(+ : s)")              \
        for (long i = 0; i < ROWS; i++) {                                          \
            __builtin_prefetch(p + (i + AHEAD) * cols + y[i + AHEAD], 0, HINT);     \
            s += logf(p[i * cols + y[i]]);                                         \
        }                                                                          \
        return s;                                                                  \
    }
GATHER(gather_l1, 0)
GATHER(gather_l2, 2)

int main(void)
{
    const long sizes[2] = {1000, 10000};
    for (int k = 0; k < 2; k++) {
        const long cols = sizes[k];
        /* rows past the end for the prefetches, in 2 MiB pages as NumPy's are */
        size_t bytes = (size_t)(ROWS + AHEAD) * cols * sizeof(float);
        bytes = (bytes + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
        float *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { perror("mmap"); return 1; }
        madvise(p, bytes, MADV_HUGEPAGE);
        for (size_t j = 0; j < bytes / sizeof(float); j++) p[j] = 0.5f;
        int64_t *y = malloc((ROWS + AHEAD) * sizeof(int64_t));
        srand(1);
        for (long i = 0; i < ROWS + AHEAD; i++) y[i] = rand() % cols;
        for (int hint = 0; hint < 2; hint++) {
            double t[TIMINGS], check = 0;
            for (int r = 0; r < TIMINGS; r++) {
                double start = now();
                check += hint ? gather_l2(p, y, cols) : gather_l1(p, y, cols);
                t[r] = now() - start;
            }
            qsort(t, TIMINGS, sizeof(double), by_value);
            printf("200,000 x %5ld, prefetch into %s: median %.3f ms, best %.3f ms (sum %.0f)\n",
                   cols, hint ? "L2" : "L1", t[TIMINGS / 2] * 1e3, t[0] * 1e3, check);
        }
        munmap(p, bytes);
        free(y);
    }
    return 0;
}
