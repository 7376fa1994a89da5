// Shared by the CPU kernels: ISA clone macros and non-temporal ("streaming") stores.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>  // SSE2 (baseline x86-64): _mm_stream_si128, _mm_sfence
#define FG_HAVE_STREAM 1
#endif

#include "fastgen/macros.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FASTGEN_NO_CLONES)
#define FG_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FG_CLONES
#endif
// Everything a clone calls must be inlined into it, or it runs at the baseline ISA
// (tests/test_cpu_isa.py checks the object code for such calls).
#if defined(__GNUC__)
#define FG_LAMBDA_INLINE __attribute__((always_inline))
#else
#define FG_LAMBDA_INLINE
#endif

// Call NAME##_f32 / _f16 / _bf16 (per-dtype entry points, each compiled with FG_CLONES) for a DType.
#define FG_DT_DISPATCH(dt, NAME, ...)                        \
  switch (dt) {                                              \
    case DType::Float32: NAME##_f32(__VA_ARGS__); break;     \
    case DType::Float16: NAME##_f16(__VA_ARGS__); break;     \
    case DType::BFloat16: NAME##_bf16(__VA_ARGS__); break;   \
    default: break; /* the torch layers reject other dtypes */ \
  }

namespace fastgen {
namespace cpu {

// Walk [begin, end) in runs that share one sample (hence one set of coefficients).
template <typename F>
FG_ALWAYS_INLINE void for_each_run(int64_t begin, int64_t end, int64_t per_sample, bool per_sample_coeffs,
                                   const F& f) {
  int64_t i = begin;
  while (i < end) {
    int64_t s = 0, stop = end;
    if (per_sample_coeffs) {
      s = i / per_sample;
      stop = std::min(end, (s + 1) * per_sample);
    }
    f(i, stop - i, s);
    i = stop;
  }
}

// Non-temporal ("streaming") output: results are computed into an L1-resident chunk buffer by
// the same vectorised segment loops, then written with 16-byte movntdq stores that bypass the
// cache and the read-for-ownership of each destination line. SSE2 is baseline x86-64, so every
// clone can use it; the WC buffers combine the 16-byte pieces into full lines.
inline constexpr int64_t kStreamChunkBytes = 2048;

template <typename T>
FG_ALWAYS_INLINE void stream_store(T* FG_RESTRICT dst, const T* FG_RESTRICT buf, int64_t len) {
#if defined(FG_HAVE_STREAM)
  int64_t i = 0;
  for (; i < len && (reinterpret_cast<std::uintptr_t>(dst + i) & 15) != 0; ++i) dst[i] = buf[i];
  constexpr int64_t V = 16 / sizeof(T);
  for (; i + V <= len; i += V)
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(buf + i)));
  for (; i < len; ++i) dst[i] = buf[i];
#else
  std::memcpy(dst, buf, sizeof(T) * len);
#endif
}

FG_ALWAYS_INLINE void stream_fence() {
#if defined(FG_HAVE_STREAM)
  _mm_sfence();  // streaming stores are weakly ordered: publish them before the task ends
#endif
}


// Whether a pass that moves `bytes` (inputs + outputs) should write its outputs with non-temporal
// stores: true when the working set exceeds the last-level cache, where skipping the
// read-for-ownership of each output line saves a third of the DRAM traffic. Cache-resident
// passes keep ordinary stores (their outputs are read again soon). Defined in ddim_step.cpp.
bool use_streaming_stores(int64_t bytes);
// The threshold in bytes: one last-level cache instance, or FASTGEN_CPU_STREAM_BYTES (-1: never).
int64_t streaming_threshold_bytes();

}  // namespace cpu
}  // namespace fastgen
