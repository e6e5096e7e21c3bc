/* AVX2 + FMA + F16C row workers for the fused products (selected when the CPU level is >= 1). */
#include "matvec.h"

wp_rows_fn wp_lut_rows_avx2(const wp_lut_mv *a) { (void)a; return NULL; }
wp_rows_fn wp_quant_rows_avx2(const wp_quant_mv *a) { (void)a; return NULL; }
wp_rows_fn wp_sparse_rows_avx2(const wp_sparse_mv *a) { (void)a; return NULL; }
