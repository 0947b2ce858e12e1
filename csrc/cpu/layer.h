// The CPU executor of one recurrent layer in one direction over a whole sequence:
// the orchestration shared by LSTM, GRU and RNN (the cell maths is the only part that
// differs, and lives in the pointwise kernels).
//
// Forward:
//   per chunk of steps (~128 rows): xbuf = X W_ih^T + bias_x     one GEMM per thread,
//     for its own units, so the pre-activations are consumed from its cache
//   per step t (b_t active rows):
//     rec = h W_hh^T                                one GEMM (each thread: its units)
//     fused pointwise pass: adds rec to gbuf_t (GRU: keeps it apart with b_hh, since
//     r multiplies it), activations, state update, output, what backward needs
//     LSTM with projection: h = r W_hr^T            one GEMM
// Backward, in the reverse of the forward order:
//   per step: dh += dy_t; (projection: dr = dh W_hr); fused pointwise pass giving the
//             pre-activation gradients dGx_t (and the n part of dGh_t for GRU, whose
//             r, z parts are dGx_t's); dh = dGh_t W_hh (+ the GRU's direct z * dh
//             path)                                 one GEMM (GRU: r,z rows and n rows)
//   after the loop: dW_ih = dGx^T X, dW_hh = dGh^T H_prev, dX = dGx W_ih,
//             dW_hr = dH^T R, biases = column sums of dGx / dGh in a fixed order
//             (bitwise reproducible). The float32/float64 layers form dW_ih, dW_hh and dX
//             a chunk of steps at a time inside the loop instead, where the sequence is
//             long enough (backward_chunk_steps, below).
// Threads: the whole step loop runs inside ONE parallel region (torch's intra-op
// threads, OpenMP). Each thread owns a fixed range of hidden units (and of
// projection outputs) for the whole sequence: it computes the recurrent product for
// the gate rows of its units (so its slice of W_hh stays in its core's cache), runs
// the pointwise pass on them, and meets the others at one barrier per step (two with
// a projection). No library call forks threads and nothing is allocated per step;
// the hidden state is double-buffered so that no thread overwrites h_{t-1} while
// another still reads it. The whole-sequence GEMMs outside the loop use all threads
// through sequence_gemm (blas.h: the blocked AVX2 GEMM, or the BLAS).
//
// The layer's buffers come from the operators (core::LayerForward/LayerBackward,
// csrc/core/layer.h), the executor's scratch from the CPU backend (ops_cpu.cpp), both
// allocated once per call.
//
// Legend: N rows (sum of batch sizes), B batch, I input, H hidden, P output size
// (proj_size or H), G gates (4, 3, 1), ld row stride of the saved rows (see pointwise.h).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>

#include "pointwise.h"
#include "../core/layer.h"

