#include "blas.h"
#include "bf16_gemm.h"

#include "panel_gemm.h"
#include "pointwise.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <limits>
#include <memory>
#include <mutex>
#include <type_traits>

// Fortran BLAS symbols; weak so that the extension still loads against a libtorch
// built without an exported BLAS (then the ATen fallback below is used).
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
// MKL's packed GEMM (Fortran-style interface, exported by libtorch with MKL).
size_t SGEMM_PACK_GET_SIZE(const char* identifier, const int* m, const int* n, const int* k)
    __attribute__((weak));
void SGEMM_PACK(const char* identifier, const char* trans, const int* m, const int* n,
                const int* k, const float* alpha, const float* src, const int* ld, float* dest)
    __attribute__((weak));
void SGEMM_COMPUTE(const char* transa, const char* transb, const int* m, const int* n,
                   const int* k, const float* a, const int* lda, const float* b, const int* ldb,
                   const float* beta, float* c, const int* ldc) __attribute__((weak));
// MKL's per-thread thread count (returns the previous value; 0 = the global setting).
int MKL_Set_Num_Threads_Local(int nt) __attribute__((weak));
}

namespace rnnfast {
namespace cpu {
namespace {

// The Fortran GEMM for T (sgemm_ or dgemm_); nullptr where libtorch exports none.
template <typename T>
auto* blas_gemm() {
  if constexpr (std::is_same_v<T, float>) {
    return &sgemm_;
  } else {
    return &dgemm_;
  }
}

bool fits_int(int64_t v) { return v <= std::numeric_limits<int>::max(); }

// ATen fallback: wrap the buffers (no copy) and use mm / addmm.
template <typename T>
void gemm_aten(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
               const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto a = trans_a ? at::from_blob(const_cast<T*>(A), {K, M}, {lda, 1}, opts).t()
                   : at::from_blob(const_cast<T*>(A), {M, K}, {lda, 1}, opts);
  auto b = trans_b ? at::from_blob(const_cast<T*>(B), {N, K}, {ldb, 1}, opts).t()
                   : at::from_blob(const_cast<T*>(B), {K, N}, {ldb, 1}, opts);
  auto c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (beta == T(0)) {
    at::mm_out(c, a, b);
    if (alpha != T(1)) c.mul_(alpha);
  } else {
    c.addmm_(a, b, beta, alpha);
  }
}

}  // namespace

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // C = beta * C (BLAS would do this too, but lda checks get in the way)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  if (blas_gemm<T>() != nullptr && fits_int(M) && fits_int(N) && fits_int(K) && fits_int(lda) &&
      fits_int(ldb) && fits_int(ldc)) {
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T.
    const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
    const int ld_b = static_cast<int>(std::max<int64_t>(ldb, 1));
    const int ld_a = static_cast<int>(std::max<int64_t>(lda, 1));
    const int ld_c = static_cast<int>(std::max<int64_t>(ldc, 1));
    const char tb = trans_b ? 'T' : 'N';
    const char ta = trans_a ? 'T' : 'N';
    blas_gemm<T>()(&tb, &ta, &m, &n, &k, &alpha, B, &ld_b, A, &ld_a, &beta, C, &ld_c);
    return;
  }
  gemm_aten<T>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*,
                           int64_t, const double*, int64_t, double, double*, int64_t);

void blocked_sequence_gemm(bool trans_a, int64_t M, int64_t N, int64_t K, const float* A,
                           int64_t lda, const float* B, int64_t ldb, bool accumulate, float* C,
                           int64_t ldc) {
  const BlockedGemmF32 kernel = cpu_kernels().blocked_gemm_f32;
  TORCH_CHECK(kernel != nullptr, "rnnfast internal error: this CPU kernel set has no blocked GEMM");
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.0f);
    return;
  }
  const int64_t a_row = trans_a ? 1 : lda, a_k = trans_a ? lda : 1;
  const int64_t tiles = (M + kTileRows - 1) / kTileRows;
  const size_t bytes = sizeof(float) * static_cast<size_t>(blocked_gemm_workspace_floats(N));
  // Rows of C in whole 6-row tiles per thread; one workspace per thread per call.
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    std::unique_ptr<void, decltype(&std::free)> ws(std::aligned_alloc(64, (bytes + 63) / 64 * 64),
                                                   &std::free);
    TORCH_CHECK(ws != nullptr, "rnnfast: out of memory for a ", bytes, "-byte GEMM workspace");
    const int64_t m0 = t0 * kTileRows, m1 = std::min(M, t1 * kTileRows);
    kernel(m1 - m0, N, K, A + m0 * a_row, a_row, a_k, B, ldb, accumulate, C + m0 * ldc, ldc,
           static_cast<float*>(ws.get()));
  });
}

