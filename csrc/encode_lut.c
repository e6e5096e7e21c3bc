/* Scalar LUTs for many groups at once: k-means fits, ranges, distinct values and nearest-entry
 * indices (the algorithms and the Python that drives them: weightpack/compress/lut1d.py).
 *
 * Weights are 3-D views (outer, G, L) with group g = x[:, g, :] (see wp_view in encode.h):
 * float16 as bit patterns, whose distinct values come from a 65,536-entry histogram; float32
 * binned by key32 (the value times 2^delta truncated to binary16 precision), the DP run on the
 * bins and Lloyd passes over the raw values of bins that straddle a decision boundary. */
#include <math.h>
#include <string.h>

#include "encode.h"
#include "weightpack.h"

#define SMALL 8192 /* groups up to this many elements are sorted instead of histogrammed */
#define LLOYD_PASSES 12
#define LLOYD_GAIN 1e-7 /* Lloyd passes stop once moving the centroids gains less than this fraction */
#define HIST 65536

static wp_view make_view(const void *x, int half, const double *table, const float *imp, const double *sw,
                         long long outer, long long groups, long long length, long long inner)
{
    wp_view v = {x, half, table, imp, sw, outer, groups, length, inner};
    return v;
}

/* Midpoints of adjacent entries (k - 1) and, per entry, the lowest index holding its value. */
static void nearest_tables(const double *entries, long long k, double *mids, long long *first)
{
    for (long long i = 0; i + 1 < k; i++) mids[i] = (entries[i] + entries[i + 1]) * 0.5;
    for (long long i = 0; i < k; i++) first[i] = (i == 0 || entries[i] != entries[i - 1]) ? i : first[i - 1];
}

/* ---- float16: distinct values by histogram ------------------------------------------------- */

static void hist16(const wp_view *v, long long g, long long l0, long long l1, double *counts)
{
    const uint16_t *bits = v->x;
    if (!v->imp && !v->sw) {
        for (long long o = 0; o < v->outer; o++) {
            const uint16_t *seg = bits + wp_at(v, o, g, 0);
            for (long long l = l0; l < l1; l++) counts[seg[l]] += 1.0;
        }
        return;
    }
    for (long long o = 0; o < v->outer; o++) {
        long long r = l0 % v->inner;
        for (long long l = l0; l < l1; l++) {
            long long i = wp_at(v, o, g, l);
            counts[bits[i]] += wp_weight(v, i, o, r);
            if (++r == v->inner) r = 0;
        }
    }
}

/* Distinct values (increasing) with positive weight into xs/ws (their bit patterns into ks when
 * given); resets counts. Returns m. With skip_zero the value 0 is left out. */
static long long compact16(double *counts, const int32_t *order, long long n_order, const double *values, double *xs,
                           double *ws, int32_t *ks, int skip_zero)
{
    counts[0] = skip_zero ? 0.0 : counts[0] + counts[0x8000];
    counts[0x8000] = 0.0;
    long long m = 0;
    for (long long i = 0; i < n_order; i++) {
        int32_t key = order[i];
        double c = counts[key];
        if (c != 0.0) {
            if (c > 0.0) {
                xs[m] = values[key];
                ws[m] = c;
                if (ks) ks[m] = key;
                m++;
            }
            counts[key] = 0.0;
        }
    }
    return m;
}

typedef struct {
    double value, weight;
    long long index;
} point_t;

static int point_order(const void *a, const void *b)
{
    const point_t *p = a, *q = b;
    if (p->value != q->value) return p->value < q->value ? -1 : 1;
    return p->index < q->index ? -1 : p->index > q->index; /* a stable sort: ties keep their order */
}

/* Distinct values of group g (sorted, -0 merged into +0) with summed positive weights; returns m
 * (or WP_E_MEMORY). The weights of equal values are summed in element order. */
static long long sorted_distinct(const wp_view *v, long long g, double *xs, double *ws, int skip_zero)
{
    long long n = v->outer * v->length, i = 0;
    point_t *pts = malloc(sizeof(point_t) * (size_t)(n ? n : 1));
    if (!pts) return WP_E_MEMORY;
    for (long long o = 0; o < v->outer; o++) {
        long long r = 0;
        for (long long l = 0; l < v->length; l++) {
            long long at = wp_at(v, o, g, l);
            pts[i].value = wp_value(v, at) + 0.0;
            pts[i].weight = wp_weight(v, at, o, r);
            pts[i].index = i;
            i++;
            if (++r == v->inner) r = 0;
        }
    }
    qsort(pts, (size_t)n, sizeof(point_t), point_order);
    long long m = 0;
    for (long long q = 0; q < n; q++) {
        if (m > 0 && pts[q].value == xs[m - 1]) {
            ws[m - 1] += pts[q].weight;
        } else {
            xs[m] = pts[q].value;
            ws[m] = pts[q].weight;
            m++;
        }
    }
    free(pts);
    long long kept = 0; /* drop values whose total weight is not positive */
    for (long long q = 0; q < m; q++) {
        if (ws[q] > 0.0 && !(skip_zero && xs[q] == 0.0)) {
            xs[kept] = xs[q];
            ws[kept] = ws[q];
            kept++;
        }
    }
    return kept;
}

/* The k-partition of the points (xs, ws): the DP curve too when ``curve`` (sse[k], else zeros).
 * Writes the means of the clusters to cent[g * k + c] (unused entries repeat the largest) and
 * sse to sse_out[g * k + c]. */
