// The Python extension module rnnfast._simt_emu (test-only): importing it registers
// torch.ops.rnnfast_emu.*, the CUDA operators run in the SIMT emulator on CPU
// tensors (emulated_ops.cpp). Used through rnnfast.testing.emulate_cuda().
#include <torch/extension.h>

#include "simt.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnfast's CUDA kernels in the SIMT emulator (testing): torch.ops.rnnfast_emu.*";
  m.def("has_half", [] { return SIMT_HAS_HALF != 0; },
        "Whether the emulator was built with CUDA's __half and __nv_bfloat16 (cuda_fp16.h "
        "found at build time); without them it runs float32 and float64 only.");
}
