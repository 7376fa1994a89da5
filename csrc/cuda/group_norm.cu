// CUDA kernels of the fused group_norm (+ per-(n, c) scale/shift + SiLU/GELU), forward and
// backward (see group_norm_cuda.h). fp32 math for every storage type, 64-bit offsets.
//
// Both layouts are reduced the same way: first per-(n, c) partials over chunks of the channel's
// elements, then one block per (n, group) merges them in a fixed order (deterministic), then an
// elementwise pass applies per-(n, c) coefficients:
//   NCHW           a (n, c) row is S contiguous elements: one warp per (row, chunk of the row),
//                  16-byte vector loads, warp-shuffle reduction. Long rows of few samples are
//                  split into chunks so that small-N x small-G shapes still fill the GPU.
//   channels last  one block per (n, chunk of pixels); each thread owns a run of channels
//                  (V consecutive channels per 16-byte load: a warp reads 512 contiguous bytes
//                  per pixel) and walks the chunk's pixels.
// Forward statistics are Welford / Chan merges in fp32 (count, mean, M2): no E[x^2] - E[x]^2
// cancellation. y = act((x - mean) a + c'), a = rstd w (1 + s), c' = b (1 + s) + t.
// Backward: per-(n, c) S1 = sum gz, S2 = sum gz (x - mean) (z recomputed, gz = gy act'(z)), merged
// per group into the fp32 (N, C) sums S1 and S2 = rstd sum gz (x - mean) = sum gz xhat, and the gx
// coefficients:
//   gx = rstd (k gz - m1 - xhat m2) = k1 gz + k2 (x - mean) + k3,  k = w (1 + s),
//   m1 = sum_c k S1 / M, m2 = sum_c k S2 / M (M = (C / G) S), k1 = rstd k, k2 = -rstd^2 m2, k3 = -rstd m1.
// SiLU / GELU use CUDA's accurate expf / normcdff (no fast-math intrinsics).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <initializer_list>

#include "group_norm_cuda.h"

namespace fastgen {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // grid-stride beyond that
constexpr int kChunkAlign = 8;                    // row chunks are multiples of every vector width
enum : int { kActNone = 0, kActSilu = 1, kActGelu = 2 };  // as fastgen/vmath.h and the torch layer

// ------------------------------------------------------------------------------ storage types
// IO<T>: V elements per 16-byte vector (load/store converting to/from fp32) and scalar ld/st.
template <typename T> struct IO;

template <> struct IO<float> {
  static constexpr int V = 4;
  static __device__ __forceinline__ void load(const float* p, float* v) {
    const float4 q = __ldg(reinterpret_cast<const float4*>(p));
    v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
  }
  static __device__ __forceinline__ void store(float* p, const float* v) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  }
  static __device__ __forceinline__ float ld(const float* p) { return __ldg(p); }
  static __device__ __forceinline__ void st(float* p, float v) { *p = v; }
};

struct HalfBits {
  static __device__ __forceinline__ float f(unsigned short b) { return __half2float(__ushort_as_half(b)); }
  static __device__ __forceinline__ unsigned short b(float v) { return __half_as_ushort(__float2half_rn(v)); }
};
struct BF16Bits {
  static __device__ __forceinline__ float f(unsigned short b) { return __uint_as_float(uint32_t(b) << 16); }
  static __device__ __forceinline__ unsigned short b(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
};

// 16-bit types move as raw bits: a uint4 holds eight elements.
template <typename T, typename Bits> struct IO16 {
  static constexpr int V = 8;
  static __device__ __forceinline__ void load(const T* p, float* v) {
    const uint4 q = __ldg(reinterpret_cast<const uint4*>(p));
    const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      v[2 * k] = Bits::f(static_cast<unsigned short>(w[k] & 0xffffu));
      v[2 * k + 1] = Bits::f(static_cast<unsigned short>(w[k] >> 16));
    }
  }
  static __device__ __forceinline__ void store(T* p, const float* v) {
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) w[k] = uint32_t(Bits::b(v[2 * k])) | (uint32_t(Bits::b(v[2 * k + 1])) << 16);
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  }
  static __device__ __forceinline__ float ld(const T* p) {
    return Bits::f(__ldg(reinterpret_cast<const unsigned short*>(p)));
  }
  static __device__ __forceinline__ void st(T* p, float v) { *reinterpret_cast<unsigned short*>(p) = Bits::b(v); }
};
template <> struct IO<__half> : IO16<__half, HalfBits> {};
template <> struct IO<__nv_bfloat16> : IO16<__nv_bfloat16, BF16Bits> {};

