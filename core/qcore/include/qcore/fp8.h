/* The weight-only FP8 (float8_e4m3fn) GEMV and dequantize, header-only, for plugins to compile into their own
 * binary (qcore-plugin-fp8; qcore-plugin-torchao for torchao's Float8Tensor weights):
 * QC_FP8_EXPORTS(prefix) defines prefix_fp8_gemv, prefix_fp8_dequant and prefix_fp8_isa.
 *
 * Layout (DeepSeek-V3 / transformers / vLLM block FP8): W (N, K) row-major float8_e4m3fn bytes,
 * scale_inv float32 (ceil(N / bn), ceil(K / bk)) row-major; W[i, j] = e4m3(w[i, j]) * scale_inv[i / bn, j / bk].
 * One scale per tensor is bn = N, bk = K (a 1 x 1 grid). Edge blocks cover the rows/columns that exist.
 *
 * Decoding: an e4m3 byte S.EEEE.MMM moved into float16 bits as S.0EEEE.MMM0000000, i.e.
 * ((b & 0x80) << 8) | ((b & 0x7F) << 7), is the same value times 2^-8 (exponent bias 15 instead of 7;
 * subnormals too, both formats have the same subnormal rule). The float16 -> float32 conversion
 * (vcvtph2ps) is exact, so every decoded weight is exact; the 2^8 is folded into the block scale
 * (scale_inv * 256, exact for any scale below 2^120). The two e4m3fn NaN codes (0x7F, 0xFF) are not
 * special-cased: they decode as +-480 (the bit pattern continued); the loader refuses them.
 *
 * GEMV: y (M, N) float32 = x (M, K) float32 @ W.T for M <= QF8_MAX_ROWS. OpenMP over output rows; per
 * row and block, the decoded weights meet every row of x in FMAs, the block's sums are scaled once.
 * The result equals float32 x @ dequantized W up to float32 summation order.
 *
 * Dequantize: out (N, K) = e4m3(w) * scale_inv per block, float32 (bit-identical to torch's
 * float32(w) * scale_inv: the same exact product rounded once) or bfloat16 (that float32 rounded to
 * nearest even).
 *
 * Variants: AVX-512 (F+BW+VL), AVX2+FMA+F16C, portable C; qc_isa() picks one at run time
 * (the binary's set_isa_cap lowers it for tests). Nothing is checked here: qcore/fp8.py checks every
 * tensor's dtype, shape, contiguity and storage size before calling.
 */
#ifndef QCORE_FP8_H
#define QCORE_FP8_H

#include "simd.h"

#define QF8_MAX_ROWS 8

/* the e4m3 value of byte b times 2^-8, in plain C (tails and the portable variant) */
static inline float qf8_decode(uint8_t b) {
    uint32_t e = (b >> 3) & 15u, m = b & 7u, bits;
    float v;
    if (e) {
        bits = ((e + 127u - 7u - 8u) << 23) | (m << 20);
        memcpy(&v, &bits, 4);
    } else {
        v = (float)m * 0x1p-17f; /* m / 8 * 2^-6 * 2^-8 */
    }
    return (b & 0x80) ? -v : v;
}

static inline int64_t qf8_min(int64_t a, int64_t b) { return a < b ? a : b; }

#define QF8_ALWAYS_INLINE inline __attribute__((always_inline))

/* The row kernel of one variant, for a compile-time number of rows MR (always inlined into a switch). */
#define QF8_ROW_ARGS const float *x, int64_t K, const uint8_t *w, const float *srow, int64_t bk, int64_t kb, float *y, \
                     int64_t N, int64_t n

#if QC_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2,f16c")
#endif

/* 16 weights: 16 bytes -> sign-extended int16 -> float16 bits (x << 7 keeps S in bit 15, clears bit 14) -> float32 */
static QF8_ALWAYS_INLINE __m512 qf8_decode16_avx512(__m128i b) {
    __m256i h = _mm256_and_si256(_mm256_slli_epi16(_mm256_cvtepi8_epi16(b), 7), _mm256_set1_epi16((short)0xBF80));
    return _mm512_cvtph_ps(h);
}

