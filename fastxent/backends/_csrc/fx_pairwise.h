/* NumPy's pairwise summation of float64, for the block sums of per-row losses.
 * Compiled per ISA (the lanes of a leaf become vectors); a sum's bits do not
 * depend on the ISA: the additions and their order are NumPy's. */
#ifndef FX_PAIRWISE_H
#define FX_PAIRWISE_H

/* NumPy's pairwise_sum (its loops_utils), step for step: the same bits as np.sum
 * of a contiguous float64 array, which is what the general path's reduction
 * takes. Leaves of at most FX_PAIRWISE_LEAF values add in eight lanes. */
static inline double pairwise_sum_f64(const double *a, fx_ssize n)
{
    if (n < 8) {
        double res = 0.0;
        for (fx_ssize i = 0; i < n; i++) res += a[i];
        return res;
    }
    if (n <= FX_PAIRWISE_LEAF) {
        double r0 = a[0], r1 = a[1], r2 = a[2], r3 = a[3];
        double r4 = a[4], r5 = a[5], r6 = a[6], r7 = a[7];
        fx_ssize i = 8;
        for (; i < n - n % 8; i += 8) {
            r0 += a[i];     r1 += a[i + 1]; r2 += a[i + 2]; r3 += a[i + 3];
            r4 += a[i + 4]; r5 += a[i + 5]; r6 += a[i + 6]; r7 += a[i + 7];
        }
        double res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7));
        for (; i < n; i++) res += a[i];
        return res;
    }
    fx_ssize n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum_f64(a, n2) + pairwise_sum_f64(a + n2, n - n2);
}

/* The pairwise sums of s[0 .. n)'s leaves (n a multiple of FX_LEAF), one per leaf
 * into leaf[]: what a binary column task writes in block-sums mode (the block's
 * sum is then the pairwise tree over its leaves). */
static inline void fx_leaf_sums(const double *s, fx_ssize n, double *leaf)
{
    for (fx_ssize j0 = 0; j0 < n; j0 += FX_LEAF) leaf[j0 / FX_LEAF] = pairwise_sum_f64(s + j0, FX_LEAF);
}

#endif /* FX_PAIRWISE_H */
