/* Lane sums: float64 sums over a row that GCC vectorises without -ffast-math.
 *
 * GCC does not reassociate a single float accumulator, so every sum over a row is
 * written with independent lane accumulators. Each lane adds in a fixed order, so
 * a result depends on neither the thread count nor the call. Used by the kernel
 * families (fx_softmax.h, fx_probs.h, fx_binary.h); FX_RUNSUM refers to the
 * compute type T of the family that expands it. */
#ifndef FX_LANESUM_H
#define FX_LANESUM_H

/* RESULT = sum_{c < N} (double)F(c) with 8 independent float64 lane accumulators,
 * in every table (with 16 in the AVX-512 table GCC left the loop scalar). GCC
 * vectorises the loop as one reduction group, accumulators in registers, without
 * reassociating anything. Scalars rather than an array: with an array GCC
 * vectorises only the inner lane loop and keeps the sums in memory.
 * PRE(c) runs once per step (hooks); prefetches there would stop vectorisation. */
#define FX_NOPRE(c) ((void)0)
#define FX_LANESUM8_(F, c_) \
    a0_ += (double)F(c_);     a1_ += (double)F(c_ + 1); a2_ += (double)F(c_ + 2); \
    a3_ += (double)F(c_ + 3); a4_ += (double)F(c_ + 4); a5_ += (double)F(c_ + 5); \
    a6_ += (double)F(c_ + 6); a7_ += (double)F(c_ + 7);
#define FX_LANESUM(RESULT, N, F, PRE)                                                      \
    do {                                                                                   \
        double a0_ = 0, a1_ = 0, a2_ = 0, a3_ = 0, a4_ = 0, a5_ = 0, a6_ = 0, a7_ = 0;     \
        fx_ssize c_ = 0;                                                                   \
        for (; c_ + 8 <= (N); c_ += 8) {                                                   \
            PRE(c_);                                                                       \
            FX_LANESUM8_(F, c_)                                                            \
        }                                                                                  \
        double s_ = ((a0_ + a1_) + (a2_ + a3_)) + ((a4_ + a5_) + (a6_ + a7_));             \
        for (; c_ < (N); c_++) s_ += (double)F(c_);                                        \
        RESULT = s_;                                                                       \
    } while (0)

/* RESULT = sum_{c < N} (double)F(c0, j), c = c0 + j, for the exp sums: T lanes (8,
 * or 16 with FX_LANES16) add FX_RUN elements at a time (16 or 8 terms a lane), and
 * only each run's lane sums are converted and added into float64 lanes. Summing
 * float32 exps straight into float64 costs a conversion, an extract and a float64
 * add per 4 elements, more than a third of the exp's own operations; a run's
 * float32 lane sum of at most 16 positive terms is off by < 1e-6 relative (the
 * float32 tolerance is 1e-5), and the sum over runs, hence over a 128k-class
 * row, stays float64. FM(c0, j) is F with the element at j == skr left out: the
 * one run holding it (skr = SKIP - c0 in [0, run length)) uses FM, every other
 * run F, so the other vector steps carry no mask. PRE(c0) runs once per run. */
#define FX_RUN 128
#define FX_RUN8_(F, j_) \
    f0_ += F(c0_, j_);     f1_ += F(c0_, j_ + 1); f2_ += F(c0_, j_ + 2); \
    f3_ += F(c0_, j_ + 3); f4_ += F(c0_, j_ + 4); f5_ += F(c0_, j_ + 5); \
    f6_ += F(c0_, j_ + 6); f7_ += F(c0_, j_ + 7);
#ifdef FX_LANES16
#define FX_RUNW 16
#define FX_RUNSTEP_(F, j_) FX_RUN8_(F, j_) \
    g0_ += F(c0_, j_ + 8);  g1_ += F(c0_, j_ + 9);  g2_ += F(c0_, j_ + 10); \
    g3_ += F(c0_, j_ + 11); g4_ += F(c0_, j_ + 12); g5_ += F(c0_, j_ + 13); \
    g6_ += F(c0_, j_ + 14); g7_ += F(c0_, j_ + 15);
#define FX_RUNG_DECL T g0_ = 0, g1_ = 0, g2_ = 0, g3_ = 0, g4_ = 0, g5_ = 0, g6_ = 0, g7_ = 0;
#define FX_RUNG_LANES , g0_, g1_, g2_, g3_, g4_, g5_, g6_, g7_
/* lanes j and j + 8 first, then the tree of FX_LANESUM */
#define FX_RUNG_FOLD(a_) \
    for (int q_ = 0; q_ < 8; q_++) a_[q_] += a_[q_ + 8];
