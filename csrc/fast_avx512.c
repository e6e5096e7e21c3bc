/*
 * Fast mode (opt-in) fused products on AVX-512 VNNI: activations are quantized on the fly to int8
 * per block of 32, and weights become unsigned bytes, so one vpdpbusd does 64 multiply-adds.
 *
 * For a block b of 32 columns, with activation scale sx_b = max|x_b| / 127 and codes xq = round(x
 * / sx_b), every weight is w = s_t * (u - c_t): u an unsigned byte (a biased int8 LUT entry, or a
 * quantized code plus a bias), s_t and c_t its table's scale and bias.  Then
 *     y = sum_b s_t * sx_b * (sum_j u_j xq_j  -  c_t * sum_j xq_j),
 * the first sum by vpdpbusd (u unsigned, xq signed), the second computed once per call.
 * Codes of n = 1, 2, 4 bits use the phase-split layout of the exact kernels (code p of each byte
 * meets activation stream p); 8-bit codes meet x in column order.
 */
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512vbmi,avx512vnni,avx2,fma,f16c,bmi2")
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "wp_dispatch.h"
#include "wp_internal.h"

#define WP_INLINE static inline __attribute__((always_inline))
#define QBLOCK 32

typedef struct {
    long long rows, cols;
    const uint8_t *codes;
    int nbits, is_signed;
    const long long *row_table;
    long long col_block;
    const uint8_t *table_u8; /* per table 16 unsigned bytes (LUT kind) or NULL (quantized kind) */
    const float *table_scale, *table_bias;
    long long batch;
    float *y;
} fast_args;

/* Quantize x (one batch item) to int8 per block of 32, phase-split for per codes per byte. */
static void quantize_activations(const float *x, long long cols, int per, int8_t *xq, float *lane_sx, float *block_sx,
                                 float *block_sum, double *prefix)
{
    const long long blocks = cols / QBLOCK, len = cols / per;
    for (long long b = 0; b < blocks; b++) {
        float amax = 0.0f;
        for (int i = 0; i < QBLOCK; i++) amax = fmaxf(amax, fabsf(x[b * QBLOCK + i]));
        const float sx = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int i = 0; i < QBLOCK; i++) {
            const long long j = b * QBLOCK + i;
            const int q = (int)lrintf(x[j] * inv);
            xq[(j % per) * len + j / per] = (int8_t)q;
            sum += q;
        }
        block_sx[b] = sx;
        block_sum[b] = sx * (float)sum; /* the block's correction weight: sx_b * sum_j xq_j */
    }
    prefix[0] = 0.0; /* prefix[b] = sum of block_sum[b'] for b' < b */
    for (long long b = 0; b < blocks; b++) prefix[b + 1] = prefix[b] + block_sum[b];
    /* dword lane L of every phase stream covers bytes 4L..4L+3: columns per*4L.. of one block */
    for (long long lane = 0; lane < len / 4; lane++) lane_sx[lane] = block_sx[lane * 4 * per / QBLOCK];
}

/* Unsigned weight bytes for 64 codes of one phase: table lookup (LUT) or code + bias. */
WP_INLINE __m512i weight_bytes(__m512i codes, __m512i table, int lut)
{
    return lut ? _mm512_shuffle_epi8(table, codes) : codes;
}

/* One row, one batch item: tables spanning whole 64-byte steps. */
WP_INLINE float fast_row(const fast_args *a, long long r, const int8_t *xq, const float *lane_sx, const double *prefix,
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
            const __m512i raw = _mm512_xor_si512(_mm512_loadu_si512(a->codes + r * row_bytes + k), flip);
            const __m512 sx = _mm512_loadu_ps(lane_sx + k / 4);
            /* every phase's lane L lies in the same activation block: one integer sum for all phases */
            __m512i dot = _mm512_setzero_si512();
            for (int p = 0; p < per; p++) {
                const __m512i codes = n == 8 ? raw : _mm512_and_si512(p ? _mm512_srli_epi16(raw, (unsigned)(p * n)) : raw, low_mask);
                dot = _mm512_dpbusd_epi32(dot, weight_bytes(codes, table, lut), _mm512_loadu_si512(xq + p * len + k));
            }
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sx, acc);
        }
        const float correction = (float)(prefix[(j0 + a->col_block) / QBLOCK] - prefix[j0 / QBLOCK]); /* sum sx_b S_b */
        total += a->table_scale[t] * (_mm512_reduce_add_ps(acc) - a->table_bias[t] * correction);
    }
    return total;
}

/* One row, one batch item: quantized weights with one table per block of 32 columns. Lane L of
   a step covers block L*4*per/32 of the step; its factor is that block's weight scale times sx. */