namespace {

// Whether the BLAS is MKL running its own AVX-512 code: MKL with the AVX-512 kernel set
// on an Intel CPU (MKL runs AVX-512 code on Intel CPUs only). There the large products
// stay with MKL; everywhere else the kernel set's blocked GEMM was the faster
// (panel_gemm.h).
bool blas_is_avx512_mkl() {
#if defined(__x86_64__)
  static const bool yes = &SGEMM_PACK != nullptr && std::strcmp(cpu_kernels().name, "avx512") == 0 &&
                          __builtin_cpu_is("intel");
  return yes;
#else
  return false;
#endif
}

bool blocked_gemm_for_large_products() {
  return cpu_kernels().blocked_gemm_f32 != nullptr && !blas_is_avx512_mkl();
}

}  // namespace

template <typename T>
void sequence_gemm(bool trans_a, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                   const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>) {
    // Below the kernel set's bound MKL was as fast or faster in the measurements
    // (panel_gemm.h).
    const CpuKernels& ks = cpu_kernels();
    const bool large = N >= ks.blocked_gemm_min_n && M > 0 && K > 0 &&
                       static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K) >=
                           std::ldexp(1.0, ks.blocked_gemm_min_mnk_log2);
    if (large && (beta == 0.0f || beta == 1.0f) && blocked_gemm_for_large_products()) {
      blocked_sequence_gemm(trans_a, M, N, K, A, lda, B, ldb, beta != 0.0f, C, ldc);
      return;
    }
  }
  gemm<T>(trans_a, false, M, N, K, T(1), A, lda, B, ldb, beta, C, ldc);
}

template void sequence_gemm<float>(bool, int64_t, int64_t, int64_t, const float*, int64_t,
                                   const float*, int64_t, float, float*, int64_t);
template void sequence_gemm<double>(bool, int64_t, int64_t, int64_t, const double*, int64_t,
                                    const double*, int64_t, double, double*, int64_t);

void sequence_gemm_bf16(const at::Tensor& A16, const at::Tensor& B16, float beta, float* C,
                        int64_t ldc) {
  const int64_t M = A16.size(0), N = B16.size(1);
  if (M <= 0 || N <= 0) return;
  const at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, at::TensorOptions().dtype(at::kFloat));
  if (A16.size(1) == 0) {
    if (beta == 0.0f) c.zero_();
    return;
  }
  const at::Tensor prod = at::mm(A16, B16);
  if (beta == 0.0f) {
    c.copy_(prod);
  } else {
    TORCH_CHECK(beta == 1.0f, "rnnfast internal error: bfloat16 sequence GEMM takes beta 0 or 1");
    c.add_(prod);
  }
}

at::Tensor bf16_copy(const float* p, int64_t rows, int64_t cols, int64_t ld) {
  const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat);
  if (p == nullptr || rows <= 0 || cols <= 0)
    return at::empty({std::max<int64_t>(rows, 0), std::max<int64_t>(cols, 0)},
                     f32.dtype(at::kBFloat16));
  return at::from_blob(const_cast<float*>(p), {rows, cols}, {ld, 1}, f32)
      .to(at::kBFloat16, false, false, at::MemoryFormat::Contiguous);
}

namespace {

// MKL's packed copy of W as the column-major "A" operand (C^T [N, M] = op(W)^T X^T),
// or nullptr where there is no packed GEMM (float64, another BLAS).
template <typename T>
void* pack_weight(bool, int64_t, int64_t, int64_t, const T*, int64_t) {
  return nullptr;
}

template <>
void* pack_weight<float>(bool trans_w, int64_t N, int64_t K, int64_t M_max, const float* W,
                         int64_t ldw) {
  if (&SGEMM_PACK_GET_SIZE == nullptr || &SGEMM_PACK == nullptr || &SGEMM_COMPUTE == nullptr ||
      N <= 0 || K <= 0 || M_max <= 0 || !fits_int(N) || !fits_int(K) || !fits_int(M_max) ||
      !fits_int(ldw)) {
    return nullptr;
  }
  const int m = static_cast<int>(N), n = static_cast<int>(M_max), k = static_cast<int>(K);
  const int ld = static_cast<int>(std::max<int64_t>(ldw, 1));
  const size_t bytes = SGEMM_PACK_GET_SIZE("A", &m, &n, &k);
  void* dest = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (dest == nullptr) return nullptr;
  const float one = 1.0f;
  SGEMM_PACK("A", trans_w ? "T" : "N", &m, &n, &k, &one, W, &ld, static_cast<float*>(dest));
  return dest;
}

template <typename T>
void packed_gemm(const void*, int64_t, int64_t, int64_t, const T*, int64_t, T, T*, int64_t) {
  TORCH_CHECK(false, "rnnfast internal error: no packed GEMM for this dtype");
}

template <>
void packed_gemm<float>(const void* packed, int64_t N, int64_t K, int64_t M, const float* X,
                        int64_t ldx, float beta, float* C, int64_t ldc) {
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int ldb = static_cast<int>(std::max<int64_t>(ldx, 1));
  const int ld_c = static_cast<int>(std::max<int64_t>(ldc, 1));
  const int lda = m;  // ignored for a packed operand
  SGEMM_COMPUTE("P", "N", &m, &n, &k, static_cast<const float*>(packed), &lda, X, &ldb, &beta, C,
                &ld_c);
}

}  // namespace

