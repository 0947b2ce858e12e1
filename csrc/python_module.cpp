// The Python extension module rnnfast._C. Importing it loads the operator
// registrations of ops.cpp (linked into the same library) and exposes build facts.
#include <chrono>
#include <torch/extension.h>

#include "build_info.h"
#include "core/cells.h"
#include "core/cuda_algorithm.h"
#include "cpu/backend.h"
#include "cpu/bf16_gemm.h"
#include "cpu/blas.h"
#include "cpu/layer.h"

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  for (const auto& kv : rnnfast::build_info()) info[kv.first.c_str()] = kv.second;
  // Booleans and numbers as Python values, not strings.
  info["cuda"] = rnnfast::built_with_cuda();
  info["openmp"] = info["openmp"].cast<std::string>() == "true";
  info["threads"] = std::stoi(info["threads"].cast<std::string>());
  return info;
}

// out = x op(w) + beta * out through the step loops' PackedWeight (testing): x [M, K],
// w [N, K] (trans_w) or [K, N], out [M, N]; rows may be strided, columns contiguous.
// bf16_terms 1/2: PackedWeight's bfloat16 mode (x as one or a sum of two bfloat16 values);
// w may then be bfloat16 (x and out float32), packed as it is. repeats > 1 (beta 0 only):
// the product is run that many times on the one packed weight; returns the seconds per
// product (measurement).
double step_gemm(const at::Tensor& x, const at::Tensor& w, bool trans_w, double beta,
                 at::Tensor& out, int bf16_terms, int64_t repeats, int64_t uses) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && out.dim() == 2, "step_gemm: 2-d tensors");
  // A bfloat16 w with float32 x and out: packed into the bfloat16 kernels' tiles as it is.
  const bool w16 = w.scalar_type() == at::kBFloat16;
  TORCH_CHECK((w16 ? x.scalar_type() == at::kFloat : x.scalar_type() == w.scalar_type()) &&
                  x.scalar_type() == out.scalar_type(),
              "step_gemm: one dtype (or a bfloat16 w with float32 x and out)");
  TORCH_CHECK(!w16 || (bf16_terms > 0 ? rnnfast::cpu::bf16_kernels_usable()
                                       : rnnfast::cpu::step_gemm_split_invariant_f32()),
              "step_gemm: a bfloat16 w needs bf16_terms > 0 and AMX-BF16 or AVX512-BF16, or "
              "bf16_terms 0 (widened) and the panel micro-kernel");
  TORCH_CHECK(x.stride(1) == 1 && w.stride(1) == 1 && out.stride(1) == 1,
              "step_gemm: columns must be contiguous");
  const int64_t M = x.size(0), K = x.size(1), N = trans_w ? w.size(0) : w.size(1);
  TORCH_CHECK((trans_w ? w.size(1) : w.size(0)) == K && out.size(0) == M && out.size(1) == N,
              "step_gemm: shapes do not match");
  TORCH_CHECK(repeats >= 1 && (repeats == 1 || beta == 0.0), "step_gemm: repeats >= 1, beta 0");
  // Seconds per product of `repeats` products through the packed weight pw.
  const auto timed = [&]<typename S>(const rnnfast::cpu::PackedWeight<S>& pw) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < repeats; ++i)
      pw.gemm(M, x.const_data_ptr<S>(), x.stride(0), static_cast<S>(beta), out.data_ptr<S>(),
              out.stride(0));
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
           static_cast<double>(repeats);
  };
  if (w16) {
    TORCH_CHECK(M > 0 && N > 0 && K > 0, "step_gemm: empty product");
    return timed(rnnfast::cpu::PackedWeight<float>(
        N, K, M, reinterpret_cast<const uint16_t*>(w.const_data_ptr<at::BFloat16>()), w.stride(0), 1, 0,
        bf16_terms, trans_w));
  }
  double seconds = 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "step_gemm", [&] {
    seconds = timed(rnnfast::cpu::PackedWeight<scalar_t>(trans_w, N, K, M, w.const_data_ptr<scalar_t>(),
                                                         w.stride(0), 1, 0, bf16_terms, uses));
  });
  return seconds;
}

