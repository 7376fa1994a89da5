r"""StyleGAN (Karras et al. 2019) and StyleGAN2 (Karras et al. 2020) generator and discriminator on
fastgen's fused ops.

    G = Generator.from_preset("32px", c_dim=4)            # StyleGAN2, 32x32, class-conditional
    img = G(z, c, truncation_psi=0.7)                     # (N, 3, 32, 32) in about [-1, 1]
    D = Discriminator.from_preset("32px", c_dim=4)
    logits = D(img, c)                                    # (N, 1)

Generator: a mapping network z (+ label) -> w (8-layer MLP, lr multiplier 0.01, tracked w_avg),
broadcast to one w per layer; a synthesis network from a learned 4x4 constant up to the output
resolution. ``style="stylegan2"`` (default): per block a 2x-upsampling modulated conv and a
modulated conv, each followed by the fused demodulation + noise + bias + lrelu epilogue, and an
RGB output per block summed over resolutions (``architecture="skip"``; ``"resnet"`` and ``"orig"``
too). ``style="stylegan"``: per layer conv, noise x per-channel factors B + bias + lrelu, AdaIN
with (y_s, y_b) = A(w); RGB from the last block. Style mixing (``style_mixing_prob``) switches to
the ws of a second z at a random layer; truncation (``truncation_psi``) pulls ws towards w_avg.

Discriminator (StyleGAN2's residual one): from-RGB 1x1 conv, per resolution two 3x3 convs (the
second halving the size after a FIR blur) plus a 1x1 residual path, down to 4x4; then the
minibatch standard deviation feature, a 3x3 conv, two FC layers; class-conditional through a
projection onto an embedding of the label (``cmap``). Every op is twice differentiable (R1).

Channels per resolution r: ``min(channel_base // r, channel_max)``.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from ..functional import setup_filter, upsample2d
from ..nn.stylegan import (AdaINLayer, EqualizedConv2d, EqualizedLinear, MappingNetwork, MinibatchStdDev,
                           SynthesisLayer, ToRGBLayer)

PRESETS: Dict[str, dict] = {
    # unit tests: ~0.1M params each
    "tiny": dict(img_resolution=16, z_dim=64, w_dim=64, channel_base=512, channel_max=64, mapping_layers=2),
    # CPU demo / slow test: 32x32, 128 channels
    "32px": dict(img_resolution=32, z_dim=128, w_dim=128, channel_base=4096, channel_max=128, mapping_layers=4),
    # the benchmark's 64x64 model
    "64px": dict(img_resolution=64, z_dim=256, w_dim=256, channel_base=8192, channel_max=256, mapping_layers=4,
                 conv_clamp=256),
    # StyleGAN2-ADA's CIFAR-10 configuration (512 channels, 2-layer mapping)
    "cifar10": dict(img_resolution=32, z_dim=512, w_dim=512, channel_base=16384, channel_max=512, mapping_layers=2,
                    conv_clamp=256),
    # StyleGAN2 config F at 256x256
    "256px": dict(img_resolution=256, z_dim=512, w_dim=512, channel_base=32768, channel_max=512, mapping_layers=8,
                  conv_clamp=256),
}
_G_ONLY = ("z_dim", "w_dim", "mapping_layers")


def _resolutions(img_resolution: int, cls: str) -> list[int]:
    if isinstance(img_resolution, bool) or not isinstance(img_resolution, int) or img_resolution < 4 or \
            img_resolution & (img_resolution - 1):
        raise ValueError(f"{cls}: img_resolution must be a power of two >= 4, got {img_resolution!r}")
    return [2 ** i for i in range(2, int(math.log2(img_resolution)) + 1)]


def _channels(resolutions, channel_base: int, channel_max: int, cls: str) -> Dict[int, int]:
    for name, v in (("channel_base", channel_base), ("channel_max", channel_max)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{cls}: {name} must be a positive int, got {v!r}")
    ch = {r: min(channel_base // r, channel_max) for r in resolutions}
    if min(ch.values()) < 1:
        raise ValueError(f"{cls}: channel_base {channel_base} gives no channels at {max(resolutions)}px")
    return ch


def _preset(cls, name: str, drop: Sequence[str], overrides: dict):
    if name not in PRESETS:
        raise ValueError(f"{cls.__name__}.from_preset: unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    cfg = {k: v for k, v in PRESETS[name].items() if k not in drop}
    return cls(**{**cfg, **overrides})


# ----------------------------------------------------------------------------- generator
class SynthesisBlock(nn.Module):
    """One resolution of the StyleGAN2 synthesis network (see the module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str, conv_clamp: Optional[float], use_noise: bool,
                 resample_filter: Sequence[float]):
        super().__init__()
        self.in_channels, self.architecture, self.is_last = in_channels, architecture, is_last
        layer = dict(w_dim=w_dim, resolution=resolution, conv_clamp=conv_clamp, use_noise=use_noise,
                     resample_filter=resample_filter)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, **layer)
        self.conv1 = SynthesisLayer(out_channels, out_channels, **layer)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1 if (is_last or architecture == "skip") else 0
        if self.num_torgb:
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        if in_channels and architecture == "resnet":
            self.skip = EqualizedConv2d(in_channels, out_channels, 1, bias=False, up=2, resample_filter=resample_filter)
        self.register_buffer("resample_filter", setup_filter(resample_filter), persistent=False)

    def forward(self, x: Optional[torch.Tensor], img: Optional[torch.Tensor], ws: torch.Tensor,
                noise_mode: str = "random", fused_modconv: bool = False):
        w = iter(ws.unbind(dim=1))
        kw = dict(noise_mode=noise_mode, fused_modconv=fused_modconv)
        if self.in_channels == 0:
            x = self.const.to(ws.dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, next(w), **kw)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w), **kw)
            x = self.conv1(x, next(w), gain=math.sqrt(0.5), **kw)
            x = y + x
        else:
            x = self.conv0(x, next(w), **kw)
            x = self.conv1(x, next(w), **kw)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.num_torgb:
            y = self.torgb(x, next(w), fused_modconv=fused_modconv)
            img = y if img is None else img + y
        return x, img


