// Facts about this build of rnnfast, for the Python module and for C++ users.
#pragma once

#include <map>
#include <string>

namespace rnnfast {

// version, cuda, cuda_archs, cpu_kernels, gemm, threads, openmp, torch_compiled.
std::map<std::string, std::string> build_info();
bool built_with_cuda();

}  // namespace rnnfast
