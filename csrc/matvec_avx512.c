/*
 * AVX-512 row workers for the fused products (CPU level 2).
 *
 * Dense codes of 1, 2 and 4 bits: a byte holds 8/n consecutive codes, lowest first.  Rather than
 * unpacking codes into column order, x is split once into n-phase streams (x_p[k] = x[k*8/n + p])
 * and every phase of 16 loaded bytes meets its own stream: one shift, one mask and one in-register
 * table lookup (vpermps: a table of <= 16 floats lives in a register) per 16 weights.  4-bit
 * quantized weights use the same path with a 16-entry table of Core ML's decoded values built per
 * block of scale.  8-bit quantized weights are decoded arithmetically.  Sparse rows expand 16
 * values at a time under their mask bits (vexpandps).  Four rows share each load of x.
 */
#include "wp_target.h"
#if WP_X86
WP_TARGET_PUSH(WP_AVX512_FEATURES)
#include <immintrin.h>
#include <stdlib.h>

#include "matvec.h"
#include "avx512_common.h"

#define ROW_TILE 4
#define BATCH_TILE 4


enum table_kind { LUT_TABLE, QUANT_TABLE };


/* Core ML's shift-scale applied to 16 code values at once (table t). */
WP_INLINE __m512 shift_scale16(const wp_quant_mv *a, __m512 q, long long t)
{
    if (a->half_math) {
        const __m512 s = _mm512_set1_ps(_cvtsh_ss(((const uint16_t *)a->scale)[t]));
        if (a->offset) q = round_half(_mm512_sub_ps(q, _mm512_set1_ps(_cvtsh_ss(((const uint16_t *)a->offset)[t]))));
        return round_half(_mm512_mul_ps(s, q));
    }
    const __m512 s = _mm512_set1_ps(((const float *)a->scale)[t]);
    if (a->offset) q = _mm512_sub_ps(q, _mm512_set1_ps(((const float *)a->offset)[t]));
    return _mm512_mul_ps(s, q);
}

/* The register table of decoded values for table t: a LUT, or Core ML's values of the 16 codes.
   Tables of fewer than 16 entries are repeated to fill the register, so an index needs no masking:
   vpermps reads only the low 4 bits of each lane, and code p of a byte shifted down by p*n bits
   sits in the low n of them. */
WP_INLINE __m512 load_table(const void *args, enum table_kind kind, long long t, int n)
{
    const int entries = 1 << n;
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    if (kind == LUT_TABLE) {
        const __m512 table = _mm512_maskz_loadu_ps((__mmask16)((1u << entries) - 1), ((const wp_lut_mv *)args)->lut + t * entries);
        return entries == 16 ? table : _mm512_permutexvar_ps(_mm512_and_si512(iota, _mm512_set1_epi32(entries - 1)), table);
    }
    const wp_quant_mv *a = args;
    __m512i codes = iota;
    if (a->is_signed) /* two's complement in n bits */
        codes = _mm512_sub_epi32(_mm512_xor_si512(codes, _mm512_set1_epi32(1 << (n - 1))), _mm512_set1_epi32(1 << (n - 1)));
    return shift_scale16(a, _mm512_cvtepi32_ps(codes), t);
}

WP_INLINE void store_tile(const wp_mv_common *c, __m512 acc[ROW_TILE][BATCH_TILE], long long r, int rt, long long b0, int bt)
{
    for (int i = 0; i < rt; i++)
        for (int b = 0; b < bt; b++) c->y[(b0 + b) * c->rows + r + i] = _mm512_reduce_add_ps(acc[i][b]);
}

#define RUN_TILES(F, args, c, extra, r0, r1) WP_RUN_TILES(F, args, c, extra, r0, r1, ROW_TILE, BATCH_TILE)

/* ---- dense codes of n <= 4 bits, register tables -------------------------------------------- */

