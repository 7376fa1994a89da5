"""The GAN trainer: drives a :class:`~fastgen.gan.recipe.GANRecipe` (e.g.
:class:`~fastgen.gan.StyleGANTraining`) over a dataset with a tqdm bar of the losses, windowed
means in ``metrics.jsonl``, PNG sample grids from the EMA generator, atomic safetensors checkpoints
with exact resume, and torchrun data parallelism (see :mod:`fastgen.gan.recipe`).

    recipe = StyleGANTraining(G, D, batch_size=32)
    trainer = GANTrainer(recipe, load_dataset("shapes", size=32), batch_size=32, out_dir="runs/sg2",
                         sample_every=500, checkpoint_every=500)
    trainer.train(5000)
    trainer.load_checkpoint("runs/sg2")       # continue exactly
    G = load_generator("runs/sg2")            # the EMA generator, eval mode
"""
from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from . import checkpoint as ckpt
from .base import Trainer, check_setting, load_module_weights, resolve_checkpoint


class GANTrainer(Trainer):
    """Train a GAN recipe on a dataset.

    Args:
        recipe: a :class:`~fastgen.gan.recipe.GANRecipe` (its networks on the training device).
        dataset: map-style; items are images ``[C, H, W]`` in [-1, 1] or ``(image, label)`` pairs
            (a class-conditional recipe needs labels).
        batch_size: the **global** batch (split evenly over the processes of a torchrun run).
        seed: the data order and the trainer's own draws (sample-grid latents use fixed seeds).
        out_dir, log_every, sample_every, checkpoint_every, keep_checkpoints, sample_count,
        num_workers, progress: as :class:`~fastgen.train.DiffusionTrainer`.
        diagnostics_every: every k steps (0: never) record mode-collapse diagnostics of 64 samples
            (:meth:`diagnostics`: diversity relative to real images and, with ``classifier``, class
            coverage) in ``diagnostics`` and ``metrics.jsonl``.
        classifier: a classifier of the dataset's classes (e.g.
            :func:`fastgen.gan.diagnostics.train_classifier`) for the class-coverage diagnostic.
    """

    kind = "gan"

    def __init__(self, recipe, dataset, *, batch_size: int = 32, seed: int = 0,
                 out_dir: Optional[Union[str, Path]] = None, log_every: int = 50, sample_every: int = 0,
                 checkpoint_every: int = 0, keep_checkpoints: int = 2, sample_count: int = 16, num_workers: int = 0,
                 progress: bool = True, diagnostics_every: int = 0, classifier: Optional[nn.Module] = None):
        from ..gan.recipe import GANRecipe

        if not isinstance(recipe, GANRecipe):
            raise TypeError(f"recipe must be a fastgen.gan.GANRecipe (e.g. StyleGANTraining), got {type(recipe).__name__}")
        self.recipe = recipe
        self._setup(dataset, batch_size=batch_size, seed=seed, out_dir=out_dir, log_every=log_every,
                    sample_every=sample_every, checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
                    sample_count=sample_count, num_workers=num_workers, progress=progress, device=recipe.device)
        if recipe.conditional:
            self._require_labels(f"the {recipe.name} recipe")
        want = recipe.expected_image_shape()
        if want is not None and self.image_shape != tuple(want):
            raise ValueError(f"dataset images are {self.image_shape} but the generator makes {tuple(want)}")
        self.config: Dict[str, Any] = dict(batch_size=batch_size, seed=seed, sample_count=sample_count,
                                           image_shape=list(self.image_shape), num_classes=recipe.num_classes,
                                           recipe=recipe.name, recipe_config=recipe.config)
        self.diagnostics_every = check_setting("diagnostics_every", diagnostics_every, numbers.Integral, minimum=0)
        self.classifier = classifier
        self.diagnostics_history: list = []
        recipe.set_distributed(self.dist.rank, self.dist.world_size)

    # ------------------------------------------------------------------ steps and samples
    def step(self) -> Dict[str, torch.Tensor]:
        """One training step on the next global batch; the recipe's detached losses (this process's)."""
        x, y = self._next_batch()
        x = x.to(self.device, torch.float32, non_blocking=True)
        out = self.recipe.step(x, y.to(self.device) if (y is not None and self.recipe.conditional) else None)
        self.step_count += 1
        return out

    _train_step = step

    @torch.no_grad()
    def sample(self, n: Optional[int] = None, *, labels: Optional[torch.Tensor] = None, seed: int = 0) -> torch.Tensor:
        """``n`` images from the EMA generator; labels cycle over the classes unless given; a fixed
        ``seed`` makes grids of different steps comparable."""
        n = self.config["sample_count"] if n is None else check_setting("n", n, numbers.Integral, minimum=1)
        if self.recipe.conditional and labels is None:
            labels = torch.arange(n) % self.recipe.num_classes
        return self.recipe.sample(n, labels, generator=torch.Generator().manual_seed(seed))

    def _grid_columns(self) -> Optional[int]:
        return getattr(self.recipe, "grid_columns", None)

    # ------------------------------------------------------------------ diagnostics
    @torch.no_grad()
    def diagnostics(self, n: int = 64) -> Dict[str, Any]:
        """Mode-collapse diagnostics of ``n`` samples (fixed seed; the training RNG is untouched):
        ``diversity`` = mean pairwise distance relative to ``n`` real images, and with a classifier
        ``coverage`` / ``histogram`` / ``confident`` (/ ``accuracy`` for class-conditional samples)."""
        from ..gan.diagnostics import class_coverage, relative_diversity

        labels = torch.arange(n) % self.recipe.num_classes if self.recipe.conditional else None
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            fake = self.sample(n, labels=labels, seed=1).float().cpu()
        real = torch.stack([torch.as_tensor(self.dataset[i][0] if isinstance(self.dataset[i], (tuple, list))
                                            else self.dataset[i]) for i in range(min(n, len(self.dataset)))])
        out: Dict[str, Any] = {"step": self.step_count}
        if fake.shape[1:] == real.shape[1:]:
            out["diversity"] = relative_diversity(fake, real)
        if self.classifier is not None and self.dataset_num_classes:
            out.update(class_coverage(fake, self.classifier.cpu(), self.dataset_num_classes, labels))
        return out

    @property
    def dataset_num_classes(self) -> Optional[int]:
        return getattr(self.dataset, "num_classes", None) or self.recipe.num_classes

    def _periodic(self, step: int) -> None:
        if self.diagnostics_every and step % self.diagnostics_every == 0 and self.is_main:
            rec = self.diagnostics()
            self.diagnostics_history.append(rec)
            self._write_metrics({"diagnostics": rec})

    # ------------------------------------------------------------------ checkpoints
    def _state_tensors(self) -> Dict[str, torch.Tensor]:
        r = self.recipe
        tensors = {}
        for name, m in r.models().items():
            tensors.update(ckpt.with_prefix(f"models/{name}", m.state_dict()))
        for name, opt in r.optimizers().items():
            tensors.update(ckpt.with_prefix(f"optim/{name}", ckpt.optimizer_to_tensors(opt)[0]))
        if r.ema is not None:
            tensors.update(ckpt.with_prefix("ema", r.ema.state_dict()))
        tensors.update(ckpt.with_prefix("recipe", r.extra_state()))
        return tensors

    def _meta(self) -> Dict[str, Any]:
        r = self.recipe
        return {"models": {name: {"class": type(m).__name__, "config": getattr(m, "config", None)}
                           for name, m in r.models().items()},
                "optimizers": {name: ckpt.optimizer_to_tensors(opt)[1] for name, opt in r.optimizers().items()},
                "ema": r.ema is not None}

    def _load_state(self, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any], path: Path) -> None:
        r = self.recipe
        if meta["config"].get("recipe") != r.name:
            raise ValueError(f"checkpoint {str(path)!r} was trained with the {meta['config'].get('recipe')!r} recipe, "
                             f"not {r.name!r}")
        for name, m in r.models().items():
            load_module_weights(m, ckpt.strip_prefix(f"models/{name}", tensors), path, f"network {name}")
        for name, opt in r.optimizers().items():
            ckpt.optimizer_from_tensors(opt, ckpt.strip_prefix(f"optim/{name}", tensors), meta["optimizers"][name])
        if r.ema is not None:
            ema_sd = ckpt.strip_prefix("ema", tensors)
            if not ema_sd:
                raise ValueError(f"checkpoint {str(path)!r} has no EMA weights but the recipe keeps an EMA")
            r.ema.load_state_dict(ema_sd)
        r.load_extra_state(ckpt.strip_prefix("recipe", tensors))


