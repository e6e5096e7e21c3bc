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

/* Hot loop bodies marked for llvm-mca (bench/mca_x86.py compiles the SIMD sources with -DWP_MCA and
   hands the loop around each marker to llvm-mca); without WP_MCA the markers are nothing.  Extended
   asm with no operands: GCC takes a basic asm statement for a memory clobber and then keeps arrays
   of accumulators in memory, which the unmarked build does not. */
#ifdef WP_MCA
#define MCA_BEGIN(name) __asm volatile("# LLVM-MCA-BEGIN " name : :)
#define MCA_END() __asm volatile("# LLVM-MCA-END" : :)
#else
#define MCA_BEGIN(name) ((void)0)
#define MCA_END() ((void)0)
#endif

/* AVX512-FP16 intrinsics: GCC 12+, clang 15+ (clang 14 declares them only under -mavx512fp16). */
#if WP_X86 && ((defined(__clang__) && __clang_major__ >= 15) || (!defined(__clang__) && __GNUC__ >= 12))
#define WP_HAVE_AVX512FP16 1
#else
#define WP_HAVE_AVX512FP16 0
#endif

/* AMX tile instructions: GCC 11+, clang 12+, on Linux (the kernel must grant the tile state). */
#if WP_X86 && defined(__linux__) && ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define WP_HAVE_AMX 1
#else
#define WP_HAVE_AMX 0
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
#define WP_LEVEL_FP16 2    /* + binary16 arithmetic (FEAT_FP16: fmul .8h; Apple A11 / M1, Cortex-A55 / A75 and newer) */
#define WP_LEVEL_DOTPROD 3 /* + SDOT/UDOT (FEAT_DotProd: Apple M1, Graviton 2, Cortex-A76 and newer) */
#endif

/* aarch64 instruction sets beyond the baseline (NEON is always there).  GCC's arm_neon.h
   declares every intrinsic but inlines the dot-product and fp16 ones only into functions of an
   architecture that has them (armv8.2-a, where both extensions begin); clang 14 declares them only
   under -march flags, so the kernels issue those few instructions as inline assembly, which both
   compilers assemble inside functions of these targets. */
#if WP_ARM64 && defined(__clang__)
#define WP_FP16_FEATURES "fullfp16"
#define WP_DOTPROD_FEATURES "dotprod"
#elif WP_ARM64
#define WP_FP16_FEATURES "arch=armv8.2-a+fp16"
#define WP_DOTPROD_FEATURES "arch=armv8.2-a+dotprod"
#endif

#endif
