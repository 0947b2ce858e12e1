// The AVX2/FMA panel micro-kernel declared in panel_gemm.h, compiled by
// csrc/cpu/isa_avx2.cpp under its target pragma inside namespace
// rnnfast::cpu::RNNFAST_ISA. <immintrin.h> is included by that file.
#pragma once

#include "panel_gemm.h"

namespace rnnfast {
namespace cpu {
namespace RNNFAST_ISA {

// Eight columns of one k of a panel as float32: float32 panels as they are; bfloat16
// panels (PanelGemmBf16W) widened exactly, each value's 16 bits moved to the top of its lane.
inline __m256 load_panel_half(const float* p) { return _mm256_load_ps(p); }
inline __m256 load_panel_half(const uint16_t* p) {
  const __m128i h = _mm_load_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// Rows [0, MR) of C, columns [0, ncols) (ncols <= 16 * NP): NP panels from wp (panel
// p at wp + p * pstride) of float32 or bfloat16 values (WT), 2 * NP ymm accumulators per row.
template <int MR, int NP, typename WT = float>
inline void panel_block(int64_t K, const WT* __restrict wp, int64_t pstride,
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
      w[2 * p] = load_panel_half(wp + p * pstride + k * kPanel);
      w[2 * p + 1] = load_panel_half(wp + p * pstride + k * kPanel + 8);
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
template <int MR, int NP, typename WT = float>
inline void panel_rows(int64_t N, int64_t K, const WT* panels, const float* X, int64_t ldx,
                       bool accumulate, float* C, int64_t ldc) {
  const int64_t pstride = K * kPanel;
  for (int64_t n = 0; n < N; n += NP * kPanel) {
    const int64_t ncols = N - n < NP * kPanel ? N - n : NP * kPanel;
    const WT* wp = panels + (n / kPanel) * pstride;
    if (ncols > (NP - 1) * kPanel) {
      panel_block<MR, NP, WT>(K, wp, pstride, X, ldx, C + n, ldc, ncols, accumulate);
    } else {  // fewer panels left than a block holds: one at a time
      for (int64_t q = 0; q < ncols; q += kPanel) {
        panel_block<MR, 1, WT>(K, wp + (q / kPanel) * pstride, pstride, X, ldx, C + n + q, ldc,
                               ncols - q < kPanel ? ncols - q : kPanel, accumulate);
      }
    }
  }
}

template <int MR, typename WT = float>
inline void panel_column(int64_t K, const WT* wp, const float* X, int64_t ldx,
                         bool accumulate, float* C, int64_t ldc, int64_t ncols) {
  panel_block<MR, 1, WT>(K, wp, K * kPanel, X, ldx, C, ldc, ncols, accumulate);
}

template <typename WT>
inline void panel_gemm_t(int64_t M, int64_t N, int64_t K, const WT* panels, const float* X,
                         int64_t ldx, bool accumulate, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  // Up to 6 rows: one row block; fewer rows take more panels at once, so that at
  // least 8 independent accumulators hide the FMA latency.
  switch (M) {
    case 1: return panel_rows<1, 4, WT>(N, K, panels, X, ldx, accumulate, C, ldc);
    case 2: return panel_rows<2, 2, WT>(N, K, panels, X, ldx, accumulate, C, ldc);
    case 3: return panel_rows<3, 2, WT>(N, K, panels, X, ldx, accumulate, C, ldc);
    case 4: return panel_rows<4, 1, WT>(N, K, panels, X, ldx, accumulate, C, ldc);
    case 5: return panel_rows<5, 1, WT>(N, K, panels, X, ldx, accumulate, C, ldc);
    case 6: return panel_rows<6, 1, WT>(N, K, panels, X, ldx, accumulate, C, ldc);
    default: break;
  }
  // More rows: panel by panel, all rows against a panel while it is in L1/L2.
  const int64_t pstride = K * kPanel;
  for (int64_t n = 0; n < N; n += kPanel) {
    const WT* wp = panels + (n / kPanel) * pstride;
    const int64_t ncols = N - n < kPanel ? N - n : kPanel;
    int64_t m = 0;
    for (; m + 6 <= M; m += 6)
      panel_column<6, WT>(K, wp, X + m * ldx, ldx, accumulate, C + m * ldc + n, ldc, ncols);
    const float* xr = X + m * ldx;
    float* cr = C + m * ldc + n;
    switch (M - m) {
      case 5: panel_column<5, WT>(K, wp, xr, ldx, accumulate, cr, ldc, ncols); break;
      case 4: panel_column<4, WT>(K, wp, xr, ldx, accumulate, cr, ldc, ncols); break;
      case 3: panel_column<3, WT>(K, wp, xr, ldx, accumulate, cr, ldc, ncols); break;
      case 2: panel_column<2, WT>(K, wp, xr, ldx, accumulate, cr, ldc, ncols); break;
      case 1: panel_column<1, WT>(K, wp, xr, ldx, accumulate, cr, ldc, ncols); break;
      default: break;
    }
  }
}

inline void panel_gemm_f32(int64_t M, int64_t N, int64_t K, const float* panels, const float* X,
                           int64_t ldx, bool accumulate, float* C, int64_t ldc) {
  panel_gemm_t(M, N, K, panels, X, ldx, accumulate, C, ldc);
}

// panel_gemm.h PanelGemmBf16W: M <= kBf16PanelMaxRows (8) rows on bfloat16 panels,
// bitwise what panel_gemm_f32 gives on the same values widened into float32 panels.
inline void panel_gemm_bf16w(int64_t M, int64_t N, int64_t K, const uint16_t* panels, const float* X,
                             int64_t ldx, bool accumulate, float* C, int64_t ldc) {
  panel_gemm_t(M, N, K, panels, X, ldx, accumulate, C, ldc);
}


// ---- The blocked GEMM for the whole-sequence products (panel_gemm.h) ----

constexpr int kTileM = 6;  // rows of the register tile: 12 ymm accumulators with 16 columns

// v[j] becomes lane j of v[0..7] (an 8 x 8 transpose in registers): pairs of rows
// interleaved by float, then by pairs of floats, then 128-bit halves gathered.
inline void transpose8(__m256 v[8]);

// A whole W^T panel (panel_gemm.h PackPanelF32): each half of 8 columns in 8 x 8 blocks
// through transpose8, the last K % 8 values one at a time.
inline void pack_panel_f32(int64_t K, const float* const* rows, float* panel) {
  int64_t k0 = 0;
  for (; k0 + 8 <= K; k0 += 8) {
    for (int half = 0; half < 2; ++half) {
      __m256 v[8];
#pragma GCC unroll 8
      for (int c = 0; c < 8; ++c) v[c] = _mm256_loadu_ps(rows[8 * half + c] + k0);
      transpose8(v);
#pragma GCC unroll 8
      for (int k = 0; k < 8; ++k) _mm256_storeu_ps(panel + (k0 + k) * kPanel + 8 * half, v[k]);
    }
  }
  for (; k0 < K; ++k0)
    for (int c = 0; c < 16; ++c) panel[k0 * kPanel + c] = rows[c][k0];
}

inline void transpose8(__m256 v[8]) {
  __m256 t[8];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]);
  }
  // v[4i + c], 128-bit half L: column 4L + c of rows 4i .. 4i + 3.
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) {
    const __m256d a = _mm256_castps_pd(t[4 * i]), b = _mm256_castps_pd(t[4 * i + 2]);
    const __m256d c = _mm256_castps_pd(t[4 * i + 1]), d = _mm256_castps_pd(t[4 * i + 3]);
    v[4 * i] = _mm256_castpd_ps(_mm256_unpacklo_pd(a, b));
    v[4 * i + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a, b));
    v[4 * i + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(c, d));
    v[4 * i + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(c, d));
  }
  // Column 4L + c: half L of v[c], then of v[4 + c].
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    t[c] = _mm256_permute2f128_ps(v[c], v[4 + c], 0x20);
    t[4 + c] = _mm256_permute2f128_ps(v[c], v[4 + c], 0x31);
  }
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) v[j] = t[j];
}

