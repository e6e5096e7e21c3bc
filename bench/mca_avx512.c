/*
 * llvm-mca harness for the AVX-512 and AVX512-FP16 hot loops (bench/mca_x86.py --isa avx512 compiles
 * it with -DWP_MCA, once per part: the kernel files share static names, so each part includes one
 * of them).  Each function below instantiates one kernel loop as the dispatcher runs it for that
 * format (the tile the workers run at batch 1; the run-time fields that pick a branch, such as
 * binary16 arithmetic or a mask, fixed in a local copy of the arguments so the loop found is the
 * branch that runs); its name ends in _w<weights one pass of the marked loop handles>.
 */
#if MCA_PART == 1
#include "../csrc/matvec_avx512.c"
#elif MCA_PART == 2
#include "../csrc/matvec_avx512fp16.c"
#elif MCA_PART == 3
#include "../csrc/decode_avx512.c"
#elif MCA_PART == 4
#include "../csrc/fast_avx512.c"
#endif

#if WP_X86
WP_TARGET_PUSH(WP_AVX512_FEATURES)
#define HARNESS __attribute__((flatten)) void

/* the argument copy a loop runs with: q.c.mask is known to be present (or absent) */
#define MASKED(q) if (!(q).c.mask) __builtin_unreachable()
#define DENSE(q) (q).c.mask = NULL

#if MCA_PART == 1 /* ---- products, AVX-512 level ---- */

/* dense 1/2/4-bit codes, x split into phases: 4 rows x 16 code bytes per pass */
#define SMALL(name, n)                                                                      \
    HARNESS name(const wp_lut_mv *a, const float *xs, long long r)                          \
    {                                                                                       \
        wp_lut_mv q = *a;                                                                   \
        DENSE(q);                                                                           \
        small_tile(&q, &q.c, xs, r, 4, 0, 1, n, LUT_TABLE);                                 \
    }
SMALL(mca_product_lut4_small_w128, 4)
SMALL(mca_product_lut2_small_w256, 2)
SMALL(mca_product_lut1_small_w512, 1)

/* int4 per block of 32 (int4-b32): the loop over blocks ("outer"), with the register table built per block */
HARNESS mca_product_int4_block32_small_outer_w128(const wp_quant_mv *a, const float *xs, long long r)
{
    wp_quant_mv q = *a;
    DENSE(q);
    q.c.col_block = 32, q.is_signed = 1, q.half_math = 1, q.offset = NULL;
    small_tile(&q, &q.c, xs, r, 4, 0, 1, 4, QUANT_TABLE);
}

/* int8 per channel, arithmetic: 4 rows x 16 columns per pass */
#define INT8(name, half)                                                                    \
    HARNESS name(const wp_quant_mv *a, long long r)                                         \
    {                                                                                       \
        wp_quant_mv q = *a;                                                                 \
        DENSE(q);                                                                           \
        q.is_signed = 1, q.half_math = half, q.offset = NULL;                               \
        int8_tile(&q, &q.c, NULL, r, 4, 0, 1);                                              \
    }
INT8(mca_product_int8_f16scale_convert_w64, 1)
INT8(mca_product_int8_f32scale_w64, 0)

/* one tile of `rows` rows x batch 1 of codes_tile / bytes_tile */
#define TILE(name, tile, rows, type, src, n, masked, ...)                                   \
    HARNESS name(const type *a, long long r)                                                \
    {                                                                                       \
        type q = *a;                                                                        \
        masked(q);                                                                          \
        __VA_ARGS__;                                                                        \
        tile(&q, &q.c, src, n, r, rows, 0, 1);                                              \
    }

/* 16 columns x 4 rows per pass (tables in blocks of 16-48 columns; 8-bit float32 LUTs: gathers) */
#define CODES(name, ...) TILE(name, codes_tile, 4, __VA_ARGS__)
CODES(mca_product_lut4_codes_w64, wp_lut_mv, SRC_LUT, 4, DENSE)
CODES(mca_product_lut8_f32lut_gather_w64, wp_lut_mv, SRC_LUT, 8, DENSE)

/* 64 columns of one row per pass (sparse rows: per 64 columns, whatever the density) */
#define BYTES(name, ...) TILE(name, bytes_tile, 1, __VA_ARGS__)
BYTES(mca_product_lut3_bytes_w64, wp_lut_mv, SRC_LUT, 3, DENSE)
BYTES(mca_product_lut6_bytes_w64, wp_lut_mv, SRC_LUT, 6, DENSE)
BYTES(mca_product_lut8_bytes_w64, wp_lut_mv, SRC_LUT, 8, DENSE)
BYTES(mca_product_sparse_fp16_bytes_w64, wp_sparse_mv, SRC_HALF, 16, MASKED)
BYTES(mca_product_sparse_lut4_bytes_w64, wp_lut_mv, SRC_LUT, 4, MASKED)
BYTES(mca_product_sparse_int8_f16scale_bytes_w64, wp_quant_mv, SRC_QUANT, 8, MASKED, q.is_signed = 1, q.half_math = 1,
      q.offset = NULL)
