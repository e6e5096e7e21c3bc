/*
 * Helpers shared by the AVX-512 kernel files (include after their WP_TARGET_PUSH(WP_AVX512_FEATURES)).
 *
 * Codes of any width are brought to one byte each: the n*8 bytes behind 64 codes are spread one
 * qword per 8 codes (vpermb) and each code is cut out at its bit offset (vpmultishiftqb).  Codes
 * then look up the low and high bytes of binary16 table values (vpermb on 64-byte planes, or
 * vpermi2b pairs for 256 entries) and the planes interleave into binary16 words.
 */
#ifndef WP_AVX512_COMMON_H
#define WP_AVX512_COMMON_H

#include <immintrin.h>
#include <stdint.h>

#include "wp_target.h"

#define RNE (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

WP_INLINE __m512 round_half(__m512 v) { return _mm512_cvtph_ps(_mm512_cvtps_ph(v, RNE)); }

/* 128-bit lane q of v (the extract instruction needs an immediate, whatever the optimisation level). */
WP_INLINE __m128i lane128(__m512i v, int q)
{
    switch (q) {
    case 0: return _mm512_extracti32x4_epi32(v, 0);
    case 1: return _mm512_extracti32x4_epi32(v, 1);
    case 2: return _mm512_extracti32x4_epi32(v, 2);
    default: return _mm512_extracti32x4_epi32(v, 3);
    }
}

/* SPREAD[n]: byte q*8+i of the spread takes source byte q*n + i (8 codes of n bits per qword). */
static const uint8_t SPREAD[9][64] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 5, 6, 7, 8, 2, 3, 4, 5, 6, 7, 8, 9, 3, 4, 5, 6, 7, 8, 9, 10, 4, 5, 6, 7, 8, 9, 10, 11, 5, 6, 7, 8, 9, 10, 11, 12, 6, 7, 8, 9, 10, 11, 12, 13, 7, 8, 9, 10, 11, 12, 13, 14},
    {0, 1, 2, 3, 4, 5, 6, 7, 2, 3, 4, 5, 6, 7, 8, 9, 4, 5, 6, 7, 8, 9, 10, 11, 6, 7, 8, 9, 10, 11, 12, 13, 8, 9, 10, 11, 12, 13, 14, 15, 10, 11, 12, 13, 14, 15, 16, 17, 12, 13, 14, 15, 16, 17, 18, 19, 14, 15, 16, 17, 18, 19, 20, 21},
    {0, 1, 2, 3, 4, 5, 6, 7, 3, 4, 5, 6, 7, 8, 9, 10, 6, 7, 8, 9, 10, 11, 12, 13, 9, 10, 11, 12, 13, 14, 15, 16, 12, 13, 14, 15, 16, 17, 18, 19, 15, 16, 17, 18, 19, 20, 21, 22, 18, 19, 20, 21, 22, 23, 24, 25, 21, 22, 23, 24, 25, 26, 27, 28},
    {0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7, 8, 9, 10, 11, 8, 9, 10, 11, 12, 13, 14, 15, 12, 13, 14, 15, 16, 17, 18, 19, 16, 17, 18, 19, 20, 21, 22, 23, 20, 21, 22, 23, 24, 25, 26, 27, 24, 25, 26, 27, 28, 29, 30, 31, 28, 29, 30, 31, 32, 33, 34, 35},
    {0, 1, 2, 3, 4, 5, 6, 7, 5, 6, 7, 8, 9, 10, 11, 12, 10, 11, 12, 13, 14, 15, 16, 17, 15, 16, 17, 18, 19, 20, 21, 22, 20, 21, 22, 23, 24, 25, 26, 27, 25, 26, 27, 28, 29, 30, 31, 32, 30, 31, 32, 33, 34, 35, 36, 37, 35, 36, 37, 38, 39, 40, 41, 42},
    {0, 1, 2, 3, 4, 5, 6, 7, 6, 7, 8, 9, 10, 11, 12, 13, 12, 13, 14, 15, 16, 17, 18, 19, 18, 19, 20, 21, 22, 23, 24, 25, 24, 25, 26, 27, 28, 29, 30, 31, 30, 31, 32, 33, 34, 35, 36, 37, 36, 37, 38, 39, 40, 41, 42, 43, 42, 43, 44, 45, 46, 47, 48, 49},
    {0, 1, 2, 3, 4, 5, 6, 7, 7, 8, 9, 10, 11, 12, 13, 14, 14, 15, 16, 17, 18, 19, 20, 21, 21, 22, 23, 24, 25, 26, 27, 28, 28, 29, 30, 31, 32, 33, 34, 35, 35, 36, 37, 38, 39, 40, 41, 42, 42, 43, 44, 45, 46, 47, 48, 49, 49, 50, 51, 52, 53, 54, 55, 56},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63}};

