// Branch-free float32 activations for the CPU kernels.
//
// Written as straight-line scalar code with no calls and no branches, so that the
// compiler vectorises the pointwise loops that call them (AVX-512 / AVX2 / SSE, see
// csrc/cpu/isa_*.cpp). Accuracy: exp within 2 ulp on [-87, 88]; sigmoid and tanh
// within a few ulp over the whole range (tanh uses a minimax odd polynomial for
// |x| < 0.625, where 1 - 2/(e^2x + 1) would cancel). NaN propagates: NaN in gives
// NaN out, as with the C library (no fmin/fmax, which would swallow NaN).
//
// float64 keeps the C library: it is the dtype of gradcheck.
//
// This header is compiled once per instruction set (csrc/cpu/isa_*.cpp), each time
// inside its own namespace `rnnfast::cpu::RNNFAST_ISA`, so that the AVX-512, AVX2
// and generic copies of these inline functions never get merged by the linker.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#ifndef RNNFAST_ISA
#error "define RNNFAST_ISA (the per-ISA namespace) before including fast_math.h"
#endif

namespace rnnfast {
namespace cpu {
namespace RNNFAST_ISA {

inline float fast_exp(float x) {
  // Clamp to the normal range, keeping NaN (comparisons with NaN are false).
  x = x < -87.33654f ? -87.33654f : x;
  x = x > 88.37626f ? 88.37626f : x;
  // x = n ln2 + r, |r| <= ln2 / 2 (Cody-Waite split of ln2).
  const float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  // exp(r) by the Cephes minimax polynomial.
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  // Scale by 2^n through the exponent bits. NaN gives an arbitrary n, but p is NaN.
  const int32_t e = static_cast<int32_t>(n) + 127;
  const uint32_t bits = static_cast<uint32_t>(e) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float fast_sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }

inline float fast_tanh(float x) {
  const float ax = x < 0.0f ? -x : x;
  // Large |x|: tanh = 1 - 2 / (exp(2|x|) + 1), sign restored below.
  const float big = 1.0f - 2.0f / (fast_exp(2.0f * ax) + 1.0f);
  // Small |x|: odd minimax polynomial (Cephes tanhf).
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;
  const float signed_big = x < 0.0f ? -big : big;
  // `ax < 0.625f` is false for NaN, and `big` is NaN then.
  return ax < 0.625f ? small : signed_big;
}

// Activation policies for cell:: functions.
struct FastAct {
  static float sigmoid(float x) { return fast_sigmoid(x); }
  static float tanh(float x) { return fast_tanh(x); }
  static double sigmoid(double x) { return 1.0 / (1.0 + ::exp(-x)); }
  static double tanh(double x) { return ::tanh(x); }
};

}  // namespace RNNFAST_ISA
}  // namespace cpu
}  // namespace rnnfast
