/*
 * The two passes of a softmax over rows that are not exp, in place, bit for bit numpy's calls in
 * the executor's scaled_dot_product_attention (exp stays numpy's, between them):
 *
 *   shift: x -= max(x)             (np.maximum.reduce, np.subtract)
 *   scale: x /= sum(x)             (np.add.reduce: numpy's pairwise sum, pairwise.h; np.divide)
 *
 * The maximum is exact whatever the order; a NaN anywhere makes it NaN, as numpy's does (which
 * zero sign it takes does not reach the result: x - (+0) == x - (-0) for x != 0, and exp(+-0) ==
 * 1).
 */
#include "weightpack.h"
#include "wp_internal.h"

#include "pairwise.h"

int wp_softmax_shift_f32(float *x, long long rows, long long n)
{
    if (rows < 0 || n < 1) return WP_E_SIZE;
    for (long long row = 0; row < rows; row++) {
        float *xr = x + row * n;
        float top = xr[0];
        for (long long i = 1; i < n; i++) {
            const float v = xr[i];
            if (v != v || top != top) top = v != v ? v : top;
            else if (v > top) top = v;
        }
        for (long long i = 0; i < n; i++) xr[i] = xr[i] - top;
    }
    return WP_OK;
}

int wp_softmax_scale_f32(float *x, long long rows, long long n)
{
    if (rows < 0 || n < 1) return WP_E_SIZE;
    for (long long row = 0; row < rows; row++) {
        float *xr = x + row * n;
        const float total = 0.0f + wp_pairwise_sum(xr, n, 0);
        for (long long i = 0; i < n; i++) xr[i] = xr[i] / total;
    }
    return WP_OK;
}
