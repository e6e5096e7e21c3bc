/*
 * Helpers shared by the NEON kernel files (aarch64; include inside `#if WP_ARM64`).
 *
 * Codes of any width come to one byte each, 16 at a time: a table lookup (tbl) gathers the two
 * stream bytes under each code into a 16-bit lane, a per-lane shift (ushl) brings the code down
 * and the lanes narrow back to bytes.  Codes stored only where a mask bit is set expand to their
 * columns through a shuffle pattern per mask byte; clear lanes get index 0xff, which tbl turns
 * into 0.  Tables are looked up as byte planes: plane b holds byte b of every entry, 16 entries
 * per register, so one tbl fetches byte b of 16 values, and st2 / st4 (or zips) interleave the
 * planes back into 2- and 4-byte values.  Nothing here reads a byte past the buffer it is given.
 */
#ifndef WP_NEON_COMMON_H
#define WP_NEON_COMMON_H

#include <arm_neon.h>
#include <stdint.h>
#include <string.h>

#include "wp_target.h"

/* Fully unroll the loop that follows (over rows, batch items, phases, registers of a tile): the
   tile sizes are compile-time constants once the tile is inlined, and the loops must vanish for
   the accumulators and tables to stay in registers.  clang optimizes an always-inline callee
   before its callers, so it gets unroll(full), which waits for a known trip count (a count would
   make it unroll the callee's still-unknown loops at run time). */
#if defined(__clang__)
#define WP_UNROLL WP_PRAGMA(clang loop unroll(full))
#else
#define WP_UNROLL WP_PRAGMA(GCC unroll 16)
#endif

/* wp_neon_unpack_index[n][s]: for codes 0-7 of a run starting s bits into its first byte, the
   byte pair (o, o + 1) holding each code (o = (s + i*n) / 8), as the 16 bytes of 8 u16 lanes;
   codes 8-15 use the same pairs n bytes further on.  wp_neon_unpack_shift[n][s]: minus the bit
   offset of each code inside its pair (a right shift for ushl). */
extern uint8_t wp_neon_unpack_index[9][8][16];
extern int16_t wp_neon_unpack_shift[9][8][8];
/* wp_neon_expand[m]: for mask byte m, byte i = rank of bit i among m's set bits, 0xff if clear;
   wp_neon_popcount[m]: its set bits (aarch64 has no scalar popcount before FEAT_CSSC). */
extern uint64_t wp_neon_expand[256];
extern uint8_t wp_neon_popcount[256];

/* Set bits of a 16-bit mask. */
WP_INLINE int wp_popcount16(unsigned m) { return wp_neon_popcount[m & 0xff] + wp_neon_popcount[m >> 8]; }

__attribute__((noinline, cold, unused)) static uint8x16_t wp_load16_tail(const uint8_t *p, long long avail)
{
    uint8_t tmp[16] = {0};
    if (avail > 0) memcpy(tmp, p, (size_t)avail);
    return vld1q_u8(tmp);
}

/* 16 bytes from p of which only the first `avail` exist (the others read as zero). */
WP_INLINE uint8x16_t wp_load16(const uint8_t *p, long long avail)
{
    if (__builtin_expect(avail >= 16, 1)) return vld1q_u8(p);
    return wp_load16_tail(p, avail); /* a stream's last bytes: out of the loops' way */
}

/* Codes k .. k+15 of an n-bit LSB-first stream of len bytes, one per byte (codes past the
   stream's end read as garbage-free zeros or whatever the stream holds; callers use only the
   ones they asked for). */
