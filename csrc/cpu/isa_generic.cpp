// The CPU pointwise kernels compiled for the generic instruction set (see pointwise.h).
//
// Everything shared between instruction sets (system headers, cell_math.h,
// pointwise.h) is included BEFORE the target pragma, so that no inline function
// that the linker could merge across ISA copies is compiled for generic; the code
// after the pragma lives in namespace rnnfast::cpu::generic.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../kernels/cell_math.h"
#include "pointwise.h"


// Baseline instruction set of the build: no target pragma.
#define RNNFAST_ISA generic
#include "pointwise_impl.h"

namespace rnnfast {
namespace cpu {
namespace generic {
extern const CpuKernels kKernels = make_kernels("generic");
}  // namespace generic
}  // namespace cpu
}  // namespace rnnfast