namespace {

// The columns of op(W) per group of W's rows (the packings' `groups`, trans_w only), checked.
inline int64_t rows_per_group(bool trans_w, int64_t N, int64_t groups) {
  TORCH_CHECK(groups >= 1 && N % groups == 0 && (groups == 1 || trans_w),
              "rnnfast internal error: bad weight groups");
  return groups > 1 ? N / groups : std::max<int64_t>(N, 1);
}

// Row of W that holds column n of a grouped op(W) (see PackedWeight).
inline int64_t grouped_row(int64_t n, int64_t per_group, int64_t group_stride) {
  return (n / per_group) * group_stride + n % per_group;
}

}  // namespace

void pack_panels(bool trans_w, int64_t N, int64_t K, const float* W, int64_t ldw, float* panels,
                 int64_t groups, int64_t group_stride) {
  const int64_t per_group = rows_per_group(trans_w, N, groups);
  const int64_t npanels = (N + kPanel - 1) / kPanel;
  const PackPanelF32 pack_panel = cpu_kernels().pack_panel_f32;
  for (int64_t j = 0; j < npanels; ++j) {
    float* __restrict pj = panels + j * K * kPanel;
    const int64_t cols = std::min(kPanel, N - j * kPanel);
    const float* rows[kPanel];
    for (int64_t c = 0; c < cols; ++c)
      rows[c] = W + grouped_row(j * kPanel + c, per_group, group_stride) * ldw;
    if (trans_w && cols == kPanel && pack_panel != nullptr) {
      pack_panel(K, rows, pj);
      continue;
    }
    for (int64_t k = 0; k < K; ++k) {
      float* __restrict dst = pj + k * kPanel;
      for (int64_t c = 0; c < cols; ++c) dst[c] = trans_w ? rows[c][k] : W[k * ldw + j * kPanel + c];
      for (int64_t c = cols; c < kPanel; ++c) dst[c] = 0.0f;
    }
  }
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void bf16_widen_rows(int64_t rows, int64_t cols, const uint16_t* src, int64_t ld_src, float* dst,
                     int64_t ld_dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* __restrict x = src + r * ld_src;
    float* __restrict y = dst + r * ld_dst;
    for (int64_t k = 0; k < cols; ++k) y[k] = bf16_to_float(x[k]);
  }
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void bf16_round_rows_portable(int64_t rows, int64_t cols, const float* src, int64_t ld_src,
                              uint16_t* dst, int64_t ld_dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict x = src + r * ld_src;
    uint16_t* __restrict y = dst + r * ld_dst;
    for (int64_t k = 0; k < cols; ++k) {
      uint32_t u;
      std::memcpy(&u, x + k, sizeof(u));
      const uint32_t nearest = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
      const uint32_t quiet_nan = (u >> 16) | 0x40u;
      y[k] = static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : nearest);
    }
  }
}

namespace {

// The `cols` rows of W16 that are columns j * 16 .. j * 16 + cols - 1 of op(W) = W16^T
// (grouped as pack_panels takes them), widened into rows [cols, K].
void widen_panel_rows(int64_t j, int64_t cols, int64_t K, const uint16_t* W16, int64_t ldw,
                      int64_t per_group, int64_t group_stride, float* rows) {
  for (int64_t c = 0; c < cols; ++c)
    bf16_widen_rows(1, K, W16 + grouped_row(j * kPanel + c, per_group, group_stride) * ldw, ldw,
                    rows + c * K, K);
}

}  // namespace

