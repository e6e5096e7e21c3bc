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
const char *wp_compiler(void);

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

int wp_fast_min_level(void);
int wp_fast_amx_available(void); /* fast mode runs batches of 16+ on AMX tiles at the level in force */ /* the lowest SIMD level with fast-mode kernels, -1 if none */
int wp_fast_matvec(const unsigned char *codes, long long codes_len, int nbits, int is_signed,
                   long long rows, long long cols, const long long *row_table, long long col_block,
                   const unsigned char *table_u8, const float *table_scale, const float *table_bias, long long n_tables,
                   const float *x, long long x_len, long long batch, float *y, long long y_len);

/* ---- encoders' hot loops (csrc/encode_kmeans.c, csrc/encode_lut.c, csrc/encode_select.c,
 * csrc/encode_quant.c, csrc/encode_pack.c, csrc/encode_sweep.c, csrc/encode_vector.c; status -7: a
 * scratch allocation failed). Bit for bit the results of the numba kernels they replace. ---- */
int wp_enc_kmeans_dp(const double *x, const double *w, long long m, long long k, long long *starts, double *sse,
                     long long *count);
int wp_enc_kmeans_solve_k(const double *x, const double *w, long long m, long long k, long long *starts,
                          long long *count);
int wp_enc_hist16(const unsigned short *bits, const float *imp, const double *sw, long long outer, long long groups,
                  long long length, long long inner, long long g, long long l0, long long l1, double *counts);
int wp_enc_solve_hist16(double *counts, const int *order, long long n_order, const double *values, long long k,
                        double *cent, double *sse, int skip_zero, int curve);
int wp_enc_kmeans16_groups(const unsigned short *bits, const float *imp, const double *sw, long long outer,
                           long long groups, long long length, long long inner, long long k, long long g0, long long g1,
                           const double *values, const int *order, long long n_order, double *cent, double *sse,
                           int skip_zero, int curve, unsigned char *out3);
int wp_enc_kmeans32_groups(const float *x, const unsigned short *keys, const float *imp, const double *sw, long long outer,
                           long long groups, long long length, long long inner, long long k, long long g0, long long g1,
                           long long delta, const double *values, const int *order, long long n_order,
                           double *cent, double *sse, int skip_zero, int curve, unsigned char *out3);
int wp_enc_hist32(const float *x, const unsigned short *keys, const float *imp, const double *sw, long long outer,
                  long long groups, long long length, long long inner, long long g, long long l0, long long l1,
                  double *rec, int skip_zero, int squares);
int wp_enc_merge_records(double *rec, const double *part, int wide);
int wp_enc_solve_bins32(double *rec, int wide, const int *order, long long n_order, long long delta,
                        const double *values, long long k, int curve, double *cent, double *sse, int *bkey,
                        double *bvals, long long *nb_out, long long *q_out, int *pure, double *scale);
int wp_enc_classify_bins(const double *cent, long long q, const int *bkey, const double *bvals, long long nb,
                         int *cls, double *CW, double *CS1, double *mids);
int wp_enc_straddle_sums(const float *x, const unsigned short *keys, const float *imp, const double *sw, long long outer,
                         long long groups, long long length, long long inner, long long g, long long l0, long long l1,
                         const int *cls, const double *mids, long long n_mids, double *CW, double *CS1,
                         int skip_zero);
int wp_enc_lloyd_step(const double *CW, const double *CS1, double *cent, long long q, double *gain);
int wp_enc_key32_bits(const unsigned int *bits, long long lo, long long hi, long long delta, unsigned short *out);
int wp_enc_bin_codes(const double *entries, long long k, long long delta, const double *values, short *table);
int wp_enc_assign_chunk(const void *x, int half, const unsigned short *keys, long long outer, long long groups,
                        long long length, long long l0, long long l1, const double *entries, long long k,
                        long long delta, const double *values, void *table, unsigned char *out3);
int wp_enc_assign_groups(const void *x, int half, const unsigned short *keys, long long outer, long long groups,
                         long long length, long long delta, const double *values, long long g0, long long g1,
                         const double *luts, long long k, unsigned char *out3);
int wp_enc_minmax_groups(const void *x, int half, const double *values, long long outer, long long groups,
                         long long length, long long g0, long long g1, double *lo_out, double *hi_out, int skip_zero);
int wp_enc_distinct_groups(const void *x, int half, const double *values, long long outer, long long groups,
                           long long length, long long g0, long long g1, long long limit, double *out,
                           long long *counts, int skip_zero);
int wp_enc_block_minmax(const void *x, int half, const double *table, long long length, long long b0, long long b1,
                        double *lo, double *hi);
int wp_enc_quantize_blocks(const void *x, int half, const double *table, long long length, long long b0, long long b1,
                           const double *scale, const double *offset, double qmin, double qmax, int is_signed,
                           void *out2);
