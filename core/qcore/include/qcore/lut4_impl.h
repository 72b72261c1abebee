/* One SIMD variant of the lookup kernels; included by lut4.h once per ISA with QC_VARIANT set
 * (QC_ISA_AVX512, QC_ISA_AVX2 or QC_ISA_PORTABLE) inside a matching target pragma. Every name
 * defined here gets the variant's suffix (QC_V(name)). Do not include it directly. */
#if QC_VARIANT == QC_ISA_AVX512
#define QC_SFX avx512
#elif QC_VARIANT == QC_ISA_AVX2
#define QC_SFX avx2
#else
#define QC_SFX portable
#endif
#define QC_V(name) QC_CAT(name, QC_SFX)
#define vec QC_V(vec)
#define codes_t QC_V(codes_t)
#define v_codes QC_V(v_codes)
#define v_decode QC_V(v_decode)
#define v_zero QC_V(v_zero)
#define v_load QC_V(v_load)
#define v_store QC_V(v_store)
#define v_fma QC_V(v_fma)
#define v_mul QC_V(v_mul)
#define v_add QC_V(v_add)
#define v_set1 QC_V(v_set1)
#define v_sum QC_V(v_sum)
#define v_load_i8 QC_V(v_load_i8)
#define v_decode_split QC_V(v_decode_split)
#define v_lookup QC_V(v_lookup)

#if QC_VARIANT == QC_ISA_AVX512
#define QC_SIMD 16
typedef __m512 vec;
typedef __m512 codes_t;
static inline codes_t v_codes(const float *code) { return _mm512_loadu_ps(code); }
/* 16 values from 8 bytes: the code sits in one register, a nibble picks a lane */
static inline vec v_decode(const uint8_t *p, codes_t codes) {
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
static inline vec v_load_i8(const int8_t *p) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p))); }
/* 32 values from 16 bytes, unshuffled: the high nibbles (elements 0, 2, .., 30) and the low ones (1, 3, .., 31);
 * ident: the code is 0..15, so a value is its nibble (a convert, not a table lookup) */
static inline void v_decode_split(const uint8_t *p, codes_t codes, int ident, vec *even, vec *odd) {
    __m128i b = _mm_loadu_si128((const __m128i *)p);
    __m128i m = _mm_set1_epi8(0x0F);
    __m512i hi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), m));
    __m512i lo = _mm512_cvtepu8_epi32(_mm_and_si128(b, m));
    *even = ident ? _mm512_cvtepi32_ps(hi) : _mm512_permutexvar_ps(hi, codes);
    *odd = ident ? _mm512_cvtepi32_ps(lo) : _mm512_permutexvar_ps(lo, codes);
}
#elif QC_VARIANT == QC_ISA_AVX2
#define QC_SIMD 8
typedef __m256 vec;
typedef struct { __m256 lo, hi; } codes_t;
static inline codes_t v_codes(const float *code) { codes_t c = {_mm256_loadu_ps(code), _mm256_loadu_ps(code + 8)}; return c; }
/* code[idx] for 8 indices 0..15: a permute of each half of the code, the half picked by bit 3 */
static inline vec v_lookup(__m256i idx, codes_t codes) {
    __m256 lo = _mm256_permutevar8x32_ps(codes.lo, idx), hi = _mm256_permutevar8x32_ps(codes.hi, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}
/* 8 values from 4 bytes */
static inline vec v_decode(const uint8_t *p, codes_t codes) {
    uint32_t w;
    memcpy(&w, p, 4);
    __m128i b = _mm_cvtsi32_si128((int)w);
    __m128i m = _mm_set1_epi8(0x0F);
    __m128i pairs = _mm_unpacklo_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
    return v_lookup(_mm256_cvtepu8_epi32(pairs), codes);
}
static inline vec v_zero(void) { return _mm256_setzero_ps(); }
static inline vec v_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void v_store(float *p, vec v) { _mm256_storeu_ps(p, v); }
static inline vec v_fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline vec v_mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
static inline vec v_add(vec a, vec b) { return _mm256_add_ps(a, b); }
static inline vec v_set1(float f) { return _mm256_set1_ps(f); }
static inline vec v_load_i8(const int8_t *p) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p))); }
/* 16 values from 8 bytes, unshuffled: the high nibbles (elements 0, 2, .., 14) and the low ones (1, 3, .., 15) */
static inline void v_decode_split(const uint8_t *p, codes_t codes, int ident, vec *even, vec *odd) {
    __m128i b = _mm_loadl_epi64((const __m128i *)p);
    __m128i m = _mm_set1_epi8(0x0F);
    __m256i hi = _mm256_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), m));
    __m256i lo = _mm256_cvtepu8_epi32(_mm_and_si128(b, m));
    *even = ident ? _mm256_cvtepi32_ps(hi) : v_lookup(hi, codes);
    *odd = ident ? _mm256_cvtepi32_ps(lo) : v_lookup(lo, codes);
}
static inline float v_sum(vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#else
/* portable: one "vector" is two floats; the compiler vectorizes what it can */
#define QC_SIMD 2
typedef struct { float v[2]; } vec;
typedef const float *codes_t;
static inline codes_t v_codes(const float *code) { return code; }
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

static void QC_V(qc_lut4_dequant)(const uint8_t *packed, const float *absmax, const float *code, int64_t n,
                                  int64_t blocksize, void *out, int out_bf16, int threads) {
    const int64_t blocks = n / blocksize;
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *p = packed + b * blocksize / 2;
        vec scale = v_set1(absmax[b]);
        float buf[QC_MAX_BLOCK];
        float *dst = out_bf16 ? buf : (float *)out + b * blocksize;
        for (int64_t j = 0; j < blocksize; j += QC_SIMD) v_store(dst + j, v_mul(v_decode(p + j / 2, v_codes(code)), scale));
        if (out_bf16) {
            uint16_t *o = (uint16_t *)out + b * blocksize;
            for (int64_t j = 0; j < blocksize; j++) o[j] = qc_to_bf16(buf[j]);
        }
    }
}

