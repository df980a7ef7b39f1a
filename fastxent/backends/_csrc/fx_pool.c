/* The extension's thread pool (see fx_pool.h for what it promises and why).
 *
 * One job at a time. A job is published in a fixed descriptor (fn, ctx, n, workers)
 * and claimed through one 64-bit word, `claim` = (job number << 24) | next chunk:
 * a claim is a compare-and-swap that succeeds only while that job is the current
 * one and has chunks left, so a thread that arrives late -- after the job ended,
 * or after a later job began -- fails it and never calls fn with a finished job's
 * ctx. Publishing first closes the word under the new job number (index CLOSED),
 * then writes the descriptor, then opens the word: a thread that read a descriptor
 * half-rewritten for the next job cannot claim with it (a seqlock, made safe by
 * sequentially consistent atomics throughout -- a handful per job).
 *
 * The caller counts finished chunks (`done`) and returns when all have run. Pool
 * threads wait for the next job number on `gen` (spin, then sleep); the caller
 * waits for chunks in flight on `done` (spin, then sleep: a sleeping caller frees
 * its core for a preempted pool thread to finish on). Each side counts its
 * sleepers, so a wake-up system call is made only when someone sleeps.
 */
#if !defined(_WIN32) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* syscall(), clock_gettime() and pthread_sigmask() under -std=c11 */
#endif
#include "fx_pool.h"
#if defined(_WIN32)
#include <windows.h>
#endif

/* ---------------------------------------------------------------- first bad row */

