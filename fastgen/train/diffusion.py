"""The diffusion trainer: AdamW + EMA + grad clipping + bf16 autocast, progress, sample grids,
atomic safetensors checkpoints with exact resume, and torchrun/DDP data parallelism.

Determinism is by construction: every random draw of a step (the data order, the timesteps, the
noise, the classifier-free-guidance label dropout) comes from the trainer's own generator and is
drawn for the **global** batch, identically on every process; each process then takes its slice.
So a run on N processes computes the same loss and gradients as a single process on the same
global batch (up to the all-reduce's summation order), and resuming from a checkpoint continues
exactly where the run stopped: the checkpoint holds the model, the EMA, the optimizer state, the
step, the trainer's generator and every process's global RNG (dropout draws from it).
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import nn

from ..diffusion import GaussianDiffusion
from . import checkpoint as ckpt
from .base import StepBatches, Trainer, check_setting, load_module_weights  # noqa: F401 (StepBatches re-exported)
from .ema import EMA

_check = check_setting


class DiffusionTrainer(Trainer):
    """Train a :class:`~fastgen.diffusion.GaussianDiffusion` (any denoiser inside it) on a dataset.

    Args:
        diffusion: the model and its objective; moved to ``device``.
        dataset: a map-style dataset whose items are an image ``[C, H, W]`` in [-1, 1] or an
            ``(image, label)`` pair (see :mod:`fastgen.data`). A class-conditional diffusion
            (``num_classes`` set) needs labels.
        batch_size: the **global** batch (split evenly over the processes of a distributed run).
        lr, betas, weight_decay, eps: AdamW (fused when the device supports it).
        warmup_steps: linear learning-rate warm-up from 0.
        lr_schedule: after the warm-up, ``"constant"`` (ADM), or ``"cosine"`` / ``"linear"`` decay to
            0 at step ``decay_steps`` (then 0).
        grad_clip: clip the global gradient norm to this (None: no clipping).
        ema_decay: EMA decay (None: no EMA); ``ema_warmup`` as in :class:`EMA`.
        bf16: run the forward pass under ``torch.autocast(dtype=bfloat16)`` (weights, optimizer
            and loss stay fp32).
        seed: seeds the data order and all the per-step randomness.
        out_dir: where ``checkpoints/``, ``samples/`` and ``metrics.jsonl`` go (None: nothing is
            written unless asked).
        log_every, sample_every, checkpoint_every: in steps (0: never). ``keep_checkpoints`` newest
            step checkpoints are kept.
        sample_count, sample_steps, sampler, guidance_scale: the periodic sample grid (EMA weights,
            a fixed seed so grids of different steps are comparable; labels cycle over the classes).
        clip_sample: clamp the sampler's x0 predictions to [-1, 1] (the data range; ADM's
            ``clip_denoised``): keeps a young model's high-noise errors from blowing up the samples.
        num_workers: DataLoader workers (0: load in the training process).
        progress: a tqdm bar with the loss, learning rate and it/s (main process only).
        device: default: the diffusion's parameters' device.

    Under torchrun (``torch.distributed`` initialised, see :func:`~fastgen.train.distributed.init_distributed`)
    the model is wrapped in DistributedDataParallel; only process 0 logs, samples and writes.
    """

    kind = "diffusion"

    def __init__(self, diffusion: GaussianDiffusion, dataset, *, batch_size: int = 64, lr: float = 2e-4,
                 betas: Sequence[float] = (0.9, 0.999), weight_decay: float = 0.0, eps: float = 1e-8,
                 warmup_steps: int = 0, lr_schedule: str = "constant", decay_steps: Optional[int] = None,
                 grad_clip: Optional[float] = 1.0, ema_decay: Optional[float] = 0.9999,
                 ema_warmup: bool = True, bf16: bool = False, seed: int = 0,
                 out_dir: Optional[Union[str, Path]] = None, log_every: int = 50, sample_every: int = 0,
                 checkpoint_every: int = 0, keep_checkpoints: int = 2, sample_count: int = 16,
                 sample_steps: int = 50, sampler: str = "ddim", guidance_scale: float = 1.0,
                 clip_sample: bool = True, num_workers: int = 0, progress: bool = True, device: Optional[Union[str, torch.device]] = None):
        if not isinstance(diffusion, GaussianDiffusion):
            raise TypeError(f"diffusion must be a fastgen.diffusion.GaussianDiffusion, got {type(diffusion).__name__}")
        R = numbers.Real
        _check("lr", lr, R, minimum=0)
        _check("weight_decay", weight_decay, R, minimum=0)
        _check("eps", eps, R, minimum=0)
        if len(betas) != 2 or not all(isinstance(b, R) and 0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        _check("warmup_steps", warmup_steps, numbers.Integral, minimum=0)
        if lr_schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"lr_schedule must be 'constant', 'cosine' or 'linear', got {lr_schedule!r}")
        if lr_schedule != "constant":
            _check("decay_steps", decay_steps, numbers.Integral, minimum=warmup_steps + 1)
        _check("grad_clip", grad_clip, R, minimum=0, allow_none=True)
        _check("ema_decay", ema_decay, R, minimum=0, maximum=0.999999999, allow_none=True)
        _check("sample_steps", sample_steps, numbers.Integral, minimum=1)
        _check("guidance_scale", guidance_scale, R, minimum=0)
        for name in ("bf16", "clip_sample", "ema_warmup"):
            if not isinstance(locals()[name], bool):
                raise ValueError(f"{name} must be a bool, got {locals()[name]!r}")
        if device is None:
            p = next(diffusion.parameters(), None)
            device = p.device if p is not None else torch.device("cpu")
        self._setup(dataset, batch_size=batch_size, seed=seed, out_dir=out_dir, log_every=log_every,
                    sample_every=sample_every, checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
                    sample_count=sample_count, num_workers=num_workers, progress=progress, device=device)
        self.diffusion = diffusion.to(self.device)
        self.model: nn.Module = diffusion.model
        self.conditional = diffusion.num_classes is not None
        if self.conditional:
            self._require_labels("the diffusion (num_classes set)")

        self.config: Dict[str, Any] = dict(
            batch_size=batch_size, lr=float(lr), betas=[float(b) for b in betas], weight_decay=float(weight_decay),
            eps=float(eps), warmup_steps=warmup_steps, lr_schedule=lr_schedule, decay_steps=decay_steps,
            grad_clip=None if grad_clip is None else float(grad_clip),
            ema_decay=None if ema_decay is None else float(ema_decay), ema_warmup=bool(ema_warmup), bf16=bf16,
            seed=seed, sample_count=sample_count, sample_steps=sample_steps, sampler=sampler,
            guidance_scale=float(guidance_scale), clip_sample=clip_sample, image_shape=list(self.image_shape),
            num_classes=diffusion.num_classes, prediction_type=diffusion.prediction_type)
        self.optimizer = self._make_optimizer(lr, tuple(betas), weight_decay, eps)
        self.ddp = None
        if self.dist.enabled:  # wraps first: DDP broadcasts process 0's weights, which the EMA then copies
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.diffusion, device_ids=ids)
        self.ema = EMA(self.model, ema_decay, warmup=ema_warmup) if ema_decay is not None else None
        self._last_grad_norm: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ construction helpers
    def _make_optimizer(self, lr, betas, weight_decay, eps) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        kw = dict(lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
        fused_ok = all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) and p.device.type in ("cpu", "cuda")
                       for p in params)
        if fused_ok:
            try:
                return torch.optim.AdamW(params, fused=True, **kw)
            except (RuntimeError, TypeError):  # an older build or device without the fused kernel
                pass
        return torch.optim.AdamW(params, **kw)

    # ------------------------------------------------------------------ one step
    def _lr_at(self, step: int) -> float:
        cfg = self.config
        w, lr = cfg["warmup_steps"], cfg["lr"]
        if step < w:
            return lr * (step + 1) / w
        if cfg["lr_schedule"] == "constant":
            return lr
        frac = min(1.0, (step - w) / (cfg["decay_steps"] - w))  # 0 right after the warm-up, 1 at decay_steps
        return lr * (0.5 * (1.0 + math.cos(math.pi * frac)) if cfg["lr_schedule"] == "cosine" else 1.0 - frac)

    def _draw(self, n_local: int):
        """The step's timesteps, noise and label-dropout mask for the global batch; this rank's slice."""
        B, g = self.config["batch_size"], self.generator
        T = self.diffusion.schedule.num_train_timesteps
        t = torch.randint(0, T, (B,), generator=g, device=self.device)
        noise = torch.randn((B,) + self.image_shape, generator=g, device=self.device)
        drop = torch.rand(B, generator=g, device=self.device) < self.diffusion.p_uncond
        lo = self.dist.rank * n_local
        return t[lo:lo + n_local], noise[lo:lo + n_local], drop[lo:lo + n_local]

    def step(self) -> torch.Tensor:
        """One optimisation step on the next global batch; returns this process's loss (a 0-d tensor,
        not synchronised: call ``float()`` only when you need the value)."""
        x0, labels = self._next_batch()
        x0 = x0.to(self.device, torch.float32, non_blocking=True)
        t, noise, drop = self._draw(x0.shape[0])
        kw = {}
        if self.conditional:
            kw = dict(class_labels=labels.to(self.device, non_blocking=True), label_drop=drop)
        self.diffusion.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr_at(self.step_count)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config["bf16"]):
            loss = (self.ddp or self.diffusion)(x0, t=t, noise=noise, **kw)
        self._optimizer_step(loss, self.model)
        return loss.detach()

    def _train_step(self) -> Dict[str, torch.Tensor]:
        return {"loss": self.step()}

    def _log_extra(self) -> Dict[str, float]:
        extra = {"lr": self.optimizer.param_groups[0]["lr"]}
        if self._last_grad_norm is not None:
            extra["grad_norm"] = float(self._last_grad_norm)
        return extra

    # ------------------------------------------------------------------ sampling
    def sampling_model(self) -> nn.Module:
        """The EMA model (or the trained model without EMA)."""
        return self.ema.module if self.ema is not None else self.model

    @torch.no_grad()
    def sample(self, n: Optional[int] = None, *, class_labels: Optional[torch.Tensor] = None,
               steps: Optional[int] = None, seed: int = 0, **kwargs) -> torch.Tensor:
        """``n`` samples from the EMA weights with the configured sampler (labels cycle over the
        classes unless given); a fixed ``seed`` makes grids of different steps comparable."""
        n = self.config["sample_count"] if n is None else _check("n", n, numbers.Integral, minimum=1)
        if self.conditional and class_labels is None:
            class_labels = torch.arange(n) % self.diffusion.num_classes
        gen = torch.Generator(self.device).manual_seed(seed)
        kwargs.setdefault("guidance_scale", self.config["guidance_scale"] if self.conditional else 1.0)
        kwargs.setdefault("progress", False)
        kwargs.setdefault("sampler_kwargs", {"clip_sample": self.config["clip_sample"]})
        return self.diffusion.sample((n,) + self.image_shape, sampler=self.config["sampler"],
                                     steps=steps or self.config["sample_steps"], class_labels=class_labels,
                                     generator=gen, model=self.sampling_model(), **kwargs)

    # ------------------------------------------------------------------ checkpoints
    def _state_tensors(self) -> Dict[str, torch.Tensor]:
        opt_t, _ = ckpt.optimizer_to_tensors(self.optimizer)
        tensors = {**ckpt.with_prefix("model", self.model.state_dict()), **ckpt.with_prefix("optim", opt_t),
                   "schedule/betas": self.diffusion.schedule._betas_src}  # the dtype it was built from
        if self.ema is not None:
            tensors.update(ckpt.with_prefix("ema", self.ema.state_dict()))
        return tensors

    def _meta(self) -> Dict[str, Any]:
        d = self.diffusion
        _, opt_meta = ckpt.optimizer_to_tensors(self.optimizer)
        return {"optimizer": opt_meta, "model_class": type(self.model).__name__,
                "model_config": getattr(self.model, "config", None),
                "diffusion": {"schedule_kind": d.schedule.kind, "prediction_type": d.prediction_type,
                              "num_classes": d.num_classes, "p_uncond": d.p_uncond, "learn_sigma": d.learn_sigma}}

    def _load_state(self, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any], path: Path) -> None:
        load_module_weights(self.model, ckpt.strip_prefix("model", tensors), path, "model")
        ema_sd = ckpt.strip_prefix("ema", tensors)
        if self.ema is not None:
            if not ema_sd:
                raise ValueError(f"checkpoint {str(path)!r} has no EMA weights but the trainer uses EMA")
            self.ema.load_state_dict(ema_sd)
        ckpt.optimizer_from_tensors(self.optimizer, ckpt.strip_prefix("optim", tensors), meta["optimizer"])


def load_diffusion(path: Union[str, Path], *, ema: bool = True,
                   device: Union[str, torch.device] = "cpu") -> GaussianDiffusion:
    """Rebuild the trained :class:`GaussianDiffusion` (a fastgen U-Net inside) from a trainer checkpoint,
    with the EMA weights (``ema=True``, when the run kept them) or the raw trained ones, in eval mode."""
    tensors, meta = ckpt.load_checkpoint(path)
    if meta.get("kind") != "diffusion":
        raise ValueError(f"checkpoint {str(path)!r} is not a diffusion checkpoint (kind {meta.get('kind')!r})")
    return diffusion_from_checkpoint(tensors, meta, path, ema=ema).to(device).eval()


def diffusion_from_checkpoint(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any], path, *,
                              ema: bool = True) -> GaussianDiffusion:
    """The :class:`GaussianDiffusion` of loaded checkpoint contents (``model/``, ``ema/``,
    ``schedule/betas`` and the ``model_class``/``model_config``/``diffusion`` metadata), on the CPU."""
    from ..diffusion.schedules import DiscreteSchedule
    from ..models.unet import UNet

    if meta.get("model_class") != "UNet" or not isinstance(meta.get("model_config"), dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {meta.get('model_class')!r} model; only fastgen UNet "
                         "checkpoints can be rebuilt without code (load the tensors yourself with "
                         "fastgen.train.load_checkpoint)")
    missing = [k for k in ("diffusion",) if not isinstance(meta.get(k), dict)] + \
        [k for k in ("schedule/betas",) if k not in tensors]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} lacks {', '.join(map(repr, missing))}: not a complete "
                         "diffusion checkpoint")
    try:
        model = UNet(**meta["model_config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint {str(path)!r} records a U-Net this fastgen cannot build: {exc}") from exc
    weights = {k[len("module."):]: v for k, v in ckpt.strip_prefix("ema", tensors).items()
               if k.startswith("module.")} if ema else {}
    if not weights:
        weights = ckpt.strip_prefix("model", tensors)
    load_module_weights(model, weights, path, "U-Net")
    d = meta["diffusion"]
    try:
        schedule = DiscreteSchedule(tensors["schedule/betas"], kind=d["schedule_kind"])
        diffusion = GaussianDiffusion(model, schedule, prediction_type=d["prediction_type"],
                                      num_classes=d["num_classes"], p_uncond=d["p_uncond"], learn_sigma=d["learn_sigma"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint {str(path)!r} has a bad diffusion setting: {type(exc).__name__}: {exc}") from exc
    return diffusion
