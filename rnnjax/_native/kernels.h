// Recurrent layers on CPU: the whole time loop of one layer in native code (rnnjax/native.py).
//
// Notation as in rnnjax: T time, B batch, H hidden, GH = G*H the fused gate axis (the cell's gate
// order). Per layer: xw [T, B, GH] (x W_x + b_x, from XLA), w_h [H, GH], b_h [GH], the carry as
// slabs [NS, B, H] (LSTM: c then h, Flax's order; GRU, RNN: h). The forward writes h [T, B, H],
// the final carry and what the backward reads ("saves", [T, B, S*H]); the backward writes the
// gates' cotangents dxw [T, B, GH] (and for GRU dhw, which differs in the n slab) and the carry's.
// The recurrent weights' gradients are left to XLA: one large matmul over all T*B rows.
//
// The GEMM is a register-blocked microkernel (MR rows x NR columns of accumulators) over weights
// packed once per call into NR-wide column panels; GCC vector extensions (no intrinsics) compile it
// to whatever -march gives (AVX2+FMA: 8-float vectors). Gates are vectorised with a polynomial exp.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

namespace rnnjax {

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));
typedef int32_t i8v __attribute__((vector_size(32)));

constexpr int MR = 6;       // rows of the microkernel
constexpr int NV = 2;       // 8-float vectors per row
constexpr int NR = 8 * NV;  // columns of a packed panel

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
    for (int v = 0; v < NV; ++v) b[v] = *reinterpret_cast<const v8*>(bp + (size_t)k * NR + 8 * v);
    for (int i = 0; i < M; ++i) {
      const float a = A[(size_t)i * lda + k];
      for (int v = 0; v < NV; ++v) c[i][v] += a * b[v];
    }
  }
  for (int i = 0; i < M; ++i) {
    float* ci = C + (size_t)i * ldc;
    if (nn == NR) {
      for (int v = 0; v < NV; ++v) {
        v8u* d = reinterpret_cast<v8u*>(ci + 8 * v);
        *d = acc ? *d + c[i][v] : c[i][v];
      }
    } else {
      alignas(32) float tmp[NR];
      for (int v = 0; v < NV; ++v) *reinterpret_cast<v8*>(tmp + 8 * v) = c[i][v];
      for (int j = 0; j < nn; ++j) ci[j] = acc ? ci[j] + tmp[j] : tmp[j];
    }
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
    switch (M - i) {
      case 5: micro<5>(A + (size_t)i * lda, lda, bp, K, C + (size_t)i * ldc + n0, ldc, nn, acc); break;
      case 4: micro<4>(A + (size_t)i * lda, lda, bp, K, C + (size_t)i * ldc + n0, ldc, nn, acc); break;
      case 3: micro<3>(A + (size_t)i * lda, lda, bp, K, C + (size_t)i * ldc + n0, ldc, nn, acc); break;
      case 2: micro<2>(A + (size_t)i * lda, lda, bp, K, C + (size_t)i * ldc + n0, ldc, nn, acc); break;
      case 1: micro<1>(A + (size_t)i * lda, lda, bp, K, C + (size_t)i * ldc + n0, ldc, nn, acc); break;
      default: break;
    }
  }
}

// exp on 8 lanes: 2^n * p(r), r = x - n ln2 (Cephes expf polynomial, ~1 ulp on [-87, 88]).
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
inline float sexp(float x) { v8 v = (v8){} + x; return vexp(v)[0]; }
inline float ssigmoid(float x) { v8 v = (v8){} + x; return vsigmoid(v)[0]; }
inline float stanh(float x) { v8 v = (v8){} + x; return vtanh(v)[0]; }

// Per-cell pointwise steps. Each reads pre-activation halves xw [B, GH] and hw [B, GH] (no b_h yet)
// and works over one batch row at a time; vectors of 8 over the hidden units, scalar for the tail.
enum Act { TANH = 0, RELU = 1 };

template <class F>
inline void rows_by_8(int B, int H, F f) {  // f(b, j, width) with width 8 or 1
  for (int b = 0; b < B; ++b) {
    int j = 0;
    for (; j + 8 <= H; j += 8) f(b, j, 8);
    for (; j < H; ++j) f(b, j, 1);
  }
}

// A lane-generic load/store: width 8 (vector) or 1 (scalar in lane 0).
inline v8 L(const float* p, int w) { return w == 8 ? ld(p) : (v8){} + *p; }
inline void S(float* p, v8 v, int w) { if (w == 8) st(p, v); else *p = v[0]; }

