/*
 * numpy's pairwise summation of float32 (numpy/_core/src/umath/loops_utils.h.src): eight
 * accumulators over blocks of at most 128 elements, halves rounded down to a multiple of 8 above
 * that.  With -ffp-contract=off the results are numpy's add.reduce bit for bit, so fused kernels
 * that sum a row give the same bits as the ops they replace.  square: sum a[i] * a[i] instead.
 */
#ifndef WP_PAIRWISE_H
#define WP_PAIRWISE_H

#define WP_PAIRWISE_BLOCK 128

static float wp_pairwise_sum(const float *a, long long n, int square)
{
#define WP_TERM(i) (square ? a[i] * a[i] : a[i])
    if (n < 8) {
        float res = 0.0f;
        for (long long i = 0; i < n; i++) res += WP_TERM(i);
        return res;
    }
    if (n <= WP_PAIRWISE_BLOCK) {
        float r[8];
        for (int j = 0; j < 8; j++) r[j] = WP_TERM(j);
        long long i;
        for (i = 8; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; j++) r[j] += WP_TERM(i + j);
        float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += WP_TERM(i);
        return res;
    }
#undef WP_TERM
    long long n2 = n / 2;
    n2 -= n2 % 8;
    return wp_pairwise_sum(a, n2, square) + wp_pairwise_sum(a + n2, n - n2, square);
}

#endif
