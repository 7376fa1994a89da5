r"""VAE-GAN: latent diffusion's "autoencoder with adversarial loss" (Rombach et al. 2022, after
taming-transformers' VQGAN, Esser et al. 2021), without the perceptual (LPIPS) term.

The generator is a :class:`~fastgen.models.vae.VAE`, the discriminator an unconditional PatchGAN
(:class:`~fastgen.models.PatchGANDiscriminator` with ``in_channels`` = the image channels) judging
real images against reconstructions patch by patch. Per step, on images x (one posterior sample
z = mu + sigma eps, eps from the recipe's generator for the global batch, recon = decode(z)):

    loss_G = |recon - x|_1 + beta_kl KL / D + f_t lambda g(D(recon))
    loss_D = f_t (d(D(x) real) + d(D(recon) fake)) / 2           (recon detached)

``|.|_1`` is the mean absolute error per pixel value and ``KL / D`` the per-sample KL (nats)
divided by the number of pixel values ``D = C H W`` (both per dimension, so ``beta_kl = 1e-6``
is latent diffusion's ``kl_weight``, whose losses are per-sample sums of both); ``g``/``d`` are the
generator / discriminator losses of :mod:`fastgen.gan.losses` (``hinge`` as latent diffusion,
``nonsaturating`` or ``lsgan``); ``f_t`` is 0 before step ``disc_start`` and 1 from it (before it D
is not trained and the adversarial term is off, as in latent diffusion).

``lambda`` is ``adv_weight`` times, with ``adaptive_weight=True`` (taming's / latent diffusion's
adaptive weight),

    ||grad_W |recon - x|_1|| / (||grad_W g(D(recon))|| + 1e-4),   clamped to [0, 1e4], not differentiated

with W the decoder's last convolution weight: the adversarial gradient reaching the decoder's
output layer gets ``adv_weight`` times the norm of the reconstruction gradient there. In a
data-parallel run both gradients are averaged over the processes first, so lambda is the global
batch's. The VAE's ``likelihood``/``sigma_x`` are not used here (the reconstruction term is L1 on
the decoder's mean image).

The generator step runs before the discriminator step on the same reconstructions (as latent
diffusion alternates them). A step returns (and GANTrainer logs) ``l1``, ``kl`` (nats per image,
before the division by D), ``g`` (loss_G) and, once the adversarial term is on, ``g_adv``,
``adv_weight`` (lambda), ``d`` (loss_D), ``d_real`` / ``d_fake`` (mean patch logits). Sample grids (:meth:`VAEGANTraining.sample`) are rows of (input,
reconstruction, prior sample) for the first training batch's images.
"""
from __future__ import annotations

import numbers
from typing import Dict, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..train.ema import EMA
from .losses import d_loss, g_loss
from .recipe import GANRecipe

VAEGAN_LOSSES = ("hinge", "nonsaturating", "lsgan")


