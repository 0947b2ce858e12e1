// The AVX-512 panel micro-kernel and blocked GEMM declared in panel_gemm.h, compiled
// by csrc/cpu/isa_avx512.cpp under its target pragma inside namespace
// rnnfast::cpu::RNNFAST_ISA. <immintrin.h> is included by that file.
//
// Same operand layouts as the AVX2 set (panel_gemm_impl.h): a 16-column panel is one
// zmm register per k, so a register tile of MR rows x NP panels holds MR * NP
// accumulators. With 32 registers, tiles of 24 accumulators keep both FMA pipes busy
// (latency 4, two pipes: at least 8 independent chains) and leave room for the W
// vectors; X is broadcast one element at a time from memory. Every C element is one
// accumulator summed over k in ascending order (the step kernel) or per k block in
// ascending order (the blocked GEMM), as in the AVX2 set: results do not depend on how
// rows or columns are split across threads or blocks.
#pragma once

#include "panel_gemm.h"

namespace rnnfast {
namespace cpu {
namespace RNNFAST_ISA {

// Mask of the first n (0..16) lanes.
inline __mmask16 lanes(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}

// One k of a panel (16 columns) as float32: float32 panels as they are; bfloat16 panels
// (PanelGemmBf16W) widened exactly, each value's 16 bits moved to the top of its lane.
inline __m512 load_panel_row(const float* p) { return _mm512_load_ps(p); }
inline __m512 load_panel_row(const uint16_t* p) {
  // (The zero-masked forms: GCC 12 warns that the unmasked ones' undefined source may be
  // used uninitialized.)
  const __m256i h = _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
  const __mmask16 all = 0xFFFF;
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(all, _mm512_maskz_cvtepu16_epi32(all, h), 16));
}

// Rows [0, MR) of C, columns [0, ncols) (ncols <= 16 * NP): NP panels from wp (panel
// p at wp + p * pstride, row k of a panel at + k * 16), of float32 or bfloat16 values (WT).
// X is row r, element k at X[r * ldx + k]; or, Packed, a row tile packed by k, at
// X[k * MR + r] (ldx unused).
template <int MR, int NP, bool Packed = false, typename WT = float>
inline void zpanel_block(int64_t K, const WT* __restrict wp, int64_t pstride,
                         const float* __restrict X, int64_t ldx, float* __restrict C,
                         int64_t ldc, int64_t ncols, bool accumulate) {
  __m512 acc[MR][NP];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_setzero_ps();
  }
#pragma GCC unroll 2
  for (int64_t k = 0; k < K; ++k) {
    __m512 w[NP];
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) w[p] = load_panel_row(wp + p * pstride + k * kPanel);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 x = _mm512_set1_ps(Packed ? X[k * MR + r] : X[r * ldx + k]);
#pragma GCC unroll 8
      for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_fmadd_ps(x, w[p], acc[r][p]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    float* c = C + r * ldc;
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) {
      const int64_t col = p * kPanel;
      if (col + kPanel <= ncols) {
        __m512 v = acc[r][p];
        if (accumulate) v = _mm512_add_ps(_mm512_loadu_ps(c + col), v);
        _mm512_storeu_ps(c + col, v);
      } else if (col < ncols) {  // the last, partial vector of the matrix
        const __mmask16 m = lanes(ncols - col);
        __m512 v = acc[r][p];
        if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, c + col), v);
        _mm512_mask_storeu_ps(c + col, m, v);
      }
    }
  }
}

// Columns [0, N) for MR rows, NP panels at a time (the remainder one panel at a time).
template <int MR, int NP, typename WT = float>
inline void zpanel_rows(int64_t N, int64_t K, const WT* panels, const float* X, int64_t ldx,
                        bool accumulate, float* C, int64_t ldc) {
  const int64_t pstride = K * kPanel;
  int64_t n = 0;
  for (; n + (NP - 1) * kPanel < N; n += NP * kPanel) {
    const int64_t ncols = N - n < NP * kPanel ? N - n : NP * kPanel;
    zpanel_block<MR, NP, false, WT>(K, panels + (n / kPanel) * pstride, pstride, X, ldx, C + n, ldc,
                                    ncols, accumulate);
  }
  for (; n < N; n += kPanel) {
    zpanel_block<MR, 1, false, WT>(K, panels + (n / kPanel) * pstride, pstride, X, ldx, C + n, ldc,
                                   N - n < kPanel ? N - n : kPanel, accumulate);
  }
}

