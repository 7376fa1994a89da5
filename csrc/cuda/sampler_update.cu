// CUDA kernel of the coefficient-driven sampler update (csrc/include/fastgen/sampler.h).
//
// One pass: reads x, the model output (and the unconditional output when guiding), up to two
// history tensors and, for ancestral steps, a noise tensor or nothing at all -- the normal noise
// is then generated in registers from fastgen's Philox stream (csrc/include/fastgen/philox.h),
// so no noise tensor is written or read. Writes x_prev and x0. fp32 math, 64-bit indexing.
//
// Each thread handles one Philox group: the four consecutive elements 4g .. 4g+3 that one
// Philox4x32-10 call feeds (grid-stride over groups). Loads and stores are 16-byte (fp32) /
// 8-byte (fp16, bf16) vectors when every pointer is aligned for them, scalars otherwise and for
// the tail group. Coefficients: one set by value, or fp32 rows in device memory (per sample; a
// group that straddles a sample boundary looks up each element's row).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "fastgen/philox.h"
#include "fastgen/sampler.h"
#include "sampler_update_cuda.h"

namespace fastgen {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // grid-stride beyond 2^30 elements per sweep

// 4-element loads/stores by storage type: vector (aligned, whole group) or scalar (first n).
template <typename T> struct IO4;

template <> struct IO4<float> {
  static __device__ __forceinline__ void load_vec(const float* p, float v[4]) {
    const float4 q = __ldg(reinterpret_cast<const float4*>(p));
    v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
  }
  static __device__ __forceinline__ void store_vec(float* p, const float v[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  }
  static __device__ __forceinline__ float ld(const float* p) { return __ldg(p); }
  static __device__ __forceinline__ void st(float* p, float v) { *p = v; }
};

// 16-bit types move as raw bits (uint2 = four elements), converted one by one.
struct Bits16 {
  static __device__ __forceinline__ void unpack(uint2 q, unsigned short b[4]) {
    b[0] = static_cast<unsigned short>(q.x & 0xffffu);
    b[1] = static_cast<unsigned short>(q.x >> 16);
    b[2] = static_cast<unsigned short>(q.y & 0xffffu);
    b[3] = static_cast<unsigned short>(q.y >> 16);
  }
  static __device__ __forceinline__ uint2 pack(const unsigned short b[4]) {
    return make_uint2(uint32_t(b[0]) | (uint32_t(b[1]) << 16), uint32_t(b[2]) | (uint32_t(b[3]) << 16));
  }
};

template <> struct IO4<__half> {
  static __device__ __forceinline__ float cvt(unsigned short b) { return __half2float(__ushort_as_half(b)); }
  static __device__ __forceinline__ unsigned short bits(float v) { return __half_as_ushort(__float2half_rn(v)); }
  static __device__ __forceinline__ void load_vec(const __half* p, float v[4]) {
    unsigned short b[4];
    Bits16::unpack(__ldg(reinterpret_cast<const uint2*>(p)), b);
#pragma unroll
    for (int k = 0; k < 4; ++k) v[k] = cvt(b[k]);
  }
  static __device__ __forceinline__ void store_vec(__half* p, const float v[4]) {
    unsigned short b[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) b[k] = bits(v[k]);
    *reinterpret_cast<uint2*>(p) = Bits16::pack(b);
  }
  static __device__ __forceinline__ float ld(const __half* p) { return __half2float(__ldg(p)); }
  static __device__ __forceinline__ void st(__half* p, float v) { *p = __float2half_rn(v); }
};

template <> struct IO4<__nv_bfloat16> {
  static __device__ __forceinline__ float cvt(unsigned short b) { return __uint_as_float(uint32_t(b) << 16); }
  static __device__ __forceinline__ unsigned short bits(float v) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
  static __device__ __forceinline__ void load_vec(const __nv_bfloat16* p, float v[4]) {
    unsigned short b[4];
    Bits16::unpack(__ldg(reinterpret_cast<const uint2*>(p)), b);
#pragma unroll
    for (int k = 0; k < 4; ++k) v[k] = cvt(b[k]);
  }
  static __device__ __forceinline__ void store_vec(__nv_bfloat16* p, const float v[4]) {
    unsigned short b[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) b[k] = bits(v[k]);
    *reinterpret_cast<uint2*>(p) = Bits16::pack(b);
  }
  static __device__ __forceinline__ float ld(const __nv_bfloat16* p) { return __bfloat162float(__ldg(p)); }
  static __device__ __forceinline__ void st(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
};

template <typename T>
__device__ __forceinline__ void load4(const void* base, int64_t i0, int n, bool vec, float v[4]) {
  const T* p = static_cast<const T*>(base) + i0;
  if (vec) {
    IO4<T>::load_vec(p, v);
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) v[k] = k < n ? IO4<T>::ld(p + k) : 0.f;
  }
}

template <typename T>
__device__ __forceinline__ void store4(void* base, int64_t i0, int n, bool vec, const float v[4]) {
  T* p = static_cast<T*>(base) + i0;
  if (vec) {
    IO4<T>::store_vec(p, v);
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (k < n) IO4<T>::st(p + k, v[k]);
  }
}

__device__ __forceinline__ SamplerCoeffs load_row(const float* rows, int64_t r) {
  const float* p = rows + r * kNumSamplerCoeffs;
  if ((reinterpret_cast<uintptr_t>(rows) & 15u) == 0) {  // rows are 48 bytes: all 16-byte aligned
    const float4 a = __ldg(reinterpret_cast<const float4*>(p));
    const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
    const float4 c = __ldg(reinterpret_cast<const float4*>(p) + 2);
    return SamplerCoeffs{a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w, c.x, c.y, c.z, c.w};
  }
  float v[kNumSamplerCoeffs];
#pragma unroll
  for (int k = 0; k < kNumSamplerCoeffs; ++k) v[k] = __ldg(p + k);
  return sampler_coeffs_from(v);
}

// Batch sample of element i (32-bit division while the indices fit).
__device__ __forceinline__ int64_t sample_of(int64_t i, int64_t per_sample, bool small) {
  return small ? int64_t(uint32_t(i) / uint32_t(per_sample)) : i / per_sample;
}

template <bool GUIDE, int NH, int NOISE, bool VAR>
__device__ __forceinline__ void element(float xv, float mv, float uv, float h1v, float h2v, float nv, float vv,
                                        const SamplerCoeffs& c, float g, float* out_prev, float* out_x0) {
  if (GUIDE) mv = uv + g * (mv - uv);
  const float x0 = sampler_x0(xv, mv, c, true);  // clip = +inf: no clamp; NaN propagates
  float out = c.c_x * xv + c.c_0 * x0 + c.c_m * mv;
  if (NH >= 1) out += c.c_h1 * h1v;
  if (NH >= 2) out += c.c_h2 * h2v;
  if (NOISE != 0) {
    if (VAR) {
      const float lv_half = 0.25f * (c.lv_hi - c.lv_lo);  // exp(0.5 (lo + (v + 1) / 2 (hi - lo)))
      const float lv_mid = 0.5f * c.lv_lo + lv_half;
      nv *= expf(lv_mid + lv_half * vv);
    }
    out += c.c_n * nv;
  }
  *out_prev = out;
  *out_x0 = x0;
}

template <typename T, bool GUIDE, int NH, int NOISE, bool VAR>
__global__ void __launch_bounds__(kThreads) sampler_update_kernel(const SamplerCudaArgs a, const bool vec_ok) {
  const int64_t groups = (a.numel + 3) >> 2;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  const bool small = a.numel <= int64_t(0xffffffff);
  for (int64_t g = int64_t(blockIdx.x) * kThreads + threadIdx.x; g < groups; g += stride) {
    const int64_t i0 = g << 2;
    const int n = a.numel - i0 < 4 ? static_cast<int>(a.numel - i0) : 4;
    const bool vec = vec_ok && n == 4;
    float xv[4], mv[4], uv[4] = {}, h1v[4] = {}, h2v[4] = {}, nv[4] = {}, vv[4] = {};
    load4<T>(a.x, i0, n, vec, xv);
    load4<T>(a.m, i0, n, vec, mv);
    if (GUIDE) load4<T>(a.uncond, i0, n, vec, uv);
    if (NH >= 1) load4<T>(a.h1, i0, n, vec, h1v);
    if (NH >= 2) load4<T>(a.h2, i0, n, vec, h2v);
    if (NOISE == 1) load4<T>(a.noise, i0, n, vec, nv);
    if (NOISE == 2) philox::normal4(static_cast<uint64_t>(g), a.seed, a.offset, nv);
    if (VAR) load4<T>(a.var, i0, n, vec, vv);

    float op[4], o0[4];
    bool uniform = true;
    SamplerCoeffs c = a.coeffs;
    if (a.coeffs_dev != nullptr) {
      if (a.per_sample_coeffs) {
        const int64_t s0 = sample_of(i0, a.per_sample, small);
        uniform = s0 == sample_of(i0 + n - 1, a.per_sample, small);
        c = load_row(a.coeffs_dev, s0);
      } else {
        c = load_row(a.coeffs_dev, 0);
      }
    }
    if (uniform) {
#pragma unroll
      for (int k = 0; k < 4; ++k)
        element<GUIDE, NH, NOISE, VAR>(xv[k], mv[k], uv[k], h1v[k], h2v[k], nv[k], vv[k], c, a.guidance, &op[k],
                                       &o0[k]);
    } else {  // the group straddles a sample boundary
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const SamplerCoeffs ck = load_row(a.coeffs_dev, sample_of(i0 + k < a.numel ? i0 + k : i0, a.per_sample, small));
        element<GUIDE, NH, NOISE, VAR>(xv[k], mv[k], uv[k], h1v[k], h2v[k], nv[k], vv[k], ck, a.guidance, &op[k],
                                       &o0[k]);
      }
    }
    store4<T>(a.x_prev, i0, n, vec, op);
    store4<T>(a.x0, i0, n, vec, o0);
  }
}

inline bool aligned(const void* p, uintptr_t bytes) {
  return p == nullptr || (reinterpret_cast<uintptr_t>(p) % bytes) == 0;
}

template <typename T, bool GUIDE, int NH, int NOISE, bool VAR>
cudaError_t launch(const SamplerCudaArgs& a, cudaStream_t stream) {
  const int64_t groups = (a.numel + 3) / 4;
  int64_t blocks = (groups + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  const uintptr_t vb = 4 * sizeof(T);
  const bool vec = aligned(a.x, vb) && aligned(a.m, vb) && aligned(a.uncond, vb) && aligned(a.h1, vb) &&
                   aligned(a.h2, vb) && aligned(a.noise, vb) && aligned(a.var, vb) && aligned(a.x_prev, vb) &&
                   aligned(a.x0, vb);
  sampler_update_kernel<T, GUIDE, NH, NOISE, VAR><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, vec);
  return cudaGetLastError();
}

template <typename T, bool GUIDE, int NH>
cudaError_t by_noise(const SamplerCudaArgs& a, cudaStream_t s) {
  const bool var = a.var != nullptr;
  switch (a.noise_mode) {
    case 0: return launch<T, GUIDE, NH, 0, false>(a, s);
    case 1: return var ? launch<T, GUIDE, NH, 1, true>(a, s) : launch<T, GUIDE, NH, 1, false>(a, s);
    case 2: return var ? launch<T, GUIDE, NH, 2, true>(a, s) : launch<T, GUIDE, NH, 2, false>(a, s);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T, bool GUIDE>
cudaError_t by_history(const SamplerCudaArgs& a, cudaStream_t s) {
  if (a.h2 != nullptr) return by_noise<T, GUIDE, 2>(a, s);
  if (a.h1 != nullptr) return by_noise<T, GUIDE, 1>(a, s);
  return by_noise<T, GUIDE, 0>(a, s);
}

template <typename T>
cudaError_t dispatch(const SamplerCudaArgs& a, cudaStream_t s) {
  return a.uncond != nullptr ? by_history<T, true>(a, s) : by_history<T, false>(a, s);
}

}  // namespace

cudaError_t sampler_update(DType dtype, const SamplerCudaArgs& a, cudaStream_t stream) {
  if (a.numel == 0) return cudaSuccess;
  if (a.x == nullptr || a.m == nullptr || a.x_prev == nullptr || a.x0 == nullptr || a.per_sample <= 0 ||
      (a.h2 != nullptr && a.h1 == nullptr) || (a.noise_mode == 1 && a.noise == nullptr) ||
      (a.noise_mode != 0 && a.noise_mode != 1 && a.noise_mode != 2))
    return cudaErrorInvalidValue;
  SamplerCudaArgs b = a;
  if (b.noise_mode == 0) b.var = nullptr;   // var_values only scale the noise
  if (b.noise_mode != 1) b.noise = nullptr;
  switch (dtype) {
    case DType::Float32: return dispatch<float>(b, stream);
    case DType::Float16: return dispatch<__half>(b, stream);
    case DType::BFloat16: return dispatch<__nv_bfloat16>(b, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace cuda
}  // namespace fastgen
