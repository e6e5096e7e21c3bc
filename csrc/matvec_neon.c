/*
 * NEON row workers for the fused products (aarch64).
 *
 * Weights are looked up 16 at a time in tables held in registers as byte planes (neon_common.h):
 * a LUT exactly representable in binary16 as its low and high bytes (2 tbl, 2 zip, 4 widening
 * conversions per 16 weights), any other float32 LUT as 4 byte planes (4 tbl, 8 zips).  4-bit
 * quantized weights use the same path with a table of Core ML's 16 decoded values built per
 * block of scale; 8-bit ones are decoded arithmetically (binary16 arithmetic, one fmul .8h per 8
 * weights, where the CPU has it).  256-entry tables take 16 registers per plane, so 8-bit LUTs
 * look up one plane at a time over 256 columns, keeping that plane in registers, and then
 * combine the planes.
 *
 * Dense codes of 1, 2 and 4 bits meet x split once per call into 8/n phase streams (code p of
 * each byte meets stream p: a shift and a mask per 16 codes, no reordering); four rows share each
 * load of x.  Everything else walks the columns 16 at a time: codes of any width unpack to bytes
 * and, for sparse rows, expand under their mask bits; sparse value rows expand their binary16 or
 * float32 values the same way.
 */
#include "wp_target.h"
#if WP_ARM64
#include "matvec.h"
#include "neon_common.h"
#include "wp_dispatch.h"

#define BATCH_TILE 2
#define PHASE_ROWS 4 /* rows per tile of the phase-split path (2 with float32 planes) */
#define COLUMN_ROWS 2

enum source {
    SRC_HALF_PLANES,  /* binary16 table values, low and high byte planes */
    SRC_FLOAT_PLANES, /* float32 table values, 4 byte planes */
    SRC_QUANT,        /* 8-bit codes, float32 scale: Core ML's arithmetic in float32 lanes */
    SRC_QUANT_HALF,   /* 8-bit codes, binary16 scale: the same, each step rounded to binary16 */
    SRC_QUANT_FP16,   /* 8-bit codes, binary16 scale: binary16 arithmetic (the caller's fp16 function) */
    SRC_HALF_VALUES,  /* sparse binary16 values */
    SRC_FLOAT_VALUES  /* sparse float32 values */
};
enum table_kind { LUT_TABLE, QUANT_TABLE };

/* What a row needs for one table. */
typedef struct {
    uint8x16x4_t planes[4]; /* byte b of entries 16i .. 16i+15 in planes[b].val[i] (up to 64 entries) */
    float32x4_t scale, offset;
    float16x8_t scale16, offset16;
} row_state;

/* Builds the state of a 4-bit quantized table in binary16 arithmetic (SRC_HALF_PLANES); compiled
   for WP_FP16_FEATURES, so it is passed in rather than called by name from generic code. */
typedef void (*state_fn)(const wp_quant_mv *a, long long t, row_state *st);
/* 16 weights of SRC_QUANT_FP16 codes (cleared lanes of keep become 0). */
typedef void (*weights_fn)(const row_state *st, uint8x16_t codes, uint8x16_t keep, int is_signed, int has_offset,
                           float32x4_t w[4]);

WP_INLINE float32x4_t broadcast_at(const void *values, long long t, int half)
{
    if (half) return vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(((const uint16_t *)values)[t])));
    return vdupq_n_f32(((const float *)values)[t]);
}

WP_INLINE float16x8_t broadcast_half(const void *values, long long t)
{
    return vreinterpretq_f16_u16(vdupq_n_u16(values ? ((const uint16_t *)values)[t] : 0));
}

/* Codes 0 .. 15 as n-bit integers. */
WP_INLINE int32x4_t iota_codes(int q, int is_signed)
{
    const int32x4_t codes = vaddq_s32((int32x4_t){0, 1, 2, 3}, vdupq_n_s32(4 * q));
    return is_signed ? vsubq_s32(veorq_s32(codes, vdupq_n_s32(8)), vdupq_n_s32(8)) : codes;
}

/* Planes of the 16 decoded values of 4-bit quantized table t: binary16 planes (binary16 scales)
   or float32 planes. */
