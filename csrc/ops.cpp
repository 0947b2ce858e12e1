// Operator schemas and their per-device registrations (no Python here: C++ users
// get the operators by linking this file, see CMakeLists.txt).
//
// The schemas are the contract between Python (rnnfast/ops.py registers the fake
// kernels and autograd for them) and the backends (csrc/cpu, csrc/cuda). See ops.h
// for the shapes of every argument.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(rnnfast, m) {
  m.def(
      "lstm_forward(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? w_hr, Tensor? batch_sizes, bool reverse, bool need_workspace) -> "
      "(Tensor output, Tensor hy, Tensor cy, Tensor gates, Tensor cells)");
  m.def(
      "lstm_backward(Tensor? grad_output, Tensor? grad_hy, Tensor? grad_cy, Tensor input, "
      "Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? w_hr, Tensor output, "
      "Tensor gates, Tensor cells, Tensor? batch_sizes, bool reverse, bool has_bias, "
      "bool need_grad_input) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_cx, "
      "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_bias, Tensor grad_w_hr)");
  m.def(
      "gru_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor? batch_sizes, bool reverse, bool need_workspace) -> "
      "(Tensor output, Tensor hy, Tensor workspace)");
  m.def(
      "gru_backward(Tensor? grad_output, Tensor? grad_hy, Tensor input, Tensor hx, Tensor w_ih, "
      "Tensor w_hh, Tensor output, Tensor workspace, Tensor? batch_sizes, bool reverse, "
      "bool has_bias, bool need_grad_input) -> (Tensor grad_input, Tensor grad_hx, "
      "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)");
  m.def(
      "rnn_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor? batch_sizes, bool reverse, bool relu) -> (Tensor output, Tensor hy)");
  m.def(
      "rnn_backward(Tensor? grad_output, Tensor? grad_hy, Tensor input, Tensor hx, Tensor w_ih, "
      "Tensor w_hh, Tensor output, Tensor? batch_sizes, bool reverse, bool relu, bool has_bias, "
      "bool need_grad_input) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, "
      "Tensor grad_w_hh, Tensor grad_bias)");
}

TORCH_LIBRARY_IMPL(rnnfast, CPU, m) {
  m.impl("lstm_forward", &rnnfast::cpu::lstm_forward);
  m.impl("lstm_backward", &rnnfast::cpu::lstm_backward);
  m.impl("gru_forward", &rnnfast::cpu::gru_forward);
  m.impl("gru_backward", &rnnfast::cpu::gru_backward);
  m.impl("rnn_forward", &rnnfast::cpu::rnn_forward);
  m.impl("rnn_backward", &rnnfast::cpu::rnn_backward);
}

#ifndef RNNFAST_WITH_CUDA
namespace {
// Any rnnfast operator on CUDA tensors in a build without CUDA kernels.
void no_cuda(const c10::OperatorHandle& op, torch::jit::Stack*) {
  TORCH_CHECK(false, op.schema().name(),
              ": rnnfast was built without CUDA support, so it cannot run on CUDA tensors. "
              "Rebuild it against a CUDA build of torch with nvcc on PATH (or set FORCE_CUDA=1): "
              "pip install --no-build-isolation --force-reinstall --no-deps .");
}
}  // namespace

TORCH_LIBRARY_IMPL(rnnfast, CUDA, m) {
  for (const char* name : {"lstm_forward", "lstm_backward", "gru_forward", "gru_backward",
                           "rnn_forward", "rnn_backward"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&no_cuda>());
  }
}
#endif
