// fastgen's tiled CPU attention, forward and fused backward (see attention.h).
//
// One task = (b, h, block of kBM query rows). It keeps, for its rows, an fp32 output accumulator O
// (kBM x Dv), the running max m and running sum l of the online softmax, and walks the keys in
// tiles of kBN:
//   S^T = K_tile (q scale)^T          GEMM 1, (bn x D) (D x kBM)
//   S^T += mask^T;  m' = max(m, max_j S);  P^T = exp(S^T - m');  alpha = exp(m - m')
//   l = alpha l + sum_j P;  O = alpha O + P V_tile      GEMM 2, (kBM x bn) (bn x Dv)
// and finally writes out = O / l, lse = m + log l. The Nq x Nk matrix never exists.
//
// The backward (one task per (b, h)) packs the head's queries once (scale q and dO as rows and
// per-block transposes, Delta = rowsum(dO out)), then for each key tile and each query block:
//   S^T = K (q scale)^T;  P^T = exp(S^T + mask^T - lse);  dP^T = V dO^T;  dS^T = P^T (dP^T - Delta)
//   dV += P^T dO;  dK += dS^T (q scale);  dQ += dS K  (dQ for the whole head stays in fp32 scratch)
// -- five GEMMs of the same micro-kernel family, with no transposed copies of K, V, P or dS.
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

// Per-ISA register blocking (MR NV accumulators + NV loads + 1 broadcast must fit the register
// file). "rows" GEMMs (N = a block of queries: S^T, dP^T): MR1 rows x NV1 vectors; "cols" GEMMs
// (N = a head dim: O, dV, dK, dQ): MR2 rows x up to NV2 vectors.
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

// ------------------------------------------------------------------------------- GEMM micro-kernels
// Every product of the forward and backward is C (M x N) <- A (M x K) B (K x N) with B's rows
// contiguous (vector loads) and A read one element at a time (broadcasts) at A[r sar + k sak], so
// either A or A^T can be a stored tile without a transpose. INIT says how C starts:
enum : int { kSet = 0, kAcc = 1, kScaleAcc = 2 };  // C = AB, C += AB, C = rs[r] C + AB

template <int W, int R, int NV, int INIT>
FG_ALWAYS_INLINE void gemm_micro(const float* FG_RESTRICT A, int64_t sar, int64_t sak, const float* FG_RESTRICT B,
                                 int64_t ldb, int64_t K, float* FG_RESTRICT C, int64_t ldc,
                                 const float* FG_RESTRICT rs) {
  using V = typename VecT<W>::type;
  V acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      if constexpr (INIT == kSet) {
        acc[r][v] = V{};
      } else {
        std::memcpy(&acc[r][v], C + r * ldc + v * W, sizeof(V));
        if constexpr (INIT == kScaleAcc) acc[r][v] *= rs[r] - V{};
      }
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    V b[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) std::memcpy(&b[v], B + k * ldb + v * W, sizeof(V));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const V a = A[r * sar + k * sak] - V{};  // a broadcast (x - 0 is exact, x + 0 is not for -0)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) std::memcpy(C + r * ldc + v * W, &acc[r][v], sizeof(V));
}