WP_INLINE void quant_table_state(const wp_quant_mv *a, long long t, int half_planes, row_state *st)
{
    const float32x4_t scale = broadcast_at(a->scale, t, a->half_math);
    const float32x4_t offset = a->offset ? broadcast_at(a->offset, t, a->half_math) : vdupq_n_f32(0.0f);
    float32x4_t v[4];
    for (int q = 0; q < 4; q++)
        v[q] = wp_shift_scale4(vcvtq_f32_s32(iota_codes(q, a->is_signed)), scale, offset, a->offset != NULL, a->half_math);
    if (half_planes) {
        const uint8x16_t h0 = vreinterpretq_u8_f16(vcombine_f16(vcvt_f16_f32(v[0]), vcvt_f16_f32(v[1])));
        const uint8x16_t h1 = vreinterpretq_u8_f16(vcombine_f16(vcvt_f16_f32(v[2]), vcvt_f16_f32(v[3])));
        st->planes[0].val[0] = vuzp1q_u8(h0, h1);
        st->planes[1].val[0] = vuzp2q_u8(h0, h1);
        return;
    }
    float values[16];
    for (int q = 0; q < 4; q++) vst1q_f32(values + 4 * q, v[q]);
    const uint8x16x4_t bytes = vld4q_u8((const uint8_t *)values);
    for (int b = 0; b < 4; b++) st->planes[b].val[0] = bytes.val[b];
}

/* Planes of float32 LUT values (up to 64 entries; fewer than 16 padded with zeros). */
WP_INLINE void float_lut_state(const float *lut, int entries, row_state *st)
{
    float padded[16] = {0};
    if (entries < 16) {
        memcpy(padded, lut, (size_t)(entries & 15) * 4); /* entries < 16 (the mask keeps unoptimized builds quiet) */
        lut = padded;
        entries = 16;
    }
    for (int i = 0; i < entries / 16; i++) {
        const uint8x16x4_t bytes = vld4q_u8((const uint8_t *)(lut + 16 * i));
        for (int b = 0; b < 4; b++) st->planes[b].val[i] = bytes.val[b];
    }
}

WP_INLINE void fetch_state(const void *args, enum source src, enum table_kind kind, int n, state_fn fp16_state,
                           long long t, row_state *st)
{
    if (src == SRC_HALF_PLANES || src == SRC_FLOAT_PLANES) {
        if (kind == QUANT_TABLE) {
            if (fp16_state) fp16_state(args, t, st);
            else quant_table_state(args, t, src == SRC_HALF_PLANES, st);
        } else if (src == SRC_HALF_PLANES) { /* the caller's binary16 planes: 64 bytes per table */
            const wp_lut_mv *a = args;
            for (int b = 0; b < 2; b++) {
                const uint8_t *plane = (b ? a->lut_hi : a->lut_lo) + t * 64;
                if (n <= 4) st->planes[b].val[0] = vld1q_u8(plane);
                else st->planes[b] = vld1q_u8_x4(plane);
            }
        } else {
            float_lut_state(((const wp_lut_mv *)args)->lut + (t << n), 1 << n, st);
        }
    } else if (src == SRC_QUANT || src == SRC_QUANT_HALF) {
        const wp_quant_mv *a = args;
        st->scale = broadcast_at(a->scale, t, a->half_math);
        st->offset = a->offset ? broadcast_at(a->offset, t, a->half_math) : vdupq_n_f32(0.0f);
    } else if (src == SRC_QUANT_FP16) {
        const wp_quant_mv *a = args;
        st->scale16 = broadcast_half(a->scale, t);
        st->offset16 = broadcast_half(a->offset, t);
    }
}

/* 16 weights (in the order of codes) looked up in a row's planes. */
WP_INLINE void plane_weights(const row_state *st, uint8x16_t codes, int n, int nplanes, float32x4_t w[4])
{
    uint8x16_t v[4];
    WP_UNROLL
    for (int b = 0; b < nplanes; b++) v[b] = n <= 4 ? vqtbl1q_u8(st->planes[b].val[0], codes) : vqtbl4q_u8(st->planes[b], codes);
    if (nplanes == 2) wp_half_planes_to_floats(v[0], v[1], w);
    else wp_float_planes_to_floats(v, w);
}

