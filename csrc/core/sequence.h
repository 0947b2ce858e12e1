// Padded and packed sequence bookkeeping, shared by every backend.
//
// A layer runs over T time steps. Step t has bs[t] active rows (the first bs[t]
// sequences of the batch) stored contiguously at rows [off[t], off[t] + bs[t]) of
// the [N, *] input/output buffers. A padded time-major input (T, B, *) is the
// special case bs[t] = B, off[t] = t * B; a PackedSequence gives bs directly
// (non-increasing, bs[0] = B). Running the steps backwards (reverse direction)
// needs no other change: rows that become active start from the initial state,
// which is still in the state buffer because nothing has touched them yet.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace rnnfast {
namespace core {

struct Sequence {
  int64_t T = 0;  // time steps
  int64_t B = 0;  // batch (rows of the state)
  int64_t N = 0;  // total rows = sum(bs)
  std::vector<int64_t> bs;   // [T] active rows per step
  std::vector<int64_t> off;  // [T] first row of each step

  // Step processed `step`-th in forward time order of this direction.
  int64_t time_at(int64_t step, bool reverse) const { return reverse ? T - 1 - step : step; }
  // Every step has all B rows (padded input, or a packed one of equal lengths): the
  // previous step's rows are then the same rows one step over, a contiguous shift.
  bool uniform() const {
    for (int64_t b : bs)
      if (b != B) return false;
    return true;
  }
  // The step that precedes t in this direction's processing order, or -1.
  int64_t prev_of(int64_t t, bool reverse) const {
    return reverse ? (t + 1 < T ? t + 1 : -1) : t - 1;
  }
  // How many of step t's rows the preceding step also had (their previous state is in
  // its rows; the others start from the initial state).
  int64_t rows_with_prev(int64_t t, bool reverse) const {
    const int64_t tp = prev_of(t, reverse);
    return tp >= 0 ? (bs[t] < bs[tp] ? bs[t] : bs[tp]) : 0;
  }
};

// `input` is (T, B, I) when batch_sizes is absent, packed (N, I) otherwise.
// Checks everything a caller of the op could get wrong and raises a clear error.
Sequence make_sequence(const char* op, const at::Tensor& input,
                       const std::optional<at::Tensor>& batch_sizes);

}  // namespace core
}  // namespace rnnfast
