// The torch layer of fastgen's tiled CPU attention forward (csrc/cpu/attention.h): schema, input
// checks naming the argument, and the CPU implementation (tasks split across threads with
// at::parallel_for). Autograd and the choice between this kernel and ATen's flash kernel live in
// fastgen/ops/attention.py.
//
// Op:
//   attention_tiled(q, k, v, mask?, scale) -> (out, lse)
//       q (B, H, Nq, D), k (B, H, Nk, D), v (B, H, Nk, Dv), one dtype of float32 / float16 /
//       bfloat16; any strides (a strided head dim is copied). mask: additive, q's dtype,
//       broadcastable to (B, H, Nq, Nk), -inf allowed. out (B, H, Nq, Dv) contiguous in q's dtype;
//       lse (B, H, Nq) fp32, natural log of the row sums of exp(scale q k^T + mask) (+inf for a row
//       whose keys are all masked, whose out is 0; likewise every row when Nk = 0).
//   attention_tiled_backward(grad_out, q, k, v, out, lse, mask?, scale) -> (grad_q, grad_k, grad_v)
//       the fused backward: P recomputed from lse (this op's or ATen's flash forward's), one task
//       per (batch, head). Grads contiguous in q's dtype.
//
// FASTGEN_CPU_ATTN_ISA=v4|v3|baseline caps the kernel variant (tests run every variant on one
// machine); unset: the best one the CPU supports.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>

#include "cpu/attention.h"
#include "ops_common.h"

