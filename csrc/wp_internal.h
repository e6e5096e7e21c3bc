/* Shared helpers of the C kernels (not seen by cffi). */
#ifndef WP_INTERNAL_H
#define WP_INTERNAL_H

#include <stdint.h>
#include <string.h>

#define WP_OK 0
#define WP_E_NBITS (-1)
#define WP_E_SIZE (-2)
#define WP_E_RANGE (-3)
#define WP_E_PADDING (-4)
#define WP_E_ARG (-5)
#define WP_NOT_AVAILABLE (-6) /* the CPU level in force lacks this kernel */
#define WP_E_NONFINITE (-7)   /* the activations hold NaN or infinity */
#define WP_E_MEMORY (-8)      /* a scratch allocation failed */
#define WP_NOT_COVERED 1      /* (internal) a SIMD path declines the case: a lower one runs */

static inline int wp_valid_nbits(int nbits)
{
    return nbits == 1 || nbits == 2 || nbits == 3 || nbits == 4 || nbits == 6 || nbits == 8;
}

/* Weight streams are read once, row after row. The hardware prefetchers stop at every 4 KB page
   and the kernels do enough arithmetic per cache line that a fresh miss then stalls them, so
   each kernel also asks for the line this far ahead of where it reads (a hint: it never faults,
   even past the end of a buffer). 2 KB measured best of 256 B - 8 KB on the 4-row kernels, and
   of 1-4 KB on two threads (-DWP_PREFETCH_BYTES=N to try others). */
#ifndef WP_PREFETCH_BYTES
#define WP_PREFETCH_BYTES 2048
#endif
#define WP_PREFETCH(p) __builtin_prefetch((const char *)(p) + WP_PREFETCH_BYTES, 0, 3)

/* Bytes of an n-bit stream of count elements, or -1 on overflow / bad arguments. */
static inline long long wp_stream_bytes(long long count, int nbits)
{
    if (count < 0 || nbits < 1 || nbits > 8 || count > (INT64_MAX - 7) / 8) return -1;
    return (count * nbits + 7) / 8;
}

/* Element k of an LSB-first n-bit stream (the caller guarantees it lies inside the stream). */
static inline unsigned wp_read_bits(const uint8_t *stream, long long k, int nbits)
{
    long long bit = k * nbits;
    const uint8_t *p = stream + (bit >> 3);
    unsigned shift = (unsigned)(bit & 7);
    unsigned v = p[0];
    if (shift + (unsigned)nbits > 8) v |= (unsigned)p[1] << 8;
    return (v >> shift) & ((1u << nbits) - 1u);
}

/* Whether every value is finite (exponent bits not all ones); a loop the compiler vectorizes. */
static inline int wp_all_finite(const float *x, long long n)
{
    uint32_t any = 0;
    for (long long i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, x + i, 4);
        any |= (bits & 0x7f800000u) == 0x7f800000u;
    }
    return !any;
}

static inline int wp_mask_bit(const uint8_t *mask, long long e)
{
    return (mask[e >> 3] >> (e & 7)) & 1;
}

/* IEEE binary16 <-> binary32, exact and round-to-nearest-even (inputs are finite here). */
static inline float wp_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0) {
        if (mantissa == 0) {
            bits = sign;
        } else { /* subnormal: value = mantissa * 2^-24; normalise */
            int shift = 0;
            while (!(mantissa & 0x400u)) {
                mantissa <<= 1;
                shift++;
            }
            bits = sign | ((uint32_t)(113 - shift) << 23) | ((mantissa & 0x3ffu) << 13);
        }
    } else if (exponent == 31) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t wp_float_to_half(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, 4);
    uint32_t sign = (bits >> 16) & 0x8000u;
    bits &= 0x7fffffffu;
    if (bits >= 0x47800000u) /* >= 65536 (or inf / nan): inf, nan stays nan */
        return (uint16_t)(sign | (bits > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (bits < 0x38800000u) { /* below 2^-14: subnormal or zero; let the FPU round at 2^-24 */
        const uint32_t magic_bits = 126u << 23; /* 0.5: its ulp is 2^-24 */
        float magic, a;
        memcpy(&magic, &magic_bits, 4);
        memcpy(&a, &bits, 4);
        a += magic;
        uint32_t r;
        memcpy(&r, &a, 4);
        return (uint16_t)(sign | (r - magic_bits));
    }
    uint32_t odd = (bits >> 13) & 1u;
    bits += 0xc8000fffu + odd; /* rebias the exponent (-112 << 23) and round half to even */
    return (uint16_t)(sign | (bits >> 13));
}

/* Round a float to the nearest binary16 value and return it as a float. */
static inline float wp_round_half(float f)
{
    return wp_half_to_float(wp_float_to_half(f));
}

/* Core ML's blockwise shift-scale of one code q with table t: scale * (q - offset), each step
   rounded to the scale's precision (binary16 when half_math). */
static inline float wp_shift_scale(float q, const void *scale, const void *offset, long long t, int half_math)
{
    if (half_math) {
        const float s = wp_half_to_float(((const uint16_t *)scale)[t]);
        if (offset) q = wp_round_half(q - wp_half_to_float(((const uint16_t *)offset)[t]));
        return wp_round_half(s * q);
    }
    if (offset) q = q - ((const float *)offset)[t];
    return ((const float *)scale)[t] * q;
}

/* An n-bit code as a signed or unsigned integer value. */
static inline int wp_code_value(unsigned code, int nbits, int is_signed)
{
    return (is_signed && (code >> (nbits - 1))) ? (int)code - (1 << nbits) : (int)code;
}

#endif
