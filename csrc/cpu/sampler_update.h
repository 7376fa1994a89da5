// CPU kernel of the coefficient-driven sampler update (csrc/include/fastgen/sampler.h): raw
// pointers, no torch headers. Each call handles the element range [begin, end) of dense tensors
// that share one batch-outer layout; the caller splits work across threads.
#pragma once
#include <cstdint>

#include "fastgen/macros.h"
#include "fastgen/sampler.h"
#include "stream.h"

namespace fastgen {
namespace cpu {

enum class NoiseKind : int32_t {
  None = 0,         // no noise term (c_n ignored)
  Tensor = 1,       // read `noise`
  Philox = 2,       // generate it in-kernel (fastgen/philox.h stream at (seed, offset))
};

// Inputs, indexing SamplerArgs::batch_stride.
enum SamplerIn : int { kInX = 0, kInM, kInUncond, kInH1, kInH2, kInNoise, kInVar, kNumSamplerIn };

struct SamplerArgs {
  const void* x;        // current sample x_t
  const void* m;        // model output (the conditional branch when guiding)
  const void* uncond;   // unconditional model output, or null (no guidance)
  float guidance = 1.f; // m <- uncond + guidance * (m - uncond)
  const void* h1;       // history tensors, or null (h2 only with h1)
  const void* h2;
  const void* noise;    // NoiseKind::Tensor
  const void* var;      // learned-range variance values v, or null (noise scale 1)
  NoiseKind noise_kind = NoiseKind::None;
  uint64_t seed = 0, offset = 0;
  void* x_prev;
  void* x0;
  int64_t per_sample;            // elements per batch sample (batch outermost)
  // Elements between consecutive samples of each input: per_sample for a tensor laid out like
  // the outputs, anything else for a batch slice of a larger tensor with the outputs' per-sample
  // layout (e.g. the eps / variance halves model_output[:, :C], [:, C:] of a 2C-channel output).
  int64_t batch_stride[kNumSamplerIn] = {};
  bool strided = false;          // some batch_stride != per_sample (work is split at sample edges)
  const SamplerCoeffs* coeffs;   // one per sample, or a single entry
  bool per_sample_coeffs;
  bool clip;                     // any sample clamps x0 (coeffs[s].clip is +inf where it does not)
  bool stream_stores = false;
};

void sampler_update(DType dtype, const SamplerArgs& a, int64_t begin, int64_t end);


}  // namespace cpu
}  // namespace fastgen
