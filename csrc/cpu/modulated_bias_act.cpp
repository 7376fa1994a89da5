// CPU kernels of modulated_bias_act (see modulated_bias_act.h).
//
// Each task walks its tile in segments of at most kSeg elements that are contiguous in memory (NCHW:
// part of one channel's run of positions; channels-inner: part of one row of channels), in stages
// over L1-resident buffers, each a plain loop GCC vectorises in every target clone:
//   1. z = x scale + noise strength + b          (per layout: scalars per run, or vectors per row)
//   2. forward: y = clamp(act(z) gain)            backward: dz = g gain act'(z) m
//   3. backward: dx = dz scale, the sums of dz, dz x, dz noise, and dnoise = dz strength
// (the double backward: k and k2 = gain act''(z) m in stage 2, its five gradients in stage 3)
// so x, noise and g are read from memory once and y / dx written once, and the activation code
// (csrc/cpu/activation.h, shared with bias_act) is instantiated once per storage dtype instead of
// once per layout and noise variant. Sums: fp32 SIMD lanes within a segment, fp64 across segments
// (channels-inner: fp32 per-channel vectors over blocks of kRowBlock rows, then fp64).
#include "modulated_bias_act.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "activation.h"
#include "fastgen/convert.h"
#include "stream.h"  // FG_CLONES, FG_LAMBDA_INLINE

