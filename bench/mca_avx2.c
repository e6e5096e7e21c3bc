/*
 * llvm-mca harness for the AVX2 hot loops (bench/mca_avx2.py compiles it with -DWP_MCA and runs
 * llvm-mca on each marked loop body).  Each function below instantiates one kernel loop with the
 * tile size the workers run most (4 rows, batch 1), so the loop found inside it is the one that
 * runs; its name ends in _w<weights one pass of the marked body handles>.  Where a kernel holds
 * several marked loops, the one whose marker name is part of the function's name is taken.
 */
#include "../csrc/decode_avx2.c"
#include "../csrc/matvec_avx2.c"

#if WP_X86
WP_TARGET_PUSH("avx2,fma,f16c,bmi2,popcnt")

#define PRODUCT(name, tile, ...) \
    void name(const void *args, const wp_mv_common *c, const float *xs, long long r) { tile(args, c, xs, r, __VA_ARGS__); }
#define RUNS(name, kind, is_signed, offset, half_math, n, es) \
    void name(const run_table *t, const uint8_t *s, long long len, long long k, long long cnt, uint8_t *dst) \
    { decode_run(kind, (quant_kind){is_signed, offset, half_math}, n, es, t, s, len, k, cnt, dst); }

/* products: 4 rows x batch 1 */
PRODUCT(mca_product_lut4_planes_w128, planes4_tile, 2, 0, 1, 0)
PRODUCT(mca_product_lut4_vpermps_w64, small_tile, 4, 0, 1, 4, LUT_TABLE)
PRODUCT(mca_product_lut2_vpermps_w128, small_tile, 4, 0, 1, 2, LUT_TABLE)
PRODUCT(mca_product_int4_vpermps_w64, small_tile, 4, 0, 1, 4, QUANT_TABLE)
#define INT8(name, half_math) \
    void name(const void *args, const wp_mv_common *c, long long r) { int8_tile(args, c, (quant_kind){1, 0, half_math}, r, 4, 0, 1); }
INT8(mca_product_int8_f16scale_convert_w32, 1)
INT8(mca_product_int8_f16scale_split_w32, 1)
INT8(mca_product_int8_f32scale_w32, 0)
void mca_product_int4_block32_split_w64(const void *args, const wp_mv_common *c, long long r)
{
    int4_tile(args, c, (quant_kind){1, 0, 1}, r, 4, 0, 1);
}

/* products through runs of 32 weights (4 rows x 32 per pass), and masked rows (4 rows x 8 columns
   per pass, whatever the density: figures per 64 columns; the masked codes' decoding into the
   buffer is the decode_* run of the same width, per stored weight) */
#define DENSE(name, kind, is_signed, offset, half_math, n)                                                        \
    void name(const wp_mv_common *c, const tile_tables *tt, long long r, const float *x, __m256 (*acc)[BATCH_TILE]) \
    { dense_block(kind, (quant_kind){is_signed, offset, half_math}, n, c, tt, r, 4, 1, 0, c->cols, x, acc); }
DENSE(mca_product_lut3_dense_w128, RUN_LUT16, 0, 0, 0, 3)
DENSE(mca_product_lut6_fp32planes_w128, RUN_LUT64, 0, 0, 0, 6)
DENSE(mca_product_lut6_halfplanes_w128, RUN_LUT64H, 0, 0, 0, 6)
DENSE(mca_product_lut8_gather_w128, RUN_GATHER, 0, 0, 0, 8)
DENSE(mca_product_int4_f16scale_dense_w128, RUN_QUANT, 1, 0, 1, 4)
void mca_product_sparse_lut4_expand_aligned_w32(const void *args, const wp_mv_common *c, long long r)
{
    masked_tile(args, c, 0, 4, r, 4, 0, 1);
}
void mca_product_sparse_fp16_expand_aligned_w32(const void *args, const wp_mv_common *c, long long r)
{
    values_tile(args, c, 1, r, 4, 0, 1);
}

/* decompression runs (32 values per step) */
RUNS(mca_decode_lut4_f32_w32, RUN_LUT16, 0, 0, 0, 4, 4)
RUNS(mca_decode_lut4_f16_w32, RUN_LUT16, 0, 0, 0, 4, 2)
RUNS(mca_decode_lut2_f32_w32, RUN_LUT16, 0, 0, 0, 2, 4)
RUNS(mca_decode_lut3_f32_w32, RUN_LUT16, 0, 0, 0, 3, 4)
RUNS(mca_decode_lut6_f32_w32, RUN_LUT64, 0, 0, 0, 6, 4)
RUNS(mca_decode_lut6_halfplanes_f32_w32, RUN_LUT64H, 0, 0, 0, 6, 4)
RUNS(mca_decode_lut8_f32_w32, RUN_GATHER, 0, 0, 0, 8, 4)
RUNS(mca_decode_int8_f16scale_f32_w32, RUN_QUANT, 1, 0, 1, 8, 4)
RUNS(mca_decode_int4_f16scale_f32_w32, RUN_QUANT, 1, 0, 1, 4, 4)

WP_TARGET_POP()
#endif
