// The AVX2/FMA panel micro-kernel declared in panel_gemm.h, compiled by
// csrc/cpu/isa_avx2.cpp under its target pragma inside namespace
// rnnfast::cpu::RNNFAST_ISA. <immintrin.h> is included by that file.
#pragma once

#include "panel_gemm.h"

namespace rnnfast {
namespace cpu {
namespace RNNFAST_ISA {

// Rows [0, MR) of C, columns [0, ncols) (ncols <= 16 * NP): NP panels from wp (panel
// p at wp + p * pstride), 2 * NP ymm accumulators per row.
template <int MR, int NP>
inline void panel_block(int64_t K, const float* __restrict wp, int64_t pstride,
                        const float* __restrict X, int64_t ldx, float* __restrict C, int64_t ldc,
                        int64_t ncols, bool accumulate) {
  __m256 acc[MR][2 * NP];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 8
    for (int p = 0; p < 2 * NP; ++p) acc[r][p] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < K; ++k) {
    __m256 w[2 * NP];
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) {
      w[2 * p] = _mm256_load_ps(wp + p * pstride + k * kPanel);
      w[2 * p + 1] = _mm256_load_ps(wp + p * pstride + k * kPanel + 8);
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 x = _mm256_broadcast_ss(X + r * ldx + k);
#pragma GCC unroll 8
      for (int p = 0; p < 2 * NP; ++p) acc[r][p] = _mm256_fmadd_ps(x, w[p], acc[r][p]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    float* c = C + r * ldc;
#pragma GCC unroll 8
    for (int p = 0; p < 2 * NP; ++p) {
      const int64_t col = p * 8;
      if (col + 8 <= ncols) {
        __m256 v = acc[r][p];
        if (accumulate) v = _mm256_add_ps(_mm256_loadu_ps(c + col), v);
        _mm256_storeu_ps(c + col, v);
      } else if (col < ncols) {  // the last, partial vector of the matrix
        alignas(32) float tmp[8];
        _mm256_store_ps(tmp, acc[r][p]);
        for (int64_t q = 0; q < ncols - col; ++q)
          c[col + q] = accumulate ? c[col + q] + tmp[q] : tmp[q];
      }
    }
  }
}

// All column blocks of NP panels for MR rows.
template <int MR, int NP>
inline void panel_rows(int64_t N, int64_t K, const float* panels, const float* X, int64_t ldx,
                       bool accumulate, float* C, int64_t ldc) {
  const int64_t pstride = K * kPanel;
  for (int64_t n = 0; n < N; n += NP * kPanel) {
    const int64_t ncols = N - n < NP * kPanel ? N - n : NP * kPanel;
    const float* wp = panels + (n / kPanel) * pstride;
    if (ncols > (NP - 1) * kPanel) {
      panel_block<MR, NP>(K, wp, pstride, X, ldx, C + n, ldc, ncols, accumulate);
    } else {  // fewer panels left than a block holds: one at a time
      for (int64_t q = 0; q < ncols; q += kPanel) {
        panel_block<MR, 1>(K, wp + (q / kPanel) * pstride, pstride, X, ldx, C + n + q, ldc,
                           ncols - q < kPanel ? ncols - q : kPanel, accumulate);
      }
    }
  }
}

template <int MR>
inline void panel_column(int64_t K, const float* wp, const float* X, int64_t ldx,
                         bool accumulate, float* C, int64_t ldc, int64_t ncols) {
  panel_block<MR, 1>(K, wp, K * kPanel, X, ldx, C, ldc, ncols, accumulate);
}

inline void panel_gemm_f32(int64_t M, int64_t N, int64_t K, const float* panels, const float* X,
                           int64_t ldx, bool accumulate, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  // Up to 6 rows: one row block; fewer rows take more panels at once, so that at
  // least 8 independent accumulators hide the FMA latency.
  switch (M) {
    case 1: return panel_rows<1, 4>(N, K, panels, X, ldx, accumulate, C, ldc);
    case 2: return panel_rows<2, 2>(N, K, panels, X, ldx, accumulate, C, ldc);
    case 3: return panel_rows<3, 2>(N, K, panels, X, ldx, accumulate, C, ldc);
    case 4: return panel_rows<4, 1>(N, K, panels, X, ldx, accumulate, C, ldc);
    case 5: return panel_rows<5, 1>(N, K, panels, X, ldx, accumulate, C, ldc);
    case 6: return panel_rows<6, 1>(N, K, panels, X, ldx, accumulate, C, ldc);
    default: break;
  }
  // More rows: panel by panel, all rows against a panel while it is in L1/L2.
  const int64_t pstride = K * kPanel;
  for (int64_t n = 0; n < N; n += kPanel) {
    const float* wp = panels + (n / kPanel) * pstride;
    const int64_t ncols = N - n < kPanel ? N - n : kPanel;
    int64_t m = 0;
    for (; m + 6 <= M; m += 6)
      panel_column<6>(K, wp, X + m * ldx, ldx, accumulate, C + m * ldc + n, ldc, ncols);
    const float* xr = X + m * ldx;
    float* cr = C + m * ldc + n;
    switch (M - m) {
      case 5: panel_column<5>(K, wp, xr, ldx, accumulate, cr, ldc, ncols); break;
      case 4: panel_column<4>(K, wp, xr, ldx, accumulate, cr, ldc, ncols); break;
      case 3: panel_column<3>(K, wp, xr, ldx, accumulate, cr, ldc, ncols); break;
      case 2: panel_column<2>(K, wp, xr, ldx, accumulate, cr, ldc, ncols); break;
      case 1: panel_column<1>(K, wp, xr, ldx, accumulate, cr, ldc, ncols); break;
      default: break;
    }
  }
}

}  // namespace RNNFAST_ISA
}  // namespace cpu
}  // namespace rnnfast
