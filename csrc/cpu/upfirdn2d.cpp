// CPU kernels of upfirdn2d (see upfirdn2d.h). Direct polyphase computation, no materialised
// upsampled / padded image.
//
// NCHW (rows contiguous, vectorised along W). One output row at a time, from an L1-resident row
// buffer holding one input-width row with zero margins on both sides (so the tap loops need no
// bounds checks):
//   separable filter: the vertical pass sums the ceil(fh / uy) input rows that land on real samples
//     into the buffer (fp32 math), then one horizontal polyphase pass produces the output row;
//   2-D filter: each of those input rows is converted into the buffer and filtered horizontally
//     with its row of taps, accumulating.
// The horizontal pass is a few "sub-passes" dst[q] (+)= sum_t w[t] src[off + q + t]: with dx = 1
// one per output phase (ox mod ux; the phases are interleaved when the row is stored), with
// ux = 1 and dx > 1 one per input phase (the buffer de-interleaved by ox mod dx first, so only the
// kept outputs are computed and every load is unit-stride); both up and down on one axis, or huge
// margins, use a bounds-checked scalar loop.
//
// Channels last (C contiguous, vectorised across C): one output row of a block of channels per
// work item; separable: vertical sums of the needed input columns into a buffer, then per output
// column the horizontal taps; 2-D: per output column the weighted sum of the (row, column) taps
// straight from x. The per-column tap lists are built once per call.
//
// Every hot loop is an always_inline helper instantiated in the FG_CLONES entry points (AVX-512,
// AVX2, baseline), which receive all their buffers from the plain dispatchers (no library code
// runs inside a clone except inlined templates).
#include "upfirdn2d.h"

#include <algorithm>
#include <vector>

#include "fastgen/convert.h"
#include "stream.h"  // FG_CLONES, FG_LAMBDA_INLINE, stream_store

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

// One horizontal sub-pass: dst[q] (+)= sum_{t < nt} k[tap0 + t * tstep] * src[off + q + t], q < n.
struct SubPass {
  int64_t off, n, nt, tap0;
  int64_t src;  // mode 0: unused (the row buffer); mode 1: the de-interleaved input phase
  int64_t dst;  // mode 0: the output phase; mode 1: 0 (the output row)
};

enum : int { kOutPhases = 0, kInPhases = 1, kGeneric = 2 };

struct RowPlan {  // NCHW horizontal pass
  int mode = kGeneric;
  int64_t L = 0, B = 0;  // row buffer: input column j at buf[L + j], length B, zeros outside [L, L + W)
  int64_t nphase = 1;    // mode 0: ux output phases; mode 1: dx input phases
  int64_t plen = 0;      // length of each phase buffer
  int64_t tstep = 1;     // tap stride of the sub-passes (ux or dx)
  std::vector<SubPass> subs;
};

RowPlan make_row_plan(const Upfirdn2dArgs& a) {
  RowPlan p;
  const int64_t W = a.W, Wo = a.Wo, ux = a.ux, dx = a.dx, fw = a.fw, px0 = a.px0;
  // Margins beyond this (huge padding next to a huge crop) go to the bounds-checked loop instead.
  const int64_t limit = 4 * (W + Wo + fw) + 4096;
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
      s.src = 0;
      if (s.nt > 0) {
        lo = std::min(lo, j0);
        hi = std::max(hi, j0 + s.n - 1 + s.nt);
      }
      p.plen = std::max(p.plen, s.n);
      p.subs.push_back(s);
    }
    p.L = -lo;
    p.B = hi - lo;
    for (auto& s : p.subs) s.off += p.L;
    if (p.L <= limit && p.B <= limit + W) return p;
  } else if (ux == 1 && dx <= 8) {
    p.mode = kInPhases;
    p.nphase = dx;
    p.tstep = dx;
    p.L = std::max<int64_t>(px0, 0);
    const int64_t e0 = p.L - px0;  // buffer index of tap 0 of output 0 (>= 0)
    p.B = std::max(p.L + W, e0 + (Wo - 1) * dx + fw);
    p.plen = (p.B + dx - 1) / dx;
    for (int64_t s = 0; s < dx; ++s) {
      SubPass sp{};
      const int64_t b0 = pos_mod(s - e0, dx);
      sp.nt = b0 < fw ? (fw - b0 + dx - 1) / dx : 0;
      if (sp.nt == 0) continue;
      sp.tap0 = b0;
      sp.src = s;
      sp.off = (e0 + b0) / dx;
      sp.n = Wo;
      sp.dst = 0;
      p.subs.push_back(sp);
    }
    if (p.L <= limit && p.B <= limit + W) return p;
  }
  RowPlan g;
  g.mode = kGeneric;
  g.L = 0;
  g.B = W;
  g.plen = Wo;
  return g;
}

