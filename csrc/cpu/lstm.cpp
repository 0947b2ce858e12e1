// Fused LSTM layer on the CPU: forward and hand-written BPTT backward.
//
// Forward (one layer, one direction):
//   gates = X W_ih^T + (b_ih + b_hh)                  one GEMM over all N rows
//   per step t:  gates_t += h W_hh^T                  one GEMM, b_t rows
//                fused pointwise: activations, c, h   (pointwise.h, vectorised)
//                h = r W_hr^T                         one GEMM, with a projection
// Backward (reverse of the forward order):
//   per step t:  dh += dy_t;  dr = dh W_hr (projection)
//                fused pointwise: gate gradients dG_t, dc
//                dh = dG_t W_hh                       one GEMM
//   after the loop: dW_ih = dG^T X, dW_hh = dG^T H_prev, dX = dG W_ih,
//                   dW_hr = dH^T R, db = column sums of dG (fixed order: bitwise
//                   reproducible).
// All buffers are allocated once per call; the step loop allocates nothing.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <cstring>

#include "../ops.h"
#include "blas.h"
#include "pointwise.h"
#include "sequence.h"

namespace rnnfast {
namespace cpu {
namespace {

struct LstmDims {
  Sequence seq;
  int64_t I = 0, H = 0, P = 0;
  bool proj = false;
};

void check_same(const char* op, const char* name, const Tensor& t, const Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but input has dtype ", ref.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
              " but input is on ", ref.device());
}

void check_shape(const char* op, const char* name, const Tensor& t, at::IntArrayRef want) {
  TORCH_CHECK(t.sizes() == want, op, ": expected ", name, " of shape ", want, ", got ", t.sizes());
}

LstmDims check_lstm(const char* op, const Tensor& input, const Tensor& hx, const Tensor& cx,
                    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                    const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& batch_sizes) {
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
              ": the CPU kernels support float32 and float64 inputs, got ", input.scalar_type());
  LstmDims d;
  d.seq = make_sequence(op, input, batch_sizes);
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) % 4 == 0, op,
              ": w_ih must be (4*hidden_size, input_size), got ", w_ih.sizes());
  d.H = w_ih.size(0) / 4;
  d.I = input.size(-1);
  d.proj = w_hr.has_value() && w_hr->defined();
  d.P = d.proj ? w_hr->size(0) : d.H;
  check_shape(op, "w_ih", w_ih, {4 * d.H, d.I});
  check_shape(op, "w_hh", w_hh, {4 * d.H, d.P});
  if (d.proj) check_shape(op, "w_hr", *w_hr, {d.P, d.H});
  check_shape(op, "hx", hx, {d.seq.B, d.P});
  check_shape(op, "cx", cx, {d.seq.B, d.H});
  const bool has_b_ih = b_ih.has_value() && b_ih->defined();
  const bool has_b_hh = b_hh.has_value() && b_hh->defined();
  TORCH_CHECK(has_b_ih == has_b_hh, op, ": give both b_ih and b_hh, or neither");
  check_same(op, "hx", hx, input);
  check_same(op, "cx", cx, input);
  check_same(op, "w_ih", w_ih, input);
  check_same(op, "w_hh", w_hh, input);
  if (has_b_ih) {
    check_shape(op, "b_ih", *b_ih, {4 * d.H});
    check_shape(op, "b_hh", *b_hh, {4 * d.H});
    check_same(op, "b_ih", *b_ih, input);
    check_same(op, "b_hh", *b_hh, input);
  }
  if (d.proj) check_same(op, "w_hr", *w_hr, input);
  return d;
}

// out[0:rows, :] = src[0:rows, :] for dense [*, cols] buffers.
template <typename T>
void copy_rows(T* out, const T* src, int64_t rows, int64_t cols) {
  if (rows > 0 && cols > 0) std::memcpy(out, src, sizeof(T) * rows * cols);
}

