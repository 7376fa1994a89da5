// Shared by the CPU (g++) and CUDA (nvcc) kernels. No torch headers here.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FG_HOST_DEVICE __host__ __device__ __forceinline__
#define FG_DEVICE __device__ __forceinline__
#else
#define FG_HOST_DEVICE inline
#define FG_DEVICE inline
#endif

#if defined(__GNUC__) || defined(__clang__)
#define FG_ALWAYS_INLINE inline __attribute__((always_inline))
#define FG_RESTRICT __restrict__
#else
#define FG_ALWAYS_INLINE inline
#define FG_RESTRICT
#endif

#include <cstdint>
#include <cmath>

namespace fastgen {

// Storage dtypes a kernel may see. fp32 math happens inside regardless.
enum class DType : int32_t { Float32 = 0, Float16 = 1, BFloat16 = 2, Float64 = 3 };

}  // namespace fastgen
