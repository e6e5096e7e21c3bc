/* Fused decompress + matrix-vector kernels: argument blocks and the per-ISA row workers. */
#ifndef WP_MATVEC_H
#define WP_MATVEC_H

#include "wp_internal.h"
#include "wp_target.h"

/* Y[b][r] = sum_j W[r][j] * X[b][j] for b < batch; W is rows x cols, decoded on the fly. */
typedef struct {
    long long rows, cols, batch;
    const float *x; /* batch x cols */
    float *y;       /* batch x rows */
    const float *xs; /* x split into phases (wp_split_phases) when the row worker asked for it */
    /* weight stream: n-bit codes, dense (code of W[r][j] is element r*cols+j) or sparse (mask
       bit r*cols+j set; codes of row r start at row_start[r]) */
    const uint8_t *codes;
    long long codes_len;
    int nbits;
    const uint8_t *mask;        /* NULL when dense */
    const long long *row_start; /* rows+1 entries, sparse only */
    /* tables: table(r, j) = row_table[r] + j / col_block */
    const long long *row_table;
    long long col_block, n_tables;
} wp_mv_common;

typedef struct {
    wp_mv_common c;
    const float *lut; /* n_tables x 2^nbits decoded values */
    /* optional: the same values as binary16 split into low-byte and high-byte planes,
       n_tables x plane_stride bytes each (plane_stride = max(64, 2^nbits)); NULL unless every
       value is exactly a binary16 */
    const uint8_t *lut_lo, *lut_hi;
} wp_lut_mv;

typedef struct {
    wp_mv_common c;
    int is_signed, half_math;
    const void *scale, *offset; /* per table; offset may be NULL; fp16 bits or fp32 */
} wp_quant_mv;

typedef struct {
    wp_mv_common c;        /* nbits unused: codes are the values */
    int value_half;        /* values are fp16 bits (1) or fp32 (0) */
} wp_sparse_mv;

/* x (batch x cols) split into per phases: out[(b*per + p) * (cols/per) + k] = x[b*cols + k*per + p],
   so that code p of every packed byte meets its activation with a plain load. malloc'd (64-byte
   aligned); NULL when out of memory. */
float *wp_split_phases(const float *x, long long batch, long long cols, int per);

/* Call F(args, c, extra, r, rows, b, batch) over tiles of `row_tile` rows x `batch_tile` batch
   entries of rows [r0, r1), then the leftovers one by one; F is inlined at each call site so its
   tile sizes are compile-time constants. */
#define WP_RUN_TILES(F, args, c, extra, r0, r1, row_tile, batch_tile)                                          \
    do {                                                                                                       \
        long long r_ = (r0);                                                                                   \
        for (; r_ + (row_tile) <= (r1); r_ += (row_tile)) {                                                    \
            long long b_ = 0;                                                                                  \
            for (; b_ + (batch_tile) <= (c)->batch; b_ += (batch_tile)) F(args, c, extra, r_, row_tile, b_, batch_tile); \
            for (; b_ < (c)->batch; b_++) F(args, c, extra, r_, row_tile, b_, 1);                              \
        }                                                                                                      \
        for (; r_ < (r1); r_++) {                                                                              \
            long long b_ = 0;                                                                                  \
            for (; b_ + (batch_tile) <= (c)->batch; b_ += (batch_tile)) F(args, c, extra, r_, 1, b_, batch_tile); \
            for (; b_ < (c)->batch; b_++) F(args, c, extra, r_, 1, b_, 1);                                     \
        }                                                                                                      \
    } while (0)

/* A row worker computes Y for rows [r0, r1) of every batch entry. */
typedef void (*wp_rows_fn)(const void *args, long long r0, long long r1);

/* What a selector chose: the row worker, and the phase count x must be split into for it
   (0: x as given).  The entry point splits x once per call, before the rows run in parallel. */
typedef struct {
    wp_rows_fn fn;
    int phases;
} wp_rows_plan;

#define WP_ROWS(fn) ((wp_rows_plan){fn, 0})
#define WP_ROWS_SPLIT(fn, phases) ((wp_rows_plan){fn, phases})
#define WP_NO_ROWS ((wp_rows_plan){NULL, 0})

/* SIMD selectors return WP_NO_ROWS when they do not cover the case (a lower level's worker, in
   the end the scalar one, runs then).  Each exists only on its architecture. */
#if WP_X86
wp_rows_plan wp_lut_rows_avx512(const wp_lut_mv *a);
wp_rows_plan wp_lut_rows_avx2(const wp_lut_mv *a);
wp_rows_plan wp_quant_rows_avx512(const wp_quant_mv *a);
wp_rows_plan wp_quant_rows_avx2(const wp_quant_mv *a);
wp_rows_plan wp_sparse_rows_avx512(const wp_sparse_mv *a);
wp_rows_plan wp_sparse_rows_avx2(const wp_sparse_mv *a);
#elif WP_ARM64
wp_rows_plan wp_lut_rows_neon(const wp_lut_mv *a);
wp_rows_plan wp_quant_rows_neon(const wp_quant_mv *a);
wp_rows_plan wp_sparse_rows_neon(const wp_sparse_mv *a);
#endif

#endif
