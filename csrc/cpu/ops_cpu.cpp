// The CPU operators: argument checks, buffer allocation, and the call into the
// shared layer orchestration (layer.h). See ops.h for every argument's shape.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>

#include "../core/checks.h"
#include "../ops.h"
#include "layer.h"
#include "../core/sequence.h"

namespace rnnfast {
namespace cpu {
namespace {

template <typename T>
T* ptr(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}
template <typename T>
const T* cptr(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.const_data_ptr<T>() : nullptr;
}

}  // namespace

// ------------------------------------------------------------------------- LSTM

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
    const OptTensor& batch_sizes, bool reverse, bool need_workspace) {
  const char* op = "rnnfast::lstm_forward";
  const Dims d = check_layer(op, kCpuDtypes, 4, input, hx, &cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes);
  const auto opts = input.options();
  const Tensor x = input.contiguous(), wih = w_ih.contiguous(), whh = w_hh.contiguous();
  const Tensor whr = d.proj ? w_hr->contiguous() : Tensor();
  const Tensor bias = d.bias ? (*b_ih + *b_hh).contiguous() : Tensor();
  Tensor gates = need_workspace ? at::empty({d.seq.N, 4 * d.H}, opts) : empty0(opts);
  Tensor output = at::empty(output_shape(input, d.P), opts);
  Tensor hy = hx.clone(at::MemoryFormat::Contiguous);
  Tensor cy = cx.clone(at::MemoryFormat::Contiguous);
  Tensor cells = need_workspace ? at::empty({d.seq.N, d.H}, opts) : empty0(opts);
  Tensor r = d.proj ? at::empty({d.seq.B, d.H}, opts) : Tensor();
  Tensor hbuf = at::empty({2, d.seq.B, d.P}, opts);
  const int64_t Tc = input_chunk_steps(d.seq.B);
  Tensor rec = at::empty({d.seq.B, 4 * d.H}, opts), xbuf = at::empty({Tc * d.seq.B, 4 * d.H}, opts);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnfast_lstm_forward", [&] {
    using T = scalar_t;
    layer_forward<T>({CellKind::kLstm, &d.seq, reverse, d.I, d.H, d.P, 4, 4 * d.H, cptr<T>(x),
                      cptr<T>(wih), cptr<T>(whh), cptr<T>(whr), cptr<T>(bias), nullptr,
                      need_workspace ? ptr<T>(gates) : nullptr, ptr<T>(output), ptr<T>(hy),
                      ptr<T>(hbuf), ptr<T>(cy), need_workspace ? ptr<T>(cells) : nullptr,
                      ptr<T>(r), ptr<T>(rec), ptr<T>(xbuf), Tc});
  });
  return {output, hy, cy, gates, cells};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const OptTensor& grad_output, const OptTensor& grad_hy, const OptTensor& grad_cy,
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& w_hr, const Tensor& output, const Tensor& gates,
    const Tensor& cells, const OptTensor& batch_sizes, bool reverse, bool has_bias,
    bool need_grad_input) {
  const char* op = "rnnfast::lstm_backward";
  const Dims d = check_layer(op, kCpuDtypes, 4, input, hx, &cx, w_ih, w_hh, std::nullopt, std::nullopt, w_hr,
                             batch_sizes);
  const int64_t N = d.seq.N, B = d.seq.B, H = d.H, P = d.P, G = 4 * H;
  TORCH_CHECK(gates.numel() == N * G && cells.numel() == N * H, op,
              ": the saved workspace is missing or has the wrong size (gates ", gates.sizes(),
              ", cells ", cells.sizes(), "); run lstm_forward with need_workspace=True when a "
              "backward pass will follow");
  check_grads(op, d, input, output, grad_output, grad_hy);
  if (present(grad_cy)) check_shape(op, "grad_cy", *grad_cy, {B, H});
  const auto opts = input.options();
  const Tensor x = input.contiguous(), hx_c = hx.contiguous(), cx_c = cx.contiguous();
  const Tensor wih = w_ih.contiguous(), whh = w_hh.contiguous();
  const Tensor whr = d.proj ? w_hr->contiguous() : Tensor();
  const Tensor y = output.contiguous(), g = gates.contiguous(), cl = cells.contiguous();
  const core::GradRows dy = core::grad_rows(grad_output, P);
  Tensor dh = state_grad(grad_hy, B, P, opts), dc = state_grad(grad_cy, B, H, opts);
  Tensor dgates = at::empty({N, G}, opts);
  Tensor hprev = d.seq.uniform() ? empty0(opts) : at::empty({N, P}, opts);
  Tensor dr = d.proj ? at::empty({B, H}, opts) : Tensor();
  Tensor R = d.proj ? at::empty({N, H}, opts) : Tensor();
  Tensor DH = d.proj ? at::empty({N, P}, opts) : Tensor();
  Tensor dx = need_grad_input ? at::empty(input.sizes(), opts) : empty0(opts);
  Tensor dw_ih = at::empty({G, d.I}, opts), dw_hh = at::empty({G, P}, opts);
  Tensor db = has_bias ? at::empty({G}, opts) : empty0(opts);
  Tensor dw_hr = d.proj ? at::empty({P, H}, opts) : empty0(opts);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnfast_lstm_backward", [&] {
    using T = scalar_t;
    layer_backward<T>({CellKind::kLstm, &d.seq, reverse, d.I, H, P, 4, G, cptr<T>(dy.t), dy.ld, dy.cs, cptr<T>(x),
                       cptr<T>(hx_c), cptr<T>(cx_c), cptr<T>(wih), cptr<T>(whh), cptr<T>(whr),
                       cptr<T>(y), cptr<T>(g), cptr<T>(cl), ptr<T>(dh), ptr<T>(dc),
                       ptr<T>(dgates), nullptr, ptr<T>(hprev), ptr<T>(dr), ptr<T>(R), ptr<T>(DH),
                       need_grad_input ? ptr<T>(dx) : nullptr, ptr<T>(dw_ih), ptr<T>(dw_hh),
                       has_bias ? ptr<T>(db) : nullptr, nullptr, ptr<T>(dw_hr)});
  });
  return {dx, dh, dc, dw_ih, dw_hh, db, dw_hr};
}

