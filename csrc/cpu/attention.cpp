// fastgen's tiled CPU attention forward (see attention.h).
//
// One task = (b, h, block of kBM query rows). It keeps, for its rows, an fp32 output accumulator O
// (kBM x Dv), the running max m and running sum l of the online softmax, and walks the keys in
// tiles of kBN:
//   S^T = K_tile (q scale)^T          GEMM 1, (bn x D) (D x kBM)
//   S^T += mask^T;  m' = max(m, max_j S);  P^T = exp(S^T - m');  alpha = exp(m - m')
//   l = alpha l + sum_j P;  O = alpha O + P V_tile      GEMM 2, (kBM x bn) (bn x Dv)
// and finally writes out = O / l, lse = m + log l. The Nq x Nk matrix never exists.
//
// Why S is kept transposed ([key][query]): GEMM 1 then broadcasts K elements from K's own rows and
// loads rows of q^T (packed once per task), GEMM 2 broadcasts P elements and loads V's own rows, so
// neither K nor V is ever transposed (fp32 K and V are read in place, any row stride), D needs no
// padding (it is the broadcast loop), and the softmax reductions over keys are element-wise vector
// max / add across S^T's rows, with no horizontal reductions.
//
// ISA: build flags are portable, so the kernel is compiled three times (x86-64-v4 AVX-512,
// x86-64-v3 AVX2, baseline) with GCC target attributes and the best one is picked at run time.
// Unlike the other kernels (one source, cloned per ISA), the register blocking differs per ISA
// (32 zmm vs 16 ymm / xmm registers), so each variant instantiates the same templates with its own
// vector width and micro-tile shape (struct Cfg*). The micro-kernels use GCC vector types; every
// helper is always_inline so it compiles at its caller's ISA.
#include "attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "fastgen/convert.h"
#include "fastgen/vmath.h"
#include "stream.h"  // FG_LAMBDA_INLINE

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FASTGEN_NO_CLONES)
#define FG_ATTN_MULTI_ISA 1
#define FG_TARGET_V4 __attribute__((target("arch=x86-64-v4,prefer-vector-width=512")))
#define FG_TARGET_V3 __attribute__((target("arch=x86-64-v3")))
#else
#define FG_ATTN_MULTI_ISA 0
#endif

