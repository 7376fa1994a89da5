// The torch layer of the diffusion training ops (q_sample, diffusion_loss): schemas (a
// TORCH_LIBRARY_FRAGMENT of the fastgen library), input checks, layouts, CPU implementations calling
// the raw-pointer kernels of csrc/cpu/diffusion_loss.h, and their autograd (C++, Autograd key).
//
// Ops:
//   q_sample(x0, noise, alpha_bar, prediction_type?) -> (x_t, target)
//       x_t = sqrt(ab) x0 + sqrt(1-ab) noise; target (if prediction_type) = c x0 + d noise, in one
//       pass; without prediction_type the second output is an empty [0] tensor.
//   q_sample_out(...)                     the same into caller buffers
//   q_sample_linear(u?, v?, alpha_bar, prediction_type?, transpose, need_first, need_second)
//       the general form: (out1, out2) = M (u, v) or M^T (u, v), with M = [[a, b], [c, d]] the
//       per-sample q_sample matrix (a missing input is zero, an unneeded output is empty [0]).
//       q_sample's backward is q_sample_linear(transpose=true), and q_sample_linear's backward is
//       itself with `transpose` flipped, so every order of derivative runs on the fused kernel.
//   diffusion_loss(model_output, x0, noise, alpha_bar?, sigma?, weight?, prediction_type,
//                  weighting, min_snr_gamma, sigma_data, reduction) -> loss (fp32)
//   diffusion_loss_backward(grad, model_output, x0, noise, ..., need_model_output, need_x0,
//                  need_noise) -> (d model_output, d x0, d noise) (unneeded ones empty [0])
//
// Coefficients are computed on the host in double (csrc/include/fastgen/diffusion_loss.h) from the
// host tensors alpha_bar / sigma / weight and handed to the kernels as fp32 per-sample arrays.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "cpu/diffusion_loss.h"
#include "fastgen/diffusion_loss.h"
#include "ops_common.h"

namespace fastgen {
namespace {

using sv = c10::string_view;
using opt_sv = std::optional<c10::string_view>;
using OptTensor = std::optional<at::Tensor>;

constexpr int64_t kGrain = 32768;       // elements per task (elementwise kernels)
constexpr int64_t kLossChunk = 16384;   // max elements per partial sum of the loss forward

// ------------------------------------------------------------------------------- arguments
Prediction parse_prediction(sv s, const char* op, bool allow_edm) {
  if (s == "epsilon") return Prediction::Epsilon;
  if (s == "sample") return Prediction::Sample;
  if (s == "v_prediction") return Prediction::VPrediction;
  if (allow_edm && s == "edm") return Prediction::EDM;
  TORCH_CHECK_VALUE(false, "fastgen.", op, ": prediction_type must be one of 'epsilon', 'sample', 'v_prediction'",
                    allow_edm ? ", 'edm'" : " (or None)", "; got '", std::string(s), "'");
  return Prediction::None;
}

Prediction parse_prediction(const opt_sv& s, const char* op) {
  return s.has_value() ? parse_prediction(*s, op, false) : Prediction::None;
}

LossWeighting parse_weighting(sv s) {
  if (s == "uniform") return LossWeighting::Uniform;
  if (s == "min_snr") return LossWeighting::MinSNR;
  if (s == "edm") return LossWeighting::EDM;
  TORCH_CHECK_VALUE(false, "fastgen.diffusion_loss: weighting must be one of 'uniform', 'min_snr', 'edm' (or a "
                    "tensor of per-sample weights); got '", std::string(s), "'");
  return LossWeighting::Uniform;
}

enum class Reduction { None, Mean, Sum };

Reduction parse_reduction(sv s) {
  if (s == "mean") return Reduction::Mean;
  if (s == "sum") return Reduction::Sum;
  if (s == "none") return Reduction::None;
  TORCH_CHECK_VALUE(false, "fastgen.diffusion_loss: reduction must be one of 'mean', 'sum', 'none'; got '",
                    std::string(s), "'");
  return Reduction::Mean;
}

void check_like(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name, const char* ref_name) {
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), "fastgen.", op, ": ", name, " has shape ", t.sizes(), " but ", ref_name,
                    " has shape ", ref.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "fastgen.", op, ": ", name, " has dtype ", t.scalar_type(),
                   " but ", ref_name, " has dtype ", ref.scalar_type());
  TORCH_CHECK_VALUE(t.device() == ref.device(), "fastgen.", op, ": ", name, " is on ", t.device(), " but ", ref_name,
                    " is on ", ref.device());
}

void check_dtype(const at::Tensor& t, const char* op, const char* name) {
  const auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, "fastgen.", op, ": ", name,
                   " has dtype ", st, "; supported dtypes are float32, float16 and bfloat16");
}

// A per-sample parameter (alpha_bar, sigma, weight, grad): a 0-d or [N] floating tensor on the CPU.
void check_param(const at::Tensor& a, const at::Tensor& x, const char* op, const char* name, const char* x_name) {
  TORCH_CHECK_TYPE(at::isFloatingType(a.scalar_type()), "fastgen.", op, ": ", name,
                   " must be a floating-point tensor, got ", a.scalar_type());
  TORCH_CHECK_VALUE(a.dim() == 0 || (a.dim() == 1 && x.dim() >= 1 && a.size(0) == x.size(0)), "fastgen.", op, ": ",
                    name, " must be a scalar or have shape [N] with N = ", x_name, ".shape[0] (",
                    x.dim() >= 1 ? x.size(0) : 0, "), got shape ", a.sizes());
  TORCH_CHECK_VALUE(a.device().is_cpu(), "fastgen.", op, ": ", name, " is on ", a.device(), " but ", x_name,
                    " is on ", x.device());
}

