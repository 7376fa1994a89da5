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

std::tuple<at::Tensor, at::Tensor> attention_tiled_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                       const at::Tensor& v_in, const std::optional<at::Tensor>& mask,
                                                       double scale) {
  check_input(q_in, "q");
  check_input(k_in, "k");
  check_input(v_in, "v");
  TORCH_CHECK_TYPE(k_in.scalar_type() == q_in.scalar_type() && v_in.scalar_type() == q_in.scalar_type(), kOp,
                   ": q, k, v must share a dtype, got ", q_in.scalar_type(), ", ", k_in.scalar_type(), ", ",
                   v_in.scalar_type());
  const int64_t B = q_in.size(0), H = q_in.size(1), Nq = q_in.size(2), D = q_in.size(3);
  const int64_t Nk = k_in.size(2), Dv = v_in.size(3);
  TORCH_CHECK_VALUE(k_in.size(0) == B && v_in.size(0) == B, kOp, ": batch sizes differ: q ", B, ", k ",
                    k_in.size(0), ", v ", v_in.size(0));
  TORCH_CHECK_VALUE(k_in.size(1) == H && v_in.size(1) == H, kOp, ": head counts differ: q ", H, ", k ",
                    k_in.size(1), ", v ", v_in.size(1));
  TORCH_CHECK_VALUE(k_in.size(3) == D, kOp, ": q and k head dims differ: ", D, " vs ", k_in.size(3));
  TORCH_CHECK_VALUE(v_in.size(2) == Nk, kOp, ": k and v sequence lengths differ: ", Nk, " vs ", v_in.size(2));
  TORCH_CHECK_VALUE(std::isfinite(scale), kOp, ": scale must be finite, got ", scale);
  at::Tensor m;
  if (mask.has_value() && mask->defined()) {
    m = *mask;
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
    m = m.expand({B, H, Nq, Nk});  // stride 0 on the broadcast dims: the kernel reads it in place
  }

  // The kernel reads rows of the head dim as unit-stride; every other stride is free.
  auto unit_last = [](const at::Tensor& t) { return t.size(3) <= 1 || t.stride(3) == 1 ? t : t.contiguous(); };
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

int64_t attention_tiled_isa_level() { return cpu::attention_cpu_level(); }

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_FRAGMENT(fastgen, m) {
  m.def("attention_tiled(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale) -> (Tensor, Tensor)");
  // The best ISA level of the tiled kernel on this CPU (0 baseline, 1 x86-64-v3, 2 x86-64-v4).
  m.def("attention_tiled_isa_level() -> int", &fastgen::attention_tiled_isa_level);
}

TORCH_LIBRARY_IMPL(fastgen, CPU, m) { m.impl("attention_tiled", &fastgen::attention_tiled_cpu); }
