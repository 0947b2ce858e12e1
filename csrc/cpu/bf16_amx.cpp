// The bfloat16 products of the step loops: AMX-BF16 tiles or AVX512-BF16 dot products
// (see bf16_gemm.h).
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
#include <atomic>
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

// The CPU's best kernel, found once (AMX asked for once per process).
Bf16Kernel supported() {
  static const Bf16Kernel best = [] {
#if defined(__x86_64__)
    // AVX512-BF16 (with AVX512 F/BW/VL) for the dot products; AMX-BF16 and the tile data
    // state, which Linux grants once asked (arch_prctl), for the tiles.
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d) == 0) return Bf16Kernel::kNone;
    const bool amx = ((d >> 22) & 1u) && ((d >> 24) & 1u);
    if (!((b >> 16) & 1u) || !((b >> 30) & 1u) || !((b >> 31) & 1u)) return Bf16Kernel::kNone;
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d) == 0 || ((a >> 5) & 1u) == 0)
      return Bf16Kernel::kNone;
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return amx && syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0
               ? Bf16Kernel::kAmx
               : Bf16Kernel::kDot;
#else
    return Bf16Kernel::kNone;
#endif
  }();
  return best;
}

// The kernel in use (low bits), whether it was asked for (kForced), whether the layers keep
// to the widened path (kWidenedOnly) or to the float32 path on up-converted copies
// (kCopiesOnly): the CPU's best, or what RNNFAST_CPU_BF16 asks for ("fp32": no kernel, the
// copies; "avx512_bf16": the dot products, on an AMX CPU too, for every layer call;
// "widened": the bfloat16 data path with float32 products for every call).
constexpr int kForced = 4;
constexpr int kWidenedOnly = 8;
constexpr int kCopiesOnly = 16;
constexpr int kKernelBits = 3;
int initial_selection() {
  static const int initial = [] {
    const char* want = std::getenv("RNNFAST_CPU_BF16");
    const Bf16Kernel best = supported();
    if (want != nullptr && std::strcmp(want, "fp32") == 0)
      return static_cast<int>(Bf16Kernel::kNone) | kCopiesOnly;
    if (want != nullptr && std::strcmp(want, "avx512_bf16") == 0 && best != Bf16Kernel::kNone)
      return static_cast<int>(Bf16Kernel::kDot) | kForced;
    if (want != nullptr && std::strcmp(want, "widened") == 0)
      return static_cast<int>(best) | kWidenedOnly;
    return static_cast<int>(best);
  }();
  return initial;
}

std::atomic<int>& selected() {
  static std::atomic<int> kernel{initial_selection()};
  return kernel;
}

}  // namespace

Bf16Kernel bf16_kernel() {
  return static_cast<Bf16Kernel>(selected().load(std::memory_order_relaxed) & kKernelBits);
}

bool bf16_kernels_usable() { return bf16_kernel() != Bf16Kernel::kNone; }

namespace {

// Defined below, compiled for AVX512-BF16.
double measure_dot_rate();

// bf16_dot_rate()'s value: < 0 until measured (or after bf16_set_dot_rate(-1)).
std::atomic<double>& dot_rate_value() {
  static std::atomic<double> rate{-1.0};
  return rate;
}

}  // namespace

double bf16_dot_rate() {
  if (supported() == Bf16Kernel::kNone) return 0.0;
  double r = dot_rate_value().load(std::memory_order_relaxed);
  if (r < 0) {
    r = measure_dot_rate();
    dot_rate_value().store(r, std::memory_order_relaxed);
  }
  return r;
}

void bf16_set_dot_rate(double rate) { dot_rate_value().store(rate, std::memory_order_relaxed); }

bool bf16_kernels_for(bool plain_rnn, int64_t batch, int64_t w_hh_bytes) {
  const int s = selected().load(std::memory_order_relaxed);
  const Bf16Kernel k = static_cast<Bf16Kernel>(s & kKernelBits);
  if ((s & kWidenedOnly) != 0) return false;
  if (k == Bf16Kernel::kAmx || (s & kForced) != 0) return k != Bf16Kernel::kNone;
  if (k != Bf16Kernel::kDot) return false;
  return bf16_dot_rate() >= kDotFullRate ||
         (!plain_rnn && batch <= kDotMaxBatch && w_hh_bytes >= batch * kDotBytesPerRow);
}

const char* bf16_kernel_name(Bf16Kernel k) {
  return k == Bf16Kernel::kAmx ? "amx" : k == Bf16Kernel::kDot ? "avx512_bf16" : "fp32";
}

void bf16_reset_kernel() { selected().store(initial_selection(), std::memory_order_relaxed); }

