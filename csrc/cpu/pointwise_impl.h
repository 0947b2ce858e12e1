// Implementation of the pointwise passes declared in pointwise.h, compiled once per
// instruction set by csrc/cpu/isa_*.cpp inside namespace rnnfast::cpu::RNNFAST_ISA.
// The inner loops run over the H units of a row with restrict-qualified pointers so
// that the compiler vectorises them; the per-unit maths is csrc/kernels/cell_math.h.
#pragma once

#include "../kernels/cell_math.h"
#include "fast_math.h"
#include "pointwise.h"

namespace rnnfast {
namespace cpu {
namespace RNNFAST_ISA {

template <typename T>
inline void copy_units(T* __restrict dst, const T* __restrict src, int64_t k0, int64_t k1) {
  for (int64_t k = k0; k < k1; ++k) dst[k] = src[k];
}

// Row j of the state before this step: the previous step's (rows [0, n_prev)), else
// the initial state.
template <typename T>
inline const T* prev_state_row(const BwdStep<T>& s, int64_t j) {
  return (j < s.n_prev ? s.prev : s.init) + j * s.H;
}

// A compile-time flag passed as an argument (see with_flag).
template <bool B>
struct Flag {
  static constexpr bool value = B;
};

// f(Flag<true>{}) or f(Flag<false>{}) as `flag` is set: the test is made once per call,
// and each case gets its own copy of the loops in f (`if constexpr` on the flag inside).
template <typename F>
inline void with_flag(bool flag, F&& f) {
  if (flag) {
    f(Flag<true>{});
  } else {
    f(Flag<false>{});
  }
}

// The same for two flags.
template <typename F>
inline void with_flags(bool a, bool b, F&& f) {
  with_flag(a, [&](auto fa) { with_flag(b, [&](auto fb) { f(fa, fb); }); });
}

// How a forward pointwise loop walks the units: one at a time as scalars (the compiler
// vectorises the loop), or, where the set has them (lanes_avx512.h), 16 float lanes
// per iteration with the last one masked.
template <typename T>
struct ScalarLanes {
  using V = T;
  using Act = FastAct;
  static constexpr int64_t kWidth = 1;
  struct Mask {};
  static Mask mask(int64_t) { return {}; }
  static V load(const T* p, Mask) { return *p; }
  static void store(T* p, V v, Mask) { *p = v; }
};

template <typename T>
struct LanesFor {
  using type = ScalarLanes<T>;
};
#ifdef RNNFAST_HAVE_F16_LANES
template <>
struct LanesFor<float> {
  using type = F16Lanes;
};
#endif

// ----------------------------------------------------------------- LSTM
template <typename T>
void lstm_fwd(const FwdStep<T>& s, int64_t row_begin, int64_t row_end) {
  using L = typename LanesFor<T>::type;
  using V = typename L::V;
  const int64_t H = s.H, k0 = s.k0, k1 = s.k1, n = k1 - k0;
  with_flags(s.gx != nullptr, s.rec != nullptr, [&](auto save, auto separate) {
    constexpr bool kSave = decltype(save)::value;      // also write the activated gates
    constexpr bool kRec = decltype(separate)::value;   // add rec (else xin holds the sum)
    for (int64_t j = row_begin; j < row_end; ++j) {
      const T* __restrict xi = s.xin + j * s.xin_ld;  // unit k, gate g at xi[k - k0 + g * n]
      const T* __restrict ri = kRec ? s.rec + j * s.rec_ld : nullptr;
      T* __restrict og = kSave ? s.gx + j * s.ld + k0 : nullptr;
      T* __restrict c = s.c + j * H;
      T* __restrict h = s.h + j * H;
#pragma GCC ivdep
      for (int64_t k = k0; k < k1; k += L::kWidth) {
        const int64_t m = k - k0;
        const auto mk = L::mask(k1 - k);
        V i = L::load(xi + m, mk), f = L::load(xi + m + n, mk), g = L::load(xi + m + 2 * n, mk),
          o = L::load(xi + m + 3 * n, mk);
        if constexpr (kRec) {
          i += L::load(ri + m, mk);
          f += L::load(ri + m + n, mk);
          g += L::load(ri + m + 2 * n, mk);
          o += L::load(ri + m + 3 * n, mk);
        }
        V cn, r;
        cell::lstm_forward_unit<V, typename L::Act>(i, f, g, o, L::load(c + k, mk), cn, r);
        if constexpr (kSave) {
          L::store(og + m, i, mk);
          L::store(og + m + H, f, mk);
          L::store(og + m + 2 * H, g, mk);
          L::store(og + m + 3 * H, o, mk);
        }
        L::store(c + k, cn, mk);
        L::store(h + k, r, mk);
      }
      if (s.saved != nullptr) copy_units(s.saved + j * H, c, k0, k1);
      if (s.y != nullptr) copy_units(s.y + j * H, h, k0, k1);
    }
  });
}

template <typename T>
void lstm_bwd(const BwdStep<T>& s, int64_t row_begin, int64_t row_end) {
  using L = typename LanesFor<T>::type;
  using V = typename L::V;
  const int64_t H = s.H, k0 = s.k0, k1 = s.k1;
  with_flag(s.r != nullptr, [&](auto proj) {
    constexpr bool kProj = decltype(proj)::value;  // also write r = o * tanh(c_t)
    for (int64_t j = row_begin; j < row_end; ++j) {
      const T* __restrict gi = s.ws + j * s.ld;
      const T* __restrict gf = gi + H;
      const T* __restrict gg = gi + 2 * H;
      const T* __restrict go = gi + 3 * H;
      const T* __restrict c = s.saved + j * H;
      const T* __restrict cp = prev_state_row(s, j);
      const T* __restrict dr = s.dh + j * H;
      T* __restrict dc = s.dc + j * H;
      T* __restrict di = s.dgx + j * 4 * H;
      T* __restrict df = di + H;
      T* __restrict dg = di + 2 * H;
      T* __restrict dout = di + 3 * H;
      T* __restrict r = kProj ? s.r + j * H : nullptr;
#pragma GCC ivdep
      for (int64_t k = k0; k < k1; k += L::kWidth) {
        const auto mk = L::mask(k1 - k);
        V dck = L::load(dc + k, mk);
        V dik, dfk, dgk, dok, rk;
        cell::lstm_backward_unit<V, typename L::Act>(
            L::load(gi + k, mk), L::load(gf + k, mk), L::load(gg + k, mk), L::load(go + k, mk),
            L::load(c + k, mk), L::load(cp + k, mk), L::load(dr + k, mk), dck, dik, dfk, dgk, dok,
            rk);
        L::store(dc + k, dck, mk);
        L::store(di + k, dik, mk);
        L::store(df + k, dfk, mk);
        L::store(dg + k, dgk, mk);
        L::store(dout + k, dok, mk);
        if constexpr (kProj) L::store(r + k, rk, mk);
      }
    }
  });
}

// ----------------------------------------------------------------- GRU
template <typename T>
void gru_fwd(const FwdStep<T>& s, int64_t row_begin, int64_t row_end) {
  using L = typename LanesFor<T>::type;
  using V = typename L::V;
  const int64_t H = s.H, k0 = s.k0, k1 = s.k1, n = k1 - k0;
  with_flag(s.gx != nullptr, [&](auto save) {
    constexpr bool kSave = decltype(save)::value;  // also write r, z, n, hn to s.gx
    for (int64_t j = row_begin; j < row_end; ++j) {
      T* __restrict xi = s.xin + j * s.xin_ld;  // unit k, gate g at xi[k - k0 + g * n]
      const T* __restrict ri = s.rec + j * s.rec_ld;
      const T* __restrict hp = s.h_prev + j * H;
      T* __restrict h = s.h + j * H;
      const T* __restrict bh = s.bias_h + k0;  // b_hh (zeros without bias): unit k, gate g at
                                                // bh[k - k0 + g * H]
      T* __restrict og = kSave ? s.gx + j * s.ld + k0 : nullptr;
#pragma GCC ivdep
      for (int64_t k = k0; k < k1; k += L::kWidth) {
        const int64_t m = k - k0;
        const auto mk = L::mask(k1 - k);
        V r = L::load(xi + m, mk), z = L::load(xi + m + n, mk), nn = L::load(xi + m + 2 * n, mk);
        const V hn = L::load(ri + m + 2 * n, mk) + L::load(bh + m + 2 * H, mk);
        L::store(h + k,
                 cell::gru_forward_unit<V, typename L::Act>(
                     r, z, nn, L::load(ri + m, mk) + L::load(bh + m, mk),
                     L::load(ri + m + n, mk) + L::load(bh + m + H, mk), hn, L::load(hp + k, mk)),
                 mk);
        if constexpr (kSave) {
          L::store(og + m, r, mk);
          L::store(og + m + H, z, mk);
          L::store(og + m + 2 * H, nn, mk);
          L::store(og + m + 3 * H, hn, mk);
        }
      }
      if (s.y != nullptr) copy_units(s.y + j * H, h, k0, k1);
    }
  });
}

template <typename T>
void gru_bwd(const BwdStep<T>& s, int64_t row_begin, int64_t row_end) {
  const int64_t H = s.H, k0 = s.k0, k1 = s.k1;
  for (int64_t j = row_begin; j < row_end; ++j) {
    const T* __restrict r = s.ws + j * s.ld;
    const T* __restrict z = r + H;
    const T* __restrict n = r + 2 * H;
    const T* __restrict hn = r + 3 * H;
    const T* __restrict hp = prev_state_row(s, j);
    T* __restrict dh = s.dh + j * H;
    T* __restrict dxr = s.dgx + j * 3 * H;
    T* __restrict dxz = dxr + H;
    T* __restrict dxn = dxr + 2 * H;
    T* __restrict dhn = s.dgh + j * H;  // the r, z parts of dGh are dxr, dxz
#pragma GCC ivdep
    for (int64_t k = k0; k < k1; ++k) {
      T dhr, dhz;
      dh[k] = cell::gru_backward_unit<T>(r[k], z[k], n[k], hn[k], hp[k], dh[k], dxr[k], dxz[k],
                                         dxn[k], dhr, dhz, dhn[k]);
    }
  }
}

// ----------------------------------------------------------------- RNN
template <typename T, bool Relu>
void rnn_fwd(const FwdStep<T>& s, int64_t row_begin, int64_t row_end) {
  // tanh in the set's lanes where it has them; relu is a comparison the compiler vectorises.
  using L = std::conditional_t<Relu, ScalarLanes<T>, typename LanesFor<T>::type>;
  using V = typename L::V;
  const int64_t H = s.H, k0 = s.k0, k1 = s.k1;
  with_flag(s.rec != nullptr, [&](auto separate) {
    constexpr bool kRec = decltype(separate)::value;  // add rec (else xin holds the sum)
    for (int64_t j = row_begin; j < row_end; ++j) {
      const T* __restrict xi = s.xin + j * s.xin_ld;  // unit k at xi[k - k0]
      const T* __restrict ri = kRec ? s.rec + j * s.rec_ld : nullptr;
      T* __restrict g = s.gx + j * s.ld;  // the layer output
      T* __restrict h = s.h + j * H;
#pragma GCC ivdep
      for (int64_t k = k0; k < k1; k += L::kWidth) {
        const auto mk = L::mask(k1 - k);
        V pre = L::load(xi + k - k0, mk);
        if constexpr (kRec) pre += L::load(ri + k - k0, mk);
        const V v = cell::rnn_forward_unit<V, typename L::Act, Relu>(pre);
        L::store(g + k, v, mk);
        L::store(h + k, v, mk);
      }
      if (s.y != nullptr) copy_units(s.y + j * H, h, k0, k1);
    }
  });
}

template <typename T, bool Relu>
void rnn_bwd(const BwdStep<T>& s, int64_t row_begin, int64_t row_end) {
  const int64_t H = s.H, k0 = s.k0, k1 = s.k1;
  for (int64_t j = row_begin; j < row_end; ++j) {
    const T* __restrict h = s.ws + j * s.ld;
    const T* __restrict dh = s.dh + j * H;
    T* __restrict dg = s.dgx + j * H;
#pragma GCC ivdep
    for (int64_t k = k0; k < k1; ++k) dg[k] = cell::rnn_backward_unit<T, Relu>(h[k], dh[k]);
  }
}

// constexpr: the tables are built at compile time (constinit in isa_*.cpp), so no code
// of this instruction set runs while the library loads, on CPUs that lack it.
constexpr CpuKernels make_kernels(const char* name, PanelGemmF32 panel_gemm = nullptr,
                                  PackPanelF32 pack_panel = nullptr,
                                  BlockedGemmF32 blocked_gemm = nullptr,
                                  int64_t blocked_min_n = 0, int blocked_min_mnk_log2 = 0,
                                  PanelGemmBf16W panel_gemm_bf16 = nullptr) {
  return CpuKernels{
      name,
      {&lstm_fwd<float>, &gru_fwd<float>, &rnn_fwd<float, false>, &rnn_fwd<float, true>},
      {&lstm_fwd<double>, &gru_fwd<double>, &rnn_fwd<double, false>, &rnn_fwd<double, true>},
      {&lstm_bwd<float>, &gru_bwd<float>, &rnn_bwd<float, false>, &rnn_bwd<float, true>},
      {&lstm_bwd<double>, &gru_bwd<double>, &rnn_bwd<double, false>, &rnn_bwd<double, true>},
      panel_gemm,
      pack_panel,
      blocked_gemm,
      blocked_min_n,
      blocked_min_mnk_log2,
      panel_gemm_bf16};
}

}  // namespace RNNFAST_ISA
}  // namespace cpu
}  // namespace rnnfast
