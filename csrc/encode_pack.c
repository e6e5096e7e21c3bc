/* Packing the encoders' uint8 codes into Core ML's LSB-first n-bit streams, and picking the codes
 * at a mask's set bits (weightpack/compress/packing.py drives them, in parallel chunks). */
#include "encode.h"
#include "weightpack.h"

/* Pack codes[lo:hi] (each < 2^nbits; lo a multiple of 8) into out from byte lo * nbits / 8. */
int wp_enc_pack_codes(const unsigned char *codes, int nbits, long long lo, long long hi, unsigned char *out)
{
    if (nbits < 1 || nbits > 8 || lo % 8) return WP_E_ARG;
    long long j = lo * nbits / 8;
    uint64_t acc = 0;
    int filled = 0;
    for (long long i = lo; i < hi; i++) {
        acc |= (uint64_t)codes[i] << filled;
        filled += nbits;
        while (filled >= 8) {
            out[j++] = (unsigned char)(acc & 0xFFu);
            acc >>= 8;
            filled -= 8;
        }
    }
    if (filled > 0) out[j] = (unsigned char)(acc & 0xFFu);
    return WP_OK;
}

/* The codes at the set bits of a packed mask, in order (``count`` = its popcount). */
int wp_enc_select_codes(const unsigned char *codes, const unsigned char *mask, long long mask_len, unsigned char *out,
                        long long count)
{
    long long j = 0;
    for (long long b = 0; b < mask_len; b++) {
        for (int bit = 0; bit < 8; bit++) {
            if (!((mask[b] >> bit) & 1)) continue;
            if (j == count) return WP_E_SIZE;
            out[j++] = codes[8 * b + bit];
        }
    }
    return j == count ? WP_OK : WP_E_SIZE;
}