WP_INLINE void small_tile(const void *args, const wp_mv_common *c, const float *xs, long long r, int rt,
                          long long b0, int bt, int n, enum table_kind kind)
{
    const int per = 8 / n;
    const long long len = c->cols / per;
    __m512 acc[ROW_TILE][BATCH_TILE];
    for (int i = 0; i < rt; i++)
        for (int b = 0; b < bt; b++) acc[i][b] = _mm512_setzero_ps();
    for (long long j0 = 0; j0 < c->cols; j0 += c->col_block) {
        __m512 table[ROW_TILE];
        for (int i = 0; i < rt; i++) table[i] = load_table(args, kind, c->row_table[r + i] + j0 / c->col_block, n);
        const long long k_end = (j0 + c->col_block) / per;
        for (long long k = j0 / per; k < k_end; k += 16) {
            MCA_BEGIN("small");
            __m512i codes[ROW_TILE];
            for (int i = 0; i < rt; i++) {
                if (!(k & 63)) __builtin_prefetch(c->codes + (r + i + rt) * len + k); /* the next tile's rows */
                codes[i] = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(c->codes + (r + i) * len + k)));
            }
            for (int p = 0; p < per; p++) {
                __m512 xv[BATCH_TILE];
                for (int b = 0; b < bt; b++) xv[b] = _mm512_loadu_ps(xs + ((b0 + b) * per + p) * len + k);
                for (int i = 0; i < rt; i++) {
                    const __m512i idx = p ? _mm512_srli_epi32(codes[i], (unsigned)(p * n)) : codes[i];
                    const __m512 w = _mm512_permutexvar_ps(idx, table[i]);
                    for (int b = 0; b < bt; b++) acc[i][b] = _mm512_fmadd_ps(w, xv[b], acc[i][b]);
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

static int small_codes_fit(const wp_mv_common *c)
{
    const int per = 8 / c->nbits;
    return !c->mask && c->col_block % (16 * per) == 0 && c->cols % c->col_block == 0;
}

/* ---- dense 8-bit codes: four rows share each load of x ------------------------------------- */

WP_INLINE void int8_tile(const void *args, const wp_mv_common *c, const void *unused, long long r, int rt,
                         long long b0, int bt)
{
    (void)unused;
    const wp_quant_mv *a = args;
    __m512 acc[ROW_TILE][BATCH_TILE];
    for (int i = 0; i < rt; i++)
        for (int b = 0; b < bt; b++) acc[i][b] = _mm512_setzero_ps();
    for (long long j0 = 0; j0 < c->cols; j0 += c->col_block) {
        __m512 scale[ROW_TILE], offset[ROW_TILE];
        for (int i = 0; i < rt; i++) {
            const long long t = c->row_table[r + i] + j0 / c->col_block;
            scale[i] = _mm512_set1_ps(a->half_math ? _cvtsh_ss(((const uint16_t *)a->scale)[t]) : ((const float *)a->scale)[t]);
            offset[i] = !a->offset ? _mm512_setzero_ps()
                        : _mm512_set1_ps(a->half_math ? _cvtsh_ss(((const uint16_t *)a->offset)[t]) : ((const float *)a->offset)[t]);
        }
        for (long long j = j0; j < j0 + c->col_block; j += 16) {
            MCA_BEGIN("int8");
            __m512 xv[BATCH_TILE];
            for (int b = 0; b < bt; b++) xv[b] = _mm512_loadu_ps(c->x + (b0 + b) * c->cols + j);
            for (int i = 0; i < rt; i++) {
                const uint8_t *codes = c->codes + (r + i) * c->cols + j;
                if (!(j & 63)) __builtin_prefetch(codes + rt * c->cols); /* the next tile's rows */
                const __m128i bytes = _mm_loadu_si128((const __m128i *)codes);
                __m512 v = _mm512_cvtepi32_ps(a->is_signed ? _mm512_cvtepi8_epi32(bytes) : _mm512_cvtepu8_epi32(bytes));
                if (a->offset) {
                    v = _mm512_sub_ps(v, offset[i]);
                    if (a->half_math) v = round_half(v);
                }
                v = _mm512_mul_ps(scale[i], v);
                if (a->half_math) v = round_half(v);
                for (int b = 0; b < bt; b++) acc[i][b] = _mm512_fmadd_ps(v, xv[b], acc[i][b]);
            }
            MCA_END();
        }
    }
    store_tile(c, acc, r, rt, b0, bt);
}

static void int8_rows(const void *args, long long r0, long long r1)
{
    const wp_mv_common *c = &((const wp_quant_mv *)args)->c;
    RUN_TILES(int8_tile, args, c, NULL, r0, r1);
}

/* ---- any codes, dense or under a mask, 16 columns at a time --------------------------------- */

enum source { SRC_HALF, SRC_FLOAT, SRC_LUT, SRC_QUANT, SRC_QUANT_TABLE };

static const uint64_t spread_mask[9] = {0, 0x0101010101010101ULL, 0x0303030303030303ULL, 0x0707070707070707ULL,
                                        0x0f0f0f0f0f0f0f0fULL, 0, 0x3f3f3f3f3f3f3f3fULL, 0, 0};

/* Codes k .. k+cnt-1 (cnt <= 16) of an n-bit stream as 16 dwords; reads only their bytes. */
WP_INLINE __m512i load_codes16(const uint8_t *stream, long long k, int n, int cnt)
{
    const long long bit = k * n;
    const unsigned shift = (unsigned)(bit & 7);
    const unsigned nbytes = (shift + (unsigned)(cnt * n) + 7) / 8;
    const __m128i v = _mm_maskz_loadu_epi8((__mmask16)((1u << nbytes) - 1), stream + (bit >> 3));
    if (n == 8) return _mm512_cvtepu8_epi32(v);
    uint64_t lo = (uint64_t)_mm_cvtsi128_si64(v), hi = (uint64_t)_mm_extract_epi64(v, 1);
    if (shift) {
        lo = (lo >> shift) | (hi << (64 - shift));
        hi >>= shift;
    }
    const unsigned half_bits = 8u * (unsigned)n; /* bits of codes 0-7 */
    const uint64_t upper = (lo >> half_bits) | (hi << (64 - half_bits)); /* codes 8-15 */
    const uint64_t a = _pdep_u64(lo, spread_mask[n]), b = _pdep_u64(upper, spread_mask[n]);
    return _mm512_cvtepu8_epi32(_mm_set_epi64x((long long)b, (long long)a));
}

/* Tables kept in registers for one row and block: up to 64 floats. */
typedef struct { __m512 t[4]; const float *mem; } row_tables;

WP_INLINE void fetch_tables(const void *args, enum source src, int n, long long t, row_tables *out)
{
    if (src == SRC_LUT) {
        const float *lut = ((const wp_lut_mv *)args)->lut + t * (1LL << n);
        out->mem = lut;
        if (n <= 4) out->t[0] = _mm512_maskz_loadu_ps((__mmask16)((1u << (1 << n)) - 1), lut);
        if (n == 6)
            for (int q = 0; q < 4; q++) out->t[q] = _mm512_loadu_ps(lut + 16 * q);
    } else if (src == SRC_QUANT && n == 4) {
        out->t[0] = load_table(args, QUANT_TABLE, t, 4);
    }
}

/* 16 weights (in stream order) for 16 codes / values starting at stream element k. */
WP_INLINE __m512 fetch_weights(const void *args, const wp_mv_common *c, enum source src, int n, const row_tables *tab,
                               long long k, int cnt, long long t)
{
    if (src == SRC_HALF)
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16((__mmask16)((1u << cnt) - 1), (const uint16_t *)c->codes + k));
    if (src == SRC_FLOAT) return _mm512_maskz_loadu_ps((__mmask16)((1u << cnt) - 1), (const float *)c->codes + k);
    const __m512i codes = load_codes16(c->codes, k, n, cnt);
    if (src == SRC_QUANT) {
        if (n == 4) return _mm512_permutexvar_ps(codes, tab->t[0]);
        const wp_quant_mv *a = args; /* 8-bit: Core ML's arithmetic on the codes */
        const __m512i q = a->is_signed ? _mm512_srai_epi32(_mm512_slli_epi32(codes, 24), 24) : codes;
        return shift_scale16(a, _mm512_cvtepi32_ps(q), t);
    }
    if (n <= 4) return _mm512_permutexvar_ps(codes, tab->t[0]);
    if (n == 6) {
        const __m512 low = _mm512_permutex2var_ps(tab->t[0], codes, tab->t[1]);
        const __m512 high = _mm512_permutex2var_ps(tab->t[2], codes, tab->t[3]);
        return _mm512_mask_blend_ps(_mm512_test_epi32_mask(codes, _mm512_set1_epi32(32)), low, high);
    }
    /* 8-bit LUT: 256 floats stay in L1.  A gather merges into its destination register: gathering
       into zeros under the mask of the lanes in use (lanes past cnt are never used) keeps the compiler
       from handing it the register of the last FMA, which chained every gather to the one before */
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), (__mmask16)((1u << cnt) - 1), codes, tab->mem, 4);
}

