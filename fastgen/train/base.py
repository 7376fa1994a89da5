"""What every fastgen trainer shares: setting checks, the global-batch data stream, the training
loop (tqdm progress, windowed means logged to ``metrics.jsonl``, sample grids, checkpoint
cadence, Ctrl-C, a non-finite loss stopping every process together), the gathering of every
process's RNG state, and atomic safetensors checkpoints with exact resume.

A trainer subclasses :class:`Trainer` and provides ``_train_step()`` (one optimisation step,
returning its 0-d losses by name), ``sample()``, ``_state_tensors()`` / ``_meta()`` (what its
checkpoints hold besides the shared parts) and ``_load_state()``.
"""
from __future__ import annotations

import json
import numbers
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

import torch

from ..images import save_image_grid
from . import checkpoint as ckpt
from . import distributed as D


def check_setting(name: str, value, kind, *, minimum=None, allow_none: bool = False, maximum=None):
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


def split_item(item):
    """(image, label or None) of a dataset item (an image, or an (image, label) pair)."""
    if isinstance(item, (tuple, list)):
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


def collate(items):
    imgs, labels = zip(*(split_item(it) for it in items))
    x = torch.stack([torch.as_tensor(i) for i in imgs])
    y = None if labels[0] is None else torch.stack([torch.as_tensor(l) for l in labels]).long()
    return x, y