namespace rnnfast {
namespace cpu {

using core::Sequence;

// Steps per input-projection chunk (about 128 rows, at least one step).
inline int64_t input_chunk_steps(int64_t B) { return B >= 128 ? 1 : 128 / (B > 0 ? B : 1); }

// The CPU executor's own buffers, beside the layer's (core::LayerForward): allocated
// once per call by the CPU backend (ops_cpu.cpp).
template <typename T>
struct ForwardScratch {
  const T* bias_x = nullptr;  // [G*H] folded into the input projection (LSTM/RNN: b_ih +
                              //   b_hh; GRU: b_ih), or nullptr (no bias)
  const T* bias_h = nullptr;  // [3H] GRU: b_hh (zeros without bias), else nullptr
  T* hbuf = nullptr;          // [2, B, P] the double-buffered running h
  T* rec = nullptr;           // [B, G*H] each thread's recurrent product (GRU only)
  T* xbuf = nullptr;          // [chunk_steps * B, G*H] each thread's input projection of a
                              //   chunk of steps
  int64_t chunk_steps = 1;
  T* r = nullptr;             // [B, H] LSTM with projection: o * tanh(c_t), else nullptr
  bool bf16 = false;          // the layer is bfloat16: with the bfloat16 kernels its products run on the
                              //   tiles (PackedWeight's bf16 mode): the input projection
                              //   on x and W_ih as they are (bfloat16 values), the step
                              //   product with h_{t-1} rounded to one bfloat16 value (LSTM,
                              //   GRU) or as a sum of two (RNN)
  // The bfloat16 data path (the bfloat16 kernels, bf16 true, or widened, bf16 false: then
  // the weights are widened into float32 panels and each chunk's rows of x16 into a
  // buffer, see bf16_gemm.h):
  const uint16_t* x16 = nullptr;  // [N, I] the input as bfloat16 bit patterns, which the
                                  //   input projection reads instead of the layer's x
                                  //   (then nullptr: no float32 copy is made)
  const uint16_t* w_ih16 = nullptr;  // [G*H, I] and [G*H, P]: the same for the weights,
  const uint16_t* w_hh16 = nullptr;  //   packed from their bfloat16 values (I > 0)
  uint16_t* y16 = nullptr;  // [N, P] the output, written as
                            //   bfloat16 straight from each step's h_t (the layer's y is then
                            //   nullptr: no float32 output is made)
  // bf16, where the layer saves bfloat16 rows (LayerForward::saved16): [N, ld] those rows,
  // and [B, ld] the float32 rows of a step (each thread its own units' columns), rounded
  // into ws16 once the step's pointwise pass has written them.
  uint16_t* ws16 = nullptr;
  T* wsstep = nullptr;
};

template <typename T>
struct BackwardScratch {
  T* dgx = nullptr;    // [N, G*H] the gate gradients (input side); [2, B, G*H] with dgx16
  bool dx_in_dgx = false;  // dgx (or, with dgx16, dgx16) is the storage of the layer's dx
                           //   (dx16) itself, G*H == I: dX = dG W_ih is formed over dG, a
                           //   block of rows at a time, after every other product has read
                           //   dG (one [N, I] buffer fewer)
  T* dgh = nullptr;    // [N, H] GRU: the n gate's recurrent-side gradient (its r and z parts
                       //   equal dgx's), else nullptr; [2, B, H] with dgx16
  T* hprev = nullptr;  // [N, P] h_{t-1} of every row (packed input with shrinking batches
                       //   only), else nullptr
  int64_t chunk_steps = 0;  // > 0: the chunked backward (backward_chunk_steps): dgx (and
                            //   dgh) hold the rows of chunk_steps steps, [chunk_steps * B,
                            //   G*H] ([chunk_steps * B, H]), and the whole-sequence
                            //   products run a chunk at a time inside the step loop
  T* dr = nullptr;     // [B, H] LSTM with projection: dL/d(o tanh c_t) of a step
  T* R = nullptr;      // [N, H] LSTM with projection: o tanh c_t of every row
  T* DH = nullptr;     // [N, P] LSTM with projection: dL/dh_t of every row
  bool bf16 = false;   // the layer is bfloat16: with the bfloat16 kernels the step products take dG_t as
                       //   a sum of two bfloat16 values (PackedWeight's bf16 mode); the
                       //   whole-sequence products run on bfloat16 copies (dG rounded
                       //   once) through torch's bfloat16 GEMM (sequence_gemm_bf16)
  bool widened = false;  // the layer is bfloat16 on the widened path (bf16_gemm.h): with
                         //   bf16 false, its step products are float32 (on panels widened
                         //   from w_hh16) and its whole-sequence products float32 GEMMs on
                         //   dgx16, x16, y16, hx16 and w_ih16 widened a block of rows at
                         //   a time, their results rounded into dx16, dw_ih16, dw_hh16
  // bf16 with the bfloat16 kernels: the layer's bfloat16 arguments as they were given, which the
  // whole-sequence products read instead of rounding float32 copies back (then the
  // layer's x and w_ih are nullptr: no float32 copies are made).
  const uint16_t* x16 = nullptr;     // [N, I]
  const uint16_t* w_ih16 = nullptr;  // [G*H, I]
  const uint16_t* w_hh16 = nullptr;  // [G*H, P] packed for the step products as it is (the
                                     //   layer's w_hh is then nullptr where B > 0)
  const uint16_t* y16 = nullptr;     // [N, P]
  const uint16_t* hx16 = nullptr;    // [B, P]
  // bf16 with the bfloat16 kernels: the gate gradients rounded to bfloat16 once, in each step by the
  // thread that wrote them (what the whole-sequence products read; else a copy is made
  // after the loop), and the bfloat16 gradients that those products write straight (the
  // layer's dx, dw_ih, dw_hh are then nullptr).
  // With dgx16, dgx and dgh hold only two steps' rows ([2, B, G*H] and [2, B, H], used in
  // turn: a step's product reads them while the next step's pointwise pass writes the other)
  // and the bias gradients are summed in the loop (no [N, G*H] float32 buffer). The GRU
  // (whose bfloat16 layer saves bfloat16 rows, ws16) forms the n part of dGh in dgx16's own
  // n columns after the products that read dGx.
  uint16_t* dgx16 = nullptr;    // [N, G*H]
  uint16_t* dx16 = nullptr;     // [N, I] or nullptr (no input gradient)
  uint16_t* dw_ih16 = nullptr;  // [G*H, I]
  uint16_t* dw_hh16 = nullptr;  // [G*H, P]
  // bf16: dL/d(output) as the bfloat16 values given, element (n, k) at
  // dy16[n * dy16_ld + k * dy16_cs], read in place when the layer's dy is nullptr (no
  // float32 copy of it is made).
  const uint16_t* dy16 = nullptr;
  int64_t dy16_ld = 0, dy16_cs = 0;
  // bf16 with the bfloat16 kernels, GRU and RNN on unpacked input, when the layer's y is
  // nullptr (no float32 copy of the outputs): [B, H] the rows of y16 that a step reads (GRU:
  // h_{t-1}; RNN: h_t, its saved row), each thread up-converting its own units.
  T* ystep = nullptr;
  // bf16, where forward saved bfloat16 rows (LayerBackward::saved16): [N, ld] those rows, and
  // [B, ld] a step's rows widened to float32 (each thread its own units' columns).
  const uint16_t* ws16 = nullptr;
  T* wsstep = nullptr;
};


// Steady-clock nanoseconds.
inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A barrier wait counts as stalled (the load monitor, layer.cpp) only beyond this.
constexpr int64_t kMinStallNs = 50 * 1000;

// A thread's barrier: the OpenMP barrier of its region, timed (the stalled time goes
// to the thread's slot when the region ends). The first barrier's wait is not counted: it
// is the region starting up (a worker thread woken from sleep), which made lone loops at
// batch 1 look loaded. On one thread, nothing.
class StepSync {
 public:
  explicit StepSync(int64_t* slot) : slot_(slot), last_(slot != nullptr ? now_ns() : 0) {}
  StepSync(const StepSync&) = delete;
  StepSync& operator=(const StepSync&) = delete;
  ~StepSync() {
    if (slot_ != nullptr) *slot_ = stalled_;
  }
  void barrier() {
#ifdef _OPENMP
    if (slot_ == nullptr) return;
    const int64_t arrived = now_ns();
#pragma omp barrier
    const int64_t left = now_ns();
    const int64_t wait = left - arrived;
    if (!first_ && wait > arrived - last_ && wait > kMinStallNs) stalled_ += wait;
    first_ = false;
    last_ = left;
#endif
  }