// out = bias + x op(w) through the bfloat16 layers' input projection (testing; AMX tiles or
// AVX512-BF16 dot products, whichever _step_gemm_bf16() names):
// x [M, K] bfloat16 read as it is; w float32 [N, K] (op(w) = w^T, rounded to bfloat16 when
// packed), or bfloat16 [R, K] packed as it is, op(w)'s N columns being `groups` blocks of
// N / groups rows of w, block g from row g * group_stride; bias [N] float32 or None; out
// [M, N] float32; rows may be strided, columns contiguous.
void step_gemm_bf16_rows(const at::Tensor& x, const at::Tensor& w,
                         const std::optional<at::Tensor>& bias, at::Tensor& out, int64_t groups,
                         int64_t group_stride, bool widened) {
  TORCH_CHECK(widened ? rnnfast::cpu::step_gemm_split_invariant_f32()
                      : rnnfast::cpu::bf16_kernels_usable(),
              "step_gemm_bf16_rows: needs AMX-BF16 or AVX512-BF16 (widened: the panel "
              "micro-kernel)");
  TORCH_CHECK(!widened || w.scalar_type() == at::kBFloat16,
              "step_gemm_bf16_rows: widened takes a bfloat16 w");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && out.dim() == 2, "step_gemm_bf16_rows: 2-d tensors");
  const bool w16 = w.scalar_type() == at::kBFloat16;
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && (w16 || w.scalar_type() == at::kFloat) &&
                  out.scalar_type() == at::kFloat,
              "step_gemm_bf16_rows: x bfloat16, w bfloat16 or float32, out float32");
  TORCH_CHECK(x.stride(1) == 1 && w.stride(1) == 1 && out.stride(1) == 1,
              "step_gemm_bf16_rows: columns must be contiguous");
  const int64_t M = x.size(0), K = x.size(1), N = out.size(1);
  TORCH_CHECK(groups >= 1 && N % groups == 0 && (w16 || (groups == 1 && w.size(0) == N)) &&
                  (groups - 1) * group_stride + N / groups <= w.size(0),
              "step_gemm_bf16_rows: bad groups");
  TORCH_CHECK(w.size(1) == K && out.size(0) == M, "step_gemm_bf16_rows: shapes do not match");
  TORCH_CHECK(M > 0 && N > 0 && K > 0, "step_gemm_bf16_rows: empty product");
  const float* b = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == N,
                "step_gemm_bf16_rows: bias [N] float32");
    b = bias->const_data_ptr<float>();
  }
  const auto pack = [&] {
    if (w16)
      return rnnfast::cpu::PackedWeight<float>(
          N, K, M, reinterpret_cast<const uint16_t*>(w.const_data_ptr<at::BFloat16>()), w.stride(0),
          groups, group_stride, widened ? 0 : 1);
    return rnnfast::cpu::PackedWeight<float>(true, N, K, M, w.const_data_ptr<float>(), w.stride(0),
                                             1, 0, 1);
  };
  const rnnfast::cpu::PackedWeight<float> pw = pack();
  pw.gemm_bf16(M, reinterpret_cast<const uint16_t*>(x.const_data_ptr<at::BFloat16>()), x.stride(0),
               b, out.data_ptr<float>(), out.stride(0));
}

// out = op(a) b (+ out with accumulate) through the blocked GEMM of the whole-sequence
// products at any size (testing): a [M, K] or, with trans_a, [K, M]; b [K, N]; out
// [M, N]; float32; rows may be strided, columns contiguous.
void blocked_gemm(const at::Tensor& a, const at::Tensor& b, bool trans_a, bool accumulate,
                  at::Tensor& out) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && out.dim() == 2, "blocked_gemm: 2-d tensors");
  TORCH_CHECK(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
                  out.scalar_type() == at::kFloat,
              "blocked_gemm: float32 tensors");
  TORCH_CHECK(a.stride(1) == 1 && b.stride(1) == 1 && out.stride(1) == 1,
              "blocked_gemm: columns must be contiguous");
  const int64_t M = trans_a ? a.size(1) : a.size(0), K = trans_a ? a.size(0) : a.size(1);
  const int64_t N = b.size(1);
  TORCH_CHECK(b.size(0) == K && out.size(0) == M && out.size(1) == N,
              "blocked_gemm: shapes do not match");
  rnnfast::cpu::blocked_sequence_gemm(trans_a, M, N, K, a.const_data_ptr<float>(), a.stride(0),
                                      b.const_data_ptr<float>(), b.stride(0), accumulate,
                                      out.data_ptr<float>(), out.stride(0));
}

