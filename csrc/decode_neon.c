/*
 * NEON decompression (aarch64): 16 elements at a time, split over threads in chunks of a row
 * (decode_chunks.c).  Codes come to one byte each and expand under their mask bits
 * (neon_common.h); tables are looked up in registers as byte planes of the output type (a LUT
 * already converted to it, or the 16 values a 4-bit shift-scale table decodes to) and stored
 * with st1 / st2 / st4; 8-bit shift-scale is computed lane by lane in Core ML's arithmetic.
 * Elements that do not fill a whole 16-step inside one table go through the scalar code.
 */
#include "wp_target.h"
#if WP_ARM64
#include <stdlib.h>

#include "decode_chunks.h"
#include "neon_common.h"
#include "wp_dispatch.h"

/* Whether the 16 columns from j lie in one table. */
WP_INLINE int one_table(const wp_decode_job *job, long long j)
{
    return j / job->col_block == (j + 15) / job->col_block;
}

/* 16 codes for the 16 columns from e (element index), expanded under the mask when there is one:
   cleared lanes are 0, and *keep is 0xff where a code was stored.  Advances *k. */
WP_INLINE uint8x16_t codes_at(const wp_decode_job *job, long long e, long long *k, uint8x16_t *keep)
{
    if (!job->mask) {
        const uint8x16_t codes = wp_unpack16(job->codes, job->codes_len, *k, job->nbits);
        *k += 16;
        *keep = vdupq_n_u8(0xff);
        return codes;
    }
    const unsigned m = wp_mask16(job->mask, e);
    const uint8x16_t idx = wp_expand_index(m);
    *keep = wp_expand_keep(idx);
    if (!m) return vdupq_n_u8(0);
    const uint8x16_t codes = vqtbl1q_u8(wp_unpack16(job->codes, job->codes_len, *k, job->nbits), idx);
    *k += wp_popcount16(m);
    return codes;
}

/* ---- tables: a LUT, or the 16 values of a 4-bit shift-scale table ---------------------------- */

/* Value t of a binary16 or float32 array, broadcast to 4 float32 lanes (exactly). */
WP_INLINE float32x4_t broadcast_at(const void *values, long long t, int half)
{
    if (half) return vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(((const uint16_t *)values)[t])));
    return vdupq_n_f32(((const float *)values)[t]);
}

/* Table t's scale and offset, broadcast. */
WP_INLINE void table_factors(const wp_decode_job *job, long long t, float32x4_t *scale, float32x4_t *offset)
{
    *scale = broadcast_at(job->scale, t, job->half_math);
    *offset = job->offset ? broadcast_at(job->offset, t, job->half_math) : vdupq_n_f32(0.0f);
}

/* The 16 output values (binary16 or float32) of every 4-bit code of shift-scale table t. */
WP_INLINE void quant_table16(const wp_decode_job *job, long long t, uint8_t out[64])
{
    float32x4_t scale, offset;
    table_factors(job, t, &scale, &offset);
    const int32x4_t iota = {0, 1, 2, 3};
    for (int q = 0; q < 4; q++) {
        int32x4_t codes = vaddq_s32(iota, vdupq_n_s32(4 * q));
        if (job->is_signed) codes = vsubq_s32(veorq_s32(codes, vdupq_n_s32(8)), vdupq_n_s32(8)); /* two's complement */
        const float32x4_t w = wp_shift_scale4(vcvtq_f32_s32(codes), scale, offset, job->offset != NULL, job->half_math);
        if (job->out_half) vst1_u16((uint16_t *)out + 4 * q, vreinterpret_u16_f16(vcvt_f16_f32(w)));
        else vst1q_f32((float *)out + 4 * q, w);
    }
}

WP_INLINE void table_planes(const wp_decode_job *job, long long t, int quant, wp_plane planes[4])
{
    const int n = job->nbits, es = job->elem_size;
    if (quant) {
        uint8_t values[64];
        quant_table16(job, t, values);
        wp_make_planes(values, 16, es, planes);
    } else {
        wp_make_planes((const uint8_t *)job->lut + (t << n) * es, 1 << n, es, planes);
    }
}

