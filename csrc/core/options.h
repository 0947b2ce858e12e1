// The operators of the layers with options beyond torch.nn (layer normalisation, zoneout,
// recurrent dropout): their schemas, argument checks and the layout of what forward saves,
// shared by the CPU backend (csrc/cpu/options_layer.cpp) and the CUDA one
// (csrc/cuda/options_host.h, also run in the SIMT emulator), so that both read the same
// arguments, give the same errors and save the same workspace.
//
// Legend: T steps, B batch, N rows (sum of the batch sizes), I input, H hidden, P output
// size (proj_size or H), G gates (LSTM 4: i, f, g, o; GRU 3: r, z, n).
//
// Saved per row (the workspace, [N, cols]):
//   LSTM: [0, 4H) i, f, g, o (activated); [4H, 5H) c~_t (the new cell before zoneout), or
//         with layer_norm its normalised value (c~ - mean) * rstd; with layer_norm also
//         [5H, 9H) the normalised recurrent product, [9H, 13H) the normalised input
//         product, and rstd of those three at 13H, 13H + 1, 13H + 2.
//   GRU:  [0, 3H) r, z, n; [3H, 4H) the n gate's recurrent side (after LN, with b_hn);
//         with layer_norm [4H, 7H) the normalised recurrent product, [7H, 10H) the
//         normalised input product, rstd of those two at 10H, 10H + 1.
// The LSTM also saves c_t (after zoneout) per row (`cells`, [N, H]); the output is h_t.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "checks.h"
#include "operators.h"

