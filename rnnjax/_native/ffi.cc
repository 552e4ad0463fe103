// The XLA FFI handlers of rnnjax's native recurrent layers (rnnjax/network/impls/native.py registers them) and a
// small CPython module, rnnjax._native_ext, that hands them to JAX as capsules.
//
// For each kernel K in {rnn, gru, lstm}, two custom-call targets:
//   rnnjax_K_fwd(xw [T, B, GH], w_h [H, GH], b_h [GH], state0 [NS, B, H])
//       -> (h [T, B, H], stateT [NS, B, H], saves [T, B, S*H])
//   rnnjax_K_bwd(w_h, saves, h, state0, dh [T, B, H], dstateT [NS, B, H])
//       -> (dxw [T, B, GH], dhw [T, B, GH] or [T, B, 0] where dhw == dxw, dstate0 [NS, B, H])
// with attributes act (0 tanh, 1 relu: the vanilla RNN's phi) and threads (workers per step).
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string>

#include "kernels.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using In = ffi::Buffer<ffi::F32>;
using Out = ffi::ResultBuffer<ffi::F32>;

namespace {

bool dims_are(const ffi::Span<const int64_t>& d, std::initializer_list<int64_t> want) {
  if (d.size() != want.size()) return false;
  size_t i = 0;
  for (int64_t w : want)
    if (d[i++] != w) return false;
  return true;
}

ffi::Error bad(const std::string& what) { return ffi::Error::InvalidArgument("rnnjax native: " + what); }

// Helpers of a kernel call run on XLA's intra-op thread pool (kernels.h: run_steps), where it has
// one; else on plain threads.
struct PoolSpawn {
  ffi::ThreadPool pool;
  rnnjax::ThreadSpawn fallback;
  rnnjax::Spawn fn() {
    if (pool.num_threads() < 1) return fallback.fn();
    return [this](std::function<void()> task) { pool.Schedule(std::move(task)); };
  }
};

template <class C>
ffi::Error Fwd(ffi::ThreadPool pool, In xw, In wh, In bh, In state0, Out h, Out stateT, Out saves,
               int64_t act, int64_t threads) {
  const auto d = xw.dimensions();
  if (d.size() != 3 || d[2] % C::G != 0) return bad("xw must be [T, B, G*H]");
  const int64_t T = d[0], B = d[1], GH = d[2], H = GH / C::G;
  if (!dims_are(wh.dimensions(), {H, GH}) || !dims_are(bh.dimensions(), {GH}) ||
      !dims_are(state0.dimensions(), {C::NS, B, H}) || !dims_are(h->dimensions(), {T, B, H}) ||
      !dims_are(stateT->dimensions(), {C::NS, B, H}) || !dims_are(saves->dimensions(), {T, B, C::S_ * H}))
    return bad("forward operands do not match xw [T, B, G*H]");
  PoolSpawn spawn{pool};
  rnnjax::layer_fwd<C>((int)T, (int)B, (int)H, (int)act, (int)std::max<int64_t>(1, threads),
                       spawn.fn(), xw.typed_data(), wh.typed_data(), bh.typed_data(), state0.typed_data(),
                       h->typed_data(), stateT->typed_data(), saves->typed_data());
  return ffi::Error::Success();
}

template <class C>
ffi::Error Bwd(ffi::ThreadPool pool, In wh, In saves, In h, In state0, In dh, In dstateT, Out dxw,
               Out dhw, Out dstate0, int64_t act, int64_t threads) {
  const auto d = h.dimensions();
  if (d.size() != 3) return bad("h must be [T, B, H]");
  const int64_t T = d[0], B = d[1], H = d[2], GH = C::G * H;
  if (!dims_are(wh.dimensions(), {H, GH}) || !dims_are(saves.dimensions(), {T, B, C::S_ * H}) ||
      !dims_are(state0.dimensions(), {C::NS, B, H}) || !dims_are(dh.dimensions(), {T, B, H}) ||
      !dims_are(dstateT.dimensions(), {C::NS, B, H}) || !dims_are(dxw->dimensions(), {T, B, GH}) ||
      !dims_are(dhw->dimensions(), {T, B, C::SEP ? GH : 0}) ||
      !dims_are(dstate0->dimensions(), {C::NS, B, H}))
    return bad("backward operands do not match h [T, B, H]");
  PoolSpawn spawn{pool};
  rnnjax::layer_bwd<C>((int)T, (int)B, (int)H, (int)act, (int)std::max<int64_t>(1, threads),
                       spawn.fn(), wh.typed_data(), saves.typed_data(), h.typed_data(), state0.typed_data(),
                       dh.typed_data(), dstateT.typed_data(), dxw->typed_data(),
                       C::SEP ? dhw->typed_data() : nullptr, dstate0->typed_data());
  return ffi::Error::Success();
}

}  // namespace

