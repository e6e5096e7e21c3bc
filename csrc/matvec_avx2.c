/*
 * AVX2 + FMA + F16C row workers for the fused products (CPU level 1): every format and layout.
 *
 * - Dense codes of 1, 2 and 4 bits whose tables cover whole 8-byte steps (LUTs, and 4-bit
 *   quantized weights through a 16-entry table of Core ML's decoded values) use phase-split
 *   activations: 8 packed bytes widen to 8 lanes, phase p shifts its code into the low bits, and
 *   a 16-entry float table is two 8-entry vpermps lookups blended on index bit 3.
 * - Dense 8-bit quantized codes are decoded arithmetically, 8 per load.
 * - Every other dense layout (3/6/8-bit LUTs, tables that start anywhere in a byte, rows of any
 *   length) decodes 32 weights per step in registers with the runs of avx2_common.h (codes to
 *   bytes, byte-plane lookups or gathers, shift-scale arithmetic); a table's last partial step
 *   decodes into a small buffer and meets masked loads of x.
 * - Masked rows (sparse values, sparse + LUT, sparse + quantized) expand 8 columns per mask byte
 *   through a table of lane permutations; coded ones first decode a chunk of their stored codes
 *   into a buffer with the same runs.
 * Tiles of several rows share each load of x.
 */
#include "wp_target.h"
#if WP_X86
WP_TARGET_PUSH("avx2,fma,f16c,bmi2,popcnt")
#include <immintrin.h>
#include <stdlib.h>

#include "avx2_common.h"
#include "matvec.h"

#define ROW_TILE 4
#define BATCH_TILE 2
#define SUB 512 /* columns of a masked row decoded into its buffer at a time */

/* Weight streams are read a few rows at a time, so the hardware prefetchers see short streams;
   each step asks for the same position AHEAD rows further on (loads of the next tiles). */
#define AHEAD 4
#define PREFETCH(p) _mm_prefetch((const char *)(p), _MM_HINT_T0)

typedef struct { __m256 lo, hi; } table16;

enum table_kind { LUT_TABLE, QUANT_TABLE };

/* Table t as 16 floats (entries repeated when fewer, so indices need no masking). */
WP_INLINE table16 load_table(const void *args, enum table_kind kind, long long t, int n)
{
    const int entries = 1 << n;
    float v[16];
    if (kind == LUT_TABLE) {
        const float *lut = ((const wp_lut_mv *)args)->lut + t * entries;
        for (int i = 0; i < 16; i++) v[i] = lut[i % entries];
        return (table16){_mm256_loadu_ps(v), _mm256_loadu_ps(v + 8)};
    }
    const wp_quant_mv *a = args;
    const quant_kind qk = {a->is_signed, a->offset != NULL, a->half_math};
    const __m256 scale = _mm256_set1_ps(scalar_at(a->scale, t, qk.half_math));
    const __m256 offset = a->offset ? _mm256_set1_ps(scalar_at(a->offset, t, qk.half_math)) : _mm256_setzero_ps();
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), eight = _mm256_set1_epi32(8);
    __m256i codes[2] = {iota, _mm256_add_epi32(iota, eight)};
    table16 out;
    for (int h = 0; h < 2; h++) {
        if (a->is_signed) codes[h] = _mm256_sub_epi32(_mm256_xor_si256(codes[h], eight), eight);
        const __m256 w = dequantize8(codes[h], scale, offset, qk, 1);
        if (h) out.hi = w; else out.lo = w;
    }
    return out;
}

WP_INLINE __m256 lookup16(table16 t, __m256i idx, int n)
{
    const __m256 low = _mm256_permutevar8x32_ps(t.lo, idx);
    if (n < 4) return low; /* tables of <= 8 entries repeat in both halves */
    const __m256 high = _mm256_permutevar8x32_ps(t.hi, idx);
    return _mm256_blendv_ps(low, high, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

#define RUN_TILES(F, args, c, extra, r0, r1) WP_RUN_TILES(F, args, c, extra, r0, r1, ROW_TILE, BATCH_TILE)

WP_INLINE void zero_tile(__m256 acc[ROW_TILE][BATCH_TILE], int rt, int bt)
{
    for (int i = 0; i < rt; i++)
        for (int b = 0; b < bt; b++) acc[i][b] = _mm256_setzero_ps();
}

WP_INLINE void store_tile(const wp_mv_common *c, __m256 acc[ROW_TILE][BATCH_TILE], long long r, int rt, long long b0, int bt)
{
    for (int i = 0; i < rt; i++)
        for (int b = 0; b < bt; b++) c->y[(b0 + b) * c->rows + r + i] = hsum(acc[i][b]);
}

/* ---- dense codes of 1, 2, 4 bits: phase-split activations ------------------------------------- */

WP_INLINE void small_tile(const void *args, const wp_mv_common *c, const float *xs, long long r, int rt,
                          long long b0, int bt, int n, enum table_kind kind)
{
    const int per = 8 / n;
    const long long len = c->cols / per;
    __m256 acc[ROW_TILE][BATCH_TILE];
    zero_tile(acc, rt, bt);
    for (long long j0 = 0; j0 < c->cols; j0 += c->col_block) {
        table16 table[ROW_TILE];
        for (int i = 0; i < rt; i++) table[i] = load_table(args, kind, c->row_table[r + i] + j0 / c->col_block, n);
        const long long k_end = (j0 + c->col_block) / per;
        for (long long k = j0 / per; k < k_end; k += 8) {
            MCA_BEGIN("small");
            __m256i codes[ROW_TILE];
            for (int i = 0; i < rt; i++) {
                PREFETCH(c->codes + (r + i + AHEAD) * len + k);
                codes[i] = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(c->codes + (r + i) * len + k)));
            }
            for (int p = 0; p < per; p++) {
                __m256 xv[BATCH_TILE];
                for (int b = 0; b < bt; b++) xv[b] = _mm256_loadu_ps(xs + ((b0 + b) * per + p) * len + k);
                for (int i = 0; i < rt; i++) {
                    const __m256i idx = p ? _mm256_srli_epi32(codes[i], p * n) : codes[i];
                    const __m256 w = lookup16(table[i], idx, n);
                    for (int b = 0; b < bt; b++) acc[i][b] = _mm256_fmadd_ps(w, xv[b], acc[i][b]);
                }
            }
            MCA_END();
        }
    }
    store_tile(c, acc, r, rt, b0, bt);
}

