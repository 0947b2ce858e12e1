// The CPU executor of one layer in one direction (see layer.h).
#include "layer.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <cstring>
#include <mutex>
#include <optional>
#include <type_traits>
#include <vector>

#include <sys/mman.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bf16_gemm.h"
#include "blas.h"

namespace rnnfast {
namespace cpu {
namespace {

// dst = bfloat16(src), rows x cols, rounded to nearest even: the CPU's AVX512-BF16
// conversion under the avx512 kernel set on a CPU that has it, else the same rounding in
// integer arithmetic (bf16_round_rows_portable: what the avx2 set runs, on any CPU).
void round_rows_bf16(int64_t rows, int64_t cols, const float* src, int64_t ld_src, uint16_t* dst,
                     int64_t ld_dst) {
  if (rows <= 0 || cols <= 0) return;
  static const bool native = bf16_round_native() && std::strcmp(cpu_kernels().name, "avx512") == 0;
  if (native) {
    bf16_round_rows(rows, cols, src, ld_src, dst, ld_dst);
  } else {
    bf16_round_rows_portable(rows, cols, src, ld_src, dst, ld_dst);
  }
}

template <typename T>
void copy_rows(T* out, int64_t ld_out, const T* src, int64_t ld_src, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  if (ld_out == cols && ld_src == cols) {
    std::memcpy(out, src, sizeof(T) * rows * cols);
    return;
  }
  for (int64_t i = 0; i < rows; ++i) std::memcpy(out + i * ld_out, src + i * ld_src, sizeof(T) * cols);
}

// Sums of columns over rows that arrive a block at a time (a step's rows), in a fixed
// order: each block summed row by row into a leaf, leaves combined as a binary counter
// combines carries (the pairwise tree over blocks), so rounding grows with a block's rows
// plus log2 of the blocks, not with all rows; the order depends on nothing but the blocks.
template <typename T>
class BlockCascade {
 public:
  BlockCascade(int64_t cols, int64_t max_blocks) : cols_(cols) {
    int levels = 1;
    while ((int64_t(1) << levels) <= max_blocks) ++levels;
    level_.assign(static_cast<size_t>(levels * cols), T(0));
    used_.assign(static_cast<size_t>(levels), false);
    leaf_.assign(static_cast<size_t>(cols), T(0));
  }
  // The next block's sums, zeroed: add its rows, then push().
  T* leaf() {
    std::fill(leaf_.begin(), leaf_.end(), T(0));
    return leaf_.data();
  }
  void push() {
    T* __restrict s = leaf_.data();
    size_t l = 0;
    for (; used_[l]; ++l) {
      const T* __restrict p = level_.data() + l * cols_;
      for (int64_t k = 0; k < cols_; ++k) s[k] = p[k] + s[k];
      used_[l] = false;
    }
    std::copy(s, s + cols_, level_.data() + l * cols_);
    used_[l] = true;
  }
  void sum(T* __restrict out) const {
    std::fill(out, out + cols_, T(0));
    for (size_t l = 0; l < used_.size(); ++l) {
      if (!used_[l]) continue;
      const T* __restrict p = level_.data() + l * cols_;
      for (int64_t k = 0; k < cols_; ++k) out[k] = p[k] + out[k];
    }
  }

 private:
  int64_t cols_;
  std::vector<T> level_;
  std::vector<bool> used_;
  std::vector<T> leaf_;
};

// [begin, end) of a thread's share of n items, in blocks of `align` (a cache line
// of floats) so that threads never write the same line.
struct Range {
  int64_t begin, end;
  int64_t size() const { return end - begin; }
};
Range split(int64_t n, int nt, int tid, int64_t align = 16) {
  const int64_t blocks = (n + align - 1) / align;
  const int64_t per = blocks / nt, rem = blocks % nt;
  const int64_t b0 = tid * per + std::min<int64_t>(tid, rem);
  const int64_t b1 = b0 + per + (tid < rem ? 1 : 0);
  return {std::min(n, b0 * align), std::min(n, b1 * align)};
}

// Below this many flops per time step, one thread does the whole step loop: the
// barrier and the split GEMMs would cost more than they save (and spinning at a
// barrier on a busy machine is the worst case).
constexpr int64_t kMinParallelStepFlops = 64 * 1024;

// The load monitor (layer.h, StepLoopLoad). A thread waits at a barrier only for the
// others' share of a step to finish. Alone on the machine that is the imbalance of an
// even split: a wait shorter than the thread's own work since the last barrier. With a
// thread descheduled the others wait out the rest of its time slice, longer than the
// step's work in any step loop that a slice matters to. So a thread counts as stalled
// the waits that are longer than its own work before them, and a loop whose most
// stalled thread spent more than kLoadedWaitFraction of the loop so is "loaded".
// A wait counts only beyond kMinStallNs: a time slice lost to another process is far
// longer (milliseconds), while at B1 the barrier's own latency is of the order of a
// thread's few microseconds of work a step and, counted, put lone loops near the limit.
// A short preemption (a kernel worker, an interrupt) still makes a lone loop loaded now
// and then (alone on the AVX-512 Xeon about 1 loop in 100 at B1/B4), while beside a busy
// process loaded loops come every call or every other (forward clean, backward loaded).
// So one loaded loop is enough, but the first back-off is short (kFirstBackoffNs): a
// passing preemption costs 50 ms of one-thread loops, lasting load doubles it to 8 s.
constexpr double kLoadedWaitFraction = 0.25;
constexpr int64_t kMinMonitoredLoopNs = 200 * 1000;  // shorter loops tell too little
constexpr int64_t kFirstBackoffNs = 50LL * 1000 * 1000;
constexpr int64_t kMaxBackoffNs = 8LL * 1000 * 1000 * 1000;

struct LoadMonitor {
  std::atomic<int64_t> single_until{0};  // steady-clock ns until which loops run on one thread
  std::atomic<int64_t> split_until{0};   // testing: until then loops split whatever the load
  std::mutex mu;                         // guards the fields below
  int64_t backoff = 0;
  StepLoopLoad counts;

  bool may_split(int64_t now) {
    if (now < split_until.load(std::memory_order_relaxed)) return true;
    if (now >= single_until.load(std::memory_order_relaxed)) return true;
    std::lock_guard<std::mutex> lock(mu);
    ++counts.single_loops;
    return false;
  }
  void report(double wait_fraction, int64_t loop_ns, int64_t now) {
    std::lock_guard<std::mutex> lock(mu);
    ++counts.split_loops;
    counts.last_wait_fraction = wait_fraction;
    if (loop_ns < kMinMonitoredLoopNs) return;
    if (wait_fraction > kLoadedWaitFraction) {
      ++counts.loaded_loops;
      backoff = backoff == 0 ? kFirstBackoffNs : std::min(2 * backoff, kMaxBackoffNs);
      single_until.store(now + backoff, std::memory_order_relaxed);
    } else {
      backoff = 0;
    }
  }
};

LoadMonitor& load_monitor() {
  static LoadMonitor monitor;
  return monitor;
}

// Runs fn(tid, nt, sync) on every thread of one parallel region (torch's intra-op
// thread count; one thread when called from inside another parallel region, when a
// step carries less than kMinParallelStepFlops, or, for a loop whose result does not
// depend on the split (`split_invariant`; reproducibility comes first), while the load
// monitor says the threads are not all running). sync.barrier() is the step barrier.
template <typename F>
void parallel_region(int64_t step_flops, bool split_invariant, const F& fn) {
#ifdef _OPENMP
  int nt = (at::in_parallel_region() || step_flops < kMinParallelStepFlops)
               ? 1
               : at::get_num_threads();
  LoadMonitor& monitor = load_monitor();
  if (nt > 1 && split_invariant && !monitor.may_split(now_ns())) nt = 1;
  if (nt > 1) {
    // One cache line per thread's stalled time.
    std::vector<int64_t> stalled(static_cast<size_t>(nt) * 8, 0);
    int ran = 1;
    const int64_t t0 = now_ns();
#pragma omp parallel num_threads(nt)
    {
      const SequentialBlasScope sequential_blas;
      const int tid = omp_get_thread_num();
      if (tid == 0) ran = omp_get_num_threads();
      StepSync sync(&stalled[static_cast<size_t>(tid) * 8]);
      fn(tid, omp_get_num_threads(), sync);
    }
    const int64_t t1 = now_ns();
    if (ran > 1) {
      int64_t worst = 0;
      for (int i = 0; i < ran; ++i) worst = std::max(worst, stalled[static_cast<size_t>(i) * 8]);
      monitor.report(static_cast<double>(worst) / static_cast<double>(std::max<int64_t>(1, t1 - t0)),
                     t1 - t0, t1);
    }
    return;
  }
#endif
  StepSync sync(nullptr);
  fn(0, 1, sync);
}

std::atomic<int64_t> g_backward_chunk_bytes{0};

// Rows per block of dX's products in layer_backward (where dX is formed over dG in its own
// storage, and the bfloat16 dX): rows of I elements of elem_bytes taking about 2 MiB, at
// least 64 rows, at most the N rows there are (at least one).
int64_t dx_block_rows(int64_t N, int64_t I, int64_t elem_bytes) {
  const int64_t rows = (int64_t(2) << 20) / (std::max<int64_t>(I, 1) * elem_bytes);
  return std::max<int64_t>(1, std::min(N, std::max<int64_t>(64, rows)));
}

// The whole-sequence products of the widened path (bf16_gemm.h): float32 GEMMs
// (sequence_gemm) on bfloat16 operands widened a block at a time, so that no float32 copy of
// a whole operand exists, not even of a weight. The float32 blocks share one workspace of
// about twice `budget` bytes (widened_budget: an eighth of the bfloat16 gate gradients'
// size, 256 KiB to 4 MiB; 512 KiB where the gate gradients take 2 MiB or less, so that a
// small call's products run in a few GEMMs each: training steps at T100 B4 H512 took 1.27x
// (RNN), 1.16x (LSTM) and 1.19x (GRU) their float32 time with 256 KiB, about 1.05x, 0.99x
// and 1.00x with 512 KiB; 1 MiB was up to 4% faster still, but put the bfloat16 training
// step of the RNN and GRU at that shape above torch.nn's in memory): a product's result a
// chunk of rows at a time (`budget`), each summed over blocks of the reduction whose two
// widened operands take half of it each. An operand may be widened
// more than once (B of a weight gradient once per chunk of its rows, W once per block of
// dX's rows); widening runs at several GB/s, a few per cent of the products' time at most.
int64_t widened_budget(int64_t N, int64_t GH) {
  const int64_t gates = N * GH * 2;
  if (gates <= int64_t(2) << 20) return int64_t(512) << 10;
  return std::clamp<int64_t>(gates / 8, int64_t(256) << 10, int64_t(4) << 20);
}

// The reduction of each widened GEMM call is at least this long where the product has it
// (many short calls cost the BLAS more per multiply-add; 256 raised the peak memory of an
// LSTM training step at T200 B16 H128 by 1.7 MiB, the BLAS's own buffers, 128 by 0.6).
constexpr int64_t kMinReduction = 128;

// Rows (at least `lo`, at most n, at least 1) whose float32 values of `cols` columns fill
// about `bytes`.
int64_t rows_within(int64_t bytes, int64_t cols, int64_t lo, int64_t n) {
  const int64_t rows = bytes / (4 * std::max<int64_t>(cols, 1));
  return std::max<int64_t>(1, std::min(n, std::max(lo, rows)));
}

// The float32 workspace of the widened products, grown on demand (one allocation per call
// in practice).
class WidenedScratch {
 public:
  float* get(int64_t floats) {
    if (!t_.defined() || t_.numel() < floats)
      t_ = at::empty({std::max<int64_t>(floats, 1)}, at::TensorOptions().dtype(at::kFloat));
    return t_.data_ptr<float>();
  }

 private:
  at::Tensor t_;
};

// bf16_widen_rows on the intra-op threads.
void widen_rows_parallel(int64_t rows, int64_t cols, const uint16_t* src, int64_t ld_src, float* dst,
                         int64_t ld_dst) {
  if (rows <= 0 || cols <= 0) return;
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / cols), [&](int64_t r0, int64_t r1) {
    bf16_widen_rows(r1 - r0, cols, src + r0 * ld_src, ld_src, dst + r0 * ld_dst, ld_dst);
  });
}

// A float32 result C [rows, cols] into its bfloat16 destination dst16 (rounded once, to
// nearest even), on the intra-op threads.
void round_rows_parallel(int64_t rows, int64_t cols, const float* C, int64_t ldc, uint16_t* dst16,
                         int64_t ld_dst) {
  if (rows <= 0 || cols <= 0) return;
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / cols), [&](int64_t r0, int64_t r1) {
    round_rows_bf16(r1 - r0, cols, C + r0 * ldc, ldc, dst16 + r0 * ld_dst, ld_dst);
  });
}

// A weight gradient C[M, K] = A^T B summed over N rows: A [N, M] bfloat16 (row stride lda),
// with S16 each element times S16's (bfloat16, row stride lds, the product in float32),
// B's rows given by fill_b(r0, rows, out) as float32 [rows, K]; C into dst16 (bfloat16,
// rounded once from float32) or dst (float32), whichever is given. C is made a chunk of its
// rows at a time, each summed over blocks of the N rows; the chunks and blocks follow from
// the shape alone, so the result does not depend on the thread count where sequence_gemm's
// does not.
void widened_weight_grad(int64_t N, int64_t M, int64_t K, const uint16_t* A16, int64_t lda,
                         const std::function<void(int64_t, int64_t, float*)>& fill_b,
                         uint16_t* dst16, float* dst, int64_t budget, WidenedScratch& scratch,
                         const uint16_t* S16 = nullptr, int64_t lds = 0) {
  if (M <= 0 || K <= 0 || (dst16 == nullptr && dst == nullptr)) return;
  const int64_t chunk = rows_within(budget, K, 16, M);
  const int64_t block = rows_within(budget / 2, std::max(chunk, K), kMinReduction, std::max<int64_t>(N, 1));
  float* const ws = scratch.get(chunk * K + block * (chunk + K));
  float* const c_own = ws;
  float* const a = ws + chunk * K;
  float* const b = a + block * chunk;
  for (int64_t m0 = 0; m0 < M; m0 += chunk) {
    const int64_t mc = std::min(chunk, M - m0);
    float* const C = dst16 != nullptr ? c_own : dst + m0 * K;
    if (N <= 0) std::fill(C, C + mc * K, 0.0f);
    for (int64_t r0 = 0; r0 < N; r0 += block) {
      const int64_t rows = std::min(block, N - r0);
      if (S16 == nullptr) {
        widen_rows_parallel(rows, mc, A16 + r0 * lda + m0, lda, a, mc);
      } else {
        at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / mc), [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) {
            const uint16_t* __restrict x = A16 + (r0 + i) * lda + m0;
            const uint16_t* __restrict sc = S16 + (r0 + i) * lds + m0;
            float* __restrict y = a + i * mc;
            for (int64_t k = 0; k < mc; ++k) y[k] = bf16_to_float(x[k]) * bf16_to_float(sc[k]);
          }
        });
      }
      fill_b(r0, rows, b);
      sequence_gemm<float>(true, mc, K, rows, a, mc, b, K, r0 > 0 ? 1.0f : 0.0f, C, K);
    }
    if (dst16 != nullptr) round_rows_parallel(mc, K, C, K, dst16 + m0 * K, K);
  }
}

