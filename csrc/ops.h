// Declarations of the rnnfast operators' backend implementations.
//
// Schemas (registered in ops.cpp):
//
//   lstm_forward(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh,
//                Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, Tensor? batch_sizes,
//                bool reverse, bool need_workspace)
//       -> (Tensor output, Tensor hy, Tensor cy, Tensor gates, Tensor cells)
//
//   lstm_backward(Tensor? grad_output, Tensor? grad_hy, Tensor? grad_cy,
//                 Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh,
//                 Tensor? w_hr, Tensor output, Tensor gates, Tensor cells,
//                 Tensor? batch_sizes, bool reverse, bool has_bias, bool need_grad_input)
//       -> (Tensor grad_input, Tensor grad_hx, Tensor grad_cx, Tensor grad_w_ih,
//           Tensor grad_w_hh, Tensor grad_bias, Tensor grad_w_hr)
//
// One call runs one layer in one direction over the whole sequence.
// Legend: T steps, B batch, N = T*B rows (or sum(batch_sizes) when packed),
// I input size, H hidden size, P = proj_size if w_hr is given else H.
//   input  (T, B, I) time-major, or (N, I) packed data with batch_sizes (T,) int64 CPU
//   hx     (B, P)       cx (B, H)
//   w_ih   (4H, I)      w_hh (4H, P)     b_ih, b_hh (4H)     w_hr (P, H)
//   output (T, B, P) or (N, P);  hy (B, P);  cy (B, H)
//   gates  (N, 4H) activated gates, cells (N, H) cell states: saved for backward;
//          both are empty (0,) when need_workspace is false (inference).
//   grad_bias (4H) is the gradient of b_ih and of b_hh (they are equal); empty
//   when has_bias is false. grad_w_hr is empty without projection; grad_input is
//   empty when need_grad_input is false.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace rnnfast {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

namespace cpu {

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
    const OptTensor& batch_sizes, bool reverse, bool need_workspace);

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const OptTensor& grad_output, const OptTensor& grad_hy, const OptTensor& grad_cy,
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& w_hr, const Tensor& output, const Tensor& gates,
    const Tensor& cells, const OptTensor& batch_sizes, bool reverse, bool has_bias,
    bool need_grad_input);

}  // namespace cpu
}  // namespace rnnfast
