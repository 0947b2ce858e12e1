// Run-time choice of the CPU kernel set (see pointwise.h).
#include <cstdlib>
#include <cstring>

#include <c10/util/Exception.h>

#include "pointwise.h"

namespace rnnfast {
namespace cpu {
namespace {

const CpuKernels* choose() {
  const char* want = std::getenv("RNNFAST_CPU_ISA");
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool has_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                        __builtin_cpu_supports("bmi2");
  if (want != nullptr && *want != '\0') {
    if (std::strcmp(want, "avx512") == 0) {
      TORCH_CHECK(has_avx512, "RNNFAST_CPU_ISA=avx512, but this CPU does not support AVX-512");
      return &avx512::kKernels;
    }
    if (std::strcmp(want, "avx2") == 0) {
      TORCH_CHECK(has_avx2, "RNNFAST_CPU_ISA=avx2, but this CPU does not support AVX2/FMA");
      return &avx2::kKernels;
    }
    TORCH_CHECK(std::strcmp(want, "generic") == 0, "RNNFAST_CPU_ISA must be one of avx512, avx2, ",
                "generic; got '", want, "'");
    return &generic::kKernels;
  }
  if (has_avx512) return &avx512::kKernels;
  if (has_avx2) return &avx2::kKernels;
  return &generic::kKernels;
#else
  TORCH_CHECK(want == nullptr || *want == '\0' || std::strcmp(want, "generic") == 0,
              "RNNFAST_CPU_ISA: only 'generic' exists on this architecture; got '", want, "'");
  return &generic::kKernels;
#endif
}

}  // namespace

const CpuKernels& cpu_kernels() {
  static const CpuKernels* chosen = choose();
  return *chosen;
}

namespace {

// Where the kernel tables for T are in CpuKernels.
template <typename T>
struct Tables;
template <>
struct Tables<float> {
  static constexpr auto fwd = &CpuKernels::fwd_f32;
  static constexpr auto bwd = &CpuKernels::bwd_f32;
};
template <>
struct Tables<double> {
  static constexpr auto fwd = &CpuKernels::fwd_f64;
  static constexpr auto bwd = &CpuKernels::bwd_f64;
};

}  // namespace

template <typename T>
FwdKernel<T> fwd_kernel(CellKind kind) {
  return (cpu_kernels().*Tables<T>::fwd)[static_cast<int>(kind)];
}
template <typename T>
BwdKernel<T> bwd_kernel(CellKind kind) {
  return (cpu_kernels().*Tables<T>::bwd)[static_cast<int>(kind)];
}

template FwdKernel<float> fwd_kernel<float>(CellKind);
template FwdKernel<double> fwd_kernel<double>(CellKind);
template BwdKernel<float> bwd_kernel<float>(CellKind);
template BwdKernel<double> bwd_kernel<double>(CellKind);

}  // namespace cpu
}  // namespace rnnfast
