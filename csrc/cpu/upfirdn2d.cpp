// CPU kernels of upfirdn2d (see upfirdn2d.h). Direct polyphase computation, no materialised
// upsampled / padded image.
//
// NCHW (rows unit-stride, vectorised along W). Output rows are processed in bands of consecutive
// rows (across planes), each input-width row of the band in an L1-resident buffer with zero margins
// on both sides (so the tap loops need no bounds checks):
//   separable filter: the vertical pass sums the ceil(fh / uy) input rows that land on real samples
//     into the band, one call per group of rows with the same taps (a phase of oy: output rows
//     oy0 + m P read input rows i0 + m istep + t); then one horizontal polyphase pass per band;
//   2-D filter: one row at a time, each of its input rows converted into the buffer and filtered
//     horizontally with its row of taps, accumulating.
// The horizontal pass is a few "sub-passes" dst[q] (+)= sum_t w[t] src[off + q + t], each one call
// over the whole band (the band's rows have one stride in the buffer and the destination): with
// dx = 1 one per output phase (ox mod ux; the phases are interleaved when the row is stored), with
// ux = 1 and dx > 1 one per input phase (the buffer de-interleaved by ox mod dx first, so only the
// kept outputs are computed and every load is unit-stride); up and down on one axis, factors above
// 8, or huge margins (huge padding next to a huge crop) use a bounds-checked scalar loop.
// Plain stores: non-temporal stores were measured slower (fresh output pages are zeroed by the
// kernel just before the kernel writes them, so their lines are already cached).
//
// Channels last (C contiguous, vectorised across C): one output row of a block of channels per
// work item; separable: vertical sums of the needed input columns into a buffer, then per output
// column the horizontal taps; 2-D: per output column the weighted sum of the (row, column) taps
// straight from x. The per-column tap lists are built once per call.
//
// Every hot loop is an always_inline helper instantiated in the FG_CLONES entry points (AVX-512,
// AVX2, baseline), which receive all their buffers and plans from the plain dispatchers (a clone
// calls no other function of this file; GCC may still call libc's memcpy for plain copies).
#include "upfirdn2d.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "fastgen/convert.h"
#include "stream.h"  // FG_CLONES, FG_LAMBDA_INLINE