static QF8_ALWAYS_INLINE void qf8_row_avx512(QF8_ROW_ARGS, const int MR) {
    __m512 acc[QF8_MAX_ROWS];
    for (int m = 0; m < MR; m++) acc[m] = _mm512_setzero_ps();
    for (int64_t b = 0; b < kb; b++) {
        const int64_t j0 = b * bk, j1 = qf8_min(K, j0 + bk);
        __m512 s0[QF8_MAX_ROWS], s1[QF8_MAX_ROWS];
        for (int m = 0; m < MR; m++) s0[m] = s1[m] = _mm512_setzero_ps();
        int64_t j = j0;
        for (; j + 32 <= j1; j += 32) {
            __m512 w0 = qf8_decode16_avx512(_mm_loadu_si128((const __m128i *)(w + j)));
            __m512 w1 = qf8_decode16_avx512(_mm_loadu_si128((const __m128i *)(w + j + 16)));
            for (int m = 0; m < MR; m++) {
                s0[m] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + m * K + j), s0[m]);
                s1[m] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + m * K + j + 16), s1[m]);
            }
        }
        for (; j < j1; j += 16) { /* the last 1..31 weights of the block, masked */
            const int64_t left = j1 - j;
            const __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
            __m512 w0 = qf8_decode16_avx512(_mm_maskz_loadu_epi8(mask, w + j));
            for (int m = 0; m < MR; m++) s0[m] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(mask, x + m * K + j), s0[m]);
        }
        const __m512 scale = _mm512_set1_ps(srow[b] * 256.0f);
        for (int m = 0; m < MR; m++) acc[m] = _mm512_fmadd_ps(_mm512_add_ps(s0[m], s1[m]), scale, acc[m]);
    }
    for (int m = 0; m < MR; m++) y[m * N + n] = _mm512_reduce_add_ps(acc[m]);
}

static void qf8_dequant_row_avx512(const uint8_t *w, const float *srow, int64_t K, int64_t bk, int64_t kb, void *out,
                                   int out_bf16) {
    float *o32 = (float *)out;
    uint16_t *o16 = (uint16_t *)out;
    for (int64_t b = 0; b < kb; b++) {
        const int64_t j0 = b * bk, j1 = qf8_min(K, j0 + bk);
        const __m512 scale = _mm512_set1_ps(srow[b] * 256.0f);
        for (int64_t j = j0; j < j1; j += 16) {
            const int64_t left = j1 - j;
            const __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
            __m512 v = _mm512_mul_ps(qf8_decode16_avx512(_mm_maskz_loadu_epi8(mask, w + j)), scale);
            if (!out_bf16) {
                _mm512_mask_storeu_ps(o32 + j, mask, v);
            } else { /* round to nearest even, as qc_to_bf16 (no NaN here: the decoded values are finite) */
                __m512i u = _mm512_castps_si512(v);
                __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
                u = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
                _mm256_mask_storeu_epi16(o16 + j, mask, _mm512_cvtepi32_epi16(u));
            }
        }
    }
}

#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

/* 8 weights: 8 bytes -> sign-extended int16 -> float16 bits -> float32 */
static QF8_ALWAYS_INLINE __m256 qf8_decode8_avx2(const uint8_t *p) {
    __m128i h = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)p));
    return _mm256_cvtph_ps(_mm_and_si128(_mm_slli_epi16(h, 7), _mm_set1_epi16((short)0xBF80)));
}

static QF8_ALWAYS_INLINE float qf8_hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static QF8_ALWAYS_INLINE void qf8_row_avx2(QF8_ROW_ARGS, const int MR) {
    /* 16 ymm registers: two chains per row up to 4 rows, one above */
    __m256 acc[QF8_MAX_ROWS];
    float tail_acc[QF8_MAX_ROWS];
    for (int m = 0; m < MR; m++) acc[m] = _mm256_setzero_ps(), tail_acc[m] = 0.0f;
    for (int64_t b = 0; b < kb; b++) {
        const int64_t j0 = b * bk, j1 = qf8_min(K, j0 + bk);
        __m256 s0[QF8_MAX_ROWS], s1[QF8_MAX_ROWS];
        for (int m = 0; m < MR; m++) s0[m] = s1[m] = _mm256_setzero_ps();
        int64_t j = j0;
        if (MR <= 4) {
            for (; j + 16 <= j1; j += 16) {
                __m256 w0 = qf8_decode8_avx2(w + j), w1 = qf8_decode8_avx2(w + j + 8);
                for (int m = 0; m < MR; m++) {
                    s0[m] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * K + j), s0[m]);
                    s1[m] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + m * K + j + 8), s1[m]);
                }
            }
        }
        for (; j + 8 <= j1; j += 8) {
            __m256 w0 = qf8_decode8_avx2(w + j);
            for (int m = 0; m < MR; m++) s0[m] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * K + j), s0[m]);
        }
        const float sc = srow[b] * 256.0f;
        const __m256 scale = _mm256_set1_ps(sc);
        for (int m = 0; m < MR; m++) acc[m] = _mm256_fmadd_ps(_mm256_add_ps(s0[m], s1[m]), scale, acc[m]);
        if (j < j1) { /* the last 1..7 weights of the block */
            for (int m = 0; m < MR; m++) {
                float t = 0.0f;
                for (int64_t jj = j; jj < j1; jj++) t += qf8_decode(w[jj]) * x[m * K + jj];
                tail_acc[m] += t * sc;
            }
        }
    }
    for (int m = 0; m < MR; m++) y[m * N + n] = qf8_hsum_avx2(acc[m]) + tail_acc[m];
}

