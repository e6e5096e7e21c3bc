/* Threads for the kernels: one parallel loop primitive over a portable pool (or OpenMP). */
#ifndef WP_PARALLEL_H
#define WP_PARALLEL_H

/* fn(ctx, begin, end) handles items [begin, end). */
typedef void (*wp_range_fn)(void *ctx, long long begin, long long end);

/*
 * Run fn over items [0, items) in contiguous ranges of `grain` items (the last may be shorter),
 * on up to wp_threads() threads; the calling thread works too.  Ranges are claimed one at a
 * time, so a thread that starts late (its core busy with another library's spinning threads)
 * simply takes fewer of them: the call is never slower than running them all on the caller,
 * plus the cost of waking the others.  Returns when every range is done.  Safe to call from
 * several threads at once (a call that finds the pool busy runs on its caller alone).
 */
void wp_parallel_for(long long items, long long grain, wp_range_fn fn, void *ctx);

int wp_threads(void);
const char *wp_threading(void); /* "pool" or "openmp" */
int wp_set_threads(int n);

#endif
