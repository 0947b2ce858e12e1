// The Python extension module rnnfast._simt_emu (test-only): importing it registers
// torch.ops.rnnfast_emu.*, the CUDA operators run in the SIMT emulator on CPU
// tensors (emulated_ops.cpp). Used through rnnfast.testing.emulate_cuda(); it also
// exposes the emulator's traffic counters, its device model and the CUDA algorithm
// setting of the emulated operators.
#include <torch/extension.h>

#include "../core/cuda_algorithm.h"
#include "simt.h"

// emulated_ops.cpp
std::tuple<bool, std::string, int64_t, int64_t, int64_t, int, size_t, bool> rnnfast_persistent_plan(
    int kind, int elem_bytes, int64_t B, int64_t H, int64_t P, bool backward);

namespace {

namespace py = pybind11;

py::dict model_dict(const simt::DeviceModel& m) {
  py::dict d;
  d["sm_count"] = m.sm_count;
  d["max_threads_per_sm"] = m.max_threads_per_sm;
  d["max_blocks_per_sm"] = m.max_blocks_per_sm;
  d["regs_per_sm"] = m.regs_per_sm;
  d["smem_per_sm"] = m.smem_per_sm;
  d["smem_per_block_optin"] = m.smem_per_block_optin;
  return d;
}

void set_model(const py::dict& d) {
  simt::DeviceModel m = simt::device_model();
  for (const auto& kv : d) {
    const std::string key = kv.first.cast<std::string>();
    const auto value = kv.second.cast<int64_t>();
    if (key == "sm_count") {
      m.sm_count = static_cast<int>(value);
    } else if (key == "max_threads_per_sm") {
      m.max_threads_per_sm = static_cast<int>(value);
    } else if (key == "max_blocks_per_sm") {
      m.max_blocks_per_sm = static_cast<int>(value);
    } else if (key == "regs_per_sm") {
      m.regs_per_sm = static_cast<int>(value);
    } else if (key == "smem_per_sm") {
      m.smem_per_sm = static_cast<size_t>(value);
    } else if (key == "smem_per_block_optin") {
      m.smem_per_block_optin = static_cast<size_t>(value);
    } else {
      throw py::key_error("unknown device model field '" + key + "'");
    }
  }
  simt::set_device_model(m);
}

py::tuple take_counts() {
  std::vector<simt::LaunchCount> launches;
  std::vector<simt::GemmCount> gemms;
  simt::take_counts(launches, gemms);
  py::list ls, gs;
  for (const auto& c : launches) {
    py::dict d;
    d["name"] = c.name;
    d["grid"] = py::make_tuple(c.grid[0], c.grid[1], c.grid[2]);
    d["block"] = py::make_tuple(c.block[0], c.block[1], c.block[2]);
    d["cooperative"] = c.cooperative;
    d["shared_bytes"] = c.shared_bytes;
    if (c.bytes_counted) {
      d["global_bytes_read"] = c.global_bytes_read;
      d["global_bytes_written"] = c.global_bytes_written;
    } else {
      d["global_bytes_read"] = py::none();
      d["global_bytes_written"] = py::none();
    }
    d["grid_syncs"] = c.grid_syncs;
    d["block_barriers"] = c.block_barriers;
    d["mma_syncs"] = c.mma_syncs;
    ls.append(d);
  }
  for (const auto& g : gemms) {
    py::dict d;
    d["op"] = g.what;
    d["M"] = g.m;
    d["N"] = g.n;
    d["K"] = g.k;
    gs.append(d);
  }
  return py::make_tuple(ls, gs);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnfast's CUDA kernels in the SIMT emulator (testing): torch.ops.rnnfast_emu.*";
  m.def("has_half", [] { return SIMT_HAS_HALF != 0; },
        "Whether the emulator was built with CUDA's __half and __nv_bfloat16 (cuda_fp16.h "
        "found at build time); without them it runs float32 and float64 only.");
  m.def("set_counting", &simt::set_counting, py::arg("on"),
        "Record every launch (and the GEMMs host code reports) from now on, or stop.");
  m.def("take_counts", &take_counts,
        "(launches, gemms) recorded since the last call: lists of dicts.");
  m.def("device_model", [] { return model_dict(simt::device_model()); },
        "The modelled device that launches are checked against, as a dict.");
  m.def("h100_model", [] { return model_dict(simt::h100_model()); },
        "The default device model (H100-like), as a dict.");
  m.def("set_device_model", &set_model, py::arg("fields"),
        "Change fields of the modelled device (keys as device_model() returns).");
  m.def("_set_cuda_algorithm",
        [](int v) { rnnfast::core::cuda_algorithm_setting().store(v); }, py::arg("value"),
        "The emulated operators' forward algorithm: 0 auto, 1 standard, 2 persistent.");
  m.def("_cuda_algorithm", [] { return rnnfast::core::cuda_algorithm_setting().load(); });
  m.def(
      "persistent_plan",
      [](int kind, int elem_bytes, int64_t B, int64_t H, int64_t P, bool backward) {
        const auto [ok, why, U, V, blocks, threads, smem, auto_takes] =
            rnnfast_persistent_plan(kind, elem_bytes, B, H, P, backward);
        py::dict d;
        d["ok"] = ok;
        d["why"] = why;
        d["U"] = U;
        d["V"] = V;
        d["blocks"] = blocks;
        d["threads"] = threads;
        d["shared_bytes"] = smem;
        d["auto"] = auto_takes;
        return d;
      },
      py::arg("kind"), py::arg("elem_bytes"), py::arg("B"), py::arg("H"), py::arg("P"),
      py::arg("backward") = false,
      "The persistent kernels' plan on the modelled device: kind 0 LSTM, 1 GRU, 2/3 RNN; "
      "P != H means an LSTM with a projection.");
  m.def("_persistent_drops_grid_syncs",
        [](bool drop) { rnnfast::core::persistent_drops_grid_syncs().store(drop); },
        py::arg("drop"),
        "Test-only: the persistent kernels leave out their grid syncs (a broken kernel).");
}