// C (M x N, N a multiple of W) in MR x NVMAX-vector tiles plus tails. Column chunks are the outer
// loop, so the chunk of B (a K x NVMAX W panel) stays in L1 while the row blocks stream A.
template <int W, int MR, int NVMAX, int INIT>
FG_ALWAYS_INLINE void gemm(const float* A, int64_t sar, int64_t sak, const float* B, int64_t ldb, int64_t K, float* C,
                           int64_t ldc, const float* rs, int64_t M, int64_t N) {
  const int64_t nvec = N / W;
  for (int64_t c0 = 0; c0 < nvec; c0 += NVMAX) {
    const int nv = static_cast<int>(std::min<int64_t>(NVMAX, nvec - c0));
    with_const<NVMAX>(nv, [&](auto n) FG_LAMBDA_INLINE {
      constexpr int NVc = decltype(n)::value;
      const float* Bc = B + c0 * W;
      float* Cc = C + c0 * W;
      int64_t r0 = 0;
      for (; r0 + MR <= M; r0 += MR)
        gemm_micro<W, MR, NVc, INIT>(A + r0 * sar, sar, sak, Bc, ldb, K, Cc + r0 * ldc, ldc, rs ? rs + r0 : rs);
      if (r0 < M) {
        with_const<MR - 1>(static_cast<int>(M - r0), [&](auto r) FG_LAMBDA_INLINE {
          gemm_micro<W, decltype(r)::value, NVc, INIT>(A + r0 * sar, sar, sak, Bc, ldb, K, Cc + r0 * ldc, ldc,
                                                       rs ? rs + r0 : rs);
        });
      }
    });
  }
}

// The GEMMs of one ISA level (not inlined: one copy per level, shared by the dtypes and passes).
// "rows" blocking (MR1 x NV1): N is a block of queries (S^T, dP^T); "cols" (MR2 x NV2): N is a
// head dim (O, dV, dK, dQ).
struct Gemms {
  using Fn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, int64_t, float*, int64_t, const float*,
                      int64_t, int64_t);
  Fn set_rows, acc_cols, scale_acc_cols;
};

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