static void qf8_dequant_row_avx2(const uint8_t *w, const float *srow, int64_t K, int64_t bk, int64_t kb, void *out,
                                 int out_bf16) {
    float *o32 = (float *)out;
    uint16_t *o16 = (uint16_t *)out;
    for (int64_t b = 0; b < kb; b++) {
        const int64_t j0 = b * bk, j1 = qf8_min(K, j0 + bk);
        const float sc = srow[b] * 256.0f;
        const __m256 scale = _mm256_set1_ps(sc);
        int64_t j = j0;
        for (; j + 8 <= j1; j += 8) {
            __m256 v = _mm256_mul_ps(qf8_decode8_avx2(w + j), scale);
            if (!out_bf16) {
                _mm256_storeu_ps(o32 + j, v);
            } else {
                float t[8];
                _mm256_storeu_ps(t, v);
                for (int i = 0; i < 8; i++) o16[j + i] = qc_to_bf16(t[i]);
            }
        }
        for (; j < j1; j++) {
            float v = qf8_decode(w[j]) * sc;
            if (out_bf16) o16[j] = qc_to_bf16(v);
            else o32[j] = v;
        }
    }
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif /* QC_X86 */

/* portable: a 256-entry table of decoded values, built once per call */
static QF8_ALWAYS_INLINE void qf8_row_portable(QF8_ROW_ARGS, const float *table, const int MR) {
    float acc[QF8_MAX_ROWS];
    for (int m = 0; m < MR; m++) acc[m] = 0.0f;
    for (int64_t b = 0; b < kb; b++) {
        const int64_t j0 = b * bk, j1 = qf8_min(K, j0 + bk);
        float s[QF8_MAX_ROWS];
        for (int m = 0; m < MR; m++) s[m] = 0.0f;
        for (int64_t j = j0; j < j1; j++) {
            const float wv = table[w[j]];
            for (int m = 0; m < MR; m++) s[m] += wv * x[m * K + j];
        }
        const float sc = srow[b] * 256.0f;
        for (int m = 0; m < MR; m++) acc[m] += s[m] * sc;
    }
    for (int m = 0; m < MR; m++) y[m * N + n] = acc[m];
}

static void qf8_dequant_row_portable(const uint8_t *w, const float *srow, int64_t K, int64_t bk, int64_t kb, void *out,
                                     int out_bf16) {
    for (int64_t b = 0; b < kb; b++) {
        const int64_t j0 = b * bk, j1 = qf8_min(K, j0 + bk);
        const float sc = srow[b] * 256.0f;
        for (int64_t j = j0; j < j1; j++) {
            float v = qf8_decode(w[j]) * sc;
            if (out_bf16) ((uint16_t *)out)[j] = qc_to_bf16(v);
            else ((float *)out)[j] = v;
        }
    }
}

/* one output row n for M rows of x, in the variant `isa`; M is made a compile-time constant by the switch */
#define QF8_ROWS_SWITCH(call, M)                                                                                       \
    switch (M) {                                                                                                       \
    case 1: call(1); break;                                                                                            \
    case 2: call(2); break;                                                                                            \
    case 3: call(3); break;                                                                                            \
    case 4: call(4); break;                                                                                            \
    case 5: call(5); break;                                                                                            \
    case 6: call(6); break;                                                                                            \
    case 7: call(7); break;                                                                                            \
    default: call(8); break;                                                                                           \
    }

#if QC_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2,f16c")
#endif
static void qf8_gemv_avx512(const float *x, int64_t M, int64_t K, const uint8_t *w, const float *scale, int64_t N,
                            int64_t bn, int64_t bk, float *y, int threads) {
    const int64_t kb = (K + bk - 1) / bk;
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
#define QF8_CALL(mr) qf8_row_avx512(x, K, w + n * K, scale + (n / bn) * kb, bk, kb, y, N, n, mr)
        QF8_ROWS_SWITCH(QF8_CALL, M)
#undef QF8_CALL
    }
}
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
static void qf8_gemv_avx2(const float *x, int64_t M, int64_t K, const uint8_t *w, const float *scale, int64_t N,
                          int64_t bn, int64_t bk, float *y, int threads) {
    const int64_t kb = (K + bk - 1) / bk;
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
#define QF8_CALL(mr) qf8_row_avx2(x, K, w + n * K, scale + (n / bn) * kb, bk, kb, y, N, n, mr)
        QF8_ROWS_SWITCH(QF8_CALL, M)
#undef QF8_CALL
    }
}
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif /* QC_X86 */