/* Zero a tile's accumulators and find where each of its rows' stream elements start and end. */
WP_INLINE void start_rows(const wp_mv_common *c, long long r, int rt, int bt, __m512 acc[ROW_TILE][BATCH_TILE],
                          long long k[ROW_TILE], long long k_end[ROW_TILE])
{
    for (int i = 0; i < rt; i++) {
        for (int b = 0; b < bt; b++) acc[i][b] = _mm512_setzero_ps();
        k[i] = c->mask ? c->row_start[r + i] : (r + i) * c->cols;
        k_end[i] = c->mask ? c->row_start[r + i + 1] : k[i] + c->cols;
    }
}

WP_INLINE void codes_tile(const void *args, const wp_mv_common *c, enum source src, int n, long long r, int rt,
                          long long b0, int bt)
{
    __m512 acc[ROW_TILE][BATCH_TILE];
    long long k[ROW_TILE], k_end[ROW_TILE];
    start_rows(c, r, rt, bt, acc, k, k_end);
    const uint16_t *mask16 = (const uint16_t *)c->mask;
    for (long long j0 = 0; j0 < c->cols; j0 += c->col_block) {
        row_tables tab[ROW_TILE];
        long long t[ROW_TILE];
        for (int i = 0; i < rt; i++) {
            t[i] = c->row_table ? c->row_table[r + i] + j0 / c->col_block : 0;
            fetch_tables(args, src, n, t[i], &tab[i]);
        }
        for (long long j = j0; j < j0 + c->col_block; j += 16) {
            MCA_BEGIN("codes");
            __m512 xv[BATCH_TILE];
            for (int b = 0; b < bt; b++) xv[b] = _mm512_loadu_ps(c->x + (b0 + b) * c->cols + j);
            for (int i = 0; i < rt; i++) {
                __mmask16 m = 0xffff;
                if (c->mask) {
                    uint16_t bits;
                    memcpy(&bits, mask16 + ((r + i) * c->cols + j) / 16, 2);
                    m = bits;
                    if (!m) continue;
                }
                int cnt = _mm_popcnt_u32(m);
                if (k[i] + cnt > k_end[i]) cnt = (int)(k_end[i] - k[i]); /* never read past the row */
                __m512 w = fetch_weights(args, c, src, n, &tab[i], k[i], cnt, t[i]);
                if (c->mask) w = _mm512_maskz_expand_ps(m, w);
                k[i] += cnt;
                for (int b = 0; b < bt; b++) acc[i][b] = _mm512_fmadd_ps(w, xv[b], acc[i][b]);
            }
            MCA_END();
        }
    }
    store_tile(c, acc, r, rt, b0, bt);
}

