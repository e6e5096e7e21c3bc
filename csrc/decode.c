/*
 * Decompression kernels (portable scalar code): LUT lookup, sparse expansion, blockwise
 * shift-scale, each optionally under a 1-bit mask (the sparse combinations).
 *
 * Tensors are walked as rows x cols of their logical shape (see weightpack/kernels/plan.py):
 * element e = r * cols + j uses table row_table[r] + j / col_block.  Values are stored in
 * elements of elem_size bytes (1, 2 or 4) already converted to the output type by the caller,
 * except in shift-scale, which does Core ML's arithmetic itself.  Every index, table and output
 * position is bounds-checked per row before the row is written.
 */
#include "wp_internal.h"

static int check_rows(long long rows, long long cols, long long col_block, long long *count)
{
    if (rows < 0 || cols < 0 || col_block <= 0) return WP_E_ARG;
    if (cols && rows > INT64_MAX / cols) return WP_E_SIZE;
    *count = rows * cols;
    return WP_OK;
}

static int check_row(long long first_table, long long cols, long long col_block, long long n_tables)
{
    if (cols == 0) return WP_OK;
    if (first_table < 0 || first_table + (cols - 1) / col_block >= n_tables) return WP_E_RANGE;
    return WP_OK;
}

#define COPY_ELEM(dst, src, size)            \
    do {                                     \
        if ((size) == 4) memcpy(dst, src, 4); \
        else if ((size) == 2) memcpy(dst, src, 2); \
        else *(uint8_t *)(dst) = *(const uint8_t *)(src); \
    } while (0)

int wp_lut_decode(const unsigned char *indices, long long indices_len, int nbits,
                  const unsigned char *mask, long long mask_len,
                  long long rows, long long cols, const long long *row_table, long long col_block,
                  const void *lut, long long n_tables, int entries, int vsize, int elem_size,
                  const long long *row_out, long long col_stride, long long v_stride,
                  void *out, long long out_len)
{
    long long count;
    int rc = check_rows(rows, cols, col_block, &count);
    if (rc) return rc;
    if (!wp_valid_nbits(nbits)) return WP_E_NBITS;
    if (entries != (1 << nbits) || vsize < 1 || n_tables < 0) return WP_E_ARG;
    if (elem_size != 1 && elem_size != 2 && elem_size != 4) return WP_E_ARG;
    if (mask && mask_len != wp_stream_bytes(count, 1)) return WP_E_SIZE;
    long long available = indices_len * 8 / nbits; /* index elements present in the stream */
    if (!mask && available < count) return WP_E_SIZE;

    const uint8_t *table_base = (const uint8_t *)lut;
    uint8_t *dst = (uint8_t *)out;
    const long long entry_bytes = (long long)vsize * elem_size;
    const long long table_bytes = entry_bytes * entries;
    long long k = 0; /* next element of the index stream */
    for (long long r = 0; r < rows; r++) {
        rc = check_row(row_table[r], cols, col_block, n_tables);
        if (rc) return rc;
        const long long o0 = row_out[r];
        if (cols && (o0 < 0 || o0 + (cols - 1) * col_stride + (long long)(vsize - 1) * v_stride >= out_len))
            return WP_E_RANGE;
        for (long long j = 0; j < cols; j++) {
            const long long e = r * cols + j;
            const long long o = o0 + j * col_stride;
            if (mask && !wp_mask_bit(mask, e)) {
                for (int v = 0; v < vsize; v++) memset(dst + (o + v * v_stride) * elem_size, 0, (size_t)elem_size);
                continue;
            }
            if (k >= available) return WP_E_SIZE;
            const unsigned idx = wp_read_bits(indices, k++, nbits);
            const uint8_t *src = table_base + (row_table[r] + j / col_block) * table_bytes + idx * entry_bytes;
            for (int v = 0; v < vsize; v++)
                COPY_ELEM(dst + (o + v * v_stride) * elem_size, src + v * elem_size, elem_size);
        }
    }
    return WP_OK;
}

int wp_sparse_decode(const unsigned char *mask, long long mask_len, long long count,
                     const void *values, long long n_values, int elem_size,
                     void *out, long long out_len)
{
    if (count < 0 || out_len != count || mask_len != wp_stream_bytes(count, 1)) return WP_E_SIZE;
    if (elem_size != 1 && elem_size != 2 && elem_size != 4) return WP_E_ARG;
    const uint8_t *src = (const uint8_t *)values;
    uint8_t *dst = (uint8_t *)out;
    long long k = 0;
    for (long long e = 0; e < count; e++) {
        if (wp_mask_bit(mask, e)) {
            if (k >= n_values) return WP_E_SIZE;
            COPY_ELEM(dst + e * elem_size, src + k * elem_size, elem_size);
            k++;
        } else {
            memset(dst + e * elem_size, 0, (size_t)elem_size);
        }
    }
    return k == n_values ? WP_OK : WP_E_SIZE;
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
    if (out_len != count) return WP_E_SIZE;
    if (mask && mask_len != wp_stream_bytes(count, 1)) return WP_E_SIZE;
    long long available = data_len * 8 / nbits;
    if (!mask && available < count) return WP_E_SIZE;

    long long k = 0;
    for (long long r = 0; r < rows; r++) {
        rc = check_row(row_table[r], cols, col_block, n_blocks);
        if (rc) return rc;
        for (long long j = 0; j < cols; j++) {
            const long long e = r * cols + j;
            float w = 0.0f;
            if (!mask || wp_mask_bit(mask, e)) {
                if (k >= available) return WP_E_SIZE;
                const int q = wp_code_value(wp_read_bits(data, k++, nbits), nbits, is_signed);
                w = wp_shift_scale((float)q, scale, offset, row_table[r] + j / col_block, half_math);
            }
            if (out_half) ((uint16_t *)out)[e] = wp_float_to_half(w);
            else ((float *)out)[e] = w;
        }
    }
    return WP_OK;
}
