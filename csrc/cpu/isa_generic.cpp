// The CPU pointwise kernels compiled for the generic instruction set (see pointwise.h).
//
// System headers and pointwise.h (declarations) are included BEFORE the target
// pragma, so that no inline function the linker could merge across ISA copies is
// compiled for generic. The cell maths (cell_math.h) comes AFTER it: its templates are
// instantiated here with this ISA's own activation policy (distinct functions per
// ISA), and they must carry the target to inline that policy's vector code.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "pointwise.h"


// Baseline instruction set of the build: no target pragma.
#define RNNFAST_ISA generic
#include "pointwise_impl.h"

namespace rnnfast {
namespace cpu {
namespace generic {
constinit const CpuKernels kKernels = make_kernels("generic");
}  // namespace generic
}  // namespace cpu
}  // namespace rnnfast

