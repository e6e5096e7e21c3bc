/*
 * AVX2 + FMA + F16C row workers for the fused products (CPU level 1).
 *
 * Dense codes of 1, 2 and 4 bits (LUTs, and 4-bit quantized weights through a 16-entry table of
 * Core ML's decoded values) use the phase-split activations of the AVX-512 path: 8 packed bytes
 * widen to 8 lanes, phase p shifts its code into the low bits, and a 16-entry float table is two
 * 8-entry vpermps lookups blended on index bit 3.  Dense 8-bit quantized codes are decoded
 * arithmetically.  Sparse rows with
 * float values expand 8 columns at a time through a table of lane permutations per mask byte.
 * Other layouts (sparse LUT / quantized codes, 3/6/8-bit LUTs) run the portable scalar worker.
 */
#include "wp_target.h"
#if WP_X86
WP_TARGET_PUSH("avx2,fma,f16c,bmi2,popcnt")
#include <immintrin.h>
#include <stdlib.h>

#include "matvec.h"

#define ROW_TILE 4
#define BATCH_TILE 2
#define RNE (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

typedef struct { __m256 lo, hi; } table16;

WP_INLINE __m256 round_half(__m256 v) { return _mm256_cvtph_ps(_mm256_cvtps_ph(v, RNE)); }

WP_INLINE float scalar_at(const void *values, long long t, int half)
{
    return half ? _cvtsh_ss(((const uint16_t *)values)[t]) : ((const float *)values)[t];
}

/* Core ML's shift-scale on 8 code values with table t's scale and offset. */
WP_INLINE __m256 shift_scale8(const wp_quant_mv *a, __m256 q, long long t)
{
    const __m256 s = _mm256_set1_ps(scalar_at(a->scale, t, a->half_math));
    if (a->offset) {
        q = _mm256_sub_ps(q, _mm256_set1_ps(scalar_at(a->offset, t, a->half_math)));
        if (a->half_math) q = round_half(q);
    }
    const __m256 w = _mm256_mul_ps(s, q);
    return a->half_math ? round_half(w) : w;
}

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
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), eight = _mm256_set1_epi32(8);
    __m256i codes[2] = {iota, _mm256_add_epi32(iota, eight)};
    table16 out;
    for (int h = 0; h < 2; h++) {
        if (a->is_signed) codes[h] = _mm256_sub_epi32(_mm256_xor_si256(codes[h], eight), eight);
        const __m256 w = shift_scale8(a, _mm256_cvtepi32_ps(codes[h]), t);
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

WP_INLINE float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#define RUN_TILES(F, args, c, extra, r0, r1) WP_RUN_TILES(F, args, c, extra, r0, r1, ROW_TILE, BATCH_TILE)

WP_INLINE void small_tile(const void *args, const wp_mv_common *c, const float *xs, long long r, int rt,
                          long long b0, int bt, int n, enum table_kind kind)
{
    const int per = 8 / n;
    const long long len = c->cols / per;
    __m256 acc[ROW_TILE][BATCH_TILE];
    for (int i = 0; i < rt; i++)
        for (int b = 0; b < bt; b++) acc[i][b] = _mm256_setzero_ps();
    for (long long j0 = 0; j0 < c->cols; j0 += c->col_block) {
        table16 table[ROW_TILE];
        for (int i = 0; i < rt; i++) table[i] = load_table(args, kind, c->row_table[r + i] + j0 / c->col_block, n);
        const long long k_end = (j0 + c->col_block) / per;
        for (long long k = j0 / per; k < k_end; k += 8) {
            __m256i codes[ROW_TILE];
            for (int i = 0; i < rt; i++)
                codes[i] = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(c->codes + (r + i) * len + k)));
            for (int p = 0; p < per; p++) {
                __m256 xv[BATCH_TILE];
                for (int b = 0; b < bt; b++) xv[b] = _mm256_loadu_ps(xs + ((b0 + b) * per + p) * len + k);
                for (int i = 0; i < rt; i++) {
                    const __m256i idx = p ? _mm256_srli_epi32(codes[i], p * n) : codes[i];
                    const __m256 w = lookup16(table[i], idx, n);
                    for (int b = 0; b < bt; b++) acc[i][b] = _mm256_fmadd_ps(w, xv[b], acc[i][b]);
                }
            }
        }
    }
    for (int i = 0; i < rt; i++)
        for (int b = 0; b < bt; b++) c->y[(b0 + b) * c->rows + r + i] = hsum(acc[i][b]);
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