namespace fastgen {
namespace cpu {
namespace {

constexpr int64_t kBM = 64;   // query rows per task: q^T (D x 64 fp32) stays in L1 during GEMM 1
constexpr int64_t kBN = 96;   // keys per tile (a multiple of every MR1): S^T and the K / V tiles in L1 / L2
constexpr int64_t kPad = 16;  // query blocks and Dv are padded to 16 floats (a multiple of every W)

constexpr int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
constexpr float kInf = std::numeric_limits<float>::infinity();

// Per-ISA register blocking. GEMM 1: MR1 key rows x NV1 vectors of query columns (MR1 NV1
// accumulators + NV1 loads + 1 broadcast must fit the register file); GEMM 2: MR2 query rows x up
// to NV2 vectors of Dv.
struct CfgV4 { static constexpr int W = 16, MR1 = 6, NV1 = 4, MR2 = 4, NV2 = 6; };  // 32 zmm
struct CfgV3 { static constexpr int W = 8, MR1 = 6, NV1 = 2, MR2 = 4, NV2 = 3; };   // 16 ymm
struct CfgV0 { static constexpr int W = 4, MR1 = 6, NV1 = 2, MR2 = 4, NV2 = 3; };   // 16 xmm

template <int W>
struct VecT {
  typedef float type __attribute__((vector_size(W * 4), aligned(4)));
};

// e^x for x <= 0 (scores minus their running max) with e^-inf = 0 exactly: masked keys must add
// nothing (exp_act alone saturates at e^-87). NaN stays NaN.
FG_ALWAYS_INLINE float exp_nonpos(float x) { return x < -87.0f ? 0.0f : exp_act(x); }

// f(std::integral_constant<int, n>) for a run-time 1 <= n <= N: the tails of the micro-tile loops.
template <int N, typename F>
FG_ALWAYS_INLINE void with_const(int n, const F& f) {
  if constexpr (N >= 1) {
    if (n == N) f(std::integral_constant<int, N>{});
    else with_const<N - 1>(n, f);
  }
}

// ------------------------------------------------------------------------------- GEMM 1: S^T = K q^T
// S[r][i] = sum_d K[r][d] qT[d][i], R key rows x NV vectors of query columns.
template <int W, int R, int NV>
FG_ALWAYS_INLINE void qk_micro(const float* FG_RESTRICT K, int64_t ldk, const float* FG_RESTRICT qT, int64_t D,
                               float* FG_RESTRICT S) {
  using V = typename VecT<W>::type;
  V acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  for (int64_t d = 0; d < D; ++d) {
    V b[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) std::memcpy(&b[v], qT + d * kBM + v * W, sizeof(V));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const V a = K[r * ldk + d] - V{};  // a broadcast (x - 0 is exact, x + 0 is not for -0)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) std::memcpy(S + r * kBM + v * W, &acc[r][v], sizeof(V));
}

// S^T rows [0, bn), query columns [0, ni) (ni a multiple of W).
template <class C>
FG_ALWAYS_INLINE void qk_tile(const float* K, int64_t ldk, int64_t bn, const float* qT, int64_t D, int64_t ni,
                              float* S) {
  constexpr int W = C::W;
  const int64_t nvec = ni / W;
  for (int64_t j0 = 0; j0 < bn; j0 += C::MR1) {
    const int rows = static_cast<int>(std::min<int64_t>(C::MR1, bn - j0));
    const float* Kj = K + j0 * ldk;
    for (int64_t v0 = 0; v0 < nvec; v0 += C::NV1) {
      const int nv = static_cast<int>(std::min<int64_t>(C::NV1, nvec - v0));
      const float* q = qT + v0 * W;
      float* s = S + j0 * kBM + v0 * W;
      if (rows == C::MR1 && nv == C::NV1) {
        qk_micro<W, C::MR1, C::NV1>(Kj, ldk, q, D, s);
      } else {
        with_const<C::MR1>(rows, [&](auto r) FG_LAMBDA_INLINE {
          with_const<C::NV1>(nv, [&](auto n) FG_LAMBDA_INLINE {
            qk_micro<W, decltype(r)::value, decltype(n)::value>(Kj, ldk, q, D, s);
          });
        });
      }
    }
  }
}

// ------------------------------------------------------------------------------- GEMM 2: O = alpha O + P V
// O[r][c] = alpha[r] O[r][c] + sum_j P^T[j][r] V[j][c], R query rows x NV vectors of Dv.
template <int W, int R, int NV>
FG_ALWAYS_INLINE void pv_micro(const float* FG_RESTRICT P, const float* FG_RESTRICT Vt, int64_t ldv, int64_t bn,
                               const float* FG_RESTRICT alpha, float* FG_RESTRICT O, int64_t ldo) {
  using V = typename VecT<W>::type;
  V acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const V s = alpha[r] - V{};
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      std::memcpy(&acc[r][v], O + r * ldo + v * W, sizeof(V));
      acc[r][v] *= s;
    }
  }
  for (int64_t j = 0; j < bn; ++j) {
    V b[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) std::memcpy(&b[v], Vt + j * ldv + v * W, sizeof(V));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const V a = P[j * kBM + r] - V{};
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) std::memcpy(O + r * ldo + v * W, &acc[r][v], sizeof(V));
}

// Query rows [0, nrows) (a multiple of MR2), Dv columns [0, dvp) (a multiple of W). The Dv chunk is
// the outer loop so its slice of the V tile stays in L1 while the row blocks stream P.
template <class C>
FG_ALWAYS_INLINE void pv_tile(const float* P, const float* Vt, int64_t ldv, int64_t bn, const float* alpha, float* O,
                              int64_t ldo, int64_t nrows) {
  constexpr int W = C::W;
  const int64_t nvec = ldo / W;
  for (int64_t c0 = 0; c0 < nvec; c0 += C::NV2) {
    const int nv = static_cast<int>(std::min<int64_t>(C::NV2, nvec - c0));
    with_const<C::NV2>(nv, [&](auto n) FG_LAMBDA_INLINE {
      for (int64_t i0 = 0; i0 < nrows; i0 += C::MR2)
        pv_micro<W, C::MR2, decltype(n)::value>(P + i0, Vt + c0 * W, ldv, bn, alpha + i0, O + i0 * ldo + c0 * W, ldo);
    });
  }
}

// ------------------------------------------------------------------------------- one task
// Per-thread scratch (fp32, each piece 64-byte aligned).
struct Layout {
  int64_t qT, O, S, Kc, Vc, m, l, alpha, base, rsum, total;
};

Layout layout(const AttentionArgs& a) {
  const int64_t dvp = round_up(a.Dv, kPad);
  Layout L{};
  int64_t off = 0;
  auto take = [&](int64_t n) {
    const int64_t o = off;
    off += round_up(std::max<int64_t>(n, 1), 16);
    return o;
  };
  L.qT = take(a.D * kBM);
  L.O = take(kBM * dvp);
  L.S = take(kBN * kBM);
  L.Kc = take(kBN * a.D);
  L.Vc = take(kBN * dvp);
  L.m = take(kBM);
  L.l = take(kBM);
  L.alpha = take(kBM);
  L.base = take(kBM);
  L.rsum = take(kBM);
  L.total = off;
  return L;
}

using QkFn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, int64_t, float*);
using PvFn = void (*)(const float*, const float*, int64_t, int64_t, const float*, float*, int64_t, int64_t);

template <typename T>
FG_ALWAYS_INLINE void forward_task(const AttentionArgs& a, const Layout& L, int64_t task, float* scratch, QkFn qk,
                                   PvFn pv) {
  const int64_t nqb = (a.Nq + kBM - 1) / kBM;
  const int64_t bh = task / nqb, i0 = (task % nqb) * kBM, b = bh / a.H, h = bh % a.H;
  const int64_t nq = std::min(kBM, a.Nq - i0), ni = round_up(nq, kPad);
  const int64_t D = a.D, Dv = a.Dv, dvp = round_up(Dv, kPad);
  const int64_t sq = a.q_stride[2], sk = a.k_stride[2], sv = a.v_stride[2];
  const T* q = static_cast<const T*>(a.q) + b * a.q_stride[0] + h * a.q_stride[1] + i0 * sq;
  const T* k = static_cast<const T*>(a.k) + b * a.k_stride[0] + h * a.k_stride[1];
  const T* v = static_cast<const T*>(a.v) + b * a.v_stride[0] + h * a.v_stride[1];
  const int64_t* ms = a.mask_stride;
  const T* mask = a.mask ? static_cast<const T*>(a.mask) + b * ms[0] + h * ms[1] + i0 * ms[2] : nullptr;

  float* FG_RESTRICT qT = scratch + L.qT;
  float* FG_RESTRICT O = scratch + L.O;
  float* FG_RESTRICT S = scratch + L.S;
  float* FG_RESTRICT Kc = scratch + L.Kc;
  float* FG_RESTRICT Vc = scratch + L.Vc;
  float* FG_RESTRICT m = scratch + L.m;
  float* FG_RESTRICT l = scratch + L.l;
  float* FG_RESTRICT alpha = scratch + L.alpha;
  float* FG_RESTRICT base = scratch + L.base;
  float* FG_RESTRICT rsum = scratch + L.rsum;

  // q^T, pre-multiplied by the scale (S then needs no multiply); padding columns are 0.
  const float scale = a.scale;
  for (int64_t i = 0; i < nq; ++i)
    for (int64_t d = 0; d < D; ++d) qT[d * kBM + i] = scale * to_float(q[i * sq + d]);
  for (int64_t d = 0; d < D; ++d)
    for (int64_t i = nq; i < ni; ++i) qT[d * kBM + i] = 0.0f;
  for (int64_t i = 0; i < ni; ++i) {
    m[i] = -kInf;
    l[i] = 0.0f;
  }
  std::memset(O, 0, sizeof(float) * static_cast<size_t>(ni * dvp));  // alpha = 0 at the first tile: O must be finite

  constexpr bool kF32 = std::is_same_v<T, float>;
  const bool v_in_place = kF32 && Dv % kPad == 0;
  const int64_t nrows = round_up(nq, 4);  // GEMM 2 rows (every MR2 divides 4)
  for (int64_t j0 = 0; j0 < a.Nk; j0 += kBN) {
    const int64_t bn = std::min(kBN, a.Nk - j0);
    // K and V tiles as fp32 rows: fp32 in place, 16-bit types converted once per tile, V padded
    // with zero columns to a whole number of vectors.
    const float* Kt;
    int64_t ldk;
    if constexpr (kF32) {
      Kt = k + j0 * sk;
      ldk = sk;
    } else {
      for (int64_t j = 0; j < bn; ++j) {
        const T* FG_RESTRICT src = k + (j0 + j) * sk;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) Kc[j * D + d] = to_float(src[d]);
      }
      Kt = Kc;
      ldk = D;
    }
    const float* Vt;
    int64_t ldv;
    if (v_in_place) {
      Vt = reinterpret_cast<const float*>(v + j0 * sv);
      ldv = sv;
    } else {
      for (int64_t j = 0; j < bn; ++j) {
        const T* FG_RESTRICT src = v + (j0 + j) * sv;
        float* FG_RESTRICT dst = Vc + j * dvp;
#pragma omp simd
        for (int64_t c = 0; c < Dv; ++c) dst[c] = to_float(src[c]);
        for (int64_t c = Dv; c < dvp; ++c) dst[c] = 0.0f;
      }
      Vt = Vc;
      ldv = dvp;
    }

    qk(Kt, ldk, bn, qT, D, ni, S);

    if (mask) {
      if (ms[2] == 0) {  // the same mask row for every query (key padding): one value per row of S^T
        for (int64_t j = 0; j < bn; ++j) {
          const float mj = to_float(mask[(j0 + j) * ms[3]]);
#pragma omp simd
          for (int64_t i = 0; i < ni; ++i) S[j * kBM + i] += mj;
        }
      } else {
        for (int64_t i = 0; i < nq; ++i) {
          const T* FG_RESTRICT mrow = mask + i * ms[2] + j0 * ms[3];
          for (int64_t j = 0; j < bn; ++j) S[j * kBM + i] += to_float(mrow[j * ms[3]]);
        }
      }
    }

    // Online softmax over the tile's keys, vectorised across queries.
#pragma omp simd
    for (int64_t i = 0; i < ni; ++i) base[i] = m[i];
    for (int64_t j = 0; j < bn; ++j) {
      const float* FG_RESTRICT s = S + j * kBM;
#pragma omp simd
      for (int64_t i = 0; i < ni; ++i) base[i] = std::max(base[i], s[i]);
    }
#pragma omp simd
    for (int64_t i = 0; i < ni; ++i) {
      const float mn = base[i];
      const float bs = mn == -kInf ? 0.0f : mn;  // all keys so far masked: P = e^-inf = 0, not NaN
      alpha[i] = exp_nonpos(m[i] - bs);
      m[i] = mn;
      base[i] = bs;
      rsum[i] = 0.0f;
    }
    for (int64_t j = 0; j < bn; ++j) {
      float* FG_RESTRICT s = S + j * kBM;
#pragma omp simd
      for (int64_t i = 0; i < ni; ++i) {
        const float p = exp_nonpos(s[i] - base[i]);
        s[i] = p;
        rsum[i] += p;
      }
    }
#pragma omp simd
    for (int64_t i = 0; i < ni; ++i) l[i] = alpha[i] * l[i] + rsum[i];

    pv(S, Vt, ldv, bn, alpha, O, dvp, nrows);
  }