// V (vector) or 1 (scalar) elements at p.
template <typename T, bool VEC>
__device__ __forceinline__ void load_n(const T* p, float* v) {
  if constexpr (VEC) IO<T>::load(p, v);
  else v[0] = IO<T>::ld(p);
}
template <typename T, bool VEC>
__device__ __forceinline__ void store_n(T* p, const float* v) {
  if constexpr (VEC) IO<T>::store(p, v);
  else IO<T>::st(p, v[0]);
}

// ------------------------------------------------------------------------------ activations
template <int ACT>
__device__ __forceinline__ float act_fwd(float z) {
  if constexpr (ACT == kActSilu) return z / (1.0f + expf(-z));
  else if constexpr (ACT == kActGelu) return z * normcdff(z);
  else return z;
}

template <int ACT>
__device__ __forceinline__ float act_grad(float z) {
  if constexpr (ACT == kActSilu) {
    const float s = 1.0f / (1.0f + expf(-z));
    return s * (1.0f + z * (1.0f - s));
  } else if constexpr (ACT == kActGelu) {
    return normcdff(z) + z * 0.398942280f * expf(-0.5f * z * z);  // Phi(z) + z phi(z)
  } else {
    return 1.0f;
  }
}

// ------------------------------------------------------------------------------ reductions
struct Welford {
  float n, mean, m2;
};

// Chan's merge of (nb, mb, m2b) into w.
__device__ __forceinline__ void merge(Welford& w, float nb, float mb, float m2b) {
  if (nb == 0.0f) return;
  const float n = w.n + nb;
  const float f = nb / n;
  const float d = mb - w.mean;
  w.mean += d * f;
  w.m2 += m2b + d * d * w.n * f;
  w.n = n;
}

__device__ __forceinline__ Welford warp_merge(Welford w) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float n = __shfl_xor_sync(0xffffffffu, w.n, o);
    const float m = __shfl_xor_sync(0xffffffffu, w.mean, o);
    const float q = __shfl_xor_sync(0xffffffffu, w.m2, o);
    merge(w, n, m, q);
  }
  return w;
}

__device__ __forceinline__ float2 warp_sum(float2 v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    v.x += __shfl_xor_sync(0xffffffffu, v.x, o);
    v.y += __shfl_xor_sync(0xffffffffu, v.y, o);
  }
  return v;
}

