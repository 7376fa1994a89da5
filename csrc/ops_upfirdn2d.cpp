// The torch layer of upfirdn2d (StyleGAN2's upsample + pad + FIR filter + downsample): schema (a
// TORCH_LIBRARY_FRAGMENT of the fastgen library), input checks naming the argument, layouts, and
// the CPU implementation calling csrc/cpu/upfirdn2d.h. Autograd (every order: the gradient is
// upfirdn2d again) is registered from Python (fastgen/ops/upfirdn2d.py), shared with the Triton op.
//
//   upfirdn2d(x, f?, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip, gain) -> y
//       x (N, C, H, W) fp32 / fp16 / bf16 (fp64: fp64 math); f None (identity), 1-D (separable) or
//       2-D, any float dtype; y (N, C, Ho, Wo) in x's dtype, Ho = (H upy + pady0 + pady1 - fh) // downy + 1.
//
// Layouts, without copies: rows with unit stride (NCHW-contiguous, or any strided view of it such
// as a crop) run the NCHW kernel and give a contiguous y; channels_last (or any view with unit
// channel stride) runs the channels-last kernel and gives a channels_last y. Only inputs with
// neither unit stride are made contiguous first. fastgen/ops/upfirdn2d.py's fake kernel mirrors
// this choice.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <vector>

#include "cpu/upfirdn2d.h"
#include "ops_common.h"