WP_INLINE float fast_row_blocks(const fast_args *a, long long r, const int8_t *xq, const float *lane_sx,
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
        const __m512i raw = _mm512_xor_si512(_mm512_loadu_si512(a->codes + r * row_bytes + k), flip_all);
        const __m512 scales = _mm512_permutexvar_ps(lane_block, _mm512_maskz_loadu_ps((__mmask16)((1u << blocks_per_step) - 1),
                                                                                        a->table_scale + t0 + k * per / QBLOCK));
        const __m512 factor = _mm512_mul_ps(scales, _mm512_loadu_ps(lane_sx + k / 4));
        __m512i dot = _mm512_setzero_si512();
        for (int p = 0; p < per; p++) {
            const __m512i codes = n == 8 ? raw : _mm512_and_si512(p ? _mm512_srli_epi16(raw, (unsigned)(p * n)) : raw, low_mask);
            dot = _mm512_dpbusd_epi32(dot, codes, _mm512_loadu_si512(xq + p * len + k));
        }
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), factor, acc);
    }
    __m512 correction = _mm512_setzero_ps(); /* sum_b s_b * c_b * sx_b * S_b */
    const long long blocks = a->cols / QBLOCK;
    for (long long b = 0; b < blocks; b += 16) {
        const __mmask16 m = blocks - b >= 16 ? 0xffff : (__mmask16)((1u << (blocks - b)) - 1);
        const __m512 sc = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, a->table_scale + t0 + b), _mm512_maskz_loadu_ps(m, a->table_bias + t0 + b));
        correction = _mm512_fmadd_ps(sc, _mm512_maskz_loadu_ps(m, block_sum + b), correction);
    }
    return _mm512_reduce_add_ps(acc) - _mm512_reduce_add_ps(correction);
}

static int fast_matvec_impl(const fast_args *a, const float *x, int lut)
{
    const int n = a->nbits, per = 8 / n;
    const long long cols = a->cols, blocks = cols / QBLOCK, lanes = cols / per / 4;
    /* quantize every batch item's activations once, then split the rows over threads */
    int8_t *xq = malloc((size_t)(a->batch * cols));
    float *lane_sx = malloc((size_t)(a->batch * lanes + 1) * 4);
    float *block_sx = malloc((size_t)(a->batch * blocks + 1) * 4), *block_sum = malloc((size_t)(a->batch * blocks + 1) * 4);
    double *prefix = malloc((size_t)(a->batch * (blocks + 1)) * 8);
    if (!xq || !lane_sx || !block_sx || !block_sum || !prefix) {
        free(xq), free(lane_sx), free(block_sx), free(block_sum), free(prefix);
        return WP_E_SIZE;
    }
    for (long long b = 0; b < a->batch; b++)
        quantize_activations(x + b * cols, cols, per, xq + b * cols, lane_sx + b * lanes, block_sx + b * blocks,
                             block_sum + b * blocks, prefix + b * (blocks + 1));
#pragma omp parallel for schedule(static) num_threads(wp_threads()) if (a->rows >= 64)
    for (long long r = 0; r < a->rows; r++)
        for (long long b = 0; b < a->batch; b++) {
            const int8_t *q = xq + b * cols;
            const float *ls = lane_sx + b * lanes, *bm = block_sum + b * blocks;
            const double *pf = prefix + b * (blocks + 1);
            if (a->col_block == QBLOCK) /* quantized, one scale per block of 32 */
                a->y[b * a->rows + r] = n == 8 ? fast_row_blocks(a, r, q, ls, bm, 8) : fast_row_blocks(a, r, q, ls, bm, 4);
            else
                a->y[b * a->rows + r] = n == 8   ? fast_row(a, r, q, ls, pf, 8, lut)
                                        : n == 4 ? fast_row(a, r, q, ls, pf, 4, lut)
                                        : n == 2 ? fast_row(a, r, q, ls, pf, 2, lut)
                                                 : fast_row(a, r, q, ls, pf, 1, lut);
        }
    free(xq), free(lane_sx), free(block_sx), free(block_sum), free(prefix);
    return WP_OK;
}

int wp_fast_matvec(const unsigned char *codes, long long codes_len, int nbits, int is_signed,
                   long long rows, long long cols, const long long *row_table, long long col_block,
                   const unsigned char *table_u8, const float *table_scale, const float *table_bias, long long n_tables,
                   const float *x, long long x_len, long long batch, float *y, long long y_len)
{
    if (wp_simd_level() < 2) return WP_NOT_AVAILABLE;
    if (!(nbits == 1 || nbits == 2 || nbits == 4 || nbits == 8) || (table_u8 && nbits > 4)) return WP_E_ARG;
    const int per = 8 / nbits;
    if (rows < 0 || cols < 0 || batch < 0 || col_block <= 0 || cols % col_block || cols % (64 * per)) return WP_E_ARG;
    const int per_block = col_block == QBLOCK && !table_u8 && (nbits == 4 || nbits == 8);
    if (!per_block && col_block % (64 * per)) return WP_E_ARG;
    if (cols && rows > INT64_MAX / cols) return WP_E_SIZE;
    if (x_len != batch * cols || y_len != batch * rows || codes_len < rows * cols / per) return WP_E_SIZE;
    for (long long r = 0; r < rows && cols; r++)
        if (row_table[r] < 0 || row_table[r] + (cols - 1) / col_block >= n_tables) return WP_E_RANGE;
    const fast_args a = {rows, cols, codes, nbits, is_signed, row_table, col_block, table_u8, table_scale, table_bias,
                         batch, y};
    return fast_matvec_impl(&a, x, table_u8 != NULL);
}
