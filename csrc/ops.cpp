// Operator schemas, their per-device registrations, and the Python module.
//
// The schemas are the contract between Python (rnnfast/ops.py registers the fake
// kernels and autograd for them) and the backends (csrc/cpu, csrc/cuda). See ops.h
// for the shapes of every argument.
#include <torch/extension.h>
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <string>

#if __has_include(<torch/headeronly/version.h>)
#include <torch/headeronly/version.h>
#else
#include <torch/version.h>
#endif

#include "cpu/blas.h"
#include "cpu/pointwise.h"
#include "ops.h"

#ifndef RNNFAST_VERSION
#define RNNFAST_VERSION "0.0.0"
#endif

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

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["version"] = RNNFAST_VERSION;
#ifdef RNNFAST_WITH_CUDA
  info["cuda"] = true;
#ifdef RNNFAST_CUDA_ARCHS
  info["cuda_archs"] = RNNFAST_CUDA_ARCHS;
#endif
#else
  info["cuda"] = false;
#endif
  info["cpu_kernels"] = rnnfast::cpu::cpu_kernels().name;
  info["gemm"] = rnnfast::cpu::gemm_backend();
  info["threads"] = at::get_num_threads();
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["torch_compiled"] = std::to_string(TORCH_VERSION_MAJOR) + "." +
                           std::to_string(TORCH_VERSION_MINOR) + "." +
                           std::to_string(TORCH_VERSION_PATCH);
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnfast's compiled core: registers the torch.ops.rnnfast operators.";
  m.def("build_info", &build_info,
        "What this build of rnnfast contains: CUDA support and archs, the CPU kernel set "
        "chosen for this CPU, the GEMM backend, the torch version it was compiled against.");
}