// Host values of a checked parameter, read as doubles with a stride (0 for a scalar). float64 and
// float32 tensors are read in place; other float dtypes are converted to float64 first.
struct HostValues {
  at::Tensor t;
  const double* pd = nullptr;
  const float* pf = nullptr;
  int64_t stride = 0;
  double operator[](int64_t i) const { return pd ? pd[i * stride] : static_cast<double>(pf[i * stride]); }
};

HostValues host_values(const at::Tensor& a) {
  HostValues h;
  h.t = (a.scalar_type() == at::kDouble || a.scalar_type() == at::kFloat) ? a : a.to(at::kDouble);
  if (h.t.scalar_type() == at::kDouble) h.pd = h.t.const_data_ptr<double>();
  else h.pf = h.t.const_data_ptr<float>();
  h.stride = h.t.dim() ? h.t.stride(0) : 0;
  return h;
}

const char* prediction_name(Prediction p) {
  switch (p) {
    case Prediction::Epsilon: return "epsilon";
    case Prediction::Sample: return "sample";
    case Prediction::VPrediction: return "v_prediction";
    case Prediction::EDM: return "edm";
    default: return "None";
  }
}

// ------------------------------------------------------------------------------- q_sample
// fp32 coefficients of M (or M^T), one per sample when alpha_bar has shape [N].
std::vector<Lin2<float>> q_coeffs(const at::Tensor& ab, Prediction pt, bool transpose, const char* op,
                                  bool* per_sample) {
  const HostValues v = host_values(ab);
  const int64_t n = ab.dim() ? ab.size(0) : 1;
  *per_sample = ab.dim() == 1;
  std::vector<Lin2<float>> out(static_cast<size_t>(std::max<int64_t>(n, 1)));
  for (int64_t i = 0; i < n; ++i) {
    const double a = v[i];
    TORCH_CHECK_VALUE(a >= 0.0 && a <= 1.0, "fastgen.", op, ": alpha_bar must be in [0, 1], got ", a);
    Lin2<double> c = q_sample_coeffs<double>(a, pt);
    if (transpose) std::swap(c.b, c.c);
    out[i] = {static_cast<float>(c.a), static_cast<float>(c.b), static_cast<float>(c.c), static_cast<float>(c.d)};
  }
  return out;
}

// Non-null outputs are allocated, share strides and are batch-outer dense.
void lin2_into(const at::Tensor* u, const at::Tensor* v, const at::Tensor& ab, Prediction pt, bool transpose,
               at::Tensor* o1, at::Tensor* o2, const char* op, const char* ref_name) {
  const at::Tensor& lay = o1 ? *o1 : *o2;
  if (lay.numel() == 0) return;
  bool per_sample = false;
  const std::vector<Lin2<float>> coeffs = q_coeffs(ab, pt, transpose, op, &per_sample);
  at::Tensor uc, vc;
  if (u) uc = layout_like(*u, lay);
  if (v) vc = layout_like(*v, lay);
  cpu::Lin2Args args;
  args.u = u ? uc.const_data_ptr() : nullptr;
  args.v = v ? vc.const_data_ptr() : nullptr;
  args.out1 = o1 ? o1->mutable_data_ptr() : nullptr;
  args.out2 = o2 ? o2->mutable_data_ptr() : nullptr;
  args.per_sample = per_sample ? lay.numel() / lay.size(0) : lay.numel();
  args.coeffs = coeffs.data();
  args.per_sample_coeffs = per_sample;
  const DType dt = to_fg_dtype(lay.scalar_type(), ref_name);
  at::parallel_for(0, lay.numel(), kGrain, [&](int64_t b, int64_t e) { cpu::lin2(dt, args, b, e); });
}

std::tuple<at::Tensor, at::Tensor> lin2_cpu(const OptTensor& u, const OptTensor& v, const at::Tensor& ab,
                                            Prediction pt, bool transpose, bool need1, bool need2, const char* op,
                                            const char* u_name, const char* v_name) {
  TORCH_CHECK_VALUE(u.has_value() || v.has_value(), "fastgen.", op, ": at least one of ", u_name, " and ", v_name,
                    " must be given");
  const at::Tensor& ref = u.has_value() ? *u : *v;
  const char* ref_name = u.has_value() ? u_name : v_name;
  check_dtype(ref, op, ref_name);
  if (u.has_value() && v.has_value()) check_like(*v, *u, op, v_name, u_name);
  check_param(ab, ref, op, "alpha_bar", ref_name);
  at::Tensor o1, o2;
  if (need1) o1 = empty_output_like(ref);
  if (need2) o2 = need1 ? at::empty_like(o1) : empty_output_like(ref);
  if (need1 || need2) {
    lin2_into(u ? &*u : nullptr, v ? &*v : nullptr, ab, pt, transpose, need1 ? &o1 : nullptr,
              need2 ? &o2 : nullptr, op, ref_name);
  }
  if (!need1) o1 = at::empty({0}, ref.options());
  if (!need2) o2 = at::empty({0}, ref.options());
  return {o1, o2};
}

