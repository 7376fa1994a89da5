// CPU kernels of modulated_bias_act, StyleGAN's synthesis-layer epilogue, and of its fused backward:
// raw pointers, no torch headers.
//
//   z[n, c, p] = x[n, c, p] scale[n, c] + noise[n|0, c|0, p] strength[c] + b[c]
//   y          = clamp(act(z) gain, -clamp, clamp)                   (clamp < 0: none)
//   backward:  dz = g gain act'(z) [|act(z) gain| <= clamp],  dx = dz scale,
//              sums of dz, dz x, dz noise per (n, c) chunk, and dnoise = dz strength summed over
//              the dims noise broadcasts along.
//
// Memory order. x (and y, g, dx) is dense as (N, A, B): NCHW-contiguous (cl = false: A = C
// channels, B = P = prod(spatial) positions; a run of B elements shares scale, strength and b) or
// channels-inner (cl = true: A = P rows of B = C channels; channels_last, or no spatial dims).
// noise is fp32, element (n, a, b) at n ns_n + a ns_a + b ns_b (ns_b is 1 in NCHW; in channels
// last it is 0 for one noise value per row, noise of shape (N|1, 1, ...), or 1). scale (N, C),
// bias (C), strength (C) are fp32 and never null (the torch layer fills ones / zeros).
//
// Work is split into tasks with a fixed tiling that depends on the shape only, so every reduction
// is deterministic for any thread count: NCHW task = (n, block of cb channels, chunk of pk
// positions), t = (n ncb + channel block) npk + chunk; channels-inner task = (n, chunk of pk rows),
// t = n npk + chunk. Per-task sums go to task-owned slots [(n npk + chunk) C + c] (fp64) that the
// caller combines in a fixed order.
#pragma once
#include <cstdint>

#include "activation.h"  // activation codes (kBa*), shared with bias_act
#include "fastgen/macros.h"

namespace fastgen {
namespace cpu {

struct ModBiasActArgs {
  int64_t N = 0, C = 0, P = 0;
  bool cl = false;
  const void* x = nullptr;      // x's dtype
  const void* g = nullptr;      // backward: dL/dy, x's dtype and layout
  const float* noise = nullptr; // null: no noise
  int64_t ns_n = 0, ns_a = 0, ns_b = 0;
  const float* scale = nullptr;     // (N, C)
  const float* bias = nullptr;      // (C)
  const float* strength = nullptr;  // (C)
  int act = 0;
  float alpha = 0.0f, gain = 1.0f, clamp = -1.0f;
  int64_t pk = 1, cb = 1, npk = 1, ncb = 1;  // tiling (cl: cb = C, ncb = 1)
  // forward: y; backward: dx (null: not needed). x's dtype and layout. Plain stores: non-temporal
  // stores measured slower for this op (AMD EPYC, THP and default allocator alike).
  void* out = nullptr;
  // Backward sums, N npk C fp64 slots each (null: not needed; s_dzn is ignored without noise).
  double* s_dz = nullptr;
  double* s_dzx = nullptr;
  double* s_dzn = nullptr;
  // Backward dnoise, fp32 (null: not needed): R replicas of the noise tensor in x's memory order
  // ((Nn, Cn, P) NCHW, (Nn, P, Cn) channels-inner), summed by mba_sum_replicas when R > 1.
  // dn_sum_c: noise has 1 channel (sum over c); dn_sum_n: noise has batch 1 (sum over n).
  // Replicas: r = (dn_sum_n ? n : 0) rc + (NCHW and dn_sum_c ? channel block : 0), rc = ncb for
  // NCHW with dn_sum_c, else 1.
  float* dn = nullptr;
  bool dn_sum_c = false, dn_sum_n = false;
  // Double backward only: the cotangents of the backward's outputs, ux (dx's: x's dtype and layout;
  // null: zero), un (dnoise's: fp32 in noise's layout; null: zero), us (N, C), ub (C), ust (C) (fp32,
  // never null: zeros when absent); out2 = the grad of g (null: not needed), out = the grad of x.
  const void* ux = nullptr;
  const float* un = nullptr;
  const float* us = nullptr;
  const float* ub = nullptr;
  const float* ust = nullptr;
  void* out2 = nullptr;
};

// Forward of tasks [begin, end).
void mba_forward(DType dt, const ModBiasActArgs& a, int64_t begin, int64_t end);
// Backward of tasks [begin, end). scratch: 3 C floats and 3 C doubles (channels-inner sums).
void mba_backward(DType dt, const ModBiasActArgs& a, int64_t begin, int64_t end, float* fscratch, double* dscratch);
// Double backward of tasks [begin, end): the gradients of <backward(g, x, b, scale, noise, strength),
// (ux, ub, us, un, ust)>. With k = gain act'(z) m, k2 = gain act''(z) m,
// W = ux scale + ub + us x + un strength + ust noise, q = g k, e = g k2 W:
//   d g = k W (out2),  d x = q us + e scale (out),  sums: e (s_dz -> d b), q ux + e x (s_dzx -> d scale),
//   q un + e noise (s_dzn -> d strength),  dnoise: q ust + e strength (dn, as the backward's).
void mba_double_backward(DType dt, const ModBiasActArgs& a, int64_t begin, int64_t end, float* fscratch,
                         double* dscratch);
// out[j] = sum over r of part[r M + j] (r in order), j in [begin, end).
void mba_sum_replicas(const float* part, int64_t R, int64_t M, float* out, int64_t begin, int64_t end);

}  // namespace cpu
}  // namespace fastgen
