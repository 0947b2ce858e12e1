// Cell maths shared by every backend.
//
// Each function computes one hidden unit of one batch row for one time step.
// They are `__host__ __device__` under nvcc and plain inline functions under a
// host compiler, so the CPU kernels, the CUDA kernels and the SIMT emulator all
// run the very same arithmetic.
//
// The activation functions come from a policy type `Act` with static members
// `sigmoid(x)` and `tanh(x)`, so that each backend picks its own (the CPU's
// vectorisable approximations: csrc/cpu/fast_math.h) while the algebra stays in one
// place.
//
// Gate order follows torch.nn:
//   LSTM: i, f, g, o         (input, forget, cell candidate, output)
//   GRU:  r, z, n            (reset, update, new), PyTorch's variant: the reset gate
//                            multiplies the recurrent product, n = tanh(W_in x + b_in
//                            + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h
//   RNN:  one gate, h' = tanh or relu(W_ih x + b_ih + W_hh h + b_hh)
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define RNNFAST_HD __host__ __device__ __forceinline__
#else
#define RNNFAST_HD inline
#endif

namespace rnnfast {
namespace cell {

// ---------------------------------------------------------------------------
// LSTM
// ---------------------------------------------------------------------------

// Forward for one unit.
//   i, f, g, o : in: pre-activations (x W_ih^T + b_ih + h W_hh^T + b_hh);
//                out: activated gates (what backward needs).
//   c_prev     : cell state of the previous step.
//   c          : out: new cell state  c = f * c_prev + i * g.
//   r          : out: o * tanh(c), the hidden output before the projection
//                (equal to h when proj_size == 0).
template <typename T, typename Act>
RNNFAST_HD void lstm_forward_unit(T& i, T& f, T& g, T& o, T c_prev, T& c, T& r) {
  i = Act::sigmoid(i);
  f = Act::sigmoid(f);
  g = Act::tanh(g);
  o = Act::sigmoid(o);
  c = f * c_prev + i * g;
  r = o * Act::tanh(c);
}

// Backward for one unit.
//   i, f, g, o : activated gates saved by the forward pass.
//   c          : cell state after this step;  c_prev: before it.
//   dr         : gradient w.r.t. r = o * tanh(c) (dh, or dh W_hr with a projection).
//   dc         : in: gradient w.r.t. c arriving from the next step (and from c_n);
//                out: gradient w.r.t. c_prev.
//   di..do_    : out: gradients w.r.t. the gate PRE-activations.
//   r          : out: o * tanh(c) recomputed (needed for grad of W_hr).
template <typename T, typename Act>
RNNFAST_HD void lstm_backward_unit(T i, T f, T g, T o, T c, T c_prev, T dr, T& dc,
                                   T& di, T& df, T& dg, T& do_, T& r) {
  const T tc = Act::tanh(c);
  r = o * tc;
  const T dct = dc + dr * o * (T(1) - tc * tc);
  do_ = dr * tc * o * (T(1) - o);
  di = dct * g * i * (T(1) - i);
  dg = dct * i * (T(1) - g * g);
  df = dct * c_prev * f * (T(1) - f);
  dc = dct * f;
}

// ---------------------------------------------------------------------------
// GRU
// ---------------------------------------------------------------------------

// Forward for one unit.
//   xr, xz, xn : in: input-side pre-activations (W_i* x + b_i*); out: r, z, n.
//   hr, hz, hn : recurrent-side pre-activations (W_h* h + b_h*).
//   h_prev     : h_{t-1};  returns h_t.
template <typename T, typename Act>
RNNFAST_HD T gru_forward_unit(T& xr, T& xz, T& xn, T hr, T hz, T hn, T h_prev) {
  const T r = Act::sigmoid(xr + hr);
  const T z = Act::sigmoid(xz + hz);
  const T n = Act::tanh(xn + r * hn);
  xr = r;
  xz = z;
  xn = n;
  return n + z * (h_prev - n);
}

// Backward for one unit.
//   r, z, n, hn : saved by the forward pass (hn = W_hn h_{t-1} + b_hn).
//   dh          : dL/dh_t.
//   dxr..dxn    : out: gradients of the input-side pre-activations.
//   dhr..dhn    : out: gradients of the recurrent-side pre-activations.
//   returns the direct part of dL/dh_{t-1} (z * dh); the rest is dhr..dhn W_hh.
template <typename T>
RNNFAST_HD T gru_backward_unit(T r, T z, T n, T hn, T h_prev, T dh, T& dxr, T& dxz, T& dxn,
                               T& dhr, T& dhz, T& dhn) {
  const T dn = dh * (T(1) - z) * (T(1) - n * n);
  const T dz = dh * (h_prev - n) * z * (T(1) - z);
  const T dr = dn * hn * r * (T(1) - r);
  dxr = dr;
  dxz = dz;
  dxn = dn;
  dhr = dr;
  dhz = dz;
  dhn = dn * r;
  return dh * z;
}

// ---------------------------------------------------------------------------
// Elman RNN
// ---------------------------------------------------------------------------

template <typename T, typename Act, bool Relu>
RNNFAST_HD T rnn_forward_unit(T pre) {
  if constexpr (Relu) {
    // NaN propagates (a comparison with NaN is false), as with torch.relu.
    return pre < T(0) ? T(0) : pre;
  } else {
    return Act::tanh(pre);
  }
}

// dL/d(pre-activation) from h_t = act(pre) and dL/dh_t.
template <typename T, bool Relu>
RNNFAST_HD T rnn_backward_unit(T h, T dh) {
  if constexpr (Relu) {
    // As torch's threshold_backward: zero only where h <= 0, so a NaN h passes dh.
    return h <= T(0) ? T(0) : dh;
  } else {
    return dh * (T(1) - h * h);
  }
}

}  // namespace cell
}  // namespace rnnfast
