r"""The classic GAN families as one training recipe: DCGAN, WGAN (weight clipping or gradient
penalty), LSGAN, hinge, R1 / R2 / DRAGAN-regularised GANs, conditional GANs, ACGAN and InfoGAN.

    G = DCGANGenerator.from_preset("32px", c_dim=10)
    D = DCGANDiscriminator.from_preset("32px", c_dim=10, norm="layer")
    recipe = GANTraining(G, D, batch_size=64, loss="wasserstein", penalty="wgan-gp", d_steps=5,
                         g_lr=1e-4, d_lr=1e-4, betas=(0.0, 0.9))          # WGAN-GP (Gulrajani et al.)
    losses = recipe.step(real, labels)

Every :meth:`GANTraining.step` consumes one real batch and takes one discriminator (critic) step:

    loss_D = mean d_loss(loss, D(x, c), D(G(z, c), c))
             + aux_weight * ACGAN cross entropy on reals and fakes         (D with an aux head)
             + info_weight * InfoGAN code likelihood on fakes               (D with an InfoGAN head)
             + penalty_weight * gradient penalty                            (every penalty_interval steps)

then (after every ``d_steps``-th discriminator step: k D steps per G step) one generator step:

    loss_G = mean g_loss(loss, D(G(z, c), c)) + aux_weight * ACGAN + info_weight * InfoGAN terms.

``loss`` is ``minimax``, ``nonsaturating`` (DCGAN), ``wasserstein`` (WGAN), ``hinge`` or ``lsgan``
(:func:`fastgen.gan.losses.d_loss`); ``penalty`` ``wgan-gp``, ``r1``, ``r2`` or ``dragan``
(:func:`fastgen.gan.gradient_penalty`, on the fused gradient-norm op, weighted by
``penalty_weight * penalty_interval`` when lazy); ``weight_clip`` clamps the critic's weights after
each step (the original WGAN, with ``optimizer="rmsprop"``). Generated images are conditioned on the
real batch's labels. Two optimizers (TTUR: separate ``g_lr`` / ``d_lr``), and an optional EMA of G.
"""
from __future__ import annotations

import numbers
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from ..ops.grad_penalty import KINDS as PENALTIES
from ..ops.grad_penalty import gradient_penalty
from ..train.ema import EMA
from .losses import LOSSES, acgan_loss, clip_weights_, d_loss, g_loss, infogan_categorical_loss, \
    infogan_continuous_loss
from .recipe import GANRecipe


def _num(name, v, lo=None, hi=None, integer=False, allow_none=False):
    if v is None and allow_none:
        return v
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(v, bool) or not isinstance(v, kind) or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = "".join([f" >= {lo}" if lo is not None else "", f" <= {hi}" if hi is not None else ""])
        raise ValueError(f"GANTraining: {name} must be {'an int' if integer else 'a number'}{rng}"
                         f"{' or None' if allow_none else ''}, got {v!r}")
    return v


def _split(out):
    """(logits, DiscriminatorOutput-or-None) of a discriminator's output."""
    return (out.logits, out) if hasattr(out, "logits") else (out, None)


