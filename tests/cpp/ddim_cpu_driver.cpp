// Standalone correctness driver for the CPU DDIM kernels (csrc/cpu/ddim_step.cpp), no torch.
//
// tests/test_cpu_isa.py compiles this file together with ddim_step.cpp once per x86-64 ISA level
// (-DFASTGEN_NO_CLONES -march=<level>), and once as shipped (target_clones), and runs it. Every
// output element is compared with a double-precision reference computed here from the very same
// stored inputs and the same fp32 coefficients the kernel receives (built like csrc/ops.cpp does:
// ddim_coeffs<double>, then cast to float).
//
// Tolerance, per element:  |got - ref| <= kUlps * ulp_T(ref) + kRel32 * mag
//   ulp_T(ref): spacing of the output storage type at |ref| (the final rounding to fp16/bf16/fp32);
//   mag:        the same formula evaluated on absolute values, so the fp32 arithmetic error
//               allowance scales with the size of the terms (cancellation in x - sqrt(1-a_t) eps
//               cannot make a correct kernel fail, and FMA contraction is allowed for).
// Backward clip masks whose decision is within fp32 error of the clip boundary accept either side.
//
// Prints one line per failing case and a summary; exits 0 only if everything passed.
#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "ddim_step.h"
#include "fastgen/convert.h"
#include "fastgen/ddim.h"

namespace {

using fastgen::bf16_t;
using fastgen::DDIMCoeffs;
using fastgen::DType;
using fastgen::f16_t;
namespace fcpu = fastgen::cpu;

constexpr double kRel32 = 1e-6;  // fp32 math, relative to the magnitude of the terms
constexpr double kUlps = 0.5;    // final rounding to the storage type: correctly rounded (RNE)
constexpr int kMaxFailLines = 40;

// ---------------------------------------------------------------- storage formats
template <typename T>
struct Fmt;
template <>
struct Fmt<float> {
  static constexpr DType dtype = DType::Float32;
  static constexpr const char* name = "fp32";
  static constexpr int precision = 24;  // significand bits, implicit bit included
  static constexpr int emin = -126;
  static constexpr int emax = 127;
};
template <>
struct Fmt<f16_t> {
  static constexpr DType dtype = DType::Float16;
  static constexpr const char* name = "fp16";
  static constexpr int precision = 11;
  static constexpr int emin = -14;
  static constexpr int emax = 15;
};
template <>
struct Fmt<bf16_t> {
  static constexpr DType dtype = DType::BFloat16;
  static constexpr const char* name = "bf16";
  static constexpr int precision = 8;
  static constexpr int emin = -126;
  static constexpr int emax = 127;
};

template <typename T>
double to_double(T v) {
  return static_cast<double>(fastgen::to_float(v));  // exact for all three formats
}

template <typename T>
T store(double v) {
  return fastgen::from_float<T>(static_cast<float>(v));
}

// Spacing of format T at |v| (subnormal spacing below the normal range).
template <typename T>
double ulp_of(double v) {
  int e = 0;
  if (v != 0.0 && std::isfinite(v)) std::frexp(v, &e);  // |v| = m 2^e, m in [0.5, 1)
  const int lead = (v == 0.0 || !std::isfinite(v)) ? Fmt<T>::emin : std::max(e - 1, Fmt<T>::emin);
  return std::ldexp(1.0, lead - (Fmt<T>::precision - 1));
}

// v rounded to nearest-even in format T (with overflow to infinity), computed in double.
template <typename T>
double round_to(double v) {
  if (!std::isfinite(v) || v == 0.0) return v;
  const double q = ulp_of<T>(v);
  const double r = std::nearbyint(v / q) * q;
  const double maxv = std::ldexp(2.0 - std::ldexp(1.0, 1 - Fmt<T>::precision), Fmt<T>::emax);
  if (std::fabs(r) > maxv) return std::copysign(std::numeric_limits<double>::infinity(), v);
  return r;
}

// ---------------------------------------------------------------- bookkeeping
struct Stats {
  int64_t cases = 0, failed_cases = 0, elements = 0, ambiguous = 0;
  double worst_ratio = 0.0;  // max |got - ref| / tol
  double worst_ulps = 0.0;   // max distance to the correctly rounded reference, in ulps of T
};

int g_fail_lines = 0;

struct CaseCheck {
  std::string name;
  Stats* stats;
  int64_t mismatches = 0;
  std::string first;

  CaseCheck(std::string n, Stats* s) : name(std::move(n)), stats(s) {}

  void fail(const std::string& msg) {
    if (mismatches < 3) first += "\n      " + msg;
    ++mismatches;
  }