// `rows` rows (1..12) against NP panels.
template <int NP, bool Packed>
inline void zpanel_rows_n(int64_t rows, int64_t K, const float* wp, int64_t pstride, const float* X,
                        int64_t ldx, float* C, int64_t ldc, int64_t ncols, bool accumulate) {
  switch (rows) {
    case 1: return zpanel_block<1, NP, Packed>(K, wp, pstride, X, ldx, C, ldc, ncols, accumulate);
    case 2: return zpanel_block<2, NP, Packed>(K, wp, pstride, X, ldx, C, ldc, ncols, accumulate);
    case 3: return zpanel_block<3, NP, Packed>(K, wp, pstride, X, ldx, C, ldc, ncols, accumulate);
    case 4: return zpanel_block<4, NP, Packed>(K, wp, pstride, X, ldx, C, ldc, ncols, accumulate);
    case 5: return zpanel_block<5, NP, Packed>(K, wp, pstride, X, ldx, C, ldc, ncols, accumulate);
    case 6: return zpanel_block<6, NP, Packed>(K, wp, pstride, X, ldx, C, ldc, ncols, accumulate);
    case 7: return zpanel_block<7, NP, Packed>(K, wp, pstride, X, ldx, C, ldc, ncols, accumulate);
    case 8: return zpanel_block<8, NP, Packed>(K, wp, pstride, X, ldx, C, ldc, ncols, accumulate);
    case 9: return zpanel_block<9, NP, Packed>(K, wp, pstride, X, ldx, C, ldc, ncols, accumulate);
    case 10: return zpanel_block<10, NP, Packed>(K, wp, pstride, X, ldx, C, ldc, ncols, accumulate);
    case 11: return zpanel_block<11, NP, Packed>(K, wp, pstride, X, ldx, C, ldc, ncols, accumulate);
    case 12: return zpanel_block<12, NP, Packed>(K, wp, pstride, X, ldx, C, ldc, ncols, accumulate);
    default: return;
  }
}

// Many rows: column blocks of two panels (2 x K x 64 bytes, in L1 up to K = 384),
// all rows against a block in row blocks of at most 12 (up to 24 accumulators), the
// rows shared out evenly (M = 16: two blocks of 8, not 12 + 4, whose 8 accumulators
// would leave the FMA pipes waiting on latency). For long reductions (K >= 768, the XL
// layers' steps) the rows of each block are first copied into one contiguous tile
// packed by k (element k of the block's rows side by side): the block then streams one
// array besides its two panels, where it otherwise walks 12 rows each ldx apart, and
// at K = 1024 that was worth 13-18% of the XL layer (one A/B run each way); at
// K = 256..512 the copy cost what it saved. (Splitting k into blocks of 256, adding
// each block's sum to C, was slower: C [128, 2048] a thread is then read and written
// four times.)
constexpr int64_t kRowBlock = 12;
constexpr int64_t kPackRowsMinK = 768;

// A thread's own buffer for the packed row tiles (grown as needed, never shrunk).
struct TileBuffer {
  float* p = nullptr;
  int64_t n = 0;
  float* get(int64_t need) {
    if (need > n) {
      std::free(p);
      p = static_cast<float*>(std::aligned_alloc(64, ((need * 4 + 63) / 64) * 64));
      n = p != nullptr ? need : 0;
    }
    return p;
  }
  ~TileBuffer() { std::free(p); }
};

template <bool Packed>
inline void panel_many_rows_impl(int64_t M, int64_t N, int64_t K, const float* panels,
                                 const float* X, int64_t ldx, bool accumulate, float* C,
                                 int64_t ldc, const float* tiles) {
  const int64_t pstride = K * kPanel;
  const int64_t nblocks = (M + kRowBlock - 1) / kRowBlock;
  const int64_t base = M / nblocks, extra = M % nblocks;  // the first `extra` get one more
  for (int64_t n = 0; n < N; n += 2 * kPanel) {
    const int64_t ncols = N - n < 2 * kPanel ? N - n : 2 * kPanel;
    const float* wp = panels + (n / kPanel) * pstride;
    for (int64_t blk = 0, m = 0; blk < nblocks; ++blk) {
      const int64_t rows = base + (blk < extra ? 1 : 0);
      const float* x = Packed ? tiles + m * K : X + m * ldx;
      if (ncols > kPanel) {
        zpanel_rows_n<2, Packed>(rows, K, wp, pstride, x, ldx, C + m * ldc + n, ldc, ncols,
                                 accumulate);
      } else {
        zpanel_rows_n<1, Packed>(rows, K, wp, pstride, x, ldx, C + m * ldc + n, ldc, ncols,
                                 accumulate);
      }
      m += rows;
    }
  }
}

