// Row-major GEMM on raw pointers for the CPU kernels.
//
//   C[M, N] = alpha * op(A) * op(B) + beta * C
//   op(A) is [M, K]: A itself (lda >= K) or, with trans_a, the transpose of a [K, M]
//   matrix (lda >= M); likewise op(B) is [K, N].
//
// Calls the BLAS that torch itself links (MKL's sgemm_/dgemm_ exported by
// libtorch_cpu) with no allocation; falls back to at::mm_out on wrapped buffers when
// that BLAS is absent. Threads: the BLAS uses torch's intra-op thread count.
#pragma once

#include <cstdint>

namespace rnnfast {
namespace cpu {

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// Which GEMM backs gemm(): "blas (sgemm_/dgemm_ from libtorch)" or "aten".
const char* gemm_backend();

}  // namespace cpu
}  // namespace rnnfast
