// The torch layer of modulate_weight (StyleGAN2's per-sample modulated / demodulated weights for
// the grouped "fused modconv"): schemas, input checks naming the argument, the demodulation
// coefficients, and the CPU implementations calling csrc/cpu/modulate_weight.h. Autograd is
// registered from Python (fastgen/ops/modulate_weight.py), shared with the Triton ops.
//
//   modulate_weight(w, s, demodulate, eps) -> out          w (O, I, kh, kw), s (N, I), out (N, O, I, kh, kw)
//   modulate_weight_backward(g, w, s, demodulate, eps) -> (gw, gs)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "cpu/modulate_weight.h"
#include "ops_common.h"

namespace fastgen {
namespace {

struct Prepared {
  at::Tensor w, s, d;  // w contiguous (O, I, K); s fp32 (N, I); d fp32 (N, O) or undefined
  int64_t N, O, I, K;
};

Prepared prepare(const at::Tensor& w, const at::Tensor& s, bool demodulate, double eps) {
  TORCH_CHECK_VALUE(w.dim() == 4, "fastgen.modulate_weight: weight must have shape (O, I, kh, kw), got ", w.sizes());
  to_fg_dtype(w.scalar_type(), "weight");
  TORCH_CHECK_VALUE(s.dim() == 2 && s.size(1) == w.size(1), "fastgen.modulate_weight: styles must have shape (N, I) "
                    "with I = weight.shape[1] = ", w.size(1), ", got ", s.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(s.scalar_type()), "fastgen.modulate_weight: styles must be floating, got ",
                   s.scalar_type());
  TORCH_CHECK_VALUE(s.device() == w.device(), "fastgen.modulate_weight: styles is on ", s.device(),
                    " but weight is on ", w.device());
  TORCH_CHECK_VALUE(eps >= 0.0, "fastgen.modulate_weight: eps must be >= 0, got ", eps);
  Prepared p;
  p.N = s.size(0);
  p.O = w.size(0);
  p.I = w.size(1);
  p.K = w.size(2) * w.size(3);
  p.w = w.contiguous();
  p.s = s.to(at::kFloat).contiguous();
  if (demodulate) {  // d = rsqrt(s^2 @ (sum_k w^2)^T + eps), fp32
    const at::Tensor wsq = p.w.to(at::kFloat).square().sum({2, 3});
    p.d = at::rsqrt(at::matmul(p.s.square(), wsq.t()) + eps).contiguous();
  }
  return p;
}

cpu::ModWeightArgs args_of(const Prepared& p) {
  cpu::ModWeightArgs a{};
  a.w = p.w.const_data_ptr();
  a.s = p.s.const_data_ptr<float>();
  a.d = p.d.defined() ? p.d.const_data_ptr<float>() : nullptr;
  a.N = p.N;
  a.O = p.O;
  a.I = p.I;
  a.K = p.K;
  return a;
}

at::Tensor modulate_weight_cpu(const at::Tensor& w, const at::Tensor& s, bool demodulate, double eps) {
  const Prepared p = prepare(w, s, demodulate, eps);
  at::Tensor out = at::empty({p.N, p.O, p.I, w.size(2), w.size(3)}, p.w.options());
  if (out.numel() == 0) return out;
  cpu::ModWeightArgs a = args_of(p);
  a.out = out.mutable_data_ptr();
  const DType dt = to_fg_dtype(w.scalar_type(), "weight");
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, p.I * p.K));
  at::parallel_for(0, p.N * p.O, grain, [&](int64_t b, int64_t e) { cpu::modulate_weight_forward(dt, a, b, e); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> modulate_weight_backward_cpu(const at::Tensor& g, const at::Tensor& w,
                                                                const at::Tensor& s, bool demodulate, double eps) {
  const Prepared p = prepare(w, s, demodulate, eps);
  TORCH_CHECK_VALUE(g.dim() == 5 && g.size(0) == p.N && g.size(1) == p.O && g.size(2) == p.I &&
                        g.size(3) == w.size(2) && g.size(4) == w.size(3),
                    "fastgen.modulate_weight_backward: grad must have shape (N, O, I, kh, kw) = (", p.N, ", ", p.O,
                    ", ", p.I, ", ", w.size(2), ", ", w.size(3), "), got ", g.sizes());
  TORCH_CHECK_TYPE(g.scalar_type() == w.scalar_type(), "fastgen.modulate_weight_backward: grad has dtype ",
                   g.scalar_type(), " but weight has dtype ", w.scalar_type());
  const at::Tensor gc = g.contiguous();
  at::Tensor gw = at::zeros({p.O, p.I, w.size(2), w.size(3)}, p.w.options().dtype(at::kFloat));
  const int nthreads = at::get_num_threads();
  at::Tensor gs_part = at::zeros({nthreads, p.N, p.I}, p.s.options());
  if (g.numel() > 0) {
    cpu::ModWeightArgs a = args_of(p);
    a.g = gc.const_data_ptr();
    a.gw = gw.mutable_data_ptr<float>();
    float* parts = gs_part.mutable_data_ptr<float>();
    const DType dt = to_fg_dtype(w.scalar_type(), "weight");
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, p.N * p.I * p.K));
    at::parallel_for(0, p.O, grain, [&](int64_t b, int64_t e) {
      cpu::ModWeightArgs t = a;
      t.gs = parts + static_cast<int64_t>(at::get_thread_num()) * p.N * p.I;
      cpu::modulate_weight_backward(dt, t, b, e);
    });
  }
  return {gw.to(w.scalar_type()), gs_part.sum(0).to(s.scalar_type())};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_FRAGMENT(fastgen, m) {
  m.def("modulate_weight(Tensor weight, Tensor styles, bool demodulate, float eps) -> Tensor");
  m.def("modulate_weight_backward(Tensor grad, Tensor weight, Tensor styles, bool demodulate, float eps) -> "
        "(Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("modulate_weight", &fastgen::modulate_weight_cpu);
  m.impl("modulate_weight_backward", &fastgen::modulate_weight_backward_cpu);
}