def load_generator(path: Union[str, Path], *, name: Optional[str] = None, ema: bool = True,
                   device: Union[str, torch.device] = "cpu") -> nn.Module:
    """Rebuild a trained fastgen generator (StyleGAN ``Generator``, ``DCGANGenerator``,
    ``UNetGenerator``, ``ResnetGenerator``) from a :class:`GANTrainer` checkpoint (a file or a run
    folder): network ``name`` (default ``G``, or ``G_AB`` for CycleGAN), with the EMA weights
    (``ema=True``, when kept) or the raw trained ones, in eval mode."""
    from ..models import cyclegan, dcgan, pix2pix, stylegan

    path = resolve_checkpoint(path)
    tensors, meta = ckpt.load_checkpoint(path)
    if meta.get("kind") != "gan":
        raise ValueError(f"checkpoint {str(path)!r} is not a GAN checkpoint (kind {meta.get('kind')!r})")
    models = meta.get("models", {})
    if name is None:
        name = "G" if "G" in models else ("G_AB" if "G_AB" in models else next(iter(models), "G"))
    if name not in models:
        raise ValueError(f"checkpoint {str(path)!r} has no network {name!r} (it has {', '.join(models)})")
    info = models[name]
    classes = {"Generator": stylegan.Generator, "DCGANGenerator": dcgan.DCGANGenerator,
               "UNetGenerator": pix2pix.UNetGenerator, "ResnetGenerator": cyclegan.ResnetGenerator}
    if info.get("class") not in classes or not isinstance(info.get("config"), dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {info.get('class')!r} generator; only fastgen "
                         f"{', '.join(classes)} checkpoints can be rebuilt without code")
    cfg = dict(info["config"])
    G = classes[info["class"]](**cfg)
    weights = {}
    if ema and meta.get("ema") and name == "G":
        weights = {k[len("module."):]: v for k, v in ckpt.strip_prefix("ema", tensors).items() if k.startswith("module.")}
    if not weights:
        weights = ckpt.strip_prefix(f"models/{name}", tensors)
    load_module_weights(G, weights, path, "generator")
    return G.to(device).eval()