std::tuple<at::Tensor, at::Tensor> q_sample_cpu(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& ab,
                                                opt_sv pt) {
  const Prediction p = parse_prediction(pt, "q_sample");
  return lin2_cpu(x0, noise, ab, p, false, true, pt.has_value(), "q_sample", "x0", "noise");
}

std::tuple<at::Tensor, at::Tensor> q_sample_linear_cpu(const OptTensor& u, const OptTensor& v, const at::Tensor& ab,
                                                       opt_sv pt, bool transpose, bool need1, bool need2) {
  const Prediction p = parse_prediction(pt, "q_sample_linear");
  return lin2_cpu(u, v, ab, p, transpose, need1, need2, "q_sample_linear", "u", "v");
}

void q_sample_out_cpu(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& ab, opt_sv pt, at::Tensor x_t,
                      OptTensor target) {
  const char* op = "q_sample";
  const Prediction p = parse_prediction(pt, op);
  check_dtype(x0, op, "x0");
  check_like(noise, x0, op, "noise", "x0");
  check_param(ab, x0, op, "alpha_bar", "x0");
  check_like(x_t, x0, op, "out[0] (x_t)", "x0");
  TORCH_CHECK_VALUE(!target.has_value() || pt.has_value(), "fastgen.q_sample: a target output was given but "
                    "prediction_type is None");
  TORCH_CHECK(at::has_internal_overlap(x_t) != at::MemOverlap::Yes &&
                  (!target || at::has_internal_overlap(*target) != at::MemOverlap::Yes),
              "fastgen.q_sample: out tensors must not have internally overlapping memory (e.g. expanded)");
  std::vector<std::pair<const at::Tensor*, const char*>> outs = {{&x_t, "out[0] (x_t)"}};
  if (target) {
    check_like(*target, x0, op, "out[1] (target)", "x0");
    const at::MemOverlapStatus st = at::get_overlap_status(x_t, *target);
    TORCH_CHECK(st != at::MemOverlapStatus::Full && st != at::MemOverlapStatus::Partial,
                "fastgen.q_sample: out[0] (x_t) and out[1] (target) overlap in memory");
    outs.push_back({&*target, "out[1] (target)"});
  }
  for (const auto& o : outs) {
    for (const auto& in : {std::make_pair(&x0, "x0"), std::make_pair(&noise, "noise")}) {
      TORCH_CHECK(at::get_overlap_status(*o.first, *in.first) != at::MemOverlapStatus::Partial, "fastgen.q_sample: ",
                  o.second, " partially overlaps ", in.second,
                  " in memory (writing over an input is only allowed into the identical tensor)");
    }
  }
  // The kernels' pointers are __restrict__: an output that is an input itself (in place) goes
  // through a temporary, as do outputs the kernels cannot walk directly.
  bool aliased = false;
  for (const auto& o : outs) {
    aliased = aliased || at::get_overlap_status(*o.first, x0) == at::MemOverlapStatus::Full ||
              at::get_overlap_status(*o.first, noise) == at::MemOverlapStatus::Full;
  }
  const bool direct = !aliased && batch_outer_dense(x_t) && (!target || target->strides() == x_t.strides());
  if (direct) {
    lin2_into(&x0, &noise, ab, p, false, &x_t, target ? &*target : nullptr, op, "x0");
  } else {
    at::Tensor t1 = empty_output_like(x0), t2;
    if (target) t2 = at::empty_like(t1);
    lin2_into(&x0, &noise, ab, p, false, &t1, target ? &t2 : nullptr, op, "x0");
    x_t.copy_(t1);
    if (target) target->copy_(t2);
  }
}

// ------------------------------------------------------------------------------- diffusion_loss
struct LossSetup {
  std::vector<LossCoeffs<double>> c;  // per sample; w includes the explicit weight
  std::vector<float> pq;              // fp32 (p, q) per sample, for the kernels
  bool has_x0 = false, has_noise = false;
};

struct LossArgs {
  Prediction pt;
  LossWeighting wt;
  Reduction red;
};

LossArgs loss_checks(const at::Tensor& m, const at::Tensor& x0, const at::Tensor& noise, const OptTensor& ab,
                     const OptTensor& sigma, const OptTensor& weight, sv pt, sv wt, double gamma, double sd,
                     sv red) {
  const char* op = "diffusion_loss";
  LossArgs a;
  a.pt = parse_prediction(pt, op, true);
  a.wt = parse_weighting(wt);
  a.red = parse_reduction(red);
  check_dtype(m, op, "model_output");
  TORCH_CHECK_VALUE(m.dim() >= 1, "fastgen.diffusion_loss: model_output must have a batch dimension (shape [N, ...]), "
                    "got a 0-d tensor");
  check_like(x0, m, op, "x0", "model_output");
  check_like(noise, m, op, "noise", "model_output");
  TORCH_CHECK_VALUE(std::isfinite(gamma) && gamma > 0.0, "fastgen.diffusion_loss: min_snr_gamma must be > 0, got ",
                    gamma);
  TORCH_CHECK_VALUE(std::isfinite(sd) && sd > 0.0, "fastgen.diffusion_loss: sigma_data must be > 0, got ", sd);
  if (a.pt == Prediction::EDM) {
    TORCH_CHECK_VALUE(sigma.has_value(), "fastgen.diffusion_loss: sigma is required with prediction_type='edm'");
    TORCH_CHECK_VALUE(!ab.has_value(), "fastgen.diffusion_loss: alpha_bar is not used with prediction_type='edm' "
                      "(the noise level is sigma)");
    check_param(*sigma, m, op, "sigma", "model_output");
  } else {
    TORCH_CHECK_VALUE(ab.has_value(), "fastgen.diffusion_loss: alpha_bar is required with prediction_type='",
                      std::string(pt), "'");
    TORCH_CHECK_VALUE(!sigma.has_value(), "fastgen.diffusion_loss: sigma is only used with prediction_type='edm' "
                      "(pass alpha_bar)");
    check_param(*ab, m, op, "alpha_bar", "model_output");
  }
  if (weight.has_value()) check_param(*weight, m, op, "weight", "model_output");
  return a;
}

