// Counter-based normal noise (Philox4x32-10 + Box-Muller), shared by the CPU and CUDA kernels
// and mirrored bit-for-bit (integer part) by the Triton kernel and fastgen/ops/_philox.py.
//
// fastgen's noise stream: element i (its index in the output's batch-outer dense layout) of a
// call with (seed, offset) is
//   r   = Philox4x32-10(counter = (g_lo, g_hi, offset_lo, offset_hi), key = (seed_lo, seed_hi)),
//         g = i >> 2 (one Philox call feeds four elements), lane = i & 3
//   u_k = ((r_k >> 8) + 0.5) * 2^-24                 in (0, 1]: never 0 (1.0 only by fp32 rounding
//                                                    of the top value, giving a 0 normal: harmless)
//   pair (u0, u1) gives lanes 0, 1 and pair (u2, u3) lanes 2, 3 by Box-Muller:
//   z_even = sqrt(-2 ln u_a) cos(2 pi u_b),   z_odd = sqrt(-2 ln u_a) sin(2 pi u_b)
// The logarithm and the sine/cosine below are branch-free polynomial evaluations (|rel err| <
// 2e-7 in the ranges used) so the CPU loops vectorise; the other implementations use their
// platform's log/sin/cos, so streams agree to ~1e-6, not bitwise, in the float parts.
#pragma once
#include <cstdint>
#include <cstring>

#include "fastgen/macros.h"

namespace fastgen {
namespace philox {

constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // multipliers (Salmon et al. 2011)
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // Weyl key increments

struct U4 {
  uint32_t x, y, z, w;
};

FG_HOST_DEVICE void round(U4& c, uint32_t k0, uint32_t k1) {
  const uint64_t p0 = static_cast<uint64_t>(kM0) * c.x;
  const uint64_t p1 = static_cast<uint64_t>(kM1) * c.z;
  const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
  const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
  c = U4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
}

// Philox4x32 with 10 rounds (the Random123 default; also what cuRAND and torch's CUDA RNG use).
FG_HOST_DEVICE U4 philox4x32_10(U4 c, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    round(c, k0, k1);
    k0 += kW0;
    k1 += kW1;
  }
  return c;
}

FG_HOST_DEVICE float to_unit(uint32_t r) {  // (0, 1), 24 random bits
  return (static_cast<float>(r >> 8) + 0.5f) * 5.9604644775390625e-08f;  // 2^-24
}

FG_HOST_DEVICE uint32_t as_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}
FG_HOST_DEVICE float as_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// -2 ln(u) for u in (0, 1): u = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(f),
// f = (m - 1) / (m + 1), |f| <= 0.1716, odd series to f^11 (truncation < 1e-9).
FG_HOST_DEVICE float minus_two_log(float u) {
  const uint32_t b = as_bits(u);
  int32_t e = static_cast<int32_t>((b >> 23) & 0xffu) - 127;
  float m = as_float((b & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? 0.5f * m : m;
  e = big ? e + 1 : e;
  const float f = (m - 1.0f) / (m + 1.0f);
  const float f2 = f * f;
  const float p = 1.0f + f2 * (0.33333333f + f2 * (0.2f + f2 * (0.14285715f + f2 * (0.11111111f + f2 * 0.09090909f))));
  const float ln = static_cast<float>(e) * 0.69314718f + 2.0f * f * p;
  return -2.0f * ln;
}

// (cos, sin) of 2 pi u for u in [0, 1]: quadrant q = rint(4u), t = 2 pi (u - q/4) in [-pi/4, pi/4],
// Taylor series to t^11 / t^10 (truncation < 3e-8), then rotate by q quarter turns.
FG_HOST_DEVICE void sincos_2pi(float u, float* c_out, float* s_out) {
  const float qf = static_cast<float>(static_cast<int32_t>(4.0f * u + 0.5f));
  const float t = 6.28318531f * (u - 0.25f * qf);
  const float t2 = t * t;
  const float s = t * (1.0f + t2 * (-1.6666667e-1f + t2 * (8.3333333e-3f + t2 * (-1.9841270e-4f + t2 * (2.7557319e-6f + t2 * -2.5052108e-8f)))));
  const float c = 1.0f + t2 * (-0.5f + t2 * (4.1666667e-2f + t2 * (-1.3888889e-3f + t2 * (2.4801587e-5f + t2 * -2.7557319e-7f))));
  const int32_t q = static_cast<int32_t>(qf) & 3;
  // q = 0: (c, s); 1: (-s, c); 2: (-c, -s); 3: (s, -c)
  const float cc = (q & 1) ? s : c;
  const float ss = (q & 1) ? c : s;
  *c_out = (q == 1 || q == 2) ? -cc : cc;
  *s_out = (q >= 2) ? -ss : ss;
}

// The four normals of Philox group g.
FG_HOST_DEVICE void normal4(uint64_t g, uint64_t seed, uint64_t offset, float out[4]) {
  const U4 r = philox4x32_10(U4{static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32),
                                static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)},
                             static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
#if defined(__CUDA_ARCH__)
  float c0, s0, c1, s1;
  const float rad0 = sqrtf(-2.0f * logf(to_unit(r.x)));
  const float rad1 = sqrtf(-2.0f * logf(to_unit(r.z)));
  sincospif(2.0f * to_unit(r.y), &s0, &c0);
  sincospif(2.0f * to_unit(r.w), &s1, &c1);
#else
  float c0, s0, c1, s1;
  const float rad0 = std::sqrt(minus_two_log(to_unit(r.x)));
  const float rad1 = std::sqrt(minus_two_log(to_unit(r.z)));
  sincos_2pi(to_unit(r.y), &c0, &s0);
  sincos_2pi(to_unit(r.w), &c1, &s1);
#endif
  out[0] = rad0 * c0;
  out[1] = rad0 * s0;
  out[2] = rad1 * c1;
  out[3] = rad1 * s1;
}

// One element's normal (computes its group's Philox; for code that cannot share groups).
FG_HOST_DEVICE float normal_at(uint64_t i, uint64_t seed, uint64_t offset) {
  float z[4];
  normal4(i >> 2, seed, offset, z);
  return z[i & 3];
}

}  // namespace philox
}  // namespace fastgen
