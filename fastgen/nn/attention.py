"""Attention modules on :func:`fastgen.functional.attention` (twice differentiable: gradient
penalties through them work)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..functional import attention


def _positive(owner: str, **values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{owner}: {name} must be a positive int, got {v!r}")


class Attention(nn.Module):
    """Multi-head attention over token sequences ``(B, N, dim)``: self-attention with one fused QKV
    projection, or cross-attention to a ``context`` ``(B, M, context_dim)`` (a Q projection and a
    fused KV projection), optional QK-norm (RMSNorm over each head's channels, as in SD3 / ViT-22B),
    then an output projection.

    Args:
        dim: token channels. heads: number of heads; head_dim: channels per head (default
            ``dim // heads``). context_dim: set for cross-attention. qk_norm: normalise q and k per
            head. dropout: attention-weight dropout in training. bias: of the projections.
    """

    def __init__(self, dim: int, heads: int = 8, head_dim: Optional[int] = None, *,
                 context_dim: Optional[int] = None, qk_norm: bool = False, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        head_dim = head_dim if head_dim is not None else (dim // heads if heads and dim % heads == 0 else -1)
        if head_dim == -1:
            raise ValueError(f"Attention: dim = {dim} is not divisible by heads = {heads}; pass head_dim")
        _positive("Attention", dim=dim, heads=heads, head_dim=head_dim)
        if context_dim is not None:
            _positive("Attention", context_dim=context_dim)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Attention: dropout must be in [0, 1), got {dropout!r}")
        self.heads, self.head_dim, self.dropout = heads, head_dim, float(dropout)
        inner = heads * head_dim
        self.cross = context_dim is not None
        if self.cross:
            self.to_q = nn.Linear(dim, inner, bias=bias)
            self.to_kv = nn.Linear(context_dim, 2 * inner, bias=bias)
        else:
            self.to_qkv = nn.Linear(dim, 3 * inner, bias=bias)
        self.norm_q = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else None
        self.norm_k = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else None
        self.to_out = nn.Linear(inner, dim, bias=bias)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x ``(B, N, dim)``; context ``(B, M, context_dim)`` for cross-attention; attn_mask as in
        :func:`fastgen.functional.attention` (broadcastable to ``(B, heads, N, M)``)."""
        if x.dim() != 3:
            raise ValueError(f"Attention: x must be (B, N, dim), got shape {tuple(x.shape)}")
        b, n, _ = x.shape
        h, d = self.heads, self.head_dim
        if self.cross:
            if context is None:
                raise ValueError("Attention: this is a cross-attention module (context_dim set); pass context")
            q = self.to_q(x).view(b, n, h, d)
            k, v = self.to_kv(context).view(b, context.shape[1], 2, h, d).unbind(2)
        else:
            if context is not None:
                raise ValueError("Attention: context given to a self-attention module (no context_dim)")
            q, k, v = self.to_qkv(x).view(b, n, 3, h, d).unbind(2)
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        out = attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0,
                        layout="bnhd")                                             # (B, N, h, d)
        return self.to_out(out.reshape(b, n, h * d))


class SelfAttention2d(nn.Module):
    """SAGAN's self-attention layer for GAN feature maps (Zhang et al. 2019): 1x1 convs give queries
    and keys with ``channels // reduction`` channels and values with ``channels``, one head attends
    over all H*W positions, and the result is added back scaled by a learned ``gamma`` (initialised
    to 0, so the layer starts as the identity): ``y = x + gamma * attention(x)``.
    """

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        _positive("SelfAttention2d", channels=channels, reduction=reduction)
        qk = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, qk, 1)
        self.key = nn.Conv2d(channels, qk, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"SelfAttention2d: x must be (B, C, H, W), got shape {tuple(x.shape)}")
        b, c, hh, ww = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)[:, None]   # (B, 1, HW, c')
        k = self.key(x).flatten(2).transpose(1, 2)[:, None]
        v = self.value(x).flatten(2).transpose(1, 2)[:, None]   # (B, 1, HW, C)
        out = attention(q, k, v, scale=1.0)                       # SAGAN: softmax(q k^T), no 1/sqrt(d)
        return x + self.gamma * out[:, 0].transpose(1, 2).reshape(b, c, hh, ww)
