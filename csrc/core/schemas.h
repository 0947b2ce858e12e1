// The operator schemas: the contract between Python (rnnfast/ops.py: fake kernels and
// autograd), the production library (csrc/ops.cpp registers them as rnnfast::*) and the
// test-only emulator extension (csrc/simt/emulated_ops.cpp registers the same schemas as
// rnnfast_emu::*). Argument shapes: csrc/ops.h and csrc/core/cells.h.
#pragma once

namespace rnnfast {
namespace core {

inline constexpr const char* kOperatorSchemas[] = {
    "lstm_forward(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
    "Tensor? b_hh, Tensor? w_hr, Tensor? batch_sizes, bool reverse, bool need_workspace) -> "
    "(Tensor output, Tensor hy, Tensor cy, Tensor gates, Tensor cells)",
    "lstm_backward(Tensor? grad_output, Tensor? grad_hy, Tensor? grad_cy, Tensor input, "
    "Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? w_hr, Tensor output, "
    "Tensor gates, Tensor cells, Tensor? batch_sizes, bool reverse, bool has_bias, "
    "bool need_grad_input) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_cx, "
    "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_bias, Tensor grad_w_hr)",
    "gru_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
    "Tensor? batch_sizes, bool reverse, bool need_workspace) -> "
    "(Tensor output, Tensor hy, Tensor workspace)",
    "gru_backward(Tensor? grad_output, Tensor? grad_hy, Tensor input, Tensor hx, Tensor w_ih, "
    "Tensor w_hh, Tensor output, Tensor workspace, Tensor? batch_sizes, bool reverse, "
    "bool has_bias, bool need_grad_input) -> (Tensor grad_input, Tensor grad_hx, "
    "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)",
    "rnn_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
    "Tensor? batch_sizes, bool reverse, bool relu) -> (Tensor output, Tensor hy)",
    "rnn_backward(Tensor? grad_output, Tensor? grad_hy, Tensor input, Tensor hx, Tensor w_ih, "
    "Tensor w_hh, Tensor output, Tensor? batch_sizes, bool reverse, bool relu, bool has_bias, "
    "bool need_grad_input) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, "
    "Tensor grad_w_hh, Tensor grad_bias)",
};

}  // namespace core
}  // namespace rnnfast
