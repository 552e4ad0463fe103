// Recurrent layers on CPU: the whole time loop of one layer in native code (rnnjax/network/impls/native.py).
//
// Notation as in rnnjax: T time, B batch, H hidden, GH = G*H the fused gate axis (the cell's gate
// order). Per layer: xw [T, B, GH] (x W_x + b_x, from XLA), w_h [H, GH], b_h [GH], the carry as
// slabs [NS, B, H] (LSTM: c then h, Flax's order; GRU, RNN: h). The forward writes h [T, B, H],
// the final carry and what the backward reads ("saves", [T, B, S*H]); the backward writes the
// gates' cotangents dxw [T, B, GH] (and for GRU dhw, which differs in the n slab) and the carry's.
// The recurrent weights' gradients are left to XLA: one large matmul over all T*B rows.
//
// Each step: one GEMM (gemm.h: a register-blocked microkernel over W_h packed once per call), then
// the cell's gates over the batch rows, vectorised with a polynomial exp; no per-step launches.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "gemm.h"

namespace rnnjax {

// Per-cell pointwise steps. Each reads pre-activation halves xw [B, GH] and hw [B, GH] (no b_h yet)
// and works over one batch row at a time; vectors of VL over the hidden units, scalar for the tail.
enum Act { TANH = 0, RELU = 1 };

template <class F>
inline void rows_by_lanes(int B, int H, F f) {  // f(b, j, width) with width VL or 1
  for (int b = 0; b < B; ++b) {
    int j = 0;
    for (; j + VL <= H; j += VL) f(b, j, VL);
    for (; j < H; ++j) f(b, j, 1);
  }
}

// A lane-generic load/store: width VL (vector) or 1 (scalar in lane 0).
inline v8 L(const float* p, int w) { return w == VL ? ld(p) : (v8){} + *p; }
inline void S(float* p, v8 v, int w) { if (w == VL) st(p, v); else *p = v[0]; }

struct Lstm {  // gates i, f, g, o; carry (c, h); saves i, f, g, o, c_t
  static constexpr int G = 4, NS = 2, S_ = 5;
  static constexpr bool SEP = false;  // dhw == dxw
  static void fwd(int B, int H, int, const float* xw, const float* hw, const float* bh,
                  const float* c_prev, float* c, float* h, float* save) {
    const int GH = 4 * H;
    rows_by_lanes(B, H, [&](int b, int j, int w) {
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
    rows_by_lanes(B, H, [&](int b, int j, int w) {
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
    rows_by_lanes(B, H, [&](int b, int j, int w) {
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
    rows_by_lanes(B, H, [&](int b, int j, int w) {
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
    rows_by_lanes(B, H, [&](int b, int j, int w) {
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
    rows_by_lanes(B, H, [&](int b, int j, int w) {
      const size_t bj = (size_t)b * H + j;
      S(dxw + bj, L(dh + bj, w) * L(save + bj, w), w);
      S(dh_direct + bj, (v8){}, w);
    });
  }
};

// Each step of a layer's loop is two phases, the step's GEMM (one item per column panel) and its
// pointwise part (one item per chunk of batch rows); phase q may start once every item of the
// phases before it is done. Items are numbered in that order and claimed from one atomic counter
// by whichever workers are there: the caller always, and up to threads - 1 helpers when they get a
// core (Spawn runs them: XLA's own intra-op thread pool inside a JAX program, so the helper never
// competes with XLA's workers for the 2 cores; else plain threads). A worker that claims an item
// of a later phase waits for the earlier phases; the caller never waits for a helper that has not
// started, so the loop also completes on the caller alone. Every output element is computed by one
// item in one order: the result does not depend on the thread count or on who ran what.
struct Phases {
  long per_step, in_a, total;  // items per step, of them in phase A; T * per_step
  std::atomic<long> next{0}, done{0};
  // the first item of the phase holding item i (the count of items that must be done before it)
  long phase_start(long i) const {
    const long t = i / per_step, r = i % per_step;
    return t * per_step + (r < in_a ? 0 : in_a);
  }
};

// Claim and run items until none is left. item(t, phase, index).
template <class F>
inline void work(Phases& ph, const F& item) {
  for (;;) {
    const long i = ph.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= ph.total) return;
    const long need = ph.phase_start(i);
    for (int spins = 0; ph.done.load(std::memory_order_acquire) < need;)
      if (++spins > 2000) std::this_thread::yield();
    const long t = i / ph.per_step, r = i % ph.per_step;
    if (r < ph.in_a) item(t, 0, r);
    else item(t, 1, r - ph.in_a);
    ph.done.fetch_add(1, std::memory_order_acq_rel);
  }
}

// How helpers are started: spawn(task) runs task() soon, on another thread.
using Spawn = std::function<void(std::function<void()>)>;

// Plain threads, joined when this goes away (the default, and the premise benchmark's).
struct ThreadSpawn {
  std::vector<std::thread> ts;
  Spawn fn() {
    return [this](std::function<void()> task) { ts.emplace_back(std::move(task)); };
  }
  ~ThreadSpawn() {
    for (auto& t : ts) t.join();
  }
};

// Run T steps of (phase A: na items, phase B: nb items) on the caller and threads - 1 helpers.
template <class F>
inline void run_steps(int T, int na, int nb, int threads, const Spawn& spawn, const F& item) {
  auto ph = std::make_shared<Phases>();
  ph->per_step = na + nb;
  ph->in_a = na;
  ph->total = (long)T * (na + nb);
  if (ph->total == 0) return;
  // A helper that starts after the caller has returned finds every item claimed: it touches only
  // *ph, which it keeps alive; `item` (the caller's frame) runs only for claimed items, all done
  // before the caller returns.
  for (int k = 1; k < threads; ++k) spawn([ph, &item] { work(*ph, item); });
  work(*ph, item);
  for (int spins = 0; ph->done.load(std::memory_order_acquire) < ph->total;)
    if (++spins > 2000) std::this_thread::yield();
}

// Items per phase: the GEMM's column panels, and batch rows in chunks of ROWS.
constexpr int ROWS = 4;
inline int row_chunks(int B) { return (B + ROWS - 1) / ROWS; }

// One layer's forward over T steps (see the top of this file): each step's GEMM split by column
// panels, its pointwise part by batch rows (run_steps).
template <class C>
void layer_fwd(int T, int B, int H, int act, int threads, const Spawn& spawn, const float* xw,
               const float* wh, const float* bh, const float* state0, float* h_out,
               float* stateT, float* saves) {
  const int GH = C::G * H;
  Buf wp(packed_size(H, GH)), hw((size_t)B * GH), cbuf((size_t)2 * B * H);
  pack(wh, H, GH, false, GH, wp.p);
  const float* h0 = state0 + (size_t)(C::NS - 1) * B * H;
  float* cs[2] = {cbuf.p, cbuf.p + (size_t)B * H};
  if (C::NS == 2) std::memcpy(cs[1], state0, sizeof(float) * B * H);
  run_steps(T, panels(GH), row_chunks(B), threads, spawn, [&](long t, int phase, long k) {
    const float* hp = t == 0 ? h0 : h_out + (size_t)(t - 1) * B * H;
    if (phase == 0) {
      gemm(hp, H, B, wp.p, H, GH, hw.p, GH, false, (int)k, (int)k + 1);
      return;
    }
    const int b0 = (int)k * ROWS, b1 = std::min(B, b0 + ROWS);
    const float* cp = cs[(t + 1) & 1];  // LSTM: c_{t-1}; GRU/RNN: unused
    float* cn = cs[t & 1];
    const size_t off = (size_t)b0 * H;
    C::fwd(b1 - b0, H, act, xw + ((size_t)t * B + b0) * GH, hw.p + (size_t)b0 * GH, bh,
           C::NS == 2 ? cp + off : hp + off, cn + off, h_out + (size_t)t * B * H + off,
           saves + ((size_t)t * B + b0) * C::S_ * H);
  });
  if (C::NS == 2) std::memcpy(stateT, cs[(T - 1) & 1], sizeof(float) * B * H);
  std::memcpy(stateT + (size_t)(C::NS - 1) * B * H, T > 0 ? h_out + (size_t)(T - 1) * B * H : h0,
              sizeof(float) * B * H);
}

// One layer's backward over the whole sequence: dh_tbh [T, B, H], dstateT [NS, B, H] -> dxw
// [T, B, GH], dhw [T, B, GH] (GRU only; else not written), dstate0 [NS, B, H]. Each step: the
// pointwise part by batch rows, then the GEMM dGates W_h^T by column panels of H (run_steps).
template <class C>
void layer_bwd(int T, int B, int H, int act, int threads, const Spawn& spawn, const float* wh,
               const float* saves, const float* h_out, const float* state0, const float* dh_tbh,
               const float* dstateT, float* dxw, float* dhw, float* dstate0) {
  const int GH = C::G * H;
  Buf wtp(packed_size(GH, H)), dh((size_t)B * H), dc((size_t)B * H), direct((size_t)B * H),
      rec((size_t)B * H);
  pack(wh, GH, H, true, GH, wtp.p);
  if (C::NS == 2) std::memcpy(dc.p, dstateT, sizeof(float) * B * H);
  std::memcpy(rec.p, dstateT + (size_t)(C::NS - 1) * B * H, sizeof(float) * B * H);
  std::memset(direct.p, 0, sizeof(float) * B * H);
  const bool separate = C::SEP;
  run_steps(T, row_chunks(B), panels(H), threads, spawn, [&](long i, int phase, long k) {
    const int t = T - 1 - (int)i;
    float* dxt = dxw + (size_t)t * B * GH;
    float* dht_w = separate ? dhw + (size_t)t * B * GH : dxt;
    if (phase == 1) {
      gemm(dht_w, GH, B, wtp.p, GH, H, rec.p, H, false, (int)k, (int)k + 1);
      return;
    }
    const int b0 = (int)k * ROWS, b1 = std::min(B, b0 + ROWS);
    const size_t off = (size_t)b0 * H, n = (size_t)(b1 - b0) * H;
    const float* dht = dh_tbh + (size_t)t * B * H;
    for (size_t j = 0; j < n; ++j) dh.p[off + j] = dht[off + j] + rec.p[off + j] + direct.p[off + j];
    const float* hp = t == 0 ? state0 + (size_t)(C::NS - 1) * B * H : h_out + (size_t)(t - 1) * B * H;
    // c_prev rows: LSTM saves hold c_t at offset 4H of each row of width 5H
    const float* cp = t == 0 ? state0 : saves + (size_t)(t - 1) * B * C::S_ * H + 4 * H;
    const int cld = t == 0 ? H : C::S_ * H;
    for (int b = b0; b < b1; ++b)
      C::bwd(1, H, act, dh.p + (size_t)b * H, dc.p + (size_t)b * H,
             saves + ((size_t)t * B + b) * C::S_ * H, cp + (size_t)b * cld, hp + (size_t)b * H,
             dxt + (size_t)b * GH, dht_w + (size_t)b * GH, direct.p + (size_t)b * H);
  });
  for (size_t i = 0; i < (size_t)B * H; ++i) rec.p[i] += direct.p[i];
  if (C::NS == 2) std::memcpy(dstate0, dc.p, sizeof(float) * B * H);
  std::memcpy(dstate0 + (size_t)(C::NS - 1) * B * H, rec.p, sizeof(float) * B * H);
}

}  // namespace rnnjax