def _num(name: str, v, lo: float = 0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (v >= lo) or v == float("inf"):
        raise ValueError(f"VAEGANTraining: {name} must be a finite number >= {lo}, got {v!r}")
    return float(v)


class VAEGANTraining(GANRecipe):
    """The VAE-GAN recipe (see the module docstring).

    Args:
        vae: a :class:`~fastgen.models.vae.VAE` (the generator ``G``).
        D: an unconditional patch discriminator ``D(x) -> logits`` (e.g.
            ``PatchGANDiscriminator(in_channels=vae.in_channels)``).
        batch_size: the global batch. beta_kl: weight of the per-dimension KL (1e-6, latent
            diffusion's). adv_weight: weight of the adversarial term (0.5). adaptive_weight:
            scale it by the gradient-norm ratio (True). disc_start: the step from which D trains and
            the adversarial term is on (0). loss: ``hinge`` (default), ``nonsaturating`` or ``lsgan``.
        lr, betas: Adam of both networks (2e-4, (0.5, 0.9)). ema_decay: EMA of the VAE (None).
        bf16: forward passes under bf16 autocast. generator: the recipe's RNG (posterior noise).
    """

    name = "vaegan"
    grid_columns = 3  # sample grids: one (input, reconstruction, prior sample) triple per row

    def __init__(self, vae: nn.Module, D: nn.Module, *, batch_size: int, beta_kl: float = 1e-6,
                 adv_weight: float = 0.5, adaptive_weight: bool = True, disc_start: int = 0, loss: str = "hinge",
                 lr: float = 2e-4, betas: Sequence[float] = (0.5, 0.9), ema_decay: Optional[float] = None,
                 bf16: bool = False, generator: Optional[torch.Generator] = None):
        from ..models.vae import VAE

        o = "VAEGANTraining"
        if not isinstance(vae, VAE):
            raise TypeError(f"{o}: vae must be a fastgen.models.VAE, got {type(vae).__name__}")
        if not isinstance(D, nn.Module):
            raise TypeError(f"{o}: D must be an nn.Module (e.g. PatchGANDiscriminator), got {type(D).__name__}")
        d_in = getattr(D, "in_channels", vae.in_channels)
        if d_in != vae.in_channels:
            raise ValueError(f"{o}: D has in_channels={d_in} but the VAE's images have {vae.in_channels} "
                             "(an unconditional PatchGAN sees the image alone)")
        if loss not in VAEGAN_LOSSES:
            raise ValueError(f"{o}: loss must be one of {', '.join(VAEGAN_LOSSES)}; got {loss!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{o}: batch_size must be an int >= 1, got {batch_size!r}")
        if isinstance(disc_start, bool) or not isinstance(disc_start, int) or disc_start < 0:
            raise ValueError(f"{o}: disc_start must be an int >= 0, got {disc_start!r}")
        if not isinstance(adaptive_weight, bool):
            raise ValueError(f"{o}: adaptive_weight must be a bool, got {adaptive_weight!r}")
        if len(betas) != 2 or not all(isinstance(b, numbers.Real) and 0 <= b < 1 for b in betas):
            raise ValueError(f"{o}: betas must be two numbers in [0, 1), got {betas!r}")
        self.G, self.D = vae, D
        self.beta_kl, self.adv_weight = _num("beta_kl", beta_kl), _num("adv_weight", adv_weight)
        self.adaptive_weight, self.disc_start, self.loss = adaptive_weight, disc_start, loss
        lr = _num("lr", lr)
        betas = tuple(float(b) for b in betas)
        self.bf16 = bool(bf16)
        self.opt_G = torch.optim.Adam(vae.parameters(), lr=lr, betas=betas)
        self.opt_D = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
        self.ema = EMA(vae, ema_decay, warmup=False) if ema_decay is not None else None
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.num_steps, self._sample_inputs = 0, None
        self._config = dict(batch_size=batch_size, beta_kl=self.beta_kl, adv_weight=self.adv_weight,
                            adaptive_weight=adaptive_weight, disc_start=disc_start, loss=loss, lr=lr,
                            betas=list(betas), ema_decay=ema_decay, bf16=self.bf16)

    @property
    def vae(self):
        return self.G

    @property
    def config(self) -> dict:
        return dict(self._config)

    def optimizers(self):
        return {"G": self.opt_G, "D": self.opt_D}

    @property
    def conditional(self) -> bool:
        return False

    @property
    def num_classes(self):
        return None

    def expected_image_shape(self):
        return (self.G.in_channels, self.G.image_size, self.G.image_size)

    def extra_state(self) -> Dict[str, torch.Tensor]:
        st = {"num_steps": torch.tensor(self.num_steps), "generator": self.generator.get_state()}
        if self._sample_inputs is not None:
            st["sample_inputs"] = self._sample_inputs
        return st

    def load_extra_state(self, state: Dict[str, torch.Tensor]) -> None:
        self.num_steps = int(state["num_steps"])
        self.generator.set_state(state["generator"].cpu())
        self._sample_inputs = state["sample_inputs"].to(self.device) if "sample_inputs" in state else None

    # ------------------------------------------------------------------ the adaptive weight
    def _global_grad(self, loss: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        g, = torch.autograd.grad(loss, w, retain_graph=True)
        if self.world_size > 1:
            g = g.detach().clone()
            dist.all_reduce(g)
            g = g / self.world_size
        return g

    def adversarial_weight(self, rec: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        """``lambda`` of the module docstring for the reconstruction loss ``rec`` and the generator's
        adversarial loss ``adv`` (both still attached to the decoder's graph); a detached 0-d tensor."""
        if not self.adaptive_weight:
            return torch.tensor(self.adv_weight, device=rec.device)
        w = self.G.decoder.conv_out.weight
        g_rec, g_adv = self._global_grad(rec, w), self._global_grad(adv, w)
        ratio = g_rec.float().norm() / (g_adv.float().norm() + 1e-4)
        return ratio.clamp(0.0, 1e4).detach() * self.adv_weight

    # ------------------------------------------------------------------ training
    def step(self, real: torch.Tensor, labels=None) -> Dict[str, torch.Tensor]:
        vae = self.G
        if not isinstance(real, torch.Tensor) or real.dim() != 4 or tuple(real.shape[1:]) != self.expected_image_shape():
            raise ValueError(f"VAEGANTraining.step: real must be (N, {vae.in_channels}, {vae.image_size}, "
                             f"{vae.image_size}), got {tuple(real.shape) if isinstance(real, torch.Tensor) else real!r}")
        real = real.to(self.device, torch.float32)
        if self._sample_inputs is None:  # a fixed batch for the sample grids
            self._sample_inputs = real[:8].detach().clone()
        noise = self.global_randn(real.shape[0], *vae.latent_shape)
        with self.autocast():
            return self._step(real, noise)

    def _step(self, x: torch.Tensor, noise: torch.Tensor) -> Dict[str, torch.Tensor]:
        vae, D = self.G, self.D
        vae.train()
        D.train()
        adversarial = self.num_steps >= self.disc_start
        # generator (VAE) step, D frozen
        D.requires_grad_(False)
        out = vae(x, noise=noise)
        recon = out.recon.float()
        rec = (recon - x).abs().mean()
        kl = out.kl.float().mean()
        loss_g = rec + self.beta_kl * kl / x[0].numel()
        logs = {"l1": rec.detach(), "kl": kl.detach()}
        if adversarial:
            adv = g_loss(self.loss, D(out.recon)).float().mean()
            lam = self.adversarial_weight(rec, adv)
            loss_g = loss_g + lam * adv
            logs.update(g_adv=adv.detach(), adv_weight=lam.detach().float())
        self.opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        self.sync_grads(vae)
        self.opt_G.step()
        D.requires_grad_(True)
        if self.ema is not None:
            self.ema.update(vae)
        logs["g"] = loss_g.detach()
        # discriminator step on the same reconstructions
        if adversarial:
            real_logits, fake_logits = D(x), D(recon.detach().to(out.recon.dtype))
            loss_d = 0.5 * d_loss(self.loss, real_logits.float(), fake_logits.float()).mean()
            self.opt_D.zero_grad(set_to_none=True)
            loss_d.backward()
            self.sync_grads(D)
            self.opt_D.step()
            logs.update(d=loss_d.detach(), d_real=real_logits.detach().float().mean(),
                        d_fake=fake_logits.detach().float().mean())
        self.sync_buffers(vae)
        self.sync_buffers(D)
        self.num_steps += 1
        return logs

    # ------------------------------------------------------------------ samples
    @torch.no_grad()
    def sample(self, n: int, labels=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Rows of (input, reconstruction (posterior mean), prior sample) for the first training
        batch's images, ``max(1, n // 3)`` rows, from the EMA VAE (3-channel views)."""
        if self._sample_inputs is None:
            raise RuntimeError("VAEGANTraining.sample: no batch seen yet (call step first)")
        x = self._sample_inputs[:max(1, n // 3)]
        vae = self.G_ema
        was = vae.training
        vae.eval()
        try:
            recon = vae.reconstruct(x)
            z = torch.randn((x.shape[0],) + vae.latent_shape, generator=generator).to(self.device)
            prior = vae.decode(z)
        finally:
            vae.train(was)
        rgb = lambda t: t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t[:, :3]  # noqa: E731
        return torch.stack([rgb(x), rgb(recon.to(x.dtype)), rgb(prior.to(x.dtype))], dim=1).flatten(0, 1)