// Block-wide (kThreads) merges; the result is valid in thread 0.
__device__ __forceinline__ Welford block_merge(Welford w) {
  __shared__ Welford part[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  w = warp_merge(w);
  if (lane == 0) part[warp] = w;
  __syncthreads();
  if (warp == 0) {
    w = lane < kWarps ? part[lane] : Welford{0.0f, 0.0f, 0.0f};
    w = warp_merge(w);
  }
  return w;
}

__device__ __forceinline__ float2 block_sum(float2 v) {
  __shared__ float2 part[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? part[lane] : make_float2(0.0f, 0.0f);
    v = warp_sum(v);
  }
  return v;
}

// ------------------------------------------------------------------------------ indexing
// Division by a fixed 32-bit divisor d >= 1 (round-up multiply-high): q = (umulhi(n, m) + n) >> s
// with s = ceil(log2 d), m = floor(2^32 (2^s - d) / d) + 1; exact for every 32-bit n (the sum is
// taken in 64 bits).
struct FastDiv {
  uint32_t m, s;
};

FastDiv make_fastdiv(uint64_t d) {
  uint32_t s = 0;
  while ((uint64_t(1) << s) < d) ++s;
  const uint64_t m = ((uint64_t(1) << 32) * ((uint64_t(1) << s) - d)) / d + 1;
  return FastDiv{static_cast<uint32_t>(m), s};
}

__device__ __forceinline__ uint32_t fdiv(uint32_t n, FastDiv f) {
  return static_cast<uint32_t>((uint64_t(__umulhi(n, f.m)) + n) >> f.s);
}

// Per-(n, c) coefficient row of flat element i (NCHW: the row i / S; channels last: n C + i % C).
struct Index {
  int64_t S, C;
  FastDiv dS, dC;
  bool small;  // every flat index fits 32 bits: use FastDiv
};

template <bool CL>
__device__ __forceinline__ int64_t coef_index(int64_t i, const Index& ix) {
  if constexpr (!CL) {
    return ix.small ? int64_t(fdiv(static_cast<uint32_t>(i), ix.dS)) : i / ix.S;
  } else {
    int64_t pix, n;
    if (ix.small) {
      pix = fdiv(static_cast<uint32_t>(i), ix.dC);
      n = fdiv(static_cast<uint32_t>(pix), ix.dS);
    } else {
      pix = i / ix.C;
      n = pix / ix.S;
    }
    return n * ix.C + (i - pix * ix.C);
  }
}

// The forward's per-channel coefficients from the group statistics: a = rstd w (1 + s),
// c' = b (1 + s) + t.
__device__ __forceinline__ float2 channel_coef(const GroupNormCudaArgs& a, int64_t n, int64_t c, float rstd) {
  const float w = a.weight ? __ldg(a.weight + c) : 1.0f;
  const float b = a.bias ? __ldg(a.bias + c) : 0.0f;
  const float sp = a.scale ? 1.0f + __ldg(a.scale + n * a.C + c) : 1.0f;
  const float t = a.shift ? __ldg(a.shift + n * a.C + c) : 0.0f;
  return make_float2(rstd * w * sp, b * sp + t);
}

// ------------------------------------------------------------------------------ forward
// Per-(n, c) partial (mean, M2) of one chunk of a row: one warp per (row, chunk).
template <typename T, bool VEC>
__global__ void __launch_bounds__(kThreads) fwd_stats_rows(const T* __restrict__ x, int64_t rows, int64_t C,
                                                           int64_t S, int64_t chunk, int64_t nchunks,
                                                           float2* __restrict__ part) {
  const int64_t item = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (item >= rows * nchunks) return;  // whole warps leave together
  const int64_t row = item / nchunks, j = item - row * nchunks;
  const int64_t b = j * chunk, e = b + chunk < S ? b + chunk : S;
  const T* xr = x + row * S;
  Welford w{0.0f, 0.0f, 0.0f};
  if constexpr (VEC) {
    constexpr int V = IO<T>::V;
    for (int64_t i = b + lane * V; i < e; i += 32 * V) {
      float v[V];
      IO<T>::load(xr + i, v);
      float s = 0.0f;
#pragma unroll
      for (int k = 0; k < V; ++k) s += v[k];
      const float mb = s * (1.0f / V);
      float q = 0.0f;
#pragma unroll
      for (int k = 0; k < V; ++k) q += (v[k] - mb) * (v[k] - mb);
      merge(w, float(V), mb, q);
    }
  } else {
    for (int64_t i = b + lane; i < e; i += 32) {
      const float v = IO<T>::ld(xr + i);
      w.n += 1.0f;
      const float d = v - w.mean;
      w.mean += d / w.n;
      w.m2 += d * (v - w.mean);
    }
  }
  w = warp_merge(w);
  if (lane == 0) {
    const int64_t n = row / C, c = row - n * C;
    part[(n * nchunks + j) * C + c] = make_float2(w.mean, w.m2);
  }
}

// Channels last: per-(n, c) partial (mean, M2) over one chunk of pixels; one block per (n, chunk),
// each thread owns V (or 1) consecutive channels at a time.
template <typename T, bool VEC>
__global__ void __launch_bounds__(kThreads) fwd_stats_cl(const T* __restrict__ x, int64_t C, int64_t S, int64_t chunk,
                                                         int64_t nchunks, float2* __restrict__ part) {
  constexpr int V = VEC ? IO<T>::V : 1;
  const int64_t n = blockIdx.x / nchunks, j = blockIdx.x - n * nchunks;
  const int64_t p0 = j * chunk, p1 = p0 + chunk < S ? p0 + chunk : S;
  const int64_t slots = C / V;
  for (int64_t sl = threadIdx.x; sl < slots; sl += blockDim.x) {
    float mean[V], m2[V];
#pragma unroll
    for (int k = 0; k < V; ++k) mean[k] = m2[k] = 0.0f;
    const T* xp = x + (n * S + p0) * C + sl * V;
    float cnt = 0.0f;
#pragma unroll 4
    for (int64_t p = p0; p < p1; ++p, xp += C) {
      float v[V];
      load_n<T, VEC>(xp, v);
      cnt += 1.0f;
      const float r = 1.0f / cnt;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float d = v[k] - mean[k];
        mean[k] += d * r;
        m2[k] += d * (v[k] - mean[k]);
      }
    }
    float2* out = part + (n * nchunks + j) * C + sl * V;
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = make_float2(mean[k], m2[k]);
  }
}