LossSetup loss_setup(const at::Tensor& m, const OptTensor& ab, const OptTensor& sigma, const OptTensor& weight,
                     const LossArgs& a, sv wt_name, double gamma, double sd) {
  const bool edm = a.pt == Prediction::EDM;
  const HostValues level = host_values(edm ? *sigma : *ab);
  HostValues wv;
  if (weight.has_value()) wv = host_values(*weight);
  const int64_t n = m.size(0);
  LossSetup s;
  s.c.resize(static_cast<size_t>(n));
  s.pq.resize(static_cast<size_t>(2 * n));
  for (int64_t i = 0; i < n; ++i) {
    const double l = level[i];
    if (edm) {
      TORCH_CHECK_VALUE(l > 0.0 && std::isfinite(l), "fastgen.diffusion_loss: sigma must be in (0, inf), got ", l);
    } else {
      TORCH_CHECK_VALUE(l >= 0.0 && l <= 1.0, "fastgen.diffusion_loss: alpha_bar must be in [0, 1], got ", l);
    }
    LossCoeffs<double> c = diffusion_loss_coeffs<double>(a.pt, a.wt, l, gamma, sd);
    TORCH_CHECK_VALUE(std::isfinite(c.w), "fastgen.diffusion_loss: weighting='", std::string(wt_name),
                      "' is infinite for prediction_type='", prediction_name(a.pt), "' at ", edm ? "sigma" : "alpha_bar",
                      " = ", l, " (use alpha_bar in (0, 1))");
    if (weight.has_value()) {
      const double w = wv[i];
      TORCH_CHECK_VALUE(std::isfinite(w), "fastgen.diffusion_loss: weight must be finite, got ", w, " for sample ", i);
      c.w *= w;
    }
    s.c[i] = c;
    s.pq[2 * i] = static_cast<float>(c.p);
    s.pq[2 * i + 1] = static_cast<float>(c.q);
    s.has_x0 = s.has_x0 || s.pq[2 * i] != 0.f;
    s.has_noise = s.has_noise || s.pq[2 * i + 1] != 0.f;
  }
  return s;
}

// The tensor whose layout the kernels walk: model_output itself when batch-outer dense.
at::Tensor kernel_layout(const at::Tensor& m) { return batch_outer_dense(m) ? m : m.contiguous(); }

