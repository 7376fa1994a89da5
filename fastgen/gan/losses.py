r"""GAN losses and regularisers (Goodfellow et al. 2014; Mescheder et al. 2018; Karras et al. 2020).

With D's logits ``l`` (real or fake samples):

* ``d_logistic_loss``      softplus(l_fake) + softplus(-l_real)   (the minimax game's D loss)
* ``g_nonsaturating_loss`` softplus(-l_fake)                       (-log D(G(z)), the usual G loss)
* ``r1_penalty``           ||grad_x l_real||^2 per sample           (Mescheder et al. 2018)
* :class:`PathLengthPenalty` StyleGAN2's path-length regulariser: ``(||J_w^T y|| - a)^2`` with y
  Gaussian image-space noise scaled by 1/sqrt(H W) and a the running mean of the lengths.

The gradient penalties are computed with ``create_graph=True`` so their gradient reaches the
network's weights: that is a second derivative through every layer, which fastgen's fused ops
(bias_act, upfirdn2d, modulated_bias_act, group_norm, attention) all provide.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample ``softplus(fake) + softplus(-real)`` (shapes must match)."""
    return F.softplus(fake_logits) + F.softplus(-real_logits)


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample ``softplus(-fake)`` = -log sigmoid(fake)."""
    return F.softplus(-fake_logits)


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Per-sample squared norm of d(sum of real_logits)/d(real), differentiable (create_graph).

    ``real`` must require grad and ``real_logits`` must have been computed from it."""
    if not real.requires_grad:
        raise ValueError("r1_penalty: real must require grad (call real.requires_grad_() before D(real))")
    grad, = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.square().flatten(1).sum(dim=1)


class PathLengthPenalty(nn.Module):
    """StyleGAN2's path-length regulariser; keeps the running mean ``pl_mean`` as a buffer.

    ``forward(img, ws, generator=None, noise=None, reduce_mean=None)`` returns the per-sample
    penalty ``(L - pl_mean)^2`` with ``L = sqrt(mean over layers of ||d<img, y>/dw||^2)`` and
    y ~ N(0, 1) / sqrt(H W) (drawn from ``generator``, or ``noise`` given unscaled); ``ws`` must
    require grad and ``img`` be computed from it. pl_mean moves towards mean(L) by ``decay``
    (``reduce_mean``: averages that mean over processes in a data-parallel run).
    """

    def __init__(self, decay: float = 0.01):
        super().__init__()
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"PathLengthPenalty: decay must be in (0, 1], got {decay!r}")
        self.decay = float(decay)
        self.register_buffer("pl_mean", torch.zeros([]))

    def forward(self, img: torch.Tensor, ws: torch.Tensor, generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None, reduce_mean=None) -> torch.Tensor:
        if not ws.requires_grad:
            raise ValueError("PathLengthPenalty: ws must require grad and img must be computed from it")
        h, w = img.shape[2], img.shape[3]
        if noise is None:
            noise = torch.randn(img.shape, generator=generator, device=img.device, dtype=img.dtype)
        elif noise.shape != img.shape:
            raise ValueError(f"PathLengthPenalty: noise has shape {tuple(noise.shape)} but img {tuple(img.shape)}")
        y = noise.to(img.dtype) / math.sqrt(h * w)
        grad, = torch.autograd.grad((img * y).sum(), ws, create_graph=True)
        lengths = grad.square().sum(dim=2).mean(dim=1).sqrt()
        with torch.no_grad():
            m = lengths.mean().detach()
            if reduce_mean is not None:
                m = reduce_mean(m)
            self.pl_mean.copy_(self.pl_mean.lerp(m.to(self.pl_mean.dtype), self.decay))
        return (lengths - self.pl_mean.detach()).square()
