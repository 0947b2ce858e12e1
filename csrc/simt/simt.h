// simt.h: one kernel source for the GPU (nvcc) and for the SIMT emulator (g++).
//
// Kernels in csrc/kernels/ and host code in csrc/cuda/ are written against this
// header only. Compiled by nvcc it maps onto CUDA itself; compiled by a host
// compiler it maps onto a small emulator (simt_runtime.cpp) that runs every CUDA
// thread as a fiber with CUDA's semantics, so the same kernels run on the CPU
// under pytest and ctest on machines without a GPU.
//
// Rules for code that uses it (enforced by tests/test_simt_rules.py):
//   * no `<<<...>>>`: launch with simt::launch / simt::launch_cooperative;
//   * no raw `__shared__`: use simt::dynamic_shared<T>() (per-block storage,
//     poisoned with NaN bytes at block start in the emulator);
//   * no CUB and no inline PTX inside kernels;
//   * grid-wide sync only in cooperative launches (simt::grid_sync()).
//
// What the emulator provides (beyond the usual builtins threadIdx, blockIdx,
// blockDim, gridDim, warpSize = 32):
//   __syncthreads, __syncthreads_count/_and/_or, __syncwarp, __threadfence*,
//   __shfl_sync/_up/_down/_xor (with width), __ballot_sync/__any_sync/__all_sync,
//   atomicAdd/Sub/Max/Min/Exch/CAS, __expf, __fdividef, __ldg, __half and
//   __nv_bfloat16 (CUDA's own headers, when available: SIMT_HAS_HALF).
//
// Global memory: kernels read and write it through simt::ld (coherent: data that
// other blocks of the same launch may write), simt::ldg (read-only for the whole
// launch: the GPU's non-coherent read-only path, __ldg) and simt::st; shared memory
// (simt::dynamic_shared) is accessed directly. On the GPU these are plain accesses;
// the emulator counts their bytes per launch (simt::Counters, when counting is on)
// and aborts when one of them touches the block's shared memory. Host code reports
// the GEMMs it runs beside the kernels with simt::record_gemm (a no-op on the GPU).
//
// Tensor cores: simt::wmma is nvcuda::wmma on the GPU; the emulator implements the part of
// it the kernels use, m16n16k16 tiles of __half or __nv_bfloat16 with float accumulators:
// fragment, fill_fragment, load_matrix_sync, mma_sync, store_matrix_sync, as warp
// collectives (all 32 lanes, checked), with CUDA's pointer (32-byte) and leading-dimension
// (16-byte) requirements checked. Its fragments hold the whole tile in every lane (a
// fragment's layout is opaque in CUDA); element access (x[], num_elements) is not emulated.
// Dynamic shared memory starts 128-byte aligned on both.
//
// Device properties (simt::device_props) and occupancy (simt::blocks_per_sm) come
// from the CUDA runtime on the GPU and from a settable model in the emulator
// (simt::set_device_model; default H100-like), so launch-shape decisions are tested
// without a GPU. A launch may ask for more than 48 KiB of dynamic shared memory (up to
// the device's opt-in limit): the GPU backend opts the kernel in first.
// Warp collectives complete only when every lane named in the mask has arrived,
// and each lane's result is kept per lane, so a fast lane cannot overwrite a value
// a slow lane has yet to read. The emulator aborts with a message naming the
// kernel, block, thread and source line on: threads of a block waiting at
// different barriers, a barrier that some threads never reach (they exited), a
// warp collective whose mask names lanes that exited or do not exist or excludes
// the caller, deadlock (every live thread waits and nothing can release any), and
// livelock (threads spinning on atomics that never change anything).
#pragma once

#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace simt {

// Launch shape and name (the name is for the emulator's messages), over each
// backend's dim3 and stream types: simt::LaunchConfig.
template <typename Dim3, typename Stream>
struct BasicLaunchConfig {
  Dim3 grid;
  Dim3 block;
  size_t smem = 0;
  Stream stream = nullptr;
  const char* name = "kernel";
  // Whether every global access of the kernel goes through simt::ld/ldg/st, so that the
  // emulator's byte counts of its launches are complete (else they are reported as not
  // counted).
  bool counted = true;
};

// What launch-shape decisions need to know of the device (cudaDeviceProp's fields).
struct DeviceProps {
  int sm_count = 0;
  int max_threads_per_sm = 0;
  int max_blocks_per_sm = 0;
  int regs_per_sm = 0;
  size_t smem_per_sm = 0;
  size_t smem_per_block_optin = 0;  // the most dynamic shared memory one block may have
};

