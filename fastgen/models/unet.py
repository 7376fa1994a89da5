"""DDPM / ADM-style U-Net on fastgen's fused blocks.

    model = UNet.from_preset("cifar10")                     # the DDPM CIFAR-10 network (35.7M params)
    eps = model(x_t, t)                                     # t: [N] (or scalar) timesteps
    model = UNet.from_preset("tiny", num_classes=4)         # class-conditional, label num_classes = null (CFG)
    out = model(x_t, t, class_labels=y)

Architecture (Ho et al. 2020; Nichol & Dhariwal 2021; Dhariwal & Nichol 2021): a 3x3 input
convolution; per resolution level ``num_res_blocks`` ResBlocks (+ self-attention at the
``attention_resolutions``), then a downsampling step; a middle ResBlock-attention-ResBlock; a
mirrored decoder with skip connections from every encoder stage; GroupNorm-SiLU and a
zero-initialised output convolution. The timestep is embedded sinusoidally (``model_channels``
wide) and by an MLP (``4 model_channels``); class labels add a learned embedding (one extra
row, label ``num_classes``, is the null class for classifier-free guidance). ``learn_sigma``
doubles the output channels: ``[eps, v]`` for improved DDPM's learned variance
(:class:`fastgen.diffusion.GaussianDiffusion` with ``learn_sigma=True``).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import nn

from ..nn import GroupNormAct, TimestepEmbedding
from ..nn.unet_blocks import AttentionBlock, Downsample, ResBlock, Upsample, _groups, _zero

PRESETS: Dict[str, dict] = {
    # CPU tests and the demo: ~1M params at 32x32
    "tiny": dict(image_size=32, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                 attention_resolutions=(8,), num_heads=2, dropout=0.0, use_scale_shift_norm=True),
    # DDPM's CIFAR-10 model (Ho et al. 2020): 35.7M params
    "cifar10": dict(image_size=32, model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                    attention_resolutions=(16,), num_heads=1, dropout=0.1, use_scale_shift_norm=False),
    # ADM's ImageNet-64 model (Dhariwal & Nichol 2021), class-conditional with learned variance
    "imagenet64": dict(image_size=64, model_channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
                       attention_resolutions=(32, 16, 8), num_head_channels=64, dropout=0.1,
                       use_scale_shift_norm=True, resblock_updown=True, learn_sigma=True, num_classes=1000),
}


class _Stage(nn.ModuleList):
    """Layers of one U-Net stage; ResBlocks and attention get the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, (ResBlock, AttentionBlock)) else layer(x)
        return x


