// The torch layer of modulated_bias_act (StyleGAN's synthesis-layer epilogue: demodulation scale +
// noise injection + bias + activation + gain + clamp): schemas (a TORCH_LIBRARY_FRAGMENT of the
// fastgen library), input checks naming the argument, layouts, and the CPU implementations calling
// csrc/cpu/modulated_bias_act.h. Autograd (every order) is registered from Python
// (fastgen/ops/modulated_bias_act.py), shared with the Triton ops.
//
//   modulated_bias_act(x, b?, scale?, noise?, noise_strength?, act, alpha, gain, clamp) -> y
//       z = x scale[n, c] + noise[n|0, c|0, p] noise_strength + b[c],  y = clamp(act(z) gain)
//   modulated_bias_act_backward(grad, x, b?, scale?, noise?, noise_strength?, act, alpha, gain, clamp,
//                               need_x, need_b, need_scale, need_noise, need_strength)
//       -> (grad_x, grad_b, grad_scale, grad_noise, grad_strength), each in its input's shape and
//          dtype; the ones not needed (or whose input is absent) are empty [0].
//   modulated_bias_act_double_backward(grad, x, b?, scale?, noise?, noise_strength?, u_x?, u_b?, u_scale?,
//                                      u_noise?, u_strength?, act, alpha, gain, clamp, need_grad, need_x,
//                                      need_b, need_scale, need_noise, need_strength)
//       -> (grad_grad, grad_x, grad_b, grad_scale, grad_noise, grad_strength): the gradients of
//          <backward(grad, x, b, scale, noise, noise_strength), (u_x, u_b, u_scale, u_noise, u_strength)>
//          (absent cotangents are zero), one fused pass (csrc/cpu/modulated_bias_act.h).
//
// x: (N, C, *spatial) fp32/fp16/bf16. Processed in its memory order when it is NCHW-contiguous or
// channels-last dense (channels innermost, e.g. channels_last / channels_last_3d); x without spatial
// extent (P = 1) is processed as rows of C; anything else is made contiguous. y and grad_x (and
// grad_noise of per-channel noise) are NCHW-contiguous or channels-last with canonical strides,
// following that choice (fastgen/ops/modulated_bias_act.py mirrors the rule in its fake kernels).
// b, scale, noise_strength: any float dtype (fp32 math). noise: any float dtype, converted to fp32
// (noise has C times fewer elements than x unless it is per channel).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <optional>
#include <vector>

#include "cpu/modulated_bias_act.h"
#include "ops_common.h"