// Thrown when a launch is rejected (bad shape, too much shared memory, a
// cooperative grid that could not be co-resident).
struct LaunchError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace simt

#if defined(__CUDACC__)
// ============================================================================ GPU

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#define SIMT_HAS_HALF 1
#define SIMT_EMULATED 0
#define SIMT_DEVICE __device__ __forceinline__
#define SIMT_HD __host__ __device__ __forceinline__

namespace simt {
inline namespace gpu {

using stream_t = cudaStream_t;
using dim3_t = ::dim3;
using LaunchConfig = BasicLaunchConfig<dim3_t, stream_t>;

// Dynamic shared memory of the current block, as T[]. Size set at launch.
template <typename T>
__device__ __forceinline__ T* dynamic_shared() {
  extern __shared__ __align__(128) unsigned char simt_dynamic_smem[];
  return reinterpret_cast<T*>(simt_dynamic_smem);
}

// Tensor cores: CUDA's own warp matrix API (fragments, load/mma/store_matrix_sync).
namespace wmma = nvcuda::wmma;

__device__ __forceinline__ void grid_sync() { cooperative_groups::this_grid().sync(); }

// Global memory accesses (plain on the GPU; counted in the emulator).
template <typename T>
__device__ __forceinline__ T ld(const T* p) {
  return *p;
}
template <typename T>
__device__ __forceinline__ T ldg(const T* p) {
  return __ldg(p);
}
template <typename T, typename V>
__device__ __forceinline__ void st(T* p, V v) {
  *p = static_cast<T>(v);
}

inline void record_gemm(const char*, int64_t, int64_t, int64_t) {}

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw LaunchError(std::string(what) + ": " + cudaGetErrorString(err));
}

// The current device's properties (cheap attribute queries, no cudaGetDeviceProperties).
inline DeviceProps device_props() {
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  auto attr = [&](cudaDeviceAttr a) {
    int v = 0;
    check_cuda(cudaDeviceGetAttribute(&v, a, dev), "cudaDeviceGetAttribute");
    return v;
  };
  DeviceProps p;
  p.sm_count = attr(cudaDevAttrMultiProcessorCount);
  p.max_threads_per_sm = attr(cudaDevAttrMaxThreadsPerMultiProcessor);
  p.max_blocks_per_sm = attr(cudaDevAttrMaxBlocksPerMultiprocessor);
  p.regs_per_sm = attr(cudaDevAttrMaxRegistersPerMultiprocessor);
  p.smem_per_sm = static_cast<size_t>(attr(cudaDevAttrMaxSharedMemoryPerMultiprocessor));
  p.smem_per_block_optin = static_cast<size_t>(attr(cudaDevAttrMaxSharedMemoryPerBlockOptin));
  return p;
}

namespace detail {
constexpr size_t kDefaultDynamicSmem = 48 * 1024;
inline void opt_in_smem(const void* kernel, size_t smem) {
  if (smem > kDefaultDynamicSmem) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)),
               "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  }
}
}  // namespace detail

// How many blocks of `threads` threads and `smem` bytes of dynamic shared memory
// can be resident on one SM at once (0: the kernel cannot launch so). regs_hint is
// for the emulator, which cannot know the compiled kernel's registers per thread.
template <typename... KArgs>
int blocks_per_sm(void (*kernel)(KArgs...), int threads, size_t smem, int /*regs_hint*/) {
  const void* k = reinterpret_cast<const void*>(kernel);
  detail::opt_in_smem(k, smem);
  int n = 0;
  check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, threads, smem),
             "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  return n;
}

template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), const LaunchConfig& cfg, Args&&... args) {
  detail::opt_in_smem(reinterpret_cast<const void*>(kernel), cfg.smem);
  kernel<<<cfg.grid, cfg.block, cfg.smem, cfg.stream>>>(std::forward<Args>(args)...);
}

namespace detail {
template <typename Tuple, size_t... I>
void cooperative(const void* kernel, const LaunchConfig& cfg, Tuple& args,
                 std::index_sequence<I...>) {
  void* argv[] = {static_cast<void*>(&std::get<I>(args))..., nullptr};
  const cudaError_t err =
      cudaLaunchCooperativeKernel(kernel, cfg.grid, cfg.block, argv, cfg.smem, cfg.stream);
  if (err != cudaSuccess) {
    throw LaunchError(std::string("cooperative launch of ") + cfg.name +
                      " failed: " + cudaGetErrorString(err));
  }
}
}  // namespace detail