bool bf16_select_kernel(Bf16Kernel k, bool forced) {
  const Bf16Kernel best = supported();
  const bool ok = k == Bf16Kernel::kNone || k == best ||
                  (k == Bf16Kernel::kDot && best == Bf16Kernel::kAmx);
  const int flags = !forced ? 0 : k == Bf16Kernel::kNone ? kCopiesOnly : kForced;
  if (ok) selected().store(static_cast<int>(k) | flags, std::memory_order_relaxed);
  return ok;
}

void bf16_select_widened() {
  selected().store(static_cast<int>(supported()) | kWidenedOnly, std::memory_order_relaxed);
}

bool bf16_widened_only() { return (selected().load(std::memory_order_relaxed) & kWidenedOnly) != 0; }

bool bf16_copies_only() { return (selected().load(std::memory_order_relaxed) & kCopiesOnly) != 0; }

bool bf16_round_native() {
#if defined(__x86_64__)
  static const bool native = supported() != Bf16Kernel::kNone;
  return native;
#else
  return false;
#endif
}

int64_t amx_packed_bytes(int64_t N, int64_t K) {
  return col_tiles(N) * (padded_k(K) / kTileK) * kTileBytes;
}

// Values between rows of A: a row stride that is a multiple of 1 KiB would put a tile's 16
// rows in at most 4 of L1's 64 sets (with 2 or 4 KiB, the 32 rows of a 32 x 32 block in 2 or
// 1 of them, beyond the cache's 12 ways), so such a row gets 64 bytes more. Measured against
// the unpadded rows (two threads, bfloat16 inference, min of 10 interleaved rounds): RNN T50
// B128 H1024 24.60 -> 22.43 ms, LSTM 71.61 -> 68.32 ms, GRU T100 B64 H512 16.01 -> 12.91 ms.
inline int64_t rows_ld(int64_t Kp, int terms) {
  return Kp * terms + ((Kp * terms * 2) % 1024 == 0 ? 32 : 0);
}
int64_t amx_rows_bytes(int64_t M_max, int64_t K, int terms) {
  return (M_max + kTileRows - 1) / kTileRows * kTileRows * rows_ld(padded_k(K), terms) * 2;
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

void amx_pack_bf16_cols(int64_t N, int64_t K, const uint16_t* W, int64_t ldw, void* tiles) {
  const int64_t nj = col_tiles(N), nkb = padded_k(K) / kTileK;
  uint16_t* out = static_cast<uint16_t*>(tiles);
  for (int64_t j = 0; j < nj; ++j) {
    const int64_t n0 = j * kTileCols, cols = std::min(kTileCols, N - n0);
    for (int64_t kb = 0; kb < nkb; ++kb) {
      uint16_t* t = out + (j * nkb + kb) * (kTileBytes / 2);
      // Row r of the tile holds the pairs (k, k + 1) = (kb * kTileK + 2 r + e), e = 0, 1,
      // of its 16 columns interleaved; W's row k is contiguous along n.
      for (int64_t r = 0; r < kTileRows; ++r)
        for (int64_t e = 0; e < 2; ++e) {
          const int64_t k = kb * kTileK + 2 * r + e;
          const uint16_t* w = k < K ? W + k * ldw + n0 : nullptr;
          for (int64_t c = 0; c < kTileCols; ++c)
            t[r * 32 + 2 * c + e] = w != nullptr && c < cols ? w[c] : uint16_t(0);
        }
    }
  }
}

namespace {

// One B tile (column tile j, k block kb) of op(W) = grouped W^T from bfloat16 W, element by
// element (the tiles at N's and K's edges, and very large W).
[[maybe_unused]] void pack_bf16_tile_scalar(int64_t N, int64_t K, const uint16_t* W, int64_t ldw, int64_t per_group,
                           int64_t group_stride, int64_t j, int64_t kb, uint16_t* t) {
  for (int64_t c = 0; c < kTileCols; ++c) {
    const int64_t n = j * kTileCols + c;
    const uint16_t* w =
        n < N ? W + ((n / per_group) * group_stride + n % per_group) * ldw : nullptr;
    for (int64_t r = 0; r < kTileRows; ++r)
      for (int64_t e = 0; e < 2; ++e) {
        const int64_t k = kb * kTileK + 2 * r + e;
        t[r * 32 + 2 * c + e] = w != nullptr && k < K ? w[k] : uint16_t(0);
      }
  }
}

}  // namespace

}  // namespace cpu
}  // namespace rnnfast

#if defined(__x86_64__)
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma")

