// Portable load/store of fp32/fp16/bf16 storage with fp32 math, for the CPU kernels.
// (CUDA kernels use cuda_fp16.h / cuda_bf16.h instead.)
//
// Both 16-bit types are stored as raw bits and converted with branch-free integer/float code,
// so GCC vectorises the conversions in every target clone (GCC 12 cannot vectorise _Float16
// conversions, and _Float16 would also tie a wheel to libgcc >= 12 for __extendhfsf2).
#pragma once
#include <cstdint>
#include <cstring>
#include "fastgen/macros.h"

namespace fastgen {

struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };  // IEEE binary16

FG_ALWAYS_INLINE float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
FG_ALWAYS_INLINE uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

FG_ALWAYS_INLINE float to_float(float v) { return v; }
// binary16 -> binary32, exact. Exponent+mantissa shifted into place and scaled by 2^112
// re-biases normals and turns subnormals (read as fp32 denormals) into their exact value;
// Inf/NaN (exponent 31) get the fp32 all-ones exponent instead.
FG_ALWAYS_INLINE float to_float(f16_t v) {
  const uint32_t h = v.bits;
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  const uint32_t scaled = float_to_bits(bits_to_float(em << 13) * 0x1p112f);
  const uint32_t special = (em << 13) | 0x7f800000u;
  return bits_to_float(sign | (em >= 0x7c00u ? special : scaled));
}
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
// binary32 -> binary16, round to nearest even (IEEE default), overflow to Inf, NaN kept quiet.
//   |v| >= 65536 or Inf/NaN : Inf, or a quiet NaN
//   |v| <  2^-14            : subnormal/zero: adding 0.5f (whose ulp, 2^-24, is the binary16
//                             subnormal step) lets the FPU round; the low bits are the result
//   otherwise               : re-bias the exponent and round the 13 dropped mantissa bits to
//                             nearest even with an integer add (a carry bumps the exponent,
//                             and [65520, 65536) correctly rounds up to Inf)
template <>
FG_ALWAYS_INLINE f16_t from_float<f16_t>(float v) {
  const uint32_t u = float_to_bits(v);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  const uint32_t big = a > 0x7f800000u ? 0x7e00u : 0x7c00u;
  const uint32_t tiny = float_to_bits(bits_to_float(a) + 0.5f) - 0x3f000000u;
  const uint32_t normal = (a + 0xc8000fffu + ((a >> 13) & 1u)) >> 13;  // 0xc8000000 = (15-127) << 23
  const uint32_t r = a >= 0x47800000u ? big : (a < 0x38800000u ? tiny : normal);
  f16_t out;
  out.bits = static_cast<uint16_t>(sign | r);
  return out;
}
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
