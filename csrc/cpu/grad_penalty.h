// CPU kernels of grad_norm_penalty (the per-sample part of the WGAN-GP / R1 / R2 gradient
// penalties): raw pointers, no torch headers. g is (N, M) dense (M = the per-sample size).
//
//   forward:  s[n] = sum_m g[n, m]^2 (fp64 partials),  norm = sqrt(s)
//             pen[n] = (norm - center)^2   (two-sided, WGAN-GP / DRAGAN)   or   s   (squared: R1 / R2)
//   backward: dg[n, m] = u[n] k[n] g[n, m],  k = 2 (norm - center) / norm (k = 0 at norm = 0), or 2 (squared)
#pragma once
#include <cstdint>

#include "fastgen/macros.h"

namespace fastgen {
namespace cpu {

// Partial sums of squares of g's rows [row * M + begin, row * M + end) (fp64 accumulation).
double grad_sq_sum(DType dt, const void* g, int64_t M, int64_t row, int64_t begin, int64_t end);

// dg[n, m] = coef[n] * g[n, m] for the flat range [begin, end) of N * M elements.
void grad_penalty_scale(DType dt, const void* g, const float* coef, void* out, int64_t M, int64_t begin, int64_t end);

}  // namespace cpu
}  // namespace fastgen
