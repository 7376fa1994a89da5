// Helpers shared by the torch binding files (ops.cpp, ops_cuda.cpp).
#pragma once
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

#include "fastgen/ddim.h"
#include "fastgen/macros.h"

namespace fastgen {

inline DType to_fg_dtype(at::ScalarType t, const char* arg) {
  switch (t) {
    case at::kFloat: return DType::Float32;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default:
      TORCH_CHECK_TYPE(false, "fastgen: ", arg, " has dtype ", t,
                  "; supported dtypes are float32, float16 and bfloat16");
  }
  return DType::Float32;
}

// Checks shared by every implementation of the ddim ops (device-independent).
inline void check_like(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(t.sizes() == x.sizes(), "fastgen.ddim_step: ", name, " has shape ", t.sizes(),
              " but x_t has shape ", x.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), "fastgen.ddim_step: ", name, " has dtype ",
              t.scalar_type(), " but x_t has dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), "fastgen.ddim_step: ", name, " is on ", t.device(),
              " but x_t is on ", x.device());
}

inline void check_alpha(const at::Tensor& a, const at::Tensor& x, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(a.scalar_type()), "fastgen.ddim_step: ", name,
              " must be a floating-point tensor, got ", a.scalar_type());
  TORCH_CHECK_VALUE(a.dim() == 0 || (a.dim() == 1 && x.dim() >= 1 && a.size(0) == x.size(0)),
              "fastgen.ddim_step: ", name, " must be a scalar or have shape [N] with N = x_t.shape[0] (",
              x.dim() >= 1 ? x.size(0) : 0, "), got shape ", a.sizes());
  TORCH_CHECK_VALUE(a.device() == x.device() || (a.dim() == 0 && a.device().is_cpu()), "fastgen.ddim_step: ",
              name, " is on ", a.device(), " but x_t is on ", x.device());
}

// Values of host-side alphas (the device-side per-sample alphas of CUDA calls are not read back:
// that would cost a device sync per step).
inline void check_alpha_values(double a_t, double a_p, double eta) {
  TORCH_CHECK_VALUE(a_t > 0.0 && a_t <= 1.0, "fastgen.ddim_step: alpha_bar_t must be in (0, 1], got ", a_t);
  TORCH_CHECK_VALUE(a_p > 0.0 && a_p <= 1.0, "fastgen.ddim_step: alpha_bar_prev must be in (0, 1], got ", a_p);
  TORCH_CHECK_VALUE(eta == 0.0 || a_p >= a_t, "fastgen.ddim_step: with eta > 0, alpha_bar_prev must be >= alpha_bar_t (got ", a_p,
                    " < ", a_t, "): stochastic steps go towards less noise");
}

// `t` laid out exactly like `ref` (same sizes and strides); copies only when needed.
inline at::Tensor layout_like(const at::Tensor& t, const at::Tensor& ref) {
  if (t.strides() == ref.strides()) return t;
  at::Tensor r = at::empty_like(ref);
  r.copy_(t);
  return r;
}

// True if `t` is dense and the batch dim is outermost in memory, so element i of storage
// belongs to sample i / (numel / N).
inline bool batch_outer_dense(const at::Tensor& t) {
  if (!t.is_non_overlapping_and_dense()) return false;
  if (t.dim() == 0 || t.numel() == 0) return true;
  return t.size(0) == 1 || t.stride(0) * t.size(0) == t.numel();
}

// Output layout for x: x's own dense layout where possible (channels_last stays
// channels_last), contiguous otherwise.
inline at::Tensor empty_output_like(const at::Tensor& x) {
  at::Tensor out = at::empty_like(x);
  if (!batch_outer_dense(out)) out = at::empty(x.sizes(), x.options());
  return out;
}

inline void check_ddim_args(const at::Tensor& x, const at::Tensor& eps, const at::Tensor& a_t,
                            const at::Tensor& a_p, double eta, const std::optional<at::Tensor>& noise) {
  to_fg_dtype(x.scalar_type(), "x_t");
  check_like(eps, x, "eps");
  if (noise.has_value()) check_like(*noise, x, "noise");
  check_alpha(a_t, x, "alpha_bar_t");
  check_alpha(a_p, x, "alpha_bar_prev");
  TORCH_CHECK_VALUE(eta >= 0.0 && eta <= 1.0, "fastgen.ddim_step: eta must be in [0, 1], got ", eta);
}

// out= tensors: right shape/dtype/device, no overlap with each other, and no partial overlap
// with the inputs (writing x_prev into x_t's own buffer is fine: the op is elementwise).
inline void check_ddim_out(const at::Tensor& x, const at::Tensor& eps, const std::optional<at::Tensor>& noise,
                           const at::Tensor& xp, const at::Tensor& x0) {
  check_like(xp, x, "out[0] (x_prev)");
  check_like(x0, x, "out[1] (x0_pred)");
  TORCH_CHECK(at::has_internal_overlap(xp) != at::MemOverlap::Yes &&
                  at::has_internal_overlap(x0) != at::MemOverlap::Yes,
              "fastgen.ddim_step: out tensors must not have internally overlapping memory (e.g. expanded)");
  const at::MemOverlapStatus st = at::get_overlap_status(xp, x0);  // TooHard (non-dense) passes
  TORCH_CHECK(st != at::MemOverlapStatus::Full && st != at::MemOverlapStatus::Partial,
              "fastgen.ddim_step: out[0] (x_prev) and out[1] (x0_pred) overlap in memory");
  const std::pair<const at::Tensor*, const char*> ins[] = {
      {&x, "x_t"}, {&eps, "eps"}, {noise.has_value() ? &*noise : &x, "noise"}};
  for (const auto& in : ins) {
    for (const auto& o : {std::make_pair(&xp, "out[0] (x_prev)"), std::make_pair(&x0, "out[1] (x0_pred)")}) {
      TORCH_CHECK(at::get_overlap_status(*o.first, *in.first) != at::MemOverlapStatus::Partial,
                  "fastgen.ddim_step: ", o.second, " partially overlaps ", in.second,
                  " in memory (writing over an input is only allowed into the identical tensor)");
    }
  }
}

// out= tensors usable directly by a kernel (same strides, batch-outer dense)?
inline bool out_direct(const at::Tensor& xp, const at::Tensor& x0) {
  return xp.strides() == x0.strides() && batch_outer_dense(xp);
}

}  // namespace fastgen
