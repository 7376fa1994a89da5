// CPU kernels of the diffusion training ops: q_sample's per-sample 2x2 linear map, and the fused
// diffusion loss (forward: per-chunk sums of squared residuals; backward: elementwise).
//
// Same scheme as ddim_step.cpp: loops written for GCC's auto-vectoriser, every public entry point
// compiled for x86-64-v4 / x86-64-v3 / baseline with `target_clones` (run-time dispatch), hot
// loops always_inline so they are compiled into every clone. fp32/fp16/bf16 storage, fp32 math.
//
// Loss accumulation: the residual r = m - (p x0 + q noise) is computed in fp32 (as the reference
// does), r^2 is formed and summed in fp64 (an fp32 square is exact in fp64), in 32 independent
// lanes combined in a fixed tree; chunk sums are combined in fp64 by the caller in chunk order.
// The result depends only on the inputs and on the chunking (fixed by the shape), not on the
// number of threads.
#include "diffusion_loss.h"

#include <algorithm>
#include <cstdint>

#include "fastgen/convert.h"
#include "stream.h"  // FG_CLONES, FG_LAMBDA_INLINE


namespace fastgen {
namespace cpu {
namespace {

// ------------------------------------------------------------------------------- q_sample
template <bool U, bool V>
FG_ALWAYS_INLINE float comb(float a, float u, float b, float v) {
  if constexpr (U && V) return a * u + b * v;
  else if constexpr (U) return a * u;
  else return b * v;
}

template <typename T, bool U, bool V, bool O1, bool O2>
FG_ALWAYS_INLINE void lin2_segment(const T* FG_RESTRICT u, const T* FG_RESTRICT v, T* FG_RESTRICT o1,
                                   T* FG_RESTRICT o2, int64_t len, const Lin2<float> c) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const float uf = U ? to_float(u[i]) : 0.f;
    const float vf = V ? to_float(v[i]) : 0.f;
    if (O1) o1[i] = from_float<T>(comb<U, V>(c.a, uf, c.b, vf));
    if (O2) o2[i] = from_float<T>(comb<U, V>(c.c, uf, c.d, vf));
  }
}

template <typename T, bool U, bool V, bool O1, bool O2>
FG_ALWAYS_INLINE void lin2_range(const Lin2Args& a, int64_t begin, int64_t end) {
  const T* u = static_cast<const T*>(a.u);
  const T* v = static_cast<const T*>(a.v);
  T* o1 = static_cast<T*>(a.out1);
  T* o2 = static_cast<T*>(a.out2);
  for_each_run(begin, end, a.per_sample, a.per_sample_coeffs, [&](int64_t o, int64_t len, int64_t s) FG_LAMBDA_INLINE {
    lin2_segment<T, U, V, O1, O2>(U ? u + o : nullptr, V ? v + o : nullptr, O1 ? o1 + o : nullptr,
                                  O2 ? o2 + o : nullptr, len, a.coeffs[s]);
  });
}

template <typename T, bool U, bool V>
FG_ALWAYS_INLINE void lin2_outs(const Lin2Args& a, int64_t b, int64_t e) {
  if (a.out1 && a.out2) lin2_range<T, U, V, true, true>(a, b, e);
  else if (a.out1) lin2_range<T, U, V, true, false>(a, b, e);
  else if (a.out2) lin2_range<T, U, V, false, true>(a, b, e);
}

template <typename T>
FG_ALWAYS_INLINE void lin2_impl(const Lin2Args& a, int64_t b, int64_t e) {
  if (a.u && a.v) lin2_outs<T, true, true>(a, b, e);
  else if (a.u) lin2_outs<T, true, false>(a, b, e);
  else if (a.v) lin2_outs<T, false, true>(a, b, e);
}

// ------------------------------------------------------------------------------- loss
// r = m - target with target = p x0 + q noise (only the terms that are present), as the reference.
template <typename T, bool X0, bool N>
FG_ALWAYS_INLINE float residual(const T* FG_RESTRICT m, const T* FG_RESTRICT x, const T* FG_RESTRICT n, int64_t i,
                                float p, float q) {
  const float mv = to_float(m[i]);
  if constexpr (X0 && N) return mv - (p * to_float(x[i]) + q * to_float(n[i]));
  else if constexpr (X0) return mv - p * to_float(x[i]);
  else if constexpr (N) return mv - q * to_float(n[i]);
  else return mv;
}

constexpr int kLanes = 32;  // independent fp64 accumulators (4 AVX-512 / 8 AVX2 registers)

template <typename T, bool X0, bool N>
FG_ALWAYS_INLINE double sq_sum(const T* FG_RESTRICT m, const T* FG_RESTRICT x, const T* FG_RESTRICT n, int64_t len,
                               float p, float q) {
  double acc[kLanes];
  for (int j = 0; j < kLanes; ++j) acc[j] = 0.0;
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) {
      const double r = residual<T, X0, N>(m, x, n, i + j, p, q);
      acc[j] += r * r;
    }
  }
  for (int j = 0; i < len; ++i, ++j) {
    const double r = residual<T, X0, N>(m, x, n, i, p, q);
    acc[j] += r * r;
  }
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  return acc[0];
}

