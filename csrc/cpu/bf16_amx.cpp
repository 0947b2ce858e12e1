// The AMX-BF16 products of the step loops (see bf16_gemm.h).
//
// System headers and bf16_gemm.h are included BEFORE the target pragma (as in the ISA
// files), so that no inline function the linker could merge is compiled for AMX. The tile
// instructions are GCC's inline-asm intrinsics, whose tile numbers must be literals: the
// blocks below are written out per shape.
#if defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "bf16_gemm.h"

namespace rnnfast {
namespace cpu {

namespace {

constexpr int64_t kTileK = 32;      // bfloat16 values in one tile row (64 bytes)
constexpr int64_t kTileRows = 16;   // rows of an A or C tile, k pairs of a B tile
constexpr int64_t kTileCols = 16;   // float32 columns of a C or B tile
constexpr int64_t kTileBytes = 1024;

inline int64_t padded_k(int64_t K) { return (K + kTileK - 1) / kTileK * kTileK; }
inline int64_t col_tiles(int64_t N) { return (N + kTileCols - 1) / kTileCols; }

// float32 -> bfloat16, to nearest even (NaN stays a quiet NaN).
inline uint16_t round_bf16(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

bool detect() {
#if defined(__x86_64__)
  const char* want = std::getenv("RNNFAST_CPU_BF16");
  if (want != nullptr && std::strcmp(want, "fp32") == 0) return false;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d) == 0) return false;
  const bool amx_bf16 = (d >> 22) & 1u, amx_tile = (d >> 24) & 1u;
  const bool avx512f = (b >> 16) & 1u, avx512bw = (b >> 30) & 1u, avx512vl = (b >> 31) & 1u;
  if (!amx_bf16 || !amx_tile || !avx512f || !avx512bw || !avx512vl) return false;
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d) == 0 || ((a >> 5) & 1u) == 0) return false;  // AVX512_BF16
  // Linux: the tile data state must be asked for once per process.
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

}  // namespace

bool amx_bf16_usable() {
  static const bool usable = detect();
  return usable;
}

int64_t amx_packed_bytes(int64_t N, int64_t K) {
  return col_tiles(N) * (padded_k(K) / kTileK) * kTileBytes;
}

int64_t amx_rows_bytes(int64_t M_max, int64_t K, int terms) {
  return (M_max + kTileRows - 1) / kTileRows * kTileRows * padded_k(K) * 2 * terms;
}

void amx_pack_from_panels(int64_t N, int64_t K, const float* panels, void* tiles) {
  const int64_t nj = col_tiles(N), nkb = padded_k(K) / kTileK;
  uint16_t* out = static_cast<uint16_t*>(tiles);
  for (int64_t j = 0; j < nj; ++j) {
    const float* pj = panels + j * K * kTileCols;
    for (int64_t kb = 0; kb < nkb; ++kb) {
      uint16_t* t = out + (j * nkb + kb) * (kTileBytes / 2);
      for (int64_t r = 0; r < kTileRows; ++r)
        for (int64_t c = 0; c < kTileCols; ++c)
          for (int64_t e = 0; e < 2; ++e) {
            const int64_t k = kb * kTileK + 2 * r + e;
            t[r * 32 + 2 * c + e] = k < K ? round_bf16(pj[k * kTileCols + c]) : uint16_t(0);
          }
    }
  }
}

}  // namespace cpu
}  // namespace rnnfast

#if defined(__x86_64__)
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma")

namespace rnnfast {
namespace cpu {

namespace {

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Every tile register 16 rows of 64 bytes.
void configure_tiles() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette_id = 1;
  for (int i = 0; i < 8; ++i) {
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  _tile_loadconfig(&cfg);
}

inline void store_bh(uint16_t* dst, __m256bh h) {
  __m256i bits;
  std::memcpy(&bits, &h, sizeof(bits));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), bits);
}

// Rows of X rounded to bfloat16 into A (row stride lda values, zeros from K to Kp); with
// two terms, hi = bf16(x) in columns [0, Kp) and lo = bf16(x - hi) in [Kp, 2 Kp).
void round_rows(int64_t M, int64_t K, const float* X, int64_t ldx, uint16_t* A, int64_t Kp,
                int terms) {
  const int64_t lda = Kp * terms;
  for (int64_t m = 0; m < M; ++m) {
    const float* x = X + m * ldx;
    uint16_t* a = A + m * lda;
    for (int64_t k = 0; k < Kp; k += 16) {
      const int64_t left = K - k;
      const __mmask16 mask = left >= 16 ? __mmask16(0xffff)
                             : left > 0 ? __mmask16((1u << left) - 1u)
                                        : __mmask16(0);
      const __m512 v = _mm512_maskz_loadu_ps(mask, x + k);
      const __m256bh hi = _mm512_cvtneps_pbh(v);
      store_bh(a + k, hi);
      if (terms == 2) store_bh(a + Kp + k, _mm512_cvtneps_pbh(_mm512_sub_ps(v, _mm512_cvtpbh_ps(hi))));
    }
  }
}

// C[rows, cols] (+)= tmp[rows, cols] (tmp row stride ldt floats).
inline void write_block(const float* tmp, int64_t ldt, int64_t rows, int64_t cols, bool accumulate,
                        float* C, int64_t ldc) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* t = tmp + r * ldt;
    float* c = C + r * ldc;
    for (int64_t j = 0; j < cols; j += 16) {
      const int64_t left = cols - j;
      const __mmask16 mask = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1u);
      __m512 v = _mm512_load_ps(t + j);
      if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, c + j));
      _mm512_mask_storeu_ps(c + j, mask, v);
    }
  }
}

