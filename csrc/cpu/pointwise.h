// Fused pointwise passes of the CPU kernels, and their run-time ISA dispatch.
//
// One call processes rows [row_begin, row_end) of one time step. The orchestration
// (csrc/cpu/rnn_layer.h) splits a step's rows over threads and calls these.
//
// Legend: B rows active this step, H hidden size, 4H the LSTM gates (i, f, g, o).
// Every row pointer is the start of row 0 of the step; row j of a [rows, X] buffer
// begins at ptr + j * X (all buffers are dense, row-major).
#pragma once

#include <cstdint>

namespace rnnfast {
namespace cpu {

template <typename T>
struct LstmFwdStep {
  T* gates;       // [B, 4H] in: pre-activations; out: activated gates
  T* c;           // [B, H]  in: c_{t-1}; out: c_t   (the running cell state)
  T* cells;       // [B, H]  out: copy of c_t saved for backward, or nullptr
  T* h;           // [B, H]  out: o * tanh(c_t)  (h_t, or r_t before the projection)
  T* y;           // [B, H]  out: second copy of h (the layer output), or nullptr
  int64_t H;
};

template <typename T>
struct LstmBwdStep {
  const T* gates;     // [B, 4H] activated gates of this step
  const T* cells;     // [B, H]  c_t
  const T* c_prev;    // [B, H]  c_{t-1} for rows [0, n_prev)
  const T* c_init;    // [B, H]  c_{t-1} for rows [n_prev, B): the initial state cx
  int64_t n_prev;
  const T* dr;        // [B, H]  dL/d(o * tanh(c_t))
  T* dc;              // [B, H]  in: dL/dc_t; out: dL/dc_{t-1}
  T* dgates;          // [B, 4H] out: dL/d(pre-activations)
  T* r;               // [B, H]  out: o * tanh(c_t) recomputed, or nullptr
  int64_t H;
};

// One set of kernels per instruction set; `cpu_kernels()` picks the best one the
// running CPU supports (override with RNNFAST_CPU_ISA=avx512|avx2|generic).
struct CpuKernels {
  const char* name;
  void (*lstm_fwd_f32)(const LstmFwdStep<float>&, int64_t row_begin, int64_t row_end);
  void (*lstm_fwd_f64)(const LstmFwdStep<double>&, int64_t row_begin, int64_t row_end);
  void (*lstm_bwd_f32)(const LstmBwdStep<float>&, int64_t row_begin, int64_t row_end);
  void (*lstm_bwd_f64)(const LstmBwdStep<double>&, int64_t row_begin, int64_t row_end);
};

const CpuKernels& cpu_kernels();

// Typed accessors, so templated orchestration code can call kernels<T>().
template <typename T>
struct KernelFor;
template <>
struct KernelFor<float> {
  static auto lstm_fwd() { return cpu_kernels().lstm_fwd_f32; }
  static auto lstm_bwd() { return cpu_kernels().lstm_bwd_f32; }
};
template <>
struct KernelFor<double> {
  static auto lstm_fwd() { return cpu_kernels().lstm_fwd_f64; }
  static auto lstm_bwd() { return cpu_kernels().lstm_bwd_f64; }
};

// Per-ISA tables (csrc/cpu/isa_*.cpp).
namespace avx512 { extern const CpuKernels kKernels; }
namespace avx2 { extern const CpuKernels kKernels; }
namespace generic { extern const CpuKernels kKernels; }

}  // namespace cpu
}  // namespace rnnfast
