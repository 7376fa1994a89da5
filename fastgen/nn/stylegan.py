r"""StyleGAN building blocks on fastgen's fused ops (Karras et al. 2019, 2020).

* :class:`EqualizedLinear`, :class:`EqualizedConv2d` — equalized learning rate: weights drawn from
  N(0, 1) (divided by ``lr_multiplier``) and scaled at run time by ``lr_multiplier / sqrt(fan_in)``;
  bias + activation + gain + clamp in one fused op (:func:`fastgen.functional.bias_act`); the conv
  resamples with a FIR filter (:func:`fastgen.functional.conv2d_resample` on the fused upfirdn2d).
* :class:`MappingNetwork` — z (and a class label) -> w: 2nd-moment normalisation, an MLP with
  ``lr_multiplier`` 0.01, the tracked mean ``w_avg`` (truncation trick), broadcast to ``num_ws``.
* :class:`SynthesisLayer` — StyleGAN2: modulated / demodulated 3x3 conv, then demodulation scale,
  noise injection (learned strength), bias, lrelu, gain and clamp in one fused op
  (:func:`fastgen.functional.modulated_bias_act`).
* :class:`ToRGBLayer` — modulated 1x1 conv without demodulation.
* :class:`AdaINLayer` — StyleGAN (v1): conv, then noise x learned per-channel factors B, bias and
  lrelu (one fused op), then AdaIN with styles (y_s, y_b) = A(w) (:func:`fastgen.functional.adain`).
* :class:`MinibatchStdDev` — the discriminator's minibatch standard deviation feature.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from ..functional import adain, bias_act, modulate_weight, modulated_bias_act, setup_filter
from ..ops.bias_act import ACTIVATIONS
from ..ops.modulated_conv2d import conv2d_resample, demodulation_coefficients

NOISE_MODES = ("random", "const", "none")


def _int(v, name: str, cls: str, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{cls}: {name} must be an int >= {lo}, got {v!r}")
    return v


def _act_gain(act: str) -> float:
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {', '.join(ACTIVATIONS)}; got {act!r}")
    return ACTIVATIONS[act][2]


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps)`` along ``dim`` (StyleGAN's pixel norm of z)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class EqualizedLinear(nn.Module):
    """Fully connected layer with equalized learning rate and a fused bias + activation.

    Args:
        in_features, out_features: sizes. bias: learn a bias. bias_init: its initial value.
        act: activation (:func:`fastgen.functional.bias_act`'s names; default linear).
        lr_multiplier: learning-rate multiplier (the mapping network uses 0.01).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, act: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        _int(in_features, "in_features", "EqualizedLinear")
        _int(out_features, "out_features", "EqualizedLinear")
        _act_gain(act)
        self.in_features, self.out_features, self.act = in_features, out_features, act
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_multiplier)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.act == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.act)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, act={self.act!r}"


