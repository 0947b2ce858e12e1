// The CUDA executor of the option operators (csrc/core/options.h: layer normalisation,
// zoneout, recurrent dropout), the baseline structure of rnn_host.h:
//   forward:  the input projection of the whole sequence as one GEMM (then, with layer
//             normalisation, one row kernel normalises it and adds the biases); per step
//             one recurrent GEMM (on h_{t-1} times the recurrent mask) and one fused row
//             kernel (LN of the product, gates, cell, LN of the cell, zoneout); with a
//             projection the projection GEMM and an elementwise zoneout kernel after it;
//   backward: per step (in reverse processing order) one fused row kernel (zoneout,
//             gates, both LNs' backward; with a projection an elementwise zoneout kernel
//             and the projection's GEMM before it) and the recurrent-gradient GEMM; then
//             the whole-sequence GEMMs, the input LN's backward (one row kernel) and the
//             bias and LN-weight gradients as cascade column sums (fixed order).
// Included by rnn_cuda.cu and emulated_ops.cpp after rnn_host.h (same namespace and
// macros); the kernels are csrc/kernels/options_device.cuh.
#pragma once

#include "../core/options.h"
#include "../kernels/options_device.cuh"
#include "rnn_host.h"

namespace rnnfast {
namespace RNNFAST_DEVICE_NS {

// The option kernels access global memory directly: the emulator does not count their bytes.
inline simt::LaunchConfig uncounted(simt::LaunchConfig cfg) {
  cfg.counted = false;
  return cfg;
}

inline simt::LaunchConfig row_config(int64_t rows, int64_t cols, size_t elem, const char* name) {
  simt::LaunchConfig cfg;
  cfg.grid = simt::dim3_t(static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(rows, 65535))));
  cfg.block = simt::dim3_t(static_cast<unsigned>(row_threads(cols)));
  cfg.smem = kRowSharedSlots * elem;
  cfg.stream = RNNFAST_STREAM();
  cfg.name = name;
  return uncounted(cfg);
}

struct OptionsExec {
  static constexpr Dtypes kDtypes = kCudaDtypes;
  using Guard = RNNFAST_DEVICE_GUARD_TYPE;

  template <typename T>
  static void forward(const core::OptionForward<T>& a);
  template <typename T>
  static void backward(const core::OptionBackward<T>& a);
};

inline const bool* mask_at(const Tensor& m, int64_t offset) {
  return m.defined() && m.numel() > 0 ? m.data_ptr<bool>() + offset : nullptr;
}

template <typename T>
void OptionsExec::forward(const core::OptionForward<T>& a) {
  const core::OptionArgs& p = *a.p;
  const core::Sequence& s = p.d.seq;
  const bool lstm = a.lstm, ln = p.ln(), proj = p.w_hr.defined();
  const int64_t N = s.N, B = s.B, H = p.d.H, P = p.d.P, GH = (lstm ? 4 : 3) * H;
  const core::OptionLayout lay{lstm, ln, H};
  const auto opts = p.x.options();
  const Tensor x = p.x.reshape({N, p.d.I});
  const Tensor y = blob(a.y, {N, P}, opts), h = blob(a.h, {B, P}, opts);
  // The input side of every row.
  Tensor gx;
  if (ln) {
    gx = product(x, p.w_ih.t());
    const OptionInputRows<T> k{.N = N,
                               .GH = GH,
                               .v = gx.data_ptr<T>(),
                               .gamma = dptr<const T>(p.ln_ih),
                               .b1 = dptr<const T>(p.b_ih),
                               .b2 = lstm ? dptr<const T>(p.b_hh) : nullptr,
                               .xhat = a.ws != nullptr ? a.ws + lay.xhat_ih_col() : nullptr,
                               .rstd = a.ws != nullptr ? a.ws + lay.rstd_ih_col() : nullptr,
                               .ld = lay.cols()};
    simt::launch(option_input_rows<T>, row_config(N, GH, sizeof(T), "option_input_rows"), k);
    RNNFAST_LAUNCH_CHECK();
  } else if (p.b_ih.defined()) {
    gx = biased_product(lstm ? p.b_ih + p.b_hh : p.b_ih, x, p.w_ih.t());
  } else {
    gx = product(x, p.w_ih.t());
  }
  const Tensor whh_t = p.w_hh.t();
  const Tensor whr_t = proj ? p.w_hr.t() : Tensor();
  const bool rec = p.rec.defined();
  Tensor hm = rec ? h * p.rec : Tensor();  // h_{t-1} times the recurrent mask
  const Tensor& hin = rec ? hm : h;
  Tensor gh = at::empty({B, GH}, opts);
  Tensor cn = lstm ? at::empty({B, H}, opts) : Tensor();
  Tensor r = proj ? at::empty({B, H}, opts) : Tensor();
  for (int64_t step = 0; step < s.T; ++step) {
    const int64_t t = s.time_at(step, a.reverse), R = s.bs[t], o = s.off[t];
    if (R == 0) continue;
    mm_into(rows(gh, 0, R), rows(hin, 0, R), whh_t);
    T* const ws = a.ws != nullptr ? a.ws + o * lay.cols() : nullptr;
    const bool* const zh = mask_at(p.zh, t * B * P);
    if (lstm) {
      const LstmOptionsForwardStep<T> k{.R = R,
                                        .H = H,
                                        .gx = gx.data_ptr<T>() + o * GH,
                                        .gh = gh.data_ptr<T>(),
                                        .ln_hh = dptr<const T>(p.ln_hh),
                                        .ln_c = dptr<const T>(p.ln_c),
                                        .ln_c_b = dptr<const T>(p.ln_c_b),
                                        .c = a.c,
                                        .zc = mask_at(p.zc, t * B * H),
                                        .zh = proj ? nullptr : zh,
                                        .zp = a.zp,
                                        .cn = cn.data_ptr<T>(),
                                        .r = proj ? r.data_ptr<T>() : nullptr,
                                        .h = proj ? nullptr : a.h,
                                        .y = proj ? nullptr : a.y + o * P,
                                        .hm = proj || !rec ? nullptr : hm.data_ptr<T>(),
                                        .rec = dptr<const T>(p.rec),
                                        .ws = ws,
                                        .ws_ld = lay.cols(),
                                        .cells = a.cells != nullptr ? a.cells + o * H : nullptr};
      simt::launch(lstm_options_forward_step<T>,
                   row_config(R, GH, sizeof(T), "lstm_options_forward_step"), k);
      RNNFAST_LAUNCH_CHECK();
      if (proj) {
        mm_into(rows(y, o, R), rows(r, 0, R), whr_t);
        const ZoneoutRows<T> z{.R = R,
                               .P = P,
                               .h = a.h,
                               .y = a.y + o * P,
                               .zh = zh,
                               .zp = a.zp,
                               .hm = rec ? hm.data_ptr<T>() : nullptr,
                               .rec = dptr<const T>(p.rec)};
        simt::launch(zoneout_rows<T>, uncounted(pointwise_config(R * P, "zoneout_rows")), z);
        RNNFAST_LAUNCH_CHECK();
      }
    } else {
      const GruOptionsForwardStep<T> k{.R = R,
                                       .H = H,
                                       .gx = gx.data_ptr<T>() + o * GH,
                                       .gh = gh.data_ptr<T>(),
                                       .ln_hh = dptr<const T>(p.ln_hh),
                                       .b_hh = dptr<const T>(p.b_hh),
                                       .h = a.h,
                                       .zh = zh,
                                       .zp = a.zp,
                                       .y = a.y + o * H,
                                       .hm = rec ? hm.data_ptr<T>() : nullptr,
                                       .rec = dptr<const T>(p.rec),
                                       .ws = ws,
                                       .ws_ld = lay.cols()};
      simt::launch(gru_options_forward_step<T>,
                   row_config(R, GH, sizeof(T), "gru_options_forward_step"), k);
      RNNFAST_LAUNCH_CHECK();
    }
  }
}

