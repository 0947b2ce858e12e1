// The CUDA backend of the operators (csrc/core/operators.h): its executor of one layer
// in one direction, the baseline algorithm (docs/design.md):
//   forward:  one whole-sequence GEMM for the input projection, then per step one
//             recurrent GEMM and one fused pointwise kernel (rnn_device.cuh);
//   backward: per step (in reverse processing order) one fused pointwise kernel
//             and one GEMM for the recurrent gradient, then whole-sequence GEMMs
//             for the input and weight gradients and cascade column sums for the
//             bias gradients (fixed order: bitwise reproducible, no atomics).
// GEMMs go through ATen (cuBLAS on the current stream on the GPU), through the wrappers
// below, which report each to the emulator's counters (simt::record_gemm).
//
// Both passes have a second algorithm, the persistent kernels (persistent_host.h): the
// process-wide setting (core/cuda_algorithm.h, rnnfast.cuda_algorithm) and each pass's
// plan pick it per layer, forward after the input projection, backward for the per-step
// loop (both algorithms save the same buffers and share the whole-sequence GEMMs).
//
// This file is compiled twice: by nvcc in csrc/cuda/rnn_cuda.cu (namespace
// rnnfast::gpu, CUDA tensors) and by the host compiler in
// csrc/simt/emulated_ops.cpp (namespace rnnfast::simt_emu, CPU tensors, kernels run
// in the SIMT emulator, the test-only extension), so the emulator tests exercise this
// orchestration too: time-step offsets, direction reversal and packed batch sizes.
//
// The including file defines, before including it:
//   RNNFAST_DEVICE_NS          the namespace
//   RNNFAST_LAUNCH_CHECK()     checks the last launch (C10_CUDA_KERNEL_LAUNCH_CHECK)
//   RNNFAST_DEVICE_GUARD_TYPE  a guard constructed from a device that makes it current
//                              for its scope (c10::cuda::OptionalCUDAGuard)
//   RNNFAST_STREAM()           the stream to launch on (the current stream)
//
// State bookkeeping: one state buffer per quantity (h, c; dh, dc in backward),
// updated in place. Step t uses its first bs[t] rows; rows that are not active
// keep their value, which is exactly what packed sequences need in both directions
// (see csrc/core/sequence.h). Backward reads c_{t-1} (LSTM) and h_{t-1} (GRU) from the
// previous step's saved rows, or the initial state for rows that step did not have;
// dW_hh takes h_{t-1} as the output shifted by one step (all rows active), or from a
// gather of per-step device-to-device copies (packed, shrinking batches): nothing is
// copied from the host and nothing synchronises. grad_output is read in place with
// its strides (core::grad_rows).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../core/checks.h"
#include "../core/layer.h"
#include "../kernels/rnn_device.cuh"

