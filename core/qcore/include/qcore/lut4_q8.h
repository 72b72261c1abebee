/* The fast decode path of the 4-bit lookup kernels: activations quantized to int8, integer dot products.
 *
 * As llama.cpp does for its 4-bit formats: x is quantized per 64 values (QC_Q8_BLOCK) to int8 with
 * one float scale dx = max|x| / 127; the 16 code values are int8 too (code_i8, with code = code_i8 *
 * code_scale_inv: exact for integer codes such as GPTQ's 0..15, round(127 * c / max|c|) for NF4/FP4).
 * Each 64-value sub-block is an integer dot product (AVX-512 VNNI vpdpbusd, AVX2 vpmaddubsw +
 * vpmaddwd, or C), exact in int32, then scaled by absmax[block] * code_scale_inv * dx in float32.
 * The error against the exact product is bounded by the two roundings (x to int8, code to int8);
 * the plugins' tests check that bound against float64.
 *
 * The weights stay in the lookup layout (row-major nibbles, high nibble first): no repacked copy.
 * The kernel walks a row in chunks of 128 values (64 packed bytes): one load, a shift and two masks
 * give the high nibbles (even values) and the low nibbles (odd values) as two registers of 64 indices,
 * vpshufb turns them into int8 codes, and two vpdpbusd against the matching 64 even and 64 odd
 * quantized x values accumulate into one int32 vector whose lanes 0..7 belong to the chunk's first
 * 64-value sub-block and lanes 8..15 to the second. So the per-sub-block float work is one convert,
 * one multiply and one FMA per 128 values and row, with the scales of both sub-blocks in one vector,
 * and no horizontal sum until the row's end. Rows of W go one at a time (QC_Q8_ROW_GROUP).
 *
 * Layout of the quantized x, per 128-value chunk: the 64 even elements, then the 64 odd ones (a last
 * chunk of 64 values when K % 128 == 64: 32 even, 32 odd).
 * Requires blocksize % 64 == 0, K % blocksize == 0, M <= QC_Q8_MAX_ROWS (checked by the caller).
 */
#ifndef QCORE_LUT4_Q8_H
#define QCORE_LUT4_Q8_H

#include <math.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "simd.h"

#define QC_Q8_BLOCK 64
#define QC_Q8_CHUNK 128
#define QC_Q8_MAX_ROWS 8
#ifndef QC_Q8_PREFETCH
#define QC_Q8_PREFETCH 1024 /* bytes ahead to prefetch the weights (0: leave it to the hardware prefetcher) */
#endif
#ifndef QC_Q8_ROW_GROUP
#define QC_Q8_ROW_GROUP 1 /* rows of W per step when decoding: 4 is 1.25x faster in cache, slower from DRAM on a 2-core VM */
#endif

/* One row of x, quantized: xq (K,) int8 in the chunk order above, dx (K/64,) scales, and for the VNNI
 * kernel per 8 values (one int32 lane): dxv (K/8,) the lane's dx * code_scale_inv and corr (K/8,) the
 * lane's -offset * (sum of its 8 xq values), which removes the offset added to the codes. */
typedef struct {
    int8_t *xq;
    float *dx, *dxv;
    int32_t *corr;
    const int32_t *first; /* per chunk c: first[2c] the block of its first sub-block, first[2c + 1] how many blocks
                           * later its second sub-block is (0 or 1); shared by the rows of x */
} qc_q8_x;

static inline int64_t qc_q8_pos(int64_t K, int64_t i) { /* where x[i] goes in the quantized layout */
    const int64_t c = i / QC_Q8_CHUNK, r = i % QC_Q8_CHUNK, half = (K - c * QC_Q8_CHUNK) < QC_Q8_CHUNK ? 32 : 64;
    return c * QC_Q8_CHUNK + (r & 1) * half + r / 2;
}

