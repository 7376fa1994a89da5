r"""The VAE trainer: AdamW + optional EMA + grad clipping + bf16 autocast, β and a linear KL
warm-up, progress, sample grids (inputs / reconstructions / prior samples), atomic safetensors
checkpoints with exact resume, torchrun/DDP data parallelism, and :func:`load_vae`.

    vae = VAE.from_preset("shapes32")
    trainer = VAETrainer(vae, load_dataset("shapes", 32), batch_size=64, out_dir="runs/vae",
                         kl_warmup_steps=1000, sample_every=500, checkpoint_every=500)
    trainer.train(5000)
    vae = load_vae("runs/vae")                       # the EMA weights (when kept), eval mode

Each step minimises the negative β-ELBO ``nll + β_t KL`` of :meth:`VAE.loss
<fastgen.models.vae.VAE.loss>` (per-sample nats, averaged over the batch) with
``β_t = β min(1, (t + 1) / kl_warmup_steps)`` (``β_t = β`` without a warm-up). Logged: ``loss``,
``nll``, ``kl``, ``elbo`` (nats per image; β does not enter), ``bpd`` (bits per dimension of the
ELBO, :meth:`VAE.bits_per_dim <fastgen.models.vae.VAE.bits_per_dim>`), the learning rate, β_t and
the gradient norm (when clipping).

Determinism: the posterior noise ``eps`` of every step is drawn for the **global** batch from the
trainer's generator and passed to the fused reparameterisation (``noise=``), so N processes follow
one process on the same global batch, and a resumed run continues exactly (the checkpoint holds
the VAE, its EMA, the optimizer, the step, the trainer's generator and every process's RNG).
"""
from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import nn

from ..images import save_image_grid
from ..models.vae import VAE
from . import checkpoint as ckpt
from .base import Trainer, check_setting, load_module_weights, resolve_checkpoint
from .ema import EMA

_check = check_setting


def adamw(params, *, lr: float, betas, weight_decay: float, eps: float) -> torch.optim.Optimizer:
    """AdamW, fused where the parameters allow it."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    kw = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=eps)
    if all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) and p.device.type in ("cpu", "cuda")
           for p in params):
        try:
            return torch.optim.AdamW(params, fused=True, **kw)
        except (RuntimeError, TypeError):  # an older build or device without the fused kernel
            pass
    return torch.optim.AdamW(params, **kw)


class _Objective(nn.Module):
    """``VAE.loss`` as a module's forward (what DistributedDataParallel wraps)."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, noise: torch.Tensor, beta: float):
        out = self.vae.loss(x, beta=beta, noise=noise)
        return out.loss, out.nll, out.kl