// Gives back to the OS the whole pages of a buffer whose contents are dead, from its start
// up to a point that only advances (dead rows, in order): the pages then read as zeros
// and count no more to the process's memory until written again.
class PageDiscard {
 public:
  explicit PageDiscard(const void* start) : done_(round(start, true)) {}
  void advance(const void* end) {
#if defined(__linux__) && defined(MADV_DONTNEED)
    const uintptr_t e = round(end, false);
    if (e > done_) {
      madvise(reinterpret_cast<void*>(done_), e - done_, MADV_DONTNEED);
      done_ = e;
    }
#else
    (void)end;
#endif
  }

 private:
  static uintptr_t round(const void* p, bool up) {
    constexpr uintptr_t kPage = 4096;
    const uintptr_t v = reinterpret_cast<uintptr_t>(p);
    return up ? (v + kPage - 1) & ~(kPage - 1) : v & ~(kPage - 1);
  }
  uintptr_t done_;
};

// dX = dG W: dG [N, GH] bfloat16 (row stride GH), W [GH, I] bfloat16, dX [N, I] bfloat16.
// A block of dX's rows at a time, summed over blocks of k (dG's columns, W's rows, each
// widened for the block), then rounded into its rows. dx16 may be dG's own storage (GH ==
// I): a block's rows are written only after every k block of them has been read. With
// discard_dg (dG a buffer of the caller's that nothing reads afterwards), the pages of
// each block's rows of dG are given back once read, so that dX's pages, touched here for
// the first time, take their place rather than adding to the step's peak.
void widened_input_grad(int64_t N, int64_t GH, int64_t I, const uint16_t* dg16, const uint16_t* w16,
                        uint16_t* dx16, int64_t budget, WidenedScratch& scratch, bool discard_dg) {
  if (N <= 0 || I <= 0) return;
  const int64_t block = rows_within(budget, I, 16, N);
  const int64_t kb = rows_within(budget / 2, std::max(block, I), kMinReduction, std::max<int64_t>(GH, 1));
  float* const ws = scratch.get(block * I + kb * (block + I));
  float* const t = ws;
  float* const a = t + block * I;
  float* const wb = a + block * kb;
  PageDiscard discarded(dg16);
  for (int64_t r0 = 0; r0 < N; r0 += block) {
    const int64_t rows = std::min(block, N - r0);
    if (GH <= 0) std::fill(t, t + rows * I, 0.0f);
    for (int64_t k0 = 0; k0 < GH; k0 += kb) {
      const int64_t kc = std::min(kb, GH - k0);
      widen_rows_parallel(rows, kc, dg16 + r0 * GH + k0, GH, a, kc);
      widen_rows_parallel(kc, I, w16 + k0 * I, I, wb, I);
      sequence_gemm<float>(false, rows, I, kc, a, kc, wb, I, k0 > 0 ? 1.0f : 0.0f, t, I);
    }
    round_rows_parallel(rows, I, t, I, dx16 + r0 * I, I);
    if (discard_dg) discarded.advance(dg16 + (r0 + rows) * GH);
  }
}

}  // namespace

void set_backward_chunk_bytes(int64_t bytes) { g_backward_chunk_bytes.store(bytes); }

int64_t backward_chunk_steps(int64_t T, int64_t B, int64_t row_bytes, int64_t step_flops) {
  const int64_t set = g_backward_chunk_bytes.load();
  const int64_t cap = set > 0 ? set : kBackwardChunkBytes;
  const int64_t step_bytes = std::max<int64_t>(1, B * row_bytes);
  // A loop that runs on one thread by its shape keeps the products after it, on every thread.
  if (set < 0 || T <= 1 || B <= 0 || step_flops < kMinParallelStepFlops) return 0;
  const int64_t max_steps = std::max<int64_t>(
      1, std::min((kBackwardChunkRows + B - 1) / B, cap / step_bytes));
  if (T <= max_steps) return 0;
  const int64_t chunks = (T + max_steps - 1) / max_steps;
  return (T + chunks - 1) / chunks;
}

