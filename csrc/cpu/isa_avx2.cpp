// The CPU pointwise kernels compiled for the avx2 instruction set (see pointwise.h).
//
// Everything shared between instruction sets (system headers, cell_math.h,
// pointwise.h) is included BEFORE the target pragma, so that no inline function
// that the linker could merge across ISA copies is compiled for avx2; the code
// after the pragma lives in namespace rnnfast::cpu::avx2.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../kernels/cell_math.h"
#include "pointwise.h"

#if defined(__x86_64__)
#pragma GCC target("avx2,fma,bmi2")
#define RNNFAST_ISA avx2
#include "pointwise_impl.h"

namespace rnnfast {
namespace cpu {
namespace avx2 {
extern const CpuKernels kKernels = make_kernels("avx2");
}  // namespace avx2
}  // namespace cpu
}  // namespace rnnfast
#endif  // __x86_64__
