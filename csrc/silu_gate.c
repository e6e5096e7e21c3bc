/*
 * The tail of a SiLU-gated MLP, silu(g) * u, once numpy has computed e = exp(-g) (numpy's exp
 * is not libm's: it stays numpy's, so the bits stay the executor's):
 *
 *   y = (g / (e + 1)) * u
 *
 * the same float32 roundings as the ops' numpy calls (e += 1; g / e; * u).  y may be e.
 */
#include "weightpack.h"
#include "wp_internal.h"

int wp_silu_gate_f32(const float *g, long long g_len, const float *e, long long e_len, const float *u, long long u_len,
                     float *y, long long n)
{
    if (n < 0 || g_len != n || e_len != n || u_len != n) return WP_E_SIZE;
    for (long long i = 0; i < n; i++) y[i] = (g[i] / (e[i] + 1.0f)) * u[i];
    return WP_OK;
}
