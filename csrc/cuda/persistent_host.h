// The persistent algorithm's host side (kernels: csrc/kernels/persistent_device.cuh, forward
// and backward): their plans (the launch shape from the device's properties, or why they
// cannot run), the choice between them and the standard algorithm, and their launches. Included by rnn_host.h after its helpers, so compiled for the GPU and for the
// SIMT emulator like the rest of the backend.
//
// The plan. Block j owns U hidden units (all G gate rows of each): at least ceil(H / SMs),
// so that the grid has ceil(H / U) <= SMs blocks, one an SM; more for small steps (see
// plan_persistent); with a projection it also owns V = ceil(P / blocks) rows of W_hr. Its
// shared memory is PersistentLayout: the weight slices plus the staged rows of the step
// (B*P, and B*H with a projection) and the state of its units, for B rows at once.
// Threads: enough warps for the block's products of a step to be taken in one pass, 1 to
// 8 warps. It cannot run when:
//   * the block needs more shared memory than the device allows one block (opt-in limit),
//   * or the grid cannot be co-resident (blocks per SM from the occupancy calculator
//     times the SMs is less than the blocks): a cooperative launch would be refused.
// "auto" takes it when it can run, B <= kPersistentMaxBatch and a block's step reads at
// most kPersistentAutoStepBytes of shared memory: beyond those the model of
// bench/gpu_model.py predicts the standard algorithm faster (docs/design.md).
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <string>

#include "../core/cuda_algorithm.h"
#include "../kernels/persistent_device.cuh"

