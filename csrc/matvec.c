/*
 * Fused decompress + matrix-vector / matrix-matrix products: the weight is decoded a row at a time
 * in registers and never written to memory.  Entry points validate every size, pick the best row
 * worker for the CPU level in force, and split the rows over threads (wp_parallel_for).  The scalar workers
 * here are the portable path and the definition the SIMD workers must reproduce (up to the order
 * of the float32 summation).
 */
#include "matvec.h"
#include "wp_dispatch.h"

#include <stdlib.h>


#define BATCH_TILE 8

float *wp_split_phases(const float *x, long long batch, long long cols, int per)
{
    float *out = aligned_alloc(64, (size_t)((batch * cols * 4 + 63) / 64 * 64));
    if (!out) return NULL;
    const long long len = cols / per;
    for (long long b = 0; b < batch; b++)
        for (int p = 0; p < per; p++)
            for (long long k = 0; k < len; k++) out[(b * per + p) * len + k] = x[b * cols + k * per + p];
    return out;
}

static int check_common(const wp_mv_common *c, long long mask_len, long long x_len, long long y_len,
                        int code_bits)
{
    if (c->rows < 0 || c->cols < 0 || c->batch < 0 || c->col_block <= 0 || c->n_tables < 0) return WP_E_ARG;
    if (c->cols && c->rows > INT64_MAX / c->cols) return WP_E_SIZE;
    if (c->cols && c->batch > INT64_MAX / c->cols) return WP_E_SIZE;
    if (c->rows && c->batch > INT64_MAX / c->rows) return WP_E_SIZE;
    if (x_len != c->batch * c->cols || y_len != c->batch * c->rows) return WP_E_SIZE;
    if (!wp_all_finite(c->x, x_len)) return WP_E_NONFINITE;
    const long long count = c->rows * c->cols;
    const long long available = c->codes_len / code_bits * 8 + (c->codes_len % code_bits) * 8 / code_bits;
    if (c->mask) {
        if (mask_len != wp_stream_bytes(count, 1) || !c->row_start) return WP_E_SIZE;
        if (c->row_start[0] < 0) return WP_E_RANGE;
        for (long long r = 0; r < c->rows; r++)
            if (c->row_start[r + 1] < c->row_start[r]) return WP_E_RANGE;
        if (c->row_start[c->rows] > available) return WP_E_SIZE;
    } else if (available < count) {
        return WP_E_SIZE;
    }
    if (c->row_table && c->cols) {
        const long long span = (c->cols - 1) / c->col_block;
        for (long long r = 0; r < c->rows; r++)
            if (c->row_table[r] < 0 || c->row_table[r] + span >= c->n_tables) return WP_E_RANGE;
    }
    return WP_OK;
}

/* Products smaller than this many weights run on one thread: waking another costs more. */
#define MIN_PARALLEL_WEIGHTS (1LL << 16)
#define ROWS_PER_RANGE 16

typedef struct {
    wp_rows_fn fn;
    const void *args;
} rows_job;

static void rows_range(void *ctx, long long r0, long long r1)
{
    const rows_job *job = ctx;
    job->fn(job->args, r0, r1);
}

/* Run the chosen worker over all rows, split into ranges of 16 rows across threads; x is split
   into phases first when the worker asked for it. Returns WP_E_SIZE when out of memory. */
static int run_rows(wp_rows_plan plan, wp_mv_common *c, const void *args)
{
    float *xs = NULL;
    if (plan.phases) {
        if (!(xs = wp_split_phases(c->x, c->batch, c->cols, plan.phases))) return WP_E_SIZE;
        c->xs = xs;
    }
    rows_job job = {plan.fn, args};
    const long long work = c->rows * c->cols * (c->batch < 8 ? c->batch : 8);
    if (work >= MIN_PARALLEL_WEIGHTS) wp_parallel_for(c->rows, ROWS_PER_RANGE, rows_range, &job);
    else if (c->rows > 0) plan.fn(args, 0, c->rows);
    free(xs);
    return WP_OK;
}

/* Walk row r's codes in order, calling BODY with j (column), k (stream element) and t (table,
   fixed per block of col_block columns) set. */
#define FOR_EACH_CODE(c, r, BODY)                                                   \
    do {                                                                            \
        long long k = (c)->mask ? (c)->row_start[r] : (r) * (c)->cols;             \
        const long long k_end = (c)->mask ? (c)->row_start[(r) + 1] : k + (c)->cols; \
        const long long e0 = (r) * (c)->cols;                                       \
        for (long long j0 = 0; j0 < (c)->cols; j0 += (c)->col_block) {              \
            const long long t = ((c)->row_table ? (c)->row_table[r] : 0) + j0 / (c)->col_block; \
            const long long j1 = j0 + (c)->col_block < (c)->cols ? j0 + (c)->col_block : (c)->cols; \
            (void)t;                                                                \
            for (long long j = j0; j < j1 && k < k_end; j++) {                      \
                if ((c)->mask && !wp_mask_bit((c)->mask, e0 + j)) continue;         \
                BODY;                                                               \
                k++;                                                                \
            }                                                                       \
        }                                                                           \
    } while (0)

#define ACCUMULATE(c, r, b0, nb, acc, WEIGHT)                                       \
    do {                                                                            \
        FOR_EACH_CODE(c, r, {                                                       \
            const float w = (WEIGHT);                                               \
            for (int b = 0; b < (nb); b++) acc[b] += w * (c)->x[((b0) + b) * (c)->cols + j]; \
        });                                                                         \
    } while (0)

