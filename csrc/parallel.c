/*
 * The kernels' threads: wp_parallel_for over a small portable pthread pool, or over OpenMP when
 * the build asked for it (WEIGHTPACK_THREADING=openmp defines WP_USE_OPENMP).
 *
 * The pool keeps wp_threads() - 1 workers.  A call publishes its job in one 64-bit ticket
 * (generation, range count, next range) and the caller starts on the ranges at once; workers
 * claim ranges with a compare-and-swap on the ticket, so a worker that wakes after the last range
 * was claimed does nothing and nobody waits for it.  Idle workers stay awake for a while
 * (WEIGHTPACK_SPIN_US, default 5 ms: longer than a BLAS call between two of ours, so the next
 * kernel call of a model finds them awake; on a virtual machine a sleeping worker can take most
 * of a millisecond to wake), yielding the CPU between short bursts of pause instructions so that
 * a thread sharing it (BLAS's workers between two of our calls) runs at full speed; then they
 * sleep on a condition variable.  After fork() the child
 * starts with no workers and builds a new pool on first use (pthread_atfork), so a process pool
 * forked from a process that ran threaded kernels never hangs.
 */
#define _DEFAULT_SOURCE
#define _DARWIN_C_SOURCE
#include "wp_parallel.h"

#include <stdint.h>

static int thread_count = 1;

int wp_threads(void) { return thread_count; }

#define RANGES_PER_THREAD 4

long long wp_rows_per_range(long long rows)
{
    const long long ranges = (long long)thread_count * RANGES_PER_THREAD;
    const long long rows_each = (rows + ranges - 1) / ranges;
    return rows_each < 16 ? 16 : (rows_each + 15) / 16 * 16;
}

#define MAX_RANGES 65535 /* ranges per call: the ticket's 16-bit fields */

/* Ranges of `grain` items, at most MAX_RANGES of them (grain grows if needed). */
static long long range_count(long long items, long long *grain)
{
    if (*grain < 1) *grain = 1;
    if ((items + *grain - 1) / *grain > MAX_RANGES) *grain = (items + MAX_RANGES - 1) / MAX_RANGES;
    return (items + *grain - 1) / *grain;
}

static void run_range(wp_range_fn fn, void *ctx, long long r, long long grain, long long items)
{
    const long long begin = r * grain, end = begin + grain < items ? begin + grain : items;
    fn(ctx, begin, end);
}

#ifdef WP_USE_OPENMP
#include <omp.h>
#include <pthread.h>

const char *wp_threading(void) { return "openmp"; }

/* libgomp's threads do not survive fork(): a child that entered a parallel region after its
   parent used one would wait forever for them.  A forked child therefore runs serially. */
static int forked_child = 0;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void mark_forked_child(void) { forked_child = 1; }

static void register_atfork(void) { pthread_atfork(NULL, NULL, mark_forked_child); }

int wp_set_threads(int n)
{
    thread_count = n < 1 ? 1 : n;
    return thread_count;
}

void wp_parallel_for(long long items, long long grain, wp_range_fn fn, void *ctx)
{
    const long long ranges = range_count(items, &grain);
    if (ranges <= 0) return;
    pthread_once(&atfork_once, register_atfork);
    if (thread_count == 1 || ranges == 1 || forked_child) {
        for (long long r = 0; r < ranges; r++) run_range(fn, ctx, r, grain, items);
        return;
    }
#pragma omp parallel for schedule(dynamic, 1) num_threads(thread_count)
    for (long long r = 0; r < ranges; r++) run_range(fn, ctx, r, grain, items);
}

#else /* the portable pool */
#include <pthread.h>

const char *wp_threading(void) { return "pool"; }
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

#define MAX_WORKERS 255
#define DEFAULT_SPIN_US 5000
#define PAUSES_PER_YIELD 16 /* 0.1-1 us of pause instructions (10-140 cycles each) between yields */

static long long spin_ns = DEFAULT_SPIN_US * 1000LL; /* set from WEIGHTPACK_SPIN_US at the first parallel call */

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void read_spin_setting(void)
{
    const char *text = getenv("WEIGHTPACK_SPIN_US");
    if (!text || !*text) return;
    char *end;
    const long long us = strtoll(text, &end, 10);
    if (*end == '\0' && us >= 0 && us <= 1000000) spin_ns = us * 1000LL; /* else: the default */
}

/* ticket = generation << 32 | ranges << 16 | next range */
#define TICKET(gen, ranges, next) ((uint64_t)(gen) << 32 | (uint64_t)(ranges) << 16 | (uint64_t)(next))
#define TICKET_GEN(t) ((uint32_t)((t) >> 32))
#define TICKET_RANGES(t) ((long long)(((t) >> 16) & 0xffff))
#define TICKET_NEXT(t) ((long long)((t) & 0xffff))

