/*
 * Run-time CPU dispatch.  Levels are ordered per architecture (wp_target.h):
 *   x86_64:  scalar, avx2 (AVX2+FMA+F16C+BMI2), avx512 (F/BW/DQ/VL/VBMI/VBMI2/VNNI),
 *            avx512fp16 (+ AVX512-FP16, when the compiler could build those kernels)
 *   aarch64: scalar, neon (every aarch64 CPU), fp16 (+ binary16 arithmetic), dotprod (+ SDOT/UDOT)
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

#if WP_HAVE_AMX
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

static int amx_state = -1;

static int detect_amx(void)
{
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, 0) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    const int amx_bf16 = (d >> 22) & 1, amx_tile = (d >> 24) & 1;
    if (!(amx_bf16 && amx_tile)) return 0;
    /* Linux hands out the 8 KB tile state only to processes that ask for it */
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

int wp_cpu_has_amx(void)
{
    if (amx_state < 0) amx_state = detect_amx();
    return amx_state;
}
#endif

#elif WP_ARM64
static const char *const LEVEL_NAMES[] = {"scalar", "neon", "fp16", "dotprod"};

#if defined(__APPLE__)
#include <sys/sysctl.h>

static int sysctl_flag(const char *name)
{
    int value = 0;
    size_t size = sizeof value;
    return sysctlbyname(name, &value, &size, NULL, 0) == 0 && value;
}

static int has_fp16(void) { return sysctl_flag("hw.optional.arm.FEAT_FP16") || sysctl_flag("hw.optional.neon_fp16"); }
static int has_dotprod(void) { return sysctl_flag("hw.optional.arm.FEAT_DotProd"); }
#elif defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_FPHP
#define HWCAP_FPHP (1 << 9)
#endif
#ifndef HWCAP_ASIMDHP
#define HWCAP_ASIMDHP (1 << 10)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif

static int has_fp16(void)
{
    const unsigned long fp16 = HWCAP_FPHP | HWCAP_ASIMDHP;
    return (getauxval(AT_HWCAP) & fp16) == fp16;
}
static int has_dotprod(void) { return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0; }
#else
static int has_fp16(void) { return 0; }
static int has_dotprod(void) { return 0; }
#endif

/* Levels are cumulative: a CPU with the dot product but not binary16 arithmetic (none is known)
   stays at neon. */
static int detect_level(void)
{
    if (!has_fp16()) return WP_LEVEL_NEON;
    return has_dotprod() ? WP_LEVEL_DOTPROD : WP_LEVEL_FP16;
}

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

const char *wp_compiler(void)
{
#if defined(__clang__)
    return "clang " __clang_version__;
#elif defined(__GNUC__)
    return "gcc " __VERSION__;
#else
    return "unknown";
#endif
}

int wp_simd_level(void)
{
    if (level_in_force < 0) level_in_force = wp_cpu_simd_level();
    return level_in_force;
}
