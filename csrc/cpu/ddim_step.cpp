// CPU DDIM forward/backward kernels.
//
// Vectorisation is portable: the loops are written so that GCC/clang auto-vectorise them, and
// each public entry point is compiled three times with `target_clones` (x86-64-v4 = AVX-512,
// x86-64-v3 = AVX2+FMA+F16C, and the baseline x86-64 = SSE2). The dynamic loader picks the
// best clone for the running CPU (GNU ifunc), so one binary runs on any x86-64.
#include "ddim_step.h"
//
// Aliasing: the torch layer lets an output be the *identical* tensor of an input (x_prev over x_t,
// the sampler-loop idiom) and rejects partial overlap. The __restrict__ loops stay correct then:
// element i is read before element i is written, and no other element touches that address.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#if defined(__unix__)
#include <unistd.h>
#endif

#include "fastgen/convert.h"
#include "stream.h"

namespace fastgen {
namespace cpu {
namespace {

template <typename T, bool NOISE, bool CLIP>
FG_ALWAYS_INLINE void fwd_segment(const T* FG_RESTRICT x, const T* FG_RESTRICT e,
                                  const T* FG_RESTRICT n, T* FG_RESTRICT xp,
                                  T* FG_RESTRICT x0o, int64_t len, const DDIMCoeffs<float> c,
                                  float clip) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const float xv = to_float(x[i]);
    const float ev = to_float(e[i]);
    float x0 = (xv - c.sqrt_one_minus_at * ev) * c.inv_sqrt_at;
    if (CLIP) x0 = std::min(std::max(x0, -clip), clip);
    float out = c.sqrt_ap * x0 + c.dir * ev;
    if (NOISE) out += c.sigma * to_float(n[i]);
    x0o[i] = from_float<T>(x0);
    xp[i] = from_float<T>(out);
  }
}

template <typename T, bool GP, bool G0, bool DN, bool CLIP>
FG_ALWAYS_INLINE void bwd_segment(const T* FG_RESTRICT x, const T* FG_RESTRICT e,
                                  const T* FG_RESTRICT gp, const T* FG_RESTRICT g0,
                                  T* FG_RESTRICT dx, T* FG_RESTRICT de, T* FG_RESTRICT dn,
                                  int64_t len, const DDIMCoeffs<float> c, float clip) {
  const float eps_coef = -c.sqrt_one_minus_at;
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const float gpv = GP ? to_float(gp[i]) : 0.f;
    float gx0 = (G0 ? to_float(g0[i]) : 0.f) + c.sqrt_ap * gpv;
    if (CLIP) {
      const float x0 = (to_float(x[i]) - c.sqrt_one_minus_at * to_float(e[i])) * c.inv_sqrt_at;
      gx0 = (x0 > clip || x0 < -clip) ? 0.f : gx0;
    }
    const float t = c.inv_sqrt_at * gx0;
    dx[i] = from_float<T>(t);
    de[i] = from_float<T>(c.dir * gpv + eps_coef * t);
    if (DN) dn[i] = from_float<T>(c.sigma * gpv);
  }
}

template <typename T, bool NOISE, bool CLIP>
FG_ALWAYS_INLINE void fwd_segment_streaming(const T* x, const T* e, const T* n, T* xp, T* x0o, int64_t len,
                                            const DDIMCoeffs<float> c, float clip) {
  constexpr int64_t K = kStreamChunkBytes / sizeof(T);
  alignas(64) T bp[K];
  alignas(64) T b0[K];
  for (int64_t o = 0; o < len; o += K) {
    const int64_t l = std::min(K, len - o);
    fwd_segment<T, NOISE, CLIP>(x + o, e + o, NOISE ? n + o : nullptr, bp, b0, l, c, clip);
    stream_store(xp + o, bp, l);
    stream_store(x0o + o, b0, l);
  }
}

template <typename T, bool GP, bool G0, bool DN, bool CLIP>
FG_ALWAYS_INLINE void bwd_segment_streaming(const T* x, const T* e, const T* gp, const T* g0, T* dx, T* de, T* dn,
                                            int64_t len, const DDIMCoeffs<float> c, float clip) {
  constexpr int64_t K = kStreamChunkBytes / sizeof(T);
  alignas(64) T bx[K];
  alignas(64) T be[K];
  alignas(64) T bn[DN ? K : 1];
  for (int64_t o = 0; o < len; o += K) {
    const int64_t l = std::min(K, len - o);
    bwd_segment<T, GP, G0, DN, CLIP>(x + o, e + o, GP ? gp + o : nullptr, G0 ? g0 + o : nullptr, bx, be,
                                     DN ? bn : nullptr, l, c, clip);
    stream_store(dx + o, bx, l);
    stream_store(de + o, be, l);
    if (DN) stream_store(dn + o, bn, l);
  }
}

