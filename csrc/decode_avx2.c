/*
 * AVX2 decompression (CPU level 1): every format, every layout with scalar LUT entries.
 *
 * Work is split over threads in chunks of a row (decode_chunks.c).  A chunk decodes its columns
 * table by table as runs (avx2_common.h): dense runs go straight to the output; a masked chunk
 * decodes the stored codes of SUB columns into a buffer, then expands them under the mask.
 * Sparse value streams expand the same way from the values themselves.
 */
#include "wp_target.h"
#if WP_X86
WP_TARGET_PUSH("avx2,fma,f16c,bmi2,popcnt")
#include <immintrin.h>
#include <stdlib.h>

#include "avx2_common.h"
#include "decode.h"
#include "decode_chunks.h"
#include "wp_dispatch.h"

#define SUB 512 /* columns of a masked chunk decoded into its buffer at a time */

/* ---- runs: one function per kind of table, code width and output size ------------------------- */

typedef void (*run_fn)(const run_table *t, const uint8_t *stream, long long stream_len, long long k, long long count,
                       uint8_t *dst);

#define LUT_RUN(n, es)                                                                                              \
    static void lut_run_##n##_##es(const run_table *t, const uint8_t *s, long long len, long long k, long long cnt, \
                                   uint8_t *dst)                                                                    \
    {                                                                                                               \
        decode_run((n) == 8 ? RUN_GATHER : (n) == 6 ? RUN_LUT64 : RUN_LUT16, (quant_kind){0, 0, 0}, n, es, t, s,    \
                   len, k, cnt, dst);                                                                               \
    }
#define LUT_RUNS(n) LUT_RUN(n, 1) LUT_RUN(n, 2) LUT_RUN(n, 4)
LUT_RUNS(1) LUT_RUNS(2) LUT_RUNS(3) LUT_RUNS(4) LUT_RUNS(6) LUT_RUNS(8)
static void lut_run_6_half(const run_table *t, const uint8_t *s, long long len, long long k, long long cnt, uint8_t *dst)
{
    decode_run(RUN_LUT64H, (quant_kind){0, 0, 0}, 6, 4, t, s, len, k, cnt, dst);
}
#define LUT_ROW(n) {NULL, lut_run_##n##_1, lut_run_##n##_2, NULL, lut_run_##n##_4}
static const run_fn LUT_RUNS_BY[9][5] = {{NULL}, LUT_ROW(1), LUT_ROW(2), LUT_ROW(3), LUT_ROW(4), {NULL}, LUT_ROW(6),
                                         {NULL}, LUT_ROW(8)};

/* Shift-scale runs, specialised on signedness, offset and binary16 arithmetic. */
#define QUANT_RUN(n, es, sg, off, hm)                                                                           \
    static void quant_run_##n##_##es##_##sg##off##hm(const run_table *t, const uint8_t *s, long long len,       \
                                                    long long k, long long cnt, uint8_t *dst)                   \
    {                                                                                                           \
        decode_run(RUN_QUANT, (quant_kind){sg, off, hm}, n, es, t, s, len, k, cnt, dst);                        \
    }
#define QUANT_RUNS_HM(n, es, sg, off) QUANT_RUN(n, es, sg, off, 0) QUANT_RUN(n, es, sg, off, 1)
#define QUANT_RUNS_OFF(n, es, sg) QUANT_RUNS_HM(n, es, sg, 0) QUANT_RUNS_HM(n, es, sg, 1)
#define QUANT_RUNS_SG(n, es) QUANT_RUNS_OFF(n, es, 0) QUANT_RUNS_OFF(n, es, 1)
QUANT_RUNS_SG(4, 2) QUANT_RUNS_SG(4, 4) QUANT_RUNS_SG(8, 2) QUANT_RUNS_SG(8, 4)
#define QUANT_FLAGS(n, es) {quant_run_##n##_##es##_000, quant_run_##n##_##es##_001, quant_run_##n##_##es##_010, \
    quant_run_##n##_##es##_011, quant_run_##n##_##es##_100, quant_run_##n##_##es##_101, quant_run_##n##_##es##_110, \
    quant_run_##n##_##es##_111}