// A launch whose blocks may call grid_sync(); every block must be co-resident.
template <typename... KArgs, typename... Args>
void launch_cooperative(void (*kernel)(KArgs...), const LaunchConfig& cfg, Args&&... args) {
  std::tuple<std::decay_t<KArgs>...> packed(std::forward<Args>(args)...);
  detail::opt_in_smem(reinterpret_cast<const void*>(kernel), cfg.smem);
  detail::cooperative(reinterpret_cast<const void*>(kernel), cfg, packed,
                      std::index_sequence_for<KArgs...>{});
}

}  // namespace gpu
}  // namespace simt

#else
// ============================================================================ emulator

#if __has_include(<cuda_fp16.h>) && __has_include(<cuda_bf16.h>) && !defined(SIMT_NO_HALF)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define SIMT_HAS_HALF 1
#else
#define SIMT_HAS_HALF 0
#endif

#include <cmath>
#include <functional>
#include <vector>

#define SIMT_EMULATED 1
#define SIMT_DEVICE inline
#define SIMT_HD inline

// CUDA's execution-space keywords mean nothing to a host compiler (CUDA's own
// host_defines.h, pulled in by cuda_fp16.h, defines them away the same way).
#ifndef __global__
#define __global__
#endif
#ifndef __device__
#define __device__
#endif
#ifndef __host__
#define __host__
#endif
#ifndef __forceinline__
#define __forceinline__ inline
#endif
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __restrict__
#define __restrict__ __restrict
#endif

namespace simt {
inline namespace emu {

struct uint3_t {
  unsigned x = 0, y = 0, z = 0;
};

struct dim3_t {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3_t(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

using stream_t = void*;
using LaunchConfig = BasicLaunchConfig<dim3_t, stream_t>;

// The emulated device, the model that launches are checked against and that
// simt::device_props reports. Default: H100-like (sm_90: 132 SMs, 228 KiB of shared
// memory and 64 K registers per SM, 227 KiB of dynamic shared memory per block after
// opt-in); settable (set_device_model), e.g. to an A100 (108 SMs, 164 KiB, 163 KiB)
// or to a small device in tests.
using DeviceModel = DeviceProps;
DeviceModel h100_model();
const DeviceModel& device_model();
void set_device_model(const DeviceModel& model);
inline DeviceProps device_props() { return device_model(); }

// Per-launch counts, recorded while counting is on (set_counting): the launch shape,
// the bytes of global memory its threads read and wrote through ld/ldg/st, the grid
// syncs (completed grid barriers) and block barriers (completed __syncthreads, summed
// over blocks). GEMMs reported by host code (record_gemm) are listed apart.
struct LaunchCount {
  std::string name;
  unsigned grid[3] = {1, 1, 1}, block[3] = {1, 1, 1};
  bool cooperative = false;
  bool bytes_counted = true;  // LaunchConfig::counted
  size_t shared_bytes = 0;
  uint64_t global_bytes_read = 0, global_bytes_written = 0;
  uint64_t grid_syncs = 0, block_barriers = 0;
  uint64_t mma_syncs = 0;  // wmma::mma_sync calls, one per warp
};
struct GemmCount {
  std::string what;
  int64_t m = 0, n = 0, k = 0;
};
void set_counting(bool on);
bool counting();
// Takes (and clears) what was recorded so far.
void take_counts(std::vector<LaunchCount>& launches, std::vector<GemmCount>& gemms);
void record_gemm(const char* what, int64_t m, int64_t n, int64_t k);

namespace detail {

struct Fiber;
struct Block;
struct Launch;

// The thread (fiber) currently running on this OS thread; aborts outside kernels.
Fiber& self();
const uint3_t& thread_idx();
const uint3_t& block_idx();
const dim3_t& block_dim();
const dim3_t& grid_dim();
unsigned char* block_smem();

void run(const LaunchConfig& cfg, bool cooperative, const std::function<void()>& body);

// Block barrier: op 0 plain, 1 count, 2 and, 3 or; returns the reduction.
int block_barrier(int op, int pred, const char* file, int line);
void grid_barrier(const char* file, int line);

enum class WarpOp : int { kSync, kShfl, kUp, kDown, kXor, kBallot, kAny, kAll };
// Warp collective on an up-to-8-byte value; returns the lane's result bits.
uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t bits, int arg, int width,
                         const char* file, int line);

// A scheduling point after an atomic; `changed` tells whether memory changed
// (spinning on atomics that change nothing is how the livelock check counts).
void atomic_point(bool changed);

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                "warp shuffles move values of at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// Counts a global access of `bytes` at p (aborts when p is in the block's shared memory).
void global_access(const void* p, size_t bytes, bool write);

// A warp shuffle (kShfl, kUp, kDown, kXor) of `var`; arg is the source lane, delta or
// lane mask.
template <typename T>
T shuffle(WarpOp op, unsigned mask, T var, int arg, int width, const char* file, int line) {
  return from_bits<T>(warp_collective(op, mask, to_bits(var), arg, width, file, line));
}

}  // namespace detail

// Dynamic shared memory of the current block, as T[]. Size set at launch;
// poisoned (every byte 0xFF: NaN for floats, -1 for integers) at block start.
template <typename T>
inline T* dynamic_shared() {
  return reinterpret_cast<T*>(detail::block_smem());
}

inline void grid_sync(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  detail::grid_barrier(file, line);
}

template <typename T>
inline T ld(const T* p) {
  detail::global_access(p, sizeof(T), false);
  return *p;
}
template <typename T>
inline T ldg(const T* p) {
  detail::global_access(p, sizeof(T), false);
  return *p;
}
template <typename T, typename V>
inline void st(T* p, V v) {
  detail::global_access(p, sizeof(T), true);
  *p = static_cast<T>(v);
}

// Blocks per SM for the model: threads, shared memory, the block limit and the
// registers (threads x regs_hint).
template <typename... KArgs>
int blocks_per_sm(void (*)(KArgs...), int threads, size_t smem, int regs_hint) {
  const DeviceModel& d = device_model();
  if (threads <= 0 || threads > 1024 || smem > d.smem_per_block_optin) return 0;
  size_t n = std::min<size_t>(d.max_blocks_per_sm, d.max_threads_per_sm / threads);
  if (smem > 0) n = std::min(n, d.smem_per_sm / smem);
  if (regs_hint > 0)
    n = std::min<size_t>(n, d.regs_per_sm / (static_cast<size_t>(threads) * regs_hint));
  return static_cast<int>(n);
}

template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), const LaunchConfig& cfg, Args&&... args) {
  std::tuple<std::decay_t<KArgs>...> packed(std::forward<Args>(args)...);
  detail::run(cfg, false, [&] { std::apply(kernel, packed); });
}

template <typename... KArgs, typename... Args>
void launch_cooperative(void (*kernel)(KArgs...), const LaunchConfig& cfg, Args&&... args) {
  std::tuple<std::decay_t<KArgs>...> packed(std::forward<Args>(args)...);
  detail::run(cfg, true, [&] { std::apply(kernel, packed); });
}

}  // namespace emu
}  // namespace simt

