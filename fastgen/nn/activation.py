"""Activation and style-modulation modules on fastgen's fused ops."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..functional import adain, bias_act
from ..ops.bias_act import ACTIVATIONS


class BiasAct(nn.Module):
    """A learned per-channel bias, an activation, a gain and an optional clamp in one fused op
    (StyleGAN2's ``bias_act`` epilogue; rosinality's ``FusedLeakyReLU`` is ``BiasAct(C, "lrelu")``):
    ``clamp(act(x + bias) * gain)``, with fused first and second order gradients (R1, WGAN-GP).

    Args:
        num_channels: size of ``bias`` (x.shape[dim]); 0 for no bias.
        act, alpha, gain, clamp: as :func:`fastgen.functional.bias_act` (gain default: the
            activation's, e.g. sqrt 2 for lrelu).
        dim: the channel axis (1 for NCHW feature maps, -1 for (N, C) features also works).
        bias_init: initial bias value.
    """

    def __init__(self, num_channels: int, act: str = "lrelu", alpha: Optional[float] = None,
                 gain: Optional[float] = None, clamp: Optional[float] = None, dim: int = 1, bias_init: float = 0.0):
        super().__init__()
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 0:
            raise ValueError(f"BiasAct: num_channels must be an int >= 0, got {num_channels!r}")
        if act not in ACTIVATIONS:
            raise ValueError(f"BiasAct: act must be one of {', '.join(ACTIVATIONS)}; got {act!r}")
        self.act, self.alpha, self.gain, self.clamp, self.dim = act, alpha, gain, clamp, dim
        self.bias = nn.Parameter(torch.full((num_channels,), float(bias_init))) if num_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bias_act(x, self.bias, self.dim, self.act, self.alpha, self.gain, self.clamp)

    def extra_repr(self) -> str:
        c = 0 if self.bias is None else self.bias.numel()
        return f"{c}, act={self.act!r}, alpha={self.alpha}, gain={self.gain}, clamp={self.clamp}, dim={self.dim}"


class AdaIN(nn.Module):
    """StyleGAN's adaptive instance normalisation block: a learned affine map A turns the style
    vector w into per-channel styles (y_s, y_b) = A(w), then
    ``AdaIN(x, y) = y_s (x - mu(x)) / sigma(x) + y_b`` (fused: :func:`fastgen.functional.adain`).

    Args:
        channels: C of the feature maps. w_dim: size of w.
        eps: added to the instance variance.
    A's bias is initialised so that y_s starts at 1 and y_b at 0 (as in StyleGAN).
    """

    def __init__(self, channels: int, w_dim: int, eps: float = 1e-5):
        super().__init__()
        self.channels, self.eps = channels, eps
        self.affine = nn.Linear(w_dim, 2 * channels)
        with torch.no_grad():
            self.affine.bias.zero_()
            self.affine.bias[:channels].fill_(1.0)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        style_scale, style_bias = self.affine(w).chunk(2, dim=1)
        return adain(x, style_scale, style_bias, self.eps)