static void qf8_gemv_portable(const float *x, int64_t M, int64_t K, const uint8_t *w, const float *scale, int64_t N,
                              int64_t bn, int64_t bk, float *y, int threads) {
    const int64_t kb = (K + bk - 1) / bk;
    float table[256];
    for (int i = 0; i < 256; i++) table[i] = qf8_decode((uint8_t)i);
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
#define QF8_CALL(mr) qf8_row_portable(x, K, w + n * K, scale + (n / bn) * kb, bk, kb, y, N, n, table, mr)
        QF8_ROWS_SWITCH(QF8_CALL, M)
#undef QF8_CALL
    }
}

/* the variant the kernels run: QC_ISA_AVX512, QC_ISA_AVX2 (needs F16C too) or QC_ISA_PORTABLE */
static inline int qc_fp8_isa(void) {
    int isa = qc_isa();
#if QC_X86
    if (isa == QC_ISA_AVX2 && !__builtin_cpu_supports("f16c")) isa = QC_ISA_PORTABLE;
#endif
    return isa;
}

/* y (M, N) float32 = x (M, K) float32 @ (e4m3(W) * scale_inv per (bn, bk) block).T; 1 <= M <= 8 */
static inline void qc_fp8_gemv(const float *x, int64_t M, int64_t K, const uint8_t *w, const float *scale, int64_t N,
                               int64_t bn, int64_t bk, float *y, int threads) {
    if (M < 1 || M > QF8_MAX_ROWS || N < 1 || K < 1 || bn < 1 || bk < 1) return;
#if QC_X86
    const int isa = qc_fp8_isa();
    if (isa == QC_ISA_AVX512) { qf8_gemv_avx512(x, M, K, w, scale, N, bn, bk, y, threads); return; }
    if (isa == QC_ISA_AVX2) { qf8_gemv_avx2(x, M, K, w, scale, N, bn, bk, y, threads); return; }
#endif
    qf8_gemv_portable(x, M, K, w, scale, N, bn, bk, y, threads);
}

/* out (N, K) = e4m3(W) * scale_inv per block; out_bf16: 0 float32, 1 bfloat16 */
static inline void qc_fp8_dequant(const uint8_t *w, const float *scale, int64_t N, int64_t K, int64_t bn,
                                  int64_t bk, void *out, int out_bf16, int threads) {
    if (N < 1 || K < 1 || bn < 1 || bk < 1) return;
    const int64_t kb = (K + bk - 1) / bk;
    const int64_t item = out_bf16 ? 2 : 4;
    const int isa = qc_fp8_isa();
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *row = w + n * K;
        const float *srow = scale + (n / bn) * kb;
        void *o = (char *)out + n * K * item;
#if QC_X86
        if (isa == QC_ISA_AVX512) { qf8_dequant_row_avx512(row, srow, K, bk, kb, o, out_bf16); continue; }
        if (isa == QC_ISA_AVX2) { qf8_dequant_row_avx2(row, srow, K, bk, kb, o, out_bf16); continue; }
#endif
        qf8_dequant_row_portable(row, srow, K, bk, kb, o, out_bf16);
    }
}

/* Exports a plugin binary that serves FP8 weights defines with its own prefix, e.g. QC_FP8_EXPORTS(qcfp8) ->
 * qcfp8_fp8_gemv, qcfp8_fp8_dequant, qcfp8_fp8_isa (its cpu_isa / set_isa_cap come from QC_LUT4_EXPORTS or
 * its own source). */
#define QC_FP8_EXPORTS(prefix)                                                                                         \
    QC_EXPORT int prefix##_fp8_isa(void) { return qc_fp8_isa(); }                                                      \
    QC_EXPORT void prefix##_fp8_gemv(const float *x, int64_t M, int64_t K, const uint8_t *w, const float *scale,       \
                                     int64_t N, int64_t bn, int64_t bk, float *y, int threads) {                       \
        qc_fp8_gemv(x, M, K, w, scale, N, bn, bk, y, threads);                                                         \
    }                                                                                                                  \
    QC_EXPORT void prefix##_fp8_dequant(const uint8_t *w, const float *scale, int64_t N, int64_t K, int64_t bn,        \
                                        int64_t bk, void *out, int out_bf16, int threads) {                            \
        qc_fp8_dequant(w, scale, N, K, bn, bk, out, out_bf16, threads);                                                \
    }

#endif