at::Tensor diffusion_loss_cpu(const at::Tensor& m, const at::Tensor& x0, const at::Tensor& noise, const OptTensor& ab,
                              const OptTensor& sigma, const OptTensor& weight, sv pt, sv wt, double gamma, double sd,
                              sv red) {
  const LossArgs a = loss_checks(m, x0, noise, ab, sigma, weight, pt, wt, gamma, sd, red);
  const int64_t n = m.size(0);
  const LossSetup s = loss_setup(m, ab, sigma, weight, a, wt, gamma, sd);
  const auto fopts = m.options().dtype(at::kFloat);
  at::Tensor out = a.red == Reduction::None ? at::empty({n}, fopts) : at::empty({}, fopts);
  const int64_t per = n ? m.numel() / n : 0;
  std::vector<double> per_sample(static_cast<size_t>(n), 0.0);
  if (per > 0) {
    const at::Tensor mc = kernel_layout(m);
    at::Tensor xc, nc;
    if (s.has_x0) xc = layout_like(x0, mc);
    if (s.has_noise) nc = layout_like(noise, mc);
    const int64_t cps = (per + kLossChunk - 1) / kLossChunk;  // chunks per sample, of equal size
    const int64_t chunk = (per + cps - 1) / cps;
    cpu::LossForwardArgs args;
    args.m = mc.const_data_ptr();
    args.x0 = s.has_x0 ? xc.const_data_ptr() : nullptr;
    args.noise = s.has_noise ? nc.const_data_ptr() : nullptr;
    args.per_sample = per;
    args.chunk = chunk;
    args.chunks_per_sample = cps;
    args.pq = s.pq.data();
    std::vector<double> partials(static_cast<size_t>(n * cps));
    const DType dt = to_fg_dtype(m.scalar_type(), "model_output");
    const int64_t grain = std::max<int64_t>(1, kGrain / chunk);
    at::parallel_for(0, n * cps, grain,
                     [&](int64_t b, int64_t e) { cpu::loss_partials(dt, args, b, e, partials.data()); });
    for (int64_t i = 0; i < n; ++i) {
      double acc = 0.0;
      for (int64_t j = 0; j < cps; ++j) acc += partials[i * cps + j];
      per_sample[i] = s.c[i].w * (acc / static_cast<double>(per));
    }
  }
  if (a.red == Reduction::None) {
    float* o = out.mutable_data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) o[i] = static_cast<float>(per_sample[i]);
  } else {
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) total += per_sample[i];
    if (a.red == Reduction::Mean && n > 0) total /= static_cast<double>(n);  // mean of an empty batch: 0
    *out.mutable_data_ptr<float>() = static_cast<float>(total);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> diffusion_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& m, const at::Tensor& x0, const at::Tensor& noise, const OptTensor& ab,
    const OptTensor& sigma, const OptTensor& weight, sv pt, sv wt, double gamma, double sd, sv red, bool need_m,
    bool need_x0, bool need_noise) {
  const LossArgs a = loss_checks(m, x0, noise, ab, sigma, weight, pt, wt, gamma, sd, red);
  const char* op = "diffusion_loss_backward";
  const int64_t n = m.size(0);
  TORCH_CHECK_TYPE(at::isFloatingType(grad.scalar_type()), "fastgen.", op, ": grad must be a floating-point tensor, got ",
                   grad.scalar_type());
  if (a.red == Reduction::None) {
    TORCH_CHECK_VALUE(grad.dim() == 1 && grad.size(0) == n, "fastgen.", op,
                      ": with reduction='none', grad must have shape [N] = [", n, "], got ", grad.sizes());
  } else {
    TORCH_CHECK_VALUE(grad.dim() == 0, "fastgen.", op, ": with reduction='", std::string(red),
                      "', grad must be a scalar (0-d), got shape ", grad.sizes());
  }
  TORCH_CHECK_VALUE(grad.device().is_cpu(), "fastgen.", op, ": grad is on ", grad.device(), " but model_output is on ",
                    m.device());
  const at::Tensor mc = kernel_layout(m);
  at::Tensor dm = need_m ? at::empty_like(mc) : at::empty({0}, m.options());
  at::Tensor dx = need_x0 ? at::empty_like(mc) : at::empty({0}, m.options());
  at::Tensor dn = need_noise ? at::empty_like(mc) : at::empty({0}, m.options());
  if (m.numel() == 0 || !(need_m || need_x0 || need_noise)) return {dm, dx, dn};
  const LossSetup s = loss_setup(m, ab, sigma, weight, a, wt, gamma, sd);
  const int64_t per = m.numel() / n;
  const HostValues g = host_values(grad);
  std::vector<float> kkk(static_cast<size_t>(3 * n));
  for (int64_t i = 0; i < n; ++i) {
    double gs = g[i];
    if (a.red == Reduction::Mean) gs /= static_cast<double>(n);
    const double k = gs * 2.0 * s.c[i].w / static_cast<double>(per);
    kkk[3 * i] = static_cast<float>(k);
    kkk[3 * i + 1] = static_cast<float>(-s.c[i].p * k);
    kkk[3 * i + 2] = static_cast<float>(-s.c[i].q * k);
  }
  at::Tensor xc, nc;
  if (s.has_x0) xc = layout_like(x0, mc);
  if (s.has_noise) nc = layout_like(noise, mc);
  cpu::LossBackwardArgs args;
  args.m = mc.const_data_ptr();
  args.x0 = s.has_x0 ? xc.const_data_ptr() : nullptr;
  args.noise = s.has_noise ? nc.const_data_ptr() : nullptr;
  args.dm = need_m ? dm.mutable_data_ptr() : nullptr;
  args.dx0 = need_x0 ? dx.mutable_data_ptr() : nullptr;
  args.dnoise = need_noise ? dn.mutable_data_ptr() : nullptr;
  args.per_sample = per;
  args.pq = s.pq.data();
  args.kkk = kkk.data();
  const DType dt = to_fg_dtype(m.scalar_type(), "model_output");
  at::parallel_for(0, m.numel(), kGrain, [&](int64_t b, int64_t e) { cpu::loss_backward(dt, args, b, e); });
  return {dm, dx, dn};
}

// ------------------------------------------------------------------------------- autograd
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

OptTensor opt(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }
opt_sv opt_str(const c10::IValue& v) { return v.isNone() ? opt_sv() : opt_sv(v.toStringRef()); }
c10::IValue save_str(const opt_sv& s) { return s ? c10::IValue(std::string(*s)) : c10::IValue(); }

std::tuple<at::Tensor, at::Tensor> call_q_sample(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& ab,
                                                 opt_sv pt) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgen::q_sample", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, opt_sv)>();
  return op.call(x0, noise, ab, pt);
}

std::tuple<at::Tensor, at::Tensor> call_lin(const OptTensor& u, const OptTensor& v, const at::Tensor& ab, opt_sv pt,
                                            bool transpose, bool need1, bool need2) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgen::q_sample_linear", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const OptTensor&, const OptTensor&,
                                                                 const at::Tensor&, opt_sv, bool, bool, bool)>();
  return op.call(u, v, ab, pt, transpose, need1, need2);
}