WP_INLINE float32x4_t keep_lanes(float32x4_t v, uint8x16_t keep, int i)
{
    return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(v), wp_keep32(keep, i)));
}

/* The 16 weights of columns j .. j+15 of a row whose stream is at element k; m: their mask bits
   (0xffff when dense). */
WP_INLINE void column_weights(const void *args, const wp_mv_common *c, enum source src, int n, int masked,
                              weights_fn fp16_weights, const row_state *st, long long k, unsigned m, float32x4_t w[4])
{
    if (src == SRC_HALF_VALUES || src == SRC_FLOAT_VALUES) { /* sparse values: always under a mask */
        const int size = src == SRC_HALF_VALUES ? 2 : 4;
        uint8x16_t v[4];
        wp_expand_values(c->codes + k * size, c->codes_len - k * size, wp_expand_index(m), size, v);
        if (size == 2) {
            for (int h = 0; h < 2; h++) {
                w[2 * h] = vcvt_f32_f16(vget_low_f16(vreinterpretq_f16_u8(v[h])));
                w[2 * h + 1] = vcvt_high_f32_f16(vreinterpretq_f16_u8(v[h]));
            }
        } else {
            for (int q = 0; q < 4; q++) w[q] = vreinterpretq_f32_u8(v[q]);
        }
        return;
    }
    uint8x16_t codes = wp_unpack16(c->codes, c->codes_len, k, n), keep = vdupq_n_u8(0xff);
    if (masked) {
        const uint8x16_t idx = wp_expand_index(m);
        keep = wp_expand_keep(idx);
        codes = vqtbl1q_u8(codes, idx);
    }
    if (src == SRC_HALF_PLANES || src == SRC_FLOAT_PLANES) {
        if (masked) codes = vornq_u8(codes, keep); /* cleared lanes: index 0xff, which looks up 0 */
        plane_weights(st, codes, n, src == SRC_HALF_PLANES ? 2 : 4, w);
        return;
    }
    const wp_quant_mv *a = args;
    if (src == SRC_QUANT_FP16) {
        fp16_weights(st, codes, keep, a->is_signed, a->offset != NULL, w);
        return;
    }
    float32x4_t q[4];
    wp_code_values(codes, n, a->is_signed, q);
    WP_UNROLL
    for (int i = 0; i < 4; i++) {
        w[i] = wp_shift_scale4(q[i], st->scale, st->offset, a->offset != NULL, src == SRC_QUANT_HALF);
        if (masked) w[i] = keep_lanes(w[i], keep, i);
    }
}

WP_INLINE void zero_acc(float32x4_t acc[][BATCH_TILE][2], int rt, int bt)
{
    WP_UNROLL
    for (int i = 0; i < rt; i++)
        WP_UNROLL
        for (int b = 0; b < bt; b++) acc[i][b][0] = acc[i][b][1] = vdupq_n_f32(0.0f);
}

/* acc += w * x for 16 weights (two chains of fused multiply-adds). */
WP_INLINE void accumulate(float32x4_t acc[2], const float32x4_t w[4], const float32x4_t x[4])
{
    acc[0] = vfmaq_f32(acc[0], w[0], x[0]);
    acc[1] = vfmaq_f32(acc[1], w[1], x[1]);
    acc[0] = vfmaq_f32(acc[0], w[2], x[2]);
    acc[1] = vfmaq_f32(acc[1], w[3], x[3]);
}

WP_INLINE void store_tile(const wp_mv_common *c, float32x4_t acc[][BATCH_TILE][2], long long r, int rt, long long b0, int bt)
{
    WP_UNROLL
    for (int i = 0; i < rt; i++)
        WP_UNROLL
        for (int b = 0; b < bt; b++) c->y[(b0 + b) * c->rows + r + i] = vaddvq_f32(vaddq_f32(acc[i][b][0], acc[i][b][1]));
}

WP_INLINE void load_x16(const float *x, float32x4_t v[4])
{
    WP_UNROLL
    for (int q = 0; q < 4; q++) v[q] = vld1q_f32(x + 4 * q);
}

/* ---- dense codes of 1, 2 and 4 bits against phase-split x ------------------------------------ */

