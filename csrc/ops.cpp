// The torch layer of fastgen._C: op schemas (TORCH_LIBRARY), input checks, layout handling,
// and the CPU implementations that call the raw-pointer kernels in csrc/cpu/.
// CUDA implementations live in ops_cuda.cpp (compiled only in CUDA builds).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <vector>

#include "cpu/ddim_step.h"
#include "ops_common.h"

namespace fastgen {
namespace {

constexpr int64_t kGrain = 32768;  // elements per task for at::parallel_for

// Per-sample (or single) fp32 coefficients, computed in double on the host.
std::vector<DDIMCoeffs<float>> host_coeffs(const at::Tensor& a_t, const at::Tensor& a_p, double eta,
                                           bool* per_sample) {
  const at::Tensor t64 = a_t.scalar_type() == at::kDouble ? a_t : a_t.to(at::kDouble);
  const at::Tensor p64 = a_p.scalar_type() == at::kDouble ? a_p : a_p.to(at::kDouble);
  const int64_t n = std::max<int64_t>(t64.dim() ? t64.size(0) : 1, p64.dim() ? p64.size(0) : 1);
  *per_sample = t64.dim() == 1 || p64.dim() == 1;
  const double* tp = t64.const_data_ptr<double>();
  const double* pp = p64.const_data_ptr<double>();
  const int64_t ts = t64.dim() ? t64.stride(0) : 0, ps = p64.dim() ? p64.stride(0) : 0;
  std::vector<DDIMCoeffs<float>> out(static_cast<size_t>(std::max<int64_t>(n, 1)));
  for (int64_t i = 0; i < n; ++i) {
    check_alpha_values(tp[i * ts], pp[i * ps], eta);
    const DDIMCoeffs<double> c = ddim_coeffs<double>(tp[i * ts], pp[i * ps], eta);
    out[i] = {static_cast<float>(c.sqrt_one_minus_at), static_cast<float>(c.inv_sqrt_at),
              static_cast<float>(c.sqrt_ap), static_cast<float>(c.dir), static_cast<float>(c.sigma)};
  }
  return out;
}


// xp and x0 are allocated, share strides and are batch-outer dense.
void forward_cpu_into(const at::Tensor& x, const at::Tensor& eps, const at::Tensor& a_t,
                      const at::Tensor& a_p, double eta, const std::optional<at::Tensor>& noise,
                      double clip, at::Tensor& xp, at::Tensor& x0) {
  if (x.numel() == 0) return;
  bool per_sample = false;
  const std::vector<DDIMCoeffs<float>> coeffs = host_coeffs(a_t, a_p, eta, &per_sample);
  const at::Tensor xc = layout_like(x, xp);
  const at::Tensor ec = layout_like(eps, xp);
  at::Tensor nc;
  if (noise.has_value() && eta > 0.0) nc = layout_like(*noise, xp);
  cpu::DDIMForwardArgs args;
  args.x = xc.const_data_ptr();
  args.eps = ec.const_data_ptr();
  args.noise = nc.defined() ? nc.const_data_ptr() : nullptr;
  args.x_prev = xp.mutable_data_ptr();
  args.x0 = x0.mutable_data_ptr();
  args.per_sample = per_sample ? x.numel() / x.size(0) : x.numel();
  args.coeffs = coeffs.data();
  args.per_sample_coeffs = per_sample;
  args.clip = static_cast<float>(clip);
  args.stream_stores = cpu::use_streaming_stores(x.numel() * x.element_size() * (nc.defined() ? 5 : 4));
  const DType dt = to_fg_dtype(x.scalar_type(), "x_t");
  at::parallel_for(0, x.numel(), kGrain, [&](int64_t b, int64_t e) { cpu::ddim_forward(dt, args, b, e); });
}

std::tuple<at::Tensor, at::Tensor> ddim_step_cpu(const at::Tensor& x, const at::Tensor& eps,
                                                 const at::Tensor& a_t, const at::Tensor& a_p, double eta,
                                                 const std::optional<at::Tensor>& noise, double clip) {
  check_ddim_args(x, eps, a_t, a_p, eta, noise);
  at::Tensor xp = empty_output_like(x);
  at::Tensor x0 = at::empty_like(xp);
  forward_cpu_into(x, eps, a_t, a_p, eta, noise, clip, xp, x0);
  return {xp, x0};
}

void ddim_step_out_cpu(const at::Tensor& x, const at::Tensor& eps, const at::Tensor& a_t,
                       const at::Tensor& a_p, double eta, const std::optional<at::Tensor>& noise,
                       double clip, at::Tensor xp, at::Tensor x0) {
  check_ddim_args(x, eps, a_t, a_p, eta, noise);
  check_ddim_out(x, eps, noise, xp, x0);
  if (out_direct(xp, x0)) {
    forward_cpu_into(x, eps, a_t, a_p, eta, noise, clip, xp, x0);
  } else {
    at::Tensor tp = empty_output_like(x), t0 = at::empty_like(tp);
    forward_cpu_into(x, eps, a_t, a_p, eta, noise, clip, tp, t0);
    xp.copy_(tp);
    x0.copy_(t0);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ddim_step_backward_cpu(
    const std::optional<at::Tensor>& g_prev, const std::optional<at::Tensor>& g_x0, const at::Tensor& x,
    const at::Tensor& eps, const at::Tensor& a_t, const at::Tensor& a_p, double eta, double clip,
    bool need_noise_grad) {
  check_ddim_args(x, eps, a_t, a_p, eta, std::nullopt);
  if (g_prev.has_value()) check_like(*g_prev, x, "grad_x_prev");
  if (g_x0.has_value()) check_like(*g_x0, x, "grad_x0");
  at::Tensor dx = empty_output_like(x);
  at::Tensor de = at::empty_like(dx);
  at::Tensor dn = need_noise_grad ? at::empty_like(dx) : at::empty({0}, x.options());
  if (x.numel() == 0) return {dx, de, dn};
  bool per_sample = false;
  const std::vector<DDIMCoeffs<float>> coeffs = host_coeffs(a_t, a_p, eta, &per_sample);
  const at::Tensor xc = layout_like(x, dx), ec = layout_like(eps, dx);
  at::Tensor gp, g0;
  if (g_prev.has_value()) gp = layout_like(*g_prev, dx);
  if (g_x0.has_value()) g0 = layout_like(*g_x0, dx);
  cpu::DDIMBackwardArgs args;
  args.x = xc.const_data_ptr();
  args.eps = ec.const_data_ptr();
  args.g_prev = gp.defined() ? gp.const_data_ptr() : nullptr;
  args.g_x0 = g0.defined() ? g0.const_data_ptr() : nullptr;
  args.dx = dx.mutable_data_ptr();
  args.deps = de.mutable_data_ptr();
  args.dnoise = need_noise_grad ? dn.mutable_data_ptr() : nullptr;
  args.per_sample = per_sample ? x.numel() / x.size(0) : x.numel();
  args.coeffs = coeffs.data();
  args.per_sample_coeffs = per_sample;
  args.clip = static_cast<float>(clip);
  args.stream_stores = cpu::use_streaming_stores(
      x.numel() * x.element_size() * (2 + int(gp.defined()) + int(g0.defined()) + 2 + int(need_noise_grad)));
  const DType dt = to_fg_dtype(x.scalar_type(), "x_t");
  at::parallel_for(0, x.numel(), kGrain, [&](int64_t b, int64_t e) { cpu::ddim_backward(dt, args, b, e); });
  return {dx, de, dn};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY(fastgen, m) {
  m.def(
      "ddim_step(Tensor x_t, Tensor eps, Tensor alpha_bar_t, Tensor alpha_bar_prev, float eta, "
      "Tensor? noise, float clip) -> (Tensor, Tensor)");
  m.def(
      "ddim_step_out(Tensor x_t, Tensor eps, Tensor alpha_bar_t, Tensor alpha_bar_prev, float eta, "
      "Tensor? noise, float clip, Tensor(a!) x_prev, Tensor(b!) x0_pred) -> ()");
  m.def(
      "ddim_step_backward(Tensor? grad_x_prev, Tensor? grad_x0, Tensor x_t, Tensor eps, "
      "Tensor alpha_bar_t, Tensor alpha_bar_prev, float eta, float clip, bool need_noise_grad) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("ddim_step", &fastgen::ddim_step_cpu);
  m.impl("ddim_step_out", &fastgen::ddim_step_out_cpu);
  m.impl("ddim_step_backward", &fastgen::ddim_step_backward_cpu);
}

namespace {
bool built_with_cuda() {
#ifdef FASTGEN_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.doc() = "fastgen compiled kernels (CPU, and CUDA when built with it)";
  mod.def("cpu_capability", &fastgen::cpu::cpu_capability, "vector ISA chosen at run time");
  mod.def("cpu_stream_threshold", &fastgen::cpu::streaming_threshold_bytes,
          "working-set size (bytes) above which CPU kernels write with non-temporal stores");
  mod.def("built_with_cuda", &built_with_cuda, "whether the CUDA kernels were compiled in");
  mod.attr("ABI_VERSION") = 1;
}
