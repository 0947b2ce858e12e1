// The CPU pointwise kernels compiled for the avx512 instruction set (see pointwise.h).
//
// Everything shared between instruction sets (system headers, cell_math.h,
// pointwise.h) is included BEFORE the target pragma, so that no inline function
// that the linker could merge across ISA copies is compiled for avx512; the code
// after the pragma lives in namespace rnnfast::cpu::avx512.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../kernels/cell_math.h"
#include "pointwise.h"

#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi2")
#define RNNFAST_ISA avx512
#include "pointwise_impl.h"

namespace rnnfast {
namespace cpu {
namespace avx512 {
extern const CpuKernels kKernels = make_kernels("avx512");
}  // namespace avx512
}  // namespace cpu
}  // namespace rnnfast
#endif  // __x86_64__