class Trainer:
    """The shared machinery of fastgen's trainers (see the module docstring)."""

    kind = "base"  # the checkpoint kind; load_checkpoint refuses other kinds

    def _setup(self, dataset, *, batch_size: int, seed: int, out_dir, log_every: int, sample_every: int,
               checkpoint_every: int, keep_checkpoints: int, sample_count: int, num_workers: int, progress: bool,
               device) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"dataset must be a map-style dataset (__len__ and __getitem__), got {type(dataset).__name__}")
        if len(dataset) < 1:
            raise ValueError("dataset is empty")
        I = numbers.Integral
        check_setting("batch_size", batch_size, I, minimum=1)
        check_setting("seed", seed, I, minimum=0)
        for name, v in (("log_every", log_every), ("sample_every", sample_every),
                        ("checkpoint_every", checkpoint_every), ("num_workers", num_workers)):
            check_setting(name, v, I, minimum=0)
        check_setting("keep_checkpoints", keep_checkpoints, I, minimum=1)
        check_setting("sample_count", sample_count, I, minimum=1)
        if not isinstance(progress, bool):
            raise ValueError(f"progress must be a bool, got {progress!r}")
        self.dist = D.current()
        if batch_size % self.dist.world_size:
            raise ValueError(f"batch_size ({batch_size}) must be divisible by the number of processes "
                             f"({self.dist.world_size})")
        self.device = torch.device(device)
        self.dataset = dataset
        first_x, first_y = split_item(dataset[0])
        first_x = torch.as_tensor(first_x)
        if first_x.dim() != 3:
            raise ValueError(f"dataset items must be images [C, H, W] (or (image, label)), got shape {tuple(first_x.shape)}")
        self.image_shape = tuple(first_x.shape)
        self._first_label = first_y
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.log_every, self.sample_every, self.checkpoint_every = log_every, sample_every, checkpoint_every
        self.keep_checkpoints, self.num_workers, self.progress = keep_checkpoints, num_workers, progress
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.step_count = 0
        self.history: List[Dict[str, float]] = []
        self._batches: Optional[Iterator] = None

    def _require_labels(self, what: str) -> None:
        if self._first_label is None:
            raise ValueError(f"{what} is class-conditional but the dataset has no labels")
        if int(torch.as_tensor(self._first_label)) < 0:
            raise ValueError(f"{what} is class-conditional but the dataset is unlabeled (label -1)")

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    # ------------------------------------------------------------------ data
    def _loader(self) -> Iterator:
        sampler = StepBatches(len(self.dataset), self.config["batch_size"], seed=self.config["seed"],
                              start_step=self.step_count, rank=self.dist.rank, world=self.dist.world_size)
        if self.num_workers == 0:
            return (collate([self.dataset[i] for i in idx]) for idx in sampler)
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
                                             collate_fn=collate, pin_memory=self.device.type == "cuda",
                                             persistent_workers=True)
        return iter(loader)

    def _next_batch(self):
        if self._batches is None:
            self._batches = self._loader()
        x, y = next(self._batches)
        if x.shape[1:] != self.image_shape:
            raise ValueError(f"dataset item shape changed: expected {self.image_shape}, got {tuple(x.shape[1:])}")
        return x, y

    def _optimizer_step(self, loss: torch.Tensor, model: torch.nn.Module) -> None:
        """Backward, optional grad-norm clipping (``config["grad_clip"]``), the optimizer step and the
        EMA update of ``model``; counts the step. For single-optimizer trainers (diffusion, VAE)."""
        loss.backward()
        grad_norm = None
        if self.config["grad_clip"] is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.config["grad_clip"])
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(model)
        self.step_count += 1
        self._last_grad_norm = grad_norm

    # ------------------------------------------------------------------ to override
    def _train_step(self) -> Dict[str, torch.Tensor]:
        """One optimisation step; its 0-d losses by name (this process's values, not synchronised)."""
        raise NotImplementedError

    def _log_extra(self) -> Dict[str, float]:
        """Extra fields of a log record (e.g. the learning rate)."""
        return {}

    def sample(self, n: Optional[int] = None, **kwargs) -> torch.Tensor:
        raise NotImplementedError

    def _periodic(self, step: int) -> None:
        """Called after every step of :meth:`train` (after logging, samples and checkpoints)."""

    def _state_tensors(self) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def _meta(self) -> Dict[str, Any]:
        return {}

    def _load_state(self, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any], path: Path) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ the loop
    def train(self, steps: int) -> Dict[str, Any]:
        """Run ``steps`` more steps with progress, logging, sample grids and checkpoints; at the end
        (and on Ctrl-C in a single-process run) a checkpoint is written when ``out_dir`` is set. A
        non-finite loss raises FloatingPointError on every process. Returns a summary dict."""
        check_setting("steps", steps, numbers.Integral, minimum=0)
        end = self.step_count + steps
        bar = None
        if self.progress and self.is_main:
            from tqdm.auto import tqdm
            bar = tqdm(total=end, initial=self.step_count, desc="train", unit="it", dynamic_ncols=True)
        window: Dict[str, torch.Tensor] = {}
        counts: Dict[str, int] = {}
        window_n, t_window = 0, time.perf_counter()
        t_start, start = time.perf_counter(), self.step_count
        try:
            while self.step_count < end:
                losses = self._train_step()
                # every process checks the mean over all of them, so all stop together (no hang);
                # one sync per step, cheap next to a training step
                names = sorted(losses)
                means = D.all_reduce_mean(torch.stack([losses[k].detach().float() for k in names]))
                bad = [(k, float(v)) for k, v in zip(names, means) if not torch.isfinite(v)]
                if bad:
                    k, v = bad[0]
                    raise FloatingPointError(f"the {k} is {v} at step {self.step_count} "
                                             "(no checkpoint written for this step)")
                for k in names:
                    window[k] = window.get(k, 0) + losses[k].detach().float()
                    counts[k] = counts.get(k, 0) + 1
                window_n += 1
                s = self.step_count
                if self.log_every and (s % self.log_every == 0 or s == end):
                    now = time.perf_counter()
                    keys = sorted(window)
                    vals = D.all_reduce_mean(torch.stack([window[k] / counts[k] for k in keys])) if keys else []
                    rec = self._log({k: float(v) for k, v in zip(keys, vals)}, window_n / (now - t_window))
                    window, counts = {}, {}
                    window_n, t_window = 0, now
                    if bar is not None:
                        bar.set_postfix({k: (f"{v:.2e}" if k == "lr" else f"{v:.4f}") for k, v in rec.items()
                                         if k not in ("step", "it_per_s", "time", "grad_norm")})
                if bar is not None:
                    bar.update(1)
                if self.sample_every and s % self.sample_every == 0:
                    self.save_samples()
                if self.checkpoint_every and s % self.checkpoint_every == 0:
                    self.save_checkpoint()
                self._periodic(s)
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
        summary = {"steps": self.step_count, "seconds": elapsed,
                   "it_per_s": (self.step_count - start) / elapsed if elapsed > 0 else float("nan")}
        last = self.history[-1] if self.history else {}
        summary.update({k: v for k, v in last.items() if k not in ("step", "it_per_s", "time")})
        return summary

    def _log(self, means: Dict[str, float], it_per_s: float) -> Dict[str, float]:
        rec = {"step": self.step_count, **means, **self._log_extra(), "it_per_s": it_per_s, "time": time.time()}
        self.history.append(rec)
        self._write_metrics(rec)
        return rec

    def _write_metrics(self, rec: Dict[str, Any]) -> None:
        """Append a record to ``out_dir/metrics.jsonl`` (main process, when there is an out_dir)."""
        if self.out_dir is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")

    # ------------------------------------------------------------------ samples
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
        save_image_grid(images, path, upscale=max(1, 64 // self.image_shape[-1]), ncols=self._grid_columns())
        return Path(path)

    def _grid_columns(self) -> Optional[int]:
        """Columns of the sample grid (None: about square)."""
        return None

    # ------------------------------------------------------------------ checkpoints
    def _rng_all_ranks(self) -> Dict[str, torch.Tensor]:
        """Each process's global RNG states (dropout and noise inputs draw from them), gathered to
        every process."""
        own = ckpt.rng_tensors()
        out = {}
        for k, v in own.items():
            for r, t in enumerate(D.all_gather_tensors(v.to(self.device))):
                out[f"rank{r}/{k}"] = t
        return out

    def state_tensors(self) -> Dict[str, torch.Tensor]:
        """Everything a checkpoint holds, as flat named tensors."""
        return {**self._state_tensors(), **ckpt.with_prefix("rng", self._rng_all_ranks()),
                "rng/trainer": self.generator.get_state()}

    def save_checkpoint(self, path: Optional[Union[str, Path]] = None) -> Optional[Path]:
        """Write a checkpoint atomically (default ``out_dir/checkpoints/step_N.safetensors``, keeping the
        newest ``keep_checkpoints``). Every process must call it (it gathers their RNG states); only
        process 0 writes. Returns the path on process 0."""
        tensors = self.state_tensors()
        if not self.is_main:
            return None
        meta = {"kind": self.kind, "step": self.step_count, "world_size": self.dist.world_size,
                "config": self.config, **self._meta()}
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
        """Restore the trainer's state, step and RNG streams from ``path`` (a checkpoint file, or a
        folder: its newest ``checkpoints/step_*.safetensors``). Returns the restored step."""
        path = resolve_checkpoint(path)
        tensors, meta = ckpt.load_checkpoint(path)
        if meta.get("kind") != self.kind:
            raise ValueError(f"checkpoint {str(path)!r} is a {meta.get('kind')!r} checkpoint, not a {self.kind} one")
        self._load_state(tensors, meta, path)
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
                          f"{self.dist.world_size}: the global RNG is not restored", RuntimeWarning, stacklevel=2)
        self.step_count = int(meta["step"])
        self._batches = None  # restart the data stream at the restored step
        return self.step_count


def resolve_checkpoint(path: Union[str, Path]) -> Path:
    """A checkpoint file, or a run folder's newest ``checkpoints/step_*.safetensors`` (or its own)."""
    path = Path(path)
    if path.is_dir():
        found = ckpt.latest_checkpoint(path / "checkpoints") or ckpt.latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no step_*.safetensors checkpoint in {str(path)!r} or its checkpoints/")
        path = found
    return path


def load_module_weights(module: torch.nn.Module, weights: Dict[str, torch.Tensor], path, what: str) -> None:
    """``module.load_state_dict(weights)`` with a ValueError naming the checkpoint when they do not fit."""
    try:
        module.load_state_dict(weights)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {str(path)!r} does not fit this {what}: {exc}") from exc