BYTES(mca_product_sparse_int8_f16scale_table_bytes_w64, wp_quant_mv, SRC_QUANT_TABLE, 8, MASKED)

#elif MCA_PART == 2 && WP_HAVE_AVX512FP16 /* ---- products, AVX512-FP16 level ---- */
WP_TARGET_PUSH(WP_AVX512_FEATURES ",avx512fp16")
HARNESS mca_product_int8_f16scale_vmulph_w128(const wp_quant_mv *a, long long r)
{
    wp_quant_mv q = *a;
    DENSE(q);
    q.is_signed = 1, q.offset = NULL;
    int8_tile(&q, &q.c, NULL, r, 4, 0, 1);
}
WP_TARGET_POP()

#elif MCA_PART == 3 /* ---- decompression, 64 elements per pass ---- */

#define PLANES(name, n, es, masked, quant)                                                  \
    HARNESS name(const wp_decode_job *job, long long r, long long j0, long long j1, long long k) \
    {                                                                                       \
        wp_decode_job d = *job;                                                             \
        d.nbits = n, d.elem_size = es, d.vsize = 1;                                         \
        masked(d);                                                                          \
        planes_chunk(&d, r, j0, j1, k, quant);                                              \
    }
#define JOB_MASKED(d) if (!(d).mask) __builtin_unreachable()
#define JOB_DENSE(d) (d).mask = NULL
PLANES(mca_decode_lut1_f32_w64, 1, 4, JOB_DENSE, 0)
PLANES(mca_decode_lut2_f32_w64, 2, 4, JOB_DENSE, 0)
PLANES(mca_decode_lut3_f32_w64, 3, 4, JOB_DENSE, 0)
PLANES(mca_decode_lut4_f32_w64, 4, 4, JOB_DENSE, 0)
PLANES(mca_decode_lut6_f32_w64, 6, 4, JOB_DENSE, 0)
PLANES(mca_decode_lut8_f32_w64, 8, 4, JOB_DENSE, 0)
PLANES(mca_decode_lut4_f16_w64, 4, 2, JOB_DENSE, 0)
PLANES(mca_decode_lut8_f16_w64, 8, 2, JOB_DENSE, 0)
PLANES(mca_decode_sparse_lut4_f32_w64, 4, 4, JOB_MASKED, 0)
PLANES(mca_decode_int8_f16scale_table_f32_w64, 8, 4, JOB_DENSE, 1)

#define QUANT(name, n, half, out16)                                                         \
    HARNESS name(const wp_decode_job *job, long long r, long long j0, long long j1, long long k) \
    {                                                                                       \
        wp_decode_job d = *job;                                                             \
        d.nbits = n, d.is_signed = 1, d.half_math = half, d.out_half = out16, d.offset = NULL; \
        JOB_DENSE(d);                                                                       \
        quant_chunk(&d, r, j0, j1, k);                                                      \
    }
QUANT(mca_decode_int4_f16scale_f32_w64, 4, 1, 0)
QUANT(mca_decode_int8_f16scale_f32_w64, 8, 1, 0)
QUANT(mca_decode_int8_f32scale_f32_w64, 8, 0, 0)
QUANT(mca_decode_int4_f16scale_f16_w64, 4, 1, 1)

#define EXPAND(name, es, widen)                                                             \
    HARNESS name(const sparse_tasks *tasks, long long t0, long long t1)                     \
    {                                                                                       \
        sparse_tasks s = *tasks;                                                            \
        s.elem_size = es, s.widen_half = widen;                                             \
        expand_chunks(&s, t0, t1);                                                          \
    }
EXPAND(mca_decode_sparse_fp16_f32_w64, 2, 1)
EXPAND(mca_decode_sparse_fp16_f16_w64, 2, 0)
EXPAND(mca_decode_sparse_fp32_f32_w64, 4, 0)

#elif MCA_PART == 4 /* ---- fast mode (VNNI): a tile of rows (4 for 8-bit codes, else 1), 64 code bytes of each per pass ---- */

#define FAST(name, n, lut, rows)                                                            \
    __attribute__((flatten)) void name(const wp_fast_args *a, long long r, const int8_t *xq, const float *sx, \
                                       const double *prefix, float *y) { fast_tile(a, r, rows, xq, sx, prefix, n, lut, y); }
FAST(mca_fast_lut4_w128, 4, 1, 1)
FAST(mca_fast_lut2_w256, 2, 1, 1)
FAST(mca_fast_lut1_w512, 1, 1, 1)
FAST(mca_fast_int8_w256, 8, 0, ROW_TILE)
#define FAST_BLOCKS(name, n)                                                                \
    __attribute__((flatten)) void name(const wp_fast_args *a, long long r, const int8_t *xq, const float *sx, \
                                       const float *block_sum, float *y) { fast_tile_blocks(a, r, n == 8 ? ROW_TILE : 1, xq, sx, block_sum, n, y); }
FAST_BLOCKS(mca_fast_int4_block32_w128, 4)
FAST_BLOCKS(mca_fast_int8_block32_w256, 8)

#endif
WP_TARGET_POP()
#endif
