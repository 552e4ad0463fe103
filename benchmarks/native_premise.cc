// The premise of native recurrent layers (issue #27, item 1): one LSTM layer's 35-step forward and
// backward recurrent loop (b 32, h 256) in native code, and two layers as a wavefront.
// Built and run by benchmarks/native_premise.py, which times XLA's fused layer beside it.
// Prints one JSON object: median milliseconds of each variant over `reps` runs.
#include <chrono>
#include <cstdio>
#include <random>
#include <string>

#include "../rnnjax/_native/kernels.h"
#ifdef WITH_OPENBLAS
#include <cblas.h>
#endif
#ifdef WITH_MKL
#include <mkl.h>
#endif

using namespace rnnjax;
using Clock = std::chrono::steady_clock;

static std::vector<float> rnd(size_t n, float scale, std::mt19937& g) {
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = u(g);
  return v;
}

template <class F>
static double median_ms(int reps, F f) {
  std::vector<double> ts;
  f();  // warm
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    f();
    ts.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

static void spin_until(const std::atomic<int>& a, int v) {
  int spins = 0;
  while (a.load(std::memory_order_acquire) < v)
    if (++spins > 2000) std::this_thread::yield();
}

int main(int argc, char** argv) {
  const int T = 35, B = argc > 2 ? std::stoi(argv[2]) : 32, H = 256, GH = 4 * H,
            reps = argc > 1 ? std::stoi(argv[1]) : 20;
  std::mt19937 g(0);
  const float s = 1.0f / 16;
  auto xw1 = rnd((size_t)T * B * GH, 1.0f, g), wh1 = rnd((size_t)H * GH, s, g), bh1 = rnd(GH, s, g);
  auto wx2 = rnd((size_t)H * GH, s, g), wh2 = rnd((size_t)H * GH, s, g), b2 = rnd(GH, s, g);
  auto dtop = rnd((size_t)T * B * H, 1.0f, g);
  std::vector<float> st0((size_t)2 * B * H, 0.f), stT(st0.size()), dstT(st0.size(), 0.f), dst0(st0.size());
  std::vector<float> h1((size_t)T * B * H), h2(h1.size()), sv1((size_t)T * B * 5 * H), sv2(sv1.size());
  std::vector<float> dx1((size_t)T * B * GH), dx2(dx1.size()), xw2(dx1.size()), dh1(h1.size());
#ifdef WITH_OPENBLAS
  scipy_openblas_set_num_threads(1);  // one core, as the microkernel
#endif
#ifdef WITH_MKL
  mkl_set_num_threads(1);  // one core, as the microkernel
#endif
  std::string out = "{";
  auto put = [&](const char* k, double v) {
    char b[96];
    std::snprintf(b, sizeof b, "%s\"%s\": %.4f", out.size() > 1 ? ", " : "", k, v);
    out += b;
  };

  // The GEMM alone: 35 steps of 32x256 @ 256x1024 (forward) and 32x1024 @ 1024x256 (backward).
  Buf wp(packed_size(H, GH)), wtp(packed_size(GH, H)), c((size_t)B * GH);
  put("pack_w_ms", median_ms(reps, [&] { pack(wh1.data(), H, GH, false, GH, wp.p); }));
  put("pack_wt_ms", median_ms(reps, [&] { pack(wh1.data(), GH, H, true, GH, wtp.p); }));
  put("gemm_fwd_micro_ms", median_ms(reps, [&] {
        for (int t = 0; t < T; ++t) gemm(h1.data() + (size_t)t * B * H, H, B, wp.p, H, GH, c.p, GH);
      }));
  put("gemm_bwd_micro_ms", median_ms(reps, [&] {
        for (int t = 0; t < T; ++t) gemm(dx1.data() + (size_t)t * B * GH, GH, B, wtp.p, GH, H, c.p, H);
      }));
  std::vector<float> cc((size_t)B * H, 0.f);
  put("gates_fwd_ms", median_ms(reps, [&] {
        for (int t = 0; t < T; ++t)
          Lstm::fwd(B, H, 0, xw1.data() + (size_t)t * B * GH, c.p, bh1.data(), cc.data(), cc.data(),
                    h1.data() + (size_t)t * B * H, sv1.data() + (size_t)t * B * 5 * H);
      }));
#ifdef WITH_OPENBLAS
  put("gemm_fwd_openblas_ms", median_ms(reps, [&] {
        for (int t = 0; t < T; ++t)
          scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, GH, H, 1.f,
                      h1.data() + (size_t)t * B * H, H, wh1.data(), GH, 0.f, c.p, GH);
      }));
  put("gemm_bwd_openblas_ms", median_ms(reps, [&] {
        for (int t = 0; t < T; ++t)
          scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, H, GH, 1.f,
                      dx1.data() + (size_t)t * B * GH, GH, wh1.data(), GH, 0.f, c.p, H);
      }));
