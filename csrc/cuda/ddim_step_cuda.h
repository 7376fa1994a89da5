// Launch functions for the CUDA DDIM kernels. Raw pointers, sizes and a stream only: no torch
// headers, so csrc/cuda/*.cu compile with plain nvcc on machines without torch or a GPU.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "fastgen/ddim.h"
#include "fastgen/macros.h"

namespace fastgen {
namespace cuda {

struct DDIMCudaForwardArgs {
  const void* x;
  const void* eps;
  const void* noise;  // may be null
  void* x_prev;
  void* x0;
  int64_t numel;
  int64_t per_sample;  // elements per batch sample (batch outermost in memory)
  // Either host-computed coefficients (both alphas are host scalars) ...
  DDIMCoeffs<float> coeffs;
  // ... or per-sample alphas in device memory (fp32, length N); a null pointer means "use the
  // scalar next to it". Coefficients are then computed in-kernel in fp32 (stable form).
  const float* alpha_t;
  const float* alpha_p;
  float alpha_t_scalar;
  float alpha_p_scalar;
  float eta;
  float clip;  // <= 0: no clipping
};

struct DDIMCudaBackwardArgs {
  const void* x;
  const void* eps;
  const void* g_prev;  // may be null
  const void* g_x0;    // may be null
  void* dx;
  void* deps;
  void* dnoise;  // may be null
  int64_t numel;
  int64_t per_sample;
  DDIMCoeffs<float> coeffs;
  const float* alpha_t;
  const float* alpha_p;
  float alpha_t_scalar;
  float alpha_p_scalar;
  float eta;
  float clip;
};

cudaError_t ddim_forward(DType dtype, const DDIMCudaForwardArgs& args, cudaStream_t stream);
cudaError_t ddim_backward(DType dtype, const DDIMCudaBackwardArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastgen
