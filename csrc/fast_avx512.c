/*
 * Fast mode row kernels on AVX-512 VNNI (the arithmetic is explained in fast.c): one vpdpbusd
 * does 64 multiply-adds of unsigned weight bytes by int8 activations.
 */
#include "wp_target.h"
#if WP_X86
WP_TARGET_PUSH(WP_AVX512_FEATURES)
#include <immintrin.h>

#include "fast.h"

#include <string.h>

/* Unsigned weight bytes for 64 codes of one phase: table lookup (LUT) or code + bias. */
WP_INLINE __m512i weight_bytes(__m512i codes, __m512i table, int lut)
{
    return lut ? _mm512_shuffle_epi8(table, codes) : codes;
}

/* The wp_fast_quantize_fn (fast.h) for `per` codes per weight byte, a constant at each call site:
   fast.c's portable loop, bit for bit, 16 columns per instruction. */
WP_INLINE void quantize_per(const float *x, long long cols, int per, int8_t *xq, float *block_sx, float *block_sum)
{
    const long long blocks = cols / WP_QBLOCK, len = cols / per;
    const int chunk = WP_QBLOCK / per;
    uint8_t order[WP_QBLOCK]; /* byte m of the permuted codes is element (m % chunk) * per + m / chunk */
    for (int m = 0; m < WP_QBLOCK; m++) order[m] = (uint8_t)(m % chunk * per + m / chunk);
    const __m256i phases = _mm256_loadu_si256((const __m256i *)order);
    for (long long b = 0; b < blocks; b++) {
        const __m512 x0 = _mm512_loadu_ps(x + b * WP_QBLOCK), x1 = _mm512_loadu_ps(x + b * WP_QBLOCK + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
        const float sx = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        /* vcvtps2dq rounds to nearest even, as lrintf does in the default rounding mode */
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, _mm512_set1_ps(inv)));
        const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, _mm512_set1_ps(inv)));
        __m256i codes = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm512_cvtepi32_epi8(q0)), _mm512_cvtepi32_epi8(q1), 1);
        if (per > 1) codes = _mm256_permutexvar_epi8(phases, codes); /* phase p's codes: bytes [p*chunk, (p+1)*chunk) */
        int8_t split[WP_QBLOCK];
        _mm256_storeu_si256((__m256i *)split, codes);
        for (int p = 0; p < per; p++) memcpy(xq + p * len + b * chunk, split + p * chunk, (size_t)chunk);
        block_sx[b] = sx;
        block_sum[b] = sx * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    }
}

void wp_fast_quantize_avx512(const float *x, long long cols, int per, int8_t *xq, float *block_sx, float *block_sum)
{
    switch (per) {
    case 1: quantize_per(x, cols, 1, xq, block_sx, block_sum); break;
    case 2: quantize_per(x, cols, 2, xq, block_sx, block_sum); break;
    case 4: quantize_per(x, cols, 4, xq, block_sx, block_sum); break;
    default: quantize_per(x, cols, 8, xq, block_sx, block_sum); break;
    }
}

/* Rows per pass for 8-bit codes: they share each load of the activations and lane scales, and
   each prefetches the same place in the next tile's rows, as in the exact kernels (int8 per
   channel, 4096 x 4096, two threads: 0.63-0.71 -> 0.57-0.59 ms).  Codes of 4 bits and less run
   one row at a time: the same tiles were 2-6% slower there (rows of 2 KB; bench/NOTES.md). */
#define ROW_TILE 4

/* Where the codes of row r (within a tile of rt rows) are read, with the hint for the same place
   in the next tile's rows (each row of a tile is its own short stream, which the hardware
   prefetchers follow poorly), or WP_PREFETCH's distance ahead when the rows run one at a time. */
WP_INLINE const uint8_t *tile_codes(const wp_fast_args *a, long long row_bytes, long long r, long long k, int rt)
{
    const uint8_t *codes = a->codes + r * row_bytes + k;
    if (rt == 1) WP_PREFETCH(codes);
    else __builtin_prefetch(codes + rt * row_bytes, 0, 3);
    return codes;
}

