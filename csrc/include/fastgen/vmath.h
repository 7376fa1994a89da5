// Branch-free float math that GCC vectorises (CPU kernels): std::exp / std::erf are scalar libm
// calls here (glibc's vector variants are only declared under -ffast-math), so loops calling them
// would not vectorise. Used by csrc/cpu/sampler_update.cpp (exp) and csrc/cpu/group_norm.cpp
// (SiLU, GELU and their derivatives).
#pragma once
#include <algorithm>
#include <cstdint>

#include "fastgen/convert.h"
#include "fastgen/macros.h"

namespace fastgen {

// e^x. x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two so n ln2 is exact), e^r by Taylor to r^7
// (truncation < 5e-9 relative), 2^n as two exponent-field factors so every n in [-150, 128] is
// exact: overflow gives +inf, underflow 0 (denormals are rounded through one extra step), NaN stays
// NaN. Within 2 ulp of std::exp (tests/test_sampler_update.py checks [-110, 90]).
FG_ALWAYS_INLINE float exp_poly(float x) {
  const float xc = std::min(std::max(x, -104.0f), 88.75f);  // NaN passes through
  constexpr float kRound = 12582912.0f;                      // 1.5 * 2^23: x + kRound - kRound = rint(x)
  float nf = (xc * 1.44269504f + kRound) - kRound;
  nf = nf == nf ? nf : 0.0f;                                 // keep the int conversion defined for NaN
  const float r = (xc - nf * 0.693359375f) + nf * 2.12194440e-4f;
  const float p =
      1.0f + r * (1.0f + r * (0.5f + r * (1.6666667e-1f + r * (4.1666667e-2f + r * (8.3333333e-3f + r * (1.3888889e-3f + r * 1.9841270e-4f))))));
  const int32_t n = static_cast<int32_t>(nf);
  const int32_t n1 = n >> 1, n2 = n - n1;
  const float y = p * bits_to_float(static_cast<uint32_t>(n1 + 127) << 23) *
                  bits_to_float(static_cast<uint32_t>(n2 + 127) << 23);
  return x == x ? y : x;
}

// e^x for activations, about twice as fast as exp_poly: the argument is clamped to [-87, 88]
// (so e^x saturates at e^-87 / e^88 instead of reaching 0 / inf: invisible in sigmoid, SiLU and
// GELU, which only add 1 to it or multiply it by a vanishing factor), 2^n is one exponent-field
// factor, e^r is Taylor to r^6 (truncation < 1.3e-7 relative): within 3 ulp of std::exp on
// [-87, 88]. NaN stays NaN.
FG_ALWAYS_INLINE float exp_act(float x) {
  const float xc = std::min(std::max(x, -87.0f), 88.0f);  // NaN passes through (and stays NaN)
  // t = 1.5 * 2^23 + rint(x / ln2): its low mantissa bits hold n, read with integer ops (no
  // float -> int conversion, which would be undefined for NaN)
  const float t = xc * 1.44269504f + 12582912.0f;
  const float nf = t - 12582912.0f;
  const float r = (xc - nf * 0.693359375f) + nf * 2.12194440e-4f;
  const float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.6666667e-1f + r * (4.1666667e-2f +
                  r * (8.3333333e-3f + r * 1.3888889e-3f)))));
  return p * bits_to_float((float_to_bits(t) - 0x4B400000u + 127u) << 23);
}

// 1 / (1 + e^-z): limits 0 (below 1.7e-38 for z < -87) and 1, NaN stays NaN.
FG_ALWAYS_INLINE float sigmoid_poly(float z) { return 1.0f / (1.0f + exp_act(-z)); }

// The standard normal CDF Phi(z) = erfc(-z / sqrt2) / 2, within ~1e-7 absolute (and accurate
// relative to its size in the lower tail, where GELU's z Phi(z) is tiny). With a = |z| / sqrt2:
//   a < 1:   erf(a) = a P(a^2), P of degree 6 (least-squares fit on Chebyshev nodes, error 3e-9)
//   1 <= a:  erfc(a) = e^(-a^2) Q(1/a), Q of degree 9 fitted to erfc(a) e^(a^2) on a in [1, 4]
//            (error 6e-9 after the e^(-a^2) factor); 0 from a = 4.5 on (erfc(4.5) < 2e-10).
// Coefficients fitted for fastgen with numpy/mpmath (see docs/ops.md, group_norm).
FG_ALWAYS_INLINE float normal_cdf(float z) {
  const float a = std::min(std::fabs(z) * 0.70710678f, 4.5f);
  const float u = a * a;
  const float pa = 1.12837916f + u * (-0.376126225f + u * (0.112835680f + u * (-0.0268535394f +
                   u * (0.00518838265f + u * (-0.000801456612f + u * 7.87898950e-5f)))));
  const float erf_small = a * pa;
  const float v = 1.0f / std::max(a, 1.0f);
  const float q = 1.30583930e-4f + v * (0.561607416f + v * (0.0216981421f + v * (-0.380596173f +
                  v * (0.242343742f + v * (0.218937479f + v * (-0.516698790f + v * (0.425131232f +
                  v * (-0.174941076f + v * 0.0299710359f))))))));
  const float erfc_big = exp_act(-u) * q;
  const float erfc_a = a < 1.0f ? 1.0f - erf_small : (a < 4.5f ? erfc_big : 0.0f);  // erfc(|z| / sqrt2)
  const float lower = 0.5f * erfc_a;                               // Phi(-|z|)
  const float phi = a < 1.0f ? (z >= 0.0f ? 0.5f + 0.5f * erf_small : 0.5f - 0.5f * erf_small)
                             : (z >= 0.0f ? 1.0f - lower : lower);
  return z == z ? phi : z;
}

// Activation codes shared with the torch layer and the Triton kernels: 0 none, 1 SiLU, 2 GELU (erf).
enum : int { kActNone = 0, kActSilu = 1, kActGelu = 2 };

// act(z) and act'(z).
template <int ACT>
FG_ALWAYS_INLINE float act_fwd(float z) {
  if constexpr (ACT == kActSilu) return z / (1.0f + exp_act(-z));
  else if constexpr (ACT == kActGelu) return z * normal_cdf(z);
  else return z;
}

template <int ACT>
FG_ALWAYS_INLINE float act_grad(float z) {
  if constexpr (ACT == kActSilu) {
    const float s = sigmoid_poly(z);
    return s * (1.0f + z * (1.0f - s));
  } else if constexpr (ACT == kActGelu) {
    // Phi(z) + z phi(z), phi(z) = e^(-z^2/2) / sqrt(2 pi)
    return normal_cdf(z) + z * 0.398942280f * exp_act(-0.5f * z * z);
  } else {
    return 1.0f;
  }
}

}  // namespace fastgen
