// Fused per-step CUDA kernels for the LSTM, GRU and Elman RNN, written against
// csrc/simt/simt.h: nvcc compiles them for the GPU (csrc/cuda/rnn_cuda.cu) and a
// host compiler compiles them for the SIMT emulator (csrc/simt/emulated_ops.cpp).
// The per-unit maths are csrc/kernels/cell_math.h, shared with the CPU kernels.
//
// Legend: R rows active in this step (R <= B), H hidden size, G gates per unit
// (LSTM 4, GRU 3, RNN 1). Every pointer below is to row-major storage with the
// row stride given by its shape; the step's rows are rows [0, R). All of it is global
// memory, read and written through load/store (simt::ld/st: counted in the emulator).
//
// Types: T is the tensor element type (float, double, __half, __nv_bfloat16);
// A = Acc<T> is the arithmetic type (float for the half types, T otherwise). The
// LSTM cell state, the saved gates and all pointwise arithmetic use A; tensors
// that feed a GEMM (h, the gate gradients) are T.
//
// The output gradient `dout` is read in place with a row stride `dout_ld` and a
// column stride `dout_cs` (either may be 0: an expanded gradient, as from out.sum()).
// The previous state of row b (LSTM c_{t-1}, GRU h_{t-1}) is prev[b] for b < n_prev
// (the rows the step processed before also had) and init[b], the initial state,
// otherwise: packed sequences start from their initial state in either direction.
//
// Launch shape: one thread per (row, unit), grid-stride loop, 1-D blocks of
// kPointwiseThreads; any grid size is correct; likewise the column sums.
#pragma once

#include <cmath>
#include <cstdint>

#include "../simt/simt.h"
#include "cell_math.h"