static int fit_points(const double *xs, const double *ws, long long m, long long k, int curve, double *cent,
                      double *sse_out, long long g)
{
    long long *starts = malloc(sizeof(long long) * (size_t)k);
    double *sse = calloc((size_t)k, sizeof(double));
    double *means = malloc(sizeof(double) * (size_t)k);
    int status = WP_E_MEMORY;
    if (starts && sse && means) {
        long long q = curve ? wp_kmeans_dp_solve(xs, ws, m, k, starts, sse) : wp_kmeans_solve_k(xs, ws, m, k, starts);
        if (q >= 0) {
            wp_kmeans_means(xs, ws, m, starts, q, means);
            for (long long c = 0; c < k; c++) {
                cent[g * k + c] = means[ll_min(c, q - 1)];
                sse_out[g * k + c] = sse[c];
            }
            status = WP_OK;
        } else {
            status = (int)q;
        }
    }
    free(starts);
    free(sse);
    free(means);
    return status;
}

/* ---- nearest-entry indices ----------------------------------------------------------------- */

/* Indices of the nearest entries by counting the midpoints below each value. */
static void assign_search(const wp_view *v, long long g, long long l0, long long l1, const double *entries, long long k,
                          double *mids, long long *first, uint8_t *out3)
{
    nearest_tables(entries, k, mids, first);
    for (long long o = 0; o < v->outer; o++) {
        for (long long l = l0; l < l1; l++) {
            long long i = wp_at(v, o, g, l);
            out3[i] = (uint8_t)first[wp_rank(mids, k - 1, wp_value(v, i))];
        }
    }
}

/* float16 elements through a lazily filled table of codes (uint16 [65536], 0xFFFF = not yet). */
static void assign16(const wp_view *v, long long g, long long l0, long long l1, const double *entries, long long k,
                     uint16_t *table, double *mids, long long *first, uint8_t *out3)
{
    const uint16_t *bits = v->x;
    nearest_tables(entries, k, mids, first);
    for (long long o = 0; o < v->outer; o++) {
        for (long long l = l0; l < l1; l++) {
            long long i = wp_at(v, o, g, l);
            uint16_t b = bits[i];
            uint16_t c = table[b];
            if (c == 0xFFFF) {
                c = (uint16_t)first[wp_rank(mids, k - 1, v->table[b])];
                table[b] = c;
            }
            out3[i] = (uint8_t)c;
        }
    }
}

/* Group g's codes from its distinct values (xs with bit patterns ks, ascending): one walk along
 * the midpoints, then one lookup per element (values left out of the fit are searched). */
static void codes_from_distinct(const wp_view *v, long long g, const double *entries, long long k, const double *xs,
                                const int32_t *ks, long long m, uint16_t *table, double *mids, long long *first,
                                uint8_t *out3)
{
    nearest_tables(entries, k, mids, first);
    for (long long i = 0; i < HIST; i++) table[i] = 0xFFFF;
    long long p = 0;
    for (long long i = 0; i < m; i++) {
        while (p < k - 1 && mids[p] < xs[i]) p++;
        table[ks[i]] = (uint16_t)first[p];
    }
    assign16(v, g, 0, v->length, entries, k, table, mids, first, out3);
}

/* ---- float32: bins ------------------------------------------------------------------------- */

/* The closed value range [lo, hi] bin ``key`` can hold: from its binary16 value to the next one,
 * over 2^delta. */
static void bin_bounds(long long key, long long delta, const double *values, double *lo, double *hi)
{
    long long code = key & 0x7FFF;
    double scale = ldexp(1.0, (int)-delta);
    double a = values[code] * scale, b = values[code + 1] * scale;
    if (key & 0x8000) {
        *lo = -b;
        *hi = -a;
    } else {
        *lo = a;
        *hi = b;
    }
}

/* Add every element to rec[key] (2 or 4 float64 columns: weight, weighted sum, and with squares
 * the weighted sum of squares and the bin's single value: NaN while empty, +inf once a second
 * value was seen). */
static void hist32(const wp_view *v, const uint16_t *keys, long long g, long long l0, long long l1, double *rec,
                   int skip_zero, int squares)
{
    int weighted = v->imp || v->sw;
    const float *x = v->x;
    long long width = squares ? 4 : 2;
    for (long long o = 0; o < v->outer; o++) {
        long long r = l0 % v->inner;
        for (long long l = l0; l < l1; l++) {
            long long i = wp_at(v, o, g, l);
            double value = (double)x[i];
            double w = 1.0;
            if (weighted) {
                w = wp_weight(v, i, o, r);
                if (++r == v->inner) r = 0;
            }
            if (skip_zero && value == 0.0) continue;
            double *row = rec + (long long)keys[i] * width;
            row[0] += w;
            row[1] += w * value;
            if (squares) {
                row[2] += w * value * value;
                double f = row[3];
                if (f != value && f != INFINITY) row[3] = isnan(f) ? value : INFINITY;
            }
        }
    }
}

typedef struct {
    int32_t *key;
    double *w, *s1, *s2, *lo, *hi;
} bins_t;

/* Touched bins (positive weight) in value order into ``bins``; a bin known to hold one value has
 * that value as its range, the others the range bin_bounds allows. Resets rec. Returns the count. */
