// One description per cell kind, shared by every backend and by the Python fake
// kernels (exported through rnnfast._C.cell_specs()): how many gates, what forward
// saves for backward, and the shapes of every output and gradient.
//
// Legend: T steps, B batch, N rows (T*B, or sum(batch_sizes) when packed), I input
// size, H hidden size, P output size (proj_size, or H), G gates per unit.
//
// What forward saves (the operators' "workspace" outputs, empty (0,) in inference):
//   LSTM  gates (N, 4H): activated i, f, g, o      cells (N, H): c_t
//   GRU   workspace (N, 4H): r, z, n and W_hn h + b_hn
//   RNN   nothing: backward needs only the output (h_t) and the initial state.
// Saved buffers hold the accumulation dtype: the input's, or float32 for
// float16/bfloat16 inputs (CUDA kernels; the CPU kernels take float32/float64 only).
//
// Adding a cell kind: a CellKind entry and its row in kCellSpecs here; its maths in
// csrc/kernels/cell_math.h; its fused pointwise passes (CPU: csrc/cpu/pointwise_impl.h,
// CUDA: csrc/kernels/rnn_device.cuh); see docs/design.md.
#pragma once

#include <cstdint>

namespace rnnfast {
namespace core {

enum class CellKind { kLstm = 0, kGru = 1, kRnnTanh = 2, kRnnRelu = 3 };
constexpr int kNumCellKinds = 4;

// A buffer that forward saves for backward: N rows by h_cols * H columns.
struct SavedBuffer {
  const char* name;
  int64_t h_cols;
};

struct CellSpec {
  CellKind kind;
  const char* name;      // the operator prefix: <name>_forward, <name>_backward
  int64_t gates;         // G
  bool has_cell_state;   // LSTM: c
  bool has_projection;   // may take w_hr (P != H)
  int num_saved;         // forward's workspace outputs
  SavedBuffer saved[2];  // (N, h_cols * H) each
  // Backward's bias gradients: 1 = one (G*H) gradient for b_ih and b_hh together
  // (they enter the cell as a sum), 2 = one each (GRU: b_hh is inside r * (.)).
  int num_bias_grads;
};

inline constexpr CellSpec kCellSpecs[kNumCellKinds] = {
    {CellKind::kLstm, "lstm", 4, true, true, 2, {{"gates", 4}, {"cells", 1}}, 1},
    {CellKind::kGru, "gru", 3, false, false, 1, {{"workspace", 4}, {nullptr, 0}}, 2},
    {CellKind::kRnnTanh, "rnn", 1, false, false, 0, {{nullptr, 0}, {nullptr, 0}}, 1},
    {CellKind::kRnnRelu, "rnn", 1, false, false, 0, {{nullptr, 0}, {nullptr, 0}}, 1},
};

constexpr const CellSpec& cell_spec(CellKind kind) { return kCellSpecs[static_cast<int>(kind)]; }

// Columns of the saved row of a step (the row stride `ld` of the step loops'
// gate buffer): LSTM 4H, GRU 4H, RNN H (its saved row is h_t, the output itself).
constexpr int64_t saved_row_cols(CellKind kind, int64_t H) {
  const CellSpec& s = cell_spec(kind);
  return s.num_saved > 0 ? s.saved[0].h_cols * H : H;
}

}  // namespace core
}  // namespace rnnfast