#if QC_VARIANT != QC_ISA_PORTABLE
#define QC_SPLIT (2 * QC_SIMD) /* values decoded per step of the split path */
/* One row of W (kb blocks) against x permuted by QC_V(split_x): no nibble interleaving in the loop */
static inline vec QC_V(row_dot_split)(const uint8_t *row, const float *am, const float *xp, int64_t kb,
                                      int64_t blocksize, codes_t codes, int ident) {
    vec total = v_zero();
    for (int64_t b = 0; b < kb; b++) {
        vec s0 = v_zero(), s1 = v_zero();
        const uint8_t *p = row + b * blocksize / 2;
        const float *xb = xp + b * blocksize;
        for (int64_t j = 0; j < blocksize; j += QC_SPLIT) {
            vec even, odd;
            v_decode_split(p + j / 2, codes, ident, &even, &odd);
            s0 = v_fma(even, v_load(xb + j), s0);
            s1 = v_fma(odd, v_load(xb + j + QC_SIMD), s1);
        }
        total = v_fma(v_add(s0, s1), v_set1(am[b]), total);
    }
    return total;
}

/* x (K) -> xp (K): in each QC_SPLIT values, the even elements first, then the odd ones */
static inline void QC_V(split_x)(const float *x, int64_t K, float *xp) {
    for (int64_t c = 0; c < K; c += QC_SPLIT)
        for (int64_t i = 0; i < QC_SIMD; i++) {
            xp[c + i] = x[c + 2 * i];
            xp[c + QC_SIMD + i] = x[c + 2 * i + 1];
        }
}
#endif

