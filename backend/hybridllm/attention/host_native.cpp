// Paged decode attention and the KV write over the host tier's blocks (OpenVINO's PagedAttention layout).
//
// Built once per source hash by attention/native_build.py and called through ctypes, which releases the
// GIL. The file is compiled three times: with HL_BUILD_AVX512 (-mavx512f -mavx512bw ...), with
// HL_BUILD_AVX2 (-mavx2 -mfma -mf16c) and plainly (the scalar kernel, the dispatcher and the writer);
// hl_decode picks the best kernel the CPU has, or the one `isa` asks for (tests force AVX2 and scalar).
//
// Per layer, block n of K is key[n] and of V value[n]:
//   f32 / f16 / bf16: both [KVH, BS, D].
//   u8: key [KVH, 8 + BS, D] bytes: an f32 scale per channel (rows 0-3), an f32 zero point per channel
//       (rows 4-7), then the tokens; value [KVH, BS, 8 + D]: per token an f32 scale, an f32 zero point,
//       then the bytes. x = (u - zero_point) * scale.
// Decode: q [B, H, D] f32; token t of sequence b sits in block block_tables[b * max_blocks + t / BS],
// row t % BS; the query is position seq_lens[b] - 1 and sees [max(0, seq_len - window), seq_len).
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <float.h>

enum { F32 = 0, F16 = 1, BF16 = 2, U8 = 3 };
enum { ISA_AUTO = 0, ISA_SCALAR = 1, ISA_AVX2 = 2, ISA_AVX512 = 3 };
static const int MAX_G = 16;            // query heads per KV head handled together
static const int MAX_D = 256;

static inline float f16_to_f32(uint16_t h) {
    uint32_t s = (h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, bits;
    if (e == 0) {
        if (m == 0) { bits = s; }
        else { float f = (float)m * (1.0f / 16777216.0f); memcpy(&bits, &f, 4); bits |= s; }
    } else if (e == 31) { bits = s | 0x7f800000u | (m << 13); }
    else { bits = s | ((e + 112) << 23) | (m << 13); }
    float f; memcpy(&f, &bits, 4); return f;
}
static inline float bf16_to_f32(uint16_t h) { uint32_t b = (uint32_t)h << 16; float f; memcpy(&f, &b, 4); return f; }
static inline uint16_t f32_to_bf16(float f) {       // round to nearest even
    uint32_t b; memcpy(&b, &f, 4);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x40);
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1)) >> 16);
}
static inline uint16_t f32_to_f16(float f) {     // round to nearest even

    uint32_t b; memcpy(&b, &f, 4);
    uint32_t s = (b >> 16) & 0x8000u; int e = (int)((b >> 23) & 0xff) - 127 + 15; uint32_t m = b & 0x7fffffu;
    if (((b >> 23) & 0xff) == 0xff) return (uint16_t)(s | 0x7c00u | (m ? 0x200u : 0));
    if (e >= 31) return (uint16_t)(s | 0x7c00u);
    if (e <= 0) {
        if (e < -10) return (uint16_t)s;
        m |= 0x800000u; int shift = 14 - e; uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(s | r);
    }
    uint32_t r = ((uint32_t)e << 10) | (m >> 13), rem = m & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1))) r++;
    return (uint16_t)(s | r);
}

struct Geo {
    int B, H, KVH, D, BS, max_blocks, window, fmt;
    float scale;
    int64_t kblock, vblock;              // bytes of one block (all heads) in K and V
    int64_t khead, vhead;                // bytes of one head's part of a block
};