WP_INLINE void int8_tile(const void *args, const wp_mv_common *c, const void *unused, long long r, int rt,
                         long long b0, int bt)
{
    (void)unused;
    const wp_quant_mv *a = args;
    __m256 acc[ROW_TILE][BATCH_TILE];
    for (int i = 0; i < rt; i++)
        for (int b = 0; b < bt; b++) acc[i][b] = _mm256_setzero_ps();
    for (long long j0 = 0; j0 < c->cols; j0 += c->col_block) {
        for (long long j = j0; j < j0 + c->col_block; j += 8) {
            __m256 xv[BATCH_TILE];
            for (int b = 0; b < bt; b++) xv[b] = _mm256_loadu_ps(c->x + (b0 + b) * c->cols + j);
            for (int i = 0; i < rt; i++) {
                const __m128i bytes = _mm_loadl_epi64((const __m128i *)(c->codes + (r + i) * c->cols + j));
                const __m256i q = a->is_signed ? _mm256_cvtepi8_epi32(bytes) : _mm256_cvtepu8_epi32(bytes);
                const __m256 w = shift_scale8(a, _mm256_cvtepi32_ps(q), c->row_table[r + i] + j0 / c->col_block);
                for (int b = 0; b < bt; b++) acc[i][b] = _mm256_fmadd_ps(w, xv[b], acc[i][b]);
            }
        }
    }
    for (int i = 0; i < rt; i++)
        for (int b = 0; b < bt; b++) c->y[(b0 + b) * c->rows + r + i] = hsum(acc[i][b]);
}

static void quant_rows_8bit(const void *args, long long r0, long long r1)
{
    const wp_mv_common *c = &((const wp_quant_mv *)args)->c;
    RUN_TILES(int8_tile, args, c, NULL, r0, r1);
}

/* Dense codes whose tables each cover whole 8-byte steps of every row. */
static int small_codes_fit(const wp_mv_common *c)
{
    const int per = 8 / c->nbits;
    return !c->mask && c->col_block % (8 * per) == 0 && c->cols % c->col_block == 0;
}

wp_rows_plan wp_lut_rows_avx2(const wp_lut_mv *a)
{
    const wp_mv_common *c = &a->c;
    if (!(c->nbits == 1 || c->nbits == 2 || c->nbits == 4) || !small_codes_fit(c)) return WP_NO_ROWS;
    return WP_ROWS_SPLIT(c->nbits == 4 ? lut_rows_4bit : c->nbits == 2 ? lut_rows_2bit : lut_rows_1bit, 8 / c->nbits);
}

wp_rows_plan wp_quant_rows_avx2(const wp_quant_mv *a)
{
    const wp_mv_common *c = &a->c;
    if (c->mask) return WP_NO_ROWS;
    if (c->nbits == 4) return small_codes_fit(c) ? WP_ROWS_SPLIT(quant_rows_4bit, 2) : WP_NO_ROWS;
    return (c->col_block % 8 == 0 && c->cols % c->col_block == 0) ? WP_ROWS(quant_rows_8bit) : WP_NO_ROWS;
}

/* ---- sparse rows: 8 columns at a time ------------------------------------------------------ */

/* EXPAND8[m][i]: for mask byte m, the position among m's set bits of lane i (lanes with clear bits
   read lane 0 and are zeroed afterwards). */
