// The CPU backend of the operators (csrc/core/operators.h): float32, float64 and
// bfloat16 (the float32 executor on up-converted copies, float32 cell state, the LSTM's
// saved buffers float32 and the GRU's bfloat16), the executor of csrc/cpu/layer.h with
// its scratch allocated once per call.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "../core/checks.h"
#include "../core/layer.h"

namespace rnnfast {
namespace cpu {

struct Backend {
  static constexpr Dtypes kDtypes = kCpuDtypes;
  static at::ScalarType acc_dtype(at::ScalarType st) {
    return st == at::kBFloat16 ? at::kFloat : st;
  }
  // A bfloat16 GRU saves its rows (r, z, n, W_hn h + b_hn) as bfloat16: half the float32
  // workspace, which kept its training step above torch.nn's in memory. The LSTM keeps
  // float32 (its cell state is summed over steps; its step is below torch.nn's anyway).
  static at::ScalarType saved_dtype(core::CellKind kind, at::ScalarType st) {
    return st == at::kBFloat16 && kind == core::CellKind::kGru ? at::kBFloat16 : acc_dtype(st);
  }
  struct Guard {
    explicit Guard(const at::Tensor&) {}
  };
  template <class F>
  static void dispatch(at::ScalarType st, const char*, const F& f) {
    if (st == at::kBFloat16) {
      f.template operator()<at::BFloat16, float>();
      return;
    }
    AT_DISPATCH_FLOATING_TYPES(st, "rnnfast_cpu", [&] { f.template operator()<scalar_t, scalar_t>(); });
  }
  template <typename T, typename A>
  static void forward(const core::LayerForward<T, A>& a, const at::TensorOptions& opts);
  template <typename T, typename A>
  static void backward(const core::LayerBackward<T, A>& a, const at::TensorOptions& opts);
};

// How a bfloat16 layer call (the Elman RNN or not, `batch` rows a step, a thread's slice of
// W_hh taking w_hh_bytes in float32: w_hh_slice_bytes) runs on this CPU:
// `kernels`, its products on the bfloat16 kernels (bf16_kernels_for, bf16_gemm.h);
// `widened`, else where the CPU has a bfloat16 kernel and the kernel set the panel
// micro-kernel, the same bfloat16 data path with float32 products on widened operands;
// `data16`, either (x, the weights, the outputs and the gate gradients read and written as
// bfloat16 in place). Neither: the float32 executor on whole up-converted copies.
struct Bf16Mode {
  bool kernels, widened, data16;
};
Bf16Mode bf16_mode(bool plain_rnn, int64_t batch, int64_t w_hh_bytes);
// "kernels", "widened" or "copies" (bf16_mode).
const char* bf16_path_name(bool plain_rnn, int64_t batch, int64_t w_hh_bytes);
// The float32 bytes of one intra-op thread's slice of W_hh [G*H, P] (the step loops split
// its rows among the threads).
int64_t w_hh_slice_bytes(int64_t GH, int64_t P);

// bfloat16 (backend.cpp).
template <>
void Backend::forward<at::BFloat16, float>(const core::LayerForward<at::BFloat16, float>& a,
                                           const at::TensorOptions& opts);
template <>
void Backend::backward<at::BFloat16, float>(const core::LayerBackward<at::BFloat16, float>& a,
                                            const at::TensorOptions& opts);

}  // namespace cpu
}  // namespace rnnfast