namespace rnnfast {
namespace RNNFAST_DEVICE_NS {

static_assert(kKindLstm == static_cast<int>(core::CellKind::kLstm) &&
                  kKindGru == static_cast<int>(core::CellKind::kGru) &&
                  kKindRnnTanh == static_cast<int>(core::CellKind::kRnnTanh) &&
                  kKindRnnRelu == static_cast<int>(core::CellKind::kRnnRelu),
              "persistent_device.cuh numbers the cell kinds as core::CellKind");

// "auto" runs the persistent kernel for batches up to this many rows.
constexpr int64_t kPersistentMaxBatch = 32;
// The most multiply-adds a block's dot products of one step may have when the plan gives
// it more units than the least (about a quarter of a microsecond of shared-memory reads
// in float32 on an H100-class SM).
constexpr int64_t kPersistentStepFmas = 8192;
// "auto" also leaves a layer to the standard algorithm where a block's step would read more
// than this many bytes of shared memory (PersistentPlan::step_bytes): there the model
// (bench/gpu_model.py, H100 constants) predicts the persistent step slower than the
// standard one. To be recalibrated on a GPU (bench/gpu_check.sh).
constexpr int64_t kPersistentAutoStepBytes = 768 * 1024;
// Registers per thread the emulator's occupancy model assumes for the persistent kernels:
// the most the ptxas report shows for them (sm_90, nvcc 13.0). On the GPU the occupancy
// calculator knows the compiled kernel's own.
constexpr int kPersistentRegsHint = 128;

struct PersistentPlan {
  bool ok = false;
  std::string why;  // when not ok: the limit and the numbers
  int64_t U = 0, V = 0, blocks = 0;
  int threads = 0;
  size_t smem = 0;
  int64_t step_bytes = 0;  // shared memory a block's dot products read in a step
};

// The plan of the forward (Backward false) or backward kernel. Backward: block j owns the
// same units, and its state columns (the units, or V of P with a projection) of W_hh as
// rows of length G*H; every block reads the step's B x G*H gate gradients.
template <typename T, int Kind, bool Backward>
PersistentPlan plan_persistent(int64_t B, int64_t H, int64_t P, bool proj) {
  using A = Acc<T>;
  constexpr bool tc = TensorCores<T>::value;
  const simt::DeviceProps dev = simt::device_props();
  const int64_t G = kind_gates(Kind), sms = dev.sm_count;
  PersistentPlan pl;
  // At least ceil(H / SMs) units a block (one block an SM). More, up to where the
  // broadcast of the step's rows to every block (forward: h_{t-1}, B * P; backward: the
  // gate gradients, B * G*H) is a quarter of W_hh, but only while a block's dot products
  // of a step stay within kPersistentStepFmas: beyond that, spreading the work over more
  // SMs is worth more than the L2 traffic it saves (bench/gpu_model.py). Fewer again
  // (down to the least) where a block's shared memory would not hold them.
  const int64_t u_min = (H + sms - 1) / sms;
  const int64_t u_bcast = Backward ? (4 * B * H + P - 1) / P : (4 * B + G - 1) / G;
  const int64_t dot_len = Backward ? G * H : P, dots_per_unit = Backward ? 1 : G;
  const int64_t u_work = kPersistentStepFmas / std::max<int64_t>(1, B * dots_per_unit * dot_len);
  const int64_t u_pref = std::min(H, std::max(u_min, std::min(u_bcast, u_work)));
  for (int64_t U = u_pref; U >= u_min; --U) {
    pl.U = U;
    pl.blocks = (H + U - 1) / U;
    pl.V = proj ? (P + pl.blocks - 1) / pl.blocks : 0;
    pl.smem = static_cast<size_t>(
        Backward
            ? PersistentBackLayout(Kind, proj, B, H, P, pl.U, pl.V, sizeof(T), sizeof(A), tc).bytes
            : PersistentLayout(Kind, proj, B, H, P, pl.U, pl.V, sizeof(T), sizeof(A), tc).bytes);
    if (pl.smem <= dev.smem_per_block_optin) break;
  }
  // Warps: enough to take the block's products of a step in one pass (dot products, a
  // warp taking 32 / dot_lanes at once; tensor cores: 16 x 16 output tiles, one a warp).
  const int64_t outs = Backward ? (proj ? pl.V : pl.U) : G * pl.U;  // a row's outputs
  const int64_t per_warp = 32 / dot_lanes(dot_len);
  const int64_t work = tc ? round16(B) / 16 * (round16(outs) / 16)
                          : (B * outs + per_warp - 1) / per_warp;
  // Shared memory the products read in a step: both operands of every multiply-add on CUDA
  // cores; a 16 x 16 tile of each operand per tile multiply on tensor cores.
  pl.step_bytes = tc ? work * (round16(dot_len) / 16) * 2 * 256 * static_cast<int64_t>(sizeof(T))
                     : 2 * static_cast<int64_t>(sizeof(T)) * B * outs * dot_len;
  const int64_t warps = std::clamp<int64_t>(work, 1, 8);
  pl.threads = static_cast<int>(32 * warps);
  const std::string shape = "(B=" + std::to_string(B) + ", H=" + std::to_string(H) +
                            ", P=" + std::to_string(P) + ", " + std::to_string(sizeof(T)) +
                            "-byte elements, " + std::to_string(pl.blocks) + " blocks of " +
                            std::to_string(pl.U) + " units)";
  const char* pass = Backward ? "backward" : "forward";
  if (pl.smem > dev.smem_per_block_optin) {
    pl.why = std::string("each block of the ") + pass + " kernel needs " +
             std::to_string(pl.smem) +
             " bytes of shared memory for its slice of the recurrent weights and the step's "
             "rows, more than the " + std::to_string(dev.smem_per_block_optin) +
             " one block may have on this device " + shape;
    return pl;
  }
  int per_sm = 0;
  if constexpr (Backward) {
    per_sm = simt::blocks_per_sm(persistent_backward<T, Kind>, pl.threads, pl.smem,
                                 kPersistentRegsHint);
  } else {
    per_sm = simt::blocks_per_sm(persistent_forward<T, Kind>, pl.threads, pl.smem,
                                 kPersistentRegsHint);
  }
  if (static_cast<int64_t>(per_sm) * sms < pl.blocks) {
    pl.why = std::string("the grid of the ") + pass + " kernel, " +
             std::to_string(pl.blocks) + " blocks, cannot be co-resident (" +
             std::to_string(per_sm) + " per SM x " + std::to_string(sms) + " SMs) " + shape;
    return pl;
  }
  pl.ok = true;
  return pl;
}

// The batch sizes and first rows of the steps, [2T] on the device, or undefined for
// padded input (every step has all B rows).
inline Tensor device_steps(const core::Sequence& s, const at::TensorOptions& opts) {
  if (s.uniform()) return Tensor();
  Tensor host = at::empty(
      {2 * s.T}, at::TensorOptions().dtype(at::kLong).pinned_memory(opts.device().is_cuda()));
  int64_t* q = host.data_ptr<int64_t>();
  std::copy(s.bs.begin(), s.bs.end(), q);
  std::copy(s.off.begin(), s.off.end(), q + s.T);
  return host.to(opts.device(), /*non_blocking=*/true);
}

inline simt::LaunchConfig persistent_config(const PersistentPlan& pl, const char* name) {
  simt::LaunchConfig cfg;
  cfg.grid = simt::dim3_t(static_cast<unsigned>(pl.blocks));
  cfg.block = simt::dim3_t(static_cast<unsigned>(pl.threads));
  cfg.smem = pl.smem;
  cfg.stream = RNNFAST_STREAM();
  cfg.name = name;
  return cfg;
}

// The fields both kernels share, from the sequence, the plan and the layer (LayerForward or
// LayerBackward); steps: device_steps' batch sizes and first rows, or undefined.
template <class Layer>
void set_steps(PersistentSteps& p, const core::Sequence& s, const PersistentPlan& pl,
               const Layer& a, const Tensor& steps) {
  p.steps = s.T;
  p.B = s.B;
  p.H = a.H;
  p.P = a.P;
  p.U = pl.U;
  p.V = pl.V;
  p.reverse = a.reverse;
  p.bs = steps.defined() ? steps.template data_ptr<int64_t>() : nullptr;
  p.off = steps.defined() ? p.bs + s.T : nullptr;
  p.grid_syncs = !core::persistent_drops_grid_syncs().load();
}

// Whether the setting and the plan give the layer to the persistent kernel; raises where
// "persistent" was forced and it cannot run.
inline bool take_persistent(const PersistentPlan& pl, int64_t B, bool forced) {
  if (!pl.ok) {
    TORCH_CHECK(!forced, "rnnfast.cuda_algorithm('persistent'): this layer cannot run on the "
                "persistent kernel: ", pl.why, "; use 'auto' or 'standard' for it");
    return false;
  }
  return forced || (B <= kPersistentMaxBatch && pl.step_bytes <= kPersistentAutoStepBytes);
}

// The persistent forward of one layer in one direction, after the input projection gx
// (the same as the standard algorithm's). Returns false where "auto" leaves the layer to
// the standard algorithm; raises where "persistent" was forced and it cannot run.
template <typename T, int Kind, typename A>
bool persistent_forward_layer(const core::LayerForward<T, A>& a, const Tensor& gx,
                              const at::TensorOptions& opts, bool forced) {
  const core::Sequence& s = *a.seq;
  const int64_t B = s.B, H = a.H, P = a.P;
  const bool proj = a.w_hr != nullptr;
  const PersistentPlan pl = plan_persistent<T, Kind, false>(B, H, P, proj);
  if (!take_persistent(pl, B, forced)) return false;
  if (s.N == 0) return true;  // no steps: the states stay as they are
  const Tensor steps = device_steps(s, opts);
  const Tensor r = proj ? at::empty({B, H}, opts) : Tensor();
#if SIMT_EMULATED
  // The emulator poisons what the kernel writes before other blocks read it (NaN), so
  // that a read before the write (a missing grid sync) shows in the results.
  blob(a.y, {s.N, P}, opts).fill_(std::numeric_limits<double>::quiet_NaN());
  if (proj) r.fill_(std::numeric_limits<double>::quiet_NaN());
#endif
  PersistentForward<T> p;
  set_steps(p, s, pl, a, steps);
  p.gx = dptr<const T>(gx);
  p.w_hh = a.w_hh;
  p.b_hh = Kind == kKindGru ? a.b_hh : nullptr;
  p.w_hr = a.w_hr;
  p.y = a.y;
  p.h = a.h;
  p.c = a.c;
  p.saved0 = a.saved[0];
  p.saved1 = a.saved[1];
  p.r = dptr<T>(r);
  simt::launch_cooperative(persistent_forward<T, Kind>, persistent_config(pl, "persistent_forward"),
                           p);
  RNNFAST_LAUNCH_CHECK();
  return true;
}

// The persistent backward of one layer in one direction, into the standard algorithm's
// buffers (dg [N, G*H]; GRU dgh [N, H]; projection DR [N, P] and Rr [N, H]), which the
// whole-sequence GEMMs after it read. Returns false where the standard loop is to run.
template <typename T, int Kind, typename A>
bool persistent_backward_layer(const core::LayerBackward<T, A>& a, const Tensor& dg,
                               const Tensor& dgh, const Tensor& DR, const Tensor& Rr,
                               const at::TensorOptions& opts, bool forced) {
  const core::Sequence& s = *a.seq;
  const int64_t B = s.B, H = a.H, P = a.P;
  const bool proj = a.w_hr != nullptr;
  const PersistentPlan pl = plan_persistent<T, Kind, true>(B, H, P, proj);
  if (!take_persistent(pl, B, forced)) return false;
  if (s.N == 0) return true;
  const Tensor steps = device_steps(s, opts);
#if SIMT_EMULATED
  // Poisoned, as in forward: rows read before every block wrote them show as NaN.
  for (const Tensor& t : {dg, dgh, DR}) {
    if (t.defined()) t.fill_(std::numeric_limits<double>::quiet_NaN());
  }
#endif
  PersistentBackward<T> p;
  set_steps(p, s, pl, a, steps);
  p.dy = a.dy;
  p.dy_ld = a.dy_ld;
  p.dy_cs = a.dy_cs;
  p.hx = a.hx;
  p.cx = a.cx;
  p.w_hh = a.w_hh;
  p.w_hr = a.w_hr;
  p.y = a.y;
  p.saved0 = a.saved[0];
  p.saved1 = a.saved[1];
  p.dh = a.dh;
  p.dc = a.dc;
  p.dg = dptr<T>(dg);
  p.dgh = dptr<T>(dgh);
  p.dr_rows = dptr<T>(DR);
  p.r_rows = dptr<T>(Rr);
  simt::launch_cooperative(persistent_backward<T, Kind>,
                           persistent_config(pl, "persistent_backward"), p);
  RNNFAST_LAUNCH_CHECK();
  return true;
}

// f.template operator()<Kind>() for the layer's cell kind.
template <class F>
bool with_kind(core::CellKind kind, const F& f) {
  switch (kind) {
    case core::CellKind::kLstm: return f.template operator()<kKindLstm>();
    case core::CellKind::kGru: return f.template operator()<kKindGru>();
    case core::CellKind::kRnnTanh: return f.template operator()<kKindRnnTanh>();
    case core::CellKind::kRnnRelu: return f.template operator()<kKindRnnRelu>();
  }
  return false;
}

// The algorithm setting applied to one layer's forward: true when the persistent kernel
// ran it.
template <typename T, typename A>
bool try_persistent_forward(const core::LayerForward<T, A>& a, const Tensor& gx,
                            const at::TensorOptions& opts) {
  const core::CudaAlgorithm setting = core::cuda_algorithm();
  if (setting == core::CudaAlgorithm::kStandard) return false;
  const bool forced = setting == core::CudaAlgorithm::kPersistent;
  return with_kind(a.kind, [&]<int Kind>() {
    return persistent_forward_layer<T, Kind>(a, gx, opts, forced);
  });
}

// Likewise for its backward (decided on its own: the forward may have run either way).
template <typename T, typename A>
bool try_persistent_backward(const core::LayerBackward<T, A>& a, const Tensor& dg,
                             const Tensor& dgh, const Tensor& DR, const Tensor& Rr,
                             const at::TensorOptions& opts) {
  const core::CudaAlgorithm setting = core::cuda_algorithm();
  if (setting == core::CudaAlgorithm::kStandard) return false;
  const bool forced = setting == core::CudaAlgorithm::kPersistent;
  return with_kind(a.kind, [&]<int Kind>() {
    return persistent_backward_layer<T, Kind>(a, dg, dgh, DR, Rr, opts, forced);
  });
}

}  // namespace RNNFAST_DEVICE_NS
}  // namespace rnnfast
