/* Linear quantization on a block-major view: x2[b] holds block b's L elements (the algorithm and
 * its Python driver: weightpack/compress/quantization.py). float16 data come as their bits with
 * the float64 value of every pattern in ``table``; every quotient and error is float64, so the
 * results do not depend on how a compiler rounds float16. */
#include <math.h>

#include "encode.h"
#include "weightpack.h"

typedef struct {
    const void *x;
    int half;
    const double *table;
    long long length; /* elements per block */
} blocks_t;

static inline double element(const blocks_t *v, long long b, long long j)
{
    long long i = b * v->length + j;
    return v->half ? v->table[((const uint16_t *)v->x)[i]] : (double)((const float *)v->x)[i];
}

static inline double quantized(double v, double scale, double offset, double qmin, double qmax)
{
    double q = rint(v / scale) + offset;
    return py_min(py_max(q, qmin), qmax);
}

/* sum imp * (x - scale * (q - offset))^2 over block b, q from (scale, offset). */
static double block_error(const blocks_t *v, const float *imp, long long b, double scale, double offset, double qmin,
                          double qmax)
{
    double err = 0.0;
    for (long long j = 0; j < v->length; j++) {
        double x = element(v, b, j);
        double q = quantized(x, scale, offset, qmin, qmax);
        double e = x - scale * (q - offset);
        double w = imp ? (double)imp[b * v->length + j] : 1.0;
        err += w * e * e;
    }
    return err;
}

/* Least-squares (scale, offset) for block b given the q of (scale, offset): x ~ s (q - z), z fixed
 * unless fit_offset (then real-valued). Unchanged where the fit is degenerate. */
static void least_squares(const blocks_t *v, const float *imp, long long b, double scale, double offset, double qmin,
                          double qmax, int fit_offset, double *s_out, double *z_out)
{
    double sw = 0.0, sq = 0.0, sx = 0.0, sqq = 0.0, sqx = 0.0;
    for (long long j = 0; j < v->length; j++) {
        double x = element(v, b, j);
        double q = quantized(x, scale, offset, qmin, qmax);
        double w = imp ? (double)imp[b * v->length + j] : 1.0;
        if (fit_offset) {
            sw += w;
            sq += w * q;
            sx += w * x;
            sqq += w * q * q;
            sqx += w * q * x;
        } else {
            double d = q - offset;
            sqq += w * d * d;
            sqx += w * d * x;
        }
    }
    *s_out = scale;
    *z_out = offset;
    if (!fit_offset) {
        if (sqq > 0.0) *s_out = sqx / sqq;
        return;
    }
    double den = sw * sqq - sq * sq;
    if (!(den > 0.0 && sw > 0.0)) return;
    double a = (sw * sqx - sq * sx) / den; /* x ~ a q + c */
    double c = (sx - a * sq) / sw;
    if (!(a > 0.0)) return;
    *s_out = a;
    *z_out = -c / a;
}

/* s rounded to the stored dtype (float16 or float32); a positive value that rounds to 0 becomes
 * ``smallest``. */
static double stored_scale(double s, int f16, double smallest)
{
    double r = f16 ? round_f16(s) : (double)(float)s;
    return (r == 0.0 && s > 0.0) ? smallest : r;
}

/* (stored scale, offset) of the range [lo, hi] (quantization.py: block_params). */
static void range_params(double lo, double hi, double qmin, double qmax, int symmetric, int f16, double smallest,
                         double *s_out, double *z_out)
{
    if (symmetric != 0) {
        double span = 2.0 * py_max(-lo, hi);
        *z_out = symmetric == 1 ? 0.0 : floor(qmax / 2.0);
        *s_out = stored_scale(span / (qmax - qmin), f16, smallest);
        return;
    }
    lo = py_min(lo, 0.0);
    hi = py_max(hi, 0.0);
    double span = hi - lo;
    if (!(span > 0.0)) {
        *s_out = 1.0;
        *z_out = 0.0;
        return;
    }
    *z_out = py_min(py_max(rint((qmin * hi - qmax * lo) / span), qmin), qmax);
    *s_out = stored_scale(span / (qmax - qmin), f16, smallest);
}

int wp_enc_block_minmax(const void *x, int half, const double *table, long long length, long long b0, long long b1,
                        double *lo, double *hi)
{
    blocks_t v = {x, half, table, length};
    for (long long b = b0; b < b1; b++) {
        double mn = INFINITY, mx = -INFINITY;
        for (long long j = 0; j < length; j++) {
            double value = element(&v, b, j);
            mn = py_min(mn, value);
            mx = py_max(mx, value);
        }
        lo[b] = mn;
        hi[b] = mx;
    }
    return WP_OK;
}

/* out2[b, j] = clip(rint(x / scale[b]) + offset[b], qmin, qmax) (float64 quotient), as int8/uint8. */
int wp_enc_quantize_blocks(const void *x, int half, const double *table, long long length, long long b0, long long b1,
                           const double *scale, const double *offset, double qmin, double qmax, int is_signed,
                           void *out2)
{
    blocks_t v = {x, half, table, length};
    for (long long b = b0; b < b1; b++) {
        for (long long j = 0; j < length; j++) {
            double q = quantized(element(&v, b, j), scale[b], offset[b], qmin, qmax);
            if (is_signed)
                ((int8_t *)out2)[b * length + j] = (int8_t)q;
            else
                ((uint8_t *)out2)[b * length + j] = (uint8_t)q;
        }
    }
    return WP_OK;
}

/* Per block: try every clip ratio in alphas (range shrunk to alpha * range), then ``refits``
 * least-squares refits of scale (and offset when asymmetric, symmetric == 0); keep the least
 * error (ties: the earlier candidate). */
int wp_enc_search_blocks(const void *x, int half, const double *table, const float *imp, long long length,
                         long long b0, long long b1, const double *scale, const double *offset, const double *lo,
                         const double *hi, double qmin, double qmax, int symmetric, const double *alphas,
                         long long n_alphas, long long refits, int f16, double smallest, double *out_scale,
                         double *out_offset)
{
    blocks_t v = {x, half, table, length};
    for (long long b = b0; b < b1; b++) {
        double best_s = scale[b], best_z = offset[b];
        if (!(hi[b] > lo[b]) && symmetric == 0) {
            out_scale[b] = best_s;
            out_offset[b] = best_z;
            continue;
        }
        double best = block_error(&v, imp, b, best_s, best_z, qmin, qmax);
        for (long long a = 0; a < n_alphas; a++) {
            double s, z;
            range_params(lo[b] * alphas[a], hi[b] * alphas[a], qmin, qmax, symmetric, f16, smallest, &s, &z);
            if (!(s > 0.0)) continue;
            double e = block_error(&v, imp, b, s, z, qmin, qmax);
            if (e < best) {
                best = e;
                best_s = s;
                best_z = z;
            }
        }
        double s = best_s, z = best_z;
        for (long long r = 0; r < refits; r++) {
            double s_new, z_new;
            least_squares(&v, imp, b, s, z, qmin, qmax, symmetric == 0, &s_new, &z_new);
            s_new = stored_scale(s_new, f16, smallest);
            if (symmetric == 0) z_new = py_min(py_max(rint(z_new), qmin), qmax);
            if (!(s_new > 0.0)) break;
            double e = block_error(&v, imp, b, s_new, z_new, qmin, qmax);
            if (!(e < best)) break;
            best = e;
            best_s = s_new;
            best_z = z_new;
            s = s_new;
            z = z_new;
        }
        out_scale[b] = best_s;
        out_offset[b] = best_z;
    }
    return WP_OK;
}