#define SMALL_WORKER(name, n, kind, type)                                                        \
    WP_INLINE void name##_tile(const void *args, const wp_mv_common *c, const float *xs, long long r, int rt, \
                               long long b0, int bt) { small_tile(args, c, xs, r, rt, b0, bt, n, kind); } \
    static void name(const void *args, long long r0, long long r1)                               \
    {                                                                                            \
        const wp_mv_common *c = &((const type *)args)->c;                                        \
        RUN_TILES(name##_tile, args, c, c->xs, r0, r1);                                          \
    }

SMALL_WORKER(lut_rows_1bit, 1, LUT_TABLE, wp_lut_mv)
SMALL_WORKER(lut_rows_2bit, 2, LUT_TABLE, wp_lut_mv)
SMALL_WORKER(lut_rows_4bit, 4, LUT_TABLE, wp_lut_mv)
SMALL_WORKER(quant_rows_4bit, 4, QUANT_TABLE, wp_quant_mv)

/* Core ML's weights of 8 integer codes; split: the binary16 rounding by round_half_split (the
   block's scale and integer offset keep it exact, see block_scales). */
WP_INLINE __m256 arith_weights(__m256i q, __m256 scale, __m256 offset, quant_kind qk, int split)
{
    if (!split) return dequantize8(q, scale, offset, qk, 1);
    __m256 v = _mm256_cvtepi32_ps(q);
    if (qk.has_offset) v = _mm256_sub_ps(v, offset);
    return round_half_split(_mm256_mul_ps(scale, v));
}

/* ---- dense 4-bit quantized codes in short blocks: arithmetic on phase-split activations ------- */

/* 8 packed bytes per row and step (16 codes: phase 0 the low nibbles, phase 1 the high ones);
   each block's scale and offset broadcast per row, no table to build. */
WP_INLINE void int4_block(quant_kind qk, int split, const uint8_t *codes[ROW_TILE],
                          const __m256 scale[ROW_TILE], const __m256 offset[ROW_TILE], const float *xs, long long len,
                          long long k0, long long k1, int rt, long long b0, int bt, __m256 acc[ROW_TILE][BATCH_TILE])
{
    const __m256i low = _mm256_set1_epi32(15), eight = _mm256_set1_epi32(8);
    for (long long k = k0; k < k1; k += 8) {
        if (split) MCA_BEGIN("int4_split");
        else MCA_BEGIN("int4_convert");
        __m256 xv[BATCH_TILE][2];
        for (int b = 0; b < bt; b++)
            for (int p = 0; p < 2; p++) xv[b][p] = _mm256_loadu_ps(xs + ((b0 + b) * 2 + p) * len + k);
        for (int i = 0; i < rt; i++) {
            PREFETCH(codes[i] + k + AHEAD * len);
            const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(codes[i] + k)));
            for (int p = 0; p < 2; p++) {
                __m256i q = p ? _mm256_srli_epi32(bytes, 4) : _mm256_and_si256(bytes, low);
                if (qk.is_signed) q = _mm256_sub_epi32(_mm256_xor_si256(q, eight), eight);
                const __m256 w = arith_weights(q, scale[i], offset[i], qk, split);
                for (int b = 0; b < bt; b++) acc[i][b] = _mm256_fmadd_ps(w, xv[b][p], acc[i][b]);
            }
        }
        MCA_END();
    }
}

/* The broadcast scales and offsets of the tile's rows for the block of column j0; whether
   round_half_split may stand for Core ML's binary16 rounding of all of them. */
WP_INLINE int block_scales(const wp_quant_mv *a, quant_kind qk, long long r, int rt, long long j0, int q_max,
                           __m256 scale[ROW_TILE], __m256 offset[ROW_TILE])
{
    const wp_mv_common *c = &a->c;
    int split = qk.half_math;
    for (int i = 0; i < rt; i++) {
        const long long t = c->row_table[r + i] + j0 / c->col_block;
        const float s = scalar_at(a->scale, t, qk.half_math), o = qk.has_offset ? scalar_at(a->offset, t, qk.half_math) : 0.0f;
        split = split && split_rounding_exact(s, o, q_max);
        scale[i] = _mm256_set1_ps(s);
        offset[i] = _mm256_set1_ps(o);
    }
    return split;
}