/* szeros, xsums: NULL, or the affine term: y[m, n] -= sum_b szeros[n * kb + b] * xsums[m * kb + b] */
static void QC_V(qc_lut4_gemm)(const float *x, int64_t M, int64_t K, const uint8_t *packed, const float *absmax,
                               const float *code, const float *szeros, const float *xsums, int64_t N,
                               int64_t blocksize, float *y, int threads) {
    const int64_t kb = K / blocksize;
    float *xp = NULL; /* decoding (M == 1) with whole split steps per block: x permuted once, then the split path */
    int ident = 1;    /* the code is 0..15 (affine int4): values are the nibbles themselves */
    for (int i = 0; i < 16; i++) ident &= code[i] == (float)i;
#if QC_VARIANT != QC_ISA_PORTABLE
    if (M == 1 && blocksize % QC_SPLIT == 0 && (xp = (float *)malloc((size_t)K * sizeof(float))) != NULL)
        QC_V(split_x)(x, K, xp);
#endif
    (void)threads;
    (void)ident;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *row = packed + n * (K / 2);
        const float *am = absmax + n * kb;
#if QC_VARIANT != QC_ISA_PORTABLE
        if (xp) {
            vec total = ident ? QC_V(row_dot_split)(row, am, xp, kb, blocksize, v_codes(code), 1)
                              : QC_V(row_dot_split)(row, am, xp, kb, blocksize, v_codes(code), 0);
            float out = v_sum(total);
            if (szeros)
                for (int64_t b = 0; b < kb; b++) out -= szeros[n * kb + b] * xsums[b];
            y[n] = out;
            continue;
        }
#endif
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
            float out = v_sum(total);
            if (szeros)
                for (int64_t b = 0; b < kb; b++) out -= szeros[n * kb + b] * xsums[b];
            y[n] = out;
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
        for (int64_t m = 0; m < M; m++) {
            float out = v_sum(acc[m]);
            if (szeros)
                for (int64_t b = 0; b < kb; b++) out -= szeros[n * kb + b] * xsums[m * kb + b];
            y[m * N + n] = out;
        }
    }
    free(xp);
}

/* The dot product of one row of W (element type T, loaded as floats by vload) with one row of x, over K values:
 * two accumulators, then a scalar tail. row_dot_i8 for the int8 GEMV, row_dot_f32 for the float32 one. */
#define QC_ROW_DOT(name, T, vload)                                                                                     \
    static inline float QC_V(name)(const T *row, const float *xm, int64_t K) {                                         \
        const int64_t kv = K - K % QC_SIMD;                                                                            \
        vec s0 = v_zero(), s1 = v_zero();                                                                              \
        int64_t k = 0;                                                                                                 \
        for (; k + 2 * QC_SIMD <= kv; k += 2 * QC_SIMD) {                                                              \
            s0 = v_fma(vload(row + k), v_load(xm + k), s0);                                                            \
            s1 = v_fma(vload(row + k + QC_SIMD), v_load(xm + k + QC_SIMD), s1);                                        \
        }                                                                                                              \
        for (; k < kv; k += QC_SIMD) s0 = v_fma(vload(row + k), v_load(xm + k), s0);                                   \
        float acc = v_sum(v_add(s0, s1));                                                                              \
        for (; k < K; k++) acc += (float)row[k] * xm[k];                                                               \
        return acc;                                                                                                    \
    }
QC_ROW_DOT(row_dot_i8, int8_t, v_load_i8)
QC_ROW_DOT(row_dot_f32, float, v_load)
#undef QC_ROW_DOT

static void QC_V(qc_int8_gemm)(const float *x, int64_t M, int64_t K, const int8_t *w, const float *scales, int64_t N,
                               float *y, int threads) {
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++)
        for (int64_t m = 0; m < M; m++) y[m * N + n] = QC_V(row_dot_i8)(w + n * K, x + m * K, K) * scales[n];
}

/* y (M, N) = x (M, K) @ W.T, W float32 (N, K) row-major: an unquantized layer (a float output head) at decode */
static void QC_V(qc_f32_gemm)(const float *x, int64_t M, int64_t K, const float *w, int64_t N, float *y, int threads) {
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++)
        for (int64_t m = 0; m < M; m++) y[m * N + n] = QC_V(row_dot_f32)(w + n * K, x + m * K, K);
}

#undef QC_SIMD
#undef vec
#undef codes_t
#undef v_codes
#undef v_decode
#undef v_zero
#undef v_load
#undef v_store
#undef v_fma
#undef v_mul
#undef v_add
#undef v_set1
#undef v_sum
#undef v_load_i8
#undef v_decode_split
#undef v_lookup
#undef QC_SPLIT
#undef QC_V
#undef QC_SFX
