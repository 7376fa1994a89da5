// CPU kernels of the fused group_norm (see group_norm.h).
//
// NCHW: a (n, group) is one contiguous block of M = (C / G) S elements. One task per group: pass 1
// the mean, pass 2 the centred sum of squares (exact two-pass statistics; the block is still in
// L1/L2), pass 3 y = act(A x + B) per channel: x is read from memory once and y written once.
// Channels last: per (n, pixel chunk) per-channel shifted sums (vectorised along C), merged in
// fp64 in task order, then an apply pass with per-channel A, B vectors.
// Reductions: fp32 lanes over blocks of kBlock elements, merged in fp64. Same scheme as the other
// kernels: loops for GCC's vectoriser, entry points compiled per ISA with target_clones.
#include "group_norm.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "fastgen/convert.h"
#include "fastgen/vmath.h"
#include "stream.h"  // FG_CLONES, FG_LAMBDA_INLINE

namespace fastgen {
namespace cpu {
namespace {

constexpr int64_t kBlock = 512;  // elements per fp32 partial sum
constexpr int64_t kPixBlock = 32;  // pixels per fp32 partial sum (channels last)

struct Affine {
  float A, B;
};

// The per-(n, c) affine of the forward and the factor k = w (1 + s) of the backward.
FG_ALWAYS_INLINE Affine channel_affine(const GroupNormArgs& a, int64_t n, int64_t c, float mean, float rstd) {
  const float w = a.weight ? a.weight[c] : 1.0f;
  const float b = a.bias ? a.bias[c] : 0.0f;
  const float sp = a.scale ? 1.0f + a.scale[n * a.C + c] : 1.0f;
  const float t = a.shift ? a.shift[n * a.C + c] : 0.0f;
  const float rw = rstd * w;
  return {rw * sp, (b - mean * rw) * sp + t};
}

FG_ALWAYS_INLINE float channel_k(const GroupNormArgs& a, int64_t n, int64_t c) {
  const float w = a.weight ? a.weight[c] : 1.0f;
  const float sp = a.scale ? 1.0f + a.scale[n * a.C + c] : 1.0f;
  return w * sp;
}

template <typename T>
FG_ALWAYS_INLINE double block_sum(const T* FG_RESTRICT x, int64_t m) {
  double total = 0.0;
  for (int64_t o = 0; o < m; o += kBlock) {
    const int64_t len = std::min(kBlock, m - o);
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < len; ++i) acc += to_float(x[o + i]);
    total += acc;
  }
  return total;
}

template <typename T>
FG_ALWAYS_INLINE double block_centered_sq(const T* FG_RESTRICT x, int64_t m, float mean) {
  double total = 0.0;
  for (int64_t o = 0; o < m; o += kBlock) {
    const int64_t len = std::min(kBlock, m - o);
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < len; ++i) {
      const float d = to_float(x[o + i]) - mean;
      acc += d * d;
    }
    total += acc;
  }
  return total;
}

template <typename T, int ACT>
FG_ALWAYS_INLINE void apply_row(const T* FG_RESTRICT x, T* FG_RESTRICT y, int64_t len, float A, float B) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) y[i] = from_float<T>(act_fwd<ACT>(A * to_float(x[i]) + B));
}

template <typename T, int ACT>
FG_ALWAYS_INLINE void forward_nchw(const GroupNormArgs& a, int64_t begin, int64_t end) {
  const int64_t cg = a.C / a.G, S = a.S, M = cg * S;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / a.G, g = task % a.G;
    const T* xg = static_cast<const T*>(a.x) + task * M;
    T* yg = static_cast<T*>(a.y) + task * M;
    const float mean = static_cast<float>(block_sum(xg, M) / static_cast<double>(M));
    const double var = block_centered_sq(xg, M, mean) / static_cast<double>(M);
    const float rstd = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(a.eps)));
    a.mean[task] = mean;
    a.rstd[task] = rstd;
    for (int64_t j = 0; j < cg; ++j) {
      const Affine f = channel_affine(a, n, g * cg + j, mean, rstd);
      apply_row<T, ACT>(xg + j * S, yg + j * S, S, f.A, f.B);
    }
  }
}