/* Codes k .. k+cnt-1 (cnt <= 64) of an n-bit stream, one per byte (bytes past cnt undefined). */
WP_INLINE __m512i load_codes64(const uint8_t *stream, long long k, int n, int cnt, __m512i spread)
{
    if (n == 8) return _mm512_maskz_loadu_epi8(cnt >= 64 ? ~0ULL : (1ULL << cnt) - 1, stream + k);
    const long long bit = k * n;
    const unsigned s = (unsigned)(bit & 7), nbytes = (s + (unsigned)(cnt * n) + 7) / 8;
    const __m512i raw = _mm512_maskz_loadu_epi8(nbytes >= 64 ? ~0ULL : (1ULL << nbytes) - 1, stream + (bit >> 3));
    /* byte i of the multishift control: bit offset s + i*n of code i in its qword (<= 7 + 7*7: the
       byte sums carry into nothing) */
    const uint64_t shifts = 0x0101010101010101ULL * s + 0x0706050403020100ULL * (unsigned)n;
    const __m512i codes = _mm512_multishift_epi64_epi8(_mm512_set1_epi64((long long)shifts), _mm512_permutexvar_epi8(spread, raw));
    return _mm512_and_si512(codes, _mm512_set1_epi8((char)((1 << n) - 1)));
}

typedef struct { __m512i lo[4], hi[4]; } half_planes; /* 64 entries in [0]; 256 entries in [0..3] */

/* Look up 64 codes in binary16 planes; lanes outside keep are zero (+0.0). */
WP_INLINE void plane_lookup(const half_planes *p, __m512i codes, __mmask64 keep, int n, __m512i *lo, __m512i *hi)
{
    if (n < 8) {
        *lo = _mm512_maskz_permutexvar_epi8(keep, codes, p->lo[0]);
        *hi = _mm512_maskz_permutexvar_epi8(keep, codes, p->hi[0]);
        return;
    }
    const __mmask64 upper = _mm512_movepi8_mask(codes); /* code >= 128 */
    *lo = _mm512_or_si512(_mm512_maskz_permutex2var_epi8(keep & ~upper, p->lo[0], codes, p->lo[1]),
                          _mm512_maskz_permutex2var_epi8(keep & upper, p->lo[2], codes, p->lo[3]));
    *hi = _mm512_or_si512(_mm512_maskz_permutex2var_epi8(keep & ~upper, p->hi[0], codes, p->hi[1]),
                          _mm512_maskz_permutex2var_epi8(keep & upper, p->hi[2], codes, p->hi[3]));
}

/* INTERLEAVE[h]: binary16 word e of half h = (low plane byte 32h+e, high plane byte 32h+e). */
static const uint8_t INTERLEAVE[2][64] = {
    {0, 64, 1, 65, 2, 66, 3, 67, 4, 68, 5, 69, 6, 70, 7, 71, 8, 72, 9, 73, 10, 74, 11, 75, 12, 76, 13, 77, 14, 78, 15, 79, 16, 80, 17, 81, 18, 82, 19, 83, 20, 84, 21, 85, 22, 86, 23, 87, 24, 88, 25, 89, 26, 90, 27, 91, 28, 92, 29, 93, 30, 94, 31, 95},
    {32, 96, 33, 97, 34, 98, 35, 99, 36, 100, 37, 101, 38, 102, 39, 103, 40, 104, 41, 105, 42, 106, 43, 107, 44, 108, 45, 109, 46, 110, 47, 111, 48, 112, 49, 113, 50, 114, 51, 115, 52, 116, 53, 117, 54, 118, 55, 119, 56, 120, 57, 121, 58, 122, 59, 123, 60, 124, 61, 125, 62, 126, 63, 127}};

/* 64 float weights (in column order) from low/high byte planes of binary16 values. */
WP_INLINE void planes_to_floats(__m512i lo, __m512i hi, __m512i inter0, __m512i inter1, __m512 w[4])
{
    const __m512i a = _mm512_permutex2var_epi8(lo, inter0, hi), b = _mm512_permutex2var_epi8(lo, inter1, hi);
    w[0] = _mm512_cvtph_ps(_mm512_castsi512_si256(a));
    w[1] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(a, 1));
    w[2] = _mm512_cvtph_ps(_mm512_castsi512_si256(b));
    w[3] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(b, 1));
}


#endif
