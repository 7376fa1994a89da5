// CPU kernel of the coefficient-driven sampler update (see csrc/include/fastgen/sampler.h).
//
// One pass: reads x, the model output (and the unconditional output when guiding), up to two
// history tensors and, for ancestral steps, either a noise tensor or nothing at all -- the
// normal noise is then generated in-kernel from a counter-based Philox stream
// (csrc/include/fastgen/philox.h) into an L1-resident block buffer, so no noise tensor is
// written or read. Writes x_prev and x0. fp32 math for every storage dtype.
//
// Like ddim_step.cpp: entry points are compiled with target_clones (AVX-512 / AVX2 / SSE2,
// chosen by the loader), the loops auto-vectorise (the Philox rounds vectorise as 32x32->64-bit
// multiplies; log and sin/cos are branch-free polynomials), and outputs of working sets larger
// than the last-level cache are written with non-temporal stores.
#include "sampler_update.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "fastgen/convert.h"
#include "fastgen/philox.h"
#include "philox_block.h"
#include "fastgen/vmath.h"

namespace fastgen {
namespace cpu {
namespace {

constexpr int64_t kBlock = 512;  // elements per inner block (noise / streaming buffers stay in L1)

// e^x: exp_poly from fastgen/vmath.h (a vectorisable polynomial; std::exp is a scalar libm call).

// One block of `len` elements from global element o (all in sample s when a.strided).
template <typename T, bool GUIDE, int NH, int NK, bool VAR>
FG_ALWAYS_INLINE void update_block(const SamplerArgs& a, int64_t o, int64_t len, int64_t s, const SamplerCoeffs& c) {
  const int64_t r = o - s * a.per_sample;  // offset inside sample s
  auto in = [&](const void* p, int k) FG_LAMBDA_INLINE { return static_cast<const T*>(p) + s * a.batch_stride[k] + r; };
  const T* FG_RESTRICT x = in(a.x, kInX);
  const T* FG_RESTRICT m = in(a.m, kInM);
  const T* FG_RESTRICT u = GUIDE ? in(a.uncond, kInUncond) : nullptr;
  const T* FG_RESTRICT h1 = NH >= 1 ? in(a.h1, kInH1) : nullptr;
  const T* FG_RESTRICT h2 = NH >= 2 ? in(a.h2, kInH2) : nullptr;
  const T* FG_RESTRICT n = NK == 1 ? in(a.noise, kInNoise) : nullptr;
  const T* FG_RESTRICT v = VAR ? in(a.var, kInVar) : nullptr;
  alignas(64) float zbuf[NK == 2 ? kBlock + 8 : 1];
  alignas(64) float zz[NK == 2 ? kBlock + 16 : 1];
  const float* FG_RESTRICT z = NK == 2 ? philox_block<kBlock>(zbuf, o, len, a.seed, a.offset, zz) : nullptr;
  alignas(64) T bp[kBlock];
  alignas(64) T b0[kBlock];
  T* FG_RESTRICT dp = a.stream_stores ? bp : static_cast<T*>(a.x_prev) + o;
  T* FG_RESTRICT d0 = a.stream_stores ? b0 : static_cast<T*>(a.x0) + o;
  const float g = a.guidance;
  const float lv_half = 0.25f * (c.lv_hi - c.lv_lo);       // 0.5 * (hi - lo) / 2
  const float lv_mid = 0.5f * c.lv_lo + lv_half;            // 0.5 * lo + 0.5 * (hi - lo) / 2
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const float xv = to_float(x[i]);
    float mv = to_float(m[i]);
    if (GUIDE) {
      const float uv = to_float(u[i]);
      mv = uv + g * (mv - uv);
    }
    float x0 = c.a_x * xv + c.a_m * mv;
    x0 = std::min(std::max(x0, -c.clip), c.clip);  // clip = +inf: no clamp (NaN propagates)
    x0 *= c.scale;
    float out = c.c_x * xv + c.c_0 * x0 + c.c_m * mv;
    if (NH >= 1) out += c.c_h1 * to_float(h1[i]);
    if (NH >= 2) out += c.c_h2 * to_float(h2[i]);
    if (NK != 0) {
      float nv = NK == 1 ? to_float(n[i]) : z[i];
      if (VAR) nv *= exp_poly(lv_mid + lv_half * to_float(v[i]));  // exp(0.5 (lo + (v+1)/2 (hi-lo)))
      out += c.c_n * nv;
    }
    dp[i] = from_float<T>(out);
    d0[i] = from_float<T>(x0);
  }
  if (a.stream_stores) {
    stream_store(static_cast<T*>(a.x_prev) + o, bp, len);
    stream_store(static_cast<T*>(a.x0) + o, b0, len);
  }
}

// Walk [begin, end) in blocks of kBlock that share one sample (hence one coefficient set).
template <typename T, bool GUIDE, int NH, int NK, bool VAR>
FG_ALWAYS_INLINE void run(const SamplerArgs& a, int64_t begin, int64_t end) {
  for_each_run(begin, end, a.per_sample, a.per_sample_coeffs || a.strided,
               [&](int64_t i, int64_t len, int64_t s) FG_LAMBDA_INLINE {
    const SamplerCoeffs c = a.coeffs[a.per_sample_coeffs ? s : 0];
    for (int64_t o = i; o < i + len; o += kBlock)
      update_block<T, GUIDE, NH, NK, VAR>(a, o, std::min(kBlock, i + len - o), s, c);
  });
  if (a.stream_stores) stream_fence();
}

template <typename T, bool GUIDE, int NH>
FG_ALWAYS_INLINE void by_noise(const SamplerArgs& a, int64_t b, int64_t e) {
  const bool var = a.var != nullptr;
  switch (a.noise_kind) {
    case NoiseKind::Tensor:
      if (var) run<T, GUIDE, NH, 1, true>(a, b, e);
      else run<T, GUIDE, NH, 1, false>(a, b, e);
      break;
    case NoiseKind::Philox:
      if (var) run<T, GUIDE, NH, 2, true>(a, b, e);
      else run<T, GUIDE, NH, 2, false>(a, b, e);
      break;
    default: run<T, GUIDE, NH, 0, false>(a, b, e); break;
  }
}

template <typename T>
FG_ALWAYS_INLINE void dispatch(const SamplerArgs& a, int64_t b, int64_t e) {
  const int nh = a.h2 ? 2 : (a.h1 ? 1 : 0);
  if (a.uncond) {
    if (nh == 2) by_noise<T, true, 2>(a, b, e);
    else if (nh == 1) by_noise<T, true, 1>(a, b, e);
    else by_noise<T, true, 0>(a, b, e);
  } else {
    if (nh == 2) by_noise<T, false, 2>(a, b, e);
    else if (nh == 1) by_noise<T, false, 1>(a, b, e);
    else by_noise<T, false, 0>(a, b, e);
  }
}

FG_CLONES void update_f32(const SamplerArgs& a, int64_t b, int64_t e) { dispatch<float>(a, b, e); }
FG_CLONES void update_f16(const SamplerArgs& a, int64_t b, int64_t e) { dispatch<f16_t>(a, b, e); }
FG_CLONES void update_bf16(const SamplerArgs& a, int64_t b, int64_t e) { dispatch<bf16_t>(a, b, e); }

}  // namespace

void sampler_update(DType dtype, const SamplerArgs& a, int64_t begin, int64_t end) {
  switch (dtype) {
    case DType::Float32: update_f32(a, begin, end); break;
    case DType::Float16: update_f16(a, begin, end); break;
    case DType::BFloat16: update_bf16(a, begin, end); break;
    default: break;  // the torch layer rejects other dtypes before calling
  }
}

}  // namespace cpu
}  // namespace fastgen