namespace fastgen {
namespace cpu {
namespace {

// Elements per segment (L1 buffers). Short enough that a segment's loads (stage 1) and stores
// (stage 2 / 3) overlap in the out-of-order window instead of alternating in long phases (512 was
// 25% slower than 256 in the forward on an AMD EPYC, fp32 (16, 512, 32, 32), one thread), long
// enough to amortise each segment's reductions in the backward (64 was 2x slower there).
constexpr int64_t kSeg = 256;
constexpr int64_t kRowBlock = 64;   // channels-inner: rows per fp32 partial sum

template <int V>
using IntC = std::integral_constant<int, V>;

// ---------------------------------------------------------------- stage 1: z
// NCHW run: scalars s, st, b.
template <typename T, bool NOISE>
FG_ALWAYS_INLINE void affine_run(const T* FG_RESTRICT x, const float* FG_RESTRICT nz, float s, float st, float b,
                                 float* FG_RESTRICT z, int64_t len) {
  if constexpr (NOISE) {
    for (int64_t i = 0; i < len; ++i) z[i] = to_float(x[i]) * s + nz[i] * st + b;
  } else {
    for (int64_t i = 0; i < len; ++i) z[i] = to_float(x[i]) * s + b;
  }
}

// Channels-inner row: vectors s, st, b; NM 0 no noise, 1 one noise value nz[0], 2 noise vector nz.
template <typename T, int NM>
FG_ALWAYS_INLINE void affine_row(const T* FG_RESTRICT x, const float* FG_RESTRICT s, const float* FG_RESTRICT nz,
                                 const float* FG_RESTRICT st, const float* FG_RESTRICT b, float* FG_RESTRICT z,
                                 int64_t len) {
  if constexpr (NM == 0) {
    for (int64_t i = 0; i < len; ++i) z[i] = to_float(x[i]) * s[i] + b[i];
  } else if constexpr (NM == 1) {
    const float v = nz[0];
    for (int64_t i = 0; i < len; ++i) z[i] = to_float(x[i]) * s[i] + v * st[i] + b[i];
  } else {
    for (int64_t i = 0; i < len; ++i) z[i] = to_float(x[i]) * s[i] + nz[i] * st[i] + b[i];
  }
}

// One segment's z, whatever the layout. u: the channel (NCHW) or row (channels-inner); q: the
// offset of the segment along B.
template <typename T>
FG_ALWAYS_INLINE void fill_z(const ModBiasActArgs& a, const T* FG_RESTRICT xs, int64_t n, int64_t u, int64_t q,
                             int64_t len, float* FG_RESTRICT z) {
  const float* nz = a.noise ? a.noise + n * a.ns_n + u * a.ns_a + q * a.ns_b : nullptr;
  if (!a.cl) {
    const float s = a.scale[n * a.C + u], st = a.strength[u], b = a.bias[u];
    if (nz) affine_run<T, true>(xs, nz, s, st, b, z, len);
    else affine_run<T, false>(xs, nz, s, st, b, z, len);
  } else {
    const float* s = a.scale + n * a.C + q;
    const float* st = a.strength + q;
    const float* b = a.bias + q;
    if (!nz) affine_row<T, 0>(xs, s, nz, st, b, z, len);
    else if (a.ns_b == 0) affine_row<T, 1>(xs, s, nz, st, b, z, len);
    else affine_row<T, 2>(xs, s, nz, st, b, z, len);
  }
}

// ---------------------------------------------------------------- stage 2: activation
template <typename T, int ACT>
FG_ALWAYS_INLINE void act_store(const float* FG_RESTRICT z, T* FG_RESTRICT y, int64_t len, float alpha, float gain,
                                float clamp) {
  for (int64_t i = 0; i < len; ++i) y[i] = from_float<T>(act_forward<ACT>(z[i], alpha, gain, clamp));
}

// dz = g gain act'(z) m (in place over z)
template <typename T, int ACT, bool CLAMP>
FG_ALWAYS_INLINE void act_grad(const T* FG_RESTRICT g, float* FG_RESTRICT z, int64_t len, float alpha, float gain,
                               float clamp) {
  for (int64_t i = 0; i < len; ++i) z[i] = to_float(g[i]) * act_grad_factor<ACT, 1, CLAMP>(z[i], alpha, gain, clamp);
}

// double backward: k = gain act'(z) m, k2 = gain act''(z) m (0 for linear / relu / lrelu)
// (in place: zk holds z in, k out)
template <int ACT, bool CLAMP>
FG_ALWAYS_INLINE void act_k12(float* FG_RESTRICT zk, float* FG_RESTRICT k2, int64_t len, float alpha, float gain,
                              float clamp) {
  for (int64_t i = 0; i < len; ++i) {
    const float z = zk[i];
    zk[i] = act_grad_factor<ACT, 1, CLAMP>(z, alpha, gain, clamp);
    k2[i] = act_grad_factor<ACT, 2, CLAMP>(z, alpha, gain, clamp);
  }
}

// ---------------------------------------------------------------- stage 3: gradients
struct Sums {
  float dz, dzx, dzn;
};

// NCHW run. DN 0: no dnoise, 1: dn = dz st, 2: dn += dz st.
template <typename T, bool NOISE, int DN, bool DX>
FG_ALWAYS_INLINE Sums grads_run(const float* FG_RESTRICT dz, const T* FG_RESTRICT x, const float* FG_RESTRICT nz,
                                float s, float st, T* FG_RESTRICT dx, float* FG_RESTRICT dn, int64_t len) {
  float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f;
#pragma omp simd reduction(+ : a0, a1, a2)
  for (int64_t i = 0; i < len; ++i) {
    const float d = dz[i];
    a0 += d;
    a1 += d * to_float(x[i]);
    if constexpr (NOISE) a2 += d * nz[i];
    if constexpr (DX) dx[i] = from_float<T>(d * s);
    if constexpr (DN == 1) dn[i] = d * st;
    if constexpr (DN == 2) dn[i] += d * st;
  }
  return {a0, a1, a2};
}

// Channels-inner row: per-channel accumulators acc0..2 (+= dz, dz x, dz noise). NM as affine_row;
// DN: dnoise per channel (NM 2, dn = dz st) or returns sum_c dz st for the row (NM 1).
template <typename T, int NM, bool DN, bool DX>
FG_ALWAYS_INLINE float grads_row(const float* FG_RESTRICT dz, const T* FG_RESTRICT x, const float* FG_RESTRICT nz,
                                 const float* FG_RESTRICT s, const float* FG_RESTRICT st, T* FG_RESTRICT dx,
                                 float* FG_RESTRICT dn, float* FG_RESTRICT acc0, float* FG_RESTRICT acc1,
                                 float* FG_RESTRICT acc2, int64_t len) {
  const float v = NM == 1 ? nz[0] : 0.0f;
  for (int64_t i = 0; i < len; ++i) {
    const float d = dz[i];
    acc0[i] += d;
    acc1[i] += d * to_float(x[i]);
    if constexpr (NM == 1) acc2[i] += d * v;
    if constexpr (NM == 2) acc2[i] += d * nz[i];
    if constexpr (DX) dx[i] = from_float<T>(d * s[i]);
    if constexpr (NM == 2 && DN) dn[i] = d * st[i];
  }
  float rs = 0.0f;
  if constexpr (NM == 1 && DN) {
#pragma omp simd reduction(+ : rs)
    for (int64_t i = 0; i < len; ++i) rs += dz[i] * st[i];
  }
  return rs;
}

// Double backward (see modulated_bias_act.h), NCHW run: scalars s, st and the cotangents us, ub,
// ust of (scale, b, strength); ux / un the cotangents of dx / dnoise (zero buffers when absent, as nz
// without noise); gg / gx: the grads of g and x (scratch when not needed). DN as grads_run.
template <typename T, int DN>
FG_ALWAYS_INLINE Sums grads2_run(const T* FG_RESTRICT g, const float* FG_RESTRICT k, const float* FG_RESTRICT k2,
                                 const T* FG_RESTRICT x, const T* FG_RESTRICT ux, const float* FG_RESTRICT nz,
                                 const float* FG_RESTRICT un, float s, float st, float us, float ub, float ust,
                                 T* FG_RESTRICT gg, T* FG_RESTRICT gx, float* FG_RESTRICT dn, int64_t len) {
  float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f;
#pragma omp simd reduction(+ : a0, a1, a2)
  for (int64_t i = 0; i < len; ++i) {
    const float xv = to_float(x[i]), uxv = to_float(ux[i]), gv = to_float(g[i]);
    const float w = uxv * s + ub + us * xv + un[i] * st + ust * nz[i];
    const float q = gv * k[i], e = gv * k2[i] * w;
    gg[i] = from_float<T>(k[i] * w);
    gx[i] = from_float<T>(q * us + e * s);
    a0 += e;
    a1 += q * uxv + e * xv;
    a2 += q * un[i] + e * nz[i];
    if constexpr (DN == 1) dn[i] = q * ust + e * st;
    if constexpr (DN == 2) dn[i] += q * ust + e * st;
  }
  return {a0, a1, a2};
}

// Double backward, channels-inner row: vectors s, st, us, ub, ust; NM 1: one noise value nz[0] (and
// un[0]) per row, 2: vectors. DN: dn = q ust + e st per channel (NM 2), or the row's sum of it is
// returned (NM 1; dnv: a scratch row).
template <typename T, int NM, bool DN>
FG_ALWAYS_INLINE float grads2_row(const T* FG_RESTRICT g, const float* FG_RESTRICT k, const float* FG_RESTRICT k2,
                                  const T* FG_RESTRICT x, const T* FG_RESTRICT ux, const float* FG_RESTRICT nz,
                                  const float* FG_RESTRICT un, const float* FG_RESTRICT s,
                                  const float* FG_RESTRICT st, const float* FG_RESTRICT us,
                                  const float* FG_RESTRICT ub, const float* FG_RESTRICT ust, T* FG_RESTRICT gg,
                                  T* FG_RESTRICT gx, float* FG_RESTRICT dn, float* FG_RESTRICT acc0,
                                  float* FG_RESTRICT acc1, float* FG_RESTRICT acc2, int64_t len) {
  const float nv = nz[0], unv = un[0];
  for (int64_t i = 0; i < len; ++i) {
    const float xv = to_float(x[i]), uxv = to_float(ux[i]), gv = to_float(g[i]);
    const float nzi = NM == 1 ? nv : nz[i], uni = NM == 1 ? unv : un[i];
    const float w = uxv * s[i] + ub[i] + us[i] * xv + uni * st[i] + ust[i] * nzi;
    const float q = gv * k[i], e = gv * k2[i] * w;
    gg[i] = from_float<T>(k[i] * w);
    gx[i] = from_float<T>(q * us[i] + e * s[i]);
    acc0[i] += e;
    acc1[i] += q * uxv + e * xv;
    acc2[i] += q * uni + e * nzi;
    if constexpr (DN) dn[i] = q * ust[i] + e * st[i];
  }
  float rs = 0.0f;
  if constexpr (NM == 1 && DN) {
#pragma omp simd reduction(+ : rs)
    for (int64_t i = 0; i < len; ++i) rs += dn[i];
  }
  return rs;
}

// ---------------------------------------------------------------- tasks
// NCHW tiles of at most this many channels (i.e. long runs: P >= 8192 positions) are walked
// segment-major: the channels take turns per segment, so the noise segment they share is read from
// L2 once for all of them and x is read as at most 4 concurrent streams (fp32 (16, 128, 128, 128)
// forward 10% faster on the development machine; with more channels the interleaved streams cost
// more than the noise re-reads, so shorter runs go channel by channel).
constexpr int64_t kSegMajorMaxChannels = 4;

struct Tile {
  int64_t n, cbi, pki, u0, u1, q0, q1;
};

FG_ALWAYS_INLINE Tile tile_of(const ModBiasActArgs& a, int64_t t) {
  Tile r{};
  if (!a.cl) {
    r.n = t / (a.ncb * a.npk);
    const int64_t rem = t % (a.ncb * a.npk);
    r.cbi = rem / a.npk;
    r.pki = rem % a.npk;
    r.u0 = r.cbi * a.cb;
    r.u1 = std::min(a.C, r.u0 + a.cb);
    r.q0 = r.pki * a.pk;
    r.q1 = std::min(a.P, r.q0 + a.pk);
  } else {
    r.n = t / a.npk;
    r.cbi = 0;
    r.pki = t % a.npk;
    r.u0 = r.pki * a.pk;
    r.u1 = std::min(a.P, r.u0 + a.pk);
    r.q0 = 0;
    r.q1 = a.C;
  }
  return r;
}

FG_ALWAYS_INLINE bool segment_major(const ModBiasActArgs& a, int64_t nu, int64_t nseg) {
  return !a.cl && nu <= kSegMajorMaxChannels && nseg > 1;
}

template <typename T>
FG_ALWAYS_INLINE void forward_tasks(const ModBiasActArgs& a, int64_t begin, int64_t end) {
  const T* FG_RESTRICT x = static_cast<const T*>(a.x);
  T* FG_RESTRICT y = static_cast<T*>(a.out);
  const int64_t A = a.cl ? a.P : a.C, B = a.cl ? a.C : a.P;
  alignas(64) float z[kSeg];
  for (int64_t t = begin; t < end; ++t) {
    const Tile tl = tile_of(a, t);
    // segment-major or channel by channel (see kSegMajorMaxChannels); channels-inner: row by row
    const int64_t nu = tl.u1 - tl.u0, nseg = (tl.q1 - tl.q0 + kSeg - 1) / kSeg;
    const bool segmaj = segment_major(a, nu, nseg);
    for (int64_t k = 0; k < nu * nseg; ++k) {
      const int64_t u = tl.u0 + (!segmaj ? k / nseg : k % nu);
      const int64_t q = tl.q0 + (!segmaj ? k % nseg : k / nu) * kSeg;
      const int64_t base = (tl.n * A + u) * B;
      const int64_t len = std::min(kSeg, tl.q1 - q);
      fill_z<T>(a, x + base + q, tl.n, u, q, len, z);
      T* dst = y + base + q;
      act_dispatch(a.act, [&](auto act) FG_LAMBDA_INLINE {
        act_store<T, decltype(act)::value>(z, dst, len, a.alpha, a.gain, a.clamp);
      });
    }
  }
}

// ORDER 1: the backward (dz, dx, sums, dnoise). ORDER 2: the double backward (see the header).
template <typename T, int ORDER>
FG_ALWAYS_INLINE void backward_tasks(const ModBiasActArgs& a, int64_t begin, int64_t end, float* fscratch,
                                     double* dscratch) {
  const T* FG_RESTRICT x = static_cast<const T*>(a.x);
  const T* FG_RESTRICT g = static_cast<const T*>(a.g);
  T* FG_RESTRICT dx = static_cast<T*>(a.out);
  const int64_t A = a.cl ? a.P : a.C, B = a.cl ? a.C : a.P, C = a.C;
  const bool noise = a.noise != nullptr;
  const bool want_dn = noise && a.dn != nullptr;
  // dnoise geometry (see modulated_bias_act.h)
  const int64_t Nn = a.dn_sum_n ? 1 : a.N, Cn = a.dn_sum_c ? 1 : a.C;
  const int64_t M = Nn * Cn * a.P;
  const int64_t rc = (!a.cl && a.dn_sum_c) ? a.ncb : 1;
  alignas(64) float z[kSeg];
  float* acc0 = fscratch;  // channels-inner per-channel sums
  float* acc1 = fscratch + C;
  float* acc2 = fscratch + 2 * C;
  double* dacc0 = dscratch;
  double* dacc1 = dscratch + C;
  double* dacc2 = dscratch + 2 * C;
  // order 2: k2, zero inputs for absent ones, scratch outputs for unneeded ones
  alignas(64) float k2[ORDER == 2 ? kSeg : 1];
  alignas(64) float zeros[ORDER == 2 ? kSeg : 1];
  alignas(64) T zeros_t[ORDER == 2 ? kSeg : 1];
  alignas(64) T scratch_g[ORDER == 2 ? kSeg : 1];
  alignas(64) T scratch_x[ORDER == 2 ? kSeg : 1];
  alignas(64) float scratch_dn[ORDER == 2 ? kSeg : 1];
  const T* FG_RESTRICT ux = static_cast<const T*>(a.ux);
  T* FG_RESTRICT gg = static_cast<T*>(a.out2);
  if constexpr (ORDER == 2) {
    for (int64_t i = 0; i < kSeg; ++i) {
      zeros[i] = 0.0f;
      zeros_t[i] = from_float<T>(0.0f);
    }
  }

  for (int64_t t = begin; t < end; ++t) {
    const Tile tl = tile_of(a, t);
    const int64_t n = tl.n;
    const int64_t slot = (n * a.npk + tl.pki) * C;  // + c
    float* dnr = want_dn ? a.dn + ((a.dn_sum_n ? n : 0) * rc + (rc > 1 ? tl.cbi : 0)) * M : nullptr;
    const int64_t nd = a.dn_sum_n ? 0 : n;  // the noise sample this tile's dnoise goes to
    if (a.cl) {
      for (int64_t c = 0; c < C; ++c) dacc0[c] = dacc1[c] = dacc2[c] = 0.0;
      std::memset(acc0, 0, sizeof(float) * 3 * C);
    }
    const int64_t nu = tl.u1 - tl.u0, nseg = (tl.q1 - tl.q0 + kSeg - 1) / kSeg;
    const bool segmaj = segment_major(a, nu, nseg);
    // per-u sums (NCHW: dz, dz x, dz noise of channel u; channels-inner: [0] the dnoise row sum)
    double racc[kSegMajorMaxChannels][3];
    for (int64_t k = 0; k < nu * nseg; ++k) {
      const int64_t u = tl.u0 + (segmaj ? k % nu : k / nseg);
      const int64_t q = tl.q0 + (segmaj ? k / nu : k % nseg) * kSeg;
      const int64_t base = (n * A + u) * B;
      const int64_t len = std::min(kSeg, tl.q1 - q);
      double* r = racc[segmaj ? u - tl.u0 : 0];
      if (q == tl.q0) r[0] = r[1] = r[2] = 0.0;
      {
        const T* xs = x + base + q;
        const T* gs = g + base + q;
        fill_z<T>(a, xs, n, u, q, len, z);
        act_dispatch(a.act, [&](auto act) FG_LAMBDA_INLINE {
          constexpr int ACT = decltype(act)::value;
          if constexpr (ORDER == 1) {  // z becomes dz
            if (a.clamp >= 0.0f) act_grad<T, ACT, true>(gs, z, len, a.alpha, a.gain, a.clamp);
            else act_grad<T, ACT, false>(gs, z, len, a.alpha, a.gain, a.clamp);
          } else {  // z becomes k
            if (a.clamp >= 0.0f) act_k12<ACT, true>(z, k2, len, a.alpha, a.gain, a.clamp);
            else act_k12<ACT, false>(z, k2, len, a.alpha, a.gain, a.clamp);
          }
        });
        const int64_t noff = n * a.ns_n + u * a.ns_a + q * a.ns_b;
        const float* nz = noise ? a.noise + noff : nullptr;
        if constexpr (ORDER == 1) {
          T* dxs = dx ? dx + base + q : nullptr;
          if (!a.cl) {
            const float s = a.scale[n * C + u], st = a.strength[u];
            float* dn = want_dn ? dnr + (nd * Cn + (a.dn_sum_c ? 0 : u)) * a.P + q : nullptr;
            const int dnm = !want_dn ? 0 : (a.dn_sum_c && u != tl.u0 ? 2 : 1);
            Sums sm;
            auto run = [&](auto nm, auto dnmode, auto dxm) FG_LAMBDA_INLINE {
              sm = grads_run<T, decltype(nm)::value != 0, decltype(dnmode)::value, decltype(dxm)::value != 0>(
                  z, xs, nz, s, st, dxs, dn, len);
            };
            auto with_dx = [&](auto nm, auto dnmode) FG_LAMBDA_INLINE {
              if (dxs) run(nm, dnmode, IntC<1>{});
              else run(nm, dnmode, IntC<0>{});
            };
            if (!noise) with_dx(IntC<0>{}, IntC<0>{});
            else if (dnm == 0) with_dx(IntC<1>{}, IntC<0>{});
            else if (dnm == 1) with_dx(IntC<1>{}, IntC<1>{});
            else with_dx(IntC<1>{}, IntC<2>{});
            r[0] += sm.dz;
            r[1] += sm.dzx;
            r[2] += sm.dzn;
          } else {
            const float* s = a.scale + n * C + q;
            const float* st = a.strength + q;
            float* dn = (want_dn && a.ns_b != 0) ? dnr + (nd * a.P + u) * Cn + q : nullptr;
            float rs = 0.0f;
            auto run = [&](auto nm, auto dnmode, auto dxm) FG_LAMBDA_INLINE {
              rs = grads_row<T, decltype(nm)::value, decltype(dnmode)::value != 0, decltype(dxm)::value != 0>(
                  z, xs, nz, s, st, dxs, dn, acc0 + q, acc1 + q, acc2 + q, len);
            };
            auto with_dx = [&](auto nm, auto dnmode) FG_LAMBDA_INLINE {
              if (dxs) run(nm, dnmode, IntC<1>{});
              else run(nm, dnmode, IntC<0>{});
            };
            if (!noise) with_dx(IntC<0>{}, IntC<0>{});
            else if (a.ns_b == 0) {
              if (want_dn) with_dx(IntC<1>{}, IntC<1>{});
              else with_dx(IntC<1>{}, IntC<0>{});
            } else {
              if (want_dn) with_dx(IntC<2>{}, IntC<1>{});
              else with_dx(IntC<2>{}, IntC<0>{});
            }
            r[0] += rs;
          }
        } else {
          const T* uxs = ux ? ux + base + q : zeros_t;
          T* ggs = gg ? gg + base + q : scratch_g;
          T* gxs = dx ? dx + base + q : scratch_x;
          if (!a.cl) {
            const float* nzs = noise ? nz : zeros;
            const float* uns = (noise && a.un) ? a.un + noff : zeros;
            const int64_t nc = n * C + u;
            const float s = a.scale[nc], st = a.strength[u], us = a.us[nc], ub = a.ub[u], ust = a.ust[u];
            float* dn = want_dn ? dnr + (nd * Cn + (a.dn_sum_c ? 0 : u)) * a.P + q : nullptr;
            const int dnm = !want_dn ? 0 : (a.dn_sum_c && u != tl.u0 ? 2 : 1);
            Sums sm;
            if (dnm == 0) sm = grads2_run<T, 0>(gs, z, k2, xs, uxs, nzs, uns, s, st, us, ub, ust, ggs, gxs, dn, len);
            else if (dnm == 1) sm = grads2_run<T, 1>(gs, z, k2, xs, uxs, nzs, uns, s, st, us, ub, ust, ggs, gxs, dn, len);
            else sm = grads2_run<T, 2>(gs, z, k2, xs, uxs, nzs, uns, s, st, us, ub, ust, ggs, gxs, dn, len);
            r[0] += sm.dz;
            r[1] += sm.dzx;
            r[2] += sm.dzn;
          } else {
            const float* nzs = noise ? nz : zeros;  // no noise: one zero per row (NM 1)
            const float* uns = (noise && a.un) ? a.un + noff : zeros;
            const float* s = a.scale + n * C + q;
            const float* st = a.strength + q;
            const float* us = a.us + n * C + q;
            const float* ub = a.ub + q;
            const float* ust = a.ust + q;
            const bool vec = noise && a.ns_b != 0;
            float* dn = want_dn ? (vec ? dnr + (nd * a.P + u) * Cn + q : scratch_dn) : nullptr;
            float rs = 0.0f;
            auto run = [&](auto nm, auto dnmode) FG_LAMBDA_INLINE {
              rs = grads2_row<T, decltype(nm)::value, decltype(dnmode)::value != 0>(
                  gs, z, k2, xs, uxs, nzs, uns, s, st, us, ub, ust, ggs, gxs, dn, acc0 + q, acc1 + q, acc2 + q, len);
            };
            if (vec) {
              if (want_dn) run(IntC<2>{}, IntC<1>{});
              else run(IntC<2>{}, IntC<0>{});
            } else {
              if (want_dn) run(IntC<1>{}, IntC<1>{});
              else run(IntC<1>{}, IntC<0>{});
            }
            r[0] += rs;
          }
        }
      }
      if (q + kSeg < tl.q1) continue;  // u continues in a later segment
      if (!a.cl) {
        if (a.s_dz) a.s_dz[slot + u] = r[0];
        if (a.s_dzx) a.s_dzx[slot + u] = r[1];
        if (a.s_dzn && noise) a.s_dzn[slot + u] = r[2];
      } else {
        if (want_dn && a.ns_b == 0) dnr[nd * a.P + u] = static_cast<float>(r[0]);  // one noise value per row
        if ((u - tl.u0 + 1) % kRowBlock == 0 || u + 1 == tl.u1) {
          for (int64_t c = 0; c < C; ++c) {
            dacc0[c] += acc0[c];
            dacc1[c] += acc1[c];
            dacc2[c] += acc2[c];
          }
          std::memset(acc0, 0, sizeof(float) * 3 * C);
        }
      }
    }
    if (a.cl) {
      for (int64_t c = 0; c < C; ++c) {
        if (a.s_dz) a.s_dz[slot + c] = dacc0[c];
        if (a.s_dzx) a.s_dzx[slot + c] = dacc1[c];
        if (a.s_dzn && noise) a.s_dzn[slot + c] = dacc2[c];
      }
    }
  }
}

#define FG_MBA_CLONES(SUF, T)                                                                        \
  FG_CLONES void fwd_##SUF(const ModBiasActArgs& a, int64_t b, int64_t e) { forward_tasks<T>(a, b, e); } \
  FG_CLONES void bwd_##SUF(const ModBiasActArgs& a, int64_t b, int64_t e, float* fs, double* ds) {      \
    backward_tasks<T, 1>(a, b, e, fs, ds);                                                           \
  }                                                                                                  \
  FG_CLONES void bwd2_##SUF(const ModBiasActArgs& a, int64_t b, int64_t e, float* fs, double* ds) {     \
    backward_tasks<T, 2>(a, b, e, fs, ds);                                                           \
  }

FG_MBA_CLONES(f32, float)
FG_MBA_CLONES(f16, f16_t)
FG_MBA_CLONES(bf16, bf16_t)

FG_CLONES void sum_replicas(const float* FG_RESTRICT part, int64_t R, int64_t M, float* FG_RESTRICT out, int64_t begin,
                            int64_t end) {
  for (int64_t i = begin; i < end; i += kSeg) {
    const int64_t len = std::min(kSeg, end - i);
    float* FG_RESTRICT o = out + i;
    const float* FG_RESTRICT p0 = part + i;
    for (int64_t j = 0; j < len; ++j) o[j] = p0[j];
    for (int64_t r = 1; r < R; ++r) {
      const float* FG_RESTRICT pr = part + r * M + i;
      for (int64_t j = 0; j < len; ++j) o[j] += pr[j];
    }
  }
}

}  // namespace

void mba_forward(DType dt, const ModBiasActArgs& a, int64_t begin, int64_t end) {
  FG_DT_DISPATCH(dt, fwd, a, begin, end)
}

void mba_backward(DType dt, const ModBiasActArgs& a, int64_t begin, int64_t end, float* fscratch, double* dscratch) {
  FG_DT_DISPATCH(dt, bwd, a, begin, end, fscratch, dscratch)
}

void mba_double_backward(DType dt, const ModBiasActArgs& a, int64_t begin, int64_t end, float* fscratch,
                         double* dscratch) {
  FG_DT_DISPATCH(dt, bwd2, a, begin, end, fscratch, dscratch)
}

void mba_sum_replicas(const float* part, int64_t R, int64_t M, float* out, int64_t begin, int64_t end) {
  sum_replicas(part, R, M, out, begin, end);
}

}  // namespace cpu
}  // namespace fastgen
