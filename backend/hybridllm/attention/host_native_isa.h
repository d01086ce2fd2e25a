// The vector traits host_native.cpp's kernel is written over: W lanes of f32, loads of every KV format
// widened to f32, FMA, sums, max and exp. One set per build of the .cpp (HL_BUILD_AVX512 / HL_BUILD_AVX2 /
// plain); included inside its anonymous namespace, after the enums and the scalar conversions.
#if defined(HL_BUILD_AVX512)
#define HL_TRAIT Avx512
#define HL_NAME hl_decode_avx512
struct Avx512 {
    static const int W = 16;
    typedef __m512 V;
    static V zero() { return _mm512_setzero_ps(); }
    static V set1(float x) { return _mm512_set1_ps(x); }
    static V ld(const float* p) { return _mm512_loadu_ps(p); }
    static V ld(const uint16_t* p, int fmt) {
        __m256i h = _mm256_loadu_si256((const __m256i*)p);
        if (fmt == F16) return _mm512_cvtph_ps(h);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    static V ldu8(const uint8_t* p) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p))); }
    static void st(float* p, V v) { _mm512_storeu_ps(p, v); }
    static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
    static float sum(V v) { return _mm512_reduce_add_ps(v); }
    static V add(V a, V b) { return _mm512_add_ps(a, b); }
    static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
    static V max(V a, V b) { return _mm512_max_ps(a, b); }
    static float hmax(V v) { return _mm512_reduce_max_ps(v); }
    template <int N, class A> static void sums(const A& a, int j, float* r) {
        if (N == 4) {               // four horizontal sums in one pass: pairwise unpacks, then the 128-bit lanes
            __m512 x01 = _mm512_add_ps(_mm512_unpacklo_ps(a[0][j], a[1][j]), _mm512_unpackhi_ps(a[0][j], a[1][j]));
            __m512 x23 = _mm512_add_ps(_mm512_unpacklo_ps(a[2][j], a[3][j]), _mm512_unpackhi_ps(a[2][j], a[3][j]));
            __m512 y = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(x01), _mm512_castps_pd(x23))),
                                     _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(x01), _mm512_castps_pd(x23))));
            __m256 z = _mm256_add_ps(_mm512_castps512_ps256(y), _mm512_extractf32x8_ps(y, 1));
            __m128 w = _mm_add_ps(_mm256_castps256_ps128(z), _mm256_extractf128_ps(z, 1));   // [a0, a1, a2, a3]
            _mm_storeu_ps(r, w);
        } else for (int u = 0; u < N; u++) r[u] = sum(a[u][j]);
    }
    static V exp(V x) {         // as Avx2::exp, with scalef for the 2^n
        x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
        V n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        V r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
        r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
        V p = _mm512_set1_ps(1.9875691500e-4f);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
        p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
        return _mm512_scalef_ps(p, n);
    }
};

#elif defined(HL_BUILD_AVX2)
#define HL_TRAIT Avx2
#define HL_NAME hl_decode_avx2
struct Avx2 {
    static const int W = 8;
    typedef __m256 V;
    static V zero() { return _mm256_setzero_ps(); }
    static V set1(float x) { return _mm256_set1_ps(x); }
    static V ld(const float* p) { return _mm256_loadu_ps(p); }
    static V ld(const uint16_t* p, int fmt) {
        __m128i h = _mm_loadu_si128((const __m128i*)p);
        if (fmt == F16) return _mm256_cvtph_ps(h);
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    static V ldu8(const uint8_t* p) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p))); }
    static void st(float* p, V v) { _mm256_storeu_ps(p, v); }
    static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
    static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
    static float sum(V v) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
    static V add(V a, V b) { return _mm256_add_ps(a, b); }
    static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
    static V max(V a, V b) { return _mm256_max_ps(a, b); }
    static float hmax(V v) {
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        return _mm_cvtss_f32(m);
    }
    template <int N, class A> static void sums(const A& a, int j, float* r) {
        if (N == 2) {               // both horizontal sums in one pass
            __m256 h = _mm256_hadd_ps(a[0][j], a[1][j]);            // a0 pairs, a1 pairs per 128-bit lane
            __m128 x = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            x = _mm_hadd_ps(x, x);
            r[0] = _mm_cvtss_f32(x); r[1] = _mm_cvtss_f32(_mm_shuffle_ps(x, x, 1));
        } else for (int u = 0; u < N; u++) r[u] = sum(a[u][j]);
    }
    static V exp(V x) {         // 2^n * p(r), |rel err| < 2e-7 over the range softmax uses (x <= 0)
        x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
        V n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        V r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
        r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
        V p = _mm256_set1_ps(1.9875691500e-4f);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
        p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
        __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    }
};

#else
#define HL_TRAIT Scalar
#define HL_NAME hl_decode_scalar
struct Scalar {
    static const int W = 1;
    typedef float V;
    static V zero() { return 0.f; }
    static V set1(float x) { return x; }
    static V ld(const float* p) { return *p; }
    static V ld(const uint16_t* p, int fmt) { return fmt == F16 ? f16_to_f32(*p) : bf16_to_f32(*p); }
    static V ldu8(const uint8_t* p) { return (float)*p; }
    static void st(float* p, V v) { *p = v; }
    static V fma(V a, V b, V c) { return a * b + c; }
    static V mul(V a, V b) { return a * b; }
    static float sum(V v) { return v; }
    static V add(V a, V b) { return a + b; }
    static V sub(V a, V b) { return a - b; }
    static V max(V a, V b) { return a > b ? a : b; }
    static float hmax(V v) { return v; }
    static V exp(V x) { return expf(x); }
    template <int N, class A> static void sums(const A& a, int j, float* r) { for (int u = 0; u < N; u++) r[u] = a[u][j]; }
};

#endif
