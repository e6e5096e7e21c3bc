/*
 * Fast mode row kernels on AVX-512 VNNI (the arithmetic is explained in fast.c): one vpdpbusd
 * does 64 multiply-adds of unsigned weight bytes by int8 activations.
 */
#include "wp_target.h"
#if WP_X86
WP_TARGET_PUSH(WP_AVX512_FEATURES)
#include <immintrin.h>

#include "fast.h"

/* Unsigned weight bytes for 64 codes of one phase: table lookup (LUT) or code + bias. */
WP_INLINE __m512i weight_bytes(__m512i codes, __m512i table, int lut)
{
    return lut ? _mm512_shuffle_epi8(table, codes) : codes;
}

/* One row, one batch item: tables spanning whole 64-byte steps. */
WP_INLINE float fast_row(const wp_fast_args *a, long long r, const int8_t *xq, const float *lane_sx, const double *prefix,
                         int n, int lut)
{
    const int per = 8 / n;
    const long long len = a->cols / per, row_bytes = len;
    const __m512i low_mask = _mm512_set1_epi8((char)((1 << n) - 1));
    /* signed codes become code + 2^(n-1), unsigned: flip the top bit of every code of every byte */
    const __m512i flip = _mm512_set1_epi8((char)(a->is_signed && !lut ? (n == 8 ? 0x80 : 0x88) : 0));
    float total = 0.0f;
    for (long long j0 = 0; j0 < a->cols; j0 += a->col_block) {
        const long long t = a->row_table[r] + j0 / a->col_block;
        const __m512i table = lut ? _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(a->table_u8 + 16 * t)))
                                  : _mm512_setzero_si512();
        __m512 acc = _mm512_setzero_ps();
        const long long k0 = j0 / per, k1 = (j0 + a->col_block) / per;
        for (long long k = k0; k < k1; k += 64) { /* 64 bytes of codes */
            MCA_BEGIN("fast");
            WP_PREFETCH(a->codes + r * row_bytes + k);
            const __m512i raw = _mm512_xor_si512(_mm512_loadu_si512(a->codes + r * row_bytes + k), flip);
            const __m512 sx = _mm512_loadu_ps(lane_sx + k / 4);
            /* every phase's lane L lies in the same activation block: one integer sum for all phases */
            __m512i dot = _mm512_setzero_si512();
            for (int p = 0; p < per; p++) {
                const __m512i codes = n == 8 ? raw : _mm512_and_si512(p ? _mm512_srli_epi16(raw, (unsigned)(p * n)) : raw, low_mask);
                dot = _mm512_dpbusd_epi32(dot, weight_bytes(codes, table, lut), _mm512_loadu_si512(xq + p * len + k));
            }
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sx, acc);
            MCA_END();
        }
        const float correction = (float)(prefix[(j0 + a->col_block) / WP_QBLOCK] - prefix[j0 / WP_QBLOCK]); /* sum sx_b S_b */
        total += a->table_scale[t] * (_mm512_reduce_add_ps(acc) - wp_fast_bias(a, t) * correction);
    }
    return total;
}

/* One row, one batch item: quantized weights with one table per block of 32 columns. Lane L of
   a step covers block L*4*per/32 of the step; its factor is that block's weight scale times sx. */
WP_INLINE float fast_row_blocks(const wp_fast_args *a, long long r, const int8_t *xq, const float *lane_sx,
                                const float *block_sum, int n)
{
    const int per = 8 / n, blocks_per_step = 2 * per; /* 64 bytes = 64*per columns = 2*per blocks */
    const long long len = a->cols / per, row_bytes = len, t0 = a->row_table[r];
    const __m512i low_mask = _mm512_set1_epi8((char)((1 << n) - 1));
    __m512i lane_block = _mm512_setzero_si512(); /* block (within the step) of every lane */
    for (int lane = 0; lane < 16; lane++)
        lane_block = _mm512_mask_mov_epi32(lane_block, (__mmask16)(1u << lane), _mm512_set1_epi32(lane * blocks_per_step / 16));
    __m512 acc = _mm512_setzero_ps();
    const __m512i flip_all = _mm512_set1_epi8((char)(a->is_signed ? (n == 8 ? 0x80 : 0x88) : 0)); /* every code of a byte */
    for (long long k = 0; k < len; k += 64) {
        MCA_BEGIN("blocks");
        WP_PREFETCH(a->codes + r * row_bytes + k);
        if (!(k & 255)) WP_PREFETCH(a->table_scale + t0 + k * per / WP_QBLOCK); /* a line of scales per 256 bytes */
        const __m512i raw = _mm512_xor_si512(_mm512_loadu_si512(a->codes + r * row_bytes + k), flip_all);
        const __m512 scales = _mm512_permutexvar_ps(lane_block, _mm512_maskz_loadu_ps((__mmask16)((1u << blocks_per_step) - 1),
                                                                                        a->table_scale + t0 + k * per / WP_QBLOCK));
        const __m512 factor = _mm512_mul_ps(scales, _mm512_loadu_ps(lane_sx + k / 4));
        __m512i dot = _mm512_setzero_si512();
        for (int p = 0; p < per; p++) {
            const __m512i codes = n == 8 ? raw : _mm512_and_si512(p ? _mm512_srli_epi16(raw, (unsigned)(p * n)) : raw, low_mask);
            dot = _mm512_dpbusd_epi32(dot, codes, _mm512_loadu_si512(xq + p * len + k));
        }
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), factor, acc);
        MCA_END();
    }
    __m512 correction = _mm512_setzero_ps(); /* sum_b s_b * c_b * sx_b * S_b */
    const long long blocks = a->cols / WP_QBLOCK;
    for (long long b = 0; b < blocks; b += 16) {
        const __mmask16 m = blocks - b >= 16 ? 0xffff : (__mmask16)((1u << (blocks - b)) - 1);
        const __m512 bias = a->table_bias ? _mm512_maskz_loadu_ps(m, a->table_bias + t0 + b) : _mm512_set1_ps(wp_fast_bias(a, t0));
        const __m512 sc = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, a->table_scale + t0 + b), bias);
        correction = _mm512_fmadd_ps(sc, _mm512_maskz_loadu_ps(m, block_sum + b), correction);
    }
    return _mm512_reduce_add_ps(acc) - _mm512_reduce_add_ps(correction);
}

WP_FAST_ROWS(wp_fast_rows_avx512, fast_row, fast_row_blocks)

WP_TARGET_POP()
#endif
