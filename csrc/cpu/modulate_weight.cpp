// CPU kernels of modulate_weight (see modulate_weight.h). The forward writes each output row
// (n, o) in one pass over w[o] (which stays in L1/L2 across n); the backward walks the output
// channels o of its range, and for each sample n makes one pass over the row of G for
// t = sum G a (demodulation) and one for ga, accumulating gw[o] (owned by this range) and the
// thread's partial gs. Inner loops run over the contiguous k of one (o, i) pair or, for 1x1
// kernels (K = 1), over i: both vectorise. fp32 math for every storage type.
#include "modulate_weight.h"

#include "fastgen/convert.h"
#include "stream.h"  // FG_CLONES, FG_DT_DISPATCH

namespace fastgen {
namespace cpu {
namespace {

template <typename T>
FG_ALWAYS_INLINE void forward_rows(const ModWeightArgs& a, int64_t begin, int64_t end) {
  const T* FG_RESTRICT w = static_cast<const T*>(a.w);
  T* FG_RESTRICT out = static_cast<T*>(a.out);
  const int64_t I = a.I, K = a.K, row = a.I * a.K;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / a.O, o = r % a.O;
    const float dv = a.d ? a.d[r] : 1.0f;
    const float* FG_RESTRICT s = a.s + n * I;
    const T* FG_RESTRICT wr = w + o * row;
    T* FG_RESTRICT dst = out + r * row;
    if (K == 1) {
      for (int64_t i = 0; i < I; ++i) dst[i] = from_float<T>(to_float(wr[i]) * (s[i] * dv));
    } else {
      for (int64_t i = 0; i < I; ++i) {
        const float f = s[i] * dv;
        for (int64_t k = 0; k < K; ++k) dst[i * K + k] = from_float<T>(to_float(wr[i * K + k]) * f);
      }
    }
  }
}

template <typename T>
FG_ALWAYS_INLINE void backward_channels(const ModWeightArgs& a, int64_t begin, int64_t end) {
  const T* FG_RESTRICT w = static_cast<const T*>(a.w);
  const T* FG_RESTRICT g = static_cast<const T*>(a.g);
  const int64_t N = a.N, O = a.O, I = a.I, K = a.K, row = a.I * a.K;
  for (int64_t o = begin; o < end; ++o) {
    const T* FG_RESTRICT wr = w + o * row;
    float* FG_RESTRICT gwr = a.gw + o * row;
    for (int64_t j = 0; j < row; ++j) gwr[j] = 0.0f;
    for (int64_t n = 0; n < N; ++n) {
      const float* FG_RESTRICT s = a.s + n * I;
      const T* FG_RESTRICT gr = g + (n * O + o) * row;
      float* FG_RESTRICT gs = a.gs + n * I;
      float dv = 1.0f, c = 0.0f;
      if (a.d) {
        dv = a.d[n * O + o];
        float t = 0.0f;  // sum_{i, k} G a
        for (int64_t i = 0; i < I; ++i) {
          float acc = 0.0f;
          for (int64_t k = 0; k < K; ++k) acc += to_float(gr[i * K + k]) * to_float(wr[i * K + k]);
          t += acc * s[i];
        }
        c = t * dv * dv * dv;
      }
      for (int64_t i = 0; i < I; ++i) {
        const float si = s[i], cs = c * si;
        float acc = 0.0f;
        for (int64_t k = 0; k < K; ++k) {
          const float wv = to_float(wr[i * K + k]);
          const float ga = dv * to_float(gr[i * K + k]) - cs * wv;
          gwr[i * K + k] += ga * si;
          acc += ga * wv;
        }
        gs[i] += acc;
      }
    }
  }
}

#define FG_MW_CLONES(SUF, T)                                                              \
  FG_CLONES void fwd_##SUF(const ModWeightArgs& a, int64_t b, int64_t e) { forward_rows<T>(a, b, e); } \
  FG_CLONES void bwd_##SUF(const ModWeightArgs& a, int64_t b, int64_t e) { backward_channels<T>(a, b, e); }

FG_MW_CLONES(f32, float)
FG_MW_CLONES(f16, f16_t)
FG_MW_CLONES(bf16, bf16_t)

}  // namespace

void modulate_weight_forward(DType dt, const ModWeightArgs& a, int64_t begin, int64_t end) {
  FG_DT_DISPATCH(dt, fwd, a, begin, end)
}

void modulate_weight_backward(DType dt, const ModWeightArgs& a, int64_t begin, int64_t end) {
  FG_DT_DISPATCH(dt, bwd, a, begin, end)
}

}  // namespace cpu
}  // namespace fastgen
