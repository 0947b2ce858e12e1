#include "build_info.h"

#include <ATen/Parallel.h>

#include <cstdio>

#if __has_include(<torch/headeronly/version.h>)
#include <torch/headeronly/version.h>
#else
#include <torch/version.h>
#endif

#include "cpu/bf16_gemm.h"
#include "cpu/blas.h"
#include "cpu/pointwise.h"

#ifndef RNNFAST_VERSION
#define RNNFAST_VERSION "0.0.0"
#endif

namespace rnnfast {

bool built_with_cuda() {
#ifdef RNNFAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::map<std::string, std::string> build_info() {
  std::map<std::string, std::string> info;
  info["version"] = RNNFAST_VERSION;
  info["cuda"] = built_with_cuda() ? "true" : "false";
#ifdef RNNFAST_CUDA_ARCHS
  info["cuda_archs"] = RNNFAST_CUDA_ARCHS;
#endif
  info["cpu_kernels"] = cpu::cpu_kernels().name;
  info["gemm"] = cpu::gemm_backend();
  info["step_gemm"] = cpu::step_gemm_backend();
  info["sequence_gemm"] = cpu::sequence_gemm_backend();
  const std::string bf16 = cpu::step_gemm_bf16();
  const bool widened = !cpu::bf16_copies_only() && cpu::step_gemm_split_invariant_f32();
  info["bf16_gemm"] =
      (cpu::bf16_widened_only() || bf16 == "fp32") && widened
          ? "float32 products on widened bfloat16 operands (every call)"
      : bf16 == "amx" ? "amx tiles (step products), torch's bfloat16 gemm (sequence products)"
      : bf16 == "avx512_bf16"
          ? (widened ? "avx512_bf16 dot products (step products), torch's bfloat16 gemm (sequence "
                       "products); calls the rule leaves out: float32 products on widened "
                       "bfloat16 operands"
                     : "avx512_bf16 dot products (step products), torch's bfloat16 gemm (sequence "
                       "products)")
          : "float32 on up-converted values";
  if (bf16 == "avx512_bf16" && !cpu::bf16_widened_only()) {
    char rate[192];
    std::snprintf(rate, sizeof(rate), "%.2f (VDPBF16PS/FMA multiply-adds a second; %s)",
                  cpu::bf16_dot_rate(),
                  cpu::bf16_dot_rate() >= cpu::kDotFullRate ? "dot products for every call"
                                                            : "LSTM/GRU at batch 1 whose W_hh "
                                                              "slice a thread takes >= 1 MiB in "
                                                              "float32");
    info["bf16_dot_rate"] = rate;
  }
  if (cpu::cpu_kernels().panel_gemm_bf16w != nullptr) {
    char panels[224];
    const double mib = 1 << 20;
    std::snprintf(panels, sizeof(panels),
                  "bfloat16 panels where a widened step product's float32 panels would take >= "
                  "%.2f MiB (3/4 of L2) at 1-4 rows, >= %.2f MiB (L2) at 5-6 rows, >= %.2f MiB "
                  "(2x L2) at 7-%lld rows",
                  static_cast<double>(cpu::bf16_half_panels_min_bytes(4)) / mib,
                  static_cast<double>(cpu::bf16_half_panels_min_bytes(6)) / mib,
                  static_cast<double>(cpu::bf16_half_panels_min_bytes(8)) / mib,
                  static_cast<long long>(cpu::kBf16PanelMaxRows));
    info["bf16_half_panels"] = panels;
  }
  info["blocked_gemm"] = cpu::cpu_kernels().blocked_gemm_f32 != nullptr ? "true" : "false";
  info["threads"] = std::to_string(at::get_num_threads());
#ifdef _OPENMP
  info["openmp"] = "true";
#else
  info["openmp"] = "false";
#endif
  info["torch_compiled"] = std::to_string(TORCH_VERSION_MAJOR) + "." +
                           std::to_string(TORCH_VERSION_MINOR) + "." +
                           std::to_string(TORCH_VERSION_PATCH);
  return info;
}

}  // namespace rnnfast
