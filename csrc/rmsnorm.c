/*
 * RMSNorm as converters write it in ML programs, one pass per row instead of six numpy calls:
 *
 *   pow(x, 2) -> reduce_mean(last axis) -> add(eps_add) -> rsqrt(eps_rsqrt) -> mul(x, .) -> mul(., w)
 *
 * y[i] = (x[i] * r) * w[i] with r = 1 / sqrt((sum(x*x) / n + eps_add) + eps_rsqrt), every
 * operation rounded to float32 in the order numpy evaluates the ops, and the sum numpy's own
 * pairwise summation (pairwise.h): bit-identical to numpy's (tests/test_program_fusion.py checks
 * it on every length up to 700 and beyond).
 */
#include "weightpack.h"
#include "wp_internal.h"

#include <math.h>

#include "pairwise.h"

int wp_rmsnorm_f32(const float *x, long long x_len, long long rows, long long n, float eps_add, float eps_rsqrt,
                   const float *w, long long w_len, float *y, long long y_len)
{
    if (rows < 0 || n < 1 || w_len != n || rows > y_len / n || y_len != rows * n || x_len != y_len) return WP_E_SIZE;
    const float count = (float)n;
    for (long long row = 0; row < rows; row++) {
        const float *xr = x + row * n;
        float *yr = y + row * n;
        const float mean = (0.0f + wp_pairwise_sum(xr, n, 1)) / count;
        const float r = 1.0f / sqrtf((mean + eps_add) + eps_rsqrt);
        for (long long i = 0; i < n; i++) yr[i] = (xr[i] * r) * w[i];
    }
    return WP_OK;
}

/* The residual add before the norm, fused: s = a + b (stored, the residual stream goes on), then
 * y = rmsnorm(s) as above. */
int wp_add_rmsnorm_f32(const float *a, const float *b, float *s, long long s_len, long long rows, long long n, float eps_add,
                       float eps_rsqrt, const float *w, long long w_len, float *y, long long y_len)
{
    if (s_len < 0 || s_len != y_len) return WP_E_SIZE;
    for (long long i = 0; i < s_len; i++) s[i] = a[i] + b[i];
    return wp_rmsnorm_f32(s, s_len, rows, n, eps_add, eps_rsqrt, w, w_len, y, y_len);
}
