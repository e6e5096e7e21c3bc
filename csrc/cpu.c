/*
 * Run-time CPU dispatch.  Levels are ordered per architecture (wp_target.h):
 *   x86_64:  scalar, avx2 (AVX2+FMA+F16C+BMI2), avx512 (F/BW/DQ/VL/VBMI/VBMI2/VNNI),
 *            avx512fp16 (+ AVX512-FP16, when the compiler could build those kernels)
 *   aarch64: scalar, neon (every aarch64 CPU), dotprod (+ SDOT/UDOT)
 * The level in force is the detected one unless the caller lowers it (weightpack reads
 * WEIGHTPACK_SIMD), which lets the tests run every path a machine has.  A level above what the
 * CPU has is refused (wp_set_simd_level returns -1), never run.
 */
#define _DEFAULT_SOURCE
#define _DARWIN_C_SOURCE
#include "wp_dispatch.h"
#include "wp_target.h"

#include <stddef.h>

#if WP_X86
#include <cpuid.h>

static const char *const LEVEL_NAMES[] = {"scalar", "avx2", "avx512", "avx512fp16"};

static unsigned long long xgetbv0(void)
{
    unsigned eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}

static int detect_level(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return WP_LEVEL_SCALAR;
    const int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    if (!osxsave) return WP_LEVEL_SCALAR;
    const unsigned long long xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return WP_LEVEL_SCALAR; /* the OS saves SSE and AVX state */
    if (__get_cpuid_max(0, 0) < 7) return WP_LEVEL_SCALAR;
    __cpuid_count(7, 0, a, b, c, d);
    const int avx2 = (b >> 5) & 1, bmi2 = (b >> 8) & 1;
    if (!(avx2 && fma && f16c && bmi2)) return WP_LEVEL_SCALAR;
    const int avx512f = (b >> 16) & 1, avx512dq = (b >> 17) & 1, avx512bw = (b >> 30) & 1,
              avx512vl = (b >> 31) & 1, vbmi = (c >> 1) & 1, vbmi2 = (c >> 6) & 1, vnni = (c >> 11) & 1,
              fp16 = (d >> 23) & 1;
    const int zmm_state = (xcr0 & 0xe0) == 0xe0; /* opmask and ZMM state saved by the OS */
    if (!(avx512f && avx512dq && avx512bw && avx512vl && vbmi && vbmi2 && vnni && zmm_state)) return WP_LEVEL_AVX2;
    return fp16 && WP_HAVE_AVX512FP16 ? WP_LEVEL_AVX512FP16 : WP_LEVEL_AVX512;
}

#elif WP_ARM64
static const char *const LEVEL_NAMES[] = {"scalar", "neon", "dotprod"};

#if defined(__APPLE__)
#include <sys/sysctl.h>

static int has_dotprod(void)
{
    int value = 0;
    size_t size = sizeof value;
    return sysctlbyname("hw.optional.arm.FEAT_DotProd", &value, &size, NULL, 0) == 0 && value;
}
#elif defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif

static int has_dotprod(void) { return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0; }
#else
static int has_dotprod(void) { return 0; }
#endif

static int detect_level(void) { return has_dotprod() ? WP_LEVEL_DOTPROD : WP_LEVEL_NEON; }

#else
static const char *const LEVEL_NAMES[] = {"scalar"};

static int detect_level(void) { return WP_LEVEL_SCALAR; }
#endif

#define LEVEL_COUNT ((int)(sizeof LEVEL_NAMES / sizeof LEVEL_NAMES[0]))

static int detected = -1;
static int level_in_force = -1;

int wp_cpu_simd_level(void)
{
    if (detected < 0) detected = detect_level();
    return detected;
}

const char *wp_simd_level_name(int level)
{
    return level >= 0 && level < LEVEL_COUNT ? LEVEL_NAMES[level] : NULL;
}

int wp_set_simd_level(int level)
{
    const int best = wp_cpu_simd_level();
    if (level > best) return -1;
    level_in_force = level < 0 ? best : level;
    return level_in_force;
}

int wp_simd_level(void)
{
    if (level_in_force < 0) level_in_force = wp_cpu_simd_level();
    return level_in_force;
}
