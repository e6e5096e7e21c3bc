/* Fast mode (int8 activations, integer dot products): arguments shared by the portable front
   (fast.c) and the per-ISA row kernels. */
#ifndef WP_FAST_H
#define WP_FAST_H

#include "wp_internal.h"
#include "wp_target.h"

#define WP_QBLOCK 32 /* activations are quantized per block of 32 columns */

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
} wp_fast_args;

/* The activations of every batch item, quantized once per call (see fast.c for the layout). */
typedef struct {
    const wp_fast_args *a;
    const int8_t *xq;        /* batch x cols, phase-split: code p of a byte meets stream p */
    const float *lane_sx;    /* per 4-byte lane of a phase stream: its block's activation scale */
    const float *block_sum;  /* per block b: sx_b * sum of its int8 activations */
    const double *prefix;    /* prefix sums of block_sum, blocks + 1 per batch item */
    int lut;
} wp_fast_rows;

/* Rows [r0, r1) of every batch item (ctx is a wp_fast_rows). */
#if WP_X86
void wp_fast_rows_avx512(void *ctx, long long r0, long long r1);
#elif WP_ARM64
void wp_fast_rows_dotprod(void *ctx, long long r0, long long r1);
#endif

#endif
