// CPU kernels of reparameterize (see reparam.h): blocks of 512 elements; the noise of a block is
// read from the noise tensor or generated in place from fastgen's Philox stream (philox_block.h)
// into an L1-resident buffer, so no noise tensor is ever written; exp is the vectorisable
// polynomial of fastgen/vmath.h. KL terms are summed in fp32 per block and in fp64 across blocks.
#include "reparam.h"

#include <algorithm>

#include "fastgen/convert.h"
#include "fastgen/vmath.h"
#include "philox_block.h"
#include "stream.h"  // FG_CLONES

namespace fastgen {
namespace cpu {
namespace {

constexpr int64_t kBlock = 512;

template <typename T>
FG_ALWAYS_INLINE const float* noise_block(const ReparamArgs& a, int64_t gi, int64_t len, float* z, float* zz,
                                          float* buf) {
  if (!a.noise) return philox_block<kBlock>(z, gi, len, a.seed, a.offset, zz);
  const T* FG_RESTRICT n = static_cast<const T*>(a.noise) + gi;
  for (int64_t j = 0; j < len; ++j) buf[j] = to_float(n[j]);
  return buf;
}

template <typename T>
FG_ALWAYS_INLINE double forward_range(const ReparamArgs& a, int64_t row, int64_t begin, int64_t end) {
  const T* FG_RESTRICT mu = static_cast<const T*>(a.mu);
  const T* FG_RESTRICT lv = static_cast<const T*>(a.logvar);
  T* FG_RESTRICT z = static_cast<T*>(a.z);
  alignas(64) float zbuf[kBlock + 8];
  alignas(64) float zz[4 * (kBlock / 4 + 2)];
  alignas(64) float nbuf[kBlock];
  double kl = 0.0;
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t len = std::min(kBlock, end - b);
    const int64_t gi = row * a.M + b;
    const float* FG_RESTRICT eps = noise_block<T>(a, gi, len, zbuf, zz, nbuf);
    float acc = 0.0f;
    for (int64_t j = 0; j < len; ++j) {
      const float m = to_float(mu[gi + j]), l = to_float(lv[gi + j]);
      const float s = exp_poly(0.5f * l);
      z[gi + j] = from_float<T>(m + s * eps[j]);
      acc += m * m + s * s - 1.0f - l;
    }
    kl += 0.5 * static_cast<double>(acc);
  }
  return kl;
}

template <typename T>
FG_ALWAYS_INLINE void backward_range(const ReparamArgs& a, int64_t row, int64_t begin, int64_t end) {
  const T* FG_RESTRICT mu = static_cast<const T*>(a.mu);
  const T* FG_RESTRICT lv = static_cast<const T*>(a.logvar);
  const T* FG_RESTRICT gz = static_cast<const T*>(a.gz);
  T* FG_RESTRICT dmu = static_cast<T*>(a.dmu);
  T* FG_RESTRICT dlv = static_cast<T*>(a.dlogvar);
  const float gk = a.gkl ? a.gkl[row] : 0.0f;
  alignas(64) float zbuf[kBlock + 8];
  alignas(64) float zz[4 * (kBlock / 4 + 2)];
  alignas(64) float nbuf[kBlock];
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t len = std::min(kBlock, end - b);
    const int64_t gi = row * a.M + b;
    if (gz) {
      const float* FG_RESTRICT eps = noise_block<T>(a, gi, len, zbuf, zz, nbuf);
      for (int64_t j = 0; j < len; ++j) {
        const float m = to_float(mu[gi + j]), l = to_float(lv[gi + j]), g = to_float(gz[gi + j]);
        const float s = exp_poly(0.5f * l);
        dmu[gi + j] = from_float<T>(g + gk * m);
        dlv[gi + j] = from_float<T>(0.5f * (g * eps[j] * s + gk * (s * s - 1.0f)));
      }
    } else {  // only the KL is used: no noise needed
      for (int64_t j = 0; j < len; ++j) {
        const float m = to_float(mu[gi + j]), l = to_float(lv[gi + j]);
        const float s = exp_poly(0.5f * l);
        dmu[gi + j] = from_float<T>(gk * m);
        dlv[gi + j] = from_float<T>(0.5f * gk * (s * s - 1.0f));
      }
    }
  }
}

#define FG_RP_CLONES(SUF, T)                                                                         \
  FG_CLONES double fwd_##SUF(const ReparamArgs& a, int64_t r, int64_t b, int64_t e) {               \
    return forward_range<T>(a, r, b, e);                                                             \
  }                                                                                                  \
  FG_CLONES void bwd_##SUF(const ReparamArgs& a, int64_t r, int64_t b, int64_t e) { backward_range<T>(a, r, b, e); }

FG_RP_CLONES(f32, float)
FG_RP_CLONES(f16, f16_t)
FG_RP_CLONES(bf16, bf16_t)

}  // namespace

double reparam_forward(DType dt, const ReparamArgs& a, int64_t row, int64_t begin, int64_t end) {
  switch (dt) {
    case DType::Float16: return fwd_f16(a, row, begin, end);
    case DType::BFloat16: return fwd_bf16(a, row, begin, end);
    default: return fwd_f32(a, row, begin, end);
  }
}

void reparam_backward(DType dt, const ReparamArgs& a, int64_t row, int64_t begin, int64_t end) {
  FG_DT_DISPATCH(dt, bwd, a, row, begin, end)
}

}  // namespace cpu
}  // namespace fastgen