// ---------------------------------------------------------------- CUDA builtins

#define threadIdx (::simt::detail::thread_idx())
#define blockIdx (::simt::detail::block_idx())
#define blockDim (::simt::detail::block_dim())
#define gridDim (::simt::detail::grid_dim())
constexpr int warpSize = 32;

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::simt::detail::block_barrier(0, 0, file, line);
}
inline int __syncthreads_count(int pred, const char* file = __builtin_FILE(),
                               int line = __builtin_LINE()) {
  return ::simt::detail::block_barrier(1, pred != 0, file, line);
}
inline int __syncthreads_and(int pred, const char* file = __builtin_FILE(),
                             int line = __builtin_LINE()) {
  return ::simt::detail::block_barrier(2, pred != 0, file, line);
}
inline int __syncthreads_or(int pred, const char* file = __builtin_FILE(),
                            int line = __builtin_LINE()) {
  return ::simt::detail::block_barrier(3, pred != 0, file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  ::simt::detail::warp_collective(::simt::detail::WarpOp::kSync, mask, 0, 0, 32, file, line);
}
// Memory is coherent in the emulator (one OS thread runs all fibers).
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src, int width = warpSize,
                     const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using namespace ::simt::detail;
  return shuffle(WarpOp::kShfl, mask, var, src, width, file, line);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                        const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using namespace ::simt::detail;
  return shuffle(WarpOp::kUp, mask, var, static_cast<int>(delta), width, file, line);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                          const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using namespace ::simt::detail;
  return shuffle(WarpOp::kDown, mask, var, static_cast<int>(delta), width, file, line);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,
                         const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using namespace ::simt::detail;
  return shuffle(WarpOp::kXor, mask, var, lane_mask, width, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  using namespace ::simt::detail;
  return static_cast<unsigned>(
      warp_collective(WarpOp::kBallot, mask, pred != 0, 0, 32, file, line));
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  using namespace ::simt::detail;
  return static_cast<int>(warp_collective(WarpOp::kAny, mask, pred != 0, 0, 32, file, line));
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  using namespace ::simt::detail;
  return static_cast<int>(warp_collective(WarpOp::kAll, mask, pred != 0, 0, 32, file, line));
}

// Atomics: a fiber is never preempted, so read-modify-write is atomic; each is
// also a scheduling point so that spin-waits on atomics make progress.
template <typename T>
inline T atomicAdd(T* addr, T val) {
  const T old = *addr;
  *addr = old + val;
  ::simt::detail::atomic_point(val != T(0));
  return old;
}
template <typename T>
inline T atomicSub(T* addr, T val) {
  const T old = *addr;
  *addr = old - val;
  ::simt::detail::atomic_point(val != T(0));
  return old;
}
template <typename T>
inline T atomicMax(T* addr, T val) {
  const T old = *addr;
  if (val > old) *addr = val;
  ::simt::detail::atomic_point(val > old);
  return old;
}
template <typename T>
inline T atomicMin(T* addr, T val) {
  const T old = *addr;
  if (val < old) *addr = val;
  ::simt::detail::atomic_point(val < old);
  return old;
}
template <typename T>
inline T atomicExch(T* addr, T val) {
  const T old = *addr;
  *addr = val;
  ::simt::detail::atomic_point(!(old == val));
  return old;
}
template <typename T>
inline T atomicCAS(T* addr, T compare, T val) {
  const T old = *addr;
  const bool swap = old == compare;
  if (swap) *addr = val;
  ::simt::detail::atomic_point(swap && !(old == val));
  return old;
}

// Math intrinsics. The GPU's fast versions are approximations (a few ulp); the
// emulator computes them exactly, so tolerances must cover the GPU's error.
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float x, float y) {
  // CUDA: for 2^126 < |y| < 2^128 the result is 0 (and NaN when x is infinite).
  const float ay = std::fabs(y);
  if (ay > 0x1p126f && ay < INFINITY) return std::isinf(x) ? NAN : 0.0f * x;
  return x / y;
}
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
template <typename T>
inline T __ldg(const T* p) {
  ::simt::detail::global_access(p, sizeof(T), false);
  return *p;
}

