// The torch layer of the fused group_norm: schemas (a TORCH_LIBRARY_FRAGMENT of the fastgen
// library), input checks naming the argument, layouts, and CPU implementations calling the
// raw-pointer kernels of csrc/cpu/group_norm.h. Autograd (first and second order) is registered
// from Python (fastgen/ops/group_norm.py), shared with the Triton ops.
//
// Ops:
//   group_norm(x, num_groups, weight?, bias?, scale?, shift?, eps, act) -> (y, mean, rstd)
//       y = act((x - mean) rstd w + b) (1 + scale) + shift), mean / rstd fp32 (N, G);
//       act: 0 none, 1 SiLU, 2 GELU (erf). x is NCHW-contiguous or channels_last (4-d); any other
//       layout is made contiguous. y has x's dtype and layout.
//   group_norm_backward(grad_y, x, mean, rstd, num_groups, weight?, bias?, scale?, shift?, eps, act,
//                       need_x, need_weight, need_bias, need_scale, need_shift)
//       -> (grad_x, grad_weight, grad_bias, grad_scale, grad_shift) (unneeded ones empty [0]);
//       each grad in its input's dtype, grad_scale / grad_shift shaped (N, C).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <vector>

#include "cpu/group_norm.h"
#include "ops_common.h"

namespace fastgen {
namespace {

using OptTensor = std::optional<at::Tensor>;
constexpr int64_t kTaskElems = 16384;  // elements per parallel task (at least)

struct Setup {
  at::Tensor x;                     // the layout the kernels walk
  bool cl = false;                  // channels last
  int64_t N = 0, C = 0, S = 0, G = 0;
  at::Tensor w, b, s, t;            // fp32 contiguous parameters (undefined: absent)
};

void check_param(const OptTensor& p, const at::Tensor& x, const char* op, const char* name) {
  if (!p.has_value()) return;
  TORCH_CHECK_TYPE(at::isFloatingType(p->scalar_type()), "fastgen.", op, ": ", name,
                   " must be a floating-point tensor, got ", p->scalar_type());
  TORCH_CHECK_VALUE(p->device() == x.device(), "fastgen.", op, ": ", name, " is on ", p->device(), " but x is on ",
                    x.device());
}

Setup setup(const at::Tensor& x, int64_t G, const OptTensor& weight, const OptTensor& bias, const OptTensor& scale,
            const OptTensor& shift, double eps, int64_t act, const char* op) {
  const auto st = x.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, "fastgen.", op, ": x has dtype ", st,
                   "; supported dtypes are float32, float16 and bfloat16");
  TORCH_CHECK_VALUE(x.dim() >= 2, "fastgen.", op, ": x must have shape (N, C, *spatial) with at least 2 dims, got ",
                    x.sizes());
  TORCH_CHECK_VALUE(x.device().is_cpu(), "fastgen.", op, ": x is on ", x.device(), "; this kernel runs on the CPU");
  TORCH_CHECK_VALUE(G >= 1, "fastgen.", op, ": num_groups must be >= 1, got ", G);
  const int64_t C = x.size(1);
  TORCH_CHECK_VALUE(C % G == 0, "fastgen.", op, ": the number of channels (", C, ") must be divisible by num_groups (",
                    G, ")");
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps > 0.0, "fastgen.", op, ": eps must be finite and > 0, got ", eps);
  TORCH_CHECK_VALUE(act >= 0 && act <= 2, "fastgen.", op, ": act must be 0 (none), 1 (silu) or 2 (gelu), got ", act);
  Setup s;
  s.N = x.size(0);
  s.C = C;
  s.G = G;
  s.S = 1;
  for (int64_t d = 2; d < x.dim(); ++d) s.S *= x.size(d);
  s.cl = x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  s.x = s.cl ? x : x.contiguous();
  for (auto [p, name] : {std::make_pair(&weight, "weight"), std::make_pair(&bias, "bias")}) {
    check_param(*p, x, op, name);
    if (p->has_value()) {
      TORCH_CHECK_VALUE((*p)->dim() == 1 && (*p)->size(0) == C, "fastgen.", op, ": ", name, " must have shape (C,) = (",
                        C, ",), got ", (*p)->sizes());
    }
  }
  for (auto [p, name] : {std::make_pair(&scale, "scale"), std::make_pair(&shift, "shift")}) {
    check_param(*p, x, op, name);
    if (p->has_value()) {
      TORCH_CHECK_VALUE((*p)->dim() == 2 && (*p)->size(0) == s.N && (*p)->size(1) == C, "fastgen.", op, ": ", name,
                        " must have shape (N, C) = (", s.N, ", ", C, "), got ", (*p)->sizes());
    }
  }
  auto f32 = [](const OptTensor& p) { return p.has_value() ? p->to(at::kFloat).contiguous() : at::Tensor(); };
  s.w = f32(weight);
  s.b = f32(bias);
  s.s = f32(scale);
  s.t = f32(shift);
  return s;
}

