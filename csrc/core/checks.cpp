#include "checks.h"

#include <c10/util/Exception.h>

namespace rnnfast {

using at::Tensor;

void check_like(const char* op, const char* name, const Tensor& t, const Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but input has dtype ", ref.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
              " but input is on ", ref.device());
}

void check_shape(const char* op, const char* name, const Tensor& t, at::IntArrayRef want) {
  TORCH_CHECK(t.sizes() == want, op, ": expected ", name, " of shape ", want, ", got ", t.sizes());
}

Dims check_layer(const char* op, Dtypes dtypes, int64_t G, const Tensor& input, const Tensor& hx,
                 const Tensor* cx, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                 const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& batch_sizes) {
  const auto st = input.scalar_type();
  if (dtypes == Dtypes::kWithBFloat16) {
    TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16, op,
                ": the CPU kernels support float32, float64 and bfloat16 inputs, got ", st);
  } else {
    TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
                op, ": the CUDA kernels support float32, float64, float16 and bfloat16 inputs, got ",
                st);
  }
  Dims d;
  d.G = G;
  d.seq = make_sequence(op, input, batch_sizes);
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) % G == 0, op, ": w_ih must be (", G,
              "*hidden_size, input_size), got ", w_ih.sizes());
  d.H = w_ih.size(0) / G;
  d.I = input.size(-1);
  d.proj = present(w_hr);
  d.P = d.proj ? w_hr->size(0) : d.H;
  check_shape(op, "w_ih", w_ih, {G * d.H, d.I});
  check_shape(op, "w_hh", w_hh, {G * d.H, d.P});
  check_like(op, "w_ih", w_ih, input);
  check_like(op, "w_hh", w_hh, input);
  if (d.proj) {
    check_shape(op, "w_hr", *w_hr, {d.P, d.H});
    check_like(op, "w_hr", *w_hr, input);
  }
  check_shape(op, "hx", hx, {d.seq.B, d.P});
  check_like(op, "hx", hx, input);
  if (cx != nullptr) {
    check_shape(op, "cx", *cx, {d.seq.B, d.H});
    check_like(op, "cx", *cx, input);
  }
  d.bias = present(b_ih);
  TORCH_CHECK(d.bias == present(b_hh), op, ": give both b_ih and b_hh, or neither");
  if (d.bias) {
    check_shape(op, "b_ih", *b_ih, {G * d.H});
    check_shape(op, "b_hh", *b_hh, {G * d.H});
    check_like(op, "b_ih", *b_ih, input);
    check_like(op, "b_hh", *b_hh, input);
  }
  return d;
}

std::vector<int64_t> output_shape(const Tensor& input, int64_t P) {
  std::vector<int64_t> shape = input.sizes().vec();
  shape.back() = P;
  return shape;
}

void check_grads(const char* op, const Dims& d, const Tensor& input, const Tensor& output,
                 const OptTensor& grad_output, const OptTensor& grad_hy) {
  const auto out_shape = output_shape(input, d.P);
  check_shape(op, "output", output, out_shape);
  if (present(grad_output)) check_shape(op, "grad_output", *grad_output, out_shape);
  if (present(grad_hy)) check_shape(op, "grad_hy", *grad_hy, {d.seq.B, d.P});
}

Tensor state_grad(const OptTensor& g, int64_t rows, int64_t cols, const at::TensorOptions& opts) {
  return present(g) ? g->clone(at::MemoryFormat::Contiguous) : at::zeros({rows, cols}, opts);
}

namespace core {
GradRows grad_rows(const OptTensor& g, int64_t P) {
  if (!present(g)) return {Tensor(), 0, 0};
  const Tensor& t = *g;
  if (t.dim() == 2) return {t, t.stride(0), t.stride(1)};
  if (t.dim() == 3 && t.size(1) == 1) return {t, t.stride(0), t.stride(2)};
  if (t.dim() == 3 && (t.size(0) == 1 || t.stride(0) == t.size(1) * t.stride(1)))
    return {t, t.stride(1), t.stride(2)};
  return {t.contiguous(), P, 1};
}
}  // namespace core

}  // namespace rnnfast