at::Tensor call_loss(const at::Tensor& m, const at::Tensor& x0, const at::Tensor& noise, const OptTensor& ab,
                     const OptTensor& sigma, const OptTensor& weight, sv pt, sv wt, double gamma, double sd, sv red) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgen::diffusion_loss", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                                         const OptTensor&, const OptTensor&, sv, sv, double, double, sv)>();
  return op.call(m, x0, noise, ab, sigma, weight, pt, wt, gamma, sd, red);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_loss_backward(
    const at::Tensor& g, const at::Tensor& m, const at::Tensor& x0, const at::Tensor& noise, const OptTensor& ab,
    const OptTensor& sigma, const OptTensor& weight, sv pt, sv wt, double gamma, double sd, sv red, bool need_m,
    bool need_x0, bool need_noise) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastgen::diffusion_loss_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
              const OptTensor&, const OptTensor&, sv, sv, double, double, sv, bool, bool, bool)>();
  return op.call(g, m, x0, noise, ab, sigma, weight, pt, wt, gamma, sd, red, need_m, need_x0, need_noise);
}

void no_param_grad(const OptTensor& t, const char* op, const char* name) {
  TORCH_CHECK(!(t.has_value() && t->requires_grad() && at::GradMode::is_enabled()), "fastgen.", op,
              ": gradients with respect to ", name,
              " are not computed by the fused op (use fastgen.functional.", op, " with impl='torch')");
}

// The general linear op: its backward is itself with `transpose` flipped, applied to the grads.
class QSampleLinearFn : public torch::autograd::Function<QSampleLinearFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const OptTensor& u, const OptTensor& v, const at::Tensor& ab,
                               opt_sv pt, bool transpose, bool need1, bool need2) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [o1, o2] = call_lin(u, v, ab, pt, transpose, need1, need2);
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({ab});
    ctx->saved_data["pt"] = save_str(pt);
    ctx->saved_data["transpose"] = transpose;
    ctx->saved_data["need1"] = need1;
    ctx->saved_data["need2"] = need2;
    // needs_input_grad counts only the tensor inputs that are present (absent optionals have no edge)
    ctx->saved_data["u_edge"] = u.has_value() ? int64_t(0) : int64_t(-1);
    ctx->saved_data["v_edge"] = v.has_value() ? int64_t(u.has_value() ? 1 : 0) : int64_t(-1);
    return {o1, o2};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor ab = ctx->get_saved_variables()[0];
    const at::Tensor g1 = ctx->saved_data["need1"].toBool() ? grads[0] : at::Tensor();
    const at::Tensor g2 = ctx->saved_data["need2"].toBool() ? grads[1] : at::Tensor();
    const int64_t ue = ctx->saved_data["u_edge"].toInt(), ve = ctx->saved_data["v_edge"].toInt();
    const bool need_u = ue >= 0 && ctx->needs_input_grad(ue), need_v = ve >= 0 && ctx->needs_input_grad(ve);
    variable_list out(7);
    if ((g1.defined() || g2.defined()) && (need_u || need_v)) {
      auto [du, dv] = call_lin(opt(g1), opt(g2), ab, opt_str(ctx->saved_data["pt"]),
                               !ctx->saved_data["transpose"].toBool(), need_u, need_v);
      if (need_u) out[0] = du;
      if (need_v) out[1] = dv;
    }
    return out;
  }
};

class QSampleFn : public torch::autograd::Function<QSampleFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x0, const at::Tensor& noise,
                               const at::Tensor& ab, opt_sv pt) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [xt, target] = call_q_sample(x0, noise, ab, pt);
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({ab});
    ctx->saved_data["pt"] = save_str(pt);
    return {xt, target};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor ab = ctx->get_saved_variables()[0];
    const opt_sv pt = opt_str(ctx->saved_data["pt"]);
    const at::Tensor g1 = grads[0];
    const at::Tensor g2 = pt.has_value() ? grads[1] : at::Tensor();
    const bool need_x = ctx->needs_input_grad(0), need_n = ctx->needs_input_grad(1);
    variable_list out(4);
    if ((g1.defined() || g2.defined()) && (need_x || need_n)) {
      auto [dx, dn] = call_lin(opt(g1), opt(g2), ab, pt, true, need_x, need_n);
      if (need_x) out[0] = dx;
      if (need_n) out[1] = dn;
    }
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> q_sample_autograd(const at::Tensor& x0, const at::Tensor& noise,
                                                     const at::Tensor& ab, opt_sv pt) {
  no_param_grad(ab, "q_sample", "alpha_bar");
  if (!at::GradMode::is_enabled() || !(x0.requires_grad() || noise.requires_grad())) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_q_sample(x0, noise, ab, pt);
  }
  auto o = QSampleFn::apply(x0, noise, ab, pt);
  return {o[0], o[1]};
}

std::tuple<at::Tensor, at::Tensor> q_sample_linear_autograd(const OptTensor& u, const OptTensor& v,
                                                            const at::Tensor& ab, opt_sv pt, bool transpose,
                                                            bool need1, bool need2) {
  no_param_grad(ab, "q_sample", "alpha_bar");
  const bool any = (u && u->requires_grad()) || (v && v->requires_grad());
  if (!at::GradMode::is_enabled() || !any) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_lin(u, v, ab, pt, transpose, need1, need2);
  }
  auto o = QSampleLinearFn::apply(u, v, ab, pt, transpose, need1, need2);
  return {o[0], o[1]};
}

