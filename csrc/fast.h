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
    const float *table_scale; /* per table */
    const float *table_bias;  /* per table, or NULL: every bias is the codes' own (see wp_fast_bias) */
    long long batch;
    float *y;
} wp_fast_args;

/* Table t's bias c_t: table_bias[t], or without a table of biases the bias of the codes
   themselves, 2^(n-1) for signed codes (stored biased) and 0 for unsigned ones.  Quantized
   weights without an offset pass no table: one fewer stream to read per row. */
static inline float wp_fast_bias(const wp_fast_args *a, long long t)
{
    if (a->table_bias) return a->table_bias[t];
    return a->is_signed ? (float)(1 << (a->nbits - 1)) : 0.0f;
}

/* The activations of every batch item, quantized once per call (see fast.c for the layout). */
typedef struct {
    const wp_fast_args *a;
    const int8_t *xq;        /* batch x cols, phase-split: code p of a byte meets stream p */
    const float *lane_sx;    /* per 4-byte lane of a phase stream: its block's activation scale */
    const float *block_sum;  /* per block b: sx_b * sum of its int8 activations */
    const double *prefix;    /* prefix sums of block_sum, blocks + 1 per batch item */
    int lut;
} wp_fast_rows;

/* Defines an ISA's row kernel `name`: rows [r0, r1) of every batch item (ctx is a wp_fast_rows),
   from its one-row functions ROW(a, r, xq, lane_sx, prefix, n, lut) and
   ROW_BLOCKS(a, r, xq, lane_sx, block_sum, n) (one scale per block of 32), inlined for each width. */
#define WP_FAST_ROWS(name, ROW, ROW_BLOCKS)                                                                  \
    void name(void *ctx, long long r0, long long r1)                                                          \
    {                                                                                                         \
        const wp_fast_rows *f = ctx;                                                                          \
        const wp_fast_args *a = f->a;                                                                         \
        const int n = a->nbits, lut = f->lut;                                                                 \
        const long long cols = a->cols, blocks = cols / WP_QBLOCK, lanes = cols / (8 / n) / 4;                \
        for (long long r = r0; r < r1; r++)                                                                   \
            for (long long b = 0; b < a->batch; b++) {                                                        \
                const int8_t *q = f->xq + b * cols;                                                           \
                const float *ls = f->lane_sx + b * lanes, *bm = f->block_sum + b * blocks;                    \
                const double *pf = f->prefix + b * (blocks + 1);                                              \
                if (a->col_block == WP_QBLOCK) /* quantized, one scale per block of 32 */                     \
                    a->y[b * a->rows + r] = n == 8 ? ROW_BLOCKS(a, r, q, ls, bm, 8) : ROW_BLOCKS(a, r, q, ls, bm, 4); \
                else                                                                                          \
                    a->y[b * a->rows + r] = n == 8   ? ROW(a, r, q, ls, pf, 8, lut)                           \
                                            : n == 4 ? ROW(a, r, q, ls, pf, 4, lut)                           \
                                            : n == 2 ? ROW(a, r, q, ls, pf, 2, lut)                           \
                                                     : ROW(a, r, q, ls, pf, 1, lut);                          \
            }                                                                                                 \
    }

#if WP_X86 && WP_HAVE_AMX
/* Batches of 16 and more on AMX tiles (bf16 weights and activations): WP_OK, WP_NOT_COVERED, or
   WP_E_MEMORY. */
int wp_fast_amx_matvec(const wp_fast_args *a, const float *x);
int wp_cpu_has_amx(void); /* AMX-TILE and AMX-BF16, and the kernel granted this process the tile state */
#endif

/* Quantizes one batch item's activations x (cols floats) to int8 per block of 32: block b's
   scale sx_b = max|x_b| / 127 and codes round(x_j / sx_b) (to nearest even: multiplied by
   127 / max|x_b|, or 0 for an all-zero block), phase-split for `per` codes per weight byte (column
   b*32 + i*per + p goes to xq[p * cols/per + b * 32/per + i]), block_sx[b] = sx_b and
   block_sum[b] = sx_b * (sum of the block's codes).  Every implementation gives the same bits. */
typedef void (*wp_fast_quantize_fn)(const float *x, long long cols, int per, int8_t *xq, float *block_sx, float *block_sum);

/* Rows [r0, r1) of every batch item (ctx is a wp_fast_rows). */
#if WP_X86
void wp_fast_rows_avx512(void *ctx, long long r0, long long r1);
void wp_fast_quantize_avx512(const float *x, long long cols, int per, int8_t *xq, float *block_sx, float *block_sum);
#elif WP_ARM64
void wp_fast_rows_dotprod(void *ctx, long long r0, long long r1);
#endif

#endif