WP_INLINE void phase_tile(const void *args, const wp_mv_common *common, enum source src, enum table_kind kind, int n,
                          state_fn fp16_state, long long r, int rt, long long b0, int bt)
{
    const wp_mv_common local = *common, *c = &local; /* fields stay in registers across calls */
    const int per = 8 / n, nplanes = src == SRC_HALF_PLANES ? 2 : 4;
    const long long len = c->cols / per;
    float32x4_t acc[PHASE_ROWS][BATCH_TILE][2];
    zero_acc(acc, rt, bt);
    for (long long j0 = 0; j0 < c->cols; j0 += c->col_block) {
        row_state st[PHASE_ROWS];
        WP_UNROLL
        for (int i = 0; i < rt; i++) fetch_state(args, src, kind, n, fp16_state, c->row_table[r + i] + j0 / c->col_block, &st[i]);
        const long long k_end = (j0 + c->col_block) / per;
        for (long long k = j0 / per; k < k_end; k += 16) {
            uint8x16_t raw[PHASE_ROWS];
            WP_UNROLL
            for (int i = 0; i < rt; i++) raw[i] = vld1q_u8(c->codes + (r + i) * len + k);
            WP_UNROLL
            for (int p = 0; p < per; p++) {
                float32x4_t xv[BATCH_TILE][4];
                WP_UNROLL
                for (int b = 0; b < bt; b++) load_x16(c->xs + ((b0 + b) * per + p) * len + k, xv[b]);
                WP_UNROLL
                for (int i = 0; i < rt; i++) {
                    uint8x16_t codes = p ? vshlq_u8(raw[i], vdupq_n_s8((int8_t)(-p * n))) : raw[i];
                    if (p < per - 1) codes = vandq_u8(codes, vdupq_n_u8((uint8_t)((1 << n) - 1)));
                    float32x4_t w[4];
                    plane_weights(&st[i], codes, n, nplanes, w);
                    WP_UNROLL
                    for (int b = 0; b < bt; b++) accumulate(acc[i][b], w, xv[b]);
                }
            }
        }
    }
    store_tile(c, acc, r, rt, b0, bt);
}

/* ---- any codes, dense or under a mask, 16 columns at a time ---------------------------------- */

WP_INLINE void column_tile(const void *args, const wp_mv_common *common, enum source src, enum table_kind kind, int n,
                           int masked, state_fn fp16_state, weights_fn fp16_weights, long long r, int rt, long long b0,
                           int bt)
{
    const wp_mv_common local = *common, *c = &local; /* fields stay in registers across calls */
    float32x4_t acc[COLUMN_ROWS][BATCH_TILE][2];
    zero_acc(acc, rt, bt);
    long long k[COLUMN_ROWS];
    WP_UNROLL
    for (int i = 0; i < rt; i++) k[i] = masked ? c->row_start[r + i] : (r + i) * c->cols;
    for (long long j0 = 0; j0 < c->cols; j0 += c->col_block) {
        row_state st[COLUMN_ROWS];
        WP_UNROLL
        for (int i = 0; i < rt; i++)
            fetch_state(args, src, kind, n, fp16_state, c->row_table ? c->row_table[r + i] + j0 / c->col_block : 0, &st[i]);
        for (long long j = j0; j < j0 + c->col_block; j += 16) {
            float32x4_t xv[BATCH_TILE][4];
            WP_UNROLL
            for (int b = 0; b < bt; b++) load_x16(c->x + (b0 + b) * c->cols + j, xv[b]);
            WP_UNROLL
            for (int i = 0; i < rt; i++) {
                unsigned m = 0xffff;
                if (masked && !(m = wp_mask16(c->mask, (r + i) * c->cols + j))) continue;
                float32x4_t w[4];
                column_weights(args, c, src, n, masked, fp16_weights, &st[i], k[i], m, w);
                k[i] += masked ? wp_popcount16(m) : 16;
                WP_UNROLL
                for (int b = 0; b < bt; b++) accumulate(acc[i][b], w, xv[b]);
            }
        }
    }
    store_tile(c, acc, r, rt, b0, bt);
}

/* ---- 8-bit LUTs: one 256-entry plane in registers at a time ---------------------------------- */

