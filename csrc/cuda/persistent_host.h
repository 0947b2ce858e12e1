// The persistent forward algorithm's host side (kernel: csrc/kernels/persistent_device.cuh):
// its plan (the launch shape from the device's properties, or why it cannot run) and its
// launch. Included by rnn_host.h after its helpers, so compiled for the GPU and for the
// SIMT emulator like the rest of the backend.
//
// The plan. Block j owns U hidden units (all G gate rows of each): at least ceil(H / SMs),
// so that the grid has ceil(H / U) <= SMs blocks, one an SM; more where that would leave
// a block fewer than 4B gate rows (see plan_persistent); with a projection it also owns
// V = ceil(P / blocks) rows of W_hr. Its shared memory is
// PersistentLayout: the weight slices plus the staged rows of the step (B*P, and B*H with
// a projection) and the state of its units, for B rows at once. Threads: enough warps
// for the block's B*G*U dot products of a step to be taken in one pass (a warp takes
// 32 / dot_lanes(P) at once), 1 to 8 warps. It cannot run when:
//   * the block needs more shared memory than the device allows one block (opt-in limit),
//   * or the grid cannot be co-resident (blocks per SM from the occupancy calculator
//     times the SMs is less than the blocks): a cooperative launch would be refused.
// "auto" takes it when it can run and B <= kPersistentMaxBatch: beyond that batch the
// per-step products are large enough for the GEMM of the standard algorithm to run at
// its own speed, which is no longer bound by re-reading W_hh (docs/design.md).
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
// Registers per thread the emulator's occupancy model assumes for the persistent kernel
// (on the GPU the occupancy calculator knows the compiled kernel's).
constexpr int kPersistentRegsHint = 64;

struct PersistentPlan {
  bool ok = false;
  std::string why;  // when not ok: the limit and the numbers
  int64_t U = 0, V = 0, blocks = 0;
  int threads = 0;
  size_t smem = 0;
};

