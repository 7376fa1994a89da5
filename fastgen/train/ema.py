"""Exponential moving average of a model's weights (the weights diffusion models and GANs sample with)."""
from __future__ import annotations

import copy
import numbers
from typing import Dict

import torch
from torch import nn


class EMA(nn.Module):
    """Keeps ``module``, a frozen eval-mode copy of ``model`` whose floating parameters follow
    ``ema = decay * ema + (1 - decay) * param`` after every :meth:`update`.

    Args:
        model: the trained model (not a DDP wrapper: pass ``ddp.module``).
        decay: the EMA decay in [0, 1).
        warmup: use ``min(decay, (1 + n) / (10 + n))`` at the n-th update (as in ADM and diffusers),
            so early averages are not dominated by the random initialisation.
        update_every: average every k-th call of :meth:`update` (the decay then applies per update).

    Buffers (BatchNorm statistics, ...) are copied, not averaged. The update is one multi-tensor
    ``lerp`` over all parameters (``torch._foreach_lerp_``). ``state_dict`` holds the averaged
    model's tensors under the model's own keys plus ``num_updates``, so a checkpoint's ``ema/``
    part loads straight into a fresh model with :meth:`copy_to`.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, *, warmup: bool = True, update_every: int = 1):
        super().__init__()
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            raise TypeError("EMA: pass the wrapped module (ddp.module), not the DDP/DataParallel wrapper")
        if not isinstance(model, nn.Module):
            raise TypeError(f"EMA: model must be an nn.Module, got {type(model).__name__}")
        if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay must be a number in [0, 1), got {decay!r}")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"EMA: update_every must be an int >= 1, got {update_every!r}")
        self.decay, self.warmup, self.update_every = float(decay), bool(warmup), update_every
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("num_calls", torch.zeros((), dtype=torch.long))
        self._n_updates = self._n_calls = 0  # host mirrors of the buffers: no device sync per update

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._n_updates, self._n_calls = int(self.num_updates), int(self.num_calls)

    def current_decay(self) -> float:
        n = self._n_updates
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    def _pairs(self, model: nn.Module):
        src = dict(model.named_parameters())
        dst = dict(self.module.named_parameters())
        if src.keys() != dst.keys():
            raise ValueError("EMA.update: the model's parameters do not match the averaged copy's")
        return [(dst[k], src[k]) for k in dst]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step toward ``model``'s current weights."""
        self._n_calls += 1
        self.num_calls.fill_(self._n_calls)
        if self._n_calls % self.update_every:
            return
        weight = 1.0 - self.current_decay()
        pairs = [(e, p) for e, p in self._pairs(model) if e.is_floating_point()]
        if pairs:
            torch._foreach_lerp_([e for e, _ in pairs], [p.detach().to(e.dtype) for e, p in pairs], weight)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)
        self._n_updates += 1
        self.num_updates.fill_(self._n_updates)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` (same architecture)."""
        model.load_state_dict(self.module.state_dict())

    def forward(self, *args, **kwargs):
        """Run the averaged model."""
        return self.module(*args, **kwargs)

    def averaged_state_dict(self) -> Dict[str, torch.Tensor]:
        """The averaged model's ``state_dict`` (the keys of the trained model)."""
        return self.module.state_dict()