/* A row worker over tiles of `rows` rows (x BATCH_TILE batch entries) of tile function tile_fn. */
#define TILE_WORKER(name, tile_fn, src, n, type, rows)                                           \
    WP_INLINE void name##_tile(const void *args, const wp_mv_common *c, const void *unused, long long r, int rt, \
                               long long b0, int bt) { (void)unused; tile_fn(args, c, src, n, r, rt, b0, bt); } \
    static void name(const void *args, long long r0, long long r1)                               \
    {                                                                                            \
        const wp_mv_common *c = &((const type *)args)->c;                                        \
        WP_RUN_TILES(name##_tile, args, c, NULL, r0, r1, rows, BATCH_TILE);                      \
    }
#define CODES_WORKER(name, src, n, type) TILE_WORKER(name, codes_tile, src, n, type, ROW_TILE)

CODES_WORKER(codes_lut1, SRC_LUT, 1, wp_lut_mv)
CODES_WORKER(codes_lut2, SRC_LUT, 2, wp_lut_mv)
CODES_WORKER(codes_lut3, SRC_LUT, 3, wp_lut_mv)
CODES_WORKER(codes_lut4, SRC_LUT, 4, wp_lut_mv)
CODES_WORKER(codes_lut6, SRC_LUT, 6, wp_lut_mv)
CODES_WORKER(codes_lut8, SRC_LUT, 8, wp_lut_mv)
CODES_WORKER(codes_quant4, SRC_QUANT, 4, wp_quant_mv)
CODES_WORKER(codes_quant8, SRC_QUANT, 8, wp_quant_mv)
CODES_WORKER(values_half, SRC_HALF, 16, wp_sparse_mv)
CODES_WORKER(values_float, SRC_FLOAT, 32, wp_sparse_mv)

/* ---- 64 columns at a time through binary16 byte planes -------------------------------------- */
/*
 * Codes of any width are first brought to one byte each: the n*8 bytes behind 64 codes are
 * spread one qword per 8 codes (vpermb) and each code is cut out at its bit offset
 * (vpmultishiftqb).  Sparse rows then expand the codes under their 64 mask bits (vpexpandb).  The
 * codes look up the low and high bytes of binary16 table values (vpermb on 64-byte planes, or
 * vpermi2b pairs for 256 entries), the two planes interleave into 64 binary16 weights, and four
 * conversions feed the FMAs.  Exact for every table whose values are binary16.
 */

/* What a row needs for one table: binary16 planes, or a broadcast scale and offset. */
typedef struct { half_planes planes; __m512 table, scale, offset; } row_state;

/* Core ML's arithmetic on 16 integer codes with a row's broadcast scale and offset. */
WP_INLINE __m512 dequantize16(const void *args, const row_state *st, __m512i q)
{
    const wp_quant_mv *a = args;
    __m512 v = _mm512_cvtepi32_ps(q);
    if (a->offset) {
        v = _mm512_sub_ps(v, st->offset);
        if (a->half_math) v = round_half(v);
    }
    v = _mm512_mul_ps(st->scale, v);
    return a->half_math ? round_half(v) : v;
}

/* Table t's scale and offset, broadcast (a zero offset when there is none). */
WP_INLINE void broadcast_scale(const wp_quant_mv *a, long long t, row_state *st)
{
    const int h = a->half_math;
    st->scale = _mm512_set1_ps(h ? _cvtsh_ss(((const uint16_t *)a->scale)[t]) : ((const float *)a->scale)[t]);
    st->offset = !a->offset ? _mm512_setzero_ps()
                            : _mm512_set1_ps(h ? _cvtsh_ss(((const uint16_t *)a->offset)[t]) : ((const float *)a->offset)[t]);
}

WP_INLINE void fetch_state(const void *args, enum source src, int n, long long t, row_state *st)
{
    if ((src == SRC_LUT || src == SRC_QUANT) && n <= 4) { /* a float table in one register */
        st->table = load_table(args, src == SRC_LUT ? LUT_TABLE : QUANT_TABLE, t, n);
    } else if (src == SRC_LUT) {
        const wp_lut_mv *a = args;
        const long long stride = n == 8 ? 256 : 64;
        for (int q = 0; q < (n == 8 ? 4 : 1); q++) {
            st->planes.lo[q] = _mm512_loadu_si512(a->lut_lo + t * stride + 64 * q);
            st->planes.hi[q] = _mm512_loadu_si512(a->lut_hi + t * stride + 64 * q);
        }
    } else if (src == SRC_QUANT_TABLE) { /* 8-bit codes, binary16 arithmetic: all 256 decoded values */
        const wp_quant_mv *a = args;
        row_state arith;
        broadcast_scale(a, t, &arith);
        const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        uint8_t lo[256], hi[256];
        for (int q = 0; q < 16; q++) {
            __m512i codes = _mm512_add_epi32(iota, _mm512_set1_epi32(16 * q));
            if (a->is_signed) codes = _mm512_srai_epi32(_mm512_slli_epi32(codes, 24), 24);
            const __m256i half = _mm512_cvtps_ph(dequantize16(a, &arith, codes), RNE);
            _mm_storeu_si128((__m128i *)(lo + 16 * q), _mm256_cvtepi16_epi8(half));
            _mm_storeu_si128((__m128i *)(hi + 16 * q), _mm256_cvtepi16_epi8(_mm256_srli_epi16(half, 8)));
        }
        for (int q = 0; q < 4; q++) {
            st->planes.lo[q] = _mm512_loadu_si512(lo + 64 * q);
            st->planes.hi[q] = _mm512_loadu_si512(hi + 64 * q);
        }
    } else if (src == SRC_QUANT) {
        broadcast_scale(args, t, st);
    }
}

/* 64 weights in column order for the 64 columns behind mask m (all ones when dense), consuming
   cnt stream elements from k. */
WP_INLINE void fetch64(const void *args, const wp_mv_common *c, enum source src, int n, const row_state *st,
                       __m512i spread, __m512i inter0, __m512i inter1, long long k, __mmask64 m, int cnt, __m512 w[4])
{
    if (src == SRC_HALF) { /* 32 columns at a time: their values packed, expanded as binary16, widened */
        const uint32_t lo = (uint32_t)m, hi = (uint32_t)(m >> 32);
        const int c0 = (int)_mm_popcnt_u32(lo) < cnt ? (int)_mm_popcnt_u32(lo) : cnt, c1 = cnt - c0;
        const uint16_t *values = (const uint16_t *)c->codes + k;
        const __m512i v0 = _mm512_maskz_expand_epi16(lo, _mm512_maskz_loadu_epi16(c0 >= 32 ? ~0u : (1u << c0) - 1, values));
        const __m512i v1 = _mm512_maskz_expand_epi16(hi, _mm512_maskz_loadu_epi16(c1 >= 32 ? ~0u : (1u << c1) - 1, values + c0));
        w[0] = _mm512_cvtph_ps(_mm512_castsi512_si256(v0));
        w[1] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(v0, 1));
        w[2] = _mm512_cvtph_ps(_mm512_castsi512_si256(v1));
        w[3] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(v1, 1));
        return;
    }
    if (src == SRC_FLOAT) {
        for (int h = 0; h < 4; h++) { /* 16 columns: load their values packed, expand */
            const uint64_t part = (m >> (h * 16)) & 0xffff;
            const int take = (int)_mm_popcnt_u64(part) < cnt ? (int)_mm_popcnt_u64(part) : cnt;
            w[h] = _mm512_maskz_expand_ps((__mmask16)part,
                                          _mm512_maskz_loadu_ps((__mmask16)((1u << take) - 1), (const float *)c->codes + k));
            k += take;
            cnt -= take;
        }
        return;
    }
    __m512i codes = load_codes64(c->codes, k, n, cnt, spread);
    if (c->mask) codes = _mm512_maskz_expand_epi8(m, codes);
    if ((src == SRC_LUT || src == SRC_QUANT) && n <= 4) { /* 16 dword indices into the register table */
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++)
            w[q] = _mm512_maskz_permutexvar_ps((__mmask16)(m >> (16 * q)), _mm512_cvtepu8_epi32(lane128(codes, q)), st->table);
        return;
    }
    if (src == SRC_QUANT && n == 8) {
        const wp_quant_mv *a = args;
        for (int q = 0; q < 4; q++) {
            const __m128i bytes = lane128(codes, q);
            const __m512i v = a->is_signed ? _mm512_cvtepi8_epi32(bytes) : _mm512_cvtepu8_epi32(bytes);
            w[q] = _mm512_maskz_mov_ps((__mmask16)(m >> (16 * q)), dequantize16(a, st, v));
        }
        return;
    }
    __m512i lo, hi;
    plane_lookup(&st->planes, codes, m, n, &lo, &hi);
    planes_to_floats(lo, hi, inter0, inter1, w);
}

