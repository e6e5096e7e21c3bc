/*
 * Architecture tests and per-file instruction-set targets.
 *
 * Every SIMD source is compiled on every platform: its body sits inside `#if WP_X86` or
 * `#if WP_ARM64`, so elsewhere it compiles to nothing.  Inside, WP_TARGET_PUSH("avx2,fma")
 * enables the instruction set for the functions that follow (GCC: `#pragma GCC target`; clang:
 * `#pragma clang attribute`), without -m flags for the whole build: the extension still runs on
 * CPUs without them, and run-time dispatch (cpu.c) decides which functions may be called.
 */
#ifndef WP_TARGET_H
#define WP_TARGET_H

#if defined(__x86_64__) || defined(_M_X64)
#define WP_X86 1
#else
#define WP_X86 0
#endif

#if defined(__aarch64__) || defined(_M_ARM64)
#define WP_ARM64 1
#else
#define WP_ARM64 0
#endif

#define WP_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define WP_TARGET_PUSH(features) WP_PRAGMA(clang attribute push(__attribute__((target(features))), apply_to = function))
#define WP_TARGET_POP() WP_PRAGMA(clang attribute pop)
#elif defined(__GNUC__)
#define WP_TARGET_PUSH(features) WP_PRAGMA(GCC push_options) WP_PRAGMA(GCC target(features))
#define WP_TARGET_POP() WP_PRAGMA(GCC pop_options)
#else
#error "weightpack's C kernels need GCC or clang (Apple clang included)"
#endif

#define WP_INLINE static inline __attribute__((always_inline))

/* AVX512-FP16 intrinsics: GCC 12+, clang 15+ (clang 14 declares them only under -mavx512fp16). */
#if WP_X86 && ((defined(__clang__) && __clang_major__ >= 15) || (!defined(__clang__) && __GNUC__ >= 12))
#define WP_HAVE_AVX512FP16 1
#else
#define WP_HAVE_AVX512FP16 0
#endif

/* The instruction sets of the AVX-512 level (cpu.c checks each of them). */
#define WP_AVX512_FEATURES "avx512f,avx512bw,avx512dq,avx512vl,avx512vbmi,avx512vbmi2,avx512vnni,avx2,fma,f16c,bmi2,popcnt"

/* Run-time SIMD levels, ordered: a level implies every lower one of its architecture. */
#define WP_LEVEL_SCALAR 0
#if WP_X86
#define WP_LEVEL_AVX2 1       /* AVX2, FMA, F16C, BMI2 */
#define WP_LEVEL_AVX512 2     /* + AVX-512 F/BW/DQ/VL/VBMI/VBMI2/VNNI (Ice Lake, Zen 4 and newer) */
#define WP_LEVEL_AVX512FP16 3 /* + AVX512-FP16 (Sapphire Rapids and newer Intel server CPUs) */
#elif WP_ARM64
#define WP_LEVEL_NEON 1    /* Advanced SIMD (every aarch64 CPU) */
#define WP_LEVEL_DOTPROD 2 /* + SDOT/UDOT (FEAT_DotProd: Apple M1, Graviton 2, Cortex-A76 and newer) */
#endif

#endif