// Backward, one channel row: gz (into gzbuf when STORE), and its sums S1 = sum gz, sum gz (x - mean).
template <typename T, int ACT, bool STORE>
FG_ALWAYS_INLINE void backward_row_sums(const T* FG_RESTRICT x, const T* FG_RESTRICT gy, float* FG_RESTRICT gzbuf,
                                        int64_t len, float A, float B, float mean, double* s1, double* s2) {
  double t1 = 0.0, t2 = 0.0;
  for (int64_t o = 0; o < len; o += kBlock) {
    const int64_t l = std::min(kBlock, len - o);
    float a1 = 0.0f, a2 = 0.0f;
#pragma omp simd reduction(+ : a1, a2)
    for (int64_t i = 0; i < l; ++i) {
      const float xv = to_float(x[o + i]);
      float gz = to_float(gy[o + i]);
      if constexpr (ACT != kActNone) gz *= act_grad<ACT>(A * xv + B);
      if constexpr (STORE) gzbuf[o + i] = gz;
      a1 += gz;
      a2 += gz * (xv - mean);
    }
    t1 += a1;
    t2 += a2;
  }
  *s1 = t1;
  *s2 = t2;
}

template <typename T, int ACT>
FG_ALWAYS_INLINE void backward_nchw(const GroupNormArgs& a, int64_t begin, int64_t end, double* s1, double* s2,
                                    float* scratch) {
  const int64_t cg = a.C / a.G, S = a.S, M = cg * S;
  constexpr bool kStore = ACT != kActNone;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / a.G, g = task % a.G;
    const T* xg = static_cast<const T*>(a.x) + task * M;
    const T* gyg = static_cast<const T*>(a.gy) + task * M;
    const float mean = a.mean[task], rstd = a.rstd[task];
    double m1 = 0.0, m2 = 0.0;
    for (int64_t j = 0; j < cg; ++j) {
      const int64_t c = g * cg + j;
      const Affine f = channel_affine(a, n, c, mean, rstd);
      double t1, t2;
      backward_row_sums<T, ACT, kStore>(xg + j * S, gyg + j * S, kStore ? scratch + j * S : nullptr, S, f.A, f.B,
                                        mean, &t1, &t2);
      t2 *= rstd;  // sum gz xhat
      s1[n * a.C + c] = t1;
      s2[n * a.C + c] = t2;
      const double k = channel_k(a, n, c);
      m1 += k * t1;
      m2 += k * t2;
    }
    if (!a.gx) continue;
    m1 /= static_cast<double>(M);
    m2 /= static_cast<double>(M);
    // gx = rstd (k gz - m1 - xhat m2) = k1 gz + k2 (x - mean) + k3
    const float k2 = static_cast<float>(-static_cast<double>(rstd) * rstd * m2);
    const float k3 = static_cast<float>(-static_cast<double>(rstd) * m1);
    T* gxg = static_cast<T*>(a.gx) + task * M;
    for (int64_t j = 0; j < cg; ++j) {
      const int64_t c = g * cg + j;
      const float k1 = rstd * channel_k(a, n, c);
      const T* FG_RESTRICT xr = xg + j * S;
      const float* FG_RESTRICT gzr = scratch + j * S;
      const T* FG_RESTRICT gyr = gyg + j * S;
      T* FG_RESTRICT out = gxg + j * S;
#pragma omp simd
      for (int64_t i = 0; i < S; ++i) {
        const float gz = kStore ? gzr[i] : to_float(gyr[i]);
        out[i] = from_float<T>(k1 * gz + k2 * (to_float(xr[i]) - mean) + k3);
      }
    }
  }
}