namespace rnnfast {
namespace cpu {

namespace {

// Where measure_dot_rate()'s sums go (volatile: the loops cannot be dropped).
volatile float dot_rate_sink = 0.0f;

// See bf16_dot_rate(). Each loop: kIters rounds of 12 independent accumulators (more than
// latency x throughput of either instruction on current cores), loop-invariant operands;
// the time stamp counter (constant rate) times both, so the ratio needs no clock rate.
double measure_dot_rate() {
  constexpr int kIters = 1024, kReps = 9;
  const __m512 mul = _mm512_set1_ps(0.999f), add = _mm512_set1_ps(1e-3f);
  const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(2e-3f));
  const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(3e-3f), _mm512_set1_ps(1e-3f));
  uint64_t best_fma = ~uint64_t{0}, best_dot = ~uint64_t{0};
  // The accumulators start from a volatile read after the first time stamp and end in a
  // volatile write before the second: neither the compiler nor the loop's removal can move
  // the timed work outside the two stamps.
  volatile float seed = 1.0f;
  for (int rep = 0; rep < kReps; ++rep) {
    __m512 acc[12];
    uint64_t t0 = __rdtsc();
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(seed + static_cast<float>(i));
    for (int it = 0; it < kIters; ++it) {
#pragma GCC unroll 12
      for (int i = 0; i < 12; ++i) acc[i] = _mm512_fmadd_ps(acc[i], mul, add);
    }
    for (int i = 1; i < 12; ++i) acc[0] = _mm512_add_ps(acc[0], acc[i]);
    dot_rate_sink = _mm512_cvtss_f32(acc[0]);
    best_fma = std::min<uint64_t>(best_fma, __rdtsc() - t0);
    t0 = __rdtsc();
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(seed + static_cast<float>(i));
    for (int it = 0; it < kIters; ++it) {
#pragma GCC unroll 12
      for (int i = 0; i < 12; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
    }
    for (int i = 1; i < 12; ++i) acc[0] = _mm512_add_ps(acc[0], acc[i]);
    dot_rate_sink = _mm512_cvtss_f32(acc[0]);
    best_dot = std::min<uint64_t>(best_dot, __rdtsc() - t0);
  }
  // 16 multiply-adds an FMA, 32 a VDPBF16PS, the same number of each.
  return best_dot == 0 ? 0.0 : 2.0 * static_cast<double>(best_fma) / static_cast<double>(best_dot);
}

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
  const int64_t lda = rows_ld(Kp, terms);
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

// Rows of X that are bfloat16 already, copied into A (one term; zeros from K to Kp).
void copy_rows_bf16(int64_t M, int64_t K, const uint16_t* X, int64_t ldx, uint16_t* A, int64_t Kp) {
  for (int64_t m = 0; m < M; ++m) {
    const uint16_t* x = X + m * ldx;
    uint16_t* a = A + m * rows_ld(Kp, 1);
    for (int64_t k = 0; k < Kp; k += 32) {
      const int64_t left = K - k;
      const __mmask32 mask = left >= 32 ? __mmask32(0xffffffffu)
                             : left > 0 ? __mmask32((1u << left) - 1u)
                                        : __mmask32(0);
      _mm512_storeu_si512(a + k, _mm512_maskz_loadu_epi16(mask, x + k));
    }
  }
}

struct Operands {
  const uint16_t* A;   // rounded rows, stride sa / 2 values
  const char* tiles;   // packed op(W)
  int64_t sa;          // bytes between rows of A
  int64_t nkb;         // k blocks of op(W)
  int64_t steps;       // k blocks of A: nkb, or 2 nkb with two terms
  // The k blocks in the order every block of C takes them: with two terms, k block kb's hi
  // term (A block kb) then its lo term (A block nkb + kb), kb ascending; B block kb for both.
  int64_t a_block(int64_t ka) const { return steps == nkb ? ka : (ka & 1) * nkb + (ka >> 1); }
  int64_t b_block(int64_t ka) const { return steps == nkb ? ka : ka >> 1; }
  // Whether step ka's B tiles are those of step ka - 1 (a lo term after its hi term), which
  // the block keeps in its tile registers (6 tile loads for the 32 x 32 block's 8 products,
  // not 8: RNN T50 B128 H1024 bf16 inference 27.06 -> 25.93 ms, min of 10 interleaved rounds).
  bool reuses_b(int64_t ka) const { return steps != nkb && (ka & 1) != 0; }
};

// Where one 16 x 16 C tile starts from and goes to: `src` (row stride src_ld bytes; 0
// broadcasts one row) or zeros when src is nullptr; stored to `dst` (row stride dst_ld
// bytes).
struct TileIO {
  const float* src;
  int64_t src_ld;
  float* dst;
  int64_t dst_ld;
};

#define RNNFAST_TILE_INIT(n, io) \
  do {                                                       \
    if ((io).src != nullptr) {                               \
      _tile_loadd(n, (io).src, (io).src_ld);                 \
    } else {                                                 \
      _tile_zero(n);                                         \
    }                                                        \
  } while (0)

// A 32 x 32 block of C: tmm0..3 = C (rows 0-15 | 16-31) x (cols 0-15 | 16-31), tmm4/5 = A,
// tmm6/7 = B. io: the C tiles in that order.
void block_2x2(const Operands& o, int64_t m0, int64_t j, const TileIO* io) {
  const int64_t sa = o.sa;
  RNNFAST_TILE_INIT(0, io[0]);
  RNNFAST_TILE_INIT(1, io[1]);
  RNNFAST_TILE_INIT(2, io[2]);
  RNNFAST_TILE_INIT(3, io[3]);
  const uint16_t* a0 = o.A + m0 * (o.sa / 2);
  const uint16_t* a1 = a0 + kTileRows * (o.sa / 2);
  const char* b0 = o.tiles + j * o.nkb * kTileBytes;
  const char* b1 = b0 + o.nkb * kTileBytes;
  for (int64_t ka = 0; ka < o.steps; ++ka) {
    const int64_t kb = o.b_block(ka), kA = o.a_block(ka);
    const bool reuse_b = o.reuses_b(ka);
    _tile_loadd(4, a0 + kA * kTileK, sa);
    if (!reuse_b) _tile_loadd(6, b0 + kb * kTileBytes, 64);
    _tile_loadd(5, a1 + kA * kTileK, sa);
    if (!reuse_b) _tile_loadd(7, b1 + kb * kTileBytes, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, io[0].dst, io[0].dst_ld);
  _tile_stored(1, io[1].dst, io[1].dst_ld);
  _tile_stored(2, io[2].dst, io[2].dst_ld);
  _tile_stored(3, io[3].dst, io[3].dst_ld);
}

// 32 x 16: tmm0/2 = C, tmm4/5 = A, tmm6 = B. io: rows 0-15, 16-31.
void block_2x1(const Operands& o, int64_t m0, int64_t j, const TileIO* io) {
  const int64_t sa = o.sa;
  RNNFAST_TILE_INIT(0, io[0]);
  RNNFAST_TILE_INIT(2, io[1]);
  const uint16_t* a0 = o.A + m0 * (o.sa / 2);
  const uint16_t* a1 = a0 + kTileRows * (o.sa / 2);
  const char* b0 = o.tiles + j * o.nkb * kTileBytes;
  for (int64_t ka = 0; ka < o.steps; ++ka) {
    const int64_t kb = o.b_block(ka), kA = o.a_block(ka);
    const bool reuse_b = o.reuses_b(ka);
    _tile_loadd(4, a0 + kA * kTileK, sa);
    if (!reuse_b) _tile_loadd(6, b0 + kb * kTileBytes, 64);
    _tile_loadd(5, a1 + kA * kTileK, sa);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(2, 5, 6);
  }
  _tile_stored(0, io[0].dst, io[0].dst_ld);
  _tile_stored(2, io[1].dst, io[1].dst_ld);
}

// 16 x 48: tmm0..2 = C, tmm3 = A, tmm4..6 = B. io: cols 0-15, 16-31, 32-47.
void block_1x3(const Operands& o, int64_t m0, int64_t j, const TileIO* io) {
  const int64_t sa = o.sa;
  RNNFAST_TILE_INIT(0, io[0]);
  RNNFAST_TILE_INIT(1, io[1]);
  RNNFAST_TILE_INIT(2, io[2]);
  const uint16_t* a0 = o.A + m0 * (o.sa / 2);
  const char* b0 = o.tiles + j * o.nkb * kTileBytes;
  const char* b1 = b0 + o.nkb * kTileBytes;
  const char* b2 = b1 + o.nkb * kTileBytes;
  for (int64_t ka = 0; ka < o.steps; ++ka) {
    const int64_t kb = o.b_block(ka), kA = o.a_block(ka);
    const bool reuse_b = o.reuses_b(ka);
    _tile_loadd(3, a0 + kA * kTileK, sa);
    if (!reuse_b) _tile_loadd(4, b0 + kb * kTileBytes, 64);
    if (!reuse_b) _tile_loadd(5, b1 + kb * kTileBytes, 64);
    if (!reuse_b) _tile_loadd(6, b2 + kb * kTileBytes, 64);
    _tile_dpbf16ps(0, 3, 4);
    _tile_dpbf16ps(1, 3, 5);
    _tile_dpbf16ps(2, 3, 6);
  }
  _tile_stored(0, io[0].dst, io[0].dst_ld);
  _tile_stored(1, io[1].dst, io[1].dst_ld);
  _tile_stored(2, io[2].dst, io[2].dst_ld);
}

// 16 x 32: tmm0/1 = C, tmm3 = A, tmm4/5 = B.
void block_1x2(const Operands& o, int64_t m0, int64_t j, const TileIO* io) {
  const int64_t sa = o.sa;
  RNNFAST_TILE_INIT(0, io[0]);
  RNNFAST_TILE_INIT(1, io[1]);
  const uint16_t* a0 = o.A + m0 * (o.sa / 2);
  const char* b0 = o.tiles + j * o.nkb * kTileBytes;
  const char* b1 = b0 + o.nkb * kTileBytes;
  for (int64_t ka = 0; ka < o.steps; ++ka) {
    const int64_t kb = o.b_block(ka), kA = o.a_block(ka);
    const bool reuse_b = o.reuses_b(ka);
    _tile_loadd(3, a0 + kA * kTileK, sa);
    if (!reuse_b) _tile_loadd(4, b0 + kb * kTileBytes, 64);
    if (!reuse_b) _tile_loadd(5, b1 + kb * kTileBytes, 64);
    _tile_dpbf16ps(0, 3, 4);
    _tile_dpbf16ps(1, 3, 5);
  }
  _tile_stored(0, io[0].dst, io[0].dst_ld);
  _tile_stored(1, io[1].dst, io[1].dst_ld);
}

// 16 x 16: tmm0 = C, tmm3 = A, tmm4 = B.
void block_1x1(const Operands& o, int64_t m0, int64_t j, const TileIO* io) {
  const int64_t sa = o.sa;
  RNNFAST_TILE_INIT(0, io[0]);
  const uint16_t* a0 = o.A + m0 * (o.sa / 2);
  const char* b0 = o.tiles + j * o.nkb * kTileBytes;
  for (int64_t ka = 0; ka < o.steps; ++ka) {
    const int64_t kb = o.b_block(ka), kA = o.a_block(ka);
    const bool reuse_b = o.reuses_b(ka);
    _tile_loadd(3, a0 + kA * kTileK, sa);
    if (!reuse_b) _tile_loadd(4, b0 + kb * kTileBytes, 64);
    _tile_dpbf16ps(0, 3, 4);
  }
  _tile_stored(0, io[0].dst, io[0].dst_ld);
}

#undef RNNFAST_TILE_INIT

// The C tiles of one block. A tile wholly inside C starts from C itself (accumulate) or
// from the bias row (broadcast by a zero row stride) and is stored straight to C; a tile
// that crosses C's last row or column goes through a staging copy in `stage` (its part of
// C or of the bias; what lies outside C is left as it is, since its results are dropped),
// and only its part of C is written back. Either way
// every element is acc = start + the products over k in ascending order: the same bits
// whichever tiles a split makes full.
class BlockTiles {
 public:
  BlockTiles(int64_t M, int64_t N, AmxInit init, const float* bias, float* C, int64_t ldc)
      : M_(M), N_(N), init_(init), bias_(bias), C_(C), ldc_(ldc) {}

  // The tiles of the block at rows [m0, m0 + 16 * tr), column tiles [j, j + tc).
  const TileIO* prepare(int64_t m0, int64_t j, int tr, int tc) {
    n_ = 0;
    for (int r = 0; r < tr; ++r)
      for (int c = 0; c < tc; ++c) {
        const int64_t row = m0 + r * kTileRows, col = (j + c) * kTileCols;
        const int64_t rows = std::min<int64_t>(kTileRows, M_ - row);
        const int64_t cols = std::min<int64_t>(kTileCols, N_ - col);
        Tile& t = tiles_[n_];
        t.row = row;
        t.col = col;
        t.rows = rows;
        t.cols = cols;
        float* const c_at = C_ + row * ldc_ + col;
        const bool full = rows == kTileRows && cols == kTileCols;
        if (full) {
          t.staged = false;
          io_[n_] = {init_ == AmxInit::kAccumulate ? c_at
                     : init_ == AmxInit::kBias     ? bias_ + col
                                                   : nullptr,
                     init_ == AmxInit::kAccumulate ? ldc_ * 4 : 0, c_at, ldc_ * 4};
        } else {
          // Only the rows and columns inside C are staged: the others' results are
          // dropped, and no element depends on another's row or column.
          t.staged = true;
          float* s = stage_[n_];
          if (init_ == AmxInit::kAccumulate) {
            for (int64_t i = 0; i < rows; ++i)
              std::memcpy(s + i * kTileCols, c_at + i * ldc_, sizeof(float) * cols);
          } else if (init_ == AmxInit::kBias) {
            for (int64_t i = 0; i < rows; ++i)
              std::memcpy(s + i * kTileCols, bias_ + col, sizeof(float) * cols);
          }
          io_[n_] = {init_ == AmxInit::kZero ? nullptr : s, kTileCols * 4, s, kTileCols * 4};
        }
        ++n_;
      }
    return io_;
  }

  // Writes the staged tiles' parts of C.
  void finish() {
    for (int i = 0; i < n_; ++i) {
      const Tile& t = tiles_[i];
      if (!t.staged || t.rows <= 0 || t.cols <= 0) continue;
      for (int64_t r = 0; r < t.rows; ++r)
        std::memcpy(C_ + (t.row + r) * ldc_ + t.col, stage_[i] + r * kTileCols,
                    sizeof(float) * t.cols);
    }
  }

 private:
  struct Tile {
    int64_t row, col, rows, cols;
    bool staged;
  };
  int64_t M_, N_;
  AmxInit init_;
  const float* bias_;
  float* C_;
  int64_t ldc_;
  int n_ = 0;
  Tile tiles_[4];
  TileIO io_[4];
  alignas(64) float stage_[4][kTileRows * kTileCols] = {};
};

void run_blocks(int64_t M, int64_t N, const Operands& o, AmxInit init, const float* bias,
                float* C, int64_t ldc) {
  const int64_t nj = col_tiles(N);
  BlockTiles bt(M, N, init, bias, C, ldc);
  configure_tiles();
  // Whole 32-row blocks with the column pairs outermost: a pair's B tiles (2 K / 32 KiB) come
  // from memory once per call and stay in cache for every row block, where rows outermost
  // would stream all of op(W) once per 32 rows (a large W, beyond L2, from L3 or DRAM each
  // time). Each block's arithmetic is the same either way.
  const int64_t m_full = M / (2 * kTileRows) * (2 * kTileRows);
  {
    int64_t j = 0;
    for (; j + 2 <= nj; j += 2)
      for (int64_t m0 = 0; m0 < m_full; m0 += 2 * kTileRows) {
        block_2x2(o, m0, j, bt.prepare(m0, j, 2, 2));
        bt.finish();
      }
    if (j < nj)
      for (int64_t m0 = 0; m0 < m_full; m0 += 2 * kTileRows) {
        block_2x1(o, m0, j, bt.prepare(m0, j, 2, 1));
        bt.finish();
      }
  }
  for (int64_t m0 = m_full; m0 < M; m0 += 2 * kTileRows) {  // the last rows, fewer than 32
    const int64_t mrows = std::min<int64_t>(2 * kTileRows, M - m0);
    if (mrows > kTileRows) {
      int64_t j = 0;
      for (; j + 2 <= nj; j += 2) {
        block_2x2(o, m0, j, bt.prepare(m0, j, 2, 2));
        bt.finish();
      }
      if (j < nj) {
        block_2x1(o, m0, j, bt.prepare(m0, j, 2, 1));
        bt.finish();
      }
    } else {
      int64_t j = 0;
      for (; j + 3 <= nj; j += 3) {
        block_1x3(o, m0, j, bt.prepare(m0, j, 1, 3));
        bt.finish();
      }
      if (j + 2 == nj) {
        block_1x2(o, m0, j, bt.prepare(m0, j, 1, 2));
        bt.finish();
      } else if (j + 1 == nj) {
        block_1x1(o, m0, j, bt.prepare(m0, j, 1, 1));
        bt.finish();
      }
    }
  }
  _tile_release();
}

// ---- AVX512-BF16 dot products on the packed operands (bf16_gemm.h) ----

inline __mmask16 lane_mask(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : n > 0 ? __mmask16((1u << n) - 1u) : __mmask16(0);
}

// Rows [m0, m0 + MR) x column tiles [j, j + NP) of C (columns past N masked off).
template <int MR, int NP>
void dot_block(const Operands& o, int64_t m0, int64_t j, int64_t N, AmxInit init,
               const float* bias, float* C, int64_t ldc) {
  const int64_t lda = o.sa / 2, pairs = o.nkb * (kTileK / 2);
  __mmask16 mask[NP];
  __m512 acc[MR][NP];
#pragma GCC unroll 8
  for (int q = 0; q < NP; ++q) mask[q] = lane_mask(N - (j + q) * kTileCols);
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q) {
      const int64_t col = (j + q) * kTileCols;
      acc[r][q] = init == AmxInit::kAccumulate ? _mm512_maskz_loadu_ps(mask[q], C + (m0 + r) * ldc + col)
                  : init == AmxInit::kBias     ? _mm512_maskz_loadu_ps(mask[q], bias + col)
                                               : _mm512_setzero_ps();
    }
  }
  const char* b = o.tiles + j * o.nkb * kTileBytes;
  const int64_t bstride = o.nkb * kTileBytes;  // bytes from one column tile to the next
  for (int64_t term = 0; term * o.nkb < o.steps; ++term) {
    const uint16_t* a = o.A + m0 * lda + term * pairs * 2;
#pragma GCC unroll 2
    for (int64_t p = 0; p < pairs; ++p) {
      __m512bh w[NP];
#pragma GCC unroll 8
      for (int q = 0; q < NP; ++q) w[q] = (__m512bh)_mm512_load_si512(b + q * bstride + p * 64);
#pragma GCC unroll 12
      for (int r = 0; r < MR; ++r) {
        int32_t pair;
        std::memcpy(&pair, a + r * lda + 2 * p, sizeof(pair));
        const __m512bh x = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 8
        for (int q = 0; q < NP; ++q) acc[r][q] = _mm512_dpbf16_ps(acc[r][q], x, w[q]);
      }
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q)
      if (mask[q] != 0) _mm512_mask_storeu_ps(C + (m0 + r) * ldc + (j + q) * kTileCols, mask[q], acc[r][q]);
  }
}

template <int NP>
void dot_rows(int64_t rows, const Operands& o, int64_t m0, int64_t j, int64_t N, AmxInit init,
              const float* bias, float* C, int64_t ldc) {
  switch (rows) {
    case 1: return dot_block<1, NP>(o, m0, j, N, init, bias, C, ldc);
    case 2: return dot_block<2, NP>(o, m0, j, N, init, bias, C, ldc);
    case 3: return dot_block<3, NP>(o, m0, j, N, init, bias, C, ldc);
    case 4: return dot_block<4, NP>(o, m0, j, N, init, bias, C, ldc);
    case 5: return dot_block<5, NP>(o, m0, j, N, init, bias, C, ldc);
    case 6: return dot_block<6, NP>(o, m0, j, N, init, bias, C, ldc);
    case 7: return dot_block<7, NP>(o, m0, j, N, init, bias, C, ldc);
    case 8: return dot_block<8, NP>(o, m0, j, N, init, bias, C, ldc);
    case 9: return dot_block<9, NP>(o, m0, j, N, init, bias, C, ldc);
    case 10: return dot_block<10, NP>(o, m0, j, N, init, bias, C, ldc);
    case 11: return dot_block<11, NP>(o, m0, j, N, init, bias, C, ldc);
    case 12: return dot_block<12, NP>(o, m0, j, N, init, bias, C, ldc);
    default: return;
  }
}

// All of C: up to 4 rows in one block against 8 (one row) or 4 column tiles at a time,
// more rows in blocks of at most 12 shared out evenly against 2 column tiles at a time
// (at most 24 accumulators); the column tiles outermost, so op(W) is read once per call.
void dot_blocks(int64_t M, int64_t N, const Operands& o, AmxInit init, const float* bias,
                float* C, int64_t ldc) {
  const int64_t nj = col_tiles(N);
  if (M <= 4) {
    int64_t j = 0;
    if (M == 1) {
      for (; j + 8 <= nj; j += 8) dot_block<1, 8>(o, 0, j, N, init, bias, C, ldc);
    } else {
      for (; j + 4 <= nj; j += 4) dot_rows<4>(M, o, 0, j, N, init, bias, C, ldc);
    }
    for (; j < nj; ++j) dot_rows<1>(M, o, 0, j, N, init, bias, C, ldc);
    return;
  }
  const int64_t nblocks = (M + 11) / 12, base = M / nblocks, extra = M % nblocks;
  for (int64_t j = 0; j < nj; j += 2) {
    for (int64_t blk = 0, m0 = 0; blk < nblocks; ++blk) {
      const int64_t rows = base + (blk < extra ? 1 : 0);
      if (j + 2 <= nj) {
        dot_rows<2>(rows, o, m0, j, N, init, bias, C, ldc);
      } else {
        dot_rows<1>(rows, o, m0, j, N, init, bias, C, ldc);
      }
      m0 += rows;
    }
  }
}

// The product on whichever kernel is selected.
void products(int64_t M, int64_t N, const Operands& o, AmxInit init, const float* bias, float* C,
              int64_t ldc) {
  if (bf16_kernel() == Bf16Kernel::kAmx) {
    run_blocks(M, N, o, init, bias, C, ldc);
  } else {
    dot_blocks(M, N, o, init, bias, C, ldc);
  }
}

}  // namespace