WP_INLINE void bytes_tile(const void *args, const wp_mv_common *c, enum source src, int n, long long r, int rt,
                          long long b0, int bt)
{
    const __m512i spread = _mm512_loadu_si512(SPREAD[n < 8 ? n : 8]);
    const __m512i inter0 = _mm512_loadu_si512(INTERLEAVE[0]), inter1 = _mm512_loadu_si512(INTERLEAVE[1]);
    __m512 acc[ROW_TILE][BATCH_TILE], part[ROW_TILE][BATCH_TILE][4]; /* one chain per 16 columns of a step */
    long long k[ROW_TILE], k_end[ROW_TILE];
    start_rows(c, r, rt, bt, acc, k, k_end);
    for (int i = 0; i < rt; i++)
        for (int b = 0; b < bt; b++)
            for (int q = 0; q < 4; q++) part[i][b][q] = _mm512_setzero_ps();
    for (long long j0 = 0; j0 < c->cols; j0 += c->col_block) {
        row_state state[ROW_TILE];
        for (int i = 0; i < rt; i++)
            fetch_state(args, src, n, c->row_table ? c->row_table[r + i] + j0 / c->col_block : 0, &state[i]);
        for (long long j = j0; j < j0 + c->col_block; j += 64) {
            MCA_BEGIN("bytes");
            for (int i = 0; i < rt; i++) {
                __mmask64 m = ~0ULL;
                if (c->mask) {
                    memcpy(&m, c->mask + ((r + i) * c->cols + j) / 8, 8);
                    if (!m) continue;
                }
                int cnt = (int)_mm_popcnt_u64(m);
                if (k[i] + cnt > k_end[i]) cnt = (int)(k_end[i] - k[i]); /* never read past the row */
                __m512 w[4];
                WP_PREFETCH(c->codes + ((k[i] * n) >> 3));
                fetch64(args, c, src, n, &state[i], spread, inter0, inter1, k[i], m, cnt, w);
                k[i] += cnt;
                for (int b = 0; b < bt; b++) {
                    const float *xb = c->x + (b0 + b) * c->cols + j;
                    for (int q = 0; q < 4; q++) part[i][b][q] = _mm512_fmadd_ps(w[q], _mm512_loadu_ps(xb + 16 * q), part[i][b][q]);
                }
            }
            MCA_END();
        }
    }
    for (int i = 0; i < rt; i++)
        for (int b = 0; b < bt; b++)
            acc[i][b] = _mm512_add_ps(_mm512_add_ps(part[i][b][0], part[i][b][1]), _mm512_add_ps(part[i][b][2], part[i][b][3]));
    store_tile(c, acc, r, rt, b0, bt);
}

