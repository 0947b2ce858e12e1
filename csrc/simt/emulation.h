// The CUDA operators run in the SIMT emulator on CPU tensors (testing only).
//
// When emulation is on, the CPU registrations of the rnnfast operators route to
// the CUDA host orchestration and kernels (csrc/cuda/rnn_host.h,
// csrc/kernels/rnn_device.cuh) compiled for the emulator, instead of the CPU
// kernels. Python: rnnfast.testing.emulate_cuda(). It is a process-wide switch;
// emulation is slow (every CUDA thread is a fiber) and meant for small sizes.
#pragma once

#include "../ops.h"

namespace rnnfast {

bool simt_emulation();
void set_simt_emulation(bool on);
// Whether the emulator was built with CUDA's half types (cuda_fp16.h found).
bool simt_has_half();

namespace simt_emu {
RNNFAST_DECLARE_OPERATORS()
}  // namespace simt_emu
}  // namespace rnnfast