static long long compact32(double *rec, int wide, const int32_t *order, long long n_order, long long delta,
                           const double *values, const bins_t *bins)
{
    long long width = wide ? 4 : 2, m = 0;
    for (long long i = 0; i < n_order; i++) {
        int32_t key = order[i];
        double *row = rec + (long long)key * width;
        double f = wide ? row[3] : NAN;
        if (row[0] > 0.0) {
            bins->key[m] = key;
            bins->w[m] = row[0];
            bins->s1[m] = row[1];
            bins->s2[m] = wide ? row[2] : 0.0;
            if (isnan(f) || f == INFINITY) {
                bin_bounds(key, delta, values, &bins->lo[m], &bins->hi[m]);
            } else {
                bins->lo[m] = f;
                bins->hi[m] = f;
            }
            m++;
        }
        if (row[0] != 0.0 || row[1] != 0.0 || !isnan(f)) {
            row[0] = 0.0;
            row[1] = 0.0;
            if (wide) {
                row[2] = 0.0;
                row[3] = NAN;
            }
        }
    }
    return m;
}

/* DP input from the bins: positive-weight bins at their mean (their value when pure). Returns m;
 * *pure = whether every bin holds one value. */
static long long bins_points(const bins_t *bins, long long nb, double *xs, double *ws, int *pure)
{
    long long m = 0;
    *pure = 1;
    for (long long b = 0; b < nb; b++) {
        if (bins->w[b] > 0.0) {
            if (bins->lo[b] == bins->hi[b]) {
                xs[m] = bins->lo[b];
            } else {
                *pure = 0;
                double mean = bins->s1[b] / bins->w[b];
                xs[m] = py_min(py_max(mean, bins->lo[b]), bins->hi[b]);
            }
            ws[m] = bins->w[b];
            m++;
        }
    }
    return m;
}

/* Exact cluster means from the bins' sums (clusters: runs of positive-weight bins from starts);
 * ``out`` has room for 2q values (the sums are gathered there first). */
static void bin_cluster_means(const bins_t *bins, long long nb, const long long *starts, long long q, double *out)
{
    double *cw = out, *c1 = out + q;
    for (long long c = 0; c < q; c++) cw[c] = c1[c] = 0.0;
    long long c = 0, point = 0;
    for (long long b = 0; b < nb; b++) {
        if (bins->w[b] > 0.0) {
            while (c + 1 < q && point >= starts[c + 1]) c++;
            cw[c] += bins->w[b];
            c1[c] += bins->s1[b];
            point++;
        }
    }
    for (long long i = 0; i < q; i++) out[i] = c1[i] / cw[i];
}

/* Sum of the squared deviations inside each bin (what the DP on bin means leaves out). */
static double within(const bins_t *bins, long long nb)
{
    double total = 0.0;
    for (long long b = 0; b < nb; b++)
        if (bins->w[b] > 0.0) total += py_max(bins->s2[b] - bins->s1[b] * bins->s1[b] / bins->w[b], 0.0);
    return total;
}

/* The error of the points (xs, ws) at their nearest centroids. */
static double bins_error(const double *cent, long long k, const double *xs, const double *ws, long long m, double *mids)
{
    for (long long i = 0; i + 1 < k; i++) mids[i] = (cent[i] + cent[i + 1]) * 0.5;
    double err = 0.0;
    for (long long b = 0; b < m; b++) {
        double d = xs[b] - cent[wp_rank(mids, k - 1, xs[b])];
        err += ws[b] * d * d;
    }
    return err;
}

/* Bins wholly inside one cell add their sums to that cluster (cls[key] = cluster); bins across a
 * boundary get -1 (their elements are looked at one by one). Writes the midpoints. */
static void classify_bins(const double *cent, long long k, const bins_t *bins, long long nb, int32_t *cls, double *CW,
                          double *CS1, double *mids)
{
    for (long long i = 0; i + 1 < k; i++) mids[i] = (cent[i] + cent[i + 1]) * 0.5;
    for (long long c = 0; c < k; c++) CW[c] = CS1[c] = 0.0;
    for (long long b = 0; b < nb; b++) {
        long long lo = wp_rank(mids, k - 1, bins->lo[b]), hi = wp_rank(mids, k - 1, bins->hi[b]);
        if (lo == hi) {
            cls[bins->key[b]] = (int32_t)lo;
            CW[lo] += bins->w[b];
            CS1[lo] += bins->s1[b];
        } else {
            cls[bins->key[b]] = -1;
        }
    }
}

/* Add the elements of straddling bins to the cluster of their nearest centroid. */
static void straddle_sums(const wp_view *v, const uint16_t *keys, long long g, long long l0, long long l1,
                          const int32_t *cls, const double *mids, long long n_mids, double *CW, double *CS1,
                          int skip_zero)
{
    const float *x = v->x;
    for (long long o = 0; o < v->outer; o++) {
        for (long long l = l0; l < l1; l++) {
            long long i = wp_at(v, o, g, l);
            if (cls[keys[i]] < 0) {
                double value = (double)x[i];
                if (skip_zero && value == 0.0) continue;
                long long c = wp_rank(mids, n_mids, value);
                double w = wp_weight(v, i, o, l % v->inner);
                CW[c] += w;
                CS1[c] += w * value;
            }
        }
    }
}

