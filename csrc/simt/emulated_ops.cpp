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

// The persistent kernels' plan for a shape on the modelled device (bench/gpu_model.py):
// (ok, why, U, V, blocks, threads, shared bytes, whether auto takes it). kind as
// core::CellKind; elem_bytes 2 (bfloat16), 4 or 8.
std::tuple<bool, std::string, int64_t, int64_t, int64_t, int, size_t, bool> rnnfast_persistent_plan(
    int kind, int elem_bytes, int64_t B, int64_t H, int64_t P, bool backward) {
  using namespace rnnfast::simt_emu;
  auto info = [&]<typename T>() {
    const bool proj = P != H;
    PersistentPlan pl;
    const auto plan = [&]<int Kind>() {
      pl = backward ? plan_persistent<T, Kind, true>(B, H, P, proj)
                    : plan_persistent<T, Kind, false>(B, H, P, proj);
      return true;
    };
    with_kind(static_cast<rnnfast::core::CellKind>(kind), plan);
    return std::make_tuple(pl.ok, pl.why, pl.U, pl.V, pl.blocks, pl.threads, pl.smem,
                           pl.ok && take_persistent(pl, B, false));
  };
  TORCH_CHECK(kind >= 0 && kind < rnnfast::core::kNumCellKinds, "persistent plan: bad kind");
  if (elem_bytes == 8) return info.template operator()<double>();
  if (elem_bytes == 4) return info.template operator()<float>();
#if SIMT_HAS_HALF
  if (elem_bytes == 2) return info.template operator()<__nv_bfloat16>();
#endif
  TORCH_CHECK(false, "persistent plan: elem_bytes 2 (with the half headers), 4 or 8");
}
