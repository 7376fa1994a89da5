// CUDA implementation of fastgen::sampler_update{,_out} (schemas in csrc/ops_sampler.cpp): the thin
// torch layer over csrc/cuda/sampler_update.cu. Compiled only in CUDA builds (FASTGEN_WITH_CUDA,
// csrc/*cuda*.cpp); only c10/cuda headers besides ATen, so it also passes a syntax check against
// a CPU build of torch (tests/test_cuda_compile.py).
//
// coeffs: a host float64/float32 tensor [12] or [N, 12] (checked like the CPU op: clip > 0, the
// others finite). One set is passed to the kernel by value; per-sample sets go to the device via a
// pinned buffer and a non-blocking copy (no host sync). Already-on-device fp32 coeffs ([12] or
// [N, 12], on x's device) are used as they are, unchecked (reading them back would cost a sync).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstring>
#include <optional>
#include <vector>

#include "cuda/sampler_update_cuda.h"
#include "ops_sampler_common.h"

namespace fastgen {
namespace {

using OptTensor = std::optional<at::Tensor>;
static_assert(sizeof(SamplerCoeffs) == sizeof(float) * kNumSamplerCoeffs, "SamplerCoeffs must be 12 packed floats");

// Fills args.coeffs / coeffs_dev / per_sample_coeffs; *keep holds any device tensor the kernel reads.
// *noise_mode is set to the effective mode for host coeffs (device coeffs are not read back).
void set_coeffs(cuda::SamplerCudaArgs& a, const at::Tensor& coeffs, const at::Tensor& x, at::Tensor* keep,
                int64_t* noise_mode) {
  const int64_t n = sampler_batch(x);
  a.coeffs_dev = nullptr;
  a.per_sample_coeffs = false;
  if (coeffs.device().is_cpu()) {
    bool per_sample = false;
    bool any_noise = false;
    const std::vector<SamplerCoeffs> cs = host_sampler_coeffs(coeffs, n, &per_sample, nullptr, &any_noise);
    *noise_mode = effective_noise_mode(any_noise, *noise_mode);
    a.coeffs = cs[0];
    if (!per_sample || x.numel() == 0) return;
    at::Tensor host = at::empty({static_cast<int64_t>(cs.size()), kNumSamplerCoeffs},
                                at::TensorOptions().dtype(at::kFloat).pinned_memory(true));
    std::memcpy(host.mutable_data_ptr<float>(), cs.data(), cs.size() * sizeof(SamplerCoeffs));
    *keep = host.to(x.device(), at::kFloat, /*non_blocking=*/true);  // stream-ordered before the kernel
    a.coeffs_dev = keep->const_data_ptr<float>();
    a.per_sample_coeffs = true;
    return;
  }
  TORCH_CHECK_VALUE(coeffs.device() == x.device(), kSamplerOp, "coeffs is on ", coeffs.device(), " but x is on ",
                    x.device(), " (pass host coeffs, or device coeffs on x's device)");
  TORCH_CHECK_TYPE(coeffs.scalar_type() == at::kFloat, kSamplerOp,
                   "coeffs on the device must be float32 (host coeffs may be float64), got ", coeffs.scalar_type());
  TORCH_CHECK_VALUE((coeffs.dim() == 1 && coeffs.size(0) == kNumSamplerCoeffs) ||
                        (coeffs.dim() == 2 && coeffs.size(1) == kNumSamplerCoeffs && coeffs.size(0) == n),
                    kSamplerOp, "coeffs must have shape [", int(kNumSamplerCoeffs), "] or [N, ",
                    int(kNumSamplerCoeffs), "] with N = x.shape[0] (", n, "), got ", coeffs.sizes());
  *keep = coeffs.detach().contiguous();
  a.coeffs_dev = keep->const_data_ptr<float>();
  a.per_sample_coeffs = coeffs.dim() == 2;
}

// x_prev, x0 allocated with the same strides, batch-outer dense.
void forward_cuda_into(const at::Tensor& x, const at::Tensor& m, const at::Tensor& coeffs, const OptTensor& u,
                       double guidance, const OptTensor& h1, const OptTensor& h2, const OptTensor& noise,
                       const OptTensor& var, int64_t noise_mode, int64_t seed, int64_t offset, at::Tensor& xp,
                       at::Tensor& x0) {
  TORCH_CHECK_VALUE(x.is_cuda(), kSamplerOp, "x is on ", x.device(), " but coeffs is on ", coeffs.device());
  const c10::cuda::CUDAGuard guard(x.device());
  cuda::SamplerCudaArgs a{};
  at::Tensor keep_coeffs;
  set_coeffs(a, coeffs, x, &keep_coeffs, &noise_mode);
  if (x.numel() == 0) return;
  // every input in the outputs' layout (copies only where strides differ)
  std::vector<at::Tensor> keep;
  keep.reserve(7);
  auto ptr = [&](const OptTensor& t) -> const void* {
    if (!t.has_value()) return nullptr;
    keep.push_back(layout_like(*t, xp));
    return keep.back().const_data_ptr();
  };
  a.x = ptr(x);
  a.m = ptr(m);
  a.uncond = ptr(u);
  a.guidance = static_cast<float>(guidance);
  a.h1 = ptr(h1);
  a.h2 = ptr(h2);
  a.noise = noise_mode == 1 ? ptr(noise) : nullptr;
  a.var = noise_mode != 0 ? ptr(var) : nullptr;
  a.noise_mode = static_cast<int32_t>(noise_mode);
  a.seed = static_cast<uint64_t>(seed);
  a.offset = static_cast<uint64_t>(offset);
  a.x_prev = xp.mutable_data_ptr();
  a.x0 = x0.mutable_data_ptr();
  a.numel = x.numel();
  a.per_sample = x.numel() / sampler_batch(x);
  const cudaError_t err =
      cuda::sampler_update(to_fg_dtype(x.scalar_type(), "x"), a, c10::cuda::getCurrentCUDAStream(x.device().index()));
  TORCH_CHECK(err == cudaSuccess, kSamplerOp, "CUDA launch failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor> sampler_update_cuda(const at::Tensor& x, const at::Tensor& m,
                                                       const at::Tensor& coeffs, const OptTensor& u, double guidance,
                                                       const OptTensor& h1, const OptTensor& h2,
                                                       const OptTensor& noise, const OptTensor& var,
                                                       int64_t noise_mode, int64_t seed, int64_t offset) {
  check_sampler_args(x, m, u, h1, h2, noise, var, noise_mode);
  at::Tensor xp = empty_output_like(x);
  at::Tensor x0 = at::empty_like(xp);
  forward_cuda_into(x, m, coeffs, u, guidance, h1, h2, noise, var, noise_mode, seed, offset, xp, x0);
  return {xp, x0};
}

void sampler_update_out_cuda(const at::Tensor& x, const at::Tensor& m, const at::Tensor& coeffs, const OptTensor& u,
                             double guidance, const OptTensor& h1, const OptTensor& h2, const OptTensor& noise,
                             const OptTensor& var, int64_t noise_mode, int64_t seed, int64_t offset, at::Tensor xp,
                             at::Tensor x0) {
  check_sampler_args(x, m, u, h1, h2, noise, var, noise_mode);
  check_sampler_out(x, sampler_inputs(x, m, {&u, &h1, &h2, &noise, &var}), xp, x0);
  if (out_direct(xp, x0)) {
    forward_cuda_into(x, m, coeffs, u, guidance, h1, h2, noise, var, noise_mode, seed, offset, xp, x0);
  } else {
    at::Tensor tp = empty_output_like(x), t0 = at::empty_like(tp);
    forward_cuda_into(x, m, coeffs, u, guidance, h1, h2, noise, var, noise_mode, seed, offset, tp, t0);
    xp.copy_(tp);
    x0.copy_(t0);
  }
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CUDA, m) {
  m.impl("sampler_update", &fastgen::sampler_update_cuda);
  m.impl("sampler_update_out", &fastgen::sampler_update_out_cuda);
}