  // Returns whether `got` is acceptable for (ref, mag); updates the statistics when it is.
  template <typename T>
  bool ok(double got, double ref, double mag, bool record = true) {
    if (std::isnan(ref) || std::isnan(got)) return std::isnan(ref) && std::isnan(got);
    if (got == ref) return true;
    if (std::isinf(got) || std::isinf(ref)) return round_to<T>(ref) == got;
    const double tol = kUlps * ulp_of<T>(ref) + kRel32 * mag;
    const double err = std::fabs(got - ref);
    if (err > tol) return false;
    if (record) {
      stats->worst_ratio = std::max(stats->worst_ratio, err / tol);
      if (mag <= 2.0 * std::fabs(ref)) {  // ulps are only meaningful without heavy cancellation
        const double rr = round_to<T>(ref);
        stats->worst_ulps = std::max(stats->worst_ulps, std::fabs(got - rr) / ulp_of<T>(rr));
      }
    }
    return true;
  }

  template <typename T>
  void expect(const char* what, int64_t i, double got, double ref, double mag) {
    ++stats->elements;
    if (ok<T>(got, ref, mag)) return;
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s[%" PRId64 "]: got %.9g, ref %.9g, |diff| %.3g > tol %.3g (mag %.3g)", what, i,
                  got, ref, std::fabs(got - ref), kUlps * ulp_of<T>(ref) + kRel32 * mag, mag);
    fail(buf);
  }

  void finish() {
    ++stats->cases;
    if (mismatches == 0) return;
    ++stats->failed_cases;
    if (g_fail_lines++ < kMaxFailLines)
      std::printf("FAIL %s: %" PRId64 " mismatches%s\n", name.c_str(), mismatches, first.c_str());
  }
};

// ---------------------------------------------------------------- problem setup
struct Layout {
  const char* name;
  int64_t n;           // batch
  int64_t per_sample;  // elements per sample
  bool per_sample_coeffs;
};

// Sample sizes that are not multiples of any vector width (37, 19, 613, 1), one that is (256),
// runs longer than a streaming chunk, and a single coefficient set shared by the whole tensor (ops.cpp then passes per_sample=numel).
const Layout kLayouts[] = {
    {"5x37/per-sample", 5, 37, true},   {"3x1/per-sample", 3, 1, true},   {"2x613/per-sample", 2, 613, true},
    {"7x19/per-sample", 7, 19, true},   {"2x256/per-sample", 2, 256, true}, {"4x37/shared", 4, 37, false},
    // longer than one streaming-store chunk (512 fp32 / 1024 half elements)
    {"2x1500/per-sample", 2, 1500, true}, {"3x1111/shared", 3, 1111, false},
};

// (alpha_bar_t, alpha_bar_prev) pairs: a big early jump (1/sqrt(a_t) ~ 14.6), ordinary steps,
// a_t == a_p (sigma = 0), the final step a_p = 1 (dir = sigma = 0), and a late tiny step.
const double kAlphas[][2] = {{0.0047, 0.06}, {0.30, 0.45}, {0.90, 0.95}, {0.50, 0.50}, {0.97, 1.0}, {0.9991, 0.9995}};
constexpr int kNumAlphas = sizeof(kAlphas) / sizeof(kAlphas[0]);

const char* kSplitNames[] = {"whole", "grain50", "random", "partial"};

std::vector<DDIMCoeffs<float>> make_coeffs(const Layout& L, double eta, int offset) {
  const int64_t count = L.per_sample_coeffs ? L.n : 1;
  std::vector<DDIMCoeffs<float>> out;
  for (int64_t s = 0; s < count; ++s) {
    const double* a = kAlphas[(s + offset) % kNumAlphas];
    const DDIMCoeffs<double> c = fastgen::ddim_coeffs<double>(a[0], a[1], eta);
    out.push_back({static_cast<float>(c.sqrt_one_minus_at), static_cast<float>(c.inv_sqrt_at),
                   static_cast<float>(c.sqrt_ap), static_cast<float>(c.dir), static_cast<float>(c.sigma)});
  }
  return out;
}

template <typename T>
std::vector<T> random_tensor(int64_t numel, std::mt19937_64& rng) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  std::vector<T> v(static_cast<size_t>(numel));
  for (auto& x : v) {
    const double u = uni(rng);
    double val = 1.5 * normal(rng);
    if (u < 0.01) val *= 50.0;        // occasional large values
    else if (u < 0.02) val = 0.0;     // and exact zeros
    x = store<T>(val);
  }
  return v;
}

