/*
 * y[i] = x[index[i]]: the executor's chains of data movements (transpose / reshape / tile) run as
 * one gather through an index map built at load.  Every index is checked against x_len.
 */
#include "weightpack.h"
#include "wp_internal.h"

int wp_gather_f32(const float *x, long long x_len, const long long *index, long long n, float *y)
{
    if (x_len < 0 || n < 0) return WP_E_SIZE;
    for (long long i = 0; i < n; i++)
        if (index[i] < 0 || index[i] >= x_len) return WP_E_RANGE;
    for (long long i = 0; i < n; i++) y[i] = x[index[i]];
    return WP_OK;
}
