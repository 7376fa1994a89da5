// CUDA DDIM forward/backward. One read of every input and one write of every output, fp32
// math, 64-bit indexing. Each block owns a contiguous tile; threads stride by blockDim inside
// it, so loads and stores are coalesced and a tile rarely crosses a sample boundary (the
// per-sample coefficients are recomputed only when it does).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "ddim_step_cuda.h"

namespace fastgen {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kPerThread = 8;
constexpr int64_t kTile = int64_t(kThreads) * kPerThread;

template <typename T> struct IO;
template <> struct IO<float> {
  static __device__ __forceinline__ float ld(const float* p) { return __ldg(p); }
  static __device__ __forceinline__ void st(float* p, float v) { *p = v; }
};
template <> struct IO<__half> {
  static __device__ __forceinline__ float ld(const __half* p) { return __half2float(__ldg(p)); }
  static __device__ __forceinline__ void st(__half* p, float v) { *p = __float2half_rn(v); }
};
template <> struct IO<__nv_bfloat16> {
  static __device__ __forceinline__ float ld(const __nv_bfloat16* p) { return __bfloat162float(__ldg(p)); }
  static __device__ __forceinline__ void st(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
};

template <typename Args>
struct CoeffCache {
  int64_t sample = -1;
  DDIMCoeffs<float> c;
  __device__ __forceinline__ DDIMCoeffs<float> get(const Args& a, int64_t i) {
    if (a.alpha_t == nullptr && a.alpha_p == nullptr) return a.coeffs;
    const int64_t s = i / a.per_sample;
    if (s != sample) {
      sample = s;
      const float at = a.alpha_t ? a.alpha_t[s] : a.alpha_t_scalar;
      const float ap = a.alpha_p ? a.alpha_p[s] : a.alpha_p_scalar;
      c = ddim_coeffs<float>(at, ap, a.eta);
    }
    return c;
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) ddim_forward_kernel(const DDIMCudaForwardArgs a) {
  const T* x = static_cast<const T*>(a.x);
  const T* e = static_cast<const T*>(a.eps);
  const T* n = static_cast<const T*>(a.noise);
  T* xp = static_cast<T*>(a.x_prev);
  T* x0o = static_cast<T*>(a.x0);
  CoeffCache<DDIMCudaForwardArgs> cache;
  const int64_t tile0 = int64_t(blockIdx.x) * kTile;
  const int64_t end = tile0 + kTile < a.numel ? tile0 + kTile : a.numel;
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int64_t i = tile0 + int64_t(k) * kThreads + threadIdx.x;
    if (i < end) {
      const DDIMCoeffs<float> c = cache.get(a, i);
      float x0;
      const float nv = n ? IO<T>::ld(n + i) : 0.f;
      const float out = ddim_element<float>(IO<T>::ld(x + i), IO<T>::ld(e + i), nv, c, a.clip, &x0);
      IO<T>::st(x0o + i, x0);
      IO<T>::st(xp + i, out);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) ddim_backward_kernel(const DDIMCudaBackwardArgs a) {
  const T* x = static_cast<const T*>(a.x);
  const T* e = static_cast<const T*>(a.eps);
  const T* gp = static_cast<const T*>(a.g_prev);
  const T* g0 = static_cast<const T*>(a.g_x0);
  T* dx = static_cast<T*>(a.dx);
  T* de = static_cast<T*>(a.deps);
  T* dn = static_cast<T*>(a.dnoise);
  CoeffCache<DDIMCudaBackwardArgs> cache;
  const int64_t tile0 = int64_t(blockIdx.x) * kTile;
  const int64_t end = tile0 + kTile < a.numel ? tile0 + kTile : a.numel;
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int64_t i = tile0 + int64_t(k) * kThreads + threadIdx.x;
    if (i < end) {
      const DDIMCoeffs<float> c = cache.get(a, i);
      float vdx, vde, vdn;
      ddim_backward_element<float>(IO<T>::ld(x + i), IO<T>::ld(e + i), gp ? IO<T>::ld(gp + i) : 0.f,
                                   g0 ? IO<T>::ld(g0 + i) : 0.f, c, a.clip, &vdx, &vde, &vdn);
      IO<T>::st(dx + i, vdx);
      IO<T>::st(de + i, vde);
      if (dn) IO<T>::st(dn + i, vdn);
    }
  }
}

inline unsigned grid_for(int64_t numel) { return static_cast<unsigned>((numel + kTile - 1) / kTile); }

}  // namespace

cudaError_t ddim_forward(DType dtype, const DDIMCudaForwardArgs& a, cudaStream_t stream) {
  if (a.numel == 0) return cudaSuccess;
  const unsigned grid = grid_for(a.numel);
  switch (dtype) {
    case DType::Float32: ddim_forward_kernel<float><<<grid, kThreads, 0, stream>>>(a); break;
    case DType::Float16: ddim_forward_kernel<__half><<<grid, kThreads, 0, stream>>>(a); break;
    case DType::BFloat16: ddim_forward_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(a); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t ddim_backward(DType dtype, const DDIMCudaBackwardArgs& a, cudaStream_t stream) {
  if (a.numel == 0) return cudaSuccess;
  const unsigned grid = grid_for(a.numel);
  switch (dtype) {
    case DType::Float32: ddim_backward_kernel<float><<<grid, kThreads, 0, stream>>>(a); break;
    case DType::Float16: ddim_backward_kernel<__half><<<grid, kThreads, 0, stream>>>(a); break;
    case DType::BFloat16: ddim_backward_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(a); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fastgen