#endif

#ifdef WITH_MKL
  // MKL's packed GEMM (B packed once, as the microkernel's panels) and its JIT small GEMM.
  {
    // 35 steps of A_t [B, K] @ W_h (packed once; trans: W_h^T), as the microkernel rows above
    auto packed = [&](const char* name, const float* a, int K, int N, bool trans) {
      float* bp = (float*)mkl_malloc(cblas_sgemm_pack_get_size(CblasBMatrix, B, N, K), 64);
      cblas_sgemm_pack(CblasRowMajor, CblasBMatrix, trans ? CblasTrans : CblasNoTrans, B, N, K,
                       1.f, wh1.data(), GH, bp);
      put(name, median_ms(reps, [&] {
            for (int t = 0; t < T; ++t)
              cblas_sgemm_compute(CblasRowMajor, CblasNoTrans, CblasPacked, B, N, K,
                                  a + (size_t)t * B * K, K, bp, N, 0.f, c.p, N);
          }));
      mkl_free(bp);
    };
    packed("gemm_fwd_mkl_packed_ms", h1.data(), H, GH, false);
    packed("gemm_bwd_mkl_packed_ms", dx1.data(), GH, H, true);
    void* jit = nullptr;
    if (mkl_jit_create_sgemm(&jit, MKL_ROW_MAJOR, MKL_NOTRANS, MKL_NOTRANS, B, GH, H, 1.f, H, GH,
                             0.f, GH) != MKL_JIT_ERROR) {
      sgemm_jit_kernel_t k = mkl_jit_get_sgemm_ptr(jit);
      put("gemm_fwd_mkl_jit_ms", median_ms(reps, [&] {
            for (int t = 0; t < T; ++t) k(jit, h1.data() + (size_t)t * B * H, wh1.data(), c.p);
          }));
      mkl_jit_destroy(jit);
    }
  }