struct Lstm {  // gates i, f, g, o; carry (c, h); saves i, f, g, o, c_t
  static constexpr int G = 4, NS = 2, S_ = 5;
  static constexpr bool SEP = false;  // dhw == dxw
  static void fwd(int B, int H, int, const float* xw, const float* hw, const float* bh,
                  const float* c_prev, float* c, float* h, float* save) {
    const int GH = 4 * H;
    rows_by_8(B, H, [&](int b, int j, int w) {
      const float* x = xw + (size_t)b * GH + j;
      const float* r = hw + (size_t)b * GH + j;
      const float* bb = bh + j;
      const v8 i = vsigmoid(L(x, w) + L(r, w) + L(bb, w));
      const v8 f = vsigmoid(L(x + H, w) + L(r + H, w) + L(bb + H, w));
      const v8 g = vtanh(L(x + 2 * H, w) + L(r + 2 * H, w) + L(bb + 2 * H, w));
      const v8 o = vsigmoid(L(x + 3 * H, w) + L(r + 3 * H, w) + L(bb + 3 * H, w));
      const size_t bj = (size_t)b * H + j;
      const v8 cn = f * L(c_prev + bj, w) + i * g;
      S(c + bj, cn, w);
      S(h + bj, o * vtanh(cn), w);
      float* s = save + (size_t)b * 5 * H + j;
      S(s, i, w); S(s + H, f, w); S(s + 2 * H, g, w); S(s + 3 * H, o, w); S(s + 4 * H, cn, w);
    });
  }
  // dh [B, H] (total), dc [B, H] in/out; writes dxw [B, GH]; dh_direct (h's path not through W_h).
  static void bwd(int B, int H, int, const float* dh, float* dc, const float* save,
                  const float* c_prev, const float*, float* dxw, float*, float* dh_direct) {
    const int GH = 4 * H;
    rows_by_8(B, H, [&](int b, int j, int w) {
      const float* s = save + (size_t)b * 5 * H + j;
      const v8 i = L(s, w), f = L(s + H, w), g = L(s + 2 * H, w), o = L(s + 3 * H, w);
      const v8 tc = vtanh(L(s + 4 * H, w));
      const size_t bj = (size_t)b * H + j;
      const v8 dhv = L(dh + bj, w);
      const v8 dcv = L(dc + bj, w) + dhv * o * (1.0f - tc * tc);
      float* d = dxw + (size_t)b * GH + j;
      S(d, dcv * g * i * (1.0f - i), w);
      S(d + H, dcv * L(c_prev + bj, w) * f * (1.0f - f), w);
      S(d + 2 * H, dcv * i * (1.0f - g * g), w);
      S(d + 3 * H, dhv * tc * o * (1.0f - o), w);
      S(dc + bj, dcv * f, w);
      S(dh_direct + bj, (v8){}, w);
    });
  }
};

struct Gru {  // gates r, z, n; carry h; saves r, z, n, h W_hn + b_hn
  static constexpr int G = 3, NS = 1, S_ = 4;
  static constexpr bool SEP = true;  // dhw's n slab is dn * r, dxw's is dn
  static void fwd(int B, int H, int, const float* xw, const float* hw, const float* bh,
                  const float* h_prev, float*, float* h, float* save) {
    const int GH = 3 * H;
    rows_by_8(B, H, [&](int b, int j, int w) {
      const float* x = xw + (size_t)b * GH + j;
      const float* r_ = hw + (size_t)b * GH + j;
      const float* bb = bh + j;
      const v8 r = vsigmoid(L(x, w) + L(r_, w) + L(bb, w));
      const v8 z = vsigmoid(L(x + H, w) + L(r_ + H, w) + L(bb + H, w));
      const v8 hn = L(r_ + 2 * H, w) + L(bb + 2 * H, w);
      const v8 n = vtanh(L(x + 2 * H, w) + r * hn);
      const size_t bj = (size_t)b * H + j;
      S(h + bj, (1.0f - z) * n + z * L(h_prev + bj, w), w);
      float* s = save + (size_t)b * 4 * H + j;
      S(s, r, w); S(s + H, z, w); S(s + 2 * H, n, w); S(s + 3 * H, hn, w);
    });
  }
  static void bwd(int B, int H, int, const float* dh, float*, const float* save, const float*,
                  const float* h_prev, float* dxw, float* dhw, float* dh_direct) {
    const int GH = 3 * H;
    rows_by_8(B, H, [&](int b, int j, int w) {
      const float* s = save + (size_t)b * 4 * H + j;
      const v8 r = L(s, w), z = L(s + H, w), n = L(s + 2 * H, w), hn = L(s + 3 * H, w);
      const size_t bj = (size_t)b * H + j;
      const v8 dhv = L(dh + bj, w);
      const v8 dn = dhv * (1.0f - z) * (1.0f - n * n);
      const v8 dz = dhv * (L(h_prev + bj, w) - n) * z * (1.0f - z);
      const v8 dr = dn * hn * r * (1.0f - r);
      float* d = dxw + (size_t)b * GH + j;
      float* e = dhw + (size_t)b * GH + j;
      S(d, dr, w); S(d + H, dz, w); S(d + 2 * H, dn, w);
      S(e, dr, w); S(e + H, dz, w); S(e + 2 * H, dn * r, w);
      S(dh_direct + bj, dhv * z, w);
    });
  }
};

