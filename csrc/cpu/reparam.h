// CPU kernels of reparameterize (the Gaussian posterior of a VAE): raw pointers, no torch headers.
// mu, logvar (and noise, z, gz, dmu, dlogvar) are (N, M) rows in one dense memory order.
//
//   forward:  eps = noise, or fastgen's Philox normal of global element i at (seed, offset)
//             z = mu + exp(logvar / 2) eps
//             kl[n] = sum_m (mu^2 + exp(logvar) - 1 - logvar) / 2        (returned per row range, fp64)
//   backward: dmu = gz + gkl[n] mu
//             dlogvar = gz eps exp(logvar / 2) / 2 + gkl[n] (exp(logvar) - 1) / 2
#pragma once
#include <cstdint>

#include "fastgen/macros.h"

namespace fastgen {
namespace cpu {

struct ReparamArgs {
  const void* mu;
  const void* logvar;
  const void* noise;   // null: the Philox stream at (seed, offset)
  void* z;             // forward output
  const void* gz;      // backward: dL/dz (null: 0)
  const float* gkl;    // backward: dL/dkl per row (null: 0)
  void* dmu;
  void* dlogvar;
  int64_t M;           // elements per row
  uint64_t seed, offset;
};

// Elements [row M + begin, row M + end); returns that range's share of kl[row].
double reparam_forward(DType dt, const ReparamArgs& a, int64_t row, int64_t begin, int64_t end);
void reparam_backward(DType dt, const ReparamArgs& a, int64_t row, int64_t begin, int64_t end);

}  // namespace cpu
}  // namespace fastgen