WP_INLINE void int4_tile(const void *args, const wp_mv_common *c, quant_kind qk, long long r, int rt, long long b0, int bt)
{
    const long long len = c->cols / 2;
    __m256 acc[ROW_TILE][BATCH_TILE];
    zero_tile(acc, rt, bt);
    const uint8_t *codes[ROW_TILE];
    for (int i = 0; i < rt; i++) codes[i] = c->codes + (r + i) * len;
    for (long long j0 = 0; j0 < c->cols; j0 += c->col_block) {
        __m256 scale[ROW_TILE], offset[ROW_TILE];
        const int split = block_scales(args, qk, r, rt, j0, qk.is_signed ? 8 : 15, scale, offset);
        const long long k0 = j0 / 2, k1 = (j0 + c->col_block) / 2;
        if (split) int4_block(qk, 1, codes, scale, offset, c->xs, len, k0, k1, rt, b0, bt, acc);
        else int4_block(qk, 0, codes, scale, offset, c->xs, len, k0, k1, rt, b0, bt, acc);
    }
    store_tile(c, acc, r, rt, b0, bt);
}

/* ---- dense 8-bit quantized codes: arithmetic ------------------------------------------------- */

/* Columns [j0, j1) of the tile's rows; with split, Core ML's binary16 rounding of scale * q is done
   by round_half_split (q - offset is an exact small integer then). */
WP_INLINE void int8_block(const wp_mv_common *c, quant_kind qk, int split, const uint8_t *codes[ROW_TILE],
                          const __m256 scale[ROW_TILE], const __m256 offset[ROW_TILE], const float *x, long long j0,
                          long long j1, int rt, int bt, __m256 acc[ROW_TILE][BATCH_TILE])
{
    for (long long j = j0; j < j1; j += 8) {
        if (split) MCA_BEGIN("int8_split");
        else MCA_BEGIN("int8_convert");
        __m256 xv[BATCH_TILE];
        for (int b = 0; b < bt; b++) xv[b] = _mm256_loadu_ps(x + b * c->cols + j);
        for (int i = 0; i < rt; i++) {
            PREFETCH(codes[i] + j + AHEAD * c->cols);
            const __m128i bytes = _mm_loadl_epi64((const __m128i *)(codes[i] + j));
            const __m256i q = qk.is_signed ? _mm256_cvtepi8_epi32(bytes) : _mm256_cvtepu8_epi32(bytes);
            const __m256 w = arith_weights(q, scale[i], offset[i], qk, split);
            for (int b = 0; b < bt; b++) acc[i][b] = _mm256_fmadd_ps(w, xv[b], acc[i][b]);
        }
        MCA_END();
    }
}

/* 8 codes per load and row; each row's scale and offset broadcast once per block. */
WP_INLINE void int8_tile(const void *args, const wp_mv_common *c, quant_kind qk, long long r, int rt, long long b0, int bt)
{
    const wp_quant_mv *a = args;
    __m256 acc[ROW_TILE][BATCH_TILE];
    zero_tile(acc, rt, bt);
    const float *x = c->x + b0 * c->cols;
    for (long long j0 = 0; j0 < c->cols; j0 += c->col_block) {
        __m256 scale[ROW_TILE], offset[ROW_TILE];
        const uint8_t *codes[ROW_TILE];
        const int split = block_scales(a, qk, r, rt, j0, qk.is_signed ? 128 : 255, scale, offset);
        for (int i = 0; i < rt; i++) codes[i] = c->codes + (r + i) * c->cols;
        if (split) int8_block(c, qk, 1, codes, scale, offset, x, j0, j0 + c->col_block, rt, bt, acc);
        else int8_block(c, qk, 0, codes, scale, offset, x, j0, j0 + c->col_block, rt, bt, acc);
    }
    store_tile(c, acc, r, rt, b0, bt);
}