// pack_panels for bfloat16 W (bit patterns), each value widened exactly to float32: the
// rows of one panel (trans_w) are widened into a [16, K] buffer and packed from there.
void pack_panels_bf16(bool trans_w, int64_t N, int64_t K, const uint16_t* W16, int64_t ldw,
                      float* panels, int64_t groups, int64_t group_stride) {
  const int64_t per_group = rows_per_group(trans_w, N, groups);
  const int64_t npanels = (N + kPanel - 1) / kPanel;
  if (!trans_w) {
    // Row k of W widened whole (one call), then its 16-column pieces into their panels.
    std::vector<float> row(static_cast<size_t>(npanels * kPanel), 0.0f);
    for (int64_t k = 0; k < K; ++k) {
      bf16_widen_rows(1, N, W16 + k * ldw, ldw, row.data(), N);
      for (int64_t j = 0; j < npanels; ++j)
        std::memcpy(panels + (j * K + k) * kPanel, row.data() + j * kPanel, sizeof(float) * kPanel);
    }
    return;
  }
  std::vector<float> rows(static_cast<size_t>(kPanel * K));
  for (int64_t j = 0; j < npanels; ++j) {
    const int64_t cols = std::min(kPanel, N - j * kPanel);
    widen_panel_rows(j, cols, K, W16, ldw, per_group, group_stride, rows.data());
    pack_panels(true, cols, K, rows.data(), K, panels + j * K * kPanel);
  }
}

void pack_panels_bf16_halves(bool trans_w, int64_t N, int64_t K, const uint16_t* W16, int64_t ldw,
                             uint16_t* panels16, int64_t groups, int64_t group_stride) {
  const int64_t per_group = rows_per_group(trans_w, N, groups);
  const int64_t npanels = (N + kPanel - 1) / kPanel;
  if (!trans_w) {  // row k of a panel: 16 values of row k of W, zeros past N
    for (int64_t j = 0; j < npanels; ++j) {
      const int64_t cols = std::min(kPanel, N - j * kPanel);
      for (int64_t k = 0; k < K; ++k) {
        uint16_t* dst = panels16 + (j * K + k) * kPanel;
        std::memcpy(dst, W16 + k * ldw + j * kPanel, sizeof(uint16_t) * cols);
        std::fill(dst + cols, dst + kPanel, uint16_t(0));
      }
    }
    return;
  }
  // W^T: a panel's rows widened and transposed as pack_panels_bf16 does, then narrowed back
  // (exact: every value is a widened bfloat16).
  std::vector<float> rows(static_cast<size_t>(kPanel * K));
  std::vector<float> panel(static_cast<size_t>(kPanel * K));
  for (int64_t j = 0; j < npanels; ++j) {
    const int64_t cols = std::min(kPanel, N - j * kPanel);
    widen_panel_rows(j, cols, K, W16, ldw, per_group, group_stride, rows.data());
    pack_panels(true, cols, K, rows.data(), K, panel.data());
    uint16_t* __restrict dst = panels16 + j * K * kPanel;
    const float* __restrict src = panel.data();
    for (int64_t i = 0; i < K * kPanel; ++i) {
      uint32_t u;
      std::memcpy(&u, src + i, sizeof(u));
      dst[i] = static_cast<uint16_t>(u >> 16);
    }
  }
}

namespace {

std::atomic<int> g_bf16_half_panels{static_cast<int>(HalfPanels::kAuto)};

}  // namespace

int64_t l2_cache_bytes() {
  static const int64_t bytes = [] {
#if defined(_SC_LEVEL2_CACHE_SIZE)
    const long b = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (b > 0) return static_cast<int64_t>(b);
#endif
    return int64_t(1) << 20;
  }();
  return bytes;
}

int64_t bf16_half_panels_min_bytes(int64_t rows) {
  const int64_t l2 = l2_cache_bytes();
  return rows <= 4 ? l2 / 4 * 3 : rows <= 6 ? l2 : 2 * l2;
}

int64_t widened_row_block(int64_t M_max, int64_t N, int64_t K) {
  if (4 * panel_floats(N, K) > l2_cache_bytes() / 4 * 3) return std::max<int64_t>(M_max, 1);
  const int64_t rows = kWidenedRowBytes / (4 * std::max<int64_t>(K, 1)) / 12 * 12;
  return std::max<int64_t>(1, std::min(M_max, std::max<int64_t>(12, rows)));
}

void set_bf16_half_panels(HalfPanels mode) {
  g_bf16_half_panels.store(static_cast<int>(mode), std::memory_order_relaxed);
}

