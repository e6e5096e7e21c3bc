/*
 * n-bit streams in Core ML's order: element i occupies stream bits [i*n, (i+1)*n), stream bit k is
 * bit (k % 8) of byte k / 8 (LSB-first).  Padding bits after the last element are zero.
 * Scalar code; the caller (weightpack/bits.py) validates arguments first, and these functions check
 * again every size that could make them read or write out of bounds.
 */
#include "wp_internal.h"

int wp_packed_nbytes(long long count, int nbits, long long *out_nbytes)
{
    if (!wp_valid_nbits(nbits)) return WP_E_NBITS;
    if (count < 0 || (unsigned long long)count > (UINT64_MAX - 7) / 8) return WP_E_SIZE;
    *out_nbytes = (long long)(((unsigned long long)count * (unsigned)nbits + 7) / 8);
    return WP_OK;
}

int wp_pack_bits(const unsigned char *values, long long count, int nbits,
                 unsigned char *out, long long out_len)
{
    long long need;
    int rc = wp_packed_nbytes(count, nbits, &need);
    if (rc) return rc;
    if (out_len != need) return WP_E_SIZE;
    const unsigned limit = 1u << nbits;
    for (long long i = 0; i < count; i++)
        if (values[i] >= limit) return WP_E_RANGE;
    if (nbits == 8) {
        if (count) memcpy(out, values, (size_t)count);
        return WP_OK;
    }
    /* A 64-bit accumulator collects elements LSB-first and flushes whole bytes. */
    uint64_t acc = 0;
    int filled = 0;
    long long o = 0;
    for (long long i = 0; i < count; i++) {
        acc |= (uint64_t)values[i] << filled;
        filled += nbits;
        while (filled >= 8) {
            out[o++] = (unsigned char)acc;
            acc >>= 8;
            filled -= 8;
        }
    }
    if (filled > 0) out[o++] = (unsigned char)acc;
    return o == need ? WP_OK : WP_E_SIZE;
}

int wp_unpack_bits(const unsigned char *packed, long long packed_len, long long count,
                   int nbits, int sign_extend, unsigned char *out, long long out_len)
{
    long long need;
    int rc = wp_packed_nbytes(count, nbits, &need);
    if (rc) return rc;
    if (packed_len != need || out_len != count) return WP_E_SIZE;
    const long long used_bits = count * nbits;
    if (used_bits % 8) {
        unsigned pad_mask = 0xFFu << (used_bits % 8);
        if (packed[need - 1] & pad_mask) return WP_E_PADDING;
    }
    const unsigned mask = (1u << nbits) - 1u;
    const unsigned sign_bit = 1u << (nbits - 1);
    if (nbits == 8) {
        if (count) memcpy(out, packed, (size_t)count);
        return WP_OK;
    }
    uint64_t acc = 0;
    int filled = 0;
    long long p = 0;
    for (long long i = 0; i < count; i++) {
        if (filled < nbits) {
            acc |= (uint64_t)packed[p++] << filled;
            filled += 8;
        }
        unsigned v = (unsigned)acc & mask;
        acc >>= nbits;
        filled -= nbits;
        if (sign_extend && (v & sign_bit)) v |= ~mask;
        out[i] = (unsigned char)v;
    }
    return WP_OK;
}
