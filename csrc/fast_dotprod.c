/*
 * Fast mode row kernels on the aarch64 dot-product instructions (the arithmetic is explained in
 * fast.c): one SDOT does 16 multiply-adds of int8 weights by int8 activations into 4 int32 lanes.
 *
 * fast.c describes weights as unsigned bytes u with a per-table bias c: w = s * (u - c).  SDOT
 * multiplies signed bytes, so the kernels use w' = u - d, an int8 (d = 128 for LUT entries and
 * 8-bit codes, 8 for 4-bit codes) and the bias c - d: sum u*xq - c*sum xq = sum w'*xq - (c - d)*sum xq.
 * Signed codes then are their own w' (a sign extension for 4 bits); LUT entries are looked up
 * (tbl) in the table with its top bit flipped.
 */
#include "wp_target.h"
#if WP_ARM64
WP_TARGET_PUSH(WP_DOTPROD_FEATURES)
#include <arm_neon.h>

#include "fast.h"
#include "neon_common.h"

/* acc += the dot products of each 4-byte group of a and b (inline assembly: see wp_target.h). */
WP_INLINE int32x4_t sdot(int32x4_t acc, int8x16_t a, int8x16_t b)
{
    __asm__("sdot %0.4s, %1.16b, %2.16b" : "+w"(acc) : "w"(a), "w"(b));
    return acc;
}

/* w' = u - d of the 16 codes of phase p in raw (see above). */
WP_INLINE int8x16_t phase_weights(uint8x16_t raw, int p, int n, int lut, int is_signed, int8x16_t table)
{
    const int per = 8 / n;
    if (lut) {
        uint8x16_t codes = p ? vshlq_u8(raw, vdupq_n_s8((int8_t)(-p * n))) : raw;
        if (p < per - 1) codes = vandq_u8(codes, vdupq_n_u8((uint8_t)((1 << n) - 1)));
        return vqtbl1q_s8(table, codes);
    }
    if (n == 8) return vreinterpretq_s8_u8(is_signed ? raw : veorq_u8(raw, vdupq_n_u8(0x80)));
    const int8x16_t s = vreinterpretq_s8_u8(is_signed ? raw : veorq_u8(raw, vdupq_n_u8(0x88))); /* 4-bit */
    return p ? vshrq_n_s8(s, 4) : vshrq_n_s8(vshlq_n_s8(s, 4), 4);
}

/* The integer dot product of one 16-byte step of a row with every phase's activations. */
WP_INLINE int32x4_t step_dot(const uint8_t *codes, const int8_t *xq, long long len, int n, int lut, int is_signed,
                             int8x16_t table)
{
    const uint8x16_t raw = vld1q_u8(codes);
    int32x4_t dot = vdupq_n_s32(0);
    WP_UNROLL
    for (int p = 0; p < 8 / n; p++) dot = sdot(dot, phase_weights(raw, p, n, lut, is_signed, table), vld1q_s8(xq + p * len));
    return dot;
}

/* d of the kernel's w' = u - d. */
WP_INLINE float weight_shift(int n, int lut) { return lut || n == 8 ? 128.0f : 8.0f; }

/* One row, one batch item: tables spanning whole 16-byte steps. */
WP_INLINE float fast_row(const wp_fast_args *a, long long r, const int8_t *xq, const float *lane_sx, const double *prefix,
                         int n, int lut)
{
    const int per = 8 / n;
    const long long len = a->cols / per;
    const uint8_t *row = a->codes + r * len;
    float total = 0.0f;
    for (long long j0 = 0; j0 < a->cols; j0 += a->col_block) {
        const long long t = a->row_table[r] + j0 / a->col_block;
        const int8x16_t table = lut ? vreinterpretq_s8_u8(veorq_u8(vld1q_u8(a->table_u8 + 16 * t), vdupq_n_u8(0x80)))
                                    : vdupq_n_s8(0);
        float32x4_t acc[2] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
        const long long k0 = j0 / per, k1 = (j0 + a->col_block) / per;
        for (long long k = k0; k < k1; k += 32) { /* col_block is a multiple of 64 * per: whole pairs of steps */
            WP_UNROLL
            for (int h = 0; h < 2; h++) {
                const int32x4_t dot = step_dot(row + k + 16 * h, xq + k + 16 * h, len, n, lut, a->is_signed, table);
                acc[h] = vfmaq_f32(acc[h], vcvtq_f32_s32(dot), vld1q_f32(lane_sx + (k + 16 * h) / 4));
            }
        }
        const float correction = (float)(prefix[(j0 + a->col_block) / WP_QBLOCK] - prefix[j0 / WP_QBLOCK]); /* sum sx_b S_b */
        const float bias = wp_fast_bias(a, t) - weight_shift(n, lut);
        total += a->table_scale[t] * (vaddvq_f32(vaddq_f32(acc[0], acc[1])) - bias * correction);
    }
    return total;
}

/* One row, one batch item: quantized weights with one table per block of 32 columns.  A 16-byte
   step covers one block (4-bit codes) or half of one (8-bit): one weight scale per step. */
WP_INLINE float fast_row_blocks(const wp_fast_args *a, long long r, const int8_t *xq, const float *lane_sx,
                                const float *block_sum, int n)
{
    const int per = 8 / n;
    const long long len = a->cols / per, t0 = a->row_table[r];
    const uint8_t *row = a->codes + r * len;
    float32x4_t acc[2] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    for (long long k = 0; k < len; k += 32) {
        WP_UNROLL
        for (int h = 0; h < 2; h++) {
            const long long kh = k + 16 * h;
            const int32x4_t dot = step_dot(row + kh, xq + kh, len, n, 0, a->is_signed, vdupq_n_s8(0));
            const float32x4_t factor = vmulq_n_f32(vld1q_f32(lane_sx + kh / 4), a->table_scale[t0 + kh * per / WP_QBLOCK]);
            acc[h] = vfmaq_f32(acc[h], vcvtq_f32_s32(dot), factor);
        }
    }
    const float shift = weight_shift(n, 0);
    float32x4_t correction = vdupq_n_f32(0.0f); /* sum_b s_b * (c_b - d) * sx_b * S_b */
    const long long blocks = a->cols / WP_QBLOCK;
    long long b = 0;
    for (; b + 4 <= blocks; b += 4) {
        const float32x4_t stored = a->table_bias ? vld1q_f32(a->table_bias + t0 + b) : vdupq_n_f32(wp_fast_bias(a, t0));
        const float32x4_t bias = vsubq_f32(stored, vdupq_n_f32(shift));
        correction = vfmaq_f32(correction, vmulq_f32(vld1q_f32(a->table_scale + t0 + b), bias), vld1q_f32(block_sum + b));
    }
    float rest = 0.0f;
    for (; b < blocks; b++) rest += a->table_scale[t0 + b] * (wp_fast_bias(a, t0 + b) - shift) * block_sum[b];
    return vaddvq_f32(vaddq_f32(acc[0], acc[1])) - (vaddvq_f32(correction) + rest);
}

WP_FAST_ROWS(wp_fast_rows_dotprod, fast_row, fast_row_blocks)

WP_TARGET_POP()
#endif
