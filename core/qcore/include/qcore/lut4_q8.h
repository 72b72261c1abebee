/* The fast decode path of the 4-bit lookup kernels: activations quantized to int8, integer dot products.
 *
 * As llama.cpp does for its 4-bit formats: x is quantized per 64 values (QC_Q8_BLOCK) to int8 with
 * one float scale dx = max|x| / 127; the 16 code values are int8 too (code_i8, with code = code_i8 *
 * code_scale_inv: exact for integer codes such as GPTQ's 0..15, round(127 * c / max|c|) for NF4/FP4).
 * Each 64-value sub-block is one integer dot product (AVX-512 VNNI vpdpbusd, AVX2 vpmaddubsw +
 * vpmaddwd, or C), exact in int32, then scaled by absmax[block] * code_scale_inv * dx in float32.
 * The error against the exact product is bounded by the two roundings (x to int8, code to int8);
 * the plugins' tests check that bound against float64.
 *
 * Layout of the quantized x, per 64-value sub-block: the 32 even elements, then the 32 odd ones,
 * i.e. the order of a packed block's high nibbles, then its low nibbles.
 * Requires blocksize % 64 == 0, K % blocksize == 0, M <= QC_Q8_MAX_ROWS (checked by the caller).
 */
#ifndef QCORE_LUT4_Q8_H
#define QCORE_LUT4_Q8_H

#include <math.h>
#include <stdlib.h>

#include "simd.h"

#define QC_Q8_BLOCK 64
#define QC_Q8_MAX_ROWS 8

/* x (K,) float -> xq (K,) int8 in the even/odd order, dx (K/64,) scales, xsum (K/64,) sums of xq */
static void qc_q8_quantize_row(const float *x, int64_t K, int8_t *xq, float *dx, int32_t *xsum) {
    for (int64_t j = 0; j < K / QC_Q8_BLOCK; j++) {
        const float *xb = x + j * QC_Q8_BLOCK;
        float amax = 0.0f;
        for (int i = 0; i < QC_Q8_BLOCK; i++) {
            const float a = xb[i] < 0.0f ? -xb[i] : xb[i];
            amax = a > amax ? a : amax;
        }
        float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        int8_t *q = xq + j * QC_Q8_BLOCK;
        int32_t s = 0;
        for (int i = 0; i < QC_Q8_BLOCK / 2; i++) {
            int a = (int)lrintf(xb[2 * i] * id), b = (int)lrintf(xb[2 * i + 1] * id);
            a = a > 127 ? 127 : a < -127 ? -127 : a;
            b = b > 127 ? 127 : b < -127 ? -127 : b;
            q[i] = (int8_t)a;
            q[QC_Q8_BLOCK / 2 + i] = (int8_t)b;
            s += a + b;
        }
        dx[j] = d;
        xsum[j] = s;
    }
}

/* One row n of W against M quantized rows of x: y[m * N + n]. */
typedef void (*qc_q8_row_fn)(const int8_t *xq, const float *dx, const int32_t *xsum, int64_t M, int64_t K,
                             const uint8_t *row, const float *am, const int8_t *code_i8, float code_scale_inv,
                             int64_t blocksize, float *y, int64_t N, int64_t n);

static void qc_q8_row_portable(const int8_t *xq, const float *dx, const int32_t *xsum, int64_t M, int64_t K,
                               const uint8_t *row, const float *am, const int8_t *code_i8, float code_scale_inv,
                               int64_t blocksize, float *y, int64_t N, int64_t n) {
    (void)xsum;
    const int64_t subs = blocksize / QC_Q8_BLOCK, kb = K / blocksize;
    for (int64_t m = 0; m < M; m++) {
        const int8_t *xm = xq + m * K;
        const float *dm = dx + m * (K / QC_Q8_BLOCK);
        float acc = 0.0f;
        for (int64_t b = 0; b < kb; b++) {
            const float ws = am[b] * code_scale_inv;
            for (int64_t s = 0; s < subs; s++) {
                const int64_t j = b * subs + s;
                const uint8_t *p = row + j * (QC_Q8_BLOCK / 2);
                const int8_t *xj = xm + j * QC_Q8_BLOCK;
                int32_t dot = 0;
                for (int i = 0; i < QC_Q8_BLOCK / 2; i++)
                    dot += code_i8[p[i] >> 4] * xj[i] + code_i8[p[i] & 15] * xj[QC_Q8_BLOCK / 2 + i];
                acc += (float)dot * (ws * dm[j]);
            }
        }
        y[m * N + n] = acc;
    }
}