/* [8-bit][fp32 output][signed * 4 + offset * 2 + binary16 arithmetic] */
static const run_fn QUANT_RUNS_BY[2][2][8] = {{QUANT_FLAGS(4, 2), QUANT_FLAGS(4, 4)}, {QUANT_FLAGS(8, 2), QUANT_FLAGS(8, 4)}};

/* ---- how a job decodes --------------------------------------------------------------------------- */

typedef struct {
    const wp_decode_job *job;
    run_fn run;
    int quant_table; /* shift-scale looked up in the 16 decoded values of 4-bit codes */
    int half_planes; /* 6-bit codes, float32 output: the binary16 planes of the job */
} decoder;

/* ---- tables ----------------------------------------------------------------------------------- */

static void table_for(const decoder *d, long long t, table_slot *s)
{
    const wp_decode_job *job = d->job;
    if (s->id == t) return;
    if (job->scale) {
        const quant_kind qk = {job->is_signed, job->offset != NULL, job->half_math};
        quant_run_table(job->scale, job->offset, t, qk, job->elem_size, d->quant_table, s);
    } else if (d->half_planes) {
        half_run_table(job->lut_lo + t * 64, job->lut_hi + t * 64, s);
    } else {
        lut_run_table((const uint8_t *)job->lut + (t << job->nbits) * job->elem_size, job->nbits, job->elem_size, s);
    }
    s->id = t;
}

/* ---- a chunk ---------------------------------------------------------------------------------- */

/* Where column j of row r goes, in elements of the output. */
WP_INLINE long long out_index(const wp_decode_job *job, long long r, long long j)
{
    return job->row_out ? job->row_out[r] + j : r * job->cols + j;
}

/* Expand groups of 8 values of es bytes under whole mask bytes from *src into dst. */
WP_INLINE void expand_mask_bytes(uint8_t *dst, const uint8_t **src, const uint8_t *mask, long long groups, int es)
{
    const uint8_t *s = *src;
    for (long long g = 0; g < groups; g++) {
        expand8_store(dst + 8 * g * es, s, mask[g], es, 0);
        s += _mm_popcnt_u32(mask[g]) * es;
    }
    *src = s;
}

/* Columns [j0, j1) of row r, stream element k on: dense runs straight to the output; masked ones
   through a buffer of decoded stored values, expanded under the mask. */
static void decode_chunk(const decoder *d, long long r, long long j0, long long j1, long long k)
{
    const wp_decode_job *job = d->job;
    const int es = job->elem_size;
    const run_fn run = d->quant_table ? LUT_RUNS_BY[4][es] : d->run;
    uint8_t *out = job->out;
    table_slot slot;
    slot.id = -1;
    _Alignas(32) uint8_t buf[(SUB + 8) * 4];
    const long long mask_bytes = (job->rows * job->cols + 7) / 8, e_row = r * job->cols;
    for (long long a = j0; a < j1;) {
        const long long b = job->mask ? (a + SUB < j1 ? a + SUB : j1) : j1;
        long long stored = 0;
        for (long long s0 = a; s0 < b;) { /* table segments of [a, b) */
            const long long block = s0 / job->col_block, s1 = (block + 1) * job->col_block < b ? (block + 1) * job->col_block : b;
            const long long cnt = job->mask ? popcount_bits(job->mask, e_row + s0, e_row + s1) : s1 - s0;
            if (cnt) {
                table_for(d, job->row_table[r] + block, &slot);
                run(&slot.t, job->codes, job->codes_len, k, cnt,
                    job->mask ? buf + stored * es : out + out_index(job, r, s0) * es);
            }
            k += cnt;
            stored += cnt;
            s0 = s1;
        }
        if (job->mask) { /* expand: 8 columns per mask byte */
            const long long groups = (b - a) / 8;
            uint8_t *dst = out + out_index(job, r, a) * es;
            const uint8_t *src = buf;
            if ((e_row + a) % 8 == 0) expand_mask_bytes(dst, &src, job->mask + (e_row + a) / 8, groups, es);
            else
                for (long long g = 0; g < groups; g++) {
                    const unsigned m = mask_bits8(job->mask, mask_bytes, e_row + a + 8 * g);
                    expand8_store(dst + 8 * g * es, src, m, es, 0);
                    src += _mm_popcnt_u32(m) * es;
                }
            if (a + 8 * groups < b) { /* a row's last columns, not a whole mask byte */
                const long long j = a + 8 * groups;
                const unsigned m = mask_bits8(job->mask, mask_bytes, e_row + j) & ((1u << (b - j)) - 1);
                uint8_t tail[32];
                expand8_store(tail, src, m, es, 0);
                memcpy(out + out_index(job, r, j) * es, tail, (size_t)((b - j) * es));
            }
        }
        a = b;
    }
}

