// rnnfast's own small-GEMM micro-kernel for the step loops (float32).
//
//   C[M, N] = X[M, K] op(W)            (accumulate = false)
//   C[M, N] = C + X[M, K] op(W)        (accumulate = true)
//
// op(W) [K, N] is stored once per layer call as column panels of kPanel = 16 columns:
//
//   panels[j][k][c] = op(W)[k][j * 16 + c]    j < ceil(N / 16), k < K, c < 16
//
// (zeros past column N), so that one 64-byte line holds one k of a panel and the
// kernel streams each panel front to back. Rows of X are consumed a few at a time
// (up to 6) against one to four panels held in vector accumulators: W is read once
// per block of rows, X is broadcast one element at a time. Summation over k is in
// ascending order, so results are bitwise reproducible run to run.
//
// Why not the BLAS: the per-step products are small-M (M = the batch rows active in
// a step, 1 to a few hundred) against one thread's slice of W_hh. Measured on this
// project's AVX2 machine (AMD EPYC, one core, one run of a standalone comparison
// with MKL 2024.2's packed GEMM, GF/s MKL -> this kernel): M=1 N=512 K=256 16.6 ->
// 34.4, M=4 N=1024 K=512 24.9 -> 67.0, M=16 N=256 K=128 54.8 -> 66.4, M=64 N=1024
// K=512 61.8 -> 66.8; level at M=128 N=1024 K=512. Blocking k for L1 (256) gained
// nothing there and was left out.
//
// Legend: M rows of X and C, N output columns, K the reduction, ld row strides.
#pragma once

#include <cstdint>

