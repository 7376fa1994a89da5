// CPU kernels of the diffusion training ops (q_sample, diffusion_loss): raw pointers, no torch
// headers. Tensors are dense, share one layout and keep the batch dimension outermost in memory,
// so storage element i belongs to sample i / per_sample. The caller splits work across threads.
#pragma once
#include <cstdint>
#include "fastgen/diffusion_loss.h"
#include "fastgen/macros.h"

namespace fastgen {
namespace cpu {

// out1 = a u + b v, out2 = c u + d v with per-sample (or single) coefficients. A null input is
// treated as zeros; a null output is not written (at least one of each must be given).
struct Lin2Args {
  const void* u;
  const void* v;
  void* out1;
  void* out2;
  int64_t per_sample;           // elements per sample (used only with per-sample coefficients)
  const Lin2<float>* coeffs;    // one per sample, or a single entry
  bool per_sample_coeffs;
};
void lin2(DType dtype, const Lin2Args& a, int64_t begin, int64_t end);

// Forward of the loss: for each chunk c in [chunk_begin, chunk_end), partials[c] = the sum over the
// chunk's elements of (m - p x0 - q noise)^2, r computed in fp32 and r^2 accumulated in fp64.
// Chunks are fixed pieces of at most `chunk` elements that never cross a sample (sample s owns
// chunks [s * chunks_per_sample, (s + 1) * chunks_per_sample)), so the summation order, and the
// result, do not depend on how chunks are spread over threads.
struct LossForwardArgs {
  const void* m;
  const void* x0;     // may be null when every p is 0
  const void* noise;  // may be null when every q is 0
  int64_t per_sample;
  int64_t chunk;
  int64_t chunks_per_sample;
  const float* pq;  // 2 floats (p, q) per sample
};
void loss_partials(DType dtype, const LossForwardArgs& a, int64_t chunk_begin, int64_t chunk_end,
                   double* partials);

// Backward of the loss, elementwise over [begin, end): r = m - p x0 - q noise (fp32),
//   dm = k r,  dx0 = kp r,  dnoise = kq r
// with per-sample k = g_s 2 w_s / per_sample, kp = -p k, kq = -q k. Null outputs are skipped;
// x0 / noise may be null when their coefficient p / q is 0 for every sample.
struct LossBackwardArgs {
  const void* m;
  const void* x0;
  const void* noise;
  void* dm;
  void* dx0;
  void* dnoise;
  int64_t per_sample;
  const float* pq;    // (p, q) per sample
  const float* kkk;   // (k, kp, kq) per sample
};
void loss_backward(DType dtype, const LossBackwardArgs& a, int64_t begin, int64_t end);

}  // namespace cpu
}  // namespace fastgen
