// CPU kernels of the fused bias_act op (StyleGAN2's bias + activation + gain + clamp) and of its
// first and second derivatives: raw pointers, no torch headers. x (and g, g2, out) are dense in
// one memory order in which element i has bias channel (i / inner) % C (NCHW-contiguous: inner =
// H W; channels last: inner = 1). The caller splits [0, numel) across threads.
#pragma once
#include <cstdint>

#include "fastgen/macros.h"

namespace fastgen {
namespace cpu {

// Activation codes shared with fastgen/ops/bias_act.py and the Triton kernels.
enum : int {
  kBaLinear = 0, kBaRelu = 1, kBaLrelu = 2, kBaTanh = 3, kBaSigmoid = 4, kBaElu = 5, kBaSelu = 6,
  kBaSilu = 7, kBaGelu = 8
};

struct BiasActArgs {
  const void* x;       // the op's input (pre-bias)
  const float* bias;   // C fp32 values, or null
  const void* g;       // upstream gradient (grad modes)
  const void* g2;      // second factor of the order-2 mode
  void* out;
  int64_t C, inner;
  int act;
  float alpha, gain, clamp;  // clamp < 0: none
};

// out = clamp(act(x + b) gain, -clamp, clamp)
void bias_act_forward(DType dt, const BiasActArgs& a, int64_t begin, int64_t end);
// With z = x + b and m = [|act(z) gain| <= clamp]:
//   order 1: out = g gain act'(z) m           (the gradient w.r.t. x, from g = dL/dy)
//   order 2: out = g g2 gain act''(z) m       (d/dx of order 1 with g2 = its g, dotted with g)
void bias_act_grad(DType dt, const BiasActArgs& a, int order, int64_t begin, int64_t end);

}  // namespace cpu
}  // namespace fastgen