static const int32_t EXPAND8[256][8] = {
    {0, 0, 0, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 0, 0, 0}, {0, 1, 0, 0, 0, 0, 0, 0},
    {0, 0, 0, 0, 0, 0, 0, 0}, {0, 0, 1, 0, 0, 0, 0, 0}, {0, 0, 1, 0, 0, 0, 0, 0}, {0, 1, 2, 0, 0, 0, 0, 0},
    {0, 0, 0, 0, 0, 0, 0, 0}, {0, 0, 0, 1, 0, 0, 0, 0}, {0, 0, 0, 1, 0, 0, 0, 0}, {0, 1, 0, 2, 0, 0, 0, 0},
    {0, 0, 0, 1, 0, 0, 0, 0}, {0, 0, 1, 2, 0, 0, 0, 0}, {0, 0, 1, 2, 0, 0, 0, 0}, {0, 1, 2, 3, 0, 0, 0, 0},
    {0, 0, 0, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 1, 0, 0, 0}, {0, 0, 0, 0, 1, 0, 0, 0}, {0, 1, 0, 0, 2, 0, 0, 0},
    {0, 0, 0, 0, 1, 0, 0, 0}, {0, 0, 1, 0, 2, 0, 0, 0}, {0, 0, 1, 0, 2, 0, 0, 0}, {0, 1, 2, 0, 3, 0, 0, 0},
    {0, 0, 0, 0, 1, 0, 0, 0}, {0, 0, 0, 1, 2, 0, 0, 0}, {0, 0, 0, 1, 2, 0, 0, 0}, {0, 1, 0, 2, 3, 0, 0, 0},
    {0, 0, 0, 1, 2, 0, 0, 0}, {0, 0, 1, 2, 3, 0, 0, 0}, {0, 0, 1, 2, 3, 0, 0, 0}, {0, 1, 2, 3, 4, 0, 0, 0},
    {0, 0, 0, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 1, 0, 0}, {0, 0, 0, 0, 0, 1, 0, 0}, {0, 1, 0, 0, 0, 2, 0, 0},
    {0, 0, 0, 0, 0, 1, 0, 0}, {0, 0, 1, 0, 0, 2, 0, 0}, {0, 0, 1, 0, 0, 2, 0, 0}, {0, 1, 2, 0, 0, 3, 0, 0},
    {0, 0, 0, 0, 0, 1, 0, 0}, {0, 0, 0, 1, 0, 2, 0, 0}, {0, 0, 0, 1, 0, 2, 0, 0}, {0, 1, 0, 2, 0, 3, 0, 0},
    {0, 0, 0, 1, 0, 2, 0, 0}, {0, 0, 1, 2, 0, 3, 0, 0}, {0, 0, 1, 2, 0, 3, 0, 0}, {0, 1, 2, 3, 0, 4, 0, 0},
    {0, 0, 0, 0, 0, 1, 0, 0}, {0, 0, 0, 0, 1, 2, 0, 0}, {0, 0, 0, 0, 1, 2, 0, 0}, {0, 1, 0, 0, 2, 3, 0, 0},
    {0, 0, 0, 0, 1, 2, 0, 0}, {0, 0, 1, 0, 2, 3, 0, 0}, {0, 0, 1, 0, 2, 3, 0, 0}, {0, 1, 2, 0, 3, 4, 0, 0},
    {0, 0, 0, 0, 1, 2, 0, 0}, {0, 0, 0, 1, 2, 3, 0, 0}, {0, 0, 0, 1, 2, 3, 0, 0}, {0, 1, 0, 2, 3, 4, 0, 0},
    {0, 0, 0, 1, 2, 3, 0, 0}, {0, 0, 1, 2, 3, 4, 0, 0}, {0, 0, 1, 2, 3, 4, 0, 0}, {0, 1, 2, 3, 4, 5, 0, 0},
    {0, 0, 0, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 0, 1, 0}, {0, 0, 0, 0, 0, 0, 1, 0}, {0, 1, 0, 0, 0, 0, 2, 0},
    {0, 0, 0, 0, 0, 0, 1, 0}, {0, 0, 1, 0, 0, 0, 2, 0}, {0, 0, 1, 0, 0, 0, 2, 0}, {0, 1, 2, 0, 0, 0, 3, 0},
    {0, 0, 0, 0, 0, 0, 1, 0}, {0, 0, 0, 1, 0, 0, 2, 0}, {0, 0, 0, 1, 0, 0, 2, 0}, {0, 1, 0, 2, 0, 0, 3, 0},
    {0, 0, 0, 1, 0, 0, 2, 0}, {0, 0, 1, 2, 0, 0, 3, 0}, {0, 0, 1, 2, 0, 0, 3, 0}, {0, 1, 2, 3, 0, 0, 4, 0},
    {0, 0, 0, 0, 0, 0, 1, 0}, {0, 0, 0, 0, 1, 0, 2, 0}, {0, 0, 0, 0, 1, 0, 2, 0}, {0, 1, 0, 0, 2, 0, 3, 0},
    {0, 0, 0, 0, 1, 0, 2, 0}, {0, 0, 1, 0, 2, 0, 3, 0}, {0, 0, 1, 0, 2, 0, 3, 0}, {0, 1, 2, 0, 3, 0, 4, 0},
    {0, 0, 0, 0, 1, 0, 2, 0}, {0, 0, 0, 1, 2, 0, 3, 0}, {0, 0, 0, 1, 2, 0, 3, 0}, {0, 1, 0, 2, 3, 0, 4, 0},
    {0, 0, 0, 1, 2, 0, 3, 0}, {0, 0, 1, 2, 3, 0, 4, 0}, {0, 0, 1, 2, 3, 0, 4, 0}, {0, 1, 2, 3, 4, 0, 5, 0},
    {0, 0, 0, 0, 0, 0, 1, 0}, {0, 0, 0, 0, 0, 1, 2, 0}, {0, 0, 0, 0, 0, 1, 2, 0}, {0, 1, 0, 0, 0, 2, 3, 0},
    {0, 0, 0, 0, 0, 1, 2, 0}, {0, 0, 1, 0, 0, 2, 3, 0}, {0, 0, 1, 0, 0, 2, 3, 0}, {0, 1, 2, 0, 0, 3, 4, 0},
    {0, 0, 0, 0, 0, 1, 2, 0}, {0, 0, 0, 1, 0, 2, 3, 0}, {0, 0, 0, 1, 0, 2, 3, 0}, {0, 1, 0, 2, 0, 3, 4, 0},
    {0, 0, 0, 1, 0, 2, 3, 0}, {0, 0, 1, 2, 0, 3, 4, 0}, {0, 0, 1, 2, 0, 3, 4, 0}, {0, 1, 2, 3, 0, 4, 5, 0},
    {0, 0, 0, 0, 0, 1, 2, 0}, {0, 0, 0, 0, 1, 2, 3, 0}, {0, 0, 0, 0, 1, 2, 3, 0}, {0, 1, 0, 0, 2, 3, 4, 0},
    {0, 0, 0, 0, 1, 2, 3, 0}, {0, 0, 1, 0, 2, 3, 4, 0}, {0, 0, 1, 0, 2, 3, 4, 0}, {0, 1, 2, 0, 3, 4, 5, 0},
    {0, 0, 0, 0, 1, 2, 3, 0}, {0, 0, 0, 1, 2, 3, 4, 0}, {0, 0, 0, 1, 2, 3, 4, 0}, {0, 1, 0, 2, 3, 4, 5, 0},
    {0, 0, 0, 1, 2, 3, 4, 0}, {0, 0, 1, 2, 3, 4, 5, 0}, {0, 0, 1, 2, 3, 4, 5, 0}, {0, 1, 2, 3, 4, 5, 6, 0},
    {0, 0, 0, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 0, 0, 1}, {0, 0, 0, 0, 0, 0, 0, 1}, {0, 1, 0, 0, 0, 0, 0, 2},
    {0, 0, 0, 0, 0, 0, 0, 1}, {0, 0, 1, 0, 0, 0, 0, 2}, {0, 0, 1, 0, 0, 0, 0, 2}, {0, 1, 2, 0, 0, 0, 0, 3},
    {0, 0, 0, 0, 0, 0, 0, 1}, {0, 0, 0, 1, 0, 0, 0, 2}, {0, 0, 0, 1, 0, 0, 0, 2}, {0, 1, 0, 2, 0, 0, 0, 3},
    {0, 0, 0, 1, 0, 0, 0, 2}, {0, 0, 1, 2, 0, 0, 0, 3}, {0, 0, 1, 2, 0, 0, 0, 3}, {0, 1, 2, 3, 0, 0, 0, 4},
    {0, 0, 0, 0, 0, 0, 0, 1}, {0, 0, 0, 0, 1, 0, 0, 2}, {0, 0, 0, 0, 1, 0, 0, 2}, {0, 1, 0, 0, 2, 0, 0, 3},
    {0, 0, 0, 0, 1, 0, 0, 2}, {0, 0, 1, 0, 2, 0, 0, 3}, {0, 0, 1, 0, 2, 0, 0, 3}, {0, 1, 2, 0, 3, 0, 0, 4},
    {0, 0, 0, 0, 1, 0, 0, 2}, {0, 0, 0, 1, 2, 0, 0, 3}, {0, 0, 0, 1, 2, 0, 0, 3}, {0, 1, 0, 2, 3, 0, 0, 4},
    {0, 0, 0, 1, 2, 0, 0, 3}, {0, 0, 1, 2, 3, 0, 0, 4}, {0, 0, 1, 2, 3, 0, 0, 4}, {0, 1, 2, 3, 4, 0, 0, 5},
    {0, 0, 0, 0, 0, 0, 0, 1}, {0, 0, 0, 0, 0, 1, 0, 2}, {0, 0, 0, 0, 0, 1, 0, 2}, {0, 1, 0, 0, 0, 2, 0, 3},
    {0, 0, 0, 0, 0, 1, 0, 2}, {0, 0, 1, 0, 0, 2, 0, 3}, {0, 0, 1, 0, 0, 2, 0, 3}, {0, 1, 2, 0, 0, 3, 0, 4},
    {0, 0, 0, 0, 0, 1, 0, 2}, {0, 0, 0, 1, 0, 2, 0, 3}, {0, 0, 0, 1, 0, 2, 0, 3}, {0, 1, 0, 2, 0, 3, 0, 4},
    {0, 0, 0, 1, 0, 2, 0, 3}, {0, 0, 1, 2, 0, 3, 0, 4}, {0, 0, 1, 2, 0, 3, 0, 4}, {0, 1, 2, 3, 0, 4, 0, 5},
    {0, 0, 0, 0, 0, 1, 0, 2}, {0, 0, 0, 0, 1, 2, 0, 3}, {0, 0, 0, 0, 1, 2, 0, 3}, {0, 1, 0, 0, 2, 3, 0, 4},
    {0, 0, 0, 0, 1, 2, 0, 3}, {0, 0, 1, 0, 2, 3, 0, 4}, {0, 0, 1, 0, 2, 3, 0, 4}, {0, 1, 2, 0, 3, 4, 0, 5},
    {0, 0, 0, 0, 1, 2, 0, 3}, {0, 0, 0, 1, 2, 3, 0, 4}, {0, 0, 0, 1, 2, 3, 0, 4}, {0, 1, 0, 2, 3, 4, 0, 5},
    {0, 0, 0, 1, 2, 3, 0, 4}, {0, 0, 1, 2, 3, 4, 0, 5}, {0, 0, 1, 2, 3, 4, 0, 5}, {0, 1, 2, 3, 4, 5, 0, 6},
    {0, 0, 0, 0, 0, 0, 0, 1}, {0, 0, 0, 0, 0, 0, 1, 2}, {0, 0, 0, 0, 0, 0, 1, 2}, {0, 1, 0, 0, 0, 0, 2, 3},
    {0, 0, 0, 0, 0, 0, 1, 2}, {0, 0, 1, 0, 0, 0, 2, 3}, {0, 0, 1, 0, 0, 0, 2, 3}, {0, 1, 2, 0, 0, 0, 3, 4},
    {0, 0, 0, 0, 0, 0, 1, 2}, {0, 0, 0, 1, 0, 0, 2, 3}, {0, 0, 0, 1, 0, 0, 2, 3}, {0, 1, 0, 2, 0, 0, 3, 4},
    {0, 0, 0, 1, 0, 0, 2, 3}, {0, 0, 1, 2, 0, 0, 3, 4}, {0, 0, 1, 2, 0, 0, 3, 4}, {0, 1, 2, 3, 0, 0, 4, 5},
    {0, 0, 0, 0, 0, 0, 1, 2}, {0, 0, 0, 0, 1, 0, 2, 3}, {0, 0, 0, 0, 1, 0, 2, 3}, {0, 1, 0, 0, 2, 0, 3, 4},
    {0, 0, 0, 0, 1, 0, 2, 3}, {0, 0, 1, 0, 2, 0, 3, 4}, {0, 0, 1, 0, 2, 0, 3, 4}, {0, 1, 2, 0, 3, 0, 4, 5},
    {0, 0, 0, 0, 1, 0, 2, 3}, {0, 0, 0, 1, 2, 0, 3, 4}, {0, 0, 0, 1, 2, 0, 3, 4}, {0, 1, 0, 2, 3, 0, 4, 5},
    {0, 0, 0, 1, 2, 0, 3, 4}, {0, 0, 1, 2, 3, 0, 4, 5}, {0, 0, 1, 2, 3, 0, 4, 5}, {0, 1, 2, 3, 4, 0, 5, 6},
    {0, 0, 0, 0, 0, 0, 1, 2}, {0, 0, 0, 0, 0, 1, 2, 3}, {0, 0, 0, 0, 0, 1, 2, 3}, {0, 1, 0, 0, 0, 2, 3, 4},
    {0, 0, 0, 0, 0, 1, 2, 3}, {0, 0, 1, 0, 0, 2, 3, 4}, {0, 0, 1, 0, 0, 2, 3, 4}, {0, 1, 2, 0, 0, 3, 4, 5},
    {0, 0, 0, 0, 0, 1, 2, 3}, {0, 0, 0, 1, 0, 2, 3, 4}, {0, 0, 0, 1, 0, 2, 3, 4}, {0, 1, 0, 2, 0, 3, 4, 5},
    {0, 0, 0, 1, 0, 2, 3, 4}, {0, 0, 1, 2, 0, 3, 4, 5}, {0, 0, 1, 2, 0, 3, 4, 5}, {0, 1, 2, 3, 0, 4, 5, 6},
    {0, 0, 0, 0, 0, 1, 2, 3}, {0, 0, 0, 0, 1, 2, 3, 4}, {0, 0, 0, 0, 1, 2, 3, 4}, {0, 1, 0, 0, 2, 3, 4, 5},
    {0, 0, 0, 0, 1, 2, 3, 4}, {0, 0, 1, 0, 2, 3, 4, 5}, {0, 0, 1, 0, 2, 3, 4, 5}, {0, 1, 2, 0, 3, 4, 5, 6},
    {0, 0, 0, 0, 1, 2, 3, 4}, {0, 0, 0, 1, 2, 3, 4, 5}, {0, 0, 0, 1, 2, 3, 4, 5}, {0, 1, 0, 2, 3, 4, 5, 6},
    {0, 0, 0, 1, 2, 3, 4, 5}, {0, 0, 1, 2, 3, 4, 5, 6}, {0, 0, 1, 2, 3, 4, 5, 6}, {0, 1, 2, 3, 4, 5, 6, 7}};

