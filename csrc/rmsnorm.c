/*
 * RMSNorm as converters write it in ML programs, one pass per row instead of six numpy calls:
 *
 *   pow(x, 2) -> reduce_mean(last axis) -> add(eps_add) -> rsqrt(eps_rsqrt) -> mul(x, .) -> mul(., w)
 *
 * y[i] = (x[i] * r) * w[i] with r = 1 / sqrt((sum(x*x) / n + eps_add) + eps_rsqrt), every
 * operation rounded to float32 in the order numpy evaluates the ops, and the sum numpy's own
 * pairwise summation (numpy/_core/src/umath/loops_utils.h: eight accumulators over blocks of at
 * most 128 elements, halves rounded down to a multiple of 8 above that).  The build has
 * -ffp-contract=off, so x*x + acc is never contracted into an FMA: the result is bit-identical
 * to numpy's (tests/test_program_fusion.py checks it on every length up to 600 and beyond).
 */
#include "weightpack.h"
#include "wp_internal.h"

#include <math.h>

#define PAIRWISE_BLOCK 128

static float sum_of_squares(const float *a, long long n)
{
    if (n < 8) {
        float res = 0.0f;
        for (long long i = 0; i < n; i++) res += a[i] * a[i];
        return res;
    }
    if (n <= PAIRWISE_BLOCK) {
        float r[8];
        for (int j = 0; j < 8; j++) r[j] = a[j] * a[j];
        long long i;
        for (i = 8; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; j++) r[j] += a[i + j] * a[i + j];
        float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i] * a[i];
        return res;
    }
    long long n2 = n / 2;
    n2 -= n2 % 8;
    return sum_of_squares(a, n2) + sum_of_squares(a + n2, n - n2);
}

int wp_rmsnorm_f32(const float *x, long long rows, long long n, float eps_add, float eps_rsqrt,
                   const float *w, long long w_len, float *y, long long y_len)
{
    if (rows < 0 || n < 1 || w_len != n || rows > y_len / n || y_len != rows * n) return WP_E_SIZE;
    const float count = (float)n;
    for (long long row = 0; row < rows; row++) {
        const float *xr = x + row * n;
        float *yr = y + row * n;
        const float mean = (0.0f + sum_of_squares(xr, n)) / count;
        const float r = 1.0f / sqrtf((mean + eps_add) + eps_rsqrt);
        for (long long i = 0; i < n; i++) yr[i] = (xr[i] * r) * w[i];
    }
    return WP_OK;
}