// rows [0, mc) x k [0, kc) of op(A) into 6-row tiles: Ap[i / 6][k][r] = op(A)[i + r][k],
// zero rows past mc.
inline void pack_a_tiles(const float* __restrict A, int64_t a_row, int64_t a_k, int64_t mc,
                         int64_t kc, float* __restrict Ap) {
  for (int64_t i = 0; i < mc; i += kTileM) {
    const int64_t rows = mc - i < kTileM ? mc - i : kTileM;
    float* __restrict dst = Ap + i * kc;
    if (a_row == 1 && rows == kTileM) {  // A^T: the tile's 6 values of one k are adjacent
      for (int64_t k = 0; k < kc; ++k) {
        const float* __restrict src = A + i + k * a_k;
#pragma GCC unroll 6
        for (int r = 0; r < kTileM; ++r) dst[k * kTileM + r] = src[r];
      }
    } else if (a_k == 1) {
      // Rows of A: 8 k at a time, the tile's rows (zero past `rows`) transposed in
      // registers, one k's 6 values per store (its 2 extra lanes are overwritten by the
      // next k's store; the last k of the tile is stored masked).
      const __m256i six = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0);
      for (int64_t k0 = 0; k0 < kc; k0 += 8) {
        const int64_t nk = kc - k0 < 8 ? kc - k0 : 8;
        const __m256i km = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(nk)),
                                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256 v[8];
#pragma GCC unroll 6
        for (int r = 0; r < kTileM; ++r)
          v[r] = r < rows ? _mm256_maskload_ps(A + (i + r) * a_row + k0, km) : _mm256_setzero_ps();
        v[6] = v[7] = _mm256_setzero_ps();
        transpose8(v);
        for (int64_t k = 0; k < nk; ++k) {
          float* out = dst + (k0 + k) * kTileM;
          if (k0 + k + 1 < kc) {
            _mm256_storeu_ps(out, v[k]);
          } else {
            _mm256_maskstore_ps(out, six, v[k]);
          }
        }
      }
    } else {
      for (int r = 0; r < kTileM; ++r) {
        if (r < rows) {
          const float* __restrict src = A + (i + r) * a_row;
          for (int64_t k = 0; k < kc; ++k) dst[k * kTileM + r] = src[k * a_k];
        } else {
          for (int64_t k = 0; k < kc; ++k) dst[k * kTileM + r] = 0.0f;
        }
      }
    }
  }
}

