/*
 * AVX-512 decompression (CPU level 2): 64 elements at a time, split over threads in chunks of a
 * row.  Codes come to one byte each (avx512_common.h), sparse rows expand them under their mask
 * bits, and tables are looked up in registers: byte planes for 1- and 2-byte outputs (and for
 * float32 output of binary16-exact tables), float32 tables by vpermps / vpermt2ps / gather.
 * Elements that do not fill a whole 64-step inside one table go through the scalar code.
 */
#include "wp_target.h"
#if WP_X86
WP_TARGET_PUSH(WP_AVX512_FEATURES)
#include <immintrin.h>
#include <stdlib.h>

#include "avx512_common.h"
#include "decode.h"
#include "wp_dispatch.h"

#define CHUNK 8192 /* columns of a row per task */

/* 64 mask bits starting at bit e (the caller guarantees e + 64 <= element count). */
WP_INLINE uint64_t mask64(const uint8_t *mask, long long e)
{
    uint64_t m;
    memcpy(&m, mask + (e >> 3), 8);
    const unsigned s = (unsigned)(e & 7);
    return s ? (m >> s) | ((uint64_t)mask[(e >> 3) + 8] << (64 - s)) : m;
}

/* Set bits of mask in [e0, e1). */
static long long popcount_range(const uint8_t *mask, long long e0, long long e1)
{
    long long n = 0, e = e0;
    for (; e < e1 && (e & 7); e++) n += wp_mask_bit(mask, e);
    for (; e + 64 <= e1; e += 64) {
        uint64_t m;
        memcpy(&m, mask + (e >> 3), 8);
        n += _mm_popcnt_u64(m);
    }
    for (; e < e1; e++) n += wp_mask_bit(mask, e);
    return n;
}

typedef void (*chunk_fn)(const wp_decode_job *job, long long r, long long j0, long long j1, long long k);

typedef struct {
    const uint8_t *mask;
    long long cols, per_row, *counts;
} popcount_tasks;

static void count_chunks(void *ctx, long long t0, long long t1)
{
    const popcount_tasks *p = ctx;
    for (long long t = t0; t < t1; t++) {
        const long long r = t / p->per_row, j0 = t % p->per_row * CHUNK, j1 = j0 + CHUNK < p->cols ? j0 + CHUNK : p->cols;
        p->counts[t + 1] = popcount_range(p->mask, r * p->cols + j0, r * p->cols + j1);
    }
}

/* Per-chunk first stream element of a masked job (NULL when out of memory); starts[tasks] is the
   mask's popcount. */
static long long *chunk_starts(const uint8_t *mask, long long rows, long long cols, long long per_row)
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
    chunk_fn fn;
    long long per_row;
    const long long *starts;
} chunk_tasks;

static void decode_chunks(void *ctx, long long t0, long long t1)
{
    const chunk_tasks *c = ctx;
    const wp_decode_job *job = c->job;
    for (long long t = t0; t < t1; t++) {
        const long long r = t / c->per_row, j0 = t % c->per_row * CHUNK, j1 = j0 + CHUNK < job->cols ? j0 + CHUNK : job->cols;
        c->fn(job, r, j0, j1, job->mask ? c->starts[t] : r * job->cols + j0);
    }
}

