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

import json
import math
import numbers
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import torch
from torch import nn

from ..diffusion import GaussianDiffusion
from ..images import save_image_grid
from . import checkpoint as ckpt
from . import distributed as D
from .ema import EMA


def _check(name: str, value, kind, *, minimum=None, allow_none: bool = False, maximum=None):
    """Validate a scalar setting; raise a ValueError naming it."""
    if value is None and allow_none:
        return value
    ok = not isinstance(value, bool) and isinstance(value, kind) and \
        (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        rng = "".join([f" >= {minimum}" if minimum is not None else "", f" <= {maximum}" if maximum is not None else ""])
        what = "an int" if kind is numbers.Integral else "a number"
        raise ValueError(f"{name} must be {what}{rng}{' or None' if allow_none else ''}, got {value!r}")
    return value


class StepBatches:
    """Index lists of the global batches from ``start_step`` on, forever, rank ``rank``'s slice.

    Epoch ``e`` visits the dataset in the order ``randperm(n)`` of a generator seeded with
    ``(seed, e)``; global batch ``s`` is positions ``[s*B, (s+1)*B)`` of the concatenated epochs, so
    the stream is a pure function of (seed, step): resuming at any step needs no saved state.
    """

    def __init__(self, n: int, global_batch: int, *, seed: int, start_step: int = 0, rank: int = 0, world: int = 1):
        self.n, self.B, self.seed, self.start = n, global_batch, seed, start_step
        self.per = global_batch // world
        self.lo = rank * self.per
        self._perm_epoch, self._perm = -1, None

    def _epoch(self, e: int) -> torch.Tensor:
        if e != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g), e
        return self._perm

    def global_batch(self, step: int) -> List[int]:
        pos, out = step * self.B, []
        while len(out) < self.B:
            e, i = divmod(pos, self.n)
            take = min(self.B - len(out), self.n - i)
            out.extend(self._epoch(e)[i:i + take].tolist())
            pos += take
        return out

    def __iter__(self) -> Iterator[List[int]]:
        step = self.start
        while True:
            yield self.global_batch(step)[self.lo:self.lo + self.per]
            step += 1


def _split_item(item):
    if isinstance(item, (tuple, list)):
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


def _collate(items):
    imgs, labels = zip(*(_split_item(it) for it in items))
    x = torch.stack([torch.as_tensor(i) for i in imgs])
    y = None if labels[0] is None else torch.stack([torch.as_tensor(l) for l in labels]).long()
    return x, y