template <typename T>
void OptionsExec::backward(const core::OptionBackward<T>& a) {
  const core::OptionArgs& p = *a.p;
  const core::Sequence& s = p.d.seq;
  const bool lstm = a.lstm, ln = p.ln(), proj = p.w_hr.defined(), rec = p.rec.defined();
  const int64_t N = s.N, B = s.B, H = p.d.H, P = p.d.P, GH = (lstm ? 4 : 3) * H;
  const core::OptionLayout lay{lstm, ln, H};
  const int64_t ld = lay.cols();
  const auto opts = p.x.options();
  const Tensor x = p.x.reshape({N, p.d.I});
  const Tensor ws = blob(a.ws, {N, ld}, opts), y = blob(a.y, {N, P}, opts);
  const Tensor hx = blob(a.hx, {B, P}, opts), dh = blob(a.dh, {B, P}, opts);
  // dgx: dL/d(input side after LN) = the bias gradient rows; dgh: dL/d(recurrent side after
  // LN) (the LSTM's is dgx); dhg: dL/d(raw recurrent product) (dgh itself without LN).
  Tensor dgx = at::empty({N, GH}, opts);
  Tensor dgh = lstm ? dgx : at::empty({N, GH}, opts);
  Tensor dhg = ln ? at::empty({N, GH}, opts) : dgh;
  Tensor dchat = lstm && ln ? at::empty({N, H}, opts) : Tensor();
  Tensor DH = proj ? at::empty({N, P}, opts) : Tensor();  // dL/dh~_t, all rows
  Tensor Rr = proj ? at::empty({N, H}, opts) : Tensor();  // r = o tanh(LN c~), all rows
  Tensor dr = proj ? at::empty({B, H}, opts) : Tensor();
  Tensor dct = lstm ? at::empty({B, H}, opts) : Tensor();
  Tensor prod = rec ? at::empty({B, P}, opts) : Tensor();
  for (int64_t step = s.T - 1; step >= 0; --step) {
    const int64_t t = s.time_at(step, a.reverse), R = s.bs[t], o = s.off[t];
    if (R == 0) continue;
    const int64_t tp = s.prev_of(t, a.reverse), n_prev = s.rows_with_prev(t, a.reverse);
    const bool* const zh = mask_at(p.zh, t * B * P);
    const T* const dy = a.dy != nullptr ? a.dy + o * P : nullptr;
    if (lstm) {
      if (proj) {
        const UnzoneRows<T> u{.R = R,
                              .P = P,
                              .dh = a.dh,
                              .dy = dy,
                              .zh = zh,
                              .zp = a.zp,
                              .dt = DH.data_ptr<T>() + o * P};
        simt::launch(unzone_rows<T>, uncounted(pointwise_config(R * P, "unzone_rows")), u);
        RNNFAST_LAUNCH_CHECK();
        mm_into(rows(dr, 0, R), rows(DH, o, R), p.w_hr);
      }
      const LstmOptionsBackwardStep<T> k{
          .R = R,
          .H = H,
          .ws = a.ws + o * ld,
          .ws_ld = ld,
          .ln_hh = dptr<const T>(p.ln_hh),
          .ln_c = dptr<const T>(p.ln_c),
          .ln_c_b = dptr<const T>(p.ln_c_b),
          .cprev = n_prev > 0 ? a.cells + s.off[tp] * H : nullptr,
          .cinit = a.cx,
          .n_prev = n_prev,
          .dr = proj ? dr.data_ptr<T>() : nullptr,
          .dh = proj ? nullptr : a.dh,
          .dy = proj ? nullptr : dy,
          .zh = proj ? nullptr : zh,
          .dc = a.dc,
          .zc = mask_at(p.zc, t * B * H),
          .zp = a.zp,
          .dg = dgx.data_ptr<T>() + o * GH,
          .dhg = ln ? dhg.data_ptr<T>() + o * GH : nullptr,
          .dchat = ln ? dchat.data_ptr<T>() + o * H : nullptr,
          .r = proj ? Rr.data_ptr<T>() + o * H : nullptr,
          .dct = dct.data_ptr<T>()};
      simt::launch(lstm_options_backward_step<T>,
                   row_config(R, GH, sizeof(T), "lstm_options_backward_step"), k);
    } else {
      const GruOptionsBackwardStep<T> k{.R = R,
                                        .H = H,
                                        .ws = a.ws + o * ld,
                                        .ws_ld = ld,
                                        .ln_hh = dptr<const T>(p.ln_hh),
                                        .hprev = n_prev > 0 ? a.y + s.off[tp] * H : nullptr,
                                        .hinit = a.hx,
                                        .n_prev = n_prev,
                                        .dh = a.dh,
                                        .dy = dy,
                                        .zh = zh,
                                        .zp = a.zp,
                                        .dgx = dgx.data_ptr<T>() + o * GH,
                                        .dgh = dgh.data_ptr<T>() + o * GH,
                                        .dhg = ln ? dhg.data_ptr<T>() + o * GH : nullptr};
      simt::launch(gru_options_backward_step<T>,
                   row_config(R, GH, sizeof(T), "gru_options_backward_step"), k);
    }
    RNNFAST_LAUNCH_CHECK();
    // dL/dh_{t-1} += (dG W_hh) times the recurrent mask.
    Tensor dht = rows(dh, 0, R);
    if (rec) {
      mm_into(rows(prod, 0, R), rows(dhg, o, R), p.w_hh);
      dht.addcmul_(rows(prod, 0, R), rows(p.rec, 0, R));
    } else {
      add_mm(dht, rows(dhg, o, R), p.w_hh);
    }
  }
  // dW_hh from h_{t-1} of every row as the recurrent product saw it: without a mask the
  // baseline's product over the shifted output rows; with one, gathered and masked rows.
  const Tensor dw_hh = blob(a.dw_hh, {GH, P}, opts);
  if (!rec) {
    prev_rows_product(dw_hh, dhg, y, hx, s, a.reverse);
  } else {
    Tensor hprev = at::empty({N, P}, opts);
    for (int64_t t = 0; t < s.T; ++t) {
      const int64_t tp = s.prev_of(t, a.reverse), n_prev = s.rows_with_prev(t, a.reverse);
      if (n_prev > 0) rows(hprev, s.off[t], n_prev).copy_(rows(y, s.off[tp], n_prev));
      if (s.bs[t] > n_prev) {
        rows(hprev, s.off[t] + n_prev, s.bs[t] - n_prev).copy_(rows(hx, n_prev, s.bs[t] - n_prev));
      }
      if (s.bs[t] > 0) rows(hprev, s.off[t], s.bs[t]).mul_(rows(p.rec, 0, s.bs[t]));
    }
    mm_into(dw_hh, dhg.t(), hprev);
  }
  if (a.db_ih != nullptr) column_sum_into(dgx, blob(a.db_ih, {GH}, opts));
  if (a.db_hh != nullptr) column_sum_into(dgh, blob(a.db_hh, {GH}, opts));
  if (ln) {
    column_sum_into(dgx * ws.narrow(1, lay.xhat_ih_col(), GH), blob(a.dln_ih, {GH}, opts));
    column_sum_into(dgh * ws.narrow(1, lay.xhat_hh_col(), GH), blob(a.dln_hh, {GH}, opts));
    if (lstm) {
      column_sum_into(dchat * ws.narrow(1, 4 * H, H), blob(a.dln_c, {H}, opts));
      column_sum_into(dchat, blob(a.dln_c_b, {H}, opts));
    }
    // The input side's LN backward, in place: dgx becomes dL/d(X W_ih^T).
    const OptionInputRowsBackward<T> k{.N = N,
                                       .GH = GH,
                                       .dv = dgx.data_ptr<T>(),
                                       .gamma = dptr<const T>(p.ln_ih),
                                       .xhat = a.ws + lay.xhat_ih_col(),
                                       .rstd = a.ws + lay.rstd_ih_col(),
                                       .ld = ld};
    simt::launch(option_input_rows_backward<T>,
                 row_config(N, GH, sizeof(T), "option_input_rows_backward"), k);
    RNNFAST_LAUNCH_CHECK();
  }
  mm_into(blob(a.dw_ih, {GH, p.d.I}, opts), dgx.t(), x);
  if (a.dx != nullptr) mm_into(blob(a.dx, {N, p.d.I}, opts), dgx, p.w_ih);
  if (proj) mm_into(blob(a.dw_hr, {P, H}, opts), DH.t(), Rr);
}

}  // namespace RNNFAST_DEVICE_NS
}  // namespace rnnfast
