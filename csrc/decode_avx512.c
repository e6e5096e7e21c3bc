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
#include "decode_chunks.h"
#include "wp_dispatch.h"

#define CHUNK WP_DECODE_CHUNK

/* 64 mask bits starting at bit e (the caller guarantees e + 64 <= element count). */
WP_INLINE uint64_t mask64(const uint8_t *mask, long long e)
{
    uint64_t m;
    memcpy(&m, mask + (e >> 3), 8);
    const unsigned s = (unsigned)(e & 7);
    return s ? (m >> s) | ((uint64_t)mask[(e >> 3) + 8] << (64 - s)) : m;
}

/* The codes of the 64 elements from element e, one per byte (sparse: expanded under their mask
   bits *m, zero elsewhere); *k, the stream position, moves past them. */
WP_INLINE __m512i step_codes(const wp_decode_job *job, long long e, __m512i spread, long long *k, __mmask64 *m)
{
    *m = job->mask ? mask64(job->mask, e) : ~0ULL;
    const int cnt = (int)_mm_popcnt_u64(*m);
    const __m512i codes = cnt ? load_codes64(job->codes, *k, job->nbits, cnt, spread) : _mm512_setzero_si512();
    *k += cnt;
    return job->mask ? _mm512_maskz_expand_epi8(*m, codes) : codes;
}

/* ---- LUT ------------------------------------------------------------------------------------ */

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
            wp_quant_element(job, r, j++, &k);
            continue;
        }
        MCA_BEGIN("quant");
        const long long e = r * job->cols + j;
        __mmask64 m;
        const __m512i codes = step_codes(job, e, spread, &k, &m);
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
        MCA_END();
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
   value under binary16 arithmetic. A table's elements short of a whole 64-step go one by one. */
WP_INLINE void planes_chunk(const wp_decode_job *job, long long r, long long j0, long long j1, long long k, int quant)
{
    const int n = job->nbits, es = job->elem_size;
    const __m512i spread = _mm512_loadu_si512(SPREAD[n < 8 ? n : 8]);
    const __m512i inter0 = _mm512_loadu_si512(INTERLEAVE[0]), inter1 = _mm512_loadu_si512(INTERLEAVE[1]);
    long long table = -1;
    half_planes planes;
    long long j = j0;
    while (j < j1) { /* one table's columns [j, end) at a time: one division per table, none per step */
        const long long block = j / job->col_block, t = job->row_table[r] + block;
        const long long end = (block + 1) * job->col_block < j1 ? (block + 1) * job->col_block : j1;
        if (j + 64 <= end && t != table) {
            if (quant) quant_planes(job, t, &planes);
            else table_planes(job, t, &planes);
            table = t;
        }
        for (; j + 64 <= end; j += 64) {
            MCA_BEGIN("planes");
            const long long e = r * job->cols + j;
            __mmask64 m;
            const __m512i codes = step_codes(job, e, spread, &k, &m);
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
            MCA_END();
        }
        for (; j < end; j++) { /* the table's last elements short of a whole step */
            if (quant) wp_quant_element(job, r, j, &k);
            else wp_lut_element(job, r, j, &k);
        }
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
    return wp_run_chunks(job, lut_chunk);
}

int wp_quant_decode_avx512(const wp_decode_job *job)
{
    if (job->mask && job->cols % 8) return WP_NOT_COVERED;
    const int long_tables = job->col_block >= (job->nbits == 8 ? 1024 : 128);
    return wp_run_chunks(job, job->half_math && long_tables ? quant_table_chunk : quant_chunk);
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
            MCA_BEGIN("expand");
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
            MCA_END();
        }
        for (; e < e1; e++) wp_sparse_element(s->mask, e, src, &k, elem_size, widen_half, dst);
    }
}

int wp_sparse_decode_avx512(const uint8_t *mask, long long count, const void *values, long long n_values, int elem_size,
                            int widen_half, void *out)
{
    const long long tasks = (count + CHUNK - 1) / CHUNK;
    long long *starts = wp_chunk_starts(mask, 1, count, tasks);
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