// ------------------------------------------------------------------------------- channels last
template <typename T>
FG_ALWAYS_INLINE void cl_stats(const GroupNormArgs& a, int64_t chunk, int64_t nchunks, int64_t begin, int64_t end,
                               double* partials) {
  const int64_t C = a.C;
  std::vector<float> buf(static_cast<size_t>(3 * C));
  float* FG_RESTRICT K = buf.data();
  float* FG_RESTRICT a1 = K + C;
  float* FG_RESTRICT a2 = a1 + C;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / nchunks, j = task % nchunks;
    const T* xn = static_cast<const T*>(a.x) + n * a.S * C;
    for (int64_t c = 0; c < C; ++c) K[c] = to_float(xn[c]);
    double* FG_RESTRICT p1 = partials + task * 2 * C;
    double* FG_RESTRICT p2 = p1 + C;
    for (int64_t c = 0; c < C; ++c) p1[c] = p2[c] = 0.0;
    const int64_t p_end = std::min(a.S, (j + 1) * chunk);
    for (int64_t p0 = j * chunk; p0 < p_end; p0 += kPixBlock) {
      const int64_t p1e = std::min(p_end, p0 + kPixBlock);
      for (int64_t c = 0; c < C; ++c) a1[c] = a2[c] = 0.0f;
      for (int64_t p = p0; p < p1e; ++p) {
        const T* FG_RESTRICT xp = xn + p * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float d = to_float(xp[c]) - K[c];
          a1[c] += d;
          a2[c] += d * d;
        }
      }
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        p1[c] += a1[c];
        p2[c] += a2[c];
      }
    }
  }
}

template <typename T, int ACT>
FG_ALWAYS_INLINE void cl_apply(const GroupNormArgs& a, int64_t chunk, int64_t nchunks, const float* Av,
                               const float* Bv, int64_t begin, int64_t end) {
  const int64_t C = a.C;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / nchunks, j = task % nchunks;
    const float* FG_RESTRICT A = Av + n * C;
    const float* FG_RESTRICT B = Bv + n * C;
    const int64_t p_end = std::min(a.S, (j + 1) * chunk);
    for (int64_t p = j * chunk; p < p_end; ++p) {
      const T* FG_RESTRICT xp = static_cast<const T*>(a.x) + (n * a.S + p) * C;
      T* FG_RESTRICT yp = static_cast<T*>(a.y) + (n * a.S + p) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yp[c] = from_float<T>(act_fwd<ACT>(A[c] * to_float(xp[c]) + B[c]));
    }
  }
}

// Per-channel A, B, mean (expanded from the groups) of sample n into abm (3 C floats).
FG_ALWAYS_INLINE void cl_channel_vectors(const GroupNormArgs& a, int64_t n, float* abm) {
  const int64_t C = a.C, cg = C / a.G;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t g = c / cg;
    const Affine f = channel_affine(a, n, c, a.mean[n * a.G + g], a.rstd[n * a.G + g]);
    abm[c] = f.A;
    abm[C + c] = f.B;
    abm[2 * C + c] = a.mean[n * a.G + g];
  }
}

template <typename T, int ACT>
FG_ALWAYS_INLINE void cl_backward_sums(const GroupNormArgs& a, int64_t chunk, int64_t nchunks, int64_t begin,
                                       int64_t end, double* partials) {
  const int64_t C = a.C;
  std::vector<float> buf(static_cast<size_t>(5 * C));
  float* FG_RESTRICT A = buf.data();
  float* FG_RESTRICT B = A + C;
  float* FG_RESTRICT Mc = B + C;
  float* FG_RESTRICT a1 = Mc + C;
  float* FG_RESTRICT a2 = a1 + C;
  int64_t have_n = -1;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / nchunks, j = task % nchunks;
    if (n != have_n) {
      cl_channel_vectors(a, n, A);
      have_n = n;
    }
    double* FG_RESTRICT p1 = partials + task * 2 * C;
    double* FG_RESTRICT p2 = p1 + C;
    for (int64_t c = 0; c < C; ++c) p1[c] = p2[c] = 0.0;
    const int64_t p_end = std::min(a.S, (j + 1) * chunk);
    for (int64_t p0 = j * chunk; p0 < p_end; p0 += kPixBlock) {
      const int64_t p1e = std::min(p_end, p0 + kPixBlock);
      for (int64_t c = 0; c < C; ++c) a1[c] = a2[c] = 0.0f;
      for (int64_t p = p0; p < p1e; ++p) {
        const T* FG_RESTRICT xp = static_cast<const T*>(a.x) + (n * a.S + p) * C;
        const T* FG_RESTRICT gp = static_cast<const T*>(a.gy) + (n * a.S + p) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float xv = to_float(xp[c]);
          float gz = to_float(gp[c]);
          if constexpr (ACT != kActNone) gz *= act_grad<ACT>(A[c] * xv + B[c]);
          a1[c] += gz;
          a2[c] += gz * (xv - Mc[c]);
        }
      }
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        p1[c] += a1[c];
        p2[c] += a2[c];
      }
    }
  }
}