#define ROW_LOOP(c, r0, r1, WEIGHT)                                                 \
    for (long long r = (r0); r < (r1); r++) {                                       \
        for (long long b0 = 0; b0 < (c)->batch; b0 += BATCH_TILE) {                \
            const int nb = (int)((c)->batch - b0 < BATCH_TILE ? (c)->batch - b0 : BATCH_TILE); \
            float acc[BATCH_TILE] = {0};                                            \
            ACCUMULATE(c, r, b0, nb, acc, WEIGHT);                                  \
            for (int b = 0; b < nb; b++) (c)->y[(b0 + b) * (c)->rows + r] = acc[b]; \
        }                                                                           \
    }

static void lut_rows_scalar(const void *args, long long r0, long long r1)
{
    const wp_lut_mv *a = args;
    const wp_mv_common *c = &a->c;
    const long long entries = 1LL << c->nbits;
    ROW_LOOP(c, r0, r1, a->lut[t * entries + wp_read_bits(c->codes, k, c->nbits)])
}

static void quant_rows_scalar(const void *args, long long r0, long long r1)
{
    const wp_quant_mv *a = args;
    const wp_mv_common *c = &a->c;
    ROW_LOOP(c, r0, r1,
             wp_shift_scale((float)wp_code_value(wp_read_bits(c->codes, k, c->nbits), c->nbits, a->is_signed),
                            a->scale, a->offset, t, a->half_math))
}

static void sparse_rows_scalar(const void *args, long long r0, long long r1)
{
    const wp_sparse_mv *a = args;
    const wp_mv_common *c = &a->c;
    if (a->value_half) {
        ROW_LOOP(c, r0, r1, wp_half_to_float(((const uint16_t *)c->codes)[k]))
    } else {
        ROW_LOOP(c, r0, r1, ((const float *)c->codes)[k])
    }
}

/* Pick the best row worker of this kind for the level in force (the scalar one when no SIMD
   worker covers the case) and run it. */
#if WP_X86
#define SIMD_ROWS(kind, a, level)                                                                \
    (level >= WP_LEVEL_AVX512 && wp_##kind##_rows_avx512(a).fn ? wp_##kind##_rows_avx512(a)       \
     : level >= WP_LEVEL_AVX2 ? wp_##kind##_rows_avx2(a) : WP_NO_ROWS)
#elif WP_ARM64
#define SIMD_ROWS(kind, a, level) (level >= WP_LEVEL_NEON ? wp_##kind##_rows_neon(a) : WP_NO_ROWS)
#else
#define SIMD_ROWS(kind, a, level) WP_NO_ROWS
#endif
#define SELECT_ROWS(kind, a)                                                                     \
    do {                                                                                         \
        const wp_rows_plan plan_ = SIMD_ROWS(kind, a, wp_simd_level());                          \
        return run_rows(plan_.fn ? plan_ : WP_ROWS(kind##_rows_scalar), &(a)->c, a);             \
    } while (0)

int wp_lut_matvec(const unsigned char *codes, long long codes_len, int nbits,
                  const unsigned char *mask, long long mask_len, const long long *row_start,
                  long long rows, long long cols, const long long *row_table, long long col_block,
                  const float *lut, const unsigned char *lut_lo, const unsigned char *lut_hi, long long n_tables,
                  const float *x, long long x_len, long long batch, float *y, long long y_len)
{
    if (!wp_valid_nbits(nbits) || !row_table || !lut || (!lut_lo != !lut_hi)) return WP_E_ARG;
    wp_lut_mv a = {{rows, cols, batch, x, y, NULL, codes, codes_len, nbits, mask, row_start, row_table, col_block,
                    n_tables},
                   lut, lut_lo, lut_hi};
    int rc = check_common(&a.c, mask_len, x_len, y_len, nbits);
    if (rc) return rc;
    SELECT_ROWS(lut, &a);
}

int wp_quant_matvec(const unsigned char *codes, long long codes_len, int nbits, int is_signed,
                    const unsigned char *mask, long long mask_len, const long long *row_start,
                    long long rows, long long cols, const long long *row_table, long long col_block,
                    const void *scale, const void *offset, long long n_tables, int half_math,
                    const float *x, long long x_len, long long batch, float *y, long long y_len)
{
    if ((nbits != 4 && nbits != 8) || !row_table || !scale) return WP_E_ARG;
    wp_quant_mv a = {{rows, cols, batch, x, y, NULL, codes, codes_len, nbits, mask, row_start, row_table, col_block,
                      n_tables},
                     is_signed, half_math, scale, offset};
    int rc = check_common(&a.c, mask_len, x_len, y_len, nbits);
    if (rc) return rc;
    SELECT_ROWS(quant, &a);
}

int wp_sparse_matvec(const unsigned char *mask, long long mask_len, const long long *row_start,
                     long long rows, long long cols, const void *values, long long values_len, int value_half,
                     const float *x, long long x_len, long long batch, float *y, long long y_len)
{
    if (!mask) return WP_E_ARG;
    wp_sparse_mv a = {{rows, cols, batch, x, y, NULL, (const uint8_t *)values, values_len, value_half ? 16 : 32, mask,
                       row_start, NULL, cols > 0 ? cols : 1, 0},
                      value_half};
    int rc = check_common(&a.c, mask_len, x_len, y_len, value_half ? 16 : 32);
    if (rc) return rc;
    SELECT_ROWS(sparse, &a);
}