// A tile wholly inside W: row r of the tile is the r-th pair of k of the tile's 16
// columns, one 32-bit gather (the pair) per row.
void amx_pack_bf16_rows(int64_t N, int64_t K, const uint16_t* W, int64_t ldw, int64_t per_group,
                        int64_t group_stride, void* tiles) {
  const int64_t nj = col_tiles(N), nkb = padded_k(K) / kTileK;
  uint16_t* out = static_cast<uint16_t*>(tiles);
  for (int64_t j = 0; j < nj; ++j) {
    // Offsets (in bfloat16 values) of the tile's columns from the first one.
    alignas(64) int32_t off[kTileCols];
    const int64_t n0 = j * kTileCols;
    const int64_t row0 = (n0 / per_group) * group_stride + n0 % per_group;
    bool gather = n0 + kTileCols <= N;
    for (int64_t c = 0; c < kTileCols && gather; ++c) {
      const int64_t n = n0 + c;
      const int64_t d = ((n / per_group) * group_stride + n % per_group - row0) * ldw;
      gather = d + K < (int64_t(1) << 31);
      off[c] = static_cast<int32_t>(d);
    }
    const __m512i idx = _mm512_load_si512(off);
    for (int64_t kb = 0; kb < nkb; ++kb) {
      uint16_t* t = out + (j * nkb + kb) * (kTileBytes / 2);
      if (!gather || (kb + 1) * kTileK > K) {
        pack_bf16_tile_scalar(N, K, W, ldw, per_group, group_stride, j, kb, t);
        continue;
      }
      const uint16_t* base = W + row0 * ldw + kb * kTileK;
      for (int64_t r = 0; r < kTileRows; ++r)
        _mm512_storeu_si512(t + r * 32, _mm512_i32gather_epi32(idx, base + 2 * r, 2));
    }
  }
}

