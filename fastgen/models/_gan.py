"""Building blocks shared by the GAN model zoo (DCGAN, pix2pix, CycleGAN): argument checks whose
messages name the argument, the normalisation layers by name, the conv -> norm -> activation block
on fastgen's fused ops, label handling, and DCGAN's weight initialisation."""
from __future__ import annotations

import math
import warnings
from typing import Iterable, Optional

import torch
from torch import nn

from ..nn import BiasAct, Conv2d, GroupNormAct

NORMS = ("batch", "instance", "layer", "none")
INITS = ("dcgan", "default")


# ----------------------------------------------------------------------------- argument checks
def check_int(owner: str, name: str, v, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{owner}: {name} must be an int >= {lo}, got {v!r}")
    return v


def check_pow2(owner: str, name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or v & (v - 1):
        raise ValueError(f"{owner}: {name} must be a power of two >= {lo}, got {v!r}")
    return v


def check_choice(owner: str, name: str, v, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{owner}: {name} must be one of {', '.join(repr(c) for c in choices)}; got {v!r}")
    return v


def check_bool(owner: str, name: str, v) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{owner}: {name} must be True or False, got {v!r}")
    return v


def check_prob(owner: str, name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
        raise ValueError(f"{owner}: {name} must be a number in [0, 1), got {v!r}")
    return float(v)


def check_int_list(owner: str, name: str, v, lo: int) -> list:
    if isinstance(v, (str, bytes)) or not isinstance(v, Iterable):
        raise ValueError(f"{owner}: {name} must be a sequence of ints >= {lo}, got {v!r}")
    v = list(v)
    if any(isinstance(k, bool) or not isinstance(k, int) or k < lo for k in v):
        raise ValueError(f"{owner}: {name} must be a sequence of ints >= {lo}, got {v!r}")
    return v


def check_images(owner: str, name: str, x, channels: int, multiple: int = 1, size: Optional[int] = None) -> None:
    """x must be a floating-point (N, channels, H, W) tensor, H = W = size if given, else H and W
    multiples of ``multiple``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner}: {name} must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{owner}: {name} must be a floating-point tensor, got {x.dtype}")
    if size is not None:
        if x.dim() != 4 or tuple(x.shape[1:]) != (channels, size, size):
            raise ValueError(f"{owner}: {name} must be (N, {channels}, {size}, {size}), got {tuple(x.shape)}")
    elif x.dim() != 4 or x.shape[1] != channels or x.shape[2] % multiple or x.shape[3] % multiple or \
            not x.shape[2] or not x.shape[3]:
        raise ValueError(f"{owner}: {name} must be (N, {channels}, H, W) with H and W positive multiples of "
                         f"{multiple}, got {tuple(x.shape)}")


def check_labels(owner: str, c, c_dim: int, n: int, device: torch.device) -> torch.Tensor:
    """Class labels must be ``(N,)`` integer indices in [0, c_dim) or ``(N, c_dim)`` floats (one-hot or
    soft) on ``device``. The range of indices is checked on CPU only (no device sync on GPU)."""
    if c is None:
        raise ValueError(f"{owner}: this model is class-conditional (c_dim={c_dim}); pass the labels c")
    if not isinstance(c, torch.Tensor):
        raise TypeError(f"{owner}: c must be a tensor of class indices or (N, c_dim) floats, got {type(c).__name__}")
    if c.device != device:
        raise ValueError(f"{owner}: c is on {c.device} but the input is on {device}")
    if not c.is_floating_point():
        if c.dtype == torch.bool or c.is_complex() or tuple(c.shape) != (n,):
            raise ValueError(f"{owner}: integer labels c must have shape ({n},), got {tuple(c.shape)} ({c.dtype})")
        if c.device.type == "cpu" and n and bool(((c < 0) | (c >= c_dim)).any()):
            raise ValueError(f"{owner}: labels c must be in [0, {c_dim}), got values in "
                             f"[{int(c.min())}, {int(c.max())}]")
    elif tuple(c.shape) != (n, c_dim):
        raise ValueError(f"{owner}: c must be ({n},) class indices or (N, c_dim) = ({n}, {c_dim}) floats, got "
                         f"{tuple(c.shape)}")
    return c


def labels_to_onehot(owner: str, c, c_dim: int, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Checked labels (:func:`check_labels`) as ``(N, c_dim)`` floats of ``dtype``."""
    c = check_labels(owner, c, c_dim, n, device)
    return c.to(dtype) if c.is_floating_point() else nn.functional.one_hot(c.long(), c_dim).to(dtype)


# ----------------------------------------------------------------------------- layers
def make_norm(kind: str, channels: int) -> Optional[nn.Module]:
    """``"batch"``: nn.BatchNorm2d; ``"instance"``: per-sample, per-channel statistics (GroupNorm with one
    channel per group, learned per-channel affine); ``"layer"``: per-sample statistics over (C, H, W)
    with a per-channel affine (GroupNorm with one group, WGAN-GP's critic); ``"none"``: None. The
    instance and layer norms run on the fused GroupNorm op (twice differentiable)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return GroupNormAct(channels, channels)
    if kind == "layer":
        return GroupNormAct(1, channels)
    if kind == "none":
        return None
    raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {kind!r}")


class ConvNormAct(nn.Module):
    """``act(norm(conv(x)))`` with the conv's bias moved where it is not cancelled:

    * no norm: ``conv(bias=False)`` then :class:`fastgen.nn.BiasAct` (C) = bias + activation in one
      fused, twice-differentiable op;
    * with a norm: ``conv(bias=False)`` (a norm's mean subtraction cancels a bias), the norm (its
      affine shift is the bias), then the fused activation without a bias.

    ``act``: ``"lrelu"`` (slope ``alpha``), ``"relu"``, ``"tanh"`` or ``"linear"``; the gain is 1
    (plain activations, as in the papers, not StyleGAN's sqrt 2). ``transposed`` makes the conv a
    ``ConvTranspose2d``; the plain conv is :class:`fastgen.nn.Conv2d` (``nn.Conv2d`` with every
    gradient order on the convolution library's kernels, for R1 / WGAN-GP). ``dropout`` (after the
    activation) is applied in training, and also in eval mode when ``dropout_at_eval`` (pix2pix's
    noise).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0, *,
                 norm: str = "none", act: str = "lrelu", alpha: float = 0.2, transposed: bool = False,
                 output_padding: int = 0, padding_mode: str = "zeros", dropout: float = 0.0,
                 dropout_at_eval: bool = False):
        super().__init__()
        if transposed:
            self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding,
                                           output_padding=output_padding, bias=False)
        else:
            self.conv = Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False,
                                  padding_mode=padding_mode)
        self.norm = make_norm(norm, out_channels)
        self.act = BiasAct(out_channels if self.norm is None else 0, act, alpha=alpha if act == "lrelu" else None,
                           gain=1.0)
        self.dropout, self.dropout_at_eval = float(dropout), bool(dropout_at_eval)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        x = self.act(x)
        if self.dropout:
            x = nn.functional.dropout(x, self.dropout, training=self.training or self.dropout_at_eval)
        return x

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}, dropout_at_eval={self.dropout_at_eval}" if self.dropout else ""


# ----------------------------------------------------------------------------- initialisation
@torch.no_grad()
def init_weights(module: nn.Module, kind: str, std: float = 0.02) -> None:
    """``"dcgan"`` (Radford et al. 2016; also pix2pix / CycleGAN): conv, transposed-conv, linear and
    embedding weights ~ N(0, std), norm gains ~ N(1, std), every bias (conv, linear, norm,
    :class:`~fastgen.nn.BiasAct`) 0. ``"default"``: PyTorch's initialisation, untouched. Call it
    before adding parametrizations such as spectral norm."""
    if kind == "default":
        return
    if kind != "dcgan":
        raise ValueError(f"init must be one of {', '.join(INITS)}; got {kind!r}")
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, GroupNormAct)):
            if m.weight is not None:
                nn.init.normal_(m.weight, 1.0, std)
                nn.init.zeros_(m.bias)
        elif isinstance(m, BiasAct) and m.bias is not None:
            nn.init.zeros_(m.bias)


