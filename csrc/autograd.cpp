// Autograd for the fastgen ops, in C++ (device-independent: registered for the Autograd key, so
// the CPU and the CUDA kernels share it). Doing this in C++ rather than with Python's
// torch.library.register_autograd keeps a no-grad call free of Python overhead (several us per
// call, which is a sizeable part of a cache-resident sampler step).
//
// ddim_step's backward is its own op (ddim_step_backward, fused), and that op's backward is the
// forward op again: the update is linear in (x_t, eps, noise) up to the clamp's 0/1 mask m, and
// the adjoint of its backward
//   dx = inv m (g0 + sap gp),  deps = dir gp - s1 inv m (g0 + sap gp),  dnoise = sig gp
// is  d g0 = m inv (u_dx - s1 u_de),  d gp = sap d g0 + dir u_de + sig u_dn,  which is
// ddim_step(x_t = u_dx', eps = u_de, noise = u_dn, no clip) with u_dx' = where(m, u_dx, s1 u_de).
// So gradients of any order stay on fused kernels.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace fastgen {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor> call_forward(const at::Tensor& x, const at::Tensor& eps, const at::Tensor& a_t,
                                                const at::Tensor& a_p, double eta,
                                                const std::optional<at::Tensor>& noise, double clip) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgen::ddim_step", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, const at::Tensor&, double,
                                                                 const std::optional<at::Tensor>&, double)>();
  return op.call(x, eps, a_t, a_p, eta, noise, clip);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_backward(
    const std::optional<at::Tensor>& gp, const std::optional<at::Tensor>& g0, const at::Tensor& x,
    const at::Tensor& eps, const at::Tensor& a_t, const at::Tensor& a_p, double eta, double clip, bool need_dn) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgen::ddim_step_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, bool)>();
  return op.call(gp, g0, x, eps, a_t, a_p, eta, clip, need_dn);
}

std::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

class DDIMStepBackwardFn : public torch::autograd::Function<DDIMStepBackwardFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const std::optional<at::Tensor>& gp,
                               const std::optional<at::Tensor>& g0, const at::Tensor& x, const at::Tensor& eps,
                               const at::Tensor& a_t, const at::Tensor& a_p, double eta, double clip, bool need_dn) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [dx, de, dn] = call_backward(gp, g0, x, eps, a_t, a_p, eta, clip, need_dn);
    ctx->save_for_backward({x, eps, a_t, a_p});
    ctx->saved_data["eta"] = eta;
    ctx->saved_data["clip"] = clip;
    // needs_input_grad() counts only the tensor inputs that are present (absent optionals have no edge)
    ctx->saved_data["gp_edge"] = gp.has_value() ? int64_t(0) : int64_t(-1);
    ctx->saved_data["g0_edge"] = g0.has_value() ? int64_t(gp.has_value() ? 1 : 0) : int64_t(-1);
    return {dx, de, dn};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &eps = saved[1], &a_t = saved[2], &a_p = saved[3];
    const double eta = ctx->saved_data["eta"].toDouble(), clip = ctx->saved_data["clip"].toDouble();
    at::Tensor u_dx = grads[0].defined() ? grads[0] : at::zeros_like(x);
    at::Tensor u_de = grads[1].defined() ? grads[1] : at::zeros_like(x);
    std::optional<at::Tensor> u_dn;
    if (grads[2].defined() && grads[2].sizes() == x.sizes()) u_dn = grads[2];  // else dnoise was empty
    if (clip > 0) {
      at::Tensor x0;
      {
        at::NoGradGuard no_grad;
        x0 = std::get<1>(call_forward(x, eps, a_t, a_p, 0.0, std::nullopt, 0.0));
      }
      std::vector<int64_t> shape(static_cast<size_t>(std::max<int64_t>(x.dim(), 1)), 1);
      if (a_t.dim() == 1) shape[0] = a_t.size(0);
      at::Tensor s1 = (1.0 - a_t.to(at::kDouble)).sqrt().to(x.device(), at::kFloat);
      if (x.dim() > 0) s1 = s1.reshape(shape);
      const at::Tensor keep = x0.abs() <= clip;
      u_dx = at::where(keep, u_dx, (s1 * u_de.to(at::kFloat)).to(x.scalar_type()));
    }
    auto [d_gp, d_g0] = call_forward(u_dx, u_de, a_t, a_p, eta, u_dn, 0.0);
    const int64_t gp_edge = ctx->saved_data["gp_edge"].toInt(), g0_edge = ctx->saved_data["g0_edge"].toInt();
    const bool need_gp = gp_edge >= 0 && ctx->needs_input_grad(gp_edge);
    const bool need_g0 = g0_edge >= 0 && ctx->needs_input_grad(g0_edge);
    return {need_gp ? d_gp : at::Tensor(), need_g0 ? d_g0 : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class DDIMStepFn : public torch::autograd::Function<DDIMStepFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& eps,
                               const at::Tensor& a_t, const at::Tensor& a_p, double eta,
                               const std::optional<at::Tensor>& noise, double clip) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [xp, x0] = call_forward(x, eps, a_t, a_p, eta, noise, clip);
    ctx->save_for_backward({x, eps, a_t, a_p});
    ctx->saved_data["eta"] = eta;
    ctx->saved_data["clip"] = clip;
    ctx->saved_data["has_noise"] = noise.has_value();  // noise is tensor input #4 when present
    return {xp, x0};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const double eta = ctx->saved_data["eta"].toDouble(), clip = ctx->saved_data["clip"].toDouble();
    const bool need_dn = ctx->saved_data["has_noise"].toBool() && ctx->needs_input_grad(4);
    auto outs = DDIMStepBackwardFn::apply(opt(grads[0]), opt(grads[1]), saved[0], saved[1], saved[2], saved[3],
                                          eta, clip, need_dn);
    return {ctx->needs_input_grad(0) ? outs[0] : at::Tensor(), ctx->needs_input_grad(1) ? outs[1] : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), need_dn ? outs[2] : at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> ddim_step_autograd(const at::Tensor& x, const at::Tensor& eps,
                                                      const at::Tensor& a_t, const at::Tensor& a_p, double eta,
                                                      const std::optional<at::Tensor>& noise, double clip) {
  // Sampling runs without grad: skip building a graph node (about 1 us per call).
  const bool any_grad = x.requires_grad() || eps.requires_grad() || a_t.requires_grad() || a_p.requires_grad() ||
                        (noise.has_value() && noise->requires_grad());
  if (!any_grad || !at::GradMode::is_enabled()) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_forward(x, eps, a_t, a_p, eta, noise, clip);
  }
  auto outs = DDIMStepFn::apply(x, eps, a_t, a_p, eta, noise, clip);
  return {outs[0], outs[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ddim_step_backward_autograd(
    const std::optional<at::Tensor>& gp, const std::optional<at::Tensor>& g0, const at::Tensor& x,
    const at::Tensor& eps, const at::Tensor& a_t, const at::Tensor& a_p, double eta, double clip, bool need_dn) {
  auto outs = DDIMStepBackwardFn::apply(gp, g0, x, eps, a_t, a_p, eta, clip, need_dn);
  return {outs[0], outs[1], outs[2]};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, Autograd, m) {
  m.impl("ddim_step", &fastgen::ddim_step_autograd);
  m.impl("ddim_step_backward", &fastgen::ddim_step_backward_autograd);
}
