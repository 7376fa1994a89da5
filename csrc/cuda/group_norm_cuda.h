// Launch functions of the CUDA kernels of the fused group_norm (+ per-(n, c) scale/shift +
// activation). Raw pointers, sizes and a stream only: no torch headers, so csrc/cuda/*.cu compile
// with plain nvcc on machines without torch or a GPU.
//
// x is (N, C, S) contiguous ("NCHW", S = prod(spatial)) or (N, S, C) ("channels last"); outputs and
// grads have x's layout. Parameters are fp32: weight / bias (C) and scale / shift (N, C), each may
// be null (identity). mean / rstd are fp32 (N, G).
//
//   z = (x - mean) a[n, c] + c'[n, c],  a = rstd w (1 + s),  c' = b (1 + s) + t,   y = act(z)
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "fastgen/macros.h"

namespace fastgen {
namespace cuda {

struct GroupNormCudaArgs {
  const void* x;
  void* y;              // forward output
  const void* gy;       // backward: grad of y (x's layout)
  void* gx;             // backward: grad of x, or null (not needed)
  float* mean;          // (N, G): written by the forward, read by the backward
  float* rstd;          // (N, G)
  const float* weight;  // (C) or null
  const float* bias;    // (C) or null
  const float* scale;   // (N, C) or null
  const float* shift;   // (N, C) or null
  int64_t N, C, S, G;
  float eps;
  int act;              // 0 none, 1 SiLU, 2 GELU (erf)
  bool channels_last;
};

// fp32 workspace (in floats) the forward / backward needs for these args on the current device
// (the split of the reductions depends on the device's SM count: call it with the same device
// current as the launch). The torch layer allocates it; it need not be initialised.
int64_t group_norm_workspace_floats(DType dtype, const GroupNormCudaArgs& args, bool backward);

// Forward: writes y, mean, rstd. `workspace`: group_norm_workspace_floats(.., false) floats,
// 16-byte aligned. Returns cudaErrorInvalidValue for bad arguments, else the launches' status.
cudaError_t group_norm_forward(DType dtype, const GroupNormCudaArgs& args, float* workspace, cudaStream_t stream);

// Backward: per-(n, c) sums s1 = sum gz, s2 = sum gz xhat (gz = gy act'(z)) into fp32 (N, C)
// buffers, and gx when args.gx is set. `workspace`: group_norm_workspace_floats(.., true) floats.
cudaError_t group_norm_backward(DType dtype, const GroupNormCudaArgs& args, float* s1, float* s2, float* workspace,
                                cudaStream_t stream);

}  // namespace cuda
}  // namespace fastgen