template <typename T>
void layer_forward(const core::LayerForward<T>& a, const ForwardScratch<T>& w) {
  const Sequence& s = *a.seq;
  const int64_t H = a.H, P = a.P, B = s.B, I = a.I;
  const int64_t G = core::cell_spec(a.kind).gates, ld = core::saved_row_cols(a.kind, H);
  // The RNN saves nothing but its output: its pointwise pass writes h_t as the saved row.
  const bool rnn = core::cell_spec(a.kind).num_saved == 0;
  T* const gbuf = rnn ? a.y : a.saved[0];
  T* const y = rnn ? nullptr : a.y;
  T* const cells = a.kind == CellKind::kLstm ? a.saved[1] : nullptr;
  const bool proj = a.w_hr != nullptr;
  const bool gru = a.kind == CellKind::kGru;
  const int64_t Tc = std::max<int64_t>(1, w.chunk_steps);
  copy_rows(w.hbuf, P, a.h, P, B, P);
  copy_rows(w.hbuf + B * P, P, a.h, P, B, P);

  const FwdKernel<T> kernel = fwd_kernel<T>(a.kind);
  const int64_t step_flops = 2 * B * G * H * (P + I) + (proj ? 2 * B * H * P : 0);
  // The projection's GEMM goes through the BLAS, whose sums may depend on the split.
  const bool split_invariant =
      std::is_same_v<T, float> && !proj && step_gemm_split_invariant_f32();
  parallel_region(step_flops, split_invariant, [&](int tid, int nt, StepSync& sync) {
    const Range u = split(H, nt, tid);
    const Range p = proj ? split(P, nt, tid) : u;
    // This thread's gate rows of W_hh and W_ih (rows g * H + u of every gate g), each
    // packed once as one operand (it then stays in this core's cache), its
    // recurrent-product scratch [B, G * |u|] and its input-projection scratch
    // [Tc * B, G * |u|]: gate g of unit k in column g * |u| + k - u.begin of both.
    const int64_t GHs = G * u.size();
    T* rec = gru ? w.rec + B * G * u.begin : nullptr;
    T* xp = w.xbuf + Tc * B * G * u.begin;
    // bfloat16: h_{t-1} as one bfloat16 term for the LSTM and GRU (their gates squash the
    // rounding, whose error stays below torch.nn-bf16's), as two for the Elman RNN (whose
    // state feeds back unsquashed by a gate: one term compounds beyond that).
    const int h_terms = !w.bf16 ? 0 : a.kind == CellKind::kRnnTanh || a.kind == CellKind::kRnnRelu ? 2 : 1;
    // (On the bfloat16 data path the weights are packed from the layer's bfloat16 values:
    // into the kernels' tiles, or widened into float32 panels, h_terms 0.)
    const bool w16 = std::is_same_v<T, float> && w.w_hh16 != nullptr && GHs > 0 && B > 0;
    const T* const w_hh = a.w_hh != nullptr ? a.w_hh + u.begin * P : nullptr;
    const T* const w_ih = a.w_ih != nullptr ? a.w_ih + u.begin * I : nullptr;
    // (A short call at a small batch reads the weights in place: PackedWeight's `uses`.)
    const int64_t chunk_rows = std::min(Tc, s.T) * B, chunks = (s.T + Tc - 1) / Tc;
    const PackedWeight<T> packed =
        w16 ? PackedWeight<T>(GHs, P, B, w.w_hh16 + u.begin * P, P, G, H, h_terms)
            : PackedWeight<T>(true, GHs, P, B, w_hh, P, G, H, h_terms, s.T, /*reuse_buffers=*/true);
    const PackedWeight<T> packed_ih =
        w16 && w.w_ih16 != nullptr
            ? PackedWeight<T>(GHs, I, chunk_rows, w.w_ih16 + u.begin * I, I, G, H, w.bf16 ? 1 : 0)
            : PackedWeight<T>(true, GHs, I, chunk_rows, w_ih, I, G, H, w.bf16 ? 1 : 0, chunks,
                              /*reuse_buffers=*/true);
    // bfloat16 input: the input projection reads x16 and starts from this thread's bias
    // columns (gate by gate, as its scratch), with no float32 copy of x.
    bool read_x16 = false;
    if constexpr (std::is_same_v<T, float>) read_x16 = w.x16 != nullptr && packed_ih.takes_bf16_rows();
    // This thread's bias columns, gate by gate as its scratch: the start of each row.
    std::vector<T> bias_u;
    if (w.bias_x != nullptr) {
      bias_u.resize(static_cast<size_t>(GHs));
      for (int64_t gate = 0; gate < G; ++gate)
        std::memcpy(bias_u.data() + gate * u.size(), w.bias_x + gate * H + u.begin,
                    sizeof(T) * u.size());
    }
    int cur = 0;
    int64_t chunk_lo = 0;  // first row of the current input-projection chunk
    for (int64_t step = 0; step < s.T; ++step) {
      if (step % Tc == 0 && GHs > 0) {
        // Input projection of the next Tc steps for this thread's units; their rows
        // are contiguous in either direction.
        const int64_t last = std::min(s.T, step + Tc) - 1;
        const int64_t t_a = s.time_at(step, a.reverse), t_b = s.time_at(last, a.reverse);
        const int64_t t_lo = std::min(t_a, t_b), t_hi = std::max(t_a, t_b);
        chunk_lo = s.off[t_lo];
        const int64_t rows = s.off[t_hi] + s.bs[t_hi] - chunk_lo;
        if constexpr (std::is_same_v<T, float>) {
          if (read_x16) {
            packed_ih.gemm_bf16(rows, w.x16 + chunk_lo * I, I, bias_u.empty() ? nullptr : bias_u.data(),
                                xp, GHs);
          }
        }
        if (!read_x16 && w.bias_x != nullptr) {
          for (int64_t r = 0; r < rows; ++r) std::copy(bias_u.begin(), bias_u.end(), xp + r * GHs);
        }
        const T beta = w.bias_x != nullptr ? T(1) : T(0);
        if (!read_x16) packed_ih.gemm(rows, a.x + chunk_lo * I, I, beta, xp, GHs);
      }
      const int64_t t = s.time_at(step, a.reverse);
      const int64_t b = s.bs[t];
      if (b == 0) continue;
      const int64_t row = s.off[t];
      const T* hin = w.hbuf + cur * B * P;
      T* hout = w.hbuf + (1 - cur) * B * P;
      // Recurrent product for this thread's units of every gate: added into the input
      // side (LSTM, RNN: the sum is all the pointwise pass needs), or apart for the GRU
      // (whose n gate scales it by r, with b_hh).
      T* const xin = xp + (row - chunk_lo) * GHs;
      if (gru) {
        packed.gemm(b, hin, P, T(0), rec, GHs);
      } else {
        packed.gemm(b, hin, P, T(1), xin, GHs);
      }
      const FwdStep<T> st{xin,
                          GHs,
                          gru ? rec : nullptr,
                          GHs,
                          w.bias_h,
                          // (an RNN writing bfloat16 output keeps h_t in hout only;
                          // bfloat16 saved rows are written as float32 to the step's rows)
                          rnn && w.y16 != nullptr ? hout
                          : w.ws16 != nullptr     ? w.wsstep
                          : gbuf != nullptr       ? gbuf + row * ld
                                                  : nullptr,
                          hin,
                          proj ? w.r : hout,
                          a.c,
                          (proj || y == nullptr) ? nullptr : y + row * H,
                          cells != nullptr ? cells + row * H : nullptr,
                          H,
                          ld,
                          u.begin,
                          u.end};
      kernel(st, 0, b);
      if (proj) {
        sync.barrier();  // every unit of r_t is written
        gemm<T>(false, true, b, p.size(), H, T(1), w.r, H, a.w_hr + p.begin * H, H, T(0),
                hout + p.begin, P);
        if (w.y16 == nullptr) copy_rows(a.y + row * P + p.begin, P, hout + p.begin, P, b, p.size());
      }
      if constexpr (std::is_same_v<T, float>) {
        // bfloat16 output: this thread's columns of y_t = h_t, rounded once.
        if (w.y16 != nullptr && p.size() > 0)
          round_rows_bf16(b, p.size(), hout + p.begin, P, w.y16 + row * P + p.begin, P);
        // bfloat16 saved rows: this thread's columns of every saved gate, rounded once.
        if (w.ws16 != nullptr && u.size() > 0) {
          for (int64_t g = 0; g < ld / H; ++g)
            round_rows_bf16(b, u.size(), w.wsstep + g * H + u.begin, ld,
                            w.ws16 + row * ld + g * H + u.begin, ld);
        }
      }
      // Rows whose sequence ends here: their final state is h_t.
      const int64_t n_next = step + 1 < s.T ? s.bs[s.time_at(step + 1, a.reverse)] : 0;
      if (n_next < b) {
        copy_rows(a.h + n_next * P + p.begin, P, hout + n_next * P + p.begin, P, b - n_next,
                  p.size());
      }
      sync.barrier();  // h_t complete before anyone reads it as h_{t-1}
      cur = 1 - cur;
    }
  });
}