WP_INLINE uint8x16_t wp_unpack16(const uint8_t *stream, long long len, long long k, int n)
{
    if (n == 8) return wp_load16(stream + k, len - k);
    const long long bit = k * n, at = bit >> 3;
    const int s = (int)(bit & 7);
    if (n == 4 && s == 0) { /* two codes per byte, low nibble first */
        const uint8x8_t b = vget_low_u8(wp_load16(stream + at, len - at < 8 ? len - at : 8));
        const uint8x8_t lo = vand_u8(b, vdup_n_u8(15)), hi = vshr_n_u8(b, 4);
        return vcombine_u8(vzip1_u8(lo, hi), vzip2_u8(lo, hi));
    }
    const uint8x16_t raw = wp_load16(stream + at, len - at);
    const uint8x16_t idx = vld1q_u8(wp_neon_unpack_index[n][s]);
    const int16x8_t shift = vld1q_s16(wp_neon_unpack_shift[n][s]);
    const uint16x8_t lo = vshlq_u16(vreinterpretq_u16_u8(vqtbl1q_u8(raw, idx)), shift);
    const uint16x8_t hi = vshlq_u16(vreinterpretq_u16_u8(vqtbl1q_u8(raw, vaddq_u8(idx, vdupq_n_u8((uint8_t)n)))), shift);
    return vandq_u8(vuzp1q_u8(vreinterpretq_u8_u16(lo), vreinterpretq_u8_u16(hi)), vdupq_n_u8((uint8_t)((1 << n) - 1)));
}

/* 16 mask bits from element e on (e + 16 <= the mask's element count). */
WP_INLINE unsigned wp_mask16(const uint8_t *mask, long long e)
{
    const uint8_t *p = mask + (e >> 3);
    const unsigned s = (unsigned)(e & 7);
    unsigned m = p[0] | (unsigned)p[1] << 8;
    if (s) m = (m >> s) | (unsigned)p[2] << (16 - s);
    return m & 0xffff;
}

/* The shuffle that moves the first popcount(m) lanes to the set bits of the 16-bit mask m:
   lane i holds its source lane, or 0xff where bit i is clear. */
WP_INLINE uint8x16_t wp_expand_index(unsigned m)
{
    const unsigned low = m & 0xff;
    const uint8x16_t ranks = vcombine_u8(vcreate_u8(wp_neon_expand[low]), vcreate_u8(wp_neon_expand[m >> 8]));
    const uint64_t base = wp_neon_popcount[low] * 0x0101010101010101ULL; /* for lanes 8-15 */
    return vqaddq_u8(ranks, vcombine_u8(vcreate_u8(0), vcreate_u8(base))); /* saturating: 0xff stays 0xff */
}

/* 0xff in the lanes an expand index fills, 0 in the others. */
WP_INLINE uint8x16_t wp_expand_keep(uint8x16_t idx) { return vcltq_u8(idx, vdupq_n_u8(16)); }

/* A byte plane of up to 256 table entries: q[i] holds entries 64i .. 64i+63. */
typedef struct {
    uint8x16x4_t q[4];
} wp_plane;

/* Byte b of the table value of each of 16 codes of n bits (codes >= 2^n, for n < 8, give 0 when
   the plane's unused entries are zero; the 0xff a cleared lane holds always gives 0 for n < 8). */
WP_INLINE uint8x16_t wp_plane_lookup(const wp_plane *p, uint8x16_t codes, int n)
{
    if (n <= 4) return vqtbl1q_u8(p->q[0].val[0], codes);
    if (n <= 6) return vqtbl4q_u8(p->q[0], codes);
    uint8x16_t r = vqtbl4q_u8(p->q[0], codes);
    r = vqtbx4q_u8(r, p->q[1], vsubq_u8(codes, vdupq_n_u8(64)));
    r = vqtbx4q_u8(r, p->q[2], vsubq_u8(codes, vdupq_n_u8(128)));
    return vqtbx4q_u8(r, p->q[3], vsubq_u8(codes, vdupq_n_u8(192)));
}

/* Planes of a table of `entries` values of `size` bytes (entries beyond are zero). */
WP_INLINE void wp_make_planes(const void *table, int entries, int size, wp_plane *planes)
{
    uint8_t padded[64];
    const uint8_t *src = table;
    if (entries < 16) { /* fewer than one register of entries: pad with zeros */
        memset(padded, 0, sizeof padded);
        memcpy(padded, src, (size_t)((entries & 15) * size)); /* entries < 16 */
        src = padded;
        entries = 16;
    }
    for (int r = 0; r < entries / 16; r++) { /* 16 entries: structured loads split their bytes */
        const int q = r / 4, i = r % 4;
        if (size == 1) {
            planes[0].q[q].val[i] = vld1q_u8(src + 16 * r);
        } else if (size == 2) {
            const uint8x16x2_t v = vld2q_u8(src + 32 * r);
            for (int b = 0; b < 2; b++) planes[b].q[q].val[i] = v.val[b];
        } else {
            const uint8x16x4_t v = vld4q_u8(src + 64 * r);
            for (int b = 0; b < 4; b++) planes[b].q[q].val[i] = v.val[b];
        }
    }
}

