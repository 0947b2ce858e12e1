// The raw-pointer interface of one recurrent layer in one direction over a whole
// sequence: what every backend's executor (csrc/cpu/layer.*, csrc/cuda/rnn_host.h)
// consumes. The operators (csrc/core/operators.h) check the arguments, allocate every
// output, fill these structs by name and call the backend; an executor allocates only
// its own scratch.
//
// Legend: N rows (T*B, or sum(batch_sizes) when packed), B batch, I input size,
// H hidden size, P output size (proj_size, or H), G gates (cells.h). Step t's rows
// are rows [off[t], off[t] + bs[t]) of every [N, *] buffer (sequence.h). All buffers
// are contiguous, row-major, except dy (strided, see below).
//
// T is the element type of the tensors (float, double; on CUDA also __half and
// __nv_bfloat16); A is the arithmetic type of the LSTM cell state and of what
// forward saves (float for the half types, T otherwise).
#pragma once

#include <cstdint>

#include "cells.h"
#include "sequence.h"

namespace rnnfast {
namespace core {

template <typename T, typename A = T>
struct LayerForward {
  CellKind kind = CellKind::kLstm;
  const Sequence* seq = nullptr;
  bool reverse = false;  // run from the last step to the first
  int64_t I = 0, H = 0, P = 0;
  const T* x = nullptr;     // [N, I]
  const T* w_ih = nullptr;  // [G*H, I]
  const T* w_hh = nullptr;  // [G*H, P]
  const T* w_hr = nullptr;  // [P, H] LSTM with projection, else nullptr
  const T* b_ih = nullptr;  // [G*H], or nullptr: no bias (then b_hh is nullptr too)
  const T* b_hh = nullptr;  // [G*H]
  T* y = nullptr;           // [N, P] out: the layer's output
  T* h = nullptr;           // [B, P] in: h_0; out: h_n
  A* c = nullptr;           // [B, H] LSTM: in c_0, out c_n; else nullptr
  // What backward needs (cells.h: LSTM gates [N, 4H] and cells [N, H]; GRU workspace
  // [N, 4H]), or nullptr in inference. The RNN saves nothing.
  A* saved[2] = {nullptr, nullptr};
  // The saved rows as bfloat16 bit patterns, in place of saved[0] (which is then nullptr),
  // where the backend saves them so (its saved_dtype, operators.h), else nullptr.
  uint16_t* saved16 = nullptr;
};

template <typename T, typename A = T>
struct LayerBackward {
  CellKind kind = CellKind::kLstm;
  const Sequence* seq = nullptr;
  bool reverse = false;
  int64_t I = 0, H = 0, P = 0;
  // [N, P] dL/d(output) or nullptr (none): element (n, k) at dy[n * dy_ld + k * dy_cs],
  // any strides, 0 included (an expanded gradient).
  const T* dy = nullptr;
  int64_t dy_ld = 0, dy_cs = 0;
  const T* x = nullptr;     // [N, I]
  const T* hx = nullptr;    // [B, P] h_0
  const A* cx = nullptr;    // [B, H] LSTM c_0
  const T* w_ih = nullptr;  // [G*H, I]
  const T* w_hh = nullptr;  // [G*H, P]
  const T* w_hr = nullptr;  // [P, H] or nullptr
  const T* y = nullptr;     // [N, P] forward's output
  const A* saved[2] = {nullptr, nullptr};  // what forward saved (see LayerForward)
  const uint16_t* saved16 = nullptr;        // (see LayerForward)
  T* dh = nullptr;          // [B, P] in: dL/dh_n; out: dL/dh_0
  A* dc = nullptr;          // [B, H] LSTM: in dL/dc_n; out: dL/dc_0
  T* dx = nullptr;          // [N, I] out, or nullptr (not needed)
  T* dw_ih = nullptr;       // [G*H, I] out
  T* dw_hh = nullptr;       // [G*H, P] out
  T* db_ih = nullptr;       // [G*H] out, or nullptr (no bias). LSTM and RNN: the
                            //   gradient of b_ih and of b_hh (equal)
  T* db_hh = nullptr;       // [G*H] GRU only (cells.h num_bias_grads == 2), or nullptr
  T* dw_hr = nullptr;       // [P, H] out, or nullptr
};

}  // namespace core
}  // namespace rnnfast
