// Operator schemas and their per-device registrations (no Python here: C++ users
// get the operators by linking this file, see CMakeLists.txt).
//
// The schemas (csrc/core/schemas.h) are the contract between Python (rnnfast/ops.py
// registers the fake kernels and autograd for them) and the backends (csrc/cpu,
// csrc/cuda), whose operators are written once (csrc/core/operators.h). See ops.h for
// the shapes of every argument.
#include <torch/library.h>

#include "core/operators.h"
#include "core/schemas.h"
#include "cpu/backend.h"

TORCH_LIBRARY(rnnfast, m) {
  for (const char* schema : rnnfast::core::kOperatorSchemas) m.def(schema);
}

TORCH_LIBRARY_IMPL(rnnfast, CPU, m) {
  rnnfast::core::register_operators<rnnfast::cpu::Backend>(m);
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
                           "rnn_forward", "rnn_backward", "lstm_options_forward",
                           "lstm_options_backward", "gru_options_forward",
                           "gru_options_backward"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&no_cuda>());
  }
}
#endif