// Raw workspace of one dispatcher call, typed inside the clones.
struct Workspace {
  std::vector<double> mem;
  std::vector<const void*> ptrs;
  std::vector<int64_t> ints;
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

// The horizontal pass of one row: buf (row buffer, margins zero) -> phase buffers `ph` (mode 0) or
// the output row `orow` (modes 1, 2), accumulating when `acc`.
template <typename A>
FG_ALWAYS_INLINE void hrow(const RowPlan& p, const Upfirdn2dArgs& a, const A* krow, A* buf, A* din, A* ph, A* orow,
                           const A** ptrs, A* w, bool acc) {
  if (p.mode == kGeneric) {
    generic_row(buf, krow, orow, a.W, a.Wo, a.ux, a.dx, a.px0, a.fw, acc);
    return;
  }
  if (p.mode == kInPhases) {  // de-interleave: din[s * plen + m] = buf[m * dx + s]
    const int64_t dx = a.dx, plen = p.plen, B = p.B;
    if (dx == 2) {
      A* FG_RESTRICT d0 = din;
      A* FG_RESTRICT d1 = din + plen;
      const A* FG_RESTRICT bb = buf;
      const int64_t full = B / 2;
      for (int64_t m = 0; m < full; ++m) {
        d0[m] = bb[2 * m];
        d1[m] = bb[2 * m + 1];
      }
      if (B & 1) d0[full] = bb[B - 1];
    } else {
      for (int64_t s = 0; s < dx; ++s) {
        A* FG_RESTRICT d = din + s * plen;
        const A* FG_RESTRICT bb = buf + s;
        const int64_t cnt = (B - s + dx - 1) / dx;
        for (int64_t m = 0; m < cnt; ++m) d[m] = bb[m * dx];
      }
    }
  }
  bool first = !acc;
  for (const SubPass& s : p.subs) {
    const A* src = p.mode == kInPhases ? din + s.src * p.plen + s.off : buf + s.off;
    A* dst = p.mode == kInPhases ? orow : ph + s.dst * p.plen;
    for (int64_t t = 0; t < s.nt; ++t) {
      ptrs[t] = src + t;
      w[t] = krow[s.tap0 + t * p.tstep];
    }
    wsum(dst, ptrs, w, s.nt, s.n, p.mode == kInPhases ? !first : acc);
    if (p.mode == kInPhases) first = false;
  }
  if (p.mode == kInPhases && first) wsum(orow, ptrs, w, 0, a.Wo, false);  // no taps at all: zeros
}

// Store one output row (from the phase buffers or orow) as T, interleaving the output phases.
template <typename T, typename A>
FG_ALWAYS_INLINE void emit_row(const RowPlan& p, const A* ph, const A* orow, T* FG_RESTRICT dst, int64_t Wo) {
  if (p.mode == kOutPhases && p.nphase > 1) {
    const int64_t ux = p.tstep;  // output phase r holds the columns ox = r (mod ux)
    if (ux == 2) {
      const A* FG_RESTRICT p0 = ph;
      const A* FG_RESTRICT p1 = ph + p.plen;
      const int64_t pairs = Wo / 2;
      for (int64_t q = 0; q < pairs; ++q) {
        dst[2 * q] = Io<T>::st(p0[q]);
        dst[2 * q + 1] = Io<T>::st(p1[q]);
      }
      if (Wo & 1) dst[Wo - 1] = Io<T>::st(p0[pairs]);
    } else {
      for (int64_t r = 0; r < p.nphase; ++r) {
        const A* FG_RESTRICT pr = ph + r * p.plen;
        const int64_t n = (Wo - r + ux - 1) / ux;
        for (int64_t q = 0; q < n; ++q) dst[r + q * ux] = Io<T>::st(pr[q]);
      }
    }
    return;
  }
  const A* FG_RESTRICT src = p.mode == kOutPhases ? ph : orow;
  for (int64_t i = 0; i < Wo; ++i) dst[i] = Io<T>::st(src[i]);
}

// Workspace layout of the NCHW path (in doubles): buf | din | ph | orow | trow | w
struct NchwLayout {
  int64_t buf, din, ph, orow, trow, w, total;
};

NchwLayout nchw_layout(const RowPlan& p, const Upfirdn2dArgs& a) {
  NchwLayout l{};
  auto up = [](int64_t v) { return (v + 15) / 16 * 16; };  // 128-byte aligned pieces
  l.buf = 0;
  l.din = l.buf + up(p.B + 16);
  l.ph = l.din + up(p.mode == kInPhases ? p.nphase * p.plen + 16 : 0);
  l.orow = l.ph + up(p.mode == kOutPhases ? p.nphase * p.plen + 16 : 0);
  l.trow = l.orow + up(a.Wo + 16);
  l.w = l.trow + up(a.Wo + 16);
  l.total = l.w + up(std::max(a.fw, a.fh) + 16);
  return l;
}

template <typename T>
FG_ALWAYS_INLINE void nchw_rows(const Upfirdn2dArgs& a, const RowPlan& p, const Taps& taps, const NchwLayout& l,
                                double* mem, const void** vptrs, int64_t* rtap, int64_t begin, int64_t end) {
  using A = typename Io<T>::A;
  const T* FG_RESTRICT x = static_cast<const T*>(a.x);
  T* FG_RESTRICT out = static_cast<T*>(a.out);
  A* buf = reinterpret_cast<A*>(mem + l.buf);
  A* din = reinterpret_cast<A*>(mem + l.din);
  A* ph = reinterpret_cast<A*>(mem + l.ph);
  A* orow = reinterpret_cast<A*>(mem + l.orow);
  T* trow = reinterpret_cast<T*>(mem + l.trow);
  A* w = reinterpret_cast<A*>(mem + l.w);
  const A** hptrs = reinterpret_cast<const A**>(vptrs);
  const T** rows = reinterpret_cast<const T**>(vptrs + a.fw + 1);
  const A* kx = taps.template x<A>();
  const A* ky = taps.template y<A>();
  const A* k2 = taps.template k<A>();
  const int64_t H = a.H, W = a.W, Ho = a.Ho, Wo = a.Wo, C = a.C, uy = a.uy, dy = a.dy, fh = a.fh, fw = a.fw;
  for (int64_t i = 0; i < p.B; ++i) buf[i] = A(0);

  int64_t plane = begin / Ho, oy = begin % Ho;
  for (int64_t r = begin; r < end; ++r) {
    const T* xp = x + (plane / C) * a.sxn + (plane % C) * a.sxc;
    T* dst = out + r * Wo;
    T* target = a.stream_stores ? trow : dst;
    // the input rows (and their vertical taps) that land on real samples
    const int64_t base = oy * dy - a.py0;
    int64_t nv = 0;
    for (int64_t av = pos_mod(-base, uy); av < fh; av += uy) {
      const int64_t i = (base + av) / uy;  // exact
      if (i < 0) continue;
      if (i >= H) break;
      rows[nv] = xp + i * a.sxh;
      rtap[nv] = av;
      ++nv;
    }
    if (nv == 0) {
      for (int64_t i = 0; i < Wo; ++i) target[i] = Io<T>::st(A(0));
    } else if (a.separable) {
      for (int64_t t = 0; t < nv; ++t) w[t] = ky[rtap[t]];
      wsum(buf + p.L, rows, w, nv, W, false);
      hrow(p, a, kx, buf, din, ph, orow, hptrs, w, false);
      emit_row(p, ph, orow, target, Wo);
    } else {
      for (int64_t t = 0; t < nv; ++t) {
        const T* FG_RESTRICT xr = rows[t];
        A* FG_RESTRICT bl = buf + p.L;
        for (int64_t j = 0; j < W; ++j) bl[j] = ld(xr[j]);
        hrow(p, a, k2 + rtap[t] * fw, buf, din, ph, orow, hptrs, w, t > 0);
      }
      emit_row(p, ph, orow, target, Wo);
    }
    if (a.stream_stores) stream_store(dst, trow, Wo);
    if (++oy == Ho) {
      oy = 0;
      ++plane;
    }
  }
  if (a.stream_stores) stream_fence();
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
  int64_t tb, acc, trow, w, total;
};

ClLayout cl_layout(const ClPlan& p, const Upfirdn2dArgs& a, int64_t cb) {
  ClLayout l{};
  auto up = [](int64_t v) { return (v + 15) / 16 * 16; };
  const int64_t span = std::max<int64_t>(p.jhi - p.jlo + 1, 0);
  l.tb = 0;
  l.acc = l.tb + up(a.separable ? span * cb + 16 : 16);
  l.trow = l.acc + up(cb + 16);
  l.w = l.trow + up(a.stream_stores ? a.Wo * cb + 16 : 16);
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
  T* trow = reinterpret_cast<T*>(mem + l.trow);
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
    const bool stream = a.stream_stores && ncb == C;
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
      T* FG_RESTRICT d = stream ? trow + ox * C : orow + ox * C;
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
    if (stream) stream_store(orow, trow, Wo * C);
  }
  if (a.stream_stores) stream_fence();
}