int wp_enc_search_blocks(const void *x, int half, const double *table, const float *imp, long long length,
                         long long b0, long long b1, const double *scale, const double *offset, const double *lo,
                         const double *hi, double qmin, double qmax, int symmetric, const double *alphas,
                         long long n_alphas, long long refits, int f16, double smallest, double *out_scale,
                         double *out_offset);
int wp_enc_histogram_high(const void *keys, int keys16, long long lo, long long hi, int shift, long long *counts);
int wp_enc_histogram_low(const void *keys, int keys16, long long lo, long long hi, long long bucket, long long *counts);
int wp_enc_write_sparse(const void *keys, int keys16, const void *wbits, int wbits16, long long lo, long long hi,
                        unsigned int T, long long quota, int prune_all, unsigned char *mask, void *values,
                        long long offset, long long total, long long *kept_out);
int wp_enc_write_kept_from(const void *keys, int keys16, const void *wbits, int wbits16, long long lo, long long hi,
                           unsigned int T, unsigned char *mask, void *values, long long offset, long long total,
                           long long *kept_out);
int wp_enc_select_rows(const void *keys2, int keys16, long long M, long long k, long long r0, long long r1,
                       unsigned char *pruned2);
int wp_enc_select_n_of_m(const void *keys2, int keys16, long long D, long long n, long long m, long long r0,
                         long long r1, unsigned char *pruned2);
int wp_enc_pack_codes(const unsigned char *codes, int nbits, long long lo, long long hi, unsigned char *out);
int wp_enc_select_codes(const unsigned char *codes, const unsigned char *mask, long long mask_len, unsigned char *out,
                        long long count);
int wp_enc_sweep_lut(double *W1, const double *U1, long long rows, long long width, const double *mids,
                     const long long *first, const double *values, long long k, const long long *lut_of_row,
                     unsigned char *codes, double *err);
int wp_enc_sweep_quant(double *W1, const double *U1, long long rows, long long width, const double *scale,
                       const double *offset, long long blocks, const long long *block_of_col, double qmin,
                       double qmax, short *codes, double *err);
int wp_enc_sweep_prune(double *W1, const double *U1, long long rows, long long width, unsigned char *keep, long long n,
                       long long m_run, double *err);
int wp_enc_scale_errors(const void *W, int half, const double *table, const void *order, int order16,
                        const double *importance, long long rows, long long n, const double *scales,
                        long long candidates, const double *mids, const double *values, long long groups,
                        long long k, const long long *lut_of_row, double *out);
int wp_enc_lut_gram(const unsigned char *codes, long long rows, long long n, const void *H, int h32,
                    const double *row_weight, const long long *lut_of_row, long long groups, long long k,
                    long long tile, long long band, double *out);
int wp_enc_vector_seed(const void *x, int half, const double *table, const float *wt, long long n, long long dims,
                       long long k, long long trials, const double *uniforms, double *centers, long long *q_out);
int wp_enc_vector_nearest(const void *x, int half, const double *table, const float *wt, long long n, long long dims,
                          const double *centers, long long q, long long *labels);
int wp_enc_vector_lloyd(const void *x, int half, const double *table, const float *wt, long long n, long long dims,
                        double *centers, long long q, long long max_iter, double tol, double *err_out);

/* ---- the ML-program executor's fused elementwise chains (csrc/rmsnorm.c): float32, bit for bit
 * numpy's results of the ops they replace ---- */
int wp_rmsnorm_f32(const float *x, long long x_len, long long rows, long long n, float eps_add, float eps_rsqrt,
                   const float *w, long long w_len, float *y, long long y_len);
int wp_add_rmsnorm_f32(const float *a, const float *b, float *s, long long s_len, long long rows, long long n, float eps_add,
                       float eps_rsqrt, const float *w, long long w_len, float *y, long long y_len);
int wp_rotary_f32(const float *x, long long x_len, long long rows, long long width, const float *sin_v, long long sin_len,
                  const float *cos_v, long long cos_len, float *y, long long y_len);
int wp_silu_gate_f32(const float *g, long long g_len, const float *e, long long e_len, const float *u, long long u_len,
                     float *y, long long n);
int wp_gather_f32(const float *x, long long x_len, const long long *index, long long n, float *y);
int wp_f32_to_f16(const float *x, unsigned short *y, long long n);
int wp_softmax_shift_f32(float *x, long long rows, long long n);
int wp_softmax_scale_f32(float *x, long long rows, long long n);
/* scaled_dot_product_attention of a small problem, grouped-query heads shared (csrc/attention.c) */
int wp_sdpa_f32(const float *q, long long q_len, const float *k, long long k_len, const float *v, long long v_len,
                long long heads, long long group, long long lq, long long lk, long long e, long long ev, float scale,
                int mask_kind, const void *mask, long long mask_len, long long mask_sh, long long mask_sq,
                long long mask_sk, float *out, long long out_len);