// The [begin, end) calls a case makes, and the range they cover. "grain50" and "random" split
// like at::parallel_for does, with boundaries in the middle of samples (and an empty range);
// "partial" covers only a middle range starting and ending mid-sample: outside it nothing may change.
std::vector<std::pair<int64_t, int64_t>> make_splits(int64_t numel, int strategy, std::mt19937_64& rng,
                                                     int64_t* lo, int64_t* hi) {
  std::vector<std::pair<int64_t, int64_t>> r;
  *lo = 0;
  *hi = numel;
  if (strategy == 0) {
    r.push_back({0, numel});
  } else if (strategy == 1) {
    for (int64_t b = 0; b < numel; b += 50) r.push_back({b, std::min(numel, b + 50)});
  } else if (strategy == 2) {
    std::vector<int64_t> cuts = {0, numel};
    std::uniform_int_distribution<int64_t> pos(0, numel);
    for (int k = 0; k < 6; ++k) cuts.push_back(pos(rng));
    std::sort(cuts.begin(), cuts.end());
    for (size_t k = 0; k + 1 < cuts.size(); ++k) r.push_back({cuts[k], cuts[k + 1]});  // may include empty ones
    std::shuffle(r.begin(), r.end(), rng);  // threads finish in any order
  } else {
    int64_t b = numel / 3 + (numel > 2 ? 1 : 0);
    int64_t e = numel - numel / 4 - (numel > 8 ? 2 : 0);
    if (e < b) e = b;
    *lo = b;
    *hi = e;
    r.push_back({b, e});
  }
  return r;
}

constexpr unsigned char kSentinel = 0xA5;

template <typename T>
bool untouched_outside(const std::vector<T>& v, int64_t lo, int64_t hi) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(v.data());
  const size_t n = v.size() * sizeof(T);
  for (size_t k = 0; k < n; ++k) {
    const int64_t i = static_cast<int64_t>(k / sizeof(T));
    if ((i < lo || i >= hi) && p[k] != kSentinel) return false;
  }
  return true;
}

template <typename T>
std::vector<T> sentinel_tensor(int64_t numel) {
  std::vector<T> v(static_cast<size_t>(numel));
  std::memset(static_cast<void*>(v.data()), kSentinel, v.size() * sizeof(T));
  return v;
}

struct Coef {  // fp32 coefficients promoted to double: exactly what the kernel multiplies by
  double s1, inv, sap, dir, sig;
  explicit Coef(const DDIMCoeffs<float>& c)
      : s1(c.sqrt_one_minus_at), inv(c.inv_sqrt_at), sap(c.sqrt_ap), dir(c.dir), sig(c.sigma) {}
};

// ---------------------------------------------------------------- forward
template <typename T>
void forward_case(const Layout& L, double eta, bool noise, float clip, int strategy, std::mt19937_64& rng,
                  Stats& st) {
  const int64_t numel = L.n * L.per_sample;
  const int offset = static_cast<int>(rng() % kNumAlphas);
  const std::vector<DDIMCoeffs<float>> cf = make_coeffs(L, eta, offset);
  const std::vector<T> x = random_tensor<T>(numel, rng), e = random_tensor<T>(numel, rng),
                       n = random_tensor<T>(numel, rng);
  std::vector<T> xp = sentinel_tensor<T>(numel), x0 = sentinel_tensor<T>(numel);

  fcpu::DDIMForwardArgs a;
  a.x = x.data();
  a.eps = e.data();
  a.noise = noise ? n.data() : nullptr;
  a.x_prev = xp.data();
  a.x0 = x0.data();
  a.per_sample = L.per_sample_coeffs ? L.per_sample : numel;
  a.coeffs = cf.data();
  a.per_sample_coeffs = L.per_sample_coeffs;
  a.clip = clip;
  a.stream_stores = (rng() & 1) != 0;  // both store paths; random splits give unaligned heads/tails

  int64_t lo, hi;
  const auto splits = make_splits(numel, strategy, rng, &lo, &hi);
  for (const auto& r : splits) fcpu::ddim_forward(Fmt<T>::dtype, a, r.first, r.second);

  char name[200];
  std::snprintf(name, sizeof name, "forward %s %s eta=%.1f noise=%d clip=%g split=%s alphas+%d stream=%d",
                Fmt<T>::name, L.name, eta, int(noise), double(clip), kSplitNames[strategy], offset,
                int(a.stream_stores));
  CaseCheck ck{name, &st};
  const double cl = clip;
  for (int64_t i = lo; i < hi; ++i) {
    const Coef c(cf[L.per_sample_coeffs ? i / L.per_sample : 0]);
    const double xv = to_double(x[i]), ev = to_double(e[i]), nv = noise ? to_double(n[i]) : 0.0;
    double x0r = (xv - c.s1 * ev) * c.inv;
    double mag0 = (std::fabs(xv) + c.s1 * std::fabs(ev)) * c.inv;
    if (cl > 0.0) {
      // Clearly outside the range: the kernel must return +-clip exactly (near the boundary the
      // clamp is continuous, so the unclipped error allowance covers either decision).
      if (std::fabs(x0r) - cl > kRel32 * mag0) mag0 = 0.0;
      x0r = std::min(std::max(x0r, -cl), cl);
    }
    const double xpr = c.sap * x0r + c.dir * ev + c.sig * nv;
    const double magp = c.sap * std::max(mag0, std::fabs(x0r)) + c.dir * std::fabs(ev) + c.sig * std::fabs(nv);
    ck.expect<T>("x0", i, to_double(x0[i]), x0r, mag0);
    ck.expect<T>("x_prev", i, to_double(xp[i]), xpr, magp);
  }
  if (!untouched_outside(xp, lo, hi)) ck.fail("x_prev written outside [begin, end)");
  if (!untouched_outside(x0, lo, hi)) ck.fail("x0 written outside [begin, end)");
  ck.finish();
}