template <typename T>
void layer_backward(const core::LayerBackward<T>& a, const BackwardScratch<T>& w) {
  release_panel_buffers();  // not held through a training step's peak
  const Sequence& s = *a.seq;
  const int64_t H = a.H, P = a.P, GH = core::cell_spec(a.kind).gates * a.H;
  const int64_t ld = core::saved_row_cols(a.kind, H);
  // What forward saved per row (the RNN's is h_t, its output) and the LSTM's c_t.
  const T* const ws = core::cell_spec(a.kind).num_saved == 0 ? a.y : a.saved[0];
  const T* const cells = a.kind == CellKind::kLstm ? a.saved[1] : nullptr;
  const bool gru = a.kind == CellKind::kGru;
  const bool lstm = a.kind == CellKind::kLstm;
  const bool proj = a.w_hr != nullptr;
  // GRU: the recurrent side's gradient differs from the input side's only in the n
  // gate (dGh_n = dGx_n * r; the r and z columns are equal), so only that part is kept,
  // [N, H] in w.dgh; the r and z columns are read from dgx.
  const int64_t H_rz = gru ? 2 * H : 0;  // leading columns of dGh that are dgx's

  const BwdKernel<T> kernel = bwd_kernel<T>(a.kind);
  const int64_t step_flops = 2 * s.B * GH * P + (proj ? 2 * s.B * H * P : 0);
  const bool split_invariant =
      std::is_same_v<T, float> && !proj && step_gemm_split_invariant_f32();
  if (!s.uniform()) {
    // Packed with shrinking batches: gather h_{t-1} of every row (dW_hh's operand).
    for (int64_t t = 0; t < s.T; ++t) {
      const int64_t b = s.bs[t];
      const int64_t tp = s.prev_of(t, a.reverse);
      const int64_t n_prev = s.rows_with_prev(t, a.reverse);
      if (n_prev > 0) copy_rows(w.hprev + s.off[t] * P, P, a.y + s.off[tp] * P, P, n_prev, P);
      copy_rows(w.hprev + (s.off[t] + n_prev) * P, P, a.hx + n_prev * P, P, b - n_prev, P);
    }
  }
  // The chunked backward (backward_chunk_steps): chunk c is the steps [c * Tcb, (c + 1) * Tcb)
  // in processing order, whose rows are contiguous in either direction; dgx (dgh) holds the
  // current chunk's rows, from its first row on.
  const int64_t Tcb = w.chunk_steps;
  const bool chunked = Tcb > 0;
  TORCH_INTERNAL_ASSERT(!chunked || (!w.bf16 && !w.widened && w.dgx16 == nullptr && !w.dx_in_dgx));
  const auto chunk_span = [&](int64_t c) -> std::pair<int64_t, int64_t> {
    const int64_t first = c * Tcb, last = std::min(s.T, first + Tcb) - 1;
    const int64_t ta = s.time_at(first, a.reverse), tb = s.time_at(last, a.reverse);
    const int64_t lo = std::min(ta, tb), hi = std::max(ta, tb);
    return {s.off[lo], s.off[hi] + s.bs[hi]};
  };
  // dW_hh's rows: dw [m, P] = beta dw + dGh^T H_prev over the rows [r0, r1), for m columns of
  // dGh (dg: row r0's first such column, row stride ldg). With all B rows in every step,
  // h_{t-1} is hx for the rows of the first step in processing order, else the output one step
  // over: a GEMM per run of rows on the buffers themselves, no N x P copy. Packed input with
  // shrinking batches reads the gathered rows.
  const auto dw_hh_product = [&](const T* dg, int64_t ldg, int64_t m, int64_t r0, int64_t r1, T beta,
                                 T* dw) {
    if (r1 <= r0) {
      if (beta == T(0)) std::fill(dw, dw + m * P, T(0));
      return;
    }
    if (!s.uniform()) {
      sequence_gemm<T>(true, m, P, r1 - r0, dg, ldg, w.hprev + r0 * P, P, beta, dw, P);
      return;
    }
    const int64_t hx0 = a.reverse ? s.N - s.B : 0, hx1 = hx0 + s.B;
    for (int64_t i = r0; i < r1;) {
      const bool from_hx = i >= hx0 && i < hx1;
      const int64_t end = from_hx ? std::min(r1, hx1) : i < hx0 ? std::min(r1, hx0) : r1;
      const T* h = from_hx ? a.hx + (i - hx0) * P : a.y + (a.reverse ? i + s.B : i - s.B) * P;
      sequence_gemm<T>(true, m, P, end - i, dg + (i - r0) * ldg, ldg, h, P, beta, dw, P);
      beta = T(1);
      i = end;
    }
  };
  // The chunk's products, each in as many blocks as torch has threads (dW_ih, dW_hh: blocks
  // of their rows; dX: of its columns), each block one call of the sequence GEMM
  // (single-threaded in the loop) by one thread: the same calls, so the same bits, whatever
  // number of threads the loop runs on.
  const int64_t dw_blocks = std::max(1, at::get_num_threads());
  parallel_region(step_flops, split_invariant, [&](int tid, int nt, StepSync& sync) {
    const Range u = split(H, nt, tid);
    const Range p = proj ? split(P, nt, tid) : u;
    // This thread's columns of W_hh [G*H, |p|], packed once from the weight itself
    // (GRU: the r,z rows and the n rows apart, for the two parts of dGh).
    // bfloat16: dG_t as one bfloat16 term for the LSTM and GRU, two for the RNN (as forward).
    const int dg_terms = !w.bf16 ? 0 : a.kind == CellKind::kRnnTanh || a.kind == CellKind::kRnnRelu ? 2 : 1;
    // (bfloat16 weights on the tiles are packed from the layer's bfloat16 values.)
    const int64_t K_dh = gru ? H_rz : GH;
    const bool w16 = std::is_same_v<T, float> && w.w_hh16 != nullptr && p.size() > 0 && s.B > 0;
    const PackedWeight<T> packed =
        w16 ? PackedWeight<T>(p.size(), K_dh, s.B, w.w_hh16 + p.begin, P, 1, 0, dg_terms, false)
            : PackedWeight<T>(false, p.size(), K_dh, s.B, a.w_hh != nullptr ? a.w_hh + p.begin : nullptr,
                              P, 1, 0, dg_terms);
    std::optional<PackedWeight<T>> packed_n;
    if (gru && w16) {
      packed_n.emplace(p.size(), H, s.B, w.w_hh16 + H_rz * P + p.begin, P, 1, 0, dg_terms, false);
    } else if (gru) {
      packed_n.emplace(false, p.size(), H, s.B, a.w_hh != nullptr ? a.w_hh + H_rz * P + p.begin : nullptr,
                       P, 1, 0, dg_terms);
    }
    // Chunked: the chunk's products, a list of blocks (dW_ih's, dW_hh's, the GRU's n part of
    // dW_hh, dX's), block k taken by thread k mod nt; a loop on one thread (under load)
    // runs them on torch's threads, the same calls. dW starts from the first chunk with rows
    // (beta 0), then adds.
    bool dw_begun = false;
    const int64_t nb = dw_blocks;
    const int64_t n_blocks = nb * (2 + (gru ? 1 : 0) + (a.dx != nullptr ? 1 : 0));
    const auto chunk_products = [&](int64_t c) {
      const auto [r0, r1] = chunk_span(c);
      const int64_t nr = r1 - r0;
      if (nr <= 0) return;
      const T beta = dw_begun ? T(1) : T(0);
      dw_begun = true;
      const auto block = [&](int64_t k) {
        const int64_t kind = k / nb, j = k % nb;
        const auto part = [&](int64_t n) { return split(n, static_cast<int>(nb), static_cast<int>(j)); };
        if (kind == 0) {
          const Range q = part(GH);
          if (q.size() > 0)
            sequence_gemm<T>(true, q.size(), a.I, nr, w.dgx + q.begin, GH, a.x + r0 * a.I, a.I, beta,
                             a.dw_ih + q.begin * a.I, a.I);
        } else if (kind == 1) {
          const Range q = part(K_dh);
          if (q.size() > 0) dw_hh_product(w.dgx + q.begin, GH, q.size(), r0, r1, beta, a.dw_hh + q.begin * P);
        } else if (gru && kind == 2) {
          const Range q = part(H);
          if (q.size() > 0)
            dw_hh_product(w.dgh + q.begin, H, q.size(), r0, r1, beta, a.dw_hh + (H_rz + q.begin) * P);
        } else {
          const Range q = part(a.I);
          if (q.size() > 0)
            sequence_gemm<T>(false, nr, q.size(), GH, w.dgx, GH, a.w_ih + q.begin, a.I, T(0),
                             a.dx + r0 * a.I + q.begin, a.I);
        }
      };
      if (nt > 1) {
        for (int64_t k = tid; k < n_blocks; k += nt) block(k);
      } else {
        at::parallel_for(0, n_blocks, 1, [&](int64_t k0, int64_t k1) {
          for (int64_t k = k0; k < k1; ++k) block(k);
        });
      }
    };
    // bfloat16 on the tiles (w.dgx16): dG rows of two steps in turn. The bias gradients of
    // this thread's columns (gate by gate, then the GRU's n part of dGh) are summed here,
    // while the step's rows are in cache: a step's rows in order, steps combined by
    // BlockCascade (the pairwise tree over steps), an order that depends on nothing but
    // the batch sizes.
    const bool step_rows = w.dgx16 != nullptr;
    const int64_t G = GH / std::max<int64_t>(H, 1), nu = u.size();
    const bool sum_bias = a.db_ih != nullptr;
    std::optional<BlockCascade<T>> bias_cascade;
    if (sum_bias) bias_cascade.emplace((G + (gru ? 1 : 0)) * nu, s.T);
    for (int64_t step = s.T - 1; step >= 0; --step) {
      if (chunked && step + 1 < s.T && (step + 1) % Tcb == 0) {
        // Every row of the chunk just finished is written (the last step's barrier).
        chunk_products((step + 1) / Tcb);
        sync.barrier();  // and read: the next chunk's rows may take its place
      }
      const int64_t t = s.time_at(step, a.reverse);
      const int64_t b = s.bs[t];
      if (b == 0) continue;
      const int64_t row = s.off[t];
      // (the row's place in dgx and dgh: its own, or within the current chunk)
      const int64_t drow = chunked ? row - chunk_span(step / Tcb).first : row;
      T* const dgx_t = step_rows ? w.dgx + (step % 2) * s.B * GH : w.dgx + drow * GH;
      T* const dgh_t = !gru ? nullptr : step_rows ? w.dgh + (step % 2) * s.B * H : w.dgh + drow * H;
      // dL/dh_t gains the output's gradient (this thread's columns).
      if (a.dy != nullptr) {
        for (int64_t j = 0; j < b; ++j) {
          T* __restrict d = a.dh + j * P;
          const T* __restrict v = a.dy + (row + j) * a.dy_ld;
          if (a.dy_cs == 1) {
            for (int64_t k = p.begin; k < p.end; ++k) d[k] += v[k];
          } else {
            for (int64_t k = p.begin; k < p.end; ++k) d[k] += v[k * a.dy_cs];
          }
        }
      } else if (w.dy16 != nullptr) {
        for (int64_t j = 0; j < b; ++j) {
          T* __restrict d = a.dh + j * P;
          const uint16_t* __restrict v = w.dy16 + (row + j) * w.dy16_ld;
          for (int64_t k = p.begin; k < p.end; ++k) d[k] += static_cast<T>(bf16_to_float(v[k * w.dy16_cs]));
        }
      }
      if (proj) {
        copy_rows(w.DH + row * P + p.begin, P, a.dh + p.begin, P, b, p.size());
        sync.barrier();  // all of dh_t is in place
        gemm<T>(false, false, b, u.size(), P, T(1), a.dh, P, a.w_hr + u.begin, H, T(0),
                w.dr + u.begin, H);
      }
      const int64_t tp = s.prev_of(t, a.reverse);
      const int64_t n_prev = s.rows_with_prev(t, a.reverse);
      const T* prev = nullptr;
      const T* init = nullptr;
      if (lstm) {
        prev = tp >= 0 ? cells + s.off[tp] * H : a.cx;
        init = a.cx;
      } else if (gru) {
        prev = tp >= 0 ? a.y + s.off[tp] * H : a.hx;
        init = a.hx;
      }
      const T* ws_t = ws != nullptr ? ws + row * ld : nullptr;
      if constexpr (std::is_same_v<T, float>) {
        // bfloat16 saved rows: this thread's columns of every saved gate, widened.
        if (w.ws16 != nullptr) {
          for (int64_t g = 0; g < ld / H; ++g)
            bf16_widen_rows(b, nu, w.ws16 + row * ld + g * H + u.begin, ld, w.wsstep + g * H + u.begin,
                            ld);
          ws_t = w.wsstep;
        }
        // The outputs as bfloat16 only (w.ystep): this thread's units of the rows it reads.
        if (w.ystep != nullptr && a.y == nullptr) {
          if (gru && tp >= 0) {
            bf16_widen_rows(n_prev, nu, w.y16 + s.off[tp] * H + u.begin, H, w.ystep + u.begin, H);
            prev = w.ystep;
          } else if (!gru && !lstm) {
            bf16_widen_rows(b, nu, w.y16 + row * H + u.begin, H, w.ystep + u.begin, H);
            ws_t = w.ystep;
          }
        }
      }
      const BwdStep<T> st{ws_t,
                          lstm ? cells + row * H : nullptr,
                          prev,
                          init,
                          n_prev,
                          proj ? w.dr : a.dh,
                          a.dc,
                          dgx_t,
                          dgh_t,
                          proj ? w.R + row * H : nullptr,
                          H,
                          ld,
                          u.begin,
                          u.end};
      kernel(st, 0, b);
      if constexpr (std::is_same_v<T, float>) {
        // bfloat16 gate gradients for the whole-sequence products: this thread's units.
        if (step_rows && nu > 0) {
          for (int64_t g = 0; g < G; ++g)
            round_rows_bf16(b, nu, dgx_t + g * H + u.begin, GH, w.dgx16 + row * GH + g * H + u.begin,
                            GH);
        }
      }
      if (sum_bias && nu > 0) {
        T* const leaf = bias_cascade->leaf();
        for (int64_t g = 0; g < G; ++g) {
          T* __restrict l = leaf + g * nu;
          for (int64_t j = 0; j < b; ++j) {
            const T* __restrict v = dgx_t + j * GH + g * H + u.begin;
            for (int64_t k = 0; k < nu; ++k) l[k] += v[k];
          }
        }
        if (gru) {
          T* __restrict l = leaf + G * nu;
          for (int64_t j = 0; j < b; ++j) {
            const T* __restrict v = dgh_t + j * H + u.begin;
            for (int64_t k = 0; k < nu; ++k) l[k] += v[k];
          }
        }
        bias_cascade->push();
      }
      sync.barrier();  // every unit of dG_t is written
      // dL/dh_{t-1} = dGh_t W_hh (+ the GRU's direct path, left in dh by the kernel),
      // for this thread's columns.
      packed.gemm(b, dgx_t, GH, gru ? T(1) : T(0), a.dh + p.begin, P);
      if (gru) packed_n->gemm(b, dgh_t, H, T(1), a.dh + p.begin, P);
    }
    if (chunked) chunk_products(0);
    if (sum_bias && nu > 0) {
      // This thread's columns of the bias gradients (db_hh: db_ih's, or the GRU's n part of
      // dGh after its r and z parts, which are db_ih's).
      std::vector<T> sums(static_cast<size_t>((G + (gru ? 1 : 0)) * nu));
      bias_cascade->sum(sums.data());
      for (int64_t g = 0; g < G; ++g) {
        std::copy(sums.data() + g * nu, sums.data() + (g + 1) * nu, a.db_ih + g * H + u.begin);
        if (a.db_hh != nullptr && (!gru || g < 2))
          std::copy(sums.data() + g * nu, sums.data() + (g + 1) * nu, a.db_hh + g * H + u.begin);
      }
      if (gru && a.db_hh != nullptr)
        std::copy(sums.data() + G * nu, sums.data() + (G + 1) * nu, a.db_hh + 2 * H + u.begin);
    }
  });

  if (chunked) {
    if (proj) sequence_gemm<T>(true, P, H, s.N, w.DH, P, w.R, H, T(0), a.dw_hr, H);
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    if (w.widened) {
      // The widened path: float32 products on bfloat16 operands widened a block of rows at a
      // time (dgx16 holds the gate gradients of every row, rounded once).
      TORCH_INTERNAL_ASSERT(w.dgx16 != nullptr || s.N == 0);
      const int64_t B = s.B, shifted = s.N - B;
      // h_{t-1} of rows [r0, r0 + rows) in float32: the initial state, the output one step
      // over (all B rows in every step), or the gathered rows (packed input).
      const auto fill_hprev = [&](int64_t r0, int64_t rows, float* out) {
        if (!s.uniform()) {
          copy_rows(out, P, w.hprev + r0 * P, P, rows, P);
          return;
        }
        for (int64_t i = r0; i < r0 + rows;) {
          // A run of rows from one source: hx (first step in processing order), else y.
          const bool from_hx = a.reverse ? i >= shifted : i < B;
          const int64_t run_end = from_hx ? (a.reverse ? s.N : B) : (a.reverse ? shifted : s.N);
          const int64_t end = std::min(r0 + rows, run_end);
          const int64_t src = from_hx ? (a.reverse ? i - shifted : i) : (a.reverse ? i + B : i - B);
          float* const o = out + (i - r0) * P;
          if (from_hx) {
            if (w.hx16 != nullptr) {
              widen_rows_parallel(end - i, P, w.hx16 + src * P, P, o, P);
            } else {
              copy_rows(o, P, a.hx + src * P, P, end - i, P);
            }
          } else if (w.y16 != nullptr) {
            widen_rows_parallel(end - i, P, w.y16 + src * P, P, o, P);
          } else {
            copy_rows(o, P, a.y + src * P, P, end - i, P);
          }
          i = end;
        }
      };
      const auto fill_x = [&](int64_t r0, int64_t rows, float* out) {
        widen_rows_parallel(rows, a.I, w.x16 + r0 * a.I, a.I, out, a.I);
      };
      TORCH_INTERNAL_ASSERT(!gru || s.N == 0 || w.ws16 != nullptr);
      const int64_t budget = widened_budget(s.N, GH);
      WidenedScratch scratch;
      widened_weight_grad(s.N, gru ? H_rz : GH, P, w.dgx16, GH, fill_hprev, w.dw_hh16, a.dw_hh,
                          budget, scratch);
      if (gru) {
        // The n part of dGh, dGx_n * r (r: the saved row's first H columns), formed as its
        // blocks are widened.
        widened_weight_grad(s.N, H, P, w.dgx16 != nullptr ? w.dgx16 + H_rz : nullptr, GH, fill_hprev,
                            w.dw_hh16 != nullptr ? w.dw_hh16 + H_rz * P : nullptr,
                            a.dw_hh != nullptr ? a.dw_hh + H_rz * P : nullptr, budget, scratch,
                            w.ws16, ld);
      }
      widened_weight_grad(s.N, GH, a.I, w.dgx16, GH, fill_x, w.dw_ih16, a.dw_ih, budget, scratch);
      // dX last: the gate gradients' pages are given back as it reads them (not where they
      // are dX's own storage).
      if (w.dx16 != nullptr) {
        TORCH_INTERNAL_ASSERT(!w.dx_in_dgx || w.dx16 == w.dgx16);
        widened_input_grad(s.N, GH, a.I, w.dgx16, w.w_ih16, w.dx16, budget, scratch, !w.dx_in_dgx);
      }
      if (proj) sequence_gemm<T>(true, P, H, s.N, w.DH, P, w.R, H, T(0), a.dw_hr, H);
      return;
    }
    if (w.bf16 && bf16_kernels_usable()) {
      // bfloat16 layer: the products on bfloat16 copies (the gate gradients rounded once;
      // x, the outputs, the initial state and W_ih are bfloat16 values already).
      // The layer's bfloat16 arguments as given (rows x cols), or a copy of the float32 ones.
      const auto given = [](const uint16_t* p16, const float* p, int64_t rows, int64_t cols) {
        if (p16 == nullptr || rows <= 0 || cols <= 0) return bf16_copy(p, rows, cols, cols);
        return at::from_blob(const_cast<uint16_t*>(p16), {rows, cols},
                             at::TensorOptions().dtype(at::kBFloat16));
      };
      const at::Tensor dgx16 = given(w.dgx16, w.dgx, s.N, GH);  // (dgx: all N rows if no dgx16)
      // C = A16 B16 into the bfloat16 gradient dst16 (rounded once by the GEMM), else into
      // the float32 one.
      const auto product = [](const at::Tensor& A16, const at::Tensor& B16, uint16_t* dst16,
                              float* dst, int64_t ldc) {
        if (dst16 == nullptr) {
          sequence_gemm_bf16(A16, B16, 0.0f, dst, ldc);
          return;
        }
        at::Tensor out = at::from_blob(dst16, {A16.size(0), B16.size(1)},
                                       at::TensorOptions().dtype(at::kBFloat16));
        if (out.numel() == 0) return;
        if (A16.size(1) == 0) {
          out.zero_();
        } else {
          at::mm_out(out, A16, B16);
        }
      };
      // dW_hh = dGh^T H_prev, for the rows of dW_hh from the columns dg16 [N, rows] of dGh.
      // With all B rows in every step, h_{t-1} is hx for the first step's rows, else the output
      // one step over, a contiguous block of the outputs. Where a [N, P] bf16 copy of H_prev
      // would be 2 MiB or more, the product runs on that block, then adds the hx rows' product
      // (C in float32 inside the GEMM, rounded once more) with no copy. (A second GEMM shape
      // costs oneDNN a primitive of its own, about 1 MiB of code and scratch on first use,
      // measured: below 2 MiB the copy costs less.)
      constexpr int64_t kCopyBytesMin = int64_t(2) << 20;
      const int64_t B = s.B, shifted = s.N - B;
      const bool no_copy = s.uniform() && w.dw_hh16 != nullptr && shifted > 0 &&
                           s.N * P * 2 >= kCopyBytesMin;
      at::Tensor hx16, y16, hprev16;
      if (s.uniform()) {
        const int64_t y0 = (a.reverse ? B : 0) * P;
        hx16 = given(w.hx16, a.hx, B, P);
        y16 = given(w.y16 != nullptr ? w.y16 + y0 : nullptr, a.y != nullptr ? a.y + y0 : nullptr,
                    shifted, P);
        if (!no_copy) hprev16 = a.reverse ? at::cat({y16, hx16}) : at::cat({hx16, y16});
      } else {
        hprev16 = bf16_copy(w.hprev, s.N, P, P);
      }
      const auto dw_hh_rows = [&](const at::Tensor& dg16, uint16_t* dst16, float* dst) {
        if (!no_copy) return product(dg16.t(), hprev16, dst16, dst, P);
        at::Tensor out = at::from_blob(dst16, {dg16.size(1), P}, at::TensorOptions().dtype(at::kBFloat16));
        if (out.numel() == 0) return;
        at::mm_out(out, dg16.narrow(0, a.reverse ? 0 : B, shifted).t(), y16);
        out.addmm_(dg16.narrow(0, a.reverse ? shifted : 0, B).t(), hx16);
      };
      // The GRU with dgx16 (its saved rows are then bfloat16: ws16): the n part of dGh,
      // dGx_n * r, is formed in dgx16's own n columns once dW_ih and dx have read them (no
      // [N, H] buffer of its own); else it is the float32 w.dgh of every row.
      const bool n_in_place = gru && w.dgx16 != nullptr;
      TORCH_INTERNAL_ASSERT(!n_in_place || w.ws16 != nullptr);
      uint16_t* const dw_hh16_n = w.dw_hh16 != nullptr ? w.dw_hh16 + H_rz * P : nullptr;
      float* const dw_hh_n = a.dw_hh != nullptr ? a.dw_hh + H_rz * P : nullptr;
      if (gru) {
        dw_hh_rows(dgx16.narrow(1, 0, H_rz), w.dw_hh16, a.dw_hh);
        if (!n_in_place) dw_hh_rows(given(nullptr, w.dgh, s.N, H), dw_hh16_n, dw_hh_n);
      } else {
        dw_hh_rows(dgx16, w.dw_hh16, a.dw_hh);
      }
      product(dgx16.t(), given(w.x16, a.x, s.N, a.I), w.dw_ih16, a.dw_ih, a.I);
      if (w.dx_in_dgx) {
        // dgx16 is dx16's storage (GH == I, not the GRU): each block of rows' product to a
        // block-sized buffer, then over the rows it was formed from.
        TORCH_INTERNAL_ASSERT(!n_in_place && w.dx16 == w.dgx16);
        const at::Tensor w16 = given(w.w_ih16, a.w_ih, GH, a.I);
        const int64_t block = dx_block_rows(s.N, a.I, 2);
        at::Tensor tmp = at::empty({block, a.I}, at::TensorOptions().dtype(at::kBFloat16));
        for (int64_t r0 = 0; r0 < s.N; r0 += block) {
          const int64_t rows = std::min(block, s.N - r0);
          at::Tensor t = tmp.narrow(0, 0, rows);
          at::mm_out(t, dgx16.narrow(0, r0, rows), w16);
          dgx16.narrow(0, r0, rows).copy_(t);
        }
      } else if (w.dx16 != nullptr) {
        // dX into its bfloat16 storage a block of rows at a time (rows whose float32 result
        // takes about 2 MiB): one GEMM over all N rows had oneDNN keep scratch of the order
        // of a float32 copy of the result (measured at N = 6400, GH = 3072, I = 1024: 14.5
        // MiB for a 12.5 MiB result; 4 MiB with blocks of 512 rows), which put the GRU's XL
        // training step above torch.nn-bf16's. The same bits either way; the time the same
        // within noise at XL (GRU, LSTM).
        const at::Tensor w16 = given(w.w_ih16, a.w_ih, GH, a.I);
        const at::Tensor dx16 = at::from_blob(w.dx16, {s.N, a.I},
                                              at::TensorOptions().dtype(at::kBFloat16));
        const int64_t block = dx_block_rows(s.N, a.I, 4);
        for (int64_t r0 = 0; r0 < s.N; r0 += block) {
          const int64_t rows = std::min(block, s.N - r0);
          at::Tensor t = dx16.narrow(0, r0, rows);
          at::mm_out(t, dgx16.narrow(0, r0, rows), w16);
        }
      } else if (a.dx != nullptr) {
        product(dgx16, given(w.w_ih16, a.w_ih, GH, a.I), nullptr, a.dx, a.I);
      }
      if (n_in_place) {
        at::parallel_for(0, s.N, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, H)),
                         [&](int64_t r0, int64_t r1) {
          std::vector<float> v(static_cast<size_t>(H));
          for (int64_t i = r0; i < r1; ++i) {
            uint16_t* const dn = w.dgx16 + i * GH + H_rz;
            const uint16_t* const r = w.ws16 + i * ld;  // r: the saved row's first H columns
            for (int64_t k = 0; k < H; ++k) v[k] = bf16_to_float(dn[k]) * bf16_to_float(r[k]);
            round_rows_bf16(1, H, v.data(), H, dn, H);
          }
        });
        dw_hh_rows(dgx16.narrow(1, H_rz, H), dw_hh16_n, dw_hh_n);
      }
      if (proj) sequence_gemm<T>(true, P, H, s.N, w.DH, P, w.R, H, T(0), a.dw_hr, H);
      return;
    }
  }
  // dW_hh = sum_t dGh_t^T h_{t-1} over the whole sequence.
  if (gru) {
    dw_hh_product(w.dgx, GH, H_rz, 0, s.N, T(0), a.dw_hh);
    dw_hh_product(w.dgh, H, H, 0, s.N, T(0), a.dw_hh + H_rz * P);
  } else {
    dw_hh_product(w.dgx, GH, GH, 0, s.N, T(0), a.dw_hh);
  }
  sequence_gemm<T>(true, GH, a.I, s.N, w.dgx, GH, a.x, a.I, T(0), a.dw_ih, a.I);
  if (proj) sequence_gemm<T>(true, P, H, s.N, w.DH, P, w.R, H, T(0), a.dw_hr, H);
  if (a.dx == nullptr) return;
  if (!w.dx_in_dgx) {
    sequence_gemm<T>(false, s.N, a.I, GH, w.dgx, GH, a.w_ih, a.I, T(0), a.dx, a.I);
    return;
  }
  // dx and dgx are one [N, I] buffer (GH == I) that nothing reads as dG any more: each
  // block of rows' product goes to a block-sized buffer and then over the rows it came
  // from (a row of dX depends only on its own row of dG). The blocks follow from the
  // shape alone, so the result does not depend on the thread count.
  const int64_t block = dx_block_rows(s.N, a.I, sizeof(T));
  std::vector<T> tmp(static_cast<size_t>(block * a.I));
  for (int64_t r0 = 0; r0 < s.N; r0 += block) {
    const int64_t rows = std::min(block, s.N - r0);
    sequence_gemm<T>(false, rows, a.I, GH, w.dgx + r0 * GH, GH, a.w_ih, a.I, T(0), tmp.data(), a.I);
    std::copy(tmp.data(), tmp.data() + rows * a.I, a.dx + r0 * a.I);
  }
}