struct Rnn {  // one slab; carry h; saves phi'(pre) (read off h)
  static constexpr int G = 1, NS = 1, S_ = 1;
  static constexpr bool SEP = false;
  static void fwd(int B, int H, int act, const float* xw, const float* hw, const float* bh,
                  const float*, float*, float* h, float* save) {
    rows_by_8(B, H, [&](int b, int j, int w) {
      const size_t bj = (size_t)b * H + j;
      const v8 pre = L(xw + bj, w) + L(hw + bj, w) + L(bh + j, w);
      v8 y, d;
      if (act == RELU) {
        y = pre > 0 ? pre : 0.0f;
        d = y > 0 ? (v8){} + 1.0f : (v8){};
      } else {
        y = vtanh(pre);
        d = 1.0f - y * y;
      }
      S(h + bj, y, w);
      S(save + bj, d, w);
    });
  }
  static void bwd(int B, int H, int, const float* dh, float*, const float* save, const float*,
                  const float*, float* dxw, float*, float* dh_direct) {
    rows_by_8(B, H, [&](int b, int j, int w) {
      const size_t bj = (size_t)b * H + j;
      S(dxw + bj, L(dh + bj, w) * L(save + bj, w), w);
      S(dh_direct + bj, (v8){}, w);
    });
  }
};

// Split of a GEMM's column panels over `threads` workers: worker k's range.
inline void split(int n_panels, int threads, int k, int* p0, int* p1) {
  *p0 = (int)((long)n_panels * k / threads);
  *p1 = (int)((long)n_panels * (k + 1) / threads);
}

// A spin barrier for a fixed team (the steps are ~100 us: a futex sleep would cost as much).
struct Barrier {
  std::atomic<int> count{0};
  std::atomic<int> phase{0};
  int n;
  explicit Barrier(int n_) : n(n_) {}
  void wait() {
    const int ph = phase.load(std::memory_order_acquire);
    if (count.fetch_add(1, std::memory_order_acq_rel) + 1 == n) {
      count.store(0, std::memory_order_relaxed);
      phase.fetch_add(1, std::memory_order_release);
    } else {
      int spins = 0;
      while (phase.load(std::memory_order_acquire) == ph)
        if (++spins > 2000) std::this_thread::yield();
    }
  }
};

// Run body(k) for k in [0, threads): k = 0 on the calling thread.
template <class F>
inline void team(int threads, F body) {
  if (threads <= 1) { body(0); return; }
  std::vector<std::thread> ts;
  for (int k = 1; k < threads; ++k) ts.emplace_back(body, k);
  body(0);
  for (auto& t : ts) t.join();
}

