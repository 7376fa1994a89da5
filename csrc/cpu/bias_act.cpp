// CPU kernels of bias_act (see bias_act.h). One pass over x (and g, g2) in memory order: runs that
// share one bias value (NCHW: runs of `inner` elements) or rows of C channels with a bias vector
// (channels last), written as plain loops that GCC vectorises in every target clone. fp32 math; the
// activations (csrc/cpu/activation.h) use the branch-free polynomials of fastgen/vmath.h.
#include "bias_act.h"

#include <algorithm>
#include <cmath>

#include "activation.h"  // act_d: the activation table shared with modulated_bias_act
#include "fastgen/convert.h"
#include "stream.h"  // FG_CLONES, FG_LAMBDA_INLINE

namespace fastgen {
namespace cpu {
namespace {

// MODE 0: forward, 1: order-1 gradient, 2: order-2 gradient (see bias_act.h).
template <typename T, int ACT, int MODE>
FG_ALWAYS_INLINE float element(float xv, float b, float gv, float g2v, float alpha, float gain, float clamp) {
  const float z = xv + b;
  const float y = act_d<ACT, 0>(z, alpha) * gain;
  if constexpr (MODE == 0) {
    return clamp >= 0.0f ? std::min(std::max(y, -clamp), clamp) : y;
  } else {
    const float m = (clamp < 0.0f || std::fabs(y) <= clamp) ? gain : 0.0f;
    if constexpr (MODE == 1) return gv * m * act_d<ACT, 1>(z, alpha);
    else return gv * g2v * m * act_d<ACT, 2>(z, alpha);
  }
}

template <typename T, int ACT, int MODE>
FG_ALWAYS_INLINE void run(const BiasActArgs& a, int64_t begin, int64_t end) {
  const T* FG_RESTRICT x = static_cast<const T*>(a.x);
  const T* FG_RESTRICT g = static_cast<const T*>(a.g);
  const T* FG_RESTRICT g2 = static_cast<const T*>(a.g2);
  T* FG_RESTRICT out = static_cast<T*>(a.out);
  const float alpha = a.alpha, gain = a.gain, clamp = a.clamp;
  auto body = [&](int64_t i, float b) FG_LAMBDA_INLINE {
    const float gv = MODE >= 1 ? to_float(g[i]) : 0.0f;
    const float g2v = MODE == 2 ? to_float(g2[i]) : 0.0f;
    out[i] = from_float<T>(element<T, ACT, MODE>(to_float(x[i]), b, gv, g2v, alpha, gain, clamp));
  };
  if (!a.bias) {
    for (int64_t i = begin; i < end; ++i) body(i, 0.0f);
    return;
  }
  int64_t i = begin;
  while (i < end) {
    if (a.inner == 1) {  // channels last: rows of C channels, a bias vector
      const int64_t c = i % a.C;
      const int64_t len = std::min(end - i, a.C - c);
      const float* FG_RESTRICT bv = a.bias + c;
      for (int64_t k = 0; k < len; ++k) body(i + k, bv[k]);
      i += len;
    } else {  // runs of `inner` elements sharing one bias value
      const int64_t r = i / a.inner;
      const int64_t stop = std::min(end, (r + 1) * a.inner);
      const float b = a.bias[r % a.C];
      for (int64_t k = i; k < stop; ++k) body(k, b);
      i = stop;
    }
  }
}

#define FG_BA_ACT_SWITCH(act, T, MODE, ...)                   \
  switch (act) {                                              \
    case kBaLinear: run<T, kBaLinear, MODE>(__VA_ARGS__); break;   \
    case kBaRelu: run<T, kBaRelu, MODE>(__VA_ARGS__); break;       \
    case kBaLrelu: run<T, kBaLrelu, MODE>(__VA_ARGS__); break;     \
    case kBaTanh: run<T, kBaTanh, MODE>(__VA_ARGS__); break;       \
    case kBaSigmoid: run<T, kBaSigmoid, MODE>(__VA_ARGS__); break; \
    case kBaElu: run<T, kBaElu, MODE>(__VA_ARGS__); break;         \
    case kBaSelu: run<T, kBaSelu, MODE>(__VA_ARGS__); break;       \
    case kBaSilu: run<T, kBaSilu, MODE>(__VA_ARGS__); break;       \
    default: run<T, kBaGelu, MODE>(__VA_ARGS__); break;            \
  }

#define FG_BA_CLONES(SUF, T)                                                           \
  FG_CLONES void fwd_##SUF(const BiasActArgs& a, int64_t b, int64_t e) {               \
    FG_BA_ACT_SWITCH(a.act, T, 0, a, b, e)                                             \
  }                                                                                    \
  FG_CLONES void grad1_##SUF(const BiasActArgs& a, int64_t b, int64_t e) {             \
    FG_BA_ACT_SWITCH(a.act, T, 1, a, b, e)                                             \
  }                                                                                    \
  FG_CLONES void grad2_##SUF(const BiasActArgs& a, int64_t b, int64_t e) {             \
    FG_BA_ACT_SWITCH(a.act, T, 2, a, b, e)                                             \
  }

FG_BA_CLONES(f32, float)
FG_BA_CLONES(f16, f16_t)
FG_BA_CLONES(bf16, bf16_t)

}  // namespace

void bias_act_forward(DType dt, const BiasActArgs& a, int64_t begin, int64_t end) {
  FG_DT_DISPATCH(dt, fwd, a, begin, end)
}

void bias_act_grad(DType dt, const BiasActArgs& a, int order, int64_t begin, int64_t end) {
  if (order == 1) {
    FG_DT_DISPATCH(dt, grad1, a, begin, end)
  } else {
    FG_DT_DISPATCH(dt, grad2, a, begin, end)
  }
}

}  // namespace cpu
}  // namespace fastgen
