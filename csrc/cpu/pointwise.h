// Fused pointwise passes of the CPU kernels, and their run-time ISA dispatch.
//
// One call processes rows [row_begin, row_end) and hidden units [k0, k1) of one time
// step of one cell type; the orchestration (csrc/cpu/layer.cpp) gives each thread
// its own range of units for the whole sequence.
//
// Legend: B rows active this step, H hidden size, G gates (LSTM 4: i,f,g,o;
// GRU 3: r,z,n; RNN 1), ld the row stride of the saved-gates buffer (LSTM 4H,
// GRU 4H: r,z,n and then hn = W_hn h + b_hn; RNN H: the saved row is h itself).
// Every pointer is row 0 of the step; row j of a [rows, X] buffer is ptr + j * X.
#pragma once

#include <cstdint>

#include "../core/cells.h"
#include "panel_gemm.h"

namespace rnnfast {
namespace cpu {

template <typename T>
struct FwdStep {
  T* xin;         // [B, xin_ld] this thread's input-side pre-activations (x W_ih^T + folded
                  //         biases): gate g of unit k at xin[j * xin_ld + g * (k1 - k0) + k - k0]
  int64_t xin_ld;
  const T* rec;   // [B, rec_ld] this thread's recurrent product h_{t-1} W_hh^T, same layout;
                  //         LSTM, RNN: nullptr when it is already added into xin
  int64_t rec_ld;
  const T* bias_h;  // [3H] GRU: b_hh (zeros without bias), added to the recurrent side
  T* gx;          // [B, ld] out: what backward needs (activated gates, GRU also hn, RNN h_t
                  //         = the output), or nullptr in inference (LSTM, GRU)
  const T* h_prev;  // [B, H] GRU: h_{t-1}; else unused
  T* h;           // [B, H]  out: h_t (LSTM with projection: o * tanh(c_t))
  T* c;           // [B, H]  LSTM: cell state, in c_{t-1}, out c_t; else nullptr
  T* y;           // [B, H]  out: copy of h_t into the layer output, or nullptr
  T* saved;       // [B, H]  LSTM: out copy of c_t for backward, or nullptr
  int64_t H, ld;
  int64_t k0, k1;  // the units to process
};

template <typename T>
struct BwdStep {
  const T* ws;     // [B, ld] the saved row of this step (see FwdStep::gx; RNN: h_t)
  const T* saved;  // [B, H]  LSTM: c_t
  const T* prev;   // [B, H]  rows [0, n_prev): LSTM c_{t-1}, GRU h_{t-1}
  const T* init;   // [B, H]  rows [n_prev, B): the initial state (LSTM cx, GRU hx)
  int64_t n_prev;
  T* dh;           // [B, H]  in: dL/dh_t (LSTM with projection: dL/d(o tanh c_t));
                   //         GRU out: z * dL/dh_t (the direct path to h_{t-1})
  T* dc;           // [B, H]  LSTM: in dL/dc_t, out dL/dc_{t-1}
  T* dgx;          // [B, G*H] out: dL/d(input-side pre-activations)
  T* dgh;          // [B, H]  GRU out: dL/d(recurrent-side pre-activation of the n gate)
                   //         (its r and z parts equal dgx's); else nullptr
  T* r;            // [B, H]  LSTM with projection: out o * tanh(c_t); else nullptr
  int64_t H, ld;
  int64_t k0, k1;  // the units to process
};

using core::CellKind;
using core::kNumCellKinds;

template <typename T>
using FwdKernel = void (*)(const FwdStep<T>&, int64_t row_begin, int64_t row_end);
template <typename T>
using BwdKernel = void (*)(const BwdStep<T>&, int64_t row_begin, int64_t row_end);

// One set of kernels per instruction set, indexed by CellKind (and the step loops'
// GEMM micro-kernel); `cpu_kernels()`
// picks the best set the running CPU supports (RNNFAST_CPU_ISA=avx512|avx2|generic
// overrides).
struct CpuKernels {
  const char* name;
  FwdKernel<float> fwd_f32[kNumCellKinds];
  FwdKernel<double> fwd_f64[kNumCellKinds];
  BwdKernel<float> bwd_f32[kNumCellKinds];
  BwdKernel<double> bwd_f64[kNumCellKinds];
  // The step loops' small-GEMM micro-kernel (panel_gemm.h), or nullptr: the BLAS's
  // packed GEMM instead (the generic set).
  PanelGemmF32 panel_gemm_f32;
  // A whole W^T panel's transposing copy (panel_gemm.h), or nullptr: one value at a time.
  PackPanelF32 pack_panel_f32;
  // The whole-sequence products' blocked GEMM (panel_gemm.h), or nullptr: the BLAS.
  BlockedGemmF32 blocked_gemm_f32;
  // Smallest product sequence_gemm gives the blocked GEMM (blas.h): N >= this many
  // columns and M N K >= 2^(this); below it the BLAS was as fast in the measurements.
  int64_t blocked_gemm_min_n;
  int blocked_gemm_min_mnk_log2;
  // The panel micro-kernel on bfloat16 panels (panel_gemm.h), or nullptr (the generic set).
  PanelGemmBf16W panel_gemm_bf16w;
};

const CpuKernels& cpu_kernels();

template <typename T>
FwdKernel<T> fwd_kernel(CellKind kind);
template <typename T>
BwdKernel<T> bwd_kernel(CellKind kind);

// Per-ISA tables (csrc/cpu/isa_*.cpp).
namespace avx512 { extern const CpuKernels kKernels; }
namespace avx2 { extern const CpuKernels kKernels; }
namespace generic { extern const CpuKernels kKernels; }

}  // namespace cpu
}  // namespace rnnfast