  T* out = static_cast<T*>(a.out) + (bh * a.Nq + i0) * Dv;
  float* lse = a.lse + bh * a.Nq + i0;
  for (int64_t i = 0; i < nq; ++i) {
    const float li = l[i];
    const float inv = li > 0.0f ? 1.0f / li : 0.0f;  // fully masked row: out = 0
    const float* FG_RESTRICT o = O + i * dvp;
    T* FG_RESTRICT dst = out + i * Dv;
#pragma omp simd
    for (int64_t c = 0; c < Dv; ++c) dst[c] = from_float<T>(o[c] * inv);
    lse[i] = li > 0.0f ? m[i] + std::log(li) : kInf;
  }
}

template <typename T>
FG_ALWAYS_INLINE void forward_range(const AttentionArgs& a, int64_t begin, int64_t end, float* scratch, QkFn qk,
                                    PvFn pv) {
  const Layout L = layout(a);
  for (int64_t t = begin; t < end; ++t) forward_task<T>(a, L, t, scratch, qk, pv);
}

// One variant per ISA level: the GEMM tiles (not inlined: one copy per level, shared by the dtypes)
// and the dtype entry points.
#define FG_ATTN_VARIANT(TARGET, SUF, CFG)                                                                         \
  TARGET __attribute__((noinline)) void qk_##SUF(const float* K, int64_t ldk, int64_t bn, const float* qT,      \
                                                 int64_t D, int64_t ni, float* S) {                            \
    qk_tile<CFG>(K, ldk, bn, qT, D, ni, S);                                                                     \
  }                                                                                                             \
  TARGET __attribute__((noinline)) void pv_##SUF(const float* P, const float* Vt, int64_t ldv, int64_t bn,      \
                                                 const float* alpha, float* O, int64_t ldo, int64_t nrows) {   \
    pv_tile<CFG>(P, Vt, ldv, bn, alpha, O, ldo, nrows);                                                         \
  }                                                                                                             \
  TARGET void forward_##SUF(DType dt, const AttentionArgs& a, int64_t begin, int64_t end, float* scratch) {      \
    switch (dt) {                                                                                               \
      case DType::Float32: forward_range<float>(a, begin, end, scratch, qk_##SUF, pv_##SUF); break;             \
      case DType::Float16: forward_range<f16_t>(a, begin, end, scratch, qk_##SUF, pv_##SUF); break;             \
      case DType::BFloat16: forward_range<bf16_t>(a, begin, end, scratch, qk_##SUF, pv_##SUF); break;           \
      default: break; /* the torch layer rejects other dtypes */                                                \
    }                                                                                                           \
  }

#define FG_NO_TARGET
FG_ATTN_VARIANT(FG_NO_TARGET, v0, CfgV0)
#if FG_ATTN_MULTI_ISA
FG_ATTN_VARIANT(FG_TARGET_V3, v3, CfgV3)
FG_ATTN_VARIANT(FG_TARGET_V4, v4, CfgV4)
#endif

}  // namespace

int attention_cpu_level() {
#if FG_ATTN_MULTI_ISA
  static const int level = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("x86-64-v4") ? 2 : (__builtin_cpu_supports("x86-64-v3") ? 1 : 0);
  }();
  return level;
#else
  return 0;
#endif
}

int64_t attention_block_rows() { return kBM; }

int64_t attention_num_tasks(const AttentionArgs& a) { return a.B * a.H * ((a.Nq + kBM - 1) / kBM); }

int64_t attention_scratch_floats(const AttentionArgs& a) { return layout(a).total; }

void attention_forward(DType dt, const AttentionArgs& a, int level, int64_t begin, int64_t end, float* scratch) {
  level = std::min(level, attention_cpu_level());
#if FG_ATTN_MULTI_ISA
  if (level >= 2) return forward_v4(dt, a, begin, end, scratch);
  if (level == 1) return forward_v3(dt, a, begin, end, scratch);
#endif
  forward_v0(dt, a, begin, end, scratch);
}

}  // namespace cpu
}  // namespace fastgen