// ---------------------------------------------------------------- backward
template <typename T>
void backward_case(const Layout& L, double eta, bool has_gp, bool has_g0, bool has_dn, float clip, int strategy,
                   std::mt19937_64& rng, Stats& st) {
  const int64_t numel = L.n * L.per_sample;
  const int offset = static_cast<int>(rng() % kNumAlphas);
  const std::vector<DDIMCoeffs<float>> cf = make_coeffs(L, eta, offset);
  const std::vector<T> x = random_tensor<T>(numel, rng), e = random_tensor<T>(numel, rng),
                       gp = random_tensor<T>(numel, rng), g0 = random_tensor<T>(numel, rng);
  std::vector<T> dx = sentinel_tensor<T>(numel), de = sentinel_tensor<T>(numel), dn = sentinel_tensor<T>(numel);

  fcpu::DDIMBackwardArgs a;
  a.x = x.data();
  a.eps = e.data();
  a.g_prev = has_gp ? gp.data() : nullptr;
  a.g_x0 = has_g0 ? g0.data() : nullptr;
  a.dx = dx.data();
  a.deps = de.data();
  a.dnoise = has_dn ? dn.data() : nullptr;
  a.per_sample = L.per_sample_coeffs ? L.per_sample : numel;
  a.coeffs = cf.data();
  a.per_sample_coeffs = L.per_sample_coeffs;
  a.clip = clip;
  a.stream_stores = (rng() & 1) != 0;

  int64_t lo, hi;
  const auto splits = make_splits(numel, strategy, rng, &lo, &hi);
  for (const auto& r : splits) fcpu::ddim_backward(Fmt<T>::dtype, a, r.first, r.second);

  char name[200];
  std::snprintf(name, sizeof name, "backward %s %s eta=%.1f g_prev=%s g_x0=%s dnoise=%s clip=%g split=%s alphas+%d stream=%d",
                Fmt<T>::name, L.name, eta, has_gp ? "y" : "null", has_g0 ? "y" : "null", has_dn ? "y" : "null",
                double(clip), kSplitNames[strategy], offset, int(a.stream_stores));
  CaseCheck ck{name, &st};
  const double cl = clip;
  for (int64_t i = lo; i < hi; ++i) {
    const Coef c(cf[L.per_sample_coeffs ? i / L.per_sample : 0]);
    const double xv = to_double(x[i]), ev = to_double(e[i]);
    const double gpv = has_gp ? to_double(gp[i]) : 0.0, g0v = has_g0 ? to_double(g0[i]) : 0.0;
    const double gx0 = g0v + c.sap * gpv, magg = std::fabs(g0v) + c.sap * std::fabs(gpv);
    // Clip mask, and whether fp32 rounding could flip it.
    bool masked = false, ambiguous = false;
    if (cl > 0.0) {
      const double x0u = (xv - c.s1 * ev) * c.inv;
      const double mag0 = (std::fabs(xv) + c.s1 * std::fabs(ev)) * c.inv;
      masked = x0u > cl || x0u < -cl;
      ambiguous = std::fabs(std::fabs(x0u) - cl) <= kRel32 * mag0 + 1e-300;
    }
    const double got_dx = to_double(dx[i]), got_de = to_double(de[i]);
    auto matches = [&](bool m, bool record) {
      const double t = m ? 0.0 : c.inv * gx0, mag_t = m ? 0.0 : c.inv * magg;
      const double der = c.dir * gpv - c.s1 * t, mag_de = c.dir * std::fabs(gpv) + c.s1 * mag_t;
      return ck.ok<T>(got_dx, t, mag_t, record) && ck.ok<T>(got_de, der, mag_de, record);
    };
    if (ambiguous) {
      ++st.ambiguous;
      st.elements += 2;
      if (!matches(false, false) && !matches(true, false))
        ck.fail("dx/deps[" + std::to_string(i) + "] match neither side of the clip boundary");
    } else {
      const double t = masked ? 0.0 : c.inv * gx0, mag_t = masked ? 0.0 : c.inv * magg;
      ck.expect<T>("dx", i, got_dx, t, mag_t);
      ck.expect<T>("deps", i, got_de, c.dir * gpv - c.s1 * t, c.dir * std::fabs(gpv) + c.s1 * mag_t);
    }
    if (has_dn) ck.expect<T>("dnoise", i, to_double(dn[i]), c.sig * gpv, c.sig * std::fabs(gpv));
  }
  if (!untouched_outside(dx, lo, hi)) ck.fail("dx written outside [begin, end)");
  if (!untouched_outside(de, lo, hi)) ck.fail("deps written outside [begin, end)");
  if (!untouched_outside(dn, has_dn ? lo : 0, has_dn ? hi : 0)) ck.fail("dnoise buffer written (or outside range)");
  ck.finish();
}