inline void transpose16(__m512 v[16]);

// rows (1..12) rows of X, each ldx apart, into one tile packed by k: dst[k * rows + r] =
// X[r * ldx + k]; 16 k at a time through transpose16 (the rows padded to 16 with zeros,
// each k's `rows` lanes stored), the last K % 16 one value at a time.
inline void pack_row_tile(int64_t rows, int64_t K, const float* X, int64_t ldx, float* dst) {
  const __mmask16 m = lanes(rows);
  int64_t k0 = 0;
  for (; k0 + 16 <= K; k0 += 16) {
    __m512 v[16];
#pragma GCC unroll 16
    for (int r = 0; r < 16; ++r) v[r] = r < rows ? _mm512_loadu_ps(X + r * ldx + k0) : _mm512_setzero_ps();
    transpose16(v);
#pragma GCC unroll 16
    for (int k = 0; k < 16; ++k) _mm512_mask_storeu_ps(dst + (k0 + k) * rows, m, v[k]);
  }
  for (; k0 < K; ++k0)
    for (int64_t r = 0; r < rows; ++r) dst[k0 * rows + r] = X[r * ldx + k0];
}

inline void panel_many_rows(int64_t M, int64_t N, int64_t K, const float* panels, const float* X,
                            int64_t ldx, bool accumulate, float* C, int64_t ldc) {
  static thread_local TileBuffer buffer;
  const float* tiles = nullptr;
  if (K >= kPackRowsMinK && (tiles = buffer.get(M * K)) != nullptr) {
    const int64_t nblocks = (M + kRowBlock - 1) / kRowBlock;
    const int64_t base = M / nblocks, extra = M % nblocks;
    float* dst = buffer.p;
    for (int64_t blk = 0, m = 0; blk < nblocks; ++blk) {
      const int64_t rows = base + (blk < extra ? 1 : 0);
      pack_row_tile(rows, K, X + m * ldx, ldx, dst);
      dst += rows * K;
      m += rows;
    }
    return panel_many_rows_impl<true>(M, N, K, panels, X, ldx, accumulate, C, ldc, tiles);
  }
  return panel_many_rows_impl<false>(M, N, K, panels, X, ldx, accumulate, C, ldc, nullptr);
}

// Up to 8 rows (1 <= M <= 8): one row block against as many panels as give 8 to 24
// accumulators; float32 or bfloat16 panels, summed in the same order.
template <typename WT>
inline void panel_few_rows(int64_t M, int64_t N, int64_t K, const WT* panels, const float* X,
                           int64_t ldx, bool accumulate, float* C, int64_t ldc) {
  switch (M) {
    case 1: return zpanel_rows<1, 8, WT>(N, K, panels, X, ldx, accumulate, C, ldc);
    case 2: return zpanel_rows<2, 4, WT>(N, K, panels, X, ldx, accumulate, C, ldc);
    case 3: return zpanel_rows<3, 4, WT>(N, K, panels, X, ldx, accumulate, C, ldc);
    case 4: return zpanel_rows<4, 4, WT>(N, K, panels, X, ldx, accumulate, C, ldc);
    case 5: return zpanel_rows<5, 4, WT>(N, K, panels, X, ldx, accumulate, C, ldc);
    case 6: return zpanel_rows<6, 4, WT>(N, K, panels, X, ldx, accumulate, C, ldc);
    case 7: return zpanel_rows<7, 3, WT>(N, K, panels, X, ldx, accumulate, C, ldc);
    case 8: return zpanel_rows<8, 3, WT>(N, K, panels, X, ldx, accumulate, C, ldc);
    default: return;
  }
}

inline void panel_gemm_f32(int64_t M, int64_t N, int64_t K, const float* panels, const float* X,
                           int64_t ldx, bool accumulate, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (M <= 8) return panel_few_rows(M, N, K, panels, X, ldx, accumulate, C, ldc);
  return panel_many_rows(M, N, K, panels, X, ldx, accumulate, C, ldc);
}