namespace rnnfast {
namespace cpu {

constexpr int64_t kPanel = 16;

// Floats needed for the panels of an op(W) with N columns and K rows.
inline int64_t panel_floats(int64_t N, int64_t K) { return (N + kPanel - 1) / kPanel * kPanel * K; }

// Packs op(W) into panels: op(W) = W^T for W [N, K] (trans_w), else W [K, N]. With
// groups > 1 (trans_w only), column n of op(W) is row (n / (N / groups)) * group_stride
// + n % (N / groups) of W.
void pack_panels(bool trans_w, int64_t N, int64_t K, const float* W, int64_t ldw, float* panels,
                 int64_t groups = 1, int64_t group_stride = 0);

// One whole panel of op(W) = W^T: panel[k][c] = rows[c][k] for the 16 rows (columns of
// op(W)) rows[0..15], k in [0, K); the kernel sets' own transposes in registers (the
// scalar copy, one value at a time, took 9% of an LSTM call at batch 1).
using PackPanelF32 = void (*)(int64_t K, const float* const* rows, float* panel);

using PanelGemmF32 = void (*)(int64_t M, int64_t N, int64_t K, const float* panels,
                              const float* X, int64_t ldx, bool accumulate, float* C,
                              int64_t ldc);

// The same product on panels of bfloat16 values (bit patterns, the layout above at half the
// bytes: panels16[j][k][c]), for M <= kBf16PanelMaxRows rows of float32 X: each value is
// widened exactly to float32 in registers and every C element summed in the same order as
// PanelGemmF32's on the widened float32 panels, so the result is bitwise the same. It serves
// the step products of bfloat16 layers at a small batch (the widened path, bf16_gemm.h),
// which are bound by streaming the thread's W slice through the caches; at half the bytes
// the slice stays in L2 at twice the size. Measured on the AVX512-BF16 Xeon (2 MiB L2 a
// core, float32 LSTM inference at T100, the step products' W_hh slice per thread given):
// at batch 4, 230 GF/s with a 1.1 MiB slice, 170 with 2 MiB, 142 with 3.1 MiB; at batch 1,
// 98, 61 and 42.
constexpr int64_t kBf16PanelMaxRows = 8;
using PanelGemmBf16W = void (*)(int64_t M, int64_t N, int64_t K, const uint16_t* panels,
                                const float* X, int64_t ldx, bool accumulate, float* C,
                                int64_t ldc);

// The whole-sequence products' blocked GEMM (float32, one thread):
//
//   C[M, N] = op(A)[M, K] B[K, N]          (accumulate = false; C is not read)
//   C[M, N] = C + op(A)[M, K] B[K, N]      (accumulate = true)
//
// op(A)[m][k] is A[m * a_row + k * a_k]: A itself is a_row = lda, a_k = 1; A^T (the
// weight gradients' dG^T) is a_row = 1, a_k = lda. B is row-major with row stride ldb.
// The classic blocking for the caches: B is packed kBlockK rows by kBlockN columns at a
// time into 16-column panels (its 16 x kBlockK micro-panel stays in L1), op(A) kBlockM
// rows by kBlockK at a time into 6-row tiles (the block stays in L2), and a 6 x 16
// register tile of C is accumulated per k block with C's lines prefetched. Each C
// element is the k blocks' sums added in ascending k, every block summed in ascending
// k: the result does not depend on how rows are split across threads.
//
// Against the BLAS: measured in one process against torch.mm (MKL 2024.2, 2 threads,
// this project's AVX2 machine, AMD EPYC; bench/gemm_cpu.py, two rounds of one run, with
// the first block sizes 384 x 4080) at the backward shapes of the M/L/XL grid (e.g.
// 3072x1024x6400 with A^T, 6400x1024x3072 with A): 0.86-1.16x MKL's speed, i.e. level
// within the machine's noise. Below N = 256 MKL was as fast
// or faster (sequence_gemm in blas.h keeps those). Kept because it is no slower and its
// result does not depend on the thread count.
//
// The AVX-512 set's blocked GEMM has the same blocks with a 12 x 32 register tile
// (two B panels, 24 zmm accumulators). On the AVX-512 machine (AMD EPYC, Zen 5, 2
// threads, the same standalone comparison; FMA peak 494 GF/s) at those shapes, GF/s MKL
// -> AVX2 -> AVX-512: 6400x1024x256 A 175 -> 212 -> 364, 1024x256x6400 A^T 171 -> 186 ->
// 335, 4096x1024x6400 A^T 195 -> 221 -> 401, 6400x1024x4096 A 193 -> 199 -> 344; and at
// the small grid shapes, where the AVX2 set keeps MKL: 512x128x3200 A^T 172 -> 192 ->
// 361, 3200x128x512 A 199 -> 217 -> 392, 1024x256x100 A^T 179 -> 217 -> 416. So the
// AVX-512 set takes every product from M N K = 2^24 (below that a call's workspace and
// threads cost more than the product).
//
// Block sizes: the B micro-panel (16 x kBlockK, 16 KiB) stays in L1 and the op(A) block
// (kBlockM x kBlockK, 144 KiB) in L2 of this machine (32 KiB / 512 KiB); kBlockN keeps
// the per-thread workspace at 656 KiB. A larger B block, 384 x 4080, was level with this
// in a standalone comparison on 2 threads at the XL backward shapes (about 5% faster at
// 6400x1024x1024 with op(A) = A, where this packs A twice), but its 1.7 MiB a thread at
// N = 1024 put the RNN's training peak memory 2% above torch.nn's at XL.
//
// workspace: blocked_gemm_workspace_floats(N) floats, 64-byte aligned.
constexpr int64_t kTileRows = 12;  // a thread's rows of C are a multiple (the AVX2 tile: 6, AVX-512: 12)
constexpr int64_t kBlockM = 144;   // rows of op(A) per packed block (multiple of 6)
constexpr int64_t kBlockK = 256;   // k per block
constexpr int64_t kBlockN = 512;   // columns of B per packed block (multiple of 16)

inline int64_t blocked_gemm_workspace_floats(int64_t N) {
  const int64_t nc = N < kBlockN ? (N + kPanel - 1) / kPanel * kPanel : kBlockN;
  return kBlockM * kBlockK + nc * kBlockK;
}

using BlockedGemmF32 = void (*)(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_row,
                                int64_t a_k, const float* B, int64_t ldb, bool accumulate,
                                float* C, int64_t ldc, float* workspace);

}  // namespace cpu
}  // namespace rnnfast