#define ARITH_WORKER(name, tile, flags, extra)                                                   \
    WP_INLINE void name##_tile(const void *args, const wp_mv_common *c, const void *unused, long long r, int rt, \
                               long long b0, int bt)                                             \
    {                                                                                            \
        (void)unused;                                                                            \
        tile(args, c, (quant_kind){(flags) >> 2 & 1, (flags) >> 1 & 1, (flags) & 1}, r, rt, b0, bt); \
    }                                                                                            \
    static void name(const void *args, long long r0, long long r1)                               \
    {                                                                                            \
        const wp_mv_common *c = &((const wp_quant_mv *)args)->c;                                 \
        RUN_TILES(name##_tile, args, c, extra, r0, r1);                                          \
    }
#define ARITH_WORKERS(prefix, tile)                                                              \
    ARITH_WORKER(prefix##_0, tile, 0, NULL) ARITH_WORKER(prefix##_1, tile, 1, NULL)              \
    ARITH_WORKER(prefix##_2, tile, 2, NULL) ARITH_WORKER(prefix##_3, tile, 3, NULL)              \
    ARITH_WORKER(prefix##_4, tile, 4, NULL) ARITH_WORKER(prefix##_5, tile, 5, NULL)              \
    ARITH_WORKER(prefix##_6, tile, 6, NULL) ARITH_WORKER(prefix##_7, tile, 7, NULL)
ARITH_WORKERS(int8_rows, int8_tile)
ARITH_WORKERS(int4_rows, int4_tile)
/* [8-bit][signed * 4 + offset * 2 + binary16 arithmetic] */
static const wp_rows_fn ARITH_ROWS[2][8] = {
    {int4_rows_0, int4_rows_1, int4_rows_2, int4_rows_3, int4_rows_4, int4_rows_5, int4_rows_6, int4_rows_7},
    {int8_rows_0, int8_rows_1, int8_rows_2, int8_rows_3, int8_rows_4, int8_rows_5, int8_rows_6, int8_rows_7}};

/* ---- any codes: runs of 32 weights ------------------------------------------------------------ */

/* What a worker decodes: its run kind and, for shift-scale, the arithmetic's flavour. */
typedef struct {
    enum run_kind kind;
    quant_kind qk;
    int planes; /* shift-scale of 4-bit codes looked up in the 16 decoded values */
} source;

#define LUT_KIND(n) ((n) == 8 ? RUN_GATHER : (n) == 6 ? RUN_LUT64 : RUN_LUT16)

WP_INLINE source source_of(const void *args, int quant, int n)
{
    if (!quant) return (source){n == 6 && ((const wp_lut_mv *)args)->lut_lo ? RUN_LUT64H : LUT_KIND(n), {0, 0, 0}, 0};
    const wp_quant_mv *a = args;
    const int planes = n == 4 && a->c.col_block >= 128;
    return (source){planes ? RUN_LUT16 : RUN_QUANT, {a->is_signed, a->offset != NULL, a->half_math}, planes};
}

/* Call F(kind, qk, code bits, ...) with the source's run kind and code width as constants, so that
   each call site compiles to one specialised loop. */
#define WITH_SOURCE(quant, n, src, F, ...)                                                       \
    do {                                                                                         \
        if (!(quant) && (src).kind == RUN_LUT64H) F(RUN_LUT64H, ((quant_kind){0, 0, 0}), 6, __VA_ARGS__); \
        else if (!(quant)) F(LUT_KIND(n), ((quant_kind){0, 0, 0}), n, __VA_ARGS__);              \
        else if ((src).planes) F(RUN_LUT16, (src).qk, 4, __VA_ARGS__);                           \
        else F(RUN_QUANT, (src).qk, n, __VA_ARGS__);                                              \
    } while (0)

/* The run table of table t for the worker's source (a no-op when the slot holds it already). */
WP_INLINE void fetch_table(const void *args, int quant, int n, source src, long long t, table_slot *s)
{
    if (s->id == t) return;
    if (quant) {
        const wp_quant_mv *a = args;
        quant_run_table(a->scale, a->offset, t, src.qk, 4, src.planes, s);
    } else if (src.kind == RUN_LUT64H) {
        const wp_lut_mv *a = args;
        half_run_table(a->lut_lo + t * 64, a->lut_hi + t * 64, s);
    } else {
        lut_run_table((const uint8_t *)(((const wp_lut_mv *)args)->lut + (t << n)), n, 4, s);
    }
    s->id = t;
}

/* The tables of a tile's rows. */
typedef struct {
    table_slot slots[ROW_TILE];
    const run_table *tab[ROW_TILE];
} tile_tables;

/* Start a tile: zero accumulators, empty slots (zeroed: the compiler cannot see that every table
   is fetched before its use). */
WP_INLINE void tile_start(tile_tables *tt, __m256 acc[ROW_TILE][BATCH_TILE], int rt, int bt)
{
    zero_tile(acc, rt, bt);
    for (int i = 0; i < rt; i++) {
        memset(&tt->slots[i].t, 0, sizeof tt->slots[i].t);
        tt->slots[i].id = -1;
    }
}

/* Tables of the tile's rows for the block of column j0: a row whose table is its predecessor's
   shares it. */
WP_INLINE void fetch_tile_tables(const void *args, const wp_mv_common *c, int quant, int n, source src, tile_tables *tt,
                                 long long r, int rt, long long j0)
{
    long long previous = -1;
    for (int i = 0; i < rt; i++) {
        const long long t = c->row_table[r + i] + j0 / c->col_block;
        if (i && t == previous) {
            tt->tab[i] = tt->tab[i - 1];
            continue;
        }
        fetch_table(args, quant, n, src, t, &tt->slots[i]);
        tt->tab[i] = &tt->slots[i].t;
        previous = t;
    }
}

WP_INLINE void fma_tile_row(__m256 acc[BATCH_TILE], const __m256 w[4], const float *x, long long cols, int bt, int lanes)
{
    for (int b = 0; b < bt; b++)
        for (int q = 0; q < 4; q++) {
            const float *xq = x + b * cols + 8 * q;
            const int left = lanes - 8 * q;
            if (left <= 0) break;
            const __m256 xv = left >= 8 ? _mm256_loadu_ps(xq) : _mm256_maskload_ps(xq, first_lanes(left));
            acc[b] = _mm256_fmadd_ps(w[q], xv, acc[b]);
        }
}

/* Columns [j0, j1) of one table block of the tile's rows: whole 32-column steps in registers,
   then the block's last columns (and steps near the stream's end) through a small buffer. */
WP_INLINE void dense_block(enum run_kind kind, quant_kind qk, int nb, const wp_mv_common *c, const tile_tables *tt,
                           long long r, int rt, int bt, long long j0, long long j1, const float *x,
                           __m256 acc[ROW_TILE][BATCH_TILE])
{
    unpacker u[ROW_TILE];
    long long byte[ROW_TILE];
    for (int i = 0; i < rt; i++) {
        const long long k = (r + i) * c->cols + j0;
        unpacker_init(&u[i], nb, k);
        byte[i] = (k * nb) >> 3;
    }
    long long j = j0;
    for (; j + 32 <= j1 && byte[rt - 1] + STEP_READ(nb) <= c->codes_len; j += 32) {
        MCA_BEGIN("dense");
#pragma GCC unroll 4
        for (int i = 0; i < rt; i++) {
            __m256i v[4];
            PREFETCH(c->codes + byte[i] + AHEAD * c->cols * nb / 8);
            values32(kind, qk, nb, 4, tt->tab[i], c->codes + byte[i], &u[i], v);
            byte[i] += 4 * nb;
            const __m256 w[4] = {_mm256_castsi256_ps(v[0]), _mm256_castsi256_ps(v[1]), _mm256_castsi256_ps(v[2]),
                                 _mm256_castsi256_ps(v[3])};
            fma_tile_row(acc[i], w, x + j, c->cols, bt, 32);
        }
        MCA_END();
    }
    for (; j < j1; j += 32) {
        const int lanes = j1 - j < 32 ? (int)(j1 - j) : 32;
        for (int i = 0; i < rt; i++) {
            _Alignas(32) float w[32] = {0};
            decode_run(kind, qk, nb, 4, tt->tab[i], c->codes, c->codes_len, (r + i) * c->cols + j, lanes, (uint8_t *)w);
            const __m256 wv[4] = {_mm256_load_ps(w), _mm256_load_ps(w + 8), _mm256_load_ps(w + 16), _mm256_load_ps(w + 24)};
            fma_tile_row(acc[i], wv, x + j, c->cols, bt, lanes);
        }
    }
}

WP_INLINE void dense_tile(const void *args, const wp_mv_common *c, int quant, int n, long long r, int rt, long long b0,
                          int bt)
{
    const source src = source_of(args, quant, n);
    tile_tables tt;
    __m256 acc[ROW_TILE][BATCH_TILE];
    tile_start(&tt, acc, rt, bt);
    const float *x = c->x + b0 * c->cols;
    for (long long j0 = 0; j0 < c->cols; j0 += c->col_block) {
        fetch_tile_tables(args, c, quant, n, src, &tt, r, rt, j0);
        WITH_SOURCE(quant, n, src, dense_block, c, &tt, r, rt, bt, j0, j0 + c->col_block, x, acc);
    }
    store_tile(c, acc, r, rt, b0, bt);
}

/* ---- dense 4-bit codes, blocks of whole 64-column steps: byte planes ---------------------------- */

/* 32 float32 weights of 32 codes (one per byte) looked up in the four byte planes of a 16-entry
   table: lanes of codes 0-3, 8-11, 16-19, 24-27 | 4-7, 12-15, 20-23, 28-31 give weights 0-31. */
WP_INLINE void planes4_lookup(const __m256i planes[4], __m256i codes, __m256 w[4])
{
    const __m256i b0 = _mm256_shuffle_epi8(planes[0], codes), b1 = _mm256_shuffle_epi8(planes[1], codes);
    const __m256i b2 = _mm256_shuffle_epi8(planes[2], codes), b3 = _mm256_shuffle_epi8(planes[3], codes);
    const __m256i l01 = _mm256_unpacklo_epi8(b0, b1), h01 = _mm256_unpackhi_epi8(b0, b1);
    const __m256i l23 = _mm256_unpacklo_epi8(b2, b3), h23 = _mm256_unpackhi_epi8(b2, b3);
    w[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(l01, l23));
    w[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(l01, l23));
    w[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(h01, h23));
    w[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(h01, h23));
}

/*
 * x is split into its even and odd columns (phases); 32 packed bytes of a row hold 32 codes of
 * each phase, low and high nibbles.  A dword permutation (lanes: bytes 0-3, 8-11, 16-19, 24-27 |
 * 4-7, 12-15, 20-23, 28-31) lets the plane lookups interleave back into 4 x 8 weights in phase
 * order, which meet 32 consecutive activations of the phase stream with plain loads.
 */
WP_INLINE void planes4_tile(const void *args, const wp_mv_common *c, const float *xs, long long r, int rt, long long b0,
                            int bt, int quant)
{
    const long long len = c->cols / 2;
    const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7), low = _mm256_set1_epi8(0x0f);
    const source src = source_of(args, quant, 4);
    tile_tables tt;
    __m256 acc[ROW_TILE][BATCH_TILE], acc2[ROW_TILE][BATCH_TILE]; /* two chains of FMAs per row: latency */
    tile_start(&tt, acc, rt, bt);
    zero_tile(acc2, rt, bt);
    for (long long j0 = 0; j0 < c->cols; j0 += c->col_block) {
        fetch_tile_tables(args, c, quant, 4, src, &tt, r, rt, j0);
        __m256i planes[ROW_TILE][4]; /* loop-invariant copies the compiler keeps out of the table */
        for (int i = 0; i < rt; i++)
            for (int q = 0; q < 4; q++) planes[i][q] = tt.tab[i]->planes[q][0];
        for (long long k = j0 / 2; k < (j0 + c->col_block) / 2; k += 32) {
            MCA_BEGIN("planes4");
            __m256i bytes[ROW_TILE];
            for (int i = 0; i < rt; i++) {
                const uint8_t *row = c->codes + (r + i) * len;
                PREFETCH(row + k + AHEAD * len);
                bytes[i] = _mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *)(row + k)), order);
            }
            for (int p = 0; p < 2; p++) {
                for (int i = 0; i < rt; i++) {
                    const __m256i codes = _mm256_and_si256(p ? _mm256_srli_epi16(bytes[i], 4) : bytes[i], low);
                    __m256 w[4];
                    planes4_lookup(planes[i], codes, w);
                    for (int b = 0; b < bt; b++) {
                        const float *x = xs + ((b0 + b) * 2 + p) * len + k;
                        acc[i][b] = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(x), acc[i][b]);
                        acc2[i][b] = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(x + 8), acc2[i][b]);
                        acc[i][b] = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(x + 16), acc[i][b]);
                        acc2[i][b] = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(x + 24), acc2[i][b]);
                    }
                }
            }
            MCA_END();
        }
    }
    for (int i = 0; i < rt; i++)
        for (int b = 0; b < bt; b++) acc[i][b] = _mm256_add_ps(acc[i][b], acc2[i][b]);
    store_tile(c, acc, r, rt, b0, bt);
}

