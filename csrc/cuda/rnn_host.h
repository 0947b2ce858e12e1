// Host orchestration of the CUDA operators (the baseline algorithm of docs/design.md):
//   forward:  one whole-sequence GEMM for the input projection, then per step one
//             recurrent GEMM and one fused pointwise kernel (rnn_device.cuh);
//   backward: per step (in reverse processing order) one fused pointwise kernel
//             and one GEMM for the recurrent gradient, then whole-sequence GEMMs
//             for the input and weight gradients and cascade column sums for the
//             bias gradients (fixed order: bitwise reproducible, no atomics).
// GEMMs go through ATen (cuBLAS on the current stream on the GPU).
//
// This file is compiled twice: by nvcc in csrc/cuda/rnn_cuda.cu (namespace
// rnnfast::gpu, CUDA tensors) and by the host compiler in
// csrc/simt/emulated_ops.cpp (namespace rnnfast::simt_emu, CPU tensors, kernels run
// in the SIMT emulator, the test-only extension), so the emulator tests exercise this orchestration too:
// time-step offsets, direction reversal and packed batch sizes.
//
// The including file defines, before including it:
//   RNNFAST_DEVICE_NS          the namespace
//   RNNFAST_LAUNCH_CHECK()     checks the last launch (C10_CUDA_KERNEL_LAUNCH_CHECK)
//   RNNFAST_DEVICE_GUARD(t)    makes t's device current for the scope
//   RNNFAST_STREAM()           the stream to launch on (the current stream)
//
// State bookkeeping: one state buffer per quantity (h, c; dh, dc in backward),
// updated in place. Step t uses its first bs[t] rows; rows that are not active
// keep their value, which is exactly what packed sequences need in both directions
// (see csrc/core/sequence.h). Backward reads c_{t-1} (LSTM) and h_{t-1} (GRU) from the
// previous step's saved rows, or the initial state for rows that step did not have;
// dW_hh takes h_{t-1} as the output shifted by one step (all rows active), or from a
// gather of per-step device-to-device copies (packed, shrinking batches): nothing is
// copied from the host and nothing synchronises. grad_output is read in place with
// its strides (core::grad_rows).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../core/checks.h"
#include "../kernels/rnn_device.cuh"

