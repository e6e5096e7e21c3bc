/* Chunked decompression shared by the SIMD decoders (see decode_chunks.h). */
#include "decode_chunks.h"

#include <stdlib.h>

#include "wp_dispatch.h"

long long wp_popcount_range(const uint8_t *mask, long long e0, long long e1)
{
    long long n = 0, e = e0;
    for (; e < e1 && (e & 7); e++) n += wp_mask_bit(mask, e);
    for (; e + 64 <= e1; e += 64) {
        uint64_t m;
        memcpy(&m, mask + (e >> 3), 8);
        n += __builtin_popcountll(m);
    }
    for (; e < e1; e++) n += wp_mask_bit(mask, e);
    return n;
}

typedef struct {
    const uint8_t *mask;
    long long cols, per_row, *counts;
} popcount_tasks;

static void count_chunks(void *ctx, long long t0, long long t1)
{
    const popcount_tasks *p = ctx;
    for (long long t = t0; t < t1; t++) {
        const long long r = t / p->per_row, j0 = t % p->per_row * WP_DECODE_CHUNK;
        const long long j1 = j0 + WP_DECODE_CHUNK < p->cols ? j0 + WP_DECODE_CHUNK : p->cols;
        p->counts[t + 1] = wp_popcount_range(p->mask, r * p->cols + j0, r * p->cols + j1);
    }
}

long long *wp_chunk_starts(const uint8_t *mask, long long rows, long long cols, long long per_row)
{
    const long long tasks = rows * per_row;
    long long *starts = malloc((size_t)(tasks + 1) * sizeof *starts);
    if (!starts) return NULL;
    popcount_tasks p = {mask, cols, per_row, starts};
    wp_parallel_for(tasks, 1, count_chunks, &p);
    starts[0] = 0;
    for (long long t = 0; t < tasks; t++) starts[t + 1] += starts[t];
    return starts;
}

typedef struct {
    const wp_decode_job *job;
    wp_chunk_fn fn;
    long long per_row;
    const long long *starts;
} chunk_tasks;

static void decode_chunks(void *ctx, long long t0, long long t1)
{
    const chunk_tasks *c = ctx;
    const wp_decode_job *job = c->job;
    for (long long t = t0; t < t1; t++) {
        const long long r = t / c->per_row, j0 = t % c->per_row * WP_DECODE_CHUNK;
        const long long j1 = j0 + WP_DECODE_CHUNK < job->cols ? j0 + WP_DECODE_CHUNK : job->cols;
        c->fn(job, r, j0, j1, job->mask ? c->starts[t] : r * job->cols + j0);
    }
}

int wp_run_chunks(const wp_decode_job *job, wp_chunk_fn fn)
{
    const long long per_row = (job->cols + WP_DECODE_CHUNK - 1) / WP_DECODE_CHUNK, tasks = job->rows * per_row;
    long long *starts = NULL;
    if (job->mask) {
        if (!(starts = wp_chunk_starts(job->mask, job->rows, job->cols, per_row))) return WP_NOT_COVERED;
        const long long available = job->codes_len / job->nbits * 8 + (job->codes_len % job->nbits) * 8 / job->nbits;
        if (starts[tasks] > available) {
            free(starts);
            return WP_E_SIZE;
        }
    }
    chunk_tasks c = {job, fn, per_row, starts};
    wp_parallel_for(tasks, 1, decode_chunks, &c);
    free(starts);
    return WP_OK;
}