#define RNNJAX_HANDLERS(NAME, CELL)                                                              \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME##_fwd, Fwd<CELL>,                                           \
                                ffi::Ffi::Bind()                                                 \
                                    .Ctx<ffi::ThreadPool>()                                      \
                                    .Arg<In>().Arg<In>().Arg<In>().Arg<In>()                     \
                                    .Ret<In>().Ret<In>().Ret<In>()                               \
                                    .Attr<int64_t>("act").Attr<int64_t>("threads"));             \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME##_bwd, Bwd<CELL>,                                           \
                                ffi::Ffi::Bind()                                                 \
                                    .Ctx<ffi::ThreadPool>()                                      \
                                    .Arg<In>().Arg<In>().Arg<In>().Arg<In>().Arg<In>().Arg<In>() \
                                    .Ret<In>().Ret<In>().Ret<In>()                               \
                                    .Attr<int64_t>("act").Attr<int64_t>("threads"));

RNNJAX_HANDLERS(rnnjax_rnn, rnnjax::Rnn)
RNNJAX_HANDLERS(rnnjax_gru, rnnjax::Gru)
RNNJAX_HANDLERS(rnnjax_lstm, rnnjax::Lstm)

// The Python module: KERNELS = {name: (gates, carry slabs, save slabs, separate dhw, fwd, bwd)},
// fwd and bwd being capsules for jax.ffi.register_ffi_target; ACTIVATIONS = {name: act}; ISA, the
// vector code it was built for ("avx512", "avx2" or "generic": gemm.h). RNNJAX_MODULE names it:
// setup.py builds _native_ext for the host and, on x86-64, _native_ext_avx2 for AVX2 hosts.
template <class C>
static int add_kernel(PyObject* kernels, const char* name, XLA_FFI_Handler* fwd, XLA_FFI_Handler* bwd) {
  PyObject* t = Py_BuildValue("(iiiNNN)", C::G, C::NS, C::S_, PyBool_FromLong(C::SEP),
                              PyCapsule_New(reinterpret_cast<void*>(fwd), nullptr, nullptr),
                              PyCapsule_New(reinterpret_cast<void*>(bwd), nullptr, nullptr));
  if (t == nullptr) return -1;
  const int rc = PyDict_SetItemString(kernels, name, t);
  Py_DECREF(t);
  return rc;
}

#ifndef RNNJAX_MODULE
#define RNNJAX_MODULE _native_ext
#endif
#define RNNJAX_STR2(x) #x
#define RNNJAX_STR(x) RNNJAX_STR2(x)
#define RNNJAX_CAT2(a, b) a##b
#define RNNJAX_CAT(a, b) RNNJAX_CAT2(a, b)

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, RNNJAX_STR(RNNJAX_MODULE),
                                    "rnnjax's native recurrent layers (XLA FFI handlers).", -1};

PyMODINIT_FUNC RNNJAX_CAT(PyInit_, RNNJAX_MODULE)(void) {
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
  PyObject* kernels = PyDict_New();
  PyObject* acts = Py_BuildValue("{s:i,s:i}", "tanh", (int)rnnjax::TANH, "relu", (int)rnnjax::RELU);
  if (kernels == nullptr || acts == nullptr ||
      add_kernel<rnnjax::Rnn>(kernels, "rnn", rnnjax_rnn_fwd, rnnjax_rnn_bwd) < 0 ||
      add_kernel<rnnjax::Gru>(kernels, "gru", rnnjax_gru_fwd, rnnjax_gru_bwd) < 0 ||
      add_kernel<rnnjax::Lstm>(kernels, "lstm", rnnjax_lstm_fwd, rnnjax_lstm_bwd) < 0 ||
      PyModule_AddObject(m, "KERNELS", kernels) < 0 || PyModule_AddObject(m, "ACTIVATIONS", acts) < 0 ||
      PyModule_AddStringConstant(m, "ISA", rnnjax::ISA) < 0) {
    Py_XDECREF(kernels);
    Py_XDECREF(acts);
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