bool bf16_half_panels_for(int64_t M_max, int64_t N, int64_t K) {
  if (cpu_kernels().panel_gemm_bf16w == nullptr || M_max > kBf16PanelMaxRows) return false;
  switch (static_cast<HalfPanels>(g_bf16_half_panels.load(std::memory_order_relaxed))) {
    case HalfPanels::kAlways: return true;
    case HalfPanels::kNever: return false;
    default: return 4 * panel_floats(N, K) >= bf16_half_panels_min_bytes(M_max);
  }
}

namespace {

// The CPU's own panel micro-kernel (float32 on sets that have one), or nullptr.
template <typename T>
PanelGemmF32 panel_kernel() {
  return nullptr;
}
template <>
PanelGemmF32 panel_kernel<float>() {
  return cpu_kernels().panel_gemm_f32;
}

// sum_k x[k] w[k], summed in one fixed order (per machine: the widest vector clone the CPU
// runs), for the unpacked single-use products of PackedWeight.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
float dot_f32(int64_t K, const float* __restrict x, const float* __restrict w) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < K; ++k) sum += x[k] * w[k];
  return sum;
}

// The panel buffers that forward step loops released, which the next forward's packs reuse
// (PackedWeight's reuse_buffers): at most kPanelCacheBytes held, the oldest given back first,
// and all given back when a backward starts (release_panel_buffers), so that a training
// step's peak memory is what it was without them. A step loop packs its threads' weight
// slices on every call, and buffers of that size are beyond the C allocator's trim threshold:
// without this they were fresh pages on most inference calls, each faulted in and cleared.
// A held block serves a request of half its size or more.
constexpr size_t kPanelCacheBytes = size_t{16} << 20;

class PanelCache {
 public:
  PanelCache() = default;
  PanelCache(const PanelCache&) = delete;
  PanelCache& operator=(const PanelCache&) = delete;
  // A 64-byte aligned buffer of `bytes` (a multiple of 64), or nullptr.
  void* get(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      size_t best = held_.size();
      for (size_t i = 0; i < held_.size(); ++i) {
        if (held_[i].bytes >= bytes && held_[i].bytes / 2 <= bytes &&
            (best == held_.size() || held_[i].bytes < held_[best].bytes))
          best = i;
      }
      if (best < held_.size()) {
        void* p = held_[best].p;
        total_ -= held_[best].bytes;
        held_.erase(held_.begin() + static_cast<std::ptrdiff_t>(best));
        return p;
      }
    }
    return std::aligned_alloc(64, bytes);
  }
  // Takes back a buffer of get(bytes).
  void put(void* p, size_t bytes) {
    if (p == nullptr) return;
    std::vector<void*> out;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (bytes > kPanelCacheBytes) {
        out.push_back(p);
      } else {
        while (total_ + bytes > kPanelCacheBytes) {
          out.push_back(held_.front().p);
          total_ -= held_.front().bytes;
          held_.erase(held_.begin());
        }
        held_.push_back({p, bytes});
        total_ += bytes;
      }
    }
    for (void* q : out) std::free(q);
  }
  void release() {
    std::vector<Block> out;
    {
      std::lock_guard<std::mutex> lock(mu_);
      out.swap(held_);
      total_ = 0;
    }
    for (const Block& b : out) std::free(b.p);
  }
  size_t held_bytes() {
    std::lock_guard<std::mutex> lock(mu_);
    return total_;
  }

 private:
  struct Block {
    void* p;
    size_t bytes;
  };
  std::mutex mu_;
  std::vector<Block> held_;
  size_t total_ = 0;
};

PanelCache& panel_cache() {
  static PanelCache* cache = new PanelCache();  // never destroyed: used until the process ends
  return *cache;
}

size_t panel_buffer_bytes(int64_t N, int64_t K) {
  return (sizeof(float) * static_cast<size_t>(panel_floats(N, K)) + 63) / 64 * 64;
}

// W packed into panels for `kernel` (64-byte aligned; from panel_cache() with `cached`), or
// nullptr.
template <typename T>
void* pack_own(PanelGemmF32 kernel, bool trans_w, int64_t N, int64_t K, const T* W, int64_t ldw,
               int64_t groups, int64_t group_stride, bool cached) {
  if constexpr (std::is_same_v<T, float>) {
    if (kernel == nullptr || N <= 0 || K <= 0) return nullptr;
    const size_t bytes = panel_buffer_bytes(N, K);
    void* dest = cached ? panel_cache().get(bytes) : std::aligned_alloc(64, bytes);
    if (dest != nullptr)
      pack_panels(trans_w, N, K, W, ldw, static_cast<float*>(dest), groups, group_stride);
    return dest;
  }
  return nullptr;
}

}  // namespace

