/*
 * Decompression kernels: LUT lookup, sparse expansion, blockwise shift-scale, each optionally
 * under a 1-bit mask (the sparse combinations).
 *
 * Tensors are walked as rows x cols of their logical shape (see weightpack/kernels/plan.py):
 * element e = r * cols + j uses table row_table[r] + j / col_block.  LUT values arrive already
 * converted to the output type (elements of elem_size bytes); shift-scale does Core ML's
 * arithmetic itself.  The entry points validate every size, table and output position first, then
 * run the AVX-512 decoder when the CPU level allows and it covers the case, else the portable
 * scalar loops below.
 */
#include "decode.h"
#include "wp_dispatch.h"

static int check_rows(long long rows, long long cols, long long col_block, long long *count)
{
    if (rows < 0 || cols < 0 || col_block <= 0) return WP_E_ARG;
    if (cols && rows > INT64_MAX / cols) return WP_E_SIZE;
    *count = rows * cols;
    return WP_OK;
}

static int check_tables(const wp_decode_job *j)
{
    if (!j->cols) return WP_OK;
    const long long span = (j->cols - 1) / j->col_block;
    for (long long r = 0; r < j->rows; r++)
        if (j->row_table[r] < 0 || j->row_table[r] + span >= j->n_tables) return WP_E_RANGE;
    return WP_OK;
}

/* Codes an n-bit stream of codes_len bytes holds. */
static long long stream_codes(long long codes_len, int nbits)
{
    return codes_len / nbits * 8 + (codes_len % nbits) * 8 / nbits;
}

/* The mask covers count elements and, when dense, the stream holds every element. The stored
   count of a masked stream (the mask's popcount) is checked by the decoder that runs: the SIMD
   decoders count it anyway to split the work, the scalar ones call check_masked_stream. */
static int check_stream(const uint8_t *mask, long long mask_len, long long count, long long codes_len, int nbits)
{
    if (mask) return mask_len == wp_stream_bytes(count, 1) ? WP_OK : WP_E_SIZE;
    return stream_codes(codes_len, nbits) >= count ? WP_OK : WP_E_SIZE;
}

static int check_masked_stream(const uint8_t *mask, long long count, long long codes_len, int nbits)
{
    long long stored = 0;
    for (long long i = 0; i < wp_stream_bytes(count, 1); i++) stored += __builtin_popcount(mask[i]);
    return stream_codes(codes_len, nbits) >= stored ? WP_OK : WP_E_SIZE;
}

#define COPY_ELEM(dst, src, size)                          \
    do {                                                   \
        if ((size) == 4) memcpy(dst, src, 4);              \
        else if ((size) == 2) memcpy(dst, src, 2);         \
        else *(uint8_t *)(dst) = *(const uint8_t *)(src);  \
    } while (0)

/* Dense scalar-LUT rows with float32 or binary16 output: table fixed per block, codes read in
   order, typed stores the compiler can keep in registers. */
#define DENSE_LUT_ROWS(T)                                                                         \
    do {                                                                                          \
        const T *tables = (const T *)job->lut;                                                    \
        T *out = (T *)job->out;                                                                   \
        for (long long r = 0; r < job->rows; r++) {                                               \
            long long k = r * job->cols;                                                          \
            T *row = out + job->row_out[r];                                                       \
            for (long long j0 = 0; j0 < job->cols; j0 += job->col_block) {                        \
                const T *table = tables + ((job->row_table[r] + j0 / job->col_block) << job->nbits); \
                const long long j1 = j0 + job->col_block < job->cols ? j0 + job->col_block : job->cols; \
                for (long long j = j0; j < j1; j++) row[j] = table[wp_read_bits(job->codes, k++, job->nbits)]; \
            }                                                                                     \
        }                                                                                         \
    } while (0)

static void lut_decode_scalar(const wp_decode_job *job)
{
    const int es = job->elem_size, vsize = job->vsize;
    if (!job->mask && vsize == 1 && job->col_stride == 1) {
        if (es == 4) DENSE_LUT_ROWS(uint32_t);
        else if (es == 2) DENSE_LUT_ROWS(uint16_t);
        else DENSE_LUT_ROWS(uint8_t);
        return;
    }
    const long long entry_bytes = (long long)vsize * es, table_bytes = entry_bytes << job->nbits;
    uint8_t *dst = job->out;
    long long k = 0;
    for (long long r = 0; r < job->rows; r++) {
        for (long long j = 0; j < job->cols; j++) {
            const long long o = job->row_out[r] + j * job->col_stride;
            if (job->mask && !wp_mask_bit(job->mask, r * job->cols + j)) {
                for (int v = 0; v < vsize; v++) memset(dst + (o + v * job->v_stride) * es, 0, (size_t)es);
                continue;
            }
            const unsigned idx = wp_read_bits(job->codes, k++, job->nbits);
            const uint8_t *src = (const uint8_t *)job->lut + (job->row_table[r] + j / job->col_block) * table_bytes +
                                 idx * entry_bytes;
            for (int v = 0; v < vsize; v++) COPY_ELEM(dst + (o + v * job->v_stride) * es, src + v * es, es);
        }
    }
}

