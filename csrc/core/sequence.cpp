#include "sequence.h"

#include <c10/util/Exception.h>

namespace rnnfast {
namespace core {

Sequence make_sequence(const char* op, const at::Tensor& input,
                       const std::optional<at::Tensor>& batch_sizes) {
  Sequence s;
  if (batch_sizes.has_value() && batch_sizes->defined()) {
    const at::Tensor& b = *batch_sizes;
    TORCH_CHECK(b.device().is_cpu() && b.scalar_type() == at::kLong && b.dim() == 1, op,
                ": batch_sizes must be a 1-D int64 CPU tensor (PackedSequence.batch_sizes), got ",
                b.scalar_type(), " of shape ", b.sizes(), " on ", b.device());
    TORCH_CHECK(input.dim() == 2, op, ": packed input must be 2-D (N, input_size), got ",
                input.dim(), "-D");
    auto bc = b.contiguous();
    const int64_t* p = bc.data_ptr<int64_t>();
    s.T = bc.numel();
    s.bs.assign(p, p + s.T);
    s.off.resize(s.T);
    int64_t total = 0;
    for (int64_t t = 0; t < s.T; ++t) {
      TORCH_CHECK(s.bs[t] >= 0 && (t == 0 || s.bs[t] <= s.bs[t - 1]), op,
                  ": batch_sizes must be non-negative and non-increasing, got ",
                  c10::IntArrayRef(s.bs));
      s.off[t] = total;
      total += s.bs[t];
    }
    TORCH_CHECK(total == input.size(0), op, ": batch_sizes sum to ", total,
                " but the packed input has ", input.size(0), " rows");
    s.N = total;
    s.B = s.T > 0 ? s.bs[0] : 0;
  } else {
    TORCH_CHECK(input.dim() == 3, op, ": input must be 3-D (T, B, input_size), got ",
                input.dim(), "-D");
    s.T = input.size(0);
    s.B = input.size(1);
    s.N = s.T * s.B;
    s.bs.assign(s.T, s.B);
    s.off.resize(s.T);
    for (int64_t t = 0; t < s.T; ++t) s.off[t] = t * s.B;
  }
  return s;
}

}  // namespace core
}  // namespace rnnfast
