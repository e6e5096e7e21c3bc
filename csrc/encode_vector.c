/* k-means for short vectors (vector palettization; the algorithm and its driver:
 * weightpack/compress/vector_kmeans.py): greedy k-means++ seeding from given uniform numbers,
 * Lloyd iterations, nearest centres. Vectors X [N, V] are float16 bits (values through ``table``)
 * or float32; optional weights wt [N, V] float32. Distances are float64. */
#include <string.h>

#include "encode.h"
#include "weightpack.h"

typedef struct {
    const void *x;
    int half;
    const double *table;
    const float *wt;
    long long n, dims;
} vectors_t;

static inline double component(const vectors_t *X, long long i, long long v)
{
    long long at = i * X->dims + v;
    return X->half ? X->table[((const uint16_t *)X->x)[at]] : (double)((const float *)X->x)[at];
}

static double distance(const vectors_t *X, long long i, const double *center)
{
    double d = 0.0;
    for (long long v = 0; v < X->dims; v++) {
        double e = component(X, i, v) - center[v];
        d += X->wt ? (double)X->wt[i * X->dims + v] * e * e : e * e;
    }
    return d;
}

/* First index whose cumulative weight exceeds r. */
static long long pick(const double *cum, long long n, double r)
{
    return ll_min(wp_search_right(cum, n, r), n - 1);
}

/* Greedy k-means++ centres (k x V; *q_out of them, distinct while the data allow), each next
 * centre the best of ``trials`` candidates drawn with probability proportional to the current
 * distance; uniforms holds 1 + k * trials numbers in [0, 1). */
int wp_enc_vector_seed(const void *x, int half, const double *table, const float *wt, long long n, long long dims,
                       long long k, long long trials, const double *uniforms, double *centers, long long *q_out)
{
    vectors_t X = {x, half, table, wt, n, dims};
    double *buf = malloc(sizeof(double) * (size_t)(4 * n));
    if (!buf) return WP_E_MEMORY;
    double *cum = buf, *closest = cum + n, *trial_d = closest + n, *best_d = trial_d + n;
    double total = 0.0;
    for (long long i = 0; i < n; i++) {
        double s = 0.0;
        if (wt)
            for (long long v = 0; v < dims; v++) s += (double)wt[i * dims + v];
        else
            s = (double)dims;
        total += s;
        cum[i] = total;
    }
    long long u = 0;
    long long first = pick(cum, n, uniforms[u++] * cum[n - 1]);
    for (long long v = 0; v < dims; v++) centers[v] = component(&X, first, v);
    for (long long i = 0; i < n; i++) closest[i] = distance(&X, i, centers);
    long long q = 1;
    for (long long c = 1; c < k; c++) {
        double running = 0.0;
        for (long long i = 0; i < n; i++) {
            running += closest[i];
            cum[i] = running;
        }
        double pot = cum[n - 1];
        if (!(pot > 0.0)) break;
        double best_pot = INFINITY;
        long long best_i = -1;
        double *center = centers + c * dims;
        for (long long t = 0; t < trials; t++) {
            long long cand = pick(cum, n, uniforms[u++] * pot);
            for (long long v = 0; v < dims; v++) center[v] = component(&X, cand, v);
            double s = 0.0;
            for (long long i = 0; i < n; i++) {
                double d = py_min(closest[i], distance(&X, i, center));
                trial_d[i] = d;
                s += d;
            }
            if (s < best_pot) {
                best_pot = s;
                best_i = cand;
                memcpy(best_d, trial_d, sizeof(double) * (size_t)n);
            }
        }
        for (long long v = 0; v < dims; v++) center[v] = component(&X, best_i, v);
        memcpy(closest, best_d, sizeof(double) * (size_t)n);
        q++;
    }
    free(buf);
    *q_out = q;
    return WP_OK;
}

/* Index of each vector's nearest centre (ties to the lower index); *total = the total error. */
static double nearest(const vectors_t *X, const double *centers, long long q, long long *labels)
{
    double total = 0.0;
    for (long long i = 0; i < X->n; i++) {
        double best = INFINITY;
        long long arg = 0;
        for (long long c = 0; c < q; c++) {
            double d = distance(X, i, centers + c * X->dims);
            if (d < best) {
                best = d;
                arg = c;
            }
        }
        labels[i] = arg;
        total += best;
    }
    return total;
}

int wp_enc_vector_nearest(const void *x, int half, const double *table, const float *wt, long long n, long long dims,
                          const double *centers, long long q, long long *labels)
{
    vectors_t X = {x, half, table, wt, n, dims};
    nearest(&X, centers, q, labels);
    return WP_OK;
}

/* Lloyd iterations from ``centers`` (q x V, updated in place) until no vector changes cluster, the
 * error falls by less than tol of itself, or max_iter; an empty cluster takes the vector farthest
 * from its centre. *err_out = the final error. */
int wp_enc_vector_lloyd(const void *x, int half, const double *table, const float *wt, long long n, long long dims,
                        double *centers, long long q, long long max_iter, double tol, double *err_out)
{
    vectors_t X = {x, half, table, wt, n, dims};
    long long *labels = malloc(sizeof(long long) * (size_t)(2 * n + q));
    double *sums = malloc(sizeof(double) * (size_t)(2 * q * dims));
    if (!labels || !sums) {
        free(labels);
        free(sums);
        return WP_E_MEMORY;
    }
    long long *fresh = labels + n, *count = fresh + n;
    double *mass = sums + q * dims;
    for (long long i = 0; i < n; i++) labels[i] = -1;
    double err = INFINITY;
    for (long long iter = 0; iter < max_iter; iter++) {
        double new_err = nearest(&X, centers, q, fresh);
        long long changed = 0;
        for (long long i = 0; i < n; i++) {
            if (fresh[i] != labels[i]) {
                changed++;
                labels[i] = fresh[i];
            }
        }
        if (changed == 0 || !(new_err < err * (1.0 - tol))) {
            err = py_min(err, new_err);
            break;
        }
        err = new_err;
        memset(sums, 0, sizeof(double) * (size_t)(2 * q * dims));
        memset(count, 0, sizeof(long long) * (size_t)q);
        for (long long i = 0; i < n; i++) {
            long long c = labels[i];
            count[c]++;
            for (long long v = 0; v < dims; v++) {
                double w = wt ? (double)wt[i * dims + v] : 1.0;
                sums[c * dims + v] += w * component(&X, i, v);
                mass[c * dims + v] += w;
            }
        }
        for (long long c = 0; c < q; c++) {
            if (count[c] == 0) { /* an empty cluster takes the vector farthest from its centre */
                long long far = 0;
                double far_d = -1.0;
                for (long long i = 0; i < n; i++) {
                    double d = distance(&X, i, centers + labels[i] * dims);
                    if (d > far_d) {
                        far_d = d;
                        far = i;
                    }
                }
                for (long long v = 0; v < dims; v++) centers[c * dims + v] = component(&X, far, v);
                labels[far] = c;
                continue;
            }
            for (long long v = 0; v < dims; v++)
                if (mass[c * dims + v] > 0.0) centers[c * dims + v] = sums[c * dims + v] / mass[c * dims + v];
        }
    }
    free(labels);
    free(sums);
    *err_out = err;
    return WP_OK;
}