class SynthesisNetwork(nn.Module):
    """StyleGAN2 synthesis network: ws ``(N, num_ws, w_dim)`` -> images."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int, channel_max: int,
                 architecture: str = "skip", conv_clamp: Optional[float] = None, use_noise: bool = True,
                 resample_filter: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"Generator: architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        res = _resolutions(img_resolution, "Generator")
        ch = _channels(res, channel_base, channel_max, "Generator")
        self.block_resolutions = res
        self.blocks = nn.ModuleList()
        self.num_ws = 0
        for r in res:
            block = SynthesisBlock(ch[r // 2] if r > 4 else 0, ch[r], w_dim, r, img_channels, r == img_resolution,
                                   architecture, conv_clamp, use_noise, resample_filter)
            self.num_ws += block.num_conv
            if r == img_resolution:
                self.num_ws += block.num_torgb
            self.blocks.append(block)

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", fused_modconv: bool = False) -> torch.Tensor:
        x = img = None
        i = 0
        for block in self.blocks:  # a block's to-RGB shares its w with the next block's first conv
            x, img = block(x, img, ws.narrow(1, i, block.num_conv + block.num_torgb), noise_mode, fused_modconv)
            i += block.num_conv
        return img


class AdaINSynthesisNetwork(nn.Module):
    """StyleGAN (v1) synthesis network: two AdaIN layers per resolution, RGB from the last one."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int, channel_max: int,
                 use_noise: bool = True, resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp=None,
                 architecture: Optional[str] = None):
        super().__init__()
        res = _resolutions(img_resolution, "Generator")
        ch = _channels(res, channel_base, channel_max, "Generator")
        self.block_resolutions = res
        self.const = nn.Parameter(torch.ones(ch[4], 4, 4))
        self.layers = nn.ModuleList()
        for r in res:
            kw = dict(w_dim=w_dim, resolution=r, use_noise=use_noise, resample_filter=resample_filter)
            self.layers.append(AdaINLayer(0 if r == 4 else ch[r // 2], ch[r], up=1 if r == 4 else 2, **kw))
            self.layers.append(AdaINLayer(ch[r], ch[r], **kw))
        self.torgb = EqualizedConv2d(ch[img_resolution], img_channels, 1, conv_clamp=conv_clamp)
        self.num_ws = len(self.layers)

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", fused_modconv: bool = False) -> torch.Tensor:
        x = self.const.to(ws.dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        for layer, w in zip(self.layers, ws.unbind(dim=1)):
            x = layer(x, w, noise_mode)
        return self.torgb(x)


class Generator(nn.Module):
    """StyleGAN / StyleGAN2 generator: ``G(z, c) -> images`` (see the module docstring).

    Args:
        z_dim, w_dim: latent sizes. c_dim: number of classes (0: unconditional).
        img_resolution: output size (power of two >= 4). img_channels: 3 (RGB) or 1.
        style: ``"stylegan2"`` (modulated convs) or ``"stylegan"`` (AdaIN).
        architecture: StyleGAN2's ``"skip"`` (default), ``"resnet"`` or ``"orig"``.
        channel_base, channel_max: channels per resolution r = min(channel_base // r, channel_max).
        mapping_layers: depth of the mapping MLP. mapping_lr: its lr multiplier (0.01).
        w_avg_beta: decay of the tracked mean w. conv_clamp: clamp of conv outputs (256 in StyleGAN2-ADA).
        use_noise: per-pixel noise inputs.
    """

    def __init__(self, *, z_dim: int = 512, c_dim: int = 0, w_dim: int = 512, img_resolution: int = 256,
                 img_channels: int = 3, style: str = "stylegan2", architecture: str = "skip",
                 channel_base: int = 32768, channel_max: int = 512, mapping_layers: int = 8, mapping_lr: float = 0.01,
                 w_avg_beta: float = 0.995, conv_clamp: Optional[float] = None, use_noise: bool = True,
                 resample_filter: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        if style not in ("stylegan2", "stylegan"):
            raise ValueError(f"Generator: style must be 'stylegan2' or 'stylegan', got {style!r}")
        if isinstance(img_channels, bool) or not isinstance(img_channels, int) or img_channels < 1:
            raise ValueError(f"Generator: img_channels must be a positive int, got {img_channels!r}")
        self.config = dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                           img_channels=img_channels, style=style, architecture=architecture,
                           channel_base=channel_base, channel_max=channel_max, mapping_layers=mapping_layers,
                           mapping_lr=mapping_lr, w_avg_beta=w_avg_beta, conv_clamp=conv_clamp, use_noise=use_noise,
                           resample_filter=tuple(resample_filter))
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        net = SynthesisNetwork if style == "stylegan2" else AdaINSynthesisNetwork
        self.synthesis = net(w_dim, img_resolution, img_channels, channel_base, channel_max, architecture=architecture,
                             conv_clamp=conv_clamp, use_noise=use_noise, resample_filter=resample_filter)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, num_layers=mapping_layers,
                                      lr_multiplier=mapping_lr, w_avg_beta=w_avg_beta)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "Generator":
        """``"tiny"`` (tests), ``"32px"`` (CPU demo), ``"64px"``, ``"cifar10"`` (StyleGAN2-ADA's CIFAR
        network) or ``"256px"`` (config F); keyword arguments override the preset."""
        return _preset(cls, name, (), overrides)

    def mix_styles(self, ws: torch.Tensor, z2: torch.Tensor, c: Optional[torch.Tensor], prob: float,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Style mixing regularisation: with probability ``prob`` the ws from layer ``cutoff`` (uniform in
        [1, num_ws)) on come from a second latent ``z2`` (one cutoff for the batch)."""
        if prob <= 0 or self.num_ws < 2:
            return ws
        dev = ws.device
        if float(torch.rand((), generator=generator, device=generator.device if generator else dev)) >= prob:
            return ws
        cutoff = int(torch.randint(1, self.num_ws, (), generator=generator,
                                   device=generator.device if generator else dev))
        ws2 = self.mapping(z2, c)
        return torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None, truncation_psi: float = 1.0,
                truncation_cutoff: Optional[int] = None, noise_mode: str = "random", fused_modconv: bool = False,
                update_w_avg: bool = False, return_ws: bool = False):
        """z: ``(N, z_dim)``; c: ``(N,)`` class indices or ``(N, c_dim)`` (conditional models). Returns
        images ``(N, img_channels, R, R)`` (and the ws with ``return_ws``)."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_w_avg=update_w_avg)
        img = self.synthesis(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)
        return (img, ws) if return_ws else img


# ----------------------------------------------------------------------------- discriminator
class DiscriminatorBlock(nn.Module):
    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, img_channels: int,
                 architecture: str, conv_clamp: Optional[float], resample_filter: Sequence[float]):
        super().__init__()
        self.in_channels, self.architecture = in_channels, architecture
        if in_channels == 0:
            self.fromrgb = EqualizedConv2d(img_channels, tmp_channels, 1, act="lrelu", conv_clamp=conv_clamp)
        self.conv0 = EqualizedConv2d(tmp_channels, tmp_channels, 3, act="lrelu", conv_clamp=conv_clamp)
        self.conv1 = EqualizedConv2d(tmp_channels, out_channels, 3, act="lrelu", down=2, conv_clamp=conv_clamp,
                                     resample_filter=resample_filter)
        if architecture == "resnet":
            self.skip = EqualizedConv2d(tmp_channels, out_channels, 1, bias=False, down=2,
                                        resample_filter=resample_filter)

    def forward(self, x: Optional[torch.Tensor], img: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 0:
            x = self.fromrgb(img)
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
            return y + x
        return self.conv1(self.conv0(x))


class Discriminator(nn.Module):
    """StyleGAN2 discriminator: ``D(img, c) -> (N, 1)`` logits (see the module docstring).

    Args:
        c_dim: number of classes (0: unconditional; else a projection discriminator).
        img_resolution, img_channels: input size. architecture: ``"resnet"`` (default) or ``"orig"``.
        channel_base, channel_max: as the generator. conv_clamp: clamp of conv outputs.
        mbstd_group_size, mbstd_num_channels: the minibatch-stddev layer. cmap_dim: label-embedding size
            of the projection (default: the 4x4 channel count).
    """

    def __init__(self, *, c_dim: int = 0, img_resolution: int = 256, img_channels: int = 3,
                 architecture: str = "resnet", channel_base: int = 32768, channel_max: int = 512,
                 conv_clamp: Optional[float] = None, mbstd_group_size: int = 4, mbstd_num_channels: int = 1,
                 cmap_dim: Optional[int] = None, resample_filter: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        if architecture not in ("orig", "resnet"):
            raise ValueError(f"Discriminator: architecture must be 'resnet' or 'orig', got {architecture!r}")
        if isinstance(c_dim, bool) or not isinstance(c_dim, int) or c_dim < 0:
            raise ValueError(f"Discriminator: c_dim must be an int >= 0, got {c_dim!r}")
        self.config = dict(c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels,
                           architecture=architecture, channel_base=channel_base, channel_max=channel_max,
                           conv_clamp=conv_clamp, mbstd_group_size=mbstd_group_size,
                           mbstd_num_channels=mbstd_num_channels, cmap_dim=cmap_dim,
                           resample_filter=tuple(resample_filter))
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        res = _resolutions(img_resolution, "Discriminator")
        if img_resolution < 8:
            raise ValueError(f"Discriminator: img_resolution must be >= 8, got {img_resolution}")
        ch = _channels(res, channel_base, channel_max, "Discriminator")
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(ch[r] if r < img_resolution else 0, ch[r], ch[r // 2], img_channels, architecture,
                               conv_clamp, resample_filter)
            for r in reversed(res[1:]))
        c4 = ch[4]
        self.cmap_dim = (cmap_dim or c4) if c_dim else 0
        if c_dim:
            self.c_mapping = MappingNetwork(0, c_dim, self.cmap_dim, None, num_layers=2, lr_multiplier=1.0,
                                            w_avg_beta=None)
        self.mbstd = MinibatchStdDev(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels else None
        self.conv = EqualizedConv2d(c4 + mbstd_num_channels, c4, 3, act="lrelu", conv_clamp=conv_clamp)
        self.fc = EqualizedLinear(c4 * 16, c4, act="lrelu")
        self.out = EqualizedLinear(c4, self.cmap_dim or 1)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "Discriminator":
        """The discriminator matching :meth:`Generator.from_preset` ``name``."""
        return _preset(cls, name, _G_ONLY, overrides)

    def forward(self, img: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        r = self.img_resolution
        if not isinstance(img, torch.Tensor) or img.dim() != 4 or tuple(img.shape[1:]) != (self.img_channels, r, r):
            raise ValueError(f"Discriminator: img must be (N, {self.img_channels}, {r}, {r}), got "
                             f"{tuple(img.shape) if isinstance(img, torch.Tensor) else img!r}")
        x = None
        for block in self.blocks:
            x = block(x, img)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.fc(self.conv(x).flatten(1))
        x = self.out(x)
        if self.c_dim:
            if c is None:
                raise ValueError(f"Discriminator: this discriminator is class-conditional (c_dim={self.c_dim}); "
                                 "pass the labels c")
            cmap = self.c_mapping(None, c)
            return (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)
        if c is not None:
            raise ValueError("Discriminator: class labels given to an unconditional discriminator (c_dim=0)")
        return x