WP_INLINE void sparse_tile(const void *args, const wp_mv_common *c, const void *unused, long long r, int rt,
                           long long b0, int bt)
{
    (void)unused;
    const int half = ((const wp_sparse_mv *)args)->value_half;
    __m256 acc[ROW_TILE][BATCH_TILE];
    long long k[ROW_TILE], k_end[ROW_TILE];
    for (int i = 0; i < rt; i++) {
        for (int b = 0; b < bt; b++) acc[i][b] = _mm256_setzero_ps();
        k[i] = c->row_start[r + i];
        k_end[i] = c->row_start[r + i + 1];
    }
    for (long long j = 0; j < c->cols; j += 8) {
        __m256 xv[BATCH_TILE];
        for (int b = 0; b < bt; b++) xv[b] = _mm256_loadu_ps(c->x + (b0 + b) * c->cols + j);
        for (int i = 0; i < rt; i++) {
            const unsigned m = c->mask[((r + i) * c->cols + j) / 8];
            int cnt = _mm_popcnt_u32(m);
            if (k[i] + cnt > k_end[i]) cnt = (int)(k_end[i] - k[i]); /* never read past the row */
            /* 8 values from k: a plain load while 8 of them lie in the buffer (lanes past cnt are
               never selected), else only the cnt that exist */
            __m256 packed;
            const long long value_bytes = half ? 2 : 4;
            if ((k[i] + 8) * value_bytes <= c->codes_len) {
                packed = half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)c->codes + k[i])))
                              : _mm256_loadu_ps((const float *)c->codes + k[i]);
            } else {
                uint32_t tail[8] = {0};
                memcpy(tail, c->codes + k[i] * value_bytes, (size_t)(cnt * value_bytes));
                packed = half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)tail)) : _mm256_loadu_ps((const float *)tail);
            }
            k[i] += cnt;
            const __m256i lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
            const __m256i lanes = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)m), lane_bits), lane_bits);
            const __m256 w = _mm256_and_ps(_mm256_permutevar8x32_ps(packed, _mm256_loadu_si256((const __m256i *)EXPAND8[m])),
                                           _mm256_castsi256_ps(lanes));
            for (int b = 0; b < bt; b++) acc[i][b] = _mm256_fmadd_ps(w, xv[b], acc[i][b]);
        }
    }
    for (int i = 0; i < rt; i++)
        for (int b = 0; b < bt; b++) c->y[(b0 + b) * c->rows + r + i] = hsum(acc[i][b]);
}

static void sparse_rows(const void *args, long long r0, long long r1)
{
    const wp_mv_common *c = &((const wp_sparse_mv *)args)->c;
    RUN_TILES(sparse_tile, args, c, NULL, r0, r1);
}

wp_rows_plan wp_sparse_rows_avx2(const wp_sparse_mv *a)
{
    return a->c.cols % 8 == 0 ? WP_ROWS(sparse_rows) : WP_NO_ROWS; /* rows start on whole mask bytes */
}

WP_TARGET_POP()
#endif
