// CPU DDIM kernels: raw pointers, no torch headers. Each call handles the element range
// [begin, end) of dense tensors that share one layout; the caller splits work across threads.
#pragma once
#include <cstdint>
#include "fastgen/ddim.h"
#include "fastgen/macros.h"
#include "stream.h"

namespace fastgen {
namespace cpu {

struct DDIMForwardArgs {
  const void* x;      // x_t
  const void* eps;    // model output (epsilon prediction)
  const void* noise;  // may be null (no noise term)
  void* x_prev;
  void* x0;
  int64_t per_sample;               // elements per batch sample (batch is the outermost dim)
  const DDIMCoeffs<float>* coeffs;  // one per sample, or a single entry
  bool per_sample_coeffs;
  float clip;  // <= 0: no clipping
  bool stream_stores = false;  // non-temporal stores (see use_streaming_stores)
};

struct DDIMBackwardArgs {
  const void* x;
  const void* eps;
  const void* g_prev;  // may be null (treated as zeros)
  const void* g_x0;    // may be null (treated as zeros)
  void* dx;
  void* deps;
  void* dnoise;  // may be null (not needed)
  int64_t per_sample;
  const DDIMCoeffs<float>* coeffs;
  bool per_sample_coeffs;
  float clip;
  bool stream_stores = false;
};

void ddim_forward(DType dtype, const DDIMForwardArgs& a, int64_t begin, int64_t end);
void ddim_backward(DType dtype, const DDIMBackwardArgs& a, int64_t begin, int64_t end);

// use_streaming_stores / streaming_threshold_bytes: see stream.h

// Which vector ISA the runtime dispatcher picked on this machine ("x86-64-v4", ...).
const char* cpu_capability();

}  // namespace cpu
}  // namespace fastgen
