// fastgen's Philox normal stream (csrc/include/fastgen/philox.h) generated a block at a time into
// L1-resident buffers, vectorised: shared by the CPU kernels that draw noise in-kernel
// (sampler_update, reparameterize).
#pragma once
#include <cmath>
#include <cstdint>

#include "fastgen/macros.h"
#include "fastgen/philox.h"

namespace fastgen {
namespace cpu {

// Normals for global element indices [start, start + len): returns a pointer p with p[i] the
// normal of element start + i. The block is widened to whole Philox groups of four: the groups
// are generated lane by lane (SoA, so the rounds vectorise), then interleaved into `z` (a
// stride-4 store group, which also vectorises) and the pointer skips the widening's skew.
// zz has room for 4 * (BLOCK / 4 + 2) floats, z for BLOCK + 8 (BLOCK: the caller's block size, len <= BLOCK).
template <int64_t BLOCK>
FG_ALWAYS_INLINE const float* philox_block(float* FG_RESTRICT z, int64_t start, int64_t len, uint64_t seed,
                                          uint64_t offset, float* FG_RESTRICT zz) {
  const int64_t g0 = start >> 2;
  const int64_t ng = ((start + len + 3) >> 2) - g0;
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t o0 = static_cast<uint32_t>(offset), o1 = static_cast<uint32_t>(offset >> 32);
  float* FG_RESTRICT r0 = zz;
  float* FG_RESTRICT r1 = zz + BLOCK / 4 + 2;
  float* FG_RESTRICT r2 = zz + 2 * (BLOCK / 4 + 2);
  float* FG_RESTRICT r3 = zz + 3 * (BLOCK / 4 + 2);
#pragma omp simd
  for (int64_t j = 0; j < ng; ++j) {
    const uint64_t g = static_cast<uint64_t>(g0 + j);
    const philox::U4 r = philox::philox4x32_10(
        philox::U4{static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32), o0, o1}, k0, k1);
    float c0, s0, c1, s1;
    const float rad0 = std::sqrt(philox::minus_two_log(philox::to_unit(r.x)));
    const float rad1 = std::sqrt(philox::minus_two_log(philox::to_unit(r.z)));
    philox::sincos_2pi(philox::to_unit(r.y), &c0, &s0);
    philox::sincos_2pi(philox::to_unit(r.w), &c1, &s1);
    r0[j] = rad0 * c0;
    r1[j] = rad0 * s0;
    r2[j] = rad1 * c1;
    r3[j] = rad1 * s1;
  }
  for (int64_t j = 0; j < ng; ++j) {
    z[4 * j] = r0[j];
    z[4 * j + 1] = r1[j];
    z[4 * j + 2] = r2[j];
    z[4 * j + 3] = r3[j];
  }
  return z + (start - 4 * g0);
}


}  // namespace cpu
}  // namespace fastgen