void fx_pool_min(fx_ssize *p, fx_ssize v)
{
    if (v < 0) return;
#if defined(_MSC_VER)
    fx_ssize cur = *(volatile fx_ssize *)p;
    while (cur < 0 || v < cur) {
        fx_ssize seen = (fx_ssize)InterlockedCompareExchange64((volatile LONG64 *)p, v, cur);
        if (seen == cur) return;
        cur = seen;
    }
#else
    fx_ssize cur = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (cur < 0 || v < cur) {
        if (__atomic_compare_exchange_n(p, &cur, v, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) return;
    }
#endif
}

/* Items [c * n / m, (c + 1) * n / m) form chunk c of m (m = n but for huge n),
 * without overflowing n * c. */
static inline fx_ssize chunk_start(fx_ssize c, fx_ssize n, fx_ssize m)
{
    fx_ssize base = n / m, extra = n % m;
    return c * base + (c < extra ? c : extra);
}

static int run_serial(fx_pool_fn fn, void *ctx, fx_ssize n_items)
{
    for (fx_ssize i = 0; i < n_items; i++) fn(ctx, i, 0);
    return 1;
}

#if defined(_WIN32)
/* ---------------------------------------------------------------- Windows */
#ifdef _OPENMP
#include <omp.h>
#endif

int fx_pool_run(fx_pool_fn fn, void *ctx, fx_ssize n_items, int workers)
{
    if (workers > n_items) workers = (int)n_items;
    if (workers > FX_POOL_MAX_THREADS + 1) workers = FX_POOL_MAX_THREADS + 1;
#ifdef _OPENMP
    if (workers > 1) {
        volatile LONG64 next = 0, ran = 0;
#pragma omp parallel num_threads(workers)
        {
            int slot = omp_get_thread_num(), mine = 0;
            for (;;) {
                LONG64 i = InterlockedIncrement64(&next) - 1;
                if (i >= n_items) break;
                fn(ctx, (fx_ssize)i, slot);
                mine = 1;
            }
            if (mine) InterlockedIncrement64(&ran);
        }
        return (int)ran;
    }
#endif
    return run_serial(fn, ctx, n_items);
}

#ifdef _OPENMP
int fx_pool_parallel(void) { return 1; }
const char *fx_pool_kind(void) { return "openmp"; }
#else
int fx_pool_parallel(void) { return 0; }
const char *fx_pool_kind(void) { return "serial"; }
#endif
int fx_pool_threads(void) { return 0; }
void fx_pool_region_next(int on) { (void)on; }
int fx_pool_regions(void) { return 0; }

#else
/* ---------------------------------------------------------------- POSIX threads */
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>
#if defined(__linux__) && !defined(FX_POOL_NO_FUTEX) /* (defined: test the fallback) */
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#define FX_POOL_FUTEX 1
#else
#define FX_POOL_FUTEX 0
#endif

#define IDX_BITS 24
#define IDX_MASK ((1ull << IDX_BITS) - 1)
#define CLOSED IDX_MASK                /* the claim index while a job is being published */
#define MAX_CHUNKS ((fx_ssize)IDX_MASK - 1)
#define WORKER_SPIN_NS 100000          /* a pool thread's spin after a job, before it sleeps */
#define CALLER_SPIN_NS 20000           /* the caller's spin for chunks in flight, before it sleeps */
#define WAKE_LATE_NS 200000            /* a wake-up this late: the thread's core was taken */

/* Hot words each on a cache line of its own: claim (every claim), done (every
 * finished chunk), gen and the descriptor (read once per job). */
#define LINE _Alignas(64)
static struct {
    LINE _Atomic uint64_t claim;     /* (job << IDX_BITS) | next chunk */
    LINE _Atomic uint32_t done;      /* chunks of the current job that have run */
    _Atomic int caller_sleeps;       /* the caller waits on `done` in the kernel */
    _Atomic int joined;              /* threads that claimed a chunk of the current job */
    LINE _Atomic uint32_t gen;       /* low bits of the current job number: pool threads wait on it */
    _Atomic int sleepers;            /* pool threads asleep, or about to be, on gen */
    _Atomic(fx_pool_fn) fn;          /* the descriptor of the current job */
    _Atomic(void *) ctx;
    _Atomic fx_ssize n_items;
    _Atomic fx_ssize n_chunks;
    _Atomic int workers;
    LINE _Atomic uint64_t woken_at;  /* now_ns of the caller's last wake-up call */
    _Atomic int woke_late;           /* a pool thread ran WAKE_LATE_NS or more after it */
    LINE _Atomic int owner;          /* 1 while a caller runs a job on the pool */
    _Atomic int gone;                /* a forked child: the threads did not survive */
    _Atomic int n_threads;           /* threads started; changed by the owner only */
    int start_failed;                /* pthread_create failed once: stop trying */
    uint64_t job;                    /* the owner's count of jobs published */
    uint32_t start_gen[FX_POOL_MAX_THREADS]; /* gen when thread t started */
} P;

static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

/* Installed just before the first pool thread starts, so it runs only in a child
 * of a process that has (or was starting) pool threads. Only the forking thread
 * exists in the child: it must never publish to threads that are not there, nor
 * wait for a job another parent thread was running (the owner word may be held),
 * so every later run there is serial. */
static void on_fork_child(void) { atomic_store(&P.gone, 1); }

static void install_fork_guard(void) { pthread_atfork(NULL, NULL, on_fork_child); }

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Spin up to `ns` while *w == v; returns the value last read. Every 64 pauses it
 * reads the clock and yields the core: a spinning thread that shares its core with
 * a runnable one (the caller, or another process) does not hold it back. */
static uint32_t spin_while(_Atomic uint32_t *w, uint32_t v, uint64_t ns)
{
    uint64_t deadline = now_ns() + ns;
    for (unsigned spins = 1;; spins++) {
        uint32_t now = atomic_load_explicit(w, memory_order_acquire);
        if (now != v) return now;
        cpu_relax();
        if ((spins & 63) == 0) {
            if (now_ns() >= deadline) return v;
            sched_yield();
        }
    }
}

/* Sleep while *w == v (may return early). Callers count themselves as sleepers
 * first and wakers check that count after changing *w: one of the two sees the
 * other (sequentially consistent atomics), so no wake-up is lost. */
#if FX_POOL_FUTEX
static void sleep_while(_Atomic uint32_t *w, uint32_t v)
{
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT_PRIVATE, v, NULL, NULL, 0);
}

static void wake_all(_Atomic uint32_t *w)
{
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}
#else
static pthread_mutex_t sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t sleep_cond = PTHREAD_COND_INITIALIZER;

