// The activation table of StyleGAN2's bias_act, shared by the CPU kernels that end in it
// (csrc/cpu/bias_act.cpp, csrc/cpu/modulated_bias_act.cpp): codes, act(z) and its first and second
// derivatives as branch-free fp32 math that GCC vectorises (fastgen/vmath.h's exp and normal CDF).
// Everything is always_inline so that it is compiled into each ISA clone of the callers.
#pragma once
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "fastgen/macros.h"
#include "fastgen/vmath.h"

namespace fastgen {
namespace cpu {

// Activation codes shared with fastgen/ops/bias_act.py (ACTIVATIONS) and the Triton kernels.
enum : int {
  kBaLinear = 0, kBaRelu = 1, kBaLrelu = 2, kBaTanh = 3, kBaSigmoid = 4, kBaElu = 5, kBaSelu = 6,
  kBaSilu = 7, kBaGelu = 8
};

inline constexpr float kSeluLambda = 1.0507009873554805f, kSeluAlpha = 1.6732632423543772f;

// tanh: odd Taylor polynomial near 0 (no cancellation), 1 - 2 / (e^2z + 1) elsewhere.
FG_ALWAYS_INLINE float tanh_poly(float z) {
  const float z2 = z * z;
  const float small = z * (1.0f + z2 * (-0.333333333f + z2 * (0.133333333f + z2 * (-0.0539682540f + z2 * 0.0218694885f))));
  const float big = 1.0f - 2.0f / (exp_act(2.0f * z) + 1.0f);
  return std::fabs(z) < 0.125f ? small : big;
}

// act(z), act'(z), act''(z) (ORDER 0, 1, 2); alpha: lrelu slope / elu scale.
template <int ACT, int ORDER>
FG_ALWAYS_INLINE float act_d(float z, float alpha) {
  const bool pos = z > 0.0f;
  if constexpr (ACT == kBaLinear) {
    return ORDER == 0 ? z : (ORDER == 1 ? 1.0f : 0.0f);
  } else if constexpr (ACT == kBaRelu) {
    return ORDER == 0 ? (pos ? z : 0.0f) : (ORDER == 1 ? (pos ? 1.0f : 0.0f) : 0.0f);
  } else if constexpr (ACT == kBaLrelu) {
    return ORDER == 0 ? (pos ? z : alpha * z) : (ORDER == 1 ? (pos ? 1.0f : alpha) : 0.0f);
  } else if constexpr (ACT == kBaTanh) {
    const float t = tanh_poly(z);
    return ORDER == 0 ? t : (ORDER == 1 ? 1.0f - t * t : -2.0f * t * (1.0f - t * t));
  } else if constexpr (ACT == kBaSigmoid) {
    const float s = sigmoid_poly(z);
    return ORDER == 0 ? s : (ORDER == 1 ? s * (1.0f - s) : s * (1.0f - s) * (1.0f - 2.0f * s));
  } else if constexpr (ACT == kBaElu || ACT == kBaSelu) {
    const float sc = ACT == kBaSelu ? kSeluLambda : 1.0f;
    const float al = ACT == kBaSelu ? kSeluAlpha : alpha;
    const float e = exp_act(std::min(z, 0.0f));
    if constexpr (ORDER == 0) return sc * (pos ? z : al * (e - 1.0f));
    else if constexpr (ORDER == 1) return sc * (pos ? 1.0f : al * e);
    else return pos ? 0.0f : sc * al * e;
  } else if constexpr (ACT == kBaSilu) {
    const float s = sigmoid_poly(z);
    if constexpr (ORDER == 0) return z * s;
    else if constexpr (ORDER == 1) return s * (1.0f + z * (1.0f - s));
    else return s * (1.0f - s) * (2.0f + z * (1.0f - 2.0f * s));
  } else {  // GELU (erf): z Phi(z); Phi + z phi; phi (2 - z^2)
    if constexpr (ORDER == 0) return z * normal_cdf(z);
    const float phi = 0.398942280f * exp_act(-0.5f * z * z);
    if constexpr (ORDER == 1) return normal_cdf(z) + z * phi;
    else return phi * (2.0f - z * z);
  }
}

// y = clamp(act(z) gain, -clamp, clamp) (clamp < 0: none).
template <int ACT>
FG_ALWAYS_INLINE float act_forward(float z, float alpha, float gain, float clamp) {
  const float y = act_d<ACT, 0>(z, alpha) * gain;
  return clamp >= 0.0f ? std::min(std::max(y, -clamp), clamp) : y;
}

// gain act^(ORDER)(z) m with m = [|act(z) gain| <= clamp] (ORDER 1 or 2): the factor the upstream
// gradient is multiplied by. CLAMP = false skips act(z) (no clamp: m = 1).
template <int ACT, int ORDER, bool CLAMP = true>
FG_ALWAYS_INLINE float act_grad_factor(float z, float alpha, float gain, float clamp) {
  if constexpr (CLAMP) {
    const float y = act_d<ACT, 0>(z, alpha) * gain;
    const float m = (clamp < 0.0f || std::fabs(y) <= clamp) ? gain : 0.0f;
    return m * act_d<ACT, ORDER>(z, alpha);
  } else {
    return gain * act_d<ACT, ORDER>(z, alpha);
  }
}

// f(std::integral_constant<int, ACT>{}) for a run-time activation code (f: an always_inline lambda).
template <typename F>
FG_ALWAYS_INLINE void act_dispatch(int act, const F& f) {
  switch (act) {
    case kBaLinear: f(std::integral_constant<int, kBaLinear>{}); break;
    case kBaRelu: f(std::integral_constant<int, kBaRelu>{}); break;
    case kBaLrelu: f(std::integral_constant<int, kBaLrelu>{}); break;
    case kBaTanh: f(std::integral_constant<int, kBaTanh>{}); break;
    case kBaSigmoid: f(std::integral_constant<int, kBaSigmoid>{}); break;
    case kBaElu: f(std::integral_constant<int, kBaElu>{}); break;
    case kBaSelu: f(std::integral_constant<int, kBaSelu>{}); break;
    case kBaSilu: f(std::integral_constant<int, kBaSilu>{}); break;
    default: f(std::integral_constant<int, kBaGelu>{}); break;
  }
}

}  // namespace cpu
}  // namespace fastgen