void save_loss_params(AutogradContext* ctx, sv pt, sv wt, double gamma, double sd, sv red) {
  ctx->saved_data["pt"] = std::string(pt);
  ctx->saved_data["wt"] = std::string(wt);
  ctx->saved_data["gamma"] = gamma;
  ctx->saved_data["sd"] = sd;
  ctx->saved_data["red"] = std::string(red);
}

// The backward op is linear in (model_output, x0, noise) and in grad. With r = m - p x0 - q n,
// k = g_s 2 w_s / P, its outputs are (k r, -p k r, -q k r); for upstream grads (u_m, u_x0, u_n):
//   d/d(m, x0, noise) = the backward op evaluated at (g, u_m, u_x0, u_n)
//   d/dg_s            = sum over sample s of (dm1 u_m + dx1 u_x0 + dn1 u_n), with (dm1, dx1, dn1)
//                       the backward op at g = 1 per sample (reduction 'none'), then summed over the
//                       batch for 'sum' (and divided by N for 'mean').
class DiffusionLossBackwardFn : public torch::autograd::Function<DiffusionLossBackwardFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& g, const at::Tensor& m, const at::Tensor& x0,
                               const at::Tensor& noise, const OptTensor& ab, const OptTensor& sigma,
                               const OptTensor& weight, sv pt, sv wt, double gamma, double sd, sv red, bool need_m,
                               bool need_x0, bool need_noise) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [dm, dx, dn] =
        call_loss_backward(g, m, x0, noise, ab, sigma, weight, pt, wt, gamma, sd, red, need_m, need_x0, need_noise);
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({g, m, x0, noise, ab.value_or(at::Tensor()), sigma.value_or(at::Tensor()),
                            weight.value_or(at::Tensor())});
    save_loss_params(ctx, pt, wt, gamma, sd, red);
    ctx->saved_data["need_m"] = need_m;
    ctx->saved_data["need_x0"] = need_x0;
    ctx->saved_data["need_noise"] = need_noise;
    return {dm, dx, dn};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto sv_ = ctx->get_saved_variables();
    const at::Tensor &g = sv_[0], &m = sv_[1], &x0 = sv_[2], &noise = sv_[3];
    const OptTensor ab = opt(sv_[4]), sigma = opt(sv_[5]), weight = opt(sv_[6]);
    const std::string& pt = ctx->saved_data["pt"].toStringRef();
    const std::string& wt = ctx->saved_data["wt"].toStringRef();
    const std::string& red = ctx->saved_data["red"].toStringRef();
    const double gamma = ctx->saved_data["gamma"].toDouble(), sd = ctx->saved_data["sd"].toDouble();
    const at::Tensor um = ctx->saved_data["need_m"].toBool() ? grads[0] : at::Tensor();
    const at::Tensor ux = ctx->saved_data["need_x0"].toBool() ? grads[1] : at::Tensor();
    const at::Tensor un = ctx->saved_data["need_noise"].toBool() ? grads[2] : at::Tensor();
    variable_list out(15);
    if (!(um.defined() || ux.defined() || un.defined())) return out;
    const bool need_g = ctx->needs_input_grad(0);
    const bool need_m = ctx->needs_input_grad(1), need_x = ctx->needs_input_grad(2), need_n = ctx->needs_input_grad(3);
    if (need_m || need_x || need_n) {
      auto z = [&](const at::Tensor& u) { return u.defined() ? u : at::zeros_like(m); };
      auto [dm, dx, dn] = call_loss_backward(g, z(um), z(ux), z(un), ab, sigma, weight, pt, wt, gamma, sd, red, need_m,
                                             need_x, need_n);
      if (need_m) out[1] = dm;
      if (need_x) out[2] = dx;
      if (need_n) out[3] = dn;
    }
    if (need_g) {
      const c10::SymInt n = m.sym_size(0);
      const at::Tensor ones = at::ones_symint({n}, g.options());
      auto [d1, x1, n1] = call_loss_backward(ones, m, x0, noise, ab, sigma, weight, pt, wt, gamma, sd, "none",
                                             um.defined(), ux.defined(), un.defined());
      at::Tensor prod;
      auto add = [&](const at::Tensor& a, const at::Tensor& u) {
        if (!u.defined()) return;
        const at::Tensor t = a.to(at::kDouble) * u.to(at::kDouble);
        prod = prod.defined() ? prod + t : t;
      };
      add(d1, um);
      add(x1, ux);
      add(n1, un);
      std::vector<int64_t> dims;
      for (int64_t d = 1; d < m.dim(); ++d) dims.push_back(d);
      const at::Tensor per = dims.empty() ? prod : prod.sum(dims);
      at::Tensor dg;
      if (red == "none") {
        dg = per;
      } else {
        dg = per.sum();
        if (red == "mean") dg = dg.div(c10::Scalar(n.max(c10::SymInt(1))));  // mean of an empty batch: 0
      }
      out[0] = dg.to(g.scalar_type());
    }
    return out;
  }
};

