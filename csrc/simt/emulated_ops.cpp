// The CUDA operators compiled by the host compiler against the SIMT emulator:
// csrc/cuda/rnn_host.h and options_host.h (orchestration) and csrc/kernels/ (kernels),
// the very sources nvcc compiles in csrc/cuda/rnn_cuda.cu, run on CPU tensors.
//
// Test-only: this file, the fiber runtime (simt_runtime.cpp) and module.cpp form
// the extension rnnfast._simt_emu, never the production rnnfast._C. It registers
// the operators under their own namespace, torch.ops.rnnfast_emu.*, with the same
// schemas as torch.ops.rnnfast.* (csrc/core/schemas.h); rnnfast.testing.emulate_cuda()
// makes the layers call them. C++ users link librnnfast_simt_emu (CMakeLists.txt).
#include <ATen/ATen.h>  // before simt.h, whose builtins are macros
#include <torch/library.h>

#include "../core/operators.h"
#include "../core/schemas.h"

#define RNNFAST_DEVICE_NS simt_emu
#define RNNFAST_LAUNCH_CHECK() ((void)0)
#define RNNFAST_DEVICE_GUARD_TYPE ::rnnfast::core::NoDeviceGuard
#define RNNFAST_STREAM() (::simt::stream_t{nullptr})
#include "../cuda/rnn_host.h"
#include "../cuda/options_host.h"

TORCH_LIBRARY(rnnfast_emu, m) {
  for (const char* schema : rnnfast::core::kOperatorSchemas) m.def(schema);
  for (const char* schema : rnnfast::core::kOptionSchemas) m.def(schema);
}

TORCH_LIBRARY_IMPL(rnnfast_emu, CPU, m) {
  rnnfast::core::register_operators<rnnfast::simt_emu::Backend>(m);
  rnnfast::core::register_option_operators<rnnfast::simt_emu::OptionsExec>(m);
}
