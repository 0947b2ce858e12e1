// Argument checks shared by every backend's operators (CPU, CUDA, the SIMT
// emulator), so that a wrong call gets the same message on every device.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "sequence.h"

namespace rnnfast {

using core::Sequence;
using core::make_sequence;

using OptTensor = std::optional<at::Tensor>;

// Which input dtypes a backend accepts.
enum class Dtypes { kWithBFloat16, kWithHalf };
constexpr Dtypes kCpuDtypes = Dtypes::kWithBFloat16;
constexpr Dtypes kCudaDtypes = Dtypes::kWithHalf;

struct Dims {
  Sequence seq;
  int64_t I = 0, H = 0, P = 0, G = 0;
  bool proj = false;
  bool bias = false;
};

inline bool present(const OptTensor& t) { return t.has_value() && t->defined(); }

void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref);
void check_shape(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef want);

// Checks what any caller of the operators could get wrong; G = gates per unit,
// cx only for the LSTM, w_hr only for an LSTM with a projection.
Dims check_layer(const char* op, Dtypes dtypes, int64_t G, const at::Tensor& input,
                 const at::Tensor& hx, const at::Tensor* cx, const at::Tensor& w_ih,
                 const at::Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                 const OptTensor& w_hr, const OptTensor& batch_sizes);

// Shape of the output: the input's with the last size replaced by P.
std::vector<int64_t> output_shape(const at::Tensor& input, int64_t P);

// Checks shared by the backward operators.
void check_grads(const char* op, const Dims& d, const at::Tensor& input, const at::Tensor& output,
                 const OptTensor& grad_output, const OptTensor& grad_hy);

// A contiguous copy of an incoming state gradient, or zeros when there is none.
at::Tensor state_grad(const OptTensor& g, int64_t rows, int64_t cols,
                      const at::TensorOptions& opts);

// The (0,) tensor that stands for "absent" in the operators' outputs.
inline at::Tensor empty0(const at::TensorOptions& opts) { return at::empty({0}, opts); }

namespace core {
// grad_output as rows [N, P] with a row stride ld and a column stride cs, read in place
// where its strides allow (e.g. the expanded gradient of out.sum(), whose strides are
// all 0): a 2-d [N, P] tensor, or a 3-d [T, B, P] whose time stride is B times its
// batch stride (or with T or B of 1). Anything else is made contiguous (ld P, cs 1).
// Undefined t when there is no gradient.
struct GradRows {
  at::Tensor t;
  int64_t ld = 0, cs = 0;
};
GradRows grad_rows(const OptTensor& g, int64_t P);
}  // namespace core

}  // namespace rnnfast
