// The CPU backend: the scratch of the executor (layer.h), allocated once per call.
#include "backend.h"

#include "layer.h"

namespace rnnfast {
namespace cpu {
namespace {

template <typename T>
T* ptr(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

}  // namespace

template <typename T, typename A>
void Backend::forward(const core::LayerForward<T, A>& a, const at::TensorOptions& opts) {
  static_assert(std::is_same_v<T, A>, "the CPU kernels compute in the tensors' dtype");
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
                       .r = ptr<T>(r)});
}

template <typename T, typename A>
void Backend::backward(const core::LayerBackward<T, A>& a, const at::TensorOptions& opts) {
  static_assert(std::is_same_v<T, A>, "the CPU kernels compute in the tensors' dtype");
  const core::CellSpec& spec = core::cell_spec(a.kind);
  const int64_t N = a.seq->N, B = a.seq->B, H = a.H, P = a.P;
  const bool gru = a.kind == core::CellKind::kGru, proj = a.w_hr != nullptr;
  const at::Tensor dgx = at::empty({N, spec.gates * H}, opts);
  const at::Tensor dgh = gru ? at::empty({N, H}, opts) : at::Tensor();
  const at::Tensor hprev = a.seq->uniform() ? at::Tensor() : at::empty({N, P}, opts);
  const at::Tensor dr = proj ? at::empty({B, H}, opts) : at::Tensor();
  const at::Tensor R = proj ? at::empty({N, H}, opts) : at::Tensor();
  const at::Tensor DH = proj ? at::empty({N, P}, opts) : at::Tensor();
  layer_backward<T>(a, {.dgx = ptr<T>(dgx),
                        .dgh = ptr<T>(dgh),
                        .hprev = ptr<T>(hprev),
                        .dr = ptr<T>(dr),
                        .R = ptr<T>(R),
                        .DH = ptr<T>(DH)});
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