namespace {

// One (sequence, KV head): G query heads against the visible tokens, online softmax per block.
// GG > 0: the group size as a constant, so the per-head accumulators stay in registers; 0: any (g.H / g.KVH).
template <class T, int FMT, int GG>
static inline void attend(const Geo& g, int b, int kh, const float* q, const uint8_t* kc, const uint8_t* vc,
                          const int32_t* table, int seq_len, float* out) {
    const int D = g.D, BS = g.BS, G = GG > 0 ? GG : g.H / g.KVH, W = T::W;
    alignas(64) float qs[MAX_G * MAX_D];          // q * scale (u8: * the block's key scale too)
    alignas(64) float qk[MAX_G * MAX_D];
    alignas(64) float acc[MAX_G * MAX_D];
    float m[MAX_G], l[MAX_G], bias[MAX_G], qzp[MAX_G];
    alignas(64) float s[MAX_G * 64];
    for (int j = 0; j < G; j++) {
        const float* qj = q + ((int64_t)b * g.H + kh * G + j) * D;
        for (int d = 0; d < D; d++) { qs[j * D + d] = qj[d] * g.scale; acc[j * D + d] = 0.f; }
        m[j] = -FLT_MAX; l[j] = 0.f; bias[j] = 0.f;
    }
    int first = g.window > 0 && seq_len > g.window ? seq_len - g.window : 0;
    for (int blk = first / BS; blk * BS < seq_len; blk++) {
        int t0 = blk * BS > first ? blk * BS : first, t1 = (blk + 1) * BS < seq_len ? (blk + 1) * BS : seq_len;
        int64_t n = table[blk];
        const uint8_t* kb = kc + n * g.kblock + kh * g.khead;
        const uint8_t* vb = vc + n * g.vblock + kh * g.vhead;
        if (blk + 1 < (seq_len + BS - 1) / BS) {   // the next block's slabs: tables scatter blocks, so the
            int64_t nn = table[blk + 1];          // hardware prefetcher cannot guess them
            const char* nk = (const char*)(kc + nn * g.kblock + kh * g.khead);
            const char* nv = (const char*)(vc + nn * g.vblock + kh * g.vhead);
            for (int64_t o = 0; o < g.khead; o += 64) _mm_prefetch(nk + o, _MM_HINT_T0);
            for (int64_t o = 0; o < g.vhead; o += 64) _mm_prefetch(nv + o, _MM_HINT_T0);
        }
        const float* qq = qs;
        if (FMT == U8) {                          // q . ((u - zp) * sc) = (q * sc) . u - (q * sc) . zp
            const float* sc = (const float*)kb;
            const float* zp = sc + D;
            for (int j = 0; j < G; j++) {
                float z = 0.f;
                for (int d = 0; d < D; d++) { float x = qs[j * D + d] * sc[d]; qk[j * D + d] = x; z += x * zp[d]; }
                qzp[j] = z;
            }
            qq = qk;
        }
        int nt = t1 - t0;
        const int r0 = t0 - blk * BS;              // the block's first visible row
        auto ldk = [&](int row, int d) -> typename T::V {
            if (FMT == F32) return T::ld((const float*)kb + (int64_t)row * D + d);
            if (FMT == U8) return T::ldu8(kb + 8 * D + (int64_t)row * D + d);
            return T::ld((const uint16_t*)kb + (int64_t)row * D + d, FMT);
        };
        // Scores s[j][t], TT tokens at a time: TT * G independent FMA chains hide the FMA latency.
        constexpr int TT = T::W >= 16 ? 4 : T::W >= 8 ? 2 : 1;
        int t = 0;
        for (; t + TT <= nt; t += TT) {
            typename T::V a[TT][GG > 0 ? GG : MAX_G];
            for (int u = 0; u < TT; u++) for (int j = 0; j < G; j++) a[u][j] = T::zero();
            for (int d = 0; d < D; d += W) {
                typename T::V kv[TT];
                for (int u = 0; u < TT; u++) kv[u] = ldk(r0 + t + u, d);
                for (int j = 0; j < G; j++) {
                    typename T::V qv = T::ld(qq + j * D + d);
                    for (int u = 0; u < TT; u++) a[u][j] = T::fma(qv, kv[u], a[u][j]);
                }
            }
            for (int j = 0; j < G; j++) {
                float r[TT];
                T::template sums<TT>(a, j, r);
                for (int u = 0; u < TT; u++) s[j * 64 + t + u] = r[u] - (FMT == U8 ? qzp[j] : 0.f);
            }
        }
        for (; t < nt; t++) {
            typename T::V a[GG > 0 ? GG : MAX_G];
            for (int j = 0; j < G; j++) a[j] = T::zero();
            for (int d = 0; d < D; d += W) {
                typename T::V kv = ldk(r0 + t, d);
                for (int j = 0; j < G; j++) a[j] = T::fma(T::ld(qq + j * D + d), kv, a[j]);
            }
            for (int j = 0; j < G; j++) s[j * 64 + t] = T::sum(a[j]) - (FMT == U8 ? qzp[j] : 0.f);
        }
        const int ntw = (nt + W - 1) / W * W;     // scores padded to whole vectors with -inf-like values
        for (int j = 0; j < G; j++) {             // online softmax: rescale what came before
            float* sj = s + j * 64;
            for (int t = nt; t < ntw; t++) sj[t] = -FLT_MAX;
            typename T::V vm = T::set1(m[j]);
            for (int t = 0; t < ntw; t += W) vm = T::max(vm, T::ld(sj + t));
            float mx = T::hmax(vm);
            float c = expf(m[j] - mx);
            typename T::V vs = T::zero(), vmx = T::set1(mx);
            for (int t = 0; t < ntw; t += W) { typename T::V p = T::exp(T::sub(T::ld(sj + t), vmx)); T::st(sj + t, p); vs = T::add(vs, p); }
            l[j] = l[j] * c + T::sum(vs); m[j] = mx; bias[j] *= c;
            if (c != 1.f) for (int d = 0; d < D; d++) acc[j * D + d] *= c;
        }
        if (FMT == U8) {                          // p * ((u - zp) * sc) = (p * sc) * u - (p * sc) * zp
            for (int t = 0; t < nt; t++) {
                const float* par = (const float*)(vb + (int64_t)(t0 - blk * BS + t) * (D + 8));
                for (int j = 0; j < G; j++) { float w = s[j * 64 + t] * par[0]; s[j * 64 + t] = w; bias[j] += w * par[1]; }
            }
        }
        auto ldv = [&](int row, int d) -> typename T::V {
            if (FMT == F32) return T::ld((const float*)vb + (int64_t)row * D + d);
            if (FMT == U8) return T::ldu8(vb + (int64_t)row * (D + 8) + 8 + d);
            return T::ld((const uint16_t*)vb + (int64_t)row * D + d, FMT);
        };
        // acc[j][d:d+CC*W] += sum_t p[j][t] * v[t][d:d+CC*W]: CC * G independent chains.
        constexpr int CC = T::W >= 8 ? 2 : 1;
        int d = 0;
        for (; d + CC * W <= D; d += CC * W) {
            typename T::V a[CC][GG > 0 ? GG : MAX_G];
            for (int c = 0; c < CC; c++) for (int j = 0; j < G; j++) a[c][j] = T::ld(acc + j * D + d + c * W);
            for (int t = 0; t < nt; t++) {
                typename T::V vv[CC];
                for (int c = 0; c < CC; c++) vv[c] = ldv(r0 + t, d + c * W);
                for (int j = 0; j < G; j++) {
                    typename T::V p = T::set1(s[j * 64 + t]);
                    for (int c = 0; c < CC; c++) a[c][j] = T::fma(p, vv[c], a[c][j]);
                }
            }
            for (int c = 0; c < CC; c++) for (int j = 0; j < G; j++) T::st(acc + j * D + d + c * W, a[c][j]);
        }
        for (; d < D; d += W) {
            typename T::V a[GG > 0 ? GG : MAX_G];
            for (int j = 0; j < G; j++) a[j] = T::ld(acc + j * D + d);
            for (int t = 0; t < nt; t++) {
                typename T::V vv = ldv(r0 + t, d);
                for (int j = 0; j < G; j++) a[j] = T::fma(T::set1(s[j * 64 + t]), vv, a[j]);
            }
            for (int j = 0; j < G; j++) T::st(acc + j * D + d, a[j]);
        }
    }
    for (int j = 0; j < G; j++) {
        float* o = out + ((int64_t)b * g.H + kh * G + j) * D;
        float inv = l[j] > 0.f ? 1.f / l[j] : 0.f;
        for (int d = 0; d < D; d++) o[d] = (acc[j * D + d] - bias[j]) * inv;
    }
}

template <class T, int FMT, int GG>
static void decode_g(const Geo& g, const float* q, const uint8_t* kc, const uint8_t* vc, const int32_t* tables,
                     const int32_t* seq_lens, float* out, int threads) {
    #pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(threads)
    for (int b = 0; b < g.B; b++)
        for (int kh = 0; kh < g.KVH; kh++)
            attend<T, FMT, GG>(g, b, kh, q, kc, vc, tables + (int64_t)b * g.max_blocks, seq_lens[b], out);
}

template <class T, int FMT>
static void decode_all(const Geo& g, const float* q, const uint8_t* kc, const uint8_t* vc, const int32_t* tables,
                       const int32_t* seq_lens, float* out, int threads) {
    switch (g.H / g.KVH) {
        case 1: decode_g<T, FMT, 1>(g, q, kc, vc, tables, seq_lens, out, threads); break;
        case 2: decode_g<T, FMT, 2>(g, q, kc, vc, tables, seq_lens, out, threads); break;
        case 3: decode_g<T, FMT, 3>(g, q, kc, vc, tables, seq_lens, out, threads); break;
        case 4: decode_g<T, FMT, 4>(g, q, kc, vc, tables, seq_lens, out, threads); break;
        case 8: decode_g<T, FMT, 8>(g, q, kc, vc, tables, seq_lens, out, threads); break;
        default: decode_g<T, FMT, 0>(g, q, kc, vc, tables, seq_lens, out, threads); break;
    }
}

#include "host_native_isa.h"     // Avx512 | Avx2 | Scalar as HL_TRAIT, and HL_NAME

}  // namespace