void bf16_round_rows(int64_t rows, int64_t cols, const float* src, int64_t ld_src, uint16_t* dst,
                     int64_t ld_dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = src + r * ld_src;
    uint16_t* y = dst + r * ld_dst;
    for (int64_t k = 0; k < cols; k += 16) {
      const int64_t left = cols - k;
      const __mmask16 mask = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1u);
      const __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, x + k));
      __m256i bits;
      std::memcpy(&bits, &h, sizeof(bits));
      _mm256_mask_storeu_epi16(y + k, mask, bits);
    }
  }
}

void amx_gemm_f32(int64_t M, int64_t N, int64_t K, const void* tiles, const float* X, int64_t ldx,
                  AmxInit init, const float* bias, float* C, int64_t ldc, void* rows, int terms) {
  if (M <= 0 || N <= 0) return;
  const int64_t Kp = padded_k(K), nkb = Kp / kTileK;
  uint16_t* A = static_cast<uint16_t*>(rows);
  round_rows(M, K, X, ldx, A, Kp, terms);
  const Operands o{A, static_cast<const char*>(tiles), rows_ld(Kp, terms) * 2, nkb, nkb * terms};
  products(M, N, o, init, bias, C, ldc);
}

void amx_gemm_bf16(int64_t M, int64_t N, int64_t K, const void* tiles, const uint16_t* X,
                   int64_t ldx, AmxInit init, const float* bias, float* C, int64_t ldc,
                   void* rows) {
  if (M <= 0 || N <= 0) return;
  const int64_t Kp = padded_k(K), nkb = Kp / kTileK;
  uint16_t* A = static_cast<uint16_t*>(rows);
  copy_rows_bf16(M, K, X, ldx, A, Kp);
  const Operands o{A, static_cast<const char*>(tiles), rows_ld(Kp, 1) * 2, nkb, nkb};
  products(M, N, o, init, bias, C, ldc);
}

}  // namespace cpu
}  // namespace rnnfast

#else  // !__x86_64__

namespace rnnfast {
namespace cpu {
namespace {
double measure_dot_rate() { return 0.0; }
}  // namespace
void amx_gemm_f32(int64_t, int64_t, int64_t, const void*, const float*, int64_t, AmxInit,
                  const float*, float*, int64_t, void*, int) {}
void amx_gemm_bf16(int64_t, int64_t, int64_t, const void*, const uint16_t*, int64_t, AmxInit,
                   const float*, float*, int64_t, void*) {}
void bf16_round_rows(int64_t, int64_t, const float*, int64_t, uint16_t*, int64_t) {}
void amx_pack_bf16_rows(int64_t, int64_t, const uint16_t*, int64_t, int64_t, int64_t, void*) {}
}  // namespace cpu
}  // namespace rnnfast

#endif
