"""The base of fastgen's GAN training recipes.

A recipe owns the networks (``G``, ``D`` and any others), their optimizers, the EMA of the
generator and the per-step logic (losses, regularisers, D steps per G step); :class:`GANTrainer
<fastgen.train.GANTrainer>` drives one over a dataset with progress, logging, sample grids,
checkpoints and torchrun data parallelism.

Data parallelism: every process runs the same recipe on its slice of the global batch. All the
randomness of a step (latents, mixing decisions, penalty noise) is drawn for the **global** batch
from the recipe's generator, identical on every process, and each process takes its slice;
gradients are averaged over the processes before every optimizer step (one flattened all-reduce
per network) and floating buffers (e.g. StyleGAN's tracked mean w) are averaged after each step.
So N processes follow a single process on the same global batch, except for layers that mix
samples within a process's batch (minibatch standard deviation, BatchNorm statistics).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..train.ema import EMA


class GANRecipe:
    """Base class of the GAN training recipes (see the module docstring)."""

    name = "gan"
    G: nn.Module
    D: nn.Module
    ema: Optional[EMA] = None
    generator: torch.Generator
    num_steps: int = 0
    rank: int = 0
    world_size: int = 1
    bf16: bool = False  # run the step's forward passes under bf16 autocast (weights and optimizers stay fp32)

    # ------------------------------------------------------------------ what a checkpoint holds
    def models(self) -> Dict[str, nn.Module]:
        """The trained networks by name."""
        return {"G": self.G, "D": self.D}

    def optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def extra_state(self) -> Dict[str, torch.Tensor]:
        """Recipe state besides networks, EMA and optimizers (counters, running means) as tensors."""
        return {"num_steps": torch.tensor(self.num_steps)}

    def load_extra_state(self, state: Dict[str, torch.Tensor]) -> None:
        self.num_steps = int(state["num_steps"])

    @property
    def config(self) -> dict:
        """The recipe's hyper-parameters (JSON-serialisable)."""
        return {}

    @property
    def conditional(self) -> bool:
        return bool(getattr(self.G, "c_dim", 0))

    @property
    def num_classes(self) -> Optional[int]:
        return getattr(self.G, "c_dim", 0) or None

    def expected_image_shape(self):
        """The (C, H, W) of the dataset's images this recipe trains on, or None if it does not know."""
        res, ch = getattr(self.G, "img_resolution", None), getattr(self.G, "img_channels", None)
        return (ch, res, res) if res is not None and ch is not None else None

    @property
    def device(self) -> torch.device:
        return next(self.G.parameters()).device

    @property
    def G_ema(self) -> nn.Module:
        """The generator to sample with: the EMA copy (eval mode), or G without an EMA."""
        return self.ema.module if self.ema is not None else self.G

    # ------------------------------------------------------------------ training and sampling
    def step(self, real: torch.Tensor, labels: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """One training step on this process's slice of the global batch; the detached losses by name."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, labels: Optional[torch.Tensor] = None,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``n`` images from the EMA generator (latents from ``generator``)."""
        z = torch.randn(n, self.G.z_dim, generator=generator).to(self.device)
        G = self.G_ema
        was = G.training
        G.eval()
        try:
            return G(z, None if labels is None else labels.to(self.device))
        finally:
            G.train(was)

    def autocast(self):
        """``torch.autocast`` to bfloat16 when the recipe was built with ``bf16=True`` (else a no-op)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    # ------------------------------------------------------------------ data parallelism
    def set_distributed(self, rank: int, world_size: int) -> None:
        """Join a data-parallel run: every process starts from process 0's networks and EMA."""
        self.rank, self.world_size = rank, world_size
        if world_size > 1:
            for m in list(self.models().values()) + ([self.ema.module] if self.ema is not None else []):
                for t in list(m.parameters()) + list(m.buffers()):
                    dist.broadcast(t.data, src=0)

    def global_randn(self, n_local: int, *shape: int) -> torch.Tensor:
        """Gaussian noise for the global batch from the recipe's generator; this process's slice."""
        full = torch.randn(n_local * self.world_size, *shape, generator=self.generator)
        return full[self.rank * n_local:(self.rank + 1) * n_local].to(self.device)

    def global_randint(self, high: int, n_local: int) -> torch.Tensor:
        """Integers in [0, high) for the global batch from the recipe's generator; this process's slice."""
        full = torch.randint(0, high, (n_local * self.world_size,), generator=self.generator)
        return full[self.rank * n_local:(self.rank + 1) * n_local].to(self.device)

    def sync_grads(self, module: nn.Module) -> None:
        """Average ``module``'s gradients over the processes (one flattened all-reduce)."""
        if self.world_size <= 1:
            return
        # the same parameters have gradients on every process (the same code ran on each)
        params = [p for p in module.parameters() if p.requires_grad and p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        i = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[i:i + n].view_as(p).clone()
            i += n

    def sync_buffers(self, module: nn.Module) -> None:
        """Average ``module``'s floating buffers over the processes (running means)."""
        if self.world_size <= 1:
            return
        for b in module.buffers():
            if b.is_floating_point():
                dist.all_reduce(b.data)
                b.data /= self.world_size

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size <= 1:
            return t
        out = t.detach().clone()
        dist.all_reduce(out)
        return out / self.world_size