/* two rows per tile: four rows' planes would not stay in registers */
#define PLANES4_WORKER(name, quant, type)                                                        \
    WP_INLINE void name##_tile(const void *args, const wp_mv_common *c, const float *xs, long long r, int rt, \
                               long long b0, int bt) { planes4_tile(args, c, xs, r, rt, b0, bt, quant); } \
    static void name(const void *args, long long r0, long long r1)                               \
    {                                                                                            \
        const wp_mv_common *c = &((const type *)args)->c;                                        \
        WP_RUN_TILES(name##_tile, args, c, c->xs, r0, r1, 2, BATCH_TILE);                        \
    }

PLANES4_WORKER(lut_rows_planes4, 0, wp_lut_mv)
PLANES4_WORKER(quant_rows_planes4, 1, wp_quant_mv)

/* ---- masked rows: expansion under 8 mask bits at a time --------------------------------------- */

/* 8 weights under mask byte m from the last stored values of an array (fewer than 8 readable). */
static __attribute__((noinline)) __m256 expand8_tail(const uint8_t *src, unsigned m, long long avail, int half)
{
    uint32_t tail[8] = {0};
    const int cnt = _mm_popcnt_u32(m) < avail ? _mm_popcnt_u32(m) : (int)avail;
    memcpy(tail, src, (size_t)(cnt * (half ? 2 : 4)));
    return expand8_weights(tail, m, half);
}

/* One row's 8 columns under mask byte m: expand its next stored weights (*w, float32 or binary16
   when half) and multiply them with x.  checked: fewer than 8 of them may be readable (*avail). */
WP_INLINE void expand_row(const uint8_t **w, long long *avail, unsigned m, int half, int checked,
                          const __m256 xv[BATCH_TILE], int bt, __m256 acc[BATCH_TILE])
{
    int cnt = _mm_popcnt_u32(m);
    __m256 wv;
    if (!checked || *avail >= 8) {
        wv = expand8_weights(*w, m, half);
    } else { /* never read past the values */
        wv = expand8_tail(*w, m, *avail, half);
        if (cnt > *avail) cnt = (int)*avail;
    }
    *w += cnt * (half ? 2 : 4);
    *avail -= cnt;
    for (int b = 0; b < bt; b++) acc[b] = _mm256_fmadd_ps(wv, xv[b], acc[b]);
}

/* count groups of 8 columns from column j of the tile's rows (j0: the first column of their row
   segment); aligned: rows start on mask bytes, so a group's bits are one byte. */
WP_INLINE void expand_groups(const wp_mv_common *c, long long r, int rt, int bt, const float *x, long long j,
                             long long count, const uint8_t *w[ROW_TILE], long long avail[ROW_TILE], int half,
                             int aligned, int checked, __m256 acc[ROW_TILE][BATCH_TILE])
{
    const long long mask_bytes = (c->rows * c->cols + 7) / 8;
    const uint8_t *mrow[ROW_TILE];
    for (int i = 0; i < rt; i++) mrow[i] = c->mask + (((r + i) * c->cols + j) >> 3);
    __m256 xv[BATCH_TILE];
    for (long long g = 0; g < count; g++, j += 8) {
        if (aligned && !checked) MCA_BEGIN("expand_aligned");
        for (int q = 0; q < bt; q++) xv[q] = _mm256_loadu_ps(x + q * c->cols + j);
#pragma GCC unroll 4
        for (int i = 0; i < rt; i++) {
            const unsigned m = aligned ? mrow[i][g] : mask_bits8(c->mask, mask_bytes, (r + i) * c->cols + j);
            expand_row(&w[i], &avail[i], m, half, checked, xv, bt, acc[i]);
        }
        if (aligned && !checked) MCA_END();
    }
}

/* Multiply columns [a, b) of the tile's rows: row i's stored weights start at w[i], avail[i] of
   them readable there.  aligned: every row's columns start on a mask byte (cols % 8 == 0). */
WP_INLINE void expand_tile(const wp_mv_common *c, long long r, int rt, long long b0, int bt, long long a, long long b,
                           const uint8_t *w[ROW_TILE], long long avail[ROW_TILE], int half, int aligned,
                           __m256 acc[ROW_TILE][BATCH_TILE])
{
    const float *x = c->x + b0 * c->cols;
    const long long groups = (b - a) / 8, full_end = a + groups * 8;
    long long safe = groups; /* groups at which every row has 8 readable values, whatever its mask */
    for (int i = 0; i < rt; i++) {
        const long long s = avail[i] >= 8 ? (avail[i] - 8) / 8 + 1 : 0;
        if (s < safe) safe = s;
    }
    expand_groups(c, r, rt, bt, x, a, safe, w, avail, half, aligned, 0, acc);
    expand_groups(c, r, rt, bt, x, a + 8 * safe, groups - safe, w, avail, half, aligned, 1, acc);
    if (full_end < b) { /* the last columns of a row not in whole mask bytes */
        const long long mask_bytes = (c->rows * c->cols + 7) / 8;
        const int lanes = (int)(b - full_end);
        __m256 xv[BATCH_TILE];
        for (int q = 0; q < bt; q++) xv[q] = _mm256_maskload_ps(x + q * c->cols + full_end, first_lanes(lanes));
        for (int i = 0; i < rt; i++) {
            const unsigned m = mask_bits8(c->mask, mask_bytes, (r + i) * c->cols + full_end) & ((1u << lanes) - 1);
            expand_row(&w[i], &avail[i], m, half, 1, xv, bt, acc[i]);
        }
    }
}

#define EXPAND_TILE(c, r, rt, b0, bt, a, b, w, avail, half, acc)                                 \
    do {                                                                                         \
        if ((c)->cols % 8) expand_tile(c, r, rt, b0, bt, a, b, w, avail, half, 0, acc);          \
        else expand_tile(c, r, rt, b0, bt, a, b, w, avail, half, 1, acc);                        \
    } while (0)

#define DECODE_INTO(kind, qk, nb, t, c, k, cnt, dst) \
    decode_run(kind, qk, nb, 4, t, (c)->codes, (c)->codes_len, k, cnt, (uint8_t *)(dst))

/* Stored codes of a masked tile: decode SUB columns of each row into a buffer, then expand. */
WP_INLINE void masked_tile(const void *args, const wp_mv_common *c, int quant, int n, long long r, int rt, long long b0,
                           int bt)
{
    const source src = source_of(args, quant, n);
    tile_tables tt;
    __m256 acc[ROW_TILE][BATCH_TILE];
    tile_start(&tt, acc, rt, bt);
    _Alignas(32) float buf[ROW_TILE][SUB + 8];
    long long k[ROW_TILE];
    for (int i = 0; i < rt; i++) k[i] = c->row_start[r + i];
    for (long long a = 0; a < c->cols; a += SUB) {
        const long long b = a + SUB < c->cols ? a + SUB : c->cols;
        long long stored[ROW_TILE] = {0};
        for (long long s0 = a; s0 < b;) { /* table segments of [a, b) */
            const long long s1 = (s0 / c->col_block + 1) * c->col_block < b ? (s0 / c->col_block + 1) * c->col_block : b;
            fetch_tile_tables(args, c, quant, n, src, &tt, r, rt, s0);
            for (int i = 0; i < rt; i++) {
                const long long e = (r + i) * c->cols;
                long long cnt = popcount_bits(c->mask, e + s0, e + s1);
                if (cnt > c->row_start[r + i + 1] - k[i]) cnt = c->row_start[r + i + 1] - k[i]; /* never past the row */
                if (cnt) WITH_SOURCE(quant, n, src, DECODE_INTO, tt.tab[i], c, k[i], cnt, buf[i] + stored[i]);
                k[i] += cnt;
                stored[i] += cnt;
            }
            s0 = s1;
        }
        const uint8_t *w[ROW_TILE];
        long long avail[ROW_TILE];
        for (int i = 0; i < rt; i++) {
            w[i] = (const uint8_t *)buf[i];
            avail[i] = SUB + 8; /* the buffer is readable past the stored weights */
        }
        EXPAND_TILE(c, r, rt, b0, bt, a, b, w, avail, 0, acc);
    }
    store_tile(c, acc, r, rt, b0, bt);
}

WP_INLINE void values_tile(const void *args, const wp_mv_common *c, int half, long long r, int rt, long long b0, int bt)
{
    (void)args;
    __m256 acc[ROW_TILE][BATCH_TILE];
    zero_tile(acc, rt, bt);
    const uint8_t *w[ROW_TILE];
    long long avail[ROW_TILE];
    const int size = half ? 2 : 4;
    for (int i = 0; i < rt; i++) {
        w[i] = c->codes + c->row_start[r + i] * size;
        avail[i] = c->codes_len / size - c->row_start[r + i];
    }
    EXPAND_TILE(c, r, rt, b0, bt, 0, c->cols, w, avail, half, acc);
    store_tile(c, acc, r, rt, b0, bt);
}

/* A row worker over tiles of tile_fn(args, c, flag, n, ...) (flag: quantized source, or binary16 values). */
#define TILE_WORKER(name, tile_fn, flag, n, type)                                                \
    WP_INLINE void name##_tile(const void *args, const wp_mv_common *c, const void *unused, long long r, int rt, \
                               long long b0, int bt) { (void)unused; tile_fn(args, c, flag, n, r, rt, b0, bt); } \
    static void name(const void *args, long long r0, long long r1)                               \
    {                                                                                            \
        const wp_mv_common *c = &((const type *)args)->c;                                        \
        RUN_TILES(name##_tile, args, c, NULL, r0, r1);                                           \
    }
#define VALUES_TILE(args, c, half, n, r, rt, b0, bt) values_tile(args, c, half, r, rt, b0, bt)

TILE_WORKER(dense_lut1, dense_tile, 0, 1, wp_lut_mv)
TILE_WORKER(dense_lut2, dense_tile, 0, 2, wp_lut_mv)
TILE_WORKER(dense_lut3, dense_tile, 0, 3, wp_lut_mv)
TILE_WORKER(dense_lut4, dense_tile, 0, 4, wp_lut_mv)
TILE_WORKER(dense_lut6, dense_tile, 0, 6, wp_lut_mv)
TILE_WORKER(dense_lut8, dense_tile, 0, 8, wp_lut_mv)
TILE_WORKER(dense_quant4, dense_tile, 1, 4, wp_quant_mv)
TILE_WORKER(dense_quant8, dense_tile, 1, 8, wp_quant_mv)
TILE_WORKER(masked_lut1, masked_tile, 0, 1, wp_lut_mv)
TILE_WORKER(masked_lut2, masked_tile, 0, 2, wp_lut_mv)
TILE_WORKER(masked_lut3, masked_tile, 0, 3, wp_lut_mv)
TILE_WORKER(masked_lut4, masked_tile, 0, 4, wp_lut_mv)
TILE_WORKER(masked_lut6, masked_tile, 0, 6, wp_lut_mv)
TILE_WORKER(masked_lut8, masked_tile, 0, 8, wp_lut_mv)
TILE_WORKER(masked_quant4, masked_tile, 1, 4, wp_quant_mv)
TILE_WORKER(masked_quant8, masked_tile, 1, 8, wp_quant_mv)
TILE_WORKER(values_half, VALUES_TILE, 1, 16, wp_sparse_mv)
TILE_WORKER(values_float, VALUES_TILE, 0, 32, wp_sparse_mv)

/* ---- selection -------------------------------------------------------------------------------- */

/* Dense codes whose tables each cover whole 8-byte steps of every row. */
static int small_codes_fit(const wp_mv_common *c)
{
    const int per = 8 / c->nbits;
    return !c->mask && c->col_block % (8 * per) == 0 && c->cols % c->col_block == 0;
}

wp_rows_plan wp_lut_rows_avx2(const wp_lut_mv *a)
{
    const wp_mv_common *c = &a->c;
    if (c->nbits == 4 && !c->mask && c->col_block % 64 == 0) return WP_ROWS_SPLIT(lut_rows_planes4, 2);
    if ((c->nbits == 1 || c->nbits == 2 || c->nbits == 4) && small_codes_fit(c))
        return WP_ROWS_SPLIT(c->nbits == 4 ? lut_rows_4bit : c->nbits == 2 ? lut_rows_2bit : lut_rows_1bit, 8 / c->nbits);
    if (c->cols % c->col_block) return WP_NO_ROWS; /* tables cover whole rows (matrix plans always do) */
    static const wp_rows_fn dense[9] = {NULL, dense_lut1, dense_lut2, dense_lut3, dense_lut4, NULL, dense_lut6, NULL, dense_lut8};
    static const wp_rows_fn masked[9] = {NULL, masked_lut1, masked_lut2, masked_lut3, masked_lut4, NULL, masked_lut6, NULL,
                                         masked_lut8};
    return WP_ROWS((c->mask ? masked : dense)[c->nbits]);
}

wp_rows_plan wp_quant_rows_avx2(const wp_quant_mv *a)
{
    const wp_mv_common *c = &a->c;
    if (c->nbits == 4 && !c->mask && c->col_block % 64 == 0 && c->col_block >= 128) return WP_ROWS_SPLIT(quant_rows_planes4, 2);
    const int flags = a->is_signed * 4 + (a->offset != NULL) * 2 + a->half_math;
    if (c->nbits == 4 && small_codes_fit(c)) /* short blocks: no table per block */
        return c->col_block < 64 ? WP_ROWS_SPLIT(ARITH_ROWS[0][flags], 2) : WP_ROWS_SPLIT(quant_rows_4bit, 2);
    if (c->cols % c->col_block) return WP_NO_ROWS;
    if (!c->mask && c->nbits == 8 && c->col_block % 8 == 0) return WP_ROWS(ARITH_ROWS[1][flags]);
    if (c->mask) return WP_ROWS(c->nbits == 4 ? masked_quant4 : masked_quant8);
    return WP_ROWS(c->nbits == 4 ? dense_quant4 : dense_quant8);
}

wp_rows_plan wp_sparse_rows_avx2(const wp_sparse_mv *a)
{
    return WP_ROWS(a->value_half ? values_half : values_float);
}

WP_TARGET_POP()
#endif
