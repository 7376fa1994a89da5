r"""StyleGAN2's training recipe (Karras et al. 2020) for fastgen's :class:`~fastgen.models.Generator`
and :class:`~fastgen.models.Discriminator`.

    recipe = StyleGANTraining(G, D, batch_size=32)
    for real, labels in batches:
        losses = recipe.step(real, labels)        # {"g": ..., "d": ..., "r1": ..., "pl": ...}
    images = recipe.G_ema(z, labels, truncation_psi=0.7)

One :meth:`StyleGANTraining.step` runs the four phases of StyleGAN2:

* G main: non-saturating logistic loss ``softplus(-D(G(z, c)))`` (with style mixing; the labels of
  generated images are drawn uniformly over the classes), Adam step;
* G reg (every ``pl_interval`` steps, lazily): path-length penalty on a ``1 / pl_batch_shrink``
  batch, weighted by ``pl_weight * pl_interval``, Adam step;
* D main: ``softplus(D(G(z))) + softplus(-D(x))``, Adam step;
* D reg (every ``r1_interval`` steps, lazily): R1 ``gamma / 2 * ||grad_x D(x)||^2`` weighted by the
  interval, Adam step. R1 differentiates D twice: fastgen's bias_act and upfirdn2d keep both
  orders on fused kernels.

Class-conditional models can be trained with a *conditioning transition* (``cond_transition=(start,
end)`` in thousands of images): every label given to G and D is the soft label
``lam * onehot(c) + (1 - lam) / c_dim`` with ``lam`` ramping linearly from 0 at ``start`` kimg to 1 at
``end``. Before ``start`` every sample carries the same (uniform) label, so G and D train as an
unconditional GAN; the classes then fade in. Conditional StyleGAN2 on limited data collapses to a
few images per class when conditioned from the first step (Shahbazi et al. 2023, "Collapse by
Conditioning"); starting unconditionally and injecting the labels gradually avoids it. This is
fastgen's soft-label form of that idea: the networks are StyleGAN2's, unchanged (no extra heads),
and once ``lam`` is 1 the labels are plain one-hot.

As in the paper, lazy regularisation rescales Adam's learning rate and betas by ``c = k / (k + 1)``
(``lr c``, ``beta^c``), and the generator's EMA has a half-life of ``ema_kimg`` thousand images.
All the randomness (latents, mixing, penalty noise) comes from the recipe's ``generator``; the
synthesis noise inputs draw from the global RNG.
"""
from __future__ import annotations

import numbers
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from ..train.ema import EMA
from .losses import PathLengthPenalty, d_logistic_loss, g_nonsaturating_loss, r1_penalty
from .recipe import GANRecipe


def _num(name: str, v, lo=None, hi=None, integer: bool = False, allow_none: bool = False):
    if v is None and allow_none:
        return v
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(v, bool) or not isinstance(v, kind) or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = "".join([f" >= {lo}" if lo is not None else "", f" <= {hi}" if hi is not None else ""])
        raise ValueError(f"StyleGANTraining: {name} must be {'an int' if integer else 'a number'}{rng}, got {v!r}")
    return v


def _adam(params, lr: float, betas: Sequence[float], eps: float, interval: int) -> torch.optim.Adam:
    c = interval / (interval + 1) if interval > 1 else 1.0  # lazy regularisation (StyleGAN2, appendix B)
    return torch.optim.Adam(params, lr=lr * c, betas=(betas[0] ** c, betas[1] ** c), eps=eps)


