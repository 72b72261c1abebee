/* qcore 4-bit lookup kernels (see lut4.py), built by qcore.native. bitsandbytes NF4/FP4 is this layout.
 *
 * Layout (bitsandbytes): the row-major weight (N, K) is flattened; element i is nibble i of
 * `packed` (byte i/2, high nibble first) and belongs to block i / blocksize with scale absmax[block].
 * value = code[nibble] * absmax[block], computed in float32.
 *
 * The 16 code values sit in one AVX-512 register (two AVX2 registers) and a nibble is decoded
 * with a register permute instead of a memory lookup. Requirements checked by the caller:
 * blocksize % 16 == 0, and for the GEMM K % blocksize == 0 and M <= QC_MAX_ROWS.
 */
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define QC_MAX_ROWS 64
#define QC_MAX_BLOCK 4096

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define QC_SIMD 16
typedef __m512 vec;
static inline vec v_codes(const float *code) { return _mm512_loadu_ps(code); }
/* 16 values from 8 bytes */
static inline vec v_decode(const uint8_t *p, vec codes) {
    __m128i b = _mm_loadl_epi64((const __m128i *)p);
    __m128i m = _mm_set1_epi8(0x0F);
    __m128i pairs = _mm_unpacklo_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
    return _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(pairs), codes);
}
static inline vec v_zero(void) { return _mm512_setzero_ps(); }
static inline vec v_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void v_store(float *p, vec v) { _mm512_storeu_ps(p, v); }
static inline vec v_fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline vec v_mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
static inline vec v_add(vec a, vec b) { return _mm512_add_ps(a, b); }
static inline vec v_set1(float f) { return _mm512_set1_ps(f); }
static inline float v_sum(vec v) { return _mm512_reduce_add_ps(v); }
/* 16 int8 -> float */
static inline vec v_load_i8(const int8_t *p) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p))); }
#elif defined(__AVX2__) && defined(__FMA__)
#define QC_SIMD 8
typedef struct { __m256 lo, hi; } codes2;
typedef __m256 vec;
#define v_codes(code) ((codes2){_mm256_loadu_ps(code), _mm256_loadu_ps((code) + 8)})
/* 8 values from 4 bytes */
static inline vec v_decode(const uint8_t *p, codes2 codes) {
    uint32_t w;
    memcpy(&w, p, 4);
    __m128i b = _mm_cvtsi32_si128((int)w);
    __m128i m = _mm_set1_epi8(0x0F);
    __m128i pairs = _mm_unpacklo_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
    __m256i idx = _mm256_cvtepu8_epi32(pairs);
    __m256 lo = _mm256_permutevar8x32_ps(codes.lo, idx), hi = _mm256_permutevar8x32_ps(codes.hi, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}
static inline vec v_zero(void) { return _mm256_setzero_ps(); }
static inline vec v_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void v_store(float *p, vec v) { _mm256_storeu_ps(p, v); }
static inline vec v_fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline vec v_mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
static inline vec v_add(vec a, vec b) { return _mm256_add_ps(a, b); }
static inline vec v_set1(float f) { return _mm256_set1_ps(f); }
/* 8 int8 -> float */
static inline vec v_load_i8(const int8_t *p) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p))); }
static inline float v_sum(vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#else
/* portable fallback: one "vector" is one float; the compiler vectorizes what it can */
#define QC_SIMD 2
typedef struct { float v[2]; } vec;
typedef const float *codes_t;
#define v_codes(code) (code)
static inline vec v_decode(const uint8_t *p, codes_t code) { vec r = {{code[*p >> 4], code[*p & 15]}}; return r; }
static inline vec v_zero(void) { vec r = {{0, 0}}; return r; }
static inline vec v_load(const float *p) { vec r = {{p[0], p[1]}}; return r; }
static inline void v_store(float *p, vec v) { p[0] = v.v[0]; p[1] = v.v[1]; }
static inline vec v_fma(vec a, vec b, vec c) { vec r = {{a.v[0] * b.v[0] + c.v[0], a.v[1] * b.v[1] + c.v[1]}}; return r; }
static inline vec v_mul(vec a, vec b) { vec r = {{a.v[0] * b.v[0], a.v[1] * b.v[1]}}; return r; }
static inline vec v_add(vec a, vec b) { vec r = {{a.v[0] + b.v[0], a.v[1] + b.v[1]}}; return r; }
static inline vec v_set1(float f) { vec r = {{f, f}}; return r; }
static inline float v_sum(vec v) { return v.v[0] + v.v[1]; }
static inline vec v_load_i8(const int8_t *p) { vec r = {{(float)p[0], (float)p[1]}}; return r; }
#endif

/* float32 -> bfloat16 bits, round to nearest even (as torch's .to(torch.bfloat16)) */
static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* out[i] = code[nibble i] * absmax[i / blocksize] for n values (n % blocksize == 0).
 * out_bf16: 0 writes float32, 1 writes bfloat16 bits. */
void qc_lut4_dequant(const uint8_t *packed, const float *absmax, const float *code, int64_t n, int64_t blocksize,
                     void *out, int out_bf16, int threads) {
    const int64_t blocks = n / blocksize;
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *p = packed + b * blocksize / 2;
        vec scale = v_set1(absmax[b]);
        float buf[QC_MAX_BLOCK];
        float *dst = out_bf16 ? buf : (float *)out + b * blocksize;
        for (int64_t j = 0; j < blocksize; j += QC_SIMD)
            v_store(dst + j, v_mul(v_decode(p + j / 2, v_codes(code)), scale));
        if (out_bf16) {
            uint16_t *o = (uint16_t *)out + b * blocksize;
            for (int64_t j = 0; j < blocksize; j++) o[j] = to_bf16(buf[j]);
        }
    }
}