/* Quantize chunks [c0, c1) of x (the tail chunk of 64 values included) in plain C */
static void qc_q8_quantize_chunks(const float *x, int64_t K, const qc_q8_x *q, int offset, float code_scale_inv,
                                  int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c++) {
        const int half = (K - c * QC_Q8_CHUNK) < QC_Q8_CHUNK ? 32 : 64;
        int8_t *e = q->xq + c * QC_Q8_CHUNK, *o = e + half;
        for (int h = 0; h < half / 32; h++) { /* sub-block 2c + h: values 64h.. of the chunk */
            const float *xb = x + c * QC_Q8_CHUNK + h * QC_Q8_BLOCK;
            float amax = 0.0f;
            for (int i = 0; i < QC_Q8_BLOCK; i++) {
                const float a = xb[i] < 0.0f ? -xb[i] : xb[i];
                amax = a > amax ? a : amax;
            }
            const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
            q->dx[2 * c + h] = amax / 127.0f;
            for (int t = 0; t < 32; t++) {
                int a = (int)lrintf(xb[2 * t] * id), b = (int)lrintf(xb[2 * t + 1] * id);
                e[32 * h + t] = (int8_t)(a > 127 ? 127 : a < -127 ? -127 : a);
                o[32 * h + t] = (int8_t)(b > 127 ? 127 : b < -127 ? -127 : b);
            }
        }
        /* lane l: xq bytes 4l..4l+3 of the even half and of the odd half, in sub-block 2c + (l >= 8) */
        for (int l = 0; l < half / 4; l++) {
            int32_t sum = 0;
            for (int i = 0; i < 4; i++) sum += e[4 * l + i] + o[4 * l + i];
            q->corr[c * 16 + l] = -offset * sum;
            q->dxv[c * 16 + l] = q->dx[2 * c + (l >= 8)] * code_scale_inv;
        }
    }
}

static void qc_q8_quantize_row(const float *x, int64_t K, const qc_q8_x *q, int offset, float code_scale_inv) {
    qc_q8_quantize_chunks(x, K, q, offset, code_scale_inv, 0, (K + QC_Q8_CHUNK - 1) / QC_Q8_CHUNK);
}

/* Rows [n0, n1) of W against M quantized rows of x: y[m * N + n]. */
typedef void (*qc_q8_rows_fn)(const qc_q8_x *xs, int64_t M, int64_t K, const uint8_t *packed, const float *absmax,
                              const int8_t *code_i8, float code_scale_inv, int64_t blocksize, float *y, int64_t N,
                              int64_t n0, int64_t n1);

static void qc_q8_rows_portable(const qc_q8_x *xs, int64_t M, int64_t K, const uint8_t *packed, const float *absmax,
                                const int8_t *code_i8, float code_scale_inv, int64_t blocksize, float *y, int64_t N,
                                int64_t n0, int64_t n1) {
    const int64_t kb = K / blocksize;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = packed + n * (K / 2);
        const float *am = absmax + n * kb;
        for (int64_t m = 0; m < M; m++) {
            float acc = 0.0f;
            for (int64_t j = 0; j < K / QC_Q8_BLOCK; j++) {
                const uint8_t *p = row + j * (QC_Q8_BLOCK / 2);
                int32_t dot = 0;
                for (int i = 0; i < QC_Q8_BLOCK / 2; i++) {
                    const int64_t v = j * QC_Q8_BLOCK + 2 * i;
                    dot += code_i8[p[i] >> 4] * xs[m].xq[qc_q8_pos(K, v)] + code_i8[p[i] & 15] * xs[m].xq[qc_q8_pos(K, v + 1)];
                }
                acc += (float)dot * (am[j * QC_Q8_BLOCK / blocksize] * code_scale_inv * xs[m].dx[j]);
            }
            y[m * N + n] = acc;
        }
    }
}

#if QC_X86
/* AVX2: signed codes, |w| * (x with w's sign) (vpmaddubsw: at most 2 * 127 * 127 per int16, no saturation),
 * each 64-value sub-block's dot summed in int32 and scaled once */
