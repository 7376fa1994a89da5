// Launch function for the CUDA kernel of the coefficient-driven sampler update
// (csrc/include/fastgen/sampler.h). Raw pointers, sizes and a stream only: no torch headers, so
// csrc/cuda/*.cu compile with plain nvcc on machines without torch or a GPU.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "fastgen/macros.h"
#include "fastgen/sampler.h"

namespace fastgen {
namespace cuda {

struct SamplerCudaArgs {
  // Dense tensors sharing one batch-outer layout (same strides), all of `numel` elements.
  const void* x;
  const void* m;        // model output (the conditional branch when guiding)
  const void* uncond;   // unconditional model output, or null (no guidance)
  float guidance;       // m <- uncond + guidance * (m - uncond)
  const void* h1;       // history tensors, or null (h2 only with h1)
  const void* h2;
  const void* noise;    // read when noise_mode == 1
  const void* var;      // learned-range variance values, or null (noise scale 1); noise_mode != 0 only
  int32_t noise_mode;   // 0: no noise term, 1: `noise`, 2: Philox stream (seed, offset), fastgen/philox.h
  uint64_t seed;
  uint64_t offset;
  void* x_prev;
  void* x0;
  int64_t numel;
  int64_t per_sample;   // elements per batch sample (batch outermost in memory)
  // The coefficients: either one set by value (coeffs_dev == nullptr) ...
  SamplerCoeffs coeffs;
  // ... or fp32 rows of 12 in device memory (SamplerCoeff order): one per sample when
  // per_sample_coeffs, else row 0 for every element (coefficients that never visit the host).
  const float* coeffs_dev;
  bool per_sample_coeffs;
};

// Enqueues the update on `stream`; returns cudaErrorInvalidValue for bad arguments (dtype,
// noise_mode, missing pointers) and otherwise the launch's cudaGetLastError().
cudaError_t sampler_update(DType dtype, const SamplerCudaArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastgen
