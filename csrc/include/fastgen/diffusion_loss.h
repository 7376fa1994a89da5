// Per-sample coefficients of the diffusion training ops (q_sample, diffusion_loss), shared by
// every fast implementation (host code in double; usable in device code too).
//
// q_sample (variance-preserving forward process, alpha_bar = ab):
//   x_t    = sqrt(ab) x0 + sqrt(1 - ab) noise
//   target = c x0 + d noise:  epsilon (0, 1), sample (1, 0), v_prediction (-sqrt(1-ab), sqrt(ab))
//
// diffusion_loss: target = p x0 + q noise, per-sample loss w * mean((F - target)^2).
//   VP prediction types (level = alpha_bar), SNR = ab / (1 - ab), sigma^2 = 1 / SNR:
//     epsilon (p, q) = (0, 1); sample (1, 0); v_prediction (-sqrt(1-ab), sqrt(ab))
//   EDM (level = sigma, Karras et al. 2022): the network output F is preconditioned,
//     D = c_skip x + c_out F with x = x0 + sigma noise, c_skip = sd^2 / (sigma^2 + sd^2),
//     c_out = sigma sd / sqrt(sigma^2 + sd^2). EDM's loss lambda ||D - x0||^2 with
//     lambda = (sigma^2 + sd^2) / (sigma sd)^2 equals lambda c_out^2 ||F - T||^2 with
//     T = ((1 - c_skip) x0 - c_skip sigma noise) / c_out, i.e.
//       p = sigma / (sd sqrt(sigma^2 + sd^2)),  q = -sd / sqrt(sigma^2 + sd^2),
//     and lambda c_out^2 = 1 exactly. SNR = 1 / sigma^2.
//   Weightings, all defined by a weight W on the x0 error ||D - x0||^2 converted to the
//   prediction's own error (eps error = sqrt(SNR) x x0 error, v error = sqrt(SNR + 1) x x0 error,
//   F error = x0 error / c_out):  w = W / SNR (eps), W / (SNR + 1) (v), W (sample), W c_out^2 (edm).
//     uniform: w = 1 for every prediction type (not converted)
//     min_snr: W = min(SNR, gamma) (Hang et al. 2023): eps min(1, gamma/SNR), v min(ab, gamma (1-ab)),
//              sample min(SNR, gamma), edm min(1/sigma^2, gamma) c_out^2
//     edm:     W = lambda(sigma) (Karras et al. 2022): eps (1 - ab + sd^2 ab) / (sd^2 ab),
//              v (1 - ab + sd^2 ab) / sd^2, sample 1/sd^2 + ab / (1 - ab), edm 1
//   All written in forms that stay finite at the ends of [0, 1] where the limit is finite.
#pragma once
#include "fastgen/macros.h"

namespace fastgen {

enum class Prediction : int32_t { None = -1, Epsilon = 0, Sample = 1, VPrediction = 2, EDM = 3 };
enum class LossWeighting : int32_t { Uniform = 0, MinSNR = 1, EDM = 2 };

// out1 = a u + b v, out2 = c u + d v
template <typename R>
struct Lin2 {
  R a, b, c, d;
};

template <typename R>
FG_HOST_DEVICE R dl_sqrt(R v) {
  return sqrt(v);
}
template <typename R>
FG_HOST_DEVICE R dl_min(R a, R b) {
  return b < a ? b : a;
}

// x_t = a x0 + b noise, target = c x0 + d noise (c = d = 0 without a prediction type).
template <typename R>
FG_HOST_DEVICE Lin2<R> q_sample_coeffs(R ab, Prediction pt) {
  const R sa = dl_sqrt(ab), sb = dl_sqrt(R(1) - ab);
  Lin2<R> m{sa, sb, R(0), R(0)};
  if (pt == Prediction::Epsilon) {
    m.d = R(1);
  } else if (pt == Prediction::Sample) {
    m.c = R(1);
  } else if (pt == Prediction::VPrediction) {
    m.c = -sb;
    m.d = sa;
  }
  return m;
}

template <typename R>
struct LossCoeffs {
  R p, q, w;  // target = p x0 + q noise; per-sample weight w
};

// `level` is alpha_bar for the VP prediction types and sigma for EDM. The caller validates the
// ranges (alpha_bar in [0, 1], sigma > 0) and that the weight is finite.
template <typename R>
FG_HOST_DEVICE LossCoeffs<R> diffusion_loss_coeffs(Prediction pt, LossWeighting wt, R level, R gamma,
                                                   R sigma_data) {
  const R one = R(1), zero = R(0);
  LossCoeffs<R> c{zero, one, one};
  if (pt == Prediction::EDM) {
    const R s = level, sd = sigma_data;
    const R root = dl_sqrt(s * s + sd * sd);
    c.p = s / (sd * root);
    c.q = -sd / root;
    if (wt == LossWeighting::MinSNR) {
      const R c_out = s * sd / root;
      c.w = dl_min(one / (s * s), gamma) * c_out * c_out;
    }
    return c;  // uniform and edm: w = lambda c_out^2 = 1
  }
  const R ab = level, om = one - ab;
  if (pt == Prediction::Sample) {
    c.p = one;
    c.q = zero;
  } else if (pt == Prediction::VPrediction) {
    c.p = -dl_sqrt(om);
    c.q = dl_sqrt(ab);
  }
  if (wt == LossWeighting::MinSNR) {
    if (pt == Prediction::Epsilon) c.w = dl_min(one, gamma * om / ab);  // ab = 0: 1 (inf clipped)
    else if (pt == Prediction::VPrediction) c.w = dl_min(ab, gamma * om);
    else c.w = dl_min(ab / om, gamma);  // ab = 1: gamma
  } else if (wt == LossWeighting::EDM) {
    const R sd2 = sigma_data * sigma_data;
    if (pt == Prediction::Epsilon) c.w = (om + sd2 * ab) / (sd2 * ab);
    else if (pt == Prediction::VPrediction) c.w = (om + sd2 * ab) / sd2;
    else c.w = one / sd2 + ab / om;
  }
  return c;
}

}  // namespace fastgen