// ------------------------------------------------------------------------- GRU

std::tuple<Tensor, Tensor, Tensor> gru_forward(const Tensor& input, const Tensor& hx,
                                               const Tensor& w_ih, const Tensor& w_hh,
                                               const OptTensor& b_ih, const OptTensor& b_hh,
                                               const OptTensor& batch_sizes, bool reverse,
                                               bool need_workspace) {
  const char* op = "rnnfast::gru_forward";
  const Dims d = check_layer(op, kCpuDtypes, 3, input, hx, nullptr, w_ih, w_hh, b_ih, b_hh, std::nullopt,
                             batch_sizes);
  const auto opts = input.options();
  const Tensor x = input.contiguous(), wih = w_ih.contiguous(), whh = w_hh.contiguous();
  const Tensor bih = d.bias ? b_ih->contiguous() : Tensor();
  const Tensor bhh = d.bias ? b_hh->contiguous() : Tensor();
  // b_hh enters the pointwise pass; zeros stand in for a missing bias.
  const Tensor bhh_or_zeros = d.bias ? bhh : at::zeros({3 * d.H}, opts);
  Tensor ws = need_workspace ? at::empty({d.seq.N, 4 * d.H}, opts) : empty0(opts);
  Tensor output = at::empty(output_shape(input, d.H), opts);
  Tensor hy = hx.clone(at::MemoryFormat::Contiguous);
  Tensor hbuf = at::empty({2, d.seq.B, d.H}, opts);
  const int64_t Tc = input_chunk_steps(d.seq.B);
  Tensor rec = at::empty({d.seq.B, 3 * d.H}, opts), xbuf = at::empty({Tc * d.seq.B, 3 * d.H}, opts);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnfast_gru_forward", [&] {
    using T = scalar_t;
    layer_forward<T>({CellKind::kGru, &d.seq, reverse, d.I, d.H, d.H, 3, 4 * d.H, cptr<T>(x),
                      cptr<T>(wih), cptr<T>(whh), nullptr, cptr<T>(bih), cptr<T>(bhh_or_zeros),
                      need_workspace ? ptr<T>(ws) : nullptr, ptr<T>(output), ptr<T>(hy),
                      ptr<T>(hbuf), nullptr, nullptr, nullptr, ptr<T>(rec), ptr<T>(xbuf), Tc});
  });
  return {output, hy, ws};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const OptTensor& grad_output, const OptTensor& grad_hy, const Tensor& input,
    const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& output,
    const Tensor& workspace, const OptTensor& batch_sizes, bool reverse, bool has_bias,
    bool need_grad_input) {
  const char* op = "rnnfast::gru_backward";
  const Dims d = check_layer(op, kCpuDtypes, 3, input, hx, nullptr, w_ih, w_hh, std::nullopt, std::nullopt,
                             std::nullopt, batch_sizes);
  const int64_t N = d.seq.N, B = d.seq.B, H = d.H, G = 3 * H;
  TORCH_CHECK(workspace.numel() == N * 4 * H, op,
              ": the saved workspace is missing or has the wrong size (", workspace.sizes(),
              "); run gru_forward with need_workspace=True when a backward pass will follow");
  check_grads(op, d, input, output, grad_output, grad_hy);
  const auto opts = input.options();
  const Tensor x = input.contiguous(), hx_c = hx.contiguous();
  const Tensor wih = w_ih.contiguous(), whh = w_hh.contiguous();
  const Tensor y = output.contiguous(), ws = workspace.contiguous();
  const core::GradRows dy = core::grad_rows(grad_output, H);
  Tensor dh = state_grad(grad_hy, B, H, opts);
  Tensor dgx = at::empty({N, G}, opts), dgh = at::empty({N, H}, opts);  // dgh: n gate only
  Tensor hprev = d.seq.uniform() ? empty0(opts) : at::empty({N, H}, opts);
  Tensor dx = need_grad_input ? at::empty(input.sizes(), opts) : empty0(opts);
  Tensor dw_ih = at::empty({G, d.I}, opts), dw_hh = at::empty({G, H}, opts);
  Tensor db_ih = has_bias ? at::empty({G}, opts) : empty0(opts);
  Tensor db_hh = has_bias ? at::empty({G}, opts) : empty0(opts);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnfast_gru_backward", [&] {
    using T = scalar_t;
    layer_backward<T>({CellKind::kGru, &d.seq, reverse, d.I, H, H, 3, 4 * H, cptr<T>(dy.t), dy.ld, dy.cs,
                       cptr<T>(x), cptr<T>(hx_c), nullptr, cptr<T>(wih), cptr<T>(whh), nullptr,
                       cptr<T>(y), cptr<T>(ws), nullptr, ptr<T>(dh), nullptr, ptr<T>(dgx),
                       ptr<T>(dgh), ptr<T>(hprev), nullptr, nullptr, nullptr,
                       need_grad_input ? ptr<T>(dx) : nullptr, ptr<T>(dw_ih), ptr<T>(dw_hh),
                       has_bias ? ptr<T>(db_ih) : nullptr, has_bias ? ptr<T>(db_hh) : nullptr,
                       nullptr});
  });
  return {dx, dh, dw_ih, dw_hh, db_ih, db_hh};
}

