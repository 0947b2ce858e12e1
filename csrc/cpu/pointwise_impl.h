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
void lstm_fwd(const LstmFwdStep<T>& s, int64_t row_begin, int64_t row_end) {
  const int64_t H = s.H;
  for (int64_t j = row_begin; j < row_end; ++j) {
    T* __restrict gi = s.gates + j * 4 * H;
    T* __restrict gf = gi + H;
    T* __restrict gg = gi + 2 * H;
    T* __restrict go = gi + 3 * H;
    T* __restrict c = s.c + j * H;
    T* __restrict h = s.h + j * H;
#pragma GCC ivdep
    for (int64_t k = 0; k < H; ++k) {
      T cn, r;
      cell::lstm_forward_unit<T, FastAct>(gi[k], gf[k], gg[k], go[k], c[k], cn, r);
      c[k] = cn;
      h[k] = r;
    }
    if (s.cells != nullptr) {
      T* __restrict saved = s.cells + j * H;
      for (int64_t k = 0; k < H; ++k) saved[k] = c[k];
    }
    if (s.y != nullptr) {
      T* __restrict y = s.y + j * H;
      for (int64_t k = 0; k < H; ++k) y[k] = h[k];
    }
  }
}

template <typename T>
void lstm_bwd(const LstmBwdStep<T>& s, int64_t row_begin, int64_t row_end) {
  const int64_t H = s.H;
  for (int64_t j = row_begin; j < row_end; ++j) {
    const T* __restrict gi = s.gates + j * 4 * H;
    const T* __restrict gf = gi + H;
    const T* __restrict gg = gi + 2 * H;
    const T* __restrict go = gi + 3 * H;
    const T* __restrict c = s.cells + j * H;
    const T* __restrict cp = (j < s.n_prev ? s.c_prev : s.c_init) + j * H;
    const T* __restrict dr = s.dr + j * H;
    T* __restrict dc = s.dc + j * H;
    T* __restrict di = s.dgates + j * 4 * H;
    T* __restrict df = di + H;
    T* __restrict dg = di + 2 * H;
    T* __restrict dout = di + 3 * H;
    if (s.r != nullptr) {
      T* __restrict r = s.r + j * H;
#pragma GCC ivdep
      for (int64_t k = 0; k < H; ++k) {
        T dck = dc[k];
        cell::lstm_backward_unit<T, FastAct>(gi[k], gf[k], gg[k], go[k], c[k], cp[k], dr[k],
                                              dck, di[k], df[k], dg[k], dout[k], r[k]);
        dc[k] = dck;
      }
    } else {
#pragma GCC ivdep
      for (int64_t k = 0; k < H; ++k) {
        T dck = dc[k];
        T unused;
        cell::lstm_backward_unit<T, FastAct>(gi[k], gf[k], gg[k], go[k], c[k], cp[k], dr[k],
                                              dck, di[k], df[k], dg[k], dout[k], unused);
        dc[k] = dck;
      }
    }
  }
}

inline CpuKernels make_kernels(const char* name) {
  return CpuKernels{name, &lstm_fwd<float>, &lstm_fwd<double>, &lstm_bwd<float>,
                    &lstm_bwd<double>};
}

}  // namespace RNNFAST_ISA
}  // namespace cpu
}  // namespace rnnfast