template <typename T, int ACT>
FG_ALWAYS_INLINE void cl_backward_apply(const GroupNormArgs& a, int64_t chunk, int64_t nchunks, const float* k,
                                        int64_t begin, int64_t end) {
  const int64_t C = a.C, NC = a.N * a.C;
  std::vector<float> buf(static_cast<size_t>(3 * C));
  float* FG_RESTRICT A = buf.data();
  float* FG_RESTRICT B = A + C;
  int64_t have_n = -1;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / nchunks, j = task % nchunks;
    if (n != have_n) {
      cl_channel_vectors(a, n, A);
      have_n = n;
    }
    const float* FG_RESTRICT k1 = k + n * C;
    const float* FG_RESTRICT k2 = k1 + NC;
    const float* FG_RESTRICT k3 = k2 + NC;
    const float* FG_RESTRICT mc = k3 + NC;
    const int64_t p_end = std::min(a.S, (j + 1) * chunk);
    for (int64_t p = j * chunk; p < p_end; ++p) {
      const T* FG_RESTRICT xp = static_cast<const T*>(a.x) + (n * a.S + p) * C;
      const T* FG_RESTRICT gp = static_cast<const T*>(a.gy) + (n * a.S + p) * C;
      T* FG_RESTRICT op = static_cast<T*>(a.gx) + (n * a.S + p) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float xv = to_float(xp[c]);
        float gz = to_float(gp[c]);
        if constexpr (ACT != kActNone) gz *= act_grad<ACT>(A[c] * xv + B[c]);
        op[c] = from_float<T>(k1[c] * gz + k2[c] * (xv - mc[c]) + k3[c]);
      }
    }
  }
}

// ------------------------------------------------------------------------------- entry points
#define FG_ACT_SWITCH(act, F, ...)           \
  switch (act) {                             \
    case kActSilu: F<kActSilu>(__VA_ARGS__); break; \
    case kActGelu: F<kActGelu>(__VA_ARGS__); break; \
    default: F<kActNone>(__VA_ARGS__); break;       \
  }

template <typename T>
struct Impl {
  template <int ACT> static FG_ALWAYS_INLINE void fwd(const GroupNormArgs& a, int64_t b, int64_t e) {
    forward_nchw<T, ACT>(a, b, e);
  }
  template <int ACT> static FG_ALWAYS_INLINE void bwd(const GroupNormArgs& a, int64_t b, int64_t e, double* s1,
                                                       double* s2, float* sc) {
    backward_nchw<T, ACT>(a, b, e, s1, s2, sc);
  }
  template <int ACT> static FG_ALWAYS_INLINE void apply(const GroupNormArgs& a, int64_t ch, int64_t nc, const float* A,
                                                         const float* B, int64_t b, int64_t e) {
    cl_apply<T, ACT>(a, ch, nc, A, B, b, e);
  }
  template <int ACT> static FG_ALWAYS_INLINE void bsums(const GroupNormArgs& a, int64_t ch, int64_t nc, int64_t b,
                                                         int64_t e, double* p) {
    cl_backward_sums<T, ACT>(a, ch, nc, b, e, p);
  }
  template <int ACT> static FG_ALWAYS_INLINE void bapply(const GroupNormArgs& a, int64_t ch, int64_t nc,
                                                          const float* k, int64_t b, int64_t e) {
    cl_backward_apply<T, ACT>(a, ch, nc, k, b, e);
  }
};

