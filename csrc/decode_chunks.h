/*
 * Decompression in chunks of a row, for the SIMD decoders: every chunk knows its first stream
 * element (for a masked stream: the mask's popcount before it, counted chunk by chunk in
 * parallel), so the chunks run on any thread in any order.  Portable C; the SIMD files supply
 * the chunk function.
 */
#ifndef WP_DECODE_CHUNKS_H
#define WP_DECODE_CHUNKS_H

#include "decode.h"

#define WP_DECODE_CHUNK 8192 /* columns of a row per task */

/* Decode columns [j0, j1) of row r; k is the stream element of the first stored code among them. */
typedef void (*wp_chunk_fn)(const wp_decode_job *job, long long r, long long j0, long long j1, long long k);

/* First stream element of each of the rows * per_row chunks of a rows x cols mask, and the
   mask's popcount after them (rows * per_row + 1 entries, malloc'd; NULL when out of memory). */
long long *wp_chunk_starts(const uint8_t *mask, long long rows, long long cols, long long per_row);

/* Run fn over every chunk of the job on wp_parallel_for's threads.  WP_E_SIZE (nothing written)
   when the mask sets more bits than the stream holds codes; WP_NOT_COVERED when out of memory. */
int wp_run_chunks(const wp_decode_job *job, wp_chunk_fn fn);

/* A sparse stream expanded chunk by chunk (WP_DECODE_CHUNK mask bits each): chunk t starts at
   stored value starts[t]; values are elem_size bytes, widened from binary16 to float32 when
   widen_half. */
typedef struct {
    const uint8_t *mask;
    long long count, n_values;
    const uint8_t *values;
    int elem_size, widen_half;
    uint8_t *out;
    const long long *starts;
} wp_sparse_tasks;

/* Set bits of mask in [e0, e1). */
long long wp_popcount_range(const uint8_t *mask, long long e0, long long e1);

/* One LUT element the scalar way (row tails, table boundaries); *k advances past a stored code. */
static inline void wp_lut_element(const wp_decode_job *job, long long r, long long j, long long *k)
{
    const int es = job->elem_size;
    uint8_t *dst = (uint8_t *)job->out + (job->row_out[r] + j) * es;
    if (job->mask && !wp_mask_bit(job->mask, r * job->cols + j)) {
        memset(dst, 0, (size_t)es);
        return;
    }
    const unsigned idx = wp_read_bits(job->codes, (*k)++, job->nbits);
    memcpy(dst, (const uint8_t *)job->lut + (((job->row_table[r] + j / job->col_block) << job->nbits) + idx) * es,
           (size_t)es);
}

/* One shift-scale element the scalar way. */
static inline void wp_quant_element(const wp_decode_job *job, long long r, long long j, long long *k)
{
    const long long e = r * job->cols + j;
    float w = 0.0f;
    if (!job->mask || wp_mask_bit(job->mask, e)) {
        const int q = wp_code_value(wp_read_bits(job->codes, (*k)++, job->nbits), job->nbits, job->is_signed);
        w = wp_shift_scale((float)q, job->scale, job->offset, job->row_table[r] + j / job->col_block, job->half_math);
    }
    if (job->out_half) ((uint16_t *)job->out)[e] = wp_float_to_half(w);
    else ((float *)job->out)[e] = w;
}

#endif