class UNet(nn.Module):
    """The diffusion U-Net. See the module docstring; arguments as ADM's ``UNetModel``:

    Args:
        image_size: training resolution (for ``attention_resolutions``).
        in_channels, out_channels: image channels (out defaults to in, doubled with ``learn_sigma``).
        model_channels: base width. channel_mult: width multiplier per level.
        num_res_blocks: ResBlocks per level. attention_resolutions: feature-map sizes with attention.
        num_heads / num_head_channels: attention heads (or channels per head).
        dropout: in the ResBlocks. num_classes: class conditioning (None: unconditional).
        learn_sigma: output ``[eps, v]`` (2x channels). use_scale_shift_norm: ADM's modulation
            (else DDPM's additive embedding). resblock_updown: resample inside ResBlocks
            (else conv Down/Upsample). conv_resample: convolutional resampling. num_groups: GroupNorm groups.
    """

    def __init__(self, *, image_size: int = 32, in_channels: int = 3, out_channels: Optional[int] = None,
                 model_channels: int = 128, channel_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attention_resolutions: Sequence[int] = (16,), num_heads: int = 4,
                 num_head_channels: Optional[int] = None, dropout: float = 0.0, num_classes: Optional[int] = None,
                 learn_sigma: bool = False, use_scale_shift_norm: bool = True, resblock_updown: bool = False,
                 conv_resample: bool = True, num_groups: int = 32):
        super().__init__()
        for name, v in (("image_size", image_size), ("in_channels", in_channels), ("model_channels", model_channels),
                        ("num_res_blocks", num_res_blocks)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"UNet: {name} must be a positive int, got {v!r}")
        if not channel_mult or any(not isinstance(m, int) or m < 1 for m in channel_mult):
            raise ValueError(f"UNet: channel_mult must be a non-empty sequence of positive ints, got {channel_mult!r}")
        if image_size % (2 ** (len(channel_mult) - 1)):
            raise ValueError(f"UNet: image_size = {image_size} must be divisible by 2^(levels - 1) = "
                             f"{2 ** (len(channel_mult) - 1)}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"UNet: num_classes must be None or a positive int, got {num_classes!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"UNet: dropout must be in [0, 1), got {dropout}")
        # the constructor arguments (JSON-serialisable): checkpoints store them to rebuild the model
        self.config = dict(image_size=image_size, in_channels=in_channels, out_channels=out_channels,
                           model_channels=model_channels, channel_mult=list(channel_mult),
                           num_res_blocks=num_res_blocks, attention_resolutions=list(attention_resolutions),
                           num_heads=num_heads, num_head_channels=num_head_channels, dropout=float(dropout),
                           num_classes=num_classes, learn_sigma=learn_sigma,
                           use_scale_shift_norm=use_scale_shift_norm, resblock_updown=resblock_updown,
                           conv_resample=conv_resample, num_groups=num_groups)
        self.image_size, self.in_channels = image_size, in_channels
        self.out_channels = (out_channels or in_channels) * (2 if learn_sigma else 1)
        self.num_classes, self.learn_sigma = num_classes, learn_sigma
        self.null_class = num_classes  # the CFG null label
        emb_ch = 4 * model_channels
        self.time_embed = TimestepEmbedding(model_channels, emb_ch)
        self.label_embed = nn.Embedding(num_classes + 1, emb_ch) if num_classes else None
        attn_sizes = set(attention_resolutions)
        block = dict(dropout=dropout, use_scale_shift_norm=use_scale_shift_norm, num_groups=num_groups)
        attn = dict(num_heads=num_heads, num_head_channels=num_head_channels, num_groups=num_groups)

        ch = model_channels * channel_mult[0]
        self.input_blocks = nn.ModuleList([_Stage([nn.Conv2d(in_channels, ch, 3, padding=1)])])
        skips = [ch]
        size = image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, emb_ch, model_channels * mult, **block)]
                ch = model_channels * mult
                if size in attn_sizes:
                    layers.append(AttentionBlock(ch, **attn))
                self.input_blocks.append(_Stage(layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                down = ResBlock(ch, emb_ch, ch, down=True, **block) if resblock_updown else \
                    Downsample(ch, conv_resample)
                self.input_blocks.append(_Stage([down]))
                skips.append(ch)
                size //= 2
        self.middle = _Stage([ResBlock(ch, emb_ch, ch, **block), AttentionBlock(ch, **attn),
                              ResBlock(ch, emb_ch, ch, **block)])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), emb_ch, model_channels * mult, **block)]
                ch = model_channels * mult
                if size in attn_sizes:
                    layers.append(AttentionBlock(ch, **attn))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, emb_ch, ch, up=True, **block) if resblock_updown else
                                  Upsample(ch, conv_resample))
                    size *= 2
                self.output_blocks.append(_Stage(layers))
        self.out_norm = GroupNormAct(_groups(ch, num_groups), ch, activation="silu")
        self.out_conv = _zero(nn.Conv2d(ch, self.out_channels, 3, padding=1))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "UNet":
        """``"tiny"`` (CPU tests/demo), ``"cifar10"`` (DDPM, 35.7M) or ``"imagenet64"`` (ADM); keyword
        arguments override the preset."""
        if name not in PRESETS:
            raise ValueError(f"UNet.from_preset: unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def forward(self, x: torch.Tensor, t, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: ``(N, in_channels, H, W)`` with H, W divisible by 2^(levels - 1); t: ``[N]`` or scalar
        timesteps (int or float); class_labels: ``[N]`` ints in ``[0, num_classes]`` (num_classes = null)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet: x must be (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        n = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(n)
        if t.shape != (n,):
            raise ValueError(f"UNet: t must be a scalar or have shape ({n},), got {tuple(t.shape)}")
        emb = self.time_embed(t)
        if self.label_embed is not None:
            if class_labels is None:
                raise ValueError("UNet: this model is class-conditional; pass class_labels (num_classes = "
                                 f"{self.num_classes} is the null label)")
            if class_labels.shape != (n,) or class_labels.is_floating_point():
                raise ValueError(f"UNet: class_labels must be integers of shape ({n},), got "
                                 f"{class_labels.dtype} {tuple(class_labels.shape)}")
            # range check on host labels only: on a GPU it would sync every step (and break CUDA-graph
            # capture); nn.Embedding rejects out-of-range labels there
            if class_labels.device.type == "cpu" and bool(((class_labels < 0) | (class_labels > self.num_classes)).any()):
                raise ValueError(f"UNet: class_labels must be in [0, {self.num_classes}]")
            emb = emb + self.label_embed(class_labels.to(x.device))
        elif class_labels is not None:
            raise ValueError("UNet: class_labels given to an unconditional model (num_classes=None)")
        h = x
        hs = []
        for stage in self.input_blocks:
            h = stage(h, emb)
            hs.append(h)
        h = self.middle(h, emb)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out_conv(self.out_norm(h))
