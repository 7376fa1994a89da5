// Argument handling of the sampler_update op shared by its torch bindings (csrc/ops_sampler.cpp:
// schemas, CPU, autograd; csrc/ops_sampler_cuda.cpp: CUDA). Device-independent checks only.
#pragma once
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "fastgen/sampler.h"
#include "ops_common.h"

namespace fastgen {

constexpr const char* kSamplerOp = "fastgen.sampler_update: ";

// Number of batch samples of x (a 0-d x is one sample).
inline int64_t sampler_batch(const at::Tensor& x) { return x.dim() ? x.size(0) : 1; }

// fp32 coefficient sets from the host tensor `coeffs` (float64 or float32, [12] for every sample
// or [n, 12] per sample, SamplerCoeff order), checked: clip > 0 (+inf: no clamp, kept as +inf),
// the other coefficients finite. Returns one entry per row; *per_sample tells which form it was,
// *any_clip (optional) whether some row has a finite clip, *any_noise whether some c_n != 0.
inline std::vector<SamplerCoeffs> host_sampler_coeffs(const at::Tensor& coeffs, int64_t n, bool* per_sample,
                                                      bool* any_clip = nullptr, bool* any_noise = nullptr) {
  TORCH_CHECK_VALUE(coeffs.device().is_cpu(), kSamplerOp, "coeffs must be a host (CPU) tensor, got one on ",
                    coeffs.device());
  TORCH_CHECK_TYPE(coeffs.scalar_type() == at::kDouble || coeffs.scalar_type() == at::kFloat, kSamplerOp,
                   "coeffs must be float64 or float32, got ", coeffs.scalar_type());
  TORCH_CHECK_VALUE((coeffs.dim() == 1 && coeffs.size(0) == kNumSamplerCoeffs) ||
                        (coeffs.dim() == 2 && coeffs.size(1) == kNumSamplerCoeffs && coeffs.size(0) == n),
                    kSamplerOp, "coeffs must have shape [", int(kNumSamplerCoeffs), "] or [N, ",
                    int(kNumSamplerCoeffs), "] with N = x.shape[0] (", n, "), got ", coeffs.sizes());
  // (no .to()/.contiguous() that could hand back the input itself: ops below autograd must not
  // return or alias inputs, which opcheck's schema test checks for every op we call)
  const at::Tensor c = coeffs.scalar_type() == at::kDouble && coeffs.is_contiguous()
                           ? coeffs
                           : coeffs.to(at::kDouble, /*non_blocking=*/false, /*copy=*/true).contiguous();
  const int64_t rows = coeffs.dim() == 2 ? coeffs.size(0) : 1;
  *per_sample = coeffs.dim() == 2;
  bool clip = false, noise = false;
  const double* p = c.const_data_ptr<double>();
  std::vector<SamplerCoeffs> out(static_cast<size_t>(std::max<int64_t>(rows, 1)),
                                 SamplerCoeffs{0.f, 0.f, INFINITY, 1.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f});
  for (int64_t r = 0; r < rows; ++r) {
    float f[kNumSamplerCoeffs];
    for (int k = 0; k < kNumSamplerCoeffs; ++k) {
      const double v = p[r * kNumSamplerCoeffs + k];
      if (k == kClip) {
        TORCH_CHECK_VALUE(v > 0.0, kSamplerOp, "coeffs[..., clip] must be > 0 (inf: no clamp), got ", v, " (row ",
                          r, ")");
        clip = clip || std::isfinite(v);
      } else {
        TORCH_CHECK_VALUE(std::isfinite(v), kSamplerOp, "coefficient ", k, " of row ", r, " is not finite (", v,
                          ")");
      }
      if (k == kCn) noise = noise || v != 0.0;
      f[k] = static_cast<float>(v);  // a finite clip beyond float range becomes +inf: no clamp either way
    }
    out[static_cast<size_t>(r)] = sampler_coeffs_from(f);
  }
  if (any_clip != nullptr) *any_clip = clip;
  if (any_noise != nullptr) *any_noise = noise;
  return out;
}

// The noise mode a kernel runs with, given whether some c_n != 0: a stochastic step needs a noise
// source (callers that cannot inspect the coefficients, e.g. under torch.compile, must pass one), and
// a deterministic one reads no noise (mode 0).
inline int64_t effective_noise_mode(bool any_noise, int64_t noise_mode) {
  TORCH_CHECK_VALUE(!(any_noise && noise_mode == 0), kSamplerOp,
                    "coeffs has c_n != 0 but there is no noise source (noise_mode 0): pass noise= or seed= "
                    "(under torch.compile the coefficients are not inspected)");
  return any_noise ? noise_mode : 0;
}

// An optional tensor argument must match x in shape, dtype and device.
inline void check_sampler_like(const std::optional<at::Tensor>& t, const at::Tensor& x, const char* name) {
  if (!t.has_value()) return;
  TORCH_CHECK_VALUE(t->sizes() == x.sizes(), kSamplerOp, name, " has shape ", t->sizes(), " but x has shape ",
                    x.sizes());
  TORCH_CHECK_TYPE(t->scalar_type() == x.scalar_type(), kSamplerOp, name, " has dtype ", t->scalar_type(),
                   " but x has dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(t->device() == x.device(), kSamplerOp, name, " is on ", t->device(), " but x is on ",
                    x.device());
}

// Shapes, dtypes and devices of every tensor argument against x, and the noise arguments.
// (coeffs is checked by host_sampler_coeffs, or by the CUDA binding for device coeffs.)
inline void check_sampler_args(const at::Tensor& x, const at::Tensor& m, const std::optional<at::Tensor>& u,
                               const std::optional<at::Tensor>& h1, const std::optional<at::Tensor>& h2,
                               const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& var,
                               int64_t noise_mode) {
  to_fg_dtype(x.scalar_type(), "x");
  check_sampler_like(m, x, "model_output");
  check_sampler_like(u, x, "uncond");
  check_sampler_like(h1, x, "h1");
  check_sampler_like(h2, x, "h2");
  check_sampler_like(noise, x, "noise");
  check_sampler_like(var, x, "var_values");
  TORCH_CHECK_VALUE(!h2.has_value() || h1.has_value(), kSamplerOp, "h2 needs h1");
  TORCH_CHECK_VALUE(noise_mode >= 0 && noise_mode <= 2, kSamplerOp, "noise_mode must be 0, 1 or 2, got ",
                    noise_mode);
  TORCH_CHECK_VALUE(noise.has_value() == (noise_mode == 1), kSamplerOp,
                    noise_mode == 1 ? "noise_mode 1 needs a noise tensor" : "noise is given but noise_mode is not 1");
  TORCH_CHECK_VALUE(!var.has_value() || noise_mode != 0, kSamplerOp,
                    "var_values scale the noise: they need noise_mode 1 or 2");
}

// out= tensors: like x, no internal overlap, not overlapping each other, and no partial overlap
// with an input (writing into the identical tensor is fine: the op is elementwise).
inline void check_sampler_out(const at::Tensor& x, const std::vector<const at::Tensor*>& ins, const at::Tensor& xp,
                              const at::Tensor& x0) {
  check_sampler_like(xp, x, "out[0] (x_prev)");
  check_sampler_like(x0, x, "out[1] (x0)");
  TORCH_CHECK(at::has_internal_overlap(xp) != at::MemOverlap::Yes &&
                  at::has_internal_overlap(x0) != at::MemOverlap::Yes,
              kSamplerOp, "out tensors must not have internally overlapping memory (e.g. expanded)");
  const at::MemOverlapStatus st = at::get_overlap_status(xp, x0);
  TORCH_CHECK(st != at::MemOverlapStatus::Full && st != at::MemOverlapStatus::Partial, kSamplerOp,
              "out[0] (x_prev) and out[1] (x0) overlap in memory");
  for (const at::Tensor* in : ins) {
    for (const at::Tensor* o : {&xp, &x0}) {
      TORCH_CHECK(at::get_overlap_status(*o, *in) != at::MemOverlapStatus::Partial, kSamplerOp,
                  "an out tensor partially overlaps an input in memory (writing over an input is only "
                  "allowed into the identical tensor)");
    }
  }
}

// The tensor inputs of a call (x, model_output and the present optionals), for check_sampler_out.
inline std::vector<const at::Tensor*> sampler_inputs(const at::Tensor& x, const at::Tensor& m,
                                                     std::initializer_list<const std::optional<at::Tensor>*> opt) {
  std::vector<const at::Tensor*> ins = {&x, &m};
  for (const std::optional<at::Tensor>* t : opt)
    if (t->has_value()) ins.push_back(&**t);
  return ins;
}

}  // namespace fastgen
