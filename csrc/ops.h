// Declarations of the rnnfast operators' backend implementations.
//
// One call runs one layer in one direction over the whole sequence (the cells are
// the same operators with T = 1). Schemas are registered in ops.cpp:
//
//   lstm_forward(input, hx, cx, w_ih, w_hh, b_ih?, b_hh?, w_hr?, batch_sizes?,
//                bool reverse, bool need_workspace) -> (output, hy, cy, gates, cells)
//   lstm_backward(grad_output?, grad_hy?, grad_cy?, input, hx, cx, w_ih, w_hh, w_hr?,
//                 output, gates, cells, batch_sizes?, bool reverse, bool has_bias,
//                 bool need_grad_input)
//       -> (grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_bias, grad_w_hr)
//   gru_forward(input, hx, w_ih, w_hh, b_ih?, b_hh?, batch_sizes?, bool reverse,
//               bool need_workspace) -> (output, hy, workspace)
//   gru_backward(grad_output?, grad_hy?, input, hx, w_ih, w_hh, output, workspace,
//                batch_sizes?, bool reverse, bool has_bias, bool need_grad_input)
//       -> (grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)
//   rnn_forward(input, hx, w_ih, w_hh, b_ih?, b_hh?, batch_sizes?, bool reverse,
//               bool relu) -> (output, hy)
//   rnn_backward(grad_output?, grad_hy?, input, hx, w_ih, w_hh, output, batch_sizes?,
//                bool reverse, bool relu, bool has_bias, bool need_grad_input)
//       -> (grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias)
//
// Legend: T steps, B batch, N = T*B rows (or sum(batch_sizes) when packed),
// I input size, H hidden size, P = proj_size if w_hr is given else H, G gates
// (LSTM 4, GRU 3, RNN 1).
//   input  (T, B, I) time-major, or (N, I) packed data with batch_sizes (T,) int64 CPU
//   hx     (B, P)       cx (B, H)   (LSTM)
//   w_ih   (G*H, I)     w_hh (G*H, P)     b_ih, b_hh (G*H)     w_hr (P, H) (LSTM)
//   output (T, B, P) or (N, P);  hy (B, P);  cy (B, H)
//   LSTM gates (N, 4H) activated gates and cells (N, H) cell states; GRU workspace
//   (N, 4H): r, z, n and W_hn h + b_hn. What backward needs; empty (0,) when
//   need_workspace is false (inference). The RNN needs only its output.
//   Gradients of absent things (bias, projection, an input that needs none) are
//   empty (0,). LSTM/RNN: grad_bias is the gradient of b_ih and of b_hh (equal).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace rnnfast {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// The six operator implementations, declared once and instantiated per backend
// namespace (cpu here; simt_emu in simt/emulated_ops.cpp; gpu in cuda/rnn_cuda.cu).
#define RNNFAST_DECLARE_OPERATORS() \
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward( \
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih, \
    const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, \
    const OptTensor& batch_sizes, bool reverse, bool need_workspace); \
 \
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward( \
    const OptTensor& grad_output, const OptTensor& grad_hy, const OptTensor& grad_cy, \
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih, \
    const Tensor& w_hh, const OptTensor& w_hr, const Tensor& output, const Tensor& gates, \
    const Tensor& cells, const OptTensor& batch_sizes, bool reverse, bool has_bias, \
    bool need_grad_input); \
 \
std::tuple<Tensor, Tensor, Tensor> gru_forward(const Tensor& input, const Tensor& hx, \
                                               const Tensor& w_ih, const Tensor& w_hh, \
                                               const OptTensor& b_ih, const OptTensor& b_hh, \
                                               const OptTensor& batch_sizes, bool reverse, \
                                               bool need_workspace); \
 \
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward( \
    const OptTensor& grad_output, const OptTensor& grad_hy, const Tensor& input, \
    const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& output, \
    const Tensor& workspace, const OptTensor& batch_sizes, bool reverse, bool has_bias, \
    bool need_grad_input); \
 \
std::tuple<Tensor, Tensor> rnn_forward(const Tensor& input, const Tensor& hx, const Tensor& w_ih, \
                                       const Tensor& w_hh, const OptTensor& b_ih, \
                                       const OptTensor& b_hh, const OptTensor& batch_sizes, \
                                       bool reverse, bool relu); \
 \
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_backward( \
    const OptTensor& grad_output, const OptTensor& grad_hy, const Tensor& input, \
    const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& output, \
    const OptTensor& batch_sizes, bool reverse, bool relu, bool has_bias, bool need_grad_input);

namespace cpu {
RNNFAST_DECLARE_OPERATORS()
}  // namespace cpu
}  // namespace rnnfast
