// The process-wide choice of the CUDA layers' forward algorithm (rnnfast.cuda_algorithm):
//   auto        the persistent kernel where it fits the device and B is small, else the
//               standard one (csrc/cuda/persistent_host.h, docs/design.md);
//   standard    per step one recurrent GEMM and one fused pointwise kernel;
//   persistent  one cooperative launch for all steps; a clear error where it cannot run.
// Framework-free: read by the CUDA backend at every forward (and by its emulated build),
// set through each extension's Python module.
#pragma once

#include <atomic>

namespace rnnfast {
namespace core {

enum class CudaAlgorithm : int { kAuto = 0, kStandard = 1, kPersistent = 2 };

inline std::atomic<int>& cuda_algorithm_setting() {
  static std::atomic<int> setting{static_cast<int>(CudaAlgorithm::kAuto)};
  return setting;
}

inline CudaAlgorithm cuda_algorithm() {
  return static_cast<CudaAlgorithm>(cuda_algorithm_setting().load(std::memory_order_relaxed));
}

// Test-only (set by the SIMT emulator's module only): the persistent kernels leave out
// their grid syncs, to show that the tests catch a missing one.
inline std::atomic<bool>& persistent_drops_grid_syncs() {
  static std::atomic<bool> drop{false};
  return drop;
}

}  // namespace core
}  // namespace rnnfast