/* Move the centroids to their clusters' means; returns what that alone lowers the error by, or -1
 * if a cluster is empty (the centroids are then left as they are). */
static double lloyd_step(const double *CW, const double *CS1, double *cent, long long k)
{
    for (long long c = 0; c < k; c++)
        if (!(CW[c] > 0.0)) return -1.0;
    double gain = 0.0;
    for (long long c = 0; c < k; c++) {
        double next = CS1[c] / CW[c];
        double d = next - cent[c];
        gain += CW[c] * (d * d);
        cent[c] = next;
    }
    return gain;
}

/* Group g's codes: each bin's code by one walk along the midpoints (-1 where a midpoint cuts the
 * bin), then one lookup per element, or a search for the cut bins' elements. */
static void codes_from_bins(const wp_view *v, const uint16_t *keys, long long g, const double *entries, long long k,
                            const bins_t *bins, long long nb, int16_t *table, double *mids, long long *first,
                            uint8_t *out3)
{
    nearest_tables(entries, k, mids, first);
    for (long long i = 0; i < HIST; i++) table[i] = -1;
    long long p = 0;
    for (long long b = 0; b < nb; b++) {
        while (p < k - 1 && mids[p] < bins->lo[b]) p++;
        long long q = p;
        while (q < k - 1 && mids[q] < bins->hi[b]) q++;
        table[bins->key[b]] = (int16_t)(p == q ? first[p] : -1);
    }
    const float *x = v->x;
    for (long long o = 0; o < v->outer; o++) {
        for (long long l = 0; l < v->length; l++) {
            long long i = wp_at(v, o, g, l);
            int16_t c = table[keys[i]];
            out3[i] = (uint8_t)(c >= 0 ? c : first[wp_rank(mids, k - 1, (double)x[i])]);
        }
    }
}

/* ---- exported kernels ---------------------------------------------------------------------- */

int wp_enc_hist16(const unsigned short *bits, const float *imp, const double *sw, long long outer, long long groups,
                  long long length, long long inner, long long g, long long l0, long long l1, double *counts)
{
    wp_view v = make_view(bits, 1, NULL, imp, sw, outer, groups, length, inner);
    hist16(&v, g, l0, l1, counts);
    return WP_OK;
}

int wp_enc_solve_hist16(double *counts, const int *order, long long n_order, const double *values, long long k,
                        double *cent, double *sse, int skip_zero, int curve)
{
    double *xs = malloc(sizeof(double) * 2 * HIST);
    if (!xs) return WP_E_MEMORY;
    double *ws = xs + HIST;
    long long m = compact16(counts, order, n_order, values, xs, ws, NULL, skip_zero);
    int status = m > 0 ? fit_points(xs, ws, m, k, curve, cent, sse, 0) : WP_E_ARG;
    free(xs);
    return status;
}

/* Scratch of one run over groups: sized for the largest group. */
typedef struct {
    double *xs, *ws, *entries, *mids, *counts, *rec;
    long long *first;
    int32_t *ks, *cls;
    uint16_t *table16;
    int16_t *table32;
    bins_t bins;
} scratch_t;

static void scratch_free(scratch_t *s)
{
    free(s->xs);
    free(s->ws);
    free(s->entries);
    free(s->mids);
    free(s->counts);
    free(s->rec);
    free(s->first);
    free(s->ks);
    free(s->cls);
    free(s->table16);
    free(s->table32);
    free(s->bins.key);
    free(s->bins.w);
    free(s->bins.s1);
    free(s->bins.s2);
    free(s->bins.lo);
    free(s->bins.hi);
}

int wp_enc_kmeans16_groups(const unsigned short *bits, const float *imp, const double *sw, long long outer,
                           long long groups, long long length, long long inner, long long k, long long g0, long long g1,
                           const double *values, const int *order, long long n_order, double *cent, double *sse,
                           int skip_zero, int curve, unsigned char *out3)
{
    wp_view v = make_view(bits, 1, values, imp, sw, outer, groups, length, inner);
    wp_view plain = make_view(bits, 1, values, NULL, NULL, outer, groups, length, inner);
    long long n = outer * length, cap = ll_min(n, HIST);
    int big = n > SMALL;
    scratch_t s = {0};
    s.xs = malloc(sizeof(double) * (size_t)(cap + 1));
    s.ws = malloc(sizeof(double) * (size_t)(cap + 1));
    s.entries = malloc(sizeof(double) * (size_t)k);
    s.mids = malloc(sizeof(double) * (size_t)k);
    s.first = malloc(sizeof(long long) * (size_t)k);
    if (big) s.counts = calloc(HIST, sizeof(double));
    if (big && out3) {
        s.ks = malloc(sizeof(int32_t) * (size_t)cap);
        s.table16 = malloc(sizeof(uint16_t) * HIST);
    }
    int status = WP_E_MEMORY;
    if (!s.xs || !s.ws || !s.entries || !s.mids || !s.first || (big && !s.counts) || (big && out3 && (!s.ks || !s.table16)))
        goto done;
    for (long long g = g0; g < g1; g++) {
        long long m;
        if (big) {
            hist16(&v, g, 0, length, s.counts);
            m = compact16(s.counts, order, n_order, values, s.xs, s.ws, s.ks, skip_zero);
            if (m == 0) { /* every weight is zero: plain k-means */
                hist16(&plain, g, 0, length, s.counts);
                m = compact16(s.counts, order, n_order, values, s.xs, s.ws, s.ks, skip_zero);
            }
        } else {
            m = sorted_distinct(&v, g, s.xs, s.ws, skip_zero);
            if (m == 0) m = sorted_distinct(&plain, g, s.xs, s.ws, skip_zero);
        }
        if (m < 0) {
            status = (int)m;
            goto done;
        }
        if (m == 0) { /* nothing to fit (an all-zero group of a sparse tensor) */
            s.xs[0] = 0.0;
            s.ws[0] = 1.0;
            m = 1;
        }
        status = fit_points(s.xs, s.ws, m, k, curve, cent, sse, g);
        if (status) goto done;
        if (!out3) continue;
        for (long long c = 0; c < k; c++) s.entries[c] = round_f16(cent[g * k + c]);
        if (big)
            codes_from_distinct(&v, g, s.entries, k, s.xs, s.ks, m, s.table16, s.mids, s.first, out3);
        else
            assign_search(&v, g, 0, length, s.entries, k, s.mids, s.first, out3);
    }
    status = WP_OK;
done:
    scratch_free(&s);
    return status;
}

