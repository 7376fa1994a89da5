// CPU kernels of grad_norm_penalty (see grad_penalty.h): a vectorised sum of squares per row chunk
// (fp32 lanes summed into fp64 every 1024 elements, so long rows keep full precision) and the
// elementwise backward scale with one coefficient per row.
#include "grad_penalty.h"

#include <algorithm>

#include "fastgen/convert.h"
#include "stream.h"  // FG_CLONES, FG_DT_DISPATCH

namespace fastgen {
namespace cpu {
namespace {

template <typename T>
FG_ALWAYS_INLINE double sq_sum(const void* gp, int64_t M, int64_t row, int64_t begin, int64_t end) {
  const T* FG_RESTRICT g = static_cast<const T*>(gp) + row * M;
  double total = 0.0;
  constexpr int64_t kBlock = 1024;
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t e = std::min(end, b + kBlock);
    float acc = 0.0f;
    for (int64_t i = b; i < e; ++i) {
      const float v = to_float(g[i]);
      acc += v * v;
    }
    total += acc;
  }
  return total;
}

template <typename T>
FG_ALWAYS_INLINE void scale(const void* gp, const float* coef, void* outp, int64_t M, int64_t begin, int64_t end) {
  const T* FG_RESTRICT g = static_cast<const T*>(gp);
  T* FG_RESTRICT out = static_cast<T*>(outp);
  int64_t i = begin;
  while (i < end) {
    const int64_t n = i / M;
    const int64_t stop = std::min(end, (n + 1) * M);
    const float k = coef[n];
    for (int64_t j = i; j < stop; ++j) out[j] = from_float<T>(k * to_float(g[j]));
    i = stop;
  }
}

#define FG_GP_CLONES(SUF, T)                                                                          \
  FG_CLONES double sq_##SUF(const void* g, int64_t M, int64_t row, int64_t b, int64_t e) {           \
    return sq_sum<T>(g, M, row, b, e);                                                                \
  }                                                                                                   \
  FG_CLONES void scale_##SUF(const void* g, const float* c, void* o, int64_t M, int64_t b, int64_t e) { \
    scale<T>(g, c, o, M, b, e);                                                                       \
  }

FG_GP_CLONES(f32, float)
FG_GP_CLONES(f16, f16_t)
FG_GP_CLONES(bf16, bf16_t)

}  // namespace

double grad_sq_sum(DType dt, const void* g, int64_t M, int64_t row, int64_t begin, int64_t end) {
  switch (dt) {
    case DType::Float16: return sq_f16(g, M, row, begin, end);
    case DType::BFloat16: return sq_bf16(g, M, row, begin, end);
    default: return sq_f32(g, M, row, begin, end);
  }
}

void grad_penalty_scale(DType dt, const void* g, const float* coef, void* out, int64_t M, int64_t begin,
                        int64_t end) {
  FG_DT_DISPATCH(dt, scale, g, coef, out, M, begin, end)
}

}  // namespace cpu
}  // namespace fastgen
