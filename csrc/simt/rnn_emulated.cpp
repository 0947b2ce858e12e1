// The CUDA operators compiled by the host compiler against the SIMT emulator:
// csrc/cuda/rnn_host.h (orchestration) and csrc/kernels/rnn_device.cuh (kernels),
// the very sources nvcc compiles in csrc/cuda/rnn_cuda.cu, run on CPU tensors.
#include <ATen/ATen.h>  // before simt.h, whose builtins are macros

#include <atomic>

#include "emulation.h"

#define RNNFAST_DEVICE_NS simt_emu
#define RNNFAST_LAUNCH_CHECK() ((void)0)
#define RNNFAST_DEVICE_GUARD(t) ((void)0)
#define RNNFAST_STREAM() (::simt::stream_t{nullptr})
#include "../cuda/rnn_host.h"

namespace rnnfast {

namespace {
std::atomic<bool> g_emulation{false};
}

bool simt_emulation() { return g_emulation.load(std::memory_order_relaxed); }
void set_simt_emulation(bool on) { g_emulation.store(on); }
bool simt_has_half() { return SIMT_HAS_HALF != 0; }

}  // namespace rnnfast