class DiffusionTrainer:
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
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"dataset must be a map-style dataset (__len__ and __getitem__), got {type(dataset).__name__}")
        if len(dataset) < 1:
            raise ValueError("dataset is empty")
        I, R = numbers.Integral, numbers.Real
        _check("batch_size", batch_size, I, minimum=1)
        _check("lr", lr, R, minimum=0)
        _check("weight_decay", weight_decay, R, minimum=0)
        _check("eps", eps, R, minimum=0)
        if len(betas) != 2 or not all(isinstance(b, R) and 0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        _check("warmup_steps", warmup_steps, I, minimum=0)
        if lr_schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"lr_schedule must be 'constant', 'cosine' or 'linear', got {lr_schedule!r}")
        if lr_schedule != "constant":
            _check("decay_steps", decay_steps, I, minimum=warmup_steps + 1)
        _check("grad_clip", grad_clip, R, minimum=0, allow_none=True)
        _check("ema_decay", ema_decay, R, minimum=0, maximum=0.999999999, allow_none=True)
        _check("seed", seed, I, minimum=0)
        for name in ("log_every", "sample_every", "checkpoint_every", "num_workers"):
            _check(name, locals()[name], I, minimum=0)
        _check("keep_checkpoints", keep_checkpoints, I, minimum=1)
        _check("sample_count", sample_count, I, minimum=1)
        _check("sample_steps", sample_steps, I, minimum=1)
        _check("guidance_scale", guidance_scale, R, minimum=0)
        for name in ("bf16", "clip_sample", "ema_warmup", "progress"):
            if not isinstance(locals()[name], bool):
                raise ValueError(f"{name} must be a bool, got {locals()[name]!r}")

        self.dist = D.current()
        if batch_size % self.dist.world_size:
            raise ValueError(f"batch_size ({batch_size}) must be divisible by the number of processes "
                             f"({self.dist.world_size})")
        if device is None:
            p = next(diffusion.parameters(), None)
            device = p.device if p is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.diffusion = diffusion.to(self.device)
        self.model: nn.Module = diffusion.model
        self.dataset = dataset
        first_x, first_y = _split_item(dataset[0])
        first_x = torch.as_tensor(first_x)
        if first_x.dim() != 3:
            raise ValueError(f"dataset items must be images [C, H, W] (or (image, label)), got shape {tuple(first_x.shape)}")
        self.image_shape = tuple(first_x.shape)
        self.conditional = diffusion.num_classes is not None
        if self.conditional and first_y is None:
            raise ValueError("the diffusion is class-conditional (num_classes set) but the dataset has no labels")
        if self.conditional and int(torch.as_tensor(first_y)) < 0:
            raise ValueError("the diffusion is class-conditional but the dataset is unlabeled (label -1)")

        self.config: Dict[str, Any] = dict(
            batch_size=batch_size, lr=float(lr), betas=[float(b) for b in betas], weight_decay=float(weight_decay),
            eps=float(eps), warmup_steps=warmup_steps, lr_schedule=lr_schedule, decay_steps=decay_steps,
            grad_clip=None if grad_clip is None else float(grad_clip),
            ema_decay=None if ema_decay is None else float(ema_decay), ema_warmup=bool(ema_warmup), bf16=bf16,
            seed=seed, sample_count=sample_count, sample_steps=sample_steps, sampler=sampler,
            guidance_scale=float(guidance_scale), clip_sample=clip_sample, image_shape=list(self.image_shape),
            num_classes=diffusion.num_classes, prediction_type=diffusion.prediction_type)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.log_every, self.sample_every, self.checkpoint_every = log_every, sample_every, checkpoint_every
        self.keep_checkpoints, self.num_workers, self.progress = keep_checkpoints, num_workers, progress

        self.optimizer = self._make_optimizer(lr, tuple(betas), weight_decay, eps)
        self.ddp = None
        if self.dist.enabled:  # wraps first: DDP broadcasts process 0's weights, which the EMA then copies
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.diffusion, device_ids=ids)
        self.ema = EMA(self.model, ema_decay, warmup=ema_warmup) if ema_decay is not None else None
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.step_count = 0
        self._last_grad_norm: Optional[torch.Tensor] = None
        self.history: List[Dict[str, float]] = []
        self._batches: Optional[Iterator] = None

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

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def _loader(self) -> Iterator:
        sampler = StepBatches(len(self.dataset), self.config["batch_size"], seed=self.config["seed"],
                              start_step=self.step_count, rank=self.dist.rank, world=self.dist.world_size)
        if self.num_workers == 0:
            return (_collate([self.dataset[i] for i in idx]) for idx in sampler)
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
                                             collate_fn=_collate, pin_memory=self.device.type == "cuda",
                                             persistent_workers=True)
        return iter(loader)

    def _next_batch(self):
        if self._batches is None:
            self._batches = self._loader()
        return next(self._batches)

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
        if x0.shape[1:] != self.image_shape:
            raise ValueError(f"dataset item shape changed: expected {self.image_shape}, got {tuple(x0.shape[1:])}")
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
        loss.backward()
        grad_norm = None
        if self.config["grad_clip"] is not None:
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.config["grad_clip"])
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step_count += 1
        self._last_grad_norm = grad_norm
        return loss.detach()

    # ------------------------------------------------------------------ the loop
    def train(self, steps: int) -> Dict[str, Any]:
        """Run ``steps`` more steps with progress, logging, sample grids and checkpoints; at the end
        (and on Ctrl-C in a single-process run) a checkpoint is written when ``out_dir`` is set. A
        non-finite loss raises FloatingPointError on every process. Returns a summary dict."""
        _check("steps", steps, numbers.Integral, minimum=0)
        end = self.step_count + steps
        bar = None
        if self.progress and self.is_main:
            from tqdm.auto import tqdm
            bar = tqdm(total=end, initial=self.step_count, desc="train", unit="it", dynamic_ncols=True)
        window_loss, window_n, t_window = torch.zeros((), device=self.device), 0, time.perf_counter()
        t_start, start = time.perf_counter(), self.step_count
        try:
            while self.step_count < end:
                loss = self.step()
                # every process checks the mean over all of them, so all stop together (no hang);
                # a sync per step, cheap next to a training step
                if not torch.isfinite(D.all_reduce_mean(loss)):
                    raise FloatingPointError(f"the loss is {float(loss)} at step {self.step_count} "
                                             "(no checkpoint written for this step)")
                window_loss += loss
                window_n += 1
                s = self.step_count
                if self.log_every and (s % self.log_every == 0 or s == end):
                    now = time.perf_counter()
                    rec = self._log(float(D.all_reduce_mean(window_loss / window_n)), window_n / (now - t_window))
                    window_loss.zero_()
                    window_n, t_window = 0, now
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
                if bar is not None:
                    bar.update(1)
                if self.sample_every and s % self.sample_every == 0:
                    self.save_samples()
                if self.checkpoint_every and s % self.checkpoint_every == 0:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            # single-process only: saving gathers RNG states from every process, and after Ctrl-C
            # the others may be anywhere (a collective could hang); they keep their periodic ones
            if self.out_dir is not None and not self.dist.enabled:
                self.save_checkpoint()
            raise
        finally:
            if bar is not None:
                bar.close()
        if self.out_dir is not None and steps and (not self.checkpoint_every or self.step_count % self.checkpoint_every):
            self.save_checkpoint()
        elapsed = time.perf_counter() - t_start
        return {"steps": self.step_count, "seconds": elapsed,
                "it_per_s": (self.step_count - start) / elapsed if elapsed > 0 else float("nan"),
                "loss": self.history[-1]["loss"] if self.history else float("nan")}

    def _log(self, loss: float, it_per_s: float) -> Dict[str, float]:
        rec = {"step": self.step_count, "loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
               "it_per_s": it_per_s, "time": time.time()}
        if self._last_grad_norm is not None:
            rec["grad_norm"] = float(self._last_grad_norm)
        self.history.append(rec)
        if self.out_dir is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
        return rec

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

    def save_samples(self, path: Optional[Union[str, Path]] = None) -> Optional[Path]:
        """Write a PNG grid of :meth:`sample` (main process; default ``out_dir/samples/step_N.png``)."""
        if not self.is_main:
            return None
        if path is None:
            if self.out_dir is None:
                raise ValueError("save_samples: pass path= or give the trainer an out_dir")
            path = self.out_dir / "samples" / f"step_{self.step_count:08d}.png"
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            images = self.sample()  # sampling must not move the training RNG streams
        save_image_grid(images, path, upscale=max(1, 64 // self.image_shape[-1]))
        return Path(path)

    # ------------------------------------------------------------------ checkpoints
    def _rng_all_ranks(self) -> Dict[str, torch.Tensor]:
        """Each process's global RNG states (dropout draws from them), gathered to every process."""
        own = ckpt.rng_tensors()
        out = {}
        for k, v in own.items():
            for r, t in enumerate(D.all_gather_tensors(v.to(self.device))):
                out[f"rank{r}/{k}"] = t
        return out

    def state_tensors(self) -> Dict[str, torch.Tensor]:
        """Everything a checkpoint holds, as flat named tensors."""
        opt_t, _ = ckpt.optimizer_to_tensors(self.optimizer)
        tensors = {**ckpt.with_prefix("model", self.model.state_dict()), **ckpt.with_prefix("optim", opt_t),
                   **ckpt.with_prefix("rng", self._rng_all_ranks()),
                   "rng/trainer": self.generator.get_state(),
                   "schedule/betas": self.diffusion.schedule._betas_src}  # the dtype it was built from
        if self.ema is not None:
            tensors.update(ckpt.with_prefix("ema", self.ema.state_dict()))
        return tensors

    def _diffusion_meta(self) -> Dict[str, Any]:
        d = self.diffusion
        return {"schedule_kind": d.schedule.kind, "prediction_type": d.prediction_type,
                "num_classes": d.num_classes, "p_uncond": d.p_uncond, "learn_sigma": d.learn_sigma}

    def save_checkpoint(self, path: Optional[Union[str, Path]] = None) -> Optional[Path]:
        """Write a checkpoint atomically (default ``out_dir/checkpoints/step_N.safetensors``, keeping the
        newest ``keep_checkpoints``). Every process must call it (it gathers their RNG states); only
        process 0 writes. Returns the path on process 0."""
        tensors = self.state_tensors()
        if not self.is_main:
            return None
        _, opt_meta = ckpt.optimizer_to_tensors(self.optimizer)
        meta = {"kind": "diffusion", "step": self.step_count, "world_size": self.dist.world_size,
                "optimizer": opt_meta, "config": self.config, "model_class": type(self.model).__name__,
                "model_config": getattr(self.model, "config", None), "diffusion": self._diffusion_meta()}
        auto = path is None
        if auto:
            if self.out_dir is None:
                raise ValueError("save_checkpoint: pass path= or give the trainer an out_dir")
            path = ckpt.checkpoint_path(self.out_dir / "checkpoints", self.step_count)
        path = ckpt.save_checkpoint(path, tensors, meta)
        if auto:
            ckpt.prune_checkpoints(path.parent, self.keep_checkpoints)
        return path

    def load_checkpoint(self, path: Union[str, Path]) -> int:
        """Restore model, EMA, optimizer, step and RNG streams from ``path`` (a checkpoint file, or a
        folder: its newest ``checkpoints/step_*.safetensors``). Returns the restored step."""
        path = Path(path)
        if path.is_dir():
            found = ckpt.latest_checkpoint(path / "checkpoints") or ckpt.latest_checkpoint(path)
            if found is None:
                raise FileNotFoundError(f"no step_*.safetensors checkpoint in {str(path)!r} or its checkpoints/")
            path = found
        tensors, meta = ckpt.load_checkpoint(path)
        if meta.get("kind") != "diffusion":
            raise ValueError(f"checkpoint {str(path)!r} is a {meta.get('kind')!r} checkpoint, not a diffusion one")
        model_sd = ckpt.strip_prefix("model", tensors)
        try:
            self.model.load_state_dict(model_sd)
        except RuntimeError as exc:
            raise ValueError(f"checkpoint {str(path)!r} does not fit this model: {exc}") from exc
        ema_sd = ckpt.strip_prefix("ema", tensors)
        if self.ema is not None:
            if not ema_sd:
                raise ValueError(f"checkpoint {str(path)!r} has no EMA weights but the trainer uses EMA")
            self.ema.load_state_dict(ema_sd)
        ckpt.optimizer_from_tensors(self.optimizer, ckpt.strip_prefix("optim", tensors), meta["optimizer"])
        for key in ("batch_size", "seed"):
            if meta["config"].get(key) != self.config[key]:
                warnings.warn(f"resuming with {key}={self.config[key]} but the checkpoint was trained with "
                              f"{key}={meta['config'].get(key)}: the data order will not continue exactly",
                              RuntimeWarning, stacklevel=2)
        self.generator.set_state(tensors["rng/trainer"].cpu())
        rank_rng = ckpt.strip_prefix(f"rng/rank{self.dist.rank}", tensors)
        if meta.get("world_size") == self.dist.world_size and rank_rng:
            ckpt.restore_rng(rank_rng)
        else:
            warnings.warn(f"the checkpoint was written by {meta.get('world_size')} processes and this run has "
                          f"{self.dist.world_size}: the global RNG (dropout) is not restored", RuntimeWarning,
                          stacklevel=2)
        self.step_count = int(meta["step"])
        self._batches = None  # restart the data stream at the restored step
        return self.step_count


def load_diffusion(path: Union[str, Path], *, ema: bool = True,
                   device: Union[str, torch.device] = "cpu") -> GaussianDiffusion:
    """Rebuild the trained :class:`GaussianDiffusion` (a fastgen U-Net inside) from a trainer checkpoint,
    with the EMA weights (``ema=True``, when the run kept them) or the raw trained ones, in eval mode."""
    from ..diffusion.schedules import DiscreteSchedule
    from ..models.unet import UNet

    tensors, meta = ckpt.load_checkpoint(path)
    if meta.get("kind") != "diffusion":
        raise ValueError(f"checkpoint {str(path)!r} is not a diffusion checkpoint (kind {meta.get('kind')!r})")
    if meta.get("model_class") != "UNet" or not isinstance(meta.get("model_config"), dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {meta.get('model_class')!r} model; only fastgen UNet "
                         "checkpoints can be rebuilt without code (load the tensors yourself with "
                         "fastgen.train.load_checkpoint)")
    model = UNet(**meta["model_config"])
    weights = {k[len("module."):]: v for k, v in ckpt.strip_prefix("ema", tensors).items()
               if k.startswith("module.")} if ema else {}
    if not weights:
        weights = ckpt.strip_prefix("model", tensors)
    model.load_state_dict(weights)
    d = meta["diffusion"]
    schedule = DiscreteSchedule(tensors["schedule/betas"], kind=d["schedule_kind"])
    diffusion = GaussianDiffusion(model, schedule, prediction_type=d["prediction_type"], num_classes=d["num_classes"],
                                  p_uncond=d["p_uncond"], learn_sigma=d["learn_sigma"])
    return diffusion.to(device).eval()
