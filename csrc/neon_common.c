/* Shuffle tables of the NEON kernels (neon_common.h), filled once when the library loads. */
#include "wp_target.h"
#if WP_ARM64
#include "neon_common.h"

uint8_t wp_neon_unpack_index[9][8][16];
int16_t wp_neon_unpack_shift[9][8][8];
uint64_t wp_neon_expand[256];
uint8_t wp_neon_popcount[256];

__attribute__((constructor)) static void fill_tables(void)
{
    for (int n = 1; n <= 8; n++)
        for (int s = 0; s < 8; s++)
            for (int i = 0; i < 8; i++) {
                const int bit = s + i * n;
                wp_neon_unpack_index[n][s][2 * i] = (uint8_t)(bit >> 3);
                wp_neon_unpack_index[n][s][2 * i + 1] = (uint8_t)((bit >> 3) + 1);
                wp_neon_unpack_shift[n][s][i] = (int16_t)-(bit & 7);
            }
    for (int m = 0; m < 256; m++) {
        uint64_t pattern = 0;
        int rank = 0;
        for (int i = 0; i < 8; i++) pattern |= (uint64_t)((m >> i) & 1 ? rank++ : 0xff) << (8 * i);
        wp_neon_expand[m] = pattern;
        wp_neon_popcount[m] = (uint8_t)rank;
    }
}

#endif
