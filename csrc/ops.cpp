// Operator schemas and their per-device registrations (no Python here: C++ users
// get the operators by linking this file, see CMakeLists.txt).
//
// The schemas are the contract between Python (rnnfast/ops.py registers the fake
// kernels and autograd for them) and the backends (csrc/cpu, csrc/cuda). See ops.h
// for the shapes of every argument.
#include <torch/library.h>

#include "ops.h"
#include "simt/emulation.h"

namespace {
// The CPU registration of an operator: the CPU kernels, or, while SIMT emulation
// is on (testing: rnnfast.testing.emulate_cuda()), the CUDA kernels in the emulator.
template <auto Cpu, auto Emulated>
struct Route;
template <typename R, typename... Args, R (*Cpu)(Args...), R (*Emulated)(Args...)>
struct Route<Cpu, Emulated> {
  static R call(Args... args) {
    return rnnfast::simt_emulation() ? Emulated(args...) : Cpu(args...);
  }
};
}  // namespace

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
  using namespace rnnfast;
  m.impl("lstm_forward", &Route<&cpu::lstm_forward, &simt_emu::lstm_forward>::call);
  m.impl("lstm_backward", &Route<&cpu::lstm_backward, &simt_emu::lstm_backward>::call);
  m.impl("gru_forward", &Route<&cpu::gru_forward, &simt_emu::gru_forward>::call);
  m.impl("gru_backward", &Route<&cpu::gru_backward, &simt_emu::gru_backward>::call);
  m.impl("rnn_forward", &Route<&cpu::rnn_forward, &simt_emu::rnn_forward>::call);
  m.impl("rnn_backward", &Route<&cpu::rnn_backward, &simt_emu::rnn_backward>::call);
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
