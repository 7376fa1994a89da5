r"""Image-to-image translation recipes: pix2pix (Isola et al. 2017) and CycleGAN (Zhu et al. 2017).

Batches are two-domain images stacked along channels (see :mod:`fastgen.data`: ``PairedDataset``,
``UnpairedDataset``): the first ``channels_a`` channels are domain A, the rest domain B.

pix2pix (paired): G maps A to B; a conditional PatchGAN judges (A, B) pairs patch by patch.

    loss_D = (d(D(b | a) real) + d(D(G(a) | a) fake)) / 2         (per patch, averaged)
    loss_G = g(D(G(a) | a)) + l1_weight |G(a) - b|_1                (l1_weight = 100)

CycleGAN (unpaired): G_AB, G_BA and PatchGANs D_A, D_B (unconditional), least-squares losses,

    loss_G = g(D_B(G_AB(a))) + g(D_A(G_BA(b)))
             + lambda_cycle (|G_BA(G_AB(a)) - a|_1 + |G_AB(G_BA(b)) - b|_1)
             + lambda_cycle lambda_identity (|G_AB(b) - b|_1 + |G_BA(a) - a|_1)
    loss_D_X = (d(D_X(x) real) + d(D_X(pool_X(fake x)) fake)) / 2

with D fed from a history of 50 generated images (:class:`fastgen.models.ImagePool`).
"""
from __future__ import annotations

import itertools
import numbers
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from ..train.ema import EMA
from .losses import LOSSES, d_loss, g_loss
from .recipe import GANRecipe


def _check(owner: str, name: str, v, lo=0.0):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or v < lo:
        raise ValueError(f"{owner}: {name} must be a number >= {lo}, got {v!r}")
    return float(v)


def _betas(owner: str, betas):
    if len(betas) != 2 or not all(isinstance(b, numbers.Real) and 0 <= b < 1 for b in betas):
        raise ValueError(f"{owner}: betas must be two numbers in [0, 1), got {betas!r}")
    return tuple(float(b) for b in betas)