class DiffusionLossFn : public torch::autograd::Function<DiffusionLossFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& m, const at::Tensor& x0, const at::Tensor& noise,
                               const OptTensor& ab, const OptTensor& sigma, const OptTensor& weight, sv pt, sv wt,
                               double gamma, double sd, sv red) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor loss = call_loss(m, x0, noise, ab, sigma, weight, pt, wt, gamma, sd, red);
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({m, x0, noise, ab.value_or(at::Tensor()), sigma.value_or(at::Tensor()),
                            weight.value_or(at::Tensor())});
    save_loss_params(ctx, pt, wt, gamma, sd, red);
    return {loss};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(11);
    if (!grads[0].defined()) return out;
    const auto s = ctx->get_saved_variables();
    const bool nm = ctx->needs_input_grad(0), nx = ctx->needs_input_grad(1), nn = ctx->needs_input_grad(2);
    if (!(nm || nx || nn)) return out;
    auto [dm, dx, dn] = call_loss_backward(
        grads[0], s[0], s[1], s[2], opt(s[3]), opt(s[4]), opt(s[5]), ctx->saved_data["pt"].toStringRef(),
        ctx->saved_data["wt"].toStringRef(), ctx->saved_data["gamma"].toDouble(), ctx->saved_data["sd"].toDouble(),
        ctx->saved_data["red"].toStringRef(), nm, nx, nn);
    if (nm) out[0] = dm;
    if (nx) out[1] = dx;
    if (nn) out[2] = dn;
    return out;
  }
};

at::Tensor diffusion_loss_autograd(const at::Tensor& m, const at::Tensor& x0, const at::Tensor& noise,
                                  const OptTensor& ab, const OptTensor& sigma, const OptTensor& weight, sv pt, sv wt,
                                  double gamma, double sd, sv red) {
  no_param_grad(ab, "diffusion_loss", "alpha_bar");
  no_param_grad(sigma, "diffusion_loss", "sigma");
  no_param_grad(weight, "diffusion_loss", "weight");
  if (!at::GradMode::is_enabled() || !(m.requires_grad() || x0.requires_grad() || noise.requires_grad())) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_loss(m, x0, noise, ab, sigma, weight, pt, wt, gamma, sd, red);
  }
  return DiffusionLossFn::apply(m, x0, noise, ab, sigma, weight, pt, wt, gamma, sd, red)[0];
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> diffusion_loss_backward_autograd(
    const at::Tensor& g, const at::Tensor& m, const at::Tensor& x0, const at::Tensor& noise, const OptTensor& ab,
    const OptTensor& sigma, const OptTensor& weight, sv pt, sv wt, double gamma, double sd, sv red, bool need_m,
    bool need_x0, bool need_noise) {
  no_param_grad(ab, "diffusion_loss", "alpha_bar");
  no_param_grad(sigma, "diffusion_loss", "sigma");
  no_param_grad(weight, "diffusion_loss", "weight");
  // The first backward of a training step runs without grad mode (no create_graph): no graph node.
  const bool any = g.requires_grad() || m.requires_grad() || x0.requires_grad() || noise.requires_grad();
  if (!at::GradMode::is_enabled() || !any) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_loss_backward(g, m, x0, noise, ab, sigma, weight, pt, wt, gamma, sd, red, need_m, need_x0,
                              need_noise);
  }
  auto o = DiffusionLossBackwardFn::apply(g, m, x0, noise, ab, sigma, weight, pt, wt, gamma, sd, red, need_m, need_x0,
                                          need_noise);
  return {o[0], o[1], o[2]};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_FRAGMENT(fastgen, m) {
  m.def("q_sample(Tensor x0, Tensor noise, Tensor alpha_bar, str? prediction_type=None) -> (Tensor, Tensor)");
  m.def(
      "q_sample_out(Tensor x0, Tensor noise, Tensor alpha_bar, str? prediction_type, Tensor(a!) x_t, "
      "Tensor(b!)? target) -> ()");
  m.def(
      "q_sample_linear(Tensor? u, Tensor? v, Tensor alpha_bar, str? prediction_type, bool transpose, "
      "bool need_first, bool need_second) -> (Tensor, Tensor)");
  m.def(
      "diffusion_loss(Tensor model_output, Tensor x0, Tensor noise, Tensor? alpha_bar, Tensor? sigma, "
      "Tensor? weight, str prediction_type, str weighting, float min_snr_gamma, float sigma_data, str reduction) "
      "-> Tensor");
  m.def(
      "diffusion_loss_backward(Tensor grad, Tensor model_output, Tensor x0, Tensor noise, Tensor? alpha_bar, "
      "Tensor? sigma, Tensor? weight, str prediction_type, str weighting, float min_snr_gamma, float sigma_data, "
      "str reduction, bool need_model_output, bool need_x0, bool need_noise) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("q_sample", &fastgen::q_sample_cpu);
  m.impl("q_sample_out", &fastgen::q_sample_out_cpu);
  m.impl("q_sample_linear", &fastgen::q_sample_linear_cpu);
  m.impl("diffusion_loss", &fastgen::diffusion_loss_cpu);
  m.impl("diffusion_loss_backward", &fastgen::diffusion_loss_backward_cpu);
}

TORCH_LIBRARY_IMPL(fastgen, Autograd, m) {
  m.impl("q_sample", &fastgen::q_sample_autograd);
  m.impl("q_sample_linear", &fastgen::q_sample_linear_autograd);
  m.impl("diffusion_loss", &fastgen::diffusion_loss_autograd);
  m.impl("diffusion_loss_backward", &fastgen::diffusion_loss_backward_autograd);
}
