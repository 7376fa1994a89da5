"""U-Net building blocks (DDPM / improved DDPM / ADM) on fastgen's fused ops.

Every GroupNorm (+ time modulation) (+ SiLU) runs as one fused :func:`fastgen.functional.group_norm`
call through :class:`GroupNormAct`. Attention runs :func:`fastgen.functional.attention` (SDPA
semantics, twice differentiable, so gradient penalties through the U-Net work).

Initialisation follows ADM (Dhariwal & Nichol 2021): PyTorch's default for convolutions and
linears, except that the last convolution of each residual branch and the attention output
projection start at zero, so every block starts as the identity.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..functional import attention
from .norm import GroupNormAct


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _groups(channels: int, num_groups: int) -> int:
    """num_groups, or the largest divisor of ``channels`` below it (tiny test models)."""
    g = min(num_groups, channels)
    while channels % g:
        g -= 1
    return g


class Downsample(nn.Module):
    """2x downsampling: a stride-2 3x3 convolution (``use_conv``) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool = True, out_channels: Optional[int] = None):
        super().__init__()
        out_channels = out_channels or channels
        if not use_conv and out_channels != channels:
            raise ValueError("Downsample: changing the channel count needs use_conv=True")
        self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """2x nearest-neighbour upsampling, then a 3x3 convolution (``use_conv``)."""

    def __init__(self, channels: int, use_conv: bool = True, out_channels: Optional[int] = None):
        super().__init__()
        out_channels = out_channels or channels
        if not use_conv and out_channels != channels:
            raise ValueError("Upsample: changing the channel count needs use_conv=True")
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(nn.Module):
    """Residual block with timestep conditioning (ADM's ``ResBlock``).

    ``h = conv(GN-SiLU(x))``; the embedding ``e = Linear(SiLU(emb))`` either modulates the second
    norm, ``GN(h) (1 + scale) + shift`` (``use_scale_shift_norm``, one fused call with the SiLU),
    or is added before it (DDPM); then dropout, a zero-initialised 3x3 conv, and the skip
    (identity, or a 1x1 / 3x3 conv when the channel count changes). ``up`` / ``down`` resample
    inside the block (BigGAN-style, ADM's ``resblock_updown``). ``skip_scale`` multiplies the sum
    (e.g. 1/sqrt(2), NCSN++). ``emb_channels=0``: no conditioning (an autoencoder's ResBlock).
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: Optional[int] = None, *, dropout: float = 0.0,
                 use_scale_shift_norm: bool = True, use_conv_skip: bool = False, up: bool = False, down: bool = False,
                 num_groups: int = 32, skip_scale: float = 1.0):
        super().__init__()
        if up and down:
            raise ValueError("ResBlock: up and down are exclusive")
        out_channels = out_channels or channels
        self.channels, self.out_channels = channels, out_channels
        self.use_scale_shift_norm, self.skip_scale = use_scale_shift_norm, float(skip_scale)
        self.in_norm = GroupNormAct(_groups(channels, num_groups), channels, activation="silu")
        self.resample = Upsample(channels, False) if up else (Downsample(channels, False) if down else None)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.emb_proj = (nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
                         if emb_channels else None)
        self.out_norm = GroupNormAct(_groups(out_channels, num_groups), out_channels, activation="silu")
        self.dropout = nn.Dropout(dropout)
        self.out_conv = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        if out_channels == channels:
            self.skip = nn.Identity()
        else:
            self.skip = nn.Conv2d(channels, out_channels, 3 if use_conv_skip else 1, padding=1 if use_conv_skip else 0)

    def forward(self, x: torch.Tensor, emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.in_norm(x)
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = self.in_conv(h)
        if self.emb_proj is None:
            if emb is not None:
                raise ValueError("ResBlock: an embedding was given to a block built with emb_channels=0")
            h = self.out_norm(h)
            h = self.out_conv(self.dropout(h))
            out = self.skip(x) + h
            return out * self.skip_scale if self.skip_scale != 1.0 else out
        if emb is None:
            raise ValueError("ResBlock: this block is conditioned (emb_channels > 0); pass emb")
        e = self.emb_proj(F.silu(emb)).to(h.dtype)
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h, scale, shift)
        else:
            h = self.out_norm(h + e[:, :, None, None])
        h = self.out_conv(self.dropout(h))
        out = self.skip(x) + h
        return out * self.skip_scale if self.skip_scale != 1.0 else out


class AttentionBlock(nn.Module):
    """Spatial self-attention over the H*W positions (ADM's ``AttentionBlock``): GroupNorm, a 1x1
    qkv projection, multi-head attention, a zero-initialised 1x1 output projection, residual.

    Heads: ``num_heads``, or ``num_head_channels`` channels per head when given (ADM's option).
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: Optional[int] = None,
                 num_groups: int = 32):
        super().__init__()
        if num_head_channels is not None:
            if channels % num_head_channels:
                raise ValueError(f"AttentionBlock: channels = {channels} is not divisible by num_head_channels = "
                                 f"{num_head_channels}")
            num_heads = channels // num_head_channels
        if channels % num_heads:
            raise ValueError(f"AttentionBlock: channels = {channels} is not divisible by num_heads = {num_heads}")
        self.channels, self.num_heads = channels, num_heads
        self.norm = GroupNormAct(_groups(channels, num_groups), channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, c, *spatial = x.shape
        t = math.prod(spatial)
        qkv = self.qkv(self.norm(x).reshape(b, c, t))                       # (B, 3C, T)
        q, k, v = qkv.reshape(b, 3, self.num_heads, c // self.num_heads, t).permute(1, 0, 2, 4, 3)  # (B, h, T, d)
        h = attention(q, k, v)                                               # (B, h, T, d)
        h = h.permute(0, 1, 3, 2).reshape(b, c, t)
        return x + self.proj(h).reshape(b, c, *spatial)