void release_panel_buffers() { panel_cache().release(); }

size_t held_panel_buffer_bytes() { return panel_cache().held_bytes(); }

template <typename T>
PackedWeight<T>::PackedWeight(bool trans_w, int64_t N, int64_t K, int64_t M_max, const T* W,
                              int64_t ldw, int64_t groups, int64_t group_stride, int bf16_terms,
                              int64_t uses, bool reuse_buffers)
    : trans_w_(trans_w), N_(N), K_(K), M_max_(M_max), bf16_terms_(bf16_terms), W_(W), ldw_(ldw), gathered_(nullptr),
      kernel_(panel_kernel<T>()), panels_(nullptr), packed_(nullptr), amx_tiles_(nullptr),
      amx_rows_(nullptr) {
  TORCH_CHECK(groups >= 1 && (N <= 0 || N % groups == 0) && (groups == 1 || trans_w),
              "rnnfast internal error: bad weight groups");
  if constexpr (std::is_same_v<T, float>) {
    if (bf16_terms > 0 && bf16_kernels_usable() && N > 0 && K > 0 && M_max > 0) {
      // The float32 panels give the grouped columns of op(W); the tiles are made from them.
      const size_t panel_bytes = sizeof(float) * static_cast<size_t>(panel_floats(N, K));
      std::unique_ptr<void, decltype(&std::free)> panels(
          std::aligned_alloc(64, (panel_bytes + 63) / 64 * 64), &std::free);
      const size_t tile_bytes = static_cast<size_t>(amx_packed_bytes(N, K));
      const size_t row_bytes = static_cast<size_t>(amx_rows_bytes(M_max, K, bf16_terms));
      amx_tiles_ = std::aligned_alloc(64, tile_bytes);
      amx_rows_ = std::aligned_alloc(64, (row_bytes + 63) / 64 * 64);
      TORCH_CHECK(panels != nullptr && amx_tiles_ != nullptr && amx_rows_ != nullptr,
                  "rnnfast: out of memory for a ", N, "x", K, " bfloat16 weight copy");
      pack_panels(trans_w, N, K, W, ldw, static_cast<float*>(panels.get()), groups, group_stride);
      amx_pack_from_panels(N, K, static_cast<const float*>(panels.get()), amx_tiles_);
      std::memset(amx_rows_, 0, row_bytes);
      return;
    }
  }
  if (std::is_same_v<T, float> && kernel_ != nullptr && trans_w && uses >= 1 && M_max >= 1 &&
      uses * M_max <= kDirectMaxRows && N > 0 && K > 0) {
    direct_ = true;
    per_group_ = N / groups;
    group_stride_ = groups > 1 ? group_stride : 0;
    return;
  }
  panels_ = pack_own<T>(kernel_, trans_w, N, K, W, ldw, groups, group_stride, reuse_buffers);
  if (panels_ != nullptr && reuse_buffers) cached_bytes_ = panel_buffer_bytes(N, K);
  if (panels_ != nullptr || N <= 0 || K <= 0) return;
  if (groups > 1) {  // the BLAS takes one matrix: gather the groups' rows
    const int64_t per_group = N / groups;
    gathered_ = static_cast<T*>(std::malloc(sizeof(T) * static_cast<size_t>(N * K)));
    TORCH_CHECK(gathered_ != nullptr, "rnnfast: out of memory for a ", N, "x", K, " weight copy");
    for (int64_t n = 0; n < N; ++n)
      std::copy(W + grouped_row(n, per_group, group_stride) * ldw,
                W + grouped_row(n, per_group, group_stride) * ldw + K, gathered_ + n * K);
    W_ = gathered_;
    ldw_ = K;
  }
  packed_ = pack_weight<T>(trans_w, N, K, M_max, W_, ldw_);
  if (packed_ != nullptr && gathered_ != nullptr) {  // MKL keeps its own copy
    std::free(gathered_);
    gathered_ = nullptr;
    W_ = W;
    ldw_ = ldw;
  }
}

