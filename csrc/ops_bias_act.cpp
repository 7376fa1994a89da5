// The torch layer of bias_act (StyleGAN2's fused bias + activation + gain + clamp): schemas (a
// TORCH_LIBRARY_FRAGMENT of the fastgen library), input checks naming the argument, layouts, and the
// CPU implementations calling csrc/cpu/bias_act.h. Autograd (every order) is registered from Python
// (fastgen/ops/bias_act.py), shared with the Triton ops.
//
//   bias_act(x, b?, dim, act, alpha, gain, clamp) -> y
//       y = clamp(act(x + b) gain, -clamp, clamp) (clamp < 0: none), b broadcast along `dim`.
//   bias_act_grad(g, x, b?, g2?, dim, act, alpha, gain, clamp, order) -> Tensor (x's shape)
//       order 1: g gain act'(x + b) m;  order 2: g g2 gain act''(x + b) m,  m = [|act gain| <= clamp].
// x is processed in its memory order when it is contiguous, or channels_last with dim = 1; any other
// layout is made contiguous. g and g2 (x's dtype) are read in x's layout. Outputs keep that layout.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>

#include "cpu/bias_act.h"
#include "ops_common.h"

namespace fastgen {
namespace {

using OptTensor = std::optional<at::Tensor>;
constexpr int64_t kGrain = 32768;

struct Layout {
  at::Tensor x;
  at::MemoryFormat fmt;
  int64_t C, inner;
};

Layout layout_of(const at::Tensor& x, int64_t dim) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "fastgen.bias_act: x must have at least 1 dimension");
  TORCH_CHECK_VALUE(dim >= 0 && dim < x.dim(), "fastgen.bias_act: dim = ", dim, " is out of range for x of ",
                    x.dim(), " dims");
  to_fg_dtype(x.scalar_type(), "x");
  if (x.dim() == 4 && dim == 1 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast))
    return {x, at::MemoryFormat::ChannelsLast, x.size(1), 1};
  int64_t inner = 1;
  for (int64_t d = dim + 1; d < x.dim(); ++d) inner *= x.size(d);
  return {x.contiguous(), at::MemoryFormat::Contiguous, x.size(dim), inner};
}

at::Tensor like(const at::Tensor& t, const Layout& l, const char* name) {
  TORCH_CHECK_VALUE(t.sizes() == l.x.sizes(), "fastgen.bias_act: ", name, " has shape ", t.sizes(),
                    " but x has shape ", l.x.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == l.x.scalar_type(), "fastgen.bias_act: ", name, " has dtype ",
                   t.scalar_type(), " but x has dtype ", l.x.scalar_type());
  TORCH_CHECK_VALUE(t.device() == l.x.device(), "fastgen.bias_act: ", name, " is on ", t.device(),
                    " but x is on ", l.x.device());
  return t.contiguous(l.fmt);
}

at::Tensor bias_of(const OptTensor& b, const Layout& l) {
  if (!b.has_value()) return {};
  TORCH_CHECK_VALUE(b->dim() == 1 && b->size(0) == l.C, "fastgen.bias_act: b must have shape (", l.C,
                    ",) (x.shape[dim]), got ", b->sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(b->scalar_type()), "fastgen.bias_act: b must be floating, got ",
                   b->scalar_type());
  TORCH_CHECK_VALUE(b->device() == l.x.device(), "fastgen.bias_act: b is on ", b->device(), " but x is on ",
                    l.x.device());
  return b->to(at::kFloat).contiguous();
}

cpu::BiasActArgs make_args(const Layout& l, const at::Tensor& b, int64_t act, double alpha, double gain,
                           double clamp) {
  TORCH_CHECK_VALUE(act >= cpu::kBaLinear && act <= cpu::kBaGelu, "fastgen.bias_act: unknown activation code ",
                    act);
  cpu::BiasActArgs a{};
  a.x = l.x.const_data_ptr();
  a.bias = b.defined() ? b.const_data_ptr<float>() : nullptr;
  a.C = l.C;
  a.inner = l.inner;
  a.act = static_cast<int>(act);
  a.alpha = static_cast<float>(alpha);
  a.gain = static_cast<float>(gain);
  a.clamp = static_cast<float>(clamp);
  return a;
}

at::Tensor bias_act_cpu(const at::Tensor& x, const OptTensor& b, int64_t dim, int64_t act, double alpha, double gain,
                        double clamp) {
  const Layout l = layout_of(x, dim);
  const at::Tensor bf = bias_of(b, l);
  at::Tensor y = at::empty_like(l.x, l.fmt);
  cpu::BiasActArgs a = make_args(l, bf, act, alpha, gain, clamp);
  a.out = y.mutable_data_ptr();
  const DType dt = to_fg_dtype(x.scalar_type(), "x");
  at::parallel_for(0, y.numel(), kGrain, [&](int64_t begin, int64_t end) { cpu::bias_act_forward(dt, a, begin, end); });
  return y;
}

at::Tensor bias_act_grad_cpu(const at::Tensor& g, const at::Tensor& x, const OptTensor& b, const OptTensor& g2,
                             int64_t dim, int64_t act, double alpha, double gain, double clamp, int64_t order) {
  TORCH_CHECK_VALUE(order == 1 || order == 2, "fastgen.bias_act_grad: order must be 1 or 2, got ", order);
  TORCH_CHECK_VALUE(order == 1 || g2.has_value(), "fastgen.bias_act_grad: order 2 needs g2");
  const Layout l = layout_of(x, dim);
  const at::Tensor bf = bias_of(b, l);
  const at::Tensor gc = like(g, l, "g");
  const at::Tensor g2c = order == 2 ? like(*g2, l, "g2") : at::Tensor();
  at::Tensor out = at::empty_like(l.x, l.fmt);
  cpu::BiasActArgs a = make_args(l, bf, act, alpha, gain, clamp);
  a.g = gc.const_data_ptr();
  a.g2 = g2c.defined() ? g2c.const_data_ptr() : nullptr;
  a.out = out.mutable_data_ptr();
  const DType dt = to_fg_dtype(x.scalar_type(), "x");
  const int ord = static_cast<int>(order);
  at::parallel_for(0, out.numel(), kGrain,
                   [&](int64_t begin, int64_t end) { cpu::bias_act_grad(dt, a, ord, begin, end); });
  return out;
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_FRAGMENT(fastgen, m) {
  m.def("bias_act(Tensor x, Tensor? b, int dim, int act, float alpha, float gain, float clamp) -> Tensor");
  m.def("bias_act_grad(Tensor g, Tensor x, Tensor? b, Tensor? g2, int dim, int act, float alpha, float gain, "
        "float clamp, int order) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("bias_act", &fastgen::bias_act_cpu);
  m.impl("bias_act_grad", &fastgen::bias_act_grad_cpu);
}
