// CUDA implementations of the fastgen ops: the thin torch layer over csrc/cuda/*.cu.
// Compiled only in CUDA builds (FASTGEN_WITH_CUDA); keep it small, since it can only be built
// where a CUDA build of torch exists.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/ddim_step_cuda.h"
#include "ops_common.h"

namespace fastgen {
namespace {

// Fills the coefficient fields shared by forward and backward args.
template <typename Args>
void set_alphas(Args& a, const at::Tensor& at_, const at::Tensor& ap_, double eta, const at::Tensor& x,
                at::Tensor* keep_t, at::Tensor* keep_p) {
  a.eta = static_cast<float>(eta);
  a.alpha_t = a.alpha_p = nullptr;
  a.alpha_t_scalar = a.alpha_p_scalar = 1.f;
  const bool host_t = at_.device().is_cpu(), host_p = ap_.device().is_cpu();
  if (host_t && host_p) {  // both are 0-d host scalars: coefficients in double, no device traffic
    check_alpha_values(at_.item<double>(), ap_.item<double>(), eta);
    const DDIMCoeffs<double> c = ddim_coeffs<double>(at_.item<double>(), ap_.item<double>(), eta);
    a.coeffs = {float(c.sqrt_one_minus_at), float(c.inv_sqrt_at), float(c.sqrt_ap), float(c.dir), float(c.sigma)};
    return;
  }
  if (host_t) a.alpha_t_scalar = static_cast<float>(at_.item<double>());
  else {
    *keep_t = at_.to(at::kFloat).contiguous();
    a.alpha_t = keep_t->const_data_ptr<float>();
  }
  if (host_p) a.alpha_p_scalar = static_cast<float>(ap_.item<double>());
  else {
    *keep_p = ap_.to(at::kFloat).contiguous();
    a.alpha_p = keep_p->const_data_ptr<float>();
  }
  // 0-d device alphas still index by sample: broadcast them.
  const int64_t n = x.dim() ? x.size(0) : 1;
  if (a.alpha_t && keep_t->dim() == 0) { *keep_t = keep_t->expand({n}).contiguous(); a.alpha_t = keep_t->const_data_ptr<float>(); }
  if (a.alpha_p && keep_p->dim() == 0) { *keep_p = keep_p->expand({n}).contiguous(); a.alpha_p = keep_p->const_data_ptr<float>(); }
}


void forward_into(const at::Tensor& x, const at::Tensor& eps, const at::Tensor& a_t, const at::Tensor& a_p,
                  double eta, const std::optional<at::Tensor>& noise, double clip, at::Tensor& xp, at::Tensor& x0) {
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = layout_like(x, xp), ec = layout_like(eps, xp);
  at::Tensor nc, kt, kp;
  if (noise.has_value() && eta > 0.0) nc = layout_like(*noise, xp);
  cuda::DDIMCudaForwardArgs a{};
  set_alphas(a, a_t, a_p, eta, x, &kt, &kp);
  a.x = xc.const_data_ptr();
  a.eps = ec.const_data_ptr();
  a.noise = nc.defined() ? nc.const_data_ptr() : nullptr;
  a.x_prev = xp.mutable_data_ptr();
  a.x0 = x0.mutable_data_ptr();
  a.numel = x.numel();
  a.per_sample = x.dim() ? x.numel() / x.size(0) : 1;
  a.clip = static_cast<float>(clip);
  const cudaError_t err = cuda::ddim_forward(to_fg_dtype(x.scalar_type(), "x_t"), a, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "fastgen.ddim_step: CUDA launch failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor> ddim_step_cuda(const at::Tensor& x, const at::Tensor& eps, const at::Tensor& a_t,
                                                  const at::Tensor& a_p, double eta,
                                                  const std::optional<at::Tensor>& noise, double clip) {
  check_ddim_args(x, eps, a_t, a_p, eta, noise);
  at::Tensor xp = empty_output_like(x), x0 = at::empty_like(xp);
  forward_into(x, eps, a_t, a_p, eta, noise, clip, xp, x0);
  return {xp, x0};
}

void ddim_step_out_cuda(const at::Tensor& x, const at::Tensor& eps, const at::Tensor& a_t, const at::Tensor& a_p,
                        double eta, const std::optional<at::Tensor>& noise, double clip, at::Tensor xp,
                        at::Tensor x0) {
  check_ddim_args(x, eps, a_t, a_p, eta, noise);
  check_ddim_out(x, eps, noise, xp, x0);
  if (out_direct(xp, x0)) {
    forward_into(x, eps, a_t, a_p, eta, noise, clip, xp, x0);
  } else {
    at::Tensor tp = empty_output_like(x), t0 = at::empty_like(tp);
    forward_into(x, eps, a_t, a_p, eta, noise, clip, tp, t0);
    xp.copy_(tp);
    x0.copy_(t0);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ddim_step_backward_cuda(
    const std::optional<at::Tensor>& g_prev, const std::optional<at::Tensor>& g_x0, const at::Tensor& x,
    const at::Tensor& eps, const at::Tensor& a_t, const at::Tensor& a_p, double eta, double clip,
    bool need_noise_grad) {
  check_ddim_args(x, eps, a_t, a_p, eta, std::nullopt);
  if (g_prev.has_value()) check_like(*g_prev, x, "grad_x_prev");
  if (g_x0.has_value()) check_like(*g_x0, x, "grad_x0");
  at::Tensor dx = empty_output_like(x), de = at::empty_like(dx);
  at::Tensor dn = need_noise_grad ? at::empty_like(dx) : at::empty({0}, x.options());
  if (x.numel() == 0) return {dx, de, dn};
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = layout_like(x, dx), ec = layout_like(eps, dx);
  at::Tensor gp, g0, kt, kp;
  if (g_prev.has_value()) gp = layout_like(*g_prev, dx);
  if (g_x0.has_value()) g0 = layout_like(*g_x0, dx);
  cuda::DDIMCudaBackwardArgs a{};
  set_alphas(a, a_t, a_p, eta, x, &kt, &kp);
  a.x = xc.const_data_ptr();
  a.eps = ec.const_data_ptr();
  a.g_prev = gp.defined() ? gp.const_data_ptr() : nullptr;
  a.g_x0 = g0.defined() ? g0.const_data_ptr() : nullptr;
  a.dx = dx.mutable_data_ptr();
  a.deps = de.mutable_data_ptr();
  a.dnoise = need_noise_grad ? dn.mutable_data_ptr() : nullptr;
  a.numel = x.numel();
  a.per_sample = x.dim() ? x.numel() / x.size(0) : 1;
  a.clip = static_cast<float>(clip);
  const cudaError_t err = cuda::ddim_backward(to_fg_dtype(x.scalar_type(), "x_t"), a, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "fastgen.ddim_step_backward: CUDA launch failed: ", cudaGetErrorString(err));
  return {dx, de, dn};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CUDA, m) {
  m.impl("ddim_step", &fastgen::ddim_step_cuda);
  m.impl("ddim_step_out", &fastgen::ddim_step_out_cuda);
  m.impl("ddim_step_backward", &fastgen::ddim_step_backward_cuda);
}