__attribute__((target("avx2,fma"))) static void qc_q8_rows_avx2(
    const qc_q8_x *xs, int64_t M, int64_t K, const uint8_t *packed, const float *absmax, const int8_t *code_i8,
    float code_scale_inv, int64_t blocksize, float *y, int64_t N, int64_t n0, int64_t n1) {
    const int64_t kb = K / blocksize;
    const __m128i t = _mm_loadu_si128((const __m128i *)code_i8);
    const __m256i table = _mm256_set_m128i(t, t), mask = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = packed + n * (K / 2);
        const float *am = absmax + n * kb;
        __m256 acc[QC_Q8_MAX_ROWS];
        for (int64_t m = 0; m < M; m++) acc[m] = _mm256_setzero_ps();
        for (int64_t j = 0; j < K / QC_Q8_BLOCK; j++) {
            /* sub-block j: packed bytes 32j.., x at chunk j/2, half j%2 of its even and odd parts */
            const int64_t c = j / 2, half = (K - c * QC_Q8_CHUNK) < QC_Q8_CHUNK ? 32 : 64;
            const int64_t xoff = c * QC_Q8_CHUNK + (j & 1) * 32;
            const __m256i p = _mm256_loadu_si256((const __m256i *)(row + j * (QC_Q8_BLOCK / 2)));
            const __m256i whi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(p, 4), mask));
            const __m256i wlo = _mm256_shuffle_epi8(table, _mm256_and_si256(p, mask));
            const __m256i ahi = _mm256_sign_epi8(whi, whi), alo = _mm256_sign_epi8(wlo, wlo);
            const float ws = am[j * QC_Q8_BLOCK / blocksize] * code_scale_inv;
            for (int64_t m = 0; m < M; m++) {
                const __m256i xe = _mm256_loadu_si256((const __m256i *)(xs[m].xq + xoff));
                const __m256i xo = _mm256_loadu_si256((const __m256i *)(xs[m].xq + xoff + half));
                const __m256i dhi = _mm256_madd_epi16(_mm256_maddubs_epi16(ahi, _mm256_sign_epi8(xe, whi)), ones);
                const __m256i dlo = _mm256_madd_epi16(_mm256_maddubs_epi16(alo, _mm256_sign_epi8(xo, wlo)), ones);
                acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(dhi, dlo)), _mm256_set1_ps(ws * xs[m].dx[j]), acc[m]);
            }
        }
        for (int64_t m = 0; m < M; m++) {
            __m128 v = _mm_add_ps(_mm256_castps256_ps128(acc[m]), _mm256_extractf128_ps(acc[m], 1));
            v = _mm_add_ps(v, _mm_movehl_ps(v, v));
            v = _mm_add_ss(v, _mm_movehdup_ps(v));
            y[m * N + n] = _mm_cvtss_f32(v);
        }
    }
}

#define QC_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")))

/* The two sub-blocks' absmax of chunk c as one vector: lanes 0..7 the first, 8..15 the second.
 * mode 0: blocks of 64 (one absmax per sub-block); 1: blocks of a multiple of 128 (one absmax per chunk, block
 * first[c]); 2: any multiple of 64 (blocks first[c] and first[c] + second[c]) */
QC_VNNI_TARGET static inline __attribute__((always_inline)) __m512 qc_q8_chunk_absmax(const float *am, int64_t c,
                                                                                     const int32_t *first, int mode) {
    if (mode == 0) {
        const __m512i idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd((const double *)(am + 2 * c)))));
    }
    const float *b = am + first[2 * c];
    if (mode == 1) return _mm512_set1_ps(b[0]);
    return _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(b[0]), _mm512_set1_ps(b[first[2 * c + 1]]));
}

/* NR rows of W (row stride K/2 bytes) against one row of x; the last chunk may be 64 values (ymm) */
QC_VNNI_TARGET static inline __attribute__((always_inline)) void qc_q8_vnni_rows1x(
    const qc_q8_x *x, int64_t K, const uint8_t *row0, const float *am0, int64_t kb, __m512i table,
    const int32_t *first, int mode, float *out, int NR) {
    const __m512i mask = _mm512_set1_epi8(0x0F);
    const int64_t full = K / QC_Q8_CHUNK;
    __m512 acc[QC_Q8_ROW_GROUP];
    for (int r = 0; r < NR; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < full; c++) {
        const __m512i xe = _mm512_loadu_si512((const void *)(x->xq + c * QC_Q8_CHUNK));
        const __m512i xo = _mm512_loadu_si512((const void *)(x->xq + c * QC_Q8_CHUNK + 64));
        const __m512i corr = _mm512_loadu_si512((const void *)(x->corr + c * 16));
        const __m512 dxv = _mm512_loadu_ps(x->dxv + c * 16);
        for (int r = 0; r < NR; r++) {
#if QC_Q8_PREFETCH
            _mm_prefetch((const char *)(row0 + r * (K / 2) + c * 64 + QC_Q8_PREFETCH), _MM_HINT_T0);
#endif
            const __m512i p = _mm512_loadu_si512((const void *)(row0 + r * (K / 2) + c * 64));
            const __m512i whi = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(p, 4), mask));
            const __m512i wlo = _mm512_shuffle_epi8(table, _mm512_and_si512(p, mask));
            const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(corr, whi, xe), wlo, xo);
            const __m512 s = _mm512_mul_ps(dxv, qc_q8_chunk_absmax(am0 + r * kb, c, first, mode));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[r]);
        }
    }
    if (K % QC_Q8_CHUNK) { /* 64 values: 32 bytes of each row, sub-block K/64 - 1 */
        const int64_t c = full;
        const __m256i xe = _mm256_loadu_si256((const __m256i *)(x->xq + c * QC_Q8_CHUNK));
        const __m256i xo = _mm256_loadu_si256((const __m256i *)(x->xq + c * QC_Q8_CHUNK + 32));
        const __m256i corr = _mm256_loadu_si256((const __m256i *)(x->corr + c * 16));
        const __m256i m4 = _mm256_set1_epi8(0x0F), t256 = _mm512_castsi512_si256(table);
        for (int r = 0; r < NR; r++) {
            const __m256i p = _mm256_loadu_si256((const __m256i *)(row0 + r * (K / 2) + c * 64));
            const __m256i whi = _mm256_shuffle_epi8(t256, _mm256_and_si256(_mm256_srli_epi16(p, 4), m4));
            const __m256i wlo = _mm256_shuffle_epi8(t256, _mm256_and_si256(p, m4));
            const __m256i dot = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(corr, whi, xe), wlo, xo);
            const float s = x->dxv[c * 16] * am0[r * kb + first[2 * c]];
            const __m256 part = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(s));
            acc[r] = _mm512_add_ps(acc[r], _mm512_zextps256_ps512(part));
        }
    }
    for (int r = 0; r < NR; r++) out[r] = _mm512_reduce_add_ps(acc[r]);
}