namespace rnnfast {
namespace RNNFAST_DEVICE_NS {

constexpr int kPointwiseThreads = 256;

// ------------------------------------------------------------------ types

template <typename T>
struct AccOf {
  using type = T;
};
#if SIMT_HAS_HALF
template <>
struct AccOf<__half> {
  using type = float;
};
template <>
struct AccOf<__nv_bfloat16> {
  using type = float;
};
#endif
template <typename T>
using Acc = typename AccOf<T>::type;

// Value conversions between the element and arithmetic types (round to nearest).
template <typename To, typename From>
SIMT_DEVICE To to(From v) {
  return static_cast<To>(v);
}
#if SIMT_HAS_HALF
template <>
SIMT_DEVICE float to<float, __half>(__half v) {
  return __half2float(v);
}
template <>
SIMT_DEVICE float to<float, __nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
SIMT_DEVICE __half to<__half, float>(float v) {
  return __float2half_rn(v);
}
template <>
SIMT_DEVICE __nv_bfloat16 to<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}
#endif

// Global memory through simt::ld/st (counted in the emulator), converted.
template <typename A, typename T>
SIMT_DEVICE A load(const T* p) {
  return to<A>(simt::ld(p));
}
template <typename T, typename A>
SIMT_DEVICE void store(T* p, A v) {
  simt::st(p, to<T>(v));
}

// Activations on the device: the GPU's fast exponential and division for float
// (a few ulp; the tests' float32 tolerances cover them), exact ones for double.
struct DeviceAct {
  static SIMT_DEVICE float sigmoid(float x) { return __fdividef(1.0f, 1.0f + __expf(-x)); }
  static SIMT_DEVICE double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
  static SIMT_DEVICE float tanh(float x) { return tanhf(x); }
  static SIMT_DEVICE double tanh(double x) { return ::tanh(x); }
};

SIMT_DEVICE int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
SIMT_DEVICE int64_t grid_threads() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// f(e, b, j) for every element e = b * H + j of an [R, H] step (row b, unit j), one
// thread an element, grid-stride.
template <typename F>
SIMT_DEVICE void for_each_unit(int64_t R, int64_t H, const F& f) {
  const int64_t n = R * H;
  for (int64_t e = global_thread(); e < n; e += grid_threads()) {
    const int64_t b = e / H;
    f(e, b, e - b * H);
  }
}

// ------------------------------------------------------------------ LSTM

template <typename T>
struct LstmForwardStep {
  int64_t R = 0, H = 0;
  const T* gx = nullptr;  // [R, 4H] x W_ih^T + b_ih + b_hh of this step
  const T* gh = nullptr;  // [R, 4H] h_prev W_hh^T
  Acc<T>* c = nullptr;    // [R, H] cell state: in c_prev, out c
  T* r = nullptr;         // [R, H] out: o * tanh(c) (h, or the input of the projection)
  T* out = nullptr;       // [R, H] out: a second copy of r (the output rows), or null
  Acc<T>* gates = nullptr;  // [R, 4H] out: activated gates (training only), or null
  Acc<T>* cells = nullptr;  // [R, H] out: c (training only), or null
};

template <typename T>
__global__ void lstm_forward_step(LstmForwardStep<T> p) {
  using A = Acc<T>;
  for_each_unit(p.R, p.H, [&](int64_t e, int64_t b, int64_t j) {
    const int64_t g0 = b * 4 * p.H + j;
    A gate[4];
    for (int k = 0; k < 4; ++k)
      gate[k] = load<A>(p.gx + g0 + k * p.H) + load<A>(p.gh + g0 + k * p.H);
    A c, r;
    cell::lstm_forward_unit<A, DeviceAct>(gate[0], gate[1], gate[2], gate[3], simt::ld(p.c + e),
                                          c, r);
    simt::st(p.c + e, c);
    store(p.r + e, r);
    if (p.out != nullptr) store(p.out + e, r);
    if (p.gates != nullptr) {
      for (int k = 0; k < 4; ++k) simt::st(p.gates + g0 + k * p.H, gate[k]);
      simt::st(p.cells + e, c);
    }
  });
}

template <typename T>
struct LstmBackwardStep {
  int64_t R = 0, H = 0;
  const Acc<T>* gates = nullptr;  // [R, 4H] activated gates saved by the forward pass
  const Acc<T>* cells = nullptr;  // [R, H] c_t
  const Acc<T>* cprev = nullptr;  // [n_prev, H] c_{t-1} of the rows the previous step had
  const Acc<T>* cinit = nullptr;  // [R, H] c_0 (rows n_prev and up start from it)
  int64_t n_prev = 0;
  const T* dr = nullptr;          // [R, H] dL/dr from later steps (and h_n)
  const T* dout = nullptr;        // [R, H] dL/d output rows added to dr, or null
  int64_t dout_ld = 0, dout_cs = 0;
  Acc<T>* dc = nullptr;           // [R, H] in dL/dc_t, out dL/dc_{t-1}
  T* dgates = nullptr;            // [R, 4H] out: gradients of the gate pre-activations
  T* r = nullptr;                 // [R, H] out: r recomputed (projection only), or null
};

template <typename T>
__global__ void lstm_backward_step(LstmBackwardStep<T> p) {
  using A = Acc<T>;
  for_each_unit(p.R, p.H, [&](int64_t e, int64_t b, int64_t j) {
    const int64_t g0 = b * 4 * p.H + j;
    A dr = load<A>(p.dr + e);
    if (p.dout != nullptr) dr += load<A>(p.dout + b * p.dout_ld + j * p.dout_cs);
    const A cprev = simt::ld(b < p.n_prev ? p.cprev + e : p.cinit + e);
    A dc = simt::ld(p.dc + e), di, df, dg, do_, r;
    cell::lstm_backward_unit<A, DeviceAct>(
        simt::ld(p.gates + g0), simt::ld(p.gates + g0 + p.H), simt::ld(p.gates + g0 + 2 * p.H),
        simt::ld(p.gates + g0 + 3 * p.H), simt::ld(p.cells + e), cprev, dr, dc, di, df, dg, do_,
        r);
    simt::st(p.dc + e, dc);
    store(p.dgates + g0, di);
    store(p.dgates + g0 + p.H, df);
    store(p.dgates + g0 + 2 * p.H, dg);
    store(p.dgates + g0 + 3 * p.H, do_);
    if (p.r != nullptr) store(p.r + e, r);
  });
}

// ------------------------------------------------------------------ GRU

template <typename T>
struct GruForwardStep {
  int64_t R = 0, H = 0;
  const T* gx = nullptr;  // [R, 3H] x W_ih^T + b_ih
  const T* gh = nullptr;  // [R, 3H] h_prev W_hh^T + b_hh
  T* h = nullptr;         // [R, H] state: in h_prev, out h
  T* out = nullptr;       // [R, H] out: the output rows
  Acc<T>* ws = nullptr;   // [R, 4H] out: r, z, n, W_hn h + b_hn (training only), or null
};

template <typename T>
__global__ void gru_forward_step(GruForwardStep<T> p) {
  using A = Acc<T>;
  for_each_unit(p.R, p.H, [&](int64_t e, int64_t b, int64_t j) {
    const int64_t g0 = b * 3 * p.H + j;
    A xr = load<A>(p.gx + g0), xz = load<A>(p.gx + g0 + p.H), xn = load<A>(p.gx + g0 + 2 * p.H);
    const A hn = load<A>(p.gh + g0 + 2 * p.H);
    const A h = cell::gru_forward_unit<A, DeviceAct>(xr, xz, xn, load<A>(p.gh + g0),
                                                     load<A>(p.gh + g0 + p.H), hn,
                                                     load<A>(p.h + e));
    store(p.h + e, h);
    store(p.out + e, h);
    if (p.ws != nullptr) {
      A* w = p.ws + b * 4 * p.H + j;
      simt::st(w, xr);
      simt::st(w + p.H, xz);
      simt::st(w + 2 * p.H, xn);
      simt::st(w + 3 * p.H, hn);
    }
  });
}

template <typename T>
struct GruBackwardStep {
  int64_t R = 0, H = 0;
  const Acc<T>* ws = nullptr;  // [R, 4H] saved r, z, n, hn
  const T* hprev = nullptr;    // [n_prev, H] h_{t-1} of the rows the previous step had
  const T* hinit = nullptr;    // [R, H] h_0 (rows n_prev and up start from it)
  int64_t n_prev = 0;
  T* dh = nullptr;             // [R, H] in dL/dh_t from later steps, out z * dL/dh_t
  const T* dout = nullptr;     // [R, H] dL/d output rows, or null
  int64_t dout_ld = 0, dout_cs = 0;
  T* dgx = nullptr;            // [R, 3H] out: gradients of the input-side pre-activations
  T* dgh = nullptr;            // [R, H] out: gradient of the n gate's recurrent-side
                               //   pre-activation (the r and z parts equal dgx's)
};

template <typename T>
__global__ void gru_backward_step(GruBackwardStep<T> p) {
  using A = Acc<T>;
  for_each_unit(p.R, p.H, [&](int64_t e, int64_t b, int64_t j) {
    const int64_t g0 = b * 3 * p.H + j;
    const Acc<T>* w = p.ws + b * 4 * p.H + j;
    A dh = load<A>(p.dh + e);
    if (p.dout != nullptr) dh += load<A>(p.dout + b * p.dout_ld + j * p.dout_cs);
    const A hprev = load<A>(b < p.n_prev ? p.hprev + e : p.hinit + e);
    A dxr, dxz, dxn, dhr, dhz, dhn;
    const A direct = cell::gru_backward_unit<A>(simt::ld(w), simt::ld(w + p.H),
                                                simt::ld(w + 2 * p.H), simt::ld(w + 3 * p.H),
                                                hprev, dh, dxr, dxz, dxn, dhr, dhz, dhn);
    store(p.dh + e, direct);
    store(p.dgx + g0, dxr);
    store(p.dgx + g0 + p.H, dxz);
    store(p.dgx + g0 + 2 * p.H, dxn);
    store(p.dgh + e, dhn);
  });
}

// ------------------------------------------------------------------ Elman RNN

template <typename T>
struct RnnForwardStep {
  int64_t R = 0, H = 0;
  const T* gx = nullptr;  // [R, H] x W_ih^T + b_ih + b_hh
  const T* gh = nullptr;  // [R, H] h_prev W_hh^T
  T* h = nullptr;         // [R, H] out: the new state
  T* out = nullptr;       // [R, H] out: the output rows
};

template <typename T, bool Relu>
__global__ void rnn_forward_step(RnnForwardStep<T> p) {
  using A = Acc<T>;
  for_each_unit(p.R, p.H, [&](int64_t e, int64_t, int64_t) {
    const A h = cell::rnn_forward_unit<A, DeviceAct, Relu>(load<A>(p.gx + e) + load<A>(p.gh + e));
    store(p.h + e, h);
    store(p.out + e, h);
  });
}

template <typename T>
struct RnnBackwardStep {
  int64_t R = 0, H = 0;
  const T* h = nullptr;     // [R, H] h_t (the output rows)
  const T* dh = nullptr;    // [R, H] dL/dh_t from later steps
  const T* dout = nullptr;  // [R, H] dL/d output rows, or null
  int64_t dout_ld = 0, dout_cs = 0;
  T* dpre = nullptr;        // [R, H] out: dL/d pre-activation
};

template <typename T, bool Relu>
__global__ void rnn_backward_step(RnnBackwardStep<T> p) {
  using A = Acc<T>;
  for_each_unit(p.R, p.H, [&](int64_t e, int64_t b, int64_t j) {
    A dh = load<A>(p.dh + e);
    if (p.dout != nullptr) dh += load<A>(p.dout + b * p.dout_ld + j * p.dout_cs);
    store(p.dpre + e, cell::rnn_backward_unit<A, Relu>(load<A>(p.h + e), dh));
  });
}

// ------------------------------------------------------------------ reductions

// Column sums by cascade summation, in a fixed order (bias gradients are bitwise
// reproducible; no atomics), with the rounding error of the CPU's (error growth with
// kSumLeaf + log2(rows / kSumLeaf), not with rows):
//   column_leaf_sum: leaf[l, c] = sum of x[r, c] over the kSumLeaf rows of leaf l, in
//     order, accumulated in A;
//   column_pair_sum: out[i, c] = in[2i, c] + in[2i + 1, c] (in[2i, c] alone for the
//     last of an odd count), launched until one row is left: a pairwise tree over the
//     leaves; the last launch writes the T result.
constexpr int64_t kSumLeaf = 32;

template <typename T>
__global__ void column_leaf_sum(const T* x, int64_t rows, int64_t cols, Acc<T>* leaf) {
  using A = Acc<T>;
  const int64_t leaves = (rows + kSumLeaf - 1) / kSumLeaf, n = leaves * cols;
  for (int64_t e = global_thread(); e < n; e += grid_threads()) {
    const int64_t l = e / cols, c = e - l * cols;
    const int64_t r1 = l * kSumLeaf + kSumLeaf < rows ? l * kSumLeaf + kSumLeaf : rows;
    A s = A(0);
    for (int64_t r = l * kSumLeaf; r < r1; ++r) s += load<A>(x + r * cols + c);
    simt::st(leaf + e, s);
  }
}

template <typename A, typename Out>
__global__ void column_pair_sum(const A* in, int64_t n, int64_t cols, Out* out) {
  const int64_t half = (n + 1) / 2, total = half * cols;
  for (int64_t e = global_thread(); e < total; e += grid_threads()) {
    const int64_t i = e / cols, c = e - i * cols;
    A s = simt::ld(in + 2 * i * cols + c);
    if (2 * i + 1 < n) s = s + simt::ld(in + (2 * i + 1) * cols + c);
    store(out + e, s);
  }
}

}  // namespace RNNFAST_DEVICE_NS
}  // namespace rnnfast
