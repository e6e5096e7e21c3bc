/* Shared helpers of the encoders' C kernels (csrc/encode_*.c; not seen by cffi).
 *
 * These kernels were numba functions first; they reproduce those results bit for bit, so the
 * arithmetic follows the Python source exactly: float64 throughout, no contraction of a * b + c
 * into fused multiply-adds (the build passes -ffp-contract=off; the pragma says so again), the
 * same order of every sum, and Python's min/max (the first argument unless the second is
 * strictly smaller/larger). Nothing here is static mutable state: every kernel may run on many
 * threads at once (the encoders call them from a Python thread pool, the GIL released). */
#ifndef WP_ENCODE_H
#define WP_ENCODE_H

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF /* gcc: -ffp-contract=off, in the build flags */
#endif

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "wp_internal.h"

static inline double py_min(double a, double b) { return b < a ? b : a; }
static inline double py_max(double a, double b) { return b > a ? b : a; }
static inline long long ll_min(long long a, long long b) { return b < a ? b : a; }
static inline long long ll_max(long long a, long long b) { return b > a ? b : a; }

/* ``x`` rounded to the nearest binary16 value (ties to even) as float64; beyond the largest
 * finite binary16, infinity: what numpy.float16(x) stores. */
static inline double round_f16(double x)
{
    double a = fabs(x);
    if (a == 0.0) return x;
    int e;
    frexp(a, &e); /* a in [2^(e-1), 2^e) */
    double step = e >= -13 ? ldexp(1.0, 11 - e) : 16777216.0;
    double r = rint(a * step) / step;
    r = r <= 65504.0 ? r : INFINITY;
    return x > 0.0 ? r : -r;
}

/* numpy.searchsorted(a[:n], v) (side="left"): how many of the sorted a are < v. */
static inline long long wp_search_left(const double *a, long long n, double v)
{
    long long lo = 0, hi = n;
    while (lo < hi) {
        long long mid = (lo + hi) >> 1;
        if (a[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* side="right": how many of the sorted a are <= v. */
static inline long long wp_search_right(const double *a, long long n, double v)
{
    long long lo = 0, hi = n;
    while (lo < hi) {
        long long mid = (lo + hi) >> 1;
        if (a[mid] <= v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* #(mids < v) for sorted mids: a branch-free count when short, else a binary search. */
static inline long long wp_rank(const double *mids, long long n, double v)
{
    if (n <= 32) {
        long long c = 0;
        for (long long j = 0; j < n; j++) c += mids[j] < v;
        return c;
    }
    return wp_search_left(mids, n, v);
}

/* Groups of weights seen as a 3-D view (outer, G, L): group g is x[:, g, :]. float16 weights come
 * as their bit patterns with the float64 value of every pattern in ``table``; float32 as values.
 * Optional objective weights: ``imp`` (same view, float32) times ``sw[o * inner + l % inner]``. */
typedef struct {
    const void *x;
    int half;
    const double *table;
    const float *imp;
    const double *sw;
    long long outer, groups, length, inner;
} wp_view;

static inline long long wp_at(const wp_view *v, long long o, long long g, long long l)
{
    return (o * v->groups + g) * v->length + l;
}

static inline double wp_value(const wp_view *v, long long i)
{
    return v->half ? v->table[((const uint16_t *)v->x)[i]] : (double)((const float *)v->x)[i];
}

/* The objective's weight of element i = (o, g, l); r = l % inner, kept by the caller. */
static inline double wp_weight(const wp_view *v, long long i, long long o, long long r)
{
    double w = 1.0;
    if (v->imp) w = (double)v->imp[i];
    if (v->sw) w *= v->sw[o * v->inner + r];
    return w;
}

/* encode_kmeans.c: the exact 1-D k-means of sorted distinct x with positive weights w. */
long long wp_kmeans_dp_solve(const double *x, const double *w, long long m, long long k, long long *starts,
                             double *sse);
long long wp_kmeans_solve_k(const double *x, const double *w, long long m, long long k, long long *starts);
void wp_kmeans_means(const double *x, const double *w, long long m, const long long *starts, long long q,
                     double *out);

#endif
