/*
 * Run-time CPU dispatch and thread count.  Levels: 0 portable scalar, 1 AVX2 (+FMA, F16C, BMI2),
 * 2 AVX-512 (F, BW, DQ, VL, VBMI, VBMI2, VNNI: Ice Lake / Zen 4 and newer).  The level in force is the
 * detected one unless the caller lowers it (weightpack reads WEIGHTPACK_SIMD), which lets the
 * tests run every path a machine has.
 */
#include "wp_internal.h"
#include "wp_dispatch.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static unsigned long long xgetbv0(void)
{
    unsigned eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}

static int detect_level(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    if (!osxsave) return 0;
    const unsigned long long xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return 0; /* the OS saves SSE and AVX state */
    if (__get_cpuid_max(0, 0) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    const int avx2 = (b >> 5) & 1, bmi2 = (b >> 8) & 1;
    if (!(avx2 && fma && f16c && bmi2)) return 0;
    const int avx512f = (b >> 16) & 1, avx512dq = (b >> 17) & 1, avx512bw = (b >> 30) & 1,
              avx512vl = (b >> 31) & 1, vbmi = (c >> 1) & 1, vbmi2 = (c >> 6) & 1, vnni = (c >> 11) & 1;
    const int zmm_state = (xcr0 & 0xe0) == 0xe0; /* opmask and ZMM state saved by the OS */
    if (avx512f && avx512dq && avx512bw && avx512vl && vbmi && vbmi2 && vnni && zmm_state) return 2;
    return 1;
}
#else
static int detect_level(void) { return 0; }
#endif

static int detected = -1;
static int level_in_force = 0;
static int thread_count = 1;

int wp_cpu_simd_level(void)
{
    if (detected < 0) detected = detect_level();
    return detected;
}

int wp_set_simd_level(int level)
{
    int best = wp_cpu_simd_level();
    level_in_force = level < 0 ? best : (level < best ? level : best);
    return level_in_force;
}

int wp_simd_level(void) { return level_in_force; }

int wp_set_threads(int n)
{
    thread_count = n < 1 ? 1 : n;
    return thread_count;
}

int wp_threads(void) { return thread_count; }