/* Run fn over every chunk of every row; k is the chunk's first stream element. */
static int run_chunks(const wp_decode_job *job, chunk_fn fn)
{
    const long long per_row = (job->cols + CHUNK - 1) / CHUNK, tasks = job->rows * per_row;
    long long *starts = NULL;
    if (job->mask) {
        if (!(starts = chunk_starts(job->mask, job->rows, job->cols, per_row))) return WP_NOT_COVERED;
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

/* Whether the 64 columns from j lie in one table. */
WP_INLINE int one_table(const wp_decode_job *job, long long j)
{
    return j / job->col_block == (j + 63) / job->col_block;
}

/* ---- LUT ------------------------------------------------------------------------------------ */

/* One element the scalar way (row tails and table boundaries). */
WP_INLINE void lut_element(const wp_decode_job *job, long long r, long long j, long long *k)
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

/* The table as byte planes: from the output-typed LUT (1 and 2 bytes) or the binary16 planes. */
WP_INLINE void table_planes(const wp_decode_job *job, long long t, half_planes *p)
{
    const int entries = 1 << job->nbits, stride = entries > 64 ? 256 : 64;
    if (job->elem_size == 4) {
        for (int q = 0; q < (entries > 64 ? 4 : 1); q++) {
            p->lo[q] = _mm512_loadu_si512(job->lut_lo + t * stride + 64 * q);
            p->hi[q] = _mm512_loadu_si512(job->lut_hi + t * stride + 64 * q);
        }
        return;
    }
    uint8_t lo[256] = {0}, hi[256] = {0};
    const uint8_t *table = (const uint8_t *)job->lut + t * entries * job->elem_size;
    for (int i = 0; i < entries; i++) {
        lo[i] = table[i * job->elem_size];
        if (job->elem_size == 2) hi[i] = table[2 * i + 1];
    }
    for (int q = 0; q < (entries > 64 ? 4 : 1); q++) {
        p->lo[q] = _mm512_loadu_si512(lo + 64 * q);
        p->hi[q] = _mm512_loadu_si512(hi + 64 * q);
    }
}


/* ---- shift-scale ---------------------------------------------------------------------------- */

WP_INLINE void quant_element(const wp_decode_job *job, long long r, long long j, long long *k)
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

WP_INLINE float scalar_at(const void *values, long long t, int half)
{
    return half ? _cvtsh_ss(((const uint16_t *)values)[t]) : ((const float *)values)[t];
}

/* Core ML's shift-scale of 16 codes of table t, in the scale's precision. */
WP_INLINE __m512 shift_scale16(const wp_decode_job *job, __m512i codes, long long t)
{
    const int n = job->nbits, h = job->half_math;
    if (job->is_signed) codes = _mm512_srai_epi32(_mm512_slli_epi32(codes, 32 - n), 32 - n);
    __m512 v = _mm512_cvtepi32_ps(codes);
    if (job->offset) {
        v = _mm512_sub_ps(v, _mm512_set1_ps(scalar_at(job->offset, t, h)));
        if (h) v = round_half(v);
    }
    v = _mm512_mul_ps(_mm512_set1_ps(scalar_at(job->scale, t, h)), v);
    return h ? round_half(v) : v;
}

static void quant_chunk(const wp_decode_job *job, long long r, long long j0, long long j1, long long k)
{
    const int n = job->nbits;
    const __m512i spread = _mm512_loadu_si512(SPREAD[n < 8 ? n : 8]);
    /* table of column j is t = row_table[r] + block, block = j / col_block, tracked incrementally */
    long long block = j0 / job->col_block, block_end = (block + 1) * job->col_block;
    long long j = j0;
    while (j < j1) {
        if (j + 64 > j1) {
            quant_element(job, r, j++, &k);
            continue;
        }
        const long long e = r * job->cols + j;
        const __mmask64 m = job->mask ? mask64(job->mask, e) : ~0ULL;
        const int cnt = (int)_mm_popcnt_u64(m);
        __m512i codes = cnt ? load_codes64(job->codes, k, n, cnt, spread) : _mm512_setzero_si512();
        if (job->mask) codes = _mm512_maskz_expand_epi8(m, codes);
        k += cnt;
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++) {
            const long long jq = j + 16 * q;
            while (jq >= block_end) {
                block++;
                block_end += job->col_block;
            }
            const __m512i c = _mm512_cvtepu8_epi32(lane128(codes, q));
            __m512 w;
            if (jq + 16 <= block_end) {
                w = shift_scale16(job, c, job->row_table[r] + block);
            } else { /* a table boundary inside these 16: lane by lane */
                float lanes[16];
                int32_t raw[16];
                _mm512_storeu_si512(raw, c);
                for (int i = 0; i < 16; i++) {
                    const long long t = job->row_table[r] + (jq + i) / job->col_block;
                    const int v = wp_code_value((unsigned)raw[i], n, job->is_signed);
                    lanes[i] = wp_shift_scale((float)v, job->scale, job->offset, t, job->half_math);
                }
                w = _mm512_loadu_ps(lanes);
            }
            w = _mm512_maskz_mov_ps((__mmask16)(m >> (16 * q)), w);
            if (job->out_half) _mm256_storeu_si256((__m256i *)((uint16_t *)job->out + e + 16 * q), _mm512_cvtps_ph(w, RNE));
            else _mm512_storeu_ps((float *)job->out + e + 16 * q, w);
        }
        j += 64;
    }
}

/* Planes of all 2^n decoded binary16 values of table t (binary16 arithmetic only). */
WP_INLINE void quant_planes(const wp_decode_job *job, long long t, half_planes *p)
{
    const int entries = 1 << job->nbits;
    uint8_t lo[256] = {0}, hi[256] = {0};
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int q = 0; q < entries / 16; q++) {
        const __m256i half = _mm512_cvtps_ph(shift_scale16(job, _mm512_add_epi32(iota, _mm512_set1_epi32(16 * q)), t), RNE);
        _mm_storeu_si128((__m128i *)(lo + 16 * q), _mm256_cvtepi16_epi8(half));
        _mm_storeu_si128((__m128i *)(hi + 16 * q), _mm256_cvtepi16_epi8(_mm256_srli_epi16(half, 8)));
    }
    for (int q = 0; q < (entries > 64 ? 4 : 1); q++) {
        p->lo[q] = _mm512_loadu_si512(lo + 64 * q);
        p->hi[q] = _mm512_loadu_si512(hi + 64 * q);
    }
}

