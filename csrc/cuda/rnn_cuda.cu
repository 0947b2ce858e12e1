// The CUDA operators: the operators of csrc/core/operators.h over the CUDA backend of
// csrc/cuda/rnn_host.h (GEMMs through ATen and cuBLAS on the current stream) and
// csrc/kernels/rnn_device.cuh (fused per-step kernels), and the option operators of
// csrc/core/options.h over options_host.h and csrc/kernels/options_device.cuh, registered
// for CUDA tensors. The same sources also run in the SIMT emulator
// (csrc/simt/emulated_ops.cpp), which is how they are tested on machines without a GPU.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../core/operators.h"

#define RNNFAST_DEVICE_NS gpu
#define RNNFAST_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#define RNNFAST_DEVICE_GUARD_TYPE c10::cuda::OptionalCUDAGuard
#define RNNFAST_STREAM() (at::cuda::getCurrentCUDAStream().stream())
#include "rnn_host.h"
#include "options_host.h"

TORCH_LIBRARY_IMPL(rnnfast, CUDA, m) {
  rnnfast::core::register_operators<rnnfast::gpu::Backend>(m);
  rnnfast::core::register_option_operators<rnnfast::gpu::OptionsExec>(m);
}