/* y (M, N) = x (M, K) @ W.T with W (N, K) in 4-bit blocks; float32 throughout.
 * Each block's dot products are summed unscaled and multiplied by its absmax once. */
void qc_lut4_gemm(const float *x, int64_t M, int64_t K, const uint8_t *packed, const float *absmax, const float *code,
                  int64_t N, int64_t blocksize, float *y, int threads) {
    const int64_t kb = K / blocksize;
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *row = packed + n * (K / 2);
        const float *am = absmax + n * kb;
        if (M == 1) {
            vec total = v_zero();
            for (int64_t b = 0; b < kb; b++) {
                vec s0 = v_zero(), s1 = v_zero();
                const uint8_t *p = row + b * blocksize / 2;
                const float *xb = x + b * blocksize;
                int64_t j = 0;
                for (; j + 2 * QC_SIMD <= blocksize; j += 2 * QC_SIMD) {
                    s0 = v_fma(v_decode(p + j / 2, v_codes(code)), v_load(xb + j), s0);
                    s1 = v_fma(v_decode(p + (j + QC_SIMD) / 2, v_codes(code)), v_load(xb + j + QC_SIMD), s1);
                }
                for (; j < blocksize; j += QC_SIMD) s0 = v_fma(v_decode(p + j / 2, v_codes(code)), v_load(xb + j), s0);
                total = v_fma(v_add(s0, s1), v_set1(am[b]), total);
            }
            y[n] = v_sum(total);
            continue;
        }
        float w[QC_MAX_BLOCK];
        vec acc[QC_MAX_ROWS];
        for (int64_t m = 0; m < M; m++) acc[m] = v_zero();
        for (int64_t b = 0; b < kb; b++) {
            const uint8_t *p = row + b * blocksize / 2;
            for (int64_t j = 0; j < blocksize; j += QC_SIMD) v_store(w + j, v_decode(p + j / 2, v_codes(code)));
            vec scale = v_set1(am[b]);
            for (int64_t m = 0; m < M; m++) {
                const float *xb = x + m * K + b * blocksize;
                vec s = v_zero();
                for (int64_t j = 0; j < blocksize; j += QC_SIMD) s = v_fma(v_load(w + j), v_load(xb + j), s);
                acc[m] = v_fma(s, scale, acc[m]);
            }
        }
        for (int64_t m = 0; m < M; m++) y[m * N + n] = v_sum(acc[m]);
    }
}

/* y (M, N) = x (M, K) @ (W * scale).T with W int8 (N, K) row-major and one float32 scale per row:
 * the 8-bit weight-only GEMV (decoding), float32 accumulation. K % QC_SIMD == 0 is not required. */
void qc_int8_gemm(const float *x, int64_t M, int64_t K, const int8_t *w, const float *scales, int64_t N, float *y,
                  int threads) {
    const int64_t kv = K - K % QC_SIMD;
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        const int8_t *row = w + n * K;
        for (int64_t m = 0; m < M; m++) {
            const float *xm = x + m * K;
            vec s0 = v_zero(), s1 = v_zero();
            int64_t k = 0;
            for (; k + 2 * QC_SIMD <= kv; k += 2 * QC_SIMD) {
                s0 = v_fma(v_load_i8(row + k), v_load(xm + k), s0);
                s1 = v_fma(v_load_i8(row + k + QC_SIMD), v_load(xm + k + QC_SIMD), s1);
            }
            for (; k < kv; k += QC_SIMD) s0 = v_fma(v_load_i8(row + k), v_load(xm + k), s0);
            float acc = v_sum(v_add(s0, s1));
            for (; k < K; k++) acc += (float)row[k] * xm[k];
            y[m * N + n] = acc * scales[n];
        }
    }
}