// rows [0, kc) x columns [0, nc) of B into panels: Bp[j / 16][k][c] = B[k][j + c], zero
// columns past nc.
inline void pack_b_panels(const float* __restrict B, int64_t ldb, int64_t kc, int64_t nc,
                          float* __restrict Bp) {
  for (int64_t j = 0; j < nc; j += kPanel) {
    const int64_t cols = nc - j < kPanel ? nc - j : kPanel;
    float* __restrict dst = Bp + j * kc;
    if (cols == kPanel) {
      for (int64_t k = 0; k < kc; ++k) {
        _mm256_store_ps(dst + k * kPanel, _mm256_loadu_ps(B + k * ldb + j));
        _mm256_store_ps(dst + k * kPanel + 8, _mm256_loadu_ps(B + k * ldb + j + 8));
      }
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t c = 0; c < kPanel; ++c) dst[k * kPanel + c] = c < cols ? B[k * ldb + j + c] : 0.0f;
    }
  }
}

// C[rows, cols] (+)= a-tile [kc][6] x b-panel [kc][16] (rows <= 6, cols <= 16).
inline void tile_6x16(int64_t kc, const float* __restrict a, const float* __restrict b,
                      float* __restrict C, int64_t ldc, int64_t rows, int64_t cols,
                      bool accumulate) {
  // C's lines are not in any pattern the hardware prefetcher follows: ask for them
  // now, they are needed after the kc loop.
  for (int64_t r = 0; r < rows; ++r) {
    _mm_prefetch(reinterpret_cast<const char*>(C + r * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(C + r * ldc + kPanel - 1), _MM_HINT_T0);
  }
  __m256 acc[kTileM][2];
#pragma GCC unroll 6
  for (int r = 0; r < kTileM; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  // Unrolled by 4 with the A tile's line 16 k ahead requested (measured -1% to +10% on
  // 1 and 2 cores at L/XL backward shapes, standalone, against neither).
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    _mm_prefetch(reinterpret_cast<const char*>(a + (k + 16) * kTileM), _MM_HINT_T0);
    const __m256 b0 = _mm256_load_ps(b + k * kPanel), b1 = _mm256_load_ps(b + k * kPanel + 8);
#pragma GCC unroll 6
    for (int r = 0; r < kTileM; ++r) {
      const __m256 x = _mm256_broadcast_ss(a + k * kTileM + r);
      acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
    }
  }
  if (rows == kTileM && cols == kPanel) {
#pragma GCC unroll 6
    for (int r = 0; r < kTileM; ++r) {
      float* c = C + r * ldc;
      __m256 v0 = acc[r][0], v1 = acc[r][1];
      if (accumulate) {
        v0 = _mm256_add_ps(_mm256_loadu_ps(c), v0);
        v1 = _mm256_add_ps(_mm256_loadu_ps(c + 8), v1);
      }
      _mm256_storeu_ps(c, v0);
      _mm256_storeu_ps(c + 8, v1);
    }
    return;
  }
  alignas(32) float t[kTileM][kPanel];
#pragma GCC unroll 6
  for (int r = 0; r < kTileM; ++r) {
    _mm256_store_ps(t[r], acc[r][0]);
    _mm256_store_ps(t[r] + 8, acc[r][1]);
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t q = 0; q < cols; ++q)
      C[r * ldc + q] = accumulate ? C[r * ldc + q] + t[r][q] : t[r][q];
}

inline void blocked_gemm_f32(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_row,
                             int64_t a_k, const float* B, int64_t ldb, bool accumulate,
                             float* C, int64_t ldc, float* workspace) {
  if (M <= 0 || N <= 0 || K <= 0) return;  // (K = 0 is the caller's: C = beta C)
  float* Ap = workspace;
  float* Bp = workspace + kBlockM * kBlockK;
  for (int64_t jc = 0; jc < N; jc += kBlockN) {
    const int64_t nc = N - jc < kBlockN ? N - jc : kBlockN;
    for (int64_t pc = 0; pc < K; pc += kBlockK) {
      const int64_t kc = K - pc < kBlockK ? K - pc : kBlockK;
      pack_b_panels(B + pc * ldb + jc, ldb, kc, nc, Bp);
      const bool acc = accumulate || pc > 0;
      for (int64_t ic = 0; ic < M; ic += kBlockM) {
        const int64_t mc = M - ic < kBlockM ? M - ic : kBlockM;
        pack_a_tiles(A + ic * a_row + pc * a_k, a_row, a_k, mc, kc, Ap);
        for (int64_t jr = 0; jr < nc; jr += kPanel) {
          const int64_t cols = nc - jr < kPanel ? nc - jr : kPanel;
          for (int64_t ir = 0; ir < mc; ir += kTileM) {
            tile_6x16(kc, Ap + ir * kc, Bp + jr * kc, C + (ic + ir) * ldc + jc + jr, ldc,
                      mc - ir < kTileM ? mc - ir : kTileM, cols, acc);
          }
        }
      }
    }
  }
}

}  // namespace RNNFAST_ISA
}  // namespace cpu
}  // namespace rnnfast
