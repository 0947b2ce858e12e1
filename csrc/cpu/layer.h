// One recurrent layer in one direction over a whole sequence, on the CPU: the
// orchestration shared by LSTM, GRU and RNN (the cell maths is the only part that
// differs, and lives in the pointwise kernels).
//
// Forward:
//   per chunk of steps (~128 rows): xbuf = X W_ih^T + bias_x     one GEMM per thread,
//     for its own units, so the pre-activations are consumed from its cache
//   per step t (b_t active rows):
//     rec = h W_hh^T                                one GEMM (each thread: its units)
//     fused pointwise pass: adds rec to gbuf_t (GRU: keeps it apart with b_hh, since
//     r multiplies it), activations, state update, output, what backward needs
//     LSTM with projection: h = r W_hr^T            one GEMM
// Backward, in the reverse of the forward order:
//   per step: dh += dy_t; (projection: dr = dh W_hr); fused pointwise pass giving the
//             pre-activation gradients dGx_t (and the n part of dGh_t for GRU, whose
//             r, z parts are dGx_t's); dh = dGh_t W_hh (+ the GRU's direct z * dh
//             path)                                 one GEMM (GRU: r,z rows and n rows)
//   after the loop: dW_ih = dGx^T X, dW_hh = dGh^T H_prev, dX = dGx W_ih,
//             dW_hr = dH^T R, biases = column sums of dGx / dGh in a fixed order
//             (bitwise reproducible).
// Threads: the whole step loop runs inside ONE parallel region (torch's intra-op
// threads, OpenMP). Each thread owns a fixed range of hidden units (and of
// projection outputs) for the whole sequence: it computes the recurrent product for
// the gate rows of its units (so its slice of W_hh stays in its core's cache), runs
// the pointwise pass on them, and meets the others at one barrier per step (two with
// a projection). No library call forks threads and nothing is allocated per step;
// the hidden state is double-buffered so that no thread overwrites h_{t-1} while
// another still reads it. The whole-sequence GEMMs outside the loop use all threads
// through sequence_gemm (blas.h: the blocked AVX2 GEMM, or the BLAS).
//
// Buffers are the caller's (allocated once per call).
//
// Legend: N rows (sum of batch sizes), B batch, I input, H hidden, P output size
// (proj_size or H), G gates (4, 3, 1), ld row stride of gbuf (see pointwise.h).
#pragma once

#include <cstdint>

#include "pointwise.h"
#include "../core/sequence.h"

namespace rnnfast {
namespace cpu {

using core::Sequence;

template <typename T>
struct LayerFwd {
  CellKind kind;
  const Sequence* seq;
  bool reverse;
  int64_t I, H, P, G, ld;
  const T* x;       // [N, I]
  const T* w_ih;    // [G*H, I]
  const T* w_hh;    // [G*H, P]
  const T* w_hr;    // [P, H] or nullptr
  const T* bias_x;  // [G*H] folded into the input projection (LSTM/RNN: b_ih + b_hh;
                    //       GRU: b_ih), or nullptr
  const T* bias_h;  // [3H] GRU: b_hh, or nullptr
  T* gbuf;          // [N, ld] what backward needs (RNN: == y, the output), or nullptr
                    //         (LSTM/GRU inference)
  T* y;             // [N, P] layer output (RNN: nullptr, gbuf is the output)
  T* h;             // [B, P] in: h_0; out: h_n
  T* hbuf;          // [2, B, P] scratch: the double-buffered running h
  T* c;             // [B, H] LSTM: in c_0, out c_n
  T* saved;         // [N, H] LSTM: c_t for backward, or nullptr
  T* scratch_r;     // [B, H] LSTM with projection
  T* rec;           // [B, G*H] scratch: each thread's recurrent product
  T* xbuf;          // [chunk_steps*B, G*H] scratch: each thread's input projection of a
                    //         chunk of steps
  int64_t chunk_steps;
};

// Steps per input-projection chunk (about 128 rows, at least one step).
inline int64_t input_chunk_steps(int64_t B) { return B >= 128 ? 1 : 128 / (B > 0 ? B : 1); }

template <typename T>
struct LayerBwd {
  CellKind kind;
  const Sequence* seq;
  bool reverse;
  int64_t I, H, P, G, ld;
  const T* dy;      // [N, P] or nullptr: element (n, k) at dy[n * dy_ld + k * dy_cs]
  int64_t dy_ld, dy_cs;  //    (any strides, 0 included: an expanded gradient)
  const T* x;       // [N, I]
  const T* hx;      // [B, P]
  const T* cx;      // [B, H] LSTM
  const T* w_ih;    // [G*H, I]
  const T* w_hh;    // [G*H, P]
  const T* w_hr;    // [P, H] or nullptr
  const T* y;       // [N, P] the forward output
  const T* ws;      // [N, ld] gbuf saved by the forward pass
  const T* saved;   // [N, H] LSTM cells
  T* dh;            // [B, P] in: dL/dh_n; out: dL/dh_0
  T* dc;            // [B, H] LSTM: in dL/dc_n; out dL/dc_0
  T* dgx;           // [N, G*H] scratch
  T* dgh;           // [N, H] GRU scratch: the n gate's recurrent-side gradient (its r
                    //         and z parts equal dgx's), else nullptr
  T* hprev;         // [N, P] scratch (packed input with shrinking batches only)
  T* dr;            // [B, H] LSTM projection scratch
  T* R;             // [N, H] LSTM projection scratch
  T* DH;            // [N, P] LSTM projection scratch
  T* dx;            // [N, I] or nullptr (not needed)
  T* dw_ih;         // [G*H, I]
  T* dw_hh;         // [G*H, P]
  T* db_ih;         // [G*H] or nullptr (no bias)
  T* db_hh;         // [G*H] or nullptr (no bias; LSTM/RNN: equal to db_ih)
  T* dw_hr;         // [P, H] or nullptr
};

template <typename T>
void layer_forward(const LayerFwd<T>& a);

template <typename T>
void layer_backward(const LayerBwd<T>& a);

}  // namespace cpu
}  // namespace rnnfast