template <typename T>
FG_ALWAYS_INLINE void forward_impl(const DDIMForwardArgs& a, int64_t begin, int64_t end) {
  const T* x = static_cast<const T*>(a.x);
  const T* e = static_cast<const T*>(a.eps);
  const T* n = static_cast<const T*>(a.noise);
  T* xp = static_cast<T*>(a.x_prev);
  T* x0 = static_cast<T*>(a.x0);
  const bool clip = a.clip > 0.f;
  for_each_run(begin, end, a.per_sample, a.per_sample_coeffs, [&](int64_t o, int64_t len, int64_t s) FG_LAMBDA_INLINE {
    const DDIMCoeffs<float> c = a.coeffs[s];
    const bool noise = n != nullptr;  // the torch layer passes noise only when eta > 0 (as the reference)
    const T* no = noise ? n + o : nullptr;
    if (a.stream_stores) {
      if (noise && clip) fwd_segment_streaming<T, true, true>(x + o, e + o, no, xp + o, x0 + o, len, c, a.clip);
      else if (noise) fwd_segment_streaming<T, true, false>(x + o, e + o, no, xp + o, x0 + o, len, c, a.clip);
      else if (clip) fwd_segment_streaming<T, false, true>(x + o, e + o, no, xp + o, x0 + o, len, c, a.clip);
      else fwd_segment_streaming<T, false, false>(x + o, e + o, no, xp + o, x0 + o, len, c, a.clip);
    } else {
      if (noise && clip) fwd_segment<T, true, true>(x + o, e + o, no, xp + o, x0 + o, len, c, a.clip);
      else if (noise) fwd_segment<T, true, false>(x + o, e + o, no, xp + o, x0 + o, len, c, a.clip);
      else if (clip) fwd_segment<T, false, true>(x + o, e + o, no, xp + o, x0 + o, len, c, a.clip);
      else fwd_segment<T, false, false>(x + o, e + o, no, xp + o, x0 + o, len, c, a.clip);
    }
  });
  if (a.stream_stores) stream_fence();
}

template <typename T, bool GP, bool G0>
FG_ALWAYS_INLINE void backward_run(const DDIMBackwardArgs& a, int64_t o, int64_t len, const DDIMCoeffs<float>& c) {
  const T* x = static_cast<const T*>(a.x) + o;
  const T* e = static_cast<const T*>(a.eps) + o;
  const T* gp = GP ? static_cast<const T*>(a.g_prev) + o : nullptr;
  const T* g0 = G0 ? static_cast<const T*>(a.g_x0) + o : nullptr;
  T* dx = static_cast<T*>(a.dx) + o;
  T* de = static_cast<T*>(a.deps) + o;
  T* dn = a.dnoise ? static_cast<T*>(a.dnoise) + o : nullptr;
  const bool clip = a.clip > 0.f;
  if (a.stream_stores) {
    if (dn && clip) bwd_segment_streaming<T, GP, G0, true, true>(x, e, gp, g0, dx, de, dn, len, c, a.clip);
    else if (dn) bwd_segment_streaming<T, GP, G0, true, false>(x, e, gp, g0, dx, de, dn, len, c, a.clip);
    else if (clip) bwd_segment_streaming<T, GP, G0, false, true>(x, e, gp, g0, dx, de, nullptr, len, c, a.clip);
    else bwd_segment_streaming<T, GP, G0, false, false>(x, e, gp, g0, dx, de, nullptr, len, c, a.clip);
  } else {
    if (dn && clip) bwd_segment<T, GP, G0, true, true>(x, e, gp, g0, dx, de, dn, len, c, a.clip);
    else if (dn) bwd_segment<T, GP, G0, true, false>(x, e, gp, g0, dx, de, dn, len, c, a.clip);
    else if (clip) bwd_segment<T, GP, G0, false, true>(x, e, gp, g0, dx, de, nullptr, len, c, a.clip);
    else bwd_segment<T, GP, G0, false, false>(x, e, gp, g0, dx, de, nullptr, len, c, a.clip);
  }
}

