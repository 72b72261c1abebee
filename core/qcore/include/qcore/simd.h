/* qcore shared C helpers for plugin kernels: runtime CPU dispatch and small conversions.
 *
 * Header-only, no Python or torch headers. A plugin compiles its kernels against this
 * directory (qcore.build.include_dir()) once, at install; the binary carries every SIMD
 * variant and picks one at run time with __builtin_cpu_supports, so it never depends on
 * the flags of the machine that built it.
 *
 * ISA levels: QC_ISA_PORTABLE (plain C), QC_ISA_AVX2 (AVX2 + FMA), QC_ISA_AVX512 (AVX-512 F+BW),
 * QC_ISA_AVX512_VNNI (+ VNNI, used by the int8-activation path).
 */
#ifndef QCORE_SIMD_H
#define QCORE_SIMD_H

#include <stdint.h>
#include <string.h>

#define QC_ISA_PORTABLE 0
#define QC_ISA_AVX2 1
#define QC_ISA_AVX512 2
#define QC_ISA_AVX512_VNNI 3 /* the int8 path only (lut4_q8.h); the float kernels use AVX512 there */

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define QC_X86 1
#include <immintrin.h>
#else
#define QC_X86 0
#endif

#if defined(_WIN32)
#define QC_EXPORT __declspec(dllexport)
#else
#define QC_EXPORT __attribute__((visibility("default")))
#endif

/* The highest level this CPU runs, capped by qc_isa_cap (tests lower it to check each variant). */
static int qc_isa_cap = QC_ISA_AVX512_VNNI;

static inline int qc_cpu_isa(void) {
#if QC_X86 && (defined(__GNUC__) || defined(__clang__))
    static int level = -1;
    if (level < 0) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) level = QC_ISA_AVX512;
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) level = QC_ISA_AVX2;
        else level = QC_ISA_PORTABLE;
    }
    return level;
#else
    return QC_ISA_PORTABLE;
#endif
}

static inline int qc_isa(void) {
    int level = qc_cpu_isa(), cap = qc_isa_cap < QC_ISA_AVX512 ? qc_isa_cap : QC_ISA_AVX512;
    return level < cap ? level : cap;
}

/* float32 -> bfloat16 bits, round to nearest even (as torch's .to(torch.bfloat16)) */
static inline uint16_t qc_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

#define QC_CAT2(a, b) a##_##b
#define QC_CAT(a, b) QC_CAT2(a, b)

#endif