/* one row at a time: a row's tables fill the registers */
#define BYTES_WORKER(name, src, n, type) TILE_WORKER(name, bytes_tile, src, n, type, 1)

BYTES_WORKER(bytes_lut1, SRC_LUT, 1, wp_lut_mv)
BYTES_WORKER(bytes_lut2, SRC_LUT, 2, wp_lut_mv)
BYTES_WORKER(bytes_lut3, SRC_LUT, 3, wp_lut_mv)
BYTES_WORKER(bytes_lut4, SRC_LUT, 4, wp_lut_mv)
BYTES_WORKER(bytes_lut6, SRC_LUT, 6, wp_lut_mv)
BYTES_WORKER(bytes_lut8, SRC_LUT, 8, wp_lut_mv)
BYTES_WORKER(bytes_quant4, SRC_QUANT, 4, wp_quant_mv)
BYTES_WORKER(bytes_quant8, SRC_QUANT, 8, wp_quant_mv)
BYTES_WORKER(bytes_quant8_table, SRC_QUANT_TABLE, 8, wp_quant_mv)
BYTES_WORKER(bytes_half, SRC_HALF, 16, wp_sparse_mv)
BYTES_WORKER(bytes_float, SRC_FLOAT, 32, wp_sparse_mv)

/* 64-column steps never straddle a row or a table. */
static int steps64_fit(const wp_mv_common *c)
{
    return c->col_block % 64 == 0 && c->cols % c->col_block == 0;
}