/* Store 16 values given as `size` byte planes, interleaved (little-endian values). */
WP_INLINE void wp_store_planes(uint8_t *dst, const uint8x16_t *v, int size)
{
    if (size == 1) {
        vst1q_u8(dst, v[0]);
    } else if (size == 2) {
        const uint8x16x2_t pair = {{v[0], v[1]}};
        vst2q_u8(dst, pair);
    } else {
        const uint8x16x4_t quad = {{v[0], v[1], v[2], v[3]}};
        vst4q_u8(dst, quad);
    }
}

/* 16 binary16 values given as low and high byte planes, widened to 4 x 4 float32 (exact). */
WP_INLINE void wp_half_planes_to_floats(uint8x16_t lo, uint8x16_t hi, float32x4_t w[4])
{
    const float16x8_t h0 = vreinterpretq_f16_u8(vzip1q_u8(lo, hi)), h1 = vreinterpretq_f16_u8(vzip2q_u8(lo, hi));
    w[0] = vcvt_f32_f16(vget_low_f16(h0));
    w[1] = vcvt_high_f32_f16(h0);
    w[2] = vcvt_f32_f16(vget_low_f16(h1));
    w[3] = vcvt_high_f32_f16(h1);
}

/* 16 float32 values given as 4 byte planes, as 4 x 4 floats. */
WP_INLINE void wp_float_planes_to_floats(const uint8x16_t b[4], float32x4_t w[4])
{
    const uint16x8_t p01_lo = vreinterpretq_u16_u8(vzip1q_u8(b[0], b[1])), p01_hi = vreinterpretq_u16_u8(vzip2q_u8(b[0], b[1]));
    const uint16x8_t p23_lo = vreinterpretq_u16_u8(vzip1q_u8(b[2], b[3])), p23_hi = vreinterpretq_u16_u8(vzip2q_u8(b[2], b[3]));
    w[0] = vreinterpretq_f32_u16(vzip1q_u16(p01_lo, p23_lo));
    w[1] = vreinterpretq_f32_u16(vzip2q_u16(p01_lo, p23_lo));
    w[2] = vreinterpretq_f32_u16(vzip1q_u16(p01_hi, p23_hi));
    w[3] = vreinterpretq_f32_u16(vzip2q_u16(p01_hi, p23_hi));
}

/* Round to the nearest binary16 and back (round to nearest even, overflow to infinity). */
WP_INLINE float32x4_t wp_round_half4(float32x4_t v) { return vcvt_f32_f16(vcvt_f16_f32(v)); }

/* Core ML's shift-scale of 4 code values: scale * (q - offset), each step rounded to binary16
   when the scale is binary16 (float32 arithmetic then rounding equals binary16 arithmetic: the
   24-bit result has more than 2 * 11 + 2 bits). */
WP_INLINE float32x4_t wp_shift_scale4(float32x4_t q, float32x4_t scale, float32x4_t offset, int has_offset, int half)
{
    if (has_offset) {
        q = vsubq_f32(q, offset);
        if (half) q = wp_round_half4(q);
    }
    q = vmulq_f32(scale, q);
    return half ? wp_round_half4(q) : q;
}

/* 16 codes of n bits (4 or 8) as signed or unsigned integers in 2 x 8 int16 lanes. */
WP_INLINE void wp_code_values16(uint8x16_t codes, int n, int is_signed, int16x8_t wide[2])
{
    if (is_signed) {
        int8x16_t s = vreinterpretq_s8_u8(codes);
        if (n < 8) s = vshrq_n_s8(vshlq_n_s8(s, 4), 4); /* sign-extend 4-bit codes */
        wide[0] = vmovl_s8(vget_low_s8(s));
        wide[1] = vmovl_high_s8(s);
    } else {
        wide[0] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(codes)));
        wide[1] = vreinterpretq_s16_u16(vmovl_high_u8(codes));
    }
}

