// CPU kernels of modulate_weight (StyleGAN2's per-sample weight modulation / demodulation for the
// grouped "fused modconv"): raw pointers, no torch headers.
//
//   out[n, o, i, k] = w[o, i, k] s[n, i] d[n, o]          (d = 1 without demodulation)
//   d[n, o] = 1 / sqrt(sum_{i, k} (w[o, i, k] s[n, i])^2 + eps)   (computed by the caller, fp32)
//
// Backward, with G = dL/dout, a = w s and t[n, o] = sum_{i, k} G a:
//   ga = d G - t d^3 a   (just G without demodulation)
//   gw[o, i, k] = sum_n ga s[n, i],   gs[n, i] = sum_{o, k} ga w[o, i, k]
#pragma once
#include <cstdint>

#include "fastgen/macros.h"

namespace fastgen {
namespace cpu {

struct ModWeightArgs {
  const void* w;    // (O, I, K) weight, K = kh kw, contiguous, dtype dt
  const float* s;   // (N, I) styles, fp32 contiguous
  const float* d;   // (N, O) demodulation coefficients, fp32, or null (no demodulation)
  const void* g;    // backward: (N, O, I, K) upstream gradient, dtype dt
  void* out;        // forward: (N, O, I, K), dtype dt
  float* gw;        // backward: (O, I, K) fp32, rows [o_begin, o_end) written
  float* gs;        // backward: (N, I) fp32 partial sums of the calling thread (accumulated into)
  int64_t N, O, I, K;
};

// Rows r = n O + o in [begin, end) of the output.
void modulate_weight_forward(DType dt, const ModWeightArgs& a, int64_t begin, int64_t end);
// Output channels o in [begin, end): writes gw rows, adds their share of gs into a.gs.
void modulate_weight_backward(DType dt, const ModWeightArgs& a, int64_t begin, int64_t end);

}  // namespace cpu
}  // namespace fastgen
