/* The labels' range check of the compiled call (fastxent/_fastcall.pyx): how many
 * of n int64 or int32 labels are not ignore_index, or -1 when one outside [0, c)
 * is not ignored -- _validate._check_label_range's rule. No early exit, and the
 * range test is one unsigned compare (a negative label wraps above c), so the loop
 * vectorises at the table's width: labels are read at cache speed, where a
 * compare-and-branch per label costs as much as the gather-log's own loop.
 * Included once per instruction set by fx_kernels_isa.h. */

#define FX_LABEL_SCAN(name, L)                                                      \
    static fx_ssize name(const L *lab, fx_ssize n, fx_ssize c, int64_t ignore,      \
                         int has_ignore)                                           \
    {                                                                              \
        /* all in uint64_t: mixed widths keep GCC from vectorising */              \
        const uint64_t ign = (uint64_t)ignore, on = has_ignore ? 1 : 0;            \
        uint64_t ignored = 0, bad = 0;                                             \
        for (fx_ssize r = 0; r < n; r++) {                                         \
            const uint64_t v = (uint64_t)(int64_t)lab[r];                          \
            const uint64_t skip = (uint64_t)(v == ign) & on;                       \
            ignored += skip;                                                       \
            bad |= (uint64_t)(v >= (uint64_t)c) & (skip ^ 1);                      \
        }                                                                          \
        return bad ? -1 : n - (fx_ssize)ignored;                                   \
    }
FX_LABEL_SCAN(label_scan_i64, int64_t)
FX_LABEL_SCAN(label_scan_i32, int32_t)
#undef FX_LABEL_SCAN

/* The table's entry: int64 labels (labels64) or int32. */
static fx_ssize valid_label_rows(const char *lab, int labels64, fx_ssize n, fx_ssize c, int64_t ignore,
                                 int has_ignore)
{
    if (labels64) return label_scan_i64((const int64_t *)lab, n, c, ignore, has_ignore);
    return label_scan_i32((const int32_t *)lab, n, c, ignore, has_ignore);
}
