"""Normalisation modules on fused kernels."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..functional import group_norm
from ..ops.group_norm import ACTIVATIONS

_ACT_MODULES = {nn.SiLU: "silu", nn.GELU: "gelu"}


class GroupNormAct(nn.Module):
    """``act(GroupNorm(x) * (1 + scale) + shift)`` as one fused op (:func:`fastgen.functional.group_norm`).

    A drop-in for ``nn.GroupNorm`` (``activation=None``) or ``nn.Sequential(nn.GroupNorm(...),
    nn.SiLU())`` (``activation="silu"``): the same arguments, parameters (``weight``, ``bias``),
    initialisation and state_dict keys, so checkpoints load either way. ``forward`` optionally
    takes the per-(sample, channel) ``scale`` / ``shift`` of ADM-style ("scale-shift") time
    conditioning, shape ``(N, C)`` or ``(N, C, 1, 1)``.

    Args:
        num_groups, num_channels, eps, affine: as ``nn.GroupNorm``.
        activation: None, ``"silu"`` or ``"gelu"`` (exact erf GELU).
        device, dtype: of the parameters.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 activation: Optional[str] = None, device=None, dtype=None):
        super().__init__()
        for name, v in (("num_groups", num_groups), ("num_channels", num_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"GroupNormAct: {name} must be a positive int, got {v!r}")
        if num_channels % num_groups:
            raise ValueError(f"GroupNormAct: num_channels = {num_channels} must be divisible by num_groups = "
                             f"{num_groups}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"GroupNormAct: activation must be None, 'silu' or 'gelu'; got {activation!r}")
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, float(eps), affine
        self.activation = activation
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(num_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor, scale: Optional[torch.Tensor] = None,
                shift: Optional[torch.Tensor] = None) -> torch.Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps, activation=self.activation,
                          scale=scale, shift=shift)

    @classmethod
    def from_group_norm(cls, norm: nn.GroupNorm, activation=None) -> "GroupNormAct":
        """A GroupNormAct sharing ``norm``'s parameters (not copies); ``activation`` is None, a
        name, or an ``nn.SiLU`` / ``nn.GELU()`` (approximate="none") module that followed the norm."""
        if not isinstance(norm, nn.GroupNorm):
            raise TypeError(f"GroupNormAct.from_group_norm: norm must be an nn.GroupNorm, got {type(norm).__name__}")
        if isinstance(activation, nn.Module):
            if isinstance(activation, nn.GELU) and activation.approximate != "none":
                raise ValueError("GroupNormAct.from_group_norm: only exact GELU (approximate='none') is fused")
            name = _ACT_MODULES.get(type(activation))
            if name is None:
                raise ValueError(f"GroupNormAct.from_group_norm: cannot fuse activation {type(activation).__name__}")
            activation = name
        p = norm.weight if norm.affine else None
        out = cls(norm.num_groups, norm.num_channels, norm.eps, norm.affine, activation,
                  device=None if p is None else p.device, dtype=None if p is None else p.dtype)
        if norm.affine:
            out.weight, out.bias = norm.weight, norm.bias
        return out

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"activation={self.activation!r}")