struct Operands {
  const uint16_t* A;   // rounded rows, stride sa / 2 values
  const char* tiles;   // packed op(W)
  int64_t sa;          // bytes between rows of A
  int64_t nkb;         // k blocks of op(W)
  int64_t steps;       // k blocks of A: nkb, or 2 nkb with two terms (B block kb % nkb)
};

// A 32 x 32 block of C: tmm0..3 = C (rows 0-15 | 16-31) x (cols 0-15 | 16-31), tmm4/5 = A,
// tmm6/7 = B.
void block_2x2(const Operands& o, int64_t m0, int64_t j, float* tmp) {
  const int64_t sa = o.sa;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const uint16_t* a0 = o.A + m0 * (o.sa / 2);
  const uint16_t* a1 = a0 + kTileRows * (o.sa / 2);
  const char* b0 = o.tiles + j * o.nkb * kTileBytes;
  const char* b1 = b0 + o.nkb * kTileBytes;
  for (int64_t ka = 0; ka < o.steps; ++ka) {
    const int64_t kb = ka < o.nkb ? ka : ka - o.nkb;
    _tile_loadd(4, a0 + ka * kTileK, sa);
    _tile_loadd(6, b0 + kb * kTileBytes, 64);
    _tile_loadd(5, a1 + ka * kTileK, sa);
    _tile_loadd(7, b1 + kb * kTileBytes, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, tmp, 128);
  _tile_stored(1, tmp + 16, 128);
  _tile_stored(2, tmp + 16 * 32, 128);
  _tile_stored(3, tmp + 16 * 32 + 16, 128);
}

// 32 x 16: tmm0/2 = C, tmm4/5 = A, tmm6 = B.
void block_2x1(const Operands& o, int64_t m0, int64_t j, float* tmp) {
  const int64_t sa = o.sa;
  _tile_zero(0);
  _tile_zero(2);
  const uint16_t* a0 = o.A + m0 * (o.sa / 2);
  const uint16_t* a1 = a0 + kTileRows * (o.sa / 2);
  const char* b0 = o.tiles + j * o.nkb * kTileBytes;
  for (int64_t ka = 0; ka < o.steps; ++ka) {
    const int64_t kb = ka < o.nkb ? ka : ka - o.nkb;
    _tile_loadd(4, a0 + ka * kTileK, sa);
    _tile_loadd(6, b0 + kb * kTileBytes, 64);
    _tile_loadd(5, a1 + ka * kTileK, sa);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(2, 5, 6);
  }
  _tile_stored(0, tmp, 128);
  _tile_stored(2, tmp + 16 * 32, 128);
}

// 16 x 48: tmm0..2 = C, tmm3 = A, tmm4..6 = B.
void block_1x3(const Operands& o, int64_t m0, int64_t j, float* tmp) {
  const int64_t sa = o.sa;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  const uint16_t* a0 = o.A + m0 * (o.sa / 2);
  const char* b0 = o.tiles + j * o.nkb * kTileBytes;
  const char* b1 = b0 + o.nkb * kTileBytes;
  const char* b2 = b1 + o.nkb * kTileBytes;
  for (int64_t ka = 0; ka < o.steps; ++ka) {
    const int64_t kb = ka < o.nkb ? ka : ka - o.nkb;
    _tile_loadd(3, a0 + ka * kTileK, sa);
    _tile_loadd(4, b0 + kb * kTileBytes, 64);
    _tile_loadd(5, b1 + kb * kTileBytes, 64);
    _tile_loadd(6, b2 + kb * kTileBytes, 64);
    _tile_dpbf16ps(0, 3, 4);
    _tile_dpbf16ps(1, 3, 5);
    _tile_dpbf16ps(2, 3, 6);
  }
  _tile_stored(0, tmp, 192);
  _tile_stored(1, tmp + 16, 192);
  _tile_stored(2, tmp + 32, 192);
}

// 16 x 32: tmm0/1 = C, tmm3 = A, tmm4/5 = B.
void block_1x2(const Operands& o, int64_t m0, int64_t j, float* tmp) {
  const int64_t sa = o.sa;
  _tile_zero(0);
  _tile_zero(1);
  const uint16_t* a0 = o.A + m0 * (o.sa / 2);
  const char* b0 = o.tiles + j * o.nkb * kTileBytes;
  const char* b1 = b0 + o.nkb * kTileBytes;
  for (int64_t ka = 0; ka < o.steps; ++ka) {
    const int64_t kb = ka < o.nkb ? ka : ka - o.nkb;
    _tile_loadd(3, a0 + ka * kTileK, sa);
    _tile_loadd(4, b0 + kb * kTileBytes, 64);
    _tile_loadd(5, b1 + kb * kTileBytes, 64);
    _tile_dpbf16ps(0, 3, 4);
    _tile_dpbf16ps(1, 3, 5);
  }
  _tile_stored(0, tmp, 128);
  _tile_stored(1, tmp + 16, 128);
}

// 16 x 16: tmm0 = C, tmm3 = A, tmm4 = B.
void block_1x1(const Operands& o, int64_t m0, int64_t j, float* tmp) {
  const int64_t sa = o.sa;
  _tile_zero(0);
  const uint16_t* a0 = o.A + m0 * (o.sa / 2);
  const char* b0 = o.tiles + j * o.nkb * kTileBytes;
  for (int64_t ka = 0; ka < o.steps; ++ka) {
    const int64_t kb = ka < o.nkb ? ka : ka - o.nkb;
    _tile_loadd(3, a0 + ka * kTileK, sa);
    _tile_loadd(4, b0 + kb * kTileBytes, 64);
    _tile_dpbf16ps(0, 3, 4);
  }
  _tile_stored(0, tmp, 64);
}

}  // namespace

