/*
 * Fast mode (opt-in) fused products: activations are quantized on the fly to int8 per block of
 * 32, and weights become unsigned bytes, so one integer dot-product instruction (AVX-512 VNNI
 * vpdpbusd, ARM SDOT/UDOT) does several multiply-adds.
 *
 * For a block b of 32 columns, with activation scale sx_b = max|x_b| / 127 and codes xq = round(x
 * / sx_b), every weight is w = s_t * (u - c_t): u an unsigned byte (a biased int8 LUT entry, or a
 * quantized code plus a bias), s_t and c_t its table's scale and bias.  Then
 *     y = sum_b s_t * sx_b * (sum_j u_j xq_j  -  c_t * sum_j xq_j),
 * the first sum by the dot-product instructions, the second computed once per call (prefix sums
 * of sx_b * sum_j xq_j).  Codes of n = 1, 2, 4 bits use the phase-split layout of the exact
 * kernels (code p of each byte meets activation stream p); 8-bit codes meet x in column order.
 * This file validates, quantizes the activations (with the ISA's quantizer where there is one)
 * and splits the rows over threads; the row kernels live in fast_<isa>.c.
 */
#include "fast.h"
#include "wp_dispatch.h"

#include <math.h>
#include <stdlib.h>

/* Quantize x (one batch item) to int8 per block of 32 (the portable wp_fast_quantize_fn). */
static void quantize_blocks(const float *x, long long cols, int per, int8_t *xq, float *block_sx, float *block_sum)
{
    const long long blocks = cols / WP_QBLOCK, len = cols / per;
    const int chunk = WP_QBLOCK / per;
    for (long long b = 0; b < blocks; b++) {
        const float *xb = x + b * WP_QBLOCK;
        float amax = 0.0f;
        for (int i = 0; i < WP_QBLOCK; i++) amax = fmaxf(amax, fabsf(xb[i]));
        const float sx = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int p = 0; p < per; p++)
            for (int i = 0; i < chunk; i++) {
                const int q = (int)lrintf(xb[i * per + p] * inv);
                xq[p * len + b * chunk + i] = (int8_t)q;
                sum += q;
            }
        block_sx[b] = sx;
        block_sum[b] = sx * (float)sum; /* the block's correction weight: sx_b * sum_j xq_j */
    }
}

/* Quantize x (one batch item) with `quantize`, then the per-lane scales and the prefix sums. */
static void quantize_activations(wp_fast_quantize_fn quantize, const float *x, long long cols, int per, int8_t *xq,
                                 float *lane_sx, float *block_sx, float *block_sum, double *prefix)
{
    const long long blocks = cols / WP_QBLOCK, len = cols / per;
    quantize(x, cols, per, xq, block_sx, block_sum);
    prefix[0] = 0.0; /* prefix[b] = sum of block_sum[b'] for b' < b */
    for (long long b = 0; b < blocks; b++) prefix[b + 1] = prefix[b] + block_sum[b];
    /* dword lane L of every phase stream covers bytes 4L..4L+3: columns per*4L.. of one block */
    for (long long lane = 0; lane < len / 4; lane++) lane_sx[lane] = block_sx[lane * 4 * per / WP_QBLOCK];
}

static int fast_matvec_impl(const wp_fast_args *a, const float *x, int lut, wp_range_fn rows_fn,
                            wp_fast_quantize_fn quantize)
{
    const int n = a->nbits, per = 8 / n;
    const long long cols = a->cols, blocks = cols / WP_QBLOCK, lanes = cols / per / 4;
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
        quantize_activations(quantize, x + b * cols, cols, per, xq + b * cols, lane_sx + b * lanes, block_sx + b * blocks,
                             block_sum + b * blocks, prefix + b * (blocks + 1));
    wp_fast_rows rows = {a, xq, lane_sx, block_sum, prefix, lut};
    if (a->rows >= 64) wp_parallel_for(a->rows, wp_rows_per_range(a->rows), rows_fn, &rows);
    else rows_fn(&rows, 0, a->rows);
    free(xq), free(lane_sx), free(block_sx), free(block_sum), free(prefix);
    return WP_OK;
}

/* From this batch size on, fast mode runs on AMX tiles where the CPU has them (a tile holds 16
   batch items; below that the integer dot-product kernels win). */
#define AMX_MIN_BATCH 16

int wp_fast_amx_available(void)
{
#if WP_X86 && WP_HAVE_AMX
    return wp_simd_level() >= WP_LEVEL_AVX512FP16 && wp_cpu_has_amx();
#else
    return 0;
#endif
}

int wp_fast_min_level(void)
{
#if WP_X86
    return WP_LEVEL_AVX512;
#elif WP_ARM64
    return WP_LEVEL_DOTPROD;
#else
    return -1;
#endif
}

int wp_fast_matvec(const unsigned char *codes, long long codes_len, int nbits, int is_signed,
                   long long rows, long long cols, const long long *row_table, long long col_block,
                   const unsigned char *table_u8, const float *table_scale, const float *table_bias, long long n_tables,
                   const float *x, long long x_len, long long batch, float *y, long long y_len)
{
    wp_range_fn rows_fn = NULL;
    wp_fast_quantize_fn quantize = quantize_blocks;
#if WP_X86
    if (wp_simd_level() >= WP_LEVEL_AVX512) rows_fn = wp_fast_rows_avx512, quantize = wp_fast_quantize_avx512;
#elif WP_ARM64
    if (wp_simd_level() >= WP_LEVEL_DOTPROD) rows_fn = wp_fast_rows_dotprod;
#endif
    if (!rows_fn) return WP_NOT_AVAILABLE;
    if (!(nbits == 1 || nbits == 2 || nbits == 4 || nbits == 8) || (table_u8 && nbits > 4)) return WP_E_ARG;
    const int per = 8 / nbits;
    if (rows < 0 || cols < 0 || batch < 0 || col_block <= 0 || cols % col_block || cols % (64 * per)) return WP_E_ARG;
    const int per_block = col_block == WP_QBLOCK && !table_u8 && (nbits == 4 || nbits == 8);
    if (!per_block && col_block % (64 * per)) return WP_E_ARG;
    if (cols && rows > INT64_MAX / cols) return WP_E_SIZE;
    if (x_len != batch * cols || y_len != batch * rows || codes_len < rows * cols / per) return WP_E_SIZE;
    if (!wp_all_finite(x, x_len)) return WP_E_NONFINITE;
    for (long long r = 0; r < rows && cols; r++)
        if (row_table[r] < 0 || row_table[r] + (cols - 1) / col_block >= n_tables) return WP_E_RANGE;
    const wp_fast_args a = {rows, cols, codes, nbits, is_signed, row_table, col_block, table_u8, table_scale, table_bias,
                         batch, y};
#if WP_X86 && WP_HAVE_AMX
    if (batch >= AMX_MIN_BATCH && wp_fast_amx_available()) {
        const int rc = wp_fast_amx_matvec(&a, x);
        if (rc != WP_NOT_COVERED) return rc;
    }
#endif
    return fast_matvec_impl(&a, x, table_u8 != NULL, rows_fn, quantize);
}