/* Dense shift-scale codes in blocks of whole 32-column steps: one loop over the chunk's steps
   whose scale and offset change at block boundaries (a run per block costs its set-up every 32
   columns when blocks are short); what is left goes through decode_chunk. */
WP_INLINE void quant_blocks(quant_kind qk, int n, int es, const decoder *d, long long r, long long j0, long long j1,
                            long long k)
{
    const wp_decode_job *job = d->job;
    run_table t;
    t.scale = t.offset = _mm256_setzero_ps(); /* set at the first step (j0 < block_end never holds there) */
    unpacker u;
    unpacker_init(&u, n, k);
    long long byte = (k * n) >> 3, j = j0, block_end = j0;
    uint8_t *out = (uint8_t *)job->out + (r * job->cols + j0) * es;
    __m256i v[4];
    for (; j + 32 <= j1 && byte + STEP_READ(n) <= job->codes_len; j += 32, byte += 4 * n, out += 32 * es) {
        if (j >= block_end) {
            const long long block = j / job->col_block, tb = job->row_table[r] + block;
            block_end = (block + 1) * job->col_block;
            t.scale = _mm256_set1_ps(scalar_at(job->scale, tb, qk.half_math));
            t.offset = qk.has_offset ? _mm256_set1_ps(scalar_at(job->offset, tb, qk.half_math)) : _mm256_setzero_ps();
        }
        values32(RUN_QUANT, qk, n, es, &t, job->codes + byte, &u, v);
        store_values32(out, es, v);
    }
    if (j < j1) decode_chunk(d, r, j, j1, k + (j - j0));
}

typedef void (*blocks_fn)(const decoder *d, long long r, long long j0, long long j1, long long k);
#define QUANT_BLOCKS(n, es, sg, off, hm)                                                                   \
    static void quant_blocks_##n##_##es##_##sg##off##hm(const decoder *d, long long r, long long j0,        \
                                                         long long j1, long long k)                         \
    {                                                                                                       \
        quant_blocks((quant_kind){sg, off, hm}, n, es, d, r, j0, j1, k);                                    \
    }
#define QUANT_BLOCKS_HM(n, es, sg, off) QUANT_BLOCKS(n, es, sg, off, 0) QUANT_BLOCKS(n, es, sg, off, 1)
#define QUANT_BLOCKS_OFF(n, es, sg) QUANT_BLOCKS_HM(n, es, sg, 0) QUANT_BLOCKS_HM(n, es, sg, 1)
#define QUANT_BLOCKS_SG(n, es) QUANT_BLOCKS_OFF(n, es, 0) QUANT_BLOCKS_OFF(n, es, 1)
QUANT_BLOCKS_SG(4, 2) QUANT_BLOCKS_SG(4, 4) QUANT_BLOCKS_SG(8, 2) QUANT_BLOCKS_SG(8, 4)
#define QUANT_BLOCK_FLAGS(n, es) {quant_blocks_##n##_##es##_000, quant_blocks_##n##_##es##_001, \
    quant_blocks_##n##_##es##_010, quant_blocks_##n##_##es##_011, quant_blocks_##n##_##es##_100,   \
    quant_blocks_##n##_##es##_101, quant_blocks_##n##_##es##_110, quant_blocks_##n##_##es##_111}