static void sleep_while(_Atomic uint32_t *w, uint32_t v)
{
    pthread_mutex_lock(&sleep_lock);
    while (atomic_load(w) == v) pthread_cond_wait(&sleep_cond, &sleep_lock);
    pthread_mutex_unlock(&sleep_lock);
}

/* One condition variable for both words: a broadcast wakes every sleeper, each
 * re-checks its own word. Taking the lock orders the broadcast after a sleeper's
 * check of its word. */
static void wake_all(_Atomic uint32_t *w)
{
    (void)w;
    pthread_mutex_lock(&sleep_lock);
    pthread_cond_broadcast(&sleep_cond);
    pthread_mutex_unlock(&sleep_lock);
}
#endif

/* Jobs as OpenMP regions while a team of this process is awake (see fx_pool.h):
 * Linux (gettid), OpenMP builds, the process's main thread (where torch runs its
 * team; another thread would get a libgomp team of its own). The owner's state: */
#if defined(_OPENMP) && defined(__linux__)
#define FX_POOL_REGIONS 1
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>
#define REGION_RETRY_NS 20000000ull       /* after a region that waited: the pool for 20 ms, */
#define REGION_RETRY_MAX_NS 1600000000ull /* doubled after each try that waits again */
#define REGION_SLACK_NS 50000ull          /* a join wait beyond the caller's share that counts, */
#define REGION_SLICE_NS 1000000ull        /* and one as long as a scheduler slice */
static int region_next;                  /* 1: the next job runs as a region */
static uint64_t region_retry_at;         /* (now_ns) no region before then */
static uint64_t region_backoff = REGION_RETRY_NS;
static int region_waits;                 /* regions in a row that waited */
static _Atomic int region_forked;        /* a forked child: libgomp's threads did not survive */
static pthread_once_t region_fork_once = PTHREAD_ONCE_INIT;

static void on_fork_child_region(void) { atomic_store(&region_forked, 1); }
static void install_region_fork_guard(void) { pthread_atfork(NULL, NULL, on_fork_child_region); }

static int on_main_thread(void)
{
    static _Thread_local int known = -1;
    if (known < 0) known = syscall(SYS_gettid) == getpid();
    return known;
}

/* One job as an OpenMP region, its items claimed from a counter as in work().
 * Returns the threads that ran an item; *waited: 0 if the caller's wait at the join
 * barrier beyond its own share took at most REGION_SLACK_NS, else 1, or 2 beyond
 * REGION_SLICE_NS -- a team thread that had to be woken or started, or (2) one the
 * OS had not scheduled: the team was not awake. */
static int run_region(fx_pool_fn fn, void *ctx, fx_ssize n_items, int workers, int *waited)
{
    _Atomic fx_ssize next = 0;
    _Atomic int ran = 0;
    const uint64_t t0 = now_ns();
    uint64_t t_own = t0;
#pragma omp parallel num_threads(workers)
    {
        const int slot = omp_get_thread_num();
        int mine = 0;
        for (fx_ssize i; (i = atomic_fetch_add(&next, 1)) < n_items; mine = 1) fn(ctx, i, slot);
        if (mine) atomic_fetch_add(&ran, 1);
        if (slot == 0) t_own = now_ns();
    }
    const uint64_t wait = now_ns() - t_own, own = t_own - t0;
    *waited = wait > own + REGION_SLICE_NS ? 2 : wait > own + REGION_SLACK_NS;
    return atomic_load(&ran);
}

/* The owner, after a pool job that a pool thread did not join: try a region next. */
static void try_region_next(void)
{
    if (now_ns() < region_retry_at || !on_main_thread()) return;
    pthread_once(&region_fork_once, install_region_fork_guard);
    region_next = 1;
}

/* The owner: run the job as a region if one is due. Returns 0 if not, else the
 * threads that ran items. */