/* Chunks of 16 columns never straddle a row or a table. */
static int chunks_fit(const wp_mv_common *c)
{
    return c->col_block % 16 == 0 && c->cols % c->col_block == 0;
}

wp_rows_plan wp_lut_rows_avx512(const wp_lut_mv *a)
{
    const wp_mv_common *c = &a->c;
    if (!c->mask && (c->nbits == 1 || c->nbits == 2 || c->nbits == 4) && small_codes_fit(c))
        return WP_ROWS_SPLIT(c->nbits == 4 ? lut_rows_4bit : c->nbits == 2 ? lut_rows_2bit : lut_rows_1bit, 8 / c->nbits);
    if ((a->lut_lo || c->nbits <= 4) && steps64_fit(c)) { /* <= 4 bits: float tables; more: binary16 planes */
        static const wp_rows_fn by_bits[9] = {NULL, bytes_lut1, bytes_lut2, bytes_lut3, bytes_lut4, NULL, bytes_lut6,
                                              NULL, bytes_lut8};
        return WP_ROWS(by_bits[c->nbits]);
    }
    if (!chunks_fit(c)) return WP_NO_ROWS;
    static const wp_rows_fn by_bits[9] = {NULL, codes_lut1, codes_lut2, codes_lut3, codes_lut4, NULL, codes_lut6, NULL,
                                          codes_lut8};
    return WP_ROWS(by_bits[c->nbits]);
}

