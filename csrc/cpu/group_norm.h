// CPU kernels of the fused group_norm (+ per-(n, c) scale/shift + activation): raw pointers, no
// torch headers. x is (N, C, S) contiguous ("NCHW", S = prod(spatial)) or (N, S, C) ("channels
// last"); the output / grads have x's layout. Parameters are fp32: weight / bias (C) and scale /
// shift (N, C), each may be null (identity). Statistics are fp32 (N, G); reductions accumulate in
// fp32 blocks merged in fp64. The caller splits work across threads (ranges of tasks).
//
//   y = act(A[n,c] x + B[n,c]),  A = rstd w (1 + s),  B = (b - mean rstd w) (1 + s) + t
#pragma once
#include <cstdint>
#include "fastgen/macros.h"

namespace fastgen {
namespace cpu {

struct GroupNormArgs {
  const void* x;
  void* y;             // forward output
  const void* gy;      // backward: grad of y
  void* gx;            // backward: grad of x (null: not needed)
  float* mean;         // (N, G): written by the forward, read by the backward
  float* rstd;         // (N, G)
  const float* weight; // (C) or null
  const float* bias;   // (C) or null
  const float* scale;  // (N, C) or null
  const float* shift;  // (N, C) or null
  int64_t N, C, S, G;
  float eps;
  int act;             // 0 none, 1 SiLU, 2 GELU (erf)
};

// ---- NCHW: one task = one (n, group), a contiguous block of (C / G) S elements.
// Forward of groups [begin, end): mean/rstd (two passes over the cache-resident block) and y.
void group_norm_forward_nchw(DType dt, const GroupNormArgs& a, int64_t begin, int64_t end);
// Backward of groups [begin, end): per-(n, c) sums S1 = sum gz, S2 = sum gz xhat (gz = gy act'(z))
// into s1 / s2 (N, C) doubles, and gx when a.gx is set (scratch: (C / G) S floats per call, used
// to keep gz of the group when act != none).
void group_norm_backward_nchw(DType dt, const GroupNormArgs& a, int64_t begin, int64_t end, double* s1, double* s2,
                              float* scratch);

// ---- channels last: one task = (n, chunk of `chunk` pixels), task = n * nchunks + j.
// Forward pass 1: per task, per channel sum(x - K_c) and sum((x - K_c)^2) with K_c = x[n, 0, c],
// into partials[task * 2C + {0, C} + c].
void group_norm_cl_stats(DType dt, const GroupNormArgs& a, int64_t chunk, int64_t nchunks, int64_t begin,
                         int64_t end, double* partials);
// Merges the partials (in task order: deterministic) into mean / rstd and the affine A, B (N, C).
void group_norm_cl_finish_stats(DType dt, const GroupNormArgs& a, int64_t nchunks, const double* partials, float* A,
                                float* B);
// Forward pass 2: y = act(A x + B) for the tasks' pixels.
void group_norm_cl_apply(DType dt, const GroupNormArgs& a, int64_t chunk, int64_t nchunks, const float* A,
                         const float* B, int64_t begin, int64_t end);
// Backward pass 1: per task, per channel sum(gz) and sum(gz (x - mean)) into partials (2C per task).
void group_norm_cl_backward_sums(DType dt, const GroupNormArgs& a, int64_t chunk, int64_t nchunks, int64_t begin,
                                 int64_t end, double* partials);
// Merges them into s1 / s2 (N, C) and the gx coefficients (N, C each):
// gx = k1 gz + k2 (x - mean) + k3 (k4 = mean, per channel).
void group_norm_cl_finish_backward(const GroupNormArgs& a, int64_t nchunks, const double* partials, double* s1,
                                   double* s2, float* k);
// Backward pass 2: gx for the tasks' pixels (k: 4 arrays of N C floats, as written above).
void group_norm_cl_backward_apply(DType dt, const GroupNormArgs& a, int64_t chunk, int64_t nchunks, const float* k,
                                  int64_t begin, int64_t end);

}  // namespace cpu
}  // namespace fastgen
