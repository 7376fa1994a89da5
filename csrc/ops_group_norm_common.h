// Argument handling of the fused group_norm shared by its torch bindings (csrc/ops_group_norm.cpp:
// schemas and CPU; csrc/ops_group_norm_cuda.cpp: CUDA): input checks naming the argument, the
// kernels' view of the inputs, and the parameter grads from the per-(n, c) sums S1, S2.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <utility>

#include "ops_common.h"

namespace fastgen {
namespace gn {

using OptTensor = std::optional<at::Tensor>;
struct Setup {
  at::Tensor x;                     // the layout the kernels walk
  bool cl = false;                  // channels last
  int64_t N = 0, C = 0, S = 0, G = 0;
  at::Tensor w, b, s, t;            // fp32 contiguous parameters (undefined: absent)
};

inline void check_param(const OptTensor& p, const at::Tensor& x, const char* op, const char* name) {
  if (!p.has_value()) return;
  TORCH_CHECK_TYPE(at::isFloatingType(p->scalar_type()), "fastgen.", op, ": ", name,
                   " must be a floating-point tensor, got ", p->scalar_type());
  TORCH_CHECK_VALUE(p->device() == x.device(), "fastgen.", op, ": ", name, " is on ", p->device(), " but x is on ",
                    x.device());
}

inline Setup setup(const at::Tensor& x, int64_t G, const OptTensor& weight, const OptTensor& bias,
                   const OptTensor& scale, const OptTensor& shift, double eps, int64_t act, const char* op,
                   c10::DeviceType device) {
  const auto st = x.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, "fastgen.", op, ": x has dtype ", st,
                   "; supported dtypes are float32, float16 and bfloat16");
  TORCH_CHECK_VALUE(x.dim() >= 2, "fastgen.", op, ": x must have shape (N, C, *spatial) with at least 2 dims, got ",
                    x.sizes());
  TORCH_CHECK_VALUE(x.device().type() == device, "fastgen.", op, ": x is on ", x.device(), "; this kernel runs on ",
                    c10::DeviceTypeName(device));
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

// Checks of the backward's extra inputs (grad_y, mean, rstd) against x and the setup.
inline void check_backward_inputs(const Setup& s, const at::Tensor& gy, const at::Tensor& x, const at::Tensor& mean,
                                  const at::Tensor& rstd, int64_t G, const char* op) {
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
}

// Forward outputs: y in the kernels' layout of x; mean 0 and rstd 1 / sqrt(eps) (an empty group's
// statistics, kept as they are when x is empty).
struct ForwardOutputs {
  at::Tensor y, mean, rstd;
};

inline ForwardOutputs forward_outputs(const Setup& s, int64_t G, double eps, const at::Tensor& x) {
  const auto fopts = x.options().dtype(at::kFloat);
  return {at::empty_like(s.x), at::zeros({s.N, G}, fopts), at::full({s.N, G}, 1.0 / std::sqrt(eps), fopts)};
}

// Backward outputs: the need mask narrowed to the parameters that exist, and an empty [0] tensor
// for every grad that is not computed (the op's convention).
struct BackwardOutputs {
  bool need_x, need_w, need_b, need_s, need_t;
  at::Tensor gx, gw, gb, gs, gt;
  bool any() const { return need_x || need_w || need_b || need_s || need_t; }
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> result() const {
    return {gx, gw, gb, gs, gt};
  }
};

inline BackwardOutputs backward_outputs(const Setup& s, const at::Tensor& x, const OptTensor& weight,
                                        const OptTensor& bias, const OptTensor& scale, const OptTensor& shift,
                                        bool need_x, bool need_w, bool need_b, bool need_s, bool need_t) {
  const auto empty = [&](const OptTensor& like) {
    return at::empty({0}, like.has_value() ? like->options() : x.options());
  };
  return {need_x, need_w && weight.has_value(), need_b && bias.has_value(), need_s && scale.has_value(),
          need_t && shift.has_value(), need_x ? at::empty_like(s.x) : at::empty({0}, x.options()),
          empty(weight), empty(bias), empty(scale), empty(shift)};
}

// weight / bias / scale / shift grads from the per-(n, c) sums S1 = sum gz, S2 = sum gz xhat (any
// float dtype; computed in float64, tiny (N, C) ops): g_shift = S1, g_scale = w S2 + b S1,
// g_bias = sum_n (1 + s) S1, g_weight = sum_n (1 + s) S2. Each in its input's dtype; the ones not
// needed are left as they are.
inline void param_grads(const Setup& s, const at::Tensor& s1_in, const at::Tensor& s2_in, const OptTensor& weight,
                        const OptTensor& bias, const OptTensor& scale, const OptTensor& shift, BackwardOutputs& o) {
  const bool need_w = o.need_w, need_b = o.need_b, need_s = o.need_s, need_t = o.need_t;
  at::Tensor &gw = o.gw, &gb = o.gb, &gs = o.gs, &gt = o.gt;
  const at::Tensor s1 = s1_in.to(at::kDouble), s2 = s2_in.to(at::kDouble);
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
}

}  // namespace gn
}  // namespace fastgen