namespace fastgen {
namespace {

constexpr const char* kOp = "fastgen.attention_tiled";

int requested_level() {
  const char* env = std::getenv("FASTGEN_CPU_ATTN_ISA");
  if (env == nullptr || *env == '\0') return 2;
  if (std::strcmp(env, "v4") == 0) return 2;
  if (std::strcmp(env, "v3") == 0) return 1;
  if (std::strcmp(env, "baseline") == 0) return 0;
  TORCH_CHECK_VALUE(false, kOp, ": FASTGEN_CPU_ATTN_ISA must be v4, v3 or baseline, got '", env, "'");
  return 2;
}

void check_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4, kOp, ": ", name, " must be 4-D (B, H, N, D), got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.device().is_cpu(), kOp, ": ", name, " must be a CPU tensor, got ", t.device());
  to_fg_dtype(t.scalar_type(), name);
}

struct Checked {
  int64_t B, H, Nq, D, Nk, Dv;
  at::Tensor mask;  // expanded to (B, H, Nq, Nk), or undefined
};

Checked check_qkv_mask(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                       const std::optional<at::Tensor>& mask, double scale) {
  check_input(q_in, "q");
  check_input(k_in, "k");
  check_input(v_in, "v");
  TORCH_CHECK_TYPE(k_in.scalar_type() == q_in.scalar_type() && v_in.scalar_type() == q_in.scalar_type(), kOp,
                   ": q, k, v must share a dtype, got ", q_in.scalar_type(), ", ", k_in.scalar_type(), ", ",
                   v_in.scalar_type());
  Checked c{q_in.size(0), q_in.size(1), q_in.size(2), q_in.size(3), k_in.size(2), v_in.size(3), at::Tensor()};
  const int64_t B = c.B, H = c.H, Nq = c.Nq, D = c.D, Nk = c.Nk;
  TORCH_CHECK_VALUE(k_in.size(0) == B && v_in.size(0) == B, kOp, ": batch sizes differ: q ", B, ", k ",
                    k_in.size(0), ", v ", v_in.size(0));
  TORCH_CHECK_VALUE(k_in.size(1) == H && v_in.size(1) == H, kOp, ": head counts differ: q ", H, ", k ",
                    k_in.size(1), ", v ", v_in.size(1));
  TORCH_CHECK_VALUE(k_in.size(3) == D, kOp, ": q and k head dims differ: ", D, " vs ", k_in.size(3));
  TORCH_CHECK_VALUE(v_in.size(2) == Nk, kOp, ": k and v sequence lengths differ: ", Nk, " vs ", v_in.size(2));
  TORCH_CHECK_VALUE(std::isfinite(scale), kOp, ": scale must be finite, got ", scale);
  if (mask.has_value() && mask->defined()) {
    at::Tensor m = *mask;
    TORCH_CHECK_TYPE(m.scalar_type() == q_in.scalar_type(), kOp, ": mask must have q's dtype (", q_in.scalar_type(),
                     ", additive), got ", m.scalar_type());
    TORCH_CHECK_VALUE(m.device().is_cpu(), kOp, ": mask must be a CPU tensor, got ", m.device());
    TORCH_CHECK_VALUE(m.dim() <= 4, kOp, ": mask must have at most 4 dims, got shape ", m.sizes());
    const int64_t full[4] = {B, H, Nq, Nk};
    for (int64_t d = 0; d < m.dim(); ++d) {
      const int64_t s = m.size(m.dim() - 1 - d), want = full[3 - d];
      TORCH_CHECK_VALUE(s == want || s == 1, kOp, ": mask of shape ", m.sizes(), " does not broadcast to (B, H, Nq, Nk) = (",
                        B, ", ", H, ", ", Nq, ", ", Nk, ")");
    }
    c.mask = m.expand({B, H, Nq, Nk});  // stride 0 on the broadcast dims: the kernel reads it in place
  }
  return c;
}

// The kernels read rows of the head dim as unit-stride; every other stride is free.
at::Tensor unit_last(const at::Tensor& t) { return t.size(3) <= 1 || t.stride(3) == 1 ? t : t.contiguous(); }

std::tuple<at::Tensor, at::Tensor> attention_tiled_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                       const at::Tensor& v_in, const std::optional<at::Tensor>& mask,
                                                       double scale) {
  const Checked c = check_qkv_mask(q_in, k_in, v_in, mask, scale);
  const int64_t B = c.B, H = c.H, Nq = c.Nq, D = c.D, Nk = c.Nk, Dv = c.Dv;
  const at::Tensor& m = c.mask;
  const at::Tensor q = unit_last(q_in), k = unit_last(k_in), v = unit_last(v_in);

  at::Tensor out = at::empty({B, H, Nq, Dv}, q.options());
  at::Tensor lse = at::empty({B, H, Nq}, q.options().dtype(at::kFloat));
  if (out.numel() == 0 && lse.numel() == 0) return {out, lse};
  if (Nk == 0) {  // nothing to attend to: as a fully masked row
    out.zero_();
    lse.fill_(std::numeric_limits<float>::infinity());
    return {out, lse};
  }

  cpu::AttentionArgs a{};
  a.q = q.const_data_ptr();
  a.k = k.const_data_ptr();
  a.v = v.const_data_ptr();
  a.mask = m.defined() ? m.const_data_ptr() : nullptr;
  a.out = out.mutable_data_ptr();
  a.lse = lse.mutable_data_ptr<float>();
  a.B = B;
  a.H = H;
  a.Nq = Nq;
  a.Nk = Nk;
  a.D = D;
  a.Dv = Dv;
  for (int d = 0; d < 3; ++d) {
    a.q_stride[d] = q.stride(d);
    a.k_stride[d] = k.stride(d);
    a.v_stride[d] = v.stride(d);
  }
  for (int d = 0; d < 4; ++d) a.mask_stride[d] = m.defined() ? m.stride(d) : 0;
  a.scale = static_cast<float>(scale);

  const DType dt = to_fg_dtype(q.scalar_type(), "q");
  const int level = requested_level();
  const int64_t scratch_floats = cpu::attention_scratch_floats(a);
  at::parallel_for(0, cpu::attention_num_tasks(a), 1, [&](int64_t begin, int64_t end) {
    at::Tensor scratch = at::empty({scratch_floats}, q.options().dtype(at::kFloat));  // 64-byte aligned
    cpu::attention_forward(dt, a, level, begin, end, scratch.mutable_data_ptr<float>());
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_tiled_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in, const std::optional<at::Tensor>& mask, double scale) {
  const Checked c = check_qkv_mask(q_in, k_in, v_in, mask, scale);
  const int64_t B = c.B, H = c.H, Nq = c.Nq, D = c.D, Nk = c.Nk, Dv = c.Dv;
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{grad_out_in, "grad_out"},
                                std::pair<const at::Tensor&, const char*>{out_in, "out"}}) {
    TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef({B, H, Nq, Dv}), kOp, "_backward: ", name, " must have shape (",
                      B, ", ", H, ", ", Nq, ", ", Dv, ") (q's B, H, Nq and v's head dim), got ", t.sizes());
    TORCH_CHECK_TYPE(t.scalar_type() == q_in.scalar_type(), kOp, "_backward: ", name, " must have q's dtype ",
                     q_in.scalar_type(), ", got ", t.scalar_type());
    TORCH_CHECK_VALUE(t.device().is_cpu(), kOp, "_backward: ", name, " must be a CPU tensor");
  }
  TORCH_CHECK_VALUE(lse_in.sizes() == at::IntArrayRef({B, H, Nq}) && lse_in.scalar_type() == at::kFloat &&
                        lse_in.device().is_cpu(),
                    kOp, "_backward: lse must be a float32 CPU tensor of shape (", B, ", ", H, ", ", Nq, "), got ",
                    lse_in.scalar_type(), " ", lse_in.sizes());
  const at::Tensor q = unit_last(q_in), k = unit_last(k_in), v = unit_last(v_in);
  const at::Tensor go = unit_last(grad_out_in), o = unit_last(out_in), lse = lse_in.contiguous();
  at::Tensor gq = at::empty({B, H, Nq, D}, q.options());
  at::Tensor gk = at::empty({B, H, Nk, D}, q.options());
  at::Tensor gv = at::empty({B, H, Nk, Dv}, q.options());
  if (Nq == 0 || Nk == 0) {  // no pairs: every gradient is 0
    gq.zero_();
    gk.zero_();
    gv.zero_();
    return {gq, gk, gv};
  }
  cpu::AttentionBackwardArgs a{};
  a.q = q.const_data_ptr();
  a.k = k.const_data_ptr();
  a.v = v.const_data_ptr();
  a.out = o.const_data_ptr();
  a.grad_out = go.const_data_ptr();
  a.mask = c.mask.defined() ? c.mask.const_data_ptr() : nullptr;
  a.lse = lse.const_data_ptr<float>();
  a.grad_q = gq.mutable_data_ptr();
  a.grad_k = gk.mutable_data_ptr();
  a.grad_v = gv.mutable_data_ptr();
  a.B = B;
  a.H = H;
  a.Nq = Nq;
  a.Nk = Nk;
  a.D = D;
  a.Dv = Dv;
  for (int d = 0; d < 3; ++d) {
    a.q_stride[d] = q.stride(d);
    a.k_stride[d] = k.stride(d);
    a.v_stride[d] = v.stride(d);
    a.out_stride[d] = o.stride(d);
    a.grad_out_stride[d] = go.stride(d);
  }
  for (int d = 0; d < 4; ++d) a.mask_stride[d] = c.mask.defined() ? c.mask.stride(d) : 0;
  a.scale = static_cast<float>(scale);
  const DType dt = to_fg_dtype(q.scalar_type(), "q");
  const int level = requested_level();
  const int64_t scratch_floats = cpu::attention_backward_scratch_floats(a);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    at::Tensor scratch = at::empty({scratch_floats}, q.options().dtype(at::kFloat));
    cpu::attention_backward(dt, a, level, begin, end, scratch.mutable_data_ptr<float>());
  });
  return {gq, gk, gv};
}

int64_t attention_tiled_isa_level() { return cpu::attention_cpu_level(); }

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_FRAGMENT(fastgen, m) {
  m.def("attention_tiled(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale) -> (Tensor, Tensor)");
  m.def(
      "attention_tiled_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? mask, "
      "float scale) -> (Tensor, Tensor, Tensor)");
  // The best ISA level of the tiled kernel on this CPU (0 baseline, 1 x86-64-v3, 2 x86-64-v4).
  m.def("attention_tiled_isa_level() -> int", &fastgen::attention_tiled_isa_level);
}

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("attention_tiled", &fastgen::attention_tiled_cpu);
  m.impl("attention_tiled_backward", &fastgen::attention_tiled_backward_cpu);
}