template <typename T>
FG_ALWAYS_INLINE void backward_impl(const DDIMBackwardArgs& a, int64_t begin, int64_t end) {
  const bool gp = a.g_prev != nullptr, g0 = a.g_x0 != nullptr;
  for_each_run(begin, end, a.per_sample, a.per_sample_coeffs, [&](int64_t o, int64_t len, int64_t s) FG_LAMBDA_INLINE {
    const DDIMCoeffs<float>& c = a.coeffs[s];
    if (gp && g0) backward_run<T, true, true>(a, o, len, c);
    else if (gp) backward_run<T, true, false>(a, o, len, c);
    else if (g0) backward_run<T, false, true>(a, o, len, c);
    else backward_run<T, false, false>(a, o, len, c);
  });
  if (a.stream_stores) stream_fence();
}

FG_CLONES void forward_f32(const DDIMForwardArgs& a, int64_t b, int64_t e) { forward_impl<float>(a, b, e); }
FG_CLONES void forward_f16(const DDIMForwardArgs& a, int64_t b, int64_t e) { forward_impl<f16_t>(a, b, e); }
FG_CLONES void forward_bf16(const DDIMForwardArgs& a, int64_t b, int64_t e) { forward_impl<bf16_t>(a, b, e); }
FG_CLONES void backward_f32(const DDIMBackwardArgs& a, int64_t b, int64_t e) { backward_impl<float>(a, b, e); }
FG_CLONES void backward_f16(const DDIMBackwardArgs& a, int64_t b, int64_t e) { backward_impl<f16_t>(a, b, e); }
FG_CLONES void backward_bf16(const DDIMBackwardArgs& a, int64_t b, int64_t e) { backward_impl<bf16_t>(a, b, e); }

}  // namespace

void ddim_forward(DType dtype, const DDIMForwardArgs& a, int64_t begin, int64_t end) {
  switch (dtype) {
    case DType::Float32: forward_f32(a, begin, end); break;
    case DType::Float16: forward_f16(a, begin, end); break;
    case DType::BFloat16: forward_bf16(a, begin, end); break;
    default: break;  // the torch layer rejects other dtypes before calling
  }
}

void ddim_backward(DType dtype, const DDIMBackwardArgs& a, int64_t begin, int64_t end) {
  switch (dtype) {
    case DType::Float32: backward_f32(a, begin, end); break;
    case DType::Float16: backward_f16(a, begin, end); break;
    case DType::BFloat16: backward_bf16(a, begin, end); break;
    default: break;
  }
}

namespace {
// Size of one last-level cache instance (what one core's working set competes for). sysfs is
// preferred: on many servers sysconf(_SC_LEVEL3_CACHE_SIZE) reports the whole package's L3
// (e.g. 384 MB on a multi-CCD EPYC whose cores each see a 32 MB slice).
int64_t last_level_cache_bytes() {
  int64_t best = 0;
  for (int idx = 0; idx < 8; ++idx) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(idx) + "/";
    std::ifstream level_file(dir + "level"), size_file(dir + "size");
    int level = 0;
    std::string size;
    if (!(level_file >> level) || !(size_file >> size) || size.empty()) continue;
    int64_t v = std::strtoll(size.c_str(), nullptr, 10);
    const char unit = size.back();
    if (unit == 'K' || unit == 'k') v <<= 10;
    else if (unit == 'M' || unit == 'm') v <<= 20;
    else if (unit == 'G' || unit == 'g') v <<= 30;
    if (level >= 2 && v > best) best = v;
  }
#if defined(_SC_LEVEL3_CACHE_SIZE)
  if (best <= 0) best = static_cast<int64_t>(sysconf(_SC_LEVEL3_CACHE_SIZE));
#endif
  return best > 0 ? best : (int64_t{32} << 20);
}
}  // namespace

int64_t streaming_threshold_bytes() {
  // FASTGEN_CPU_STREAM_BYTES overrides it (0: always stream; -1: never).
  static const int64_t threshold = [] {
    if (const char* env = std::getenv("FASTGEN_CPU_STREAM_BYTES")) {
      char* end = nullptr;
      const long long v = std::strtoll(env, &end, 10);
      if (end != env) return static_cast<int64_t>(v);
    }
    return last_level_cache_bytes();
  }();
  return threshold;
}

bool use_streaming_stores(int64_t bytes) {
  const int64_t threshold = streaming_threshold_bytes();
  return threshold >= 0 && bytes > threshold;
}

const char* cpu_capability() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
  if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3 (AVX2+FMA)";
  return "x86-64 (SSE2)";
#else
  return "generic";
#endif
}

}  // namespace cpu
}  // namespace fastgen