template void layer_forward<float>(const core::LayerForward<float>&, const ForwardScratch<float>&);
template void layer_forward<double>(const core::LayerForward<double>&,
                                    const ForwardScratch<double>&);
template void layer_backward<float>(const core::LayerBackward<float>&,
                                    const BackwardScratch<float>&);
template void layer_backward<double>(const core::LayerBackward<double>&,
                                     const BackwardScratch<double>&);

void advise_huge_pages(const void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes < kHugePageMinBytes) return;
  const uintptr_t b = reinterpret_cast<uintptr_t>(p);
  const uintptr_t first = (b + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (b + bytes) & ~(kHugePage - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

void step_loop_region(int64_t step_flops, bool split_invariant,
                      const std::function<void(int tid, int nt, StepSync& sync)>& fn) {
  parallel_region(step_flops, split_invariant, fn);
}

StepLoopLoad step_loop_load() {
  LoadMonitor& monitor = load_monitor();
  std::lock_guard<std::mutex> lock(monitor.mu);
  StepLoopLoad out = monitor.counts;
  out.backoff_s = static_cast<double>(monitor.backoff) * 1e-9;
  return out;
}

void hold_step_loops_on_one_thread(double seconds) {
  LoadMonitor& monitor = load_monitor();
  std::lock_guard<std::mutex> lock(monitor.mu);
  monitor.backoff = static_cast<int64_t>(seconds * 1e9);
  monitor.single_until.store(now_ns() + monitor.backoff, std::memory_order_relaxed);
}

void judge_step_loop(double wait_fraction, double loop_s) {
  load_monitor().report(wait_fraction, static_cast<int64_t>(loop_s * 1e9), now_ns());
}

void reset_step_loop_load() {
  LoadMonitor& monitor = load_monitor();
  std::lock_guard<std::mutex> lock(monitor.mu);
  monitor.counts = StepLoopLoad{};
  monitor.backoff = 0;
  monitor.single_until.store(0, std::memory_order_relaxed);
  monitor.split_until.store(0, std::memory_order_relaxed);
}

void hold_step_loops_split(double seconds) {
  load_monitor().split_until.store(now_ns() + static_cast<int64_t>(seconds * 1e9),
                                   std::memory_order_relaxed);
}

}  // namespace cpu
}  // namespace rnnfast
