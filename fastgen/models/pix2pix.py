r"""pix2pix (Isola et al. 2017): the U-Net generator and the PatchGAN discriminator.

    G = UNetGenerator(in_channels=3, out_channels=3, img_resolution=256)
    D = PatchGANDiscriminator(in_channels=6)             # conditional: sees (input, output) pairs
    fake = G(x)                                          # (N, 3, 256, 256) in [-1, 1]
    patch_logits = D(fake, condition=x)                  # (N, 1, 30, 30): one logit per 70x70 patch

Notation of the paper: ``Ck`` = 4x4 conv (stride 2) - norm - activation with k filters, ``CDk`` the
same with 50% dropout.

UNetGenerator: encoder C64-C128-C256-C512-C512-... down to 1x1 (``log2(img_resolution)`` layers,
channels ``min(base_channels * 2^i, max_channels)``), LeakyReLU 0.2, no norm on the first layer and
none on the 1x1 bottleneck (normalising a 1x1 map would zero it); decoder of 4x4 stride-2 transposed
convs mirroring the encoder with ReLU, whose input at each level is the concatenation of the previous
decoder output and the encoder output of the same resolution (the skip connections); dropout on the
first three decoder blocks, and a last transposed conv to ``out_channels`` with its bias and Tanh
fused. pix2pix's only noise is this dropout, so it stays on in eval mode (``dropout_at_eval=True``);
set it False for a deterministic generator. Activations follow the paper's conv-norm-activation
order, so the skips carry activated features. Any input whose sides are multiples of
``img_resolution`` works (the network is fully convolutional; ``img_resolution`` sets the depth).

PatchGANDiscriminator: C64 (no norm) - C128 - C256 (stride 2) - C512 (stride 1) - a 4x4 conv to 1
channel, all with padding 1, for ``n_layers=3``; ``n_layers`` stride-2 layers in general with
channels ``base_channels * min(2^i, 8)``. Every output is a logit for one patch of the input;
:attr:`PatchGANDiscriminator.receptive_field` gives its size: 16, 34, 70, 142, 286 for
``n_layers`` = 1, 2, 3, 4, 5 (70x70 is the paper's default; 286x286 at 256px is its "ImageGAN").

Both use DCGAN's initialisation by default (weights N(0, 0.02), norm gains N(1, 0.02)); where no norm
follows a conv, bias + activation is the fused :class:`fastgen.nn.BiasAct`; the instance norm is the
fused GroupNorm op with a learned per-channel affine (starting at the identity).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import _gan as U


class UNetGenerator(nn.Module):
    """pix2pix's U-Net generator ``G(x) -> (N, out_channels, H, W)`` in [-1, 1] (see the module docstring).

    Args:
        in_channels, out_channels: image channels in and out.
        img_resolution: a power of two >= 16; the depth is ``log2(img_resolution)`` (1x1 bottleneck).
        base_channels, max_channels: encoder level i has ``min(base_channels * 2^i, max_channels)``.
        dropout: dropout probability of the first three decoder blocks (0: none).
        dropout_at_eval: keep that dropout active in eval mode (pix2pix's noise source).
        norm: ``"batch"`` (the paper) or ``"instance"``. init: ``"dcgan"`` or ``"default"``.
    """

    NUM_DROPOUT_BLOCKS = 3

    def __init__(self, *, in_channels: int = 3, out_channels: int = 3, img_resolution: int = 256,
                 base_channels: int = 64, max_channels: int = 512, dropout: float = 0.5, dropout_at_eval: bool = True,
                 norm: str = "batch", init: str = "dcgan"):
        super().__init__()
        o = "UNetGenerator"
        U.check_int(o, "in_channels", in_channels)
        U.check_int(o, "out_channels", out_channels)
        U.check_pow2(o, "img_resolution", img_resolution, 16)
        U.check_int(o, "base_channels", base_channels)
        U.check_int(o, "max_channels", max_channels)
        if max_channels < base_channels:
            raise ValueError(f"{o}: max_channels ({max_channels}) must be >= base_channels ({base_channels})")
        dropout = U.check_prob(o, "dropout", dropout)
        U.check_bool(o, "dropout_at_eval", dropout_at_eval)
        U.check_choice(o, "norm", norm, ("batch", "instance"))
        U.check_choice(o, "init", init, U.INITS)
        self.config = dict(in_channels=in_channels, out_channels=out_channels, img_resolution=img_resolution,
                           base_channels=base_channels, max_channels=max_channels, dropout=dropout,
                           dropout_at_eval=dropout_at_eval, norm=norm, init=init)
        self.in_channels, self.out_channels, self.img_resolution = in_channels, out_channels, img_resolution
        self.depth = U.log2(img_resolution)
        ch = [min(base_channels * 2 ** i, max_channels) for i in range(self.depth)]
        d = self.depth
        # encoder: level i maps R / 2^i -> R / 2^(i+1); no norm on the first and on the 1x1 bottleneck
        self.down = nn.ModuleList(
            U.ConvNormAct(in_channels if i == 0 else ch[i - 1], ch[i], 4, 2, 1,
                          norm="none" if i in (0, d - 1) else norm, act="lrelu")
            for i in range(d))
        # decoder: up[j] maps the level-(d-1-j) features (concatenated with the skip, except the
        # innermost) back one level; the last one produces the image
        self.up = nn.ModuleList()
        for j in range(d - 1):
            i = d - 1 - j  # input: encoder level i's resolution
            cin = ch[i] if j == 0 else 2 * ch[i]
            self.up.append(U.ConvNormAct(cin, ch[i - 1], 4, 2, 1, transposed=True, norm=norm, act="relu",
                                         dropout=dropout if j < self.NUM_DROPOUT_BLOCKS else 0.0,
                                         dropout_at_eval=dropout_at_eval))
        self.up.append(U.ConvNormAct(2 * ch[0], out_channels, 4, 2, 1, transposed=True, norm="none", act="tanh"))
        U.init_weights(self, init)

    @property
    def dropout_at_eval(self) -> bool:
        return self.config["dropout_at_eval"]

    @dropout_at_eval.setter
    def dropout_at_eval(self, value: bool) -> None:
        """Switch pix2pix's test-time dropout on or off (e.g. off for deterministic evaluation)."""
        U.check_bool("UNetGenerator", "dropout_at_eval", value)
        self.config["dropout_at_eval"] = value
        for m in self.up:
            m.dropout_at_eval = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``(N, in_channels, H, W)`` with H, W multiples of img_resolution (as images of the target
        domain's conditioning input, typically in [-1, 1]). Returns ``(N, out_channels, H, W)``."""
        U.check_images("UNetGenerator", "x", x, self.in_channels, multiple=self.img_resolution)
        skips = []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        skips.pop()  # the bottleneck is the decoder's input, not a skip
        x = self.up[0](x)
        for layer in self.up[1:]:
            x = layer(torch.cat([x, skips.pop()], dim=1))
        return x


class PatchGANDiscriminator(nn.Module):
    """pix2pix's PatchGAN ``D(x, condition=None) -> (N, 1, H', W')`` patch logits (see the module docstring).

    Args:
        in_channels: input channels; for a conditional discriminator the input and the (real or
            generated) target concatenated, e.g. 3 + 3 = 6 (``forward(target, condition=input)`` does
            the concatenation).
        base_channels: channels of the first conv. n_layers: number of stride-2 convs (3: 70x70 patches).
        norm: ``"batch"`` (the paper), ``"instance"`` or ``"none"`` (the first layer never has one).
        init: ``"dcgan"`` or ``"default"``.
    """

    def __init__(self, *, in_channels: int = 6, base_channels: int = 64, n_layers: int = 3, norm: str = "batch",
                 init: str = "dcgan"):
        super().__init__()
        o = "PatchGANDiscriminator"
        U.check_int(o, "in_channels", in_channels)
        U.check_int(o, "base_channels", base_channels)
        U.check_int(o, "n_layers", n_layers)
        U.check_choice(o, "norm", norm, ("batch", "instance", "none"))
        U.check_choice(o, "init", init, U.INITS)
        self.config = dict(in_channels=in_channels, base_channels=base_channels, n_layers=n_layers, norm=norm,
                           init=init)
        self.in_channels, self.n_layers, self.norm = in_channels, n_layers, norm
        ch = [base_channels * min(2 ** i, 8) for i in range(n_layers + 1)]
        layers = [U.ConvNormAct(in_channels, ch[0], 4, 2, 1, norm="none", act="lrelu")]
        layers += [U.ConvNormAct(ch[i - 1], ch[i], 4, 2, 1, norm=norm, act="lrelu") for i in range(1, n_layers)]
        layers.append(U.ConvNormAct(ch[n_layers - 1], ch[n_layers], 4, 1, 1, norm=norm, act="lrelu"))
        self.layers = nn.Sequential(*layers)
        self.out = U.Conv2d(ch[n_layers], 1, 4, 1, 1)
        U.init_weights(self, init)

    @staticmethod
    def receptive_field_of(n_layers: int) -> int:
        """The side of the input patch each output logit sees, for ``n_layers`` (without building a model)."""
        U.check_int("PatchGANDiscriminator", "n_layers", n_layers)
        r = 1
        for stride in [1, 1] + [2] * n_layers:  # from the output back: out conv, stride-1 conv, stride-2 convs
            r = (r - 1) * stride + 4
        return r

    @property
    def receptive_field(self) -> int:
        """The side of the input patch each output logit sees: 70 for n_layers=3 (computed from the convs)."""
        r = 1
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        for conv in reversed(convs):
            r = (r - 1) * conv.stride[0] + conv.kernel_size[0]
        return r

    def output_size(self, size: int) -> int:
        """The side of the patch-logit map for an input side of ``size`` (0: too small)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                size = max(0, (size + 2 * m.padding[0] - m.kernel_size[0]) // m.stride[0] + 1)
        return size

    def forward(self, x: torch.Tensor, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x ``(N, C, H, W)``; with ``condition`` ``(N, C', H, W)`` the input is ``cat([condition, x], dim=1)``
        and C' + C must be in_channels. Returns patch logits ``(N, 1, H', W')`` (see :meth:`output_size`)."""
        o = "PatchGANDiscriminator"
        if self.norm == "batch" and isinstance(x, torch.Tensor):
            U.warn_batchnorm_penalty(self, x, o)
        if condition is not None:
            if not isinstance(condition, torch.Tensor) or not isinstance(x, torch.Tensor) or condition.dim() != 4 or \
                    x.dim() != 4 or condition.shape[0] != x.shape[0] or condition.shape[2:] != x.shape[2:]:
                raise ValueError(f"{o}: condition must be (N, C', H, W) matching x's N, H, W; got "
                                 f"{tuple(getattr(condition, 'shape', ()))} and x {tuple(getattr(x, 'shape', ()))}")
            if condition.dtype != x.dtype or condition.device != x.device:
                raise ValueError(f"{o}: condition ({condition.dtype}, {condition.device}) must match x's dtype and "
                                 f"device ({x.dtype}, {x.device})")
            x = torch.cat([condition, x], dim=1)
        U.check_images(o, "x" if condition is None else "cat([condition, x])", x, self.in_channels)
        if not self.output_size(x.shape[2]) or not self.output_size(x.shape[3]):
            raise ValueError(f"{o}: input of {x.shape[2]}x{x.shape[3]} is too small for n_layers={self.n_layers} "
                             "(the patch-logit map would be empty)")
        return self.out(self.layers(x))