static int maybe_region(fx_pool_fn fn, void *ctx, fx_ssize n_items, int workers)
{
    int waited, ran;
    if (!region_next || atomic_load(&region_forked) || !on_main_thread()) return 0;
    ran = run_region(fn, ctx, n_items, workers, &waited);
    if (!waited) {
        region_waits = 0;
        region_backoff = REGION_RETRY_NS;
    } else if (++region_waits == 2 || waited == 2) {
        /* a slice, or two waits in a row (one may be the team's wake-up or start,
         * after which it is awake): back to the pool; the next try waits twice as long */
        region_waits = 0;
        region_next = 0;
        region_retry_at = now_ns() + region_backoff;
        if (region_backoff < REGION_RETRY_MAX_NS) region_backoff *= 2;
    }
    return ran > 0 ? ran : 1;
}

void fx_pool_region_next(int on)
{
    if (!on_main_thread()) return;
    pthread_once(&region_fork_once, install_region_fork_guard);
    region_next = on;
}
int fx_pool_regions(void) { return on_main_thread() && !atomic_load(&region_forked); }
#else
#define FX_POOL_REGIONS 0
void fx_pool_region_next(int on) { (void)on; }
int fx_pool_regions(void) { return 0; }
#endif

/* Claim and run chunks of job `job` (descriptor already read) until none are
 * left or the job is no longer current. Returns whether any chunk ran. */
static int work(uint64_t job, uint64_t w, fx_pool_fn fn, void *ctx, fx_ssize n_items, fx_ssize n_chunks,
                int slot)
{
    int ran = 0;
    for (;;) {
        if ((w >> IDX_BITS) != job) return ran;
        fx_ssize c = (fx_ssize)(w & IDX_MASK);
        if (c >= n_chunks) return ran; /* also CLOSED: larger than any chunk count */
        if (!atomic_compare_exchange_weak(&P.claim, &w, w + 1)) continue; /* w reloaded */
        if (!ran) atomic_fetch_add(&P.joined, 1); /* before the chunk: the job is not over */
        fx_ssize i1 = n_chunks == n_items ? c + 1 : chunk_start(c + 1, n_items, n_chunks);
        for (fx_ssize i = n_chunks == n_items ? c : chunk_start(c, n_items, n_chunks); i < i1; i++)
            fn(ctx, i, slot);
        ran = 1;
        /* After the job's last chunk the caller may return at once: from here on
         * only the pool's own words are touched, never ctx. */
        if (atomic_fetch_add(&P.done, 1) + 1 == (uint32_t)n_chunks && atomic_load(&P.caller_sleeps))
            wake_all(&P.done); /* at worst a spurious wake-up of a later job's caller */
        w = atomic_load(&P.claim);
    }
}

static void *pool_thread(void *arg)
{
    int t = (int)(intptr_t)arg;
    uint32_t seen = P.start_gen[t];
    for (;;) {
        uint32_t g = spin_while(&P.gen, seen, WORKER_SPIN_NS);
        while (g == seen) {
            atomic_fetch_add(&P.sleepers, 1);
            sleep_while(&P.gen, seen);
            atomic_fetch_sub(&P.sleepers, 1);
            g = atomic_load(&P.gen);
            if (g != seen && now_ns() - atomic_load(&P.woken_at) >= WAKE_LATE_NS) atomic_store(&P.woke_late, 1);
        }
        seen = g;
        /* Read the job's word, then its descriptor: the claim's compare-and-swap
         * fails if either belongs to another job by then. */
        uint64_t w = atomic_load(&P.claim);
        if ((uint32_t)(w >> IDX_BITS) != g) continue; /* already over */
        fx_pool_fn fn = atomic_load(&P.fn);
        void *ctx = atomic_load(&P.ctx);
        fx_ssize n_items = atomic_load(&P.n_items), n_chunks = atomic_load(&P.n_chunks);
        if (t + 1 < atomic_load(&P.workers)) work(w >> IDX_BITS, w, fn, ctx, n_items, n_chunks, t + 1);
    }
    return NULL;
}

