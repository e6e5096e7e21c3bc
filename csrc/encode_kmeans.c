/* Optimal 1-D k-means by dynamic programming (the algorithm: weightpack/compress/kmeans.py).
 *
 * For sorted distinct values x with positive weights w, D[j][i] (the least SSE of values 0..i in
 * j + 1 clusters) = min over t of D[j-1][t-1] + cost(t, i), solved layer by layer by divide and
 * conquer on the monotone argmin; or, when only the k-partition is needed, by one penalized layer
 * (cost + lambda per cluster) with a deque of candidate starts, lambda searched until the optimum
 * has exactly k clusters. cost() comes from float64 prefix sums around the weighted mean. */
#include <math.h>

#include "encode.h"
#include "weightpack.h"

/* Prefix sums of w, w (x - c), w (x - c)^2, c the weighted mean (p*: m + 1 entries). */
static void fill_prefixes(const double *x, const double *w, long long m, double *p0, double *p1, double *p2)
{
    double total = 0.0, centre = 0.0;
    for (long long i = 0; i < m; i++) {
        total += w[i];
        centre += w[i] * x[i];
    }
    centre /= total;
    p0[0] = p1[0] = p2[0] = 0.0;
    for (long long i = 0; i < m; i++) {
        double d = x[i] - centre;
        p0[i + 1] = p0[i] + w[i];
        p1[i + 1] = p1[i] + w[i] * d;
        p2[i + 1] = p2[i] + w[i] * d * d;
    }
}

/* The SSE of values t..i as one cluster (tiny negative results clamped to 0). */
static inline double cost(const double *p0, const double *p1, const double *p2, long long t, long long i)
{
    double sw = p0[i + 1] - p0[t];
    double s1 = p1[i + 1] - p1[t];
    double c = (p2[i + 1] - p2[t]) - s1 * s1 / sw;
    return c > 0.0 ? c : 0.0;
}

/* splits[j * m + i]: first index of the last cluster of D[j][i], as uint16 (m <= 65536) or int32. */
typedef struct {
    void *data;
    int wide;
    long long m;
} splits_t;

static inline long long split_get(const splits_t *s, long long j, long long i)
{
    return s->wide ? (long long)((int32_t *)s->data)[j * s->m + i] : (long long)((uint16_t *)s->data)[j * s->m + i];
}

static inline void split_set(splits_t *s, long long j, long long i, long long v)
{
    if (s->wide)
        ((int32_t *)s->data)[j * s->m + i] = (int32_t)v;
    else
        ((uint16_t *)s->data)[j * s->m + i] = (uint16_t)v;
}

/* Fill the split table and sse[j] = D[j][m-1] for j < k. */
static int dp_layers(const double *x, const double *w, long long m, long long k, splits_t *splits, double *sse)
{
    double *buf = malloc(sizeof(double) * 5 * (size_t)(m + 1));
    if (!buf) return WP_E_MEMORY;
    double *p0 = buf, *p1 = p0 + m + 1, *p2 = p1 + m + 1, *prev = p2 + m + 1, *cur = prev + m + 1;
    fill_prefixes(x, w, m, p0, p1, p2);
    /* prev[t] = D[j-1][t-1]: the cost of values 0..t-1 in j clusters (index 0 unused) */
    prev[0] = 0.0;
    for (long long i = 0; i < m; i++) {
        prev[i + 1] = cost(p0, p1, p2, 0, i);
        split_set(splits, 0, i, 0);
    }
    sse[0] = prev[m];
    long long stack[128][4];
    for (long long j = 1; j < k; j++) {
        /* rows i in [j, m-1]; candidate starts t in [max(j, splits[j-1][i]), i] */
        for (long long i = 0; i < j; i++) split_set(splits, j, i, i);
        stack[0][0] = j;
        stack[0][1] = m - 1;
        stack[0][2] = j;
        stack[0][3] = m - 1;
        int top = 1;
        while (top > 0) {
            top--;
            long long ilo = stack[top][0], ihi = stack[top][1], tlo = stack[top][2], thi = stack[top][3];
            long long mid = (ilo + ihi) >> 1;
            long long lo = ll_max(tlo, split_get(splits, j - 1, mid));
            long long hi = ll_min(thi, mid);
            if (lo > hi) lo = hi;
            double a0 = p0[mid + 1], a1 = p1[mid + 1], a2 = p2[mid + 1];
            double best = INFINITY;
            long long arg = lo;
            for (long long t = lo; t <= hi; t++) {
                double s1 = a1 - p1[t];
                double c = (a2 - p2[t]) - s1 * s1 / (a0 - p0[t]);
                double v = prev[t] + (c > 0.0 ? c : 0.0);
                if (v < best) {
                    best = v;
                    arg = t;
                }
            }
            cur[mid + 1] = best;
            split_set(splits, j, mid, arg);
            if (ilo < mid) {
                stack[top][0] = ilo;
                stack[top][1] = mid - 1;
                stack[top][2] = tlo;
                stack[top][3] = arg;
                top++;
            }
            if (mid < ihi) {
                stack[top][0] = mid + 1;
                stack[top][1] = ihi;
                stack[top][2] = arg;
                stack[top][3] = thi;
                top++;
            }
        }
        sse[j] = cur[m];
        double *swap = prev;
        prev = cur;
        cur = swap;
    }
    free(buf);
    return WP_OK;
}