template <typename T, int Kind>
PersistentPlan plan_persistent(int64_t B, int64_t H, int64_t P, bool proj) {
  using A = Acc<T>;
  const simt::DeviceProps dev = simt::device_props();
  const int64_t G = kind_gates(Kind), sms = dev.sm_count;
  PersistentPlan pl;
  // At least ceil(H / SMs) units a block (one block an SM); more where that leaves a
  // block fewer than 4B gate rows, so that the broadcast of h_{t-1} to the blocks
  // (blocks * B * P elements a step) stays within a quarter of W_hh; fewer again (down
  // to the least) where a block's shared memory would not hold them.
  const int64_t u_min = (H + sms - 1) / sms;
  const int64_t u_pref = std::min(H, std::max(u_min, (4 * B + G - 1) / G));
  for (int64_t U = u_pref; U >= u_min; --U) {
    pl.U = U;
    pl.blocks = (H + U - 1) / U;
    pl.V = proj ? (P + pl.blocks - 1) / pl.blocks : 0;
    const PersistentLayout lay(Kind, proj, B, H, P, pl.U, pl.V, sizeof(T), sizeof(A));
    pl.smem = static_cast<size_t>(lay.bytes);
    if (pl.smem <= dev.smem_per_block_optin) break;
  }
  const int64_t per_warp = 32 / dot_lanes(P);  // dot products a warp takes at once
  const int64_t warps = std::clamp<int64_t>((B * G * pl.U + per_warp - 1) / per_warp, 1, 8);
  pl.threads = static_cast<int>(32 * warps);
  const std::string shape = "(B=" + std::to_string(B) + ", H=" + std::to_string(H) +
                            ", P=" + std::to_string(P) + ", " + std::to_string(sizeof(T)) +
                            "-byte elements, " + std::to_string(pl.blocks) + " blocks of " +
                            std::to_string(pl.U) + " units)";
  if (pl.smem > dev.smem_per_block_optin) {
    pl.why = "each block needs " + std::to_string(pl.smem) +
             " bytes of shared memory for its slice of the recurrent weights and the step's "
             "rows, more than the " + std::to_string(dev.smem_per_block_optin) +
             " one block may have on this device " + shape;
    return pl;
  }
  const int per_sm = simt::blocks_per_sm(persistent_forward<T, Kind>, pl.threads, pl.smem,
                                         kPersistentRegsHint);
  if (static_cast<int64_t>(per_sm) * sms < pl.blocks) {
    pl.why = "its grid of " + std::to_string(pl.blocks) + " blocks cannot be co-resident (" +
             std::to_string(per_sm) + " per SM x " + std::to_string(sms) + " SMs) " + shape;
    return pl;
  }
  pl.ok = true;
  return pl;
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
  const PersistentPlan pl = plan_persistent<T, Kind>(B, H, P, proj);
  if (!pl.ok) {
    TORCH_CHECK(!forced, "rnnfast.cuda_algorithm('persistent'): this layer cannot run on the "
                "persistent kernel: ", pl.why, "; use 'auto' or 'standard' for it");
    return false;
  }
  if (!forced && B > kPersistentMaxBatch) return false;
  if (s.N == 0) return true;  // no steps: the states stay as they are
  Tensor steps;               // [2T] the batch sizes and first rows, on the device
  if (!s.uniform()) {
    Tensor host = at::empty({2 * s.T}, at::TensorOptions()
                                           .dtype(at::kLong)
                                           .pinned_memory(opts.device().is_cuda()));
    int64_t* q = host.data_ptr<int64_t>();
    std::copy(s.bs.begin(), s.bs.end(), q);
    std::copy(s.off.begin(), s.off.end(), q + s.T);
    steps = host.to(opts.device(), /*non_blocking=*/true);
  }
  const Tensor r = proj ? at::empty({B, H}, opts) : Tensor();
#if SIMT_EMULATED
  // The emulator poisons what the kernel writes before other blocks read it (NaN), so
  // that a read before the write (a missing grid sync) shows in the results.
  blob(a.y, {s.N, P}, opts).fill_(std::numeric_limits<double>::quiet_NaN());
  if (proj) r.fill_(std::numeric_limits<double>::quiet_NaN());
#endif
  PersistentForward<T> p;
  p.steps = s.T;
  p.B = B;
  p.H = H;
  p.P = P;
  p.U = pl.U;
  p.V = pl.V;
  p.reverse = a.reverse;
  p.bs = steps.defined() ? steps.template data_ptr<int64_t>() : nullptr;
  p.off = steps.defined() ? p.bs + s.T : nullptr;
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
  p.grid_syncs = !core::persistent_drops_grid_syncs().load();
  simt::LaunchConfig cfg;
  cfg.grid = simt::dim3_t(static_cast<unsigned>(pl.blocks));
  cfg.block = simt::dim3_t(static_cast<unsigned>(pl.threads));
  cfg.smem = pl.smem;
  cfg.stream = RNNFAST_STREAM();
  cfg.name = "persistent_forward";
  simt::launch_cooperative(persistent_forward<T, Kind>, cfg, p);
  RNNFAST_LAUNCH_CHECK();
  return true;
}

// The algorithm setting applied to one layer: true when the persistent kernel ran it.
template <typename T, typename A>
bool try_persistent_forward(const core::LayerForward<T, A>& a, const Tensor& gx,
                            const at::TensorOptions& opts) {
  const core::CudaAlgorithm setting = core::cuda_algorithm();
  if (setting == core::CudaAlgorithm::kStandard) return false;
  const bool forced = setting == core::CudaAlgorithm::kPersistent;
  switch (a.kind) {
    case core::CellKind::kLstm: return persistent_forward_layer<T, kKindLstm>(a, gx, opts, forced);
    case core::CellKind::kGru: return persistent_forward_layer<T, kKindGru>(a, gx, opts, forced);
    case core::CellKind::kRnnTanh:
      return persistent_forward_layer<T, kKindRnnTanh>(a, gx, opts, forced);
    case core::CellKind::kRnnRelu:
      return persistent_forward_layer<T, kKindRnnRelu>(a, gx, opts, forced);
  }
  return false;
}

}  // namespace RNNFAST_DEVICE_NS
}  // namespace rnnfast