template <typename T>
PackedWeight<T>::PackedWeight(int64_t N, int64_t K, int64_t M_max, const uint16_t* W16,
                              int64_t ldw, int64_t groups, int64_t group_stride, int bf16_terms,
                              bool trans_w)
    : trans_w_(trans_w), N_(N), K_(K), M_max_(M_max), bf16_terms_(bf16_terms), W_(nullptr), ldw_(ldw),
      gathered_(nullptr), kernel_(nullptr), panels_(nullptr), packed_(nullptr), amx_tiles_(nullptr),
      amx_rows_(nullptr) {
  TORCH_CHECK((std::is_same_v<T, float>) && N > 0 && K > 0 && M_max > 0 && groups >= 1 &&
                  N % groups == 0 && (trans_w || groups == 1),
              "rnnfast internal error: a bfloat16 weight is packed as float32 only");
  if (bf16_terms == 0) {
    // Widened: float32 panels of op(W) for the panel micro-kernel; for a few rows, panels
    // of the bfloat16 values themselves, widened in registers (half the bytes to stream).
    kernel_ = panel_kernel<float>();
    TORCH_CHECK(kernel_ != nullptr,
                "rnnfast internal error: widened bfloat16 weights need the panel micro-kernel");
    widened_ = true;
    if (bf16_half_panels_for(M_max, N, K)) {
      const size_t bytes = sizeof(uint16_t) * static_cast<size_t>(panel_floats(N, K));
      panels_ = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
      TORCH_CHECK(panels_ != nullptr, "rnnfast: out of memory for a ", N, "x", K, " weight copy");
      pack_panels_bf16_halves(trans_w, N, K, W16, ldw, static_cast<uint16_t*>(panels_), groups,
                              group_stride);
      kernel16_ = cpu_kernels().panel_gemm_bf16w;
      return;
    }
    const size_t bytes = sizeof(float) * static_cast<size_t>(panel_floats(N, K));
    panels_ = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    TORCH_CHECK(panels_ != nullptr, "rnnfast: out of memory for a ", N, "x", K, " weight copy");
    pack_panels_bf16(trans_w, N, K, W16, ldw, static_cast<float*>(panels_), groups, group_stride);
    return;
  }
  TORCH_CHECK(bf16_kernels_usable(),
              "rnnfast internal error: a bfloat16 weight is packed for the AMX tiles only");
  const size_t tile_bytes = static_cast<size_t>(amx_packed_bytes(N, K));
  const size_t row_bytes = static_cast<size_t>(amx_rows_bytes(M_max, K, bf16_terms));
  amx_tiles_ = std::aligned_alloc(64, (tile_bytes + 63) / 64 * 64);
  amx_rows_ = std::aligned_alloc(64, (row_bytes + 63) / 64 * 64);
  TORCH_CHECK(amx_tiles_ != nullptr && amx_rows_ != nullptr, "rnnfast: out of memory for a ", N,
              "x", K, " bfloat16 weight copy");
  if (trans_w) {
    amx_pack_bf16_rows(N, K, W16, ldw, N / groups, group_stride, amx_tiles_);
  } else {
    amx_pack_bf16_cols(N, K, W16, ldw, amx_tiles_);
  }
  std::memset(amx_rows_, 0, row_bytes);
}

template <typename T>
PackedWeight<T>::~PackedWeight() {
  std::free(rows_f32_);
  std::free(amx_tiles_);
  std::free(amx_rows_);
  if (cached_bytes_ > 0) {
    panel_cache().put(panels_, cached_bytes_);
  } else {
    std::free(panels_);
  }
  std::free(packed_);
  std::free(gathered_);
}

template <typename T>
void PackedWeight<T>::gemm(int64_t M, const T* X, int64_t ldx, T beta, T* C, int64_t ldc) const {
  if (M <= 0 || N_ <= 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (amx_tiles_ != nullptr) {
      TORCH_CHECK((beta == 0.0f || beta == 1.0f) && M <= M_max_,
                  "rnnfast internal error: AMX GEMM takes beta 0 or 1 and at most M_max rows");
      amx_gemm_f32(M, N_, K_, amx_tiles_, X, ldx, beta != 0.0f ? AmxInit::kAccumulate : AmxInit::kZero,
                   nullptr, C, ldc, amx_rows_, bf16_terms_);
      return;
    }
    if (direct_) {
      TORCH_CHECK(beta == 0.0f || beta == 1.0f, "rnnfast internal error: panel GEMM takes beta 0 or 1");
      for (int64_t n = 0; n < N_; ++n) {
        const float* w = W_ + grouped_row(n, per_group_, group_stride_) * ldw_;
        for (int64_t m = 0; m < M; ++m) {
          const float v = dot_f32(K_, X + m * ldx, w);
          C[m * ldc + n] = beta != 0.0f ? C[m * ldc + n] + v : v;
        }
      }
      return;
    }
    if (kernel16_ != nullptr) {
      TORCH_CHECK((beta == 0.0f || beta == 1.0f) && M <= M_max_,
                  "rnnfast internal error: panel GEMM takes beta 0 or 1 and at most M_max rows");
      kernel16_(M, N_, K_, static_cast<const uint16_t*>(panels_), X, ldx, beta != 0.0f, C, ldc);
      return;
    }
    if (panels_ != nullptr) {
      TORCH_CHECK(beta == 0.0f || beta == 1.0f, "rnnfast internal error: panel GEMM takes beta 0 or 1");
      kernel_(M, N_, K_, static_cast<const float*>(panels_), X, ldx, beta != 0.0f, C, ldc);
      return;
    }
  }
  if (packed_ != nullptr) {
    packed_gemm<T>(packed_, N_, K_, M, X, ldx, beta, C, ldc);
  } else {
    cpu::gemm<T>(false, trans_w_, M, N_, K_, T(1), X, ldx, W_, ldw_, beta, C, ldc);
  }
}