// The CPU step loops' load monitor (csrc/cpu/layer.h StepLoopLoad) as a dict.
pybind11::dict step_loop_load() {
  const rnnfast::cpu::StepLoopLoad l = rnnfast::cpu::step_loop_load();
  pybind11::dict d;
  d["split_loops"] = l.split_loops;
  d["single_loops"] = l.single_loops;
  d["loaded_loops"] = l.loaded_loops;
  d["last_wait_fraction"] = l.last_wait_fraction;
  d["backoff_s"] = l.backoff_s;
  return d;
}

// csrc/core/cells.h as {name: {...}} (RNN tanh and relu share one operator).
pybind11::dict cell_specs() {
  pybind11::dict out;
  for (const auto& s : rnnfast::core::kCellSpecs) {
    pybind11::dict d;
    d["gates"] = s.gates;
    d["has_cell_state"] = s.has_cell_state;
    d["has_projection"] = s.has_projection;
    pybind11::list saved;
    for (int i = 0; i < s.num_saved; ++i)
      saved.append(pybind11::make_tuple(s.saved[i].name, s.saved[i].h_cols));
    d["saved"] = saved;
    d["num_bias_grads"] = s.num_bias_grads;
    out[s.name] = d;
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnfast's compiled core: registers the torch.ops.rnnfast operators.";
  m.def("_set_cuda_algorithm",
        [](int v) { rnnfast::core::cuda_algorithm_setting().store(v); }, pybind11::arg("value"),
        "The CUDA layers' forward algorithm (rnnfast.cuda_algorithm): 0 auto, 1 standard, "
        "2 persistent.");
  m.def("_cuda_algorithm", [] { return rnnfast::core::cuda_algorithm_setting().load(); });
  m.def("build_info", &build_info,
        "What this build of rnnfast contains: CUDA support and archs, the CPU kernel set "
        "chosen for this CPU, the GEMM backend, the torch version it was compiled against.");
  m.def("cell_specs", &cell_specs,
        "The cell-kind table of csrc/core/cells.h (gates, saved buffers, bias gradients), "
        "from which the fake kernels take their output shapes.");
  m.def("_step_gemm", &step_gemm, pybind11::arg("x"), pybind11::arg("w"),
        pybind11::arg("trans_w"), pybind11::arg("beta"), pybind11::arg("out"),
        pybind11::arg("bf16_terms") = 0, pybind11::arg("repeats") = 1, pybind11::arg("uses") = -1,
        "out = x @ (w.T if trans_w else w) + beta * out through the CPU step loops' GEMM "
        "(the panel micro-kernel where the CPU kernel set has one; bf16_terms 1 or 2: operands rounded to "
        "bfloat16 (x as one or a sum of two bfloat16 values), on AMX tiles where the CPU has them; "
        "a bfloat16 w with bf16_terms 0: widened into float32 panels; "
        "uses: the products the weight serves, -1 unknown; a float32 W^T serving at most 8 rows "
        "in all is read in place, unpacked; testing). Returns the seconds per "
        "product over `repeats` runs (beta 0).");
  m.def("_step_gemm_bf16_rows", &step_gemm_bf16_rows, pybind11::arg("x"), pybind11::arg("w"),
        pybind11::arg("bias"), pybind11::arg("out"), pybind11::arg("groups") = 1,
        pybind11::arg("group_stride") = 0, pybind11::arg("widened") = false,
        "out = bias + x @ w.T with x bfloat16 read as it is, through the bfloat16 "
        "layers' input projection; a bfloat16 w is packed as it is, its rows grouped as the "
        "step loops group a thread's gate rows (testing; CPUs with AMX-BF16 or AVX512-BF16); "
        "widened: w and the rows of x widened to float32 for the panel micro-kernel.");
  m.def("_step_gemm_bf16", &rnnfast::cpu::step_gemm_bf16,
        "The bfloat16 product kernel selected: 'amx' (tiles), 'avx512_bf16' (dot products) or "
        "'fp32' (none: float32 products, on widened operands or up-converted copies; "
        "_bf16_path says which a call takes).");
  m.def(
      "_select_bf16_kernel",
      [](const std::string& name, bool forced) {
        using rnnfast::cpu::Bf16Kernel;
        TORCH_CHECK(name == "amx" || name == "avx512_bf16" || name == "fp32" || name == "widened",
                    "_select_bf16_kernel: 'amx', 'avx512_bf16', 'widened' or 'fp32', not '", name,
                    "'");
        if (name == "widened") {
          if (!rnnfast::cpu::step_gemm_split_invariant_f32()) return false;
          rnnfast::cpu::bf16_select_widened();
          return true;
        }
        return rnnfast::cpu::bf16_select_kernel(name == "amx"           ? Bf16Kernel::kAmx
                                                : name == "avx512_bf16" ? Bf16Kernel::kDot
                                                                        : Bf16Kernel::kNone,
                                                forced);
      },
      pybind11::arg("name"), pybind11::arg("forced") = true,
      "Testing: the bfloat16 layers' products run on `name` from now on, if this CPU has it "
      "(returns whether it was selected): for every layer call, or (forced=False) where the "
      "CPU's own choice would use it (_bf16_kernels_for). 'widened': every call keeps the "
      "bfloat16 data path with float32 products (kernel sets with the panel micro-kernel); "
      "'fp32': every call runs the float32 path on up-converted copies, or (forced=False) as on "
      "a CPU without a bfloat16 kernel.");
  m.def("_reset_bf16_kernel", &rnnfast::cpu::bf16_reset_kernel,
        "Testing: the bfloat16 kernel selected at start-up again.");
  m.def(
      "_bf16_round_rows",
      [](const at::Tensor& x, bool native) {
        TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.stride(1) == 1,
                    "_bf16_round_rows: a 2-d float32 tensor with contiguous columns");
        TORCH_CHECK(!native || rnnfast::cpu::bf16_round_native(),
                    "_bf16_round_rows: native rounding needs AVX512-BF16");
        at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
        auto* dst = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
        const auto round = native ? &rnnfast::cpu::bf16_round_rows : &rnnfast::cpu::bf16_round_rows_portable;
        round(x.size(0), x.size(1), x.const_data_ptr<float>(), x.stride(0), dst, x.size(1));
        return out;
      },
      pybind11::arg("x"), pybind11::arg("native"),
      "Testing: x rounded to bfloat16 as the bfloat16 data path rounds its rows: by the CPU's "
      "AVX512-BF16 conversion (native) or in integer arithmetic (the portable rounding).");
  m.def("_bf16_round_native", &rnnfast::cpu::bf16_round_native,
        "Whether this CPU has the AVX512-BF16 conversion the bfloat16 data path rounds with "
        "(under the avx512 kernel set; else it rounds in integer arithmetic).");
  m.def("_bf16_half_panels", &rnnfast::cpu::bf16_half_panels_for, pybind11::arg("m_max"),
        pybind11::arg("n"), pybind11::arg("k"),
        "Whether a widened bfloat16 weight op(W) [k, n] used for at most m_max rows a call is "
        "packed as bfloat16 panels, widened in registers (the same bits as float32 panels).");
  m.def(
      "_set_bf16_half_panels",
      [](const std::string& mode) {
        using rnnfast::cpu::HalfPanels;
        TORCH_CHECK(mode == "auto" || mode == "always" || mode == "never",
                    "_set_bf16_half_panels: mode must be 'auto', 'always' or 'never', got '", mode, "'");
        rnnfast::cpu::set_bf16_half_panels(mode == "always" ? HalfPanels::kAlways
                                           : mode == "never" ? HalfPanels::kNever
                                                             : HalfPanels::kAuto);
      },
      pybind11::arg("mode"),
      "Testing and comparisons: which widened bfloat16 weights later calls pack as bfloat16 "
      "panels: 'auto' (the rule in build_info()['bf16_half_panels']), 'always' (up "
      "to 8 rows) or 'never'.");
  m.def("_bf16_dot_rate", &rnnfast::cpu::bf16_dot_rate,
        "VDPBF16PS's multiply-adds a second over FMA's on this CPU, measured once (0 without "
        "AVX512-BF16); the dot products serve every bfloat16 call at 1.5 or more.");
  m.def("_set_bf16_dot_rate", &rnnfast::cpu::bf16_set_dot_rate, pybind11::arg("rate"),
        "Testing: replaces the measured _bf16_dot_rate() (a negative rate: measure again on "
        "next use).");
  // (w_hh_bytes: a thread's slice of W_hh in float32; by default far beyond any cache, so
  // that the batch alone decides.)
  constexpr int64_t kBeyondCaches = int64_t(1) << 40;
  m.def("_bf16_path", &rnnfast::cpu::bf16_path_name, pybind11::arg("plain_rnn"),
        pybind11::arg("batch"), pybind11::arg("w_hh_bytes") = kBeyondCaches,
        "How a bfloat16 layer call (the Elman RNN or not, `batch` rows a step, a thread's "
        "slice of W_hh taking w_hh_bytes in float32) runs: 'kernels' "
        "(its products on the selected bfloat16 kernel), 'widened' (the bfloat16 data path "
        "with float32 products on widened operands) or 'copies' (the float32 path on "
        "up-converted copies).");
  m.def("_bf16_kernels_for", &rnnfast::cpu::bf16_kernels_for, pybind11::arg("plain_rnn"),
        pybind11::arg("batch"), pybind11::arg("w_hh_bytes") = kBeyondCaches,
        "Whether a bfloat16 layer call (the Elman RNN or not, `batch` rows a step, a thread's "
        "slice of W_hh taking w_hh_bytes in float32) runs its products on the selected "
        "bfloat16 kernel.");
  m.def("_w_hh_slice_bytes", &rnnfast::cpu::w_hh_slice_bytes, pybind11::arg("gate_rows"),
        pybind11::arg("P"),
        "The float32 bytes of one intra-op thread's slice of a W_hh [gate_rows, P] (what "
        "_bf16_kernels_for's w_hh_bytes is for a layer call).");
  m.def("_step_loop_load", &step_loop_load,
        "The CPU step loops' load monitor: loops split across threads, loops run on one "
        "thread because the last split loop found its threads not all running, split "
        "loops that found so, the last split loop's largest wait share, the back-off (s).");
  m.def("_reset_step_loop_load", &rnnfast::cpu::reset_step_loop_load,
        "Forget the load seen so far: the next step loop splits again; counters to zero.");
  m.def("_hold_step_loops_on_one_thread", &rnnfast::cpu::hold_step_loops_on_one_thread,
        pybind11::arg("seconds"),
        "Testing: the step loops that may drop to one thread under load (float32 without "
        "projection, rnnfast's step GEMM) do so for the next `seconds`.");
  m.def("_hold_step_loops_split", &rnnfast::cpu::hold_step_loops_split, pybind11::arg("seconds"),
        "Testing: the step loops split across threads for the next `seconds` whatever the "
        "load, until _reset_step_loop_load().");
  m.def("_held_panel_buffer_bytes", &rnnfast::cpu::held_panel_buffer_bytes,
        "Testing: bytes of packed-weight buffers that forward step loops released for the next "
        "forward to reuse (freed when a backward starts).");
  m.def("_release_panel_buffers", &rnnfast::cpu::release_panel_buffers,
        "Testing and comparisons: frees the packed-weight buffers held for the next forward.");
  m.def("_set_backward_chunk_bytes", &rnnfast::cpu::set_backward_chunk_bytes, pybind11::arg("bytes"),
        "Testing and comparisons: the float32/float64 backward holds its gate gradients in "
        "chunks of about 1024 rows taking at most `bytes` (0: the default, 16 MiB); a negative "
        "`bytes`: the whole sequence's at once.");
  m.def("_backward_chunk_steps", &rnnfast::cpu::backward_chunk_steps, pybind11::arg("T"),
        pybind11::arg("B"), pybind11::arg("row_bytes"), pybind11::arg("step_flops"),
        "Steps per chunk of the float32/float64 backward's gate gradients for T steps of B rows "
        "(row_bytes of gate gradients a row, step_flops of step products), 0: the whole sequence.");
  m.def("_judge_step_loop", &rnnfast::cpu::judge_step_loop, pybind11::arg("wait_fraction"),
        pybind11::arg("loop_s"),
        "Testing: the load monitor judges a split loop of `loop_s` seconds whose most "
        "stalled thread waited for `wait_fraction` of it.");
  m.def("_blocked_gemm", &blocked_gemm, pybind11::arg("a"), pybind11::arg("b"),
        pybind11::arg("trans_a"), pybind11::arg("accumulate"), pybind11::arg("out"),
        "out = (a.T if trans_a else a) @ b (+ out) through the blocked GEMM of the "
        "whole-sequence products, at any size (testing; CPU kernel sets that have one).");
}