class GANTraining(GANRecipe):
    """The classic GAN recipe (see the module docstring).

    Args:
        G: a generator ``G(z, c=None[, codes=None])`` with ``z_dim`` / ``c_dim`` attributes (e.g.
            :class:`fastgen.models.DCGANGenerator`; InfoGAN codes when it has ``info_cat_dims`` /
            ``info_cont_dim``).
        D: a discriminator ``D(x, c=None)`` returning logits ``(N, 1)`` or a ``DiscriminatorOutput``
            (ACGAN / InfoGAN heads).
        batch_size: images per step (the EMA and logging only).
        loss, penalty, penalty_weight, penalty_center, penalty_interval, d_steps, weight_clip: see above.
        g_lr, d_lr, betas, eps: Adam (DCGAN: 2e-4, (0.5, 0.999)); ``optimizer="rmsprop"`` uses RMSprop
            with these learning rates (WGAN with clipping: 5e-5).
        aux_weight, info_weight: weights of the ACGAN and InfoGAN terms.
        ema_decay: EMA of G (None: sample with G itself). ema_warmup: ramp the decay up as
            ``min(ema_decay, (1 + n) / (10 + n))`` (ADM / diffusers), so short runs do not sample
            with weights still dominated by the random initialisation (0.999^2000 = 13.5% of it).
        bf16: forward passes under bf16 autocast (the fused ops keep fp32 math inside).
        generator: CPU torch.Generator of the latents, codes and penalty draws (default: seed 0).
    """

    name = "gan"

    def __init__(self, G: nn.Module, D: nn.Module, *, batch_size: int, loss: str = "nonsaturating",
                 penalty: Optional[str] = None, penalty_weight: float = 10.0, penalty_center: float = 1.0,
                 penalty_interval: int = 1, d_steps: int = 1, g_lr: float = 2e-4, d_lr: float = 2e-4,
                 betas: Sequence[float] = (0.5, 0.999), eps: float = 1e-8, optimizer: str = "adam",
                 weight_clip: Optional[float] = None, aux_weight: float = 1.0, info_weight: float = 1.0,
                 ema_decay: Optional[float] = None, ema_warmup: bool = True, bf16: bool = False,
                 generator: Optional[torch.Generator] = None):
        if not hasattr(G, "z_dim") or not isinstance(G, nn.Module):
            raise TypeError(f"GANTraining: G must be a generator module with a z_dim attribute, got {type(G).__name__}")
        if not isinstance(D, nn.Module):
            raise TypeError(f"GANTraining: D must be an nn.Module, got {type(D).__name__}")
        if loss not in LOSSES:
            raise ValueError(f"GANTraining: loss must be one of {', '.join(LOSSES)}; got {loss!r}")
        if penalty is not None and penalty not in PENALTIES:
            raise ValueError(f"GANTraining: penalty must be None or one of {', '.join(PENALTIES)}; got {penalty!r}")
        if optimizer not in ("adam", "rmsprop"):
            raise ValueError(f"GANTraining: optimizer must be 'adam' or 'rmsprop', got {optimizer!r}")
        _num("batch_size", batch_size, 1, integer=True)
        for name, v in (("penalty_weight", penalty_weight), ("g_lr", g_lr), ("d_lr", d_lr), ("eps", eps),
                        ("aux_weight", aux_weight), ("info_weight", info_weight)):
            _num(name, v, 0)
        _num("penalty_center", penalty_center)
        _num("penalty_interval", penalty_interval, 1, integer=True)
        _num("d_steps", d_steps, 1, integer=True)
        _num("weight_clip", weight_clip, 0, allow_none=True)
        _num("ema_decay", ema_decay, 0, 0.999999999, allow_none=True)
        if len(betas) != 2 or not all(isinstance(b, numbers.Real) and 0 <= b < 1 for b in betas):
            raise ValueError(f"GANTraining: betas must be two numbers in [0, 1), got {betas!r}")
        if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != "cpu"):
            raise ValueError("GANTraining: generator must be a CPU torch.Generator")
        self.G, self.D = G, D
        self.bf16 = bool(bf16)
        self.loss, self.penalty = loss, penalty
        self.penalty_weight, self.penalty_center, self.penalty_interval = (float(penalty_weight),
                                                                           float(penalty_center), penalty_interval)
        self.d_steps, self.weight_clip = d_steps, weight_clip
        self.aux_weight, self.info_weight = float(aux_weight), float(info_weight)
        self._config = dict(batch_size=batch_size, loss=loss, penalty=penalty, penalty_weight=penalty_weight,
                            penalty_center=penalty_center, penalty_interval=penalty_interval, d_steps=d_steps,
                            g_lr=g_lr, d_lr=d_lr, betas=list(betas), eps=eps, optimizer=optimizer,
                            weight_clip=weight_clip, aux_weight=aux_weight, info_weight=info_weight,
                            ema_decay=ema_decay, ema_warmup=bool(ema_warmup), bf16=bool(bf16))
        if optimizer == "adam":
            self.opt_G = torch.optim.Adam(G.parameters(), lr=g_lr, betas=tuple(betas), eps=eps)
            self.opt_D = torch.optim.Adam(D.parameters(), lr=d_lr, betas=tuple(betas), eps=eps)
        else:
            self.opt_G = torch.optim.RMSprop(G.parameters(), lr=g_lr, eps=eps)
            self.opt_D = torch.optim.RMSprop(D.parameters(), lr=d_lr, eps=eps)
        self.ema = EMA(G, ema_decay, warmup=bool(ema_warmup)) if ema_decay is not None else None
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.num_steps = 0
        self.has_codes = bool(getattr(G, "info_cat_dims", ()) or getattr(G, "info_cont_dim", 0))

    @property
    def config(self) -> dict:
        return dict(self._config)

    def optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_G, "D": self.opt_D}

    def extra_state(self) -> Dict[str, torch.Tensor]:
        return {"num_steps": torch.tensor(self.num_steps), "generator": self.generator.get_state()}

    def load_extra_state(self, state: Dict[str, torch.Tensor]) -> None:
        self.num_steps = int(state["num_steps"])
        self.generator.set_state(state["generator"].cpu())

    # ------------------------------------------------------------------ pieces
    def _codes(self, n: int):
        """InfoGAN codes for the global batch (this process's slice), or None."""
        if not self.has_codes:
            return None
        full = self.G.sample_codes(n * self.world_size, generator=self.generator)
        lo, hi = self.rank * n, (self.rank + 1) * n
        return type(full)(*(None if t is None else t[lo:hi].to(self.device) for t in full))

    def _generate(self, n: int, c: Optional[torch.Tensor]):
        z = self.global_randn(n, self.G.z_dim)
        codes = self._codes(n)
        img = self.G(z, c, codes) if codes is not None else (self.G(z, c) if c is not None else self.G(z))
        return img, codes

    def _acgan(self, out, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """ACGAN's classification term of a discriminator output (0 without the head)."""
        if out is None or out.class_logits is None:
            return torch.zeros((), device=self.device)
        if labels is None:
            raise ValueError("GANTraining: the discriminator has an ACGAN head but the batch has no labels")
        return self.aux_weight * acgan_loss(out.class_logits, labels.long()).mean()

    def _info(self, out, codes) -> torch.Tensor:
        """InfoGAN's code-likelihood term of a discriminator output on fakes (0 without codes)."""
        total = torch.zeros((), device=self.device)
        if out is None or codes is None:
            return total
        if codes.cat is not None:
            for i, logits in enumerate(out.info_logits):
                total = total + infogan_categorical_loss(logits, codes.cat[:, i]).mean()
        if codes.cont is not None and out.info_mean is not None:
            total = total + infogan_continuous_loss(out.info_mean, out.info_log_std, codes.cont).mean()
        return self.info_weight * total

    def _D(self, x, c=None):
        """D(x), conditioned on c when D is conditional (an ACGAN D classifies instead)."""
        return self.D(x, c) if (c is not None and getattr(self.D, "c_dim", 0)) else self.D(x)

    # ------------------------------------------------------------------ one step
    def step(self, real: torch.Tensor, labels: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        with self.autocast():
            return self._step(real, labels)

    def _step(self, real: torch.Tensor, labels: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        if not isinstance(real, torch.Tensor) or real.dim() != 4:
            raise ValueError("GANTraining.step: real must be an (N, C, H, W) tensor")
        conditional = bool(getattr(self.G, "c_dim", 0))
        if conditional and labels is None:
            raise ValueError("GANTraining.step: the generator is class-conditional; pass the labels")
        real = real.to(self.device)
        c = labels.to(self.device) if (labels is not None and conditional) else None
        aux_labels = labels.to(self.device) if labels is not None else None
        n, out = real.shape[0], {}
        self.G.train()
        self.D.train()

        # discriminator / critic
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        with torch.no_grad():
            fake, codes = self._generate(n, c)
        lr_, o_r = _split(self._D(real, c))
        lf_, o_f = _split(self._D(fake, c))
        loss = d_loss(self.loss, lr_, lf_).mean()
        out["d_adv"] = loss.detach()
        if o_f is not None:  # ACGAN: classify reals and fakes; InfoGAN: recover the fakes' codes
            heads = 0.5 * (self._acgan(o_r, aux_labels) + self._acgan(o_f, aux_labels)) + self._info(o_f, codes)
            out["d_heads"] = heads.detach()
            loss = loss + heads
        if self.penalty is not None and self.num_steps % self.penalty_interval == 0:
            critic = (lambda x: self._D(x, c))
            pen = gradient_penalty(critic, real, fake, kind=self.penalty, weight=1.0, center=self.penalty_center,
                                   generator=self.generator)
            loss = loss + pen * (self.penalty_weight * self.penalty_interval)
            out["penalty"] = pen.detach()
        self.opt_D.zero_grad(set_to_none=True)
        loss.backward()
        self.sync_grads(self.D)
        self.opt_D.step()
        if self.weight_clip is not None:
            clip_weights_(self.D, self.weight_clip)
        out["d"] = loss.detach()

        # generator, after every d_steps-th critic step
        if (self.num_steps + 1) % self.d_steps == 0:
            self.G.requires_grad_(True)
            self.D.requires_grad_(False)
            fake, codes = self._generate(n, c)
            lf_, o_f = _split(self._D(fake, c))
            loss = g_loss(self.loss, lf_).mean()
            out["g_adv"] = loss.detach()
            if o_f is not None:
                loss = loss + self._acgan(o_f, aux_labels) + self._info(o_f, codes)
            self.opt_G.zero_grad(set_to_none=True)
            loss.backward()
            self.sync_grads(self.G)
            self.opt_G.step()
            out["g"] = loss.detach()
            if self.ema is not None:
                self.ema.update(self.G)
        self.D.requires_grad_(True)
        self.G.requires_grad_(True)
        self.sync_buffers(self.G)
        self.sync_buffers(self.D)
        self.num_steps += 1
        return out

    @torch.no_grad()
    def sample(self, n: int, labels: Optional[torch.Tensor] = None,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        z = torch.randn(n, self.G.z_dim, generator=generator).to(self.device)
        G = self.G_ema
        was = G.training
        G.eval()
        try:
            kw = {}
            if self.has_codes:
                kw["codes"] = G.sample_codes(n, generator=generator, device=self.device)
            c = labels.to(self.device) if (labels is not None and getattr(G, "c_dim", 0)) else None
            return G(z, c, **kw)
        finally:
            G.train(was)