// ---------------------------------------------------------------------------- clones
#define FG_UFD_CLONES(SUF, T)                                                                              \
  FG_CLONES void nchw_##SUF(const Upfirdn2dArgs& a, const RowPlan& p, const Taps& t, const NchwLayout& l,  \
                            double* mem, const void** ptrs, int64_t* it, int64_t b, int64_t e) {          \
    nchw_rows<T>(a, p, t, l, mem, ptrs, it, b, e);                                                         \
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
  ws.ints.assign(a.fh + 1, 0);
  switch (dt) {
    case DType::Float32: nchw_f32(a, p, taps, l, ws.mem.data(), ws.ptrs.data(), ws.ints.data(), begin, end); break;
    case DType::Float16: nchw_f16(a, p, taps, l, ws.mem.data(), ws.ptrs.data(), ws.ints.data(), begin, end); break;
    case DType::BFloat16: nchw_bf16(a, p, taps, l, ws.mem.data(), ws.ptrs.data(), ws.ints.data(), begin, end); break;
    case DType::Float64: nchw_f64(a, p, taps, l, ws.mem.data(), ws.ptrs.data(), ws.ints.data(), begin, end); break;
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
  ws.ints.assign(a.fh + 1, 0);
  switch (dt) {
    case DType::Float32: cl_f32(a, p, taps, l, ws.mem.data(), ws.ptrs.data(), ws.ints.data(), cblock, begin, end); break;
    case DType::Float16: cl_f16(a, p, taps, l, ws.mem.data(), ws.ptrs.data(), ws.ints.data(), cblock, begin, end); break;
    case DType::BFloat16: cl_bf16(a, p, taps, l, ws.mem.data(), ws.ptrs.data(), ws.ints.data(), cblock, begin, end); break;
    case DType::Float64: cl_f64(a, p, taps, l, ws.mem.data(), ws.ptrs.data(), ws.ints.data(), cblock, begin, end); break;
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