static void lloyd_group(const wp_view *v, const uint16_t *keys, long long g, double *cent, long long k,
                        const bins_t *bins, long long nb, int32_t *cls, int skip_zero, double scale, double *CW,
                        double *mids)
{
    double *CS1 = CW + k;
    for (int pass = 0; pass < LLOYD_PASSES; pass++) {
        classify_bins(cent, k, bins, nb, cls, CW, CS1, mids);
        straddle_sums(v, keys, g, 0, v->length, cls, mids, k - 1, CW, CS1, skip_zero);
        double gain = lloyd_step(CW, CS1, cent, k);
        if (!(gain >= LLOYD_GAIN * scale)) break;
    }
}

int wp_enc_kmeans32_groups(const float *x, const unsigned short *keys, const float *imp, const double *sw, long long outer,
                           long long groups, long long length, long long inner, long long k, long long g0, long long g1,
                           long long delta, const double *values, const int *order, long long n_order,
                           double *cent, double *sse, int skip_zero, int curve, unsigned char *out3)
{
    wp_view v = make_view(x, 0, NULL, imp, sw, outer, groups, length, inner);
    wp_view plain = make_view(x, 0, NULL, NULL, NULL, outer, groups, length, inner);
    long long n = outer * length, cap = ll_min(n, HIST), width = curve ? 4 : 2;
    int big = n > SMALL;
    scratch_t s = {0};
    s.xs = malloc(sizeof(double) * (size_t)(cap + 1));
    s.ws = malloc(sizeof(double) * (size_t)(cap + 1));
    s.entries = malloc(sizeof(double) * (size_t)(2 * k));
    s.mids = malloc(sizeof(double) * (size_t)(2 * k));
    s.first = malloc(sizeof(long long) * (size_t)k);
    double *CW = malloc(sizeof(double) * (size_t)(2 * k)), *means = malloc(sizeof(double) * (size_t)(2 * k));
    long long *starts = malloc(sizeof(long long) * (size_t)k);
    double *dp_sse = malloc(sizeof(double) * (size_t)k);
    int status = WP_E_MEMORY;
    if (!s.xs || !s.ws || !s.entries || !s.mids || !s.first || !CW || !means || !starts || !dp_sse) goto done;
    if (big) {
        s.rec = malloc(sizeof(double) * (size_t)(HIST * width));
        s.cls = malloc(sizeof(int32_t) * HIST);
        s.bins.key = malloc(sizeof(int32_t) * (size_t)cap);
        s.bins.w = malloc(sizeof(double) * (size_t)cap);
        s.bins.s1 = malloc(sizeof(double) * (size_t)cap);
        s.bins.s2 = malloc(sizeof(double) * (size_t)cap);
        s.bins.lo = malloc(sizeof(double) * (size_t)cap);
        s.bins.hi = malloc(sizeof(double) * (size_t)cap);
        if (out3) s.table32 = malloc(sizeof(int16_t) * HIST);
        if (!s.rec || !s.cls || !s.bins.key || !s.bins.w || !s.bins.s1 || !s.bins.s2 || !s.bins.lo || !s.bins.hi ||
            (out3 && !s.table32))
            goto done;
        for (long long i = 0; i < HIST; i++) {
            double *row = s.rec + i * width;
            row[0] = row[1] = 0.0;
            if (curve) {
                row[2] = 0.0;
                row[3] = NAN;
            }
        }
    }
    for (long long g = g0; g < g1; g++) {
        if (!big) {
            long long m = sorted_distinct(&v, g, s.xs, s.ws, skip_zero);
            if (m == 0) m = sorted_distinct(&plain, g, s.xs, s.ws, skip_zero);
            if (m < 0) {
                status = (int)m;
                goto done;
            }
            if (m == 0) {
                s.xs[0] = 0.0;
                s.ws[0] = 1.0;
                m = 1;
            }
            status = fit_points(s.xs, s.ws, m, k, curve, cent, sse, g);
            if (status) goto done;
            if (out3) {
                for (long long c = 0; c < k; c++) s.entries[c] = (double)(float)cent[g * k + c];
                assign_search(&v, g, 0, length, s.entries, k, s.mids, s.first, out3);
            }
            continue;
        }
        const wp_view *use = &v;
        hist32(use, keys, g, 0, length, s.rec, skip_zero, curve);
        long long nb = compact32(s.rec, curve, order, n_order, delta, values, &s.bins);
        int pure;
        long long m = bins_points(&s.bins, nb, s.xs, s.ws, &pure);
        if (m == 0) { /* every weight is zero: plain k-means */
            use = &plain;
            hist32(use, keys, g, 0, length, s.rec, skip_zero, curve);
            nb = compact32(s.rec, curve, order, n_order, delta, values, &s.bins);
            m = bins_points(&s.bins, nb, s.xs, s.ws, &pure);
        }
        if (m == 0) { /* nothing to fit (an all-zero group of a sparse tensor) */
            for (long long c = 0; c < k; c++) {
                cent[g * k + c] = 0.0;
                sse[g * k + c] = 0.0;
            }
            continue;
        }
        for (long long c = 0; c < k; c++) dp_sse[c] = 0.0;
        long long q = curve ? wp_kmeans_dp_solve(s.xs, s.ws, m, k, starts, dp_sse)
                            : wp_kmeans_solve_k(s.xs, s.ws, m, k, starts);
        if (q < 0) {
            status = (int)q;
            goto done;
        }
        bin_cluster_means(&s.bins, nb, starts, q, means);
        if (curve) {
            double extra = within(&s.bins, nb);
            for (long long c = 0; c < k; c++) dp_sse[c] += extra;
        } else if (!pure) {
            lloyd_group(use, keys, g, means, q, &s.bins, nb, s.cls, skip_zero,
                        bins_error(means, q, s.xs, s.ws, m, s.mids), CW, s.mids);
        }
        for (long long c = 0; c < k; c++) {
            cent[g * k + c] = means[ll_min(c, q - 1)];
            sse[g * k + c] = dp_sse[c];
        }
        if (out3) {
            for (long long c = 0; c < k; c++) s.entries[c] = (double)(float)cent[g * k + c];
            codes_from_bins(&v, keys, g, s.entries, k, &s.bins, nb, s.table32, s.mids, s.first, out3);
        }
    }
    status = WP_OK;
done:
    scratch_free(&s);
    free(CW);
    free(means);
    free(starts);
    free(dp_sse);
    return status;
}

