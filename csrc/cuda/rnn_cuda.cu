// The CUDA operators: csrc/cuda/rnn_host.h (orchestration, GEMMs through ATen and
// cuBLAS on the current stream) and csrc/kernels/rnn_device.cuh (fused per-step
// kernels), registered for CUDA tensors. The same two sources also run in the
// SIMT emulator (csrc/simt/rnn_emulated.cpp), which is how they are tested on
// machines without a GPU.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../ops.h"

namespace rnnfast {
namespace gpu {
RNNFAST_DECLARE_OPERATORS()  // rnn_host.h defines them; the compiler checks they match
}  // namespace gpu
}  // namespace rnnfast

#define RNNFAST_DEVICE_NS gpu
#define RNNFAST_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#define RNNFAST_DEVICE_GUARD(t) const c10::cuda::OptionalCUDAGuard device_guard_((t).device())
#define RNNFAST_STREAM() (at::cuda::getCurrentCUDAStream().stream())
#include "rnn_host.h"

TORCH_LIBRARY_IMPL(rnnfast, CUDA, m) {
  m.impl("lstm_forward", &rnnfast::gpu::lstm_forward);
  m.impl("lstm_backward", &rnnfast::gpu::lstm_backward);
  m.impl("gru_forward", &rnnfast::gpu::gru_forward);
  m.impl("gru_backward", &rnnfast::gpu::gru_backward);
  m.impl("rnn_forward", &rnnfast::gpu::rnn_forward);
  m.impl("rnn_backward", &rnnfast::gpu::rnn_backward);
}