namespace rnnfast {
namespace RNNFAST_DEVICE_NS {

using at::Tensor;

// ------------------------------------------------------------------ helpers

inline Tensor rows(const Tensor& t, int64_t first, int64_t count) {
  return t.narrow(0, first, count);
}

// Tensor element type -> kernel element type.
template <typename S>
struct DeviceType {
  using type = S;
};
#if SIMT_HAS_HALF
template <>
struct DeviceType<c10::Half> {
  using type = __half;
};
template <>
struct DeviceType<c10::BFloat16> {
  using type = __nv_bfloat16;
};
#endif

#if SIMT_HAS_HALF
#define RNNFAST_DISPATCH(st, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, st, name, __VA_ARGS__)
#else
#define RNNFAST_DISPATCH(st, name, ...)                                                     \
  do {                                                                                      \
    TORCH_CHECK(st == at::kFloat || st == at::kDouble, name,                                \
                ": this build of the SIMT emulator has no float16/bfloat16 support (CUDA's " \
                "cuda_fp16.h was not found at build time)");                                \
    AT_DISPATCH_FLOATING_TYPES(st, name, __VA_ARGS__);                                      \
  } while (0)
#endif

// The arithmetic dtype of the cell state and saved gates: float for half types.
inline at::ScalarType acc_dtype(at::ScalarType st) {
  return (st == at::kHalf || st == at::kBFloat16) ? at::kFloat : st;
}

template <typename T>
T* dptr(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? reinterpret_cast<T*>(t.data_ptr()) : nullptr;
}

// GEMMs, each reported to the emulator's counters as M x N x K (a no-op on the GPU).
inline void record(const char* what, const Tensor& a, const Tensor& b) {
  simt::record_gemm(what, a.size(0), b.size(1), a.size(1));
}
inline Tensor product(const Tensor& a, const Tensor& b) {
  record("mm", a, b);
  return at::mm(a, b);
}
inline Tensor biased_product(const Tensor& bias, const Tensor& a, const Tensor& b) {
  record("addmm", a, b);
  return at::addmm(bias, a, b);
}
// out = a b
inline void mm_into(Tensor out, const Tensor& a, const Tensor& b) {
  record("mm", a, b);
  at::mm_out(out, a, b);
}
// out = bias + a b
inline void addmm_into(Tensor out, const Tensor& bias, const Tensor& a, const Tensor& b) {
  record("addmm", a, b);
  at::addmm_out(out, bias, a, b);
}
// out += a b
inline void add_mm(Tensor out, const Tensor& a, const Tensor& b) {
  record("addmm", a, b);
  out.addmm_(a, b);
}

inline simt::LaunchConfig pointwise_config(int64_t n, const char* name) {
  simt::LaunchConfig cfg;
  const int64_t blocks = std::max<int64_t>(
      1, std::min<int64_t>((n + kPointwiseThreads - 1) / kPointwiseThreads, 4096));
  cfg.grid = simt::dim3_t(static_cast<unsigned>(blocks));
  cfg.block = simt::dim3_t(kPointwiseThreads);
  cfg.stream = RNNFAST_STREAM();
  cfg.name = name;
  return cfg;
}

// out (cols,) = column sums of x (rows, cols, contiguous) by cascade summation
// (rnn_device.cuh: leaves of kSumLeaf rows, then a pairwise tree), in a fixed order.
inline void column_sum_into(const Tensor& x, const Tensor& out) {
  const int64_t rows = x.size(0), cols = x.size(1);
  if (cols == 0) return;
  if (rows == 0) {
    out.zero_();
    return;
  }
  const auto aopts = x.options().dtype(acc_dtype(x.scalar_type()));
  RNNFAST_DISPATCH(x.scalar_type(), "rnnfast column_sum", [&] {
    using T = typename DeviceType<scalar_t>::type;
    using A = Acc<T>;
    int64_t n = (rows + kSumLeaf - 1) / kSumLeaf;
    Tensor cur = at::empty({n, cols}, aopts);
    simt::launch(column_leaf_sum<T>, pointwise_config(n * cols, "column_leaf_sum"),
                 dptr<const T>(x), rows, cols, dptr<A>(cur));
    RNNFAST_LAUNCH_CHECK();
    for (; n > 1; n = (n + 1) / 2) {
      Tensor next = at::empty({(n + 1) / 2, cols}, aopts);
      simt::launch(column_pair_sum<A, A>, pointwise_config((n + 1) / 2 * cols, "column_pair_sum"),
                   dptr<const A>(cur), n, cols, dptr<A>(next));
      RNNFAST_LAUNCH_CHECK();
      cur = next;
    }
    simt::launch(column_pair_sum<A, T>, pointwise_config(cols, "column_pair_sum"),
                 dptr<const A>(cur), int64_t{1}, cols, dptr<T>(out));
    RNNFAST_LAUNCH_CHECK();
  });
}

// out [K, P] = sum over rows n of dg[n]^T h_{t-1}(n): dW_hh from the gradient rows dg
// [N, K] (any row stride), the output y [N, P] (h_t of every row) and the initial
// state hx [B, P].
inline void prev_rows_product(Tensor out, const Tensor& dg, const Tensor& y, const Tensor& hx,
                              const core::Sequence& s, bool reverse) {
  const int64_t N = s.N, B = s.B;
  if (s.uniform()) {
    // All B rows in every step: h_{t-1} of every step after the first (in processing
    // order) is the output one step over, a contiguous block of rows.
    const int64_t shifted = N - B, first = reverse ? shifted : 0;
    mm_into(out, dg.narrow(0, first, B).t(), hx);
    if (shifted > 0) {
      add_mm(out, dg.narrow(0, reverse ? 0 : B, shifted).t(),
             y.narrow(0, reverse ? B : 0, shifted));
    }
    return;
  }
  Tensor hprev = at::empty({N, y.size(1)}, y.options());
  for (int64_t t = 0; t < s.T; ++t) {
    const int64_t tp = s.prev_of(t, reverse), n_prev = s.rows_with_prev(t, reverse);
    if (n_prev > 0) rows(hprev, s.off[t], n_prev).copy_(rows(y, s.off[tp], n_prev));
    if (s.bs[t] > n_prev) {
      rows(hprev, s.off[t] + n_prev, s.bs[t] - n_prev).copy_(rows(hx, n_prev, s.bs[t] - n_prev));
    }
  }
  mm_into(out, dg.t(), hprev);
}

// A tensor over a buffer of the layer structs (no copy, no ownership).
template <typename T>
Tensor blob(const T* p, at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return at::from_blob(const_cast<T*>(p), sizes, opts);
}

// The input projection of the whole sequence, [N, G*H], with the biases folded in:
// b_ih + b_hh, or b_ih for the GRU, whose b_hh joins the recurrent product.
template <typename T, typename A>
Tensor input_projection(const core::LayerForward<T, A>& a, const at::TensorOptions& opts) {
  const int64_t GH = core::cell_spec(a.kind).gates * a.H;
  const Tensor x = blob(a.x, {a.seq->N, a.I}, opts), w_ih = blob(a.w_ih, {GH, a.I}, opts);
  if (a.b_ih == nullptr) return product(x, w_ih.t());
  const Tensor b_ih = blob(a.b_ih, {GH}, opts);
  return biased_product(
      a.kind == core::CellKind::kGru ? b_ih : b_ih + blob(a.b_hh, {GH}, opts), x, w_ih.t());
}

}  // namespace RNNFAST_DEVICE_NS
}  // namespace rnnfast