/* The integer dot products of 64 code bytes with every phase's activations (xq[p]). */
WP_INLINE __m512i step_dot(__m512i raw, const __m512i *xq, __m512i table, int n, int lut)
{
    const __m512i low_mask = _mm512_set1_epi8((char)((1 << n) - 1));
    __m512i dot = _mm512_setzero_si512();
    for (int p = 0; p < 8 / n; p++) {
        const __m512i codes = n == 8 ? raw : _mm512_and_si512(p ? _mm512_srli_epi16(raw, (unsigned)(p * n)) : raw, low_mask);
        dot = _mm512_dpbusd_epi32(dot, weight_bytes(codes, table, lut), xq[p]);
    }
    return dot;
}

/* Rows [r, r + rt), one batch item (y: their outputs): tables spanning whole 64-byte steps. */
WP_INLINE void fast_tile(const wp_fast_args *a, long long r, int rt, const int8_t *xq, const float *lane_sx,
                         const double *prefix, int n, int lut, float *y)
{
    const int per = 8 / n;
    const long long len = a->cols / per;
    /* signed codes become code + 2^(n-1), unsigned: flip the top bit of every code of every byte */
    const __m512i flip = _mm512_set1_epi8((char)(a->is_signed && !lut ? (n == 8 ? 0x80 : 0x88) : 0));
    float total[ROW_TILE] = {0};
    for (long long j0 = 0; j0 < a->cols; j0 += a->col_block) {
        long long t[ROW_TILE];
        __m512i table[ROW_TILE];
        __m512 acc[ROW_TILE];
        for (int i = 0; i < rt; i++) {
            t[i] = a->row_table[r + i] + j0 / a->col_block;
            table[i] = lut ? _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(a->table_u8 + 16 * t[i])))
                           : _mm512_setzero_si512();
            acc[i] = _mm512_setzero_ps();
        }
        const long long k0 = j0 / per, k1 = (j0 + a->col_block) / per;
        for (long long k = k0; k < k1; k += 64) { /* 64 bytes of codes per row */
            MCA_BEGIN("fast");
            __m512i x[8];
            for (int p = 0; p < per; p++) x[p] = _mm512_loadu_si512(xq + p * len + k);
            /* every phase's lane L lies in the same activation block: one integer sum for all phases */
            const __m512 sx = _mm512_loadu_ps(lane_sx + k / 4);
            for (int i = 0; i < rt; i++) {
                const __m512i raw = _mm512_xor_si512(_mm512_loadu_si512(tile_codes(a, len, r + i, k, rt)), flip);
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(step_dot(raw, x, table[i], n, lut)), sx, acc[i]);
            }
            MCA_END();
        }
        const float correction = (float)(prefix[(j0 + a->col_block) / WP_QBLOCK] - prefix[j0 / WP_QBLOCK]); /* sum sx_b S_b */
        for (int i = 0; i < rt; i++)
            total[i] += a->table_scale[t[i]] * (_mm512_reduce_add_ps(acc[i]) - wp_fast_bias(a, t[i]) * correction);
    }
    for (int i = 0; i < rt; i++) y[i] = total[i];
}

/* Rows [r, r + rt), one batch item: quantized weights with one table per block of 32 columns.
   Lane L of a step covers block L*4*per/32 of the step; its factor is that block's weight scale
   times sx. */
