r"""GAN losses and regularisers (Goodfellow et al. 2014; Mescheder et al. 2018; Karras et al. 2020).

With D's logits ``l`` (real or fake samples):

* ``d_logistic_loss``      softplus(l_fake) + softplus(-l_real)   (the minimax game's D loss)
* ``g_nonsaturating_loss`` softplus(-l_fake)                       (-log D(G(z)), the usual G loss)
* :func:`d_loss` / :func:`g_loss` by name (``LOSSES``):

  ============== ======================================== ======================
  kind           D (per sample)                           G (per sample)
  ============== ======================================== ======================
  minimax        softplus(-l_real) + softplus(l_fake)     -softplus(l_fake) = log(1 - D(G(z)))
  nonsaturating  softplus(-l_real) + softplus(l_fake)     softplus(-l_fake) = -log D(G(z))
  wasserstein    l_fake - l_real   (a critic)             -l_fake
  hinge          relu(1 - l_real) + relu(1 + l_fake)      -l_fake
  lsgan          (l_real - 1)^2 / 2 + l_fake^2 / 2        (l_fake - 1)^2 / 2
  ============== ======================================== ======================

* ``r1_penalty`` / ``r2_penalty``  ||grad_x l||^2 per sample on reals / fakes (Mescheder et al. 2018)
* InfoGAN's mutual-information terms (:func:`infogan_categorical_loss`,
  :func:`infogan_continuous_loss`), ACGAN's auxiliary classification (:func:`acgan_loss`),
  weight clipping (:func:`clip_weights_`) and spectral normalisation (:func:`spectral_norm`).
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


LOSSES = ("minimax", "nonsaturating", "wasserstein", "hinge", "lsgan")


def _kind(kind: str) -> str:
    if kind not in LOSSES:
        raise ValueError(f"loss kind must be one of {', '.join(LOSSES)}; got {kind!r}")
    return kind


def d_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's (critic's) per-sample loss of GAN ``kind`` (see the module docstring)."""
    kind = _kind(kind)
    if kind in ("minimax", "nonsaturating"):
        return d_logistic_loss(real_logits, fake_logits)
    if kind == "wasserstein":
        return fake_logits - real_logits
    if kind == "hinge":
        return F.relu(1 - real_logits) + F.relu(1 + fake_logits)
    return 0.5 * (real_logits - 1).square() + 0.5 * fake_logits.square()


def g_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's per-sample loss of GAN ``kind`` (see the module docstring)."""
    kind = _kind(kind)
    if kind == "minimax":
        return -F.softplus(fake_logits)
    if kind == "nonsaturating":
        return g_nonsaturating_loss(fake_logits)
    if kind in ("wasserstein", "hinge"):
        return -fake_logits
    return 0.5 * (fake_logits - 1).square()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Per-sample squared norm of d(sum of real_logits)/d(real), differentiable (create_graph).

    ``real`` must require grad and ``real_logits`` must have been computed from it."""
    if not real.requires_grad:
        raise ValueError("r1_penalty: real must require grad (call real.requires_grad_() before D(real))")
    grad, = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.square().flatten(1).sum(dim=1)


def r2_penalty(fake_logits: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """R2: the R1 penalty on generated samples (``fake`` must require grad)."""
    if not fake.requires_grad:
        raise ValueError("r2_penalty: fake must require grad (detach the generator output, then requires_grad_())")
    return r1_penalty(fake_logits, fake)


def acgan_loss(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ACGAN's auxiliary classification loss: per-sample cross entropy of D's class head."""
    return F.cross_entropy(class_logits, labels, reduction="none")


def infogan_categorical_loss(code_logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """InfoGAN's categorical mutual-information term: per-sample cross entropy of Q's logits
    ``(N, K)`` against the categorical codes ``(N,)`` given to G (a lower bound on I(c; G(z, c)) up
    to the code's entropy)."""
    return F.cross_entropy(code_logits, codes, reduction="none")


def infogan_continuous_loss(mean: torch.Tensor, log_std: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """InfoGAN's continuous term: per-sample negative log-likelihood of the codes ``(N, D)`` under Q's
    factored Gaussian ``N(mean, exp(log_std)^2)``, summed over the D codes."""
    z = (codes - mean) * torch.exp(-log_std)
    return (0.5 * z.square() + log_std + 0.5 * math.log(2 * math.pi)).sum(dim=1)


@torch.no_grad()
def clip_weights_(module: nn.Module, c: float) -> None:
    """WGAN's weight clipping: clamp every parameter of ``module`` to [-c, c] in place."""
    if not c > 0:
        raise ValueError(f"clip_weights_: c must be > 0, got {c!r}")
    for p in module.parameters():
        p.clamp_(-c, c)


def spectral_norm(module: nn.Module, n_power_iterations: int = 1) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) of every Conv / Linear weight in ``module`` with
    torch's parametrization (``torch.nn.utils.parametrizations.spectral_norm``); returns the module."""
    from torch.nn.utils.parametrizations import spectral_norm as sn

    for m in list(module.modules()):
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)) and \
                not torch.nn.utils.parametrize.is_parametrized(m, "weight"):
            sn(m, n_power_iterations=n_power_iterations, dim=1 if isinstance(m, nn.ConvTranspose2d) else 0)
    return module


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