#define SEGMENT 256 /* columns per round of plane lookups */

WP_INLINE void lut8_tile(const void *args, const wp_mv_common *common, int nplanes, long long r, int rt, long long b0, int bt)
{
    const wp_mv_common local = *common, *c = &local; /* fields stay in registers across calls */
    (void)rt; /* one row per tile: a plane fills 16 registers */
    const wp_lut_mv *a = args;
    float32x4_t acc[1][BATCH_TILE][2];
    zero_acc(acc, 1, bt);
    long long k = c->mask ? c->row_start[r] : r * c->cols;
    wp_plane planes[4];
    for (long long j0 = 0; j0 < c->cols; j0 += c->col_block) {
        const long long t = c->row_table[r] + j0 / c->col_block;
        if (nplanes == 2) {
            for (int q = 0; q < 4; q++) {
                planes[0].q[q] = vld1q_u8_x4(a->lut_lo + t * 256 + 64 * q);
                planes[1].q[q] = vld1q_u8_x4(a->lut_hi + t * 256 + 64 * q);
            }
        } else {
            wp_make_planes(a->lut + t * 256, 256, 4, planes);
        }
        for (long long s0 = j0; s0 < j0 + c->col_block; s0 += SEGMENT) {
            const int steps = (int)((j0 + c->col_block - s0 < SEGMENT ? j0 + c->col_block - s0 : SEGMENT) / 16);
            uint8_t codes[SEGMENT], keep[SEGMENT], bytes[4][SEGMENT];
            for (int s = 0; s < steps; s++) { /* the segment's codes, expanded, and where they are stored */
                uint8x16_t v = wp_unpack16(c->codes, c->codes_len, k, 8), kv = vdupq_n_u8(0xff);
                if (c->mask) {
                    const unsigned m = wp_mask16(c->mask, r * c->cols + s0 + 16 * s);
                    const uint8x16_t idx = wp_expand_index(m);
                    kv = wp_expand_keep(idx);
                    v = vqtbl1q_u8(v, idx);
                    k += wp_popcount16(m);
                } else {
                    k += 16;
                }
                vst1q_u8(codes + 16 * s, v);
                vst1q_u8(keep + 16 * s, kv);
            }
            for (int b = 0; b < nplanes; b++) { /* one plane over the whole segment */
                const wp_plane plane = planes[b];
                for (int s = 0; s < steps; s++) vst1q_u8(bytes[b] + 16 * s, wp_plane_lookup(&plane, vld1q_u8(codes + 16 * s), 8));
            }
            for (int s = 0; s < steps; s++) {
                const uint8x16_t kv = vld1q_u8(keep + 16 * s);
                uint8x16_t v[4];
                WP_UNROLL
                for (int b = 0; b < nplanes; b++) v[b] = vandq_u8(vld1q_u8(bytes[b] + 16 * s), kv);
                float32x4_t w[4];
                if (nplanes == 2) wp_half_planes_to_floats(v[0], v[1], w);
                else wp_float_planes_to_floats(v, w);
                WP_UNROLL
                for (int b = 0; b < bt; b++) {
                    float32x4_t xv[4];
                    load_x16(c->x + (b0 + b) * c->cols + s0 + 16 * s, xv);
                    accumulate(acc[0][b], w, xv);
                }
            }
        }
    }
    store_tile(c, acc, r, 1, b0, bt);
}

/* ---- workers ---------------------------------------------------------------------------------- */

