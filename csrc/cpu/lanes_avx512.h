// 16 float lanes for the AVX-512 set's forward pointwise loops (pointwise_impl.h),
// compiled by csrc/cpu/isa_avx512.cpp under its target pragma inside namespace
// rnnfast::cpu::RNNFAST_ISA (<immintrin.h> is included by that file).
//
// F16 is a float32 vector with the arithmetic the cell maths (cell_math.h) uses, so
// cell::lstm_forward_unit<F16, VecAct> runs the same algebra 16 units at a time. What
// differs from the scalar FastAct (fast_math.h) that the compiler vectorises elsewhere:
// the reciprocals are vrcp14ps with one Newton step (relative error about 2^-27, against
// vdivps, which was the hottest instruction of the LSTM's forward pointwise pass), 2^n is
// applied with vscalefps, and tanh is a rational approximation (VecAct::tanh) at half the
// cost of fast_math.h's exp-or-polynomial split. The exp polynomial and its clamping are
// fast_math.h's, so sigmoid agrees with the scalar set to about an ulp and tanh to a few
// (fast_math.h's own bound). NaN propagates as there.
#pragma once

namespace rnnfast {
namespace cpu {
namespace RNNFAST_ISA {

#define RNNFAST_HAVE_F16_LANES 1

struct F16 {
  __m512 v;
  F16() = default;
  F16(__m512 x) : v(x) {}                      // NOLINT: implicit, as a scalar would be
  F16(float x) : v(_mm512_set1_ps(x)) {}       // NOLINT: T(1) in the cell maths
  F16& operator+=(F16 b) {
    v = _mm512_add_ps(v, b.v);
    return *this;
  }
};

// (Free functions: GCC does not give in-class friend definitions the target pragma.)
inline F16 operator+(F16 a, F16 b) { return _mm512_add_ps(a.v, b.v); }
inline F16 operator-(F16 a, F16 b) { return _mm512_sub_ps(a.v, b.v); }
inline F16 operator*(F16 a, F16 b) { return _mm512_mul_ps(a.v, b.v); }

// exp as fast_exp (fast_math.h), 16 lanes.
inline __m512 exp16(__m512 x) {
  // Clamp, keeping NaN: max/min return their second operand when either is NaN.
  x = _mm512_max_ps(_mm512_set1_ps(-87.33654f), x);
  x = _mm512_min_ps(_mm512_set1_ps(88.37626f), x);
  const __m512 n = _mm512_roundscale_ps(
      _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
      _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// 1 / d for d >= 1 (or NaN): vrcp14ps and one Newton step.
inline __m512 recip16(__m512 d) {
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0f)), r);
}

struct VecAct {
  static F16 sigmoid(F16 x) {
    return recip16(_mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), x.v))));
  }
  // tanh as x P(x^2) / Q(x^2), a rational minimax approximation (degree 13 over 6) on
  // |x| <= 7.9053111 (where it reaches 1 to float precision; x is clamped there): within
  // 4 ulp over the whole range, relative accuracy kept near 0 (P(0) / Q(0) = 1 - 1.3e-7),
  // in 17 vector operations instead of an exp, a reciprocal and a polynomial blended.
  static F16 tanh(F16 x) {
    const __m512 lim = _mm512_set1_ps(7.90531110763549805f);
    // Clamp, keeping NaN (max/min return their second operand when either is NaN).
    const __m512 c = _mm512_min_ps(lim, _mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), lim), x.v));
    const __m512 z = _mm512_mul_ps(c, c);
    __m512 p = _mm512_set1_ps(-2.76076847742355e-16f);
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(2.00018790482477e-13f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-8.60467152213735e-11f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(5.12229709037114e-08f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.48572235717979e-05f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(6.37261928875436e-04f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(4.89352455891786e-03f));
    p = _mm512_mul_ps(p, c);
    __m512 q = _mm512_set1_ps(1.19825839466702e-06f);
    q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(1.18534705686654e-04f));
    q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(2.26843463243900e-03f));
    q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(4.89352518554385e-03f));
    // p / q: vrcp14ps and one Newton step on the quotient (q > 0 is far from 0 and inf).
    const __m512 r = _mm512_rcp14_ps(q);
    const __m512 y = _mm512_mul_ps(p, r);
    return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(q, y, p), y);
  }
};

// The lanes policy of pointwise_impl.h: 16 units per iteration, the last iteration
// masked to the units left.
struct F16Lanes {
  using V = F16;
  using Act = VecAct;
  static constexpr int64_t kWidth = 16;
  using Mask = __mmask16;
  static Mask mask(int64_t left) {
    return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
  }
  static V load(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, V v, Mask m) { _mm512_mask_storeu_ps(p, m, v.v); }
};

}  // namespace RNNFAST_ISA
}  // namespace cpu
}  // namespace rnnfast