// One block per (n, group): merges the group's partials (chunk-major, channel-minor: a fixed order),
// writes mean / rstd and the per-channel coefficients (a, c', mean).
__global__ void __launch_bounds__(kThreads) fwd_merge(const float2* __restrict__ part, const GroupNormCudaArgs a,
                                                      int64_t chunk, int64_t nchunks, float4* __restrict__ coef) {
  __shared__ float stats[2];
  const int64_t task = blockIdx.x, n = task / a.G, g = task - n * a.G, cg = a.C / a.G;
  Welford w{0.0f, 0.0f, 0.0f};
  const int64_t items = nchunks * cg;
  for (int64_t i = threadIdx.x; i < items; i += kThreads) {
    const int64_t j = i / cg, cl = i - j * cg;
    const int64_t e = (j + 1) * chunk < a.S ? (j + 1) * chunk : a.S;
    const float2 p = part[(n * nchunks + j) * a.C + g * cg + cl];
    merge(w, float(e - j * chunk), p.x, p.y);
  }
  w = block_merge(w);
  if (threadIdx.x == 0) {
    float var = w.m2 / w.n;
    var = var < 0.0f ? 0.0f : var;  // NaN stays NaN
    const float rstd = 1.0f / sqrtf(var + a.eps);
    a.mean[task] = w.mean;
    a.rstd[task] = rstd;
    stats[0] = w.mean;
    stats[1] = rstd;
  }
  __syncthreads();
  const float mean = stats[0], rstd = stats[1];
  for (int64_t cl = threadIdx.x; cl < cg; cl += kThreads) {
    const int64_t c = g * cg + cl;
    const float2 k = channel_coef(a, n, c, rstd);
    coef[n * a.C + c] = make_float4(k.x, k.y, mean, 0.0f);
  }
}

// y = act((x - mean) a + c') elementwise (grid-stride over vectors or elements).
template <typename T, int ACT, bool VEC, bool CL>
__global__ void __launch_bounds__(kThreads) fwd_apply(const T* __restrict__ x, T* __restrict__ y,
                                                      const float4* __restrict__ coef, int64_t numel, const Index ix) {
  constexpr int V = VEC ? IO<T>::V : 1;
  const int64_t nv = numel / V, stride = int64_t(gridDim.x) * kThreads;
  for (int64_t q = int64_t(blockIdx.x) * kThreads + threadIdx.x; q < nv; q += stride) {
    const int64_t i = q * V;
    const int64_t ci = coef_index<CL>(i, ix);
    float v[V];
    load_n<T, VEC>(x + i, v);
    if constexpr (!CL) {  // V elements of one row
      const float4 k = __ldg(coef + ci);
#pragma unroll
      for (int t = 0; t < V; ++t) v[t] = act_fwd<ACT>((v[t] - k.z) * k.x + k.y);
    } else {  // V consecutive channels of one pixel
#pragma unroll
      for (int t = 0; t < V; ++t) {
        const float4 k = __ldg(coef + ci + t);
        v[t] = act_fwd<ACT>((v[t] - k.z) * k.x + k.y);
      }
    }
    store_n<T, VEC>(y + i, v);
  }
}

// ------------------------------------------------------------------------------ backward
struct ZCoef {  // what recomputing z and gz needs for one channel
  float a, c, mean;
};

__device__ __forceinline__ ZCoef z_coef(const GroupNormCudaArgs& a, int64_t n, int64_t c) {
  const int64_t g = c / (a.C / a.G);
  const float mean = __ldg(a.mean + n * a.G + g), rstd = __ldg(a.rstd + n * a.G + g);
  const float2 k = channel_coef(a, n, c, rstd);
  return ZCoef{k.x, k.y, mean};
}

template <int ACT>
__device__ __forceinline__ void accumulate(float xv, float gyv, const ZCoef& k, float& s1, float& s2) {
  const float xc = xv - k.mean;
  float gz = gyv;
  if constexpr (ACT != kActNone) gz *= act_grad<ACT>(xc * k.a + k.c);
  s1 += gz;
  s2 += gz * xc;
}