template <typename T>
void PackedWeight<T>::gemm_bf16(int64_t M, const uint16_t* X16, int64_t ldx, const float* bias,
                                float* C, int64_t ldc) const {
  TORCH_CHECK(takes_bf16_rows() && M <= M_max_,
              "rnnfast internal error: bfloat16 rows need a bfloat16 weight and at most M_max rows");
  if (M <= 0 || N_ <= 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (amx_tiles_ == nullptr) {
      // Widened: a block of rows widened into float32 at a time (widened_row_block rows, the
      // buffer allocated once), then the panel micro-kernel onto the bias rows or zeros. Each
      // C element is the same sum over k, in the same order, whatever the blocks.
      const int64_t rb = widened_row_block(M_max_, N_, K_);
      if (rows_f32_ == nullptr) {
        const size_t bytes = sizeof(float) * static_cast<size_t>(rb * K_);
        rows_f32_ = static_cast<float*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
        TORCH_CHECK(rows_f32_ != nullptr, "rnnfast: out of memory for ", rb, "x", K_, " rows");
      }
      if (bias != nullptr) {
        for (int64_t m = 0; m < M; ++m) std::memcpy(C + m * ldc, bias, sizeof(float) * N_);
      }
      for (int64_t m0 = 0; m0 < M; m0 += rb) {
        const int64_t mc = std::min(rb, M - m0);
        bf16_widen_rows(mc, K_, X16 + m0 * ldx, ldx, rows_f32_, K_);
        if (kernel16_ != nullptr) {
          kernel16_(mc, N_, K_, static_cast<const uint16_t*>(panels_), rows_f32_, K_,
                    bias != nullptr, C + m0 * ldc, ldc);
        } else {
          kernel_(mc, N_, K_, static_cast<const float*>(panels_), rows_f32_, K_, bias != nullptr,
                  C + m0 * ldc, ldc);
        }
      }
      return;
    }
  }
  amx_gemm_bf16(M, N_, K_, amx_tiles_, X16, ldx, bias != nullptr ? AmxInit::kBias : AmxInit::kZero,
                bias, C, ldc, amx_rows_);
}

template class PackedWeight<float>;
template class PackedWeight<double>;

SequentialBlasScope::SequentialBlasScope()
    : previous_(&MKL_Set_Num_Threads_Local != nullptr ? MKL_Set_Num_Threads_Local(1) : 0) {}

SequentialBlasScope::~SequentialBlasScope() {
  if (&MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(previous_);
}

const char* gemm_backend() {
  return blas_gemm<float>() != nullptr && blas_gemm<double>() != nullptr
             ? "blas (sgemm_/dgemm_ from libtorch)"
             : "aten";
}

const char* sequence_gemm_backend() {
  return blocked_gemm_for_large_products() ? "rnnfast blocked gemm (large products)"
                                           : gemm_backend();
}

const char* step_gemm_bf16() { return bf16_kernel_name(bf16_kernel()); }

bool step_gemm_split_invariant_f32() { return cpu_kernels().panel_gemm_f32 != nullptr; }

const char* step_gemm_backend() {
  if (cpu_kernels().panel_gemm_f32 != nullptr) return "rnnfast panel micro-kernel";
  if (&SGEMM_PACK_GET_SIZE != nullptr && &SGEMM_PACK != nullptr && &SGEMM_COMPUTE != nullptr)
    return "mkl packed gemm";
  return gemm_backend();
}

}  // namespace cpu
}  // namespace rnnfast