/* The same quantization, 128 values at a time: even/odd split with a two-source permute in float32,
 * round to nearest even (as lrintf and torch.round), saturate to int8; lane sums by vpdpbusd with ones */
QC_VNNI_TARGET static void qc_q8_quantize_row_avx512(const float *x, int64_t K, const qc_q8_x *q, int offset,
                                                     float code_scale_inv) {
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1)), ones = _mm512_set1_epi8(1);
    const int64_t full = K / QC_Q8_CHUNK;
    for (int64_t c = 0; c < full; c++) {
        int8_t *e = q->xq + c * QC_Q8_CHUNK, *o = e + 64;
        for (int h = 0; h < 2; h++) {
            const float *xb = x + c * QC_Q8_CHUNK + h * QC_Q8_BLOCK;
            const __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16), v2 = _mm512_loadu_ps(xb + 32),
                         v3 = _mm512_loadu_ps(xb + 48);
            const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)),
                                                                  _mm512_max_ps(_mm512_abs_ps(v2), _mm512_abs_ps(v3))));
            const __m512 id = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
            q->dx[2 * c + h] = amax / 127.0f;
            const __m512 lo[2] = {v0, v2}, hi[2] = {v1, v3};
            for (int s = 0; s < 2; s++) { /* 32 values -> 16 even, 16 odd */
                const __m512i qe = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_permutex2var_ps(lo[s], even, hi[s]), id));
                const __m512i qo = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_permutex2var_ps(lo[s], odd, hi[s]), id));
                _mm_storeu_si128((__m128i *)(e + 32 * h + 16 * s), _mm512_cvtsepi32_epi8(qe));
                _mm_storeu_si128((__m128i *)(o + 32 * h + 16 * s), _mm512_cvtsepi32_epi8(qo));
            }
        }
        const __m512i sum = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ones,
                                                                    _mm512_loadu_si512((const void *)e)),
                                                ones, _mm512_loadu_si512((const void *)o));
        _mm512_storeu_si512((void *)(q->corr + c * 16), _mm512_mullo_epi32(sum, _mm512_set1_epi32(-offset)));
        const __m512 d = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(q->dx[2 * c]), _mm512_set1_ps(q->dx[2 * c + 1]));
        _mm512_storeu_ps(q->dxv + c * 16, _mm512_mul_ps(d, _mm512_set1_ps(code_scale_inv)));
    }
    qc_q8_quantize_chunks(x, K, q, offset, code_scale_inv, full, (K + QC_Q8_CHUNK - 1) / QC_Q8_CHUNK);
}

/* AVX-512 VNNI: vpdpbusd multiplies unsigned by signed bytes: the codes go in as code_i8 + offset (offset
 * 128 when a code is negative, else 0; GPTQ's 0..15 need none), and the per-lane correction (corr)
 * starts each chunk's int32 sum at -offset * sum(x) */
QC_VNNI_TARGET static void qc_q8_rows_avx512vnni(const qc_q8_x *xs, int64_t M, int64_t K, const uint8_t *packed,
                                                 const float *absmax, const int8_t *code_i8, float code_scale_inv,
                                                 int64_t blocksize, float *y, int64_t N, int64_t n0, int64_t n1) {
    (void)code_scale_inv; /* folded into dxv */
    const int64_t kb = K / blocksize;
    int offset = 0;
    for (int i = 0; i < 16; i++) offset = code_i8[i] < 0 ? 128 : offset;
    uint8_t tu[16];
    for (int i = 0; i < 16; i++) tu[i] = (uint8_t)(code_i8[i] + offset);
    const __m512i table = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)tu));
    const int32_t *first = xs[0].first;
    const int mode = blocksize == QC_Q8_BLOCK ? 0 : blocksize % QC_Q8_CHUNK == 0 ? 1 : 2;
    float out[QC_Q8_ROW_GROUP];