#if QC_X86
__attribute__((target("avx2,fma"))) static void qc_q8_row_avx2(
    const int8_t *xq, const float *dx, const int32_t *xsum, int64_t M, int64_t K, const uint8_t *row, const float *am,
    const int8_t *code_i8, float code_scale_inv, int64_t blocksize, float *y, int64_t N, int64_t n) {
    (void)xsum;
    const int64_t subs = blocksize / QC_Q8_BLOCK, kb = K / blocksize;
    const __m128i t = _mm_loadu_si128((const __m128i *)code_i8);
    const __m256i table = _mm256_set_m128i(t, t), mask = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    if (M == 1) { /* decoding: one accumulator, nothing indexed by m */
        __m256 a = _mm256_setzero_ps();
        for (int64_t b = 0; b < kb; b++) {
            const float ws = am[b] * code_scale_inv;
            for (int64_t s = 0; s < subs; s++) {
                const int64_t j = b * subs + s;
                const __m256i p = _mm256_loadu_si256((const __m256i *)(row + j * (QC_Q8_BLOCK / 2)));
                const __m256i whi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(p, 4), mask));
                const __m256i wlo = _mm256_shuffle_epi8(table, _mm256_and_si256(p, mask));
                const __m256i xhi = _mm256_loadu_si256((const __m256i *)(xq + j * QC_Q8_BLOCK));
                const __m256i xlo = _mm256_loadu_si256((const __m256i *)(xq + j * QC_Q8_BLOCK + 32));
                const __m256i phi = _mm256_maddubs_epi16(_mm256_sign_epi8(whi, whi), _mm256_sign_epi8(xhi, whi));
                const __m256i plo = _mm256_maddubs_epi16(_mm256_sign_epi8(wlo, wlo), _mm256_sign_epi8(xlo, wlo));
                const __m256i dot = _mm256_madd_epi16(_mm256_add_epi16(phi, plo), ones);
                a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(ws * dx[j]), a);
            }
        }
        __m128 v = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        v = _mm_add_ps(v, _mm_movehl_ps(v, v));
        v = _mm_add_ss(v, _mm_movehdup_ps(v));
        y[n] = _mm_cvtss_f32(v);
        return;
    }
    __m256 acc[QC_Q8_MAX_ROWS];
    for (int64_t m = 0; m < M; m++) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < kb; b++) {
        const float ws = am[b] * code_scale_inv;
        for (int64_t s = 0; s < subs; s++) {
            const int64_t j = b * subs + s;
            const __m256i p = _mm256_loadu_si256((const __m256i *)(row + j * (QC_Q8_BLOCK / 2)));
            const __m256i whi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(p, 4), mask));
            const __m256i wlo = _mm256_shuffle_epi8(table, _mm256_and_si256(p, mask));
            const __m256i ahi = _mm256_sign_epi8(whi, whi), alo = _mm256_sign_epi8(wlo, wlo);
            for (int64_t m = 0; m < M; m++) {
                const int8_t *xj = xq + m * K + j * QC_Q8_BLOCK;
                const __m256i xhi = _mm256_loadu_si256((const __m256i *)xj);
                const __m256i xlo = _mm256_loadu_si256((const __m256i *)(xj + 32));
                /* |w| * (x with w's sign): u8 x s8 pairs, at most 2 * 127 * 127, no int16 saturation */
                const __m256i phi = _mm256_maddubs_epi16(ahi, _mm256_sign_epi8(xhi, whi));
                const __m256i plo = _mm256_maddubs_epi16(alo, _mm256_sign_epi8(xlo, wlo));
                const __m256i dot = _mm256_madd_epi16(_mm256_add_epi16(phi, plo), ones);
                acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(ws * dx[m * (K / QC_Q8_BLOCK) + j]), acc[m]);
            }
        }
    }
    for (int64_t m = 0; m < M; m++) {
        __m128 v = _mm_add_ps(_mm256_castps256_ps128(acc[m]), _mm256_extractf128_ps(acc[m], 1));
        v = _mm_add_ps(v, _mm_movehl_ps(v, v));
        v = _mm_add_ss(v, _mm_movehdup_ps(v));
        y[m * N + n] = _mm_cvtss_f32(v);
    }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma"))) static void qc_q8_row_avx512vnni(
    const int8_t *xq, const float *dx, const int32_t *xsum, int64_t M, int64_t K, const uint8_t *row, const float *am,
    const int8_t *code_i8, float code_scale_inv, int64_t blocksize, float *y, int64_t N, int64_t n) {
    const int64_t subs = blocksize / QC_Q8_BLOCK, kb = K / blocksize, nj = K / QC_Q8_BLOCK;
    /* vpdpbusd multiplies unsigned by signed bytes: the weights go in as code_i8 + 128 (1..255), and
     * 128 * sum(xq) per sub-block is subtracted after (xsum) */
    uint8_t tu[16];
    for (int i = 0; i < 16; i++) tu[i] = (uint8_t)(code_i8[i] + 128);
    const __m512i table = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)tu));
    const __m256i mask = _mm256_set1_epi8(0x0F);
    if (M == 1) { /* decoding: two independent accumulators, nothing indexed by m */
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        float c = 0.0f;
        for (int64_t b = 0; b < kb; b++) {
            const float ws = am[b] * code_scale_inv;
            for (int64_t s = 0; s < subs; s++) {
                const int64_t j = b * subs + s;
                const __m256i p = _mm256_loadu_si256((const __m256i *)(row + j * (QC_Q8_BLOCK / 2)));
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), mask), lo = _mm256_and_si256(p, mask);
                const __m512i w = _mm512_shuffle_epi8(table, _mm512_inserti64x4(_mm512_castsi256_si512(hi), lo, 1));
                const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, _mm512_loadu_si512((const void *)(xq + j * QC_Q8_BLOCK)));
                const float sc = ws * dx[j];
                if (s & 1) a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(sc), a1);
                else a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(sc), a0);
                c += sc * (float)xsum[j];
            }
        }
        y[n] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) - 128.0f * c;
        return;
    }
    __m512 acc[QC_Q8_MAX_ROWS];
    float corr[QC_Q8_MAX_ROWS];
    for (int64_t m = 0; m < M; m++) acc[m] = _mm512_setzero_ps(), corr[m] = 0.0f;
    for (int64_t b = 0; b < kb; b++) {
        const float ws = am[b] * code_scale_inv;
        for (int64_t s = 0; s < subs; s++) {
            const int64_t j = b * subs + s;
            const __m256i p = _mm256_loadu_si256((const __m256i *)(row + j * (QC_Q8_BLOCK / 2)));
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), mask), lo = _mm256_and_si256(p, mask);
            const __m512i w = _mm512_shuffle_epi8(table, _mm512_inserti64x4(_mm512_castsi256_si512(hi), lo, 1));
            for (int64_t m = 0; m < M; m++) {
                const __m512i xv = _mm512_loadu_si512((const void *)(xq + m * K + j * QC_Q8_BLOCK));
                const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, xv);
                const float sc = ws * dx[m * nj + j];
                acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(sc), acc[m]);
                corr[m] += sc * (float)(128 * xsum[m * nj + j]);
            }
        }
    }
    for (int64_t m = 0; m < M; m++) y[m * N + n] = _mm512_reduce_add_ps(acc[m]) - corr[m];
}
#endif