class VAETrainer(Trainer):
    """Train a :class:`~fastgen.models.vae.VAE` on a dataset (see the module docstring).

    Args:
        vae: the model; moved to ``device``. Its ``likelihood`` is what is trained.
        dataset: map-style; items are images ``[C, H, W]`` in [-1, 1] (or ``(image, label)`` pairs,
            labels unused) with ``C = vae.in_channels`` and ``H = W = vae.image_size``.
        batch_size: the **global** batch (split evenly over the processes of a torchrun run).
        lr, betas, weight_decay, eps: AdamW (fused when the device supports it).
        grad_clip: clip the global gradient norm to this (None: no clipping).
        ema_decay: EMA of the weights (None: none); ``ema_warmup`` as :class:`~fastgen.train.EMA`.
        beta: the KL weight (default ``vae.beta``); kl_warmup_steps: ramp β linearly from
            ``β / kl_warmup_steps`` at step 0 to β at step ``kl_warmup_steps - 1`` (0: no warm-up).
        bf16: the forward pass under ``torch.autocast(dtype=bfloat16)`` (weights, optimizer and the
            likelihood / KL arithmetic stay fp32).
        seed: the data order and the posterior noise.
        out_dir, log_every, sample_every, checkpoint_every, keep_checkpoints, num_workers, progress:
            as :class:`~fastgen.train.DiffusionTrainer`.
        sample_count: images per row of the sample grid; its rows are the first ``sample_count``
            dataset images, their reconstructions (posterior mean) and prior samples (fixed seed),
            from the EMA weights.
        device: default: the VAE's parameters' device.
    """

    kind = "vae"

    def __init__(self, vae: VAE, dataset, *, batch_size: int = 64, lr: float = 1e-3,
                 betas: Sequence[float] = (0.9, 0.999), weight_decay: float = 0.0, eps: float = 1e-8,
                 grad_clip: Optional[float] = None, ema_decay: Optional[float] = 0.999, ema_warmup: bool = True,
                 beta: Optional[float] = None, kl_warmup_steps: int = 0, bf16: bool = False, seed: int = 0,
                 out_dir: Optional[Union[str, Path]] = None, log_every: int = 50, sample_every: int = 0,
                 checkpoint_every: int = 0, keep_checkpoints: int = 2, sample_count: int = 8, num_workers: int = 0,
                 progress: bool = True, device: Optional[Union[str, torch.device]] = None):
        if not isinstance(vae, VAE):
            raise TypeError(f"vae must be a fastgen.models.VAE, got {type(vae).__name__}")
        R = numbers.Real
        _check("lr", lr, R, minimum=0)
        _check("weight_decay", weight_decay, R, minimum=0)
        _check("eps", eps, R, minimum=0)
        if len(betas) != 2 or not all(isinstance(b, R) and not isinstance(b, bool) and 0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        _check("grad_clip", grad_clip, R, minimum=0, allow_none=True)
        _check("ema_decay", ema_decay, R, minimum=0, maximum=0.999999999, allow_none=True)
        beta = vae.beta if beta is None else beta
        _check("beta", beta, R, minimum=0)
        if beta != beta or beta == float("inf"):
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
        _check("kl_warmup_steps", kl_warmup_steps, numbers.Integral, minimum=0)
        for name in ("bf16", "ema_warmup"):
            if not isinstance(locals()[name], bool):
                raise ValueError(f"{name} must be a bool, got {locals()[name]!r}")
        if device is None:
            device = next(vae.parameters()).device
        self._setup(dataset, batch_size=batch_size, seed=seed, out_dir=out_dir, log_every=log_every,
                    sample_every=sample_every, checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
                    sample_count=sample_count, num_workers=num_workers, progress=progress, device=device)
        want = (vae.in_channels, vae.image_size, vae.image_size)
        if self.image_shape != want:
            raise ValueError(f"dataset images are {self.image_shape} but the VAE is built for {want} "
                             "(in_channels, image_size, image_size)")
        self.vae = self.model = vae.to(self.device)
        self.config: Dict[str, Any] = dict(
            batch_size=batch_size, lr=float(lr), betas=[float(b) for b in betas], weight_decay=float(weight_decay),
            eps=float(eps), grad_clip=None if grad_clip is None else float(grad_clip),
            ema_decay=None if ema_decay is None else float(ema_decay), ema_warmup=ema_warmup, beta=float(beta),
            kl_warmup_steps=kl_warmup_steps, bf16=bf16, seed=seed, sample_count=sample_count,
            image_shape=list(self.image_shape), likelihood=vae.likelihood)
        self.optimizer = adamw(vae.parameters(), lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
        self.objective = _Objective(vae)
        self.ddp = None
        if self.dist.enabled:  # wraps first: DDP broadcasts process 0's weights, which the EMA then copies
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.objective, device_ids=ids)
        self.ema = EMA(vae, ema_decay, warmup=ema_warmup) if ema_decay is not None else None
        self._last_grad_norm: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ one step
    def beta_at(self, step: int) -> float:
        """β of step ``step`` (the linear KL warm-up, then the configured β)."""
        b, w = self.config["beta"], self.config["kl_warmup_steps"]
        return b * min(1.0, (step + 1) / w) if w else b

    def _noise(self, n_local: int) -> torch.Tensor:
        """The step's posterior noise for the global batch; this process's slice."""
        full = torch.randn((self.config["batch_size"],) + self.vae.latent_shape, generator=self.generator,
                           device=self.device)
        lo = self.dist.rank * n_local
        return full[lo:lo + n_local]

    def step(self) -> Dict[str, torch.Tensor]:
        """One optimisation step on the next global batch; this process's detached losses (0-d
        tensors, not synchronised)."""
        x, _ = self._next_batch()
        x = x.to(self.device, torch.float32, non_blocking=True)
        noise = self._noise(x.shape[0])
        beta = self.beta_at(self.step_count)
        self.vae.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config["bf16"]):
            loss, nll, kl = (self.ddp or self.objective)(x, noise, beta)
        self._optimizer_step(loss, self.vae)
        elbo = -(nll + kl).detach()
        return {"loss": loss.detach(), "nll": nll.detach(), "kl": kl.detach(), "elbo": elbo,
                "bpd": self.vae.bits_per_dim(elbo, x)}

    _train_step = step

    def _log_extra(self) -> Dict[str, float]:
        extra = {"lr": self.optimizer.param_groups[0]["lr"], "beta": self.beta_at(max(self.step_count - 1, 0))}
        if self._last_grad_norm is not None:
            extra["grad_norm"] = float(self._last_grad_norm)
        return extra

    # ------------------------------------------------------------------ sampling
    def sampling_model(self) -> VAE:
        """The EMA VAE (or the trained one without EMA)."""
        return self.ema.module if self.ema is not None else self.vae

    @torch.no_grad()
    def sample(self, n: Optional[int] = None, *, seed: int = 0, temperature: float = 1.0) -> torch.Tensor:
        """``n`` prior samples (decoded ``z ~ N(0, temperature^2 I)``) from the EMA weights; a fixed
        ``seed`` makes grids of different steps comparable."""
        n = self.config["sample_count"] if n is None else _check("n", n, numbers.Integral, minimum=1)
        m = self.sampling_model()
        was = m.training
        m.eval()
        try:
            return m.sample(n, generator=torch.Generator(self.device).manual_seed(seed), temperature=temperature)
        finally:
            m.train(was)

    @torch.no_grad()
    def sample_grid(self, n: Optional[int] = None, *, seed: int = 0) -> torch.Tensor:
        """``3 n`` images: the first ``n`` dataset images, their reconstructions (posterior mean) and
        ``n`` prior samples, from the EMA weights (rows of the PNG grids)."""
        n = self.config["sample_count"] if n is None else _check("n", n, numbers.Integral, minimum=1)
        x = torch.stack([torch.as_tensor(self.dataset[i][0] if isinstance(self.dataset[i], (tuple, list))
                                         else self.dataset[i]) for i in range(min(n, len(self.dataset)))])
        m = self.sampling_model()
        was = m.training
        m.eval()
        try:
            recon = m.reconstruct(x.to(self.device, torch.float32))
        finally:
            m.train(was)
        prior = self.sample(x.shape[0], seed=seed)
        return torch.cat([x.to(recon.device, recon.dtype), recon, prior])

    def save_samples(self, path: Optional[Union[str, Path]] = None) -> Optional[Path]:
        """Write the PNG grid of :meth:`sample_grid` (main process; default ``out_dir/samples/step_N.png``)."""
        if not self.is_main:
            return None
        if path is None:
            if self.out_dir is None:
                raise ValueError("save_samples: pass path= or give the trainer an out_dir")
            path = self.out_dir / "samples" / f"step_{self.step_count:08d}.png"
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            images = self.sample_grid()  # sampling must not move the training RNG streams
        save_image_grid(images, path, upscale=max(1, 64 // self.image_shape[-1]), ncols=images.shape[0] // 3)
        return Path(path)

    # ------------------------------------------------------------------ checkpoints
    def _state_tensors(self) -> Dict[str, torch.Tensor]:
        opt_t, _ = ckpt.optimizer_to_tensors(self.optimizer)
        tensors = {**ckpt.with_prefix("model", self.vae.state_dict()), **ckpt.with_prefix("optim", opt_t)}
        if self.ema is not None:
            tensors.update(ckpt.with_prefix("ema", self.ema.state_dict()))
        return tensors

    def _meta(self) -> Dict[str, Any]:
        _, opt_meta = ckpt.optimizer_to_tensors(self.optimizer)
        return {"optimizer": opt_meta, "model_class": "VAE", "model_config": self.vae.config,
                "ema": self.ema is not None}

    def _load_state(self, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any], path: Path) -> None:
        load_module_weights(self.vae, ckpt.strip_prefix("model", tensors), path, "VAE")
        ema_sd = ckpt.strip_prefix("ema", tensors)
        if self.ema is not None:
            if not ema_sd:
                raise ValueError(f"checkpoint {str(path)!r} has no EMA weights but the trainer uses EMA")
            self.ema.load_state_dict(ema_sd)
        ckpt.optimizer_from_tensors(self.optimizer, ckpt.strip_prefix("optim", tensors), meta["optimizer"])


def _ema_weights(tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k[len("module."):]: v for k, v in ckpt.strip_prefix("ema", tensors).items() if k.startswith("module.")}


def load_vae(path: Union[str, Path], *, ema: bool = True, device: Union[str, torch.device] = "cpu") -> VAE:
    """Rebuild a trained :class:`~fastgen.models.vae.VAE` in eval mode from a checkpoint (a file or a
    run folder) of :class:`VAETrainer` or of :class:`~fastgen.train.GANTrainer` with the
    :class:`~fastgen.gan.VAEGANTraining` recipe, with the EMA weights (``ema=True``, when the run kept
    them) or the raw trained ones."""
    path = resolve_checkpoint(path)
    tensors, meta = ckpt.load_checkpoint(path)
    kind = meta.get("kind")
    if kind == "vae":
        cls, cfg, raw_prefix, has_ema = meta.get("model_class"), meta.get("model_config"), "model", bool(meta.get("ema"))
    elif kind == "gan" and (meta.get("config") or {}).get("recipe") == "vaegan":
        info = meta.get("models", {}).get("G", {})
        cls, cfg, raw_prefix, has_ema = info.get("class"), info.get("config"), "models/G", bool(meta.get("ema"))
    else:
        raise ValueError(f"checkpoint {str(path)!r} is not a VAE checkpoint (kind {kind!r}; expected a "
                         "'fastgen train vae' / VAETrainer or a VAE-GAN checkpoint)")
    if cls != "VAE" or not isinstance(cfg, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {cls!r} model, not a fastgen VAE")
    vae = VAE(**cfg)
    weights = _ema_weights(tensors) if (ema and has_ema) else {}
    if not weights:
        weights = ckpt.strip_prefix(raw_prefix, tensors)
    load_module_weights(vae, weights, path, "VAE")
    return vae.to(device).eval()
