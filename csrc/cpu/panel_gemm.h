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

// Packs op(W) into panels: op(W) = W^T for W [N, K] (trans_w), else W [K, N].
void pack_panels(bool trans_w, int64_t N, int64_t K, const float* W, int64_t ldw, float* panels);

using PanelGemmF32 = void (*)(int64_t M, int64_t N, int64_t K, const float* panels,
                              const float* X, int64_t ldx, bool accumulate, float* C,
                              int64_t ldc);

}  // namespace cpu
}  // namespace rnnfast
