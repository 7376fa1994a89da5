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
#include "ops_group_norm_common.h"

namespace fastgen {
namespace {

using OptTensor = std::optional<at::Tensor>;
using gn::Setup;
constexpr int64_t kTaskElems = 16384;  // elements per parallel task (at least)

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
  const Setup s = gn::setup(x, G, weight, bias, scale, shift, eps, act, "group_norm", c10::DeviceType::CPU);
  auto [y, mean, rstd] = gn::forward_outputs(s, G, eps, x);
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
  const Setup s = gn::setup(x, G, weight, bias, scale, shift, eps, act, op, c10::DeviceType::CPU);
  gn::check_backward_inputs(s, gy, x, mean, rstd, G, op);
  gn::BackwardOutputs o = gn::backward_outputs(s, x, weight, bias, scale, shift, need_x, need_w, need_b, need_s,
                                               need_t);
  if (!o.any()) return o.result();
  at::Tensor& gx = o.gx;
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
  gn::param_grads(s, s1, s2, weight, bias, scale, shift, o);
  return o.result();
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