// S^T[j][i] += mask[i][j0 + j] for the tile (mask at the task's first query row).
template <typename T>
FG_ALWAYS_INLINE void add_mask(float* FG_RESTRICT S, const T* FG_RESTRICT mask, const int64_t* ms, int64_t j0,
                               int64_t bn, int64_t nq, int64_t ni) {
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

template <typename T>
FG_ALWAYS_INLINE void forward_task(const AttentionArgs& a, const Layout& L, int64_t task, float* scratch,
                                   const Gemms& g) {
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

    g.set_rows(Kt, ldk, 1, qT, kBM, D, S, kBM, nullptr, bn, ni);  // S^T = K (scale q)^T

    if (mask) add_mask(S, mask, ms, j0, bn, nq, ni);

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

    g.scale_acc_cols(S, 1, kBM, Vt, ldv, bn, O, dvp, alpha, nrows, dvp);  // O = alpha O + P V
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
FG_ALWAYS_INLINE void forward_range(const AttentionArgs& a, int64_t begin, int64_t end, float* scratch,
                                    const Gemms& g) {
  const Layout L = layout(a);
  for (int64_t t = begin; t < end; ++t) forward_task<T>(a, L, t, scratch, g);
}


// ------------------------------------------------------------------------------- backward
struct BwdLayout {
  int64_t qT, qs, dOT, dO, delta, lse, dQ, Kc, Vc, dK, dV, P, dP, total;
};

BwdLayout bwd_layout(const AttentionBackwardArgs& a) {
  const int64_t nqp = round_up(std::max<int64_t>(a.Nq, 1), kBM);
  const int64_t Dp = round_up(a.D, kPad), dvp = round_up(a.Dv, kPad);
  BwdLayout L{};
  int64_t off = 0;
  auto take = [&](int64_t n) {
    const int64_t o = off;
    off += round_up(std::max<int64_t>(n, 1), 16);
    return o;
  };
  L.qT = take(nqp * a.D);   // per query block: (scale q)^T, D x kBM
  L.qs = take(nqp * Dp);    // scale q, rows
  L.dOT = take(nqp * a.Dv);  // per query block: dO^T, Dv x kBM
  L.dO = take(nqp * dvp);   // dO, rows
  L.delta = take(nqp);
  L.lse = take(nqp);
  L.dQ = take(nqp * Dp);
  L.Kc = take(kBN * Dp);
  L.Vc = take(kBN * dvp);
  L.dK = take(kBN * Dp);
  L.dV = take(kBN * dvp);
  L.P = take(kBN * kBM);
  L.dP = take(kBN * kBM);
  L.total = off;
  return L;
}

// rows [0, n) of src (row stride ld) as fp32 rows of width wp (zero padded from w), optionally scaled
template <typename T>
FG_ALWAYS_INLINE void load_rows(float* FG_RESTRICT dst, const T* FG_RESTRICT src, int64_t ld, int64_t n, int64_t w,
                                int64_t wp, float scale) {
  for (int64_t r = 0; r < n; ++r) {
    const T* FG_RESTRICT s = src + r * ld;
    float* FG_RESTRICT d = dst + r * wp;
#pragma omp simd
    for (int64_t c = 0; c < w; ++c) d[c] = scale * to_float(s[c]);
    for (int64_t c = w; c < wp; ++c) d[c] = 0.0f;
  }
}

// rows of fp32 src (row stride wp) times scale into storage rows of width w (contiguous)
template <typename T>
FG_ALWAYS_INLINE void store_rows(T* FG_RESTRICT dst, const float* FG_RESTRICT src, int64_t n, int64_t w, int64_t wp,
                                 float scale) {
  for (int64_t r = 0; r < n; ++r) {
#pragma omp simd
    for (int64_t c = 0; c < w; ++c) dst[r * w + c] = from_float<T>(scale * src[r * wp + c]);
  }
}

// per query block: the block's rows (kBM x w, row stride wp) transposed into w x kBM
FG_ALWAYS_INLINE void transpose_blocks(float* FG_RESTRICT dst, const float* FG_RESTRICT rows, int64_t nqb, int64_t w,
                                       int64_t wp) {
  for (int64_t qb = 0; qb < nqb; ++qb) {
    const float* FG_RESTRICT r = rows + qb * kBM * wp;
    float* FG_RESTRICT d = dst + qb * w * kBM;
    for (int64_t c = 0; c < w; ++c)
#pragma omp simd
      for (int64_t i = 0; i < kBM; ++i) d[c * kBM + i] = r[i * wp + c];
  }
}

template <typename T>
FG_ALWAYS_INLINE void backward_task(const AttentionBackwardArgs& a, const BwdLayout& L, int64_t bh, float* scratch,
                                    const Gemms& g) {
  const int64_t b = bh / a.H, h = bh % a.H;
  const int64_t Nq = a.Nq, Nk = a.Nk, D = a.D, Dv = a.Dv;
  const int64_t nqb = (Nq + kBM - 1) / kBM, nqp = nqb * kBM;
  const int64_t Dp = round_up(D, kPad), dvp = round_up(Dv, kPad);
  auto base = [&](const void* p, const int64_t* st) {
    return static_cast<const T*>(p) + b * st[0] + h * st[1];
  };
  const T* q = base(a.q, a.q_stride);
  const T* k = base(a.k, a.k_stride);
  const T* v = base(a.v, a.v_stride);
  const T* o = base(a.out, a.out_stride);
  const T* go = base(a.grad_out, a.grad_out_stride);
  const int64_t* ms = a.mask_stride;
  const T* mask = a.mask ? static_cast<const T*>(a.mask) + b * ms[0] + h * ms[1] : nullptr;
  const float* lse_in = a.lse + bh * Nq;

  float* FG_RESTRICT qT = scratch + L.qT;
  float* FG_RESTRICT qs = scratch + L.qs;
  float* FG_RESTRICT dOT = scratch + L.dOT;
  float* FG_RESTRICT dO = scratch + L.dO;
  float* FG_RESTRICT delta = scratch + L.delta;
  float* FG_RESTRICT lse = scratch + L.lse;
  float* FG_RESTRICT dQ = scratch + L.dQ;
  float* FG_RESTRICT Kc = scratch + L.Kc;
  float* FG_RESTRICT Vc = scratch + L.Vc;
  float* FG_RESTRICT dK = scratch + L.dK;
  float* FG_RESTRICT dV = scratch + L.dV;
  float* FG_RESTRICT P = scratch + L.P;
  float* FG_RESTRICT dP = scratch + L.dP;

  // The whole head's queries once: scale q and dO as fp32 rows and per-block transposes,
  // Delta = rowsum(dO * out), lse; padding rows are 0 with lse = +inf, so their P is 0.
  load_rows(qs, q, a.q_stride[2], Nq, D, Dp, a.scale);
  load_rows(dO, go, a.grad_out_stride[2], Nq, Dv, dvp, 1.0f);
  std::memset(qs + Nq * Dp, 0, sizeof(float) * static_cast<size_t>((nqp - Nq) * Dp));
  std::memset(dO + Nq * dvp, 0, sizeof(float) * static_cast<size_t>((nqp - Nq) * dvp));
  transpose_blocks(qT, qs, nqb, D, Dp);
  transpose_blocks(dOT, dO, nqb, Dv, dvp);
  for (int64_t i = 0; i < Nq; ++i) {
    const T* FG_RESTRICT orow = o + i * a.out_stride[2];
    const float* FG_RESTRICT drow = dO + i * dvp;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t c = 0; c < Dv; ++c) acc += drow[c] * to_float(orow[c]);
    delta[i] = acc;
    lse[i] = lse_in[i];
  }
  for (int64_t i = Nq; i < nqp; ++i) {
    delta[i] = 0.0f;
    lse[i] = kInf;
  }
  std::memset(dQ, 0, sizeof(float) * static_cast<size_t>(nqp * Dp));

  for (int64_t j0 = 0; j0 < Nk; j0 += kBN) {
    const int64_t bn = std::min(kBN, Nk - j0);
    load_rows(Kc, k + j0 * a.k_stride[2], a.k_stride[2], bn, D, Dp, 1.0f);
    load_rows(Vc, v + j0 * a.v_stride[2], a.v_stride[2], bn, Dv, dvp, 1.0f);
    std::memset(dK, 0, sizeof(float) * static_cast<size_t>(bn * Dp));
    std::memset(dV, 0, sizeof(float) * static_cast<size_t>(bn * dvp));
    for (int64_t qb = 0; qb < nqb; ++qb) {
      const int64_t i0 = qb * kBM, nq = std::min(kBM, Nq - i0), ni = round_up(nq, kPad);
      g.set_rows(Kc, Dp, 1, qT + qb * D * kBM, kBM, D, P, kBM, nullptr, bn, ni);       // S^T = K (scale q)^T
      if (mask) add_mask(P, mask + i0 * ms[2], ms, j0, bn, nq, ni);
      g.set_rows(Vc, dvp, 1, dOT + qb * Dv * kBM, kBM, Dv, dP, kBM, nullptr, bn, ni);  // dP^T = V dO^T
      const float* FG_RESTRICT l = lse + i0;
      const float* FG_RESTRICT dl = delta + i0;
      for (int64_t j = 0; j < bn; ++j) {
        float* FG_RESTRICT p = P + j * kBM;
        float* FG_RESTRICT dp = dP + j * kBM;
#pragma omp simd
        for (int64_t i = 0; i < ni; ++i) {
          const float pv = exp_nonpos(p[i] - l[i]);
          p[i] = pv;
          dp[i] = pv * (dp[i] - dl[i]);  // dS^T
        }
      }
      g.acc_cols(P, kBM, 1, dO + i0 * dvp, dvp, nq, dV, dvp, nullptr, bn, dvp);       // dV += P^T dO
      g.acc_cols(dP, kBM, 1, qs + i0 * Dp, Dp, nq, dK, Dp, nullptr, bn, Dp);          // dK += dS^T (scale q)
      g.acc_cols(dP, 1, kBM, Kc, Dp, bn, dQ + i0 * Dp, Dp, nullptr, round_up(nq, 4), Dp);  // dQ += dS K
    }
    store_rows(static_cast<T*>(a.grad_k) + (bh * Nk + j0) * D, dK, bn, D, Dp, 1.0f);
    store_rows(static_cast<T*>(a.grad_v) + (bh * Nk + j0) * Dv, dV, bn, Dv, dvp, 1.0f);
  }
  store_rows(static_cast<T*>(a.grad_q) + bh * Nq * D, dQ, Nq, D, Dp, a.scale);
}

template <typename T>
FG_ALWAYS_INLINE void backward_range(const AttentionBackwardArgs& a, int64_t begin, int64_t end, float* scratch,
                                     const Gemms& g) {
  const BwdLayout L = bwd_layout(a);
  for (int64_t t = begin; t < end; ++t) backward_task<T>(a, L, t, scratch, g);
}

// One variant per ISA level: its GEMMs and the dtype entry points.
#define FG_GEMM_FN(TARGET, NAME, CFG, MR, NV, INIT)                                                              \
  TARGET __attribute__((noinline)) void NAME(const float* A, int64_t sar, int64_t sak, const float* B,         \
                                             int64_t ldb, int64_t K, float* C, int64_t ldc, const float* rs,   \
                                             int64_t M, int64_t N) {                                           \
    gemm<CFG::W, CFG::MR, CFG::NV, INIT>(A, sar, sak, B, ldb, K, C, ldc, rs, M, N);                             \
  }

#define FG_ATTN_VARIANT(TARGET, SUF, CFG)                                                                         \
  FG_GEMM_FN(TARGET, gemm_set_rows_##SUF, CFG, MR1, NV1, kSet)                                                  \
  FG_GEMM_FN(TARGET, gemm_acc_cols_##SUF, CFG, MR2, NV2, kAcc)                                                  \
  FG_GEMM_FN(TARGET, gemm_scale_acc_cols_##SUF, CFG, MR2, NV2, kScaleAcc)                                       \
  constexpr Gemms kGemms_##SUF{gemm_set_rows_##SUF, gemm_acc_cols_##SUF, gemm_scale_acc_cols_##SUF};             \
  TARGET void forward_##SUF(DType dt, const AttentionArgs& a, int64_t begin, int64_t end, float* scratch) {      \
    switch (dt) {                                                                                               \
      case DType::Float32: forward_range<float>(a, begin, end, scratch, kGemms_##SUF); break;                   \
      case DType::Float16: forward_range<f16_t>(a, begin, end, scratch, kGemms_##SUF); break;                   \
      case DType::BFloat16: forward_range<bf16_t>(a, begin, end, scratch, kGemms_##SUF); break;                 \
      default: break; /* the torch layer rejects other dtypes */                                                \
    }                                                                                                           \
  }                                                                                                             \
  TARGET void backward_##SUF(DType dt, const AttentionBackwardArgs& a, int64_t begin, int64_t end,              \
                             float* scratch) {                                                                  \
    switch (dt) {                                                                                               \
      case DType::Float32: backward_range<float>(a, begin, end, scratch, kGemms_##SUF); break;                  \
      case DType::Float16: backward_range<f16_t>(a, begin, end, scratch, kGemms_##SUF); break;                  \
      case DType::BFloat16: backward_range<bf16_t>(a, begin, end, scratch, kGemms_##SUF); break;                \
      default: break;                                                                                           \
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

int64_t attention_backward_scratch_floats(const AttentionBackwardArgs& a) { return bwd_layout(a).total; }

void attention_backward(DType dt, const AttentionBackwardArgs& a, int level, int64_t begin, int64_t end,
                        float* scratch) {
  level = std::min(level, attention_cpu_level());
#if FG_ATTN_MULTI_ISA
  if (level >= 2) return backward_v4(dt, a, begin, end, scratch);
  if (level == 1) return backward_v3(dt, a, begin, end, scratch);
#endif
  backward_v0(dt, a, begin, end, scratch);
}

}  // namespace cpu
}  // namespace fastgen
