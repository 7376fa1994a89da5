// The torch layer of reparameterize (a VAE's Gaussian posterior sample and its KL to N(0, I)):
// schemas, checks naming the argument, and the CPU implementations calling csrc/cpu/reparam.h.
// Autograd is registered from Python (fastgen/ops/reparam.py).
//
//   reparam_kl(mu, logvar, noise?, seed, offset) -> (z, kl)
//       z = mu + exp(logvar / 2) eps (eps = noise, or fastgen's Philox stream at (seed, offset) over
//       the elements in memory order), kl[n] = sum (mu^2 + exp(logvar) - 1 - logvar) / 2 (fp32, (N,))
//   reparam_kl_backward(gz?, gkl?, mu, logvar, noise?, seed, offset) -> (dmu, dlogvar)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "cpu/reparam.h"
#include "ops_common.h"

namespace fastgen {
namespace {

using OptTensor = std::optional<at::Tensor>;
constexpr int64_t kChunk = 1 << 15;

struct Rows {
  at::Tensor mu, lv;
  int64_t N, M;
};

Rows rows_of(const at::Tensor& mu, const at::Tensor& logvar) {
  TORCH_CHECK_VALUE(mu.dim() >= 1, "fastgen.reparameterize: mu must have a batch dimension, got a scalar");
  to_fg_dtype(mu.scalar_type(), "mu");
  TORCH_CHECK_VALUE(logvar.sizes() == mu.sizes(), "fastgen.reparameterize: logvar has shape ", logvar.sizes(),
                    " but mu has shape ", mu.sizes());
  TORCH_CHECK_TYPE(logvar.scalar_type() == mu.scalar_type(), "fastgen.reparameterize: logvar has dtype ",
                   logvar.scalar_type(), " but mu has dtype ", mu.scalar_type());
  TORCH_CHECK_VALUE(logvar.device() == mu.device(), "fastgen.reparameterize: logvar is on ", logvar.device(),
                    " but mu is on ", mu.device());
  Rows r;
  r.mu = batch_outer_dense(mu) ? mu : mu.contiguous();
  r.lv = layout_like(logvar, r.mu);
  r.N = mu.size(0);
  r.M = r.N ? mu.numel() / r.N : 0;
  return r;
}

at::Tensor like_or_empty(const OptTensor& t, const Rows& r, const char* name) {
  if (!t.has_value()) return {};
  TORCH_CHECK_VALUE(t->sizes() == r.mu.sizes(), "fastgen.reparameterize: ", name, " has shape ", t->sizes(),
                    " but mu has shape ", r.mu.sizes());
  TORCH_CHECK_TYPE(t->scalar_type() == r.mu.scalar_type(), "fastgen.reparameterize: ", name, " has dtype ",
                   t->scalar_type(), " but mu has dtype ", r.mu.scalar_type());
  return layout_like(*t, r.mu);
}

template <typename F>
void for_chunks(const Rows& r, F f) {
  const int64_t per_row = std::max<int64_t>(1, (r.M + kChunk - 1) / kChunk);
  at::parallel_for(0, r.N * per_row, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / per_row, c = t % per_row;
      f(t, n, c * kChunk, std::min(r.M, (c + 1) * kChunk));
    }
  });
}

cpu::ReparamArgs base_args(const Rows& r, const at::Tensor& noise, int64_t seed, int64_t offset) {
  cpu::ReparamArgs a{};
  a.mu = r.mu.const_data_ptr();
  a.logvar = r.lv.const_data_ptr();
  a.noise = noise.defined() ? noise.const_data_ptr() : nullptr;
  a.M = r.M;
  a.seed = static_cast<uint64_t>(seed);
  a.offset = static_cast<uint64_t>(offset);
  return a;
}

std::tuple<at::Tensor, at::Tensor> reparam_kl_cpu(const at::Tensor& mu, const at::Tensor& logvar,
                                                  const OptTensor& noise, int64_t seed, int64_t offset) {
  const Rows r = rows_of(mu, logvar);
  const at::Tensor nz = like_or_empty(noise, r, "noise");
  at::Tensor z = at::empty_like(r.mu);
  at::Tensor kl = at::empty({r.N}, r.mu.options().dtype(at::kFloat));
  const int64_t per_row = std::max<int64_t>(1, (r.M + kChunk - 1) / kChunk);
  std::vector<double> part(static_cast<size_t>(r.N * per_row), 0.0);
  cpu::ReparamArgs a = base_args(r, nz, seed, offset);
  a.z = z.mutable_data_ptr();
  const DType dt = to_fg_dtype(mu.scalar_type(), "mu");
  if (r.M > 0) {
    for_chunks(r, [&](int64_t t, int64_t n, int64_t b, int64_t e) { part[t] = cpu::reparam_forward(dt, a, n, b, e); });
  }
  float* kp = kl.mutable_data_ptr<float>();
  for (int64_t n = 0; n < r.N; ++n) {
    double s = 0.0;
    for (int64_t c = 0; c < per_row; ++c) s += part[n * per_row + c];
    kp[n] = static_cast<float>(s);
  }
  return {z, kl};
}

std::tuple<at::Tensor, at::Tensor> reparam_kl_backward_cpu(const OptTensor& gz, const OptTensor& gkl,
                                                           const at::Tensor& mu, const at::Tensor& logvar,
                                                           const OptTensor& noise, int64_t seed, int64_t offset) {
  const Rows r = rows_of(mu, logvar);
  const at::Tensor nz = like_or_empty(noise, r, "noise");
  const at::Tensor g = like_or_empty(gz, r, "grad_z");
  at::Tensor gk;
  if (gkl.has_value()) {
    TORCH_CHECK_VALUE(gkl->dim() == 1 && gkl->size(0) == r.N, "fastgen.reparameterize: grad_kl must have shape (",
                      r.N, ",), got ", gkl->sizes());
    gk = gkl->to(at::kFloat).contiguous();
  }
  at::Tensor dmu = at::empty_like(r.mu), dlv = at::empty_like(r.mu);
  cpu::ReparamArgs a = base_args(r, nz, seed, offset);
  a.gz = g.defined() ? g.const_data_ptr() : nullptr;
  a.gkl = gk.defined() ? gk.const_data_ptr<float>() : nullptr;
  a.dmu = dmu.mutable_data_ptr();
  a.dlogvar = dlv.mutable_data_ptr();
  const DType dt = to_fg_dtype(mu.scalar_type(), "mu");
  if (r.M > 0) {
    for_chunks(r, [&](int64_t, int64_t n, int64_t b, int64_t e) { cpu::reparam_backward(dt, a, n, b, e); });
  }
  return {dmu, dlv};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_FRAGMENT(fastgen, m) {
  m.def("reparam_kl(Tensor mu, Tensor logvar, Tensor? noise, int seed, int offset) -> (Tensor, Tensor)");
  m.def("reparam_kl_backward(Tensor? grad_z, Tensor? grad_kl, Tensor mu, Tensor logvar, Tensor? noise, int seed, "
        "int offset) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("reparam_kl", &fastgen::reparam_kl_cpu);
  m.impl("reparam_kl_backward", &fastgen::reparam_kl_backward_cpu);
}
