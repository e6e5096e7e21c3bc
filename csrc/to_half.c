/*
 * float32 -> binary16, bit for bit numpy's cast (a program's fp16 outputs; numpy's own cast runs
 * one element at a time): round to nearest even, overflow to infinity, subnormals exact, and a
 * NaN keeps its sign and the top ten bits of its payload (0x7c00 + (payload >> 13), made odd
 * when that would read as infinity), as numpy's npy_floatbits_to_halfbits does.  x86 with F16C
 * converts eight at a time (the hardware rounds the same way), blocks holding a NaN go through
 * the scalar code.
 */
#include "wp_internal.h"
#include "wp_target.h"
#include "weightpack.h"

#include <stdint.h>
#include <string.h>

static inline uint16_t to_half(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu)) {
        uint16_t h = (uint16_t)(0x7c00u + ((bits & 0x007fffffu) >> 13));
        if (h == 0x7c00u) h++;
        return (uint16_t)(((bits >> 16) & 0x8000u) | h);
    }
    return wp_float_to_half(f);
}

static void to_half_scalar(const float *x, uint16_t *y, long long n)
{
    for (long long i = 0; i < n; i++) y[i] = to_half(x[i]);
}

#if WP_X86
WP_TARGET_PUSH("avx2,f16c")
#include <immintrin.h>

static void to_half_f16c(const float *x, uint16_t *y, long long n)
{
    long long i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)))
            to_half_scalar(x + i, y + i, 8);
        else
            _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    to_half_scalar(x + i, y + i, n - i);
}
WP_TARGET_POP()
#endif

int wp_f32_to_f16(const float *x, unsigned short *y, long long n)
{
    if (n < 0) return WP_E_SIZE;
#if WP_X86
    if (wp_simd_level() >= WP_LEVEL_AVX2) {
        to_half_f16c(x, y, n);
        return WP_OK;
    }
#endif
    to_half_scalar(x, y, n);
    return WP_OK;
}