// Per-(n, c) partial (sum gz, sum gz (x - mean)) of one chunk of a row: one warp per (row, chunk).
template <typename T, int ACT, bool VEC>
__global__ void __launch_bounds__(kThreads) bwd_sums_rows(const GroupNormCudaArgs a, int64_t chunk, int64_t nchunks,
                                                          float2* __restrict__ part) {
  const int64_t item = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  const int64_t rows = a.N * a.C, S = a.S;
  if (item >= rows * nchunks) return;
  const int64_t row = item / nchunks, j = item - row * nchunks;
  const int64_t n = row / a.C, c = row - n * a.C;
  const ZCoef k = z_coef(a, n, c);
  const int64_t b = j * chunk, e = b + chunk < S ? b + chunk : S;
  const T* xr = static_cast<const T*>(a.x) + row * S;
  const T* gr = static_cast<const T*>(a.gy) + row * S;
  float s1 = 0.0f, s2 = 0.0f;
  constexpr int V = VEC ? IO<T>::V : 1;
  for (int64_t i = b + lane * V; i < e; i += 32 * V) {
    float xv[V], gv[V];
    load_n<T, VEC>(xr + i, xv);
    load_n<T, VEC>(gr + i, gv);
#pragma unroll
    for (int t = 0; t < V; ++t) accumulate<ACT>(xv[t], gv[t], k, s1, s2);
  }
  const float2 s = warp_sum(make_float2(s1, s2));
  if (lane == 0) part[(n * nchunks + j) * a.C + c] = s;
}

// Channels last: the same partials over one chunk of pixels; one block per (n, chunk).
template <typename T, int ACT, bool VEC>
__global__ void __launch_bounds__(kThreads) bwd_sums_cl(const GroupNormCudaArgs a, int64_t chunk, int64_t nchunks,
                                                        float2* __restrict__ part) {
  constexpr int V = VEC ? IO<T>::V : 1;
  const int64_t C = a.C, S = a.S;
  const int64_t n = blockIdx.x / nchunks, j = blockIdx.x - n * nchunks;
  const int64_t p0 = j * chunk, p1 = p0 + chunk < S ? p0 + chunk : S;
  const int64_t slots = C / V;
  for (int64_t sl = threadIdx.x; sl < slots; sl += blockDim.x) {
    ZCoef k[V];
    float s1[V], s2[V];
#pragma unroll
    for (int t = 0; t < V; ++t) {
      k[t] = z_coef(a, n, sl * V + t);
      s1[t] = s2[t] = 0.0f;
    }
    const int64_t off = (n * S + p0) * C + sl * V;
    const T* xp = static_cast<const T*>(a.x) + off;
    const T* gp = static_cast<const T*>(a.gy) + off;
#pragma unroll 2
    for (int64_t p = p0; p < p1; ++p, xp += C, gp += C) {
      float xv[V], gv[V];
      load_n<T, VEC>(xp, xv);
      load_n<T, VEC>(gp, gv);
#pragma unroll
      for (int t = 0; t < V; ++t) accumulate<ACT>(xv[t], gv[t], k[t], s1[t], s2[t]);
    }
    float2* out = part + (n * nchunks + j) * C + sl * V;
#pragma unroll
    for (int t = 0; t < V; ++t) out[t] = make_float2(s1[t], s2[t]);
  }
}

// One block per (n, group): S1, S2 (= rstd sum gz (x - mean)) per channel, summed over chunks in
// order; the group means m1 = sum_c k S1 / M, m2 = sum_c k S2 / M; the gx coefficients
// kco = (k1, k2, k3, mean) and c' (zc) per channel.
__global__ void __launch_bounds__(kThreads) bwd_merge(const float2* __restrict__ part, const GroupNormCudaArgs a,
                                                      int64_t nchunks, float* __restrict__ s1o, float* __restrict__ s2o,
                                                      float4* __restrict__ kco, float* __restrict__ zc) {
  __shared__ float ms[2];
  const int64_t task = blockIdx.x, n = task / a.G, g = task - n * a.G, cg = a.C / a.G;
  const float mean = a.mean[task], rstd = a.rstd[task];
  float t1 = 0.0f, t2 = 0.0f;
  for (int64_t cl = threadIdx.x; cl < cg; cl += kThreads) {
    const int64_t c = g * cg + cl;
    float u1 = 0.0f, u2 = 0.0f;
    for (int64_t j = 0; j < nchunks; ++j) {
      const float2 p = part[(n * nchunks + j) * a.C + c];
      u1 += p.x;
      u2 += p.y;
    }
    u2 *= rstd;
    s1o[n * a.C + c] = u1;
    s2o[n * a.C + c] = u2;
    const float k = channel_coef(a, n, c, 1.0f).x;  // w (1 + s)
    t1 += k * u1;
    t2 += k * u2;
  }
  const float2 t = block_sum(make_float2(t1, t2));
  if (threadIdx.x == 0) {
    const float inv_m = 1.0f / float(cg * a.S);
    ms[0] = t.x * inv_m;
    ms[1] = t.y * inv_m;
  }
  __syncthreads();
  const float m1 = ms[0], m2 = ms[1];
  for (int64_t cl = threadIdx.x; cl < cg; cl += kThreads) {
    const int64_t c = g * cg + cl;
    const float2 k = channel_coef(a, n, c, rstd);  // (rstd w (1 + s), c')
    kco[n * a.C + c] = make_float4(k.x, -rstd * rstd * m2, -rstd * m1, mean);
    zc[n * a.C + c] = k.y;
  }
}

