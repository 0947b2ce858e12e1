// The CPU pointwise kernels compiled for the avx512 instruction set (see pointwise.h).
//
// System headers and pointwise.h (declarations) are included BEFORE the target
// pragma, so that no inline function the linker could merge across ISA copies is
// compiled for avx512. The cell maths (cell_math.h) comes AFTER it: its templates are
// instantiated here with this ISA's own activation policy (distinct functions per
// ISA), and they must carry the target to inline that policy's vector code.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "pointwise.h"

#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi2")
#define RNNFAST_ISA avx512
#include "lanes_avx512.h"
#include "pointwise_impl.h"
#include "panel_gemm_avx512_impl.h"

namespace rnnfast {
namespace cpu {
namespace avx512 {
constinit const CpuKernels kKernels = make_kernels("avx512", &panel_gemm_f32, &pack_panel_f32, &blocked_gemm_f32,
                                                   /*blocked_min_n=*/16,
                                                   /*blocked_min_mnk_log2=*/24, &panel_gemm_bf16w);
}  // namespace avx512
}  // namespace cpu
}  // namespace rnnfast
#endif  // __x86_64__