int wp_lut_decode(const unsigned char *indices, long long indices_len, int nbits,
                  const unsigned char *mask, long long mask_len,
                  long long rows, long long cols, const long long *row_table, long long col_block,
                  const void *lut, const unsigned char *lut_lo, const unsigned char *lut_hi,
                  long long n_tables, int entries, int vsize, int elem_size,
                  const long long *row_out, long long col_stride, long long v_stride,
                  void *out, long long out_len)
{
    long long count;
    int rc = check_rows(rows, cols, col_block, &count);
    if (rc) return rc;
    if (!wp_valid_nbits(nbits)) return WP_E_NBITS;
    if (entries != (1 << nbits) || vsize < 1 || n_tables < 0 || (!lut_lo != !lut_hi)) return WP_E_ARG;
    if (elem_size != 1 && elem_size != 2 && elem_size != 4) return WP_E_ARG;
    const wp_decode_job job = {indices, indices_len, nbits, 0, mask, rows, cols, row_table, col_block, n_tables,
                               lut, lut_lo, lut_hi, vsize, elem_size, row_out, col_stride, v_stride,
                               NULL, NULL, 0, out, elem_size == 2};
    if ((rc = check_tables(&job)) || (rc = check_stream(mask, mask_len, count, indices_len, nbits))) return rc;
    for (long long r = 0; r < rows && cols; r++) {
        const long long o0 = row_out[r], last = o0 + (cols - 1) * col_stride + (long long)(vsize - 1) * v_stride;
        if (o0 < 0 || last >= out_len) return WP_E_RANGE;
    }
#if WP_X86
    if (wp_simd_level() >= WP_LEVEL_AVX512 && (rc = wp_lut_decode_avx512(&job)) != WP_NOT_COVERED) return rc;
#elif WP_ARM64
    if (wp_simd_level() >= WP_LEVEL_NEON && (rc = wp_lut_decode_neon(&job)) != WP_NOT_COVERED) return rc;
#endif
    if (mask && (rc = check_masked_stream(mask, count, indices_len, nbits))) return rc;
    lut_decode_scalar(&job);
    return WP_OK;
}

int wp_sparse_decode(const unsigned char *mask, long long mask_len, long long count,
                     const void *values, long long n_values, int elem_size, int widen_half,
                     void *out, long long out_len)
{
    /* values have elem_size bytes and the output type, except with widen_half: binary16 values,
       float32 output */
    if (count < 0 || out_len != count) return WP_E_SIZE;
    if ((elem_size != 1 && elem_size != 2 && elem_size != 4) || (widen_half && elem_size != 2)) return WP_E_ARG;
    int rc = check_stream(mask, mask_len, count, n_values * elem_size, 8 * elem_size);
    if (rc) return rc;
#if WP_X86
    if (wp_simd_level() >= WP_LEVEL_AVX512 &&
        (rc = wp_sparse_decode_avx512(mask, count, values, n_values, elem_size, widen_half, out)) != WP_NOT_COVERED)
        return rc;
#elif WP_ARM64
    if (wp_simd_level() >= WP_LEVEL_NEON &&
        (rc = wp_sparse_decode_neon(mask, count, values, n_values, elem_size, widen_half, out)) != WP_NOT_COVERED)
        return rc;
#endif
    if ((rc = check_masked_stream(mask, count, n_values * elem_size, 8 * elem_size))) return rc;
    long long k = 0;
    for (long long e = 0; e < count; e++) wp_sparse_element(mask, e, values, &k, elem_size, widen_half, out);
    return WP_OK;
}

static void shift_scale_decode_scalar(const wp_decode_job *job)
{
    long long k = 0;
    for (long long r = 0; r < job->rows; r++) {
        for (long long j = 0; j < job->cols; j++) {
            const long long e = r * job->cols + j;
            float w = 0.0f;
            if (!job->mask || wp_mask_bit(job->mask, e)) {
                const int q = wp_code_value(wp_read_bits(job->codes, k++, job->nbits), job->nbits, job->is_signed);
                w = wp_shift_scale((float)q, job->scale, job->offset, job->row_table[r] + j / job->col_block,
                                   job->half_math);
            }
            if (job->out_half) ((uint16_t *)job->out)[e] = wp_float_to_half(w);
            else ((float *)job->out)[e] = w;
        }
    }
}

int wp_shift_scale_decode(const unsigned char *data, long long data_len, int nbits, int is_signed,
                          const unsigned char *mask, long long mask_len,
                          long long rows, long long cols, const long long *row_table, long long col_block,
                          const void *scale, const void *offset, long long n_blocks, int half_math,
                          void *out, long long out_len, int out_half)
{
    long long count;
    int rc = check_rows(rows, cols, col_block, &count);
    if (rc) return rc;
    if (nbits != 4 && nbits != 8) return WP_E_NBITS;
    if (out_len != count || !scale) return WP_E_SIZE;
    const wp_decode_job job = {data, data_len, nbits, is_signed, mask, rows, cols, row_table, col_block, n_blocks,
                               NULL, NULL, NULL, 1, out_half ? 2 : 4, NULL, 1, 1,
                               scale, offset, half_math, out, out_half};
    if ((rc = check_tables(&job)) || (rc = check_stream(mask, mask_len, count, data_len, nbits))) return rc;
#if WP_X86
    if (wp_simd_level() >= WP_LEVEL_AVX512 && (rc = wp_quant_decode_avx512(&job)) != WP_NOT_COVERED) return rc;
#elif WP_ARM64
    if (wp_simd_level() >= WP_LEVEL_NEON && (rc = wp_quant_decode_neon(&job)) != WP_NOT_COVERED) return rc;
#endif
    if (mask && (rc = check_masked_stream(mask, count, data_len, nbits))) return rc;
    shift_scale_decode_scalar(&job);
    return WP_OK;
}
