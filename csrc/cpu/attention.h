// fastgen's tiled (flash-attention style) CPU attention, forward and fused backward: raw pointers, no torch headers.
//
//   out = softmax(scale q k^T + mask) v,   lse = log sum_j exp(scale q k^T + mask)   (natural log)
//
// q (B, H, Nq, D), k (B, H, Nk, D), v (B, H, Nk, Dv) in one storage dtype (fp32 / fp16 / bf16), the
// head dim unit-stride, the other dims at any stride. mask: additive, q's dtype, (B, H, Nq, Nk) with
// any strides (0 on broadcast dims), -inf allowed, or null. out (B, H, Nq, Dv) contiguous in q's
// dtype; lse (B, H, Nq) contiguous fp32 -- the layout and convention of ATen's CPU flash kernel, so
// its backward can consume (out, lse). A query row whose keys are all masked gives out = 0 and
// lse = +inf (a backward that recomputes P = exp(s - lse) then gets P = 0: zero gradients).
//
// Work is split into tasks = (b, h, block of attention_block_rows() query rows), task index
// (b H + h) nqb + qb; the caller hands ranges of tasks to threads, each with its own scratch.
#pragma once
#include <cstdint>

#include "fastgen/macros.h"

namespace fastgen {
namespace cpu {

struct AttentionArgs {
  const void* q;
  const void* k;
  const void* v;
  const void* mask;  // null: none
  void* out;
  float* lse;
  int64_t B, H, Nq, Nk, D, Dv;
  int64_t q_stride[3], k_stride[3], v_stride[3];  // element strides of (b, h, n)
  int64_t mask_stride[4];                         // element strides of (b, h, i, j)
  float scale;
};

// ISA levels of the kernel variants: 0 baseline x86-64 (or non-x86), 1 x86-64-v3 (AVX2+FMA),
// 2 x86-64-v4 (AVX-512). attention_cpu_level(): the best one this CPU runs.
int attention_cpu_level();

int64_t attention_block_rows();
int64_t attention_num_tasks(const AttentionArgs& a);
// fp32 scratch each thread needs (64-byte aligned by the caller).
int64_t attention_scratch_floats(const AttentionArgs& a);

// Tasks [begin, end) at ISA level min(level, attention_cpu_level()).
void attention_forward(DType dt, const AttentionArgs& a, int level, int64_t begin, int64_t end, float* scratch);

// ---- fused backward (FlashAttention-2 style): P recomputed from lse, Delta = rowsum(dO * out),
// dV = P^T dO, dS = P (dO V^T - Delta), dQ = scale dS K, dK = scale dS^T q. One task = one (b, h):
// it keeps dQ of the whole head in fp32 scratch and walks the key tiles, finishing dK, dV of each.
// lse: (B, H, Nq) contiguous fp32, ATen's convention or the forward's (+inf or anything finite for
// fully masked rows: their P is 0 either way). grad_q / grad_k / grad_v contiguous, q's dtype.
struct AttentionBackwardArgs {
  const void* q;
  const void* k;
  const void* v;
  const void* out;
  const void* grad_out;
  const void* mask;
  const float* lse;
  void* grad_q;
  void* grad_k;
  void* grad_v;
  int64_t B, H, Nq, Nk, D, Dv;
  int64_t q_stride[3], k_stride[3], v_stride[3], out_stride[3], grad_out_stride[3];
  int64_t mask_stride[4];
  float scale;
};

int64_t attention_backward_scratch_floats(const AttentionBackwardArgs& a);
// Tasks (b H + h) in [begin, end).
void attention_backward(DType dt, const AttentionBackwardArgs& a, int level, int64_t begin, int64_t end,
                        float* scratch);

}  // namespace cpu
}  // namespace fastgen