#define FG_GN_CLONES(SUF, T)                                                                                        \
  FG_CLONES void fwd_nchw_##SUF(const GroupNormArgs& a, int64_t b, int64_t e) {                                    \
    FG_ACT_SWITCH(a.act, Impl<T>::template fwd, a, b, e)                                                            \
  }                                                                                                                \
  FG_CLONES void bwd_nchw_##SUF(const GroupNormArgs& a, int64_t b, int64_t e, double* s1, double* s2, float* sc) { \
    FG_ACT_SWITCH(a.act, Impl<T>::template bwd, a, b, e, s1, s2, sc)                                                \
  }                                                                                                                \
  FG_CLONES void cl_stats_##SUF(const GroupNormArgs& a, int64_t ch, int64_t nc, int64_t b, int64_t e, double* p) { \
    cl_stats<T>(a, ch, nc, b, e, p);                                                                               \
  }                                                                                                                \
  FG_CLONES void cl_apply_##SUF(const GroupNormArgs& a, int64_t ch, int64_t nc, const float* A, const float* B,    \
                                int64_t b, int64_t e) {                                                            \
    FG_ACT_SWITCH(a.act, Impl<T>::template apply, a, ch, nc, A, B, b, e)                                            \
  }                                                                                                                \
  FG_CLONES void cl_bsums_##SUF(const GroupNormArgs& a, int64_t ch, int64_t nc, int64_t b, int64_t e, double* p) { \
    FG_ACT_SWITCH(a.act, Impl<T>::template bsums, a, ch, nc, b, e, p)                                               \
  }                                                                                                                \
  FG_CLONES void cl_bapply_##SUF(const GroupNormArgs& a, int64_t ch, int64_t nc, const float* k, int64_t b,        \
                                 int64_t e) {                                                                      \
    FG_ACT_SWITCH(a.act, Impl<T>::template bapply, a, ch, nc, k, b, e)                                              \
  }

FG_GN_CLONES(f32, float)
FG_GN_CLONES(f16, f16_t)
FG_GN_CLONES(bf16, bf16_t)

}  // namespace

void group_norm_forward_nchw(DType dt, const GroupNormArgs& a, int64_t begin, int64_t end) {
  FG_DT_DISPATCH(dt, fwd_nchw, a, begin, end)
}

void group_norm_backward_nchw(DType dt, const GroupNormArgs& a, int64_t begin, int64_t end, double* s1, double* s2,
                              float* scratch) {
  FG_DT_DISPATCH(dt, bwd_nchw, a, begin, end, s1, s2, scratch)
}

void group_norm_cl_stats(DType dt, const GroupNormArgs& a, int64_t chunk, int64_t nchunks, int64_t begin,
                         int64_t end, double* partials) {
  FG_DT_DISPATCH(dt, cl_stats, a, chunk, nchunks, begin, end, partials)
}

void group_norm_cl_apply(DType dt, const GroupNormArgs& a, int64_t chunk, int64_t nchunks, const float* A,
                         const float* B, int64_t begin, int64_t end) {
  FG_DT_DISPATCH(dt, cl_apply, a, chunk, nchunks, A, B, begin, end)
}

void group_norm_cl_backward_sums(DType dt, const GroupNormArgs& a, int64_t chunk, int64_t nchunks, int64_t begin,
                                 int64_t end, double* partials) {
  FG_DT_DISPATCH(dt, cl_bsums, a, chunk, nchunks, begin, end, partials)
}

void group_norm_cl_backward_apply(DType dt, const GroupNormArgs& a, int64_t chunk, int64_t nchunks, const float* k,
                                  int64_t begin, int64_t end) {
  FG_DT_DISPATCH(dt, cl_bapply, a, chunk, nchunks, k, begin, end)
}

