/* qcore 4-bit lookup kernels, the int8 and float32 GEMVs, header-only, for plugins to compile into their own binary.
 *
 * Layout (bitsandbytes NF4/FP4; affine int4 with code = 0..15): the row-major weight (N, K) is
 * flattened; element i is nibble i of `packed` (byte i/2, high nibble first) and belongs to block
 * i / blocksize with scale absmax[block]: value = code[nibble] * absmax[block], in float32.
 *
 * The 16 code values sit in one AVX-512 register (two AVX2 registers) and a nibble is decoded with a
 * register permute. Decoding one row of x (the hot case) takes the split path where a block holds whole
 * steps of 32 values (16 with AVX2): x is permuted once per call so that the high and the low nibbles of
 * 16 bytes multiply their own halves of a step with no interleaving shuffle, and an affine code (0..15)
 * is converted instead of looked up (1.6x the interleaved loop on Zen 4, docs/kernels.md). Each kernel exists in three variants (AVX-512, AVX2+FMA, portable C) compiled with
 * target pragmas, and qc_lut4_* picks one at run time (qc_isa()), so one binary serves every x86-64 CPU.
 *
 * The callers check everything (qcore.lut4 in Python): blocksize % 16 == 0 and <= QC_MAX_BLOCK,
 * K % blocksize == 0 for the GEMM, M <= QC_MAX_ROWS, and every buffer's size. Nothing is checked here.
 */
#ifndef QCORE_LUT4_H
#define QCORE_LUT4_H

#include "simd.h"
#include "lut4_q8.h"

#define QC_MAX_ROWS 64
#define QC_MAX_BLOCK 4096

#if QC_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2")
#endif
#define QC_VARIANT QC_ISA_AVX512
#include "lut4_impl.h"
#undef QC_VARIANT
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define QC_VARIANT QC_ISA_AVX2
#include "lut4_impl.h"
#undef QC_VARIANT
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

#define QC_VARIANT QC_ISA_PORTABLE
#include "lut4_impl.h"
#undef QC_VARIANT

#if QC_X86
#define QC_DISPATCH(fn, ...)                                                   \
    do {                                                                       \
        switch (qc_isa()) {                                                    \
        case QC_ISA_AVX512: QC_CAT(fn, avx512)(__VA_ARGS__); return;           \
        case QC_ISA_AVX2: QC_CAT(fn, avx2)(__VA_ARGS__); return;               \
        default: QC_CAT(fn, portable)(__VA_ARGS__); return;                    \
        }                                                                      \
    } while (0)
#else
#define QC_DISPATCH(fn, ...) QC_CAT(fn, portable)(__VA_ARGS__)
#endif

/* out[i] = code[nibble i] * absmax[i / blocksize] for n values (n % blocksize == 0); out_bf16: 0 float32, 1 bfloat16 */
static inline void qc_lut4_dequant(const uint8_t *packed, const float *absmax, const float *code, int64_t n,
                                   int64_t blocksize, void *out, int out_bf16, int threads) {
    QC_DISPATCH(qc_lut4_dequant, packed, absmax, code, n, blocksize, out, out_bf16, threads);
}

static inline void qc_lut4_gemm_dispatch(const float *x, int64_t M, int64_t K, const uint8_t *packed,
                                         const float *absmax, const float *code, const float *szeros,
                                         const float *xsums, int64_t N, int64_t blocksize, float *y, int threads) {
    QC_DISPATCH(qc_lut4_gemm, x, M, K, packed, absmax, code, szeros, xsums, N, blocksize, y, threads);
}

/* y (M, N) = x (M, K) @ W.T, W (N, K) in 4-bit blocks; float32, each block's sum scaled once */
static inline void qc_lut4_gemm(const float *x, int64_t M, int64_t K, const uint8_t *packed, const float *absmax,
                                const float *code, int64_t N, int64_t blocksize, float *y, int threads) {
    qc_lut4_gemm_dispatch(x, M, K, packed, absmax, code, NULL, NULL, N, blocksize, y, threads);
}

/* The affine form W = s * (q - z): y = x @ (code[q] * absmax).T - per block, szeros (N, K / blocksize)
 * (s * z, row-major like absmax) times the block's sum of x. 0, or 1 when the sums' buffer could not
 * be allocated. */