// gx = k1 gz + k2 (x - mean) + k3 elementwise (z recomputed for gz when there is an activation).
template <typename T, int ACT, bool VEC, bool CL>
__global__ void __launch_bounds__(kThreads) bwd_apply(const T* __restrict__ x, const T* __restrict__ gy,
                                                      T* __restrict__ gx, const float4* __restrict__ kco,
                                                      const float* __restrict__ zc, int64_t numel, const Index ix) {
  constexpr int V = VEC ? IO<T>::V : 1;
  const int64_t nv = numel / V, stride = int64_t(gridDim.x) * kThreads;
  for (int64_t q = int64_t(blockIdx.x) * kThreads + threadIdx.x; q < nv; q += stride) {
    const int64_t i = q * V;
    const int64_t ci = coef_index<CL>(i, ix);
    float xv[V], gv[V];
    load_n<T, VEC>(x + i, xv);
    load_n<T, VEC>(gy + i, gv);
#pragma unroll
    for (int t = 0; t < V; ++t) {
      const int64_t cc = CL ? ci + t : ci;
      const float4 k = __ldg(kco + cc);
      const float xc = xv[t] - k.w;
      float gz = gv[t];
      if constexpr (ACT != kActNone) gz *= act_grad<ACT>(xc * k.x + __ldg(zc + cc));
      xv[t] = k.x * gz + k.y * xc + k.z;
    }
    store_n<T, VEC>(gx + i, xv);
  }
}