int wp_enc_hist32(const float *x, const unsigned short *keys, const float *imp, const double *sw, long long outer,
                  long long groups, long long length, long long inner, long long g, long long l0, long long l1,
                  double *rec, int skip_zero, int squares)
{
    wp_view v = make_view(x, 0, NULL, imp, sw, outer, groups, length, inner);
    hist32(&v, keys, g, l0, l1, rec, skip_zero, squares);
    return WP_OK;
}

int wp_enc_merge_records(double *rec, const double *part, int wide)
{
    long long width = wide ? 4 : 2;
    for (long long key = 0; key < HIST; key++) {
        double *r = rec + key * width;
        const double *p = part + key * width;
        r[0] += p[0];
        r[1] += p[1];
        if (wide) {
            r[2] += p[2];
            if (isnan(r[3]))
                r[3] = p[3];
            else if (r[3] != p[3] && !isnan(p[3]))
                r[3] = INFINITY;
        }
    }
    return WP_OK;
}

static bins_t bins_of(const int32_t *bkey, const double *bvals)
{
    double *b = (double *)bvals;
    bins_t bins = {(int32_t *)bkey, b, b + HIST, b + 2 * HIST, b + 3 * HIST, b + 4 * HIST};
    return bins;
}

/* One big float32 group from its merged histogram: the bins, the k-partition of the bins, exact
 * cluster means (cent[0 .. q), q returned in *q_out) and the curve (sse[k]) or zeros. Leaves in
 * ``bkey`` (int32 [65536]) and ``bvals`` (5 x 65536 float64: weight, sum, sum of squares, lo, hi)
 * the *nb bins the Lloyd passes need; *pure: whether every bin holds one value; *scale: the
 * error of the points at the centroids. Returns WP_E_ARG if no bin has weight. */
int wp_enc_solve_bins32(double *rec, int wide, const int *order, long long n_order, long long delta,
                        const double *values, long long k, int curve, double *cent, double *sse, int *bkey,
                        double *bvals, long long *nb_out, long long *q_out, int *pure, double *scale)
{
    bins_t bins = bins_of(bkey, bvals);
    long long nb = compact32(rec, wide, order, n_order, delta, values, &bins);
    double *xs = malloc(sizeof(double) * (size_t)(2 * nb + 1));
    long long *starts = malloc(sizeof(long long) * (size_t)k);
    double *means = malloc(sizeof(double) * (size_t)(2 * k)), *mids = malloc(sizeof(double) * (size_t)k);
    int status = WP_E_MEMORY;
    if (!xs || !starts || !means || !mids) goto done;
    double *ws = xs + nb;
    long long m = bins_points(&bins, nb, xs, ws, pure);
    *nb_out = nb;
    if (m == 0) {
        status = WP_E_ARG;
        goto done;
    }
    for (long long c = 0; c < k; c++) sse[c] = 0.0;
    long long q = curve ? wp_kmeans_dp_solve(xs, ws, m, k, starts, sse) : wp_kmeans_solve_k(xs, ws, m, k, starts);
    if (q < 0) {
        status = (int)q;
        goto done;
    }
    bin_cluster_means(&bins, nb, starts, q, means);
    if (curve) {
        double extra = within(&bins, nb);
        for (long long c = 0; c < k; c++) sse[c] += extra;
    }
    *scale = bins_error(means, q, xs, ws, m, mids);
    for (long long c = 0; c < q; c++) cent[c] = means[c];
    *q_out = q;
    status = WP_OK;
done:
    free(xs);
    free(starts);
    free(means);
    free(mids);
    return status;
}