/* [8-bit][fp32 output][signed * 4 + offset * 2 + binary16 arithmetic] */
static const blocks_fn QUANT_BLOCKS_BY[2][2][8] = {{QUANT_BLOCK_FLAGS(4, 2), QUANT_BLOCK_FLAGS(4, 4)},
                                                   {QUANT_BLOCK_FLAGS(8, 2), QUANT_BLOCK_FLAGS(8, 4)}};

static void lut_chunk(const wp_decode_job *job, long long r, long long j0, long long j1, long long k)
{
    const int half_planes = job->nbits == 6 && job->elem_size == 4 && job->lut_lo;
    const decoder d = {job, half_planes ? lut_run_6_half : LUT_RUNS_BY[job->nbits][job->elem_size], 0, half_planes};
    decode_chunk(&d, r, j0, j1, k);
}

static void quant_chunk(const wp_decode_job *job, long long r, long long j0, long long j1, long long k)
{
    const int flags = job->is_signed * 4 + (job->offset != NULL) * 2 + job->half_math;
    const decoder d = {job, QUANT_RUNS_BY[job->nbits == 8][job->elem_size == 4][flags],
                       job->nbits == 4 && job->col_block >= 128, 0};
    if (!job->mask && !d.quant_table && job->col_block % 32 == 0)
        QUANT_BLOCKS_BY[job->nbits == 8][job->elem_size == 4][flags](&d, r, j0, j1, k);
    else decode_chunk(&d, r, j0, j1, k);
}

int wp_lut_decode_avx2(const wp_decode_job *job)
{
    if (job->vsize != 1 || job->col_stride != 1) return WP_NOT_COVERED;
    return wp_run_chunks(job, lut_chunk);
}

int wp_quant_decode_avx2(const wp_decode_job *job)
{
    return wp_run_chunks(job, quant_chunk);
}

/* ---- sparse values ---------------------------------------------------------------------------- */

static void expand_sparse(void *ctx, long long t0, long long t1)
{
    const wp_sparse_tasks *s = ctx;
    const int es = s->elem_size, out_size = s->widen_half ? 4 : es;
    for (long long t = t0; t < t1; t++) {
        const long long e1 = (t + 1) * WP_DECODE_CHUNK < s->count ? (t + 1) * WP_DECODE_CHUNK : s->count;
        long long k = s->starts[t], e = t * WP_DECODE_CHUNK;
        for (; e + 8 <= e1; e += 8) {
            const unsigned m = s->mask[e >> 3];
            const uint8_t *src = s->values + k * es;
            uint8_t tail[32];
            if (k + 8 > s->n_values) { /* the last stored values: copy the ones that exist */
                memset(tail, 0, sizeof tail);
                memcpy(tail, src, (size_t)((s->n_values - k) * es));
                src = tail;
            }
            expand8_store(s->out + e * out_size, src, m, es, s->widen_half);
            k += _mm_popcnt_u32(m);
        }
        for (; e < e1; e++) wp_sparse_element(s->mask, e, s->values, &k, es, s->widen_half, s->out);
    }
}

int wp_sparse_decode_avx2(const uint8_t *mask, long long count, const void *values, long long n_values, int elem_size,
                          int widen_half, void *out)
{
    const long long tasks = (count + WP_DECODE_CHUNK - 1) / WP_DECODE_CHUNK;
    long long *starts = wp_chunk_starts(mask, 1, count, tasks);
    if (!starts) return WP_NOT_COVERED;
    int rc = WP_OK;
    if (starts[tasks] > n_values) {
        rc = WP_E_SIZE;
    } else {
        wp_sparse_tasks s = {mask, count, n_values, values, elem_size, widen_half, out, starts};
        wp_parallel_for(tasks, 1, expand_sparse, &s);
    }
    free(starts);
    return rc;
}

WP_TARGET_POP()
#endif
