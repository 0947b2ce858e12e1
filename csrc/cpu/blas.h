// Row-major GEMM on raw pointers for the CPU kernels.
//
//   C[M, N] = alpha * op(A) * op(B) + beta * C
//   op(A) is [M, K]: A itself (lda >= K) or, with trans_a, the transpose of a [K, M]
//   matrix (lda >= M); likewise op(B) is [K, N].
//
// Calls the BLAS that torch itself links (MKL's sgemm_/dgemm_ exported by
// libtorch_cpu) with no allocation; falls back to at::mm_out on wrapped buffers when
// that BLAS is absent. Threads: the BLAS uses torch's intra-op thread count.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "panel_gemm.h"

namespace rnnfast {
namespace cpu {

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// The whole-sequence products of the backward pass (dW = dG^T X, dX = dG W):
//
//   C[M, N] = op(A)[M, K] B[K, N] + beta * C,   op(A) = A [M, K] (lda >= K) or, with
//   trans_a, the transpose of A [K, M] (lda >= M); B row-major [K, N] (ldb >= N).
//
// On all of torch's intra-op threads (one when called inside a parallel region). float32
// with beta 0 or 1 on a product this large (the kernel set's bound: AVX2 N >= 256 and
// M N K >= 2^28, AVX-512 N >= 16 and M N K >= 2^24) uses the CPU kernel set's blocked
// GEMM where it has one (panel_gemm.h), with the rows of C split
// across the threads: bitwise the same result for any thread count; except where the
// BLAS is MKL on an Intel CPU with the AVX-512 set (MKL's AVX-512 code). Otherwise gemm().
template <typename T>
void sequence_gemm(bool trans_a, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                   const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// The whole-sequence products of a bfloat16 layer: C[M, N] = A16 B16 (beta 0) or C + A16 B16
// (beta 1), A16 [M, K] and B16 [K, N] bfloat16 tensors (views, any strides), multiplied by
// the GEMM torch uses for bfloat16 (oneDNN: AMX or AVX512-BF16 where the CPU has them) with
// float32 accumulation, the product rounded to bfloat16 once; C float32 with row stride ldc.
void sequence_gemm_bf16(const at::Tensor& A16, const at::Tensor& B16, float beta, float* C,
                        int64_t ldc);

// A [rows, cols] bfloat16 copy (rounded to nearest even) of float32 rows with stride ld.
at::Tensor bf16_copy(const float* p, int64_t rows, int64_t cols, int64_t ld);

// The blocked-GEMM path of sequence_gemm<float> at any size (C = op(A) B, + C with
// accumulate); the CPU kernel set must have one (sequence_gemm_backend()). For tests.
void blocked_sequence_gemm(bool trans_a, int64_t M, int64_t N, int64_t K, const float* A,
                           int64_t lda, const float* B, int64_t ldb, bool accumulate, float* C,
                           int64_t ldc);

// Frees the panel buffers that forward step loops released for reuse (PackedWeight's
// reuse_buffers; at most 16 MiB are held): each backward calls it first, so that a training
// step's peak memory does not include them.
void release_panel_buffers();
// What the panel cache holds now, in bytes (testing).
size_t held_panel_buffer_bytes();

// A weight operand used by many small GEMMs: C[M, N] = X[M, K] op(W) + beta C, with
// op(W) = W^T for W [N, K] (trans_w) or W for W [K, N]. With groups > 1 (trans_w only),
// op(W)'s N columns are `groups` blocks of N / groups rows of W each, block g starting
// at row g * group_stride: W^T of the rows one thread owns in every gate of a gate-major
// weight, as one operand (C's columns gate by gate). W is packed once here:
// per-call packing of W is what dominates a small-M GEMM, and the step loops
// multiply by the same slice of W_hh every step. float32 uses, in this order of
// preference, the CPU kernel set's own panel micro-kernel (panel_gemm.h; beta must
// then be 0 or 1), MKL's packed GEMM, or plain gemm(); float64 uses gemm(). W must
// outlive this object. With bf16_terms > 0 (float32 only), on a CPU where
// bf16_kernels_usable() (bf16_gemm.h), op(W) is rounded to bfloat16 and X to one (1) or a sum
// of two (2) bfloat16 values, multiplied by the AMX tiles or AVX512-BF16 dot products with float32 accumulation (beta
// 0 or 1); elsewhere bf16_terms changes nothing.
template <typename T>
class PackedWeight {
 public:
  // uses: how many gemm() calls of up to M_max rows the caller will make (-1: unknown). A
  // float32 weight used for at most kDirectMaxRows rows in all (one step of a short call at a
  // small batch) is not packed: its products read W's rows in place (dot products along k,
  // each C element summed in one fixed order whatever the split), since packing W would cost
  // more than the products it serves.
  // reuse_buffers: float32 panels come from and go back to the buffers that earlier forward
  // loops released (blas.cpp PanelCache; the forward step loops only).
  PackedWeight(bool trans_w, int64_t N, int64_t K, int64_t M_max, const T* W, int64_t ldw,
               int64_t groups = 1, int64_t group_stride = 0, int bf16_terms = 0,
               int64_t uses = -1, bool reuse_buffers = false);
  static constexpr int64_t kDirectMaxRows = 8;
  // float32 only, with N, K, M_max > 0: op(W) = W^T of bfloat16 W16 (bit patterns; grouped
  // rows as above), or with trans_w false op(W) = W16 [K, N] (row stride ldw, groups 1).
  // bf16_terms > 0 (a CPU with bfloat16 kernels, bf16_kernels_usable()): packed into the
  // tiles as it is, with no float32 copy; bf16() is then true. bf16_terms 0 (the widened
  // path, bf16_gemm.h; a kernel set with the panel micro-kernel): widened exactly into the
  // micro-kernel's float32 panels, so that gemm() multiplies float32 X by the float32
  // values of W16 (bitwise what a float32 copy of W16 gives).
  PackedWeight(int64_t N, int64_t K, int64_t M_max, const uint16_t* W16, int64_t ldw,
               int64_t groups, int64_t group_stride, int bf16_terms, bool trans_w = true);
  ~PackedWeight();
  PackedWeight(const PackedWeight&) = delete;
  PackedWeight& operator=(const PackedWeight&) = delete;
  void gemm(int64_t M, const T* X, int64_t ldx, T beta, T* C, int64_t ldc) const;
  // Whether the products run on the bfloat16 kernels (float32 with bf16_terms > 0 where
  // bf16_kernels_usable()).
  bool bf16() const { return amx_tiles_ != nullptr; }
  // Whether gemm_bf16 serves: a weight given as bfloat16 W16, or rounded for the kernels.
  bool takes_bf16_rows() const { return amx_tiles_ != nullptr || widened_; }
  // Only where takes_bf16_rows(): C[M, N] = bias + X16 op(W) for bfloat16 rows X16 (bit
  // patterns, row stride ldx), bias [N] repeated on every row, or no bias (nullptr). X16 is
  // taken as it is (one term whatever bf16_terms says): on the bfloat16 kernels with no
  // rounding and no float32 copy of X; widened, its rows are widened a block at a time
  // (widened_row_block; the buffer allocated on first use) for the panel micro-kernel.
  void gemm_bf16(int64_t M, const uint16_t* X16, int64_t ldx, const float* bias, float* C,
                 int64_t ldc) const;

 private:
  bool trans_w_;
  int64_t N_, K_, M_max_;
  int64_t per_group_ = 0, group_stride_ = 0;  // the grouped rows of W (direct products)
  bool direct_ = false;     // products on W's rows in place (no packed copy)
  int bf16_terms_;
  const T* W_;
  int64_t ldw_;
  T* gathered_;             // the grouped rows of W, contiguous, where W_ points at them
                            // (plain BLAS fallback with groups > 1), or nullptr
  PanelGemmF32 kernel_;     // the panel micro-kernel, or nullptr
  void* panels_;            // W packed for kernel_, or nullptr
  size_t cached_bytes_ = 0; // > 0: panels_ is a buffer of this size from the panel cache,
                            //   which takes it back
  void* packed_;            // else MKL's packed copy of W, or nullptr (use W_)
  void* amx_tiles_;         // bf16 with the bfloat16 kernels: op(W) in B tiles (bf16_gemm.h), else nullptr
  void* amx_rows_;          //   and the buffer of X's rows rounded to bfloat16
  bool widened_ = false;    // W16 widened into panels_ (bf16_terms 0)
  PanelGemmBf16W kernel16_ = nullptr;  // widened, M_max <= kBf16PanelMaxRows: panels_ holds
                                       // W16's values (bfloat16 panels) for this kernel
  mutable float* rows_f32_ = nullptr;  // widened: gemm_bf16's rows of X in float32
};

// pack_panels of bfloat16 W16 (bit patterns), each value widened exactly to float32.
void pack_panels_bf16(bool trans_w, int64_t N, int64_t K, const uint16_t* W16, int64_t ldw,
                      float* panels, int64_t groups = 1, int64_t group_stride = 0);

// The same panels holding the bfloat16 values themselves (PanelGemmBf16W, panel_gemm.h):
// panels16[j][k][c], zeros past column N.
void pack_panels_bf16_halves(bool trans_w, int64_t N, int64_t K, const uint16_t* W16, int64_t ldw,
                             uint16_t* panels16, int64_t groups = 1, int64_t group_stride = 0);

// Whether a widened bfloat16 weight op(W) [K, N] multiplied by at most M_max rows a call is
// packed as bfloat16 panels (PanelGemmBf16W) rather than float32 ones: where the kernel set
// has that kernel, M_max <= kBf16PanelMaxRows and its float32 panels would take at least
// bf16_half_panels_min_bytes(M_max): 3/4 of the L2 cache at up to 4 rows, all of it at 5-6
// rows, twice it at 7-8. A small-batch step is bound by streaming the thread's slice of W_hh
// once L2 cannot keep it with everything else a step reads; half the bytes then keep it
// there, for two more instructions per panel row (the widening) that each row block pays, so
// the more rows, the less the bytes matter and the larger the slice must be. Measured on the
// AVX512-BF16 Xeon (2 MiB L2), T100, interleaved, time over rnnfast float32's (float32
// panels -> bfloat16 panels), LSTM inference: slice 0.5 MiB, batch 1: 1.00 -> 1.02; 1 MiB:
// batch 1 0.99 -> 1.05, batch 4 1.02 -> 1.07; 2 MiB: batch 1 0.96 -> 0.61, batch 4 1.08 ->
// 0.97, batch 6 0.93 -> 0.91, batch 8 0.96 -> 1.06 (training 1.13 -> 1.16); 8 MiB (H1024),
// batch 4: 0.99 -> 0.66, batch 8 0.97 -> 0.96. GRU, 1.5 MiB (H512): batch 2 training 1.17 ->
// 1.09, batch 4 0.985 -> 0.989 (training 0.977 -> 0.987: a tie, and the bfloat16 panels take
// half the memory), batch 6 0.95 -> 1.04, batch 8 0.99 -> 1.04; 6 MiB (H1024) batch 8 0.97
// -> 0.85. The products are the same bits either way. set_bf16_half_panels switches the rule
// off (kAlways, kNever), for tests and comparisons.
enum class HalfPanels { kAuto = 0, kAlways = 1, kNever = 2 };
bool bf16_half_panels_for(int64_t M_max, int64_t N, int64_t K);
int64_t bf16_half_panels_min_bytes(int64_t rows);

// PackedWeight::gemm_bf16 widens the rows of X a block at a time where the weight's float32
// panels stay in L2 (take at most 3/4 of it): blocks of a multiple of 12
// rows, at least 12, whose float32 values take about kWidenedRowBytes (a buffer of all M_max
// rows took 256 KiB a thread at T100 B4 H512). Panels that do not stay in L2 are multiplied
// by all M_max rows at once, so that they are read from memory once a call rather than once
// a block.
constexpr int64_t kWidenedRowBytes = int64_t(96) << 10;
int64_t widened_row_block(int64_t M_max, int64_t N, int64_t K);
void set_bf16_half_panels(HalfPanels mode);

// The L2 cache's size in bytes (sysconf), or 1 MiB where the system does not say.
int64_t l2_cache_bytes();

// While alive, gemm() calls made by the current thread run single-threaded inside
// the BLAS (for calls from inside our own parallel regions: MKL would otherwise
// start its own threads there too). A no-op when the BLAS has no such control.
class SequentialBlasScope {
 public:
  SequentialBlasScope();
  ~SequentialBlasScope();
  SequentialBlasScope(const SequentialBlasScope&) = delete;
  SequentialBlasScope& operator=(const SequentialBlasScope&) = delete;

 private:
  int previous_;
};

// Which GEMM backs gemm(): "blas (sgemm_/dgemm_ from libtorch)" or "aten".
const char* gemm_backend();

// Which GEMM backs PackedWeight<float> (the per-step products) on this CPU.
const char* step_gemm_backend();

// Whether PackedWeight<float>'s products are the same bits however their columns are split
// (rnnfast's panel micro-kernel: every element summed over k in one order), so that a step
// loop gives the same result on any number of threads.
bool step_gemm_split_invariant_f32();

// What PackedWeight<float>(..., bf16_terms > 0) multiplies with on this CPU: "amx",
// "avx512_bf16" or "fp32" (bf16_gemm.h).
const char* step_gemm_bf16();

// Which GEMM backs sequence_gemm<float> (the large whole-sequence products) on this CPU.
const char* sequence_gemm_backend();

}  // namespace cpu
}  // namespace rnnfast