class _Translation(GANRecipe):
    """What the two translation recipes share: splitting batches, the sample grid, the generator."""

    channels_a: int
    grid_columns = 3  # sample grids: one (A, G(A), B) triple per row

    def _split(self, batch: torch.Tensor):
        if not isinstance(batch, torch.Tensor) or batch.dim() != 4 or batch.shape[1] <= self.channels_a:
            raise ValueError(f"{type(self).__name__}.step: batch must be (N, C_a + C_b, H, W) with C_a = "
                             f"{self.channels_a} (a PairedDataset / UnpairedDataset batch), got "
                             f"{tuple(batch.shape) if isinstance(batch, torch.Tensor) else batch!r}")
        batch = batch.to(self.device)
        if self._sample_inputs is None:  # a fixed batch for the sample grids
            self._sample_inputs = batch[:8].detach().clone()
        return batch[:, :self.channels_a], batch[:, self.channels_a:]

    @property
    def conditional(self) -> bool:
        return False

    @property
    def num_classes(self):
        return None

    def expected_image_shape(self):
        return None

    def extra_state(self) -> Dict[str, torch.Tensor]:
        st = {"num_steps": torch.tensor(self.num_steps), "generator": self.generator.get_state()}
        if self._sample_inputs is not None:
            st["sample_inputs"] = self._sample_inputs
        return st

    def load_extra_state(self, state: Dict[str, torch.Tensor]) -> None:
        self.num_steps = int(state["num_steps"])
        self.generator.set_state(state["generator"].cpu())
        self._sample_inputs = state["sample_inputs"].to(self.device) if "sample_inputs" in state else None

    def _translate(self, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, labels=None, generator=None) -> torch.Tensor:
        """A grid of inputs and translations: rows of (A, G(A)[, B]) for the first training batch's
        images (3-channel views; 1-channel images are repeated)."""
        if self._sample_inputs is None:
            raise RuntimeError(f"{type(self).__name__}.sample: no batch seen yet (call step first)")
        x = self._sample_inputs[:max(1, n // 3)]
        a, b = x[:, :self.channels_a], x[:, self.channels_a:]
        out = self._translate(a)
        rgb = lambda t: t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t[:, :3]  # noqa: E731
        return torch.stack([rgb(a), rgb(out), rgb(b)], dim=1).flatten(0, 1)


class Pix2PixTraining(_Translation):
    """pix2pix (see the module docstring).

    Args:
        G: an A -> B generator (e.g. :class:`fastgen.models.UNetGenerator`).
        D: a conditional patch discriminator ``D(b, condition=a)`` (e.g. :class:`PatchGANDiscriminator`
            with ``in_channels = C_a + C_b``).
        batch_size: images per step. channels_a: channels of domain A (default ``G.in_channels``).
        l1_weight: weight of the L1 reconstruction (100). loss: the adversarial loss (``nonsaturating``;
            ``lsgan`` also common). lr, betas: Adam (2e-4, (0.5, 0.999)). ema_decay: EMA of G;
            ema_warmup: ramp its decay up as GANTraining does.
    """

    name = "pix2pix"

    def __init__(self, G: nn.Module, D: nn.Module, *, batch_size: int, channels_a: Optional[int] = None,
                 l1_weight: float = 100.0, loss: str = "nonsaturating", lr: float = 2e-4,
                 betas: Sequence[float] = (0.5, 0.999), ema_decay: Optional[float] = None, ema_warmup: bool = True,
                 bf16: bool = False, generator: Optional[torch.Generator] = None):
        o = "Pix2PixTraining"
        if loss not in LOSSES:
            raise ValueError(f"{o}: loss must be one of {', '.join(LOSSES)}; got {loss!r}")
        self.G, self.D = G, D
        self.bf16 = bool(bf16)
        self.channels_a = int(channels_a if channels_a is not None else getattr(G, "in_channels"))
        self.l1_weight, self.loss = _check(o, "l1_weight", l1_weight), loss
        betas = _betas(o, betas)
        self.opt_G = torch.optim.Adam(G.parameters(), lr=_check(o, "lr", lr), betas=betas)
        self.opt_D = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
        self.ema = EMA(G, ema_decay, warmup=bool(ema_warmup)) if ema_decay is not None else None
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.num_steps, self._sample_inputs = 0, None
        self._config = dict(batch_size=batch_size, channels_a=self.channels_a, l1_weight=l1_weight, loss=loss, lr=lr,
                            betas=list(betas), ema_decay=ema_decay, ema_warmup=bool(ema_warmup),
                            bf16=self.bf16)

    @property
    def config(self) -> dict:
        return dict(self._config)

    def optimizers(self):
        return {"G": self.opt_G, "D": self.opt_D}

    def _translate(self, a):
        return self.G_ema(a)

    def step(self, batch: torch.Tensor, labels=None) -> Dict[str, torch.Tensor]:
        with self.autocast():
            return self._step(batch)

    def _step(self, batch: torch.Tensor) -> Dict[str, torch.Tensor]:
        a, b = self._split(batch)
        self.G.train()
        self.D.train()
        fake = self.G(a).to(b.dtype)  # (bf16 under autocast; D concatenates it with the fp32 condition)
        # D: real pairs vs generated pairs, halved (pix2pix slows D down relative to G)
        self.D.requires_grad_(True)
        loss_d = 0.5 * d_loss(self.loss, self.D(b, a), self.D(fake.detach(), a)).mean()
        self.opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        self.sync_grads(self.D)
        self.opt_D.step()
        # G: fool D and stay close to the target
        self.D.requires_grad_(False)
        adv = g_loss(self.loss, self.D(fake, a)).mean()
        l1 = (fake - b).abs().mean()
        loss_g = adv + self.l1_weight * l1
        self.opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        self.sync_grads(self.G)
        self.opt_G.step()
        self.D.requires_grad_(True)
        if self.ema is not None:
            self.ema.update(self.G)
        self.sync_buffers(self.G)
        self.sync_buffers(self.D)
        self.num_steps += 1
        return {"d": loss_d.detach(), "g": loss_g.detach(), "g_adv": adv.detach(), "l1": l1.detach()}


class CycleGANTraining(_Translation):
    """CycleGAN (see the module docstring).

    Args:
        G_AB, G_BA: the two generators (e.g. :class:`fastgen.models.ResnetGenerator`).
        D_A, D_B: patch discriminators of domains A and B (:class:`PatchGANDiscriminator` with
            ``in_channels`` = that domain's channels).
        batch_size: images per step. channels_a: channels of domain A (default ``G_AB.in_channels``).
        lambda_cycle (10), lambda_identity (0.5, relative to lambda_cycle; 0: off), loss (``lsgan``),
        lr, betas (2e-4, (0.5, 0.999)), pool_size (50): as the paper.
    """

    name = "cyclegan"

    def __init__(self, G_AB: nn.Module, G_BA: nn.Module, D_A: nn.Module, D_B: nn.Module, *, batch_size: int,
                 channels_a: Optional[int] = None, lambda_cycle: float = 10.0, lambda_identity: float = 0.5,
                 loss: str = "lsgan", lr: float = 2e-4, betas: Sequence[float] = (0.5, 0.999), pool_size: int = 50,
                 bf16: bool = False, generator: Optional[torch.Generator] = None):
        from ..models.cyclegan import ImagePool

        o = "CycleGANTraining"
        if loss not in LOSSES:
            raise ValueError(f"{o}: loss must be one of {', '.join(LOSSES)}; got {loss!r}")
        self.G_AB, self.G_BA, self.D_A, self.D_B = G_AB, G_BA, D_A, D_B
        self.G, self.D = G_AB, D_B
        self.bf16 = bool(bf16)
        self.channels_a = int(channels_a if channels_a is not None else getattr(G_AB, "in_channels"))
        self.lambda_cycle = _check(o, "lambda_cycle", lambda_cycle)
        self.lambda_identity = _check(o, "lambda_identity", lambda_identity)
        self.loss = loss
        betas = _betas(o, betas)
        self.opt_G = torch.optim.Adam(itertools.chain(G_AB.parameters(), G_BA.parameters()),
                                      lr=_check(o, "lr", lr), betas=betas)
        self.opt_D = torch.optim.Adam(itertools.chain(D_A.parameters(), D_B.parameters()), lr=lr, betas=betas)
        self.pool_A, self.pool_B = ImagePool(pool_size), ImagePool(pool_size)
        self.ema = None
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.num_steps, self._sample_inputs = 0, None
        self._config = dict(batch_size=batch_size, channels_a=self.channels_a, lambda_cycle=lambda_cycle,
                            lambda_identity=lambda_identity, loss=loss, lr=lr, betas=list(betas), pool_size=pool_size,
                            bf16=self.bf16)

    @property
    def config(self) -> dict:
        return dict(self._config)

    def models(self) -> Dict[str, nn.Module]:
        return {"G_AB": self.G_AB, "G_BA": self.G_BA, "D_A": self.D_A, "D_B": self.D_B}

    def optimizers(self):
        return {"G": self.opt_G, "D": self.opt_D}

    def extra_state(self) -> Dict[str, torch.Tensor]:
        st = super().extra_state()
        for name, pool in (("pool_A", self.pool_A), ("pool_B", self.pool_B)):
            st.update({f"{name}/{k}": v for k, v in pool.state_dict().items()})
        return st

    def load_extra_state(self, state: Dict[str, torch.Tensor]) -> None:
        super().load_extra_state(state)
        for name, pool in (("pool_A", self.pool_A), ("pool_B", self.pool_B)):
            pool.load_state_dict({k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + "/")})

    def _translate(self, a):
        was = self.G_AB.training
        self.G_AB.eval()
        try:
            return self.G_AB(a)
        finally:
            self.G_AB.train(was)

    def step(self, batch: torch.Tensor, labels=None) -> Dict[str, torch.Tensor]:
        with self.autocast():
            return self._step(batch)

    def _step(self, batch: torch.Tensor) -> Dict[str, torch.Tensor]:
        a, b = self._split(batch)
        for m in self.models().values():
            m.train()
        # generators (discriminators frozen)
        self.D_A.requires_grad_(False)
        self.D_B.requires_grad_(False)
        fake_b, fake_a = self.G_AB(a), self.G_BA(b)
        adv = g_loss(self.loss, self.D_B(fake_b)).mean() + g_loss(self.loss, self.D_A(fake_a)).mean()
        cycle = (self.G_BA(fake_b) - a).abs().mean() + (self.G_AB(fake_a) - b).abs().mean()
        loss_g = adv + self.lambda_cycle * cycle
        out = {"g_adv": adv.detach(), "cycle": cycle.detach()}
        if self.lambda_identity > 0:
            if a.shape[1] != b.shape[1]:
                raise ValueError("CycleGANTraining: the identity loss needs domains with the same channels "
                                 "(set lambda_identity=0)")
            idt = (self.G_AB(b) - b).abs().mean() + (self.G_BA(a) - a).abs().mean()
            loss_g = loss_g + self.lambda_cycle * self.lambda_identity * idt
            out["identity"] = idt.detach()
        self.opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        self.sync_grads(self.G_AB)
        self.sync_grads(self.G_BA)
        self.opt_G.step()
        # discriminators, on a history of generated images
        self.D_A.requires_grad_(True)
        self.D_B.requires_grad_(True)
        pa = self.pool_A.query(fake_a.detach(), generator=self.generator)
        pb = self.pool_B.query(fake_b.detach(), generator=self.generator)
        loss_da = 0.5 * d_loss(self.loss, self.D_A(a), self.D_A(pa)).mean()
        loss_db = 0.5 * d_loss(self.loss, self.D_B(b), self.D_B(pb)).mean()
        self.opt_D.zero_grad(set_to_none=True)
        (loss_da + loss_db).backward()
        self.sync_grads(self.D_A)
        self.sync_grads(self.D_B)
        self.opt_D.step()
        for m in self.models().values():
            self.sync_buffers(m)
        self.num_steps += 1
        out.update(g=loss_g.detach(), d_a=loss_da.detach(), d_b=loss_db.detach())
        return out