template <typename T>
FG_ALWAYS_INLINE void partials_impl(const LossForwardArgs& a, int64_t cb, int64_t ce, double* out) {
  const T* m = static_cast<const T*>(a.m);
  const T* x = static_cast<const T*>(a.x0);
  const T* n = static_cast<const T*>(a.noise);
  for (int64_t c = cb; c < ce; ++c) {
    const int64_t s = c / a.chunks_per_sample;
    const int64_t j = c - s * a.chunks_per_sample;
    const int64_t o = s * a.per_sample + j * a.chunk;
    const int64_t len = std::min(a.chunk, a.per_sample - j * a.chunk);
    const float p = a.pq[2 * s], q = a.pq[2 * s + 1];
    double r;
    if (x && n) r = sq_sum<T, true, true>(m + o, x + o, n + o, len, p, q);
    else if (x) r = sq_sum<T, true, false>(m + o, x + o, nullptr, len, p, q);
    else if (n) r = sq_sum<T, false, true>(m + o, nullptr, n + o, len, p, q);
    else r = sq_sum<T, false, false>(m + o, nullptr, nullptr, len, p, q);
    out[c] = r;
  }
}

// The common case (only d model_output): one fused loop.
template <typename T, bool X0, bool N>
FG_ALWAYS_INLINE void bwd_dm_segment(const T* FG_RESTRICT m, const T* FG_RESTRICT x, const T* FG_RESTRICT n,
                                     T* FG_RESTRICT dm, int64_t len, float p, float q, float k) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) dm[i] = from_float<T>(k * residual<T, X0, N>(m, x, n, i, p, q));
}

template <typename T, bool X0, bool N>
FG_ALWAYS_INLINE void bwd_residual(const T* FG_RESTRICT m, const T* FG_RESTRICT x, const T* FG_RESTRICT n,
                                   float* FG_RESTRICT r, int64_t len, float p, float q) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) r[i] = residual<T, X0, N>(m, x, n, i, p, q);
}

template <typename T>
FG_ALWAYS_INLINE void scale_store(T* FG_RESTRICT dst, const float* FG_RESTRICT r, int64_t len, float k) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) dst[i] = from_float<T>(k * r[i]);
}

// Any subset of (dm, dx0, dnoise): residuals into an L1-resident buffer, then one store loop per
// requested output (x0 / noise gradients are rare: x0 from a jointly trained encoder).
template <typename T, bool X0, bool N>
FG_ALWAYS_INLINE void bwd_general_segment(const T* m, const T* x, const T* n, T* dm, T* dx, T* dn, int64_t len,
                                          float p, float q, const float* kkk) {
  constexpr int64_t K = 1024;
  alignas(64) float buf[K];
  for (int64_t o = 0; o < len; o += K) {
    const int64_t l = std::min(K, len - o);
    bwd_residual<T, X0, N>(m + o, X0 ? x + o : nullptr, N ? n + o : nullptr, buf, l, p, q);
    if (dm) scale_store<T>(dm + o, buf, l, kkk[0]);
    if (dx) scale_store<T>(dx + o, buf, l, kkk[1]);
    if (dn) scale_store<T>(dn + o, buf, l, kkk[2]);
  }
}