/* Decode [j0, j1) of row r through byte planes: a LUT's, or (quant) the table of every code's
   value under binary16 arithmetic. Elements outside whole 64-steps of one table go one by one. */
WP_INLINE void planes_chunk(const wp_decode_job *job, long long r, long long j0, long long j1, long long k, int quant)
{
    const int n = job->nbits, es = job->elem_size;
    const __m512i spread = _mm512_loadu_si512(SPREAD[n < 8 ? n : 8]);
    const __m512i inter0 = _mm512_loadu_si512(INTERLEAVE[0]), inter1 = _mm512_loadu_si512(INTERLEAVE[1]);
    long long table = -1;
    half_planes planes;
    long long j = j0;
    while (j < j1) {
        if (j + 64 > j1 || !one_table(job, j)) {
            if (quant) quant_element(job, r, j++, &k);
            else lut_element(job, r, j++, &k);
            continue;
        }
        const long long t = job->row_table[r] + j / job->col_block, e = r * job->cols + j;
        if (t != table) {
            if (quant) quant_planes(job, t, &planes);
            else table_planes(job, t, &planes);
            table = t;
        }
        const __mmask64 m = job->mask ? mask64(job->mask, e) : ~0ULL;
        const int cnt = (int)_mm_popcnt_u64(m);
        __m512i codes = cnt ? load_codes64(job->codes, k, n, cnt, spread) : _mm512_setzero_si512();
        if (job->mask) codes = _mm512_maskz_expand_epi8(m, codes);
        k += cnt;
        __m512i lo, hi;
        plane_lookup(&planes, codes, m, n, &lo, &hi);
        uint8_t *dst = (uint8_t *)job->out + e * es;
        if (es == 1) {
            _mm512_storeu_si512(dst, lo);
        } else if (es == 2) {
            _mm512_storeu_si512(dst, _mm512_permutex2var_epi8(lo, inter0, hi));
            _mm512_storeu_si512(dst + 64, _mm512_permutex2var_epi8(lo, inter1, hi));
        } else {
            __m512 w[4];
            planes_to_floats(lo, hi, inter0, inter1, w);
            for (int q = 0; q < 4; q++) _mm512_storeu_ps((float *)dst + 16 * q, w[q]);
        }
        j += 64;
    }
}