/* The same as 4 x 4 float32 lanes. */
WP_INLINE void wp_code_values(uint8x16_t codes, int n, int is_signed, float32x4_t q[4])
{
    int16x8_t wide[2];
    wp_code_values16(codes, n, is_signed, wide);
    for (int h = 0; h < 2; h++) {
        q[2 * h] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(wide[h])));
        q[2 * h + 1] = vcvtq_f32_s32(vmovl_high_s16(wide[h]));
    }
}

/* 0 / all-ones 32-bit lanes i*4 .. i*4+3 of a 0 / 0xff byte mask. */
WP_INLINE uint32x4_t wp_keep32(uint8x16_t keep, int i)
{
    const int8x16_t k = vreinterpretq_s8_u8(keep);
    const int16x8_t k16 = i < 2 ? vmovl_s8(vget_low_s8(k)) : vmovl_high_s8(k);
    return vreinterpretq_u32_s32(i % 2 ? vmovl_high_s16(k16) : vmovl_s16(vget_low_s16(k16)));
}

/* Values of `size` bytes (1, 2 or 4) starting at src, of which `avail` bytes exist, moved to the
   16 lanes of an expand index (cleared lanes 0): 16 x size bytes in v[0 .. size-1]. */
WP_INLINE void wp_expand_values(const uint8_t *src, long long avail, uint8x16_t idx, int size, uint8x16_t v[4])
{
    if (size == 1) {
        v[0] = vqtbl1q_u8(wp_load16(src, avail), idx);
        return;
    }
    if (size == 2) { /* halfword lanes: byte indices 2i, 2i+1 (0xff becomes 0xfe, 0xff: still out of range) */
        const uint8x16x2_t table = {{wp_load16(src, avail), wp_load16(src + 16, avail - 16)}};
        const uint8x16_t twice = vshlq_n_u8(idx, 1), next = vaddq_u8(twice, vdupq_n_u8(1));
        v[0] = vqtbl2q_u8(table, vzip1q_u8(twice, next));
        v[1] = vqtbl2q_u8(table, vzip2q_u8(twice, next));
        return;
    }
    const uint8x16x4_t table = {{wp_load16(src, avail), wp_load16(src + 16, avail - 16), wp_load16(src + 32, avail - 32),
                                 wp_load16(src + 48, avail - 48)}};
    const uint8x16_t four = vshlq_n_u8(idx, 2); /* word lanes: byte indices 4i .. 4i+3 (0xfc | b >= 64) */
    const uint8x16_t pairs[2] = {vzip1q_u8(four, four), vzip2q_u8(four, four)};
    const uint8x16_t bytes = vreinterpretq_u8_u32(vdupq_n_u32(0x03020100u));
    for (int q = 0; q < 4; q++) {
        const uint8x16_t quad = q % 2 ? vzip2q_u8(pairs[q / 2], pairs[q / 2]) : vzip1q_u8(pairs[q / 2], pairs[q / 2]);
        v[q] = vqtbl4q_u8(table, vorrq_u8(quad, bytes));
    }
}

/* Binary16 arithmetic (FEAT_FP16), as inline assembly (clang 14 declares no intrinsics for it
   without -march flags).  Use only inside functions compiled for WP_FP16_FEATURES. */
WP_INLINE float16x8_t wp_fp16_from_int(int16x8_t v)
{
    float16x8_t r;
    __asm__("scvtf %0.8h, %1.8h" : "=w"(r) : "w"(v));
    return r;
}

WP_INLINE float16x8_t wp_fp16_sub(float16x8_t a, float16x8_t b)
{
    float16x8_t r;
    __asm__("fsub %0.8h, %1.8h, %2.8h" : "=w"(r) : "w"(a), "w"(b));
    return r;
}

WP_INLINE float16x8_t wp_fp16_mul(float16x8_t a, float16x8_t b)
{
    float16x8_t r;
    __asm__("fmul %0.8h, %1.8h, %2.8h" : "=w"(r) : "w"(a), "w"(b));
    return r;
}

/* Core ML's shift-scale of 8 integer codes in binary16 arithmetic: scale * (q - offset). */
WP_INLINE float16x8_t wp_shift_scale8_fp16(int16x8_t q, float16x8_t scale, float16x8_t offset, int has_offset)
{
    float16x8_t v = wp_fp16_from_int(q);
    if (has_offset) v = wp_fp16_sub(v, offset);
    return wp_fp16_mul(scale, v);
}

#endif