template <typename T>
void forward_impl(const LstmDims& d, bool reverse, const T* x, const T* w_ih, const T* w_hh,
                  const T* bias, const T* w_hr, T* gates, T* y, T* h, T* c, T* cells, T* r) {
  const Sequence& s = d.seq;
  const int64_t H = d.H, P = d.P, I = d.I, G = 4 * H;
  // Input projection for the whole sequence, bias folded in.
  if (bias != nullptr) {
    parallel_rows(s.N, G, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) std::memcpy(gates + i * G, bias, sizeof(T) * G);
    });
  }
  gemm<T>(false, true, s.N, G, I, T(1), x, I, w_ih, I, bias != nullptr ? T(1) : T(0), gates, G);

  const auto kernel = KernelFor<T>::lstm_fwd();
  for (int64_t step = 0; step < s.T; ++step) {
    const int64_t t = s.time_at(step, reverse);
    const int64_t b = s.bs[t];
    if (b == 0) continue;
    T* g = gates + s.off[t] * G;
    gemm<T>(false, true, b, G, P, T(1), h, P, w_hh, P, T(1), g, G);
    const LstmFwdStep<T> st{g, c, cells != nullptr ? cells + s.off[t] * H : nullptr,
                            d.proj ? r : h, d.proj ? nullptr : y + s.off[t] * H, H};
    parallel_rows(b, 8 * H, [&](int64_t r0, int64_t r1) { kernel(st, r0, r1); });
    if (d.proj) {
      gemm<T>(false, true, b, P, H, T(1), r, H, w_hr, H, T(0), h, P);
      copy_rows(y + s.off[t] * P, h, b, P);
    }
  }
}