// One layer's forward over T steps (see the top of this file). `threads` workers split each
// step's GEMM by column panels; the pointwise part splits the batch rows. Every output element is
// computed by one worker in one order: the result does not depend on `threads`.
template <class C>
void layer_fwd(int T, int B, int H, int act, int threads, const float* xw, const float* wh,
               const float* bh, const float* state0, float* h_out, float* stateT, float* saves) {
  const int GH = C::G * H;
  Buf wp(packed_size(H, GH)), hw((size_t)B * GH), cbuf((size_t)2 * B * H);
  pack(wh, H, GH, false, GH, wp.p);
  const float* h0 = state0 + (size_t)(C::NS - 1) * B * H;
  float* cs[2] = {cbuf.p, cbuf.p + (size_t)B * H};
  if (C::NS == 2) std::memcpy(cs[1], state0, sizeof(float) * B * H);
  Barrier bar(threads);
  team(threads, [&](int k) {
    int p0, p1, b0, b1;
    split(panels(GH), threads, k, &p0, &p1);
    split(B, threads, k, &b0, &b1);
    for (int t = 0; t < T; ++t) {
      const float* hp = t == 0 ? h0 : h_out + (size_t)(t - 1) * B * H;
      gemm(hp, H, B, wp.p, H, GH, hw.p, GH, false, p0, p1);
      bar.wait();
      const float* cp = cs[(t + 1) & 1];  // LSTM: c_{t-1}; GRU/RNN: unused
      float* cn = cs[t & 1];
      const size_t off = (size_t)b0 * H;
      C::fwd(b1 - b0, H, act, xw + ((size_t)t * B + b0) * GH, hw.p + (size_t)b0 * GH, bh,
             C::NS == 2 ? cp + off : hp + off, cn + off, h_out + (size_t)t * B * H + off,
             saves + ((size_t)t * B + b0) * C::S_ * H);
      bar.wait();
    }
  });
  if (C::NS == 2) std::memcpy(stateT, cs[(T - 1) & 1], sizeof(float) * B * H);
  std::memcpy(stateT + (size_t)(C::NS - 1) * B * H, T > 0 ? h_out + (size_t)(T - 1) * B * H : h0,
              sizeof(float) * B * H);
}

// One layer's backward over the whole sequence: dh_tbh [T, B, H], dstateT [NS, B, H] -> dxw
// [T, B, GH], dhw [T, B, GH] (GRU only; else not written), dstate0 [NS, B, H].
template <class C>
void layer_bwd(int T, int B, int H, int act, int threads, const float* wh, const float* saves,
               const float* h_out, const float* state0, const float* dh_tbh, const float* dstateT,
               float* dxw, float* dhw, float* dstate0) {
  const int GH = C::G * H;
  Buf wtp(packed_size(GH, H)), dh((size_t)B * H), dc((size_t)B * H), direct((size_t)B * H),
      rec((size_t)B * H);
  pack(wh, GH, H, true, GH, wtp.p);
  if (C::NS == 2) std::memcpy(dc.p, dstateT, sizeof(float) * B * H);
  std::memcpy(rec.p, dstateT + (size_t)(C::NS - 1) * B * H, sizeof(float) * B * H);
  std::memset(direct.p, 0, sizeof(float) * B * H);
  const bool separate = C::SEP;
  Barrier bar(threads);
  team(threads, [&](int k) {
    int p0, p1, b0, b1;
    split(panels(H), threads, k, &p0, &p1);
    split(B, threads, k, &b0, &b1);
    for (int t = T - 1; t >= 0; --t) {
      const size_t off = (size_t)b0 * H, n = (size_t)(b1 - b0) * H;
      const float* dht = dh_tbh + (size_t)t * B * H;
      for (size_t i = 0; i < n; ++i) dh.p[off + i] = dht[off + i] + rec.p[off + i] + direct.p[off + i];
      const float* hp = t == 0 ? state0 + (size_t)(C::NS - 1) * B * H : h_out + (size_t)(t - 1) * B * H;
      const float* cp = t == 0 ? state0 : saves + (size_t)(t - 1) * B * C::S_ * H + 4 * H;
      // c_prev rows: LSTM saves hold c_t at offset 4H of each row of width 5H
      const int cld = t == 0 ? H : C::S_ * H;
      float* dxt = dxw + (size_t)t * B * GH;
      float* dht_w = separate ? dhw + (size_t)t * B * GH : dxt;
      for (int b = b0; b < b1; ++b)
        C::bwd(1, H, act, dh.p + (size_t)b * H, dc.p + (size_t)b * H,
               saves + ((size_t)t * B + b) * C::S_ * H, cp + (size_t)b * cld, hp + (size_t)b * H,
               dxt + (size_t)b * GH, dht_w + (size_t)b * GH, direct.p + (size_t)b * H);
      bar.wait();
      gemm(dht_w, GH, B, wtp.p, GH, H, rec.p, H, false, p0, p1);
      bar.wait();
    }
  });
  for (size_t i = 0; i < (size_t)B * H; ++i) rec.p[i] += direct.p[i];
  if (C::NS == 2) std::memcpy(dstate0, dc.p, sizeof(float) * B * H);
  std::memcpy(dstate0 + (size_t)(C::NS - 1) * B * H, rec.p, sizeof(float) * B * H);
}

}  // namespace rnnjax