def add_spectral_norm(module: nn.Module) -> None:
    """Spectral normalisation (Miyato et al. 2018) of every conv, linear and embedding weight in
    ``module`` (torch's parametrization: ``weight.original`` and the power-iteration vectors are in
    the state_dict)."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import spectral_norm

    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)) and \
                not parametrize.is_parametrized(m, "weight"):
            spectral_norm(m, dim=1 if isinstance(m, nn.ConvTranspose2d) else 0)


def warn_batchnorm_penalty(module: nn.Module, x: torch.Tensor, owner: str) -> None:
    """Warn (once per module) when a BatchNorm discriminator in training mode sees an input that is a
    leaf requiring grad: the sign of a gradient penalty (R1 on reals, WGAN-GP on interpolates). Batch
    statistics mix the samples, so d D(x_i) / d x no longer belongs to sample i and the penalty is not
    the one the papers analyse (Gulrajani et al. 2017 drop BatchNorm from the critic for this)."""
    if getattr(module, "_warned_bn_penalty", False) or not module.training or not torch.is_grad_enabled():
        return
    if x.requires_grad and x.is_leaf:
        module._warned_bn_penalty = True
        warnings.warn(f"{owner}: norm='batch' in training mode under what looks like a gradient penalty (the input "
                      "is a leaf that requires grad). Batch statistics couple the samples, so per-sample gradient "
                      "penalties (R1, WGAN-GP) are not valid; use norm='layer', 'instance' or 'none' for a critic "
                      "with a gradient penalty.", UserWarning, stacklevel=3)


def log2(v: int) -> int:
    return int(math.log2(v))