template <typename T>
void backward_impl(const LstmDims& d, bool reverse, const T* dy, const T* x, const T* hx,
                   const T* cx, const T* w_ih, const T* w_hh, const T* w_hr, const T* y,
                   const T* gates, const T* cells, T* dgates, T* dh, T* dc, T* dr, T* R, T* DH,
                   T* hprev, T* dx, T* dw_ih, T* dw_hh, T* db, T* dw_hr) {
  const Sequence& s = d.seq;
  const int64_t H = d.H, P = d.P, I = d.I, G = 4 * H;
  const auto kernel = KernelFor<T>::lstm_bwd();
  for (int64_t step = s.T - 1; step >= 0; --step) {
    const int64_t t = s.time_at(step, reverse);
    const int64_t b = s.bs[t];
    if (b == 0) continue;
    const int64_t row = s.off[t];
    if (dy != nullptr) {
      const T* dyt = dy + row * P;
      parallel_rows(b, P, [&](int64_t r0, int64_t r1) {
        for (int64_t j = r0; j < r1; ++j) {
          T* __restrict a = dh + j * P;
          const T* __restrict v = dyt + j * P;
          for (int64_t k = 0; k < P; ++k) a[k] += v[k];
        }
      });
    }
    if (d.proj) {
      copy_rows(DH + row * P, dh, b, P);
      gemm<T>(false, false, b, H, P, T(1), dh, P, w_hr, H, T(0), dr, H);
    }
    const int64_t tp = s.prev_of(t, reverse);
    const int64_t n_prev = tp >= 0 ? std::min(b, s.bs[tp]) : 0;
    const LstmBwdStep<T> st{gates + row * G, cells + row * H, tp >= 0 ? cells + s.off[tp] * H : cx,
                            cx, n_prev, d.proj ? dr : dh, dc, dgates + row * G,
                            d.proj ? R + row * H : nullptr, H};
    parallel_rows(b, 12 * H, [&](int64_t r0, int64_t r1) { kernel(st, r0, r1); });
    // dh_{t-1} = dG_t W_hh for the active rows; the others keep their gradient.
    gemm<T>(false, false, b, P, G, T(1), dgates + row * G, G, w_hh, P, T(0), dh, P);
  }

  // h_{t-1} for every row of every step, so dW_hh is one GEMM.
  for (int64_t t = 0; t < s.T; ++t) {
    const int64_t b = s.bs[t];
    const int64_t tp = s.prev_of(t, reverse);
    const int64_t n_prev = tp >= 0 ? std::min(b, s.bs[tp]) : 0;
    copy_rows(hprev + s.off[t] * P, y + (tp >= 0 ? s.off[tp] : 0) * P, n_prev, P);
    copy_rows(hprev + (s.off[t] + n_prev) * P, hx + n_prev * P, b - n_prev, P);
  }
  gemm<T>(true, false, G, P, s.N, T(1), dgates, G, hprev, P, T(0), dw_hh, P);
  gemm<T>(true, false, G, I, s.N, T(1), dgates, G, x, I, T(0), dw_ih, I);
  if (dx != nullptr) gemm<T>(false, false, s.N, I, G, T(1), dgates, G, w_ih, I, T(0), dx, I);
  if (d.proj) gemm<T>(true, false, P, H, s.N, T(1), DH, P, R, H, T(0), dw_hr, H);
  if (db != nullptr) {
    // Column sums in a fixed order (rows ascending) per column block: deterministic.
    constexpr int64_t kBlock = 64;
    const int64_t nblocks = (G + kBlock - 1) / kBlock;
    at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t k0 = blk * kBlock, k1 = std::min(G, k0 + kBlock);
        T* __restrict out = db + k0;
        for (int64_t k = 0; k < k1 - k0; ++k) out[k] = T(0);
        for (int64_t i = 0; i < s.N; ++i) {
          const T* __restrict row = dgates + i * G + k0;
          for (int64_t k = 0; k < k1 - k0; ++k) out[k] += row[k];
        }
      }
    });
  }
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
    const OptTensor& batch_sizes, bool reverse, bool need_workspace) {
  const char* op = "rnnfast::lstm_forward";
  const LstmDims d = check_lstm(op, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes);
  const Sequence& s = d.seq;
  const auto opts = input.options();
  const int64_t G = 4 * d.H;

  const Tensor x = input.contiguous();
  const Tensor wih = w_ih.contiguous(), whh = w_hh.contiguous();
  const Tensor whr = d.proj ? w_hr->contiguous() : Tensor();
  const bool has_bias = b_ih.has_value() && b_ih->defined();
  const Tensor bias = has_bias ? (*b_ih + *b_hh).contiguous() : Tensor();

  Tensor gates = at::empty({s.N, G}, opts);
  std::vector<int64_t> out_shape = input.sizes().vec();
  out_shape.back() = d.P;
  Tensor output = at::empty(out_shape, opts);
  Tensor hy = hx.clone(at::MemoryFormat::Contiguous);
  Tensor cy = cx.clone(at::MemoryFormat::Contiguous);
  Tensor cells = need_workspace ? at::empty({s.N, d.H}, opts) : at::empty({0}, opts);
  Tensor r = d.proj ? at::empty({s.B, d.H}, opts) : Tensor();

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnfast_lstm_forward", [&] {
    forward_impl<scalar_t>(
        d, reverse, x.const_data_ptr<scalar_t>(), wih.const_data_ptr<scalar_t>(),
        whh.const_data_ptr<scalar_t>(), has_bias ? bias.const_data_ptr<scalar_t>() : nullptr,
        d.proj ? whr.const_data_ptr<scalar_t>() : nullptr, gates.data_ptr<scalar_t>(),
        output.data_ptr<scalar_t>(), hy.data_ptr<scalar_t>(), cy.data_ptr<scalar_t>(),
        need_workspace ? cells.data_ptr<scalar_t>() : nullptr,
        d.proj ? r.data_ptr<scalar_t>() : nullptr);
  });
  if (!need_workspace) gates = at::empty({0}, opts);
  return {output, hy, cy, gates, cells};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const OptTensor& grad_output, const OptTensor& grad_hy, const OptTensor& grad_cy,
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& w_hr, const Tensor& output, const Tensor& gates,
    const Tensor& cells, const OptTensor& batch_sizes, bool reverse, bool has_bias,
    bool need_grad_input) {
  const char* op = "rnnfast::lstm_backward";
  const LstmDims d =
      check_lstm(op, input, hx, cx, w_ih, w_hh, std::nullopt, std::nullopt, w_hr, batch_sizes);
  const Sequence& s = d.seq;
  const int64_t H = d.H, P = d.P, G = 4 * H;
  TORCH_CHECK(gates.numel() == s.N * G && cells.numel() == s.N * H, op,
              ": the saved workspace is missing or has the wrong size (gates ", gates.sizes(),
              ", cells ", cells.sizes(), "); run lstm_forward with need_workspace=True when a "
              "backward pass will follow");
  std::vector<int64_t> out_shape = input.sizes().vec();
  out_shape.back() = P;
  check_shape(op, "output", output, out_shape);
  const auto opts = input.options();
  auto present = [](const OptTensor& t) { return t.has_value() && t->defined(); };
  if (present(grad_output)) check_shape(op, "grad_output", *grad_output, out_shape);
  if (present(grad_hy)) check_shape(op, "grad_hy", *grad_hy, {s.B, P});
  if (present(grad_cy)) check_shape(op, "grad_cy", *grad_cy, {s.B, H});

  const Tensor x = input.contiguous(), hx_c = hx.contiguous(), cx_c = cx.contiguous();
  const Tensor wih = w_ih.contiguous(), whh = w_hh.contiguous();
  const Tensor whr = d.proj ? w_hr->contiguous() : Tensor();
  const Tensor y = output.contiguous(), g = gates.contiguous(), cl = cells.contiguous();
  const Tensor dy = present(grad_output) ? grad_output->contiguous() : Tensor();

  Tensor dh = present(grad_hy) ? grad_hy->clone(at::MemoryFormat::Contiguous)
                               : at::zeros({s.B, P}, opts);
  Tensor dc = present(grad_cy) ? grad_cy->clone(at::MemoryFormat::Contiguous)
                               : at::zeros({s.B, H}, opts);
  Tensor dgates = at::empty({s.N, G}, opts);
  Tensor hprev = at::empty({s.N, P}, opts);
  Tensor dr = d.proj ? at::empty({s.B, H}, opts) : Tensor();
  Tensor R = d.proj ? at::empty({s.N, H}, opts) : Tensor();
  Tensor DH = d.proj ? at::empty({s.N, P}, opts) : Tensor();
  Tensor dx = need_grad_input ? at::empty(input.sizes(), opts) : at::empty({0}, opts);
  Tensor dw_ih = at::empty({G, d.I}, opts);
  Tensor dw_hh = at::empty({G, P}, opts);
  Tensor db = has_bias ? at::empty({G}, opts) : at::empty({0}, opts);
  Tensor dw_hr = d.proj ? at::empty({P, H}, opts) : at::empty({0}, opts);

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnfast_lstm_backward", [&] {
    using T = scalar_t;
    auto ptr = [](const Tensor& t) -> T* { return t.defined() ? t.data_ptr<T>() : nullptr; };
    backward_impl<T>(d, reverse, dy.defined() ? dy.const_data_ptr<T>() : nullptr,
                     x.const_data_ptr<T>(), hx_c.const_data_ptr<T>(), cx_c.const_data_ptr<T>(),
                     wih.const_data_ptr<T>(), whh.const_data_ptr<T>(),
                     d.proj ? whr.const_data_ptr<T>() : nullptr, y.const_data_ptr<T>(),
                     g.const_data_ptr<T>(), cl.const_data_ptr<T>(), ptr(dgates), ptr(dh), ptr(dc),
                     ptr(dr), ptr(R), ptr(DH), ptr(hprev), need_grad_input ? ptr(dx) : nullptr,
                     ptr(dw_ih), ptr(dw_hh), has_bias ? ptr(db) : nullptr,
                     d.proj ? ptr(dw_hr) : nullptr);
  });
  return {dx, dh, dc, dw_ih, dw_hh, db, dw_hr};
}

}  // namespace cpu
}  // namespace rnnfast
