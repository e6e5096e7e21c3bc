/* weightpack C kernels: the declarations cffi reads (keep them plain C, no macros). */
/* Status codes: 0 success, negative values are errors (see WP_E_* in weightpack/_c.py). */

int wp_packed_nbytes(long long count, int nbits, long long *out_nbytes);
int wp_pack_bits(const unsigned char *values, long long count, int nbits,
                 unsigned char *out, long long out_len);
int wp_unpack_bits(const unsigned char *packed, long long packed_len, long long count,
                   int nbits, int sign_extend, unsigned char *out, long long out_len);

int wp_lut_decode(const unsigned char *indices, long long indices_len, int nbits,
                  const unsigned char *mask, long long mask_len,
                  long long rows, long long cols, const long long *row_table, long long col_block,
                  const void *lut, const unsigned char *lut_lo, const unsigned char *lut_hi,
                  long long n_tables, int entries, int vsize, int elem_size,
                  const long long *row_out, long long col_stride, long long v_stride,
                  void *out, long long out_len);
int wp_sparse_decode(const unsigned char *mask, long long mask_len, long long count,
                     const void *values, long long n_values, int elem_size, int widen_half,
                     void *out, long long out_len);
int wp_shift_scale_decode(const unsigned char *data, long long data_len, int nbits, int is_signed,
                          const unsigned char *mask, long long mask_len,
                          long long rows, long long cols, const long long *row_table, long long col_block,
                          const void *scale, const void *offset, long long n_blocks, int half_math,
                          void *out, long long out_len, int out_half);

int wp_cpu_simd_level(void);
const char *wp_simd_level_name(int level);
int wp_set_simd_level(int level);
int wp_simd_level(void);
int wp_set_threads(int n);
int wp_threads(void);
const char *wp_threading(void);

int wp_lut_matvec(const unsigned char *codes, long long codes_len, int nbits,
                  const unsigned char *mask, long long mask_len, const long long *row_start,
                  long long rows, long long cols, const long long *row_table, long long col_block,
                  const float *lut, const unsigned char *lut_lo, const unsigned char *lut_hi, long long n_tables,
                  const float *x, long long x_len, long long batch, float *y, long long y_len);
int wp_quant_matvec(const unsigned char *codes, long long codes_len, int nbits, int is_signed,
                    const unsigned char *mask, long long mask_len, const long long *row_start,
                    long long rows, long long cols, const long long *row_table, long long col_block,
                    const void *scale, const void *offset, long long n_tables, int half_math,
                    const float *x, long long x_len, long long batch, float *y, long long y_len);
int wp_sparse_matvec(const unsigned char *mask, long long mask_len, const long long *row_start,
                     long long rows, long long cols, const void *values, long long values_len, int value_half,
                     const float *x, long long x_len, long long batch, float *y, long long y_len);

int wp_fast_min_level(void); /* the lowest SIMD level with fast-mode kernels, -1 if none */
int wp_fast_matvec(const unsigned char *codes, long long codes_len, int nbits, int is_signed,
                   long long rows, long long cols, const long long *row_table, long long col_block,
                   const unsigned char *table_u8, const float *table_scale, const float *table_bias, long long n_tables,
                   const float *x, long long x_len, long long batch, float *y, long long y_len);