/* Decode [j0, j1) of row r through byte planes: a LUT's, or (quant) those of the 16 values of a
   4-bit shift-scale table.  Elements outside whole 16-steps of one table go one by one. */
WP_INLINE void planes_chunk(const wp_decode_job *job, long long r, long long j0, long long j1, long long k, int quant)
{
    const int n = job->nbits, es = job->elem_size;
    uint8_t *out = (uint8_t *)job->out + (quant ? r * job->cols : job->row_out[r]) * es;
    long long table = -1;
    wp_plane planes[4];
    long long j = j0;
    while (j < j1) {
        if (j + 16 > j1 || !one_table(job, j)) {
            if (quant) wp_quant_element(job, r, j++, &k);
            else wp_lut_element(job, r, j++, &k);
            continue;
        }
        const long long t = job->row_table[r] + j / job->col_block;
        if (t != table) {
            table_planes(job, t, quant, planes);
            table = t;
        }
        uint8x16_t keep;
        uint8x16_t codes = codes_at(job, r * job->cols + j, &k, &keep);
        if (n < 8) codes = vornq_u8(codes, keep); /* cleared lanes: index 0xff, which looks up 0 */
        uint8x16_t v[4];
        for (int b = 0; b < es; b++) {
            v[b] = wp_plane_lookup(&planes[b], codes, n);
            if (n == 8) v[b] = vandq_u8(v[b], keep);
        }
        wp_store_planes(out + j * es, v, es);
        j += 16;
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

/* ---- shift-scale, lane by lane -------------------------------------------------------------- */

/* Decode the 16 codes of table t at element e (lanes where keep is 0 become +0.0). */
typedef void (*quant_step_fn)(const wp_decode_job *job, long long t, uint8x16_t codes, uint8x16_t keep, long long e);

/* Decode [j0, j1) of row r, 16 codes a step; elements outside whole steps of one table one by one. */
WP_INLINE void quant_steps(const wp_decode_job *job, long long r, long long j0, long long j1, long long k, quant_step_fn step)
{
    long long j = j0;
    while (j < j1) {
        if (j + 16 > j1 || !one_table(job, j)) {
            wp_quant_element(job, r, j++, &k);
            continue;
        }
        const long long e = r * job->cols + j;
        uint8x16_t keep;
        const uint8x16_t codes = codes_at(job, e, &k, &keep);
        step(job, job->row_table[r] + j / job->col_block, codes, keep, e);
        j += 16;
    }
}

WP_INLINE void quant_step(const wp_decode_job *job, long long t, uint8x16_t codes, uint8x16_t keep, long long e)
{
    float32x4_t scale, offset, q[4];
    table_factors(job, t, &scale, &offset);
    wp_code_values(codes, job->nbits, job->is_signed, q);
    for (int i = 0; i < 4; i++) {
        const float32x4_t v = wp_shift_scale4(q[i], scale, offset, job->offset != NULL, job->half_math);
        const float32x4_t w = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(v), wp_keep32(keep, i)));
        if (job->out_half) vst1_u16((uint16_t *)job->out + e + 4 * i, vreinterpret_u16_f16(vcvt_f16_f32(w)));
        else vst1q_f32((float *)job->out + e + 4 * i, w);
    }
}

static void quant_chunk(const wp_decode_job *job, long long r, long long j0, long long j1, long long k)
{
    quant_steps(job, r, j0, j1, k, quant_step);
}

WP_TARGET_PUSH(WP_FP16_FEATURES)

