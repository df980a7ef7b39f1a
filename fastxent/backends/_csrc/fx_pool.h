/* The extension's own thread pool: what the Cython drivers run their parallel loops on.
 *
 * Why not OpenMP regions: a region ends at a join barrier that waits for every team
 * thread, including one the OS has not scheduled yet (another process keeps its core
 * busy) -- a 50 us call then takes a scheduler time slice, several ms. Here the
 * caller claims items alongside the pool threads and returns as soon as every item
 * has run: a thread that had not started an item by then is not waited for.
 *
 * fx_pool_run(fn, ctx, n_items, workers) calls fn(ctx, item, slot) once for every
 * item in [0, n_items), on the calling thread (slot 0) and up to workers - 1 pool
 * threads (pool thread t is slot t + 1, so slot < workers). Items are claimed one at
 * a time from a shared counter; fn must not depend on which slot runs an item, only
 * use the slot to pick per-thread scratch. It returns once every item has run; no
 * pool thread touches fn's ctx after that (a late thread finds the job closed).
 *
 * - workers <= 1, n_items <= 1, a forked child (the pool's threads do not survive
 *   fork) and a call made while another caller's job is running (calls from several
 *   Python threads without the GIL) all run every item on the calling thread, in
 *   order: a job never waits for another.
 * - Threads are started on first need (as many as the largest `workers` asked so
 *   far, minus one, at most FX_POOL_MAX_THREADS), then spin briefly after each job
 *   (back-to-back calls find them awake) before they sleep (a futex on Linux, a
 *   condition variable elsewhere); a caller makes a wake-up system call only when
 *   a thread sleeps.
 * - Regions while a team is awake (Linux, OpenMP builds, the main thread): another
 *   OpenMP team of this process -- torch's, sharing libgomp with the extension --
 *   spins for milliseconds after each of its own regions and holds the core a pool
 *   thread needs, so right after torch's calls every chunk ran on the caller. When a
 *   pool thread did not join a job although it was awake (or its last wake-up came
 *   late), the next job runs as an OpenMP region instead, on that spinning team: it
 *   starts at once. A region whose join barrier kept the caller waiting a scheduler
 *   slice (a team thread the OS had not scheduled), or two in a row that kept it
 *   waiting beyond its own share (the team was not awake after all; one such wait
 *   may be its wake-up), hand the jobs back to the pool for 20 ms, doubled after
 *   each further such try up to 1.6 s, so that a core kept busy by another process
 *   costs a slice only that rarely. A forked child never runs regions.
 * - Windows: an OpenMP region claims the same items (its join barrier stays), or
 *   serial without OpenMP.
 */
#ifndef FX_POOL_H
#define FX_POOL_H

#include "fx_common.h"

/* Pool threads at most: a job has up to 4096 workers, fastxent's largest thread count
 * (fastxent._config.MAX_THREADS), so every count a call may ask for is honoured. */
#define FX_POOL_MAX_THREADS 4095

typedef void (*fx_pool_fn)(void *ctx, fx_ssize item, int slot);

/* Run fn over items 0 .. n_items-1 with up to `workers` threads (the caller
 * included). Returns how many threads ran at least one item (1 when serial). */
int fx_pool_run(fx_pool_fn fn, void *ctx, fx_ssize n_items, int workers);

/* Whether a run can use more than one thread here (pthreads or OpenMP, not a
 * forked child of a process whose pool had started). */
int fx_pool_parallel(void);

/* Pool threads started so far (0 before the first parallel run). */
int fx_pool_threads(void);

/* Whether this thread's jobs may run as OpenMP regions (see above), and a test
 * hook: run its next job as one (on = 1) or on the pool (on = 0); no effect where
 * its jobs may not be regions. */
int fx_pool_regions(void);
void fx_pool_region_next(int on);

/* How the pool waits and runs: "futex", "condition variable", "openmp" or "serial". */
const char *fx_pool_kind(void);

/* *p = the lowest non-negative of *p and v (-1 means none yet), atomically: the
 * first bad row of a job whose items report concurrently. */
void fx_pool_min(fx_ssize *p, fx_ssize v);

#endif