WP_INLINE void fast_tile_blocks(const wp_fast_args *a, long long r, int rt, const int8_t *xq, const float *lane_sx,
                                const float *block_sum, int n, float *y)
{
    const int per = 8 / n, blocks_per_step = 2 * per; /* 64 bytes = 64*per columns = 2*per blocks */
    const long long len = a->cols / per;
    __m512i lane_block = _mm512_setzero_si512(); /* block (within the step) of every lane */
    for (int lane = 0; lane < 16; lane++)
        lane_block = _mm512_mask_mov_epi32(lane_block, (__mmask16)(1u << lane), _mm512_set1_epi32(lane * blocks_per_step / 16));
    const __m512i flip_all = _mm512_set1_epi8((char)(a->is_signed ? (n == 8 ? 0x80 : 0x88) : 0)); /* every code of a byte */
    const __mmask16 step_blocks = (__mmask16)((1u << blocks_per_step) - 1);
    __m512 acc[ROW_TILE];
    const float *scale[ROW_TILE];
    for (int i = 0; i < rt; i++) acc[i] = _mm512_setzero_ps(), scale[i] = a->table_scale + a->row_table[r + i];
    for (long long k = 0; k < len; k += 64) {
        MCA_BEGIN("blocks");
        __m512i x[8];
        for (int p = 0; p < per; p++) x[p] = _mm512_loadu_si512(xq + p * len + k);
        const __m512 sx = _mm512_loadu_ps(lane_sx + k / 4);
        const long long b = k * per / WP_QBLOCK;
        if (rt > 1 || !(k & 255)) /* the scales' stream, 2 KB ahead (a new line every 256 code bytes) */
            for (int i = 0; i < rt; i++) WP_PREFETCH(scale[i] + b);
        for (int i = 0; i < rt; i++) {
            const __m512i raw = _mm512_xor_si512(_mm512_loadu_si512(tile_codes(a, len, r + i, k, rt)), flip_all);
            const __m512 factor = _mm512_mul_ps(_mm512_permutexvar_ps(lane_block, _mm512_maskz_loadu_ps(step_blocks, scale[i] + b)), sx);
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(step_dot(raw, x, _mm512_setzero_si512(), n, 0)), factor, acc[i]);
        }
        MCA_END();
    }
    const long long blocks = a->cols / WP_QBLOCK;
    for (int i = 0; i < rt; i++) {
        const long long t0 = a->row_table[r + i];
        __m512 correction = _mm512_setzero_ps(); /* sum_b s_b * c_b * sx_b * S_b */
        for (long long b = 0; b < blocks; b += 16) {
            const __mmask16 m = blocks - b >= 16 ? 0xffff : (__mmask16)((1u << (blocks - b)) - 1);
            const __m512 bias = a->table_bias ? _mm512_maskz_loadu_ps(m, a->table_bias + t0 + b) : _mm512_set1_ps(wp_fast_bias(a, t0));
            const __m512 sc = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, a->table_scale + t0 + b), bias);
            correction = _mm512_fmadd_ps(sc, _mm512_maskz_loadu_ps(m, block_sum + b), correction);
        }
        y[i] = _mm512_reduce_add_ps(acc[i]) - _mm512_reduce_add_ps(correction);
    }
}

/* Rows [r, r + rt) of batch item b, the code width and table kind constant at each call site. */
WP_INLINE void fast_tile_any(const wp_fast_rows *f, long long r, int rt, long long b)
{
    const wp_fast_args *a = f->a;
    const long long cols = a->cols, blocks = cols / WP_QBLOCK, lanes = cols / (8 / a->nbits) / 4;
    const int8_t *q = f->xq + b * cols;
    const float *ls = f->lane_sx + b * lanes;
    const double *pf = f->prefix + b * (blocks + 1);
    float y[ROW_TILE];
    if (a->col_block == WP_QBLOCK) { /* quantized, one scale per block of 32 */
        if (a->nbits == 8) fast_tile_blocks(a, r, rt, q, ls, f->block_sum + b * blocks, 8, y);
        else fast_tile_blocks(a, r, rt, q, ls, f->block_sum + b * blocks, 4, y);
    } else {
        switch (a->nbits) { /* 1- and 2-bit codes are LUT indices (fast.c refuses tables above 4 bits) */
        case 8: fast_tile(a, r, rt, q, ls, pf, 8, 0, y); break;
        case 4: f->lut ? fast_tile(a, r, rt, q, ls, pf, 4, 1, y) : fast_tile(a, r, rt, q, ls, pf, 4, 0, y); break;
        case 2: f->lut ? fast_tile(a, r, rt, q, ls, pf, 2, 1, y) : fast_tile(a, r, rt, q, ls, pf, 2, 0, y); break;
        default: f->lut ? fast_tile(a, r, rt, q, ls, pf, 1, 1, y) : fast_tile(a, r, rt, q, ls, pf, 1, 0, y); break;
        }
    }
    for (int i = 0; i < rt; i++) a->y[b * a->rows + r + i] = y[i];
}

/* Rows [r0, r1) of every batch item (ctx is a wp_fast_rows): 8-bit codes in tiles of ROW_TILE
   rows, the rest one by one. */
void wp_fast_rows_avx512(void *ctx, long long r0, long long r1)
{
    const wp_fast_rows *f = ctx;
    long long r = r0;
    if (f->a->nbits == 8)
        for (; r + ROW_TILE <= r1; r += ROW_TILE)
            for (long long b = 0; b < f->a->batch; b++) fast_tile_any(f, r, ROW_TILE, b);
    for (; r < r1; r++)
        for (long long b = 0; b < f->a->batch; b++) fast_tile_any(f, r, 1, b);
}

WP_TARGET_POP()
#endif