class EqualizedConv2d(nn.Module):
    """Conv layer with equalized learning rate, optional FIR up/down-sampling and a fused bias +
    activation + gain + clamp (StyleGAN2's discriminator / skip convolutions).

    Args:
        in_channels, out_channels, kernel_size: as nn.Conv2d (square kernel, 'same' padding).
        bias: learn a bias. act: activation. up, down: resampling factor (2: FIR-filtered 2x).
        resample_filter: the FIR filter taps (default ``[1, 3, 3, 1]``).
        conv_clamp: clamp the output to +-conv_clamp (None: no clamp).
    ``forward(x, gain=1)`` multiplies the activation's gain (and the clamp) by ``gain``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 act: str = "linear", up: int = 1, down: int = 1, resample_filter: Sequence[float] = (1, 3, 3, 1),
                 conv_clamp: Optional[float] = None):
        super().__init__()
        _int(in_channels, "in_channels", "EqualizedConv2d")
        _int(out_channels, "out_channels", "EqualizedConv2d")
        _int(kernel_size, "kernel_size", "EqualizedConv2d")
        _int(up, "up", "EqualizedConv2d")
        _int(down, "down", "EqualizedConv2d")
        self.act_gain = _act_gain(act)
        self.act, self.up, self.down, self.conv_clamp = act, up, down, conv_clamp
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.register_buffer("resample_filter", setup_filter(resample_filter), persistent=False)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        f = self.resample_filter if (self.up > 1 or self.down > 1) else None
        x = conv2d_resample(x, w, f, up=self.up, down=self.down, padding=self.padding)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        if self.act == "linear" and self.bias is None and clamp is None:
            return x if gain == 1 else x * gain
        return bias_act(x, self.bias, act=self.act, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, kernel_size={k}, act={self.act!r}, up={self.up}, down={self.down}, clamp={self.conv_clamp}"


class MappingNetwork(nn.Module):
    """z (+ class label) -> w, broadcast to ``num_ws`` style vectors.

    Args:
        z_dim: latent size (0: no z, e.g. a label-only embedding). c_dim: number of classes (0: none);
            labels are int class indices ``(N,)`` or one-hot / soft ``(N, c_dim)``.
        w_dim: size of w. num_ws: number of style vectors to broadcast to (None: return ``(N, w_dim)``).
        num_layers: MLP depth (StyleGAN: 8). lr_multiplier: the MLP's learning-rate multiplier (0.01).
        w_avg_beta: decay of the tracked mean of w (None: do not track).
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: Optional[int], num_layers: int = 8,
                 lr_multiplier: float = 0.01, w_avg_beta: Optional[float] = 0.995, hidden_dim: Optional[int] = None):
        super().__init__()
        _int(z_dim, "z_dim", "MappingNetwork", 0)
        _int(c_dim, "c_dim", "MappingNetwork", 0)
        _int(w_dim, "w_dim", "MappingNetwork")
        _int(num_layers, "num_layers", "MappingNetwork")
        if z_dim == 0 and c_dim == 0:
            raise ValueError("MappingNetwork: z_dim and c_dim cannot both be 0")
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, c_dim, w_dim, num_ws, w_avg_beta
        hidden = hidden_dim or w_dim
        self.embed = EqualizedLinear(c_dim, w_dim) if c_dim else None
        dims = [(z_dim + (w_dim if c_dim else 0))] + [hidden] * (num_layers - 1) + [w_dim]
        self.layers = nn.ModuleList(EqualizedLinear(a, b, act="lrelu", lr_multiplier=lr_multiplier)
                                    for a, b in zip(dims[:-1], dims[1:]))
        if w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def _labels(self, c: Optional[torch.Tensor], n: int, dtype: torch.dtype) -> torch.Tensor:
        if c is None:
            raise ValueError(f"MappingNetwork: this network is conditional (c_dim={self.c_dim}); pass class labels c")
        if not isinstance(c, torch.Tensor):
            raise TypeError(f"MappingNetwork: c must be a tensor, got {type(c).__name__}")
        if not c.is_floating_point():
            if c.shape != (n,):
                raise ValueError(f"MappingNetwork: integer labels c must have shape ({n},), got {tuple(c.shape)}")
            if c.device.type == "cpu" and bool(((c < 0) | (c >= self.c_dim)).any()):
                raise ValueError(f"MappingNetwork: labels c must be in [0, {self.c_dim})")
            return nn.functional.one_hot(c.long(), self.c_dim).to(dtype)
        if c.shape != (n, self.c_dim):
            raise ValueError(f"MappingNetwork: c must be (N,) class indices or (N, c_dim) = ({n}, {self.c_dim}), got "
                             f"{tuple(c.shape)}")
        return c.to(dtype)

    def forward(self, z: Optional[torch.Tensor], c: Optional[torch.Tensor] = None, truncation_psi: float = 1.0,
                truncation_cutoff: Optional[int] = None, update_w_avg: bool = False) -> torch.Tensor:
        """Returns ``(N, num_ws, w_dim)`` (or ``(N, w_dim)`` if num_ws is None). ``truncation_psi``
        pulls the first ``truncation_cutoff`` (default all) ws towards ``w_avg``; ``update_w_avg``
        (training) moves w_avg towards this batch's mean."""
        parts = []
        if self.z_dim:
            if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"MappingNetwork: z must be a (N, {self.z_dim}) tensor, got "
                                 f"{tuple(z.shape) if isinstance(z, torch.Tensor) else z!r}")
            parts.append(normalize_2nd_moment(z))
            n, dtype = z.shape[0], z.dtype
        else:
            if c is None:
                raise ValueError("MappingNetwork: this network has no z (z_dim=0); pass class labels c")
            n, dtype = c.shape[0], self.embed.weight.dtype
        if self.c_dim:
            parts.append(normalize_2nd_moment(self.embed(self._labels(c, n, dtype))))
        elif c is not None:
            raise ValueError("MappingNetwork: class labels given to an unconditional network (c_dim=0)")
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for layer in self.layers:
            x = layer(x)
        if update_w_avg and self.w_avg_beta is not None:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(0).to(self.w_avg.dtype).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise ValueError("MappingNetwork: truncation needs the tracked w_avg (w_avg_beta=None here)")
            avg = self.w_avg.to(x.dtype)
            if self.num_ws is None or truncation_cutoff is None:
                x = avg.lerp(x, truncation_psi)
            else:
                x = torch.cat([avg.lerp(x[:, :truncation_cutoff], truncation_psi), x[:, truncation_cutoff:]], dim=1)
        return x


