// The GEMM and the vector math of rnnjax's native layers (kernels.h): a register-blocked
// microkernel over weights packed once per call, and exp / sigmoid / tanh on VL lanes.
// GCC vector extensions (no intrinsics). The width is chosen at build time from what the compiler
// targets: VL = 16 (512-bit vectors, 32 registers) where -march has AVX-512F, else VL = 8 (256-bit:
// AVX2 + FMA, or whatever the target makes of them). RNNJAX_ISA_AVX2 forces the 8-lane path, so an
// AVX-512 host can build and test the path an AVX2 host runs (setup.py builds both there).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace rnnjax {

// The microkernel's shape, MR rows x NV vectors of accumulators, was measured on the LSTM's GEMMs
// (b 32 and 16 rows, h 256, 4h 1024; benchmarks/native_premise.py, docs/performance.md): with 32
// registers 6 x 4 (24 accumulators) beat 8 x 2, 12 x 2, 16 x 1 and 8 x 3; with 16, 6 x 2.
#if defined(__AVX512F__) && !defined(RNNJAX_ISA_AVX2)
constexpr int VL = 16;  // floats per vector
constexpr int MR = 6;
constexpr int NV = 4;
constexpr const char* ISA = "avx512";
#else
constexpr int VL = 8;
constexpr int MR = 6;
constexpr int NV = 2;
#if defined(__AVX2__) && defined(__FMA__)
constexpr const char* ISA = "avx2";
#else
constexpr const char* ISA = "generic";
#endif
#endif
constexpr int NR = VL * NV;  // columns of a packed panel

typedef float v8 __attribute__((vector_size(VL * 4)));  // VL floats (the name is historical)
typedef float v8u __attribute__((vector_size(VL * 4), aligned(4)));
typedef int32_t i8v __attribute__((vector_size(VL * 4)));

inline int panels(int n) { return (n + NR - 1) / NR; }
inline size_t packed_size(int k, int n) { return (size_t)panels(n) * NR * k; }

struct Buf {  // a 64-byte aligned float buffer
  float* p = nullptr;
  explicit Buf(size_t n) { p = static_cast<float*>(std::aligned_alloc(64, ((n * 4 + 63) / 64) * 64 + 64)); }
  ~Buf() { std::free(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
};

// Pack B [K, N] (row stride ldb) or, with trans, B[k][n] = src[n * lds + k], into NR-wide panels.
inline void pack(const float* src, int K, int N, bool trans, int lds, float* out) {
  for (int p = 0; p < panels(N); ++p) {
    float* o = out + (size_t)p * NR * K;
    const int n0 = p * NR, nn = std::min(NR, N - n0);
    if (trans) {
      for (int j = 0; j < NR; ++j)
        for (int k = 0; k < K; ++k) o[(size_t)k * NR + j] = j < nn ? src[(size_t)(n0 + j) * lds + k] : 0.f;
    } else {
      for (int k = 0; k < K; ++k)
        for (int j = 0; j < NR; ++j) o[(size_t)k * NR + j] = j < nn ? src[(size_t)k * lds + n0 + j] : 0.f;
    }
  }
}

// C[M rows, nn cols] (= or +=) A[M, K] (row stride lda) @ one packed panel.
template <int M>
inline void micro(const float* __restrict A, int lda, const float* __restrict bp, int K,
                  float* __restrict C, int ldc, int nn, bool acc) {
  v8 c[M][NV] = {};
  for (int k = 0; k < K; ++k) {
    v8 b[NV];
    for (int v = 0; v < NV; ++v) b[v] = *reinterpret_cast<const v8*>(bp + (size_t)k * NR + VL * v);
    for (int i = 0; i < M; ++i) {
      const float a = A[(size_t)i * lda + k];
      for (int v = 0; v < NV; ++v) c[i][v] += a * b[v];
    }
  }
  for (int i = 0; i < M; ++i) {
    float* ci = C + (size_t)i * ldc;
    if (nn == NR) {
      for (int v = 0; v < NV; ++v) {
        v8u* d = reinterpret_cast<v8u*>(ci + VL * v);
        *d = acc ? *d + c[i][v] : c[i][v];
      }
    } else {
      alignas(64) float tmp[NR];
      for (int v = 0; v < NV; ++v) *reinterpret_cast<v8*>(tmp + VL * v) = c[i][v];
      for (int j = 0; j < nn; ++j) ci[j] = acc ? ci[j] + tmp[j] : tmp[j];
    }
  }
}

// The last m < MR rows: micro<m>, found by counting down from R at compile time.
template <int R>
inline void tail(int m, const float* A, int lda, const float* bp, int K, float* C, int ldc, int nn, bool acc) {
  if constexpr (R > 0) {
    if (m == R) micro<R>(A, lda, bp, K, C, ldc, nn, acc);
    else tail<R - 1>(m, A, lda, bp, K, C, ldc, nn, acc);
  }
}

// C[M, N] (= or +=) A[M, K] @ B, B packed by pack(); only the panels [p0, p1).
inline void gemm(const float* A, int lda, int M, const float* bpacked, int K, int N, float* C,
                 int ldc, bool acc = false, int p0 = 0, int p1 = -1) {
  if (p1 < 0) p1 = panels(N);
  for (int p = p0; p < p1; ++p) {
    const float* bp = bpacked + (size_t)p * NR * K;
    const int n0 = p * NR, nn = std::min(NR, N - n0);
    int i = 0;
    for (; i + MR <= M; i += MR) micro<MR>(A + (size_t)i * lda, lda, bp, K, C + (size_t)i * ldc + n0, ldc, nn, acc);
    if (i < M) tail<MR - 1>(M - i, A + (size_t)i * lda, lda, bp, K, C + (size_t)i * ldc + n0, ldc, nn, acc);
  }
}

// exp on VL lanes: 2^n * p(r), r = x - n ln2 (Cephes expf polynomial, ~1 ulp on [-87, 88]).
inline v8 vexp(v8 x) {
  x = x < 88.3762626647949f ? x : 88.3762626647949f;
  x = x > -87.3365447504f ? x : -87.3365447504f;
  v8 fx = x * 1.44269504088896341f;
  const i8v n = __builtin_convertvector(fx + (v8){} + (fx >= 0 ? 0.5f : -0.5f), i8v);  // round
  const v8 nf = __builtin_convertvector(n, v8);
  v8 r = x - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  v8 p = (v8){} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const i8v bits = (n + 127) << 23;
  v8 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}
inline v8 vsigmoid(v8 x) { return 1.0f / (1.0f + vexp(-x)); }
inline v8 vtanh(v8 x) {  // 1 - 2 / (exp(2|x|) + 1), sign restored
  const v8 ax = x < 0 ? -x : x;
  const v8 t = 1.0f - 2.0f / (vexp(2.0f * ax) + 1.0f);
  return x < 0 ? -t : t;
}
inline v8 ld(const float* p) { return *reinterpret_cast<const v8u*>(p); }
inline void st(float* p, v8 v) { *reinterpret_cast<v8u*>(p) = v; }

}  // namespace rnnjax