extern "C" void HL_NAME(const Geo& g, const float* q, const uint8_t* kc, const uint8_t* vc, const int32_t* tb,
                        const int32_t* sl, float* out, int th) {
    switch (g.fmt) {
        case F32: decode_all<HL_TRAIT, F32>(g, q, kc, vc, tb, sl, out, th); break;
        case F16: decode_all<HL_TRAIT, F16>(g, q, kc, vc, tb, sl, out, th); break;
        case BF16: decode_all<HL_TRAIT, BF16>(g, q, kc, vc, tb, sl, out, th); break;
        default: decode_all<HL_TRAIT, U8>(g, q, kc, vc, tb, sl, out, th); break;
    }
}

#if !defined(HL_BUILD_AVX512) && !defined(HL_BUILD_AVX2)
extern "C" void hl_decode_avx512(const Geo&, const float*, const uint8_t*, const uint8_t*, const int32_t*,
                                 const int32_t*, float*, int);
extern "C" void hl_decode_avx2(const Geo&, const float*, const uint8_t*, const uint8_t*, const int32_t*,
                               const int32_t*, float*, int);

static int best_isa() {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        return ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return ISA_AVX2;
    return ISA_SCALAR;
}

static Geo geometry(int B, int H, int KVH, int D, int BS, int max_blocks, int window, int fmt, float scale) {
    Geo g = {B, H, KVH, D, BS, max_blocks, window, fmt, scale, 0, 0, 0, 0};
    int es = fmt == F32 ? 4 : fmt == U8 ? 1 : 2;
    g.khead = (int64_t)(fmt == U8 ? BS + 8 : BS) * D * es;
    g.vhead = (int64_t)BS * (fmt == U8 ? D + 8 : D) * es;
    g.kblock = g.khead * KVH;
    g.vblock = g.vhead * KVH;
    return g;
}

