// Host orchestration of the CUDA operators (the baseline algorithm of DESIGN.md):
//   forward:  one whole-sequence GEMM for the input projection, then per step one
//             recurrent GEMM and one fused pointwise kernel (rnn_device.cuh);
//   backward: per step (in reverse processing order) one fused pointwise kernel
//             and one GEMM for the recurrent gradient, then whole-sequence GEMMs
//             for the input and weight gradients and a fixed-order column sum for
//             the bias gradients (bitwise reproducible, no atomics).
// GEMMs go through ATen (cuBLAS on the current stream on the GPU).
//
// This file is compiled twice: by nvcc in csrc/cuda/rnn_cuda.cu (namespace
// rnnfast::gpu, CUDA tensors) and by the host compiler in
// csrc/simt/rnn_emulated.cpp (namespace rnnfast::simt_emu, CPU tensors, kernels run
// in the SIMT emulator), so the emulator tests exercise this orchestration too:
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
// (see csrc/cpu/sequence.h). Backward materialises h_{t-1} (and c_{t-1}) for every
// row at once with one gather (prev_index), which the weight gradient needs anyway.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../kernels/rnn_device.cuh"

namespace rnnfast {
namespace RNNFAST_DEVICE_NS {

using at::Tensor;

// ------------------------------------------------------------------ helpers

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

// out (cols,) = column sums of x (rows, cols), in a fixed order.
template <typename T>
void launch_column_sum(const Tensor& x, const Tensor& out) {
  const int64_t rows = x.size(0), cols = x.size(1);
  if (cols == 0) return;
  simt::LaunchConfig cfg;
  cfg.grid = simt::dim3_t(static_cast<unsigned>((cols + 31) / 32));
  cfg.block = simt::dim3_t(32, 8);
  cfg.smem = 8 * 32 * sizeof(Acc<T>);
  cfg.stream = RNNFAST_STREAM();
  cfg.name = "column_sum";
  simt::launch(column_sum<T>, cfg, dptr<const T>(x), rows, cols, dptr<T>(out));
  RNNFAST_LAUNCH_CHECK();
}

inline Tensor column_sum_of(const Tensor& x) {
  Tensor out = at::empty({x.size(1)}, x.options());
  RNNFAST_DISPATCH(x.scalar_type(), "rnnfast column_sum", [&] {
    launch_column_sum<typename DeviceType<scalar_t>::type>(x, out);
  });
  return out;
}

// For every row of the sequence, the row of cat([rows of all steps, initial state])
// that holds its previous state: the same sequence's row in the step processed
// before (that step has at least as many rows in this direction), or N + b for the
// initial state of sequence b.
inline Tensor prev_index(const cpu::Sequence& s, bool reverse, const at::Device& device) {
  Tensor idx = at::empty({s.N}, at::TensorOptions().dtype(at::kLong));
  int64_t* p = idx.data_ptr<int64_t>();
  for (int64_t t = 0; t < s.T; ++t) {
    const int64_t pt = s.prev_of(t, reverse);
    for (int64_t b = 0; b < s.bs[t]; ++b) {
      p[s.off[t] + b] = (pt >= 0 && b < s.bs[pt]) ? s.off[pt] + b : s.N + b;
    }
  }
  return idx.to(device);
}

inline Tensor rows(const Tensor& t, int64_t first, int64_t count) {
  return t.narrow(0, first, count);
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
  const Tensor y = output.reshape({N, P});
  const Tensor dy = present(grad_output) ? grad_output->reshape({N, P}).contiguous() : Tensor();
  const Tensor g = gates.contiguous(), cl = cells.view({N, H}).contiguous();
  Tensor dh = state_grad(grad_hy, B, P, opts);
  Tensor dc = present(grad_cy) ? grad_cy->to(acc, false, true).contiguous() : at::zeros({B, H}, aopts);
  const Tensor idx = prev_index(d.seq, reverse, input.device());
  const Tensor hprev = at::cat({y, hx}).index_select(0, idx);
  const Tensor cprev = at::cat({cl, cx.to(acc)}).index_select(0, idx).contiguous();
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
        if (dy.defined()) {
          add_into(drt, rows(dh, 0, R), rows(dy, o, R));
        } else {
          drt.copy_(rows(dh, 0, R));
        }
        mm_into(rows(dr, 0, R), drt, *w_hr);
        p.dr = dptr<const T>(dr);
        p.r = dptr<T>(Rr) + o * H;
      } else {
        p.dr = dptr<const T>(dh);
        p.dout = dy.defined() ? dptr<const T>(dy) + o * P : nullptr;
      }
      p.gates = dptr<const Acc<T>>(g) + o * 4 * H;
      p.cells = dptr<const Acc<T>>(cl) + o * H;
      p.cprev = dptr<const Acc<T>>(cprev) + o * H;
      p.dc = dptr<Acc<T>>(dc);
      p.dgates = dptr<T>(dgates) + o * 4 * H;
      simt::launch(lstm_backward_step<T>, pointwise_config(R * H, "lstm_backward_step"), p);
      RNNFAST_LAUNCH_CHECK();
      mm_into(rows(dh, 0, R), rows(dgates, o, R), w_hh);
    }
  });
  Tensor dx = need_grad_input ? at::mm(dgates, w_ih).view(input.sizes()) : empty0(opts);
  Tensor dw_ih = at::mm(dgates.t(), x), dw_hh = at::mm(dgates.t(), hprev);
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
  const Tensor y = output.reshape({N, H});
  const Tensor dy = present(grad_output) ? grad_output->reshape({N, H}).contiguous() : Tensor();
  const Tensor ws = workspace.contiguous();
  Tensor dh = state_grad(grad_hy, B, H, opts);
  const Tensor hprev = at::cat({y, hx}).index_select(0, prev_index(d.seq, reverse, input.device()));
  Tensor dgx = at::empty({N, 3 * H}, opts), dgh = at::empty({N, 3 * H}, opts);
  RNNFAST_DISPATCH(input.scalar_type(), "rnnfast::gru_backward", [&] {
    using T = typename DeviceType<scalar_t>::type;
    for (int64_t step = d.seq.T - 1; step >= 0; --step) {
      const int64_t t = d.seq.time_at(step, reverse), R = d.seq.bs[t], o = d.seq.off[t];
      if (R == 0) continue;
      GruBackwardStep<T> p;
      p.R = R;
      p.H = H;
      p.ws = dptr<const Acc<T>>(ws) + o * 4 * H;
      p.hprev = dptr<const T>(hprev) + o * H;
      p.dh = dptr<T>(dh);
      p.dout = dy.defined() ? dptr<const T>(dy) + o * H : nullptr;
      p.dgx = dptr<T>(dgx) + o * 3 * H;
      p.dgh = dptr<T>(dgh) + o * 3 * H;
      simt::launch(gru_backward_step<T>, pointwise_config(R * H, "gru_backward_step"), p);
      RNNFAST_LAUNCH_CHECK();
      rows(dh, 0, R).addmm_(rows(dgh, o, R), w_hh);
    }
  });
  Tensor dx = need_grad_input ? at::mm(dgx, w_ih).view(input.sizes()) : empty0(opts);
  Tensor dw_ih = at::mm(dgx.t(), x), dw_hh = at::mm(dgh.t(), hprev);
  Tensor db_ih = has_bias ? column_sum_of(dgx) : empty0(opts);
  Tensor db_hh = has_bias ? column_sum_of(dgh) : empty0(opts);
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
  const Tensor dy = present(grad_output) ? grad_output->reshape({N, H}).contiguous() : Tensor();
  Tensor dh = state_grad(grad_hy, B, H, opts);
  const Tensor hprev = at::cat({y, hx}).index_select(0, prev_index(d.seq, reverse, input.device()));
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
      p.dout = dy.defined() ? dptr<const T>(dy) + o * H : nullptr;
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
  Tensor dw_ih = at::mm(dpre.t(), x), dw_hh = at::mm(dpre.t(), hprev);
  Tensor db = has_bias ? column_sum_of(dpre) : empty0(opts);
  return {dx, dh, dw_ih, dw_hh, db};
}

}  // namespace RNNFAST_DEVICE_NS
}  // namespace rnnfast