cpu::GroupNormArgs kernel_args(const Setup& s, double eps, int64_t act) {
  cpu::GroupNormArgs a{};
  a.x = s.x.const_data_ptr();
  a.weight = s.w.defined() ? s.w.const_data_ptr<float>() : nullptr;
  a.bias = s.b.defined() ? s.b.const_data_ptr<float>() : nullptr;
  a.scale = s.s.defined() ? s.s.const_data_ptr<float>() : nullptr;
  a.shift = s.t.defined() ? s.t.const_data_ptr<float>() : nullptr;
  a.N = s.N;
  a.C = s.C;
  a.S = s.S;
  a.G = s.G;
  a.eps = static_cast<float>(eps);
  a.act = static_cast<int>(act);
  return a;
}

// Pixels per channels-last task, and the number of tasks per sample.
std::pair<int64_t, int64_t> cl_chunks(const Setup& s) {
  const int64_t chunk = std::max<int64_t>(1, kTaskElems / std::max<int64_t>(s.C, 1));
  return {chunk, (s.S + chunk - 1) / chunk};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_cpu(const at::Tensor& x, int64_t G, const OptTensor& weight,
                                                              const OptTensor& bias, const OptTensor& scale,
                                                              const OptTensor& shift, double eps, int64_t act) {
  const Setup s = setup(x, G, weight, bias, scale, shift, eps, act, "group_norm");
  at::Tensor y = at::empty_like(s.x);
  const auto fopts = x.options().dtype(at::kFloat);
  at::Tensor mean = at::zeros({s.N, G}, fopts);
  at::Tensor rstd = at::full({s.N, G}, 1.0 / std::sqrt(eps), fopts);
  if (s.x.numel() == 0) return {y, mean, rstd};
  cpu::GroupNormArgs a = kernel_args(s, eps, act);
  a.y = y.mutable_data_ptr();
  a.mean = mean.mutable_data_ptr<float>();
  a.rstd = rstd.mutable_data_ptr<float>();
  const DType dt = to_fg_dtype(x.scalar_type(), "x");
  if (!s.cl) {
    const int64_t M = s.C / G * s.S;
    at::parallel_for(0, s.N * G, std::max<int64_t>(1, kTaskElems / M),
                     [&](int64_t b, int64_t e) { cpu::group_norm_forward_nchw(dt, a, b, e); });
  } else {
    const auto [chunk, nchunks] = cl_chunks(s);
    const int64_t tasks = s.N * nchunks;
    std::vector<double> partials(static_cast<size_t>(tasks * 2 * s.C));
    at::parallel_for(0, tasks, 1, [&](int64_t b, int64_t e) {
      cpu::group_norm_cl_stats(dt, a, chunk, nchunks, b, e, partials.data());
    });
    std::vector<float> A(static_cast<size_t>(s.N * s.C)), B(static_cast<size_t>(s.N * s.C));
    cpu::group_norm_cl_finish_stats(dt, a, nchunks, partials.data(), A.data(), B.data());
    at::parallel_for(0, tasks, 1, [&](int64_t b, int64_t e) {
      cpu::group_norm_cl_apply(dt, a, chunk, nchunks, A.data(), B.data(), b, e);
    });
  }
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_norm_backward_cpu(
    const at::Tensor& gy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd, int64_t G,
    const OptTensor& weight, const OptTensor& bias, const OptTensor& scale, const OptTensor& shift, double eps,
    int64_t act, bool need_x, bool need_w, bool need_b, bool need_s, bool need_t) {
  const char* op = "group_norm_backward";
  const Setup s = setup(x, G, weight, bias, scale, shift, eps, act, op);
  TORCH_CHECK_VALUE(gy.sizes() == x.sizes(), "fastgen.", op, ": grad_y has shape ", gy.sizes(), " but x has shape ",
                    x.sizes());
  TORCH_CHECK_TYPE(gy.scalar_type() == x.scalar_type(), "fastgen.", op, ": grad_y has dtype ", gy.scalar_type(),
                   " but x has dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(gy.device() == x.device(), "fastgen.", op, ": grad_y is on ", gy.device(), " but x is on ",
                    x.device());
  for (auto [t, name] : {std::make_pair(&mean, "mean"), std::make_pair(&rstd, "rstd")}) {
    TORCH_CHECK_VALUE(t->dim() == 2 && t->size(0) == s.N && t->size(1) == G && t->scalar_type() == at::kFloat &&
                          t->device() == x.device(),
                      "fastgen.", op, ": ", name, " must be a float32 (N, num_groups) = (", s.N, ", ", G,
                      ") tensor on x's device, got ", t->scalar_type(), " ", t->sizes());
  }
  need_w = need_w && weight.has_value();
  need_b = need_b && bias.has_value();
  need_s = need_s && scale.has_value();
  need_t = need_t && shift.has_value();
  const auto empty = [&](const OptTensor& like) {
    return at::empty({0}, like.has_value() ? like->options() : x.options());
  };
  at::Tensor gx = need_x ? at::empty_like(s.x) : at::empty({0}, x.options());
  at::Tensor gw = empty(weight), gb = empty(bias), gs = empty(scale), gt = empty(shift);
  if (!(need_x || need_w || need_b || need_s || need_t)) return {gx, gw, gb, gs, gt};
  const auto dopts = x.options().dtype(at::kDouble);
  at::Tensor s1 = at::zeros({s.N, s.C}, dopts), s2 = at::zeros({s.N, s.C}, dopts);
  if (s.x.numel() > 0) {
    const at::Tensor gyc = layout_like(gy, s.x);
    const at::Tensor mc = mean.contiguous(), rc = rstd.contiguous();
    cpu::GroupNormArgs a = kernel_args(s, eps, act);
    a.gy = gyc.const_data_ptr();
    a.gx = need_x ? gx.mutable_data_ptr() : nullptr;
    a.mean = const_cast<float*>(mc.const_data_ptr<float>());
    a.rstd = const_cast<float*>(rc.const_data_ptr<float>());
    const DType dt = to_fg_dtype(x.scalar_type(), "x");
    double* p1 = s1.mutable_data_ptr<double>();
    double* p2 = s2.mutable_data_ptr<double>();
    if (!s.cl) {
      const int64_t M = s.C / G * s.S;
      at::parallel_for(0, s.N * G, std::max<int64_t>(1, kTaskElems / M), [&](int64_t b, int64_t e) {
        std::vector<float> scratch(act != 0 ? static_cast<size_t>(M) : 1);
        cpu::group_norm_backward_nchw(dt, a, b, e, p1, p2, scratch.data());
      });
    } else {
      const auto [chunk, nchunks] = cl_chunks(s);
      const int64_t tasks = s.N * nchunks;
      std::vector<double> partials(static_cast<size_t>(tasks * 2 * s.C));
      at::parallel_for(0, tasks, 1, [&](int64_t b, int64_t e) {
        cpu::group_norm_cl_backward_sums(dt, a, chunk, nchunks, b, e, partials.data());
      });
      std::vector<float> k(static_cast<size_t>(4 * s.N * s.C));
      cpu::group_norm_cl_finish_backward(a, nchunks, partials.data(), p1, p2, k.data());
      if (need_x) {
        at::parallel_for(0, tasks, 1, [&](int64_t b, int64_t e) {
          cpu::group_norm_cl_backward_apply(dt, a, chunk, nchunks, k.data(), b, e);
        });
      }
    }
  }
  // parameter grads from the per-(n, c) sums S1 = sum gz, S2 = sum gz xhat (float64, tiny)
  const at::Tensor sp = s.s.defined() ? s.s.to(at::kDouble) + 1.0 : at::Tensor();
  if (need_t) gt = s1.to(shift->scalar_type());
  if (need_s) {
    at::Tensor v = s.w.defined() ? s2 * s.w.to(at::kDouble) : s2;
    if (s.b.defined()) v = v + s1 * s.b.to(at::kDouble);
    gs = v.to(scale->scalar_type());
  }
  if (need_w) gw = (sp.defined() ? s2 * sp : s2).sum(0).to(weight->scalar_type());
  if (need_b) gb = (sp.defined() ? s1 * sp : s1).sum(0).to(bias->scalar_type());
  return {gx, gw, gb, gs, gt};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_FRAGMENT(fastgen, m) {
  m.def(
      "group_norm(Tensor x, int num_groups, Tensor? weight, Tensor? bias, Tensor? scale, Tensor? shift, float eps, "
      "int act) -> (Tensor, Tensor, Tensor)");
  m.def(
      "group_norm_backward(Tensor grad_y, Tensor x, Tensor mean, Tensor rstd, int num_groups, Tensor? weight, "
      "Tensor? bias, Tensor? scale, Tensor? shift, float eps, int act, bool need_x, bool need_weight, "
      "bool need_bias, bool need_scale, bool need_shift) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("group_norm", &fastgen::group_norm_cpu);
  m.impl("group_norm_backward", &fastgen::group_norm_backward_cpu);
}