void amx_gemm_f32(int64_t M, int64_t N, int64_t K, const void* tiles, const float* X, int64_t ldx,
                  bool accumulate, float* C, int64_t ldc, void* rows, int terms) {
  if (M <= 0 || N <= 0) return;
  const int64_t Kp = padded_k(K), nj = col_tiles(N), nkb = Kp / kTileK;
  uint16_t* A = static_cast<uint16_t*>(rows);
  round_rows(M, K, X, ldx, A, Kp, terms);
  configure_tiles();
  const Operands o{A, static_cast<const char*>(tiles), Kp * terms * 2, nkb, nkb * terms};
  alignas(64) float tmp[32 * 48];
  for (int64_t m0 = 0; m0 < M; m0 += 2 * kTileRows) {
    const int64_t mrows = std::min<int64_t>(2 * kTileRows, M - m0);
    float* const c = C + m0 * ldc;
    if (mrows > kTileRows) {
      int64_t j = 0;
      for (; j + 2 <= nj; j += 2) {
        block_2x2(o, m0, j, tmp);
        write_block(tmp, 32, mrows, std::min<int64_t>(32, N - j * 16), accumulate, c + j * 16, ldc);
      }
      if (j < nj) {
        block_2x1(o, m0, j, tmp);
        write_block(tmp, 32, mrows, N - j * 16, accumulate, c + j * 16, ldc);
      }
    } else {
      int64_t j = 0;
      for (; j + 3 <= nj; j += 3) {
        block_1x3(o, m0, j, tmp);
        write_block(tmp, 48, mrows, std::min<int64_t>(48, N - j * 16), accumulate, c + j * 16, ldc);
      }
      if (j + 2 == nj) {
        block_1x2(o, m0, j, tmp);
        write_block(tmp, 32, mrows, N - j * 16, accumulate, c + j * 16, ldc);
      } else if (j + 1 == nj) {
        block_1x1(o, m0, j, tmp);
        write_block(tmp, 16, mrows, N - j * 16, accumulate, c + j * 16, ldc);
      }
    }
  }
  _tile_release();
}

}  // namespace cpu
}  // namespace rnnfast

#else  // !__x86_64__

namespace rnnfast {
namespace cpu {
void amx_gemm_f32(int64_t, int64_t, int64_t, const void*, const float*, int64_t, bool, float*,
                  int64_t, void*, int) {}
}  // namespace cpu
}  // namespace rnnfast

#endif