// panel_gemm.h PanelGemmBf16W: M <= kBf16PanelMaxRows (8) rows on bfloat16 panels,
// bitwise what panel_gemm_f32 gives on the same values widened into float32 panels.
inline void panel_gemm_bf16w(int64_t M, int64_t N, int64_t K, const uint16_t* panels, const float* X,
                             int64_t ldx, bool accumulate, float* C, int64_t ldc) {
  static_assert(kBf16PanelMaxRows <= 8, "panel_few_rows dispatches up to 8 rows");
  if (M <= 0 || N <= 0) return;
  panel_few_rows(M, N, K, panels, X, ldx, accumulate, C, ldc);
}


// ---- The blocked GEMM for the whole-sequence products (panel_gemm.h) ----
//
// Register tile: 12 rows x 32 columns (two B panels), 24 zmm accumulators. op(A) is
// packed in 12-row tiles (kBlockM = 144 is a multiple of 12), B in 16-column panels as
// in the AVX2 set.

constexpr int kTileM = 12;

// v[j] becomes lane j of v[0..15] (a 16 x 16 transpose in registers): pairs of rows
// interleaved by float, then by pairs of floats, then 128-bit lanes gathered in two steps.
inline void transpose16(__m512 v[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
  }
  // v[4i + c], 128-bit lane L: column 4L + c of rows 4i .. 4i + 3.
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
    v[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    v[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    v[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    v[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  // Column 4L + c: lane L of v[c], v[4 + c], v[8 + c], v[12 + c], in that order.
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    const __m512 u0 = _mm512_shuffle_f32x4(v[c], v[4 + c], 0x44);
    const __m512 u1 = _mm512_shuffle_f32x4(v[c], v[4 + c], 0xEE);
    const __m512 w0 = _mm512_shuffle_f32x4(v[8 + c], v[12 + c], 0x44);
    const __m512 w1 = _mm512_shuffle_f32x4(v[8 + c], v[12 + c], 0xEE);
    t[c] = _mm512_shuffle_f32x4(u0, w0, 0x88);
    t[4 + c] = _mm512_shuffle_f32x4(u0, w0, 0xDD);
    t[8 + c] = _mm512_shuffle_f32x4(u1, w1, 0x88);
    t[12 + c] = _mm512_shuffle_f32x4(u1, w1, 0xDD);
  }
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) v[j] = t[j];
}

// A whole W^T panel (panel_gemm.h PackPanelF32): 16 x 16 blocks through transpose16, the
// last K % 16 values one at a time.
inline void pack_panel_f32(int64_t K, const float* const* rows, float* panel) {
  int64_t k0 = 0;
  for (; k0 + 16 <= K; k0 += 16) {
    __m512 v[16];
#pragma GCC unroll 16
    for (int c = 0; c < 16; ++c) v[c] = _mm512_loadu_ps(rows[c] + k0);
    transpose16(v);
#pragma GCC unroll 16
    for (int k = 0; k < 16; ++k) _mm512_storeu_ps(panel + (k0 + k) * kPanel, v[k]);
  }
  for (; k0 < K; ++k0)
    for (int c = 0; c < 16; ++c) panel[k0 * kPanel + c] = rows[c][k0];
}

// rows [0, mc) x k [0, kc) of op(A) into 12-row tiles: Ap[i / 12][k][r] = op(A)[i + r][k],
// zero rows past mc.
inline void pack_a_tiles(const float* __restrict A, int64_t a_row, int64_t a_k, int64_t mc,
                         int64_t kc, float* __restrict Ap) {
  for (int64_t i = 0; i < mc; i += kTileM) {
    const int64_t rows = mc - i < kTileM ? mc - i : kTileM;
    float* __restrict dst = Ap + i * kc;
    if (a_row == 1) {  // A^T: the tile's values of one k are adjacent
      const __mmask16 m = lanes(rows);
      for (int64_t k = 0; k < kc; ++k) {
        // 12 of the 16 lanes are stored; the next k's store overwrites the rest.
        const __m512 v = _mm512_maskz_loadu_ps(m, A + i + k * a_k);
        if (k + 1 < kc) {
          _mm512_storeu_ps(dst + k * kTileM, v);
        } else {
          _mm512_mask_storeu_ps(dst + k * kTileM, lanes(kTileM), v);
        }
      }
    } else if (a_k == 1) {
      // Rows of A: 16 k at a time, the tile's rows (zero past `rows`) transposed in
      // registers, one k's 12 values per store (its 4 extra lanes are overwritten by the
      // next k's store; the last k of the tile is stored masked).
      for (int64_t k0 = 0; k0 < kc; k0 += 16) {
        const int64_t nk = kc - k0 < 16 ? kc - k0 : 16;
        const __mmask16 km = lanes(nk);
        __m512 v[16];
#pragma GCC unroll 12
        for (int r = 0; r < kTileM; ++r)
          v[r] = r < rows ? _mm512_maskz_loadu_ps(km, A + (i + r) * a_row + k0) : _mm512_setzero_ps();
#pragma GCC unroll 4
        for (int r = kTileM; r < 16; ++r) v[r] = _mm512_setzero_ps();
        transpose16(v);
        for (int64_t k = 0; k < nk; ++k) {
          float* out = dst + (k0 + k) * kTileM;
          if (k0 + k + 1 < kc) {
            _mm512_storeu_ps(out, v[k]);
          } else {
            _mm512_mask_storeu_ps(out, lanes(kTileM), v[k]);
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
    const __mmask16 m = lanes(nc - j);
    float* __restrict dst = Bp + j * kc;
    for (int64_t k = 0; k < kc; ++k)
      _mm512_store_ps(dst + k * kPanel, _mm512_maskz_loadu_ps(m, B + k * ldb + j));
  }
}

// C[rows, cols] (+)= a-tile [kc][12] x NP b-panels [kc][16] (rows <= 12, cols <= 16 NP);
// panel p at b + p * bstride.
template <int NP>
inline void tile_12xN(int64_t kc, const float* __restrict a, const float* __restrict b,
                      int64_t bstride, float* __restrict C, int64_t ldc, int64_t rows,
                      int64_t cols, bool accumulate) {
  for (int64_t r = 0; r < rows; ++r) {
#pragma GCC unroll 2
    for (int p = 0; p < NP; ++p)
      _mm_prefetch(reinterpret_cast<const char*>(C + r * ldc + p * kPanel), _MM_HINT_T0);
  }
  __m512 acc[kTileM][NP];
#pragma GCC unroll 12
  for (int r = 0; r < kTileM; ++r) {
#pragma GCC unroll 2
    for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_setzero_ps();
  }
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    _mm_prefetch(reinterpret_cast<const char*>(a + (k + 8) * kTileM), _MM_HINT_T0);
    __m512 w[NP];
#pragma GCC unroll 2
    for (int p = 0; p < NP; ++p) w[p] = _mm512_load_ps(b + p * bstride + k * kPanel);
#pragma GCC unroll 12
    for (int r = 0; r < kTileM; ++r) {
      const __m512 x = _mm512_set1_ps(a[k * kTileM + r]);
#pragma GCC unroll 2
      for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_fmadd_ps(x, w[p], acc[r][p]);
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < kTileM; ++r) {
    if (r >= rows) break;
    float* c = C + r * ldc;
#pragma GCC unroll 2
    for (int p = 0; p < NP; ++p) {
      const int64_t col = p * kPanel;
      if (col >= cols) break;
      const __mmask16 m = lanes(cols - col);
      __m512 v = acc[r][p];
      if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, c + col), v);
      _mm512_mask_storeu_ps(c + col, m, v);
    }
  }
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
        for (int64_t jr = 0; jr < nc; jr += 2 * kPanel) {
          const int64_t cols = nc - jr < 2 * kPanel ? nc - jr : 2 * kPanel;
          for (int64_t ir = 0; ir < mc; ir += kTileM) {
            const int64_t rows = mc - ir < kTileM ? mc - ir : kTileM;
            float* c = C + (ic + ir) * ldc + jc + jr;
            if (cols > kPanel) {
              tile_12xN<2>(kc, Ap + ir * kc, Bp + jr * kc, kPanel * kc, c, ldc, rows, cols, acc);
            } else {
              tile_12xN<1>(kc, Ap + ir * kc, Bp + jr * kc, kPanel * kc, c, ldc, rows, cols, acc);
            }
          }
        }
      }
    }
  }
}

}  // namespace RNNFAST_ISA
}  // namespace cpu
}  // namespace rnnfast
