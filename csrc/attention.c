/*
 * scaled_dot_product_attention of a small problem (a decoding step: a few query rows) in one
 * call, instead of numpy's batched matmuls (a BLAS call per head) and softmax passes:
 *
 *   out[h] = softmax((q[h] * scale) k[h / group]^T + mask[h]) v[h / group]
 *
 * q: (heads, lq, e); k: (heads / group, lk, e); v: (heads / group, lk, ev); out: (heads, lq, ev),
 * all contiguous. group > 1 lets `group` consecutive query heads share a key/value head
 * (grouped-query attention without materialising the repeats). mask_kind: 0 none, 1 additive
 * float32, 2 boolean bytes (nonzero keeps the position, the others get -inf); the mask is read
 * at element strides (mask_sh, mask_sq, mask_sk), 0 where it broadcasts, within mask_len.
 * Dot products accumulate in double and round once to float32, as accurate as BLAS's float32
 * sums or more; the softmax runs in float32 with libm's expf. A row whose every position is
 * masked comes out NaN, as in PyTorch.
 */
#include "weightpack.h"
#include "wp_internal.h"

#include <math.h>
#include <stdlib.h>

int wp_sdpa_f32(const float *q, long long q_len, const float *k, long long k_len, const float *v, long long v_len,
                long long heads, long long group, long long lq, long long lk, long long e, long long ev, float scale,
                int mask_kind, const void *mask, long long mask_len, long long mask_sh, long long mask_sq,
                long long mask_sk, float *out, long long out_len)
{
    if (heads < 1 || group < 1 || heads % group || lq < 1 || lk < 1 || e < 1 || ev < 1) return WP_E_SIZE;
    const long long kv_heads = heads / group;
    if (q_len != heads * lq * e || k_len != kv_heads * lk * e || v_len != kv_heads * lk * ev || out_len != heads * lq * ev)
        return WP_E_SIZE;
    if (mask_kind < 0 || mask_kind > 2) return WP_E_ARG;
    if (mask_kind && (mask_sh < 0 || mask_sq < 0 || mask_sk < 0 ||
                      (heads - 1) * mask_sh + (lq - 1) * mask_sq + (lk - 1) * mask_sk >= mask_len))
        return WP_E_SIZE;
    float *scores = malloc((size_t)lk * sizeof(float));
    float *qs = malloc((size_t)e * sizeof(float));
    double *acc = malloc((size_t)ev * sizeof(double));
    if (!scores || !qs || !acc) {
        free(scores);
        free(qs);
        free(acc);
        return WP_E_MEMORY;
    }
    const float *fmask = mask;
    const unsigned char *bmask = mask;
    for (long long h = 0; h < heads; h++) {
        const float *kh = k + (h / group) * lk * e, *vh = v + (h / group) * lk * ev;
        for (long long i = 0; i < lq; i++) {
            const float *qi = q + (h * lq + i) * e;
            for (long long d = 0; d < e; d++) qs[d] = qi[d] * scale;
            float top = -INFINITY;
            int nan = 0;
            for (long long j = 0; j < lk; j++) {
                const float *kj = kh + j * e;
                double part[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
                long long d = 0;
                for (; d + 8 <= e; d += 8)
                    for (int l = 0; l < 8; l++) part[l] += (double)qs[d + l] * (double)kj[d + l];
                for (; d < e; d++) part[0] += (double)qs[d] * (double)kj[d];
                float s = (float)(((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7])));
                const long long at = h * mask_sh + i * mask_sq + j * mask_sk;
                if (mask_kind == 1) s = s + fmask[at];
                else if (mask_kind == 2 && !bmask[at]) s = -INFINITY;
                scores[j] = s;
                if (s != s) nan = 1;
                else if (s > top) top = s;
            }
            if (nan) top = NAN;
            float total = 0.0f;
            for (long long j = 0; j < lk; j++) {
                scores[j] = expf(scores[j] - top);
                total += scores[j];
            }
            for (long long d = 0; d < ev; d++) acc[d] = 0.0;
            for (long long j = 0; j < lk; j++) {
                const double w = (double)(scores[j] / total);
                const float *vj = vh + j * ev;
                for (long long d = 0; d < ev; d++) acc[d] += w * (double)vj[d];
            }
            float *oi = out + (h * lq + i) * ev;
            for (long long d = 0; d < ev; d++) oi[d] = (float)acc[d];
        }
    }
    free(scores);
    free(qs);
    free(acc);
    return WP_OK;
}