#else
#define FX_RUNW 8
#define FX_RUNSTEP_(F, j_) FX_RUN8_(F, j_)
#define FX_RUNG_DECL
#define FX_RUNG_LANES
#define FX_RUNG_FOLD(a_)
#endif
/* One run of len_ elements (from c0_) into the T lane sums f0_ .. f7_ (and FX_RUNG's
 * lanes): FM where the run holds the skipped index (skr_, relative to c0_), F elsewhere.
 * Shared by FX_RUNSUM and FX_RUNSUM1. */
#define FX_RUN_LANES_(F, FM)                                                               \
    T f0_ = 0, f1_ = 0, f2_ = 0, f3_ = 0, f4_ = 0, f5_ = 0, f6_ = 0, f7_ = 0;              \
    FX_RUNG_DECL                                                                           \
    if (skr_ >= 0 && skr_ < len_) {                                                        \
        const int skr = (int)skr_;                                                         \
        for (int j_ = 0; j_ < len_; j_ += FX_RUNW) { FX_RUNSTEP_(FM, j_) }                \
    } else {                                                                               \
        for (int j_ = 0; j_ < len_; j_ += FX_RUNW) { FX_RUNSTEP_(F, j_) }                 \
    }
#define FX_RUNSUM(RESULT, N, F, FM, SKIP, PRE)                                                \
    do {                                                                                   \
        double a_[FX_RUNW] = {0};                                                          \
        const fx_ssize nv_ = (N) - (N) % FX_RUNW; /* end of the vector steps */          \
        fx_ssize c0_ = 0;                                                                  \
        for (; c0_ < nv_; c0_ += FX_RUN) {                                                 \
            const int len_ = (int)(nv_ - c0_ < FX_RUN ? nv_ - c0_ : FX_RUN);               \
            const fx_ssize skr_ = (SKIP) - c0_;                                            \
            PRE(c0_);                                                                      \
            FX_RUN_LANES_(F, FM)                                                           \
            {   /* the run's lane sums into the float64 lanes through an array and a \
                 * loop: with AVX-512 GCC makes that two vcvtps2pd and two vector adds \
                 * where scalar variables took 16 extracts, conversions and adds */  \
                const T f_[FX_RUNW] = {f0_, f1_, f2_, f3_, f4_, f5_, f6_, f7_ FX_RUNG_LANES}; \
                for (int q_ = 0; q_ < FX_RUNW; q_++) a_[q_] += (double)f_[q_];             \
            }                                                                              \
        }                                                                                  \
        FX_RUNG_FOLD(a_)                                                                   \
        double s_ = ((a_[0] + a_[1]) + (a_[2] + a_[3])) + ((a_[4] + a_[5]) + (a_[6] + a_[7])); \
        for (c0_ = nv_; c0_ < (N); c0_++) {                                                \
            const fx_ssize skr = (SKIP) - c0_;                                             \
            s_ += (double)FM(c0_, 0);                                                      \
        }                                                                                  \
        RESULT = s_;                                                                       \
    } while (0)

/* FX_RUNSUM over one run (N <= FX_RUN, N a multiple of FX_RUNW: no scalar tail),
 * for short rows: the run's lane sums widen to float64 as in FX_RUNSUM, then fold
 * in halves -- lanes q and q + 4, q and q + 2, then 0 and 1 -- which vectorises as
 * a few shuffles and adds, where FX_RUNSUM's tree became extracts and scalar adds:
 * once a row, that cost more than a short row's exps. */
#define FX_RUNSUM1(RESULT, N, F, FM, SKIP)                                                    \
    do {                                                                                   \
        const fx_ssize c0_ = 0;                                                            \
        const int len_ = (int)(N);                                                         \
        const fx_ssize skr_ = (SKIP);                                                      \
        FX_RUN_LANES_(F, FM)                                                               \
        const T f_[FX_RUNW] = {f0_, f1_, f2_, f3_, f4_, f5_, f6_, f7_ FX_RUNG_LANES};      \
        double a_[FX_RUNW];                                                                \
        for (int q_ = 0; q_ < FX_RUNW; q_++) a_[q_] = (double)f_[q_];                      \
        FX_RUNG_FOLD(a_)                                                                   \
        for (int q_ = 0; q_ < 4; q_++) a_[q_] += a_[q_ + 4];                               \
        for (int q_ = 0; q_ < 2; q_++) a_[q_] += a_[q_ + 2];                               \
        RESULT = a_[0] + a_[1];                                                            \
    } while (0)

#endif /* FX_LANESUM_H */