/* Start pool threads up to `want` (owner only); keeps what it has on failure. */
static void start_threads(int want)
{
    sigset_t all, old;
    if (want > FX_POOL_MAX_THREADS) want = FX_POOL_MAX_THREADS;
    if (P.n_threads >= want || P.start_failed) return;
    pthread_once(&fork_once, install_fork_guard);
    sigfillset(&all); /* pool threads take no signals: Python's handlers run elsewhere */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    while (P.n_threads < want) {
        pthread_t th;
        pthread_attr_t attr;
        int t = P.n_threads, rc;
        P.start_gen[t] = atomic_load(&P.gen);
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        rc = pthread_create(&th, &attr, pool_thread, (void *)(intptr_t)t);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            P.start_failed = 1;
            break;
        }
        P.n_threads++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

int fx_pool_run(fx_pool_fn fn, void *ctx, fx_ssize n_items, int workers)
{
    int expected = 0, ran = 1;
    if (workers > n_items) workers = (int)n_items;
    if (workers > FX_POOL_MAX_THREADS + 1) workers = FX_POOL_MAX_THREADS + 1;
    if (workers <= 1 || atomic_load(&P.gone)) return run_serial(fn, ctx, n_items);
    if (!atomic_compare_exchange_strong(&P.owner, &expected, 1))
        return run_serial(fn, ctx, n_items); /* another caller's job is running */
#if FX_POOL_REGIONS
    if ((ran = maybe_region(fn, ctx, n_items, workers)) > 0) {
        atomic_store(&P.owner, 0);
        return ran;
    }
#endif
    start_threads(workers - 1);
    if (P.n_threads == 0) {
        atomic_store(&P.owner, 0);
        return run_serial(fn, ctx, n_items);
    }
    fx_ssize n_chunks = n_items < MAX_CHUNKS ? n_items : MAX_CHUNKS;
    uint64_t job = ++P.job & ((1ull << (64 - IDX_BITS)) - 1);
    /* publish: close the word under the new job, describe the job, open it, wake */
    atomic_store(&P.claim, (job << IDX_BITS) | CLOSED);
    atomic_store(&P.done, 0);
    atomic_store(&P.caller_sleeps, 0);
    atomic_store(&P.joined, 0);
    atomic_store(&P.fn, fn);
    atomic_store(&P.ctx, ctx);
    atomic_store(&P.n_items, n_items);
    atomic_store(&P.n_chunks, n_chunks);
    atomic_store(&P.workers, workers);
    atomic_store(&P.claim, job << IDX_BITS);
    atomic_store(&P.gen, (uint32_t)job);
    const int woke = atomic_load(&P.sleepers) > 0;
    if (woke) {
        atomic_store(&P.woken_at, now_ns());
        wake_all(&P.gen);
    }

    work(job, job << IDX_BITS, fn, ctx, n_items, n_chunks, 0);
    /* chunks still in flight on pool threads (they started them: wait for those) */
    if (atomic_load(&P.done) != (uint32_t)n_chunks) {
        uint32_t d;
        uint64_t deadline = now_ns() + CALLER_SPIN_NS;
        for (unsigned spins = 1; (d = atomic_load(&P.done)) != (uint32_t)n_chunks; spins++) {
            cpu_relax();
            if ((spins & 63) == 0) {
                if (now_ns() >= deadline) break;
                sched_yield();
            }
        }
        if (d != (uint32_t)n_chunks) {
            atomic_store(&P.caller_sleeps, 1);
            while ((d = atomic_load(&P.done)) != (uint32_t)n_chunks) sleep_while(&P.done, d);
        }
    }
    ran = atomic_load(&P.joined);
#if FX_POOL_REGIONS
    /* A pool thread did not come although it was awake (spinning), or although its
     * last wake-up came late: its core is taken, maybe by an OpenMP team of this
     * process that spins after its own region (torch's). The next job joins that team
     * (and the pool takes over again, for a while, if the team was not awake). A
     * thread that was asleep and wakes in time but after the caller ran every chunk
     * is the pool working as meant, and no reason. */
    const int woke_late = atomic_exchange(&P.woke_late, 0);
    if (ran < workers && (woke_late || !woke)) try_region_next();
#else
    (void)woke;
#endif
    atomic_store(&P.owner, 0);
    return ran;
}

int fx_pool_parallel(void) { return !atomic_load(&P.gone); }
int fx_pool_threads(void) { return P.n_threads; }
const char *fx_pool_kind(void) { return FX_POOL_FUTEX ? "futex" : "condition variable"; }

#endif
