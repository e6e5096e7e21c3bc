/* The column sweep of the calibration-aware encoders (GPTQ / SparseGPT; the driver:
 * weightpack/calibration/sweep.py): one block of columns, every row independent.
 *
 * Each kernel walks the block's columns left to right and, in every row, rounds the current value,
 * records the scaled error e = (w - q) / U[j, j] and subtracts e * U[j, l] from the block's later
 * columns l. W1 (rows x B, float64, C order) is overwritten with the rounded values and err with
 * the errors. Rows go in tiles of TILE, transposed into a local buffer so that the update of a
 * column is a contiguous loop over the tile's rows (every element sees the same operations in the
 * same order as row by row, so the results are the same). */
#include <string.h>

#include "encode.h"
#include "weightpack.h"

#define TILE 32

typedef struct {
    double *W1, *err;
    const double *U1;
    long long rows, width;
    double *buf; /* width x TILE: buf[l * TILE + i] = W1[r0 + i, l] */
    double e[TILE];
} sweep_t;

static int sweep_begin(sweep_t *s, double *W1, const double *U1, long long rows, long long width, double *err)
{
    s->W1 = W1;
    s->U1 = U1;
    s->err = err;
    s->rows = rows;
    s->width = width;
    s->buf = malloc(sizeof(double) * (size_t)(width ? width : 1) * TILE);
    return s->buf ? WP_OK : WP_E_MEMORY;
}

static void load(sweep_t *s, long long r0, long long m)
{
    for (long long i = 0; i < m; i++)
        for (long long l = 0; l < s->width; l++) s->buf[l * TILE + i] = s->W1[(r0 + i) * s->width + l];
}

static void store(sweep_t *s, long long r0, long long m)
{
    for (long long i = 0; i < m; i++)
        for (long long l = 0; l < s->width; l++) s->W1[(r0 + i) * s->width + l] = s->buf[l * TILE + i];
}

/* Record column j's errors and subtract them from the tile's later columns. */
static void spread(sweep_t *s, long long r0, long long m, long long j)
{
    for (long long i = 0; i < m; i++) s->err[(r0 + i) * s->width + j] = s->e[i];
    for (long long l = j + 1; l < s->width; l++) {
        double u = s->U1[j * s->width + l];
        double *row = s->buf + l * TILE;
        for (long long i = 0; i < m; i++) row[i] -= s->e[i] * u;
    }
}

/* Nearest LUT entry: codes[r, j] = first[g, #(mids[g] < w)] with g = lut_of_row[r] (mids: G x
 * (k - 1); first, values: G x k), so a value on a midpoint takes the lower entry. */
int wp_enc_sweep_lut(double *W1, const double *U1, long long rows, long long width, const double *mids,
                     const long long *first, const double *values, long long k, const long long *lut_of_row,
                     unsigned char *codes, double *err)
{
    sweep_t s;
    if (sweep_begin(&s, W1, U1, rows, width, err)) return WP_E_MEMORY;
    long long top = k - 1;
    for (long long r0 = 0; r0 < rows; r0 += TILE) {
        long long m = ll_min(TILE, rows - r0);
        load(&s, r0, m);
        for (long long j = 0; j < width; j++) {
            double d = U1[j * width + j];
            double *col = s.buf + j * TILE;
            for (long long i = 0; i < m; i++) {
                long long g = lut_of_row[r0 + i];
                double w = col[i];
                long long below = 0;
                for (long long t = 0; t < top; t++) below += mids[g * top + t] < w;
                long long c = first[g * k + below];
                codes[(r0 + i) * width + j] = (unsigned char)c;
                col[i] = values[g * k + c];
                s.e[i] = (w - col[i]) / d;
            }
            spread(&s, r0, m, j);
        }
        store(&s, r0, m);
    }
    free(s.buf);
    return WP_OK;
}

/* Linear rounding: q = clip(rint(w / s) + o, qmin, qmax), value s (q - o); scale and offset are
 * rows x blocks, column j uses block block_of_col[j]. */
int wp_enc_sweep_quant(double *W1, const double *U1, long long rows, long long width, const double *scale,
                       const double *offset, long long blocks, const long long *block_of_col, double qmin,
                       double qmax, short *codes, double *err)
{
    sweep_t s;
    if (sweep_begin(&s, W1, U1, rows, width, err)) return WP_E_MEMORY;
    for (long long r0 = 0; r0 < rows; r0 += TILE) {
        long long m = ll_min(TILE, rows - r0);
        load(&s, r0, m);
        for (long long j = 0; j < width; j++) {
            double d = U1[j * width + j];
            long long b = block_of_col[j];
            double *col = s.buf + j * TILE;
            for (long long i = 0; i < m; i++) {
                double sc = scale[(r0 + i) * blocks + b], o = offset[(r0 + i) * blocks + b];
                double w = col[i];
                double q = rint(w / sc) + o;
                if (q < qmin)
                    q = qmin;
                else if (q > qmax)
                    q = qmax;
                codes[(r0 + i) * width + j] = (short)q;
                col[i] = sc * (q - o);
                s.e[i] = (w - col[i]) / d;
            }
            spread(&s, r0, m, j);
        }
        store(&s, r0, m);
    }
    free(s.buf);
    return WP_OK;
}

/* Zero the weights keep marks 0. With m_run > 0, at every m_run-th column the n smallest
 * (w / U[l, l])^2 among the next m_run (current values; ties to the lower column) of each row
 * are marked first. */
int wp_enc_sweep_prune(double *W1, const double *U1, long long rows, long long width, unsigned char *keep, long long n,
                       long long m_run, double *err)
{
    sweep_t s;
    if (sweep_begin(&s, W1, U1, rows, width, err)) return WP_E_MEMORY;
    for (long long r0 = 0; r0 < rows; r0 += TILE) {
        long long m = ll_min(TILE, rows - r0);
        load(&s, r0, m);
        for (long long j = 0; j < width; j++) {
            if (m_run > 0 && j % m_run == 0) {
                for (long long i = 0; i < m; i++) {
                    for (long long p = 0; p < n; p++) {
                        double best = INFINITY;
                        long long arg = j;
                        for (long long l = j; l < j + m_run; l++) {
                            if (keep[(r0 + i) * width + l]) {
                                double ratio = s.buf[l * TILE + i] / U1[l * width + l];
                                double score = ratio * ratio;
                                if (score < best) {
                                    best = score;
                                    arg = l;
                                }
                            }
                        }
                        keep[(r0 + i) * width + arg] = 0;
                    }
                }
            }
            double d = U1[j * width + j];
            double *col = s.buf + j * TILE;
            for (long long i = 0; i < m; i++) {
                double w = col[i];
                if (!keep[(r0 + i) * width + j]) col[i] = 0.0;
                s.e[i] = (w - col[i]) / d;
            }
            spread(&s, r0, m, j);
        }
        store(&s, r0, m);
    }
    free(s.buf);
    return WP_OK;
}