class SynthesisLayer(nn.Module):
    """StyleGAN2 synthesis layer: modulated conv (optionally 2x upsampling), then
    ``lrelu(conv * d + noise * strength + bias) * sqrt 2 * gain`` (clamped) in one fused epilogue.

    Args:
        in_channels, out_channels, w_dim: sizes. resolution: output size (for the constant noise).
        kernel_size: 3. up: 1 or 2. use_noise: add per-pixel noise with a learned scalar strength.
        act: activation. conv_clamp: clamp after the activation (None: no clamp).
    ``forward(x, w, noise_mode="random"|"const"|"none", fused_modconv=False, gain=1)``.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, act: str = "lrelu",
                 resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: Optional[float] = None):
        super().__init__()
        self.act_gain = _act_gain(act)
        self.in_channels, self.out_channels, self.resolution = in_channels, out_channels, resolution
        self.up, self.act, self.conv_clamp, self.use_noise = up, act, conv_clamp, use_noise
        self.padding = kernel_size // 2
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("resample_filter", setup_filter(resample_filter), persistent=False)
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", fused_modconv: bool = False,
                gain: float = 1.0) -> torch.Tensor:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"SynthesisLayer: noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        n = x.shape[0]
        styles = self.affine(w)
        weight = self.weight.to(x.dtype)
        f = self.resample_filter if self.up > 1 else None
        if fused_modconv:
            wn = modulate_weight(weight, styles)  # (N, O, I, k, k), demodulated, in one fused pass
            y = conv2d_resample(x.reshape(1, -1, *x.shape[2:]), wn.reshape(-1, *weight.shape[1:]), f, up=self.up,
                                padding=self.padding, groups=n)
            y, scale = y.reshape(n, -1, *y.shape[2:]), None
        else:
            y = conv2d_resample(x * styles.reshape(n, -1, 1, 1), weight, f, up=self.up, padding=self.padding)
            scale = demodulation_coefficients(weight, styles)  # applied in the fused epilogue
        noise = strength = None
        if self.use_noise and noise_mode != "none":
            size = y.shape[2:]
            noise = (torch.randn(n, 1, *size, device=y.device, dtype=y.dtype) if noise_mode == "random"
                     else self.noise_const.to(y.dtype).reshape(1, 1, *size))
            strength = self.noise_strength
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return modulated_bias_act(y, self.bias, scale=scale, noise=noise, noise_strength=strength, act=self.act,
                                  gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, resolution={self.resolution}, up={self.up}, "
                f"act={self.act!r}, noise={self.use_noise}, clamp={self.conv_clamp}")


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to image channels (no demodulation) + bias (+ clamp)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: Optional[float] = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = False) -> torch.Tensor:
        n = x.shape[0]
        styles = self.affine(w) * self.weight_gain
        weight = self.weight.to(x.dtype)
        if fused_modconv:
            wn = modulate_weight(weight, styles, demodulate=False).reshape(-1, weight.shape[1], 1, 1)
            y = nn.functional.conv2d(x.reshape(1, -1, *x.shape[2:]), wn, groups=n).reshape(n, -1, *x.shape[2:])
        else:
            y = nn.functional.conv2d(x * styles.reshape(n, -1, 1, 1), weight)
        return bias_act(y, self.bias, clamp=self.conv_clamp)


class AdaINLayer(nn.Module):
    """StyleGAN (v1) layer: [conv (optionally 2x up)], then ``lrelu(x + noise * B + bias)`` (one fused
    op, B learned per channel), then AdaIN with (y_s, y_b) = A(w).

    Args:
        in_channels: 0 for the first layer on the learned constant (no conv). out_channels, w_dim.
        resolution: output size. up: 1 or 2 (FIR-filtered upsampling before the 3x3 conv).
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: int = 1,
                 use_noise: bool = True, resample_filter: Sequence[float] = (1, 3, 3, 1), eps: float = 1e-5):
        super().__init__()
        self.in_channels, self.out_channels, self.resolution, self.use_noise, self.eps = (
            in_channels, out_channels, resolution, use_noise, eps)
        self.conv = EqualizedConv2d(in_channels, out_channels, 3, bias=False, up=up,
                                    resample_filter=resample_filter) if in_channels else None
        self.bias = nn.Parameter(torch.zeros(out_channels))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros(out_channels))
        self.affine = EqualizedLinear(w_dim, 2 * out_channels)
        with torch.no_grad():  # y_s starts at 1, y_b at 0
            self.affine.bias[:out_channels].fill_(1.0)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"AdaINLayer: noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if self.conv is not None:
            x = self.conv(x)
        n = x.shape[0]
        noise = strength = None
        if self.use_noise and noise_mode != "none":
            noise = (torch.randn(n, 1, *x.shape[2:], device=x.device, dtype=x.dtype) if noise_mode == "random"
                     else self.noise_const.to(x.dtype).reshape(1, 1, *x.shape[2:]))
            strength = self.noise_strength
        x = modulated_bias_act(x, self.bias, noise=noise, noise_strength=strength, act="lrelu")
        ys, yb = self.affine(w).chunk(2, dim=1)
        return adain(x, ys, yb, self.eps)


class MinibatchStdDev(nn.Module):
    """Appends ``num_channels`` features: the standard deviation of each feature over groups of
    ``group_size`` samples, averaged over channels (in ``num_channels`` slices) and pixels
    (Karras et al. 2018). The batch is split into groups of the largest size <= group_size that
    divides it. Plain PyTorch ops (it runs on 4x4 maps: a fused kernel would save nothing), so
    every order of autograd works (R1 through the discriminator)."""

    def __init__(self, group_size: int = 4, num_channels: int = 1):
        super().__init__()
        self.group_size = _int(group_size, "group_size", "MinibatchStdDev")
        self.num_channels = _int(num_channels, "num_channels", "MinibatchStdDev")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if c % self.num_channels:
            raise ValueError(f"MinibatchStdDev: channels ({c}) must be divisible by num_channels ({self.num_channels})")
        g = max(d for d in range(1, min(self.group_size, n) + 1) if n % d == 0) if n else 1
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)  # sample k of group j is x[k * (n / g) + j]
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()  # (n/g, f, c/f, h, w)
        y = y.mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y.to(x.dtype)], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"
