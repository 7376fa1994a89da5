// Standalone correctness driver for the CPU upfirdn2d kernels (csrc/cpu/upfirdn2d.cpp), no torch.
//
// tests/test_cpu_isa.py compiles this file together with upfirdn2d.cpp once per x86-64 ISA level
// (-DFASTGEN_NO_CLONES -march=<level>) and runs it, so the AVX2 and baseline bodies are checked on
// machines whose loader would pick the AVX-512 clone (the torch tests only run that one).
//
// Every case runs both kernels (NCHW rows, channels-last items with a small channel block) over two
// work ranges that split inside a plane, on strided inputs (a crop view for NCHW, a channel slice
// for channels last), and compares each output element with a double-precision naive evaluation
// of the definition on the very same stored inputs and the double taps the kernel receives:
//   |got - ref| <= 0.5 ulp_T(ref) + kRel * sum |terms|      (kRel: fp32 math, 1e-12 for fp64)
// Prints failing cases and a summary; exits 0 only if everything passed.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "fastgen/convert.h"
#include "upfirdn2d.h"

namespace {

using fastgen::bf16_t;
using fastgen::DType;
using fastgen::f16_t;
namespace fcpu = fastgen::cpu;

template <typename T>
struct Fmt;
template <>
struct Fmt<float> {
  static constexpr DType dtype = DType::Float32;
  static constexpr const char* name = "fp32";
  static constexpr int precision = 24;
  static constexpr double rel = 2e-6;
};
template <>
struct Fmt<f16_t> {
  static constexpr DType dtype = DType::Float16;
  static constexpr const char* name = "fp16";
  static constexpr int precision = 11;
  static constexpr double rel = 2e-6;
};
template <>
struct Fmt<bf16_t> {
  static constexpr DType dtype = DType::BFloat16;
  static constexpr const char* name = "bf16";
  static constexpr int precision = 8;
  static constexpr double rel = 2e-6;
};
template <>
struct Fmt<double> {
  static constexpr DType dtype = DType::Float64;
  static constexpr const char* name = "fp64";
  static constexpr int precision = 53;
  static constexpr double rel = 1e-12;
};

template <typename T>
double to_double(T v) {
  if constexpr (sizeof(T) == 8) return v; else return static_cast<double>(fastgen::to_float(v));
}
template <typename T>
T store(double v) {
  if constexpr (sizeof(T) == 8) return v; else return fastgen::from_float<T>(static_cast<float>(v));
}
template <typename T>
double ulp_of(double v) {
  int e = 0;
  if (v != 0.0) std::frexp(v, &e);
  return std::ldexp(1.0, std::max(e - 1, -126) - (Fmt<T>::precision - 1));
}

int64_t pos_mod(int64_t v, int64_t m) {
  const int64_t r = v % m;
  return r < 0 ? r + m : r;
}
int64_t floor_div(int64_t v, int64_t m) {
  const int64_t q = v / m;
  return (v % m != 0 && v < 0) ? q - 1 : q;
}

struct Case {
  int64_t N, C, H, W, ux, uy, dx, dy, px0, px1, py0, py1, fw, fh;
  bool separable;
};

int g_fail_lines = 0;

template <typename T>
bool run_case(const Case& c, std::mt19937& rng, bool channels_last) {
  std::normal_distribution<double> nd;
  const int64_t Ho = floor_div(c.H * c.uy + c.py0 + c.py1 - c.fh, c.dy) + 1;
  const int64_t Wo = floor_div(c.W * c.ux + c.px0 + c.px1 - c.fw, c.dx) + 1;
  if (Ho < 1 || Wo < 1) return true;
  // correlation taps as ops_upfirdn2d.cpp builds them (gain folded into kx / k2)
  const double gain = -1.25;
  std::vector<double> kx, ky, k2;
  if (c.separable) {
    for (int64_t i = 0; i < c.fw; ++i) kx.push_back(nd(rng) * gain), ky.push_back(nd(rng));
  } else {
    for (int64_t i = 0; i < c.fw * c.fh; ++i) k2.push_back(nd(rng) * gain);
  }
  // strided input: NCHW is a crop of a bigger plane (row stride W + 3, offset 2); channels last a
  // channel slice (channel stride 1, pixel stride C + 2, offset 1)
  int64_t sn, sc, sh, sw, off;
  if (!channels_last) {
    sw = 1, sh = c.W + 3, sc = sh * (c.H + 1), sn = sc * c.C, off = 2;
  } else {
    sc = 1, sw = c.C + 2, sh = sw * c.W, sn = sh * c.H, off = 1;
  }
  std::vector<T> x(static_cast<size_t>(off + sn * c.N + 8));
  for (auto& v : x) v = store<T>(nd(rng));
  auto xat = [&](int64_t n, int64_t ch, int64_t i, int64_t j) { return to_double(x[off + n * sn + ch * sc + i * sh + j * sw]); };
  std::vector<T> y(static_cast<size_t>(c.N * c.C * Ho * Wo));
  fcpu::Upfirdn2dArgs a{};
  a.x = x.data() + off;
  a.out = y.data();
  a.N = c.N, a.C = c.C, a.H = c.H, a.W = c.W, a.Ho = Ho, a.Wo = Wo;
  a.sxn = sn, a.sxc = sc, a.sxh = sh, a.sxw = sw;
  a.ux = c.ux, a.uy = c.uy, a.dx = c.dx, a.dy = c.dy, a.px0 = c.px0, a.py0 = c.py0, a.fw = c.fw, a.fh = c.fh;
  a.separable = c.separable;
  a.kx = kx.data(), a.ky = ky.data(), a.k2 = k2.data();
  if (!channels_last) {
    const int64_t rows = c.N * c.C * Ho, mid = rows / 2 + 1;  // split inside a plane
    fcpu::upfirdn2d_nchw(Fmt<T>::dtype, a, 0, std::min(mid, rows));
    fcpu::upfirdn2d_nchw(Fmt<T>::dtype, a, std::min(mid, rows), rows);
  } else {
    const int64_t cb = c.C > 16 ? 16 : c.C, nblk = (c.C + cb - 1) / cb, items = c.N * Ho * nblk, mid = items / 2 + 1;
    fcpu::upfirdn2d_cl(Fmt<T>::dtype, a, cb, 0, std::min(mid, items));
    fcpu::upfirdn2d_cl(Fmt<T>::dtype, a, cb, std::min(mid, items), items);
  }
  int64_t bad = 0;
  double worst = 0.0;
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t ch = 0; ch < c.C; ++ch)
      for (int64_t oy = 0; oy < Ho; ++oy)
        for (int64_t ox = 0; ox < Wo; ++ox) {
          double ref = 0.0, mag = 0.0;
          for (int64_t ta = 0; ta < c.fh; ++ta)
            for (int64_t tb = 0; tb < c.fw; ++tb) {
              const int64_t m = oy * c.dy + ta - c.py0, l = ox * c.dx + tb - c.px0;
              if (pos_mod(m, c.uy) || pos_mod(l, c.ux)) continue;
              const int64_t i = floor_div(m, c.uy), j = floor_div(l, c.ux);
              if (i < 0 || i >= c.H || j < 0 || j >= c.W) continue;
              const double k = c.separable ? ky[ta] * kx[tb] : k2[ta * c.fw + tb];
              ref += k * xat(n, ch, i, j);
              mag += std::fabs(k * xat(n, ch, i, j));
            }
          const int64_t idx = channels_last ? ((n * Ho + oy) * Wo + ox) * c.C + ch : ((n * c.C + ch) * Ho + oy) * Wo + ox;
          const double got = to_double(y[idx]);
          const double tol = 0.5 * ulp_of<T>(ref) + Fmt<T>::rel * mag + 1e-300;
          const double ratio = std::fabs(got - ref) / tol;
          worst = std::max(worst, ratio);
          if (!(ratio <= 1.0)) ++bad;
        }
  if (bad && g_fail_lines++ < 40)
    std::printf("FAIL %s %s N%lld C%lld %lldx%lld up(%lld,%lld) down(%lld,%lld) pad(%lld,%lld,%lld,%lld) f%lldx%lld%s: "
                "%lld bad, worst %.2f x tol\n",
                Fmt<T>::name, channels_last ? "cl" : "nchw", (long long)c.N, (long long)c.C, (long long)c.H,
                (long long)c.W, (long long)c.ux, (long long)c.uy, (long long)c.dx, (long long)c.dy, (long long)c.px0,
                (long long)c.px1, (long long)c.py0, (long long)c.py1, (long long)c.fh, (long long)c.fw,
                c.separable ? " sep" : "", (long long)bad, worst);
  return bad == 0;
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  std::vector<Case> cases = {
      {2, 3, 16, 16, 2, 2, 1, 1, 2, 1, 2, 1, 4, 4, true},     // upsample2d
      {2, 3, 17, 15, 1, 1, 2, 2, 1, 1, 1, 1, 4, 4, true},     // downsample2d, odd sizes
      {1, 20, 9, 33, 1, 1, 1, 1, 2, 2, 2, 2, 4, 4, true},     // blur, W > one vector, C > the channel block
      {2, 3, 7, 9, 3, 2, 1, 1, -1, 4, 2, 0, 5, 3, false},     // 2-D, anisotropic up
      {2, 3, 11, 13, 1, 1, 3, 4, 0, 2, -2, 3, 3, 6, false},   // 2-D, anisotropic down, crop
      {1, 2, 6, 7, 4, 3, 3, 2, 5, -4, 1, 1, 2, 2, false},     // up and down on both axes (bounds-checked path)
      {1, 2, 3, 4, 1, 1, 1, 1, 6, 6, 6, 6, 12, 12, true},     // filter larger than the input
      {2, 1, 5, 40, 2, 1, 1, 10, 3, 3, 9, 9, 7, 7, true},     // a large factor
  };
  int64_t total = 0, failed = 0;
  for (const Case& c : cases)
    for (bool cl : {false, true}) {
      total += 4;
      failed += !run_case<float>(c, rng, cl);
      failed += !run_case<f16_t>(c, rng, cl);
      failed += !run_case<bf16_t>(c, rng, cl);
      failed += !run_case<double>(c, rng, cl);
    }
  std::printf("%lld cases, %lld failed\n", (long long)total, (long long)failed);
  if (failed == 0) std::printf("PASS\n");
  return failed == 0 ? 0 : 1;
}