#if SIMT_HAS_HALF
namespace simt {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

// A tile: every lane holds all of it, row-major (rows x cols of the fragment's use).
template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulator has m16n16k16 tiles only");
  static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
  static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
  T v[rows * cols];
};

namespace detail {
inline float to_float(float v) { return v; }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
void check_tile(const void* p, unsigned ldm, size_t elem, const char* what, const char* file,
                int line);
bool lane_zero();
void count_mma();
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, T value) {
  for (T& e : f.v) e = value;
}

// matrix_a / matrix_b from memory with the fragment's layout.
template <class Use, int M, int N, int K, class T, class Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using F = fragment<Use, M, N, K, T, Layout>;
  static_assert(!std::is_same<Layout, void>::value, "matrix_a/matrix_b fragments have a layout");
  __syncwarp(0xffffffffu, file, line);
  detail::check_tile(p, ldm, sizeof(T), "load_matrix_sync", file, line);
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.v[r * F::cols + c] =
          std::is_same<Layout, row_major>::value ? p[r * ldm + c] : p[c * ldm + r];
}

// An accumulator from memory, with the layout given.
template <int M, int N, int K>
inline void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p,
                             unsigned ldm, layout_t layout, const char* file = __builtin_FILE(),
                             int line = __builtin_LINE()) {
  __syncwarp(0xffffffffu, file, line);
  detail::check_tile(p, ldm, sizeof(float), "load_matrix_sync", file, line);
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      f.v[r * N + c] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}

template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f,
                              unsigned ldm, layout_t layout, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  __syncwarp(0xffffffffu, file, line);
  detail::check_tile(p, ldm, sizeof(float), "store_matrix_sync", file, line);
  if (detail::lane_zero()) {
    for (int r = 0; r < M; ++r)
      for (int c = 0; c < N; ++c)
        (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.v[r * N + c];
  }
  __syncwarp(0xffffffffu, file, line);
}

// d = a b + c, products and sums in float (d may be c).
template <int M, int N, int K, class T, class LA, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d,
                     const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b,
                     const fragment<accumulator, M, N, K, float>& c,
                     const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  __syncwarp(0xffffffffu, file, line);
  if (detail::lane_zero()) detail::count_mma();
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float acc = c.v[i * N + j];
      for (int k = 0; k < K; ++k)
        acc += detail::to_float(a.v[i * K + k]) * detail::to_float(b.v[k * N + j]);
      out[i * N + j] = acc;
    }
  for (int e = 0; e < M * N; ++e) d.v[e] = out[e];
}

}  // namespace wmma
}  // namespace simt
#endif  // SIMT_HAS_HALF

#endif  // __CUDACC__