namespace fastgen {
namespace cpu {
namespace {

// ---------------------------------------------------------------------------- element I/O
FG_ALWAYS_INLINE float ld(float v) { return v; }
FG_ALWAYS_INLINE float ld(f16_t v) { return to_float(v); }
FG_ALWAYS_INLINE float ld(bf16_t v) { return to_float(v); }
FG_ALWAYS_INLINE double ld(double v) { return v; }

template <typename T>
struct Io {  // fp32 math for fp32 / fp16 / bf16 storage
  using A = float;
  FG_ALWAYS_INLINE static T st(float v) { return from_float<T>(v); }
};
template <>
struct Io<double> {
  using A = double;
  FG_ALWAYS_INLINE static double st(double v) { return v; }
};

FG_ALWAYS_INLINE int64_t pos_mod(int64_t v, int64_t m) {
  const int64_t r = v % m;
  return r < 0 ? r + m : r;
}
FG_ALWAYS_INLINE int64_t floor_div(int64_t v, int64_t m) {  // m > 0
  const int64_t q = v / m;
  return (v % m != 0 && v < 0) ? q - 1 : q;
}

// ---------------------------------------------------------------------------- weighted sums
// dst[i] (=, or += with ACC) sum_{k < KC} w[k] * src[k][i] for i < n: one pass, KC loads + FMAs
// per vector of dst.
template <int KC, bool ACC, typename S, typename A>
FG_ALWAYS_INLINE void wsum_k(A* FG_RESTRICT dst, const S* const* src, const A* w, int64_t n) {
  const S* FG_RESTRICT s0 = src[0];
  const S* FG_RESTRICT s1 = src[KC > 1 ? 1 : 0];
  const S* FG_RESTRICT s2 = src[KC > 2 ? 2 : 0];
  const S* FG_RESTRICT s3 = src[KC > 3 ? 3 : 0];
  const A w0 = w[0], w1 = KC > 1 ? w[1] : A(0), w2 = KC > 2 ? w[2] : A(0), w3 = KC > 3 ? w[3] : A(0);
  for (int64_t i = 0; i < n; ++i) {
    A v = w0 * ld(s0[i]);
    if constexpr (KC > 1) v += w1 * ld(s1[i]);
    if constexpr (KC > 2) v += w2 * ld(s2[i]);
    if constexpr (KC > 3) v += w3 * ld(s3[i]);
    if constexpr (ACC) {
      dst[i] += v;
    } else {
      dst[i] = v;
    }
  }
}

// dst (=, or += with acc) sum_{k < K} w[k] * src[k][0:n], in groups of up to 4 sources (K = 0 and
// !acc: zeros).
template <typename S, typename A>
FG_ALWAYS_INLINE void wsum(A* dst, const S* const* src, const A* w, int64_t K, int64_t n, bool acc) {
  if (n <= 0) return;
  if (K == 0) {
    if (!acc)
      for (int64_t i = 0; i < n; ++i) dst[i] = A(0);
    return;
  }
  for (int64_t k = 0; k < K; k += 4) {
    const int64_t kc = std::min<int64_t>(K - k, 4);
    if (acc) {
      switch (kc) {
        case 1: wsum_k<1, true>(dst, src + k, w + k, n); break;
        case 2: wsum_k<2, true>(dst, src + k, w + k, n); break;
        case 3: wsum_k<3, true>(dst, src + k, w + k, n); break;
        default: wsum_k<4, true>(dst, src + k, w + k, n); break;
      }
    } else {
      switch (kc) {
        case 1: wsum_k<1, false>(dst, src + k, w + k, n); break;
        case 2: wsum_k<2, false>(dst, src + k, w + k, n); break;
        case 3: wsum_k<3, false>(dst, src + k, w + k, n); break;
        default: wsum_k<4, false>(dst, src + k, w + k, n); break;
      }
    }
    acc = true;
  }
}

// The same over `rows` rows: dst[r ds + i] (=|+=) sum_k w[k] src[r ss + k ks + i] (sources k ks
// apart, rows ss apart in the source and ds apart in the destination): one call for many rows.
template <int KC, bool ACC, typename S, typename A>
FG_ALWAYS_INLINE void wsum2d_k(A* dst, int64_t ds, const S* src, int64_t ks, int64_t ss, const A* w, int64_t rows,
                               int64_t n) {
  const A w0 = w[0], w1 = KC > 1 ? w[1] : A(0), w2 = KC > 2 ? w[2] : A(0), w3 = KC > 3 ? w[3] : A(0);
  for (int64_t r = 0; r < rows; ++r) {
    A* FG_RESTRICT d = dst + r * ds;
    const S* FG_RESTRICT s0 = src + r * ss;
    const S* FG_RESTRICT s1 = s0 + (KC > 1 ? ks : 0);
    const S* FG_RESTRICT s2 = s0 + (KC > 2 ? 2 * ks : 0);
    const S* FG_RESTRICT s3 = s0 + (KC > 3 ? 3 * ks : 0);
    for (int64_t i = 0; i < n; ++i) {
      A v = w0 * ld(s0[i]);
      if constexpr (KC > 1) v += w1 * ld(s1[i]);
      if constexpr (KC > 2) v += w2 * ld(s2[i]);
      if constexpr (KC > 3) v += w3 * ld(s3[i]);
      if constexpr (ACC) {
        d[i] += v;
      } else {
        d[i] = v;
      }
    }
  }
}

template <typename S, typename A>
FG_ALWAYS_INLINE void wsum2d(A* dst, int64_t ds, const S* src, int64_t ks, int64_t ss, const A* w, int64_t K,
                             int64_t rows, int64_t n) {
  if (n <= 0 || rows <= 0) return;
  if (K == 0) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < n; ++i) dst[r * ds + i] = A(0);
    return;
  }
  for (int64_t k = 0; k < K; k += 4) {
    const int64_t kc = std::min<int64_t>(K - k, 4);
    const S* sk = src + k * ks;
    if (k > 0) {
      switch (kc) {
        case 1: wsum2d_k<1, true>(dst, ds, sk, ks, ss, w + k, rows, n); break;
        case 2: wsum2d_k<2, true>(dst, ds, sk, ks, ss, w + k, rows, n); break;
        case 3: wsum2d_k<3, true>(dst, ds, sk, ks, ss, w + k, rows, n); break;
        default: wsum2d_k<4, true>(dst, ds, sk, ks, ss, w + k, rows, n); break;
      }
    } else {
      switch (kc) {
        case 1: wsum2d_k<1, false>(dst, ds, sk, ks, ss, w + k, rows, n); break;
        case 2: wsum2d_k<2, false>(dst, ds, sk, ks, ss, w + k, rows, n); break;
        case 3: wsum2d_k<3, false>(dst, ds, sk, ks, ss, w + k, rows, n); break;
        default: wsum2d_k<4, false>(dst, ds, sk, ks, ss, w + k, rows, n); break;
      }
    }
  }
}

// ---------------------------------------------------------------------------- plans (built outside the clones)
// Tap tables in the two math types.
struct Taps {
  std::vector<float> xf, yf, kf;
  std::vector<double> xd, yd, kd;
  template <typename A>
  const A* x() const {
    if constexpr (sizeof(A) == 4) return xf.data(); else return xd.data();
  }
  template <typename A>
  const A* y() const {
    if constexpr (sizeof(A) == 4) return yf.data(); else return yd.data();
  }
  template <typename A>
  const A* k() const {
    if constexpr (sizeof(A) == 4) return kf.data(); else return kd.data();
  }
};

Taps make_taps(const Upfirdn2dArgs& a) {
  Taps t;
  if (a.separable) {
    t.xd.assign(a.kx, a.kx + a.fw);
    t.yd.assign(a.ky, a.ky + a.fh);
  } else {
    t.kd.assign(a.k2, a.k2 + a.fh * a.fw);
  }
  t.xf.assign(t.xd.begin(), t.xd.end());
  t.yf.assign(t.yd.begin(), t.yd.end());
  t.kf.assign(t.kd.begin(), t.kd.end());
  return t;
}

// One horizontal sub-pass: dst[q] (+)= sum_{t < nt} w[t] src[off + q + t], q < n, for one row. Over
// a band of rows laid out with a fixed row stride (in the buffer and in the destination) one call
// covers every row: q runs across rows, the few entries between rows are computed and ignored.
struct SubPass {
  int64_t off, n, nt, tap0;
  int64_t src;  // kInPhases: the de-interleaved input phase it reads
  int64_t dst;  // kOutPhases: the output phase it writes
};

enum : int { kOutPhases = 0, kInPhases = 1, kGeneric = 2 };

// The vertical taps of output row oy that land on real samples: input rows i0 + t with filter rows
// a0 + t uy, t < n.
struct VTaps {
  int64_t i0, a0, n;
};
FG_ALWAYS_INLINE VTaps vert_taps(const Upfirdn2dArgs& a, int64_t oy) {
  const int64_t base = oy * a.dy - a.py0;
  int64_t a0 = pos_mod(-base, a.uy);
  int64_t i0 = (base + a0) / a.uy;  // exact
  if (i0 < 0) {                      // skip the taps above the image
    a0 += -i0 * a.uy;
    i0 = 0;
  }
  const int64_t n = a0 < a.fh ? std::min((a.fh - a0 + a.uy - 1) / a.uy, a.H - i0) : 0;
  return {i0, a0, std::max<int64_t>(n, 0)};
}

struct RowPlan {  // NCHW
  int mode = kGeneric;
  int64_t L = 0, B = 0;  // buffer row: input column j at L + j; B entries used (zeros outside [L, L + W))
  int64_t stride = 0;    // row stride of the band buffer (>= B; a multiple of dx with kInPhases)
  int64_t ostride = 0;   // row stride of the destination: stride (kOutPhases), stride / dx (kInPhases), Wo
  int64_t nphase = 1;    // kOutPhases: ux output phases (ox mod ux); kInPhases: dx input phases
  int64_t tstep = 1;     // tap stride of the sub-passes (ux or dx)
  int64_t rows = 1;      // band rows
  std::vector<SubPass> subs;
  // Vertical taps (vert_taps) grouped: output rows oy0 + m step (m < count) read input rows i0 + m istep + t with
  // filter rows a0 + t uy, t < nv (rows of one phase with all the same taps: one call per group).
  struct VGroup {
    int64_t oy0, step, count, i0, istep, a0, nv;
  };
  std::vector<VGroup> groups;
  // sub-pass weights: filter row a (0 when separable), sub-pass s, tap t at ((a S + s) maxnt + t)
  std::vector<float> wf;
  std::vector<double> wd;
  int64_t maxnt = 1;
  template <typename A>
  const A* w() const {
    if constexpr (sizeof(A) == 4) return wf.data(); else return wd.data();
  }
};

RowPlan make_row_plan(const Upfirdn2dArgs& a) {
  RowPlan p;
  const int64_t W = a.W, Wo = a.Wo, ux = a.ux, dx = a.dx, fw = a.fw, px0 = a.px0;
  // Margins beyond this (huge padding next to a huge crop) go to the bounds-checked loop instead.
  const int64_t limit = 4 * (W + Wo + fw) + 4096;
  bool ok = false;
  if (dx == 1 && ux <= 8) {
    p.mode = kOutPhases;
    p.nphase = std::min(ux, Wo);
    p.tstep = ux;
    int64_t lo = 0, hi = W;  // buffer index range read, relative to column 0
    for (int64_t r = 0; r < p.nphase; ++r) {
      SubPass s{};
      const int64_t m0 = r - px0;
      const int64_t b0 = pos_mod(-m0, ux);
      const int64_t j0 = (m0 + b0) / ux;  // exact
      s.n = (Wo - r + ux - 1) / ux;
      s.nt = b0 < fw ? (fw - b0 + ux - 1) / ux : 0;
      s.tap0 = b0;
      s.off = j0;  // relative to column 0; L is added below
      s.dst = r;
      if (s.nt > 0) {
        lo = std::min(lo, j0);
        hi = std::max(hi, j0 + s.n - 1 + s.nt);
      }
      p.subs.push_back(s);
    }
    p.L = -lo;
    p.B = hi - lo;
    p.stride = p.B;  // also holds each output phase's row (a phase without taps can outrun B)
    for (auto& s : p.subs) {
      s.off += p.L;
      p.stride = std::max(p.stride, s.n);
    }
    ok = p.L <= limit && p.B <= limit + W;
  } else if (ux == 1 && dx <= 8) {
    p.mode = kInPhases;
    p.nphase = dx;
    p.tstep = dx;
    p.L = std::max<int64_t>(px0, 0);
    const int64_t e0 = p.L - px0;  // buffer index of tap 0 of output 0 (>= 0)
    p.B = std::max(p.L + W, e0 + (Wo - 1) * dx + fw);
    for (int64_t s = 0; s < dx; ++s) {
      SubPass sp{};
      const int64_t b0 = pos_mod(s - e0, dx);
      sp.nt = b0 < fw ? (fw - b0 + dx - 1) / dx : 0;
      if (sp.nt == 0) continue;
      sp.tap0 = b0;
      sp.src = s;
      sp.off = (e0 + b0) / dx;
      sp.n = Wo;
      p.subs.push_back(sp);
    }
    p.stride = (p.B + dx - 1) / dx * dx;
    ok = p.L <= limit && p.B <= limit + W;
  }
  if (!ok) {
    p.mode = kGeneric;
    p.subs.clear();
    p.nphase = 1;
    p.L = 0;
    p.B = p.stride = W;
  }
  p.ostride = p.mode == kOutPhases ? p.stride : (p.mode == kInPhases ? p.stride / dx : Wo);
  // Bands of rows keep the buffers L1/L2-resident; the 2-D path runs one row at a time.
  p.rows = a.separable ? std::clamp<int64_t>(4096 / std::max<int64_t>({p.stride, Wo, 1}), 1, 256) : 1;

  // group the rows of each phase oy = r (mod P) (P: the period of the taps' pattern) into runs
  // with the same taps and input rows advancing by a constant step
  const int64_t P = a.uy / std::gcd(a.uy, a.dy), istep = P * a.dy / a.uy;
  for (int64_t r = 0; r < std::min(P, a.Ho); ++r) {
    for (int64_t oy = r; oy < a.Ho; oy += P) {
      const VTaps v = vert_taps(a, oy);
      if (!p.groups.empty()) {
        RowPlan::VGroup& g = p.groups.back();
        const int64_t m = g.count;
        if (g.step == P && g.oy0 + m * P == oy && g.a0 == v.a0 && g.nv == v.n &&
            (g.nv == 0 || g.i0 + m * g.istep == v.i0)) {
          ++g.count;
          continue;
        }
      }
      p.groups.push_back({oy, P, 1, v.i0, istep, v.a0, v.n});
    }
  }
  const int64_t S = static_cast<int64_t>(p.subs.size()), frows = a.separable ? 1 : a.fh;
  for (const SubPass& s : p.subs) p.maxnt = std::max(p.maxnt, s.nt);
  p.wd.assign(frows * std::max<int64_t>(S, 1) * p.maxnt, 0.0);
  for (int64_t r = 0; r < frows; ++r) {
    const double* krow = a.separable ? a.kx : a.k2 + r * fw;
    for (int64_t si = 0; si < S; ++si)
      for (int64_t t = 0; t < p.subs[si].nt; ++t)
        p.wd[(r * S + si) * p.maxnt + t] = krow[p.subs[si].tap0 + t * p.tstep];
  }
  p.wf.assign(p.wd.begin(), p.wd.end());
  return p;
}

// Raw workspace of one dispatcher call, typed inside the clones.
struct Workspace {
  std::vector<double> mem;
  std::vector<const void*> ptrs;
};

// ---------------------------------------------------------------------------- NCHW rows
template <typename A>
FG_ALWAYS_INLINE void generic_row(const A* FG_RESTRICT buf, const A* krow, A* FG_RESTRICT dst, int64_t W, int64_t Wo,
                                  int64_t ux, int64_t dx, int64_t px0, int64_t fw, bool acc) {
  for (int64_t ox = 0; ox < Wo; ++ox) {
    const int64_t m = ox * dx - px0;
    const int64_t b0 = pos_mod(-m, ux);
    int64_t j = (m + b0) / ux;
    A s = A(0);
    for (int64_t b = b0; b < fw; b += ux, ++j)
      if (j >= 0 && j < W) s += krow[b] * buf[j];
    dst[ox] = acc ? dst[ox] + s : s;
  }
}

// Workspace layout of the NCHW path (in doubles): buf | din | ph | orow | w
struct NchwLayout {
  int64_t buf, din, ph, orow, w, total;
  int64_t phase_cap;  // entries per output phase (kOutPhases) or de-interleaved input phase (kInPhases)
};

NchwLayout nchw_layout(const RowPlan& p, const Upfirdn2dArgs& a) {
  NchwLayout l{};
  auto up = [](int64_t v) { return (v + 15) / 16 * 16; };  // 128-byte aligned pieces
  const int64_t band = p.rows * p.stride;
  l.phase_cap = p.mode == kInPhases ? p.rows * p.ostride : band;
  l.buf = 0;
  l.din = l.buf + up(band + 16);
  l.ph = l.din + up(p.mode == kInPhases ? band + 16 : 0);
  l.orow = l.ph + up(p.mode == kOutPhases ? p.nphase * band + 16 : 0);
  l.w = l.orow + up(p.mode != kOutPhases ? p.rows * p.ostride + 16 : 0);
  l.total = l.w + up(std::max(a.fw, a.fh) + 16);
  return l;
}

// The horizontal pass of `nr` band rows: buf -> the output phases `ph` (kOutPhases) or `orow`,
// accumulating when `acc`. wts: the sub-passes' weights for this filter row; krow: its raw taps.
template <typename A>
FG_ALWAYS_INLINE void hband(const RowPlan& p, const NchwLayout& l, const Upfirdn2dArgs& a, const A* wts,
                            const A* krow, A* buf, A* din, A* ph, A* orow, const A** ptrs, int64_t nr, bool acc) {
  if (p.mode == kGeneric) {
    for (int64_t k = 0; k < nr; ++k)
      generic_row(buf + k * p.stride, krow, orow + k * p.ostride, a.W, a.Wo, a.ux, a.dx, a.px0, a.fw, acc);
    return;
  }
  if (p.mode == kInPhases) {  // de-interleave: din[s * cap + m] = buf[m * dx + s]
    const int64_t dx = a.dx, cap = l.phase_cap, cnt = nr * p.ostride;
    if (dx == 2) {
      A* FG_RESTRICT d0 = din;
      A* FG_RESTRICT d1 = din + cap;
      const A* FG_RESTRICT bb = buf;
      for (int64_t m = 0; m < cnt; ++m) {
        d0[m] = bb[2 * m];
        d1[m] = bb[2 * m + 1];
      }
    } else {
      for (int64_t s = 0; s < dx; ++s) {
        A* FG_RESTRICT d = din + s * cap;
        const A* FG_RESTRICT bb = buf + s;
        for (int64_t m = 0; m < cnt; ++m) d[m] = bb[m * dx];
      }
    }
  }
  bool first = !acc;
  const int64_t S = static_cast<int64_t>(p.subs.size());
  for (int64_t si = 0; si < S; ++si) {
    const SubPass& s = p.subs[si];
    const bool in = p.mode == kInPhases;
    const A* src = in ? din + s.src * l.phase_cap + s.off : buf + s.off;
    A* dst = in ? orow : ph + s.dst * l.phase_cap;
    for (int64_t t = 0; t < s.nt; ++t) ptrs[t] = src + t;
    wsum(dst, ptrs, wts + si * p.maxnt, s.nt, (nr - 1) * p.ostride + s.n, in ? !first : acc);
    first = false;
  }
  if (p.mode == kInPhases && S == 0 && !acc) wsum(orow, ptrs, wts, 0, (nr - 1) * p.ostride + a.Wo, false);
}

// Store output row k of the band as T, interleaving the output phases.
template <typename T, typename A>
FG_ALWAYS_INLINE void emit_row(const RowPlan& p, const NchwLayout& l, const A* ph, const A* orow, int64_t k,
                               T* FG_RESTRICT dst, int64_t Wo) {
  if (p.mode == kOutPhases && p.nphase > 1) {
    const int64_t ux = p.tstep;  // output phase r holds the columns ox = r (mod ux)
    const A* base = ph + k * p.stride;
    if (ux == 2) {
      const A* FG_RESTRICT p0 = base;
      const A* FG_RESTRICT p1 = base + l.phase_cap;
      const int64_t pairs = Wo / 2;
      for (int64_t q = 0; q < pairs; ++q) {
        dst[2 * q] = Io<T>::st(p0[q]);
        dst[2 * q + 1] = Io<T>::st(p1[q]);
      }
      if (Wo & 1) dst[Wo - 1] = Io<T>::st(p0[pairs]);
    } else {
      for (int64_t r = 0; r < p.nphase; ++r) {
        const A* FG_RESTRICT pr = base + r * l.phase_cap;
        const int64_t n = (Wo - r + ux - 1) / ux;
        for (int64_t q = 0; q < n; ++q) dst[r + q * ux] = Io<T>::st(pr[q]);
      }
    }
    return;
  }
  const A* FG_RESTRICT src = p.mode == kOutPhases ? ph + k * p.stride : orow + k * p.ostride;
  for (int64_t i = 0; i < Wo; ++i) dst[i] = Io<T>::st(src[i]);
}

// Vertical sums of band rows [0, nr) starting at output row oy of the current plane, one wsum2d per
// group of rows (stepping through planes with `advance`); row k goes to buf + k stride + col0.
template <typename T, typename A, typename Adv>
FG_ALWAYS_INLINE void vertical_band(const Upfirdn2dArgs& a, const RowPlan& p, const A* ky, A* buf, int64_t col0,
                                    A* w, const T*& xp, int64_t& oy, Adv& advance, int64_t nr) {
  const int64_t Ho = a.Ho, stride = p.stride;
  for (int64_t k0 = 0; k0 < nr;) {
    const int64_t ya = oy, yb = std::min(Ho, oy + (nr - k0));
    for (const RowPlan::VGroup& g : p.groups) {
      const int64_t last = g.oy0 + (g.count - 1) * g.step;
      if (last < ya || g.oy0 >= yb) continue;
      const int64_t m0 = g.oy0 >= ya ? 0 : (ya - g.oy0 + g.step - 1) / g.step;
      const int64_t m1 = std::min(g.count, (yb - g.oy0 + g.step - 1) / g.step);
      if (m1 <= m0) continue;
      const int64_t oyf = g.oy0 + m0 * g.step;
      for (int64_t t = 0; t < g.nv; ++t) w[t] = ky[g.a0 + t * a.uy];
      wsum2d(buf + (k0 + oyf - ya) * stride + col0, g.step * stride, xp + (g.i0 + m0 * g.istep) * a.sxh, a.sxh,
             g.istep * a.sxh, w, g.nv, m1 - m0, a.W);
    }
    k0 += yb - ya;
    oy = yb - 1;
    advance();
  }
}

template <typename T>
FG_ALWAYS_INLINE void nchw_rows(const Upfirdn2dArgs& a, const RowPlan& p, const Taps& taps, const NchwLayout& l,
                                double* mem, const void** vptrs, int64_t begin, int64_t end) {
  using A = typename Io<T>::A;
  const T* FG_RESTRICT x = static_cast<const T*>(a.x);
  T* FG_RESTRICT out = static_cast<T*>(a.out);
  A* buf = reinterpret_cast<A*>(mem + l.buf);
  A* din = reinterpret_cast<A*>(mem + l.din);
  A* ph = reinterpret_cast<A*>(mem + l.ph);
  A* orow = reinterpret_cast<A*>(mem + l.orow);
  A* w = reinterpret_cast<A*>(mem + l.w);
  const A** hptrs = reinterpret_cast<const A**>(vptrs);
  const A* kx = taps.template x<A>();
  const A* ky = taps.template y<A>();
  const A* k2 = taps.template k<A>();
  const A* wts = p.template w<A>();
  const int64_t W = a.W, Ho = a.Ho, Wo = a.Wo, C = a.C, uy = a.uy, fw = a.fw, L = p.L, stride = p.stride;
  const int64_t S = static_cast<int64_t>(p.subs.size());
  const int64_t R = p.rows;
  for (int64_t i = 0; i < R * stride; ++i) buf[i] = A(0);  // margins stay zero

  int64_t plane = begin / Ho, oy = begin % Ho;
  const T* xp = x + (plane / C) * a.sxn + (plane % C) * a.sxc;
  auto advance = [&]() FG_LAMBDA_INLINE {
    if (++oy == Ho) {
      oy = 0;
      ++plane;
      xp = x + (plane / C) * a.sxn + (plane % C) * a.sxc;
    }
  };
  for (int64_t r0 = begin; r0 < end; r0 += R) {
    const int64_t nr = std::min(R, end - r0);
    T* dst0 = out + r0 * Wo;
    if (a.separable) {
      vertical_band<T>(a, p, ky, buf, L, w, xp, oy, advance, nr);
      hband(p, l, a, wts, kx, buf, din, ph, orow, hptrs, nr, false);
      for (int64_t k = 0; k < nr; ++k) emit_row(p, l, ph, orow, k, dst0 + k * Wo, Wo);
    } else {  // 2-D filter: one row, each of its input rows filtered with its row of taps
      const VTaps v = vert_taps(a, oy);
      const int64_t nv = v.n;
      if (nv == 0) {
        for (int64_t i = 0; i < Wo; ++i) dst0[i] = Io<T>::st(A(0));
      } else {
        const int64_t i0 = v.i0, a0 = v.a0;
        for (int64_t t = 0; t < nv; ++t) {
          const T* FG_RESTRICT xr = xp + (i0 + t) * a.sxh;
          A* FG_RESTRICT bl = buf + L;
          for (int64_t j = 0; j < W; ++j) bl[j] = ld(xr[j]);
          const int64_t fa = a0 + t * uy;
          hband(p, l, a, wts + fa * S * p.maxnt, k2 + fa * fw, buf, din, ph, orow, hptrs, 1, t > 0);
        }
        emit_row(p, l, ph, orow, 0, dst0, Wo);
      }
      advance();
    }
  }
}

// ---------------------------------------------------------------------------- channels last
struct ClPlan {
  std::vector<int64_t> hs;  // output column ox: taps hs[ox] .. hs[ox + 1]
  std::vector<int64_t> hj;  // input column of each tap (inside [0, W))
  std::vector<int64_t> hb;  // filter column of each tap
  std::vector<float> hkf;   // separable: kx[hb]
  std::vector<double> hkd;
  int64_t jlo = 0, jhi = -1;  // input columns read
  int64_t maxtaps = 0;
  template <typename A>
  const A* hk() const {
    if constexpr (sizeof(A) == 4) return hkf.data(); else return hkd.data();
  }
};

ClPlan make_cl_plan(const Upfirdn2dArgs& a) {
  ClPlan p;
  p.hs.assign(a.Wo + 1, 0);
  p.jlo = a.W;
  for (int64_t ox = 0; ox < a.Wo; ++ox) {
    p.hs[ox] = static_cast<int64_t>(p.hj.size());
    const int64_t m = ox * a.dx - a.px0;
    const int64_t b0 = pos_mod(-m, a.ux);
    int64_t j = (m + b0) / a.ux;
    for (int64_t b = b0; b < a.fw; b += a.ux, ++j) {
      if (j < 0) continue;
      if (j >= a.W) break;
      p.hj.push_back(j);
      p.hb.push_back(b);
      if (a.separable) p.hkd.push_back(a.kx[b]);
      p.jlo = std::min(p.jlo, j);
      p.jhi = std::max(p.jhi, j);
    }
    p.maxtaps = std::max(p.maxtaps, static_cast<int64_t>(p.hj.size()) - p.hs[ox]);
  }
  p.hs[a.Wo] = static_cast<int64_t>(p.hj.size());
  p.hkf.assign(p.hkd.begin(), p.hkd.end());
  if (p.jhi < p.jlo) p.jlo = 0, p.jhi = -1;
  return p;
}

struct ClLayout {
  int64_t tb, acc, w, total;
};

ClLayout cl_layout(const ClPlan& p, const Upfirdn2dArgs& a, int64_t cb) {
  ClLayout l{};
  auto up = [](int64_t v) { return (v + 15) / 16 * 16; };
  const int64_t span = std::max<int64_t>(p.jhi - p.jlo + 1, 0);
  l.tb = 0;
  l.acc = l.tb + up(a.separable ? span * cb + 16 : 16);
  l.w = l.acc + up(cb + 16);
  l.total = l.w + up(std::max(a.fw * a.fh, a.fw + a.fh) + 16);
  return l;
}

template <typename T>
FG_ALWAYS_INLINE void cl_items(const Upfirdn2dArgs& a, const ClPlan& p, const Taps& taps, const ClLayout& l,
                               double* mem, const void** vptrs, int64_t* rtap, int64_t cb, int64_t begin,
                               int64_t end) {
  using A = typename Io<T>::A;
  const T* FG_RESTRICT x = static_cast<const T*>(a.x);
  T* FG_RESTRICT out = static_cast<T*>(a.out);
  A* tb = reinterpret_cast<A*>(mem + l.tb);
  A* acc = reinterpret_cast<A*>(mem + l.acc);
  A* w = reinterpret_cast<A*>(mem + l.w);
  const int64_t C = a.C, H = a.H, Ho = a.Ho, Wo = a.Wo, uy = a.uy, dy = a.dy, fh = a.fh, fw = a.fw;
  const int64_t nblk = (C + cb - 1) / cb;
  const int64_t span = p.jhi - p.jlo + 1;
  // vptrs: [fh] input rows, then up to fw * fh source pointers; rtap: the rows' vertical taps
  const T** rows = reinterpret_cast<const T**>(vptrs);
  const void** src = vptrs + fh + 1;
  const A* ky = taps.template y<A>();
  const A* k2 = taps.template k<A>();
  const A* hk = p.template hk<A>();

  for (int64_t item = begin; item < end; ++item) {
    const int64_t blk = item % nblk;
    const int64_t row = item / nblk;  // n * Ho + oy
    const int64_t n = row / Ho, oy = row % Ho;
    const int64_t c0 = blk * cb, ncb = std::min(cb, C - c0);
    const T* xb = x + n * a.sxn + c0;
    T* orow = out + row * Wo * C + c0;  // dense channels_last output
    const int64_t base = oy * dy - a.py0;
    int64_t nv = 0;
    for (int64_t av = pos_mod(-base, uy); av < fh; av += uy) {
      const int64_t i = (base + av) / uy;
      if (i < 0) continue;
      if (i >= H) break;
      rows[nv] = xb + i * a.sxh;
      rtap[nv] = av;
      ++nv;
    }
    auto put = [&](int64_t ox, const A* v) FG_LAMBDA_INLINE {
      T* FG_RESTRICT d = orow + ox * C;
      for (int64_t c = 0; c < ncb; ++c) d[c] = Io<T>::st(v[c]);
    };
    if (nv == 0 || span <= 0) {
      for (int64_t c = 0; c < ncb; ++c) acc[c] = A(0);
      for (int64_t ox = 0; ox < Wo; ++ox) put(ox, acc);
    } else if (a.separable) {
      for (int64_t t = 0; t < nv; ++t) w[t] = ky[rtap[t]];
      const T** s = reinterpret_cast<const T**>(src);
      if (ncb == C && a.sxw == C) {  // the needed columns of each row are one contiguous run
        for (int64_t t = 0; t < nv; ++t) s[t] = rows[t] + p.jlo * C;
        wsum(tb, s, w, nv, span * C, false);
      } else {
        for (int64_t j = 0; j < span; ++j) {
          for (int64_t t = 0; t < nv; ++t) s[t] = rows[t] + (p.jlo + j) * a.sxw;
          wsum(tb + j * cb, s, w, nv, ncb, false);
        }
      }
      const int64_t tstride = (ncb == C && a.sxw == C) ? C : cb;
      const A** hs = reinterpret_cast<const A**>(src);
      for (int64_t ox = 0; ox < Wo; ++ox) {
        const int64_t t0 = p.hs[ox], nt = p.hs[ox + 1] - t0;
        for (int64_t t = 0; t < nt; ++t) hs[t] = tb + (p.hj[t0 + t] - p.jlo) * tstride;
        wsum(acc, hs, hk + t0, nt, ncb, false);
        put(ox, acc);
      }
    } else {
      const T** s = reinterpret_cast<const T**>(src);
      for (int64_t ox = 0; ox < Wo; ++ox) {
        const int64_t t0 = p.hs[ox], nt = p.hs[ox + 1] - t0;
        int64_t K = 0;
        for (int64_t v = 0; v < nv; ++v) {
          for (int64_t t = 0; t < nt; ++t) {
            s[K] = rows[v] + p.hj[t0 + t] * a.sxw;
            w[K] = k2[rtap[v] * fw + p.hb[t0 + t]];
            ++K;
          }
        }
        wsum(acc, s, w, K, ncb, false);
        put(ox, acc);
      }
    }
  }
}

// ---------------------------------------------------------------------------- clones
#define FG_UFD_CLONES(SUF, T)                                                                              \
  FG_CLONES void nchw_##SUF(const Upfirdn2dArgs& a, const RowPlan& p, const Taps& t, const NchwLayout& l,  \
                            double* mem, const void** ptrs, int64_t b, int64_t e) {                        \
    nchw_rows<T>(a, p, t, l, mem, ptrs, b, e);                                                             \
  }                                                                                                        \
  FG_CLONES void cl_##SUF(const Upfirdn2dArgs& a, const ClPlan& p, const Taps& t, const ClLayout& l,       \
                          double* mem, const void** ptrs, int64_t* it, int64_t cb, int64_t b, int64_t e) { \
    cl_items<T>(a, p, t, l, mem, ptrs, it, cb, b, e);                                                      \
  }

