/* Decompression jobs shared by the scalar decoders (decode.c) and their SIMD versions. */
#ifndef WP_DECODE_H
#define WP_DECODE_H

#include "wp_internal.h"
#include "wp_target.h"

/* A tensor walked as rows x cols (see weightpack/kernels/plan.py), already validated. */
typedef struct {
    const uint8_t *codes; /* n-bit stream: dense (element e = r*cols + j) or the set bits of mask */
    long long codes_len;
    int nbits, is_signed;
    const uint8_t *mask; /* NULL when dense */
    long long rows, cols;
    const long long *row_table;
    long long col_block, n_tables;
    /* LUT decoding: tables of 2^nbits x vsize elements of elem_size bytes (the output type) */
    const void *lut;
    const uint8_t *lut_lo, *lut_hi; /* binary16 byte planes (64 or 256 bytes per table) or NULL */
    int vsize, elem_size;
    const long long *row_out;
    long long col_stride, v_stride;
    /* shift-scale decoding: scale and offset per table (binary16 bits when half_math) */
    const void *scale, *offset;
    int half_math;
    void *out;
    int out_half; /* shift-scale: binary16 output (else float32) */
} wp_decode_job;

/* Sparse expansion of element e: the next stored value (k counts them) where the mask is set,
   zero elsewhere; binary16 values widen to float32 when widen_half. */
static inline void wp_sparse_element(const uint8_t *mask, long long e, const void *values, long long *k, int elem_size,
                                     int widen_half, void *out)
{
    const int out_size = widen_half ? 4 : elem_size;
    uint8_t *d = (uint8_t *)out + e * out_size;
    if (!wp_mask_bit(mask, e)) {
        memset(d, 0, (size_t)out_size);
    } else if (widen_half) {
        const float f = wp_half_to_float(((const uint16_t *)values)[(*k)++]);
        memcpy(d, &f, 4);
    } else {
        memcpy(d, (const uint8_t *)values + (*k)++ * elem_size, (size_t)elem_size);
    }
}

/* SIMD decoders: WP_OK when done, WP_NOT_COVERED when the scalar decoder must run, WP_E_SIZE
   when the mask sets more bits than the stream holds codes (nothing is written then). */
#define WP_NOT_COVERED 1
#if WP_X86
int wp_lut_decode_avx512(const wp_decode_job *job);
int wp_quant_decode_avx512(const wp_decode_job *job);
int wp_sparse_decode_avx512(const uint8_t *mask, long long count, const void *values, long long n_values, int elem_size,
                            int widen_half, void *out);
#elif WP_ARM64
int wp_lut_decode_neon(const wp_decode_job *job);
int wp_quant_decode_neon(const wp_decode_job *job);
int wp_sparse_decode_neon(const uint8_t *mask, long long count, const void *values, long long n_values, int elem_size,
                          int widen_half, void *out);
#endif

#endif