// ------------------------------------------------------------------------------ host side
int sm_count() {
  static std::atomic<int> cache[64] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 108;
  if (dev >= 0 && dev < 64) {
    const int v = cache[dev].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int v = 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || v <= 0) v = 108;
  if (dev >= 0 && dev < 64) cache[dev].store(v, std::memory_order_relaxed);
  return v;
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

int cl_threads(int64_t slots) {
  const int64_t t = cdiv(slots, 32) * 32;
  return static_cast<int>(t < kThreads ? (t < 32 ? 32 : t) : kThreads);
}

// How the per-channel reductions are split: chunks of `chunk` elements of a row (NCHW) or pixels
// (channels last), nchunks of them. Depends only on the shape and the device's SM count (the
// workspace query and the launches must agree).
struct Plan {
  int64_t chunk, nchunks;
};

Plan make_plan(const GroupNormCudaArgs& a) {
  const int64_t sms = sm_count();
  Plan p{a.S, 1};
  if (a.S <= 0) return p;
  if (!a.channels_last) {
    const int64_t rows = a.N * a.C, target = sms * 48;  // warps in flight
    int64_t k = rows >= target ? 1 : cdiv(target, rows);
    const int64_t most = a.S / 1024 > 1 ? a.S / 1024 : 1;  // >= ~1024 elements per (row, chunk)
    if (k > most) k = most;
    p.chunk = cdiv(cdiv(a.S, k), kChunkAlign) * kChunkAlign;
  } else {
    const int64_t threads = cl_threads(cdiv(a.C, 8));
    const int64_t target = sms * (2048 / threads);  // blocks in flight
    int64_t k = a.N >= target ? 1 : cdiv(target, a.N);
    const int64_t most = a.S / 8 > 1 ? a.S / 8 : 1;  // >= 8 pixels per chunk
    if (k > most) k = most;
    if (k > 4096) k = 4096;
    p.chunk = cdiv(a.S, k);
  }
  p.nchunks = cdiv(a.S, p.chunk);
  return p;
}

bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

int64_t round4(int64_t v) { return cdiv(v, 4) * 4; }

// 16-byte vectors are usable: pointers aligned and vectors never straddle a row / a pixel.
bool vec_ok(const GroupNormCudaArgs& a, size_t elem, std::initializer_list<const void*> ptrs) {
  const int64_t V = static_cast<int64_t>(16 / elem);
  if ((a.channels_last ? a.C : a.S) % V != 0) return false;
  for (const void* p : ptrs)
    if (!aligned16(p)) return false;
  return true;
}

Index make_index(const GroupNormCudaArgs& a, int64_t numel) {
  Index ix{a.S, a.C, FastDiv{0, 0}, FastDiv{0, 0}, numel < (int64_t(1) << 32)};
  if (ix.small) {
    ix.dS = make_fastdiv(static_cast<uint64_t>(a.S));
    ix.dC = make_fastdiv(static_cast<uint64_t>(a.C));
  }
  return ix;
}

unsigned apply_blocks(int64_t work) {
  int64_t b = cdiv(work, kThreads);
  if (b > kMaxBlocks) b = kMaxBlocks;
  return static_cast<unsigned>(b < 1 ? 1 : b);
}

template <typename T, int ACT>
cudaError_t forward_t(const GroupNormCudaArgs& a, float* ws, cudaStream_t st) {
  const Plan p = make_plan(a);
  const int64_t numel = a.N * a.C * a.S;
  float2* part = reinterpret_cast<float2*>(ws);
  float4* coef = reinterpret_cast<float4*>(ws + round4(2 * a.N * p.nchunks * a.C));
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.y);
  const bool vx = vec_ok(a, sizeof(T), {a.x});
  constexpr int V = IO<T>::V;
  if (!a.channels_last) {
    const unsigned blocks = static_cast<unsigned>(cdiv(a.N * a.C * p.nchunks, kWarps));
    if (vx) fwd_stats_rows<T, true><<<blocks, kThreads, 0, st>>>(x, a.N * a.C, a.C, a.S, p.chunk, p.nchunks, part);
    else fwd_stats_rows<T, false><<<blocks, kThreads, 0, st>>>(x, a.N * a.C, a.C, a.S, p.chunk, p.nchunks, part);
  } else {
    const unsigned blocks = static_cast<unsigned>(a.N * p.nchunks);
    const int threads = cl_threads(vx ? a.C / V : a.C);
    if (vx) fwd_stats_cl<T, true><<<blocks, threads, 0, st>>>(x, a.C, a.S, p.chunk, p.nchunks, part);
    else fwd_stats_cl<T, false><<<blocks, threads, 0, st>>>(x, a.C, a.S, p.chunk, p.nchunks, part);
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  fwd_merge<<<static_cast<unsigned>(a.N * a.G), kThreads, 0, st>>>(part, a, p.chunk, p.nchunks, coef);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  const Index ix = make_index(a, numel);
  const bool vy = vx && aligned16(a.y);
  const unsigned blocks = apply_blocks(vy ? numel / V : numel);
  if (a.channels_last) {
    if (vy) fwd_apply<T, ACT, true, true><<<blocks, kThreads, 0, st>>>(x, y, coef, numel, ix);
    else fwd_apply<T, ACT, false, true><<<blocks, kThreads, 0, st>>>(x, y, coef, numel, ix);
  } else {
    if (vy) fwd_apply<T, ACT, true, false><<<blocks, kThreads, 0, st>>>(x, y, coef, numel, ix);
    else fwd_apply<T, ACT, false, false><<<blocks, kThreads, 0, st>>>(x, y, coef, numel, ix);
  }
  return cudaGetLastError();
}

template <typename T, int ACT>
cudaError_t backward_t(const GroupNormCudaArgs& a, float* s1, float* s2, float* ws, cudaStream_t st) {
  const Plan p = make_plan(a);
  const int64_t numel = a.N * a.C * a.S;
  float2* part = reinterpret_cast<float2*>(ws);
  float4* kco = reinterpret_cast<float4*>(ws + round4(2 * a.N * p.nchunks * a.C));
  float* zc = reinterpret_cast<float*>(kco + a.N * a.C);
  const bool vx = vec_ok(a, sizeof(T), {a.x, a.gy});
  constexpr int V = IO<T>::V;
  if (!a.channels_last) {
    const unsigned blocks = static_cast<unsigned>(cdiv(a.N * a.C * p.nchunks, kWarps));
    if (vx) bwd_sums_rows<T, ACT, true><<<blocks, kThreads, 0, st>>>(a, p.chunk, p.nchunks, part);
    else bwd_sums_rows<T, ACT, false><<<blocks, kThreads, 0, st>>>(a, p.chunk, p.nchunks, part);
  } else {
    const unsigned blocks = static_cast<unsigned>(a.N * p.nchunks);
    const int threads = cl_threads(vx ? a.C / V : a.C);
    if (vx) bwd_sums_cl<T, ACT, true><<<blocks, threads, 0, st>>>(a, p.chunk, p.nchunks, part);
    else bwd_sums_cl<T, ACT, false><<<blocks, threads, 0, st>>>(a, p.chunk, p.nchunks, part);
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  bwd_merge<<<static_cast<unsigned>(a.N * a.G), kThreads, 0, st>>>(part, a, p.nchunks, s1, s2, kco, zc);
  if ((err = cudaGetLastError()) != cudaSuccess || a.gx == nullptr) return err;
  const Index ix = make_index(a, numel);
  const T* x = static_cast<const T*>(a.x);
  const T* gy = static_cast<const T*>(a.gy);
  T* gx = static_cast<T*>(a.gx);
  const bool vg = vx && aligned16(a.gx);
  const unsigned blocks = apply_blocks(vg ? numel / V : numel);
  if (a.channels_last) {
    if (vg) bwd_apply<T, ACT, true, true><<<blocks, kThreads, 0, st>>>(x, gy, gx, kco, zc, numel, ix);
    else bwd_apply<T, ACT, false, true><<<blocks, kThreads, 0, st>>>(x, gy, gx, kco, zc, numel, ix);
  } else {
    if (vg) bwd_apply<T, ACT, true, false><<<blocks, kThreads, 0, st>>>(x, gy, gx, kco, zc, numel, ix);
    else bwd_apply<T, ACT, false, false><<<blocks, kThreads, 0, st>>>(x, gy, gx, kco, zc, numel, ix);
  }
  return cudaGetLastError();
}

bool bad_args(DType dtype, const GroupNormCudaArgs& a) {
  return (dtype != DType::Float32 && dtype != DType::Float16 && dtype != DType::BFloat16) || a.N < 0 || a.C < 1 ||
         a.S < 0 || a.G < 1 || a.C % a.G != 0 || a.act < 0 || a.act > 2 || a.mean == nullptr || a.rstd == nullptr;
}

template <typename F>
cudaError_t by_type(DType dtype, int act, F&& f) {
  switch (dtype) {
    case DType::Float32:
      return act == kActSilu ? f.template run<float, kActSilu>()
             : act == kActGelu ? f.template run<float, kActGelu>() : f.template run<float, kActNone>();
    case DType::Float16:
      return act == kActSilu ? f.template run<__half, kActSilu>()
             : act == kActGelu ? f.template run<__half, kActGelu>() : f.template run<__half, kActNone>();
    case DType::BFloat16:
      return act == kActSilu ? f.template run<__nv_bfloat16, kActSilu>()
             : act == kActGelu ? f.template run<__nv_bfloat16, kActGelu>()
                               : f.template run<__nv_bfloat16, kActNone>();
    default: return cudaErrorInvalidValue;
  }
}

struct Fwd {
  const GroupNormCudaArgs& a;
  float* ws;
  cudaStream_t st;
  template <typename T, int ACT> cudaError_t run() const { return forward_t<T, ACT>(a, ws, st); }
};

struct Bwd {
  const GroupNormCudaArgs& a;
  float *s1, *s2, *ws;
  cudaStream_t st;
  template <typename T, int ACT> cudaError_t run() const { return backward_t<T, ACT>(a, s1, s2, ws, st); }
};

}  // namespace

int64_t group_norm_workspace_floats(DType /*dtype*/, const GroupNormCudaArgs& a, bool backward) {
  if (a.N <= 0 || a.C <= 0 || a.S <= 0) return 0;
  const Plan p = make_plan(a);
  return round4(2 * a.N * p.nchunks * a.C) + (backward ? 5 : 4) * a.N * a.C;
}

cudaError_t group_norm_forward(DType dtype, const GroupNormCudaArgs& a, float* workspace, cudaStream_t stream) {
  if (bad_args(dtype, a) || a.x == nullptr || a.y == nullptr) return cudaErrorInvalidValue;
  if (a.N == 0 || a.S == 0) return cudaSuccess;
  if (workspace == nullptr || !aligned16(workspace)) return cudaErrorInvalidValue;
  return by_type(dtype, a.act, Fwd{a, workspace, stream});
}

cudaError_t group_norm_backward(DType dtype, const GroupNormCudaArgs& a, float* s1, float* s2, float* workspace,
                                cudaStream_t stream) {
  if (bad_args(dtype, a) || a.x == nullptr || a.gy == nullptr || s1 == nullptr || s2 == nullptr)
    return cudaErrorInvalidValue;
  if (a.N == 0 || a.S == 0) return cudaSuccess;
  if (workspace == nullptr || !aligned16(workspace)) return cudaErrorInvalidValue;
  return by_type(dtype, a.act, Bwd{a, s1, s2, workspace, stream});
}

}  // namespace cuda
}  // namespace fastgen