// Merge in task order (fixed by the shape): the result does not depend on the thread count.
void group_norm_cl_finish_stats(DType dt, const GroupNormArgs& a, int64_t nchunks, const double* partials, float* A,
                                float* B) {
  const int64_t C = a.C, G = a.G, cg = C / G, S = a.S;
  const double M = static_cast<double>(cg * S);
  std::vector<double> s1(static_cast<size_t>(C)), s2(static_cast<size_t>(C));
  std::vector<float> K(static_cast<size_t>(C));
  for (int64_t n = 0; n < a.N; ++n) {
    std::fill(s1.begin(), s1.end(), 0.0);
    std::fill(s2.begin(), s2.end(), 0.0);
    for (int64_t j = 0; j < nchunks; ++j) {
      const double* p = partials + (n * nchunks + j) * 2 * C;
      for (int64_t c = 0; c < C; ++c) {
        s1[c] += p[c];
        s2[c] += p[C + c];
      }
    }
    // the shifts K_c = x[n, 0, c], read back as the stats kernel did
    const void* x0 = static_cast<const char*>(a.x) +
                     n * S * C * (dt == DType::Float32 ? 4 : 2);
    for (int64_t c = 0; c < C; ++c) {
      switch (dt) {
        case DType::Float16: K[c] = to_float(static_cast<const f16_t*>(x0)[c]); break;
        case DType::BFloat16: K[c] = to_float(static_cast<const bf16_t*>(x0)[c]); break;
        default: K[c] = static_cast<const float*>(x0)[c]; break;
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      double sum = 0.0;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) sum += s1[c] + static_cast<double>(S) * K[c];
      const double mean = sum / M;
      double sq = 0.0;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        const double d = mean - K[c];  // sum (x - mean)^2 = sum (x - K)^2 - 2 d sum (x - K) + S d^2
        sq += s2[c] - 2.0 * d * s1[c] + static_cast<double>(S) * d * d;
      }
      const double var = std::max(sq / M, 0.0);
      const float meanf = static_cast<float>(mean);
      const float rstd = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(a.eps)));
      a.mean[n * G + g] = meanf;
      a.rstd[n * G + g] = rstd;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        const Affine f = channel_affine(a, n, c, meanf, rstd);
        A[n * C + c] = f.A;
        B[n * C + c] = f.B;
      }
    }
  }
}

void group_norm_cl_finish_backward(const GroupNormArgs& a, int64_t nchunks, const double* partials, double* s1,
                                   double* s2, float* k) {
  const int64_t C = a.C, G = a.G, cg = C / G, NC = a.N * C;
  const double M = static_cast<double>(cg * a.S);
  for (int64_t n = 0; n < a.N; ++n) {
    double* t1 = s1 + n * C;
    double* t2 = s2 + n * C;
    for (int64_t c = 0; c < C; ++c) t1[c] = t2[c] = 0.0;
    for (int64_t j = 0; j < nchunks; ++j) {
      const double* p = partials + (n * nchunks + j) * 2 * C;
      for (int64_t c = 0; c < C; ++c) {
        t1[c] += p[c];
        t2[c] += p[C + c];
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      const float mean = a.mean[n * G + g], rstd = a.rstd[n * G + g];
      double m1 = 0.0, m2 = 0.0;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        t2[c] *= rstd;  // sum gz xhat
        const double kc = channel_k(a, n, c);
        m1 += kc * t1[c];
        m2 += kc * t2[c];
      }
      m1 /= M;
      m2 /= M;
      const float k2 = static_cast<float>(-static_cast<double>(rstd) * rstd * m2);
      const float k3 = static_cast<float>(-static_cast<double>(rstd) * m1);
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        k[n * C + c] = rstd * channel_k(a, n, c);
        k[NC + n * C + c] = k2;
        k[2 * NC + n * C + c] = k3;
        k[3 * NC + n * C + c] = mean;
      }
    }
  }
}

}  // namespace cpu
}  // namespace fastgen