// ---------------------------------------------------------------- driver
template <typename T>
void run_dtype(std::mt19937_64& rng, Stats& fwd, Stats& bwd) {
  const double etas[] = {0.0, 0.5, 1.0};
  const float clips[] = {0.f, 1.f};
  for (const Layout& L : kLayouts)
    for (double eta : etas)
      for (float clip : clips)
        for (int strategy = 0; strategy < 4; ++strategy) {
          for (int noise = 0; noise < 2; ++noise) forward_case<T>(L, eta, noise != 0, clip, strategy, rng, fwd);
          for (int mask = 0; mask < 8; ++mask)
            backward_case<T>(L, eta, mask & 1, mask & 2, mask & 4, clip, strategy, rng, bwd);
        }
}

void print_stats(const char* dir, const char* dtype, const Stats& s) {
  std::printf("  %-8s %-4s cases=%-5" PRId64 " failed=%-4" PRId64 " elements=%-8" PRId64
              " worst err/tol=%.3f worst ulps=%.2f clip-boundary ties=%" PRId64 "\n",
              dir, dtype, s.cases, s.failed_cases, s.elements, s.worst_ratio, s.worst_ulps, s.ambiguous);
}

}  // namespace

int main() {
  std::printf("isa_macros: sse4_2=%d avx=%d avx2=%d fma=%d f16c=%d avx512f=%d\n",
#ifdef __SSE4_2__
              1,
#else
              0,
#endif
#ifdef __AVX__
              1,
#else
              0,
#endif
#ifdef __AVX2__
              1,
#else
              0,
#endif
#ifdef __FMA__
              1,
#else
              0,
#endif
#ifdef __F16C__
              1,
#else
              0,
#endif
#ifdef __AVX512F__
              1
#else
              0
#endif
  );
  std::printf("cpu_capability: %s\n", fcpu::cpu_capability());

  std::mt19937_64 rng(20240607);
  Stats fwd[3], bwd[3];
  run_dtype<float>(rng, fwd[0], bwd[0]);
  run_dtype<f16_t>(rng, fwd[1], bwd[1]);
  run_dtype<bf16_t>(rng, fwd[2], bwd[2]);

  const char* names[3] = {"fp32", "fp16", "bf16"};
  int64_t cases = 0, failed = 0;
  std::printf("summary (tol = %.0f ulp of the storage type + %.0e * magnitude of the terms; worst ulps: distance\n"
              "to the correctly rounded reference where the terms do not cancel):\n", kUlps, kRel32);
  for (int k = 0; k < 3; ++k) {
    print_stats("forward", names[k], fwd[k]);
    print_stats("backward", names[k], bwd[k]);
    cases += fwd[k].cases + bwd[k].cases;
    failed += fwd[k].failed_cases + bwd[k].failed_cases;
  }
  if (failed) {
    std::printf("FAIL: %" PRId64 " of %" PRId64 " cases failed\n", failed, cases);
    return 1;
  }
  std::printf("PASS: %" PRId64 " cases\n", cases);
  return 0;
}
