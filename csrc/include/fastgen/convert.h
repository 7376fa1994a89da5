// Portable load/store of fp32/fp16/bf16 storage with fp32 math, for the CPU kernels.
// (CUDA kernels use cuda_fp16.h / cuda_bf16.h instead.)
#pragma once
#include <cstdint>
#include <cstring>
#include "fastgen/macros.h"

namespace fastgen {

struct bf16_t { uint16_t bits; };
using f16_t = _Float16;  // GCC >= 12 and clang on x86-64: IEEE binary16 storage type

FG_ALWAYS_INLINE float to_float(float v) { return v; }
FG_ALWAYS_INLINE float to_float(f16_t v) { return static_cast<float>(v); }
FG_ALWAYS_INLINE float to_float(bf16_t v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

template <typename T>
FG_ALWAYS_INLINE T from_float(float v);
template <>
FG_ALWAYS_INLINE float from_float<float>(float v) { return v; }
template <>
FG_ALWAYS_INLINE f16_t from_float<f16_t>(float v) { return static_cast<f16_t>(v); }
template <>
FG_ALWAYS_INLINE bf16_t from_float<bf16_t>(float v) {
  // round-to-nearest-even, NaN kept quiet
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  bf16_t r;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    r.bits = static_cast<uint16_t>((u >> 16) | 0x0040u);
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);
    r.bits = static_cast<uint16_t>(u >> 16);
  }
  return r;
}

}  // namespace fastgen