#include "persistent_host.h"

namespace rnnfast {
namespace RNNFAST_DEVICE_NS {

// ------------------------------------------------------------------ the backend

struct Backend {
  static constexpr Dtypes kDtypes = kCudaDtypes;
  static at::ScalarType acc_dtype(at::ScalarType st) { return RNNFAST_DEVICE_NS::acc_dtype(st); }
  struct Guard {
    explicit Guard(const Tensor& t) : guard(t.device()) {}
    RNNFAST_DEVICE_GUARD_TYPE guard;
  };
  template <class F>
  static void dispatch(at::ScalarType st, const char*, const F& f) {
    RNNFAST_DISPATCH(st, "rnnfast_cuda", [&] {
      using T = typename DeviceType<scalar_t>::type;
      f.template operator()<T, Acc<T>>();
    });
  }
  template <typename T, typename A>
  static void forward(const core::LayerForward<T, A>& a, const at::TensorOptions& opts);
  template <typename T, typename A>
  static void backward(const core::LayerBackward<T, A>& a, const at::TensorOptions& opts);
};

// Forward: the input projection of the whole sequence as one GEMM (input_projection),
// then the persistent kernel where the algorithm setting picks it (persistent_host.h),
// else per step one recurrent GEMM and one fused pointwise kernel (LSTM with projection:
// and the projection GEMM).
template <typename T, typename A>
void Backend::forward(const core::LayerForward<T, A>& a, const at::TensorOptions& opts) {
  const core::Sequence& s = *a.seq;
  const int64_t N = s.N, B = s.B, H = a.H, P = a.P, GH = core::cell_spec(a.kind).gates * H;
  const bool gru = a.kind == core::CellKind::kGru, lstm = a.kind == core::CellKind::kLstm;
  const bool bias = a.b_ih != nullptr, proj = a.w_hr != nullptr;
  const Tensor gx = input_projection(a, opts);
  if (try_persistent_forward(a, gx, opts)) return;
  const Tensor whh_t = blob(a.w_hh, {GH, P}, opts).t();
  const Tensor y = blob(a.y, {N, P}, opts), h = blob(a.h, {B, P}, opts);
  const Tensor b_hh = gru && bias ? blob(a.b_hh, {GH}, opts) : Tensor();
  const Tensor whr_t = proj ? blob(a.w_hr, {P, H}, opts).t() : Tensor();
  Tensor gh = at::empty({B, GH}, opts);
  Tensor r = proj ? at::empty({B, H}, opts) : Tensor();
  for (int64_t step = 0; step < s.T; ++step) {
    const int64_t t = s.time_at(step, a.reverse), R = s.bs[t], o = s.off[t];
    if (R == 0) continue;
    Tensor ght = rows(gh, 0, R);
    if (b_hh.defined()) {
      addmm_into(ght, b_hh, rows(h, 0, R), whh_t);
    } else {
      mm_into(ght, rows(h, 0, R), whh_t);
    }
    if (lstm) {
      const bool train = a.saved[0] != nullptr;
      const LstmForwardStep<T> p{.R = R,
                                 .H = H,
                                 .gx = dptr<const T>(gx) + o * GH,
                                 .gh = dptr<const T>(gh),
                                 .c = a.c,
                                 .r = proj ? dptr<T>(r) : a.h,
                                 .out = proj ? nullptr : a.y + o * P,
                                 .gates = train ? a.saved[0] + o * GH : nullptr,
                                 .cells = train ? a.saved[1] + o * H : nullptr};
      simt::launch(lstm_forward_step<T>, pointwise_config(R * H, "lstm_forward_step"), p);
      RNNFAST_LAUNCH_CHECK();
      if (proj) {
        Tensor yt = rows(y, o, R);
        mm_into(yt, rows(r, 0, R), whr_t);
        rows(h, 0, R).copy_(yt);
      }
    } else if (gru) {
      const GruForwardStep<T> p{
          .R = R,
          .H = H,
          .gx = dptr<const T>(gx) + o * GH,
          .gh = dptr<const T>(gh),
          .h = a.h,
          .out = a.y + o * H,
          .ws = a.saved[0] != nullptr ? a.saved[0] + o * 4 * H : nullptr};
      simt::launch(gru_forward_step<T>, pointwise_config(R * H, "gru_forward_step"), p);
      RNNFAST_LAUNCH_CHECK();
    } else {
      const RnnForwardStep<T> p{
          .R = R,
          .H = H,
          .gx = dptr<const T>(gx) + o * H,
          .gh = dptr<const T>(gh),
          .h = a.h,
          .out = a.y + o * H};
      const auto cfg = pointwise_config(R * H, "rnn_forward_step");
      if (a.kind == core::CellKind::kRnnRelu) {
        simt::launch(rnn_forward_step<T, true>, cfg, p);
      } else {
        simt::launch(rnn_forward_step<T, false>, cfg, p);
      }
      RNNFAST_LAUNCH_CHECK();
    }
  }
}

// Backward, in the reverse of the forward order: the persistent kernel where the algorithm
// setting picks it (persistent_host.h), else per step one fused pointwise kernel (LSTM
// with projection: after dr = dL/dh W_hr) and the recurrent-gradient GEMM; then dX,
// dW_ih, dW_hh (from shifted output rows), dW_hr as whole-sequence GEMMs and the bias
// gradients as cascade column sums.
template <typename T, typename A>
void Backend::backward(const core::LayerBackward<T, A>& a, const at::TensorOptions& opts) {
  const core::Sequence& s = *a.seq;
  const int64_t N = s.N, B = s.B, H = a.H, P = a.P, GH = core::cell_spec(a.kind).gates * H;
  const bool gru = a.kind == core::CellKind::kGru, lstm = a.kind == core::CellKind::kLstm;
  const bool proj = a.w_hr != nullptr;
  const Tensor x = blob(a.x, {N, a.I}, opts), hx = blob(a.hx, {B, P}, opts);
  const Tensor w_ih = blob(a.w_ih, {GH, a.I}, opts), w_hh = blob(a.w_hh, {GH, P}, opts);
  const Tensor y = blob(a.y, {N, P}, opts), dh = blob(a.dh, {B, P}, opts);
  const Tensor dyv = a.dy != nullptr
                         ? at::from_blob(const_cast<T*>(a.dy), {N, P}, {a.dy_ld, a.dy_cs}, opts)
                         : Tensor();
  // dg: the gate gradients (LSTM gates, GRU input side, RNN pre-activation), [N, G*H];
  // GRU dgh: the n gate's recurrent-side gradient, [N, H] (its r and z parts equal dg's).
  Tensor dg = at::empty({N, GH}, opts);
  Tensor dgh = gru ? at::empty({N, H}, opts) : Tensor();
  Tensor DR = proj ? at::empty({N, P}, opts) : Tensor();  // dL/d(projected output), all rows
  Tensor Rr = proj ? at::empty({N, H}, opts) : Tensor();  // r = o * tanh(c), all rows
  const Tensor w_rz = gru ? w_hh.narrow(0, 0, 2 * H) : Tensor();
  const Tensor w_n = gru ? w_hh.narrow(0, 2 * H, H) : Tensor();
  const Tensor w_hr = proj ? blob(a.w_hr, {P, H}, opts) : Tensor();
  // The output gradient's rows of a step, read in place with its strides, or nullptr.
  const auto dout = [&](int64_t o) { return a.dy != nullptr ? a.dy + o * a.dy_ld : nullptr; };
  if (!try_persistent_backward(a, dg, dgh, DR, Rr, opts)) {
    const Tensor dr = proj ? at::empty({B, H}, opts) : Tensor();  // dL/dr of a step's rows
    for (int64_t step = s.T - 1; step >= 0; --step) {
      const int64_t t = s.time_at(step, a.reverse), R = s.bs[t], o = s.off[t];
      if (R == 0) continue;
      const int64_t tp = s.prev_of(t, a.reverse), n_prev = s.rows_with_prev(t, a.reverse);
      if (lstm) {
        LstmBackwardStep<T> p;
        p.R = R;
        p.H = H;
        if (proj) {
          Tensor drt = rows(DR, o, R);
          if (dyv.defined()) {
            at::add_out(drt, rows(dh, 0, R), rows(dyv, o, R));
          } else {
            drt.copy_(rows(dh, 0, R));
          }
          mm_into(rows(dr, 0, R), drt, w_hr);
          p.dr = dptr<const T>(dr);
          p.r = dptr<T>(Rr) + o * H;
        } else {
          p.dr = a.dh;
          p.dout = dout(o);
          p.dout_ld = a.dy_ld;
          p.dout_cs = a.dy_cs;
        }
        p.gates = a.saved[0] + o * GH;
        p.cells = a.saved[1] + o * H;
        p.cprev = n_prev > 0 ? a.saved[1] + s.off[tp] * H : nullptr;
        p.cinit = a.cx;
        p.n_prev = n_prev;
        p.dc = a.dc;
        p.dgates = dptr<T>(dg) + o * GH;
        simt::launch(lstm_backward_step<T>, pointwise_config(R * H, "lstm_backward_step"), p);
        RNNFAST_LAUNCH_CHECK();
        mm_into(rows(dh, 0, R), rows(dg, o, R), w_hh);
      } else if (gru) {
        const GruBackwardStep<T> p{
            .R = R,
            .H = H,
            .ws = a.saved[0] + o * 4 * H,
            .hprev = n_prev > 0 ? a.y + s.off[tp] * H : nullptr,
            .hinit = a.hx,
            .n_prev = n_prev,
            .dh = a.dh,
            .dout = dout(o),
            .dout_ld = a.dy_ld,
            .dout_cs = a.dy_cs,
            .dgx = dptr<T>(dg) + o * GH,
            .dgh = dptr<T>(dgh) + o * H};
        simt::launch(gru_backward_step<T>, pointwise_config(R * H, "gru_backward_step"), p);
        RNNFAST_LAUNCH_CHECK();
        // dL/dh_{t-1} = z * dL/dh_t (left in dh by the kernel) + dGh_t W_hh.
        Tensor dht = rows(dh, 0, R);
        add_mm(dht, rows(dg, o, R).narrow(1, 0, 2 * H), w_rz);
        add_mm(dht, rows(dgh, o, R), w_n);
      } else {
        const RnnBackwardStep<T> p{
            .R = R,
            .H = H,
            .h = a.y + o * H,
            .dh = a.dh,
            .dout = dout(o),
            .dout_ld = a.dy_ld,
            .dout_cs = a.dy_cs,
            .dpre = dptr<T>(dg) + o * H};
        const auto cfg = pointwise_config(R * H, "rnn_backward_step");
        if (a.kind == core::CellKind::kRnnRelu) {
          simt::launch(rnn_backward_step<T, true>, cfg, p);
        } else {
          simt::launch(rnn_backward_step<T, false>, cfg, p);
        }
        RNNFAST_LAUNCH_CHECK();
        mm_into(rows(dh, 0, R), rows(dg, o, R), w_hh);
      }
    }
  }
  if (a.dx != nullptr) mm_into(blob(a.dx, {N, a.I}, opts), dg, w_ih);
  mm_into(blob(a.dw_ih, {GH, a.I}, opts), dg.t(), x);
  const Tensor dw_hh = blob(a.dw_hh, {GH, P}, opts);
  if (gru) {
    prev_rows_product(dw_hh.narrow(0, 0, 2 * H), dg.narrow(1, 0, 2 * H), y, hx, s, a.reverse);
    prev_rows_product(dw_hh.narrow(0, 2 * H, H), dgh, y, hx, s, a.reverse);
  } else {
    prev_rows_product(dw_hh, dg, y, hx, s, a.reverse);
  }
  if (a.db_ih != nullptr) {
    const Tensor db_ih = blob(a.db_ih, {GH}, opts);
    column_sum_into(dg, db_ih);
    if (a.db_hh != nullptr) {  // GRU: the r and z parts equal b_ih's
      const Tensor db_hh = blob(a.db_hh, {GH}, opts);
      db_hh.narrow(0, 0, 2 * H).copy_(db_ih.narrow(0, 0, 2 * H));
      column_sum_into(dgh, db_hh.narrow(0, 2 * H, H));
    }
  }
  if (proj) mm_into(blob(a.dw_hr, {P, H}, opts), DR.t(), Rr);
}

}  // namespace RNNFAST_DEVICE_NS
}  // namespace rnnfast