/* Binary16 scale and offset: Core ML's arithmetic in binary16 lanes, 8 at a time. */
WP_INLINE void quant_step_fp16(const wp_decode_job *job, long long t, uint8x16_t codes, uint8x16_t keep, long long e)
{
    const float16x8_t scale = vreinterpretq_f16_u16(vdupq_n_u16(((const uint16_t *)job->scale)[t]));
    const float16x8_t offset = vreinterpretq_f16_u16(vdupq_n_u16(job->offset ? ((const uint16_t *)job->offset)[t] : 0));
    int16x8_t q[2];
    wp_code_values16(codes, job->nbits, job->is_signed, q);
    const int8x16_t keep8 = vreinterpretq_s8_u8(keep);
    const int16x8_t keep16[2] = {vmovl_s8(vget_low_s8(keep8)), vmovl_high_s8(keep8)};
    for (int h = 0; h < 2; h++) {
        const float16x8_t w = vreinterpretq_f16_s16(
            vandq_s16(vreinterpretq_s16_f16(wp_shift_scale8_fp16(q[h], scale, offset, job->offset != NULL)), keep16[h]));
        if (job->out_half) {
            vst1q_u16((uint16_t *)job->out + e + 8 * h, vreinterpretq_u16_f16(w));
        } else {
            vst1q_f32((float *)job->out + e + 8 * h, vcvt_f32_f16(vget_low_f16(w)));
            vst1q_f32((float *)job->out + e + 8 * h + 4, vcvt_high_f32_f16(w));
        }
    }
}

static void quant_chunk_fp16(const wp_decode_job *job, long long r, long long j0, long long j1, long long k)
{
    quant_steps(job, r, j0, j1, k, quant_step_fp16);
}

WP_TARGET_POP()

int wp_lut_decode_neon(const wp_decode_job *job)
{
    if (job->vsize != 1 || job->col_stride != 1) return WP_NOT_COVERED;
    return wp_run_chunks(job, lut_chunk);
}

int wp_quant_decode_neon(const wp_decode_job *job)
{
    /* 4-bit codes look their value up in a 16-entry table once a table serves two steps */
    if (job->nbits == 4 && job->col_block >= 32) return wp_run_chunks(job, quant_table_chunk);
    return wp_run_chunks(job, job->half_math && wp_simd_level() >= WP_LEVEL_FP16 ? quant_chunk_fp16 : quant_chunk);
}

/* ---- sparse values -------------------------------------------------------------------------- */

static void expand_chunks(void *ctx, long long t0, long long t1)
{
    const wp_sparse_tasks *s = ctx;
    const int es = s->elem_size, out_size = s->widen_half ? 4 : es;
    for (long long t = t0; t < t1; t++) {
        const long long e1 = (t + 1) * WP_DECODE_CHUNK < s->count ? (t + 1) * WP_DECODE_CHUNK : s->count;
        long long k = s->starts[t], e = t * WP_DECODE_CHUNK;
        for (; e + 16 <= e1; e += 16) {
            const unsigned m = wp_mask16(s->mask, e);
            uint8_t *dst = s->out + e * out_size;
            if (!m) {
                memset(dst, 0, (size_t)(16 * out_size));
                continue;
            }
            uint8x16_t v[4];
            wp_expand_values(s->values + k * es, (s->n_values - k) * es, wp_expand_index(m), es, v);
            k += wp_popcount16(m);
            if (s->widen_half) {
                for (int h = 0; h < 2; h++) {
                    const float16x8_t halves = vreinterpretq_f16_u8(v[h]);
                    vst1q_f32((float *)dst + 8 * h, vcvt_f32_f16(vget_low_f16(halves)));
                    vst1q_f32((float *)dst + 8 * h + 4, vcvt_high_f32_f16(halves));
                }
            } else {
                for (int q = 0; q < es; q++) vst1q_u8(dst + 16 * q, v[q]);
            }
        }
        for (; e < e1; e++) wp_sparse_element(s->mask, e, s->values, &k, es, s->widen_half, s->out);
    }
}

int wp_sparse_decode_neon(const uint8_t *mask, long long count, const void *values, long long n_values, int elem_size,
                          int widen_half, void *out)
{
    const long long tasks = (count + WP_DECODE_CHUNK - 1) / WP_DECODE_CHUNK;
    long long *starts = wp_chunk_starts(mask, 1, count, tasks);
    if (!starts) return WP_NOT_COVERED;
    if (starts[tasks] > n_values) {
        free(starts);
        return WP_E_SIZE;
    }
    wp_sparse_tasks s = {mask, count, n_values, values, elem_size, widen_half, out, starts};
    wp_parallel_for(tasks, 1, expand_chunks, &s);
    free(starts);
    return WP_OK;
}

#endif
