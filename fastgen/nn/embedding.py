"""Timestep embeddings for diffusion U-Nets."""
from __future__ import annotations

import math
from numbers import Real

import torch
from torch import nn


def timestep_embedding(timesteps: torch.Tensor, dim: int, *, flip_sin_to_cos: bool = True,
                       downscale_freq_shift: float = 0.0, scale: float = 1.0, max_period: float = 10000.0
                       ) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, ``(N,) -> (N, dim)`` float32.

    ``freq_k = max_period ** (-k / (dim // 2 - downscale_freq_shift))``, ``arg = scale * t * freq``,
    output ``[cos(arg), sin(arg)]`` (``flip_sin_to_cos=True``, the default: ADM / improved DDPM) or
    ``[sin, cos]``; an odd ``dim`` is zero-padded. With ``flip_sin_to_cos=False,
    downscale_freq_shift=1`` it equals diffusers' ``get_timestep_embedding`` defaults (DDPM).
    The arithmetic is float32 like diffusers', so embeddings agree bit for bit.
    """
    if not isinstance(timesteps, torch.Tensor) or timesteps.dim() != 1:
        raise ValueError("timestep_embedding: timesteps must be a 1-D tensor (one per sample), got "
                         f"{type(timesteps).__name__ if not isinstance(timesteps, torch.Tensor) else tuple(timesteps.shape)}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
        raise ValueError(f"timestep_embedding: dim must be an int >= 2, got {dim!r}")
    half = dim // 2
    for name, v in (("downscale_freq_shift", downscale_freq_shift), ("scale", scale), ("max_period", max_period)):
        if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(float(v)):
            raise ValueError(f"timestep_embedding: {name} must be a finite number, got {v!r}")
    if half - downscale_freq_shift <= 0:
        raise ValueError(f"timestep_embedding: dim // 2 - downscale_freq_shift must be > 0 (dim={dim}, "
                         f"downscale_freq_shift={downscale_freq_shift})")
    if max_period <= 0:
        raise ValueError(f"timestep_embedding: max_period must be > 0, got {max_period}")
    k = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(-math.log(max_period) * k / (half - downscale_freq_shift))
    arg = scale * (timesteps[:, None].float() * freqs[None, :])
    parts = (torch.cos(arg), torch.sin(arg)) if flip_sin_to_cos else (torch.sin(arg), torch.cos(arg))
    emb = torch.cat(parts, dim=-1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Timestep -> conditioning vector: sinusoidal embedding (``dim``) -> Linear -> SiLU -> Linear
    (``time_embed_dim``), as in DDPM/ADM U-Nets. The layers are named ``linear_1`` / ``linear_2``
    like diffusers' ``TimestepEmbedding`` (so its weights load directly).

    Args:
        dim: sinusoidal embedding size. time_embed_dim: output size (ADM: 4 x base channels).
        flip_sin_to_cos, downscale_freq_shift, max_period: see :func:`timestep_embedding`.
    """

    def __init__(self, dim: int, time_embed_dim: int, *, flip_sin_to_cos: bool = True,
                 downscale_freq_shift: float = 0.0, max_period: float = 10000.0, device=None, dtype=None):
        super().__init__()
        for name, v in (("dim", dim), ("time_embed_dim", time_embed_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 2:
                raise ValueError(f"TimestepEmbedding: {name} must be an int >= 2, got {v!r}")
        self.dim = dim
        self.flip_sin_to_cos, self.downscale_freq_shift, self.max_period = (flip_sin_to_cos, downscale_freq_shift,
                                                                           max_period)
        self.linear_1 = nn.Linear(dim, time_embed_dim, device=device, dtype=dtype)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim, device=device, dtype=dtype)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        if timesteps.dim() == 0:
            timesteps = timesteps[None]
        emb = timestep_embedding(timesteps, self.dim, flip_sin_to_cos=self.flip_sin_to_cos,
                                 downscale_freq_shift=self.downscale_freq_shift, max_period=self.max_period)
        emb = emb.to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(emb)))