static inline int qc_lut4_gemm_affine(const float *x, int64_t M, int64_t K, const uint8_t *packed,
                                      const float *absmax, const float *code, const float *szeros, int64_t N,
                                      int64_t blocksize, float *y, int threads) {
    const int64_t kb = K / blocksize;
    float *xsums = (float *)malloc((size_t)(M * kb) * sizeof(float));
    if (!xsums) return 1;
    for (int64_t m = 0; m < M; m++)
        for (int64_t b = 0; b < kb; b++) {
            const float *xb = x + m * K + b * blocksize;
            float s = 0;
            for (int64_t j = 0; j < blocksize; j++) s += xb[j];
            xsums[m * kb + b] = s;
        }
    qc_lut4_gemm_dispatch(x, M, K, packed, absmax, code, szeros, xsums, N, blocksize, y, threads);
    free(xsums);
    return 0;
}

/* y (M, N) = x (M, K) @ (W * scale[:, None]).T, W int8 (N, K), one float32 scale per row */
static inline void qc_int8_gemm(const float *x, int64_t M, int64_t K, const int8_t *w, const float *scales, int64_t N,
                                float *y, int threads) {
    QC_DISPATCH(qc_int8_gemm, x, M, K, w, scales, N, y, threads);
}

/* y (M, N) = x (M, K) @ W.T, W float32 (N, K) row-major (a layer left unquantized) */
static inline void qc_f32_gemm(const float *x, int64_t M, int64_t K, const float *w, int64_t N, float *y, int threads) {
    QC_DISPATCH(qc_f32_gemm, x, M, K, w, N, y, threads);
}

/* Exports every plugin binary that uses these kernels defines with its own prefix, e.g.
 * QC_LUT4_EXPORTS(qcbnb) -> qcbnb_lut4_dequant, qcbnb_lut4_gemm, qcbnb_lut4_gemm_affine, qcbnb_int8_gemm, qcbnb_f32_gemm, qcbnb_lut4_gemm_q8, qcbnb_q8_isa,
 * qcbnb_isa, qcbnb_cpu_isa, qcbnb_set_isa_cap. */
#define QC_LUT4_EXPORTS(prefix)                                                                                        \
    QC_EXPORT void prefix##_lut4_dequant(const uint8_t *packed, const float *absmax, const float *code, int64_t n,     \
                                         int64_t blocksize, void *out, int out_bf16, int threads) {                    \
        qc_lut4_dequant(packed, absmax, code, n, blocksize, out, out_bf16, threads);                                   \
    }                                                                                                                  \
    QC_EXPORT void prefix##_lut4_gemm(const float *x, int64_t M, int64_t K, const uint8_t *packed,                     \
                                      const float *absmax, const float *code, int64_t N, int64_t blocksize, float *y,  \
                                      int threads) {                                                                   \
        qc_lut4_gemm(x, M, K, packed, absmax, code, N, blocksize, y, threads);                                         \
    }                                                                                                                  \
    QC_EXPORT int prefix##_lut4_gemm_affine(const float *x, int64_t M, int64_t K, const uint8_t *packed,             \
                                            const float *absmax, const float *code, const float *szeros, int64_t N,    \
                                            int64_t blocksize, float *y, int threads) {                                \
        return qc_lut4_gemm_affine(x, M, K, packed, absmax, code, szeros, N, blocksize, y, threads);                   \
    }                                                                                                                  \
    QC_EXPORT void prefix##_int8_gemm(const float *x, int64_t M, int64_t K, const int8_t *w, const float *scales,      \
                                      int64_t N, float *y, int threads) {                                              \
        qc_int8_gemm(x, M, K, w, scales, N, y, threads);                                                               \
    }                                                                                                                  \
    QC_EXPORT void prefix##_f32_gemm(const float *x, int64_t M, int64_t K, const float *w, int64_t N, float *y,       \
                                     int threads) {                                                                    \
        qc_f32_gemm(x, M, K, w, N, y, threads);                                                                        \
    }                                                                                                                  \
    QC_EXPORT int prefix##_lut4_gemm_q8(const float *x, int64_t M, int64_t K, const uint8_t *packed,                   \
                                        const float *absmax, const int8_t *code_i8, float code_scale_inv, int64_t N,   \
                                        int64_t blocksize, float *y, int threads) {                                    \
        return qc_lut4_gemm_q8(x, M, K, packed, absmax, code_i8, code_scale_inv, N, blocksize, y, threads);            \
    }                                                                                                                  \
    QC_EXPORT int prefix##_q8_isa(void) { return qc_q8_isa(); }                                                        \
    QC_EXPORT int prefix##_isa(void) { return qc_isa(); }                                                              \
    QC_EXPORT int prefix##_cpu_isa(void) { return qc_cpu_isa(); }                                                      \
    QC_EXPORT void prefix##_set_isa_cap(int cap) { qc_isa_cap = cap; }

#endif