#define PHASE_WORKER(name, type, src, kind, n, rows, fp16_state)                                              \
    WP_INLINE void name##_tile(const void *args, const wp_mv_common *c, const void *unused, long long r, int rt, \
                               long long b0, int bt)                                                           \
    {                                                                                                         \
        (void)unused;                                                                                         \
        phase_tile(args, c, src, kind, n, fp16_state, r, rt, b0, bt);                                         \
    }                                                                                                         \
    static void name(const void *args, long long r0, long long r1)                                            \
    {                                                                                                         \
        const wp_mv_common *c = &((const type *)args)->c;                                                     \
        WP_RUN_TILES(name##_tile, args, c, NULL, r0, r1, rows, BATCH_TILE);                                   \
    }

#define COLUMN_WORKER(name, type, src, kind, n, masked, rows, fp16_state, fp16_weights)                       \
    WP_INLINE void name##_tile(const void *args, const wp_mv_common *c, const void *unused, long long r, int rt, \
                               long long b0, int bt)                                                           \
    {                                                                                                         \
        (void)unused;                                                                                         \
        column_tile(args, c, src, kind, n, masked, fp16_state, fp16_weights, r, rt, b0, bt);                  \
    }                                                                                                         \
    static void name(const void *args, long long r0, long long r1)                                            \
    {                                                                                                         \
        const wp_mv_common *c = &((const type *)args)->c;                                                     \
        WP_RUN_TILES(name##_tile, args, c, NULL, r0, r1, rows, BATCH_TILE);                                   \
    }

#define LUT8_WORKER(name, nplanes)                                                                            \
    WP_INLINE void name##_tile(const void *args, const wp_mv_common *c, const void *unused, long long r, int rt, \
                               long long b0, int bt)                                                           \
    {                                                                                                         \
        (void)unused;                                                                                         \
        lut8_tile(args, c, nplanes, r, rt, b0, bt);                                                           \
    }                                                                                                         \
    static void name(const void *args, long long r0, long long r1)                                            \
    {                                                                                                         \
        const wp_mv_common *c = &((const wp_lut_mv *)args)->c;                                                \
        WP_RUN_TILES(name##_tile, args, c, NULL, r0, r1, 1, BATCH_TILE);                                      \
    }

PHASE_WORKER(phase_lut1_half, wp_lut_mv, SRC_HALF_PLANES, LUT_TABLE, 1, PHASE_ROWS, NULL)
PHASE_WORKER(phase_lut2_half, wp_lut_mv, SRC_HALF_PLANES, LUT_TABLE, 2, PHASE_ROWS, NULL)
PHASE_WORKER(phase_lut4_half, wp_lut_mv, SRC_HALF_PLANES, LUT_TABLE, 4, PHASE_ROWS, NULL)
PHASE_WORKER(phase_lut1_float, wp_lut_mv, SRC_FLOAT_PLANES, LUT_TABLE, 1, 2, NULL)
PHASE_WORKER(phase_lut2_float, wp_lut_mv, SRC_FLOAT_PLANES, LUT_TABLE, 2, 2, NULL)
PHASE_WORKER(phase_lut4_float, wp_lut_mv, SRC_FLOAT_PLANES, LUT_TABLE, 4, 2, NULL)
PHASE_WORKER(phase_quant4_half, wp_quant_mv, SRC_HALF_PLANES, QUANT_TABLE, 4, PHASE_ROWS, NULL)
PHASE_WORKER(phase_quant4_float, wp_quant_mv, SRC_FLOAT_PLANES, QUANT_TABLE, 4, 2, NULL)

/* dense (d_) and masked (m_) variants of each: the masked ones expand codes under their mask bits */
#define COLUMN_WORKERS(name, type, src, kind, n, rows)                      \
    COLUMN_WORKER(d_##name, type, src, kind, n, 0, rows, NULL, NULL)        \
    COLUMN_WORKER(m_##name, type, src, kind, n, 1, rows, NULL, NULL)

COLUMN_WORKERS(lut1_half, wp_lut_mv, SRC_HALF_PLANES, LUT_TABLE, 1, COLUMN_ROWS)
COLUMN_WORKERS(lut2_half, wp_lut_mv, SRC_HALF_PLANES, LUT_TABLE, 2, COLUMN_ROWS)
COLUMN_WORKERS(lut3_half, wp_lut_mv, SRC_HALF_PLANES, LUT_TABLE, 3, COLUMN_ROWS)
COLUMN_WORKERS(lut4_half, wp_lut_mv, SRC_HALF_PLANES, LUT_TABLE, 4, COLUMN_ROWS)
COLUMN_WORKERS(lut6_half, wp_lut_mv, SRC_HALF_PLANES, LUT_TABLE, 6, 1)
COLUMN_WORKERS(lut1_float, wp_lut_mv, SRC_FLOAT_PLANES, LUT_TABLE, 1, COLUMN_ROWS)
COLUMN_WORKERS(lut2_float, wp_lut_mv, SRC_FLOAT_PLANES, LUT_TABLE, 2, COLUMN_ROWS)
COLUMN_WORKERS(lut3_float, wp_lut_mv, SRC_FLOAT_PLANES, LUT_TABLE, 3, COLUMN_ROWS)
COLUMN_WORKERS(lut4_float, wp_lut_mv, SRC_FLOAT_PLANES, LUT_TABLE, 4, COLUMN_ROWS)
COLUMN_WORKERS(lut6_float, wp_lut_mv, SRC_FLOAT_PLANES, LUT_TABLE, 6, 1)
COLUMN_WORKERS(quant4_half, wp_quant_mv, SRC_HALF_PLANES, QUANT_TABLE, 4, COLUMN_ROWS)
COLUMN_WORKERS(quant4_float, wp_quant_mv, SRC_FLOAT_PLANES, QUANT_TABLE, 4, COLUMN_ROWS)
COLUMN_WORKERS(quant8_float, wp_quant_mv, SRC_QUANT, QUANT_TABLE, 8, COLUMN_ROWS)
COLUMN_WORKERS(quant8_half, wp_quant_mv, SRC_QUANT_HALF, QUANT_TABLE, 8, COLUMN_ROWS)
COLUMN_WORKER(m_values_half, wp_sparse_mv, SRC_HALF_VALUES, LUT_TABLE, 8, 1, COLUMN_ROWS, NULL, NULL)
COLUMN_WORKER(m_values_float, wp_sparse_mv, SRC_FLOAT_VALUES, LUT_TABLE, 8, 1, COLUMN_ROWS, NULL, NULL)
LUT8_WORKER(lut8_half, 2)
LUT8_WORKER(lut8_float, 4)

/* ---- binary16 arithmetic (CPU level fp16) ----------------------------------------------------- */

WP_TARGET_PUSH(WP_FP16_FEATURES)

/* The 16 decoded values of 4-bit quantized table t (binary16 scale) as binary16 planes. */
static void quant_table_state_fp16(const wp_quant_mv *a, long long t, row_state *st)
{
    const float16x8_t scale = broadcast_half(a->scale, t), offset = broadcast_half(a->offset, t);
    int16x8_t codes[2] = {{0, 1, 2, 3, 4, 5, 6, 7}, {8, 9, 10, 11, 12, 13, 14, 15}};
    if (a->is_signed) codes[1] = vsubq_s16(codes[1], vdupq_n_s16(16));
    const uint8x16_t h0 = vreinterpretq_u8_f16(wp_shift_scale8_fp16(codes[0], scale, offset, a->offset != NULL));
    const uint8x16_t h1 = vreinterpretq_u8_f16(wp_shift_scale8_fp16(codes[1], scale, offset, a->offset != NULL));
    st->planes[0].val[0] = vuzp1q_u8(h0, h1);
    st->planes[1].val[0] = vuzp2q_u8(h0, h1);
}

static void quant_weights_fp16(const row_state *st, uint8x16_t codes, uint8x16_t keep, int is_signed, int has_offset,
                               float32x4_t w[4])
{
    int16x8_t q[2];
    wp_code_values16(codes, 8, is_signed, q);
    const int8x16_t keep8 = vreinterpretq_s8_u8(keep);
    const int16x8_t keep16[2] = {vmovl_s8(vget_low_s8(keep8)), vmovl_high_s8(keep8)};
    for (int h = 0; h < 2; h++) {
        const float16x8_t v = vreinterpretq_f16_s16(
            vandq_s16(vreinterpretq_s16_f16(wp_shift_scale8_fp16(q[h], st->scale16, st->offset16, has_offset)), keep16[h]));
        w[2 * h] = vcvt_f32_f16(vget_low_f16(v));
        w[2 * h + 1] = vcvt_high_f32_f16(v);
    }
}

PHASE_WORKER(phase_quant4_fp16, wp_quant_mv, SRC_HALF_PLANES, QUANT_TABLE, 4, PHASE_ROWS, quant_table_state_fp16)
COLUMN_WORKER(d_quant4_fp16, wp_quant_mv, SRC_HALF_PLANES, QUANT_TABLE, 4, 0, COLUMN_ROWS, quant_table_state_fp16, NULL)
COLUMN_WORKER(m_quant4_fp16, wp_quant_mv, SRC_HALF_PLANES, QUANT_TABLE, 4, 1, COLUMN_ROWS, quant_table_state_fp16, NULL)
COLUMN_WORKER(d_quant8_fp16, wp_quant_mv, SRC_QUANT_FP16, QUANT_TABLE, 8, 0, COLUMN_ROWS, NULL, quant_weights_fp16)
COLUMN_WORKER(m_quant8_fp16, wp_quant_mv, SRC_QUANT_FP16, QUANT_TABLE, 8, 1, COLUMN_ROWS, NULL, quant_weights_fp16)

WP_TARGET_POP()

/* ---- selection -------------------------------------------------------------------------------- */

/* Dense rows of whole 16-byte steps per table: the phase-split path. */
static int phase_fit(const wp_mv_common *c)
{
    return !c->mask && c->col_block % (16 * (8 / c->nbits)) == 0 && c->cols % c->col_block == 0;
}

/* Steps of 16 columns never straddle a table (nor, then, a row: cols is a multiple of 16). */
static int columns_fit(const wp_mv_common *c)
{
    return c->col_block % 16 == 0 && c->cols % c->col_block == 0;
}

wp_rows_plan wp_lut_rows_neon(const wp_lut_mv *a)
{
    const wp_mv_common *c = &a->c;
    const int n = c->nbits, half = a->lut_lo != NULL, masked = c->mask != NULL;
    if ((n == 1 || n == 2 || n == 4) && phase_fit(c)) {
        static const wp_rows_fn by_bits[2][5] = {{NULL, phase_lut1_float, phase_lut2_float, NULL, phase_lut4_float},
                                                 {NULL, phase_lut1_half, phase_lut2_half, NULL, phase_lut4_half}};
        return WP_ROWS_SPLIT(by_bits[half][n], 8 / n);
    }
    if (!columns_fit(c)) return WP_NO_ROWS;
    if (n == 8) return WP_ROWS(half ? lut8_half : lut8_float);
    static const wp_rows_fn by_bits[2][2][7] = {
        {{NULL, d_lut1_float, d_lut2_float, d_lut3_float, d_lut4_float, NULL, d_lut6_float},
         {NULL, d_lut1_half, d_lut2_half, d_lut3_half, d_lut4_half, NULL, d_lut6_half}},
        {{NULL, m_lut1_float, m_lut2_float, m_lut3_float, m_lut4_float, NULL, m_lut6_float},
         {NULL, m_lut1_half, m_lut2_half, m_lut3_half, m_lut4_half, NULL, m_lut6_half}}};
    return WP_ROWS(by_bits[masked][half][n]);
}

wp_rows_plan wp_quant_rows_neon(const wp_quant_mv *a)
{
    const wp_mv_common *c = &a->c;
    const int fp16 = a->half_math && wp_simd_level() >= WP_LEVEL_FP16, masked = c->mask != NULL;
    if (c->nbits == 4 && phase_fit(c))
        return WP_ROWS_SPLIT(fp16 ? phase_quant4_fp16 : a->half_math ? phase_quant4_half : phase_quant4_float, 2);
    if (!columns_fit(c)) return WP_NO_ROWS;
    /* [masked][nbits == 8][binary16 arithmetic, binary16 scale, float32 scale] */
    static const wp_rows_fn workers[2][2][3] = {
        {{d_quant4_fp16, d_quant4_half, d_quant4_float}, {d_quant8_fp16, d_quant8_half, d_quant8_float}},
        {{m_quant4_fp16, m_quant4_half, m_quant4_float}, {m_quant8_fp16, m_quant8_half, m_quant8_float}}};
    return WP_ROWS(workers[masked][c->nbits == 8][fp16 ? 0 : a->half_math ? 1 : 2]);
}

wp_rows_plan wp_sparse_rows_neon(const wp_sparse_mv *a)
{
    if (!columns_fit(&a->c)) return WP_NO_ROWS;
    return WP_ROWS(a->value_half ? m_values_half : m_values_float);
}

#endif
