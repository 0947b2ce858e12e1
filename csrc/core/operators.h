// The six operators, written once for every backend: argument checks, the outputs
// and saved buffers (their layout from cells.h), the raw-pointer layer structs
// (layer.h) filled by name, then the backend's executor. Shapes of every argument:
// csrc/ops.h; schemas: schemas.h.
//
// A backend is a type with
//   static constexpr Dtypes kDtypes;                 which input dtypes it takes
//   static at::ScalarType acc_dtype(at::ScalarType);  the dtype of c and saved buffers
//   static at::ScalarType saved_dtype(CellKind, at::ScalarType);
//                                                     optional: the saved buffers' dtype where
//                                                     it differs (bfloat16: LayerForward::saved16)
//   static void dispatch(at::ScalarType, const char* name, F f);
//                                                     calls f.template operator()<T, A>()
//                                                     with the element and arithmetic types
//   struct Guard { explicit Guard(const at::Tensor&); };   e.g. the CUDA device guard
//   template <T, A> static void forward(const LayerForward<T, A>&, const at::TensorOptions&);
//   template <T, A> static void backward(const LayerBackward<T, A>&, const at::TensorOptions&);
// and register_operators<Backend>(m) registers the six operators for it.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <tuple>

#include "cells.h"
#include "checks.h"
#include "layer.h"