static void lut_chunk(const wp_decode_job *job, long long r, long long j0, long long j1, long long k)
{
    planes_chunk(job, r, j0, j1, k, 0);
}

static void quant_table_chunk(const wp_decode_job *job, long long r, long long j0, long long j1, long long k)
{
    planes_chunk(job, r, j0, j1, k, 1);
}

int wp_lut_decode_avx512(const wp_decode_job *job)
{
    if (job->vsize != 1 || (job->elem_size == 4 && !job->lut_lo)) return WP_NOT_COVERED;
    if (job->mask && job->cols % 8) return WP_NOT_COVERED; /* rows start on whole mask bytes */
    return run_chunks(job, lut_chunk);
}

int wp_quant_decode_avx512(const wp_decode_job *job)
{
    if (job->mask && job->cols % 8) return WP_NOT_COVERED;
    const int long_tables = job->col_block >= (job->nbits == 8 ? 1024 : 128);
    return run_chunks(job, job->half_math && long_tables ? quant_table_chunk : quant_chunk);
}

/* ---- sparse values -------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *mask;
    long long count;
    const void *values;
    int elem_size, widen_half;
    void *out;
    const long long *starts;
} sparse_tasks;

static void expand_chunks(void *ctx, long long t0, long long t1)
{
    const sparse_tasks *s = ctx;
    const int elem_size = s->elem_size, widen_half = s->widen_half, out_size = widen_half ? 4 : elem_size;
    const int lanes = 64 / elem_size; /* values per expand */
    const uint8_t *src = s->values;
    uint8_t *dst = s->out;
    for (long long t = t0; t < t1; t++) {
        const long long e1 = (t + 1) * CHUNK < s->count ? (t + 1) * CHUNK : s->count;
        long long k = s->starts[t], e = t * CHUNK;
        for (; e + 64 <= e1; e += 64) {
            const uint64_t m = mask64(s->mask, e);
            for (int part = 0; part < elem_size; part++) {
                const uint64_t pm = lanes == 64 ? m : (m >> (part * lanes)) & ((1ULL << lanes) - 1);
                const int take = (int)_mm_popcnt_u64(pm);
                const uint64_t load = take == 64 ? ~0ULL : (1ULL << take) - 1;
                uint8_t *d = dst + (e + part * lanes) * out_size;
                if (elem_size == 1) {
                    _mm512_storeu_si512(d, _mm512_maskz_expand_epi8(pm, _mm512_maskz_loadu_epi8(load, src + k)));
                } else if (elem_size == 2) {
                    const __m512i v = _mm512_maskz_expand_epi16((__mmask32)pm, _mm512_maskz_loadu_epi16((__mmask32)load, src + 2 * k));
                    if (widen_half) {
                        _mm512_storeu_ps(d, _mm512_cvtph_ps(_mm512_castsi512_si256(v)));
                        _mm512_storeu_ps(d + 64, _mm512_cvtph_ps(_mm512_extracti64x4_epi64(v, 1)));
                    } else {
                        _mm512_storeu_si512(d, v);
                    }
                } else {
                    _mm512_storeu_si512(d, _mm512_maskz_expand_epi32((__mmask16)pm, _mm512_maskz_loadu_epi32((__mmask16)load, src + 4 * k)));
                }
                k += take;
            }
        }
        for (; e < e1; e++) wp_sparse_element(s->mask, e, src, &k, elem_size, widen_half, dst);
    }
}

int wp_sparse_decode_avx512(const uint8_t *mask, long long count, const void *values, long long n_values, int elem_size,
                            int widen_half, void *out)
{
    const long long tasks = (count + CHUNK - 1) / CHUNK;
    long long *starts = chunk_starts(mask, 1, count, tasks);
    if (!starts) return WP_NOT_COVERED;
    if (starts[tasks] > n_values) {
        free(starts);
        return WP_E_SIZE;
    }
    sparse_tasks s = {mask, count, values, elem_size, widen_half, out, starts};
    wp_parallel_for(tasks, 1, expand_chunks, &s);
    free(starts);
    return WP_OK;
}

WP_TARGET_POP()
#endif