/* The Lloyd pass of one big float32 group, in two halves: classify the bins (CW/CS1 = sums of
 * the bins inside one cell; mids written), then (in parallel chunks from Python) add the
 * straddling elements, then move the centroids (wp_enc_lloyd_step). */
int wp_enc_classify_bins(const double *cent, long long q, const int *bkey, const double *bvals, long long nb,
                         int *cls, double *CW, double *CS1, double *mids)
{
    bins_t bins = bins_of(bkey, bvals);
    classify_bins(cent, q, &bins, nb, cls, CW, CS1, mids);
    return WP_OK;
}

int wp_enc_straddle_sums(const float *x, const unsigned short *keys, const float *imp, const double *sw, long long outer,
                         long long groups, long long length, long long inner, long long g, long long l0, long long l1,
                         const int *cls, const double *mids, long long n_mids, double *CW, double *CS1,
                         int skip_zero)
{
    wp_view v = make_view(x, 0, NULL, imp, sw, outer, groups, length, inner);
    straddle_sums(&v, keys, g, l0, l1, cls, mids, n_mids, CW, CS1, skip_zero);
    return WP_OK;
}

int wp_enc_lloyd_step(const double *CW, const double *CS1, double *cent, long long q, double *gain)
{
    *gain = lloyd_step(CW, CS1, cent, q);
    return WP_OK;
}

/* Bins of float32 values (bits[lo:hi]): the value times 2^delta truncated to binary16 precision
 * (10 mantissa bits; multiples of 2^-24 below 2^-14), as a binary16-like pattern whose sign bit is
 * the value's. Where the scaled value stays a binary16 normal (nearly always), that is the float32
 * magnitude bits shifted right by 13 with the exponent rebased; below, the mantissa shifted into
 * binary16's subnormal steps (float32 subnormals scaled below 2^-24 get code 0). */
int wp_enc_key32_bits(const unsigned int *bits, long long lo, long long hi, long long delta, unsigned short *out)
{
    long long sub_shift = 125 - delta > 0 ? 125 - delta : 0;
    int32_t bias = (int32_t)(delta - 127 + 15);
    uint32_t rebase = (uint32_t)bias << 10; /* adds bias to the exponent field of (magnitude >> 13), mod 2^32 */
    for (long long i = lo; i < hi; i++) {
        uint32_t b = bits[i];
        int32_t ef = (int32_t)((b >> 23) & 0xFFu);
        int32_t e15 = ef + bias; /* the binary16 exponent field the scaled value would have */
        uint32_t code;
        if (e15 >= 1) {
            code = ((b & 0x7FFFFFFFu) >> 13) + rebase;
        } else {
            uint32_t mant = b & 0x7FFFFFu;
            int32_t s = 14 - e15;
            if (ef > 0)
                code = (mant | 0x800000u) >> (s > 31 ? 31 : s);
            else
                code = sub_shift < 32 ? mant >> sub_shift : 0u;
        }
        out[i] = (uint16_t)(code | ((b >> 16) & 0x8000u));
    }
    return WP_OK;
}

static long long bin_code(long long key, long long delta, const double *values, const double *mids, long long n_mids,
                          const long long *first)
{
    double lo, hi;
    bin_bounds(key, delta, values, &lo, &hi);
    long long a = wp_rank(mids, n_mids, lo);
    return a == wp_rank(mids, n_mids, hi) ? first[a] : -1;
}

int wp_enc_bin_codes(const double *entries, long long k, long long delta, const double *values, short *table)
{
    double *mids = malloc(sizeof(double) * (size_t)k);
    long long *first = malloc(sizeof(long long) * (size_t)k);
    if (!mids || !first) {
        free(mids);
        free(first);
        return WP_E_MEMORY;
    }
    nearest_tables(entries, k, mids, first);
    for (long long key = 0; key < HIST; key++)
        table[key] = (int16_t)((key & 0x7FFF) >= 0x7C00 ? -1 : bin_code(key, delta, values, mids, k - 1, first));
    free(mids);
    free(first);
    return WP_OK;
}

/* Indices of the nearest entries for float32 elements: a bin wholly on one side of every midpoint
 * takes its index from table (bin_codes, or with lazy all -2 on entry and filled as bins are met),
 * the others are counted one by one. */
static void assign_binned(const wp_view *v, const uint16_t *keys, long long g, long long l0, long long l1,
                          const double *entries, long long k, long long delta, const double *values, int16_t *table,
                          int lazy, double *mids, long long *first, uint8_t *out3)
{
    const float *x = v->x;
    nearest_tables(entries, k, mids, first);
    for (long long o = 0; o < v->outer; o++) {
        for (long long l = l0; l < l1; l++) {
            long long i = wp_at(v, o, g, l);
            uint16_t key = keys[i];
            long long c = table[key];
            if (lazy && c == -2) {
                c = bin_code(key, delta, values, mids, k - 1, first);
                table[key] = (int16_t)c;
            }
            if (c < 0) c = first[wp_rank(mids, k - 1, (double)x[i])];
            out3[i] = (uint8_t)c;
        }
    }
}

