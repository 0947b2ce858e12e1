// The Python extension module rnnfast._C. Importing it loads the operator
// registrations of ops.cpp (linked into the same library) and exposes build facts.
#include <torch/extension.h>

#include "build_info.h"
#include "simt/emulation.h"

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  for (const auto& kv : rnnfast::build_info()) info[kv.first.c_str()] = kv.second;
  // Booleans and numbers as Python values, not strings.
  info["cuda"] = rnnfast::built_with_cuda();
  info["openmp"] = info["openmp"].cast<std::string>() == "true";
  info["threads"] = std::stoi(info["threads"].cast<std::string>());
  info["simt_half"] = rnnfast::simt_has_half();
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnfast's compiled core: registers the torch.ops.rnnfast operators.";
  m.def("build_info", &build_info,
        "What this build of rnnfast contains: CUDA support and archs, the CPU kernel set "
        "chosen for this CPU, the GEMM backend, the torch version it was compiled against.");
  m.def("_simt_emulation", &rnnfast::simt_emulation,
        "Whether CPU tensors run through the CUDA kernels in the SIMT emulator (testing).");
  m.def("_set_simt_emulation", &rnnfast::set_simt_emulation, pybind11::arg("on"),
        "Route CPU tensors through the CUDA kernels in the SIMT emulator (testing only; "
        "use rnnfast.testing.emulate_cuda()).");
}
