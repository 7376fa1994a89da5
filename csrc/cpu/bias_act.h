// CPU kernels of the fused bias_act op (StyleGAN2's bias + activation + gain + clamp) and of its
// first and second derivatives: raw pointers, no torch headers. x (and g, g2, out) are dense in
// one memory order in which element i has bias channel (i / inner) % C (NCHW-contiguous: inner =
// H W; channels last: inner = 1). The caller splits [0, numel) across threads.
#pragma once
#include <cstdint>

#include "activation.h"  // activation codes (kBa*) shared with modulated_bias_act
#include "fastgen/macros.h"

namespace fastgen {
namespace cpu {

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