/* Nearest-entry indices of elements l0..l1 of one group (the chunks of one big group). */
int wp_enc_assign_chunk(const void *x, int half, const unsigned short *keys, long long outer, long long groups,
                        long long length, long long l0, long long l1, const double *entries, long long k,
                        long long delta, const double *values, void *table, unsigned char *out3)
{
    wp_view v = make_view(x, half, values, NULL, NULL, outer, groups, length, 1);
    double *mids = malloc(sizeof(double) * (size_t)k);
    long long *first = malloc(sizeof(long long) * (size_t)k);
    if (!mids || !first) {
        free(mids);
        free(first);
        return WP_E_MEMORY;
    }
    if (half)
        assign16(&v, 0, l0, l1, entries, k, table, mids, first, out3);
    else if (keys)
        assign_binned(&v, keys, 0, l0, l1, entries, k, delta, values, table, 0, mids, first, out3);
    else
        assign_search(&v, 0, l0, l1, entries, k, mids, first, out3);
    free(mids);
    free(first);
    return WP_OK;
}

/* Nearest-entry indices of groups g0..g1-1, each against its sorted LUT luts[g * k ...]: float16
 * through a lazily filled table of codes (groups of at least 4096), float32 through the bins when
 * keys are given. */
int wp_enc_assign_groups(const void *x, int half, const unsigned short *keys, long long outer, long long groups,
                         long long length, long long delta, const double *values, long long g0, long long g1,
                         const double *luts, long long k, unsigned char *out3)
{
    wp_view v = make_view(x, half, values, NULL, NULL, outer, groups, length, 1);
    int lazy16 = half && outer * length >= 4096;
    double *mids = malloc(sizeof(double) * (size_t)k);
    long long *first = malloc(sizeof(long long) * (size_t)k);
    void *table = (lazy16 || (!half && keys)) ? malloc(sizeof(uint16_t) * HIST) : NULL;
    int status = WP_E_MEMORY;
    if (!mids || !first || ((lazy16 || (!half && keys)) && !table)) goto done;
    for (long long g = g0; g < g1; g++) {
        const double *entries = luts + g * k;
        if (lazy16) {
            memset(table, 0xFF, sizeof(uint16_t) * HIST);
            assign16(&v, g, 0, length, entries, k, table, mids, first, out3);
        } else if (!half && keys) {
            for (long long i = 0; i < HIST; i++) ((int16_t *)table)[i] = -2;
            assign_binned(&v, keys, g, 0, length, entries, k, delta, values, table, 1, mids, first, out3);
        } else {
            assign_search(&v, g, 0, length, entries, k, mids, first, out3);
        }
    }
    status = WP_OK;
done:
    free(mids);
    free(first);
    free(table);
    return status;
}

/* Smallest and largest value of each group (float64; 0, 0 if there is none). */
int wp_enc_minmax_groups(const void *x, int half, const double *values, long long outer, long long groups,
                         long long length, long long g0, long long g1, double *lo_out, double *hi_out, int skip_zero)
{
    wp_view v = make_view(x, half, values, NULL, NULL, outer, groups, length, 1);
    for (long long g = g0; g < g1; g++) {
        double lo = INFINITY, hi = -INFINITY;
        for (long long o = 0; o < outer; o++) {
            for (long long l = 0; l < length; l++) {
                double value = wp_value(&v, wp_at(&v, o, g, l));
                if (skip_zero && value == 0.0) continue;
                lo = py_min(lo, value);
                hi = py_max(hi, value);
            }
        }
        lo_out[g] = lo <= hi ? lo : 0.0;
        hi_out[g] = lo <= hi ? hi : 0.0;
    }
    return WP_OK;
}

/* Up to ``limit`` sorted distinct values of each group (-0 merged into +0) into out[g * limit ..];
 * counts[g] = how many (limit + 1 means more than limit). */
int wp_enc_distinct_groups(const void *x, int half, const double *values, long long outer, long long groups,
                           long long length, long long g0, long long g1, long long limit, double *out,
                           long long *counts, int skip_zero)
{
    wp_view v = make_view(x, half, values, NULL, NULL, outer, groups, length, 1);
    double *buf = malloc(sizeof(double) * (size_t)(limit + 1));
    if (!buf) return WP_E_MEMORY;
    for (long long g = g0; g < g1; g++) {
        long long m = 0;
        for (long long o = 0; o < outer && m <= limit; o++) {
            for (long long l = 0; l < length; l++) {
                double value = wp_value(&v, wp_at(&v, o, g, l)) + 0.0;
                if (skip_zero && value == 0.0) continue;
                long long p = wp_search_left(buf, m, value);
                if (p < m && buf[p] == value) continue;
                if (m == limit) {
                    m = limit + 1;
                    break;
                }
                for (long long q = m; q > p; q--) buf[q] = buf[q - 1];
                buf[p] = value;
                m++;
            }
        }
        if (m == 0) { /* nothing but pruned zeros */
            buf[0] = 0.0;
            m = 1;
        }
        counts[g] = m;
        for (long long q = 0; q < ll_min(m, limit); q++) out[g * limit + q] = buf[q];
    }
    free(buf);
    return WP_OK;
}