// ------------------------------------------------------------------------- RNN

std::tuple<Tensor, Tensor> rnn_forward(const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                                       const Tensor& w_hh, const OptTensor& b_ih,
                                       const OptTensor& b_hh, const OptTensor& batch_sizes,
                                       bool reverse, bool relu) {
  const char* op = "rnnfast::rnn_forward";
  const Dims d = check_layer(op, kCpuDtypes, 1, input, hx, nullptr, w_ih, w_hh, b_ih, b_hh, std::nullopt,
                             batch_sizes);
  const Tensor x = input.contiguous(), wih = w_ih.contiguous(), whh = w_hh.contiguous();
  const Tensor bias = d.bias ? (*b_ih + *b_hh).contiguous() : Tensor();
  Tensor output = at::empty(output_shape(input, d.H), input.options());
  Tensor hy = hx.clone(at::MemoryFormat::Contiguous);
  const auto opts = input.options();
  Tensor hbuf = at::empty({2, d.seq.B, d.H}, opts);
  const int64_t Tc = input_chunk_steps(d.seq.B);
  Tensor rec = at::empty({d.seq.B, d.H}, opts), xbuf = at::empty({Tc * d.seq.B, d.H}, opts);
  const CellKind kind = relu ? CellKind::kRnnRelu : CellKind::kRnnTanh;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnfast_rnn_forward", [&] {
    using T = scalar_t;
    // The saved row of an RNN is h_t itself: the output buffer is the workspace.
    layer_forward<T>({kind, &d.seq, reverse, d.I, d.H, d.H, 1, d.H, cptr<T>(x), cptr<T>(wih),
                      cptr<T>(whh), nullptr, cptr<T>(bias), nullptr, ptr<T>(output), nullptr,
                      ptr<T>(hy), ptr<T>(hbuf), nullptr, nullptr, nullptr, ptr<T>(rec),
                      ptr<T>(xbuf), Tc});
  });
  return {output, hy};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_backward(
    const OptTensor& grad_output, const OptTensor& grad_hy, const Tensor& input,
    const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& output,
    const OptTensor& batch_sizes, bool reverse, bool relu, bool has_bias, bool need_grad_input) {
  const char* op = "rnnfast::rnn_backward";
  const Dims d = check_layer(op, kCpuDtypes, 1, input, hx, nullptr, w_ih, w_hh, std::nullopt, std::nullopt,
                             std::nullopt, batch_sizes);
  const int64_t N = d.seq.N, B = d.seq.B, H = d.H;
  check_grads(op, d, input, output, grad_output, grad_hy);
  const auto opts = input.options();
  const Tensor x = input.contiguous(), hx_c = hx.contiguous();
  const Tensor wih = w_ih.contiguous(), whh = w_hh.contiguous(), y = output.contiguous();
  const core::GradRows dy = core::grad_rows(grad_output, H);
  Tensor dh = state_grad(grad_hy, B, H, opts);
  Tensor dg = at::empty({N, H}, opts);
  Tensor hprev = d.seq.uniform() ? empty0(opts) : at::empty({N, H}, opts);
  Tensor dx = need_grad_input ? at::empty(input.sizes(), opts) : empty0(opts);
  Tensor dw_ih = at::empty({H, d.I}, opts), dw_hh = at::empty({H, H}, opts);
  Tensor db = has_bias ? at::empty({H}, opts) : empty0(opts);
  const CellKind kind = relu ? CellKind::kRnnRelu : CellKind::kRnnTanh;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnfast_rnn_backward", [&] {
    using T = scalar_t;
    layer_backward<T>({kind, &d.seq, reverse, d.I, H, H, 1, H, cptr<T>(dy.t), dy.ld, dy.cs, cptr<T>(x),
                       cptr<T>(hx_c), nullptr, cptr<T>(wih), cptr<T>(whh), nullptr, cptr<T>(y),
                       cptr<T>(y), nullptr, ptr<T>(dh), nullptr, ptr<T>(dg), nullptr,
                       ptr<T>(hprev), nullptr, nullptr, nullptr,
                       need_grad_input ? ptr<T>(dx) : nullptr, ptr<T>(dw_ih), ptr<T>(dw_hh),
                       has_bias ? ptr<T>(db) : nullptr, nullptr, nullptr});
  });
  return {dx, dh, dw_ih, dw_hh, db};
}

}  // namespace cpu
}  // namespace rnnfast