FG_UFD_CLONES(f32, float)
FG_UFD_CLONES(f16, f16_t)
FG_UFD_CLONES(bf16, bf16_t)
FG_UFD_CLONES(f64, double)

}  // namespace

void upfirdn2d_nchw(DType dt, const Upfirdn2dArgs& a, int64_t begin, int64_t end) {
  if (begin >= end) return;
  const RowPlan p = make_row_plan(a);
  const Taps taps = make_taps(a);
  const NchwLayout l = nchw_layout(p, a);
  Workspace ws;
  ws.mem.assign(l.total, 0.0);
  ws.ptrs.assign(2 * (a.fw + a.fh) + 8, nullptr);
  switch (dt) {
    case DType::Float32: nchw_f32(a, p, taps, l, ws.mem.data(), ws.ptrs.data(), begin, end); break;
    case DType::Float16: nchw_f16(a, p, taps, l, ws.mem.data(), ws.ptrs.data(), begin, end); break;
    case DType::BFloat16: nchw_bf16(a, p, taps, l, ws.mem.data(), ws.ptrs.data(), begin, end); break;
    case DType::Float64: nchw_f64(a, p, taps, l, ws.mem.data(), ws.ptrs.data(), begin, end); break;
  }
}

void upfirdn2d_cl(DType dt, const Upfirdn2dArgs& a, int64_t cblock, int64_t begin, int64_t end) {
  if (begin >= end) return;
  const ClPlan p = make_cl_plan(a);
  const Taps taps = make_taps(a);
  const ClLayout l = cl_layout(p, a, cblock);
  Workspace ws;
  ws.mem.assign(l.total, 0.0);
  ws.ptrs.assign(a.fh + 1 + a.fw * a.fh + a.fw + 8, nullptr);
  std::vector<int64_t> ints(a.fh + 1, 0);
  switch (dt) {
    case DType::Float32: cl_f32(a, p, taps, l, ws.mem.data(), ws.ptrs.data(), ints.data(), cblock, begin, end); break;
    case DType::Float16: cl_f16(a, p, taps, l, ws.mem.data(), ws.ptrs.data(), ints.data(), cblock, begin, end); break;
    case DType::BFloat16: cl_bf16(a, p, taps, l, ws.mem.data(), ws.ptrs.data(), ints.data(), cblock, begin, end); break;
    case DType::Float64: cl_f64(a, p, taps, l, ws.mem.data(), ws.ptrs.data(), ints.data(), cblock, begin, end); break;
  }
}

int64_t upfirdn2d_cl_block(const Upfirdn2dArgs& a) {
  // Keep the separable path's column buffer (input columns x channels, fp32) near 64 KB.
  const int64_t budget = 16384;
  const int64_t span = std::max<int64_t>(a.W, 1);
  if (a.C * span <= budget) return std::max<int64_t>(a.C, 1);
  const int64_t cb = std::max<int64_t>(budget / span / 16 * 16, 16);
  return std::min(cb, a.C);
}

}  // namespace cpu
}  // namespace fastgen