wp_rows_plan wp_quant_rows_avx512(const wp_quant_mv *a)
{
    const wp_mv_common *c = &a->c;
    if (!c->mask && c->nbits == 4 && small_codes_fit(c)) return WP_ROWS_SPLIT(quant_rows_4bit, 2);
    if (c->mask && c->nbits == 4 && steps64_fit(c)) return WP_ROWS(bytes_quant4);
    if (!c->mask && c->nbits == 8 && chunks_fit(c)) return WP_ROWS(int8_rows);
    if (c->nbits == 8 && steps64_fit(c)) /* long blocks repay a table of the 256 decoded values */
        return WP_ROWS(a->half_math && c->col_block >= 512 ? bytes_quant8_table : bytes_quant8);
    if (!chunks_fit(c)) return WP_NO_ROWS;
    return WP_ROWS(c->nbits == 4 ? codes_quant4 : codes_quant8);
}

wp_rows_plan wp_sparse_rows_avx512(const wp_sparse_mv *a)
{
    if (steps64_fit(&a->c)) return WP_ROWS(a->value_half ? bytes_half : bytes_float);
    if (!chunks_fit(&a->c)) return WP_NO_ROWS;
    return WP_ROWS(a->value_half ? values_half : values_float);
}

WP_TARGET_POP()
#endif