class StyleGANTraining(GANRecipe):
    """StyleGAN2's losses, lazy regularisation, optimizers and generator EMA (see the module docstring);
    a :class:`~fastgen.gan.recipe.GANRecipe` (drive it with :class:`fastgen.train.GANTrainer`).

    Args:
        G, D: the generator and discriminator (same device).
        batch_size: images per step (for the EMA half-life).
        lr, betas, eps: Adam (StyleGAN2: 0.0025, (0, 0.99)). g_lr / d_lr override lr per network.
        r1_gamma: R1 weight (0: off). r1_interval: lazy R1 every k steps (1: every step, not lazy).
        pl_weight: path-length weight (0: off). pl_interval, pl_batch_shrink, pl_decay: as StyleGAN2.
        style_mixing_prob: probability of mixing two latents' ws.
        ema_kimg: half-life of the generator EMA in thousands of images (None: no EMA; G_ema is G).
        ema_rampup: cap the half-life at ``ema_rampup * images seen`` early in training (None: off).
        bf16: forward passes under bf16 autocast (weights, optimizers and the fused ops' math stay fp32).
        cond_transition: ``(start_kimg, end_kimg)``: fade the class labels in from unconditional training
            (see the module docstring; conditional models only). None: one-hot labels from the start.
        generator: a CPU torch.Generator for the latents and penalty noise (default: seeded with 0).
    """

    name = "stylegan2"

    def __init__(self, G: nn.Module, D: nn.Module, *, batch_size: int, lr: float = 0.0025,
                 betas: Sequence[float] = (0.0, 0.99), eps: float = 1e-8, g_lr: Optional[float] = None,
                 d_lr: Optional[float] = None, r1_gamma: float = 10.0, r1_interval: int = 16, pl_weight: float = 2.0,
                 pl_interval: int = 4, pl_batch_shrink: int = 2, pl_decay: float = 0.01,
                 style_mixing_prob: float = 0.9, ema_kimg: Optional[float] = 10.0, ema_rampup: Optional[float] = 0.05,
                 bf16: bool = False, cond_transition: Optional[Sequence[float]] = None,
                 generator: Optional[torch.Generator] = None):
        for name in ("z_dim", "c_dim", "num_ws", "mapping", "synthesis"):
            if not hasattr(G, name):
                raise TypeError(f"StyleGANTraining: G must be a fastgen.models.Generator (missing {name!r})")
        if not isinstance(D, nn.Module):
            raise TypeError(f"StyleGANTraining: D must be an nn.Module, got {type(D).__name__}")
        _num("batch_size", batch_size, 1, integer=True)
        for name, v in (("lr", lr), ("eps", eps), ("r1_gamma", r1_gamma), ("pl_weight", pl_weight)):
            _num(name, v, 0)
        _num("g_lr", g_lr, 0, allow_none=True)
        _num("d_lr", d_lr, 0, allow_none=True)
        if len(betas) != 2 or not all(isinstance(b, numbers.Real) and 0 <= b < 1 for b in betas):
            raise ValueError(f"StyleGANTraining: betas must be two numbers in [0, 1), got {betas!r}")
        for name, v in (("r1_interval", r1_interval), ("pl_interval", pl_interval),
                        ("pl_batch_shrink", pl_batch_shrink)):
            _num(name, v, 1, integer=True)
        _num("pl_decay", pl_decay, 0, 1)
        _num("style_mixing_prob", style_mixing_prob, 0, 1)
        _num("ema_kimg", ema_kimg, 0, allow_none=True)
        _num("ema_rampup", ema_rampup, 0, allow_none=True)
        if cond_transition is not None:
            if not G.c_dim:
                raise ValueError("StyleGANTraining: cond_transition needs a class-conditional generator (c_dim > 0)")
            if (isinstance(cond_transition, (str, bytes)) or not isinstance(cond_transition, Sequence)
                    or len(cond_transition) != 2):
                raise ValueError(f"StyleGANTraining: cond_transition must be (start_kimg, end_kimg), got "
                                 f"{cond_transition!r}")
            start, end = (_num(f"cond_transition[{i}]", v, 0) for i, v in enumerate(cond_transition))
            if end < start:
                raise ValueError(f"StyleGANTraining: cond_transition must have start <= end, got {cond_transition!r}")
            cond_transition = (float(start), float(end))
        self.G, self.D = G, D
        self.bf16 = bool(bf16)
        self.batch_size = batch_size
        self._config = dict(batch_size=batch_size, lr=lr, betas=list(betas), eps=eps, g_lr=g_lr, d_lr=d_lr,
                            r1_gamma=r1_gamma, r1_interval=r1_interval, pl_weight=pl_weight, pl_interval=pl_interval,
                            pl_batch_shrink=pl_batch_shrink, pl_decay=pl_decay, style_mixing_prob=style_mixing_prob,
                            ema_kimg=ema_kimg, ema_rampup=ema_rampup, bf16=self.bf16,
                            cond_transition=None if cond_transition is None else list(cond_transition))
        self.cond_transition = cond_transition
        self.r1_gamma, self.r1_interval = float(r1_gamma), r1_interval
        self.pl_weight, self.pl_interval, self.pl_batch_shrink = float(pl_weight), pl_interval, pl_batch_shrink
        self.style_mixing_prob, self.ema_kimg, self.ema_rampup = float(style_mixing_prob), ema_kimg, ema_rampup
        g_reg = pl_interval if pl_weight > 0 else 1
        d_reg = r1_interval if r1_gamma > 0 else 1
        self.opt_G = _adam(G.parameters(), lr if g_lr is None else g_lr, betas, eps, g_reg)
        self.opt_D = _adam(D.parameters(), lr if d_lr is None else d_lr, betas, eps, d_reg)
        self.pl = PathLengthPenalty(pl_decay).to(self.device)
        self.ema = EMA(G, 0.0, warmup=False) if ema_kimg is not None else None
        if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != "cpu"):
            raise ValueError("StyleGANTraining: generator must be a CPU torch.Generator (latents are drawn on the CPU "
                             "for the global batch, then moved)")
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.num_steps = 0
        self.num_images = 0

    @property
    def config(self) -> dict:
        return dict(self._config)

    def optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_G, "D": self.opt_D}

    def extra_state(self) -> Dict[str, torch.Tensor]:
        return {"num_steps": torch.tensor(self.num_steps), "num_images": torch.tensor(self.num_images),
                "pl_mean": self.pl.pl_mean.detach().clone(), "generator": self.generator.get_state()}

    def load_extra_state(self, state: Dict[str, torch.Tensor]) -> None:
        self.num_steps, self.num_images = int(state["num_steps"]), int(state["num_images"])
        self.pl.pl_mean.copy_(state["pl_mean"])
        self.generator.set_state(state["generator"].cpu())

    def _latents(self, n: int) -> torch.Tensor:
        return self.global_randn(n, self.G.z_dim)

    def _gen_labels(self, n: int) -> Optional[torch.Tensor]:
        """Class labels of generated images: uniform over the classes (global batch, this slice)."""
        return self.global_randint(self.G.c_dim, n) if self.G.c_dim else None

    @property
    def cond_strength(self) -> float:
        """The weight ``lam`` of the one-hot labels now (1.0 without a conditioning transition)."""
        if self.cond_transition is None:
            return 1.0
        start, end = self.cond_transition
        kimg = self.num_images / 1000
        if kimg >= end:
            return 1.0
        return 0.0 if kimg <= start else (kimg - start) / (end - start)

    def _soft(self, c: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The labels the networks see: ``lam * onehot(c) + (1 - lam) / c_dim`` during the transition."""
        lam = self.cond_strength
        if c is None or lam >= 1.0:
            return c
        k = self.G.c_dim
        onehot = c.float() if c.is_floating_point() else torch.nn.functional.one_hot(c.long(), k).float()
        return onehot * lam + (1.0 - lam) / k

    def _generate(self, z: torch.Tensor, c: Optional[torch.Tensor], update_w_avg: bool = False):
        ws = self.G.mapping(z, c, update_w_avg=update_w_avg)
        if self.style_mixing_prob > 0:
            u = float(torch.rand((), generator=self.generator))
            if u < self.style_mixing_prob and self.G.num_ws > 1:
                cutoff = int(torch.randint(1, self.G.num_ws, (), generator=self.generator))
                ws2 = self.G.mapping(self._latents(z.shape[0]), c)
                ws = torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)
        return self.G.synthesis(ws), ws

    def _check_batch(self, real: torch.Tensor, c: Optional[torch.Tensor]):
        if not isinstance(real, torch.Tensor) or real.dim() != 4:
            raise ValueError(f"StyleGANTraining.step: real must be an (N, C, H, W) tensor, got "
                             f"{tuple(real.shape) if isinstance(real, torch.Tensor) else real!r}")
        if self.G.c_dim and c is None:
            raise ValueError("StyleGANTraining.step: the models are class-conditional; pass the labels c")
        if not self.G.c_dim and c is not None:
            raise ValueError("StyleGANTraining.step: labels given but the generator is unconditional (c_dim=0)")
        if c is not None and c.shape[0] != real.shape[0]:
            raise ValueError(f"StyleGANTraining.step: c has {c.shape[0]} labels for {real.shape[0]} images")
        return real.to(self.device), (None if c is None else c.to(self.device))

    def step(self, real: torch.Tensor, c: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """One training step on a batch of real images (in [-1, 1]) and their labels; returns the
        detached losses of the phases that ran (``g``, ``pl``, ``d``, ``d_real``, ``d_fake``, ``r1``)."""
        with self.autocast():
            return self._step(real, c)

    def _step(self, real: torch.Tensor, c: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        real, c = self._check_batch(real, c)
        n, out = real.shape[0], {}
        self.G.train()
        self.D.train()

        # G main: non-saturating loss through a frozen D
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        real_c = self._soft(c)
        gen_c = self._soft(self._gen_labels(n))
        img, _ = self._generate(self._latents(n), gen_c, update_w_avg=True)
        loss = g_nonsaturating_loss(self.D(img, gen_c)).mean()
        self.opt_G.zero_grad(set_to_none=True)
        loss.backward()
        self.sync_grads(self.G)
        self.opt_G.step()
        out["g"] = loss.detach()

        # G reg: lazy path-length regularisation
        if self.pl_weight > 0 and self.num_steps % self.pl_interval == 0:
            m = max(n // self.pl_batch_shrink, 1)
            img, ws = self._generate(self._latents(m), self._soft(self._gen_labels(m)))
            noise = self.global_randn(m, *img.shape[1:])
            pen = self.pl(img, ws, noise=noise, reduce_mean=self.all_reduce_mean).mean()
            self.opt_G.zero_grad(set_to_none=True)
            (pen * (self.pl_weight * self.pl_interval)).backward()
            self.sync_grads(self.G)
            self.opt_G.step()
            out["pl"] = pen.detach()

        # D main: logistic loss on fakes (G frozen) and reals; R1 folded in when not lazy
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        with torch.no_grad():
            gen_c = self._soft(self._gen_labels(n))
            fake, _ = self._generate(self._latents(n), gen_c)
        r1_now = self.r1_gamma > 0 and self.num_steps % self.r1_interval == 0
        real_in = real.detach().requires_grad_(r1_now and self.r1_interval == 1)
        real_logits, fake_logits = self.D(real_in, real_c), self.D(fake, gen_c)
        d_real, d_fake = torch.nn.functional.softplus(-real_logits).mean(), torch.nn.functional.softplus(fake_logits).mean()
        loss = d_logistic_loss(real_logits, fake_logits).mean()
        if r1_now and self.r1_interval == 1:
            r1 = r1_penalty(real_logits, real_in).mean()
            loss = loss + r1 * (self.r1_gamma / 2)
            out["r1"] = r1.detach()
        self.opt_D.zero_grad(set_to_none=True)
        loss.backward()
        self.sync_grads(self.D)
        self.opt_D.step()
        out.update(d=loss.detach(), d_real=d_real.detach(), d_fake=d_fake.detach())

        # D reg: lazy R1
        if r1_now and self.r1_interval > 1:
            real_in = real.detach().requires_grad_(True)
            r1 = r1_penalty(self.D(real_in, real_c), real_in).mean()
            self.opt_D.zero_grad(set_to_none=True)
            (r1 * (self.r1_gamma / 2 * self.r1_interval)).backward()
            self.sync_grads(self.D)
            self.opt_D.step()
            out["r1"] = r1.detach()

        self.G.requires_grad_(True)
        self.sync_buffers(self.G)  # the tracked mean w: the global batch's
        self.num_steps += 1
        self.num_images += n * self.world_size
        if self.ema is not None:
            nimg = self.ema_kimg * 1000
            if self.ema_rampup is not None:
                nimg = min(nimg, self.num_images * self.ema_rampup)
            self.ema.decay = ema_beta(n, nimg / 1000)
            self.ema.update(self.G)
        return out

    def state_dict(self) -> Dict[str, object]:
        """Everything an exact resume needs besides the global RNG (see also :class:`fastgen.train.GANTrainer`)."""
        return {"models": {k: m.state_dict() for k, m in self.models().items()},
                "G_ema": None if self.ema is None else self.ema.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
                "extra": self.extra_state()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        for k, m in self.models().items():
            m.load_state_dict(state["models"][k])
        if self.ema is not None and state.get("G_ema") is not None:
            self.ema.load_state_dict(state["G_ema"])
        for k, o in self.optimizers().items():
            o.load_state_dict(state["optimizers"][k])
        self.load_extra_state(state["extra"])


def ema_beta(batch_size: int, ema_kimg: float) -> float:
    """The per-step EMA decay whose half-life is ``ema_kimg`` thousand images."""
    return 0.5 ** (batch_size / max(ema_kimg * 1000, 1e-8))


