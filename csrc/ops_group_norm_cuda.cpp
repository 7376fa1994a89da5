// CUDA implementation of fastgen::group_norm{,_backward} (schemas in csrc/ops_group_norm.cpp): the
// thin torch layer over csrc/cuda/group_norm.cu. Compiled only in CUDA builds (FASTGEN_WITH_CUDA,
// csrc/*cuda*.cpp); only c10/cuda headers besides ATen, so it also passes a syntax check against
// a CPU build of torch (tests/test_cuda_compile.py). Checks, layouts and the parameter grads are
// shared with the CPU implementation (csrc/ops_group_norm_common.h).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "cuda/group_norm_cuda.h"
#include "ops_group_norm_common.h"

namespace fastgen {
namespace {

using OptTensor = std::optional<at::Tensor>;
using gn::Setup;

cuda::GroupNormCudaArgs kernel_args(const Setup& s, double eps, int64_t act) {
  cuda::GroupNormCudaArgs a{};
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
  a.channels_last = s.cl;
  return a;
}

at::Tensor workspace(const cuda::GroupNormCudaArgs& a, DType dt, bool backward, const at::Tensor& x) {
  const int64_t n = cuda::group_norm_workspace_floats(dt, a, backward);
  return at::empty({n > 0 ? n : 1}, x.options().dtype(at::kFloat));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_cuda(const at::Tensor& x, int64_t G,
                                                               const OptTensor& weight, const OptTensor& bias,
                                                               const OptTensor& scale, const OptTensor& shift,
                                                               double eps, int64_t act) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Setup s = gn::setup(x, G, weight, bias, scale, shift, eps, act, "group_norm", c10::DeviceType::CUDA);
  auto [y, mean, rstd] = gn::forward_outputs(s, G, eps, x);
  if (s.x.numel() == 0) return {y, mean, rstd};
  const DType dt = to_fg_dtype(x.scalar_type(), "x");
  cuda::GroupNormCudaArgs a = kernel_args(s, eps, act);
  a.y = y.mutable_data_ptr();
  a.mean = mean.mutable_data_ptr<float>();
  a.rstd = rstd.mutable_data_ptr<float>();
  at::Tensor ws = workspace(a, dt, false, x);
  const cudaError_t err =
      cuda::group_norm_forward(dt, a, ws.mutable_data_ptr<float>(), c10::cuda::getCurrentCUDAStream(x.device().index()));
  TORCH_CHECK(err == cudaSuccess, "fastgen.group_norm: CUDA launch failed: ", cudaGetErrorString(err));
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_norm_backward_cuda(
    const at::Tensor& gy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd, int64_t G,
    const OptTensor& weight, const OptTensor& bias, const OptTensor& scale, const OptTensor& shift, double eps,
    int64_t act, bool need_x, bool need_w, bool need_b, bool need_s, bool need_t) {
  const char* op = "group_norm_backward";
  const c10::cuda::CUDAGuard guard(x.device());
  const Setup s = gn::setup(x, G, weight, bias, scale, shift, eps, act, op, c10::DeviceType::CUDA);
  gn::check_backward_inputs(s, gy, x, mean, rstd, G, op);
  gn::BackwardOutputs o = gn::backward_outputs(s, x, weight, bias, scale, shift, need_x, need_w, need_b, need_s,
                                               need_t);
  if (!o.any()) return o.result();
  at::Tensor& gx = o.gx;
  const auto fopts = x.options().dtype(at::kFloat);
  // S1 = sum gz, S2 = sum gz xhat per (n, c), fp32 (fp32 accumulation in the kernels)
  at::Tensor s1 = at::zeros({s.N, s.C}, fopts), s2 = at::zeros({s.N, s.C}, fopts);
  if (s.x.numel() > 0) {
    const at::Tensor gyc = layout_like(gy, s.x);
    const at::Tensor mc = mean.contiguous(), rc = rstd.contiguous();
    const DType dt = to_fg_dtype(x.scalar_type(), "x");
    cuda::GroupNormCudaArgs a = kernel_args(s, eps, act);
    a.gy = gyc.const_data_ptr();
    a.gx = need_x ? gx.mutable_data_ptr() : nullptr;
    a.mean = const_cast<float*>(mc.const_data_ptr<float>());
    a.rstd = const_cast<float*>(rc.const_data_ptr<float>());
    at::Tensor ws = workspace(a, dt, true, x);
    const cudaError_t err =
        cuda::group_norm_backward(dt, a, s1.mutable_data_ptr<float>(), s2.mutable_data_ptr<float>(),
                                  ws.mutable_data_ptr<float>(), c10::cuda::getCurrentCUDAStream(x.device().index()));
    TORCH_CHECK(err == cudaSuccess, "fastgen.group_norm_backward: CUDA launch failed: ", cudaGetErrorString(err));
  }
  gn::param_grads(s, s1, s2, weight, bias, scale, shift, o);
  return o.result();
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CUDA, m) {
  m.impl("group_norm", &fastgen::group_norm_cuda);
  m.impl("group_norm_backward", &fastgen::group_norm_backward_cuda);
}
