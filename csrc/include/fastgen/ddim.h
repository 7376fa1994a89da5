// DDIM / DDPM-ancestral update coefficients, shared by every fast implementation.
//
// Given alpha_bar_t (a_t), alpha_bar_prev (a_p), eta and a clip range:
//   x0     = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)          (then clamp to [-clip, clip])
//   sigma  = eta * sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
//   x_prev = sqrt(a_p) * x0 + sqrt(1 - a_p - sigma^2) * eps + sigma * noise
// eta = 1 is DDPM ancestral sampling with the posterior ("fixed small") variance.
//
// The direction coefficient sqrt(1 - a_p - sigma^2) is computed in the cancellation-free form
//   (1 - a_p) * [(1 - eta^2) a_p (1 - a_t) + eta^2 a_t (1 - a_p)] / (a_p (1 - a_t))
// so that large few-step jumps (a_t << a_p) keep full precision even in fp32.
#pragma once
#include "fastgen/macros.h"

namespace fastgen {

template <typename acc_t>
struct DDIMCoeffs {
  acc_t sqrt_one_minus_at;  // multiplies eps in x0
  acc_t inv_sqrt_at;        // 1 / sqrt(a_t)
  acc_t sqrt_ap;            // multiplies x0 in x_prev
  acc_t dir;                // multiplies eps in x_prev
  acc_t sigma;              // multiplies noise in x_prev
};

template <typename acc_t>
FG_HOST_DEVICE acc_t fg_sqrt(acc_t v);
template <>
FG_HOST_DEVICE float fg_sqrt<float>(float v) { return sqrtf(v); }
template <>
FG_HOST_DEVICE double fg_sqrt<double>(double v) { return sqrt(v); }

template <typename acc_t>
FG_HOST_DEVICE DDIMCoeffs<acc_t> ddim_coeffs(acc_t a_t, acc_t a_p, acc_t eta) {
  const acc_t one = acc_t(1);
  const acc_t zero = acc_t(0);
  DDIMCoeffs<acc_t> c;
  const acc_t om_t = one - a_t;
  const acc_t om_p = one - a_p;
  c.sqrt_one_minus_at = fg_sqrt(om_t);
  c.inv_sqrt_at = one / fg_sqrt(a_t);
  c.sqrt_ap = fg_sqrt(a_p);
  const acc_t eta2 = eta * eta;
  acc_t var = zero;
  acc_t dir2 = om_p;
  if (eta2 > zero && om_t > zero) {
    var = eta2 * om_p * (a_p - a_t) / (a_p * om_t);
    dir2 = om_p * ((one - eta2) * a_p * om_t + eta2 * a_t * om_p) / (a_p * om_t);
  }
  c.sigma = var > zero ? fg_sqrt(var) : zero;
  c.dir = dir2 > zero ? fg_sqrt(dir2) : zero;
  return c;
}

// One element. `clip` <= 0 means no clipping. Returns x0 through *x0_out.
template <typename acc_t>
FG_HOST_DEVICE acc_t ddim_element(acc_t x, acc_t e, acc_t n, const DDIMCoeffs<acc_t>& c, acc_t clip,
                                  acc_t* x0_out) {
  acc_t x0 = (x - c.sqrt_one_minus_at * e) * c.inv_sqrt_at;
  if (clip > acc_t(0)) {
    x0 = x0 > clip ? clip : (x0 < -clip ? -clip : x0);
  }
  *x0_out = x0;
  return c.sqrt_ap * x0 + c.dir * e + c.sigma * n;
}

// Backward of one element, given upstream grads g_prev (d/dx_prev) and g_x0 (d/dx0).
//   m     = 1 where the clamp is inactive (|x0_unclipped| <= clip, or no clip), else 0
//   gx0   = m * (g_x0 + sqrt_ap * g_prev)
//   dx    = inv_sqrt_at * gx0
//   deps  = -sqrt_one_minus_at * inv_sqrt_at * gx0 + dir * g_prev
//   dnoise= sigma * g_prev
template <typename acc_t>
FG_HOST_DEVICE void ddim_backward_element(acc_t x, acc_t e, acc_t g_prev, acc_t g_x0,
                                          const DDIMCoeffs<acc_t>& c, acc_t clip, acc_t* dx,
                                          acc_t* de, acc_t* dn) {
  acc_t gx0 = g_x0 + c.sqrt_ap * g_prev;
  if (clip > acc_t(0)) {
    const acc_t x0 = (x - c.sqrt_one_minus_at * e) * c.inv_sqrt_at;
    if (x0 > clip || x0 < -clip) gx0 = acc_t(0);
  }
  const acc_t t = c.inv_sqrt_at * gx0;
  *dx = t;
  *de = c.dir * g_prev - c.sqrt_one_minus_at * t;
  *dn = c.sigma * g_prev;
}

}  // namespace fastgen
