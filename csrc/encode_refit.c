/* What gptq_palettize does beyond the column sweep (the driver: weightpack/calibration/refit.py):
 * the proxy errors of the per-row scale search and the normal matrices of the LUT refit.
 * Every kernel checks the indices it writes through (codes, groups, sort orders) and may run on
 * many threads at once (no static state). */
#include <string.h>

#include "encode.h"
#include "weightpack.h"

static inline double element(const void *x, int half, const double *table, long long i)
{
    return half ? table[((const uint16_t *)x)[i]] : (double)((const float *)x)[i];
}

/* out[r, a] (rows x candidates): sum_j importance[j] (w_rj - q)^2, q the entry of s * lut nearest
 * w_rj (the lower one on a midpoint s * mids[t]) with s = scales[r, a] > 0 and the row's LUT
 * values[g, :] (k entries, mids[g, :] their k - 1 midpoints, g = lut_of_row[r] < groups). order[r, :]
 * (int16 when order16, else int32) lists row r's columns by increasing value: the midpoints split
 * the sorted row into runs (binary search) and a run's error comes from prefix sums of d, d w and
 * d w^2, in that order of the columns. */
int wp_enc_scale_errors(const void *W, int half, const double *table, const void *order, int order16,
                        const double *importance, long long rows, long long n, const double *scales,
                        long long candidates, const double *mids, const double *values, long long groups, long long k,
                        const long long *lut_of_row, double *out)
{
    if (rows < 0 || n < 1 || candidates < 1 || k < 1 || groups < 1) return WP_E_ARG;
    for (long long r = 0; r < rows; r++)
        if (lut_of_row[r] < 0 || lut_of_row[r] >= groups) return WP_E_RANGE;
    double *xs = malloc(sizeof(double) * (size_t)n);
    double *p = malloc(sizeof(double) * 3 * (size_t)(n + 1));
    if (!xs || !p) {
        free(xs);
        free(p);
        return WP_E_MEMORY;
    }
    double *p0 = p, *p1 = p + n + 1, *p2 = p + 2 * (n + 1);
    int status = WP_OK;
    for (long long r = 0; r < rows && status == WP_OK; r++) {
        p0[0] = p1[0] = p2[0] = 0.0;
        for (long long i = 0; i < n; i++) {
            long long j = order16 ? ((const int16_t *)order)[r * n + i] : ((const int32_t *)order)[r * n + i];
            if (j < 0 || j >= n) {
                status = WP_E_RANGE;
                break;
            }
            double v = element(W, half, table, r * n + j), d = importance[j];
            xs[i] = v;
            p0[i + 1] = p0[i] + d;
            p1[i + 1] = p1[i] + d * v;
            p2[i + 1] = p2[i] + d * v * v;
        }
        if (status != WP_OK) break;
        const double *m = mids + lut_of_row[r] * (k - 1), *e = values + lut_of_row[r] * k;
        for (long long a = 0; a < candidates; a++) {
            double s = scales[r * candidates + a], total = 0.0;
            long long lo = 0;
            for (long long t = 0; t < k; t++) {
                long long hi = t == k - 1 ? n : wp_search_right(xs, n, s * m[t]);
                if (hi > lo) {
                    double c = s * e[t];
                    total += (p2[hi] - p2[lo]) - 2.0 * c * (p1[hi] - p1[lo]) + c * c * (p0[hi] - p0[lo]);
                    lo = hi;
                }
            }
            out[r * candidates + a] = py_max(total, 0.0);
        }
    }
    free(xs);
    free(p);
    return status;
}

/* T[i, a, :nb] += H[j, c0:c0 + nb] for every row i of the tile, a its code at column j: the inner
 * loop of wp_enc_lut_gram, in H's precision (T: m x k x band). */
#define GRAM_ACCUMULATE(NAME, REAL)                                                                        \
    static void NAME(REAL *restrict T, const REAL *restrict H, const unsigned char *codes, long long n,     \
                     long long m, long long k, long long band, long long c0, long long nb)                  \
    {                                                                                                      \
        for (long long j = 0; j < n; j++) {                                                                \
            const REAL *restrict h = H + j * n + c0;                                                       \
            for (long long i = 0; i < m; i++) {                                                            \
                REAL *restrict t = T + (i * k + codes[i * n + j]) * band;                                  \
                for (long long l = 0; l < nb; l++) t[l] += h[l];                                           \
            }                                                                                              \
        }                                                                                                  \
    }
GRAM_ACCUMULATE(accumulate64, double)
GRAM_ACCUMULATE(accumulate32, float)

/* out[g, a, b] += row_weight[r] sum_{j, l} [codes[r, j] = a] H[j, l] [codes[r, l] = b] over the
 * rows r of group g = lut_of_row[r] (out: groups x k x k, float64; H: n x n symmetric, double, or
 * float when h32). For a tile of rows and a band of columns, T[i, a, :] = sum over the row's
 * columns j of code a of H[j, band], in H's precision (each band of an H row is read once per
 * tile), then T is gathered by the codes of the band. */
int wp_enc_lut_gram(const unsigned char *codes, long long rows, long long n, const void *H, int h32,
                    const double *row_weight, const long long *lut_of_row, long long groups, long long k,
                    long long tile, long long band, double *out)
{
    if (rows < 0 || n < 1 || k < 1 || k > 256 || tile < 1 || band < 1 || groups < 1) return WP_E_ARG;
    for (long long i = 0; i < rows * n; i++)
        if (codes[i] >= k) return WP_E_RANGE;
    for (long long r = 0; r < rows; r++)
        if (lut_of_row[r] < 0 || lut_of_row[r] >= groups) return WP_E_RANGE;
    band = ll_min(band, n);
    size_t size = h32 ? sizeof(float) : sizeof(double);
    void *T = malloc(size * (size_t)(tile * k * band));
    if (!T) return WP_E_MEMORY;
    for (long long r0 = 0; r0 < rows; r0 += tile) {
        long long m = ll_min(tile, rows - r0);
        const unsigned char *tile_codes = codes + r0 * n;
        for (long long c0 = 0; c0 < n; c0 += band) {
            long long nb = ll_min(band, n - c0);
            memset(T, 0, size * (size_t)(m * k * band));
            if (h32)
                accumulate32(T, H, tile_codes, n, m, k, band, c0, nb);
            else
                accumulate64(T, H, tile_codes, n, m, k, band, c0, nb);
            for (long long i = 0; i < m; i++) {
                double *o = out + lut_of_row[r0 + i] * k * k, w = row_weight[r0 + i];
                const unsigned char *c = tile_codes + i * n + c0;
                for (long long a = 0; a < k; a++) {
                    long long at = (i * k + a) * band;
                    if (h32) {
                        const float *t = (const float *)T + at;
                        for (long long l = 0; l < nb; l++) o[a * k + c[l]] += w * (double)t[l];
                    } else {
                        const double *t = (const double *)T + at;
                        for (long long l = 0; l < nb; l++) o[a * k + c[l]] += w * t[l];
                    }
                }
            }
        }
    }
    free(T);
    return WP_OK;
}
