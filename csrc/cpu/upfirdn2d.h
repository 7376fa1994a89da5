// CPU kernels of upfirdn2d (StyleGAN2's resampling primitive: upsample by zero insertion, pad or
// crop, FIR filter, downsample) — raw pointers, no torch headers. See fastgen/ops/upfirdn2d.py for
// the semantics. In correlation form, with k the correlation taps (the filter flipped unless
// flip_filter, gain folded in):
//
//   y[n, c, oy, ox] = sum_{a, b} k[a, b] * u[oy * dy + a - py0, ox * dx + b - px0]
//   u[m, l] = x[n, c, m / uy, l / ux] if uy | m, ux | l and the quotients are inside x, else 0
//
// computed polyphase: only the taps that land on real samples are visited, only kept outputs are
// computed, and neither the upsampled nor the padded image is materialised.
#pragma once
#include <cstdint>

#include "fastgen/macros.h"

namespace fastgen {
namespace cpu {

struct Upfirdn2dArgs {
  const void* x;  // storage dtype T (fp32 / fp16 / bf16; fp64 with fp64 math)
  void* out;      // T, dense: NCHW-contiguous (nchw entry) or channels_last (cl entry)
  int64_t N, C, H, W, Ho, Wo;
  // x strides in elements. nchw entry: sxw == 1 (rows contiguous); cl entry: sxc == 1.
  int64_t sxn, sxc, sxh, sxw;
  int64_t ux, uy, dx, dy;  // >= 1
  int64_t px0, py0;        // leading padding (negative: crop); the trailing one only sets Wo / Ho
  int64_t fw, fh;          // filter width / height (a separable filter: both its length)
  bool separable;
  // Correlation taps in double (each kernel rounds them to its math type once):
  // separable: kx[fw] (horizontal, gain folded in) and ky[fh]; 2-D: k2[fh * fw] row-major, gain in.
  const double* kx;
  const double* ky;
  const double* k2;
};

// NCHW: output rows [begin, end) of the N*C*Ho output rows (row r: plane r / Ho, output row r % Ho).
void upfirdn2d_nchw(DType dt, const Upfirdn2dArgs& a, int64_t begin, int64_t end);

// Channels last: work items [begin, end) of N*Ho*ceil(C / cblock) (item (n, oy, channel block)),
// each computing one output row for `cblock` channels.
void upfirdn2d_cl(DType dt, const Upfirdn2dArgs& a, int64_t cblock, int64_t begin, int64_t end);

// The channel block the cl entry should use: all channels when a row of them fits in L2-sized
// buffers, else a multiple of 16.
int64_t upfirdn2d_cl_block(const Upfirdn2dArgs& a);

}  // namespace cpu
}  // namespace fastgen