namespace rnnfast {
namespace core {

using at::Tensor;

// The Guard of a backend whose device needs no guard.
struct NoDeviceGuard {
  explicit NoDeviceGuard(at::Device) {}
};

template <typename T>
T* ptr(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? static_cast<T*>(t.data_ptr()) : nullptr;
}

// The dtype of the buffers that forward saves for backward: the backend's saved_dtype where
// it has one, else its acc_dtype.
template <class Backend>
at::ScalarType saved_dtype(CellKind kind, at::ScalarType st) {
  if constexpr (requires { Backend::saved_dtype(kind, st); }) {
    return Backend::saved_dtype(kind, st);
  } else {
    return Backend::acc_dtype(st);
  }
}

struct ForwardOut {
  Tensor output, hy, cy, saved[2];
};

template <class Backend>
ForwardOut run_forward(CellKind kind, const Tensor& input, const Tensor& hx, const Tensor* cx,
                       const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                       const OptTensor& b_hh, const OptTensor& w_hr,
                       const OptTensor& batch_sizes, bool reverse, bool need_workspace) {
  const CellSpec& spec = cell_spec(kind);
  const std::string op = std::string("rnnfast::") + spec.name + "_forward";
  const Dims d = check_layer(op.c_str(), Backend::kDtypes, spec.gates, input, hx, cx, w_ih, w_hh,
                             b_ih, b_hh, w_hr, batch_sizes);
  const typename Backend::Guard guard(input);
  const auto opts = input.options();
  const auto aopts = opts.dtype(Backend::acc_dtype(input.scalar_type()));
  const Tensor x = input.contiguous(), wih = w_ih.contiguous(), whh = w_hh.contiguous();
  const Tensor whr = d.proj ? w_hr->contiguous() : Tensor();
  const Tensor bih = d.bias ? b_ih->contiguous() : Tensor();
  const Tensor bhh = d.bias ? b_hh->contiguous() : Tensor();
  ForwardOut r;
  r.output = at::empty(output_shape(input, d.P), opts);
  r.hy = hx.clone(at::MemoryFormat::Contiguous);
  const Tensor c = cx != nullptr ? cx->to(aopts.dtype(), false, /*copy=*/true).contiguous()
                                 : Tensor();
  const auto sopts = opts.dtype(saved_dtype<Backend>(kind, input.scalar_type()));
  // bfloat16 saved rows where the arithmetic is wider: one buffer (the GRU's), as saved16.
  const bool saved16 = sopts.dtype() == at::kBFloat16 && aopts.dtype() != at::kBFloat16;
  TORCH_INTERNAL_ASSERT(!saved16 || spec.num_saved == 1);
  for (int i = 0; i < spec.num_saved; ++i) {
    r.saved[i] = need_workspace ? at::empty({d.seq.N, spec.saved[i].h_cols * d.H}, sopts)
                                : empty0(sopts);
  }
  Backend::dispatch(input.scalar_type(), op.c_str(), [&]<typename T, typename A>() {
    const LayerForward<T, A> a{
        .kind = kind,
        .seq = &d.seq,
        .reverse = reverse,
        .I = d.I,
        .H = d.H,
        .P = d.P,
        .x = ptr<const T>(x),
        .w_ih = ptr<const T>(wih),
        .w_hh = ptr<const T>(whh),
        .w_hr = ptr<const T>(whr),
        .b_ih = ptr<const T>(bih),
        .b_hh = ptr<const T>(bhh),
        .y = ptr<T>(r.output),
        .h = ptr<T>(r.hy),
        .c = ptr<A>(c),
        .saved = {need_workspace && !saved16 ? ptr<A>(r.saved[0]) : nullptr,
                  need_workspace ? ptr<A>(r.saved[1]) : nullptr},
        .saved16 = need_workspace && saved16 ? ptr<uint16_t>(r.saved[0]) : nullptr,
    };
    Backend::template forward<T, A>(a, opts);
  });
  if (cx != nullptr) r.cy = c.to(input.scalar_type());
  return r;
}

struct BackwardOut {
  Tensor dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh, dw_hr;
};

template <class Backend>
BackwardOut run_backward(CellKind kind, const OptTensor& grad_output, const OptTensor& grad_hy,
                         const OptTensor& grad_cy, const Tensor& input, const Tensor& hx,
                         const Tensor* cx, const Tensor& w_ih, const Tensor& w_hh,
                         const OptTensor& w_hr, const Tensor& output, const Tensor* saved0,
                         const Tensor* saved1, const OptTensor& batch_sizes, bool reverse,
                         bool has_bias, bool need_grad_input) {
  const CellSpec& spec = cell_spec(kind);
  const std::string op_name = std::string("rnnfast::") + spec.name + "_backward";
  const char* op = op_name.c_str();
  const Dims d = check_layer(op, Backend::kDtypes, spec.gates, input, hx, cx, w_ih, w_hh,
                             std::nullopt, std::nullopt, w_hr, batch_sizes);
  const int64_t N = d.seq.N, B = d.seq.B, H = d.H, P = d.P, GH = spec.gates * H;
  const auto opts = input.options();
  const auto acc = Backend::acc_dtype(input.scalar_type());
  const auto aopts = opts.dtype(acc);
  const auto sdt = saved_dtype<Backend>(kind, input.scalar_type());
  const bool saved16 = sdt == at::kBFloat16 && acc != at::kBFloat16;
  const Tensor* saved[2] = {saved0, saved1};
  for (int i = 0; i < spec.num_saved; ++i) {
    const Tensor& s = *saved[i];
    TORCH_CHECK(s.numel() == N * spec.saved[i].h_cols * H && s.scalar_type() == sdt, op,
                ": the saved workspace is missing or has the wrong size or dtype (",
                spec.saved[i].name, " ", s.sizes(), " ", s.scalar_type(), ", expected (", N,
                ", ", spec.saved[i].h_cols * H, ") ", sdt, "); run ", spec.name,
                "_forward with need_workspace=True when a backward pass will follow");
  }
  check_grads(op, d, input, output, grad_output, grad_hy);
  if (present(grad_cy)) check_shape(op, "grad_cy", *grad_cy, {B, H});
  const typename Backend::Guard guard(input);
  const Tensor x = input.contiguous(), hx_c = hx.contiguous();
  const Tensor cx_c = cx != nullptr ? cx->to(acc).contiguous() : Tensor();
  const Tensor wih = w_ih.contiguous(), whh = w_hh.contiguous();
  const Tensor whr = d.proj ? w_hr->contiguous() : Tensor();
  const Tensor y = output.contiguous();
  Tensor sv[2];
  for (int i = 0; i < spec.num_saved; ++i) sv[i] = saved[i]->contiguous();
  const GradRows dy = grad_rows(grad_output, P);
  BackwardOut r;
  r.dh = state_grad(grad_hy, B, P, opts);
  Tensor dc;
  if (spec.has_cell_state) {
    dc = present(grad_cy) ? grad_cy->to(acc, false, /*copy=*/true).contiguous()
                          : at::zeros({B, H}, aopts);
  }
  r.dx = need_grad_input ? at::empty(input.sizes(), opts) : empty0(opts);
  r.dw_ih = at::empty({GH, d.I}, opts);
  r.dw_hh = at::empty({GH, P}, opts);
  r.db_ih = has_bias ? at::empty({GH}, opts) : empty0(opts);
  r.db_hh = has_bias && spec.num_bias_grads == 2 ? at::empty({GH}, opts) : empty0(opts);
  r.dw_hr = d.proj ? at::empty({P, H}, opts) : empty0(opts);
  Backend::dispatch(input.scalar_type(), op, [&]<typename T, typename A>() {
    const LayerBackward<T, A> a{
        .kind = kind,
        .seq = &d.seq,
        .reverse = reverse,
        .I = d.I,
        .H = H,
        .P = P,
        .dy = ptr<const T>(dy.t),
        .dy_ld = dy.ld,
        .dy_cs = dy.cs,
        .x = ptr<const T>(x),
        .hx = ptr<const T>(hx_c),
        .cx = ptr<const A>(cx_c),
        .w_ih = ptr<const T>(wih),
        .w_hh = ptr<const T>(whh),
        .w_hr = ptr<const T>(whr),
        .y = ptr<const T>(y),
        .saved = {saved16 ? nullptr : ptr<const A>(sv[0]), ptr<const A>(sv[1])},
        .saved16 = saved16 ? ptr<const uint16_t>(sv[0]) : nullptr,
        .dh = ptr<T>(r.dh),
        .dc = ptr<A>(dc),
        .dx = ptr<T>(r.dx),
        .dw_ih = ptr<T>(r.dw_ih),
        .dw_hh = ptr<T>(r.dw_hh),
        .db_ih = ptr<T>(r.db_ih),
        .db_hh = ptr<T>(r.db_hh),
        .dw_hr = ptr<T>(r.dw_hr),
    };
    Backend::template backward<T, A>(a, opts);
  });
  if (spec.has_cell_state) r.dc = dc.to(input.scalar_type());
  return r;
}

// The operators of ops.h for one backend.
template <class Backend>
struct Operators {
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
      const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
      const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
      const OptTensor& batch_sizes, bool reverse, bool need_workspace) {
    ForwardOut r = run_forward<Backend>(CellKind::kLstm, input, hx, &cx, w_ih, w_hh, b_ih, b_hh,
                                        w_hr, batch_sizes, reverse, need_workspace);
    return {r.output, r.hy, r.cy, r.saved[0], r.saved[1]};
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
      const OptTensor& grad_output, const OptTensor& grad_hy, const OptTensor& grad_cy,
      const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
      const Tensor& w_hh, const OptTensor& w_hr, const Tensor& output, const Tensor& gates,
      const Tensor& cells, const OptTensor& batch_sizes, bool reverse, bool has_bias,
      bool need_grad_input) {
    BackwardOut r = run_backward<Backend>(CellKind::kLstm, grad_output, grad_hy, grad_cy, input,
                                          hx, &cx, w_ih, w_hh, w_hr, output, &gates, &cells,
                                          batch_sizes, reverse, has_bias, need_grad_input);
    return {r.dx, r.dh, r.dc, r.dw_ih, r.dw_hh, r.db_ih, r.dw_hr};
  }