namespace fastgen {
namespace {

using OptTensor = std::optional<at::Tensor>;
constexpr int64_t kMaxFactor = int64_t{1} << 24;  // up / down: keeps every index product in int64
constexpr int64_t kMaxPad = int64_t{1} << 40;
constexpr int64_t kGrainElems = 16384;

int64_t floor_div(int64_t v, int64_t m) {
  const int64_t q = v / m;
  return (v % m != 0 && v < 0) ? q - 1 : q;
}

DType dtype_of(const at::Tensor& x) {
  if (x.scalar_type() == at::kDouble) return DType::Float64;
  return to_fg_dtype(x.scalar_type(), "x");
}

// true: the channels-last kernel (unit channel stride); false: the NCHW kernel (unit W stride).
bool channels_last_path(const at::Tensor& x) {
  if (x.is_contiguous()) return false;
  if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) return true;
  if (x.size(3) == 1 || x.stride(3) == 1) return false;
  return x.size(1) == 1 || x.stride(1) == 1;
}

at::Tensor upfirdn2d_cpu(const at::Tensor& x, const OptTensor& f, int64_t upx, int64_t upy, int64_t downx,
                         int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1, bool flip,
                         double gain) {
  TORCH_CHECK_VALUE(x.dim() == 4, "fastgen.upfirdn2d: x must have shape (N, C, H, W), got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf ||
                       x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kDouble,
                   "fastgen.upfirdn2d: x has dtype ", x.scalar_type(),
                   "; supported are float32, float16, bfloat16 and float64");
  int64_t fw = 1, fh = 1;
  bool separable = true;
  if (f.has_value()) {
    TORCH_CHECK_TYPE(at::isFloatingType(f->scalar_type()), "fastgen.upfirdn2d: f must be a floating-point tensor, got ",
                     f->scalar_type());
    TORCH_CHECK_VALUE((f->dim() == 1 || f->dim() == 2) && f->numel() > 0,
                      "fastgen.upfirdn2d: f must be a non-empty 1-D (separable) or 2-D filter, got shape ", f->sizes());
    TORCH_CHECK_VALUE(f->device() == x.device(), "fastgen.upfirdn2d: f is on ", f->device(), " but x is on ",
                      x.device());
    separable = f->dim() == 1;
    fw = f->size(-1);
    fh = f->size(0);
  }
  TORCH_CHECK_VALUE(upx >= 1 && upy >= 1 && upx <= kMaxFactor && upy <= kMaxFactor,
                    "fastgen.upfirdn2d: up must be in [1, 2^24], got (", upx, ", ", upy, ")");
  TORCH_CHECK_VALUE(downx >= 1 && downy >= 1 && downx <= kMaxFactor && downy <= kMaxFactor,
                    "fastgen.upfirdn2d: down must be in [1, 2^24], got (", downx, ", ", downy, ")");
  for (int64_t p : {padx0, padx1, pady0, pady1})
    TORCH_CHECK_VALUE(p >= -kMaxPad && p <= kMaxPad, "fastgen.upfirdn2d: padding must be in [-2^40, 2^40], got (",
                      padx0, ", ", padx1, ", ", pady0, ", ", pady1, ")");
  TORCH_CHECK_VALUE(std::isfinite(gain), "fastgen.upfirdn2d: gain must be finite, got ", gain);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = floor_div(H * upy + pady0 + pady1 - fh, downy) + 1;
  const int64_t Wo = floor_div(W * upx + padx0 + padx1 - fw, downx) + 1;
  TORCH_CHECK_VALUE(Ho >= 1 && Wo >= 1, "fastgen.upfirdn2d: the output would be empty (", Ho, " x ", Wo,
                    ") for x of shape ", x.sizes(), ", filter ", fh, " x ", fw, ", up (", upx, ", ", upy, "), down (",
                    downx, ", ", downy, "), padding (", padx0, ", ", padx1, ", ", pady0, ", ", pady1, ")");

  at::Tensor xs = x;
  bool cl = channels_last_path(x);
  if (!cl && !(W == 1 || x.stride(3) == 1)) xs = x.contiguous();  // neither unit stride: copy
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor y = at::empty({N, C, Ho, Wo}, x.options().memory_format(fmt));
  if (y.numel() == 0) return y;
  if (xs.numel() == 0) return y.zero_();  // H or W is 0: only padding reaches the output

  // Correlation taps in double: the filter flipped unless `flip`, gain folded into kx (or k2).
  std::vector<double> kx, ky, k2;
  if (!f.has_value()) {
    kx = {gain};
    ky = {1.0};
  } else {
    const at::Tensor fd = f->detach().to(at::kCPU, at::kDouble).contiguous();
    const double* fp = fd.const_data_ptr<double>();
    if (separable) {
      kx.resize(fw);
      ky.resize(fh);
      for (int64_t i = 0; i < fw; ++i) {
        kx[i] = (flip ? fp[i] : fp[fw - 1 - i]) * gain;
        ky[i] = flip ? fp[i] : fp[fw - 1 - i];
      }
    } else {
      k2.resize(fh * fw);
      for (int64_t a = 0; a < fh; ++a)
        for (int64_t b = 0; b < fw; ++b)
          k2[a * fw + b] = (flip ? fp[a * fw + b] : fp[(fh - 1 - a) * fw + (fw - 1 - b)]) * gain;
    }
  }

  cpu::Upfirdn2dArgs a{};
  a.x = xs.const_data_ptr();
  a.out = y.mutable_data_ptr();
  a.N = N, a.C = C, a.H = H, a.W = W, a.Ho = Ho, a.Wo = Wo;
  a.sxn = xs.stride(0), a.sxc = xs.stride(1), a.sxh = xs.stride(2), a.sxw = xs.stride(3);
  a.ux = upx, a.uy = upy, a.dx = downx, a.dy = downy;
  a.px0 = padx0, a.py0 = pady0;
  a.fw = fw, a.fh = fh;
  a.separable = separable;
  a.kx = kx.data();
  a.ky = ky.data();
  a.k2 = k2.data();
  const DType dt = dtype_of(x);
  if (!cl) {
    const int64_t grain = std::max<int64_t>(1, kGrainElems / Wo);
    at::parallel_for(0, N * C * Ho, grain, [&](int64_t b, int64_t e) { cpu::upfirdn2d_nchw(dt, a, b, e); });
  } else {
    const int64_t cb = cpu::upfirdn2d_cl_block(a);
    const int64_t nblk = (C + cb - 1) / cb;
    const int64_t grain = std::max<int64_t>(1, kGrainElems / (Wo * cb));
    at::parallel_for(0, N * Ho * nblk, grain, [&](int64_t b, int64_t e) { cpu::upfirdn2d_cl(dt, a, cb, b, e); });
  }
  return y;
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_FRAGMENT(fastgen, m) {
  m.def("upfirdn2d(Tensor x, Tensor? f, int upx, int upy, int downx, int downy, int padx0, int padx1, int pady0, "
        "int pady1, bool flip, float gain) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastgen, CPU, m) { m.impl("upfirdn2d", &fastgen::upfirdn2d_cpu); }
