/*
 * Rotary position embeddings as converters write them in ML programs, for sin / cos vectors over
 * the last axis (one position: a decoding step):
 *
 *   y = x * cos + concat(x[..., h:] * -1, x[..., :h]) * sin        (cos optional: y = x + ...)
 *
 * Each product and the sum rounded to float32 as numpy rounds them (x * -1 is the same multiply
 * numpy does, NaN signs included); -ffp-contract=off keeps the product and the sum apart.
 */
#include "weightpack.h"
#include "wp_internal.h"

int wp_rotary_f32(const float *x, long long x_len, long long rows, long long width, const float *sin_v, long long sin_len,
                  const float *cos_v, long long cos_len, float *y, long long y_len)
{
    if (rows < 0 || width < 2 || width % 2 || rows > y_len / width || y_len != rows * width || x_len != y_len) return WP_E_SIZE;
    if (sin_len != width || (cos_v && cos_len != width)) return WP_E_SIZE;
    const long long half = width / 2;
    for (long long row = 0; row < rows; row++) {
        const float *xr = x + row * width;
        float *yr = y + row * width;
        for (long long j = 0; j < half; j++) {
            const float base = cos_v ? xr[j] * cos_v[j] : xr[j];
            yr[j] = base + (xr[j + half] * -1.0f) * sin_v[j];
        }
        for (long long j = half; j < width; j++) {
            const float base = cos_v ? xr[j] * cos_v[j] : xr[j];
            yr[j] = base + xr[j - half] * sin_v[j];
        }
    }
    return WP_OK;
}
