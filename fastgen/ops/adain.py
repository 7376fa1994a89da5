r"""Adaptive instance normalisation (StyleGAN's AdaIN):

    AdaIN(x, y)[n, c] = y_s[n, c] * (x[n, c] - mu[n, c]) / sigma[n, c] + y_b[n, c],
    mu, sigma^2 = mean and biased variance of x[n, c] over its spatial positions, sigma = sqrt(var + eps)

This is GroupNorm with one group per channel followed by the per-(n, c) modulation, which is
exactly what the fused ``group_norm`` op computes (one statistics pass over x, one
normalise + modulate pass; fused backward for x, scale and shift; twice differentiable):
``adain(x, y_s, y_b) = group_norm(x, C, scale=y_s - 1, shift=y_b)``. So adain runs on
group_norm's C++ / CUDA / Triton kernels; the only extra work is ``y_s - 1`` on the (N, C)
style tensor. Gradients: x, y_s, y_b (every order; see fastgen.ops.group_norm).
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Optional

import torch

from . import _common as C
from .group_norm import group_norm

OP = "adain"


def adain_reference(x: torch.Tensor, style_scale: torch.Tensor, style_bias: torch.Tensor,
                    eps: float = 1e-5) -> torch.Tensor:
    """The textbook formula in plain PyTorch (fp32 math for half inputs, float64 stays float64)."""
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(ct)
    dims = tuple(range(2, x.dim()))
    mu = xf.mean(dim=dims, keepdim=True)
    var = xf.var(dim=dims, keepdim=True, unbiased=False)
    shape = x.shape[:2] + (1,) * (x.dim() - 2)
    y = style_scale.to(ct).reshape(shape) * (xf - mu) / torch.sqrt(var + eps) + style_bias.to(ct).reshape(shape)
    return y.to(x.dtype)


def _check(x, style_scale, style_bias, eps):
    C.check_tensor(x, "x", OP)
    if not x.is_floating_point():
        raise TypeError(f"fastgen.{OP}: x must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 3:
        raise ValueError(f"fastgen.{OP}: x must have shape (N, C, *spatial) with at least one spatial dim, got "
                         f"{tuple(x.shape)}")
    n, c = x.shape[:2]
    for name, t in (("style_scale", style_scale), ("style_bias", style_bias)):
        C.check_tensor(t, name, OP)
        if not t.is_floating_point():
            raise TypeError(f"fastgen.{OP}: {name} must be a floating-point tensor, got {t.dtype}")
        if not (t.dim() >= 2 and tuple(t.shape[:2]) == (n, c) and all(s == 1 for s in t.shape[2:])):
            raise ValueError(f"fastgen.{OP}: {name} must have shape (N, C) = ({n}, {c}) or (N, C, 1, ...), got "
                             f"{tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"fastgen.{OP}: {name} is on {t.device} but x is on {x.device}")
    if isinstance(eps, bool) or not isinstance(eps, Real) or not (math.isfinite(float(eps)) and float(eps) > 0):
        raise ValueError(f"fastgen.{OP}: eps must be a finite number > 0, got {eps!r}")


def adain(x: torch.Tensor, style_scale: torch.Tensor, style_bias: torch.Tensor, eps: float = 1e-5, *,
          impl: Optional[str] = None) -> torch.Tensor:
    """AdaIN in one fused op: instance statistics, then ``style_scale * xhat + style_bias``.

    Args:
        x: ``(N, C, *spatial)`` float32/float16/bfloat16 (float64: the reference), NCHW or channels_last.
        style_scale, style_bias: ``(N, C)`` (or ``(N, C, 1, 1)``) styles y_s, y_b, any float dtype.
        eps: added to the variance.
        impl: as :func:`fastgen.functional.group_norm` (whose kernels run this).

    Returns y with x's shape, dtype and memory format; differentiable w.r.t. x, style_scale and
    style_bias to any order.
    """
    _check(x, style_scale, style_bias, eps)
    n, c = x.shape[:2]
    if x.dtype == torch.float64 or x.numel() == 0:
        return adain_reference(x, style_scale, style_bias, eps)
    return group_norm(x, c, None, None, eps, scale=style_scale.reshape(n, c) - 1, shift=style_bias.reshape(n, c),
                      impl=impl)
