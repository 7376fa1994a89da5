// The torch layer of grad_norm_penalty (the per-sample part of the WGAN-GP / R1 / R2 / DRAGAN
// gradient penalties): schemas, checks naming the argument, and the CPU implementations calling
// csrc/cpu/grad_penalty.h. Autograd is registered from Python (fastgen/ops/grad_penalty.py).
//
//   grad_norm_penalty(grad, center, squared) -> (penalty, norm)     both (N,) fp32
//       norm[n] = ||grad[n]||_2;  penalty = (norm - center)^2, or norm^2 when squared
//   grad_norm_penalty_backward(grad_penalty, grad, norm, center, squared) -> grad's shape and dtype
//       d grad[n] = grad_penalty[n] * k[n] * grad[n],  k = 2 (norm - center) / norm (0 at norm 0), or 2
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "cpu/grad_penalty.h"
#include "ops_common.h"

namespace fastgen {
namespace {

constexpr int64_t kChunk = 1 << 16;

at::Tensor rows_of(const at::Tensor& grad) {
  TORCH_CHECK_VALUE(grad.dim() >= 1, "fastgen.grad_norm_penalty: grad must have a batch dimension, got a scalar");
  to_fg_dtype(grad.scalar_type(), "grad");
  // any dense layout with the batch outermost (contiguous, channels_last, ...) is read in memory
  // order: the penalty only needs each sample's elements, in any order
  return batch_outer_dense(grad) ? grad : grad.contiguous();
}

std::tuple<at::Tensor, at::Tensor> grad_norm_penalty_cpu(const at::Tensor& grad, double center, bool squared) {
  const at::Tensor g = rows_of(grad);
  const int64_t N = g.size(0);
  const int64_t M = N ? g.numel() / N : 0;
  const int64_t per_row = std::max<int64_t>(1, (M + kChunk - 1) / kChunk);
  std::vector<double> partial(static_cast<size_t>(N * per_row), 0.0);
  const DType dt = to_fg_dtype(g.scalar_type(), "grad");
  const void* ptr = g.const_data_ptr();
  at::parallel_for(0, N * per_row, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / per_row, c = t % per_row;
      partial[t] = cpu::grad_sq_sum(dt, ptr, M, n, c * kChunk, std::min(M, (c + 1) * kChunk));
    }
  });
  at::Tensor pen = at::empty({N}, g.options().dtype(at::kFloat));
  at::Tensor norm = at::empty({N}, g.options().dtype(at::kFloat));
  float* pp = pen.mutable_data_ptr<float>();
  float* np = norm.mutable_data_ptr<float>();
  for (int64_t n = 0; n < N; ++n) {
    double s = 0.0;
    for (int64_t c = 0; c < per_row; ++c) s += partial[n * per_row + c];
    const double nv = std::sqrt(s);
    np[n] = static_cast<float>(nv);
    pp[n] = static_cast<float>(squared ? s : (nv - center) * (nv - center));
  }
  return {pen, norm};
}

at::Tensor grad_norm_penalty_backward_cpu(const at::Tensor& gpen, const at::Tensor& grad, const at::Tensor& norm,
                                          double center, bool squared) {
  const at::Tensor g = rows_of(grad);
  const int64_t N = g.size(0);
  TORCH_CHECK_VALUE(gpen.dim() == 1 && gpen.size(0) == N, "fastgen.grad_norm_penalty_backward: grad_penalty must "
                    "have shape (", N, ",), got ", gpen.sizes());
  TORCH_CHECK_VALUE(norm.dim() == 1 && norm.size(0) == N, "fastgen.grad_norm_penalty_backward: norm must have shape (",
                    N, ",), got ", norm.sizes());
  const at::Tensor u = gpen.to(at::kFloat).contiguous();
  const at::Tensor nv = norm.to(at::kFloat).contiguous();
  at::Tensor coef = at::empty({N}, u.options());
  const float* up = u.const_data_ptr<float>();
  const float* npv = nv.const_data_ptr<float>();
  float* cp = coef.mutable_data_ptr<float>();
  for (int64_t n = 0; n < N; ++n) {
    const float k = squared ? 2.0f : (npv[n] > 0.0f ? 2.0f * (npv[n] - static_cast<float>(center)) / npv[n] : 0.0f);
    cp[n] = up[n] * k;
  }
  at::Tensor out = at::empty_like(g);
  const int64_t M = N ? g.numel() / N : 0;
  const DType dt = to_fg_dtype(g.scalar_type(), "grad");
  const void* gp = g.const_data_ptr();
  void* op = out.mutable_data_ptr();
  at::parallel_for(0, g.numel(), 32768, [&](int64_t b, int64_t e) { cpu::grad_penalty_scale(dt, gp, cp, op, M, b, e); });
  return out;
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_FRAGMENT(fastgen, m) {
  m.def("grad_norm_penalty(Tensor grad, float center, bool squared) -> (Tensor, Tensor)");
  m.def("grad_norm_penalty_backward(Tensor grad_penalty, Tensor grad, Tensor norm, float center, bool squared) -> "
        "Tensor");
}

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("grad_norm_penalty", &fastgen::grad_norm_penalty_cpu);
  m.impl("grad_norm_penalty_backward", &fastgen::grad_norm_penalty_backward_cpu);
}