 private:
  int64_t* slot_;
  int64_t last_;  // when this thread last left a barrier (or began)
  int64_t stalled_ = 0;
  bool first_ = true;
};


// Runs fn(tid, nt, sync) on every thread of one parallel region, as the step loops of this
// file do (layer.cpp): torch's intra-op thread count, one thread inside another parallel
// region or below 64K flops a step, and, for a loop whose result does not depend on the
// split (`split_invariant`), one thread while the load monitor says the threads are not all
// running; sync.barrier() is the timed step barrier whose waits the monitor judges.
// Large buffers (the layer-normalised LSTM's workspace of 13H + 3 values a row, beyond the C
// allocator's mapping threshold, and the option layers' gate-sized scratch) are often fresh
// pages on every call, and a first touch of each 4 KiB page costs a fault and a clear. Asks
// for transparent huge pages on the 2 MiB-aligned part of [p, p + bytes) for buffers of
// kHugePageMinBytes or more (granted where the kernel's setting is "madvise" or "always"), so
// that a buffer not yet touched takes one fault per 2 MiB. Only advice: memory already
// touched, or a kernel without THP, is left as it is. Smaller buffers are left alone: there a
// huge-page fault (clearing 2 MiB, possibly compacting memory first) measured slower (LSTM S
// inference).
constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kHugePageMinBytes = size_t{8} << 20;
void advise_huge_pages(const void* p, size_t bytes);

void step_loop_region(int64_t step_flops, bool split_invariant,
                      const std::function<void(int tid, int nt, StepSync& sync)>& fn);

template <typename T>
void layer_forward(const core::LayerForward<T>& a, const ForwardScratch<T>& w);

// The step loops on a machine where other work competes for the cores (layer.cpp).
// A split step loop meets its threads at a barrier every step, so one thread that the
// OS deschedules for a time slice stalls them all; a loop whose threads waited for
// each other longer than they worked (and beyond 50 us), for more than a quarter of its
// time, concludes that they are not all running, and the next loops run on one thread (which then
// competes for a core like any other process) for a back-off period, after which one
// loop probes again with every thread (the period doubles while the load lasts). Only
// loops whose result does not depend on the split drop to one thread (float32 without
// projection, with rnnfast's step GEMM); the others keep their threads.
struct StepLoopLoad {
  int64_t split_loops = 0;      // step loops run on several threads
  int64_t single_loops = 0;     // step loops run on one thread because of the load
  int64_t loaded_loops = 0;     // split loops that found their threads waiting too long
  double last_wait_fraction = 0;  // of the last split loop: the largest share of its
                                  //   time one thread spent in waits longer than its
                                  //   work before them
  double backoff_s = 0;         // the current back-off period (0: not under load)
};
StepLoopLoad step_loop_load();
// Forgets the load seen so far (the next step loop splits again); counters to zero.
void reset_step_loop_load();
// Testing: the step loops that may drop to one thread do so for the next `seconds`.
void hold_step_loops_on_one_thread(double seconds);
// Testing: the step loops split across threads for the next `seconds`, whatever the load
// (until reset_step_loop_load).
void hold_step_loops_split(double seconds);
// Testing: judges a split loop of `loop_s` seconds whose most stalled thread waited for
// `wait_fraction` of it, as the monitor does after each split loop.
void judge_step_loop(double wait_fraction, double loop_s);

template <typename T>
void layer_backward(const core::LayerBackward<T>& a, const BackwardScratch<T>& w);

// The chunked backward of the float32 and float64 layers (not the bfloat16 data path):
// where the step loop splits across threads and the sequence has more rows than a chunk, the
// gate gradients are held for a chunk of steps only, and the whole-sequence products (dW_ih,
// dW_hh, dX) are formed a chunk at a time by the step loop's threads, dW summed over the
// chunks in the order they are processed. A whole-sequence buffer of the gate gradients is
// fresh memory on every call (beyond the C allocator's mapping threshold), each page faulted
// in and cleared (at T50 B128 H1024, LSTM: 105 MiB), and it was the largest part of a
// training step's peak memory. A chunk is about kBackwardChunkRows rows (the reduction of
// each weight-gradient call), at most kBackwardChunkBytes of gate gradients (at least one
// step). Returns the steps per chunk (chunks of equal steps, the last possibly shorter), or
// 0 for the whole sequence at once. T steps of B rows, row_bytes of gate gradients a row,
// step_flops of the step loop's products a step.
constexpr int64_t kBackwardChunkRows = 1024;
constexpr int64_t kBackwardChunkBytes = int64_t(16) << 20;
int64_t backward_chunk_steps(int64_t T, int64_t B, int64_t row_bytes, int64_t step_flops);
// Testing and comparisons: the chunk's bytes at most (0: kBackwardChunkBytes), so that small
// calls run chunked too; negative: never chunked.
void set_backward_chunk_bytes(int64_t bytes);

}  // namespace cpu
}  // namespace rnnfast