  static std::tuple<Tensor, Tensor, Tensor> gru_forward(
      const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
      const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& batch_sizes, bool reverse,
      bool need_workspace) {
    ForwardOut r = run_forward<Backend>(CellKind::kGru, input, hx, nullptr, w_ih, w_hh, b_ih,
                                        b_hh, std::nullopt, batch_sizes, reverse, need_workspace);
    return {r.output, r.hy, r.saved[0]};
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
      const OptTensor& grad_output, const OptTensor& grad_hy, const Tensor& input,
      const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& output,
      const Tensor& workspace, const OptTensor& batch_sizes, bool reverse, bool has_bias,
      bool need_grad_input) {
    BackwardOut r = run_backward<Backend>(CellKind::kGru, grad_output, grad_hy, std::nullopt,
                                          input, hx, nullptr, w_ih, w_hh, std::nullopt, output,
                                          &workspace, nullptr, batch_sizes, reverse, has_bias,
                                          need_grad_input);
    return {r.dx, r.dh, r.dw_ih, r.dw_hh, r.db_ih, r.db_hh};
  }

  static std::tuple<Tensor, Tensor> rnn_forward(const Tensor& input, const Tensor& hx,
                                                const Tensor& w_ih, const Tensor& w_hh,
                                                const OptTensor& b_ih, const OptTensor& b_hh,
                                                const OptTensor& batch_sizes, bool reverse,
                                                bool relu) {
    ForwardOut r = run_forward<Backend>(relu ? CellKind::kRnnRelu : CellKind::kRnnTanh, input,
                                        hx, nullptr, w_ih, w_hh, b_ih, b_hh, std::nullopt,
                                        batch_sizes, reverse, false);
    return {r.output, r.hy};
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_backward(
      const OptTensor& grad_output, const OptTensor& grad_hy, const Tensor& input,
      const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& output,
      const OptTensor& batch_sizes, bool reverse, bool relu, bool has_bias,
      bool need_grad_input) {
    BackwardOut r = run_backward<Backend>(relu ? CellKind::kRnnRelu : CellKind::kRnnTanh,
                                          grad_output, grad_hy, std::nullopt, input, hx, nullptr,
                                          w_ih, w_hh, std::nullopt, output, nullptr, nullptr,
                                          batch_sizes, reverse, has_bias, need_grad_input);
    return {r.dx, r.dh, r.dw_ih, r.dw_hh, r.db_ih};
  }
};

// Registers the six operators of Backend in m (a TORCH_LIBRARY_IMPL block).
template <class Backend>
void register_operators(torch::Library& m) {
  using Ops = Operators<Backend>;
  m.impl("lstm_forward", &Ops::lstm_forward);
  m.impl("lstm_backward", &Ops::lstm_backward);
  m.impl("gru_forward", &Ops::gru_forward);
  m.impl("gru_backward", &Ops::gru_backward);
  m.impl("rnn_forward", &Ops::rnn_forward);
  m.impl("rnn_backward", &Ops::rnn_backward);
}

}  // namespace core
}  // namespace rnnfast