namespace fastgen {
namespace {

using OptTensor = std::optional<at::Tensor>;
constexpr int64_t kTileElems = 32768;      // elements per task (about)
// NCHW positions per task when a backward sums dnoise over channels (noise (N|1, 1, ...)): each
// channel block then writes its own dnoise replica, so blocks of kTileElems / kRunChunk = 32 channels
// keep the replicas at 1/32 of x. Otherwise a task is one contiguous stretch of memory (whole runs
// of up to kTileElems positions): the hardware prefetchers stream through it (4 KB pieces 64 KB
// apart ran at ~80% of that speed on the development machine, fp32 (16, 128, 128, 128)).
constexpr int64_t kRunChunk = 1024;
constexpr int64_t kMinParallelElems = 65536;  // below this, one thread

#define MBA_NAME "fastgen.modulated_bias_act: "

bool cl_dense(const at::Tensor& t) {
  if (t.dim() < 3) return false;
  std::vector<int64_t> perm{0};
  for (int64_t d = 2; d < t.dim(); ++d) perm.push_back(d);
  perm.push_back(1);
  return t.permute(perm).is_contiguous();
}

// An empty tensor of `sizes` with channels innermost (canonical channels-last strides).
at::Tensor empty_cl(at::IntArrayRef sizes, const at::TensorOptions& opt) {
  std::vector<int64_t> perm_sizes{sizes[0]};
  for (size_t d = 2; d < sizes.size(); ++d) perm_sizes.push_back(sizes[d]);
  perm_sizes.push_back(sizes[1]);
  return at::empty(perm_sizes, opt).movedim(-1, 1);
}

// `t` in memory order (N, spatial, C) (a copy unless it already is).
at::Tensor to_cl(const at::Tensor& t) { return cl_dense(t) ? t : t.movedim(1, -1).contiguous().movedim(-1, 1); }

// fp32 values of a parameter with n elements (a 1-element tensor is broadcast; absent: dflt):
// the tensor's own data when it is fp32 and contiguous (no copy, no dispatcher call), else a
// converted copy held in `store` / `keep`.
const float* fp32_values(const OptTensor& t, int64_t n, float dflt, std::vector<float>& store, at::Tensor& keep) {
  if (!t.has_value()) {
    store.assign(static_cast<size_t>(n), dflt);
    return store.data();
  }
  if (t->numel() == n && t->scalar_type() == at::kFloat && t->is_contiguous()) return t->const_data_ptr<float>();
  keep = t->to(at::kFloat).contiguous();
  if (keep.numel() == n) return keep.const_data_ptr<float>();
  store.assign(static_cast<size_t>(n), keep.numel() > 0 ? keep.const_data_ptr<float>()[0] : dflt);
  return store.data();
}

struct Setup {
  at::Tensor x;  // in the processing layout
  bool cl = false;
  int64_t N = 0, C = 0, P = 1;
  at::Tensor noise;  // fp32, processing layout, or undefined
  int64_t Nn = 1, Cn = 1;
  // fp32 (N, C), (C), (C) (ones / zeros / ones when absent); see fp32_values
  const float* scale = nullptr;
  const float* bias = nullptr;
  const float* strength = nullptr;
  std::vector<float> store_s, store_b, store_t;
  at::Tensor keep_s, keep_b, keep_t;
  DType dt = DType::Float32;
};

void check_param(const OptTensor& t, const at::Tensor& x, const char* name) {
  if (!t.has_value()) return;
  TORCH_CHECK_TYPE(at::isFloatingType(t->scalar_type()), MBA_NAME, name, " must be a floating-point tensor, got ",
                   t->scalar_type());
  TORCH_CHECK_VALUE(t->device() == x.device(), MBA_NAME, name, " is on ", t->device(), " but x is on ", x.device());
}

Setup setup(const at::Tensor& x, const OptTensor& b, const OptTensor& scale, const OptTensor& noise,
            const OptTensor& strength) {
  Setup s;
  s.dt = to_fg_dtype(x.scalar_type(), "x");
  TORCH_CHECK_VALUE(x.dim() >= 2, MBA_NAME "x must have shape (N, C, *spatial), got ", x.sizes());
  TORCH_CHECK_VALUE(x.device().is_cpu(), MBA_NAME "x must be a CPU tensor for this implementation, got ", x.device());
  check_param(b, x, "b");
  check_param(scale, x, "scale");
  check_param(noise, x, "noise");
  check_param(strength, x, "noise_strength");
  s.N = x.size(0);
  s.C = x.size(1);
  s.P = 1;
  for (int64_t d = 2; d < x.dim(); ++d) s.P *= x.size(d);
  if (b.has_value()) {
    TORCH_CHECK_VALUE(b->dim() == 1 && b->size(0) == s.C, MBA_NAME "b must have shape (C,) = (", s.C, ",), got ",
                      b->sizes());
  }
  s.bias = fp32_values(b, s.C, 0.0f, s.store_b, s.keep_b);
  if (scale.has_value()) {
    // (N, C), or (N, C, 1, ...) with x's number of dims
    bool ok = (scale->dim() == 2 || scale->dim() == x.dim()) && scale->size(0) == s.N && scale->size(1) == s.C;
    for (int64_t d = 2; ok && d < scale->dim(); ++d) ok = scale->size(d) == 1;
    TORCH_CHECK_VALUE(ok, MBA_NAME "scale must have shape (N, C) = (", s.N, ", ", s.C, "), got ", scale->sizes());
  }
  s.scale = fp32_values(scale, s.N * s.C, 1.0f, s.store_s, s.keep_s);
  if (noise.has_value()) {
    bool ok = noise->dim() == x.dim() && (noise->size(0) == 1 || noise->size(0) == s.N) &&
              (noise->size(1) == 1 || noise->size(1) == s.C);
    for (int64_t d = 2; ok && d < x.dim(); ++d) ok = noise->size(d) == x.size(d);
    TORCH_CHECK_VALUE(ok, MBA_NAME "noise must have shape (N or 1, 1 or C, *spatial) with N = ", s.N, ", C = ", s.C,
                      ", spatial = ", x.sizes().slice(2), "; got ", noise->sizes());
    s.Nn = noise->size(0);
    s.Cn = noise->size(1);
  }
  if (strength.has_value()) {
    TORCH_CHECK_VALUE(noise.has_value(), MBA_NAME "noise_strength was given without noise");
    TORCH_CHECK_VALUE(strength->dim() <= 1 && (strength->numel() == 1 || strength->numel() == s.C),
                      MBA_NAME "noise_strength must be a scalar tensor or have shape (C,) = (", s.C, ",), got ",
                      strength->sizes());
  }
  s.strength = fp32_values(strength, s.C, 1.0f, s.store_t, s.keep_t);
  // Layout: channels innermost when x has no spatial extent or is channels-last dense (and not
  // NCHW-contiguous), else NCHW-contiguous.
  if (s.P == 1) {
    s.cl = true;
    s.x = x.contiguous();
  } else if (x.is_contiguous()) {
    s.x = x;
  } else if (cl_dense(x)) {
    s.cl = true;
    s.x = x;
  } else {
    s.x = x.contiguous();
  }
  if (noise.has_value()) {
    const at::Tensor nf = noise->to(at::kFloat);
    s.noise = (s.cl && s.P > 1) ? to_cl(nf) : nf.contiguous();
  }
  return s;
}

cpu::ModBiasActArgs kernel_args(const Setup& s, int64_t act, double alpha, double gain, double clamp,
                                bool short_runs = false) {
  TORCH_CHECK_VALUE(act >= cpu::kBaLinear && act <= cpu::kBaGelu, MBA_NAME "unknown activation code ", act);
  cpu::ModBiasActArgs a{};
  a.N = s.N;
  a.C = s.C;
  a.P = s.P;
  a.cl = s.cl;
  a.x = s.x.const_data_ptr();
  a.scale = s.scale;
  a.bias = s.bias;
  a.strength = s.strength;
  if (s.noise.defined()) {
    a.noise = s.noise.const_data_ptr<float>();
    if (!s.cl) {  // (Nn, Cn, P)
      a.ns_n = s.Nn > 1 ? s.Cn * s.P : 0;
      a.ns_a = s.Cn > 1 ? s.P : 0;
      a.ns_b = 1;
    } else {  // (Nn, P, Cn)
      a.ns_n = s.Nn > 1 ? s.P * s.Cn : 0;
      a.ns_a = s.Cn;
      a.ns_b = s.Cn > 1 ? 1 : 0;
    }
  }
  a.act = static_cast<int>(act);
  a.alpha = static_cast<float>(alpha);
  a.gain = static_cast<float>(gain);
  a.clamp = static_cast<float>(clamp);
  // Tiling (depends on the shape and short_runs only: deterministic sums for any thread count).
  // Sizes of 0 give 0 tasks.
  const int64_t C1 = std::max<int64_t>(s.C, 1), P1 = std::max<int64_t>(s.P, 1);
  if (!s.cl) {
    a.pk = std::min<int64_t>(P1, short_runs ? kRunChunk : kTileElems);
    a.cb = std::min<int64_t>(C1, std::max<int64_t>(1, kTileElems / a.pk));
    a.ncb = (s.C + a.cb - 1) / a.cb;
  } else {
    a.pk = std::min<int64_t>(P1, std::max<int64_t>(1, kTileElems / C1));
    a.cb = C1;
    a.ncb = 1;
  }
  a.npk = (s.P + a.pk - 1) / a.pk;
  return a;
}

// A contiguous tensor of `sizes` and dtype `dt` holding v (written directly for fp32 / fp64).
at::Tensor from_doubles(const std::vector<double>& v, at::IntArrayRef sizes, at::ScalarType dt, const at::Tensor& like) {
  if (dt == at::kDouble) {
    at::Tensor r = at::empty(sizes, like.options().dtype(at::kDouble));
    std::copy(v.begin(), v.end(), r.mutable_data_ptr<double>());
    return r;
  }
  at::Tensor r = at::empty(sizes, like.options().dtype(at::kFloat));
  float* o = r.mutable_data_ptr<float>();
  for (size_t i = 0; i < v.size(); ++i) o[i] = static_cast<float>(v[i]);
  return dt == at::kFloat ? r : r.to(dt);
}

int64_t num_tasks(const cpu::ModBiasActArgs& a) { return a.N * a.ncb * a.npk; }

int64_t grain(const cpu::ModBiasActArgs& a) {
  const int64_t per_task = std::max<int64_t>(1, a.N * a.C * a.P / std::max<int64_t>(1, num_tasks(a)));
  return std::max<int64_t>(1, kMinParallelElems / per_task);
}

at::Tensor empty_like_layout(const Setup& s, at::IntArrayRef sizes, at::ScalarType dt) {
  const auto opt = s.x.options().dtype(dt);
  return (s.cl && s.P > 1) ? empty_cl(sizes, opt) : at::empty(sizes, opt);
}

at::Tensor mba_cpu(const at::Tensor& x, const OptTensor& b, const OptTensor& scale, const OptTensor& noise,
                   const OptTensor& strength, int64_t act, double alpha, double gain, double clamp) {
  const Setup s = setup(x, b, scale, noise, strength);
  cpu::ModBiasActArgs a = kernel_args(s, act, alpha, gain, clamp);
  at::Tensor y = empty_like_layout(s, x.sizes(), x.scalar_type());
  if (y.numel() == 0) return y;
  a.out = y.mutable_data_ptr();
  at::parallel_for(0, num_tasks(a), grain(a), [&](int64_t begin, int64_t end) { cpu::mba_forward(s.dt, a, begin, end); });
  return y;
}

// An x-shaped tensor (grad, or the cotangent of grad_x) in x's processing layout and dtype.
at::Tensor like_x(const at::Tensor& t, const Setup& s, const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(t.sizes() == x.sizes(), MBA_NAME, name, " has shape ", t.sizes(), " but x has shape ", x.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), MBA_NAME, name, " has dtype ", t.scalar_type(),
                   " but x has dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), MBA_NAME, name, " is on ", t.device(), " but x is on ", x.device());
  return (s.cl && s.P > 1) ? to_cl(t) : t.contiguous();
}

struct Cotangents {  // the double backward's upstream gradients (of dx, db, dscale, dnoise, dstrength)
  OptTensor ux, un;  // x-shaped / noise-shaped, any layout
  const float* us = nullptr;
  const float* ub = nullptr;
  const float* ust = nullptr;
  std::vector<float> store_s, store_b, store_t;
  at::Tensor keep_s, keep_b, keep_t;
};

void check_cotangent(const OptTensor& u, const OptTensor& input, const char* name, const char* input_name) {
  if (!u.has_value() || !input.has_value()) return;
  TORCH_CHECK_VALUE(u->sizes() == input->sizes(), MBA_NAME, name, " has shape ", u->sizes(), " but ", input_name,
                    " has shape ", input->sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(u->scalar_type()), MBA_NAME, name, " must be a floating-point tensor, got ",
                   u->scalar_type());
  TORCH_CHECK_VALUE(u->device() == input->device(), MBA_NAME, name, " is on ", u->device(), " but ", input_name,
                    " is on ", input->device());
}

// The backward (order 1: (grad_x, grad_b, grad_scale, grad_noise, grad_strength)) and the double
// backward (order 2: (grad_grad, grad_x, grad_b, grad_scale, grad_noise, grad_strength)).
std::vector<at::Tensor> run_backward(int order, const at::Tensor& grad, const at::Tensor& x, const OptTensor& b,
                                     const OptTensor& scale, const OptTensor& noise, const OptTensor& strength,
                                     const Cotangents* ct, int64_t act, double alpha, double gain, double clamp,
                                     bool need_g, bool need_x, bool need_b, bool need_scale, bool need_noise,
                                     bool need_strength) {
  const Setup s = setup(x, b, scale, noise, strength);
  need_b = need_b && b.has_value();
  need_scale = need_scale && scale.has_value();
  need_noise = need_noise && noise.has_value();
  need_strength = need_strength && strength.has_value();
  const at::Tensor g = like_x(grad, s, x, "grad");

  cpu::ModBiasActArgs a = kernel_args(s, act, alpha, gain, clamp, need_noise && !s.cl && s.Cn == 1);
  a.g = g.const_data_ptr();
  at::Tensor dx = need_x ? empty_like_layout(s, x.sizes(), x.scalar_type()) : x.new_empty({0});
  if (need_x) a.out = dx.mutable_data_ptr();
  at::Tensor dg, ux, un;
  if (order == 2) {
    dg = need_g ? empty_like_layout(s, x.sizes(), x.scalar_type()) : x.new_empty({0});
    if (need_g) a.out2 = dg.mutable_data_ptr();
    if (ct->ux.has_value()) {  // x's dtype and processing layout
      const at::Tensor t = ct->ux->to(x.scalar_type());
      ux = (s.cl && s.P > 1) ? to_cl(t) : t.contiguous();
      a.ux = ux.const_data_ptr();
    }
    if (ct->un.has_value() && s.noise.defined()) {  // fp32, noise's processing layout
      const at::Tensor t = ct->un->to(at::kFloat);
      un = (s.cl && s.P > 1) ? to_cl(t) : t.contiguous();
      a.un = un.const_data_ptr<float>();
    }
    a.us = ct->us;
    a.ub = ct->ub;
    a.ust = ct->ust;
  }
  const size_t slots = static_cast<size_t>(s.N * a.npk * s.C);
  std::vector<double> s_dz(need_b ? slots : 0), s_dzx(need_scale ? slots : 0), s_dzn(need_strength ? slots : 0);
  a.s_dz = need_b ? s_dz.data() : nullptr;
  a.s_dzx = need_scale ? s_dzx.data() : nullptr;
  a.s_dzn = need_strength ? s_dzn.data() : nullptr;

  // grad_noise: fp32 in the processing layout, R task-owned replicas summed afterwards when R > 1.
  at::Tensor dn_f, dn_part;
  int64_t R = 1, M = 0;
  if (need_noise) {
    a.dn_sum_c = s.Cn == 1;
    a.dn_sum_n = s.Nn == 1;
    std::vector<int64_t> nsizes(noise->sizes().begin(), noise->sizes().end());
    dn_f = (s.Cn > 1) ? empty_like_layout(s, nsizes, at::kFloat) : at::empty(nsizes, x.options().dtype(at::kFloat));
    M = dn_f.numel();
    R = (a.dn_sum_n ? s.N : 1) * ((!s.cl && a.dn_sum_c) ? a.ncb : 1);
    if (R > 1) {
      dn_part = at::empty({R * M}, x.options().dtype(at::kFloat));
      a.dn = dn_part.mutable_data_ptr<float>();
    } else {
      a.dn = dn_f.mutable_data_ptr<float>();
    }
  }

  if (x.numel() > 0) {
    at::parallel_for(0, num_tasks(a), grain(a), [&](int64_t begin, int64_t end) {
      std::vector<float> fs(s.cl ? 3 * s.C : 0);
      std::vector<double> ds(s.cl ? 3 * s.C : 0);
      if (order == 1) cpu::mba_backward(s.dt, a, begin, end, fs.data(), ds.data());
      else cpu::mba_double_backward(s.dt, a, begin, end, fs.data(), ds.data());
    });
  } else if (need_noise) {
    dn_f.zero_();
    R = 1;
  }
  if (need_noise && R > 1) {
    const float* part = dn_part.const_data_ptr<float>();
    float* out = dn_f.mutable_data_ptr<float>();
    at::parallel_for(0, M, kMinParallelElems / 4,
                     [&](int64_t begin, int64_t end) { cpu::mba_sum_replicas(part, R, M, out, begin, end); });
  }

  // Combine the per-task sums in a fixed order (fp64): over chunks for (N, C), then over n for (C).
  const int64_t N = s.N, C = s.C, npk = a.npk;
  auto per_nc = [&](const std::vector<double>& p) {
    std::vector<double> r(static_cast<size_t>(N * C), 0.0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < npk; ++k)
        for (int64_t c = 0; c < C; ++c) r[n * C + c] += p[(n * npk + k) * C + c];
    return r;
  };
  auto per_c = [&](const std::vector<double>& p) {
    const std::vector<double> nc = per_nc(p);
    std::vector<double> r(static_cast<size_t>(C), 0.0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) r[c] += nc[n * C + c];
    return r;
  };
  at::Tensor db = need_b ? from_doubles(per_c(s_dz), b->sizes(), b->scalar_type(), x) : x.new_empty({0});
  at::Tensor dscale =
      need_scale ? from_doubles(per_nc(s_dzx), scale->sizes(), scale->scalar_type(), x) : x.new_empty({0});
  at::Tensor dnoise = need_noise ? dn_f.to(noise->scalar_type()) : x.new_empty({0});
  at::Tensor dstrength = x.new_empty({0});
  if (need_strength) {
    std::vector<double> d = per_c(s_dzn);
    if (strength->numel() == 1) d = {std::accumulate(d.begin(), d.end(), 0.0)};  // one strength for all channels
    dstrength = from_doubles(d, strength->sizes(), strength->scalar_type(), x);
  }
  if (order == 1) return {dx, db, dscale, dnoise, dstrength};
  return {dg, dx, db, dscale, dnoise, dstrength};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mba_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const OptTensor& b, const OptTensor& scale, const OptTensor& noise,
    const OptTensor& strength, int64_t act, double alpha, double gain, double clamp, bool need_x, bool need_b,
    bool need_scale, bool need_noise, bool need_strength) {
  auto r = run_backward(1, grad, x, b, scale, noise, strength, nullptr, act, alpha, gain, clamp, false, need_x, need_b,
                        need_scale, need_noise, need_strength);
  return {r[0], r[1], r[2], r[3], r[4]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mba_double_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const OptTensor& b, const OptTensor& scale, const OptTensor& noise,
    const OptTensor& strength, const OptTensor& u_x, const OptTensor& u_b, const OptTensor& u_scale,
    const OptTensor& u_noise, const OptTensor& u_strength, int64_t act, double alpha, double gain, double clamp,
    bool need_grad, bool need_x, bool need_b, bool need_scale, bool need_noise, bool need_strength) {
  TORCH_CHECK_VALUE(x.dim() >= 2, MBA_NAME "x must have shape (N, C, *spatial), got ", x.sizes());
  const OptTensor xo(x);
  check_cotangent(u_x, xo, "u_x", "x");
  check_cotangent(u_b, b, "u_b", "b");
  check_cotangent(u_scale, scale, "u_scale", "scale");
  check_cotangent(u_noise, noise, "u_noise", "noise");
  check_cotangent(u_strength, strength, "u_strength", "noise_strength");
  const int64_t N = x.size(0), C = x.size(1);
  Cotangents ct;
  ct.ux = u_x;
  ct.un = noise.has_value() ? u_noise : std::nullopt;
  ct.us = fp32_values(scale.has_value() ? u_scale : std::nullopt, N * C, 0.0f, ct.store_s, ct.keep_s);
  ct.ub = fp32_values(b.has_value() ? u_b : std::nullopt, C, 0.0f, ct.store_b, ct.keep_b);
  ct.ust = fp32_values(strength.has_value() ? u_strength : std::nullopt, C, 0.0f, ct.store_t, ct.keep_t);
  auto r = run_backward(2, grad, x, b, scale, noise, strength, &ct, act, alpha, gain, clamp, need_grad, need_x, need_b,
                        need_scale, need_noise, need_strength);
  return {r[0], r[1], r[2], r[3], r[4], r[5]};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_FRAGMENT(fastgen, m) {
  m.def("modulated_bias_act(Tensor x, Tensor? b, Tensor? scale, Tensor? noise, Tensor? noise_strength, int act, "
        "float alpha, float gain, float clamp) -> Tensor");
  m.def("modulated_bias_act_backward(Tensor grad, Tensor x, Tensor? b, Tensor? scale, Tensor? noise, "
        "Tensor? noise_strength, int act, float alpha, float gain, float clamp, bool need_x, bool need_b, "
        "bool need_scale, bool need_noise, bool need_strength) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("modulated_bias_act_double_backward(Tensor grad, Tensor x, Tensor? b, Tensor? scale, Tensor? noise, "
        "Tensor? noise_strength, Tensor? u_x, Tensor? u_b, Tensor? u_scale, Tensor? u_noise, Tensor? u_strength, "
        "int act, float alpha, float gain, float clamp, bool need_grad, bool need_x, bool need_b, bool need_scale, "
        "bool need_noise, bool need_strength) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("modulated_bias_act", &fastgen::mba_cpu);
  m.impl("modulated_bias_act_backward", &fastgen::mba_backward_cpu);
  m.impl("modulated_bias_act_double_backward", &fastgen::mba_double_backward_cpu);
}