static struct {
    pthread_mutex_t lock; /* guards sleeping/waking and the worker list */
    pthread_cond_t wake;
    pthread_t workers[MAX_WORKERS];
    int started;             /* workers running */
    _Atomic int helpers;     /* workers allowed to join jobs (thread_count - 1) */
    _Atomic int sleepers;
    _Atomic uint64_t ticket;
    _Atomic long long done;  /* ranges finished in the current job */
    atomic_flag busy;        /* a job is in flight */
    /* the current job; valid for whoever holds an unfinished range of it */
    wp_range_fn fn;
    void *ctx;
    long long grain, items;
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER, .busy = ATOMIC_FLAG_INIT};

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* Claim the next range of generation gen; -1 when that job has none left (or is gone). */
static long long claim(uint32_t gen)
{
    uint64_t t = atomic_load_explicit(&pool.ticket, memory_order_acquire);
    while (TICKET_GEN(t) == gen && TICKET_NEXT(t) < TICKET_RANGES(t)) {
        if (atomic_compare_exchange_weak_explicit(&pool.ticket, &t, t + 1, memory_order_acq_rel, memory_order_acquire))
            return TICKET_NEXT(t);
    }
    return -1;
}

static void work_on(uint32_t gen)
{
    long long r;
    while ((r = claim(gen)) >= 0) {
        run_range(pool.fn, pool.ctx, r, pool.grain, pool.items);
        atomic_fetch_add_explicit(&pool.done, 1, memory_order_release);
    }
}

static void *worker_main(void *arg)
{
    const int id = (int)(intptr_t)arg;
    uint32_t seen = TICKET_GEN(atomic_load_explicit(&pool.ticket, memory_order_acquire));
    for (;;) {
        uint32_t gen = seen;
        const long long until = now_ns() + spin_ns;
        while (gen == seen) {
            for (int i = 0; i < PAUSES_PER_YIELD && gen == seen; i++) {
                CPU_RELAX();
                gen = TICKET_GEN(atomic_load_explicit(&pool.ticket, memory_order_acquire));
            }
            if (gen != seen || now_ns() >= until) break;
            sched_yield();
        }
        if (gen == seen) { /* nothing came: sleep until a job is published */
            pthread_mutex_lock(&pool.lock);
            atomic_fetch_add(&pool.sleepers, 1);
            while ((gen = TICKET_GEN(atomic_load(&pool.ticket))) == seen) pthread_cond_wait(&pool.wake, &pool.lock);
            atomic_fetch_sub(&pool.sleepers, 1);
            pthread_mutex_unlock(&pool.lock);
        }
        seen = gen;
        if (id < atomic_load_explicit(&pool.helpers, memory_order_relaxed)) work_on(gen);
    }
    return NULL;
}

/* In a forked child the workers do not exist and the locks may be held by threads that are gone. */
static void after_fork_in_child(void)
{
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pool.started = 0;
    atomic_store(&pool.sleepers, 0);
    atomic_flag_clear(&pool.busy);
}

static void register_atfork(void)
{
    read_spin_setting();
    pthread_atfork(NULL, NULL, after_fork_in_child);
}

/* Start workers until `wanted` run (called with the lock held); returns how many run. */
static int start_workers(int wanted)
{
    if (wanted > MAX_WORKERS) wanted = MAX_WORKERS;
    while (pool.started < wanted) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int rc = pthread_create(&pool.workers[pool.started], &attr, worker_main, (void *)(intptr_t)pool.started);
        pthread_attr_destroy(&attr);
        if (rc) break; /* out of threads: work with those we have */
        pool.started++;
    }
    return pool.started;
}

int wp_set_threads(int n)
{
    thread_count = n < 1 ? 1 : n > MAX_WORKERS + 1 ? MAX_WORKERS + 1 : n;
    return thread_count;
}

void wp_parallel_for(long long items, long long grain, wp_range_fn fn, void *ctx)
{
    const long long ranges = range_count(items, &grain);
    if (ranges <= 0) return;
    if (thread_count == 1 || ranges == 1 || atomic_flag_test_and_set_explicit(&pool.busy, memory_order_acquire)) {
        for (long long r = 0; r < ranges; r++) run_range(fn, ctx, r, grain, items);
        return;
    }
    pthread_once(&atfork_once, register_atfork);
    int helpers = thread_count - 1;
    if (pool.started < helpers) {
        pthread_mutex_lock(&pool.lock);
        helpers = start_workers(helpers);
        pthread_mutex_unlock(&pool.lock);
    }
    atomic_store_explicit(&pool.helpers, helpers, memory_order_relaxed);
    pool.fn = fn;
    pool.ctx = ctx;
    pool.grain = grain;
    pool.items = items;
    atomic_store_explicit(&pool.done, 0, memory_order_relaxed);
    const uint32_t gen = TICKET_GEN(atomic_load_explicit(&pool.ticket, memory_order_relaxed)) + 1;
    /* publish the job; sequentially consistent with the sleepers count (a worker going to sleep
       either sees the new ticket or is counted and woken) */
    atomic_store(&pool.ticket, TICKET(gen, ranges, 0));
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
    work_on(gen);
    /* every range is claimed; wait for those still running on workers */
    const long long patience = now_ns() + spin_ns;
    for (long long spin = 0; atomic_load_explicit(&pool.done, memory_order_acquire) < ranges; spin++) {
        if (spin % PAUSES_PER_YIELD || now_ns() < patience) CPU_RELAX();
        else sched_yield(); /* a worker still busy that long may share a CPU with us: let it run */
    }
    atomic_flag_clear_explicit(&pool.busy, memory_order_release);
}
#endif