static int qc_cpu_has_vnni(void) {
#if QC_X86 && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
#else
    return 0;
#endif
}

/* The variant for this CPU and cap: 3 = AVX-512 VNNI, 1..2 = AVX2, 0 = portable. */
static inline int qc_q8_isa(void) {
    int level = qc_isa();
    if (level >= QC_ISA_AVX512 && qc_isa_cap >= QC_ISA_AVX512_VNNI && qc_cpu_has_vnni()) return QC_ISA_AVX512_VNNI;
    return level >= QC_ISA_AVX2 ? QC_ISA_AVX2 : QC_ISA_PORTABLE;
}

/* y (M, N) ~= x (M, K) @ W.T with x quantized to int8 per 64 values; returns 0, or -1 when out of memory */
static inline int qc_lut4_gemm_q8(const float *x, int64_t M, int64_t K, const uint8_t *packed, const float *absmax,
                                  const int8_t *code_i8, float code_scale_inv, int64_t N, int64_t blocksize, float *y,
                                  int threads) {
    const int64_t nj = K / QC_Q8_BLOCK, kb = K / blocksize;
    int8_t *xq = (int8_t *)malloc((size_t)(M * K));
    float *dx = (float *)malloc(sizeof(float) * (size_t)(M * nj));
    int32_t *xsum = (int32_t *)malloc(sizeof(int32_t) * (size_t)(M * nj));
    if (!xq || !dx || !xsum) {
        free(xq), free(dx), free(xsum);
        return -1;
    }
    for (int64_t m = 0; m < M; m++) qc_q8_quantize_row(x + m * K, K, xq + m * K, dx + m * nj, xsum + m * nj);
    qc_q8_row_fn row_fn = qc_q8_row_portable;
#if QC_X86
    switch (qc_q8_isa()) {
    case QC_ISA_AVX512_VNNI: row_fn = qc_q8_row_avx512vnni; break;
    case QC_ISA_AVX2: row_fn = qc_q8_row_avx2; break;
    default: break;
    }
#endif
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++)
        row_fn(xq, dx, xsum, M, K, packed + n * (K / 2), absmax + n * kb, code_i8, code_scale_inv, blocksize, y, N, n);
    free(xq), free(dx), free(xsum);
    return 0;
}

#endif