#endif

  // One layer: forward with saves, then backward over the whole sequence (1 and 2 threads).
  for (int th = 1; th <= 2; ++th) {
    put(th == 1 ? "layer_fwd_ms" : "layer_fwd_2threads_ms", median_ms(reps, [&] {
          layer_fwd<Lstm>(T, B, H, 0, th, ThreadSpawn().fn(), xw1.data(), wh1.data(), bh1.data(), st0.data(), h1.data(),
                          stT.data(), sv1.data());
        }));
    put(th == 1 ? "layer_fwd_bwd_ms" : "layer_fwd_bwd_2threads_ms", median_ms(reps, [&] {
          layer_fwd<Lstm>(T, B, H, 0, th, ThreadSpawn().fn(), xw1.data(), wh1.data(), bh1.data(), st0.data(), h1.data(),
                          stT.data(), sv1.data());
          layer_bwd<Lstm>(T, B, H, 0, th, ThreadSpawn().fn(), wh1.data(), sv1.data(), h1.data(), st0.data(), dtop.data(),
                          dstT.data(), dx1.data(), nullptr, dst0.data());
        }));
  }

  // Two layers in turn on one thread; layer 2's input projection (and its transpose in the
  // backward) as one large GEMM over all T*B rows between the layers.
  Buf wx2p(packed_size(H, GH)), wx2tp(packed_size(GH, H));
  put("two_in_turn_ms", median_ms(reps, [&] {
        layer_fwd<Lstm>(T, B, H, 0, 1, ThreadSpawn().fn(), xw1.data(), wh1.data(), bh1.data(), st0.data(), h1.data(),
                        stT.data(), sv1.data());
        pack(wx2.data(), H, GH, false, GH, wx2p.p);
        gemm(h1.data(), H, T * B, wx2p.p, H, GH, xw2.data(), GH);
        layer_fwd<Lstm>(T, B, H, 0, 1, ThreadSpawn().fn(), xw2.data(), wh2.data(), b2.data(), st0.data(), h2.data(),
                        stT.data(), sv2.data());
        layer_bwd<Lstm>(T, B, H, 0, 1, ThreadSpawn().fn(), wh2.data(), sv2.data(), h2.data(), st0.data(), dtop.data(),
                        dstT.data(), dx2.data(), nullptr, dst0.data());
        pack(wx2.data(), GH, H, true, GH, wx2tp.p);
        gemm(dx2.data(), GH, T * B, wx2tp.p, GH, H, dh1.data(), H);
        layer_bwd<Lstm>(T, B, H, 0, 1, ThreadSpawn().fn(), wh1.data(), sv1.data(), h1.data(), st0.data(), dh1.data(),
                        dstT.data(), dx1.data(), nullptr, dst0.data());
      }));

  // The wavefront: layer 1 on one thread, layer 2 on another, one step behind, handing off through
  // an atomic step counter; layer 2's per-step input projection split between the two threads
  // (columns [0, split) by the producer, the rest by the consumer) so both do 1.5 GEMMs a step.
  Buf w1p(packed_size(H, GH)), w2p(packed_size(H, GH)), w1tp(packed_size(GH, H)), w2tp(packed_size(GH, H));
  auto wavefront = [&] {
    std::atomic<int> fwd1{0}, bwd2{0};
    const int pp = panels(GH), pq = panels(H);
    auto layer1 = [&] {
      Buf hw((size_t)B * GH), cb((size_t)2 * B * H), dh((size_t)B * H), dc((size_t)B * H), rec((size_t)B * H), z((size_t)B * H);
      pack(wh1.data(), H, GH, false, GH, w1p.p);
      pack(wx2.data(), H, GH, false, GH, wx2p.p);
      std::memset(cb.p, 0, sizeof(float) * 2 * B * H);
      for (int t = 0; t < T; ++t) {
        const float* hp = t == 0 ? st0.data() : h1.data() + (size_t)(t - 1) * B * H;
        gemm(hp, H, B, w1p.p, H, GH, hw.p, GH);
        Lstm::fwd(B, H, 0, xw1.data() + (size_t)t * B * GH, hw.p, bh1.data(), cb.p + (size_t)((t + 1) & 1) * B * H,
                  cb.p + (size_t)(t & 1) * B * H, h1.data() + (size_t)t * B * H, sv1.data() + (size_t)t * B * 5 * H);
        gemm(h1.data() + (size_t)t * B * H, H, B, wx2p.p, H, GH, xw2.data() + (size_t)t * B * GH, GH, false, 0, pp / 2);
        fwd1.store(t + 1, std::memory_order_release);
      }
      pack(wh1.data(), GH, H, true, GH, w1tp.p);
      std::memset(dc.p, 0, sizeof(float) * B * H);
      std::memset(rec.p, 0, sizeof(float) * B * H);
      for (int t = T - 1; t >= 0; --t) {
        spin_until(bwd2, T - t);
        float* d1 = dh1.data() + (size_t)t * B * H;  // consumer half of dxw2 @ Wx2^T
        gemm(dx2.data() + (size_t)t * B * GH, GH, B, wx2tp.p, GH, H, d1, H, false, pq / 2, pq);
        for (int i = 0; i < B * H; ++i) dh.p[i] = d1[i] + rec.p[i];
        const float* cp = t == 0 ? st0.data() : sv1.data() + (size_t)(t - 1) * B * 5 * H + 4 * H;
        for (int b = 0; b < B; ++b)
          Lstm::bwd(1, H, 0, dh.p + (size_t)b * H, dc.p + (size_t)b * H, sv1.data() + ((size_t)t * B + b) * 5 * H,
                    cp + (size_t)b * (t == 0 ? H : 5 * H), nullptr, dx1.data() + ((size_t)t * B + b) * GH, nullptr,
                    z.p + (size_t)b * H);
        gemm(dx1.data() + (size_t)t * B * GH, GH, B, w1tp.p, GH, H, rec.p, H);
      }
    };
    auto layer2 = [&] {
      Buf hw((size_t)B * GH), cb((size_t)2 * B * H), dh((size_t)B * H), dc((size_t)B * H), rec((size_t)B * H), z((size_t)B * H);
      pack(wh2.data(), H, GH, false, GH, w2p.p);
      std::memset(cb.p, 0, sizeof(float) * 2 * B * H);
      for (int t = 0; t < T; ++t) {
        const float* hp = t == 0 ? st0.data() : h2.data() + (size_t)(t - 1) * B * H;
        gemm(hp, H, B, w2p.p, H, GH, hw.p, GH);
        spin_until(fwd1, t + 1);
        gemm(h1.data() + (size_t)t * B * H, H, B, wx2p.p, H, GH, xw2.data() + (size_t)t * B * GH, GH, false, pp / 2, pp);
        Lstm::fwd(B, H, 0, xw2.data() + (size_t)t * B * GH, hw.p, b2.data(), cb.p + (size_t)((t + 1) & 1) * B * H,
                  cb.p + (size_t)(t & 1) * B * H, h2.data() + (size_t)t * B * H, sv2.data() + (size_t)t * B * 5 * H);
      }
      pack(wh2.data(), GH, H, true, GH, w2tp.p);
      pack(wx2.data(), GH, H, true, GH, wx2tp.p);
      std::memset(dc.p, 0, sizeof(float) * B * H);
      std::memset(rec.p, 0, sizeof(float) * B * H);
      for (int t = T - 1; t >= 0; --t) {
        for (int i = 0; i < B * H; ++i) dh.p[i] = dtop[(size_t)t * B * H + i] + rec.p[i];
        const float* cp = t == 0 ? st0.data() : sv2.data() + (size_t)(t - 1) * B * 5 * H + 4 * H;
        for (int b = 0; b < B; ++b)
          Lstm::bwd(1, H, 0, dh.p + (size_t)b * H, dc.p + (size_t)b * H, sv2.data() + ((size_t)t * B + b) * 5 * H,
                    cp + (size_t)b * (t == 0 ? H : 5 * H), nullptr, dx2.data() + ((size_t)t * B + b) * GH, nullptr,
                    z.p + (size_t)b * H);
        gemm(dx2.data() + (size_t)t * B * GH, GH, B, wx2tp.p, GH, H, dh1.data() + (size_t)t * B * H, H, false, 0, pq / 2);
        bwd2.store(T - t, std::memory_order_release);
        gemm(dx2.data() + (size_t)t * B * GH, GH, B, w2tp.p, GH, H, rec.p, H);
      }
    };
    std::thread other(layer2);
    layer1();
    other.join();
  };
  put("two_wavefront_ms", median_ms(reps, wavefront));
  std::printf("%s}\n", out.c_str());
  return 0;
}