#define QC_Q8_VNNI_LOOP(MODE)                                                                                          \
    for (int64_t m = 0; m < M; m++) {                                                                                  \
        int64_t n = n0;                                                                                                \
        for (; n + QC_Q8_ROW_GROUP <= n1; n += QC_Q8_ROW_GROUP) {                                                      \
            qc_q8_vnni_rows1x(xs + m, K, packed + n * (K / 2), absmax + n * kb, kb, table, first, MODE, out,          \
                              QC_Q8_ROW_GROUP);                                                                        \
            for (int r = 0; r < QC_Q8_ROW_GROUP; r++) y[m * N + n + r] = out[r];                                       \
        }                                                                                                              \
        for (; n < n1; n++) {                                                                                          \
            qc_q8_vnni_rows1x(xs + m, K, packed + n * (K / 2), absmax + n * kb, kb, table, first, MODE, out, 1);     \
            y[m * N + n] = out[0];                                                                                     \
        }                                                                                                              \
    }
    if (mode == 0) {
        QC_Q8_VNNI_LOOP(0)
    } else if (mode == 1) {
        QC_Q8_VNNI_LOOP(1)
    } else {
        QC_Q8_VNNI_LOOP(2)
    }
#undef QC_Q8_VNNI_LOOP
}
#endif

static int qc_cpu_has_vnni(void) {
#if QC_X86 && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
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
    const int64_t lanes = (K + QC_Q8_CHUNK - 1) / QC_Q8_CHUNK * 16; /* padded to whole chunks */
    int8_t *xq = (int8_t *)calloc((size_t)(M * lanes * 8), 1);
    float *dx = (float *)malloc(sizeof(float) * (size_t)(M * (K / QC_Q8_BLOCK)));
    float *dxv = (float *)calloc((size_t)(M * lanes), sizeof(float));
    int32_t *corr = (int32_t *)calloc((size_t)(M * lanes), sizeof(int32_t));
    int32_t *first = (int32_t *)malloc(sizeof(int32_t) * (size_t)(lanes / 8));
    if (!xq || !dx || !dxv || !corr || !first) {
        free(xq), free(dx), free(dxv), free(corr), free(first);
        return -1;
    }
    for (int64_t c = 0; c < lanes / 16; c++) {
        first[2 * c] = (int32_t)(2 * c * QC_Q8_BLOCK / blocksize);
        first[2 * c + 1] = (int32_t)((2 * c + 1) * QC_Q8_BLOCK / blocksize) - first[2 * c];
    }
    qc_q8_rows_fn rows_fn = qc_q8_rows_portable;
    void (*quantize)(const float *, int64_t, const qc_q8_x *, int, float) = qc_q8_quantize_row;
    int offset = 0;
#if QC_X86
    switch (qc_q8_isa()) {
    case QC_ISA_AVX512_VNNI:
        rows_fn = qc_q8_rows_avx512vnni;
        quantize = qc_q8_quantize_row_avx512;
        for (int i = 0; i < 16; i++) offset = code_i8[i] < 0 ? 128 : offset;
        break;
    case QC_ISA_AVX2: rows_fn = qc_q8_rows_avx2; break;
    default: break;
    }
#endif
    qc_q8_x xs[QC_Q8_MAX_ROWS];
    for (int64_t m = 0; m < M; m++) {
        qc_q8_x q = {xq + m * lanes * 8, dx + m * (K / QC_Q8_BLOCK), dxv + m * lanes, corr + m * lanes, first};
        xs[m] = q;
        quantize(x + m * K, K, &xs[m], offset, code_scale_inv);
    }
    /* whole groups of QC_Q8_ROW_GROUP rows per thread, split evenly */
    const int64_t groups = (N + QC_Q8_ROW_GROUP - 1) / QC_Q8_ROW_GROUP;
    (void)threads;
#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        const int64_t t = 0, nt = 1;
#endif
        const int64_t g0 = groups * t / nt, g1 = groups * (t + 1) / nt;
        const int64_t n0 = g0 * QC_Q8_ROW_GROUP, n1 = g1 * QC_Q8_ROW_GROUP < N ? g1 * QC_Q8_ROW_GROUP : N;
        if (n0 < n1) rows_fn(xs, M, K, packed, absmax, code_i8, code_scale_inv, blocksize, y, N, n0, n1);
    }
    free(xq), free(dx), free(dxv), free(corr), free(first);
    return 0;
}

#endif