namespace rnnfast {
namespace core {

inline constexpr const char* kOptionSchemas[] = {
    "lstm_options_forward(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, "
    "Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, Tensor? ln_ih, Tensor? ln_hh, Tensor? ln_c, "
    "Tensor? ln_c_bias, Tensor? recurrent_mask, Tensor? zoneout_h, Tensor? zoneout_c, "
    "float zoneout, Tensor? batch_sizes, bool reverse, bool need_workspace) -> (Tensor output, "
    "Tensor hy, Tensor cy, Tensor workspace, Tensor cells)",
    "lstm_options_backward(Tensor? grad_output, Tensor? grad_hy, Tensor? grad_cy, Tensor input, "
    "Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? w_hr, Tensor? ln_ih, Tensor? ln_hh, "
    "Tensor? ln_c, Tensor? ln_c_bias, Tensor? recurrent_mask, Tensor? zoneout_h, "
    "Tensor? zoneout_c, float zoneout, Tensor output, Tensor workspace, Tensor cells, "
    "Tensor? batch_sizes, bool reverse, bool has_bias, bool need_grad_input) -> Tensor[]",
    "gru_options_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
    "Tensor? b_hh, Tensor? ln_ih, Tensor? ln_hh, Tensor? recurrent_mask, Tensor? zoneout_h, "
    "float zoneout, Tensor? batch_sizes, bool reverse, bool need_workspace) -> (Tensor output, "
    "Tensor hy, Tensor workspace)",
    "gru_options_backward(Tensor? grad_output, Tensor? grad_hy, Tensor input, Tensor hx, "
    "Tensor w_ih, Tensor w_hh, Tensor? ln_ih, Tensor? ln_hh, Tensor? recurrent_mask, "
    "Tensor? zoneout_h, float zoneout, Tensor output, Tensor workspace, Tensor? batch_sizes, "
    "bool reverse, bool has_bias, bool need_grad_input) -> Tensor[]",
};

// Columns of the workspace and where its parts start (the layout above).
struct OptionLayout {
  bool lstm = true, ln = false;
  int64_t H = 0;
  int64_t G() const { return lstm ? 4 : 3; }
  int64_t cols() const {
    if (lstm) return ln ? 13 * H + 3 : 5 * H;
    return ln ? 10 * H + 2 : 4 * H;
  }
  int64_t xhat_hh_col() const { return lstm ? 5 * H : 4 * H; }   // normalised W_hh product
  int64_t xhat_ih_col() const { return lstm ? 9 * H : 7 * H; }   // normalised W_ih product
  int64_t rstd_hh_col() const { return lstm ? 13 * H : 10 * H; }
  int64_t rstd_ih_col() const { return lstm ? 13 * H + 1 : 10 * H + 1; }
  int64_t rstd_c_col() const { return 13 * H + 2; }               // LSTM: the cell LN's
};

// The arguments of an option operator, checked, contiguous, in the input's dtype (masks
// as bool); absent ones undefined.
struct OptionArgs {
  Dims d;
  at::Tensor x, w_ih, w_hh, b_ih, b_hh, w_hr, ln_ih, ln_hh, ln_c, ln_c_b, rec, zh, zc;
  bool ln() const { return ln_hh.defined(); }
};

inline at::Tensor contiguous_as(const OptTensor& t, const at::TensorOptions& opts) {
  if (!present(t)) return at::Tensor();
  return t->to(opts).contiguous();
}

inline at::Tensor mask_of(const char* op, const char* name, const OptTensor& t,
                          at::IntArrayRef shape) {
  if (!present(t)) return at::Tensor();
  TORCH_CHECK(t->sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ",
              t->sizes());
  return t->to(at::kBool).contiguous();
}

inline void check_zoneout(const char* op, double zoneout) {
  TORCH_CHECK(zoneout >= 0.0 && zoneout < 1.0, op,
              ": zoneout probability has to be between 0 and 1 (1 excluded), but got ", zoneout);
}

// The option operators run float32 and float64 (rnnfast/ops.py runs the half types on
// float32 copies).
inline OptionArgs parse_options(const char* op, Dtypes dtypes, bool lstm, const at::Tensor& input,
                                const at::Tensor& hx, const at::Tensor* cx,
                                const at::Tensor& w_ih, const at::Tensor& w_hh,
                                const OptTensor& b_ih, const OptTensor& b_hh,
                                const OptTensor& w_hr, const OptTensor& ln_ih,
                                const OptTensor& ln_hh, const OptTensor& ln_c,
                                const OptTensor& ln_c_b, const OptTensor& rec,
                                const OptTensor& zh, const OptTensor& zc,
                                const OptTensor& batch_sizes) {
  OptionArgs p;
  const int64_t G = lstm ? 4 : 3;
  p.d = check_layer(op, dtypes, G, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes);
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
              ": float32 or float64 tensors expected, got ", input.scalar_type());
  const auto opts = input.options();
  const int64_t H = p.d.H, P = p.d.P, B = p.d.seq.B, T = p.d.seq.T;
  p.x = input.contiguous();
  p.w_ih = w_ih.contiguous();
  p.w_hh = w_hh.contiguous();
  p.b_ih = contiguous_as(b_ih, opts);
  p.b_hh = contiguous_as(b_hh, opts);
  p.w_hr = contiguous_as(w_hr, opts);
  const bool ln = present(ln_ih) || present(ln_hh);
  if (ln) {
    TORCH_CHECK(present(ln_ih) && present(ln_hh) && (!lstm || (present(ln_c) && present(ln_c_b))),
                op, ": layer normalisation needs all its weights (ln_ih, ln_hh",
                lstm ? ", ln_c, ln_c_bias)" : ")");
    check_shape(op, "ln_ih", *ln_ih, {G * H});
    check_shape(op, "ln_hh", *ln_hh, {G * H});
    p.ln_ih = contiguous_as(ln_ih, opts);
    p.ln_hh = contiguous_as(ln_hh, opts);
    if (lstm) {
      check_shape(op, "ln_c", *ln_c, {H});
      check_shape(op, "ln_c_bias", *ln_c_b, {H});
      p.ln_c = contiguous_as(ln_c, opts);
      p.ln_c_b = contiguous_as(ln_c_b, opts);
    }
  }
  if (present(rec)) {
    check_shape(op, "recurrent_mask", *rec, {B, P});
    p.rec = contiguous_as(rec, opts);
  }
  p.zh = mask_of(op, "zoneout_h", zh, {T, B, P});
  if (lstm) p.zc = mask_of(op, "zoneout_c", zc, {T, B, H});
  return p;
}

inline void check_saved(const char* op, const at::Tensor& ws, int64_t N, int64_t cols) {
  TORCH_CHECK(ws.dim() == 2 && ws.size(0) == N && ws.size(1) == cols, op,
              ": the workspace does not match the layer (was forward run with need_workspace=True "
              "and the same options?); expected [", N, ", ", cols, "], got ", ws.sizes());
}

// grad_output as contiguous rows [N, P], or undefined.
inline at::Tensor grad_output_rows(const OptTensor& g, int64_t N, int64_t P) {
  if (!present(g)) return at::Tensor();
  return g->contiguous().reshape({N, P});
}

// What a backend's executor gets: pointers to contiguous storage in the input's dtype T
// (absent ones nullptr), the arguments (p) for the rest.
template <typename T>
struct OptionForward {
  const OptionArgs* p;
  bool lstm, reverse;
  T zp;        // evaluation zoneout probability (where there is no mask)
  T* y;        // [N, P] out
  T* h;        // [B, P] in h_0, out h_n
  T* c;        // [B, H] LSTM: in c_0, out c_n
  T* ws;       // [N, OptionLayout::cols()] out, or nullptr (inference)
  T* cells;    // [N, H] LSTM out: c_t, or nullptr
};

template <typename T>
struct OptionBackward {
  const OptionArgs* p;
  bool lstm, reverse;
  T zp;
  const T* y;      // [N, P] the forward's output
  const T* ws;     // [N, cols] and LSTM cells [N, H]: what forward saved
  const T* cells;
  const T* hx;     // [B, P], LSTM cx [B, H]: the initial states
  const T* cx;
  const T* dy;     // [N, P] or nullptr
  T* dh;           // [B, P] in dL/dh_n, out dL/dh_0; LSTM dc [B, H] likewise
  T* dc;
  T* dx;           // [N, I] or nullptr
  T* dw_ih;        // [G*H, I], dw_hh [G*H, P]
  T* dw_hh;
  T* db_ih;        // [G*H] (LSTM: the one bias gradient), GRU db_hh; nullptr without bias
  T* db_hh;
  T* dw_hr;        // [P, H] or nullptr
  T* dln_ih;       // [G*H] each, and LSTM dln_c, dln_c_b [H]; nullptr without LN
  T* dln_hh;
  T* dln_c;
  T* dln_c_b;
};

// The four operators over an executor Exec, which has
//   static constexpr Dtypes kDtypes;
//   struct Guard { explicit Guard(at::Device); };
//   template <typename T> static void forward(const OptionForward<T>&);
//   template <typename T> static void backward(const OptionBackward<T>&);
template <class Exec>
struct OptionOperators {
  using Tensor = at::Tensor;

  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_options_forward(
      const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
      const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
      const OptTensor& ln_ih, const OptTensor& ln_hh, const OptTensor& ln_c,
      const OptTensor& ln_c_b, const OptTensor& rec, const OptTensor& zh, const OptTensor& zc,
      double zoneout, const OptTensor& batch_sizes, bool reverse, bool need_workspace) {
    const char* op = "rnnfast::lstm_options_forward";
    check_zoneout(op, zoneout);
    const OptionArgs p = parse_options(op, Exec::kDtypes, true, input, hx, &cx, w_ih, w_hh, b_ih,
                                       b_hh, w_hr, ln_ih, ln_hh, ln_c, ln_c_b, rec, zh, zc,
                                       batch_sizes);
    const typename Exec::Guard guard(input.device());
    const auto opts = input.options();
    const int64_t N = p.d.seq.N, H = p.d.H, P = p.d.P;
    Tensor output = at::empty(output_shape(input, P), opts);
    Tensor hy = hx.contiguous().clone(), cy = cx.contiguous().clone();
    const int64_t cols = OptionLayout{true, p.ln(), H}.cols();
    Tensor ws = need_workspace ? at::empty({N, cols}, opts) : empty0(opts);
    Tensor cells = need_workspace ? at::empty({N, H}, opts) : empty0(opts);
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_options_forward", [&] {
      Exec::template forward<scalar_t>(OptionForward<scalar_t>{
          &p, true, reverse, static_cast<scalar_t>(zoneout), output.data_ptr<scalar_t>(),
          hy.data_ptr<scalar_t>(), cy.data_ptr<scalar_t>(), ptr<scalar_t>(ws),
          ptr<scalar_t>(cells)});
    });
    return {output, hy, cy, ws, cells};
  }

  static std::tuple<Tensor, Tensor, Tensor> gru_options_forward(
      const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
      const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& ln_ih,
      const OptTensor& ln_hh, const OptTensor& rec, const OptTensor& zh, double zoneout,
      const OptTensor& batch_sizes, bool reverse, bool need_workspace) {
    const char* op = "rnnfast::gru_options_forward";
    check_zoneout(op, zoneout);
    const OptionArgs p = parse_options(op, Exec::kDtypes, false, input, hx, nullptr, w_ih, w_hh,
                                       b_ih, b_hh, std::nullopt, ln_ih, ln_hh, std::nullopt,
                                       std::nullopt, rec, zh, std::nullopt, batch_sizes);
    const typename Exec::Guard guard(input.device());
    const auto opts = input.options();
    const int64_t N = p.d.seq.N, H = p.d.H;
    Tensor output = at::empty(output_shape(input, H), opts);
    Tensor hy = hx.contiguous().clone();
    const int64_t cols = OptionLayout{false, p.ln(), H}.cols();
    Tensor ws = need_workspace ? at::empty({N, cols}, opts) : empty0(opts);
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "gru_options_forward", [&] {
      Exec::template forward<scalar_t>(OptionForward<scalar_t>{
          &p, false, reverse, static_cast<scalar_t>(zoneout), output.data_ptr<scalar_t>(),
          hy.data_ptr<scalar_t>(), nullptr, ptr<scalar_t>(ws), nullptr});
    });
    return {output, hy, ws};
  }

  static std::vector<Tensor> lstm_options_backward(
      const OptTensor& grad_output, const OptTensor& grad_hy, const OptTensor& grad_cy,
      const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
      const Tensor& w_hh, const OptTensor& w_hr, const OptTensor& ln_ih, const OptTensor& ln_hh,
      const OptTensor& ln_c, const OptTensor& ln_c_b, const OptTensor& rec, const OptTensor& zh,
      const OptTensor& zc, double zoneout, const Tensor& output, const Tensor& workspace,
      const Tensor& cells, const OptTensor& batch_sizes, bool reverse, bool has_bias,
      bool need_grad_input) {
    const char* op = "rnnfast::lstm_options_backward";
    check_zoneout(op, zoneout);
    const OptionArgs p = parse_options(op, Exec::kDtypes, true, input, hx, &cx, w_ih, w_hh,
                                       std::nullopt, std::nullopt, w_hr, ln_ih, ln_hh, ln_c,
                                       ln_c_b, rec, zh, zc, batch_sizes);
    const typename Exec::Guard guard(input.device());
    const auto opts = input.options();
    const int64_t N = p.d.seq.N, B = p.d.seq.B, H = p.d.H, P = p.d.P, GH = 4 * H, I = p.d.I;
    const bool ln = p.ln();
    check_saved(op, workspace, N, OptionLayout{true, ln, H}.cols());
    check_saved(op, cells, N, H);
    const Tensor y = output.contiguous().reshape({N, P});
    const Tensor dy = grad_output_rows(grad_output, N, P);
    Tensor dh = state_grad(grad_hy, B, P, opts), dc = state_grad(grad_cy, B, H, opts);
    Tensor dx = need_grad_input ? at::empty_like(p.x) : empty0(opts);
    Tensor dw_ih = at::empty({GH, I}, opts), dw_hh = at::empty({GH, P}, opts);
    Tensor db = has_bias ? at::empty({GH}, opts) : empty0(opts);
    Tensor dw_hr = p.w_hr.defined() ? at::empty({P, H}, opts) : empty0(opts);
    Tensor dln_ih = ln ? at::empty({GH}, opts) : empty0(opts);
    Tensor dln_hh = ln ? at::empty({GH}, opts) : empty0(opts);
    Tensor dln_c = ln ? at::empty({H}, opts) : empty0(opts);
    Tensor dln_c_b = ln ? at::empty({H}, opts) : empty0(opts);
    const Tensor ws = workspace.contiguous(), cl = cells.contiguous();
    const Tensor h0 = hx.contiguous(), c0 = cx.contiguous();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_options_backward", [&] {
      using T = scalar_t;
      Exec::template backward<T>(OptionBackward<T>{
          &p, true, reverse, static_cast<T>(zoneout), y.data_ptr<T>(), ws.data_ptr<T>(),
          cl.data_ptr<T>(), h0.data_ptr<T>(), c0.data_ptr<T>(), ptr<T>(dy),
          dh.data_ptr<T>(), dc.data_ptr<T>(), ptr<T>(dx), dw_ih.data_ptr<T>(),
          dw_hh.data_ptr<T>(), ptr<T>(db), nullptr, ptr<T>(dw_hr),
          ptr<T>(dln_ih), ptr<T>(dln_hh), ptr<T>(dln_c),
          ptr<T>(dln_c_b)});
    });
    return {dx, dh, dc, dw_ih, dw_hh, db, dw_hr, dln_ih, dln_hh, dln_c, dln_c_b};
  }

  static std::vector<Tensor> gru_options_backward(
      const OptTensor& grad_output, const OptTensor& grad_hy, const Tensor& input,
      const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& ln_ih,
      const OptTensor& ln_hh, const OptTensor& rec, const OptTensor& zh, double zoneout,
      const Tensor& output, const Tensor& workspace, const OptTensor& batch_sizes, bool reverse,
      bool has_bias, bool need_grad_input) {
    const char* op = "rnnfast::gru_options_backward";
    check_zoneout(op, zoneout);
    const OptionArgs p = parse_options(op, Exec::kDtypes, false, input, hx, nullptr, w_ih, w_hh,
                                       std::nullopt, std::nullopt, std::nullopt, ln_ih, ln_hh,
                                       std::nullopt, std::nullopt, rec, zh, std::nullopt,
                                       batch_sizes);
    const typename Exec::Guard guard(input.device());
    const auto opts = input.options();
    const int64_t N = p.d.seq.N, B = p.d.seq.B, H = p.d.H, GH = 3 * H, I = p.d.I;
    const bool ln = p.ln();
    check_saved(op, workspace, N, OptionLayout{false, ln, H}.cols());
    const Tensor y = output.contiguous().reshape({N, H});
    const Tensor dy = grad_output_rows(grad_output, N, H);
    Tensor dh = state_grad(grad_hy, B, H, opts);
    Tensor dx = need_grad_input ? at::empty_like(p.x) : empty0(opts);
    Tensor dw_ih = at::empty({GH, I}, opts), dw_hh = at::empty({GH, H}, opts);
    Tensor db_ih = has_bias ? at::empty({GH}, opts) : empty0(opts);
    Tensor db_hh = has_bias ? at::empty({GH}, opts) : empty0(opts);
    Tensor dln_ih = ln ? at::empty({GH}, opts) : empty0(opts);
    Tensor dln_hh = ln ? at::empty({GH}, opts) : empty0(opts);
    const Tensor ws = workspace.contiguous(), h0 = hx.contiguous();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "gru_options_backward", [&] {
      using T = scalar_t;
      Exec::template backward<T>(OptionBackward<T>{
          &p, false, reverse, static_cast<T>(zoneout), y.data_ptr<T>(), ws.data_ptr<T>(),
          nullptr, h0.data_ptr<T>(), nullptr, ptr<T>(dy), dh.data_ptr<T>(), nullptr,
          ptr<T>(dx), dw_ih.data_ptr<T>(), dw_hh.data_ptr<T>(), ptr<T>(db_ih),
          ptr<T>(db_hh), nullptr, ptr<T>(dln_ih), ptr<T>(dln_hh),
          nullptr, nullptr});
    });
    return {dx, dh, dw_ih, dw_hh, db_ih, db_hh, dln_ih, dln_hh};
  }
};

// Registers the four option operators of Exec in m (a TORCH_LIBRARY_IMPL block).
template <class Exec>
void register_option_operators(torch::Library& m) {
  using Ops = OptionOperators<Exec>;
  m.impl("lstm_options_forward", &Ops::lstm_options_forward);
  m.impl("lstm_options_backward", &Ops::lstm_options_backward);
  m.impl("gru_options_forward", &Ops::gru_options_forward);
  m.impl("gru_options_backward", &Ops::gru_options_backward);
}

}  // namespace core
}  // namespace rnnfast
