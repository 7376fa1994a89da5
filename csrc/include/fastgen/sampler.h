// The coefficient-driven sampler update shared by every fast implementation (CPU, CUDA; the
// Triton kernel mirrors it). One element:
//
//   m      = model_output                       (or  u + s (model_output - u)  with guidance)
//   x0raw  = a_x x + a_m m
//   x0     = k * clamp(x0raw, -L, L)            (L <= 0: no clamp; k = 1 except dynamic thresholding)
//   x_prev = c_x x + c_0 x0 + c_m m + c_h1 h1 + c_h2 h2 + c_n sv n
//   sv     = 1, or exp(0.5 (lv_lo + (v + 1) / 2 (lv_hi - lv_lo)))   (learned "range" variance v)
//
// DDPM, DDIM, Euler(-ancestral), Heun, DPM-Solver++ and Euler-Maruyama / probability-flow steps
// are all this map with per-sample coefficients computed on the host (fastgen/diffusion/samplers).
#pragma once
#include "fastgen/macros.h"

namespace fastgen {

// Order of the coefficient vector (fastgen/ops/sampler_update.py COEFF_NAMES mirrors it).
enum SamplerCoeff : int {
  kAx = 0, kAm, kClip, kScale, kCx, kC0, kCm, kCh1, kCh2, kCn, kLvLo, kLvHi, kNumSamplerCoeffs
};

struct SamplerCoeffs {
  float a_x, a_m, clip, scale, c_x, c_0, c_m, c_h1, c_h2, c_n, lv_lo, lv_hi;
};

FG_HOST_DEVICE SamplerCoeffs sampler_coeffs_from(const float* v) {
  return SamplerCoeffs{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11]};
}

FG_HOST_DEVICE float sampler_x0(float x, float m, const SamplerCoeffs& c, bool clip) {
  float x0 = c.a_x * x + c.a_m * m;
  if (clip) x0 = x0 > c.clip ? c.clip : (x0 < -c.clip ? -c.clip : x0);
  return c.scale * x0;
}

}  // namespace fastgen