static void backtrack(const splits_t *splits, long long k, long long m, long long *starts)
{
    long long i = m - 1;
    for (long long j = k - 1; j >= 0; j--) {
        long long t = split_get(splits, j, i);
        starts[j] = t;
        i = t - 1;
    }
}

/* The first index of each of the min(k, m) optimal clusters (returned: their count) and the
 * optimal SSE with 1..k clusters (sse[k]; zero past m - 1). */
long long wp_kmeans_dp_solve(const double *x, const double *w, long long m, long long k, long long *starts,
                             double *sse)
{
    for (long long j = 0; j < k; j++) sse[j] = 0.0;
    if (m <= k) {
        if (m > 1) {
            splits_t s = {malloc(sizeof(int32_t) * (size_t)(m - 1) * (size_t)m), 1, m};
            if (!s.data) return WP_E_MEMORY;
            int status = dp_layers(x, w, m, m - 1, &s, sse);
            free(s.data);
            if (status) return status;
        }
        for (long long i = 0; i < m; i++) starts[i] = i;
        return m;
    }
    int wide = m > 65536;
    splits_t s = {malloc((wide ? sizeof(int32_t) : sizeof(uint16_t)) * (size_t)k * (size_t)m), wide, m};
    if (!s.data) return WP_E_MEMORY;
    int status = dp_layers(x, w, m, k, &s, sse);
    if (!status) backtrack(&s, k, m, starts);
    free(s.data);
    return status ? status : k;
}

/* Least cost(partition) + lam * clusters: F[i] for values 0..i, arg[i] the start of the last
 * cluster, cnt[i] the clusters. Returns F[m-1]; *clusters = cnt[m-1]. */
static double penalized(const double *p0, const double *p1, const double *p2, long long m, double lam, double *F,
                        long long *arg, long long *cnt, long long *dq_t, long long *dq_s, long long *clusters)
{
    long long head = 0, tail = 1;
    dq_t[0] = 0;
    dq_s[0] = 0;
    for (long long i = 0; i < m; i++) {
        while (head + 1 < tail && dq_s[head + 1] <= i) head++;
        long long t = dq_t[head];
        F[i] = (t == 0 ? lam : F[t - 1] + lam) + cost(p0, p1, p2, t, i);
        arg[i] = t;
        cnt[i] = t == 0 ? 1 : cnt[t - 1] + 1;
        long long tn = i + 1;
        if (tn >= m) break;
        double gn = F[i] + lam;
        while (tail > head) { /* drop the candidates tn beats from their first row on */
            long long tb = dq_t[tail - 1];
            long long row = ll_max(dq_s[tail - 1], tn);
            double gb = tb == 0 ? lam : F[tb - 1] + lam;
            if (gn + cost(p0, p1, p2, tn, row) < gb + cost(p0, p1, p2, tb, row))
                tail--;
            else
                break;
        }
        if (tail == head) {
            dq_t[tail] = tn;
            dq_s[tail] = tn;
            tail++;
            continue;
        }
        long long tb = dq_t[tail - 1];
        double gb = tb == 0 ? lam : F[tb - 1] + lam;
        long long base = ll_max(dq_s[tail - 1], tn);
        long long lo = base + 1, hi = m; /* the first row where tn is strictly better lies in [lo, hi]; m: none */
        long long step = 1;
        while (base + step < m) {
            long long row = base + step;
            if (gn + cost(p0, p1, p2, tn, row) < gb + cost(p0, p1, p2, tb, row)) {
                hi = row;
                break;
            }
            lo = row + 1;
            step *= 2;
        }
        while (lo < hi) {
            long long mid = (lo + hi) >> 1;
            if (gn + cost(p0, p1, p2, tn, mid) < gb + cost(p0, p1, p2, tb, mid))
                hi = mid;
            else
                lo = mid + 1;
        }
        if (lo < m) {
            dq_t[tail] = tn;
            dq_s[tail] = lo;
            tail++;
        }
    }
    *clusters = cnt[m - 1];
    return F[m - 1];
}

static long long dp_starts(const double *x, const double *w, long long m, long long k, long long *starts)
{
    double *sse = malloc(sizeof(double) * (size_t)k);
    if (!sse) return WP_E_MEMORY;
    long long q = wp_kmeans_dp_solve(x, w, m, k, starts, sse);
    free(sse);
    return q;
}