template <typename T, bool X0, bool N>
FG_ALWAYS_INLINE void bwd_run(const LossBackwardArgs& a, int64_t o, int64_t len, int64_t s) {
  const T* m = static_cast<const T*>(a.m) + o;
  const T* x = X0 ? static_cast<const T*>(a.x0) + o : nullptr;
  const T* n = N ? static_cast<const T*>(a.noise) + o : nullptr;
  T* dm = a.dm ? static_cast<T*>(a.dm) + o : nullptr;
  T* dx = a.dx0 ? static_cast<T*>(a.dx0) + o : nullptr;
  T* dn = a.dnoise ? static_cast<T*>(a.dnoise) + o : nullptr;
  const float p = a.pq[2 * s], q = a.pq[2 * s + 1];
  const float* kkk = a.kkk + 3 * s;
  if (dm && !dx && !dn) bwd_dm_segment<T, X0, N>(m, x, n, dm, len, p, q, kkk[0]);
  else bwd_general_segment<T, X0, N>(m, x, n, dm, dx, dn, len, p, q, kkk);
}

template <typename T>
FG_ALWAYS_INLINE void backward_impl(const LossBackwardArgs& a, int64_t begin, int64_t end) {
  const bool hx = a.x0 != nullptr, hn = a.noise != nullptr;
  for_each_run(begin, end, a.per_sample, true, [&](int64_t o, int64_t len, int64_t s) FG_LAMBDA_INLINE {
    if (hx && hn) bwd_run<T, true, true>(a, o, len, s);
    else if (hx) bwd_run<T, true, false>(a, o, len, s);
    else if (hn) bwd_run<T, false, true>(a, o, len, s);
    else bwd_run<T, false, false>(a, o, len, s);
  });
}

FG_CLONES void lin2_f32(const Lin2Args& a, int64_t b, int64_t e) { lin2_impl<float>(a, b, e); }
FG_CLONES void lin2_f16(const Lin2Args& a, int64_t b, int64_t e) { lin2_impl<f16_t>(a, b, e); }
FG_CLONES void lin2_bf16(const Lin2Args& a, int64_t b, int64_t e) { lin2_impl<bf16_t>(a, b, e); }
FG_CLONES void partials_f32(const LossForwardArgs& a, int64_t b, int64_t e, double* o) { partials_impl<float>(a, b, e, o); }
FG_CLONES void partials_f16(const LossForwardArgs& a, int64_t b, int64_t e, double* o) { partials_impl<f16_t>(a, b, e, o); }
FG_CLONES void partials_bf16(const LossForwardArgs& a, int64_t b, int64_t e, double* o) { partials_impl<bf16_t>(a, b, e, o); }
FG_CLONES void loss_backward_f32(const LossBackwardArgs& a, int64_t b, int64_t e) { backward_impl<float>(a, b, e); }
FG_CLONES void loss_backward_f16(const LossBackwardArgs& a, int64_t b, int64_t e) { backward_impl<f16_t>(a, b, e); }
FG_CLONES void loss_backward_bf16(const LossBackwardArgs& a, int64_t b, int64_t e) { backward_impl<bf16_t>(a, b, e); }

}  // namespace

void lin2(DType dtype, const Lin2Args& a, int64_t begin, int64_t end) {
  switch (dtype) {
    case DType::Float32: lin2_f32(a, begin, end); break;
    case DType::Float16: lin2_f16(a, begin, end); break;
    case DType::BFloat16: lin2_bf16(a, begin, end); break;
    default: break;  // the torch layer rejects other dtypes before calling
  }
}

void loss_partials(DType dtype, const LossForwardArgs& a, int64_t chunk_begin, int64_t chunk_end, double* partials) {
  switch (dtype) {
    case DType::Float32: partials_f32(a, chunk_begin, chunk_end, partials); break;
    case DType::Float16: partials_f16(a, chunk_begin, chunk_end, partials); break;
    case DType::BFloat16: partials_bf16(a, chunk_begin, chunk_end, partials); break;
    default: break;
  }
}

void loss_backward(DType dtype, const LossBackwardArgs& a, int64_t begin, int64_t end) {
  switch (dtype) {
    case DType::Float32: loss_backward_f32(a, begin, end); break;
    case DType::Float16: loss_backward_f16(a, begin, end); break;
    case DType::BFloat16: loss_backward_bf16(a, begin, end); break;
    default: break;
  }
}

}  // namespace cpu
}  // namespace fastgen