namespace rnnfast {
namespace RNNFAST_DEVICE_NS {

using at::Tensor;

// ------------------------------------------------------------------ helpers

inline Tensor rows(const Tensor& t, int64_t first, int64_t count) {
  return t.narrow(0, first, count);
}

// Tensor element type -> kernel element type.
template <typename S>
struct DeviceType {
  using type = S;
};
#if SIMT_HAS_HALF
template <>
struct DeviceType<c10::Half> {
  using type = __half;
};
template <>
struct DeviceType<c10::BFloat16> {
  using type = __nv_bfloat16;
};
#endif

#if SIMT_HAS_HALF
#define RNNFAST_DISPATCH(st, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, st, name, __VA_ARGS__)
#else
#define RNNFAST_DISPATCH(st, name, ...)                                                     \
  do {                                                                                      \
    TORCH_CHECK(st == at::kFloat || st == at::kDouble, name,                                \
                ": this build of the SIMT emulator has no float16/bfloat16 support (CUDA's " \
                "cuda_fp16.h was not found at build time)");                                \
    AT_DISPATCH_FLOATING_TYPES(st, name, __VA_ARGS__);                                      \
  } while (0)
#endif

// The arithmetic dtype of the cell state and saved gates: float for half types.
inline at::ScalarType acc_dtype(at::ScalarType st) {
  return (st == at::kHalf || st == at::kBFloat16) ? at::kFloat : st;
}

template <typename T>
T* dptr(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? reinterpret_cast<T*>(t.data_ptr()) : nullptr;
}

inline simt::LaunchConfig pointwise_config(int64_t n, const char* name) {
  simt::LaunchConfig cfg;
  const int64_t blocks = std::max<int64_t>(
      1, std::min<int64_t>((n + kPointwiseThreads - 1) / kPointwiseThreads, 4096));
  cfg.grid = simt::dim3_t(static_cast<unsigned>(blocks));
  cfg.block = simt::dim3_t(kPointwiseThreads);
  cfg.stream = RNNFAST_STREAM();
  cfg.name = name;
  return cfg;
}

// out (cols,) = column sums of x (rows, cols, contiguous) by cascade summation
// (rnn_device.cuh: leaves of kSumLeaf rows, then a pairwise tree), in a fixed order.
inline Tensor column_sum_of(const Tensor& x) {
  const int64_t rows = x.size(0), cols = x.size(1);
  Tensor out = at::empty({cols}, x.options());
  if (cols == 0) return out;
  if (rows == 0) return out.zero_();
  const auto aopts = x.options().dtype(acc_dtype(x.scalar_type()));
  RNNFAST_DISPATCH(x.scalar_type(), "rnnfast column_sum", [&] {
    using T = typename DeviceType<scalar_t>::type;
    using A = Acc<T>;
    int64_t n = (rows + kSumLeaf - 1) / kSumLeaf;
    Tensor cur = at::empty({n, cols}, aopts);
    simt::launch(column_leaf_sum<T>, pointwise_config(n * cols, "column_leaf_sum"),
                 dptr<const T>(x), rows, cols, dptr<A>(cur));
    RNNFAST_LAUNCH_CHECK();
    for (; n > 1; n = (n + 1) / 2) {
      Tensor next = at::empty({(n + 1) / 2, cols}, aopts);
      simt::launch(column_pair_sum<A, A>, pointwise_config((n + 1) / 2 * cols, "column_pair_sum"),
                   dptr<const A>(cur), n, cols, dptr<A>(next));
      RNNFAST_LAUNCH_CHECK();
      cur = next;
    }
    simt::launch(column_pair_sum<A, T>, pointwise_config(cols, "column_pair_sum"),
                 dptr<const A>(cur), int64_t{1}, cols, dptr<T>(out));
    RNNFAST_LAUNCH_CHECK();
  });
  return out;
}

// The step processed before t, and how many of t's rows it had (their previous state
// is in its rows; the others start from the initial state).
struct PrevStep {
  int64_t t, rows;
};
inline PrevStep prev_step(const core::Sequence& s, int64_t t, bool reverse) {
  const int64_t tp = s.prev_of(t, reverse);
  return {tp, tp >= 0 ? std::min(s.bs[t], s.bs[tp]) : 0};
}

// sum over rows n of dg[n]^T h_{t-1}(n): dW_hh from the gradient rows dg [N, K] (any
// row stride), the output y [N, P] (h_t of every row) and the initial state hx [B, P].
inline Tensor prev_rows_product(const Tensor& dg, const Tensor& y, const Tensor& hx,
                                const core::Sequence& s, bool reverse) {
  const int64_t N = s.N, B = s.B;
  if (s.uniform()) {
    // All B rows in every step: h_{t-1} of every step after the first (in processing
    // order) is the output one step over, a contiguous block of rows.
    const int64_t shifted = N - B, first = reverse ? shifted : 0;
    Tensor dw = at::mm(dg.narrow(0, first, B).t(), hx);
    if (shifted > 0) {
      dw.addmm_(dg.narrow(0, reverse ? 0 : B, shifted).t(), y.narrow(0, reverse ? B : 0, shifted));
    }
    return dw;
  }
  Tensor hprev = at::empty({N, y.size(1)}, y.options());
  for (int64_t t = 0; t < s.T; ++t) {
    const PrevStep p = prev_step(s, t, reverse);
    if (p.rows > 0) rows(hprev, s.off[t], p.rows).copy_(rows(y, s.off[p.t], p.rows));
    if (s.bs[t] > p.rows) {
      rows(hprev, s.off[t] + p.rows, s.bs[t] - p.rows).copy_(rows(hx, p.rows, s.bs[t] - p.rows));
    }
  }
  return at::mm(dg.t(), hprev);
}

// grad_output as [N, P] rows read in place (core::grad_rows), or undefined.
inline Tensor grad_view(const core::GradRows& g, int64_t N, int64_t P) {
  return g.t.defined() ? g.t.as_strided({N, P}, {g.ld, g.cs}, g.t.storage_offset()) : Tensor();
}


// out = a @ b, out = bias + a @ b, out = a + b, into views of existing buffers.
inline void mm_into(Tensor out, const Tensor& a, const Tensor& b) { at::mm_out(out, a, b); }
inline void addmm_into(Tensor out, const Tensor& bias, const Tensor& a, const Tensor& b) {
  at::addmm_out(out, bias, a, b);
}
inline void add_into(Tensor out, const Tensor& a, const Tensor& b) { at::add_out(out, a, b); }

// ------------------------------------------------------------------ LSTM

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
    const OptTensor& batch_sizes, bool reverse, bool need_workspace) {
  const char* op = "rnnfast::lstm_forward";
  const Dims d =
      check_layer(op, kCudaDtypes, 4, input, hx, &cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes);
  RNNFAST_DEVICE_GUARD(input);
  const int64_t N = d.seq.N, B = d.seq.B, H = d.H, P = d.P;
  const auto opts = input.options();
  const auto aopts = opts.dtype(acc_dtype(input.scalar_type()));
  const Tensor x = input.reshape({N, d.I});
  const Tensor gx = d.bias ? at::addmm(*b_ih + *b_hh, x, w_ih.t()) : at::mm(x, w_ih.t());
  Tensor output = at::empty(output_shape(input, P), opts);
  const Tensor y = output.view({N, P});
  Tensor h = hx.clone(at::MemoryFormat::Contiguous);
  Tensor c = cx.to(aopts.dtype(), /*non_blocking=*/false, /*copy=*/true).contiguous();
  Tensor gh = at::empty({B, 4 * H}, opts);
  Tensor r = d.proj ? at::empty({B, H}, opts) : Tensor();
  Tensor gates = need_workspace ? at::empty({N, 4 * H}, aopts) : empty0(aopts);
  Tensor cells = need_workspace ? at::empty({N, H}, aopts) : empty0(aopts);
  const Tensor whh_t = w_hh.t();
  const Tensor whr_t = d.proj ? w_hr->t() : Tensor();
  RNNFAST_DISPATCH(input.scalar_type(), "rnnfast::lstm_forward", [&] {
    using T = typename DeviceType<scalar_t>::type;
    for (int64_t step = 0; step < d.seq.T; ++step) {
      const int64_t t = d.seq.time_at(step, reverse), R = d.seq.bs[t], o = d.seq.off[t];
      if (R == 0) continue;
      mm_into(rows(gh, 0, R), rows(h, 0, R), whh_t);
      LstmForwardStep<T> p;
      p.R = R;
      p.H = H;
      p.gx = dptr<const T>(gx) + o * 4 * H;
      p.gh = dptr<const T>(gh);
      p.c = dptr<Acc<T>>(c);
      p.r = d.proj ? dptr<T>(r) : dptr<T>(h);
      p.out = d.proj ? nullptr : dptr<T>(y) + o * P;
      if (need_workspace) {
        p.gates = dptr<Acc<T>>(gates) + o * 4 * H;
        p.cells = dptr<Acc<T>>(cells) + o * H;
      }
      simt::launch(lstm_forward_step<T>, pointwise_config(R * H, "lstm_forward_step"), p);
      RNNFAST_LAUNCH_CHECK();
      if (d.proj) {
        Tensor yt = rows(y, o, R);
        mm_into(yt, rows(r, 0, R), whr_t);
        rows(h, 0, R).copy_(yt);
      }
    }
  });
  return {output, h, c.to(input.scalar_type()), gates, cells};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const OptTensor& grad_output, const OptTensor& grad_hy, const OptTensor& grad_cy,
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& w_hr, const Tensor& output, const Tensor& gates,
    const Tensor& cells, const OptTensor& batch_sizes, bool reverse, bool has_bias,
    bool need_grad_input) {
  const char* op = "rnnfast::lstm_backward";
  const Dims d = check_layer(op, kCudaDtypes, 4, input, hx, &cx, w_ih, w_hh, std::nullopt,
                             std::nullopt, w_hr, batch_sizes);
  RNNFAST_DEVICE_GUARD(input);
  const int64_t N = d.seq.N, B = d.seq.B, H = d.H, P = d.P;
  const auto opts = input.options();
  const auto acc = acc_dtype(input.scalar_type());
  const auto aopts = opts.dtype(acc);
  TORCH_CHECK(gates.numel() == N * 4 * H && cells.numel() == N * H, op,
              ": the saved workspace is missing or has the wrong size (gates ", gates.sizes(),
              ", cells ", cells.sizes(), "); run lstm_forward with need_workspace=True when a "
              "backward pass will follow");
  TORCH_CHECK(gates.scalar_type() == acc && cells.scalar_type() == acc, op,
              ": the saved workspace has dtype ", gates.scalar_type(), "/", cells.scalar_type(),
              ", expected ", acc);
  check_grads(op, d, input, output, grad_output, grad_hy);
  if (present(grad_cy)) check_shape(op, "grad_cy", *grad_cy, {B, H});
  const Tensor x = input.reshape({N, d.I});
  const Tensor y = output.reshape({N, P}).contiguous();
  const core::GradRows dy = core::grad_rows(grad_output, P);
  const Tensor dyv = grad_view(dy, N, P);
  const Tensor g = gates.contiguous(), cl = cells.view({N, H}).contiguous();
  Tensor dh = state_grad(grad_hy, B, P, opts);
  Tensor dc = present(grad_cy) ? grad_cy->to(acc, false, true).contiguous() : at::zeros({B, H}, aopts);
  const Tensor cinit = cx.to(acc).contiguous();
  Tensor dgates = at::empty({N, 4 * H}, opts);
  Tensor dr = d.proj ? at::empty({B, H}, opts) : Tensor();
  Tensor DR = d.proj ? at::empty({N, P}, opts) : Tensor();  // dL/d(projected output), all rows
  Tensor Rr = d.proj ? at::empty({N, H}, opts) : Tensor();  // r = o * tanh(c), all rows
  RNNFAST_DISPATCH(input.scalar_type(), "rnnfast::lstm_backward", [&] {
    using T = typename DeviceType<scalar_t>::type;
    for (int64_t step = d.seq.T - 1; step >= 0; --step) {
      const int64_t t = d.seq.time_at(step, reverse), R = d.seq.bs[t], o = d.seq.off[t];
      if (R == 0) continue;
      LstmBackwardStep<T> p;
      p.R = R;
      p.H = H;
      if (d.proj) {
        Tensor drt = rows(DR, o, R);
        if (dyv.defined()) {
          add_into(drt, rows(dh, 0, R), rows(dyv, o, R));
        } else {
          drt.copy_(rows(dh, 0, R));
        }
        mm_into(rows(dr, 0, R), drt, *w_hr);
        p.dr = dptr<const T>(dr);
        p.r = dptr<T>(Rr) + o * H;
      } else {
        p.dr = dptr<const T>(dh);
        if (dy.t.defined()) {
          p.dout = dptr<const T>(dy.t) + o * dy.ld;
          p.dout_ld = dy.ld;
          p.dout_cs = dy.cs;
        }
      }
      const PrevStep prev = prev_step(d.seq, t, reverse);
      p.gates = dptr<const Acc<T>>(g) + o * 4 * H;
      p.cells = dptr<const Acc<T>>(cl) + o * H;
      p.cprev = prev.rows > 0 ? dptr<const Acc<T>>(cl) + d.seq.off[prev.t] * H : nullptr;
      p.cinit = dptr<const Acc<T>>(cinit);
      p.n_prev = prev.rows;
      p.dc = dptr<Acc<T>>(dc);
      p.dgates = dptr<T>(dgates) + o * 4 * H;
      simt::launch(lstm_backward_step<T>, pointwise_config(R * H, "lstm_backward_step"), p);
      RNNFAST_LAUNCH_CHECK();
      mm_into(rows(dh, 0, R), rows(dgates, o, R), w_hh);
    }
  });
  Tensor dx = need_grad_input ? at::mm(dgates, w_ih).view(input.sizes()) : empty0(opts);
  Tensor dw_ih = at::mm(dgates.t(), x);
  Tensor dw_hh = prev_rows_product(dgates, y, hx, d.seq, reverse);
  Tensor db = has_bias ? column_sum_of(dgates) : empty0(opts);
  Tensor dw_hr = d.proj ? at::mm(DR.t(), Rr) : empty0(opts);
  return {dx, dh, dc.to(input.scalar_type()), dw_ih, dw_hh, db, dw_hr};
}

// ------------------------------------------------------------------ GRU

std::tuple<Tensor, Tensor, Tensor> gru_forward(const Tensor& input, const Tensor& hx,
                                                      const Tensor& w_ih, const Tensor& w_hh,
                                                      const OptTensor& b_ih, const OptTensor& b_hh,
                                                      const OptTensor& batch_sizes, bool reverse,
                                                      bool need_workspace) {
  const char* op = "rnnfast::gru_forward";
  const Dims d = check_layer(op, kCudaDtypes, 3, input, hx, nullptr, w_ih, w_hh, b_ih, b_hh,
                             std::nullopt, batch_sizes);
  RNNFAST_DEVICE_GUARD(input);
  const int64_t N = d.seq.N, B = d.seq.B, H = d.H;
  const auto opts = input.options();
  const auto aopts = opts.dtype(acc_dtype(input.scalar_type()));
  const Tensor x = input.reshape({N, d.I});
  const Tensor gx = d.bias ? at::addmm(*b_ih, x, w_ih.t()) : at::mm(x, w_ih.t());
  Tensor output = at::empty(output_shape(input, H), opts);
  const Tensor y = output.view({N, H});
  Tensor h = hx.clone(at::MemoryFormat::Contiguous);
  Tensor gh = at::empty({B, 3 * H}, opts);
  Tensor ws = need_workspace ? at::empty({N, 4 * H}, aopts) : empty0(aopts);
  const Tensor whh_t = w_hh.t();
  RNNFAST_DISPATCH(input.scalar_type(), "rnnfast::gru_forward", [&] {
    using T = typename DeviceType<scalar_t>::type;
    for (int64_t step = 0; step < d.seq.T; ++step) {
      const int64_t t = d.seq.time_at(step, reverse), R = d.seq.bs[t], o = d.seq.off[t];
      if (R == 0) continue;
      Tensor ght = rows(gh, 0, R);
      if (d.bias) {
        addmm_into(ght, *b_hh, rows(h, 0, R), whh_t);
      } else {
        mm_into(ght, rows(h, 0, R), whh_t);
      }
      GruForwardStep<T> p;
      p.R = R;
      p.H = H;
      p.gx = dptr<const T>(gx) + o * 3 * H;
      p.gh = dptr<const T>(gh);
      p.h = dptr<T>(h);
      p.out = dptr<T>(y) + o * H;
      p.ws = need_workspace ? dptr<Acc<T>>(ws) + o * 4 * H : nullptr;
      simt::launch(gru_forward_step<T>, pointwise_config(R * H, "gru_forward_step"), p);
      RNNFAST_LAUNCH_CHECK();
    }
  });
  return {output, h, ws};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const OptTensor& grad_output, const OptTensor& grad_hy, const Tensor& input,
    const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& output,
    const Tensor& workspace, const OptTensor& batch_sizes, bool reverse, bool has_bias,
    bool need_grad_input) {
  const char* op = "rnnfast::gru_backward";
  const Dims d = check_layer(op, kCudaDtypes, 3, input, hx, nullptr, w_ih, w_hh, std::nullopt,
                             std::nullopt, std::nullopt, batch_sizes);
  RNNFAST_DEVICE_GUARD(input);
  const int64_t N = d.seq.N, B = d.seq.B, H = d.H;
  const auto opts = input.options();
  const auto acc = acc_dtype(input.scalar_type());
  TORCH_CHECK(workspace.numel() == N * 4 * H && workspace.scalar_type() == acc, op,
              ": the saved workspace is missing or has the wrong size or dtype (",
              workspace.sizes(), ", ", workspace.scalar_type(),
              "); run gru_forward with need_workspace=True when a backward pass will follow");
  check_grads(op, d, input, output, grad_output, grad_hy);
  const Tensor x = input.reshape({N, d.I});
  const Tensor y = output.reshape({N, H}).contiguous();
  const core::GradRows dy = core::grad_rows(grad_output, H);
  const Tensor ws = workspace.contiguous(), hinit = hx.contiguous();
  Tensor dh = state_grad(grad_hy, B, H, opts);
  // dgh: the n gate's recurrent-side gradient only; its r and z parts equal dgx's.
  Tensor dgx = at::empty({N, 3 * H}, opts), dgh = at::empty({N, H}, opts);
  const Tensor w_rz = w_hh.narrow(0, 0, 2 * H), w_n = w_hh.narrow(0, 2 * H, H);
  RNNFAST_DISPATCH(input.scalar_type(), "rnnfast::gru_backward", [&] {
    using T = typename DeviceType<scalar_t>::type;
    for (int64_t step = d.seq.T - 1; step >= 0; --step) {
      const int64_t t = d.seq.time_at(step, reverse), R = d.seq.bs[t], o = d.seq.off[t];
      if (R == 0) continue;
      GruBackwardStep<T> p;
      p.R = R;
      p.H = H;
      p.ws = dptr<const Acc<T>>(ws) + o * 4 * H;
      const PrevStep prev = prev_step(d.seq, t, reverse);
      p.hprev = prev.rows > 0 ? dptr<const T>(y) + d.seq.off[prev.t] * H : nullptr;
      p.hinit = dptr<const T>(hinit);
      p.n_prev = prev.rows;
      p.dh = dptr<T>(dh);
      if (dy.t.defined()) {
        p.dout = dptr<const T>(dy.t) + o * dy.ld;
        p.dout_ld = dy.ld;
        p.dout_cs = dy.cs;
      }
      p.dgx = dptr<T>(dgx) + o * 3 * H;
      p.dgh = dptr<T>(dgh) + o * H;
      simt::launch(gru_backward_step<T>, pointwise_config(R * H, "gru_backward_step"), p);
      RNNFAST_LAUNCH_CHECK();
      // dL/dh_{t-1} = z * dL/dh_t (left in dh by the kernel) + dGh_t W_hh.
      Tensor dht = rows(dh, 0, R);
      dht.addmm_(rows(dgx, o, R).narrow(1, 0, 2 * H), w_rz);
      dht.addmm_(rows(dgh, o, R), w_n);
    }
  });
  Tensor dx = need_grad_input ? at::mm(dgx, w_ih).view(input.sizes()) : empty0(opts);
  Tensor dw_ih = at::mm(dgx.t(), x);
  Tensor dw_hh = at::cat({prev_rows_product(dgx.narrow(1, 0, 2 * H), y, hx, d.seq, reverse),
                          prev_rows_product(dgh, y, hx, d.seq, reverse)});
  Tensor db_ih = has_bias ? column_sum_of(dgx) : empty0(opts);
  Tensor db_hh = has_bias ? at::cat({db_ih.narrow(0, 0, 2 * H), column_sum_of(dgh)})
                          : empty0(opts);
  return {dx, dh, dw_ih, dw_hh, db_ih, db_hh};
}

// ------------------------------------------------------------------ Elman RNN

std::tuple<Tensor, Tensor> rnn_forward(const Tensor& input, const Tensor& hx,
                                              const Tensor& w_ih, const Tensor& w_hh,
                                              const OptTensor& b_ih, const OptTensor& b_hh,
                                              const OptTensor& batch_sizes, bool reverse,
                                              bool relu) {
  const char* op = "rnnfast::rnn_forward";
  const Dims d = check_layer(op, kCudaDtypes, 1, input, hx, nullptr, w_ih, w_hh, b_ih, b_hh,
                             std::nullopt, batch_sizes);
  RNNFAST_DEVICE_GUARD(input);
  const int64_t N = d.seq.N, B = d.seq.B, H = d.H;
  const auto opts = input.options();
  const Tensor x = input.reshape({N, d.I});
  const Tensor gx = d.bias ? at::addmm(*b_ih + *b_hh, x, w_ih.t()) : at::mm(x, w_ih.t());
  Tensor output = at::empty(output_shape(input, H), opts);
  const Tensor y = output.view({N, H});
  Tensor h = hx.clone(at::MemoryFormat::Contiguous);
  Tensor gh = at::empty({B, H}, opts);
  const Tensor whh_t = w_hh.t();
  RNNFAST_DISPATCH(input.scalar_type(), "rnnfast::rnn_forward", [&] {
    using T = typename DeviceType<scalar_t>::type;
    for (int64_t step = 0; step < d.seq.T; ++step) {
      const int64_t t = d.seq.time_at(step, reverse), R = d.seq.bs[t], o = d.seq.off[t];
      if (R == 0) continue;
      mm_into(rows(gh, 0, R), rows(h, 0, R), whh_t);
      RnnForwardStep<T> p;
      p.R = R;
      p.H = H;
      p.gx = dptr<const T>(gx) + o * H;
      p.gh = dptr<const T>(gh);
      p.h = dptr<T>(h);
      p.out = dptr<T>(y) + o * H;
      const auto cfg = pointwise_config(R * H, "rnn_forward_step");
      if (relu) {
        simt::launch(rnn_forward_step<T, true>, cfg, p);
      } else {
        simt::launch(rnn_forward_step<T, false>, cfg, p);
      }
      RNNFAST_LAUNCH_CHECK();
    }
  });
  return {output, h};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_backward(
    const OptTensor& grad_output, const OptTensor& grad_hy, const Tensor& input,
    const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& output,
    const OptTensor& batch_sizes, bool reverse, bool relu, bool has_bias, bool need_grad_input) {
  const char* op = "rnnfast::rnn_backward";
  const Dims d = check_layer(op, kCudaDtypes, 1, input, hx, nullptr, w_ih, w_hh, std::nullopt,
                             std::nullopt, std::nullopt, batch_sizes);
  RNNFAST_DEVICE_GUARD(input);
  const int64_t N = d.seq.N, B = d.seq.B, H = d.H;
  check_grads(op, d, input, output, grad_output, grad_hy);
  const auto opts = input.options();
  const Tensor x = input.reshape({N, d.I});
  const Tensor y = output.reshape({N, H}).contiguous();
  const core::GradRows dy = core::grad_rows(grad_output, H);
  Tensor dh = state_grad(grad_hy, B, H, opts);
  Tensor dpre = at::empty({N, H}, opts);
  RNNFAST_DISPATCH(input.scalar_type(), "rnnfast::rnn_backward", [&] {
    using T = typename DeviceType<scalar_t>::type;
    for (int64_t step = d.seq.T - 1; step >= 0; --step) {
      const int64_t t = d.seq.time_at(step, reverse), R = d.seq.bs[t], o = d.seq.off[t];
      if (R == 0) continue;
      RnnBackwardStep<T> p;
      p.R = R;
      p.H = H;
      p.h = dptr<const T>(y) + o * H;
      p.dh = dptr<const T>(dh);
      if (dy.t.defined()) {
        p.dout = dptr<const T>(dy.t) + o * dy.ld;
        p.dout_ld = dy.ld;
        p.dout_cs = dy.cs;
      }
      p.dpre = dptr<T>(dpre) + o * H;
      const auto cfg = pointwise_config(R * H, "rnn_backward_step");
      if (relu) {
        simt::launch(rnn_backward_step<T, true>, cfg, p);
      } else {
        simt::launch(rnn_backward_step<T, false>, cfg, p);
      }
      RNNFAST_LAUNCH_CHECK();
      mm_into(rows(dh, 0, R), rows(dpre, o, R), w_hh);
    }
  });
  Tensor dx = need_grad_input ? at::mm(dpre, w_ih).view(input.sizes()) : empty0(opts);
  Tensor dw_ih = at::mm(dpre.t(), x);
  Tensor dw_hh = prev_rows_product(dpre, y, hx, d.seq, reverse);
  Tensor db = has_bias ? column_sum_of(dpre) : empty0(opts);
  return {dx, dh, dw_ih, dw_hh, db};
}

}  // namespace RNNFAST_DEVICE_NS
}  // namespace rnnfast