/* The first index of each of the min(k, m) clusters of the optimal k-partition: the penalized
 * one-layer DP, the k-layer DP as the fallback (kmeans.py: solve_k_in). Returns the count. */
long long wp_kmeans_solve_k(const double *x, const double *w, long long m, long long k, long long *starts)
{
    if (m <= k || k == 1 || m <= 4 * k) return dp_starts(x, w, m, k, starts);
    double *fbuf = malloc(sizeof(double) * (size_t)(4 * m + 3));
    long long *ibuf = malloc(sizeof(long long) * (size_t)(4 * m + 2));
    long long bins = ll_min(m, 256);
    double *coarse_buf = malloc(sizeof(double) * (size_t)(2 * bins + k + 1));
    long long *coarse_starts = malloc(sizeof(long long) * (size_t)(k + 1));
    long long result = WP_E_MEMORY;
    if (!fbuf || !ibuf || !coarse_buf || !coarse_starts) goto done;
    double *p0 = fbuf, *p1 = p0 + m + 1, *p2 = p1 + m + 1, *F = p2 + m + 1;
    long long *arg = ibuf, *cnt = arg + m, *dq_t = cnt + m, *dq_s = dq_t + m + 1;
    fill_prefixes(x, w, m, p0, p1, p2);
    double *cx = coarse_buf, *cw = cx + bins, *coarse = cw + bins; /* a first penalty from bins */
    for (long long b = 0; b < bins; b++) {
        long long lo = b * m / bins, hi = (b + 1) * m / bins;
        cw[b] = p0[hi] - p0[lo];
        cx[b] = (p1[hi] - p1[lo]) / cw[b];
    }
    long long status = wp_kmeans_dp_solve(cx, cw, bins, k + 1, coarse_starts, coarse);
    if (status < 0) {
        result = status;
        goto done;
    }
    double lam = coarse[k - 2] - coarse[k - 1];
    if (!(lam > 0.0)) {
        result = dp_starts(x, w, m, k, starts);
        goto done;
    }
    long long more_c = -1, fewer_c = -1;
    double more_d = 0.0, more_lam = 0.0, fewer_d = 0.0, fewer_lam = INFINITY;
    for (int attempt = 0; attempt < 40; attempt++) {
        long long c;
        double value = penalized(p0, p1, p2, m, lam, F, arg, cnt, dq_t, dq_s, &c);
        if (c == k) {
            long long i = m - 1;
            for (long long j = k - 1; j >= 0; j--) {
                starts[j] = arg[i];
                i = arg[i] - 1;
            }
            result = k;
            goto done;
        }
        double d = value - lam * (double)c;
        if (c > k) {
            more_c = c;
            more_d = d;
            more_lam = lam;
        } else {
            fewer_c = c;
            fewer_d = d;
            fewer_lam = lam;
        }
        if (more_c > 0 && fewer_c > 0) {
            double next = (fewer_d - more_d) / (double)(more_c - fewer_c); /* the slope between the two optima */
            if (!(more_lam < next && next < fewer_lam) || next == lam) next = 0.5 * (more_lam + fewer_lam);
            if (!(more_lam < next && next < fewer_lam)) break;
            lam = next;
        } else {
            double ratio = (double)c / (double)k;
            lam *= ratio * (ratio * ratio);
        }
    }
    result = dp_starts(x, w, m, k, starts);
done:
    free(fbuf);
    free(ibuf);
    free(coarse_buf);
    free(coarse_starts);
    return result;
}

/* Weighted mean of each run x[starts[c]:starts[c+1]] (float64). */
void wp_kmeans_means(const double *x, const double *w, long long m, const long long *starts, long long q, double *out)
{
    for (long long c = 0; c < q; c++) {
        long long hi = c + 1 < q ? starts[c + 1] : m;
        double s0 = 0.0, s1 = 0.0;
        for (long long i = starts[c]; i < hi; i++) {
            s0 += w[i];
            s1 += w[i] * x[i];
        }
        out[c] = s1 / s0;
    }
}

int wp_enc_kmeans_dp(const double *x, const double *w, long long m, long long k, long long *starts, double *sse,
                     long long *count)
{
    if (m < 1 || k < 1) return WP_E_ARG;
    long long q = wp_kmeans_dp_solve(x, w, m, k, starts, sse);
    if (q < 0) return (int)q;
    *count = q;
    return WP_OK;
}

int wp_enc_kmeans_solve_k(const double *x, const double *w, long long m, long long k, long long *starts,
                          long long *count)
{
    if (m < 1 || k < 1) return WP_E_ARG;
    long long q = wp_kmeans_solve_k(x, w, m, k, starts);
    if (q < 0) return (int)q;
    *count = q;
    return WP_OK;
}