extern "C" {

int hl_best_isa() { return best_isa(); }

// Returns the ISA it ran (1 scalar, 2 AVX2, 3 AVX-512), or -1 for a shape it cannot take.
int hl_decode(int isa, int threads, int fmt, int B, int H, int KVH, int D, int BS, int max_blocks, int window,
              float scale, const float* q, const void* key_cache, const void* value_cache, const int32_t* tables,
              const int32_t* seq_lens, float* out) {
    if (KVH < 1 || H % KVH || H / KVH > MAX_G || D > MAX_D || BS > 64 || fmt < F32 || fmt > U8) return -1;
    int best = best_isa();
    if (isa == ISA_AUTO || isa > best) isa = best;
    if (isa == ISA_AVX512 && D % 16) isa = ISA_AVX2;
    if (isa == ISA_AVX2 && D % 8) isa = ISA_SCALAR;
    Geo g = geometry(B, H, KVH, D, BS, max_blocks, window, fmt, scale);
    if (threads < 1) threads = omp_get_max_threads();
    const uint8_t* kc = (const uint8_t*)key_cache;
    const uint8_t* vc = (const uint8_t*)value_cache;
    if (isa == ISA_AVX512) hl_decode_avx512(g, q, kc, vc, tables, seq_lens, out, threads);
    else if (isa == ISA_AVX2) hl_decode_avx2(g, q, kc, vc, tables, seq_lens, out, threads);
    else hl_decode_scalar(g, q, kc, vc, tables, seq_lens, out, threads);
    return isa;
}

// Writes T new tokens' k/v [T, KVH, D] (f32) at slot_mapping[t] (block * BS + row) of one layer's caches.
// u8 keys are quantized per channel over the block: a token outside the block's range widens it and the
// block's earlier rows are requantized (rows < row only: later rows hold no token yet).
void hl_write(int fmt, int T, int KVH, int D, int BS, const float* k, const float* v, const int64_t* slots,
              void* key_cache, void* value_cache) {
    Geo g = geometry(1, KVH, KVH, D, BS, 1, 0, fmt, 1.f);
    uint8_t* kc = (uint8_t*)key_cache;
    uint8_t* vc = (uint8_t*)value_cache;
    for (int t = 0; t < T; t++) {
        int64_t n = slots[t] / BS; int row = (int)(slots[t] % BS);
        for (int h = 0; h < KVH; h++) {
            const float* kt = k + ((int64_t)t * KVH + h) * D;
            const float* vt = v + ((int64_t)t * KVH + h) * D;
            uint8_t* kb = kc + n * g.kblock + h * g.khead;
            uint8_t* vb = vc + n * g.vblock + h * g.vhead;
            if (fmt == F32) {
                memcpy((float*)kb + (int64_t)row * D, kt, D * 4);
                memcpy((float*)vb + (int64_t)row * D, vt, D * 4);
            } else if (fmt == F16 || fmt == BF16) {
                uint16_t* ko = (uint16_t*)kb + (int64_t)row * D;
                uint16_t* vo = (uint16_t*)vb + (int64_t)row * D;
                for (int d = 0; d < D; d++) {
                    ko[d] = fmt == BF16 ? f32_to_bf16(kt[d]) : f32_to_f16(kt[d]);
                    vo[d] = fmt == BF16 ? f32_to_bf16(vt[d]) : f32_to_f16(vt[d]);
                }
            } else {
                // V: per token, 8-bit over [min, max].
                float lo = vt[0], hi = vt[0];
                for (int d = 1; d < D; d++) { lo = vt[d] < lo ? vt[d] : lo; hi = vt[d] > hi ? vt[d] : hi; }
                float sc = (hi - lo) / 255.f; if (sc <= 0.f) sc = 1e-8f;
                float zp = roundf(-lo / sc);
                uint8_t* vr = vb + (int64_t)row * (D + 8);
                memcpy(vr, &sc, 4); memcpy(vr + 4, &zp, 4);
                for (int d = 0; d < D; d++) { float u = roundf(vt[d] / sc + zp); vr[8 + d] = (uint8_t)(u < 0 ? 0 : u > 255 ? 255 : u); }
                // K: per channel over the block's rows 0..row. The first row's range is [min(x, 0), max(x, 0)].
                float* sck = (float*)kb; float* zpk = sck + D; uint8_t* rows = kb + 8 * D;
                for (int d = 0; d < D; d++) {
                    float x = kt[d];
                    bool widen = row == 0;
                    if (!widen) {
                        float u = x / sck[d] + zpk[d];
                        widen = u < -0.5f || u > 255.5f;
                    }
                    if (widen) {
                        float lo = x < 0.f ? x : 0.f, hi = x > 0.f ? x : 0.f;
                        if (row > 0) { lo = hi = x; }
                        for (int r = 0; r < row; r++) {   // the earlier rows' values span this much
                            float val = ((float)rows[(int64_t)r * D + d] - zpk[d]) * sck[d];
                            lo = val < lo ? val : lo; hi = val > hi ? val : hi;
                        }
                        float nsc = (hi - lo) / 255.f; if (!(nsc > 1e-8f)) nsc = 1e-8f;
                        float nzp = roundf(-lo / nsc);
                        for (int r = 0; r < row; r++) {
                            float val = ((float)rows[(int64_t)r * D + d] - zpk[d]) * sck[d];
                            float u = roundf(val / nsc + nzp);
                            rows[(int64_t)r * D + d] = (uint8_t)(u < 0 ? 0 : u > 255 ? 255 : u);
                        }
                        sck[d] = nsc; zpk[d] = nzp;
                    }
                    float u = roundf(x / sck[d] + zpk[d]);
                    rows[(int64_t)row * D + d] = (uint8_t)(u < 0 ? 0 : u > 255 ? 255 : u);
                }
            }
        }
    }
}

}  // extern "C"
#endif
