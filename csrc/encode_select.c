/* Choosing which weights to prune, in O(n) (the algorithm and its Python driver:
 * weightpack/compress/selection.py and pruning.py).
 *
 * Scores are compared as monotone unsigned keys: the magnitude bits of a float16 (15 bits) or
 * float32 (31 bits) weight, or the bits of a non-negative float32 score. The k smallest keys are
 * found by radix selection (histograms, never a sort); among equal keys the lower flat index goes
 * first. The output is Core ML's arrays: the packed uint1 mask and the kept values in order. */
#include <string.h>

#include "encode.h"
#include "weightpack.h"

/* The magnitude key of element i of a uint16 (float16 bits) or uint32 array. */
static inline uint32_t key_at(const void *a, int half, long long i)
{
    return half ? (uint32_t)(((const uint16_t *)a)[i] & 0x7FFFu) : ((const uint32_t *)a)[i] & 0x7FFFFFFFu;
}

static inline void copy_value(void *values, int half, long long to, const void *wbits, long long from)
{
    if (half)
        ((uint16_t *)values)[to] = ((const uint16_t *)wbits)[from];
    else
        ((uint32_t *)values)[to] = ((const uint32_t *)wbits)[from];
}

/* counts[key >> shift] += 1 for elements lo..hi-1. */
int wp_enc_histogram_high(const void *keys, int keys16, long long lo, long long hi, int shift, long long *counts)
{
    for (long long i = lo; i < hi; i++) counts[key_at(keys, keys16, i) >> shift]++;
    return WP_OK;
}

/* counts[key & 0xFFFF] += 1 for the elements whose key >> 16 == bucket. */
int wp_enc_histogram_low(const void *keys, int keys16, long long lo, long long hi, long long bucket, long long *counts)
{
    for (long long i = lo; i < hi; i++) {
        uint32_t k = key_at(keys, keys16, i);
        if ((long long)(k >> 16) == bucket) counts[k & 0xFFFFu]++;
    }
    return WP_OK;
}

/* Prune keys < T and the first ``quota`` keys == T of lo..hi-1 (all with prune_all); keep the rest
 * unless zero. *kept_out = the number kept. With a mask (not NULL), also sets its bytes lo/8..
 * (lo a multiple of 8) and writes the ``total`` kept weights to values[offset ...]. */
int wp_enc_write_sparse(const void *keys, int keys16, const void *wbits, int wbits16, long long lo, long long hi,
                        unsigned int T, long long quota, int prune_all, unsigned char *mask, void *values,
                        long long offset, long long total, long long *kept_out)
{
    long long kept = 0;
    for (long long start = lo; start < hi; start += 8) {
        unsigned byte = 0;
        for (long long j = 0; j < ll_min(8, hi - start); j++) {
            long long i = start + j;
            uint32_t k = key_at(keys, keys16, i);
            int nonzero = key_at(wbits, wbits16, i) != 0;
            int bit = (k > T) & nonzero;
            if (k == T) {
                if (quota > 0)
                    quota--;
                else
                    bit = nonzero;
            }
            if (prune_all) bit = 0;
            byte |= (unsigned)bit << j;
            if (mask && kept < total) copy_value(values, wbits16, offset + kept, wbits, i);
            kept += bit;
        }
        if (mask) mask[start >> 3] = (unsigned char)byte;
    }
    *kept_out = kept;
    return WP_OK;
}

/* The common case without a tie quota: keep every key >= T whose weight is nonzero. */
int wp_enc_write_kept_from(const void *keys, int keys16, const void *wbits, int wbits16, long long lo, long long hi,
                           unsigned int T, unsigned char *mask, void *values, long long offset, long long total,
                           long long *kept_out)
{
    long long kept = 0;
    for (long long start = lo; start < hi; start += 8) {
        unsigned byte = 0;
        for (long long j = 0; j < ll_min(8, hi - start); j++) {
            long long i = start + j;
            int bit = (int)(key_at(keys, keys16, i) >= T) & (int)(key_at(wbits, wbits16, i) != 0);
            byte |= (unsigned)bit << j;
            if (kept < total) copy_value(values, wbits16, offset + kept, wbits, i);
            kept += bit;
        }
        mask[start >> 3] = (unsigned char)byte;
    }
    *kept_out = kept;
    return WP_OK;
}

/* The k-th smallest (1-based) of n keys, by quickselect on a copy. */
static uint32_t kth_smallest(uint32_t *a, long long n, long long k)
{
    long long lo = 0, hi = n - 1, target = k - 1;
    while (lo < hi) {
        uint32_t pivot = a[lo + (hi - lo) / 2];
        long long i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (a[j] > pivot) j--;
            if (i <= j) {
                uint32_t t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (target <= j)
            hi = j;
        else if (target >= i)
            lo = i;
        else
            break;
    }
    return a[target];
}

static inline uint32_t row_key(const void *keys2, int keys16, long long i)
{
    return keys16 ? ((const uint16_t *)keys2)[i] : ((const uint32_t *)keys2)[i];
}

/* Per row r0..r1-1 of keys2 [R, M]: mark the k smallest keys (ties: lower index first). */
int wp_enc_select_rows(const void *keys2, int keys16, long long M, long long k, long long r0, long long r1,
                       unsigned char *pruned2)
{
    uint32_t *buf = malloc(sizeof(uint32_t) * (size_t)(M ? M : 1));
    if (!buf) return WP_E_MEMORY;
    for (long long r = r0; r < r1; r++) {
        unsigned char *row = pruned2 + r * M;
        if (k <= 0 || k >= M) {
            memset(row, k >= M && k > 0 ? 1 : 0, (size_t)M);
            continue;
        }
        for (long long j = 0; j < M; j++) buf[j] = row_key(keys2, keys16, r * M + j);
        uint32_t T = kth_smallest(buf, M, k);
        long long below = 0;
        for (long long j = 0; j < M; j++) below += row_key(keys2, keys16, r * M + j) < T;
        long long quota = k - below;
        for (long long j = 0; j < M; j++) {
            uint32_t v = row_key(keys2, keys16, r * M + j);
            int drop = v < T;
            if (!drop && v == T && quota > 0) {
                quota--;
                drop = 1;
            }
            row[j] = (unsigned char)drop;
        }
    }
    free(buf);
    return WP_OK;
}

/* In every run of m consecutive elements of each row: mark the n smallest keys (ties: lower index
 * first). A last run of r < m elements marks max(0, n - (m - r)): coremltools pads it with zeros. */
int wp_enc_select_n_of_m(const void *keys2, int keys16, long long D, long long n, long long m, long long r0,
                         long long r1, unsigned char *pruned2)
{
    long long *order = malloc(sizeof(long long) * (size_t)m);
    if (!order) return WP_E_MEMORY;
    for (long long r = r0; r < r1; r++) {
        for (long long start = 0; start < D; start += m) {
            long long size = ll_min(m, D - start), count = n - (m - size);
            unsigned char *run = pruned2 + r * D + start;
            memset(run, 0, (size_t)size);
            if (count <= 0) continue;
            for (long long j = 0; j < size; j++) { /* insertion sort of (key, index) */
                long long q = j;
                uint32_t key = row_key(keys2, keys16, r * D + start + j);
                while (q > 0 && row_key(keys2, keys16, r * D + start + order[q - 1]) > key) {
                    order[q] = order[q - 1];
                    q--;
                }
                order[q] = j;
            }
            for (long long j = 0; j < ll_min(count, size); j++) run[order[j]] = 1;
        }
    }
    free(order);
    return WP_OK;
}
