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
}

TORCH_LIBRARY_IMPL(rnnfast, CPU, m) {
  m.impl("lstm_forward", &rnnfast::cpu::lstm_forward);
  m.impl("lstm_backward", &rnnfast::cpu::lstm_backward);
}

#ifndef RNNFAST_WITH_CUDA
namespace {
[[noreturn]] void no_cuda() {
  TORCH_CHECK(false,
              "rnnfast was built without CUDA support, so it cannot run on CUDA tensors. "
              "Rebuild it against a CUDA build of torch with nvcc on PATH (or set FORCE_CUDA=1): "
              "pip install --no-build-isolation --force-reinstall --no-deps .");
}
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_no_cuda(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const rnnfast::OptTensor&, const rnnfast::OptTensor&,
    const rnnfast::OptTensor&, const rnnfast::OptTensor&, bool, bool) {
  no_cuda();
}
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_backward_no_cuda(const rnnfast::OptTensor&, const rnnfast::OptTensor&,
                      const rnnfast::OptTensor&, const at::Tensor&, const at::Tensor&,
                      const at::Tensor&, const at::Tensor&, const at::Tensor&,
                      const rnnfast::OptTensor&, const at::Tensor&, const at::Tensor&,
                      const at::Tensor&, const rnnfast::OptTensor&, bool, bool, bool) {
  no_cuda();
}
}  // namespace

TORCH_LIBRARY_IMPL(rnnfast, CUDA, m) {
  m.impl("lstm_forward", &lstm_forward_no_cuda);
  m.impl("lstm_backward", &lstm_backward_no_cuda);
}
#endif

