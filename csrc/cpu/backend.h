// The CPU backend of the operators (csrc/core/operators.h): float32 and float64, the
// executor of csrc/cpu/layer.h with its scratch allocated once per call.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "../core/checks.h"
#include "../core/layer.h"

namespace rnnfast {
namespace cpu {

struct Backend {
  static constexpr Dtypes kDtypes = kCpuDtypes;
  static at::ScalarType acc_dtype(at::ScalarType st) { return st; }
  struct Guard {
    explicit Guard(const at::Tensor&) {}
  };
  template <class F>
  static void dispatch(at::ScalarType st, const char*, const F& f) {
    AT_DISPATCH_FLOATING_TYPES(st, "rnnfast_cpu", [&] { f.template operator()<scalar_t, scalar_t>(); });
  }
  template <typename T, typename A>
  static void forward(const core::LayerForward<T, A>& a, const at::TensorOptions& opts);
  template <typename T, typename A>
  static void backward(const core::LayerBackward<T, A>& a, const at::TensorOptions& opts);
};

}  // namespace cpu
}  // namespace rnnfast
