// The CPU backend: the scratch of the executor (layer.h), allocated once per call.
#include "backend.h"

#include <ATen/Parallel.h>

#include <algorithm>

#include "bf16_gemm.h"
#include "blas.h"
#include "layer.h"

namespace rnnfast {
namespace cpu {
namespace {

template <typename T>
T* ptr(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

// The executor with its scratch; bf16: the products round their operands to bfloat16
// (ForwardScratch::bf16).
template <typename T>
void run_forward(const core::LayerForward<T>& a, const at::TensorOptions& opts, bool bf16,
                 const ForwardScratch<T>& given = {}) {
  const core::CellSpec& spec = core::cell_spec(a.kind);
  const int64_t B = a.seq->B, GH = spec.gates * a.H;
  const bool bias = a.b_ih != nullptr;
  const auto vec = [&](const T* p, int64_t n) {
    return at::from_blob(const_cast<T*>(p), {n}, opts);
  };
  // The input projection takes b_ih + b_hh (LSTM, RNN: both enter the sum of the gate
  // pre-activations) or b_ih (GRU, whose b_hh is inside r * (W_hn h + b_hn), so it enters
  // the pointwise pass, zeros standing in for a missing bias).
  at::Tensor bias_x, bias_h;
  if (a.kind == core::CellKind::kGru) {
    bias_x = bias ? vec(a.b_ih, GH) : at::Tensor();
    bias_h = bias ? vec(a.b_hh, GH) : at::zeros({GH}, opts);
  } else if (bias) {
    bias_x = vec(a.b_ih, GH) + vec(a.b_hh, GH);
  }
  const int64_t Tc = input_chunk_steps(B);
  const at::Tensor hbuf = at::empty({2, B, a.P}, opts);
  const bool gru = a.kind == core::CellKind::kGru;
  const at::Tensor rec = gru ? at::empty({B, GH}, opts) : at::Tensor();
  const at::Tensor xbuf = at::empty({Tc * B, GH}, opts);
  const at::Tensor r = a.w_hr != nullptr ? at::empty({B, a.H}, opts) : at::Tensor();
  layer_forward<T>(a, {.bias_x = ptr<T>(bias_x),
                       .bias_h = ptr<T>(bias_h),
                       .hbuf = ptr<T>(hbuf),
                       .rec = ptr<T>(rec),
                       .xbuf = ptr<T>(xbuf),
                       .chunk_steps = Tc,
                       .r = ptr<T>(r),
                       .bf16 = bf16,
                       .x16 = given.x16,
                       .w_ih16 = given.w_ih16,
                       .w_hh16 = given.w_hh16,
                       .y16 = given.y16,
                       .ws16 = given.ws16,
                       .wsstep = given.wsstep});
}

template <typename T>
void run_backward(const core::LayerBackward<T>& a, const at::TensorOptions& opts, bool bf16,
                  const BackwardScratch<T>& given = {}) {
  const core::CellSpec& spec = core::cell_spec(a.kind);
  const int64_t N = a.seq->N, B = a.seq->B, H = a.H, P = a.P;
  const bool gru = a.kind == core::CellKind::kGru, proj = a.w_hr != nullptr;
  // Where dX has dG's shape ([N, I] with I == G*H: an Elman RNN whose input size is its
  // hidden size, say), dG is held in dX's own storage and dX formed over it at the end.
  const bool dx_in_dgx = given.dgx16 == nullptr && a.dx != nullptr && spec.gates * H == a.I;
  // Else the float32 and float64 layers hold the gate gradients a chunk of steps at a time
  // (backward_chunk_steps).
  const int64_t step_flops = 2 * B * spec.gates * H * P + (proj ? 2 * B * H * P : 0);
  const int64_t chunk_steps =
      bf16 || given.widened || given.dgx16 != nullptr || dx_in_dgx
          ? 0
          : backward_chunk_steps(a.seq->T, B, int64_t(sizeof(T)) * (spec.gates + (gru ? 1 : 0)) * H,
                                 step_flops);
  // With bfloat16 gate gradients (given.dgx16) the float32 ones of two steps suffice.
  const int64_t dg_rows = given.dgx16 != nullptr ? 2 * B : chunk_steps > 0 ? chunk_steps * B : N;
  const at::Tensor dgx = dx_in_dgx ? at::Tensor() : at::empty({dg_rows, spec.gates * H}, opts);
  const at::Tensor dgh = gru ? at::empty({dg_rows, H}, opts) : at::Tensor();
  const at::Tensor hprev = a.seq->uniform() ? at::Tensor() : at::empty({N, P}, opts);
  const at::Tensor dr = proj ? at::empty({B, H}, opts) : at::Tensor();
  const at::Tensor R = proj ? at::empty({N, H}, opts) : at::Tensor();
  const at::Tensor DH = proj ? at::empty({N, P}, opts) : at::Tensor();
  layer_backward<T>(a, {.dgx = dx_in_dgx ? a.dx : ptr<T>(dgx),
                        .dx_in_dgx = dx_in_dgx || given.dx_in_dgx,
                        .dgh = ptr<T>(dgh),
                        .hprev = ptr<T>(hprev),
                        .chunk_steps = chunk_steps,
                        .dr = ptr<T>(dr),
                        .R = ptr<T>(R),
                        .DH = ptr<T>(DH),
                        .bf16 = bf16,
                        .widened = given.widened,
                        .x16 = given.x16,
                        .w_ih16 = given.w_ih16,
                        .w_hh16 = given.w_hh16,
                        .y16 = given.y16,
                        .hx16 = given.hx16,
                        .dgx16 = given.dgx16,
                        .dx16 = given.dx16,
                        .dw_ih16 = given.dw_ih16,
                        .dw_hh16 = given.dw_hh16,
                        .dy16 = given.dy16,
                        .dy16_ld = given.dy16_ld,
                        .dy16_cs = given.dy16_cs,
                        .ystep = given.ystep,
                        .ws16 = given.ws16,
                        .wsstep = given.wsstep});
}

}  // namespace

template <typename T, typename A>
void Backend::forward(const core::LayerForward<T, A>& a, const at::TensorOptions& opts) {
  static_assert(std::is_same_v<T, A>, "the CPU kernels compute in the tensors' dtype");
  run_forward<T>(a, opts, false);
}

template <typename T, typename A>
void Backend::backward(const core::LayerBackward<T, A>& a, const at::TensorOptions& opts) {
  static_assert(std::is_same_v<T, A>, "the CPU kernels compute in the tensors' dtype");
  run_backward<T>(a, opts, false);
}

// bfloat16: the float32 executor on up-converted copies of the inputs and weights (made
// once per call), its outputs rounded back to bfloat16. The cell state and the LSTM's
// saved buffers are float32 (acc_dtype), so nothing is rounded between steps: the
// roundings are the bfloat16 of the arguments and of the results, and the GRU's saved
// rows (saved_dtype: bfloat16, rounded once each in forward, widened exactly in backward).
namespace {

// A float32 copy of n bfloat16 values (an undefined tensor for nullptr).
at::Tensor up(const at::BFloat16* p, at::IntArrayRef sizes) {
  if (p == nullptr) return at::Tensor();
  return at::from_blob(const_cast<at::BFloat16*>(p), sizes, at::TensorOptions().dtype(at::kBFloat16))
      .to(at::kFloat);
}

// The bit patterns of bfloat16 values.
const uint16_t* bits(const at::BFloat16* p) { return reinterpret_cast<const uint16_t*>(p); }

// Rounds a float32 result into its bfloat16 destination.
void down(const at::Tensor& f, at::BFloat16* out) {
  if (out == nullptr || !f.defined() || f.numel() == 0) return;
  at::from_blob(out, f.sizes(), at::TensorOptions().dtype(at::kBFloat16)).copy_(f);
}

float* fptr(const at::Tensor& t) { return ptr<float>(t); }

bool plain_rnn(core::CellKind k) {
  return k == core::CellKind::kRnnTanh || k == core::CellKind::kRnnRelu;
}

}  // namespace

int64_t w_hh_slice_bytes(int64_t GH, int64_t P) {
  return int64_t(4) * GH * P / std::max(1, at::get_num_threads());
}

Bf16Mode bf16_mode(bool plain_rnn, int64_t batch, int64_t w_hh_bytes) {
  const bool kernels = bf16_kernels_for(plain_rnn, batch, w_hh_bytes);
  const bool widened = !kernels && !bf16_copies_only() && step_gemm_split_invariant_f32();
  return {kernels, widened, kernels || widened};
}

const char* bf16_path_name(bool plain_rnn, int64_t batch, int64_t w_hh_bytes) {
  const Bf16Mode m = bf16_mode(plain_rnn, batch, w_hh_bytes);
  return m.kernels ? "kernels" : m.widened ? "widened" : "copies";
}

template <>
void Backend::forward<at::BFloat16, float>(const core::LayerForward<at::BFloat16, float>& a,
                                           const at::TensorOptions& opts) {
  const int64_t N = a.seq->N, B = a.seq->B, I = a.I, H = a.H, P = a.P;
  const int64_t GH = core::cell_spec(a.kind).gates * H;
  const at::TensorOptions f32 = opts.dtype(at::kFloat);
  // On the bfloat16 data path (the kernels, or widened: bf16_mode) the input projection
  // reads x as it is (PackedWeight::gemm_bf16), and the weights are packed from their
  // bfloat16 values (without input, I = 0, the float32 path takes W_ih). Else the float32
  // path runs on up-converted copies (nothing packed from bfloat16).
  const Bf16Mode mode = bf16_mode(plain_rnn(a.kind), B, w_hh_slice_bytes(GH, P));
  const bool data16 = mode.data16, data16_ih = data16 && I > 0;
  const at::Tensor x = data16 ? at::Tensor() : up(a.x, {N, I});
  const at::Tensor w_ih = data16_ih ? at::Tensor() : up(a.w_ih, {GH, I});
  const at::Tensor w_hh = data16 ? at::Tensor() : up(a.w_hh, {GH, P});
  const at::Tensor w_hr = up(a.w_hr, {P, H}), b_ih = up(a.b_ih, {GH}), b_hh = up(a.b_hh, {GH});
  const at::Tensor h = up(a.h, {B, P});
  // On the bfloat16 data path the bfloat16 output is written straight from each step's h_t
  // (backward reads it as it is, or up-converts it).
  const bool y16 = data16;
  const at::Tensor y = y16 ? at::Tensor() : at::empty({N, P}, f32);
  const at::Tensor wsstep =
      a.saved16 != nullptr ? at::empty({B, core::saved_row_cols(a.kind, H)}, f32) : at::Tensor();
  core::LayerForward<float> f{.kind = a.kind,
                              .seq = a.seq,
                              .reverse = a.reverse,
                              .I = I,
                              .H = H,
                              .P = P,
                              .x = fptr(x),
                              .w_ih = fptr(w_ih),
                              .w_hh = fptr(w_hh),
                              .w_hr = fptr(w_hr),
                              .b_ih = fptr(b_ih),
                              .b_hh = fptr(b_hh),
                              .y = fptr(y),
                              .h = fptr(h),
                              .c = a.c,
                              .saved = {a.saved[0], a.saved[1]}};
  ForwardScratch<float> given;
  given.ws16 = a.saved16;
  given.wsstep = fptr(wsstep);
  if (data16) {
    given.x16 = a.x != nullptr ? bits(a.x) : nullptr;
    given.w_ih16 = data16_ih ? bits(a.w_ih) : nullptr;
    given.w_hh16 = bits(a.w_hh);
    if (y16) given.y16 = reinterpret_cast<uint16_t*>(a.y);
  }
  run_forward<float>(f, f32, mode.kernels, given);
  down(y, a.y);
  down(h, a.h);
}

template <>
void Backend::backward<at::BFloat16, float>(const core::LayerBackward<at::BFloat16, float>& a,
                                            const at::TensorOptions& opts) {
  const int64_t N = a.seq->N, B = a.seq->B, I = a.I, H = a.H, P = a.P;
  const int64_t GH = core::cell_spec(a.kind).gates * H;
  const at::TensorOptions f32 = opts.dtype(at::kFloat);
  // dy is read in place as bfloat16 by the step loop (it may be strided: an expanded
  // gradient has stride 0), so no float32 copy of it is made.
  // On the bfloat16 data path the whole-sequence products read x, W_ih, the outputs and hx
  // as they are (bfloat16) and write dx, dW_ih and dW_hh as bfloat16 straight (each rounded
  // once), so no whole float32 copies of these are made; nor of the outputs for the LSTM on
  // unpacked input (its step loop reads its own cell states; the products read y as is).
  const Bf16Mode mode = bf16_mode(plain_rnn(a.kind), B, w_hh_slice_bytes(GH, P));
  const bool data16 = mode.data16;
  const bool lstm = a.kind == core::CellKind::kLstm;
  const at::Tensor x = data16 ? at::Tensor() : up(a.x, {N, I}), hx = up(a.hx, {B, P});
  // The step products pack W_hh from its bfloat16 values (no float32 copy) where rows exist.
  const bool w_hh16 = data16 && B > 0;
  const at::Tensor w_ih = data16 ? at::Tensor() : up(a.w_ih, {GH, I});
  const at::Tensor w_hh = w_hh16 ? at::Tensor() : up(a.w_hh, {GH, P});
  const at::Tensor w_hr = up(a.w_hr, {P, H});
  // The outputs in float32 only where the step loop or the float32 products read them: the
  // LSTM's step loop reads its own cell states, and on the bfloat16 data path on unpacked
  // input the GRU and RNN step loops up-convert the rows they read (ystep) and the products
  // read y16.
  const bool y_in_place = data16 && a.seq->uniform();
  const at::Tensor y = y_in_place ? at::Tensor() : up(a.y, {N, P});
  const at::Tensor ystep = y_in_place && !lstm ? at::empty({B, H}, f32) : at::Tensor();
  const at::Tensor wsstep =
      a.saved16 != nullptr ? at::empty({B, core::saved_row_cols(a.kind, H)}, f32) : at::Tensor();
  const at::Tensor dh = up(a.dh, {B, P});
  const at::Tensor dx = !data16 && a.dx != nullptr ? at::empty({N, I}, f32) : at::Tensor();
  const at::Tensor dw_ih = data16 ? at::Tensor() : at::empty({GH, I}, f32);
  const at::Tensor dw_hh = data16 ? at::Tensor() : at::empty({GH, P}, f32);
  // The bfloat16 gate gradients live in dx's own storage where the two have one shape
  // (G*H == I) and nothing reads them after dX (not the GRU on the kernels: its n part of
  // dGh is formed in them afterwards; widened, it is formed as they are widened, before
  // dX); dX is then formed over them (layer.cpp).
  const bool dx_in_dgx =
      data16 && a.dx != nullptr && GH == I && (a.kind != core::CellKind::kGru || mode.widened);
  const at::Tensor dgx16 = data16 && !dx_in_dgx ? at::empty({N, GH}, opts.dtype(at::kBFloat16))
                                             : at::Tensor();
  const at::Tensor db_ih = a.db_ih != nullptr ? at::empty({GH}, f32) : at::Tensor();
  const at::Tensor db_hh = a.db_hh != nullptr ? at::empty({GH}, f32) : at::Tensor();
  const at::Tensor dw_hr = a.dw_hr != nullptr ? at::empty({P, H}, f32) : at::Tensor();
  core::LayerBackward<float> f{.kind = a.kind,
                               .seq = a.seq,
                               .reverse = a.reverse,
                               .I = I,
                               .H = H,
                               .P = P,
                               .dy = nullptr,
                               .x = fptr(x),
                               .hx = fptr(hx),
                               .cx = a.cx,
                               .w_ih = fptr(w_ih),
                               .w_hh = fptr(w_hh),
                               .w_hr = fptr(w_hr),
                               .y = fptr(y),
                               .saved = {a.saved[0], a.saved[1]},
                               .dh = fptr(dh),
                               .dc = a.dc,
                               .dx = fptr(dx),
                               .dw_ih = fptr(dw_ih),
                               .dw_hh = fptr(dw_hh),
                               .db_ih = fptr(db_ih),
                               .db_hh = fptr(db_hh),
                               .dw_hr = fptr(dw_hr)};
  BackwardScratch<float> given;
  given.dy16 = a.dy != nullptr ? bits(a.dy) : nullptr;
  given.dy16_ld = a.dy_ld;
  given.dy16_cs = a.dy_cs;
  given.ystep = ystep.defined() ? fptr(ystep) : nullptr;
  given.ws16 = a.saved16;
  given.wsstep = fptr(wsstep);
  if (data16) {
    given.x16 = a.x != nullptr ? bits(a.x) : nullptr;
    given.w_ih16 = a.w_ih != nullptr ? bits(a.w_ih) : nullptr;
    given.w_hh16 = w_hh16 ? bits(a.w_hh) : nullptr;
    given.y16 = a.y != nullptr ? bits(a.y) : nullptr;
    given.hx16 = a.hx != nullptr ? bits(a.hx) : nullptr;
    given.dgx16 = dx_in_dgx && N > 0 ? reinterpret_cast<uint16_t*>(a.dx)
                  : dgx16.numel() > 0 ? static_cast<uint16_t*>(dgx16.data_ptr())
                                      : nullptr;
    given.dx_in_dgx = given.dgx16 != nullptr && dx_in_dgx;
    given.dx16 = reinterpret_cast<uint16_t*>(a.dx);
    given.dw_ih16 = reinterpret_cast<uint16_t*>(a.dw_ih);
    given.dw_hh16 = reinterpret_cast<uint16_t*>(a.dw_hh);
  }
  given.widened = mode.widened;
  run_backward<float>(f, f32, mode.kernels, given);
  down(dh, a.dh);
  down(dx, a.dx);
  down(dw_ih, a.dw_ih);
  down(dw_hh, a.dw_hh);
  down(db_ih, a.db_ih);
  down(db_hh, a.db_hh);
  down(dw_hr, a.dw_hr);
}

template void Backend::forward<float, float>(const core::LayerForward<float>&,
                                             const at::TensorOptions&);
template void Backend::forward<double, double>(const core::LayerForward<double>&,
                                               const at::TensorOptions&);
template void Backend::backward<float, float>(const core::LayerBackward<float>&,
                                              const at::TensorOptions&);
template void Backend::backward<double, double>(const core::LayerBackward<double>&,
                                                const at::TensorOptions&);

}  // namespace cpu
}  // namespace rnnfast
